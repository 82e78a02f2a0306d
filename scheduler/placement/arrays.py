"""Column arrays over the whole catalog, built once per catalog, for vectorised placement.

Owns two things: ``OfferArrays`` (one entry per instance offer) and
``RegionSignals`` (the carbon figures per region that a decision is scored with,
with where each came from). Static signals come from the catalog; live sources
build a ``RegionSignals`` of their own.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from greenplace.scheduler import estimate
from greenplace.scheduler.catalog import Catalog, Offer, Region


def _floats(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def provider_cfe_column(catalog: Catalog) -> np.ndarray:
    """The catalog's provider CFE % per region (NaN where the provider publishes none).

    Live signals and the backtest take it from here: no live source publishes it.
    """
    return _floats([r.provider_cfe_pct for r in catalog.regions])


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionSignals:
    """Carbon figures per catalog region (same order as ``Catalog.regions``).

    NaN means "not known" for that region; the pipeline never fills it in from
    another signal type.
    """

    grid_average_g_per_kwh: np.ndarray
    grid_marginal_g_per_kwh: np.ndarray
    cfe_pct: np.ndarray  # the grid's carbon-free % (Electricity Maps)
    provider_cfe_pct: np.ndarray  # the provider's hourly-matched CFE % (GCP only; NaN elsewhere)
    source: tuple[str, ...]  # e.g. "static:catalog 2024", "electricitymaps"
    observed_at: tuple[str, ...]  # ISO date or timestamp of each value

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> RegionSignals:
        """The embedded annual figures: always available, the default source."""
        regions = catalog.regions
        return cls(
            grid_average_g_per_kwh=_floats([r.grid_intensity_avg_g_per_kwh for r in regions]),
            grid_marginal_g_per_kwh=_floats([r.grid_intensity_marginal_g_per_kwh for r in regions]),
            cfe_pct=np.array([r.grid_cfe_pct for r in regions], dtype=float),
            provider_cfe_pct=provider_cfe_column(catalog),
            source=tuple(f"static:catalog {r.year}" for r in regions),
            observed_at=tuple(r.as_of for r in regions),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferArrays:
    """Per-offer columns plus the per-region columns they index into."""

    catalog: Catalog
    offers: tuple[Offer, ...]
    regions: tuple[Region, ...]
    region_index: np.ndarray  # offer -> index into regions
    accelerator_names: tuple[str, ...]
    accelerator_index: np.ndarray  # offer -> index into accelerator_names
    accelerator_count: np.ndarray
    tdp_w: np.ndarray
    peak_dense_tflops: np.ndarray
    host_power_w: np.ndarray  # the instance's CPUs and memory (modelled, see estimate)
    price_usd_per_hour: np.ndarray  # NaN: not sold on demand
    spot_price_usd_per_hour: np.ndarray  # NaN: no spot offer
    pue: np.ndarray  # per region
    name_rank: np.ndarray  # offer's position in (cloud, region, instance_type) order
    offers_by_accelerator: dict[str, np.ndarray]

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> OfferArrays:
        regions = catalog.regions
        region_pos = {r.key: i for i, r in enumerate(regions)}
        accel_names = tuple(a.name for a in catalog.accelerators)
        accel_pos = {name: i for i, name in enumerate(accel_names)}
        offers = catalog.offers
        accels = [catalog.accelerator(o.accelerator) for o in offers]
        order = sorted(range(len(offers)), key=lambda i: (
            offers[i].cloud, offers[i].region, offers[i].instance_type))
        name_rank = np.empty(len(offers), dtype=np.int64)
        name_rank[order] = np.arange(len(offers))
        accelerator_index = np.array([accel_pos[a.name] for a in accels], dtype=np.int64)
        return cls(
            catalog=catalog,
            offers=offers,
            regions=regions,
            region_index=np.array([region_pos[f"{o.cloud}:{o.region}"] for o in offers],
                                  dtype=np.int64),
            accelerator_names=accel_names,
            accelerator_index=accelerator_index,
            accelerator_count=np.array([o.accelerator_count for o in offers], dtype=float),
            tdp_w=np.array([a.tdp_w for a in accels], dtype=float),
            peak_dense_tflops=np.array([a.peak_dense_tflops for a in accels], dtype=float),
            host_power_w=np.array([estimate.host_power_w(
                cloud=o.cloud, vcpus=o.vcpus, memory_gib=o.memory_gib) for o in offers]),
            price_usd_per_hour=_floats([o.price_usd_per_hour for o in offers]),
            spot_price_usd_per_hour=_floats([o.spot_price_usd_per_hour for o in offers]),
            pue=np.array([r.pue for r in regions], dtype=float),
            name_rank=name_rank,
            offers_by_accelerator={
                name: np.flatnonzero(accelerator_index == i) for i, name in enumerate(accel_names)
            },
        )


@functools.cache
def arrays_for(catalog: Catalog) -> OfferArrays:
    """The OfferArrays of a catalog, built once."""
    return OfferArrays.from_catalog(catalog)
