"""Planning a batch: place every job jointly over (offer, start hour) under capacity and budget.

Steps: the placement pipeline scores each job's candidates (``Placer``, no temporal shift);
``candidates`` turns them into (offer, start hour) options; ``problem`` lays out the
constraints; the MILP (``milp``) solves it, seeded with the greedy plan (``greedy``), or the
greedy plan alone stands when the model is above ``MAX_MILP_NONZEROS``. Jobs left out are
listed with what bound them.

Design choice (model size): the MILP runs when its matrix holds at most
``MAX_MILP_NONZEROS`` entries (counted as ``Problem.nonzeros``); above, the greedy plan stands
alone and the plan says so. Measured (benchmarks/README.md, "Batch planning"): 100 jobs x 48 h
over the full catalog (about 53,000 entries) solve to proven optimality in 3-4 s on 2 cores;
1,000 jobs (about 480,000) did not finish HiGHS's root LP within 10 s, and HiGHS does not
look at its time limit inside it (95 s against a 10 s limit on a loaded machine), so a big
model could break the time limit the user gave. Offering later starts on a coarser grid to
shrink the model was tried and measured worse than the greedy plan on the hourly grid (884
jobs placed against 912 for 1,000 jobs): jobs queueing for a pool need the hours where it
frees up.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greenplace.scheduler.jobs import Job
from greenplace.scheduler.placement.decision import PlacementDecision
from greenplace.scheduler.placement.timing import ForecastProvider
from greenplace.scheduler.planning.candidates import build_options
from greenplace.scheduler.planning.capacity import CapacityPool
from greenplace.scheduler.planning.greedy import greedy
from greenplace.scheduler.planning.milp import Solved, solve_milp
from greenplace.scheduler.planning.problem import Problem, build_problem, usage

# Above this many matrix entries the greedy plan stands alone (see the module docstring).
MAX_MILP_NONZEROS = 150_000
DEFAULT_HORIZON_H = 48
MAX_HORIZON_H = 24 * 14
DEFAULT_TIME_LIMIT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Left:
    """A job the plan leaves out, and what bound it."""

    job: str
    binding: str  # "policy", "window", "capacity", "budget" or "solver"
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The chosen option of each placed job, the jobs left out, and how it was solved."""

    jobs: tuple[Job, ...]
    decisions: tuple[PlacementDecision, ...]
    problem: Problem
    solved: Solved
    chosen_of_job: np.ndarray  # job -> option position, -1 when left out
    left: tuple[Left, ...]
    now: dt.datetime
    horizon_h: int
    start_step_h: int
    notes: tuple[str, ...] = field(default=())

    def usage(self) -> np.ndarray:
        """Units in use per [pool, hour]."""
        return usage(self.problem, self.solved.chosen)


def make_plan(jobs: Sequence[Job], decisions: Sequence[PlacementDecision],
              pools: Sequence[CapacityPool], *, now: dt.datetime,
              horizon_h: int = DEFAULT_HORIZON_H, budget_usd: float | None = None,
              time_limit_s: float = DEFAULT_TIME_LIMIT_S,
              forecasts: ForecastProvider | None = None,
              max_nonzeros: int = MAX_MILP_NONZEROS, start_step_h: int = 1,
              solver: str = "auto",
              threads: int | None = None) -> Plan:
    """Plan ``jobs`` (with their pipeline ``decisions``) against ``pools`` and the budget.

    ``solver``: "auto" (MILP unless too big), "milp" or "greedy". ``start_step_h``: starts
    after the first ``candidates.HOURLY_STARTS_H`` hours every that many hours (1: every hour).
    """
    notes: list[str] = []
    options = build_options(jobs, decisions, pools, now=now, horizon_h=horizon_h,
                            start_step_h=start_step_h, with_budget=budget_usd is not None,
                            forecasts=forecasts)
    problem = build_problem(len(jobs), options, pools, budget_usd=budget_usd,
                            min_hours=horizon_h)
    started = dt.datetime.now(dt.UTC)
    first = greedy(problem)
    if solver == "greedy" or (solver == "auto" and problem.nonzeros > max_nonzeros):
        why = "asked" if solver == "greedy" else (
            f"model too big for the MILP: {problem.nonzeros:,} entries > {max_nonzeros:,}")
        if solver != "greedy":
            notes.append(f"the greedy heuristic planned alone ({why}): its plan holds every "
                         "constraint, but how far it is from the optimum is not known")
        objective = float(problem.options.value[first].sum())
        solved = Solved(chosen=first, solver="greedy", status=f"not proven ({why})",
                        objective=objective, bound=None, gap_pct=None,
                        solve_s=(dt.datetime.now(dt.UTC) - started).total_seconds(),
                        rows=0, columns=len(options), nonzeros=problem.nonzeros)
    else:
        solved = solve_milp(problem, time_limit_s=time_limit_s, incumbent=first,
                            threads=threads)
    chosen_of_job = np.full(len(jobs), -1, dtype=np.int64)
    chosen_of_job[options.job[solved.chosen]] = solved.chosen
    used = usage(problem, solved.chosen).ravel()
    left = tuple(_left(j, jobs[j], decisions[j], problem, solved, used=used,
                       horizon_h=horizon_h, now=now)
                 for j in np.flatnonzero(chosen_of_job < 0).tolist())
    return Plan(jobs=tuple(jobs), decisions=tuple(decisions), problem=problem, solved=solved,
                chosen_of_job=chosen_of_job, left=left, now=now, horizon_h=horizon_h,
                start_step_h=start_step_h, notes=tuple(notes))


def _hours_text(hours: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``3-5, 9``."""
    runs: list[list[int]] = []
    for h in hours:
        if runs and h == runs[-1][1] + 1:
            runs[-1][1] = h
        else:
            runs.append([h, h])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _left(j: int, job: Job, d: PlacementDecision, problem: Problem, solved: Solved, *,
          used: np.ndarray, horizon_h: int, now: dt.datetime) -> Left:
    """Why job ``j`` has no option in the plan (``used``: the plan's units per flat
    pool-hour cell)."""
    if not d.placed:
        reasons = tuple(f"{r['region']}: [{r['filter']}] {r['reason']}"
                        for r in d.rejections())
        return Left(job=job.name, binding="policy", reasons=reasons or (
            "no offer in the catalog carries the requested accelerators",))
    o = problem.options
    mine = _options_of(problem, j)
    if not len(mine):
        spec = job.spec
        fastest = float(d.runtime_h[d.ranking].min())
        limits = [f"the horizon ({horizon_h} h)"]
        if spec.max_delay_hours is not None:
            limits.append(f"max_delay_hours {spec.max_delay_hours:g}")
        if spec.deadline is not None:
            limits.append(f"its deadline {spec.deadline.isoformat()} "
                          f"({(spec.deadline - now).total_seconds() / 3600:.1f} h away)")
        return Left(job=job.name, binding="window", reasons=(
            f"no start hour fits {', '.join(limits)}: its fastest feasible candidate runs "
            f"{fastest:.1f} h",))
    cap = problem.limits.ravel()
    spent = float(o.cost_usd[solved.chosen].sum())
    full: dict[int, set[int]] = {}
    by_budget = fits = 0
    for k in mine.tolist():
        a, b = problem.entry_ptr[k], problem.entry_ptr[k + 1]
        cells, units = problem.entry_cell[a:b], problem.entry_units[a:b]
        over = cells[used[cells] + units > cap[cells]]
        for cell in over.tolist():
            full.setdefault(cell // problem.hours, set()).add(cell % problem.hours)
        over_budget = (problem.budget_usd is not None
                       and spent + float(o.cost_usd[k]) > problem.budget_usd + 1e-9)
        by_budget += bool(over_budget)
        fits += not len(over) and not over_budget
    texts = [f"{problem.pools[p].key} ({problem.pools[p].source}) is full in hours "
               f"{_hours_text(sorted(hours))} of the plan" for p, hours in sorted(full.items())]
    if by_budget:
        texts.append(f"{by_budget} of its {len(mine)} options would take the plan over the "
                       f"budget of {problem.budget_usd:,.2f} USD ({spent:,.2f} USD spent)")
    if fits:
        return Left(job=job.name, binding="solver", reasons=(
            f"{fits} option(s) still fit, but the {solved.solver} stopped ({solved.status}) "
            "before placing it; raise --time-limit-s",))
    binding = "capacity" if full else "budget"
    return Left(job=job.name, binding=binding, reasons=tuple(texts))


def job_rows(plan: Plan, *, explain: bool = False) -> list[dict[str, Any]]:
    """One JSON-ready row per job: its option, or why it was left out."""
    o = plan.problem.options
    left = {x.job: x for x in plan.left}
    holders = _Holders.of(plan) if explain else None
    out: list[dict[str, Any]] = []
    for j, (job, d) in enumerate(zip(plan.jobs, plan.decisions, strict=True)):
        k = int(plan.chosen_of_job[j])
        row: dict[str, Any] = {"job": job.name, "policy": job.policy.name}
        if k < 0:
            row.update(status="unschedulable", binding=left[job.name].binding,
                       reasons=list(left[job.name].reasons))
            out.append(row)
            continue
        c = int(o.candidate[k])
        offer = d.arrays.offers[int(d.offer_index[c])]
        start = plan.now + dt.timedelta(hours=int(o.start_h[k]))
        row.update(
            status="placed", cloud=offer.cloud, region=offer.region,
            instance_type=offer.instance_type, accelerator=offer.accelerator,
            accelerator_count=offer.accelerator_count, spot=d.spot,
            start_hour=int(o.start_h[k]), start_at=start.isoformat(),
            runtime_h=round(float(o.runtime_h[k]), 4), co2e_kg=round(float(o.co2e_kg[k]), 4),
            cost_usd=round(float(o.cost_usd[k]), 2), score=round(float(o.score[k]), 4))
        if holders is not None:
            row["explain"] = _explain(plan, j, k, holders)
        out.append(row)
    if holders is not None:  # the other way round: whose best option each job displaced
        took: dict[str, list[str]] = {}
        for row in out:
            for holder in ((row.get("explain") or {}).get("displaced") or {}).get("by_jobs", []):
                took.setdefault(holder, []).append(row["job"])
        for row in out:
            if "explain" in row:
                row["explain"]["displaced_jobs"] = sorted(took.get(row["job"], []))
    return out


def _options_of(problem: Problem, j: int) -> np.ndarray:
    """Positions of job ``j``'s options (``build_options`` emits them job by job, in order)."""
    job = problem.options.job
    return np.arange(np.searchsorted(job, j, side="left"), np.searchsorted(job, j, side="right"))


@dataclass(frozen=True, slots=True)
class _Holders:
    """Who holds each pool-hour in a plan: the chosen options' usage entries sorted by cell,
    and the units in use per cell, computed once for every job's explanation."""

    cells: np.ndarray  # sorted
    jobs: np.ndarray  # the job of each entry
    used: np.ndarray  # units in use per flat cell

    @classmethod
    def of(cls, plan: Plan) -> _Holders:
        p = plan.problem
        chosen = plan.solved.chosen
        counts = p.entry_ptr[chosen + 1] - p.entry_ptr[chosen]
        entries = np.repeat(p.entry_ptr[chosen] - np.cumsum(counts) + counts, counts) + (
            np.arange(int(counts.sum())))
        cells = p.entry_cell[entries]
        jobs = np.repeat(p.options.job[chosen], counts)
        order = np.argsort(cells, kind="stable")
        return cls(cells=cells[order], jobs=jobs[order], used=plan.usage().ravel())


def _explain(plan: Plan, j: int, k: int, holders: _Holders) -> dict[str, Any]:
    """The objective terms of job ``j``'s option ``k``, and what it gave up for the batch
    (``displaced``: its best option, and the jobs holding the pool-hours that needed)."""
    o = plan.problem.options
    w = plan.jobs[j].policy.weights
    out: dict[str, Any] = {
        "weights": {"carbon": w.carbon, "cost": w.cost, "time": w.time},
        "norm_carbon": round(float(o.norm_carbon[k]), 4),
        "norm_cost": round(float(o.norm_cost[k]), 4),
        "norm_time": round(float(o.norm_time[k]), 4),
        "value": round(float(o.value[k]), 6),
    }
    mine = _options_of(plan.problem, j)
    best = int(mine[np.argmax(o.value[mine])])
    if o.value[best] <= o.value[k] + 1e-12:
        out["displaced"] = None
        return out
    d = plan.decisions[j]
    offer = d.arrays.offers[int(d.offer_index[int(o.candidate[best])])]
    p = plan.problem
    own = np.zeros_like(holders.used)
    np.add.at(own, p.entry_cell[p.entry_ptr[k]:p.entry_ptr[k + 1]],
              p.entry_units[p.entry_ptr[k]:p.entry_ptr[k + 1]])
    a, b = p.entry_ptr[best], p.entry_ptr[best + 1]
    cells, units = p.entry_cell[a:b], p.entry_units[a:b]
    # The pool-hours its best option needed and the plan gave to other jobs.
    blocked = cells[holders.used[cells] - own[cells] + units > p.limits.ravel()[cells]]
    others: set[str] = set()
    for cell in blocked.tolist():
        lo, hi = np.searchsorted(holders.cells, [cell, cell + 1])
        others.update(plan.jobs[int(x)].name for x in holders.jobs[lo:hi].tolist() if x != j)
    out["displaced"] = {
        "best_option": f"{offer.cloud}:{offer.region} {offer.instance_type} at hour "
                       f"{int(o.start_h[best])}",
        "best_score": round(float(o.score[best]), 4),
        "score_given_up": round(float(o.score[best] - o.score[k]), 4),
        "by_jobs": sorted(others),
        "why": ("the jobs named hold pool-hours it needed (the batch scores higher so)"
                if others else "the pool's own limit leaves it no room" if len(blocked)
                else "the budget"),
    }
    return out


def pool_rows(plan: Plan) -> list[dict[str, Any]]:
    """Per pool: its per-hour use and limit (every hour of the plan's grid)."""
    used = plan.usage()
    return [{"pool": pool.key, "source": pool.source, "unit": pool.unit.value,
             "used": used[p].tolist(), "limit": plan.problem.limits[p].tolist(),
             "peak_used": int(used[p].max()) if used.shape[1] else 0}
            for p, pool in enumerate(plan.problem.pools)]


def summary(plan: Plan) -> dict[str, Any]:
    """Totals and how the plan was solved."""
    o = plan.problem.options
    s = plan.solved
    return {
        "jobs": len(plan.jobs), "placed": int((plan.chosen_of_job >= 0).sum()),
        "unschedulable": len(plan.left),
        "co2e_kg": round(float(o.co2e_kg[s.chosen].sum()), 4),
        "cost_usd": round(float(o.cost_usd[s.chosen].sum()), 2),
        "budget_usd": plan.problem.budget_usd,
        "horizon_h": plan.horizon_h, "start_step_h": plan.start_step_h,
        "solver": s.solver, "status": s.status, "objective": round(s.objective, 6),
        "bound": None if s.bound is None else round(s.bound, 6),
        "gap_pct": None if s.gap_pct is None else round(s.gap_pct, 6),
        "solve_s": round(s.solve_s, 3),
        "model": {"rows": s.rows, "columns": s.columns, "nonzeros": s.nonzeros},
        "notes": list(plan.notes),
    }
