"""Each command imports only what it uses: start-up time is mostly imports.

Every case runs the real CLI in a fresh interpreter and lists the modules loaded when it
exits. The figures (``--help`` and a one-job dry run against ``python -c pass``) are in
benchmarks/README.md; here only the set of heavy modules is checked, which is what decides
them and does not vary with the machine's load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "redis", "httpx", "celery", "kombu", "rich", "pydantic", "yaml", "boto3",
         "botocore", "google", "azure", "libcloud")

PROBE = """
import atexit, json, sys
atexit.register(lambda: open({out!r}, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["greenplace", *{args!r}]
from greenplace.scheduler.cli import main
main()
"""

ONE_JOB = """\
jobs:
  - name: one
    run: python train.py
    resources: {accelerators: {A100: 8}}
    work: {hours: 12}
"""


def _heavy_modules_loaded(args: list[str], tmp_path: Path) -> set[str]:
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", PROBE.format(out=str(out), args=args)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(out.read_text())
    return {top for top in HEAVY if any(m == top or m.startswith(top + ".") for m in loaded)}


@pytest.mark.parametrize(("args", "allowed"), [
    (["--help"], set()),
    (["dry-run", "--help"], {"pydantic", "yaml"}),
    (["schema", "job"], {"pydantic", "yaml"}),
    (["plan", "--help"], {"pydantic", "yaml"}),
    (["schema", "capacity"], {"pydantic", "yaml"}),
    (["estimate", "--accelerator", "A100", "--count", "8", "--hours", "12",
      "--region", "gcp:europe-west4"], {"pydantic", "yaml"}),
], ids=["help", "dry-run-help", "schema", "plan-help", "schema-capacity", "estimate"])
def test_light_commands_load_no_heavy_module(args: list[str], allowed: set[str],
                                             tmp_path: Path) -> None:
    assert _heavy_modules_loaded(args, tmp_path) <= allowed


def test_a_one_job_dry_run_loads_no_service_http_or_cloud_client(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(ONE_JOB)
    loaded = _heavy_modules_loaded(["dry-run", "one.yaml", "--output", "json"], tmp_path)
    assert loaded <= {"numpy", "pydantic", "yaml"}
    assert "numpy" in loaded  # it did place the job


def test_a_one_job_plan_loads_highspy_and_no_service_http_or_cloud_client(
        tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(ONE_JOB)
    loaded = _heavy_modules_loaded(["plan", "one.yaml", "--output", "json"], tmp_path)
    assert loaded <= {"numpy", "pydantic", "yaml"}
    out = tmp_path / "modules.json"
    assert "highspy" in json.loads(out.read_text())  # it did solve the plan


def test_the_help_table_matches_each_command() -> None:
    from greenplace.scheduler.cli import LAZY_COMMANDS, load_command

    for name, (_, _, one_line_help) in LAZY_COMMANDS.items():
        command = load_command(name)
        assert command.name == name
        assert (command.help or "").strip().splitlines()[0] == one_line_help
