"""Checking a policy's location constraints against the catalog, before any placement.

Design choice: a region glob, country or continent that matches no catalog region is
almost always a typo; placing with it would make every job UNSCHEDULABLE with dozens of
rejections. It is an input error instead (exit 2), with "Did you mean ...?". The check
reuses the placement filters, so it cannot drift from what placement would reject.
"""

from __future__ import annotations

import numpy as np

from greenplace.policies.model import Policy
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import SpecError, UnknownNameError
from greenplace.scheduler.placement.arrays import RegionSignals
from greenplace.scheduler.placement.filters import CODE, region_matches, region_rejections

# The region-level filters that depend only on where a region is (not on live figures).
_LOCATION = (("cloud", "clouds"), ("region", "regions"), ("country", "countries"),
             ("continent", "continents"))


def check_policy(policy: Policy, catalog: Catalog) -> None:
    """Raise an input error if a location constraint of ``policy`` can match nothing.

    Raises:
        UnknownNameError: a ``regions`` glob that matches no catalog region.
        SpecError: the constraints together leave no catalog region.
    """
    regions = catalog.regions
    patterns = policy.constraints.regions
    for field, globs in (("include", patterns.include), ("exclude", patterns.exclude)):
        for glob in globs:
            if not any(region_matches(r, [glob]) for r in regions):
                raise UnknownNameError(
                    f"region pattern in constraints.regions.{field}", glob,
                    [r.key for r in regions] + [r.region for r in regions],
                    hint="It matches no catalog region. To fix: use CLOUD:REGION, a bare "
                    "region name or a glob such as 'gcp:europe-*' (see `greenplace regions`).")
    signals = RegionSignals.from_catalog(catalog)
    codes = region_rejections(policy, regions, cfe_pct=signals.cfe_pct,
                              grid_marginal_g_per_kwh=signals.grid_marginal_g_per_kwh,
                              provider_cfe_pct=signals.provider_cfe_pct)
    left = []
    for name, field in _LOCATION:
        remaining = int(np.count_nonzero((codes == 0) | (codes > CODE[name])))
        value = getattr(policy.constraints, field)
        if value is None or value == type(value)():
            continue  # unset, or the default regions {include: ['*'], exclude: []}
        shown = value.model_dump() if field == "regions" else value
        left.append(f"{field} {shown} leave {remaining}")
        if remaining == 0:
            raise SpecError(
                f"policy {policy.name!r} allows no region of the catalog: of {len(regions)} "
                f"regions, {', then '.join(left)}. Catalog countries: "
                f"{' '.join(sorted({r.country for r in regions}))}. To fix: widen the "
                "constraints named above (see `greenplace regions`).")
