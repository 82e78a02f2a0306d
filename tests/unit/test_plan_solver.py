"""The MILP against brute force on small batches, and the plan's constraints as properties.

Small problems are built directly as options (job, start hour, duration, pools drawn on,
value, cost), so every feasible assignment can be enumerated: the MILP's objective must equal
the best of them. Properties (hypothesis) check what any plan, MILP or greedy, must hold:
no pool over its limit in any hour, at most one option per job, the budget held, and every
job either placed or listed with what bound it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenplace.scheduler.planning.candidates import Footprints, Options
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.greedy import greedy
from greenplace.scheduler.planning.milp import solve_milp
from greenplace.scheduler.planning.problem import Problem, build_problem, usage, violations

# (job, start_h, duration_h, footprint id, value, cost_usd)
Row = tuple[int, int, int, int, float, float]


def _pools(limits: Sequence[Sequence[int]]) -> list[CapacityPool]:
    """Pools with per-hour limits (the last one holds after the list)."""
    return [CapacityPool(cloud="aws", region=f"r{p}", unit=Unit.ACCELERATORS,
                         accelerators=("H100",), limit=hours[-1], hourly_limits=tuple(hours),
                         source=f"pool {p}") for p, hours in enumerate(limits)]


def problem_of(n_jobs: int, rows: Sequence[Row], footprints: Sequence[tuple[tuple[int, int], ...]],
               limits: Sequence[Sequence[int]], budget_usd: float | None = None) -> Problem:
    cols = list(zip(*rows, strict=True)) if rows else [()] * 6
    n = len(rows)
    value = np.array(cols[4], dtype=float)
    options = Options(
        job=np.array(cols[0], dtype=np.int64), candidate=np.arange(n, dtype=np.int64),
        start_h=np.array(cols[1], dtype=np.int64), duration_h=np.array(cols[2], dtype=np.int64),
        footprint=np.array(cols[3], dtype=np.int64), score=value - 10.0,
        norm_carbon=np.zeros(n), norm_cost=np.zeros(n), norm_time=np.zeros(n), value=value,
        carbon=np.zeros(n), co2e_kg=np.zeros(n), cost_usd=np.array(cols[5], dtype=float),
        runtime_h=np.array(cols[2], dtype=float),
        footprints=Footprints(pools=((), *footprints)))
    return build_problem(n_jobs, options, _pools(limits), budget_usd=budget_usd)


def brute_force(problem: Problem) -> float:
    """The best objective over every assignment (each job: one of its options, or none)."""
    per_job = [[-1, *np.flatnonzero(problem.options.job == j).tolist()]
               for j in range(problem.n_jobs)]
    best = 0.0
    for pick in itertools.product(*per_job):
        chosen = np.array([k for k in pick if k >= 0], dtype=np.int64)
        if not violations(problem, chosen):
            best = max(best, float(problem.options.value[chosen].sum()))
    return best


def test_two_jobs_share_one_pool_hour_by_hour() -> None:
    # Pool 0 holds 8 accelerators; each job needs 8 for 2 hours. Both want hour 0; the one
    # with the bigger gain from its best option gets it, the other starts at hour 2.
    fp = ((0, 8),)
    rows: list[Row] = [(0, 0, 2, 1, 11.0, 1.0), (0, 2, 2, 1, 10.9, 1.0),
                       (1, 0, 2, 1, 10.8, 1.0), (1, 2, 2, 1, 10.7, 1.0), (1, 1, 2, 1, 10.75, 1.0)]
    problem = problem_of(2, rows, [fp], [[8]])
    solved = solve_milp(problem, time_limit_s=10)
    assert solved.status == "optimal"
    assert solved.chosen.tolist() == [1, 2]  # 10.9 + 10.8 beats 11.0 + 10.7 (hour 1 overlaps)
    assert solved.objective == pytest.approx(brute_force(problem))
    assert usage(problem, solved.chosen)[0].tolist() == [8, 8, 8, 8]
    assert solved.gap_pct == pytest.approx(0.0, abs=1e-6)


def test_a_budget_leaves_out_the_job_it_cannot_pay_for() -> None:
    rows: list[Row] = [(0, 0, 1, 0, 11.0, 60.0), (1, 0, 1, 0, 10.5, 50.0),
                       (2, 0, 1, 0, 10.2, 45.0)]
    problem = problem_of(3, rows, [], [], budget_usd=100.0)
    solved = solve_milp(problem, time_limit_s=10)
    assert solved.chosen.tolist() == [1, 2]  # 95 USD; any pair with job 0 costs over 100
    assert solved.objective == pytest.approx(brute_force(problem))
    assert not violations(problem, solved.chosen)


def test_an_empty_problem_is_optimal_and_places_nothing() -> None:
    problem = problem_of(2, [], [], [])
    solved = solve_milp(problem, time_limit_s=5)
    assert solved.chosen.size == 0 and solved.objective == 0.0


@st.composite
def small_problems(draw: st.DrawFn) -> Problem:
    """2-4 jobs, 1-4 options each over 1-2 pools and 4 hours, sometimes a budget."""
    n_pools = draw(st.integers(1, 2))
    limits = [[draw(st.integers(0, 8)) for _ in range(draw(st.integers(1, 4)))]
              for _ in range(n_pools)]
    footprints: list[tuple[tuple[int, int], ...]] = [
        ((p, u),) for p in range(n_pools) for u in (1, 4, 8)]
    if n_pools == 2:
        footprints.append(((0, 4), (1, 4)))
    n_jobs = draw(st.integers(2, 4))
    rows: list[Row] = []
    for j in range(n_jobs):
        for _ in range(draw(st.integers(1, 4))):
            rows.append((j, draw(st.integers(0, 3)), draw(st.integers(1, 3)),
                         draw(st.integers(0, len(footprints))),
                         10.0 + draw(st.integers(0, 100)) / 100.0,
                         float(draw(st.integers(1, 50)))))
    budget = draw(st.one_of(st.none(), st.floats(10, 120)))
    return problem_of(n_jobs, rows, footprints, limits, budget_usd=budget)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_the_milp_finds_the_brute_force_optimum(problem: Problem) -> None:
    solved = solve_milp(problem, time_limit_s=10, incumbent=greedy(problem))
    assert solved.status == "optimal"
    assert not violations(problem, solved.chosen)
    assert solved.objective == pytest.approx(brute_force(problem), abs=1e-6)
    assert solved.bound is not None and solved.bound >= solved.objective - 1e-6


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_the_greedy_plan_is_feasible_and_never_beats_the_optimum(problem: Problem) -> None:
    chosen = greedy(problem)
    assert not violations(problem, chosen)
    assert float(problem.options.value[chosen].sum()) <= brute_force(problem) + 1e-6
    # Greedy leaves a job out only when none of its options fits what the others took.
    used = usage(problem, chosen)
    spent = float(problem.options.cost_usd[chosen].sum())
    placed = set(problem.options.job[chosen].tolist())
    for k in range(len(problem.options)):
        if int(problem.options.job[k]) in placed:
            continue
        alone = usage(problem, np.array([k]))
        over_capacity = bool(((used + alone) > problem.limits).any())
        over_budget = (problem.budget_usd is not None
                       and spent + problem.options.cost_usd[k] > problem.budget_usd + 1e-9)
        assert over_capacity or over_budget
