"""Batch planning: `greenplace plan`'s planner against independent placement plus failover.

Usage:
    python benchmarks/plan.py [--jobs 100 1000 5000] [--repeat 3] [--seed 7] [--horizon 48]
                              [--time-limit-s 60]

For each size, generates a batch over the full embedded catalog (10 accelerator shapes with
alternatives, the four preset policies, 30 % spot where the policy allows it, 1 to 24 hours
of work, half of the jobs with a max delay of 0-24 h) and one capacity pool per (cloud,
region, accelerator) of the catalog, counted in accelerators: 8, 16 or 24 x ceil(N / 500)
accelerators at once (scaled with the batch, so capacity binds at every size: the green
regions fill up). Both strategies see the same pipeline decisions and the same pools:

* independent: each job, in submission order, is placed alone (the pipeline's ranking) and
  started now; a launch where a pool is full fails over to its next candidate, at most the
  policy's ``failover.max_attempts`` launches (what the dispatcher does, simulated against
  the pools as the local-sim provider simulates capacity); after that the job is
  unschedulable.
* planner: ``scheduler.planning.plan.make_plan`` (HiGHS MILP, greedy fallback), starts over
  the horizon within each job's max delay.

Prints, per size and run, jobs placed, total co2e (location-based) and cost of each, the
planner's solver, status, gap, model size and solve time (candidate generation and model
building included, placement by the pipeline excluded, as it is the same for both); then
the medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from placement import POLICIES, SHAPES  # the placement benchmark's job shapes (this folder)

from greenplace.policies.model import load_policy
from greenplace.scheduler.catalog import Catalog, load_catalog
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.placement import Placer
from greenplace.scheduler.placement.decision import PlacementDecision
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.plan import make_plan
from greenplace.scheduler.submission import load_submission

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def batch(n: int, catalog: Catalog, *, seed: int) -> list[Job]:
    rng = random.Random(seed)
    forbid_spot = {p: str(load_policy(p).constraints.spot) == "forbid" for p in POLICIES}
    specs: list[dict[str, Any]] = []
    for i in range(n):
        policy = rng.choice(POLICIES)
        resources: dict[str, Any] = {"accelerators": [dict(a) for a in rng.choice(SHAPES)]}
        if rng.random() < 0.3 and not forbid_spot[policy]:
            resources["spot"] = True
        spec: dict[str, Any] = {"name": f"job-{i}", "run": "python train.py",
                                "resources": resources,
                                "work": {"hours": round(rng.uniform(1.0, 24.0), 1)},
                                "policy": policy}
        if rng.random() < 0.5:
            spec["max_delay_hours"] = rng.randint(1, 24)
        specs.append(spec)
    content = yaml.safe_dump({"jobs": specs}).encode()
    return load_submission(Path("batch.yaml"), catalog, policy=None, override_policy=False,
                           now=NOW, content=content).jobs


def pools_for(catalog: Catalog, n: int, *, seed: int) -> list[CapacityPool]:
    rng = random.Random(seed + 1)
    scale = math.ceil(n / 500)
    keys = sorted({(o.cloud, o.region, o.accelerator) for o in catalog.offers})
    return [CapacityPool(cloud=c, region=r, unit=Unit.ACCELERATORS, accelerators=(a,),
                         limit=8 * rng.randint(1, 3) * scale, source=f"bench {c}:{r} {a}")
            for c, r, a in keys]


def independent(jobs: list[Job], decisions: list[PlacementDecision],
                pools: list[CapacityPool]) -> dict[int, tuple[float, float]]:
    """Job -> (co2e, cost) of the jobs placed alone, now, failing over when a pool is full."""
    end_h = 24 + 48
    left = np.array([[p.limit_at(h) for h in range(end_h)] for p in pools])
    placed: dict[int, tuple[float, float]] = {}
    for j, (job, d) in enumerate(zip(jobs, decisions, strict=True)):
        for c in d.ranking[:job.policy.failover.max_attempts].tolist():
            offer = d.arrays.offers[int(d.offer_index[c])]
            hours = math.ceil(float(d.runtime_h[c]) - 1e-9)
            need = [(p, pool.units_per_instance(offer, spot=d.spot))
                    for p, pool in enumerate(pools)]
            need = [(p, u) for p, u in need if u]
            if all((left[p, :hours] >= u).all() for p, u in need):
                for p, u in need:
                    left[p, :hours] -= u
                placed[j] = (float(d.co2e_kg[c]), float(d.cost_usd[c]))
                break
    return placed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--horizon", type=int, default=48)
    parser.add_argument("--time-limit-s", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    catalog = load_catalog()
    print(f"catalog: {len(catalog.regions)} regions, {len(catalog.offers)} offers; "
          f"cores: {os.cpu_count()}; horizon {args.horizon} h")
    for n in args.jobs:
        jobs = batch(n, catalog, seed=args.seed)
        pools = pools_for(catalog, n, seed=args.seed)
        decisions = Placer(catalog).place_all(jobs, now=NOW)
        ind = independent(jobs, decisions, pools)
        times: list[float] = []
        for run in range(args.repeat):
            start = time.perf_counter()
            plan = make_plan(jobs, decisions, pools, now=NOW, horizon_h=args.horizon,
                             time_limit_s=args.time_limit_s, threads=args.threads)
            times.append(time.perf_counter() - start)
            s = plan.solved
            o = plan.problem.options
            placed = int((plan.chosen_of_job >= 0).sum())
            co2e = float(o.co2e_kg[s.chosen].sum())
            cost = float(o.cost_usd[s.chosen].sum())
            gap = "-" if s.gap_pct is None else f"{s.gap_pct:.4f} %"
            mine = {int(o.job[k]): float(o.co2e_kg[k]) for k in s.chosen.tolist()}
            both = sorted(set(mine) & set(ind))
            common = (sum(mine[j] for j in both), sum(ind[j][0] for j in both), len(both))
            print(f"{n} jobs, run {run + 1}: planner {placed} placed, {co2e:,.0f} kg CO2e, "
                  f"{cost:,.0f} USD; {s.solver} {s.status}, gap {gap}, "
                  f"{s.columns:,} options x {s.rows:,} rows ({s.nonzeros:,} nonzeros), "
                  f"start grid {plan.start_step_h} h; {times[-1]:.2f} s "
                  f"(solver {s.solve_s:.2f} s); on the {common[2]} jobs both placed: "
                  f"{common[0]:,.0f} kg CO2e vs {common[1]:,.0f} kg independent")
        print(f"{n} jobs: independent + failover {len(ind)} placed, "
              f"{sum(v[0] for v in ind.values()):,.0f} kg CO2e, "
              f"{sum(v[1] for v in ind.values()):,.0f} USD; planner median "
              f"{statistics.median(times):.2f} s over {args.repeat} runs\n")


if __name__ == "__main__":
    main()
