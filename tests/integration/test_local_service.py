"""The `local` provider end to end: a real worker and beat run examples/local-jobs.yaml on
this machine (no cloud, not even the simulated one), and `greenplace logs` shows the output."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenplace.providers.local import create
from greenplace.scheduler.store import JobState
from tests.integration.conftest import REPO, Service

pytestmark = pytest.mark.integration
S = JobState
JOBS = REPO / "examples" / "local-jobs.yaml"


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

    shown = service.cli("logs", fail)
    assert (shown.returncode, shown.stdout) == (0, "about to fail\n"), shown.stderr
    again = service.cli("logs", compute, "--attempt", "1")
    assert again.stdout == followed
    missing = service.cli("logs", fail, "--attempt", "2")
    assert missing.returncode == 2 and "has no attempt 2" in missing.stderr
    assert "Traceback" not in missing.stderr
