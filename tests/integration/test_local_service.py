"""The `local` provider end to end: a real worker and beat run examples/local-jobs.yaml on
this machine (no cloud, not even the simulated one), or on a declared SSH host (a private
sshd), and `greenplace logs` shows the output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenplace.providers.local import create
from greenplace.scheduler.store import JobRecord, JobState
from tests.integration.conftest import REPO, Service, wait_for
from tests.sshdproc import SshServer, started

pytestmark = pytest.mark.integration
S = JobState
JOBS = REPO / "examples" / "local-jobs.yaml"
SSH_REGION = "lab-gpu-01"  # examples/ssh-overlay.yaml


@pytest.fixture
def local_service(service: Service) -> Iterator[Service]:
    service.env.update({
        "GREENPLACE_CATALOG_OVERLAY": str(REPO / "examples" / "local-overlay.yaml"),
        "GREENPLACE_PROVIDERS": "local=local",
        "GREENPLACE_LOCAL_SLOTS": "2",
    })
    root = Path(service.env["XDG_STATE_HOME"]) / "greenplace" / "local"
    try:
        yield service
    finally:
        leftover = create({"root": str(root), "grace_s": "0.5"})
        for managed in leftover.list_managed("this-machine"):
            leftover.delete(managed.handle)


def test_jobs_run_here_to_their_exit_code_and_logs_show_their_output(
        local_service: Service) -> None:
    service = local_service
    service.start_worker()
    service.start_beat()
    ids = service.submit(JOBS)
    compute, fail = ids
    follow = subprocess.Popen([sys.executable, "-m", "greenplace", "logs", compute, "--follow"],
                              cwd=REPO, env=service.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        records = service.wait_states(ids, {S.SUCCEEDED, S.FAILED}, timeout_s=120)
        followed, follow_err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    by_id = {r.job_id: r for r in records}
    assert (by_id[compute].state, by_id[compute].exit_code) == (S.SUCCEEDED, 0)
    assert (by_id[fail].state, by_id[fail].exit_code) == (S.FAILED, 3)
    assert all(r.handle is not None and r.handle.provider == "local" for r in records)
    assert follow.returncode == 0, follow_err
    assert followed.startswith("computed ") and followed.endswith(" iterations\n")

    rows = {r["job_id"]: r for r in service.cli_json("status")}
    assert (rows[compute]["state"], rows[compute]["exit_code"]) == ("SUCCEEDED", 0)
    assert (rows[fail]["state"], rows[fail]["exit_code"]) == ("FAILED", 3)
    assert rows[compute]["cloud"] == "local" and rows[compute]["instance_id"] == f"{compute}-a1"
    # No API here: reconcile kept the agent's summary from the job folder, and the views
    # show the measured figures beside the estimates (issue 12's "done when").
    for job_id in ids:
        row = rows[job_id]
        assert row["energy_kwh_estimated"] > 0 and row["co2e_kg_estimated"] is not None
        assert row["energy_kwh_measured"] > 0 and row["co2e_kg_measured"] > 0, row
        assert row["measurement_method"] and row["measurement"]["wall_s"] > 0
    assert rows[compute]["measurement"]["exit_code"] == 0
    report = service.cli_json("report")
    assert sorted(j["job_id"] for j in report["jobs"]) == sorted(ids)
    assert all(j["energy_kwh_measured"] > 0 and j["levers"] is not None
               for j in report["jobs"])
    assert report["totals"]["jobs_measured"] == 2
    page = service.cli("report", "--output", "html")
    assert page.returncode == 0 and page.stdout.startswith("<!doctype html>")
    assert "compute-briefly" in page.stdout and page.stdout.count("<circle") == 2
    table = service.cli("report", "--output", "csv").stdout.splitlines()
    assert len(table) == 3 and "machine_factor" in table[0]

    shown = service.cli("logs", fail)
    assert (shown.returncode, shown.stdout) == (0, "about to fail\n"), shown.stderr
    again = service.cli("logs", compute, "--attempt", "1")
    assert again.stdout == followed
    missing = service.cli("logs", fail, "--attempt", "2")
    assert missing.returncode == 2 and "has no attempt 2" in missing.stderr
    assert "Traceback" not in missing.stderr

    # Retention: once the instances are deleted, folders older than GREENPLACE_LOCAL_KEEP_DAYS
    # go (here 0 days, at once), and `logs` says why the logs are gone.
    wait_for(lambda: all(r.terminated_at for r in service.records(ids)), timeout_s=60,
             what="reconcile to delete both instances")
    root = Path(service.env["XDG_STATE_HOME"]) / "greenplace" / "local"
    assert sorted(create({"root": str(root), "keep_days": "0"}).remove_expired()) == sorted(
        f"{job_id}-a1" for job_id in ids)
    removed = service.cli("logs", fail, env={**service.env, "GREENPLACE_LOCAL_KEEP_DAYS": "0"})
    assert removed.returncode == 2 and "Traceback" not in removed.stderr
    assert f"The logs of job {fail} were removed with its folder" in removed.stderr
    assert "0 day(s) after its instance is deleted" in removed.stderr


def test_under_the_agent_the_measured_energy_reaches_the_job_record(
        local_service: Service) -> None:
    """The job runs under `greenplace agent`, which reports to the API with the job's token:
    the record gets the measured energy, its method and the exit code the agent saw."""
    from greenplace.providers.local import agent_available

    if not agent_available():
        pytest.skip("this greenplace has no `agent` command yet")
    service = local_service
    service.env["GREENPLACE_AGENT_API_URL"] = service.start_api()
    service.start_worker()
    service.start_beat()
    compute, fail = service.submit(JOBS)

    def measured() -> list[JobRecord] | None:
        records = service.records([compute, fail])
        return records if all(r.agent_exit_code is not None for r in records) else None

    service.wait_states([compute, fail], {S.SUCCEEDED, S.FAILED}, timeout_s=120)
    ok, failed = wait_for(measured, timeout_s=60, what="both agents' final reports")
    assert (ok.state, ok.exit_code, ok.agent_exit_code) == (S.SUCCEEDED, 0, 0)
    assert (failed.state, failed.exit_code, failed.agent_exit_code) == (S.FAILED, 3, 3)
    assert ok.measured_energy_kwh is not None and ok.measured_energy_kwh > 0
    assert ok.measurement is not None and ok.measurement["method"]


@pytest.fixture
def ssh_service(local_service: Service, tmp_path: Path) -> Iterator[tuple[Service, SshServer]]:
    """The service with examples/ssh-overlay.yaml: its region lab-gpu-01 is a private sshd
    (tests/sshdproc.py) whose logins have `greenplace` on PATH, so jobs run under the agent."""
    sshd = started(tmp_path / "sshd")
    (sshd.bin / "greenplace").symlink_to(Path(sys.executable).parent / "greenplace")
    remote_root = tmp_path / "remote"
    settings = {**sshd.settings(SSH_REGION), "remote_root": str(remote_root)}
    local_service.env.update({
        "GREENPLACE_CATALOG_OVERLAY": str(REPO / "examples" / "ssh-overlay.yaml"),
        "GREENPLACE_LOCAL_SETTINGS": json.dumps(settings),
    })
    try:
        yield local_service, sshd
    finally:
        leftover = create({**settings, "grace_s": "0.5"})
        for managed in leftover.list_managed(SSH_REGION):
            leftover.delete(managed.handle)
        local_service.stop_all()
        sshd.stop()


def test_jobs_run_on_a_declared_ssh_host_and_logs_follow_them_over_ssh(
        ssh_service: tuple[Service, SshServer], tmp_path: Path) -> None:
    """A worker launches examples/local-jobs.yaml on the SSH host of examples/ssh-overlay.yaml,
    reconcile follows them there to their exit codes and reads the agent's summary back,
    and `greenplace logs --follow` tails the output over ssh."""
    service, sshd = ssh_service
    service.start_worker()
    service.start_beat()
    compute, fail = service.submit(JOBS)
    follow = subprocess.Popen([sys.executable, "-m", "greenplace", "logs", compute, "--follow"],
                              cwd=REPO, env=service.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        records = service.wait_states([compute, fail], {S.SUCCEEDED, S.FAILED}, timeout_s=120)
        followed, follow_err = follow.communicate(timeout=30)
    finally:
        follow.kill()
    by_id = {r.job_id: r for r in records}
    assert (by_id[compute].state, by_id[compute].exit_code) == (S.SUCCEEDED, 0)
    assert (by_id[fail].state, by_id[fail].exit_code) == (S.FAILED, 3)
    for record in records:
        assert record.handle is not None and record.handle.extra["ssh"] == sshd.target
        assert record.handle.region == SSH_REGION
    assert follow.returncode == 0, follow_err
    assert followed.startswith("computed ") and followed.endswith(" iterations\n")
    remote = tmp_path / "remote" / f"{compute}-a1"
    assert (remote / "stdout.log").read_text() == followed  # the folder is on the host
    assert not (tmp_path / "state" / "greenplace" / "local").exists()  # nothing ran here
    rows = {r["job_id"]: r for r in service.cli_json("status")}
    for job_id in (compute, fail):
        assert rows[job_id]["energy_kwh_measured"] > 0 and rows[job_id]["measurement_method"]
    shown = service.cli("logs", fail)
    assert (shown.returncode, shown.stdout) == (0, "about to fail\n"), shown.stderr
