"""`greenplace logs`: which folder it reads, what it refuses, and how it follows a file
(the command end to end: tests/integration/test_local_service.py)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from greenplace.providers.local_hosts import ThisMachine
from greenplace.scheduler.commands.logs import JobWhere, _launched, _Tails, attempt_source
from greenplace.scheduler.exceptions import UserInputError


def where(tmp_path: Path, **fields: object) -> JobWhere:
    base: dict[str, object] = {
        "job_id": "j1", "state": "RUNNING", "attempt": 2, "provider": "local",
        "folder": tmp_path / "j1-a2", "host": "gpu-box", "reason": None}
    return JobWhere(**{**base, **fields})  # type: ignore[arg-type]


def test_the_latest_or_the_asked_attempts_folder(tmp_path: Path) -> None:
    for attempt in (1, 2):
        (tmp_path / f"j1-a{attempt}").mkdir()
        (tmp_path / f"j1-a{attempt}" / "state.json").write_text("{}")
    job = where(tmp_path)
    assert attempt_source(job, None) == (ThisMachine(tmp_path), "j1-a2")
    assert attempt_source(job, 1) == (ThisMachine(tmp_path), "j1-a1")
    with pytest.raises(UserInputError, match="made 2 launch attempt.*no attempt 3"):
        attempt_source(job, 3)


def test_jobs_of_other_providers_or_machines_are_refused_with_where_they_ran(
        tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="ran on the aws provider.*To fix:"):
        attempt_source(where(tmp_path, provider="aws", folder=None), None)
    with pytest.raises(UserInputError, match="ran on gpu-box.*To fix: run `greenplace logs`"):
        attempt_source(where(tmp_path), None)


def test_a_job_not_launched_yet_needs_follow_and_one_that_never_will_says_why(
        tmp_path: Path) -> None:
    queued = where(tmp_path, state="PLACED", provider=None, folder=None)
    with pytest.raises(UserInputError, match="has not launched yet.*--follow"):
        _launched(lambda: queued, follow=False)
    never = where(tmp_path, state="UNSCHEDULABLE", provider=None, folder=None,
                  reason="no candidate is feasible")
    with pytest.raises(UserInputError, match="ended UNSCHEDULABLE without launching: no cand"):
        _launched(lambda: never, follow=True)


def test_a_tail_prints_only_what_the_files_gained(tmp_path: Path) -> None:
    folder = tmp_path / "j1-a1"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    path, out, err = folder / "stdout.log", io.BytesIO(), io.BytesIO()
    tail = _Tails(ThisMachine(tmp_path), "j1-a1", {"stdout.log": out, "stderr.log": err})
    tail.pump()  # no file yet: nothing
    path.write_bytes(b"one\n")
    (folder / "stderr.log").write_bytes(b"warn\n")
    tail.pump()
    with path.open("ab") as file:
        file.write(b"two\xff\n")  # bytes as written, not decoded
    tail.pump()
    tail.pump()
    assert (out.getvalue(), err.getvalue()) == (b"one\ntwo\xff\n", b"warn\n")


def test_a_tail_copies_a_file_larger_than_one_answer_whole(tmp_path: Path) -> None:
    from greenplace.providers.local_ops import LOG_CHUNK_BYTES

    folder = tmp_path / "j1-a1"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    data = bytes(range(256)) * (LOG_CHUNK_BYTES // 256 * 2 + 3)
    (folder / "stdout.log").write_bytes(data)
    out = io.BytesIO()
    _Tails(ThisMachine(tmp_path), "j1-a1", {"stdout.log": out}).pump()
    assert out.getvalue() == data


def test_a_folder_retention_removed_says_so_and_when(tmp_path: Path) -> None:
    import datetime as dt
    import socket

    deleted_at = dt.datetime(2026, 11, 20, 8, 30, tzinfo=dt.UTC)
    now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)  # 11.6 days later
    asked: list[int] = []

    def keep(days: float) -> Callable[[], float]:
        return lambda: asked.append(1) or days

    done = where(tmp_path, state="SUCCEEDED", host=socket.gethostname(), deleted_at=deleted_at)
    with pytest.raises(UserInputError) as info:
        attempt_source(done, None, keep_days=keep(7.0), now=now)
    message = str(info.value)
    assert f"The logs of job j1 were removed with its folder ({tmp_path / 'j1-a2'})" in message
    assert "7 day(s) after its instance is deleted (GREENPLACE_LOCAL_KEEP_DAYS)" in message
    assert "deleted on 2026-11-20 08:30 UTC" in message and "To fix:" in message
    with pytest.raises(UserInputError) as info:  # an older attempt: gone the same way
        attempt_source(done, 1, keep_days=keep(7.0), now=now)
    assert f"were removed with its folder ({tmp_path / 'j1-a1'})" in str(info.value)

    # kept longer than that on this machine: the folder is missing for another reason
    with pytest.raises(UserInputError, match="is not on this machine") as info:
        attempt_source(done, None, keep_days=keep(30.0), now=now)
    # a job still running, never deleted, or run on another host: the usual message,
    # without reading the retention setting
    asked.clear()
    for job in (where(tmp_path, deleted_at=deleted_at),
                where(tmp_path, state="SUCCEEDED", host=socket.gethostname()),
                where(tmp_path, state="SUCCEEDED", host="other-box", deleted_at=deleted_at)):
        with pytest.raises(UserInputError, match="is not on this machine"):
            attempt_source(job, None, keep_days=keep(7.0), now=now)
    assert asked == []
