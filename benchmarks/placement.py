"""Placement throughput: N generated jobs placed with the real pipeline over the full catalog.

Usage:
    python benchmarks/placement.py [--jobs 10000] [--repeat 5] [--seed 7]

Prints, per repeat, jobs/s for the placement itself (jobs are generated and
validated before the clock starts), then the median, and the peak Python heap
(tracemalloc, measured in a separate pass so it does not slow the timed ones)
and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import resource
import statistics
import time
import tracemalloc

from greenplace.policies.model import load_policy
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.jobs import Job, JobSpec, resolve_job
from greenplace.scheduler.placement import Placer

SHAPES = [
    [{"A100": 8}, {"A100-80GB": 8}, {"H100": 8}],
    [{"H100": 8}],
    [{"A100-80GB": 8}],
    [{"L4": 1}, {"T4": 1}, {"A100": 1}],
    [{"T4": 4}, {"V100": 4}],
    [{"V100": 8}],
    [{"L4": 4}],
    [{"TPU-v5e": 8}, {"TPU-v5p": 8}],
    [{"A100": 1}],
    [{"H100": 1}, {"A100-80GB": 1}],
]
POLICIES = ["greenest", "cheapest", "balanced", "eu-sovereign"]


def generate_jobs(n: int, *, seed: int) -> list[Job]:
    """``n`` valid jobs of mixed accelerators, spot settings and preset policies."""
    rng = random.Random(seed)
    catalog = load_catalog()
    policies = {name: load_policy(name) for name in POLICIES}
    jobs = []
    for i in range(n):
        policy = policies[rng.choice(POLICIES)]
        spot = rng.random() < 0.3 and policy.constraints.spot != "forbid"
        spec = JobSpec.model_validate({
            "name": f"job-{i}", "run": "python train.py",
            "resources": {"accelerators": rng.choice(SHAPES), "spot": spot or None},
            "work": {"hours": round(rng.uniform(0.5, 200.0), 1)},
        })
        jobs.append(resolve_job(spec, catalog, policy=policy, where=f"job-{i}"))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    catalog = load_catalog()
    jobs = generate_jobs(args.jobs, seed=args.seed)
    now = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    print(f"catalog: {len(catalog.regions)} regions, {len(catalog.offers)} offers, "
          f"{len(catalog.accelerators)} accelerators; {len(jobs)} jobs")
    rates = []
    for run in range(args.repeat):
        placer = Placer(catalog)  # fresh caches every run: policy columns are rebuilt
        start = time.perf_counter()
        decisions = placer.place_all(jobs, now=now)
        elapsed = time.perf_counter() - start
        placed = sum(d.placed for d in decisions)
        candidates = sum(len(d.offers) for d in decisions)
        rates.append(len(jobs) / elapsed)
        print(f"run {run + 1}: {elapsed:.3f} s, {rates[-1]:,.0f} jobs/s "
              f"({placed} placed, {candidates:,} candidates scored)")
    print(f"median: {statistics.median(rates):,.0f} jobs/s "
          f"= {args.jobs / statistics.median(rates):.3f} s for {args.jobs} jobs")

    tracemalloc.start()
    Placer(catalog).place_all(jobs, now=now)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak Python heap while placing (tracemalloc): {peak / 2**20:.1f} MiB; "
          f"process peak RSS: {rss_mib:.0f} MiB")


if __name__ == "__main__":
    main()
