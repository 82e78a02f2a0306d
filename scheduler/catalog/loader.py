"""Loads and validates the embedded catalog (package data CSVs) into a ``Catalog``, merged
with the user's catalog overlay (``GREENPLACE_CATALOG_OVERLAY``, see ``overlay``) when set,
and with the refreshed prices (``GREENPLACE_CATALOG_PRICES``, see ``refresh/store``) when a
``greenplace catalog refresh`` wrote some.

The catalog is read once per process, on first use, and validated against a
schema: exact headers, typed and ranged values, unique keys, and every offer
pointing at a known region and accelerator. A broken file raises CatalogError
naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
import math
import os
import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from greenplace.scheduler.catalog.model import (
    FORM_FACTORS,
    Accelerator,
    Offer,
    Region,
    normalize_name,
)
from greenplace.scheduler.exceptions import CatalogError, UnknownNameError

CLOUDS = ("aws", "gcp", "azure")
OVERLAY_ENV = "GREENPLACE_CATALOG_OVERLAY"  # path of the user's catalog overlay (YAML)
CONTINENTS = (
    "africa", "asia", "europe", "middle-east", "north-america", "oceania", "south-america",
)

# Emission bases of a grid intensity. Only lifecycle ships; the loader refuses any other, so
# a direct ("operational") figure can never sit beside lifecycle ones.
INTENSITY_BASES = ("lifecycle",)

T = TypeVar("T")

# Per-field range checks, beyond the type each dataclass field declares.
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "cloud": lambda v: v in CLOUDS,
    "continent": lambda v: v in CONTINENTS,
    "country": lambda v: len(v) == 2 and v.isupper(),
    "latitude": lambda v: -90 <= v <= 90,
    "longitude": lambda v: -180 <= v <= 180,
    "grid_cfe_pct": lambda v: 0 <= v <= 100,
    "provider_cfe_pct": lambda v: v is None or 0 <= v <= 100,
    "intensity_basis": lambda v: v in INTENSITY_BASES,
    "grid_intensity_avg_g_per_kwh": lambda v: 0 < v < 2000,
    "grid_intensity_marginal_g_per_kwh": lambda v: v is None or 0 < v < 2500,
    "pue": lambda v: 1.0 <= v < 3.0,
    "pue_basis": lambda v: v in ("region", "fleet"),
    "form_factor": lambda v: v in FORM_FACTORS,
    "tdp_w": lambda v: v > 0,
    "peak_dense_tflops": lambda v: v > 0,
    "accelerator_count": lambda v: v > 0,
    "vcpus": lambda v: v > 0,
    "price_usd_per_hour": lambda v: v is None or v > 0,
    "spot_price_usd_per_hour": lambda v: v is None or v > 0,
    "source": bool,
    "as_of": lambda v: len(v) == 10 and v[4] == "-" and v[7] == "-",
}


def _converter(annotation: Any) -> Callable[[str], Any]:
    """The parser of one column's text, decided once from the field's type annotation."""
    optional = get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(
        annotation
    )
    base = next(a for a in get_args(annotation) if a is not type(None)) if optional else annotation
    is_tuple = get_origin(base) is tuple

    def parse(raw: str) -> Any:
        if is_tuple:
            return tuple(a.strip() for a in raw.split("|") if a.strip())
        if raw.strip() == "":
            if optional:
                return None
            if base is str:
                return ""
            raise ValueError("is empty")
        if base is int:
            return int(raw)
        if base is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError("is not finite")
            return value
        return raw.strip()

    return parse


def value_problems(row: object) -> list[str]:
    """What the per-field range checks say about one row's values (empty when all hold):
    the same checks a catalog CSV's values pass, for rows that come from elsewhere."""
    return [f"{name} {getattr(row, name)!r} is out of range"
            for name in (f.name for f in dataclasses.fields(row))  # type: ignore[arg-type]
            if (check := _CHECKS.get(name)) is not None and not check(getattr(row, name))]


def read_rows(path_name: str, text: str, row_type: type[T]) -> list[T]:
    """Parse and validate one CSV into frozen rows of ``row_type``.

    Raises:
        CatalogError: naming the file, line and column of the first bad value.
    """
    hints = get_type_hints(row_type)
    fields = [f.name for f in dataclasses.fields(row_type)]  # type: ignore[arg-type]
    converters = {name: _converter(hints[name]) for name in fields}
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames != fields:
        raise CatalogError(
            f"{path_name}: header is {reader.fieldnames}, expected {fields}. "
            "To fix: reinstall greenplace, or rebuild the catalog files with the repository's "
            "catalog build script."
        )
    rows = []
    for line_no, raw in enumerate(reader, start=2):
        values = {}
        for name in fields:
            try:
                value = converters[name](raw[name] or "")
            except ValueError as exc:
                raise CatalogError(
                    f"{path_name} line {line_no}, column {name!r}: value {raw[name]!r} {exc}."
                ) from exc
            check = _CHECKS.get(name)
            if check is not None and not check(value):
                raise CatalogError(
                    f"{path_name} line {line_no}, column {name!r}: value {raw[name]!r} is out "
                    "of range."
                )
            values[name] = value
        rows.append(row_type(**values))
    return rows


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Catalog:
    """The validated catalog: regions, accelerators, offers, with name look-ups."""

    regions: tuple[Region, ...]
    accelerators: tuple[Accelerator, ...]
    offers: tuple[Offer, ...]
    _regions_by_key: dict[str, Region] = dataclasses.field(repr=False)
    _accelerators_by_alias: dict[str, Accelerator] = dataclasses.field(repr=False)

    @classmethod
    def build(
        cls,
        regions: Iterable[Region],
        accelerators: Iterable[Accelerator],
        offers: Iterable[Offer],
    ) -> Catalog:
        """Index and cross-check rows. Raises CatalogError on duplicates or dangling refs."""
        regions, accelerators, offers = tuple(regions), tuple(accelerators), tuple(offers)
        by_key: dict[str, Region] = {}
        for r in regions:
            if r.key in by_key:
                raise CatalogError(f"regions.csv: region {r.key} appears twice.")
            by_key[r.key] = r
        by_alias: dict[str, Accelerator] = {}
        for a in accelerators:
            for spelling in (a.name, *a.aliases):
                key = normalize_name(spelling)
                other = by_alias.get(key)
                if other is not None and other.name != a.name:
                    raise CatalogError(
                        f"accelerators.csv: {spelling!r} names both {other.name} and {a.name}."
                    )
                by_alias[key] = a
        seen: set[tuple[str, str, str]] = set()
        for o in offers:
            ident = (o.cloud, o.region, o.instance_type)
            if ident in seen:
                raise CatalogError(f"offers.csv: offer {'/'.join(ident)} appears twice.")
            seen.add(ident)
            if f"{o.cloud}:{o.region}" not in by_key:
                raise CatalogError(f"offers.csv: offer {'/'.join(ident)} names unknown region.")
            if by_alias.get(normalize_name(o.accelerator), None) is None:
                raise CatalogError(
                    f"offers.csv: offer {'/'.join(ident)} names unknown accelerator "
                    f"{o.accelerator!r}."
                )
        return cls(regions, accelerators, offers, by_key, by_alias)

    def accelerator(self, name: str) -> Accelerator:
        """Look an accelerator up by any spelling of its name or aliases."""
        found = self._accelerators_by_alias.get(normalize_name(name))
        if found is None:
            raise UnknownNameError(
                "accelerator",
                name,
                [a.name for a in self.accelerators],
                hint="To fix: use one of the accelerators that `greenplace offers` lists.",
            )
        return found

    def region(self, key: str) -> Region:
        """Look a region up by ``cloud:region``."""
        cloud, sep, name = key.partition(":")
        found = self._regions_by_key.get(f"{cloud.strip().lower()}:{name.strip()}")
        if not sep or found is None:
            raise UnknownNameError(
                "region",
                key,
                self._regions_by_key,
                hint="To fix: write it as CLOUD:REGION, e.g. gcp:europe-west4 "
                "(see `greenplace regions`).",
            )
        return found


_DATA_PACKAGE = "greenplace.scheduler.catalog.data"


def load_catalog_from(directory: Path) -> Catalog:
    """Load and validate a catalog from a directory holding the three CSVs."""
    def read(name: str, row_type: type[Any]) -> list[Any]:
        return read_rows(name, (directory / name).read_text(encoding="utf-8"), row_type)

    return Catalog.build(
        read("regions.csv", Region), read("accelerators.csv", Accelerator),
        read("offers.csv", Offer),
    )


@functools.cache
def load_embedded_catalog() -> Catalog:
    """The embedded catalog alone, loaded and validated once per process."""
    files = importlib.resources.files(_DATA_PACKAGE)
    with importlib.resources.as_file(files) as directory:
        return load_catalog_from(Path(directory))


def with_overlay(catalog: Catalog, path: Path) -> Catalog:
    """``catalog`` plus the clouds the overlay file at ``path`` declares.

    Raises:
        CatalogError: every problem of the overlay, one paragraph each.
        SpecError: the file is missing or not YAML.
    """
    from greenplace.scheduler.catalog.overlay import load_overlay  # YAML: only when used

    overlay = load_overlay(path, regions=catalog.regions, accelerators=catalog.accelerators)
    return Catalog.build((*catalog.regions, *overlay.regions), catalog.accelerators,
                         (*catalog.offers, *overlay.offers))


@functools.lru_cache(maxsize=4)
def _merged(path: Path, _stamp: tuple[int, int]) -> Catalog:
    return with_overlay(load_embedded_catalog(), path)


def load_declared_catalog() -> Catalog:
    """The embedded catalog with the overlay ``GREENPLACE_CATALOG_OVERLAY`` names, without
    refreshed prices (what a price refresh is checked against, and the clouds there are).

    The merged catalog is cached per file path and modification stamp.
    """
    raw = os.environ.get(OVERLAY_ENV, "").strip()
    if not raw:
        return load_embedded_catalog()
    path = Path(raw).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return with_overlay(load_embedded_catalog(), path)  # raises the missing-file error
    return _merged(path, (stat.st_mtime_ns, stat.st_size))


def load_catalog() -> Catalog:
    """The embedded catalog, merged with the overlay ``GREENPLACE_CATALOG_OVERLAY`` names and
    the refreshed prices ``GREENPLACE_CATALOG_PRICES`` points at (when any were written).

    Design choice: both are read from the environment here, the one function every command,
    the dry run, the API and the worker already call, so all of them place on the same
    figures. The result is cached: the prices file by its stamp, the Redis form re-read at
    most once a minute (``refresh.prices``).
    """
    from greenplace.scheduler.catalog.refresh.prices import with_prices  # only when loading

    return with_prices(load_declared_catalog(), os.environ)
