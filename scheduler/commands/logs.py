"""``greenplace logs``: the output of a job the ``local`` provider ran on this machine.

The job record (Redis, or the API when ``GREENPLACE_API_URL`` is set) says where the job
ran; its instance folder (``providers/local.py``) holds ``stdout.log`` and ``stderr.log``,
printed to this command's stdout and stderr. ``--follow`` keeps printing what is added
until the job reaches a final state.

Design choice: the logs are read from the folder, not shipped through Redis or the API:
they can be large, and the folder is where the job wrote them. So the command runs on the
machine that ran the job, and says which machine that is when run anywhere else. The
provider removes a folder ``GREENPLACE_LOCAL_KEEP_DAYS`` after the job's instance was
deleted; asked for such a job's logs, the command says so.
"""

from __future__ import annotations

import datetime as dt
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import click

from greenplace.scheduler.exceptions import UserInputError

FOLLOW_INTERVAL_S = 0.5
_FINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "UNSCHEDULABLE"})


@dataclass(frozen=True, slots=True, kw_only=True)
class JobWhere:
    """What ``logs`` needs of a job record: its state and where its attempt ran."""

    job_id: str
    state: str
    attempt: int
    provider: str | None
    folder: Path | None  # the latest attempt's instance folder, when launched locally
    host: str | None
    reason: str | None
    deleted_at: dt.datetime | None = None  # when the latest attempt's instance was deleted


def _from_store(job_id: str) -> Callable[[], JobWhere]:
    from greenplace.scheduler.settings import load_settings
    from greenplace.scheduler.store import open_store, reachable

    settings = load_settings()
    store = open_store(settings)

    def read() -> JobWhere:
        with reachable(settings.redacted_redis_url):
            record = store.get(job_id)
        handle = record.handle
        return JobWhere(job_id=job_id, state=str(record.state), attempt=record.attempt,
                        provider=handle.provider if handle else None,
                        folder=_folder_of(handle.instance_id, handle.extra.get("dir"))
                        if handle else None,
                        host=handle.extra.get("host") if handle else None,
                        reason=record.reason or None,
                        deleted_at=_moment(record.terminated_at))

    return read


def _from_api(job_id: str) -> Callable[[], JobWhere] | None:
    from greenplace.scheduler.client import remote

    client = remote()
    if client is None:
        return None

    def read() -> JobWhere:
        view = client.job(job_id)
        instance = view.get("instance_id")
        return JobWhere(job_id=job_id, state=str(view["state"]),
                        attempt=int(view.get("attempts") or 0), provider=view.get("provider"),
                        folder=_folder_of(instance, None) if instance else None, host=None,
                        reason=view.get("reason"),
                        deleted_at=_moment(view.get("instance_deleted_at")))

    return read


def _moment(text: object) -> dt.datetime | None:
    """An ISO 8601 time of the record (None when empty or not one)."""
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _keep_days() -> float:
    """This machine's ``GREENPLACE_LOCAL_KEEP_DAYS`` (the local provider's retention)."""
    from greenplace.providers.local import create

    return create({}).keep_days


def _folder_of(instance_id: str, recorded: str | None) -> Path:
    """The folder the record names, else the one this machine's local settings give."""
    if recorded:
        return Path(recorded)
    from greenplace.providers.local import create

    return create({}).folder(instance_id)


def attempt_folder(job: JobWhere, attempt: int | None, *,
                   keep_days: Callable[[], float] = _keep_days,
                   now: dt.datetime | None = None) -> Path:
    """The folder of ``attempt`` (default: the latest) of a job the local provider ran.

    ``keep_days``: this machine's retention of deleted instances' folders, asked only for a
    job whose folder is gone; ``now``: the time to judge it at (default: the clock).

    Raises:
        UserInputError: the job ran elsewhere, has no such attempt, its folder is not on
            this machine, or retention removed it.
    """
    if job.provider != "local":
        raise UserInputError(
            f"Job {job.job_id} ran on the {job.provider} provider; `greenplace logs` shows only "
            "jobs of the local provider, whose output stays on the machine that ran them. "
            "To fix: read that cloud's own logs of the instance `greenplace status` names.")
    assert job.folder is not None
    folder = job.folder
    if attempt is not None and attempt != job.attempt:
        if attempt > job.attempt:
            raise UserInputError(f"Job {job.job_id} made {job.attempt} launch attempt(s), so it "
                                 f"has no attempt {attempt}. To fix: give --attempt 1 to "
                                 f"{job.attempt}.")
        folder = folder.parent / f"{job.job_id}-a{attempt}"
    if not (folder / "state.json").exists():
        _refuse_if_removed(job, folder, keep_days=keep_days, now=now)
        where = f"on {job.host}" if job.host else "elsewhere"
        raise UserInputError(
            f"The folder of job {job.job_id} ({folder}) is not on this machine: the attempt "
            f"ran {where}, on another provider, or its folder was removed. To fix: run "
            "`greenplace logs` on the machine that ran the job (with the same "
            "GREENPLACE_LOCAL_ROOT as its worker).")
    return folder


def _refuse_if_removed(job: JobWhere, folder: Path, *, keep_days: Callable[[], float],
                       now: dt.datetime | None) -> None:
    """Say so when the folder is gone because retention removed it: the job is final, its
    instance was deleted (on this machine, as far as the record says) longer ago than this
    machine keeps folders."""
    if job.state not in _FINAL or job.deleted_at is None or (
            job.host is not None and job.host != socket.gethostname()):
        return
    days = keep_days()
    age_s = ((now or dt.datetime.now(dt.UTC)) - job.deleted_at).total_seconds()
    if age_s < days * 86_400:
        return
    raise UserInputError(
        f"The logs of job {job.job_id} were removed with its folder ({folder}): the local "
        f"provider keeps a finished job's folder {days:g} day(s) after its instance is "
        f"deleted (GREENPLACE_LOCAL_KEEP_DAYS), and this job's was deleted on "
        f"{job.deleted_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC. To fix: nothing brings "
        "these logs back; raise GREENPLACE_LOCAL_KEEP_DAYS on the worker's machine to keep "
        "later jobs' logs longer.")


class _Tail:
    """Copies what a file gained since the last call to a binary stream."""

    def __init__(self, path: Path, out: BinaryIO) -> None:
        self.path, self.out, self.offset = path, out, 0

    def pump(self) -> None:
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                chunk = file.read()
        except FileNotFoundError:
            return
        if chunk:
            self.offset += len(chunk)
            self.out.write(chunk)
            self.out.flush()


def _launched(read: Callable[[], JobWhere], *, follow: bool) -> JobWhere:
    """The job once it has launched (waiting for that with ``follow``)."""
    job = read()
    while job.provider is None:
        if job.state in _FINAL:
            raise UserInputError(f"Job {job.job_id} ended {job.state} without launching"
                                 f"{f': {job.reason}' if job.reason else ''}; it has no logs.")
        if not follow:
            raise UserInputError(f"Job {job.job_id} has not launched yet (it is "
                                 f"{job.state}). To fix: add --follow to wait for it.")
        time.sleep(FOLLOW_INTERVAL_S)
        job = read()
    return job


@click.command("logs")
@click.argument("job_id")
@click.option("--follow", "-f", is_flag=True,
              help="keep printing new output until the job reaches a final state")
@click.option("--attempt", type=click.IntRange(min=1), default=None,
              help="show this launch attempt (default: the latest)")
def logs_cmd(job_id: str, follow: bool, attempt: int | None) -> None:
    """Print JOB_ID's stdout and stderr (jobs the local provider ran on this machine)."""
    read = _from_api(job_id) or _from_store(job_id)
    job = _launched(read, follow=follow)
    folder = attempt_folder(job, attempt)
    tails = [_Tail(folder / "stdout.log", sys.stdout.buffer),
             _Tail(folder / "stderr.log", sys.stderr.buffer)]
    for tail in tails:
        tail.pump()
    if not follow or (attempt is not None and attempt != job.attempt):
        return
    try:
        while job.state not in _FINAL:
            time.sleep(FOLLOW_INTERVAL_S)
            for tail in tails:
                tail.pump()
            latest = read()
            if latest.attempt != job.attempt:
                click.echo(f"greenplace: job {job_id} moved on to launch attempt "
                           f"{latest.attempt}; follow it with `greenplace logs {job_id} "
                           "--follow`.", err=True)
                break
            job = latest
    except KeyboardInterrupt:
        pass
    for tail in tails:
        tail.pump()
