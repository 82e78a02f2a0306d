"""The exact planner: the batch as a mixed-integer programme, solved by HiGHS (highspy).

Variables: one binary x[o] per kept option (``candidates``). Maximise sum value[o] x[o]
subject to, per job, sum x <= 1; per pool and hour, sum units x <= limit_at(hour); with a
budget, sum cost x <= budget.

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

from greenplace.scheduler.planning.problem import Problem

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
    cells = problem.entry_cell
    # Pool-hour rows that can bind: the units of every option drawing on them exceed the limit.
    demand = np.bincount(cells, weights=problem.entry_units, minlength=problem.limits.size)
    binding = demand > problem.limits.ravel()
    row_of_cell = np.full(problem.limits.size, -1, dtype=np.int64)
    row_of_cell[binding] = n_job_rows + np.arange(int(binding.sum()))
    entry_option = np.repeat(np.arange(n), np.diff(problem.entry_ptr))
    keep = binding[cells]
    rows = [job_rows, row_of_cell[cells[keep]]]
    cols = [np.arange(n), entry_option[keep]]
    vals = [np.ones(n), problem.entry_units[keep].astype(float)]
    upper = [np.ones(n_job_rows), problem.limits.ravel()[binding].astype(float)]
    n_rows = n_job_rows + int(binding.sum())
    if problem.budget_usd is not None and n:
        dearest = np.zeros(n_job_rows)
        np.maximum.at(dearest, job_rows, o.cost_usd)
        if dearest.sum() > problem.budget_usd:
            rows.append(np.full(n, n_rows))
            cols.append(np.arange(n))
            vals.append(o.cost_usd.astype(float))
            upper.append(np.array([problem.budget_usd]))
            n_rows += 1
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    val = np.concatenate(vals)
    order = np.lexsort((row, col))
    starts = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=n))])

    lp = highspy.HighsLp()
    lp.num_col_ = n
    lp.num_row_ = n_rows
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = o.value.astype(float)
    lp.col_lower_ = np.zeros(n)
    lp.col_upper_ = np.ones(n)
    lp.row_lower_ = np.full(n_rows, -highspy.kHighsInf)
    lp.row_upper_ = np.concatenate(upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = starts.astype(np.int32)
    lp.a_matrix_.index_ = row[order].astype(np.int32)
    lp.a_matrix_.value_ = val[order]
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n

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
        start.col_value = list(x0)
        start.value_valid = True
        h.setSolution(start)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    values = np.asarray(h.getSolution().col_value) if n else np.zeros(0)
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
