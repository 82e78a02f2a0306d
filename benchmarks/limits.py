"""How fast over-limit jobs files are refused, and what the limit checks cost a valid load.

Usage:
    python benchmarks/limits.py [--repeat 5] [--jobs 20000]

Refusals: cold runs of ``greenplace dry-run FILE`` (a new process each, as a user runs
it) on a 50 MB sparse file (GREENPLACE_MAX_FILE_BYTES), ``[`` x 20,000 as YAML and as
JSON (GREENPLACE_MAX_DEPTH), and a job whose ``run`` holds a NUL; each exit code must be
2. Beside them, ``greenplace --help`` (the start-up alone), and the same refusals timed
inside this process (``load_jobs`` until it raises: no start-up). Then the wall time of
``load_jobs`` on ``--jobs`` generated jobs as JSON lines and YAML (the
benchmarks/placement.py generator), and of the per-job checks it adds alone
(``limits.check_run``; JSON lines skip the depth walk) over the same raw jobs, with the
garbage collector paused as ``load_jobs`` pauses it. Prints every run, then the medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from placement import job_dicts  # noqa: E402  (benchmarks/placement.py)

from greenplace.scheduler.catalog import load_catalog  # noqa: E402
from greenplace.scheduler.exceptions import SpecError  # noqa: E402
from greenplace.scheduler.jobfile import read_jobs  # noqa: E402
from greenplace.scheduler.jobs import load_jobs  # noqa: E402
from greenplace.scheduler.limits import check_run  # noqa: E402
from greenplace.scheduler.settings import Limits  # noqa: E402

GREENPLACE = [sys.executable, "-m", "greenplace"]


def _cold(args: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([*GREENPLACE, *args], capture_output=True, check=False)
    return time.perf_counter() - started, done.returncode


def refusals(folder: Path, repeat: int) -> None:
    big = folder / "big.yaml"
    with big.open("wb") as file:
        file.truncate(50 * 1024 * 1024)
    (folder / "deep.yaml").write_text("[" * 20_000)
    (folder / "deep.json").write_text("[" * 20_000)
    (folder / "nul.json").write_text(json.dumps({
        "name": "a", "run": "echo\x00hi", "resources": {"accelerators": {"A100": 1}},
        "work": {"hours": 1}}))
    cases = {"start-up (--help)": ["--help"]}
    cases.update({f"dry-run {name}": ["dry-run", str(folder / name)]
                  for name in ("big.yaml", "deep.yaml", "deep.json", "nul.json")})
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_number in range(1, repeat + 1):
        line = []
        for name, args in cases.items():
            elapsed_s, code = _cold(args)
            assert code == (0 if args == ["--help"] else 2), (name, code)
            times[name].append(elapsed_s)
            line.append(f"{name} {elapsed_s:.2f} s")
        print(f"round {round_number}: " + "; ".join(line))
    print("median: " + "; ".join(f"{n} {statistics.median(t):.2f} s" for n, t in times.items()))
    catalog = load_catalog()
    inside: dict[str, list[float]] = {}
    for name in ("big.yaml", "deep.yaml", "deep.json", "nul.json"):
        for _ in range(repeat):
            started = time.perf_counter()
            try:
                load_jobs(folder / name, catalog)
            except SpecError:
                inside.setdefault(name, []).append(time.perf_counter() - started)
    print("in process, median: " + "; ".join(
        f"{n} {statistics.median(t) * 1000:.1f} ms" for n, t in inside.items()))


def check_costs(folder: Path, n: int, repeat: int) -> None:
    jobs = job_dicts(n, seed=7)
    lines = folder / "jobs.jsonl"
    lines.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    yaml_file = folder / "jobs.yaml"
    yaml_file.write_text(yaml.safe_dump({"jobs": jobs}, sort_keys=False))
    catalog = load_catalog()
    limits = Limits()
    for path in (lines, yaml_file):
        raw = [r.data for r in read_jobs(path, limits)]
        loads, checks = [], []
        for _ in range(repeat):
            started = time.perf_counter()
            load_jobs(path, catalog, limits=limits)
            loads.append(time.perf_counter() - started)
            gc.disable()
            started = time.perf_counter()
            for data in raw:
                check_run(data["run"], where="-", max_bytes=limits.run_bytes)
            checks.append(time.perf_counter() - started)
            gc.enable()
        print(f"{n:,} jobs, {path.name} ({path.stat().st_size / 2**20:.1f} MiB): load_jobs "
              + " / ".join(f"{t:.2f}" for t in loads) + f" s, median {statistics.median(loads):.2f}"
              " s; the limit checks alone " + " / ".join(f"{t:.3f}" for t in checks)
              + f" s, median {statistics.median(checks):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        refusals(Path(tmp), args.repeat)
        check_costs(Path(tmp), args.jobs, args.repeat)


if __name__ == "__main__":
    main()
