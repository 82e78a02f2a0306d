"""Invariants of the catalog's figures: ``check_catalog(catalog)`` lists every broken row.

The loader already checks each value's type and range and the keys; this module checks what
one row cannot show alone: that every region's grid figures are on one basis and agree with
the other regions of the same grid zone, and that each figure says where it comes from.
Each problem names its row as the file does (``regions.csv gcp:europe-west4: ...``).
Pure: no I/O; ``greenplace catalog check`` prints the result.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from greenplace.scheduler.catalog.loader import CLOUDS, INTENSITY_BASES, Catalog
from greenplace.scheduler.catalog.model import Region
from greenplace.scheduler.catalog.offer_checks import offer_problems

# Clouds that publish an hourly-matched CFE % per region (Google's region-carbon-info).
PROVIDER_CFE_CLOUDS = frozenset({"gcp"})

_REBUILD = "To fix: rebuild the catalog with scripts/build_catalog.py"


def _grid(r: Region) -> tuple[float, float, int, str]:
    """What every region of one Electricity Maps zone must share."""
    return r.grid_intensity_avg_g_per_kwh, r.grid_cfe_pct, r.year, r.intensity_basis


def _describe(grid: tuple[float, float, int, str]) -> str:
    intensity, cfe, year, basis = grid
    return f"{intensity:g} g/kWh ({basis}), grid CFE {cfe:g} %, year {year}"


def _row_problems(r: Region) -> list[str]:
    """What is wrong with one region row on its own."""
    overlay = r.cloud not in CLOUDS  # a cloud of the user's overlay: it names its own origin
    where = f"{'catalog overlay' if overlay else 'regions.csv'} {r.key}:"
    out = []
    if not r.em_zone:
        out.append(f"{where} no Electricity Maps zone (em_zone), so its grid figures cannot be "
                   "traced to a grid. To fix: add the zone in scripts/build_catalog.py "
                   "(REGION_FIXES) and rebuild the catalog.")
    if not (math.isfinite(r.grid_intensity_avg_g_per_kwh) and r.grid_intensity_avg_g_per_kwh > 0):
        out.append(f"{where} no grid average intensity. {_REBUILD}.")
    if not (math.isfinite(r.grid_cfe_pct) and 0 <= r.grid_cfe_pct <= 100):
        out.append(f"{where} no grid carbon-free % (grid_cfe_pct). {_REBUILD}.")
    if r.intensity_basis not in INTENSITY_BASES:
        out.append(f"{where} intensity basis {r.intensity_basis!r}, not one of "
                   f"{', '.join(INTENSITY_BASES)}: figures on another basis cannot be compared. "
                   f"{_REBUILD}.")
    if not (math.isfinite(r.pue) and r.pue >= 1.0) or r.pue_basis not in ("region", "fleet"):
        out.append(f"{where} no PUE with its basis (region or fleet). {_REBUILD}.")
    if ("catalog overlay" if overlay else "Electricity Maps") not in r.source \
            or "PUE" not in r.source:
        out.append(f"{where} source {r.source!r} does not name the origin of its grid figures "
                   f"(Electricity Maps) and of its PUE. {_REBUILD}.")
    if r.year <= 0 or not r.as_of.startswith(f"{r.year}-"):
        out.append(f"{where} year {r.year} and as_of {r.as_of} disagree. {_REBUILD}.")
    if r.provider_cfe_pct is not None and r.cloud not in PROVIDER_CFE_CLOUDS:
        out.append(f"{where} provider CFE {r.provider_cfe_pct:g} %, but {r.cloud} publishes no "
                   "hourly-matched CFE per region. To fix: leave provider_cfe_pct empty for "
                   f"{r.cloud} and rebuild the catalog.")
    return out


def _zone_problems(regions: list[Region]) -> list[str]:
    """Rows of one zone whose grid figures differ from what most of the zone's rows say."""
    usual = Counter(_grid(r) for r in regions).most_common(1)[0][0]  # ties: the first seen
    example = next(r.key for r in regions if _grid(r) == usual)
    return [
        f"regions.csv {r.key}: {_describe(_grid(r))} in Electricity Maps zone {r.em_zone}, but "
        f"{example} in the same zone has {_describe(usual)}. Regions on the same "
        f"grid must carry the same grid figures whatever the cloud. {_REBUILD}."
        for r in regions if _grid(r) != usual
    ]


def check_catalog(catalog: Catalog) -> list[str]:
    """Every broken invariant of ``catalog``, one line per problem; empty when all hold.

    Region invariants: every region has a grid average intensity and grid carbon-free %,
    from its Electricity Maps zone, on the lifecycle basis, and a PUE with its basis; its
    source names their origins and its year matches ``as_of``; regions in the same zone
    carry the same grid figures whatever the cloud; a provider CFE only where the provider
    publishes one (GCP). Offer invariants (``offer_checks.offer_problems``, which the catalog
    build also enforces): spot below on-demand, a plausible price per accelerator-hour unless
    the row notes why, and known instance types carrying their accelerator and count.
    """
    problems: list[str] = []
    by_zone: dict[str, list[Region]] = defaultdict(list)
    for r in catalog.regions:
        problems.extend(_row_problems(r))
        if r.em_zone:
            by_zone[r.em_zone].append(r)
    for zone in sorted(by_zone):
        problems.extend(_zone_problems(by_zone[zone]))
    problems.extend(
        f"{'offers.csv' if problem.partition(':')[0] in CLOUDS else 'catalog overlay'} {problem}"
        for problem in offer_problems(catalog))
    return problems
