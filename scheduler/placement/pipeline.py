"""The placement pipeline: candidates -> filters -> raw scores -> normalise -> weigh -> rank.

Pure: no network, no Redis, no clock (``now`` is an argument). Vectorised with
NumPy over each job's whole candidate set. Same inputs, same decision.

Carbon: the policy's carbon signal only ranks. Each candidate's ranked carbon is
energy_kwh x ``estimate.ranked_per_kwh`` (kg CO2e at the average or marginal intensity, or
kWh not covered by the grid's or the provider's CFE); the reported ``co2e_kg`` is always
location-based, energy_kwh x the grid average intensity / 1000.

Tie-break (fixed): higher total score, then lower ranked carbon, then lower cost_usd,
then lower runtime_h, then (cloud, region, instance_type) in alphabetical order.

Baseline: the same candidates and constraints ranked by total job price alone
(what a price-only scheduler such as SkyPilot's default optimiser picks). Among equally
priced offers it takes the one with the lower location-based co2e_kg (then the same
tie-break): savings, in co2e_kg, shown against it are never inflated by an arbitrary tie.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from greenplace.policies.model import Policy, SpotMode, Weights
from greenplace.scheduler import estimate
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.placement import timing
from greenplace.scheduler.placement.arrays import OfferArrays, RegionSignals, arrays_for
from greenplace.scheduler.placement.decision import PlacementDecision, data_notes
from greenplace.scheduler.placement.filters import CODE, FEASIBLE, region_rejections
from greenplace.scheduler.placement.launchable import unlaunchable

_POLICY_CACHE_SIZE = 256
# Jobs placed together at most (memory: about 8 x 8 bytes per job and candidate).
CHUNK_JOBS = 4096


def _goodness(values: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Min-max normalise lower-is-better values to 0..1 (1 = best) over the feasible set.

    ``values`` holds one row per job (or is one row); ``feasible`` masks its columns.
    """
    out = np.full(values.shape, np.nan)
    if not feasible.any():
        return out
    sub = values[..., feasible]
    low = sub.min(axis=-1, keepdims=True)
    high = sub.max(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[..., feasible] = np.where(high == low, 1.0, (high - sub) / (high - low))
    return out


def rank(
    weights: Weights, *, feasible: np.ndarray, carbon: np.ndarray, cost_usd: np.ndarray,
    runtime_h: np.ndarray, name_rank: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Normalised scores, total score and the ranking (feasible positions, best first).

    ``carbon`` is the ranked carbon (lower is better, in the signal's unit). The figures
    hold one row per job (or are one row); each row is ranked on its own.
    """
    n_carbon = _goodness(carbon, feasible)
    n_cost = _goodness(cost_usd, feasible)
    n_time = _goodness(runtime_h, feasible)
    total_weight = weights.carbon + weights.cost + weights.time
    score = (weights.carbon * n_carbon + weights.cost * n_cost + weights.time * n_time) / (
        total_weight)
    return n_carbon, n_cost, n_time, score, order(
        score, feasible=feasible, carbon=carbon, cost_usd=cost_usd, runtime_h=runtime_h,
        name_rank=name_rank)


def order(score: np.ndarray, *, feasible: np.ndarray, carbon: np.ndarray,
          cost_usd: np.ndarray, runtime_h: np.ndarray, name_rank: np.ndarray) -> np.ndarray:
    """The feasible positions of each row, best ``score`` first, under the fixed tie-break
    (then lower ``carbon``, cost, runtime, name)."""
    idx = np.flatnonzero(feasible)
    keys = [runtime_h[..., idx], cost_usd[..., idx], carbon[..., idx], -score[..., idx]]
    positions = np.lexsort([np.broadcast_to(name_rank[idx], keys[0].shape), *keys], axis=-1)
    return idx[positions]


@dataclass(frozen=True, slots=True, kw_only=True)
class _CandidateSet:
    """The offers carrying a job's accelerator alternatives, and their static columns."""

    offer_index: np.ndarray
    region_index: np.ndarray
    requested_count: np.ndarray
    accelerator_count: np.ndarray
    tdp_w: np.ndarray
    peak_dense_tflops: np.ndarray
    host_power_w: np.ndarray
    pue: np.ndarray
    name_rank: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibratedPower:
    """An accelerator's measured average power per chip, learnt from finished jobs."""

    power_w: float  # a robust statistic (the median) of the runs
    runs: int


def calibration_key(accelerator: str, label: str | None = None) -> str:
    """How a calibration is named: ``H100`` for every run of the accelerator, ``H100:LABEL``
    for the runs of jobs with that ``calibration_label`` (labels hold no ':')."""
    return accelerator if label is None else f"{accelerator}:{label}"


_LABEL_CACHE_SIZE = 256  # distinct calibration labels a placer keeps the columns of


class Placer:
    """Places jobs over one catalog with one set of region signals.

    Design choice: region-level filter results depend only on the policy, and the
    candidate set only on the accelerator alternatives, so both are computed once
    and reused for every job that shares them; a batch of 10,000 jobs then costs a
    handful of NumPy operations per job.
    """

    def __init__(self, catalog: Catalog, *, signals: RegionSignals | None = None,
                 forecast: timing.ForecastProvider | None = None,
                 routes: Mapping[str, str] | None = None,
                 region_gate: Callable[[], frozenset[str]] | None = None,
                 price_max_age_days: float | None = None) -> None:
        """``routes``: cloud -> provider name (``Settings.providers``); offers the routed
        adapter cannot launch are rejected by the ``provider`` filter (None: local-sim).
        ``region_gate``: the ``cloud:region`` keys the account may not launch in right now
        (opt-in regions not enabled), asked at each placement; they are rejected by the
        ``region_not_enabled`` filter. None (the dry run) asks no cloud.
        ``price_max_age_days``: a decision whose chosen offer's price ``as_of`` is older
        carries a note (``Settings.price_max_age_days``; None or 0: never)."""
        self.arrays: OfferArrays = arrays_for(catalog)
        self.unlaunchable = unlaunchable(catalog, routes)
        self.region_gate = region_gate
        self.price_max_age_days = price_max_age_days
        self._region_keys = [r.key for r in catalog.regions]
        self._gate_seen: tuple[frozenset[str], np.ndarray] | None = None
        self.signals = signals or RegionSignals.from_catalog(catalog)
        # Temporal shifting (scheduler.placement.timing) runs only with a forecast provider:
        # the one seam through which placement may reach the network.
        self.forecast = forecast
        self._policy_cache: dict[int, tuple[Policy, np.ndarray, np.ndarray]] = {}
        self._candidate_cache: dict[tuple[tuple[str, int], ...], _CandidateSet] = {}
        self.calibration: dict[str, CalibratedPower] = {}
        self._calibrated: dict[str | None, tuple[np.ndarray, tuple[str | None, ...]]] = {}

    def calibrate(self, calibration: Mapping[str, CalibratedPower]) -> None:
        """Estimate the power of these accelerators from measured runs (``scheduler/
        calibration.py``) instead of TDP x utilisation, for jobs without ``avg_power_w``.
        Keys are ``calibration_key``s: an accelerator's, and an (accelerator, label)'s."""
        self.calibration = dict(calibration)
        self._calibrated = {}

    def _calibrated_w(self, label: str | None) -> tuple[np.ndarray, tuple[str | None, ...]]:
        """Per accelerator (``arrays.accelerator_names``): the calibrated watts per chip for
        a job of ``label`` (NaN: none), and the calibration each comes from: the label's
        where it has one, else the accelerator's (None: neither)."""
        cached = self._calibrated.get(label)
        if cached is None:
            keys: list[str | None] = []
            for name in self.arrays.accelerator_names:
                labelled = calibration_key(name, label) if label is not None else None
                keys.append(labelled if labelled in self.calibration
                            else name if name in self.calibration else None)
            watts = np.array([self.calibration[k].power_w if k is not None else np.nan
                              for k in keys], dtype=float)
            if len(self._calibrated) >= _LABEL_CACHE_SIZE:
                self._calibrated.clear()
            cached = self._calibrated[label] = (watts, tuple(keys))
        return cached

    def _policy_columns(self, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
        """(region rejection codes, ranked carbon per kWh per region) for ``policy``; cached."""
        cached = self._policy_cache.get(id(policy))
        if cached is None or cached[0] is not policy:
            if len(self._policy_cache) >= _POLICY_CACHE_SIZE:
                self._policy_cache.clear()  # a long-lived worker sees ever new Policy objects
            s = self.signals
            codes = region_rejections(
                policy, self.arrays.regions, cfe_pct=s.cfe_pct,
                grid_marginal_g_per_kwh=s.grid_marginal_g_per_kwh,
                provider_cfe_pct=s.provider_cfe_pct)
            per_kwh = estimate.ranked_per_kwh(
                policy.carbon_signal, grid_average_g_per_kwh=s.grid_average_g_per_kwh,
                grid_marginal_g_per_kwh=s.grid_marginal_g_per_kwh, grid_cfe_pct=s.cfe_pct,
                provider_cfe_pct=s.provider_cfe_pct)
            cached = self._policy_cache[id(policy)] = (policy, codes, per_kwh)
        return cached[1], cached[2]

    def _candidates(self, alternatives: tuple[tuple[str, int], ...]) -> _CandidateSet:
        cached = self._candidate_cache.get(alternatives)
        if cached is None:
            a = self.arrays
            idx = np.sort(np.concatenate([a.offers_by_accelerator[n] for n, _ in alternatives]))
            wanted = dict(alternatives)
            requested = np.array([wanted[a.accelerator_names[k]]
                                  for k in a.accelerator_index[idx]], dtype=float)
            region_idx = a.region_index[idx]
            cached = self._candidate_cache[alternatives] = _CandidateSet(
                offer_index=idx, region_index=region_idx, requested_count=requested,
                accelerator_count=a.accelerator_count[idx], tdp_w=a.tdp_w[idx],
                peak_dense_tflops=a.peak_dense_tflops[idx], host_power_w=a.host_power_w[idx],
                pue=a.pue[region_idx],
                name_rank=a.name_rank[idx])
        return cached

    def _power_w(self, job: Job, c: _CandidateSet) -> tuple[np.ndarray, str]:
        """Average power per accelerator of each candidate, and what it is based on: the
        job's measured ``avg_power_w``, else calibration from finished runs (those of the
        job's ``calibration_label`` on that accelerator where they are enough, else all the
        accelerator's), else TDP x utilisation."""
        by_tdp = estimate.average_power_w(tdp_w=c.tdp_w, utilization=job.utilization,
                                          measured_w=job.spec.work.avg_power_w)
        tdp_basis = f"TDP x utilisation {job.utilization:.2f}"
        if job.spec.work.avg_power_w is not None:
            return by_tdp, "measured avg_power_w"
        label = job.spec.calibration_label
        watts, keys = self._calibrated_w(label)
        accelerators = self.arrays.accelerator_index[c.offer_index]
        calibrated = watts[accelerators]
        used = ~np.isnan(calibrated)
        if not used.any():
            return by_tdp, tdp_basis
        parts = []
        for k in sorted(set(accelerators[used].tolist()),
                        key=lambda k: self.arrays.accelerator_names[k]):
            name = self.arrays.accelerator_names[k]
            key = keys[k] or name  # a used accelerator has a calibration
            power = self.calibration[key]
            of = (f" of label {label}" if key != name
                  else " of any label" if label is not None else "")
            why = f"; too few runs of label {label}" if label is not None and key == name else ""
            parts.append(f"{name} calibrated from {power.runs} runs{of} "
                         f"({power.power_w:.0f} W per chip{why})")
        basis = "; ".join(parts)
        if not used.all():
            basis += f"; {tdp_basis} for the others"
        return np.where(used, calibrated, by_tdp), basis

    def _disabled_regions(self) -> np.ndarray | None:
        """Per region, whether the gate says the account may not use it (None: none)."""
        if self.region_gate is None:
            return None
        keys = self.region_gate()
        if not keys:
            return None
        if self._gate_seen is None or self._gate_seen[0] != keys:
            self._gate_seen = (keys, np.array([k in keys for k in self._region_keys]))
        return self._gate_seen[1]

    def place(self, job: Job, *, now: dt.datetime, allow_defer: bool = True) -> PlacementDecision:
        """Score and rank every candidate of ``job``.

        Args:
            job: the resolved job.
            now: the decision time (injected: the pipeline reads no clock).
            allow_defer: whether the decision may choose a later start (temporal
                shifting); False when a DEFERRED job is released and must run now.
        """
        (decision,) = self._place_shape([job], now=now)
        if self.forecast is not None and allow_defer:
            decision = timing.shift(decision, job=job, forecasts=self.forecast, now=now)
        return decision

    def place_all(self, jobs: Sequence[Job], *, now: dt.datetime) -> list[PlacementDecision]:
        """Place each job independently (no shared capacity is modelled in a dry run)."""
        return list(self.place_each(jobs, now=now))

    def place_each(self, jobs: Sequence[Job], *, now: dt.datetime,
                   chunk_jobs: int = CHUNK_JOBS) -> Iterator[PlacementDecision]:
        """The decision of each job, in order, each identical to ``place(job)``.

        Design choice: jobs of one shape (``shape_key``) differ only in their hours, so
        within each run of ``chunk_jobs`` jobs they are scored as one matrix (a row per
        job) with the same element-wise formulas and ranked by one sort along the rows:
        a batch costs a few NumPy operations per shape instead of per job, and memory
        stays bounded by the chunk whatever the batch size.
        """
        for start in range(0, len(jobs), chunk_jobs):
            chunk = jobs[start:start + chunk_jobs]
            shapes: dict[object, list[int]] = {}
            for i, job in enumerate(chunk):
                key = shape_key(job)
                shapes.setdefault(i if key is None else key, []).append(i)
            decisions: list[PlacementDecision | None] = [None] * len(chunk)
            for members in shapes.values():
                placed = self._place_shape([chunk[i] for i in members], now=now)
                for i, decision in zip(members, placed, strict=True):
                    decisions[i] = decision
            for job, decided in zip(chunk, decisions, strict=True):
                assert decided is not None
                yield decided if self.forecast is None else timing.shift(
                    decided, job=job, forecasts=self.forecast, now=now)

    def _place_shape(self, jobs: Sequence[Job], *, now: dt.datetime) -> list[PlacementDecision]:
        """Place jobs of one shape (or one job alone): one row of figures per job."""
        a = self.arrays
        job = jobs[0]
        policy = job.policy
        c = self._candidates(job.alternatives)
        region_codes, region_per_kwh = self._policy_columns(policy)
        disabled = self._disabled_regions()
        if disabled is not None:
            region_codes = np.where((region_codes == FEASIBLE) & disabled,
                                    CODE["region_not_enabled"], region_codes).astype(np.int8)
        spot = bool(job.spec.resources.spot) or policy.constraints.spot is SpotMode.REQUIRE
        price = (a.spot_price_usd_per_hour if spot else a.price_usd_per_hour)[c.offer_index]

        ref = a.catalog.accelerator(job.reference[0])
        hours = np.array([[j.spec.work.hours] for j in jobs])
        runtime_h = estimate.scaled_runtime_h(
            reference_hours=hours, reference_tflops=ref.peak_dense_tflops,
            reference_count=job.reference[1], tflops=c.peak_dense_tflops,
            count=c.accelerator_count)
        power_w, power_basis = self._power_w(job, c)
        accelerator_energy = estimate.energy_kwh(
            runtime_h=runtime_h, accelerator_count=c.accelerator_count, average_power_w=power_w,
            pue=c.pue)
        host_energy = estimate.host_energy_kwh(runtime_h=runtime_h, host_power_w=c.host_power_w,
                                               pue=c.pue)
        energy = accelerator_energy + host_energy
        intensity = self.signals.grid_average_g_per_kwh[c.region_index]  # location-based
        co2e = estimate.co2e_kg(energy_kwh=energy, intensity_g_per_kwh=intensity)
        ranked = energy * region_per_kwh[c.region_index]  # what the policy's signal ranks
        cost = price * runtime_h

        codes = np.where(c.accelerator_count != c.requested_count, CODE["accelerator_count"],
                         region_codes[c.region_index]).astype(np.int8)

        def reject(name: str, mask: np.ndarray) -> None:
            codes[(codes == FEASIBLE) & mask] = CODE[name]

        reject("pricing", np.isnan(price))
        limit = policy.constraints.max_price_usd_per_hour
        if limit is not None:
            reject("max_price", price > limit)
        deadline = job.spec.deadline
        if deadline is not None:  # such a job is placed alone (see shape_key)
            hours_left = (deadline - now).total_seconds() / 3600.0
            reject("deadline", runtime_h[0] > hours_left)
        reject("provider", self.unlaunchable[c.offer_index])

        feasible = codes == FEASIBLE
        n_carbon, n_cost, n_time, score, ranking = rank(
            policy.weights, feasible=feasible, carbon=ranked, cost_usd=cost,
            runtime_h=runtime_h, name_rank=c.name_rank)
        # Price-only weights (carbon 0, cost 1, time 0) score a candidate by its normalised
        # cost alone: the baseline orders that column, ties to the lower location-based co2e.
        baseline_ranking = order(n_cost, feasible=feasible, carbon=co2e, cost_usd=cost,
                                 runtime_h=runtime_h, name_rank=c.name_rank)
        cfe_pct = self.signals.cfe_pct[c.region_index]
        notes = data_notes(policy.carbon_signal, arrays=a, region_index=c.region_index,
                           feasible=feasible, cfe_pct=cfe_pct)
        memo: dict[str, Any] = {}
        return [PlacementDecision(
            job=j.name, policy=policy, spot=spot, power_basis=power_basis,
            deadline=deadline.isoformat() if deadline else None,
            arrays=a, signals=self.signals, offer_index=c.offer_index,
            region_index=c.region_index, requested_count=c.requested_count,
            rejected_by=codes, price_usd_per_hour=price, runtime_h=runtime_h[row],
            energy_kwh=energy[row], accelerator_energy_kwh=accelerator_energy[row],
            host_energy_kwh=host_energy[row], intensity_g_per_kwh=intensity, co2e_kg=co2e[row],
            ranked_carbon=ranked[row], cost_usd=cost[row], cfe_pct=cfe_pct,
            norm_carbon=n_carbon[row],
            norm_cost=n_cost[row], norm_time=n_time[row], score=score[row],
            ranking=ranking[row], baseline_ranking=baseline_ranking[row], data_notes=notes,
            decided_at=now, price_max_age_days=self.price_max_age_days, shape_memo=memo,
        ) for row, j in enumerate(jobs)]


def shape_key(job: Job) -> object:
    """What a job's ranking depends on besides its hours; None when it must be placed
    alone (a deadline or a maximum delay makes feasibility and timing depend on hours).

    Runtime, energy, emissions and cost all scale with ``work.hours``, and the filters
    and the normalisation do not change with it: jobs of one shape differ only in scale.
    """
    spec = job.spec
    if spec.deadline is not None or spec.max_delay_hours is not None:
        return None
    return (job.alternatives, job.reference, id(job.policy), bool(spec.resources.spot),
            job.utilization, spec.work.avg_power_w, spec.calibration_label)
