"""The service a team runs: `greenplace api` + real worker and beat processes on a private
Redis, driven by HTTP and by the CLI as a client (GREENPLACE_API_URL / GREENPLACE_TOKEN)
from an environment that cannot reach Redis at all."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from greenplace.scheduler.store import JobState
from tests.integration.conftest import REPO, Service

pytestmark = pytest.mark.integration

FINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.UNSCHEDULABLE}


def _client_env(service: Service, url: str, token: str) -> dict[str, str]:
    """The CLI's environment on a laptop: the API's URL and a token, and no Redis."""
    env = dict(service.env)
    env.update({"GREENPLACE_API_URL": url, "GREENPLACE_TOKEN": token,
                "GREENPLACE_REDIS_URL": "redis://127.0.0.1:9/0"})
    return env


def test_a_team_runs_jobs_through_the_api_and_the_cli_as_a_client(service: Service) -> None:
    service.start_worker()
    service.start_beat()
    url = service.start_api()
    ml, other, admin = service.token("ml"), service.token("vision"), service.token(
        "ops", role="admin")
    env = _client_env(service, url, ml)

    submitted = service.cli("submit", str(REPO / "examples" / "jobs.yaml"), "-o", "json",
                            env=env)
    assert submitted.returncode == 0, submitted.stderr
    ids = [row["job_id"] for row in json.loads(submitted.stdout)]
    assert len(ids) >= 3 and all(row["team"] == "ml" for row in json.loads(submitted.stdout))
    records = service.wait_states(ids, FINAL, timeout_s=180)
    assert any(r.state == JobState.SUCCEEDED for r in records)

    status = service.cli("status", "-o", "json", env=env)
    assert status.returncode in (0, 1), status.stderr
    views = {v["job_id"]: v for v in json.loads(status.stdout)}
    assert set(views) == set(ids)
    done = next(r for r in records if r.state == JobState.SUCCEEDED)
    assert views[done.job_id]["state"] == "SUCCEEDED"
    view = views[done.job_id]
    assert view["co2e_kg_estimated"] > 0 and view["savings_co2e_kg"] >= 0

    events = service.cli("events", done.job_id, "-o", "json", env=env)
    moves = [e["to"] for e in json.loads(events.stdout) if e["kind"] == "transition"]
    assert moves[0] == "QUEUED" and moves[-1] == "SUCCEEDED"
    table = service.cli("status", done.job_id, env=env)
    assert table.returncode == 0 and "SUCCEEDED" in table.stdout and "ml" in table.stdout

    report = json.loads(service.cli("report", "--group-by", "policy", "-o", "json",
                                    env=env).stdout)
    launched = [r for r in records if r.handle is not None]
    assert report["totals"]["jobs"] == len(launched)
    assert {g["key"] for g in report["groups"]} == {r.policy_name for r in launched}

    cancel = service.cli("cancel", done.job_id, env=env)
    assert cancel.returncode == 2 and "already SUCCEEDED" in cancel.stderr

    # Another team's token sees nothing of ml's jobs, through the CLI as over HTTP.
    stranger = _client_env(service, url, other)
    hidden = service.cli("status", done.job_id, env=stranger)
    assert hidden.returncode == 2 and f"No job has id '{done.job_id}'" in hidden.stderr
    assert json.loads(service.cli("status", "-o", "json", env=stranger).stdout) == []
    everyone = httpx.get(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {admin}"})
    assert {j["job_id"] for j in everyone.json()["jobs"]} == set(ids)

    ready = httpx.get(f"{url}/readyz").json()
    assert ready == {"status": "ready", "redis": True, "workers_seen": 1}
    for proc in service.procs:
        for token in (ml, other, admin):
            assert token not in proc.output()


def test_the_cli_as_a_client_says_what_is_wrong(service: Service, tmp_path: Path) -> None:
    url = service.start_api()
    token = service.token("ml")
    bad_file = tmp_path / "jobs.yaml"
    bad_file.write_text("jobs:\n  - name: x\n    run: y\n")
    env = _client_env(service, url, token)
    bad = service.cli("submit", str(bad_file), env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: request-body.yaml, line 2")
    assert "Traceback" not in bad.stderr

    wrong_token = service.cli("status", env=_client_env(service, url, "gpt_not-a-token"))
    assert wrong_token.returncode == 2 and "unknown or was revoked" in wrong_token.stderr
    half = dict(env)
    del half["GREENPLACE_TOKEN"]
    missing = service.cli("status", env=half)
    assert missing.returncode == 2 and "GREENPLACE_TOKEN is not set" in missing.stderr
    down = service.cli("status", env=_client_env(service, "http://127.0.0.1:9", token))
    assert down.returncode == 2 and "did not answer" in down.stderr

    listed = service.cli("admin", "token", "list", "-o", "json")
    rows = json.loads(listed.stdout)
    assert [r["team"] for r in rows] == ["ml"] and "token" not in rows[0]
    revoked = service.cli("admin", "token", "revoke", rows[0]["token_id"])
    assert revoked.returncode == 0
    after = service.cli("status", env=env)
    assert after.returncode == 2 and "unknown or was revoked" in after.stderr
