"""Candidate generation: every (offer, start hour) a job of a batch may take, with its figures.

Each job is placed by the placement pipeline (``Placer``, without temporal shifting): its
feasible candidates, their runtime, energy, co2e, cost and the policy's filters come from
there, never from a second formula. Each feasible candidate is then offered at every start
hour of ``start_grid`` (hourly for the first ``HOURLY_STARTS_H`` hours, then every
``start_step_h`` hours, up to ``horizon_h - 1``) that its ``max_delay_hours`` and
``deadline`` allow (the run must end by the deadline); a job with neither may start at any
hour of the horizon, since planning a batch is the permission to wait for capacity.

Score: the policy's weights over min-max normalised carbon (what its signal ranks), cost and
runtime, normalised over the job's options exactly as ``pipeline.rank`` does (and as
``timing`` does over (candidate, start) options). With a forecast, an option's carbon is the
candidate's energy x the forecast mean over its run (``timing.window_means``, scaled as timing
scales it for CFE signals); without, every start has the candidate's static figure.

Value (what the planner maximises): ``PLACED_BONUS + score - DELAY_TIE_BREAK x start /
horizon``. The bonus makes placing a job always better than leaving it out (see
``PLACED_BONUS``); the small delay term makes an earlier start win a tie.

Design choice (model size): an instance's use of capacity is its *footprint*: the pools it
draws on (with units) and the hours ``[start, start + ceil(runtime_h))`` it runs. Options
with the same footprint are interchangeable for every constraint but the budget, so per job
only the best of each footprint is kept (with a budget: every option on the value / cost
Pareto front of its footprint). Options drawing on no pool have an empty footprint whatever
their hours: one of them (the best) is enough, and any option worse than it is dropped
(unless, with a budget, it is cheaper). A batch over a few pools then keeps a few options per
job and pool-hour instead of hundreds of offers x every hour. Then only the
``MAX_FOOTPRINTS_PER_JOB`` footprints with the best options are kept per job (and only those
better than its best option drawing on no pool): a model restriction, so "optimal" is
optimal over these options.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from greenplace.scheduler.jobs import Job
from greenplace.scheduler.placement import timing
from greenplace.scheduler.placement.decision import PlacementDecision
from greenplace.scheduler.planning.capacity import CapacityPool

# Design choice: a placed job earns this on top of its score (0..1), so leaving a job out
# loses at least 10 while moving another job gains at most 1: the planner gives a job up
# only if that lets more than ten other jobs each move from their worst option to their
# best, which bounded capacity practically never offers; it never leaves a job out that fits.
PLACED_BONUS = 10.0
# Per job, the options of at most this many footprints (pool sets) are kept: those whose best
# option is best. A job's sixth-best region rarely matters unless the five above are full,
# and every footprint adds a column per start hour (see the module docstring).
MAX_FOOTPRINTS_PER_JOB = 6
# Start hours offered one by one before the grid may coarsen (``start_grid``).
HOURLY_STARTS_H = 4
# An hour of delay over the whole horizon costs this much score: enough to break ties
# towards earlier starts, far below any real difference in carbon, cost or runtime.
DELAY_TIE_BREAK = 1e-3


@dataclass(frozen=True, slots=True, kw_only=True)
class Footprints:
    """The distinct sets of (pool, units per instance) that options draw on."""

    pools: tuple[tuple[tuple[int, int], ...], ...]  # footprint id -> ((pool, units), ...)


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """The kept options of a batch, one entry per (job, candidate, start hour), in job order
    (``job`` ascending: a job's options are one contiguous range)."""

    job: np.ndarray  # index into the batch
    candidate: np.ndarray  # candidate position in the job's decision
    start_h: np.ndarray  # hours after the plan's start
    duration_h: np.ndarray  # whole hours the run occupies: ceil(runtime_h)
    footprint: np.ndarray  # index into ``footprints.pools``
    score: np.ndarray  # 0..1, the policy's weighted normalised figures (1 = best)
    norm_carbon: np.ndarray  # 0..1 each, as ``pipeline.rank`` normalises them (1 = best)
    norm_cost: np.ndarray
    norm_time: np.ndarray
    value: np.ndarray  # what the planner maximises (see the module docstring)
    carbon: np.ndarray  # what the policy's signal ranks, for this start
    co2e_kg: np.ndarray  # location-based (forecast grid average where forecast)
    cost_usd: np.ndarray
    runtime_h: np.ndarray
    footprints: Footprints

    def __len__(self) -> int:
        return len(self.job)


def start_grid(horizon_h: int, step_h: int) -> np.ndarray:
    """The start hours offered: every hour below ``HOURLY_STARTS_H``, then every ``step_h``.

    Design choice: each start hour adds a column per job and footprint; a caller may offer
    later starts on a coarser grid (``make_plan(start_step_h=...)``). ``plan`` keeps the
    hourly grid: jobs queueing for a pool need the hours where it frees up (measured there)."""
    fine = np.arange(0, min(horizon_h, HOURLY_STARTS_H))
    coarse = np.arange(HOURLY_STARTS_H, horizon_h, step_h)
    return np.concatenate([fine, coarse]).astype(float)


def latest_start_h(job: Job, *, runtime_h: np.ndarray, now: dt.datetime,
                   horizon_h: int) -> np.ndarray:
    """The latest start hour (float) each runtime allows: max delay, deadline, horizon."""
    latest = np.full(runtime_h.shape, float(horizon_h - 1))
    spec = job.spec
    if spec.max_delay_hours is not None:
        latest = np.minimum(latest, spec.max_delay_hours)
    if spec.deadline is not None:
        until_h = (spec.deadline - now).total_seconds() / 3600.0
        latest = np.minimum(latest, until_h - runtime_h)
    return latest


class _FootprintIndex:
    """Footprint ids of (offer, spot), computed once per offer."""

    def __init__(self, pools: Sequence[CapacityPool]) -> None:
        self.pools = pools
        self.ids: dict[tuple[tuple[int, int], ...], int] = {(): 0}
        self.of_offer: dict[tuple[int, bool], int] = {}

    def of(self, decision: PlacementDecision, candidates: np.ndarray) -> np.ndarray:
        out = np.empty(len(candidates), dtype=np.int64)
        offers = decision.offer_index[candidates].tolist()
        for k, offer_pos in enumerate(offers):
            key = (offer_pos, decision.spot)
            found = self.of_offer.get(key)
            if found is None:
                offer = decision.arrays.offers[offer_pos]
                sig = tuple((p, units) for p, pool in enumerate(self.pools)
                            if (units := pool.units_per_instance(offer, spot=decision.spot)))
                found = self.of_offer[key] = self.ids.setdefault(sig, len(self.ids))
            out[k] = found
        return out

    def footprints(self) -> Footprints:
        by_id = sorted(self.ids.items(), key=lambda kv: kv[1])
        return Footprints(pools=tuple(sig for sig, _ in by_id))


def _forecast_carbon(decision: PlacementDecision, cands: np.ndarray, starts_h: np.ndarray,
                     *, forecasts: timing.ForecastProvider, now: dt.datetime,
                     horizon_h: int) -> tuple[np.ndarray, np.ndarray]:
    """(ranked carbon, location-based co2e) per (candidate, start) from the forecasts;
    the static figures where a region has no forecast covering the run."""
    from greenplace.policies.model import CarbonSignal

    carbon = np.broadcast_to(decision.ranked_carbon[cands][:, None],
                             (len(cands), len(starts_h))).copy()
    co2e = np.broadcast_to(decision.co2e_kg[cands][:, None], carbon.shape).copy()
    signal = (CarbonSignal.MARGINAL if decision.carbon_signal is CarbonSignal.MARGINAL
              else CarbonSignal.AVERAGE)
    factor = timing._factors(decision, cands)  # the factor timing scales forecasts by
    end = now + dt.timedelta(hours=horizon_h + float(decision.runtime_h[cands].max()))
    regions = decision.region_index[cands]
    for r in np.unique(regions).tolist():
        found = forecasts.forecast(decision.arrays.regions[r], signal=signal, start=now, end=end)
        s = timing.series(found, now=now) if found is not None and found.points else None
        if s is None:
            continue
        for k in np.flatnonzero(regions == r).tolist():
            c = int(cands[k])
            run_s = float(decision.runtime_h[c]) * 3600.0
            mean = timing.window_means(s, starts_s=starts_h * 3600.0, duration_s=run_s)
            known = ~np.isnan(mean)
            carbon[k, known] = decision.energy_kwh[c] * mean[known] * factor[k] / 1000.0
            if signal is CarbonSignal.AVERAGE:
                co2e[k, known] = decision.energy_kwh[c] * mean[known] / 1000.0
    return carbon, co2e


def build_options(jobs: Sequence[Job], decisions: Sequence[PlacementDecision],
                  pools: Sequence[CapacityPool], *, now: dt.datetime, horizon_h: int,
                  start_step_h: int = 1, with_budget: bool = False,
                  forecasts: timing.ForecastProvider | None = None) -> Options:
    """The kept options of every job (see the module docstring for what is kept)."""
    from greenplace.scheduler.placement.pipeline import rank  # the pipeline's own scoring

    index = _FootprintIndex(pools)
    grid = start_grid(horizon_h, start_step_h)
    parts: list[tuple[np.ndarray, ...]] = []
    for j, (job, d) in enumerate(zip(jobs, decisions, strict=True)):
        cands = d.ranking
        if len(cands) == 0:
            continue
        latest = latest_start_h(job, runtime_h=d.runtime_h[cands], now=now, horizon_h=horizon_h)
        allowed = grid[None, :] <= latest[:, None] + 1e-9
        if not allowed.any():
            continue
        if forecasts is not None:
            carbon_m, co2e_m = _forecast_carbon(d, cands, grid, forecasts=forecasts, now=now,
                                                horizon_h=horizon_h)
        else:
            carbon_m = np.broadcast_to(d.ranked_carbon[cands][:, None], allowed.shape)
            co2e_m = np.broadcast_to(d.co2e_kg[cands][:, None], allowed.shape)
        ci, si = np.nonzero(allowed)
        cand = cands[ci]
        carbon = carbon_m[ci, si]
        cost = d.cost_usd[cand]
        runtime = d.runtime_h[cand]
        n_carbon, n_cost, n_time, score, _ = rank(
            job.policy.weights, feasible=np.ones(len(cand), dtype=bool), carbon=carbon,
            cost_usd=cost, runtime_h=runtime, name_rank=np.zeros(len(cand), dtype=np.int64))
        start = grid[si]
        value = PLACED_BONUS + score - DELAY_TIE_BREAK * start / horizon_h
        duration = np.ceil(runtime - 1e-9).astype(np.int64)
        fp = index.of(d, cands)[ci]
        keep = _kept(fp, start, duration, value, cost, with_budget=with_budget)
        parts.append((np.full(keep.size, j), cand[keep], start[keep].astype(np.int64),
                      duration[keep], fp[keep], score[keep], value[keep], carbon[keep],
                      co2e_m[ci, si][keep], cost[keep], runtime[keep], n_carbon[keep],
                      n_cost[keep], n_time[keep]))
    cols = [np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)
            for k in range(14)]
    ints = [c.astype(np.int64) for c in cols[:5]]
    return Options(job=ints[0], candidate=ints[1], start_h=ints[2], duration_h=ints[3],
                   footprint=ints[4], score=cols[5], value=cols[6], carbon=cols[7],
                   co2e_kg=cols[8], cost_usd=cols[9], runtime_h=cols[10],
                   norm_carbon=cols[11], norm_cost=cols[12], norm_time=cols[13],
                   footprints=index.footprints())


def _kept(fp: np.ndarray, start: np.ndarray, duration: np.ndarray, value: np.ndarray,
          cost: np.ndarray, *, with_budget: bool,
          max_footprints: int = MAX_FOOTPRINTS_PER_JOB) -> np.ndarray:
    """Positions of one job's options worth keeping (see the module docstring)."""
    free = fp == 0  # the empty footprint: no pool, any hour
    key_start = np.where(free, 0, start)
    key_duration = np.where(free, 0, duration)
    order = np.lexsort((cost, -value, key_duration, key_start, fp))
    k_fp, k_s, k_d = fp[order], key_start[order], key_duration[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (k_fp[1:] != k_fp[:-1]) | (k_s[1:] != k_s[:-1]) | (k_d[1:] != k_d[:-1])
    if not with_budget:
        kept = order[first]
    else:  # the Pareto front of each footprint: better value, or else strictly cheaper
        group = np.cumsum(first) - 1
        kept_list: list[int] = []
        best_cost, last_group = math.inf, -1
        for pos, g in zip(order.tolist(), group.tolist(), strict=True):
            if g != last_group:
                last_group, best_cost = g, math.inf
            if cost[pos] < best_cost - 1e-12:
                kept_list.append(pos)
                best_cost = cost[pos]
        kept = np.array(kept_list, dtype=np.int64)
    if free.any():  # drop what the best free option dominates
        best_free = kept[free[kept]]
        top = best_free[np.argmax(value[best_free])]
        dominated = (value[kept] <= value[top]) & ~free[kept]
        if with_budget:
            dominated &= cost[kept] >= cost[top]
            cheaper_free = free[kept] & (cost[kept] < cost[top])
            keep_free = (kept == top) | cheaper_free
            kept = kept[~dominated & (~free[kept] | keep_free)]
        else:
            kept = kept[~dominated & (~free[kept] | (kept == top))]
    capped = np.unique(fp[kept][fp[kept] != 0])
    if len(capped) > max_footprints:
        best = np.full(int(fp.max()) + 1, -np.inf)
        np.maximum.at(best, fp[kept], value[kept])
        ranked = capped[np.argsort(-best[capped], kind="stable")][:max_footprints]
        kept = kept[(fp[kept] == 0) | np.isin(fp[kept], ranked)]
    return np.sort(kept)
