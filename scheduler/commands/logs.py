"""``greenplace logs``: the output of a job the ``local`` provider ran, on this machine
or on a declared SSH host.

The job record (Redis, or the API when ``GREENPLACE_API_URL`` is set) says where the job
ran; its instance folder (``providers/local.py``) holds ``stdout.log`` and ``stderr.log``,
printed to this command's stdout and stderr. ``--follow`` keeps printing what is added
until the job reaches a final state.

Design choice: the logs are read from the folder, not shipped through Redis or the API:
they can be large, and the folder is where the job wrote them. A folder on an SSH host is
read there over ssh (the ``logs`` operation of ``providers/local_ops.py``, through the
shared connection while following), with the ssh settings of this machine's local
provider; a folder of this machine is read directly, so the command runs on the machine
that ran the job, and says which machine that is when run anywhere else. The provider
removes a folder ``GREENPLACE_LOCAL_KEEP_DAYS`` after the job's instance was deleted, on
whichever host holds it; asked for such a job's logs, the command says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from greenplace.scheduler.exceptions import UserInputError

if TYPE_CHECKING:
    from greenplace.providers.local_hosts import Host

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
    region: str | None = None
    ssh: str | None = None  # the SSH target of a job launched on a declared host
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
                        region=handle.region if handle else None,
                        ssh=handle.extra.get("ssh") if handle else None,
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
                        reason=view.get("reason"), region=view.get("region"),
                        deleted_at=_moment(view.get("instance_deleted_at")))

    return read


def _moment(text: object) -> dt.datetime | None:
    """An ISO 8601 time of the record, UTC when it names no zone (None when empty or
    not one)."""
    try:
        moment = dt.datetime.fromisoformat(str(text)) if text else None
    except ValueError:
        return None
    return moment.replace(tzinfo=dt.UTC) if moment and moment.tzinfo is None else moment


def _keep_days() -> float:
    """This machine's ``GREENPLACE_LOCAL_KEEP_DAYS``: the retention its workers send with
    each launch, to this machine and to the SSH hosts they declare alike."""
    from greenplace.providers.local import create

    return create({}).keep_days


def _folder_of(instance_id: str, recorded: str | None) -> Path:
    """The folder the record names, else the one this machine's local settings give."""
    if recorded:
        return Path(recorded)
    from greenplace.providers.local import create

    return create({}).folder(instance_id)


def attempt_source(job: JobWhere, attempt: int | None, *,
                   keep_days: Callable[[], float] = _keep_days,
                   now: dt.datetime | None = None) -> tuple[Host, str]:
    """The host and instance id of ``attempt`` (default: the latest) of a job the local
    provider ran.

    ``keep_days``: the retention of deleted instances' folders, asked only for a job whose
    folder is gone; ``now``: the time to judge it at (default: the clock).

    Raises:
        UserInputError: the job ran elsewhere, has no such attempt, its folder is not
            on its host (on this machine, for a job that ran here), or retention removed it.
    """
    if job.provider != "local":
        raise UserInputError(
            f"Job {job.job_id} ran on the {job.provider} provider; `greenplace logs` shows only "
            "jobs of the local provider, whose output stays on the machine that ran them. "
            "To fix: read that cloud's own logs of the instance `greenplace status` names.")
    if attempt is not None and attempt > job.attempt:
        raise UserInputError(f"Job {job.job_id} made {job.attempt} launch attempt(s), so it "
                             f"has no attempt {attempt}. To fix: give --attempt 1 to "
                             f"{job.attempt}.")
    instance_id = f"{job.job_id}-a{attempt or job.attempt}"
    host = _host_of(job)
    if not host.call("logs", {"instance_id": instance_id, "offsets": {}},
                     purpose="logs")["exists"]:
        _refuse_if_removed(job, host, instance_id, keep_days=keep_days, now=now)
        if host.ssh:
            raise UserInputError(
                f"The folder of job {job.job_id} ({instance_id}) is not on {host.ssh}: it "
                "was removed, or the host's remote root changed. To fix: set "
                "GREENPLACE_LOCAL_REMOTE_ROOT as the job's worker had it.")
        where = f"on {job.host}" if job.host else "elsewhere"
        assert job.folder is not None
        raise UserInputError(
            f"The folder of job {job.job_id} ({job.folder.parent / instance_id}) is not on "
            f"this machine: the attempt ran {where}, on another provider, or its folder was "
            "removed. To fix: run `greenplace logs` on the machine that ran the job (with "
            "the same GREENPLACE_LOCAL_ROOT as its worker).")
    return host, instance_id


def _host_of(job: JobWhere) -> Host:
    """Where the job's folders are: its recorded SSH target, else the SSH host this
    machine's settings declare for its region (a job read through the API), else here."""
    from greenplace.providers.local import create
    from greenplace.providers.local_hosts import ThisMachine

    if job.ssh or (job.host is None and job.region):
        provider = create({})
        if job.ssh or job.region in provider.hosts:
            return provider.host_for(job.region or "", ssh=job.ssh)
    assert job.folder is not None
    return ThisMachine(job.folder.parent)


def _refuse_if_removed(job: JobWhere, host: Host, instance_id: str, *,
                       keep_days: Callable[[], float], now: dt.datetime | None) -> None:
    """Say so when the folder is gone because retention removed it on ``host``: the job is
    final and its instance was deleted longer ago than the retention. A job of this
    machine must have run here, as far as the record says; an SSH host is the one the
    job's record (or its region) names, which removes its own expired folders."""
    if job.state not in _FINAL or job.deleted_at is None:
        return
    if host.ssh is None and job.host is not None and job.host != socket.gethostname():
        return
    days = keep_days()
    age_s = ((now or dt.datetime.now(dt.UTC)) - job.deleted_at).total_seconds()
    if age_s < days * 86_400:
        return
    if host.ssh:
        where = f"{instance_id} on {host.ssh}"
    else:
        assert job.folder is not None
        where = str(job.folder.parent / instance_id)
    raise UserInputError(
        f"The logs of job {job.job_id} were removed with its folder ({where}): the local "
        f"provider keeps a finished job's folder {days:g} day(s) after its instance is "
        f"deleted (GREENPLACE_LOCAL_KEEP_DAYS), and this job's was deleted on "
        f"{job.deleted_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC. To fix: nothing brings "
        "these logs back; raise GREENPLACE_LOCAL_KEEP_DAYS on the worker's machine to keep "
        "later jobs' logs longer.")


class _Tails:
    """Copies what the attempt's output files gained since the last call to binary
    streams (``stdout.log`` and ``stderr.log``), one host call per round."""

    def __init__(self, host: Host, instance_id: str, outs: Mapping[str, BinaryIO]) -> None:
        self.host, self.instance_id, self.outs = host, instance_id, dict(outs)
        self.offsets = dict.fromkeys(self.outs, 0)

    def pump(self) -> None:
        """Copy everything gained so far (in chunks of ``LOG_CHUNK_BYTES``)."""
        from greenplace.providers.local_ops import LOG_CHUNK_BYTES

        more = True
        while more:
            answer = self.host.call("logs", {"instance_id": self.instance_id,
                                             "offsets": self.offsets}, purpose="logs")
            more = False
            for name, text in answer["chunks"].items():
                chunk = base64.b64decode(text)
                if chunk:
                    self.offsets[name] += len(chunk)
                    self.outs[name].write(chunk)
                    self.outs[name].flush()
                    more = more or len(chunk) >= LOG_CHUNK_BYTES


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
    host, instance_id = attempt_source(job, attempt)
    tails = _Tails(host, instance_id, {"stdout.log": sys.stdout.buffer,
                                       "stderr.log": sys.stderr.buffer})
    tails.pump()
    if not follow or (attempt is not None and attempt != job.attempt):
        return
    try:
        while job.state not in _FINAL:
            time.sleep(FOLLOW_INTERVAL_S)
            tails.pump()
            latest = read()
            if latest.attempt != job.attempt:
                click.echo(f"greenplace: job {job_id} moved on to launch attempt "
                           f"{latest.attempt}; follow it with `greenplace logs {job_id} "
                           "--follow`.", err=True)
                break
            job = latest
    except KeyboardInterrupt:
        pass
    tails.pump()
