"""Safe YAML parsers on a generated jobs file: load time and how each reports an error.

Usage (the candidates are not project dependencies; install them beside it first):
    pip install rapidyaml yaml-rs
    python benchmarks/yaml_parsers.py [--jobs 10000] [--repeat 5]

Prints the median load time of each installed parser (same process, one after another,
round by round), whether it returns the same data as PyYAML's safe loader, and what it
says about a broken file, a YAML 1.1 merge key and an unknown tag.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from placement import job_dicts  # noqa: E402

BROKEN = "jobs:\n  - {name: a, run: x\n"
MERGE = "base: &b {hours: 1}\nwork:\n  <<: *b\n"
TAGGED = "run: !!python/object/apply:os.system ['echo hi']\n"
YAML11 = "spot: yes\nhours: 017\n"


def parsers() -> dict[str, Callable[[str], Any]]:
    found: dict[str, Callable[[str], Any]] = {
        "PyYAML SafeLoader (pure Python)": lambda t: yaml.load(t, Loader=yaml.SafeLoader),
        "PyYAML CSafeLoader (libyaml)": lambda t: yaml.load(t, Loader=yaml.CSafeLoader),
    }
    try:
        import yaml_rs

        found[f"yaml-rs {version('yaml-rs')}"] = yaml_rs.loads
    except ImportError:
        pass
    try:
        import ryml

        def rapidyaml(text: str) -> Any:
            tree = ryml.parse_in_arena(text.encode())
            return json.loads(ryml.emit_json_malloc(tree, tree.root_id()))

        found[f"rapidyaml {version('rapidyaml')} (parse, emit JSON, json.loads)"] = rapidyaml
    except ImportError:
        pass
    return found


def streamed(text: str) -> Any:
    """greenplace's own jobs-file reader (libyaml, one job at a time), through a file."""
    from greenplace.scheduler.jobfile import read_jobs

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "jobs.yaml"
        path.write_text(text)
        return {"jobs": [raw.data for raw in read_jobs(path)]}


def outcome(parse: Callable[[str], Any], text: str) -> str:
    try:
        return repr(parse(text))[:80]
    except Exception as exc:  # noqa: BLE001 (reporting what each parser raises)
        return f"{type(exc).__name__}: {' / '.join(str(exc).split(chr(10)))[:160]!r}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    text = yaml.dump({"jobs": job_dicts(args.jobs, seed=7)}, Dumper=yaml.CSafeDumper,
                     sort_keys=False)
    reference = yaml.load(text, Loader=yaml.CSafeLoader)
    found = parsers()
    found["greenplace jobfile.read_jobs (libyaml, streamed)"] = streamed
    times: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(args.repeat):
        for name, parse in found.items():
            start = time.perf_counter()
            parse(text)
            times[name].append(time.perf_counter() - start)
    print(f"{args.jobs} jobs, {len(text) / 2**20:.1f} MiB of YAML, median of {args.repeat}:")
    for name, parse in found.items():
        same = parse(text) == reference
        print(f"  {name}: {statistics.median(times[name]):.3f} s, same data: {same}")
    del found["greenplace jobfile.read_jobs (libyaml, streamed)"]
    for label, sample in (("broken", BROKEN), ("merge key", MERGE), ("python tag", TAGGED),
                          ("YAML 1.1 scalars", YAML11)):
        print(f"{label} {sample!r}:")
        for name, parse in found.items():
            print(f"  {name}: {outcome(parse, sample)}")


if __name__ == "__main__":
    main()
