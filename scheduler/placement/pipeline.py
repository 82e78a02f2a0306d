"""The placement pipeline: candidates -> filters -> raw scores -> normalise -> weigh -> rank.

Pure: no network, no Redis, no clock (``now`` is an argument). Vectorised with
NumPy over each job's whole candidate set. Same inputs, same decision.

Tie-break (fixed): higher total score, then lower co2e_kg, then lower cost_usd,
then lower runtime_h, then (cloud, region, instance_type) in alphabetical order.

Baseline: the same candidates and constraints ranked by total job price alone
(what a price-only scheduler such as SkyPilot's default optimiser picks). It uses
the same tie-break, so among equally priced offers it takes the greener one:
savings shown against it are never inflated by an arbitrary tie.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np

from policies.model import Policy, SpotMode, Weights
from scheduler import estimate
from scheduler.catalog import Catalog
from scheduler.jobs import Job
from scheduler.placement.arrays import OfferArrays, RegionSignals, arrays_for
from scheduler.placement.decision import PlacementDecision
from scheduler.placement.filters import CODE, FEASIBLE, region_rejections

PRICE_ONLY = Weights(carbon=0.0, cost=1.0, time=0.0)


def _goodness(values: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Min-max normalise lower-is-better values to 0..1 (1 = best) over the feasible set."""
    out = np.full(values.shape, np.nan)
    if not feasible.any():
        return out
    sub = values[feasible]
    low, high = sub.min(), sub.max()
    out[feasible] = 1.0 if high == low else (high - sub) / (high - low)
    return out


def rank(
    weights: Weights, *, feasible: np.ndarray, co2e_kg: np.ndarray, cost_usd: np.ndarray,
    runtime_h: np.ndarray, name_rank: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised scores, total score and the ranking (feasible positions, best first)."""
    n_carbon = _goodness(co2e_kg, feasible)
    n_cost = _goodness(cost_usd, feasible)
    n_time = _goodness(runtime_h, feasible)
    total_weight = weights.carbon + weights.cost + weights.time
    score = (weights.carbon * n_carbon + weights.cost * n_cost + weights.time * n_time) / (
        total_weight)
    idx = np.flatnonzero(feasible)
    order = np.lexsort((name_rank[idx], runtime_h[idx], cost_usd[idx], co2e_kg[idx], -score[idx]))
    return n_carbon, n_cost, n_time, score, idx[order]


class Placer:
    """Places jobs over one catalog with one set of region signals.

    Design choice: region-level filter results depend only on the policy, so they
    are computed once per distinct policy and reused for every job that shares it;
    that keeps a batch of 10,000 jobs to a handful of NumPy operations per job.
    """

    def __init__(self, catalog: Catalog, *, signals: RegionSignals | None = None) -> None:
        self.arrays: OfferArrays = arrays_for(catalog)
        self.signals = signals or RegionSignals.from_catalog(catalog)
        self._region_codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _policy_columns(self, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
        """(region rejection codes, scoring intensity per region) for ``policy``; cached."""
        key = policy.model_dump_json()
        cached = self._region_codes.get(key)
        if cached is None:
            s = self.signals
            codes = region_rejections(
                policy, self.arrays.regions, cfe_pct=s.cfe_pct,
                grid_marginal_g_per_kwh=s.grid_marginal_g_per_kwh)
            intensity = estimate.scoring_intensity_g_per_kwh(
                policy.carbon_signal, grid_average_g_per_kwh=s.grid_average_g_per_kwh,
                grid_marginal_g_per_kwh=s.grid_marginal_g_per_kwh, cfe_pct=s.cfe_pct)
            cached = self._region_codes[key] = (codes, intensity)
        return cached

    def place(self, job: Job, *, now: dt.datetime, allow_defer: bool = True) -> PlacementDecision:
        """Score and rank every candidate of ``job``.

        Args:
            job: the resolved job.
            now: the decision time (injected: the pipeline reads no clock).
            allow_defer: whether the decision may choose a later start (temporal
                shifting); False when a DEFERRED job is released and must run now.
        """
        a = self.arrays
        policy = job.policy
        accel_counts = dict(job.alternatives)
        idx = np.concatenate([a.offers_by_accelerator[name] for name in accel_counts])
        idx.sort()
        requested = np.array([accel_counts[a.accelerator_names[k]]
                              for k in a.accelerator_index[idx]], dtype=float)
        region_idx = a.region_index[idx]
        region_codes, region_intensity = self._policy_columns(policy)
        spot = bool(job.spec.resources.spot) or policy.constraints.spot is SpotMode.REQUIRE
        price = (a.spot_price_usd_per_hour if spot else a.price_usd_per_hour)[idx]

        ref = self.arrays.catalog.accelerator(job.reference[0])
        count = a.accelerator_count[idx]
        runtime_h = estimate.scaled_runtime_h(
            reference_hours=job.spec.work.hours, reference_tflops=ref.peak_dense_tflops,
            reference_count=job.reference[1], tflops=a.peak_dense_tflops[idx], count=count)
        power_w = estimate.average_power_w(
            tdp_w=a.tdp_w[idx], utilization=job.utilization, measured_w=job.spec.work.avg_power_w)
        energy = estimate.energy_kwh(runtime_h=runtime_h, accelerator_count=count,
                                     average_power_w=power_w, pue=a.pue[region_idx])
        intensity = region_intensity[region_idx]
        co2e = estimate.co2e_kg(energy_kwh=energy, intensity_g_per_kwh=intensity)
        cost = price * runtime_h

        codes = np.where(count != requested, CODE["accelerator_count"], region_codes[region_idx])
        codes = codes.astype(np.int8)

        def reject(name: str, mask: np.ndarray) -> None:
            codes[(codes == FEASIBLE) & mask] = CODE[name]

        reject("pricing", np.isnan(price))
        limit = policy.constraints.max_price_usd_per_hour
        if limit is not None:
            reject("max_price", price > limit)
        deadline = job.spec.deadline
        if deadline is not None:
            hours_left = (deadline - now).total_seconds() / 3600.0
            reject("deadline", runtime_h > hours_left)

        feasible = codes == FEASIBLE
        name_rank = a.name_rank[idx]
        n_carbon, n_cost, n_time, score, ranking = rank(
            policy.weights, feasible=feasible, co2e_kg=co2e, cost_usd=cost,
            runtime_h=runtime_h, name_rank=name_rank)
        *_, baseline_ranking = rank(
            PRICE_ONLY, feasible=feasible, co2e_kg=co2e, cost_usd=cost, runtime_h=runtime_h,
            name_rank=name_rank)

        cfe = self.signals.cfe_pct[region_idx]
        notes = []
        if str(policy.carbon_signal) == "cfe" and np.isnan(cfe[feasible]).any():
            missing = sorted({a.regions[r].key for r in region_idx[feasible & np.isnan(cfe)]})
            notes.append(
                f"CFE % is not published for {len(missing)} feasible region(s) "
                f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); they are "
                "scored as 0 % CFE (the full grid average), never as green.")
        if len(idx) == 0:
            notes.append("no offer in the catalog carries the requested accelerators")
        power_basis = ("measured avg_power_w" if job.spec.work.avg_power_w is not None
                       else f"TDP x utilisation {job.utilization:.2f}")
        return PlacementDecision(
            job=job.name, policy=policy, spot=spot, power_basis=power_basis,
            deadline=deadline.isoformat() if deadline else None,
            offers=tuple(a.offers[k] for k in idx),
            regions=tuple(a.regions[r] for r in region_idx),
            requested_count=requested, rejected_by=codes, price_usd_per_hour=price,
            runtime_h=runtime_h, energy_kwh=energy, intensity_g_per_kwh=intensity,
            co2e_kg=co2e, cost_usd=cost, cfe_pct=cfe,
            signal_source=tuple(self.signals.source[r] for r in region_idx),
            signal_observed_at=tuple(self.signals.observed_at[r] for r in region_idx),
            norm_carbon=n_carbon, norm_cost=n_cost, norm_time=n_time, score=score,
            ranking=ranking, baseline_ranking=baseline_ranking, notes=tuple(notes),
        )

    def place_all(self, jobs: Iterable[Job], *, now: dt.datetime) -> list[PlacementDecision]:
        """Place each job independently (no shared capacity is modelled in a dry run)."""
        return [self.place(job, now=now) for job in jobs]
