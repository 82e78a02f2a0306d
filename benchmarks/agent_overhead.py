"""The agent's own CPU cost on a CPU-only command (``overhead_cpu_s`` of its summary).

Usage:
    python3 -P benchmarks/agent_overhead.py [--seconds 10] [--repeat 5]

Runs ``greenplace agent --interval-s 1`` (no API: the summary goes to a file) around three
commands, ``--repeat`` times each, interleaved round by round so they see the same load:
``true`` (start-up and shut-down alone), ``sleep SECONDS`` and a one-core busy loop of
SECONDS. Prints, per command, the median of the agent's CPU seconds (interpreter start and
imports included), the part of it per second of sampling beyond start-up, and the share of
one core it takes. The meters are the ones this machine has (NVML, RAPL or the host model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BUSY = "import time, sys\nt = time.time()\nwhile time.time() - t < float(sys.argv[1]): pass\n"


def run_once(command: list[str], tmp: Path) -> dict[str, float]:
    summary = tmp / "summary.json"
    done = subprocess.run([sys.executable, "-m", "greenplace", "agent", "--interval-s", "1",
                           "--summary-file", str(summary), "--", *command],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"agent failed: {done.stderr}")
    data = json.loads(summary.read_text())
    return {"overhead_cpu_s": data["overhead_cpu_s"], "wall_s": data["wall_s"],
            "method": data["method"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "busy.py").write_text(BUSY)
        commands = {"true": ["true"], f"sleep {args.seconds:g}": ["sleep", str(args.seconds)],
                    f"busy loop {args.seconds:g} s": [sys.executable, str(tmp / "busy.py"),
                                                      str(args.seconds)]}
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in commands}
        for _ in range(args.repeat):
            for label, command in commands.items():
                runs[label].append(run_once(command, tmp))
    startup_s = statistics.median(r["overhead_cpu_s"] for r in runs["true"])
    print(f"greenplace agent --interval-s 1, median of {args.repeat} runs "
          f"(meters: {runs['true'][0]['method']}):")
    print(f"{'command':<22} {'agent CPU s':>12} {'beyond start-up, CPU s per s':>30} "
          f"{'share of one core':>18}")
    for label, rs in runs.items():
        cpu_s = statistics.median(r["overhead_cpu_s"] for r in rs)
        wall_s = statistics.median(r["wall_s"] for r in rs)
        per_s = (cpu_s - startup_s) / wall_s if wall_s > 0.5 else float("nan")
        share = cpu_s / wall_s if wall_s > 0.5 else float("nan")
        print(f"{label:<22} {cpu_s:>12.4f} {per_s:>30.5f} {share:>17.3%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
