"""Signal settings from the environment (a trust boundary: pydantic) and the sources they build.

=====================================  ==========================================================
variable                               meaning (default)
=====================================  ==========================================================
GREENPLACE_SIGNAL_SOURCES              fallback order, comma-separated (electricitymaps,watttime,
                                       carbon-aware-sdk,uk-carbon-intensity,static); static is
                                       always appended last when left out
GREENPLACE_SIGNAL_TIMEOUT_S            timeout of every HTTP call in seconds (5)
GREENPLACE_SIGNAL_TTL_S                cache lifetime of a current value (300)
GREENPLACE_SIGNAL_FORECAST_TTL_S       cache lifetime of a forecast (1800)
GREENPLACE_SIGNAL_BASIS                emission basis of `average` intensities: lifecycle (the
                                       catalog's, and what Electricity Maps is asked for) or
                                       direct (operational: the GB Carbon Intensity API's); a
                                       source of the other basis is skipped (lifecycle)
ELECTRICITYMAPS_API_KEY                Electricity Maps key (unset: source not configured)
GREENPLACE_ELECTRICITYMAPS_URL         https://api.electricitymaps.com/v3
WATTTIME_USERNAME / WATTTIME_PASSWORD  WattTime credentials (unset: source not configured)
GREENPLACE_WATTTIME_URL                https://api.watttime.org
GREENPLACE_CARBON_AWARE_SDK_URL        base URL of your Carbon Aware SDK Web API (unset: not
                                       configured)
GREENPLACE_CARBON_AWARE_SDK_SIGNAL     the SDK's signal type: marginal (WattTime data source) or
                                       average (Electricity Maps data source); required with
                                       the URL (unset: source not configured)
GREENPLACE_CARBON_AWARE_SDK_BASIS      the SDK's emission basis (direct for marginal, lifecycle
                                       for average)
GREENPLACE_CARBON_AWARE_SDK_LOCATIONS  catalog region -> SDK location name, for any cloud:
                                       aws:us-east-1=eastus,gcp:europe-west4=westeurope (or a
                                       JSON object); Azure regions keep their own name unless
                                       listed
GREENPLACE_UK_CARBON_INTENSITY_URL     https://api.carbonintensity.org.uk
=====================================  ==========================================================

Secrets are held as ``SecretStr``: their repr and any error message show ``**********``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import ConfigError
from greenplace.scheduler.signals import (
    carbon_aware_sdk,
    electricitymaps,
    static,
    uk_carbon_intensity,
    watttime,
)
from greenplace.scheduler.signals.base import CATALOG_BASIS, EmissionBasis, SignalSource
from greenplace.scheduler.yamlfile import validation_message

SOURCE_NAMES = (
    electricitymaps.NAME, watttime.NAME, carbon_aware_sdk.NAME, uk_carbon_intensity.NAME,
    static.NAME,
)


class SignalSettings(BaseModel):
    """Which sources to use, in which order, and how to reach them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: tuple[str, ...] = SOURCE_NAMES
    timeout_s: float = Field(5.0, gt=0, le=120)
    ttl_s: float = Field(300.0, ge=0)
    forecast_ttl_s: float = Field(1800.0, ge=0)
    basis: EmissionBasis = EmissionBasis.LIFECYCLE
    electricitymaps_api_key: SecretStr | None = None
    electricitymaps_url: str = electricitymaps.DEFAULT_BASE_URL
    watttime_username: str | None = None
    watttime_password: SecretStr | None = None
    watttime_url: str = watttime.DEFAULT_BASE_URL
    carbon_aware_sdk_url: str | None = None
    carbon_aware_sdk_signal: CarbonSignal | None = None
    carbon_aware_sdk_basis: EmissionBasis | None = None
    carbon_aware_sdk_locations: dict[str, str] = Field(default_factory=dict)
    uk_carbon_intensity_url: str = uk_carbon_intensity.DEFAULT_BASE_URL

    @pydantic.field_validator("sources", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @pydantic.field_validator("sources")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in SOURCE_NAMES]
        if unknown:
            raise ValueError(f"unknown source(s) {unknown}; known: {list(SOURCE_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError("a source is listed twice")
        return value if static.NAME in value else (*value, static.NAME)

    @pydantic.field_validator("carbon_aware_sdk_signal")
    @classmethod
    def _intensity_only(cls, value: CarbonSignal | None) -> CarbonSignal | None:
        if value is CarbonSignal.CFE:
            raise ValueError("the Carbon Aware SDK reports intensities: use marginal or average")
        return value

    @pydantic.field_validator("carbon_aware_sdk_locations", mode="before")
    @classmethod
    def _locations(cls, value: object) -> object:
        if isinstance(value, str):
            return carbon_aware_sdk.parse_locations(value)
        return value

    def bases(self) -> dict[CarbonSignal, EmissionBasis]:
        """The emission basis the chain keeps per intensity type (``average`` configurable)."""
        return {**CATALOG_BASIS, CarbonSignal.AVERAGE: self.basis}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SignalSettings:
        """Read the variables in the module docstring. Raises ConfigError naming the variable."""
        env = os.environ if env is None else env
        names = {
            "sources": "GREENPLACE_SIGNAL_SOURCES",
            "timeout_s": "GREENPLACE_SIGNAL_TIMEOUT_S",
            "ttl_s": "GREENPLACE_SIGNAL_TTL_S",
            "forecast_ttl_s": "GREENPLACE_SIGNAL_FORECAST_TTL_S",
            "basis": "GREENPLACE_SIGNAL_BASIS",
            "electricitymaps_api_key": "ELECTRICITYMAPS_API_KEY",
            "electricitymaps_url": "GREENPLACE_ELECTRICITYMAPS_URL",
            "watttime_username": "WATTTIME_USERNAME",
            "watttime_password": "WATTTIME_PASSWORD",
            "watttime_url": "GREENPLACE_WATTTIME_URL",
            "carbon_aware_sdk_url": "GREENPLACE_CARBON_AWARE_SDK_URL",
            "carbon_aware_sdk_signal": "GREENPLACE_CARBON_AWARE_SDK_SIGNAL",
            "carbon_aware_sdk_basis": "GREENPLACE_CARBON_AWARE_SDK_BASIS",
            "carbon_aware_sdk_locations": "GREENPLACE_CARBON_AWARE_SDK_LOCATIONS",
            "uk_carbon_intensity_url": "GREENPLACE_UK_CARBON_INTENSITY_URL",
        }
        raw = {field: env[var] for field, var in names.items() if env.get(var, "").strip()}
        try:
            return cls.model_validate(raw)
        except pydantic.ValidationError as exc:
            message = validation_message(exc, where="signal settings")
            for field, var in names.items():
                message = message.replace(f"'{field}'", f"{var!r}")
            raise ConfigError(message) from exc


def build_sources(
    settings: SignalSettings, catalog: Catalog,
) -> tuple[list[SignalSource], dict[str, str]]:
    """The configured sources in fallback order, and why each missing one is missing.

    Returns:
        (sources, unconfigured): ``unconfigured`` maps a source name to the reason it
        was left out (e.g. which environment variable is unset).
    """
    sources: list[SignalSource] = []
    unconfigured: dict[str, str] = {}
    for name in settings.sources:
        if name == static.NAME:
            sources.append(static.StaticSource(catalog))
        elif name == electricitymaps.NAME:
            if settings.electricitymaps_api_key is None:
                unconfigured[name] = "set ELECTRICITYMAPS_API_KEY"
                continue
            sources.append(electricitymaps.ElectricityMapsSource(
                api_key=settings.electricitymaps_api_key.get_secret_value(),
                base_url=settings.electricitymaps_url, timeout_s=settings.timeout_s,
                emission_factor=settings.basis))
        elif name == watttime.NAME:
            if not settings.watttime_username or settings.watttime_password is None:
                unconfigured[name] = "set WATTTIME_USERNAME and WATTTIME_PASSWORD"
                continue
            sources.append(watttime.WattTimeSource(
                username=settings.watttime_username,
                password=settings.watttime_password.get_secret_value(),
                base_url=settings.watttime_url, timeout_s=settings.timeout_s))
        elif name == carbon_aware_sdk.NAME:
            if not settings.carbon_aware_sdk_url:
                unconfigured[name] = "set GREENPLACE_CARBON_AWARE_SDK_URL"
                continue
            if settings.carbon_aware_sdk_signal is None:
                unconfigured[name] = (
                    "set GREENPLACE_CARBON_AWARE_SDK_SIGNAL to the signal type of your SDK's "
                    "data source (marginal for WattTime, average for Electricity Maps)")
                continue
            sources.append(carbon_aware_sdk.CarbonAwareSdkSource(
                base_url=settings.carbon_aware_sdk_url, signal=settings.carbon_aware_sdk_signal,
                basis=settings.carbon_aware_sdk_basis,
                locations=settings.carbon_aware_sdk_locations, timeout_s=settings.timeout_s))
        elif name == uk_carbon_intensity.NAME:
            sources.append(uk_carbon_intensity.UkCarbonIntensitySource(
                base_url=settings.uk_carbon_intensity_url, timeout_s=settings.timeout_s))
    return sources, unconfigured
