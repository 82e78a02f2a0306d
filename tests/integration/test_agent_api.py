"""`greenplace agent` against the real `greenplace api`: the summary arrives and is stored as
the job's measurement, and a report made while the API is down arrives once it is back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from greenplace.scheduler.agent import spooled
from greenplace.scheduler.tokens import Tokens
from tests.integration.conftest import Proc, Service, wait_for

pytestmark = pytest.mark.integration

JOB = {"jobs": [{"name": "measured", "run": "python train.py",
                 "resources": {"accelerators": {"A100": 1}}, "work": {"hours": 1}}]}
BUSY = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"


def _job_and_token(service: Service, url: str) -> tuple[str, str]:
    """A job submitted through the API, and its agent token (as dispatch mints it)."""
    member = service.token("ml")
    sent = httpx.post(f"{url}/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {member}"},
                      timeout=30)
    assert sent.status_code == 201, sent.text
    job_id = sent.json()["jobs"][0]["job_id"]
    return job_id, Tokens(service.store()).mint_agent(job_id=job_id, attempt=1, team="ml")


def _agent_env(service: Service, url: str, job_id: str, token: str) -> dict[str, str]:
    env = {k: v for k, v in service.env.items() if not k.startswith("GREENPLACE_")}
    env.update({"PYTHONPATH": service.env["PYTHONPATH"], "GREENPLACE_JOB_ID": job_id,
                "GREENPLACE_API_URL": url, "GREENPLACE_AGENT_TOKEN": token,
                "XDG_STATE_HOME": str(service.tmp / "agent-state")})
    return env


def _agent(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "greenplace", "agent", *args], env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _api_proc(service: Service) -> Proc:
    [api] = [p for p in service.procs if p.popen.poll() is None and "api" in list(p.popen.args)]  # type: ignore[arg-type]
    return api


def _start_api_on(service: Service, url: str) -> None:
    """`greenplace api` again on the port of ``url`` (the agent keeps its URL)."""
    port = url.rsplit(":", 1)[1]
    proc = service._start("api", "api", "--port", port, "--log-level", "warning")

    def up() -> bool:
        assert proc.popen.poll() is None, proc.output()[-3000:]
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout_s=60, what="the API to answer again", interval_s=0.1)


def _measurement_arrived(service: Service, job_id: str, *, exit_code: int) -> dict[str, Any]:
    record = service.store().get(job_id)
    assert record.agent_exit_code == exit_code
    assert record.measurement is not None
    summary = record.measurement
    assert summary["exit_code"] == exit_code and summary["job_id"] == job_id
    assert record.measured_energy_kwh == pytest.approx(float(summary["energy_j"]) / 3.6e6)
    assert record.measured_energy_kwh is not None and record.measured_energy_kwh > 0
    return summary


def test_the_summary_arrives_and_is_stored(service: Service, tmp_path: Path) -> None:
    url = service.start_api()
    job_id, token = _job_and_token(service, url)
    env = _agent_env(service, url, job_id, token)
    agent = _agent("--interval-s", "0.2", "--", sys.executable, "-c", BUSY.format(s=1.5),
                   env=env, cwd=tmp_path)
    output, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0, output
    summary = _measurement_arrived(service, job_id, exit_code=0)
    assert summary["method"] == "host-model" and summary["wall_s"] >= 1.5
    [device] = summary["devices"]
    assert device["method"] == "host-model" and device["energy_j"] == summary["energy_j"]
    assert spooled(service.tmp / "agent-state" / "greenplace" / "spool") == []
    view = httpx.get(f"{url}/v1/jobs/{job_id}",
                     headers={"Authorization": f"Bearer {service.token('ml')}"}).json()
    assert view["energy_kwh_measured"] == pytest.approx(summary["energy_j"] / 3.6e6)
    assert view["measurement_method"] == "host-model" and view["measurement"] == summary
    assert view["agent_exit_code"] == 0
    assert not (tmp_path / "greenplace-summary.json").exists()  # the API has it
    assert token not in output and token not in json.dumps(summary)
    # the job's agent token posts nothing for another job, and a lying summary is refused
    bad = dict(summary, job_id="0" * 16)
    refused = httpx.post(f"{url}/v1/jobs/{job_id}/telemetry", timeout=10,
                         json={"kind": "exit", "exit_code": 0, "summary": bad},
                         headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 422


def test_the_api_killed_while_the_job_runs_loses_no_report(service: Service,
                                                           tmp_path: Path) -> None:
    url = service.start_api()
    job_id, token = _job_and_token(service, url)
    env = _agent_env(service, url, job_id, token)
    # 1. The retry loop delivers: the API dies mid-run and comes back on its address.
    agent = _agent("--interval-s", "0.2", "--flush-timeout-s", "120", "--", "bash", "-c",
                   "sleep 2; exit 3", env=env, cwd=tmp_path)
    _api_proc(service).stop()
    # the command ends while the API is down: its report waits in the spool
    spool = service.tmp / "agent-state" / "greenplace" / "spool"
    wait_for(lambda: any(p.name.endswith("-exit.json") for p in spooled(spool, job_id)),
             timeout_s=60, what="the exit report in the spool", interval_s=0.1)
    time.sleep(1)
    assert agent.poll() is None  # still trying to deliver
    _start_api_on(service, url)
    output, _ = agent.communicate(timeout=120)
    assert agent.returncode == 3, output
    assert "unreachable" in output and token not in output
    _measurement_arrived(service, job_id, exit_code=3)
    assert spooled(spool) == []

    # 2. `greenplace agent --flush` delivers what an agent that gave up left behind.
    second, second_token = _job_and_token(service, url)
    env2 = _agent_env(service, url, second, second_token)
    _api_proc(service).stop()
    agent = _agent("--interval-s", "0.2", "--flush-timeout-s", "1", "--", "bash", "-c",
                   "sleep 1", env=env2, cwd=tmp_path)
    output, _ = agent.communicate(timeout=120)
    assert agent.returncode == 0 and "agent --flush" in output
    assert len(spooled(spool, second)) >= 1
    _start_api_on(service, url)
    flushed = _agent("--flush", env=env2, cwd=tmp_path)
    output, _ = flushed.communicate(timeout=120)
    assert flushed.returncode == 0, output
    assert spooled(spool) == []
    _measurement_arrived(service, second, exit_code=0)
