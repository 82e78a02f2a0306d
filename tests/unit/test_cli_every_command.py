"""Every command in every output mode it offers, on the embedded defaults.

Commands that need no service run in process; the queue commands run against a private
redis-server with no worker (so they also show the "no worker" warnings), and `submit`
in a subprocess, as a user runs it (the Celery app reads its settings at import).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenplace.providers.base import JobLaunch, Placement, idempotency_key
from greenplace.providers.local_sim import LocalSim, SimConfig
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.cli import main
from tests.redisproc import REDIS_SERVER, RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = str(REPO / "examples" / "jobs.yaml")
ALL = ("table", "json", "csv")
NO_CSV = ("table", "json")
NO_WORKER = "no greenplace worker has ever been seen"

# (arguments, output modes, exit code): every command that needs no service.
OFFLINE: list[tuple[list[str], tuple[str, ...], int]] = [
    (["dry-run", EXAMPLES], ALL, 0),
    (["dry-run", EXAMPLES, "--explain"], ALL, 0),
    (["plan", EXAMPLES, "--capacity", str(REPO / "examples" / "capacity.yaml"), "--explain"],
     ALL, 0),
    (["estimate", "-a", "A100", "-n", "8", "--hours", "12", "--region", "gcp:europe-west4"],
     ALL, 0),
    (["estimate", "-a", "A100", "--hours", "1", "--intensity-g-per-kwh", "300"], ALL, 0),
    (["regions", "--accelerator", "H100"], ALL, 0),
    (["signals", "--region", "gcp:europe-west4"], NO_CSV, 0),
    (["backtest", EXAMPLES, "--trace", "electricitymaps_hourly_2023-06-05_to_11_4zones"],
     ALL, 0),
    (["submit", EXAMPLES, "--dry-run"], NO_CSV, 0),
    (["providers", "check", "--cloud", "libcloud"], ALL, 1),  # nothing configured
    (["policies", "list"], ALL, 0),
    (["policies", "show", "eu-sovereign"], NO_CSV, 0),
]
SIGNAL_ENV = ("GREENPLACE_SIGNAL_SOURCES", "ELECTRICITYMAPS_API_KEY", "WATTTIME_USERNAME",
              "WATTTIME_PASSWORD", "GREENPLACE_CARBON_AWARE_SDK_URL")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def parse(output: str, text: str) -> Any:
    """Parse ``text`` as ``output`` says; a table must at least say something."""
    if output == "json":
        return json.loads(text)
    if output == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows and all(None not in r for r in rows)  # no row wider than the header
        return rows
    assert text.strip()
    return text


@pytest.mark.parametrize(("args", "outputs", "code"), OFFLINE,
                         ids=[" ".join(a[:2]).replace(EXAMPLES, "jobs") for a, _, _ in OFFLINE])
def test_offline_commands_in_every_output_mode(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    args: list[str], outputs: tuple[str, ...], code: int,
) -> None:
    for name in SIGNAL_ENV:
        monkeypatch.delenv(name, raising=False)
    for output in outputs:
        got, out, err = run(capsys, *args, "--output", output)
        assert got == code, (output, err)
        parse(output, out)
        assert "Traceback" not in err
    got, out, _ = run(capsys, *args, "--output", "xml")
    assert got == 2 and out == ""


def test_schema_validate_and_help_of_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for kind in ("job", "jobs-file", "policy", "capacity"):
        code, out, _ = run(capsys, "schema", kind)
        assert code == 0 and json.loads(out)[
            "$defs" if kind in ("jobs-file", "capacity") else "properties"]
    code, out, _ = run(capsys, "validate", EXAMPLES)
    assert code == 0 and out.startswith("OK: ")
    code, out, _ = run(capsys, "--help")
    commands = [line.split()[0] for line in out.split("Commands:")[1].splitlines()
                if line.strip()]
    assert {"dry-run", "submit", "status", "policies", "validate", "sim"} <= set(commands)
    for command in commands:
        assert run(capsys, command, "--help")[0] == 0, command


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


def launch_one(server: RedisServer) -> None:
    """One local-sim instance, as a dispatch would launch it (attempt 1)."""
    o = sorted(load_catalog().offers, key=lambda o: (o.cloud, o.region, o.instance_type))[0]
    placement = Placement(cloud=o.cloud, region=o.region, instance_type=o.instance_type,
                          accelerator=o.accelerator, accelerator_count=o.accelerator_count,
                          spot=False, price_usd_per_hour=o.price_usd_per_hour)
    sim = LocalSim(config=SimConfig(launch_latency_s=0, run_time_s=60), redis_url=server.url)
    request = sim.prepare(JobLaunch(job_id="job1", name="train", run="python train.py",
                                    policy="balanced", attempt=1), placement)
    sim.submit(request, idempotency_key=idempotency_key("job1", 1))


def test_queue_commands_against_redis_with_no_worker(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    server.client().flushall()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENPLACE_")}
    env["GREENPLACE_REDIS_URL"] = server.url
    for key in [k for k in os.environ if k.startswith("GREENPLACE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)

    launch_one(server)
    code, out, err = run(capsys, "sim", "instances")  # the table used to crash on `attempt`
    assert code == 0 and "job1" in out and "Traceback" not in err
    code, out, _ = run(capsys, "sim", "instances", "--output", "json")
    assert code == 0 and json.loads(out)[0]["attempt"] == 1

    ids: list[str] = []
    for output in NO_CSV:
        done = subprocess.run([sys.executable, "-m", "greenplace", "submit", EXAMPLES,
                               "--output", output], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and NO_WORKER in done.stderr, done.stderr
        if output == "json":
            ids += [r["job_id"] for r in parse("json", done.stdout)]
        else:
            ids += [line.split()[0] for line in done.stdout.splitlines()]
    assert len(set(ids)) == 14

    for output in NO_CSV:
        code, out, err = run(capsys, "status", "--output", output)
        assert code == 0 and NO_WORKER in err
        parse(output, out)
        code, out, _ = run(capsys, "events", ids[0], "--output", output)
        assert code == 0 and "QUEUED" in out
    for job_id in ids:
        code, out, _ = run(capsys, "cancel", job_id)
        assert code == 0 and job_id in out

    code, out, err = run(capsys, "status", "--watch", "--interval", "0.2", "--output", "json")
    lines = [json.loads(line) for line in out.splitlines()]  # JSON lines, one per job
    assert code == 0 and NO_WORKER not in err  # every job is final: no warning
    assert sorted(r["job_id"] for r in lines) == sorted(ids)
    assert {r["state"] for r in lines} == {"CANCELLED"}

    code, out, err = run(capsys, "cancel", "no-such-job")
    assert code == 2 and out == "" and "Traceback" not in err

    for output in NO_CSV:  # nothing launched: every job was cancelled while queued
        code, out, _ = run(capsys, "report", "--group-by", "team", "--output", output)
        assert code == 0
        if output == "json":
            assert parse("json", out)["totals"]["jobs"] == 0
    code, token, err = run(capsys, "admin", "token", "create", "--team", "ml")
    assert code == 0 and token.startswith("gpt_") and "shown only now" in err
    code, out, _ = run(capsys, "admin", "token", "list", "--output", "json")
    (row,) = parse("json", out)
    assert row["team"] == "ml" and token.strip() not in out
    code, out, _ = run(capsys, "admin", "token", "list")
    assert code == 0 and row["token_id"] in out
    assert run(capsys, "admin", "token", "revoke", row["token_id"])[0] == 0
    code, _, err = run(capsys, "admin", "token", "revoke", row["token_id"])
    assert code == 2 and "No token has id" in err
    code, _, err = run(capsys, "admin", "token", "create", "--team", "Bad Team")
    assert code == 2 and "not a valid team name" in err and "Traceback" not in err
    monkeypatch.setenv("GREENPLACE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    code, out, err = run(capsys, "status")
    assert code == 2 and out == "" and err.count("\n") == 1 and "To fix" in err
