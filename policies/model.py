"""The placement Policy model (a trust boundary: pydantic, unknown fields rejected) and its loader.

A policy says what to optimise (weights), which carbon signal to use, which
placements are allowed (constraints) and how many launch attempts to make.
"""

from __future__ import annotations

import functools
import importlib.resources
from enum import StrEnum
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from greenplace.scheduler.exceptions import SpecError, UnknownNameError
from greenplace.scheduler.yamlfile import read_yaml, validation_message

DEFAULT_POLICY = "balanced"

# ISO 3166-1 alpha-2 codes (from the tz database's iso3166.tab), and common look-alikes.
ISO_3166_ALPHA2 = frozenset("""
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO
BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ
DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP
GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG
KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML
MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE
PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL
SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM
US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
""".split())
_COUNTRY_ALIASES = {"UK": "GB", "EL": "GR"}


class CarbonSignal(StrEnum):
    """Which carbon figure ranks candidates. Never mixed within one decision.

    It only ranks: the reported ``co2e_kg`` is always energy x the grid average intensity.
    """

    CFE = "cfe"  # energy not covered by the grid's carbon-free share (kWh)
    AVERAGE = "average"  # kg CO2e at the grid average intensity
    MARGINAL = "marginal"  # kg CO2e at the grid marginal intensity
    PROVIDER_CFE = "provider_cfe"  # energy not covered by the provider's hourly CFE (kWh)


class SpotMode(StrEnum):
    ALLOW = "allow"
    REQUIRE = "require"
    FORBID = "forbid"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Weights(_Strict):
    """Relative weights of the three objectives; non-negative, not all zero."""

    carbon: float = Field(1.0, ge=0)
    cost: float = Field(1.0, ge=0)
    time: float = Field(0.0, ge=0)

    @pydantic.model_validator(mode="after")
    def _not_all_zero(self) -> Weights:
        if self.carbon + self.cost + self.time <= 0:
            raise ValueError("weights carbon, cost and time are all zero; make one positive")
        return self


class RegionPatterns(_Strict):
    """Glob patterns over ``cloud:region`` or bare region names (e.g. ``europe-*``)."""

    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)


Continent = Literal[
    "africa", "asia", "europe", "middle-east", "north-america", "oceania", "south-america"
]


class Constraints(_Strict):
    """Which placements are allowed at all. Unset means no restriction."""

    clouds: list[Literal["aws", "gcp", "azure"]] | None = None
    regions: RegionPatterns = Field(default_factory=RegionPatterns)
    countries: list[str] | None = None
    continents: list[Continent] | None = None
    max_price_usd_per_hour: float | None = Field(None, gt=0)
    min_cfe_pct: float | None = Field(None, ge=0, le=100)
    spot: SpotMode = SpotMode.ALLOW

    @pydantic.field_validator("clouds", "countries", "continents")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list allows nothing; omit the field to allow all")
        return value

    @pydantic.field_validator("countries")
    @classmethod
    def _iso_codes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [c for c in value if c.upper() not in ISO_3166_ALPHA2]
        if bad:
            hints = [f"{_COUNTRY_ALIASES[c.upper()]!r} for {c!r}" for c in bad
                     if c.upper() in _COUNTRY_ALIASES]
            raise ValueError(f"countries must be ISO 3166 two-letter codes (e.g. DE, FR, US), "
                             f"got {bad}" + (f" (Did you mean {', '.join(hints)}?)" if hints
                                             else ""))
        return [c.upper() for c in value]


class Failover(_Strict):
    """Launch attempts across the ranked candidates before a job is UNSCHEDULABLE."""

    max_attempts: int = Field(3, ge=1, le=50)


class Policy(_Strict):
    """A placement policy."""

    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    weights: Weights = Field(default_factory=Weights)  # type: ignore[arg-type]
    carbon_signal: CarbonSignal = CarbonSignal.CFE  # as the default preset, balanced
    constraints: Constraints = Field(default_factory=Constraints)  # type: ignore[arg-type]
    failover: Failover = Field(default_factory=Failover)  # type: ignore[arg-type]


def preset_names() -> list[str]:
    """Names of the preset policies shipped in the ``policies`` package."""
    return list(_preset_names())


@functools.cache
def _preset_names() -> tuple[str, ...]:
    files = importlib.resources.files("greenplace.policies")
    return tuple(sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml")))


@functools.cache
def _preset(name: str) -> Policy:
    """A preset, read and validated once per process (presets ship with the package and
    policies are frozen, so every job may share one; the API reads them per request)."""
    resource = importlib.resources.files("greenplace.policies") / f"{name}.yaml"
    with importlib.resources.as_file(resource) as path:
        return parse_policy(read_yaml(path, what="policy"), where=f"policy {name}")


def parse_policy(data: object, *, where: str) -> Policy:
    """Validate a parsed YAML mapping as a Policy. Raises SpecError naming ``where``."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a policy must be a YAML mapping with at least `name`.")
    try:
        return Policy.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SpecError(validation_message(exc, where=where)) from exc


def load_policy(name_or_path: str, *, base_dir: Path | None = None) -> Policy:
    """Load a preset by name (``greenest``) or a policy YAML file by path.

    Args:
        name_or_path: preset name, or a path (absolute, or relative to ``base_dir``).
        base_dir: directory relative paths are resolved against (the jobs file's).

    Raises:
        UnknownNameError: a bare name that is no preset.
        SpecError: a missing, broken or invalid policy file.
    """
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if not looks_like_path:
        if name_or_path not in preset_names():
            raise UnknownNameError(
                "policy preset", name_or_path, preset_names(),
                hint="To fix: use a preset name or a path to a policy .yaml file.",
            )
        return _preset(name_or_path)
    path = Path(name_or_path)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return parse_policy(read_yaml(path, what="policy"), where=str(path))
