"""Placement throughput: N generated jobs placed with the real pipeline over the full catalog.

Usage:
    python benchmarks/placement.py [--jobs 10000] [--repeat 5] [--seed 7]
    python benchmarks/placement.py --cli [--jobs 10000] [--big-jobs 100000] [--repeat 5]

Default (inner loop): prints, per repeat, jobs/s for the placement itself (jobs are
generated and validated before the clock starts), then the median, and the peak Python
heap (tracemalloc, measured in a separate pass so it does not slow the timed ones) and
the process's peak RSS.

``--cli`` (end to end): writes the generated jobs as a YAML file and a JSON-lines file
(``--jobs``), and both again with ``--big-jobs`` jobs, then times cold runs of
``greenplace dry-run FILE --output json`` (a new process each, output discarded), round
by round and side by side with a cold process that only loads the same YAML file with
libyaml (``yaml.load(..., Loader=yaml.CSafeLoader)``, timed inside that process, so
without its start-up). Peak RSS of each run comes from ``os.wait4``. Prints each round,
the medians, and the ratios against the targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

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


def job_dicts(n: int, *, seed: int) -> list[dict[str, Any]]:
    """``n`` valid jobs as a jobs file holds them: mixed accelerators, spot, preset policies."""
    rng = random.Random(seed)
    policies = {name: load_policy(name) for name in POLICIES}
    jobs = []
    for i in range(n):
        policy = rng.choice(POLICIES)
        spot = rng.random() < 0.3 and policies[policy].constraints.spot != "forbid"
        resources: dict[str, Any] = {"accelerators": [dict(a) for a in rng.choice(SHAPES)]}
        if spot:
            resources["spot"] = True
        jobs.append({"name": f"job-{i}", "run": "python train.py", "resources": resources,
                     "work": {"hours": round(rng.uniform(0.5, 200.0), 1)}, "policy": policy})
    return jobs


def generate_jobs(n: int, *, seed: int) -> list[Job]:
    """``n`` valid jobs of mixed accelerators, spot settings and preset policies."""
    catalog = load_catalog()
    policies = {name: load_policy(name) for name in POLICIES}
    return [resolve_job(JobSpec.model_validate(raw), catalog, policy=policies[raw["policy"]],
                        where=raw["name"]) for raw in job_dicts(n, seed=seed)]


def _cold_run(command: list[str], *, capture: bool = False) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB, from ``os.wait4``) and stdout (if captured) of one
    fresh process; its stdout is discarded unless captured."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out if capture else subprocess.DEVNULL,
                                stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0, 1):  # 1: some jobs are unschedulable by construction
            err.seek(0)
            raise SystemExit(f"{' '.join(command)} failed: {err.read().decode()[-2000:]}")
        out.seek(0)
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def write_files(folder: Path, sizes: list[int], *, seed: int) -> None:
    """The generated jobs of each size as jobs-{N}k.yaml and jobs-{N}k.jsonl."""
    import yaml

    for n in sizes:
        jobs = job_dicts(n, seed=seed)
        (folder / f"jobs-{_label(n)}.yaml").write_text(
            yaml.dump({"jobs": jobs}, Dumper=yaml.CSafeDumper, sort_keys=False))
        (folder / f"jobs-{_label(n)}.jsonl").write_text(
            "".join(json.dumps(j) + "\n" for j in jobs))


def _label(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def cli_benchmark(args: argparse.Namespace) -> None:
    """Cold end-to-end runs of `greenplace dry-run` against libyaml's load time."""
    script = Path(sys.executable).with_name("greenplace")
    greenplace = [str(script)] if script.exists() else [sys.executable, "-m", "greenplace"]
    tmp = Path(tempfile.mkdtemp(prefix="greenplace-bench-"))
    # A child's peak RSS starts from its parent's (fork, then exec): the files are written
    # by another process so that this one stays small.
    writer = multiprocessing.get_context("spawn").Process(
        target=write_files, args=(tmp, [1, args.jobs, args.big_jobs]), kwargs={"seed": args.seed})
    writer.start()
    writer.join()
    try:
        if writer.exitcode != 0:
            raise SystemExit("writing the job files failed")
        _compare(args, greenplace, tmp)
    finally:
        shutil.rmtree(tmp)


def _compare(args: argparse.Namespace, greenplace: list[str], tmp: Path) -> None:
    """Round by round: libyaml's load time, then each file through `greenplace dry-run`."""
    files = {f"{_label(n)} {kind}": tmp / f"jobs-{_label(n)}.{ext}"
             for n in (args.jobs, args.big_jobs)
             for kind, ext in (("YAML", "yaml"), ("JSON lines", "jsonl"))}
    # One job: interpreter start-up, imports and catalog, a floor under every figure.
    files = {"1 JSON lines (start-up)": tmp / "jobs-1.jsonl", **files}
    small_yaml = files[f"{_label(args.jobs)} YAML"]
    load_only = [sys.executable, "-c", "import sys, time, yaml\nstart = time.perf_counter()\n"
                 "yaml.load(open(sys.argv[1], 'rb'), Loader=yaml.CSafeLoader)\n"
                 "print(time.perf_counter() - start)", str(small_yaml)]
    print(f"end to end: `greenplace dry-run FILE --output json`, a cold process per run, "
          f"{args.repeat} rounds, {os.cpu_count()} CPUs")
    for name, path in files.items():
        print(f"  {name}: {path.stat().st_size / 2**20:.1f} MiB")
    walls: dict[str, list[float]] = {name: [] for name in ["libyaml load only", *files]}
    peaks: dict[str, list[float]] = {name: [] for name in files}
    for run in range(args.repeat):
        cells = []
        _, _, out = _cold_run(load_only, capture=True)
        walls["libyaml load only"].append(float(out))
        cells.append(f"libyaml load {_label(args.jobs)} YAML {float(out):.2f} s")
        for name, path in files.items():
            wall, rss, _ = _cold_run([*greenplace, "dry-run", str(path), "--output", "json"])
            walls[name].append(wall)
            peaks[name].append(rss)
            cells.append(f"{name} {wall:.2f} s {rss:.0f} MiB")
        print(f"round {run + 1}: " + "; ".join(cells))
    med = {name: statistics.median(v) for name, v in walls.items()}
    peak = {name: max(v) for name, v in peaks.items()}
    print("median wall: " + "; ".join(f"{name} {v:.2f} s" for name, v in med.items()))
    print("peak RSS (max over rounds): " + "; ".join(f"{n} {v:.0f} MiB" for n, v in peak.items()))
    small, big = _label(args.jobs), _label(args.big_jobs)
    ratios = [w / y for w, y in zip(walls[f"{small} YAML"], walls["libyaml load only"],
                                    strict=True)]
    print(f"(this process's own peak RSS, a floor for the figures above: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")
    print(f"target {small} YAML <= 2 x libyaml load only: median ratio "
          f"{statistics.median(ratios):.2f} (ratio of medians "
          f"{med[f'{small} YAML'] / med['libyaml load only']:.2f})")
    print(f"target {small} JSON lines <= 1 s: median {med[f'{small} JSON lines']:.2f} s")
    print(f"target {big} <= 500 MiB peak RSS: YAML {peak[f'{big} YAML']:.0f} MiB, "
          f"JSON lines {peak[f'{big} JSON lines']:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cli", action="store_true",
                        help="end to end: cold `greenplace dry-run` runs on generated files")
    parser.add_argument("--big-jobs", type=int, default=100_000,
                        help="with --cli: the size of the large files")
    args = parser.parse_args()
    if args.cli:
        cli_benchmark(args)
        return

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
