"""Plans of generated batches over the embedded catalog: the properties every plan holds.

Jobs are generated (accelerators, hours, deadline, max delay, policy), placed by the real
pipeline and planned against pools in the regions those jobs favour. Each plan is then checked
from its printed rows, independently of the planner's own arrays: per pool and hour the
instances running use at most the limit; every start respects the job's max delay, deadline
and the horizon; the budget holds; every job is placed or listed with what bound it.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Catalog, Region, load_catalog
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.placement import Placer
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.plan import Plan, job_rows, make_plan, pool_rows
from greenplace.scheduler.signals.base import Forecast, SignalPoint
from greenplace.scheduler.submission import load_submission

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
CATALOG = load_catalog()
SHAPES = [{"H100": 8}, {"A100-80GB": 8}, {"L4": 1}, {"A100": 1}]
# The greenest regions selling these: where an unconstrained batch piles up.
POOLS = [
    CapacityPool(cloud="aws", region="eu-north-1", unit=Unit.ACCELERATORS,
                 accelerators=("H100",), limit=8, source="test pool 1"),
    CapacityPool(cloud="gcp", region="europe-west6", unit=Unit.ACCELERATORS,
                 accelerators=("L4",), limit=2, hourly_limits=(0, 0, 1), source="test pool 2"),
    CapacityPool(cloud="gcp", region="europe-north1", unit=Unit.ACCELERATORS,
                 accelerators=("H100", "A100-80GB", "A100", "L4"), limit=8,
                 source="test pool 3"),
    # A quota-like pool in vCPUs over instance types: one p4d/p5 (96 / 192 vCPUs) at a time.
    CapacityPool(cloud="aws", region="us-east-1", unit=Unit.VCPUS,
                 instance_types=("p4*", "p5*"), limit=192, source="test pool 4"),
]


def jobs_of(specs: list[dict[str, Any]], catalog: Catalog = CATALOG) -> list[Job]:
    content = yaml.safe_dump({"jobs": specs}).encode()
    return load_submission(Path("batch.yaml"), catalog, policy=None, override_policy=False,
                           now=NOW, content=content).jobs


@st.composite
def batches(draw: st.DrawFn) -> list[dict[str, Any]]:
    specs = []
    for i in range(draw(st.integers(1, 8))):
        spec: dict[str, Any] = {
            "name": f"job-{i}", "run": "python train.py",
            "resources": {"accelerators": draw(st.sampled_from(SHAPES))},
            "work": {"hours": draw(st.integers(1, 30))},
            "policy": draw(st.sampled_from(["balanced", "greenest", "cheapest"])),
        }
        if draw(st.booleans()):
            spec["max_delay_hours"] = draw(st.integers(1, 30))
        if draw(st.booleans()):
            spec["deadline"] = (NOW + dt.timedelta(hours=draw(st.integers(1, 60)))).isoformat()
        specs.append(spec)
    return specs


def plan_of(specs: list[dict[str, Any]], *, budget: float | None, horizon_h: int = 24,
            solver: str = "auto") -> tuple[list[Job], Plan]:
    jobs = jobs_of(specs)
    decisions = Placer(CATALOG).place_all(jobs, now=NOW)
    return jobs, make_plan(jobs, decisions, POOLS, now=NOW, horizon_h=horizon_h,
                           budget_usd=budget, time_limit_s=20, solver=solver)


def check_plan(jobs: list[Job], plan: Plan, *, budget: float | None, horizon_h: int) -> None:
    rows = {r["job"]: r for r in job_rows(plan)}
    offers = {(o.cloud, o.region, o.instance_type): o for o in CATALOG.offers}
    in_use: dict[tuple[int, int], int] = {}
    total = 0.0
    for job in jobs:
        row = rows[job.name]
        if row["status"] != "placed":
            assert row["binding"] in ("policy", "window", "capacity", "budget")
            assert row["reasons"] and all(row["reasons"])
            continue
        start, runtime = row["start_hour"], row["runtime_h"]
        assert 0 <= start < horizon_h
        if job.spec.max_delay_hours is not None:
            assert start <= job.spec.max_delay_hours
        if job.spec.deadline is not None:
            hours_left = (job.spec.deadline - NOW).total_seconds() / 3600
            assert start + runtime <= hours_left + 1e-6
        offer = offers[(row["cloud"], row["region"], row["instance_type"])]
        for p, pool in enumerate(POOLS):
            units = pool.units_per_instance(offer, spot=row["spot"])
            for h in range(start, start + math.ceil(runtime - 1e-9)):
                in_use[(p, h)] = in_use.get((p, h), 0) + units
        total += row["cost_usd"]
    for (p, h), units in in_use.items():
        assert units <= POOLS[p].limit_at(h), (POOLS[p].key, h)
    if budget is not None:
        assert total <= budget + 0.01 * len(jobs)  # rows are rounded to the cent
    for p, pool in enumerate(pool_rows(plan)):
        assert all(u <= c for u, c in zip(pool["used"], pool["limit"], strict=True))
        assert pool["used"] == [in_use.get((p, h), 0) for h in range(len(pool["used"]))]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches(), st.one_of(st.none(), st.floats(50, 5000)), st.sampled_from(["milp", "greedy"]))
def test_every_plan_holds_capacity_windows_and_budget(
        specs: list[dict[str, Any]], budget: float | None, solver: str) -> None:
    jobs, plan = plan_of(specs, budget=budget, solver=solver)
    check_plan(jobs, plan, budget=budget, horizon_h=24)


def test_a_crowd_on_one_green_pool_queues_or_moves_and_never_overflows() -> None:
    specs = [{"name": f"h100-{i}", "run": "x", "resources": {"accelerators": {"H100": 8}},
              "work": {"hours": 4}, "policy": "greenest", "max_delay_hours": 6}
             for i in range(6)]
    jobs, plan = plan_of(specs, budget=None)
    check_plan(jobs, plan, budget=None, horizon_h=24)
    rows = job_rows(plan)
    assert all(r["status"] == "placed" for r in rows)
    in_pool = [r for r in rows if r["region"] == "eu-north-1" and r["cloud"] == "aws"]
    # 8 H100 at once, 4-hour runs, starts 0..6: at most two runs fit the pool back to back.
    assert len(in_pool) == 2
    assert sorted(r["start_hour"] for r in in_pool) == [0, 4]
    assert plan.solved.status == "optimal" and plan.solved.gap_pct == pytest.approx(0, abs=1e-6)


def test_jobs_that_cannot_fit_say_what_bound_them() -> None:
    specs = [
        # A deadline too close for any run of 40 h.
        {"name": "too-late", "run": "x", "resources": {"accelerators": {"H100": 8}},
         "work": {"hours": 40}, "deadline": (NOW + dt.timedelta(hours=2)).isoformat()},
        {"name": "cheap", "run": "x", "resources": {"accelerators": {"L4": 1}},
         "work": {"hours": 2}},
        {"name": "dear", "run": "x", "resources": {"accelerators": {"H100": 8}},
         "work": {"hours": 40}},
    ]
    jobs = jobs_of(specs)
    decisions = Placer(CATALOG).place_all(jobs, now=NOW)
    plan = make_plan(jobs, decisions, POOLS, now=NOW, horizon_h=24, budget_usd=50.0)
    rows = {r["job"]: r for r in job_rows(plan)}
    assert rows["cheap"]["status"] == "placed"
    assert rows["too-late"]["binding"] in ("policy", "window")
    assert "deadline" in " ".join(rows["too-late"]["reasons"])
    assert rows["dear"]["binding"] == "budget"
    assert "budget of 50.00 USD" in rows["dear"]["reasons"][0]


def test_a_pool_at_its_limit_names_itself_as_the_binding_constraint(tmp_path: Path) -> None:
    policy = tmp_path / "pinned.yaml"
    policy.write_text("name: pinned\nweights: {carbon: 1, cost: 0, time: 0}\n"
                      "constraints: {regions: {include: ['gcp:europe-west6']}}\n")
    # Pool 2 allows no L4 in hours 0-1; the job may wait one hour only.
    pinned = {"name": "pinned", "run": "x", "resources": {"accelerators": {"L4": 1}},
              "work": {"hours": 2}, "max_delay_hours": 1, "policy": str(policy)}
    jobs = jobs_of([pinned])
    decisions = Placer(CATALOG).place_all(jobs, now=NOW)
    plan = make_plan(jobs, decisions, POOLS, now=NOW, horizon_h=24)
    (row,) = job_rows(plan)
    assert row["status"] == "unschedulable" and row["binding"] == "capacity"
    assert row["reasons"] == [
        "gcp:europe-west6 L4 (accelerators) (test pool 2) is full in hours 0-1 of the plan"]


class _Hourly:
    """A forecast provider of hourly grid-average values per region key, from NOW."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def forecast(self, region: Region, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast | None:
        values = self.table.get(region.key)
        if values is None:
            return None
        return Forecast(source="fake", zone=region.key, signal=signal, issued_at=NOW,
                        points=tuple(SignalPoint(at=NOW + dt.timedelta(hours=h), value=v)
                                     for h, v in enumerate(values)), step_s=3600.0)


def test_with_a_forecast_the_plan_starts_in_the_greenest_window(tmp_path: Path) -> None:
    policy = tmp_path / "nl.yaml"
    policy.write_text("name: nl\nweights: {carbon: 1, cost: 0, time: 0}\n"
                      "carbon_signal: average\n"
                      "constraints: {regions: {include: ['gcp:europe-west4']}}\n")
    spec = {"name": "shift", "run": "x", "resources": {"accelerators": {"A100": 8}},
            "work": {"hours": 2}, "max_delay_hours": 8, "policy": str(policy)}
    jobs = jobs_of([spec])
    decisions = Placer(CATALOG).place_all(jobs, now=NOW)
    hourly = [100.0] * 5 + [20.0, 20.0] + [100.0] * 40  # hours 5-6 are the greenest
    plan = make_plan(jobs, decisions, [], now=NOW, horizon_h=24,
                     forecasts=_Hourly({"gcp:europe-west4": hourly}))
    (row,) = job_rows(plan)
    assert row["start_hour"] == 5
    d = decisions[0]
    energy = float(d.energy_kwh[d.chosen])  # the pipeline's energy, at the forecast's 20 g
    assert row["co2e_kg"] == pytest.approx(energy * 20.0 / 1000.0, rel=1e-3)


def test_on_real_jobs_the_milp_matches_brute_force_over_their_options() -> None:
    from tests.unit.test_plan_solver import brute_force

    specs = [{"name": f"j{i}", "run": "x", "resources": {"accelerators": shape},
              "work": {"hours": hours}, "policy": policy}
             for i, (shape, hours, policy) in enumerate([
                 ({"H100": 8}, 2, "greenest"), ({"H100": 8}, 1, "balanced"),
                 ({"L4": 1}, 2, "greenest"), ({"A100-80GB": 8}, 1, "cheapest")])]
    jobs = jobs_of(specs)
    decisions = Placer(CATALOG).place_all(jobs, now=NOW)
    plan = make_plan(jobs, decisions, POOLS, now=NOW, horizon_h=2)
    assert 0 < len(plan.problem.options) <= 60
    assert plan.solved.status == "optimal"
    assert plan.solved.objective == pytest.approx(brute_force(plan.problem), abs=1e-6)
    check_plan(jobs, plan, budget=None, horizon_h=2)


def test_a_model_above_the_size_limit_is_planned_by_greedy_and_says_so() -> None:
    specs = [{"name": f"h{i}", "run": "x", "resources": {"accelerators": {"H100": 8}},
              "work": {"hours": 3}, "policy": "greenest"} for i in range(4)]
    jobs = jobs_of(specs)
    decisions = Placer(CATALOG).place_all(jobs, now=NOW)
    plan = make_plan(jobs, decisions, POOLS, now=NOW, horizon_h=24, max_nonzeros=10)
    assert plan.solved.solver == "greedy" and plan.solved.bound is None
    assert plan.solved.status.startswith("not proven (model too big for the MILP:")
    assert "how far it is from the optimum is not known" in plan.notes[0]
    check_plan(jobs, plan, budget=None, horizon_h=24)
    exact = make_plan(jobs, decisions, POOLS, now=NOW, horizon_h=24)
    assert exact.solved.status == "optimal"
    assert plan.solved.objective <= exact.solved.objective + 1e-9


def test_a_vcpu_quota_pool_binds_like_an_accelerator_pool(tmp_path: Path) -> None:
    policy = tmp_path / "use1.yaml"
    policy.write_text("name: use1\nweights: {carbon: 1, cost: 0, time: 0}\n"
                      "constraints: {regions: {include: ['aws:us-east-1']}}\n")
    specs = [{"name": f"p5-{i}", "run": "x", "resources": {"accelerators": {"H100": 8}},
              "work": {"hours": 3}, "policy": str(policy)} for i in range(2)]
    jobs = jobs_of(specs)
    decisions = Placer(CATALOG).place_all(jobs, now=NOW)
    plan = make_plan(jobs, decisions, POOLS, now=NOW, horizon_h=24)
    check_plan(jobs, plan, budget=None, horizon_h=24)
    rows = job_rows(plan)
    assert [r["instance_type"] for r in rows] == ["p5.48xlarge"] * 2
    assert sorted(r["start_hour"] for r in rows) == [0, 3]  # 192 vCPUs each, 192 at once
    vcpus = next(p for p in pool_rows(plan) if p["source"] == "test pool 4")
    assert vcpus["unit"] == "vcpus" and vcpus["used"][:7] == [192] * 6 + [0]
