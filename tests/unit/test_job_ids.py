"""Job ids given on the command line are checked before they reach Redis."""

from __future__ import annotations

import os

import pytest

from greenplace.scheduler.cli import main
from greenplace.scheduler.exceptions import JobNotFoundError
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.store import JobStore, NewJob, checked_job_id, new_job_id
from tests.redisproc import RedisServer
from tests.unit.test_dispatch import make_job


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_every_id_the_store_assigns_passes_the_check() -> None:
    for _ in range(100):
        job_id = new_job_id()
        assert checked_job_id(job_id) == job_id


@pytest.mark.parametrize("bad", ["", "a:events", "a b", "x" * 65, "*", "id\n"])
def test_an_id_that_would_address_another_key_is_refused(bad: str) -> None:
    with pytest.raises(JobNotFoundError, match="No job has id"):
        checked_job_id(bad)


def test_status_events_and_cancel_refuse_bad_ids_with_exit_2(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    server.client().flushall()
    for key in [k for k in os.environ if k.startswith("GREENPLACE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)
    job: Job = make_job()
    (job_id,) = JobStore(server.client()).create([NewJob(job_id=new_job_id(), job=job)])
    for command in ("status", "events", "cancel"):
        for bad in (f"{job_id}:events", f"{job_id}:x", "y" * 10_000):
            code, out, err = run(capsys, command, bad)
            assert code == 2 and out == "", (command, bad, out)
            assert "No job has id" in err and "Traceback" not in err
            assert len(err) < 300  # a long id is quoted shortened, not echoed whole
    code, out, _ = run(capsys, "events", job_id)
    assert code == 0 and "QUEUED" in out
