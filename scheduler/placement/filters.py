"""The placement filters: which candidates a job may not use, and why.

Filters run in the fixed order of ``FILTERS``; the first that rejects a
candidate is recorded as its ``rejected_by``. Region-level filters (cloud,
region patterns, country, continent, CFE floor, signal availability) depend only
on the policy and signals and are computed once per policy; offer-level filters
run per job over that job's candidates.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from greenplace.policies.model import CarbonSignal, Policy
from greenplace.scheduler.catalog import Offer, Region

FEASIBLE = 0
FILTERS = (
    "",  # 0: feasible
    "accelerator_count",
    "cloud",
    "region",
    "country",
    "continent",
    "pricing",
    "max_price",
    "min_cfe",
    "carbon_signal",
    "deadline",
    "provider",
    "region_not_enabled",
)
CODE = {name: code for code, name in enumerate(FILTERS)}


def region_matches(region: Region, patterns: list[str]) -> bool:
    """Whether any glob of ``patterns`` matches ``cloud:region`` or the bare region name."""
    return any(
        fnmatch.fnmatchcase(region.key, p) or fnmatch.fnmatchcase(region.region, p)
        for p in patterns
    )


def region_rejections(
    policy: Policy, regions: tuple[Region, ...], *, cfe_pct: np.ndarray,
    grid_marginal_g_per_kwh: np.ndarray, provider_cfe_pct: np.ndarray,
) -> np.ndarray:
    """First region-level filter that rejects each region under ``policy`` (0: none)."""
    c = policy.constraints
    codes = np.zeros(len(regions), dtype=np.int8)

    def reject(name: str, mask: np.ndarray) -> None:
        codes[(codes == FEASIBLE) & mask] = CODE[name]

    if c.clouds is not None:
        reject("cloud", np.array([r.cloud not in c.clouds for r in regions]))
    reject("region", np.array([
        not region_matches(r, c.regions.include) or region_matches(r, c.regions.exclude)
        for r in regions
    ]))
    if c.countries is not None:
        reject("country", np.array([r.country not in c.countries for r in regions]))
    if c.continents is not None:
        reject("continent", np.array([r.continent not in c.continents for r in regions]))
    if c.min_cfe_pct is not None:
        with np.errstate(invalid="ignore"):
            reject("min_cfe", ~(cfe_pct >= c.min_cfe_pct))  # NaN (unknown) fails too
    if policy.carbon_signal is CarbonSignal.MARGINAL:
        reject("carbon_signal", np.isnan(grid_marginal_g_per_kwh))
    if policy.carbon_signal is CarbonSignal.PROVIDER_CFE:
        reject("carbon_signal", np.isnan(provider_cfe_pct))
    return codes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasonContext:
    """What a rejection message needs to say about one candidate."""

    offer: Offer
    region: Region
    policy: Policy
    requested_count: int
    spot: bool
    price_usd_per_hour: float
    runtime_h: float
    cfe_pct: float
    deadline: str | None


def reason_text(code: int, ctx: ReasonContext) -> str:
    """The human reason a filter gives for rejecting one candidate."""
    c = ctx.policy.constraints
    name = FILTERS[code]
    if name == "accelerator_count":
        return (f"{ctx.offer.instance_type} carries {ctx.offer.accelerator_count} x "
                f"{ctx.offer.accelerator}, the job asks for {ctx.requested_count}")
    if name == "cloud":
        return f"cloud {ctx.region.cloud} is not in the policy's clouds {c.clouds}"
    if name == "region":
        return (f"region {ctx.region.key} is not allowed by regions.include "
                f"{c.regions.include} / exclude {c.regions.exclude}")
    if name == "country":
        return f"country {ctx.region.country} is not in the policy's countries"
    if name == "continent":
        return f"continent {ctx.region.continent} is not in {c.continents}"
    if name == "pricing":
        kind = "spot" if ctx.spot else "on demand"
        return f"{ctx.offer.instance_type} is not sold {kind} in {ctx.region.key}"
    if name == "max_price":
        return (f"price {ctx.price_usd_per_hour:.2f} USD/h is above max_price_usd_per_hour "
                f"{c.max_price_usd_per_hour}")
    if name == "min_cfe":
        if np.isnan(ctx.cfe_pct):
            return (f"CFE % of {ctx.region.key} is not published, so it cannot be shown to reach "
                    f"min_cfe_pct {c.min_cfe_pct}")
        return f"CFE {ctx.cfe_pct:.0f} % is below min_cfe_pct {c.min_cfe_pct}"
    if name == "carbon_signal" and ctx.policy.carbon_signal is CarbonSignal.PROVIDER_CFE:
        return (f"{ctx.region.cloud} publishes no hourly-matched CFE % for {ctx.region.key}; "
                "the policy ranks on provider_cfe and never reads it as 0 % or as the grid's "
                "CFE. To fix: use carbon_signal cfe to rank every cloud on the grid's CFE.")
    if name == "carbon_signal":
        return (f"no marginal intensity is known for {ctx.region.key}; the policy ranks on "
                "marginal and never substitutes another signal type")
    if name == "deadline":
        return f"estimated runtime {ctx.runtime_h:.1f} h ends after the deadline {ctx.deadline}"
    if name == "provider":
        return (f"the provider adapter {ctx.region.cloud} is routed to cannot launch "
                f"{ctx.offer.accelerator} ({ctx.offer.instance_type}); see "
                "scheduler/placement/launchable.py")
    if name == "region_not_enabled":
        return (f"{ctx.region.key} is an opt-in region that the account's credentials have "
                "not enabled (its adapter said so); enable it in the account to use it")
    raise ValueError(f"no reason text for filter code {code}")
