"""The greedy heuristic: the fallback when the MILP is too big, and the MILP's first incumbent.

Rule (documented in the README): take every option of the batch in order of value (the
policy's score plus the placed bonus; then lower cost, earlier start, job order), and give a
job its first option that still fits: capacity left in every pool-hour it runs, and budget
left. Each job thus gets the best option still open when its turn comes, and jobs whose best
option is better go first. The result is always feasible; it is not optimal (a job may take a
pool-hour another job needed more), which is what the MILP's bound and gap measure.
"""

from __future__ import annotations

import numpy as np

from greenplace.scheduler.planning.problem import Problem


def greedy(problem: Problem) -> np.ndarray:
    """Positions of the chosen options (one per placed job), feasible by construction."""
    o = problem.options
    order = np.lexsort((o.job, o.start_h, o.cost_usd, -o.value))
    left = problem.limits.astype(np.int64).ravel().copy()
    cells, units, ptr = problem.entry_cell, problem.entry_units, problem.entry_ptr
    budget_left = np.inf if problem.budget_usd is None else problem.budget_usd
    placed = np.zeros(problem.n_jobs, dtype=bool)
    chosen: list[int] = []
    jobs = o.job.tolist()
    costs = o.cost_usd.tolist()
    for k in order.tolist():
        j = jobs[k]
        if placed[j] or costs[k] > budget_left + 1e-9:
            continue
        a, b = ptr[k], ptr[k + 1]
        if a != b:
            c, u = cells[a:b], units[a:b]
            if (left[c] < u).any():
                continue
            left[c] -= u
        placed[j] = True
        budget_left -= costs[k]
        chosen.append(k)
    return np.array(sorted(chosen), dtype=np.int64)
