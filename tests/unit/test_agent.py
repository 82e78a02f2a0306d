"""``greenplace agent``: real commands, real signals, the summary file, the spool, the boot
script that starts it, and what it imports. The API end to end is in
tests/integration/test_agent_api.py."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from greenplace.providers.base import EXIT_MARKER, AgentAccess, JobLaunch, startup_script
from greenplace.scheduler.agent import (
    AgentConfig,
    deliver,
    exit_status,
    run_agent,
    spool_report,
    spooled,
)
from greenplace.scheduler.meters import open_meters

AGENT = [sys.executable, "-m", "greenplace", "agent"]
TOKEN = "gpt_" + "s3cr3t" * 7  # a token-shaped secret that must never show up


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENPLACE_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env.update(extra)
    return env


def _agent(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *args], cwd=tmp_path, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("script", "expected"), [
    ("exit 0", 0), ("exit 3", 3), ("kill -KILL $$", 128 + 9), ("kill -TERM $$", 128 + 15),
])
def test_the_commands_exit_code_passes_through(tmp_path: Path, script: str,
                                               expected: int) -> None:
    done = _agent(tmp_path, "--interval-s", "0.1", "--", "bash", "-c", script)
    assert done.returncode == expected, done.stderr
    summary = json.loads((tmp_path / "greenplace-summary.json").read_text())
    assert summary["exit_code"] == expected


def test_the_summary_file(tmp_path: Path) -> None:
    busy = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass\n"
    out = tmp_path / "out" / "summary.json"
    before = time.time()
    done = _agent(tmp_path, "--summary-file", str(out), "--interval-s", "0.2", "--",
                  sys.executable, "-c", busy)
    assert done.returncode == 0, done.stderr
    summary = json.loads(out.read_text())
    assert not (tmp_path / "greenplace-summary.json").exists()
    assert set(summary) == {"job_id", "exit_code", "started_at", "ended_at", "wall_s",
                            "energy_j", "method", "devices", "notes", "overhead_cpu_s"}
    assert summary["job_id"] is None and summary["exit_code"] == 0
    assert 1.0 <= summary["wall_s"] <= time.time() - before
    assert summary["started_at"] < summary["ended_at"]
    # no GPU and no readable RAPL here: the labelled host model, busy for the second
    assert summary["method"] == "host-model"
    [host] = summary["devices"]
    assert host["kind"] == "host" and host["method"] == "host-model"
    assert summary["energy_j"] == host["energy_j"] > 0
    assert host["avg_power_w"] == pytest.approx(host["energy_j"] / summary["wall_s"], rel=0.3)
    assert 0 < host["utilization_pct"] <= 100
    assert any("no NVML meter" in n for n in summary["notes"])
    # the agent's own CPU time, interpreter start included: well under the command's second
    assert 0 < summary["overhead_cpu_s"] < 0.5
    # the API takes exactly this shape (extra="forbid"): agent and API cannot drift apart
    from pydantic import ValidationError

    from greenplace.scheduler.api.app import Telemetry
    from greenplace.scheduler.measurement import MeasurementSummary

    assert MeasurementSummary.model_validate(summary).energy_j == summary["energy_j"]
    Telemetry.model_validate({"kind": "exit", "exit_code": 0, "summary": summary})
    with pytest.raises(ValidationError):
        MeasurementSummary.model_validate({**summary, "token": "x"})
    with pytest.raises(ValidationError):
        MeasurementSummary.model_validate({**summary, "devices": [{**host, "kind": "tpu"}]})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_forwarded_to_the_command(tmp_path: Path, sig: signal.Signals) -> None:
    trap = ("import signal, sys, time\n"
            "def stop(n, f):\n"
            "    open('got', 'w').write(str(n)); sys.exit(7)\n"
            f"signal.signal({int(sig)}, stop)\n"
            "open('ready', 'w').close()\n"
            "time.sleep(30)\n")
    proc = subprocess.Popen([*AGENT, "--interval-s", "0.1", "--", sys.executable, "-c", trap],
                            cwd=tmp_path, env=_env(tmp_path), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 7
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / "got").read_text() == str(int(sig))
    assert json.loads((tmp_path / "greenplace-summary.json").read_text())["exit_code"] == 7


def test_usage_errors_and_a_missing_command(tmp_path: Path) -> None:
    done = _agent(tmp_path)
    assert done.returncode == 2 and "No command to run" in done.stderr
    assert "Traceback" not in done.stderr
    done = _agent(tmp_path, "--", "no-such-command-here")
    assert done.returncode == 127 and "command not found" in done.stderr
    done = _agent(tmp_path, "--api-url", "ftp://x", "--", "true")
    assert done.returncode == 2 and "not an http:// or https:// URL" in done.stderr


def test_exit_status_convention() -> None:
    assert [exit_status(c) for c in (0, 3, -9, -15)] == [0, 3, 137, 143]


# ----------------------------------------------------------------------------- spool


class _Answers(http.server.BaseHTTPRequestHandler):
    """A tiny real HTTP server answering each POST with the next scripted status."""

    statuses: list[int] = []
    seen: list[tuple[str, str, dict[str, object]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers["Authorization"], body))
        status = type(self).statuses.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    _Answers.statuses, _Answers.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_deliver_sends_keeps_or_rejects(tmp_path: Path, http_server: str) -> None:
    spool = tmp_path / "spool"
    paths = [spool_report(spool, job_id="abc", api_url=http_server, body={"kind": kind})
             for kind in ("heartbeat", "heartbeat", "exit")]
    assert spooled(spool) == paths and spooled(spool, "abc") == paths
    assert spooled(spool, "other") == []
    assert oct(paths[0].stat().st_mode & 0o777) == "0o600"
    (spool / ".half-written.json.tmp").write_text("{")  # a crash mid-write is never sent
    _Answers.statuses = [503, 202, 404]
    with httpx.Client() as client:
        outcomes = [deliver(p, token=TOKEN, client=client).outcome for p in paths]
    assert outcomes == ["retry", "sent", "rejected"]
    assert spooled(spool) == [paths[0]]  # kept for the next try
    assert (spool / "rejected" / paths[2].name).exists()  # never silently dropped
    assert [s[0] for s in _Answers.seen] == ["/v1/jobs/abc/telemetry"] * 3
    assert {s[1] for s in _Answers.seen} == {f"Bearer {TOKEN}"}
    assert all(TOKEN not in p.read_text() for p in spool.rglob("*.json"))


def test_an_unreachable_api_leaves_the_report_spooled_without_the_token(tmp_path: Path,
                                                                        http_server: str
                                                                        ) -> None:
    _Answers.statuses = [503] * 100
    spool = tmp_path / "spool"
    done = _agent(tmp_path, "--job-id", "job1", "--api-url", http_server, "--spool",
                  str(spool), "--flush-timeout-s", "1", "--interval-s", "0.1", "--",
                  "bash", "-c", "exit 4", GREENPLACE_AGENT_TOKEN=TOKEN)
    assert done.returncode == 4
    assert "agent --flush" in done.stderr and TOKEN not in done.stderr + done.stdout
    [left] = spooled(spool, "job1")
    report = json.loads(left.read_text())
    assert report["job_id"] == "job1" and report["body"]["kind"] == "exit"
    assert report["body"]["summary"]["exit_code"] == 4 and TOKEN not in left.read_text()
    assert not (tmp_path / "greenplace-summary.json").exists()  # an API is configured
    # the API is back: --flush sends it, oldest first, with the token from the environment
    _Answers.statuses = [202]
    done = _agent(tmp_path, "--flush", "--spool", str(spool), GREENPLACE_AGENT_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    assert spooled(spool) == [] and _Answers.seen[-1][2]["kind"] == "exit"
    assert _Answers.seen[-1][1] == f"Bearer {TOKEN}"
    assert _agent(tmp_path, "--flush", "--spool", str(spool)).returncode == 0  # nothing left


def test_heartbeats_in_process(tmp_path: Path, http_server: str) -> None:
    _Answers.statuses = [202] * 50
    config = AgentConfig(job_id="job2", api_url=http_server, token=TOKEN,
                         spool_dir=tmp_path / "spool", interval_s=0.05, heartbeat_s=0.3,
                         flush_timeout_s=10)
    meters = open_meters(use_nvml=False, powercap_root=tmp_path / "none")
    assert run_agent(["sleep", "1"], config, meters=meters, log=lambda _: None) == 0
    kinds = [body["kind"] for _, _, body in _Answers.seen]
    assert kinds[-1] == "exit" and kinds.count("heartbeat") >= 2
    beats = [body for _, _, body in _Answers.seen if body["kind"] == "heartbeat"]
    energies = [s["energy_j"] for b in beats for s in b["samples"]]  # type: ignore[attr-defined]
    assert energies == sorted(energies) and energies[-1] > 0  # cumulative
    assert spooled(tmp_path / "spool") == []


# ----------------------------------------------------------------------------- boot script


def _boot(tmp_path: Path, *, run: str, pip_ok: bool) -> tuple[int, str, Path]:
    """The real boot script with the agent, minus what needs root: the venv is a folder of
    stand-ins whose ``greenplace`` is this checkout's, and it does not power off."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake_python = tmp_path / "path" / "python3"
    fake_python.parent.mkdir()
    fake_python.write_text("#!/bin/sh\nexit 0\n")  # `python3 -m venv`: already there
    (venv / "bin" / "pip").write_text(f"#!/bin/sh\necho pip \"$@\" >> {tmp_path}/pip.log\n"
                                      f"exit {0 if pip_ok else 1}\n")
    (venv / "bin" / "greenplace").write_text(
        f"#!/bin/sh\nexec {sys.executable} -m greenplace \"$@\"\n")
    for f in (fake_python, venv / "bin" / "pip", venv / "bin" / "greenplace"):
        f.chmod(0o755)
    agent = AgentAccess(api_url="http://127.0.0.1:9", token=TOKEN,
                        package="--index-url https://idx.example.test/simple greenplace[gpu]")
    script = startup_script(JobLaunch(job_id="j0b", name="n", run=run, policy="p", attempt=1,
                                      agent=agent))
    script = (script.replace("/opt/greenplace-agent", str(venv))
              .replace("shutdown -h now", "true").replace("/dev/ttyS0 /dev/console", ""))
    env = _env(tmp_path, PATH=f"{fake_python.parent}:{os.environ['PATH']}",
               GREENPLACE_AGENT_FLUSH_TIMEOUT_S="1")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr, tmp_path / "pip.log"


def test_the_boot_script_runs_the_command_under_the_agent(tmp_path: Path) -> None:
    run = "echo \"it's $GREENPLACE_JOB_ID\" > out.txt; exit 5"
    code, output, pip_log = _boot(tmp_path, run=run, pip_ok=True)
    assert code == 0 and f"{EXIT_MARKER}5" in output  # the console line as before
    assert (tmp_path / "out.txt").read_text() == "it's j0b\n"
    assert pip_log.read_text().splitlines() == [
        "pip install -q --index-url https://idx.example.test/simple greenplace[gpu]",
        "pip install -q nvidia-ml-py"]
    # the agent ran it: the API (port 9) refused, so its final report is in the spool
    [left] = (tmp_path / "state" / "greenplace" / "spool").glob("*-j0b-exit.json")
    assert json.loads(left.read_text())["body"]["exit_code"] == 5
    assert TOKEN not in output and TOKEN not in left.read_text()


def test_a_failed_agent_install_still_runs_the_command(tmp_path: Path) -> None:
    code, output, _ = _boot(tmp_path, run="exit 6", pip_ok=False)
    assert f"{EXIT_MARKER}6" in output and "running unmeasured" in output
    assert not (tmp_path / "state").exists()


# ----------------------------------------------------------------------------- imports

PROBE = """
import atexit, json, sys
atexit.register(lambda: open({out!r}, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["greenplace", *{args!r}]
from greenplace.scheduler.cli import main
main()
"""


@pytest.mark.parametrize("api", [False, True], ids=["no-api", "api"])
def test_the_agent_loads_no_heavy_module(tmp_path: Path, api: bool) -> None:
    out = tmp_path / "modules.json"
    args = ["agent", "--flush-timeout-s", "0", "--", "true"]
    if api:
        args = ["agent", "--job-id", "j", "--api-url", "http://127.0.0.1:9",
                "--flush-timeout-s", "0", "--", "true"]
    subprocess.run([sys.executable, "-c", PROBE.format(out=str(out), args=args)],
                   cwd=tmp_path, env=_env(tmp_path, GREENPLACE_AGENT_TOKEN=TOKEN),
                   capture_output=True, text=True, timeout=60, check=True)
    loaded = json.loads(out.read_text())
    heavy = {top for top in ("numpy", "redis", "celery", "kombu", "fastapi", "pydantic",
                             "yaml", "starlette", "uvicorn", "boto3", "google", "azure")
             if any(m == top or m.startswith(top + ".") for m in loaded)}
    assert heavy == set()
    assert not any(m.startswith("greenplace.scheduler.store") for m in loaded)
    assert ("httpx" in loaded) is api  # only when there is an API to talk to
