"""The exact planner: the batch as a mixed-integer programme, solved by HiGHS (highspy).

Variables: one binary x[o] per kept option (``candidates``). Maximise sum value[o] x[o]
subject to, per job, sum x <= 1; per pool and hour, sum units x <= limit_at(hour); with a
budget, sum cost x <= budget.

Design choice (formulation): the capacity rows are written as events. Per pool that can bind
and hour, a continuous running[p, h] in [0, limit_at(h)] carries the units in use, and
running[p, h] = running[p, h - 1] + units starting at h - units ending at h. It equals the
sum over the options running at h, so the constraint and the LP relaxation are the same as
one row per hour listing every running option; but an option enters two rows per pool (its
start and its end) instead of one per hour it runs: a 12-hour job costs 2 matrix entries per
pool, not 12, and HiGHS's time follows the matrix.

Design choice: the matrix is built column-wise from the usage entries in a few NumPy
operations and handed to HiGHS in one ``passModel`` call (no Python call per nonzero); rows
that can never bind (a pool-hour whose every option together fits its limit, a budget above
the batch's dearest plan) are left out. The greedy plan is given as the starting incumbent,
so a time limit always returns a plan at least as good as the greedy one, with its gap.
highspy is imported here only, when a plan is solved (CLI start-up stays light).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from greenplace.scheduler.planning.problem import Problem, usage

# The relative gap at which HiGHS stops (the objective carries the placed bonus, so this is
# about 1e-6 x 10 per job of score: far finer than any real difference between options).
MIP_REL_GAP = 1e-6


@dataclass(frozen=True, slots=True, kw_only=True)
class Solved:
    """What a solver returned: the chosen options and how sure it is of them."""

    chosen: np.ndarray  # option positions
    solver: str  # "highs 1.x MILP" or "greedy"
    status: str  # "optimal", "time limit", "greedy (model too big)", ...
    objective: float  # sum of the chosen options' values
    bound: float | None  # the best proven upper bound (None: none, as for greedy)
    gap_pct: float | None  # 100 x (bound - objective) / objective
    solve_s: float
    rows: int
    columns: int
    nonzeros: int


def _quiet_highs() -> Any:
    """A HiGHS instance, its constructor's banner (written by the C++ library straight to
    file descriptor 1) kept off stdout: ``--output json`` must stay one JSON document."""
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        return highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _objective(problem: Problem, chosen: np.ndarray) -> float:
    return float(problem.options.value[chosen].sum())


def solve_milp(problem: Problem, *, time_limit_s: float, incumbent: np.ndarray | None = None,
               threads: int | None = None) -> Solved:
    """Solve ``problem`` exactly (within ``time_limit_s``); the incumbent seeds the search."""
    import highspy

    started = time.perf_counter()
    o = problem.options
    n = len(o)
    job_rows = np.unique(o.job, return_inverse=True)[1] if n else np.zeros(0, dtype=np.int64)
    n_job_rows = int(job_rows.max()) + 1 if n else 0
    hours = problem.hours
    # Pools that can bind: in some hour, the options drawing on them exceed its limit.
    demand = np.bincount(problem.entry_cell, weights=problem.entry_units,
                         minlength=problem.limits.size).reshape(problem.limits.shape)
    binding_pools = np.flatnonzero((demand > problem.limits).any(axis=1))
    pool_pos = np.full(len(problem.pools), -1, dtype=np.int64)
    pool_pos[binding_pools] = np.arange(len(binding_pools))
    n_running = len(binding_pools) * hours
    # Event rows, one per (binding pool, hour): running[p, h] - running[p, h-1]
    # - (units starting at h) + (units ending at h) = 0, running[p, h] in [0, limit_at(h)].
    pairs = pool_pos[problem.pair_pool] >= 0
    p_opt = problem.pair_option[pairs]
    p_row = n_job_rows + pool_pos[problem.pair_pool[pairs]] * hours
    p_units = problem.pair_units[pairs].astype(float)
    p_start = o.start_h[p_opt]
    p_end = p_start + o.duration_h[p_opt]
    ends = p_end < hours
    run_col = n + np.arange(n_running)  # running[p, h], row-major as the event rows
    run_row = n_job_rows + np.arange(n_running)
    previous = np.arange(n_running) % hours != hours - 1  # running[p, h] also enters h + 1
    rows = [job_rows, p_row + p_start, p_row[ends] + p_end[ends], run_row, run_row[previous] + 1]
    cols = [np.arange(n), p_opt, p_opt[ends], run_col, run_col[previous]]
    vals = [np.ones(n), -p_units, p_units[ends], np.ones(n_running),
            -np.ones(int(previous.sum()))]
    row_upper = [np.ones(n_job_rows), np.zeros(n_running)]
    row_lower = [np.full(n_job_rows, -np.inf), np.zeros(n_running)]
    n_rows = n_job_rows + n_running
    if problem.budget_usd is not None and n:
        dearest = np.zeros(n_job_rows)
        np.maximum.at(dearest, job_rows, o.cost_usd)
        if dearest.sum() > problem.budget_usd:
            rows.append(np.full(n, n_rows))
            cols.append(np.arange(n))
            vals.append(o.cost_usd.astype(float))
            row_upper.append(np.array([problem.budget_usd]))
            row_lower.append(np.array([-np.inf]))
            n_rows += 1
    n_cols = n + n_running
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    val = np.concatenate(vals)
    order = np.lexsort((row, col))
    starts = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n_cols))])
    run_upper = problem.limits[binding_pools].ravel().astype(float)

    lp = highspy.HighsLp()
    lp.num_col_ = n_cols
    lp.num_row_ = n_rows
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = np.concatenate([o.value.astype(float), np.zeros(n_running)])
    lp.col_lower_ = np.zeros(n_cols)
    lp.col_upper_ = np.concatenate([np.ones(n), run_upper])
    lower = np.concatenate(row_lower)
    lp.row_lower_ = np.where(np.isinf(lower), -highspy.kHighsInf, lower)
    lp.row_upper_ = np.concatenate(row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = starts.astype(np.int32)
    lp.a_matrix_.index_ = row[order].astype(np.int32)
    lp.a_matrix_.value_ = val[order]
    lp.integrality_ = ([highspy.HighsVarType.kInteger] * n
                       + [highspy.HighsVarType.kContinuous] * n_running)

    h = _quiet_highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit_s))
    h.setOptionValue("mip_rel_gap", MIP_REL_GAP)
    if threads is not None:
        h.setOptionValue("threads", int(threads))
    h.passModel(lp)
    if incumbent is not None and len(incumbent):
        start = highspy.HighsSolution()
        x0 = np.zeros(n)
        x0[incumbent] = 1.0
        running = usage(problem, incumbent)[binding_pools].ravel().astype(float)
        start.col_value = list(np.concatenate([x0, running]))
        start.value_valid = True
        h.setSolution(start)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    values = np.asarray(h.getSolution().col_value)[:n] if n else np.zeros(0)
    chosen = np.flatnonzero(values > 0.5) if len(values) == n else np.zeros(0, dtype=np.int64)
    if incumbent is not None and _objective(problem, incumbent) > _objective(problem, chosen):
        chosen = incumbent  # HiGHS stopped before reading the start (time limit)
    objective = _objective(problem, chosen)
    raw_bound = float(info.mip_dual_bound) if n else 0.0
    bound = raw_bound if np.isfinite(raw_bound) else None
    gap = (100.0 * max(0.0, bound - objective) / abs(objective)
           if bound is not None and objective else (0.0 if bound is not None else None))
    text = {highspy.HighsModelStatus.kOptimal: "optimal",
            highspy.HighsModelStatus.kTimeLimit: "time limit"}.get(
        status, h.modelStatusToString(status).lower())
    version = f"{h.version()}" if hasattr(h, "version") else ""
    return Solved(chosen=np.sort(chosen), solver=f"HiGHS {version} MILP".replace("  ", " "),
                  status=text if n else "optimal", objective=objective, bound=bound,
                  gap_pct=gap, solve_s=time.perf_counter() - started, rows=n_rows, columns=n,
                  nonzeros=len(val))
