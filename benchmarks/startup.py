"""CLI start-up: cold runs of what a user types, beside bare-interpreter baselines.

Usage:
    python benchmarks/startup.py [--repeat 5]

Each command runs ``--repeat`` times in a fresh process, interleaved round by round so the
baselines and the commands see the same machine load; prints each command's median wall time
and its ratio to the baselines. Targets: ``greenplace --help`` <= 3x ``python -c "import click"``,
a one-job dry run <= 0.6 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_JOB = """\
jobs:
  - name: llama-8b-finetune
    run: torchrun --nproc-per-node 8 train.py
    resources: {accelerators: [{A100-80GB: 8}, {H100: 8}]}
    work: {hours: 12}
"""


def _commands(folder: Path) -> dict[str, list[str]]:
    python = sys.executable
    greenplace = [python, "-m", "greenplace"]
    return {
        "python -c pass": [python, "-c", "pass"],
        'python -c "import click"': [python, "-c", "import click"],
        "greenplace --help": [*greenplace, "--help"],
        "greenplace schema job": [*greenplace, "schema", "job"],
        "greenplace estimate (region)": [*greenplace, "estimate", "--accelerator", "A100",
                                         "--count", "8", "--hours", "12",
                                         "--region", "gcp:europe-west4"],
        "greenplace dry-run one.yaml (table)": [*greenplace, "dry-run", str(folder / "one.yaml")],
        "greenplace dry-run one.yaml -o json": [*greenplace, "dry-run", str(folder / "one.yaml"),
                                                "--output", "json"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "one.yaml").write_text(ONE_JOB)
        commands = _commands(folder)
        times: dict[str, list[float]] = {name: [] for name in commands}
        env = {**os.environ, "COLUMNS": "200"}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                start = time.perf_counter()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, cwd=tmp)
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    bare, click_only = median["python -c pass"], median['python -c "import click"']
    print(f"{'command':40} {'median s':>9} {'x pass':>7} {'x click':>8}   runs (s)")
    for name, value in median.items():
        runs = " ".join(f"{v:.3f}" for v in times[name])
        print(f"{name:40} {value:9.3f} {value / bare:7.2f} {value / click_only:8.2f}   {runs}")
    print(f"\ntargets: --help <= 3x import click: {median['greenplace --help'] / click_only:.2f}x; "
          f"one-job dry run <= 0.6 s: {median['greenplace dry-run one.yaml (table)']:.3f} s")


if __name__ == "__main__":
    main()
