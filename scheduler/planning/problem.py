"""The planning problem's constraints as arrays: who draws on which pool in which hour.

Shared by the MILP (``milp``), the greedy heuristic (``greedy``) and the checks of a plan
(``usage``, ``violations``), so all three read the same constraints:

* each job takes at most one option;
* in every pool and hour, the units of the chosen options running then are at most the
  pool's ``limit_at(hour)``;
* with a budget, the chosen options' cost adds up to at most the budget.

An option running ``duration_h`` whole hours from ``start_h`` draws on its footprint's pools
in hours ``start_h .. start_h + duration_h - 1`` (a 2.5 h run holds its instance for three
hour slots: the hour grid is conservative, never optimistic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from greenplace.scheduler.planning.candidates import Options
from greenplace.scheduler.planning.capacity import CapacityPool


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """A batch's options and the constraints over them."""

    n_jobs: int
    options: Options
    pools: tuple[CapacityPool, ...]
    hours: int  # the pool-hour grid covers hours 0 .. hours - 1 (the last end of any option)
    limits: np.ndarray  # [pool, hour] units
    budget_usd: float | None
    # Usage entries, grouped by option: option o uses entries entry_ptr[o] .. entry_ptr[o+1]
    entry_ptr: np.ndarray
    entry_pool: np.ndarray
    entry_hour: np.ndarray
    entry_units: np.ndarray
    entry_cell: np.ndarray  # each entry's flat (pool, hour) position in ``limits``
    # The same per (option, pool) pair, before the expansion over hours.
    pair_option: np.ndarray
    pair_pool: np.ndarray
    pair_units: np.ndarray

    @property
    def nonzeros(self) -> int:
        """Constraint-matrix entries of the MILP at most (``milp``: job rows, a start and an
        end entry per option and pool, the running columns, the budget row)."""
        budget = len(self.options) if self.budget_usd is not None else 0
        running = 2 * len(self.pools) * self.hours
        return len(self.options) + 2 * len(self.pair_option) + running + budget


def build_problem(n_jobs: int, options: Options, pools: Sequence[CapacityPool], *,
                  budget_usd: float | None, min_hours: int = 1) -> Problem:
    """Expand each option's footprint over its hours into usage entries (vectorised); the
    pool-hour grid covers at least ``min_hours`` (the horizon) and every option's run."""
    fp_pairs = options.footprints.pools
    fp_len = np.array([len(p) for p in fp_pairs], dtype=np.int64)
    fp_ptr = np.concatenate([[0], np.cumsum(fp_len)])
    fp_pool = np.array([p for pairs in fp_pairs for p, _ in pairs], dtype=np.int64)
    fp_units = np.array([u for pairs in fp_pairs for _, u in pairs], dtype=np.int64)
    n = len(options)
    pairs_per_option = fp_len[options.footprint] if n else np.zeros(0, dtype=np.int64)
    opt1 = np.repeat(np.arange(n), pairs_per_option)
    first1 = np.repeat(np.cumsum(pairs_per_option) - pairs_per_option, pairs_per_option)
    pair = fp_ptr[options.footprint[opt1]] + (np.arange(len(opt1)) - first1)
    dur1 = options.duration_h[opt1]
    opt2 = np.repeat(opt1, dur1)
    first2 = np.repeat(np.cumsum(dur1) - dur1, dur1)
    hour = np.repeat(options.start_h[opt1], dur1) + (np.arange(len(opt2)) - first2)
    entry_pool = np.repeat(fp_pool[pair], dur1) if len(pair) else np.zeros(0, dtype=np.int64)
    entry_units = np.repeat(fp_units[pair], dur1) if len(pair) else np.zeros(0, dtype=np.int64)
    counts = np.bincount(opt2, minlength=n) if n else np.zeros(0, dtype=np.int64)
    entry_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    last_end = int((options.start_h + options.duration_h).max()) if n else 0
    hours = max(1, min_hours, last_end)
    limits = np.array([[p.limit_at(h) for h in range(hours)] for p in pools],
                      dtype=np.int64).reshape(len(pools), hours)
    return Problem(n_jobs=n_jobs, options=options, pools=tuple(pools), hours=hours,
                   limits=limits, budget_usd=budget_usd, entry_ptr=entry_ptr,
                   entry_pool=entry_pool, entry_hour=hour.astype(np.int64),
                   entry_units=entry_units, entry_cell=entry_pool * hours + hour,
                   pair_option=opt1,
                   pair_pool=fp_pool[pair] if len(pair) else np.zeros(0, dtype=np.int64),
                   pair_units=fp_units[pair] if len(pair) else np.zeros(0, dtype=np.int64))


def usage(problem: Problem, chosen: np.ndarray) -> np.ndarray:
    """Units in use per [pool, hour] when the options ``chosen`` (positions) run."""
    if not len(chosen):
        return np.zeros_like(problem.limits)
    counts = problem.entry_ptr[chosen + 1] - problem.entry_ptr[chosen]
    starts = np.repeat(problem.entry_ptr[chosen] - np.cumsum(counts) + counts, counts)
    entries = starts + np.arange(counts.sum())
    flat = np.bincount(problem.entry_cell[entries], weights=problem.entry_units[entries],
                       minlength=problem.limits.size)
    return flat.reshape(problem.limits.shape).round().astype(np.int64)


def violations(problem: Problem, chosen: np.ndarray) -> list[str]:
    """What a set of chosen options breaks (empty: a feasible plan)."""
    out = []
    jobs = problem.options.job[chosen]
    if len(np.unique(jobs)) != len(jobs):
        out.append("a job takes more than one option")
    over = np.argwhere(usage(problem, chosen) > problem.limits)
    out.extend(f"{problem.pools[p].key} over its limit in hour {h}" for p, h in over.tolist())
    if problem.budget_usd is not None:
        spent = float(problem.options.cost_usd[chosen].sum())
        if spent > problem.budget_usd * (1 + 1e-9):
            out.append(f"cost {spent:.2f} USD over the budget {problem.budget_usd:.2f}")
    return out
