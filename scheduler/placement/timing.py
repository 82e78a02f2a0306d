"""Temporal shifting: choose (region, start time) over the forecast horizon.

A job may wait when it says so: ``deadline`` (finish by) and/or
``max_delay_hours`` (start at most this much later); ``pausable`` jobs may run
in several slots. Given the pipeline's decision (every feasible candidate,
scored "if run now") and a forecast per region, this module expands each
candidate of the best regions into (candidate, start) options, scores them with
the policy's weights exactly as the pipeline does (min-max normalised carbon,
cost and runtime over all options), and picks the best. When that start is
later than now and it saves enough against running the pipeline's choice now,
the decision gets ``start_at`` (the job becomes DEFERRED until then) and the
chosen candidate moves to the head of the ranking. Without a forecast, or when
the job may not wait, the job runs now and the decision is left as it was.

Signal types are never mixed: ``average``, ``cfe`` and ``provider_cfe`` policies use a
grid-average forecast (for ``cfe`` / ``provider_cfe`` scaled by the candidate's current
``1 - CFE share``, grid or provider, since CFE itself is not forecast), ``marginal``
policies a marginal forecast. Within one region every option, "now" included, comes from
the same forecast, so a deferral is never an artefact of comparing a live value with a
forecast.

Accounting apart from ranking: the window is chosen (and the saving threshold applied) on
those scoring figures, but the ``co2e_kg`` reported is location-based: energy x the
forecast grid average where the forecast is of the grid average; for a ``marginal``
policy (a marginal forecast) it is energy x the decision's grid average (the catalog's
annual figure), and the note says so.

The forecast is piecewise constant: each point holds until the next, the last
for the forecast's step. A window counts only when the forecast covers all of it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Region
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.placement.decision import PlacementDecision
from greenplace.scheduler.signals.base import Forecast, iso, utc

# Design choice: forecasts carry errors of several percent (day-ahead MAPE of
# 5-15 % is typical), so a deferral must promise at least this saving against
# running now; otherwise the job runs now rather than waiting on noise.
MIN_SAVING_PCT = 3.0
# Design choice: forecasts are fetched for the pipeline's best few regions only
# (in ranking order); a region ranked far below rarely wins by waiting, and each
# region costs a forecast call.
MAX_REGIONS = 8


class ForecastProvider(Protocol):
    """Where temporal shifting gets its forecasts (a signal chain, a trace, a test)."""

    def forecast(self, region: Region, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast | None:
        """The forecast of ``signal`` for ``region`` over ``[start, end]``, or None."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """When a run happens and its mean forecast intensity (of the forecast's signal type)."""

    start_at: dt.datetime
    end_at: dt.datetime
    forecast_mean: float  # mean forecast value over the run, in the forecast's unit
    slots: tuple[tuple[dt.datetime, dt.datetime], ...]  # one for a contiguous run


@dataclass(frozen=True, slots=True, kw_only=True)
class TimingChoice:
    """The chosen (candidate, window), and what running the pipeline's choice now would emit."""

    candidate: int
    window: Window
    intensity_g_per_kwh: float  # scoring intensity over the window (the policy's signal)
    score_co2e_kg: float  # energy x scoring intensity: what the window was chosen on
    reference_score_co2e_kg: float  # the pipeline's choice, run now (same forecast basis)
    co2e_kg: float  # location-based: energy x grid average (forecast where it is of one)
    reference_co2e_kg: float  # location-based, the pipeline's choice run now
    forecast_source: str
    deferred: bool  # start_at is later than now and saves at least MIN_SAVING_PCT
    notes: tuple[str, ...]

    @property
    def saving_pct(self) -> float:
        """The saving on the policy's signal (what decides a deferral), in %."""
        if self.reference_score_co2e_kg <= 0:
            return 0.0
        return 100.0 * (self.reference_score_co2e_kg - self.score_co2e_kg) / (
            self.reference_score_co2e_kg)


@dataclass(frozen=True, slots=True)
class _Series:
    """A forecast as boundaries (seconds after now) and the value on each segment."""

    bounds: np.ndarray  # n + 1 ascending
    values: np.ndarray  # n
    cumulative: np.ndarray  # n + 1: integral of the series from bounds[0]


def series(forecast: Forecast, *, now: dt.datetime) -> _Series | None:
    """The forecast relative to ``now``; None when it does not reach back to now.

    The first point is allowed to start up to one step after ``now`` (hourly
    forecasts start at the next full hour) and is then held back to ``now``.
    """
    starts = forecast.starts_epoch_s - utc(now).timestamp()
    values = forecast.values
    bounds = np.append(starts, starts[-1] + forecast.step_s)
    if bounds[0] > 0:
        if bounds[0] > forecast.step_s:
            return None
        bounds[0] = 0.0
    widths = np.diff(bounds)
    keep = widths > 0
    if not keep.all():
        values = values[keep]
        bounds = np.append(bounds[:-1][keep], bounds[-1])
        widths = np.diff(bounds)
    cumulative = np.concatenate([[0.0], np.cumsum(values * widths)])
    return _Series(bounds=bounds, values=values, cumulative=cumulative)


def window_means(s: _Series, *, starts_s: np.ndarray, duration_s: float) -> np.ndarray:
    """Mean value over ``[start, start + duration]`` for each start; NaN where not covered."""
    ends = starts_s + duration_s
    inside = (starts_s >= s.bounds[0]) & (ends <= s.bounds[-1] + 1e-6)
    area = np.interp(ends, s.bounds, s.cumulative) - np.interp(starts_s, s.bounds, s.cumulative)
    return np.where(inside, area / duration_s, np.nan)


def greenest_slots(s: _Series, *, duration_s: float,
                   latest_end_s: float) -> tuple[float, list[tuple[float, float]]] | None:
    """For a pausable job: the lowest-value segments adding up to ``duration_s``.

    Returns (mean value, [(start_s, end_s), ...] in time order), or None when the
    forecast covers less than ``duration_s`` before ``latest_end_s``.
    """
    lo = np.maximum(s.bounds[:-1], 0.0)
    hi = np.minimum(s.bounds[1:], latest_end_s)
    usable = hi > lo
    lo, hi, values = lo[usable], hi[usable], s.values[usable]
    if (hi - lo).sum() + 1e-6 < duration_s:
        return None
    order = np.lexsort((lo, values))
    left, area, picked = duration_s, 0.0, []
    for k in order:
        take = min(hi[k] - lo[k], left)
        picked.append((float(lo[k]), float(lo[k] + take)))
        area += values[k] * take
        left -= take
        if left <= 1e-6:
            break
    picked.sort()
    merged: list[tuple[float, float]] = []
    for a, b in picked:
        if merged and abs(merged[-1][1] - a) < 1e-6:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return area / duration_s, merged


def wait_limits(job: Job, *, now: dt.datetime,
                runtime_h: float) -> tuple[float, float] | None:
    """(latest start, latest end) in seconds after ``now`` for a run of ``runtime_h``.

    None when the job may not wait (neither ``deadline`` nor ``max_delay_hours``).
    """
    spec = job.spec
    if spec.deadline is None and spec.max_delay_hours is None:
        return None
    run_s = runtime_h * 3600.0
    latest_start, latest_end = np.inf, np.inf
    if spec.max_delay_hours is not None:
        latest_start = spec.max_delay_hours * 3600.0
        latest_end = latest_start + run_s
    if spec.deadline is not None:
        until = (utc(spec.deadline) - utc(now)).total_seconds()
        latest_start = min(latest_start, until - run_s)
        latest_end = min(latest_end, until)
    if latest_start < 0:
        return None
    return float(latest_start), float(latest_end)


def choose(decision: PlacementDecision, *, job: Job, forecasts: ForecastProvider,
           now: dt.datetime, min_saving_pct: float = MIN_SAVING_PCT,
           max_regions: int = MAX_REGIONS) -> TimingChoice | None:
    """The best (candidate, start) for ``job``; None when the job may not wait or is unplaced.

    The returned choice has ``deferred`` False when running now is best (or the
    saving is below ``min_saving_pct``); its notes say why.

    Design choice: options are built as arrays (candidate, start, intensity), with
    window means computed once per (region, runtime), so a job with hundreds of
    feasible candidates and a 5-minute forecast stays a few NumPy operations; only
    the winning option becomes a ``Window``.
    """
    from greenplace.scheduler.placement.pipeline import (
        rank,  # the pipeline's own scoring; imported late
    )

    if not decision.placed:
        return None
    now = utc(now)
    feasible = decision.ranking
    runtime_h = decision.runtime_h[feasible]
    limits = [wait_limits(job, now=now, runtime_h=float(h)) for h in np.unique(runtime_h)]
    if all(v is None for v in limits):
        return None
    region_of = decision.arrays.regions
    feasible_regions = decision.region_index[feasible]
    _, first = np.unique(feasible_regions, return_index=True)
    chosen_regions = feasible_regions[np.sort(first)][:max_regions]  # in ranking order
    signal = (CarbonSignal.MARGINAL if decision.carbon_signal is CarbonSignal.MARGINAL
              else CarbonSignal.AVERAGE)
    horizon_end = now + dt.timedelta(seconds=max(v[1] for v in limits if v is not None))
    per_region: dict[int, tuple[_Series, str] | None] = {}
    missing: list[str] = []
    for r in chosen_regions.tolist():
        found = forecasts.forecast(region_of[r], signal=signal, start=now, end=horizon_end)
        s = series(found, now=now) if found is not None and found.points else None
        per_region[r] = (s, found.source) if s is not None and found is not None else None
        if per_region[r] is None:
            missing.append(region_of[r].key)

    cands: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    means: list[np.ndarray] = []
    plans: dict[int, tuple[float, list[tuple[float, float]]]] = {}  # option -> pausable plan
    n_options = 0
    memo: dict[tuple[int, float], tuple[np.ndarray, np.ndarray, tuple | None]] = {}
    considered = np.isin(feasible_regions, chosen_regions)
    for c in feasible[considered].tolist():
        r = int(decision.region_index[c])
        runtime_s = float(decision.runtime_h[c]) * 3600.0
        entry = per_region[r]
        limit = wait_limits(job, now=now, runtime_h=runtime_s / 3600.0)
        key = (r, runtime_s)
        if key not in memo:
            memo[key] = _region_options(entry, limit, runtime_s=runtime_s,
                                        pausable=job.spec.pausable)
        opt_starts, opt_means, plan = memo[key]
        if len(opt_starts) == 0:  # no forecast, no permission, or no cover for a run now
            opt_starts, opt_means = np.zeros(1), np.array([np.nan])
        cands.append(np.full(len(opt_starts), c))
        starts.append(opt_starts)
        means.append(opt_means)
        n_options += len(opt_starts)
        if plan is not None:
            plans[n_options] = plan
            cands.append(np.array([c]))
            starts.append(np.array([plan[1][0][0]]))
            means.append(np.array([plan[0]]))
            n_options += 1

    cand = np.concatenate(cands)
    start_s = np.concatenate(starts)
    mean = np.concatenate(means)
    factor = _factors(decision, cand)
    intensity = np.where(np.isnan(mean), decision.intensity_g_per_kwh[cand] * factor,
                         mean * factor)
    if signal is CarbonSignal.MARGINAL:
        intensity = np.where(np.isnan(mean), decision.signals.grid_marginal_g_per_kwh[
            decision.region_index[cand]], intensity)
    co2e = decision.energy_kwh[cand] * intensity / 1000.0  # scoring figure: ranks windows
    # Location-based: the forecast grid average where the forecast is of it, else the
    # decision's grid average.
    located = (decision.co2e_kg[cand] if signal is CarbonSignal.MARGINAL else np.where(
        np.isnan(mean), decision.co2e_kg[cand], decision.energy_kwh[cand] * mean / 1000.0))
    is_plan = np.zeros(len(cand), dtype=bool)
    is_plan[list(plans)] = True
    position = np.empty(len(decision.offer_index), dtype=np.int64)
    position[feasible] = np.arange(len(feasible))
    tie = np.empty(len(cand), dtype=np.int64)
    tie[np.lexsort((position[cand], is_plan, start_s))] = np.arange(len(cand))
    *_, ranking = rank(decision.policy.weights, feasible=np.ones(len(cand), dtype=bool),
                       carbon=co2e, cost_usd=decision.cost_usd[cand],
                       runtime_h=decision.runtime_h[cand], name_rank=tie)
    best = int(ranking[0])
    top = int(feasible[0])
    reference = np.flatnonzero((cand == top) & (start_s == 0.0) & ~is_plan)
    reference_score = float(co2e[reference[0]]) if len(reference) else float(
        decision.energy_kwh[top] * intensity_now(decision, top) / 1000.0)
    reference_co2e = float(located[reference[0]]) if len(reference) else float(
        decision.co2e_kg[top])
    best_c = int(cand[best])
    runtime = dt.timedelta(hours=float(decision.runtime_h[best_c]))
    begin = now + dt.timedelta(seconds=float(start_s[best]))
    if best in plans:
        slots = tuple((now + dt.timedelta(seconds=a), now + dt.timedelta(seconds=b))
                      for a, b in plans[best][1])
    else:
        slots = ((begin, begin + runtime),)
    entry = per_region.get(int(decision.region_index[best_c]))
    source = entry[1] if entry is not None and not np.isnan(mean[best]) else (
        decision.signals.source[decision.region_index[best_c]])
    window = Window(start_at=begin, end_at=slots[-1][1], forecast_mean=float(mean[best]),
                    slots=slots)
    choice = TimingChoice(
        candidate=best_c, window=window, intensity_g_per_kwh=float(intensity[best]),
        score_co2e_kg=float(co2e[best]), reference_score_co2e_kg=reference_score,
        co2e_kg=float(located[best]), reference_co2e_kg=reference_co2e, forecast_source=source,
        deferred=False, notes=())
    notes = []
    if missing:
        notes.append(f"temporal shifting: no forecast for {', '.join(missing)}; those regions "
                     "can only run now.")
    if start_s[best] <= 0.0:
        if len(per_region) > len(missing):
            notes.append("temporal shifting: running now is best over the forecast horizon.")
        return dataclasses.replace(choice, notes=tuple(notes))
    if choice.saving_pct < min_saving_pct:
        notes.append(
            f"temporal shifting: the best later start ({iso(begin)}) would save only "
            f"{choice.saving_pct:.1f} % (< {min_saving_pct:g} %); runs now.")
        return dataclasses.replace(choice, notes=tuple(notes))
    wait_h = float(start_s[best]) / 3600.0
    region = region_of[decision.region_index[best_c]].key
    text = (f"temporal shifting: start at {iso(begin)} (in {wait_h:.1f} h) in "
            f"{region}, forecast mean {float(mean[best]):.0f} "
            f"{'g/kWh marginal' if signal is CarbonSignal.MARGINAL else 'g/kWh grid average'} "
            f"over the run ({source} forecast), -{choice.saving_pct:.0f} % on the policy's "
            f"{decision.carbon_signal} signal against running the top choice now: est. "
            f"{choice.co2e_kg:.2f} kg CO2e vs {reference_co2e:.2f} kg")
    if signal is CarbonSignal.MARGINAL:
        text += (" (location-based at the catalog's annual grid average, not forecast; the "
                 "marginal forecast only chose the window).")
    else:
        text += " (location-based, forecast grid average)."
    if len(slots) > 1:
        slots_text = ", ".join(f"{iso(a)}-{iso(b)}" for a, b in slots)
        text += (f" Pausable plan ({len(slots)} slots): {slots_text}; the dispatcher starts "
                 "it at start_at, and the later slots need pause/resume.")
    notes.append(text)
    return dataclasses.replace(choice, deferred=True, notes=tuple(notes))


def _region_options(
    entry: tuple[_Series, str] | None, limit: tuple[float, float] | None, *, runtime_s: float,
    pausable: bool,
) -> tuple[np.ndarray, np.ndarray, tuple[float, list[tuple[float, float]]] | None]:
    """(starts, window means, pausable plan) for one region and runtime; empty when none."""
    empty = np.zeros(0)
    if entry is None or limit is None:
        return empty, empty, None
    s = entry[0]
    latest_start, latest_end = limit
    starts = np.concatenate([[0.0], s.bounds[(s.bounds > 0) & (s.bounds <= latest_start)]])
    means = window_means(s, starts_s=starts, duration_s=runtime_s)
    if np.isnan(means[0]):  # the forecast does not cover a run starting now
        return empty, empty, None
    keep = ~np.isnan(means)
    plan = greenest_slots(s, duration_s=runtime_s, latest_end_s=latest_end) if pausable else None
    return starts[keep], means[keep], plan


def _factors(decision: PlacementDecision, cand: np.ndarray) -> np.ndarray:
    """Forecast value -> scoring intensity: ``1 - CFE share`` (grid or provider) for the
    cfe and provider_cfe signals, else 1."""
    if decision.carbon_signal is CarbonSignal.CFE:
        return 1.0 - np.nan_to_num(decision.cfe_pct[cand], nan=0.0) / 100.0
    if decision.carbon_signal is CarbonSignal.PROVIDER_CFE:
        return 1.0 - decision.signals.provider_cfe_pct[decision.region_index[cand]] / 100.0
    return np.ones(len(cand))


def intensity_now(decision: PlacementDecision, c: int) -> float:
    """Candidate ``c``'s scoring intensity from the decision's own signals (no forecast)."""
    if decision.carbon_signal is CarbonSignal.MARGINAL:
        return float(decision.signals.grid_marginal_g_per_kwh[decision.region_index[c]])
    return float(decision.intensity_g_per_kwh[c] * _factors(decision, np.array([c]))[0])


def apply(decision: PlacementDecision, choice: TimingChoice | None) -> PlacementDecision:
    """The decision with ``start_at`` set and the chosen candidate first, when deferred."""
    if choice is None:
        return decision
    if not choice.deferred:
        if not choice.notes:
            return decision
        return dataclasses.replace(decision, extra_notes=decision.extra_notes + choice.notes)
    order = [choice.candidate, *[c for c in decision.ranking.tolist() if c != choice.candidate]]
    return dataclasses.replace(
        decision, start_at=utc(choice.window.start_at).isoformat(),
        ranking=np.array(order, dtype=decision.ranking.dtype),
        extra_notes=decision.extra_notes + choice.notes)


def shift(decision: PlacementDecision, *, job: Job, forecasts: ForecastProvider,
          now: dt.datetime) -> PlacementDecision:
    """Choose the start window for ``job`` and apply it to ``decision``."""
    return apply(decision, choose(decision, job=job, forecasts=forecasts, now=now))
