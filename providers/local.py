"""local: runs jobs for real on the machine the worker runs on.

Each launch attempt gets a working folder ``{root}/{job_id}-a{attempt}`` (the instance
id) holding everything about it:

``work/``        the command's working directory (what the job writes lands here)
``state.json``   what was launched: ids, idempotency key, tags, command, argv, pid,
                 process group, start time (never the agent token)
``command.sh``   the job's ``run`` text, run with ``bash`` in ``work/``
``pid``          written by the job's wrapper process itself as it starts
``stdout.log`` / ``stderr.log``   the job's output (``greenplace logs JOB``)
``exit_code``    written (atomically) by the wrapper when the command ends
``summary.json`` the agent's measurement summary, when the job ran under the agent; it is
                 written as the command ends, so its exit code ends the job while the
                 agent may still be delivering its report to an API that is down
``deleted``      written by ``delete()`` (the time); logs, summary and ``work/`` stay
                 ``keep_days`` more, then the whole folder is removed
``groups.json``  the process groups ``delete()`` stops (the agent's command has its own)

The command runs under ``greenplace agent`` (which measures its energy) when this
greenplace has that command, else directly; either way inside a small bash wrapper that
records its pid and the exit code. The job's environment is the worker's, less every
``GREENPLACE_*`` variable (the service's settings, a Redis password among them), plus
``GREENPLACE_JOB_ID`` and, when the job's agent reports to an API,
``GREENPLACE_API_URL`` and ``GREENPLACE_AGENT_TOKEN``.

Settings (``GREENPLACE_LOCAL_<KEY>``, ``GREENPLACE_LOCAL_SETTINGS`` or the adapter config,
see ``providers/settings.py``):

``root``     the folder of the instance folders; default
             ``$XDG_STATE_HOME/greenplace/local`` (``~/.local/state/greenplace/local``)
``slots``    how many jobs may run at once (default 1; 0 takes no job); a launch beyond
             that is a CapacityError, so the queue fails over to the next candidate
``grace_s``  how long ``delete()`` waits after SIGTERM before SIGKILL (default 3)
``keep_days``  how long a deleted instance's folder (logs, summary, ``work/``) is kept
             before it is removed (default 7; 0 removes it at the next submit)

Retention: each submit, under the root's lock, sets aside (renames into ``{root}/.removing``)
every folder whose instance was deleted more than ``keep_days`` ago and whose process is
gone, and removes them once the lock is released, so a large ``work/`` never holds up
another worker's submit. A live job's folder, or one not yet deleted, is never touched:
only ``delete()`` (reconcile, cancel, ``greenplace gc``) marks a folder deleted, and only
once no process of the job runs.

Design choice: the job is started detached (its own session and process group, reparented
away from the worker through a launcher that exits at once), and everything ``status()``
needs is in its folder, so a job survives the worker's task, the worker itself, and a
worker restart: any new provider object finds it again by its folder. A submit that holds
the root's lock and finds the folder of its key returns that instance (idempotency), and
counts live folders against ``slots`` under the same lock, so two workers cannot both take
the last slot.

The machine is a "region" of a cloud declared in a catalog overlay
(``examples/local-overlay.yaml``) and routed here with ``GREENPLACE_PROVIDERS``; placements
on the embedded clouds (aws, gcp, azure) are refused, as running them here would contradict
the figures that chose them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from greenplace.providers.base import (
    LAUNCH_WAIT_S,
    Feature,
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    LaunchRequest,
    ManagedInstance,
    Placement,
    job_tags,
    startup_script,
)
from greenplace.providers.errors import provider_error
from greenplace.providers.settings import merged_settings, number_setting
from greenplace.scheduler.exceptions import (
    CapacityError,
    ConfigError,
    InvalidRequestError,
    TransientError,
)

NAME = "local"
EMBEDDED_CLOUDS = ("aws", "gcp", "azure", "local-sim")
_SETTINGS = frozenset({"root", "slots", "grace_s", "keep_days"})
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TOKEN_LINE = re.compile(r"^export GREENPLACE_AGENT_TOKEN='(.*)'$", re.MULTILINE)

STATE, COMMAND, PID, EXIT_CODE = "state.json", "command.sh", "pid", "exit_code"
STDOUT, STDERR, SUMMARY, DELETED = "stdout.log", "stderr.log", "summary.json", "deleted"
WORK = "work"
REMOVING = ".removing"  # folders set aside for removal (retention), emptied after the lock
DEFAULT_KEEP_DAYS = 7.0
START_TIMEOUT_S = 60.0  # a wrapper that wrote no pid file by then never started
GROUPS = "groups.json"

# The job's wrapper ($0 gp-local-job, "$@" the command): records its pid, runs the
# command, records the exit code. Files are written under a temporary name and renamed,
# so a reader never sees half a number.
_WRAPPER = """d=$PWD
echo $$ > "$d/pid.tmp" && mv -f "$d/pid.tmp" "$d/pid"
cd work && "$@"
code=$?
echo "$code" > "$d/exit_code.tmp" && mv -f "$d/exit_code.tmp" "$d/exit_code"
exit "$code"
"""
# The launcher starts the wrapper in the background and exits, so the wrapper is nobody's
# child in the worker (no zombie left to reap) yet keeps the launcher's session and group.
_LAUNCHER = 'w=$1; shift; bash -c "$w" gp-local-job "$@" </dev/null >stdout.log 2>stderr.log &'


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/greenplace/local``, else ``~/.local/state/greenplace/local``."""
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME", "").strip()
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "greenplace" / "local"


def instance_id_of(job_id: str, attempt: int) -> str:
    """The folder name (and instance id) of one launch attempt."""
    return f"{job_id}-a{attempt}"


def agent_available() -> bool:
    """Whether this greenplace has the ``agent`` command (then jobs run under it)."""
    from greenplace.scheduler.cli import LAZY_COMMANDS

    return "agent" in LAZY_COMMANDS


def job_argv(folder: Path, *, agent: bool) -> list[str]:
    """The command the wrapper runs in ``folder``: the job under the agent, or bare."""
    bare = ["bash", str(folder / COMMAND)]
    if not agent:
        return bare
    return [sys.executable, "-m", "greenplace", "agent", "--summary-file",
            str(folder / SUMMARY), "--", *bare]


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state letter, parent pid, process group, start time in clock ticks) from /proc;
    None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


def _has_procfs() -> bool:
    return Path("/proc/self/stat").exists()


def _running() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process that is not a zombie."""
    out: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None and stat[0] not in ("Z", "X"):
                out[int(entry.name)] = (stat[1], stat[2])
    return out


def _alive(pid: int, start_ticks: int | None) -> bool:
    """Whether ``pid`` runs and is still the process started (not a zombie, not reused)."""
    if not _has_procfs():  # signal 0 is all we have
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start_ticks is None or stat[3] == start_ticks


def _job_groups(groups: set[int]) -> set[int]:
    """``groups`` and the process groups of every descendant of their processes.

    The agent starts the job's command in a session (and group) of its own, so stopping
    the wrapper's group alone would leave the command running.
    """
    if not _has_procfs():
        return set(groups)
    running = _running()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in running.items():
        children.setdefault(parent, []).append(child)
    found, todo = set(groups), [pid for pid, (_, group) in running.items() if group in groups]
    while todo:
        current = todo.pop()
        found.add(running[current][1])
        todo.extend(children.get(current, ()))
    return found


def _owned(groups: set[int], job_id: str) -> set[int]:
    """The groups of ``groups`` with a running process of job ``job_id`` (by the
    ``GREENPLACE_JOB_ID`` in its environment): a recorded group number whose processes
    all ended may since name an unrelated group, which must never be signalled."""
    if not _has_procfs():
        return set(groups)
    marker = f"GREENPLACE_JOB_ID={job_id}".encode()
    owned = set()
    for pid, (_, group) in _running().items():
        if group in groups and group not in owned:
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    owned.add(group)
    return owned


def _live_groups(groups: set[int]) -> set[int]:
    """The groups of ``groups`` that still hold a running process (zombies do not count)."""
    if not _has_procfs():
        live = set()
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                try:
                    os.killpg(group, 0)
                except PermissionError:
                    pass
                live.add(group)
        return live
    return groups & {group for _, group in _running().values()}


def _signal_groups(groups: set[int], sig: int) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def _stop(groups: set[int], *, grace_s: float) -> set[int]:
    """SIGTERM the job's processes, SIGKILL what is left after ``grace_s``.

    Returns every group met (those given and their descendants'); none of them holds a
    running process any more when ``_live_groups`` of it is empty.

    Design choice: the groups are frozen (SIGSTOP) while their descendants are listed and
    signalled, then resumed (SIGCONT): an agent caught starting the command cannot start
    it in a new group between the listing and the signal and leave it running.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 1.0)):
        live = _live_groups(groups)
        _signal_groups(live, signal.SIGSTOP)
        groups = _job_groups(groups)
        live = _live_groups(groups)
        _signal_groups(live, sig)
        _signal_groups(live, signal.SIGCONT)
        deadline = time.monotonic() + wait_s
        while live and time.monotonic() < deadline:
            time.sleep(0.02)
            groups = _job_groups(groups)
            live = _live_groups(groups)
            _signal_groups(live, sig)  # a group met late gets the same signal
        if not live:
            break
    return groups


def agent_token_in(script: str) -> str | None:
    """The agent token a boot script (``base.startup_script``) exports, unquoted; None
    when it exports none. The boot script is the one place a request carries it."""
    found = _TOKEN_LINE.search(script)
    return found.group(1).replace("'\"'\"'", "'") if found else None


def job_environment(payload: Mapping[str, Any], token: str | None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment: the worker's less ``GREENPLACE_*``, plus the job's own."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if not k.startswith("GREENPLACE_")}
    env["GREENPLACE_JOB_ID"] = str(payload["JobId"])
    api_url = payload.get("AgentApiUrl")
    if api_url and token:
        env["GREENPLACE_API_URL"] = str(api_url)
        env["GREENPLACE_AGENT_TOKEN"] = token
    return env


def _summary_exit_code(folder: Path) -> int | None:
    """The exit code in the agent's summary, written as soon as the command ended."""
    code = (_read_json(folder / SUMMARY) or {}).get("exit_code")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _starting(state: Mapping[str, Any]) -> InstanceStatus:
    """A launch whose wrapper has not recorded its pid: starting, or never started."""
    try:
        created = dt.datetime.fromisoformat(str(state.get("created_at")))
    except ValueError:
        created = dt.datetime.now(dt.UTC)
    if (dt.datetime.now(dt.UTC) - created).total_seconds() < START_TIMEOUT_S:
        return InstanceStatus(state=InstanceState.PENDING, detail="starting")
    return InstanceStatus(
        state=InstanceState.LAUNCH_FAILED,
        detail=f"the job's process did not start within {START_TIMEOUT_S:g} s",
        error=TransientError(
            f"the job's process in {state.get('instance_id')} did not start within "
            f"{START_TIMEOUT_S:g} s. To fix: check the machine's load and process limits; "
            "greenplace tries again as a new attempt.", provider=NAME, operation="status",
            code="NeverStarted"))


def measured_text(summary: Mapping[str, Any] | None) -> str:
    """``measured X kWh (method)`` from an agent summary, or '' when it has no energy."""
    if not summary:
        return ""
    energy_j = summary.get("energy_j")
    if not isinstance(energy_j, (int, float)) or isinstance(energy_j, bool):
        return ""
    return f"; measured {energy_j / 3.6e6:.6g} kWh ({summary.get('method') or 'unlabelled'})"


class LocalProvider:
    """Runs each launch as a detached process group in its own folder. Build with ``create``."""

    name = NAME
    # No spot market here, and no boot script run (the command runs directly).
    features = frozenset({Feature.CANCEL, Feature.TAGS, Feature.IDEMPOTENT_SUBMIT})

    def __init__(self, *, root: Path, slots: int, grace_s: float,
                 keep_days: float = DEFAULT_KEEP_DAYS) -> None:
        self.root = root
        self.slots = slots
        self.grace_s = grace_s
        self.keep_days = keep_days
        self.host = socket.gethostname()

    # --- plumbing -----------------------------------------------------------------
    def folder(self, instance_id: str) -> Path:
        """The folder of ``instance_id`` (refusing anything that is not a plain name)."""
        if not _SAFE_ID.fullmatch(instance_id):
            raise InvalidRequestError(
                f"{instance_id!r} is not a local instance id. To fix: use an id that "
                "`greenplace status` shows for a job of the local provider.",
                provider=NAME, operation="status", code="InvalidInstanceId")
        return self.root / instance_id

    @contextlib.contextmanager
    def _locked(self, operation: str) -> Iterator[None]:
        """The root's lock: submits (idempotency and slot count) never interleave."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = (self.root / ".lock").open("a")
        except OSError as exc:
            raise provider_error(
                InvalidRequestError, f"the local root {self.root} is not writable ({exc})",
                provider=NAME, operation=operation, code="RootUnwritable",
                fix="point GREENPLACE_LOCAL_ROOT at a folder the worker may write") from exc
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _handle(self, state: Mapping[str, Any]) -> InstanceHandle:
        instance_id = str(state["instance_id"])
        return InstanceHandle(provider=NAME, cloud=str(state["cloud"]),
                              region=str(state["region"]), instance_id=instance_id,
                              extra={"dir": str(self.root / instance_id),
                                     "host": str(state.get("host") or self.host)})

    def _live(self) -> int:
        """How many instances of the root hold a slot (started or starting, not ended)."""
        count = 0
        for folder in self.root.iterdir():
            state = _read_json(folder / STATE) if folder.is_dir() else None
            if state is not None and self._status(folder, state).state in (
                    InstanceState.PENDING, InstanceState.RUNNING):
                count += 1
        return count

    # --- retention --------------------------------------------------------------------
    def _expired(self, folder: Path, *, now: dt.datetime) -> bool:
        """Whether ``folder``'s instance was deleted more than ``keep_days`` before ``now``
        and no process of it runs (the wrapper's pid, checked as ``status`` does)."""
        marker = folder / DELETED
        try:
            text = marker.read_text().strip()
            deleted_at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except OSError:
            return False  # not deleted: a live, starting or undeleted instance
        except ValueError:  # a marker written by hand: its file time
            try:
                deleted_at = dt.datetime.fromtimestamp(marker.stat().st_mtime, dt.UTC)
            except OSError:
                return False
        if deleted_at.tzinfo is None:
            deleted_at = deleted_at.replace(tzinfo=dt.UTC)
        if (now - deleted_at).total_seconds() < self.keep_days * 86_400:
            return False
        pid = _read_int(folder / PID)
        state = _read_json(folder / STATE) or {}
        ticks = state.get("start_ticks") if state.get("pid") == pid else None
        return pid is None or not _alive(pid, ticks if isinstance(ticks, int) else None)

    def _set_aside_expired(self, *, now: dt.datetime, keep: str | None = None) -> list[str]:
        """Under the root's lock: move each expired instance folder into ``.removing``
        (a rename, instant whatever it holds), but ``keep`` (the instance a submit is
        about: its key's folder answers a repeated submit); returns their instance ids."""
        moved = []
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or not _SAFE_ID.fullmatch(folder.name) \
                    or folder.name == keep or not self._expired(folder, now=now):
                continue
            trash = self.root / REMOVING
            trash.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):  # a same-named leftover there: a later submit
                os.replace(folder, trash / folder.name)
                moved.append(folder.name)
        return moved

    def _empty_trash(self) -> None:
        """Remove what was set aside (also what a worker that died mid-removal left)."""
        trash = self.root / REMOVING
        if trash.is_dir():
            for folder in trash.iterdir():
                shutil.rmtree(folder, ignore_errors=True)

    def remove_expired(self, *, now: dt.datetime | None = None) -> list[str]:
        """Remove the folders of instances deleted more than ``keep_days`` ago (logs,
        summary and ``work/`` with them); returns their instance ids. ``submit`` calls it."""
        moment = now or dt.datetime.now(dt.UTC)
        try:
            with self._locked("remove_expired"):
                return self._set_aside_expired(now=moment)
        finally:
            self._empty_trash()

    # --- the Provider protocol ------------------------------------------------------
    def check_credentials(self) -> str:
        """This machine needs no credentials; checks that the root is usable and bash runs."""
        with self._locked("check_credentials"):
            pass
        if shutil.which("bash") is None:
            raise ConfigError("the local provider runs jobs with bash, which is not on PATH. "
                              "To fix: install bash on the worker's machine.")
        agent = "under `greenplace agent`" if agent_available() else "without the agent"
        return (f"local (no credentials needed): jobs run as {getpass.getuser()} on "
                f"{self.host} in {self.root}, {self.slots} slot(s), {agent}")

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        """The launch request: the folder, the command and its environment. Pure.

        Raises:
            InvalidRequestError: a placement on an embedded cloud (``BorrowedRegion``), a
                spot placement (``SpotUnsupported``) or a job id unusable as a folder name.
        """
        where = f"{placement.cloud}:{placement.region}"
        if placement.cloud in EMBEDDED_CLOUDS:
            raise provider_error(
                InvalidRequestError, f"placement {where} was given to the local provider, "
                "but its carbon and price figures describe a cloud datacenter, not this "
                "machine", provider=NAME, operation="prepare", code="BorrowedRegion",
                fix="declare this machine as a cloud of its own in a catalog overlay (see "
                    "examples/local-overlay.yaml) and route only that cloud to `local` "
                    "in GREENPLACE_PROVIDERS")
        if placement.spot:
            raise provider_error(
                InvalidRequestError, "spot capacity was asked for, but the local provider "
                "has no spot market", provider=NAME, operation="prepare",
                code="SpotUnsupported", fix="use a policy that allows on-demand placements")
        instance_id = instance_id_of(job.job_id, job.attempt)
        if not _SAFE_ID.fullmatch(instance_id):
            raise provider_error(
                InvalidRequestError, f"job id {job.job_id!r} cannot name a folder",
                provider=NAME, operation="prepare", code="InvalidJobId",
                fix="use job ids of letters, digits, '.', '_' and '-'")
        folder = self.root / instance_id
        agent = agent_available()
        payload: dict[str, Any] = {
            "InstanceId": instance_id, "Folder": str(folder), "JobId": job.job_id,
            "JobName": job.name, "Run": job.run, "Agent": agent,
            "Argv": job_argv(folder, agent=agent),
            "Accelerators": f"{placement.accelerator_count}x {placement.accelerator}",
        }
        if job.agent is not None:
            payload["AgentApiUrl"] = job.agent.api_url
        return LaunchRequest(
            provider=NAME, cloud=placement.cloud, region=placement.region,
            instance_type=placement.instance_type, spot=False, tags=job_tags(job),
            startup_script=startup_script(job), payload=payload)

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Start the job, or return the instance an earlier submit with this key started.

        Raises:
            CapacityError: every slot is taken (``SlotsFull``).
            InvalidRequestError: the key was used for another instance folder, or the
                folder holds another key's launch (``IdempotentParameterMismatch``).
            TransientError: the process could not be started now.
        """
        folder = self.root / str(request.payload["InstanceId"])
        try:
            with self._locked("submit"):
                self._set_aside_expired(now=dt.datetime.now(dt.UTC), keep=folder.name)
                return self._submit_locked(folder, request, idempotency_key=idempotency_key)
        finally:
            self._empty_trash()

    def _submit_locked(self, folder: Path, request: LaunchRequest, *,
                       idempotency_key: str) -> InstanceHandle:
        """``submit``'s work under the root's lock."""
        state = _read_json(folder / STATE)
        if state is not None:
            if state.get("idempotency_key") != idempotency_key:
                raise InvalidRequestError(
                    f"instance {folder.name} was launched with another idempotency key. "
                    "To fix: derive one key per launch attempt.", provider=NAME,
                    operation="submit", code="IdempotentParameterMismatch")
            if not (folder / PID).exists() and not (folder / EXIT_CODE).exists() \
                    and not (folder / DELETED).exists():
                self._start(folder, state, request)  # an earlier submit died before it
            return self._handle(state)
        live = self._live()
        if live >= self.slots:
            raise CapacityError(
                f"all {self.slots} local slot(s) of {self.host} are taken ({live} job(s) "
                "running). To fix: nothing in the job is wrong; greenplace fails over to "
                "the next candidate (raise GREENPLACE_LOCAL_SLOTS to run more at once).",
                provider=NAME, operation="submit", code="SlotsFull")
        (folder / WORK).mkdir(parents=True, exist_ok=True)
        (folder / COMMAND).write_text(str(request.payload["Run"]) + "\n", encoding="utf-8")
        state = {
            "instance_id": folder.name, "job_id": request.tags.get("greenplace:job-id"),
            "attempt": request.tags.get("greenplace:attempt"),
            "idempotency_key": idempotency_key, "cloud": request.cloud,
            "region": request.region, "instance_type": request.instance_type,
            "tags": request.tags, "command": request.payload["Run"],
            "argv": request.payload["Argv"], "host": self.host,
            "created_at": _now_iso(), "pid": None, "pgid": None, "start_ticks": None,
        }
        _write_atomic(folder / STATE, json.dumps(state, indent=2))
        self._start(folder, state, request)
        return self._handle(state)

    def _start(self, folder: Path, state: dict[str, Any], request: LaunchRequest) -> None:
        """Launch the wrapper detached, wait for its pid file, record pid and group."""
        env = job_environment(request.payload, agent_token_in(request.startup_script))
        try:
            launcher = subprocess.Popen(
                ["bash", "-c", _LAUNCHER, "gp-local-launch", _WRAPPER, *state["argv"]],
                cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
            launcher.wait(timeout=LAUNCH_WAIT_S)
        except FileNotFoundError as exc:
            raise provider_error(
                InvalidRequestError, f"the local provider runs jobs with bash, which is not "
                f"on the worker's PATH ({exc})", provider=NAME, operation="submit",
                code="BashMissing", fix="install bash on the worker's machine") from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TransientError(
                f"could not start the job's process in {folder}: {exc}. To fix: check the "
                "machine's process limits and free memory; the queue retries.",
                provider=NAME, operation="submit", code="SpawnFailed") from exc
        deadline = time.monotonic() + LAUNCH_WAIT_S
        pid = _read_int(folder / PID)
        while pid is None and time.monotonic() < deadline and not (folder / EXIT_CODE).exists():
            time.sleep(0.01)
            pid = _read_int(folder / PID)
        stat = _proc_stat(pid) if pid is not None else None
        state.update(pid=pid, pgid=launcher.pid,
                     start_ticks=stat[3] if stat is not None else None)
        _write_atomic(folder / STATE, json.dumps(state, indent=2))

    def _here(self, handle: InstanceHandle, operation: str) -> Path:
        """The folder of ``handle``, which must have been launched on this host.

        Raises:
            TransientError: it runs on another host (a worker there follows it; this one
                must not report it missing).
        """
        host = handle.extra.get("host")
        if host and host != self.host:
            raise TransientError(
                f"instance {handle.instance_id} runs on host {host}, not on {self.host}. To "
                "fix: run the workers that serve a local cloud on its machine only.",
                provider=NAME, operation=operation, code="OtherHost")
        return self.folder(handle.instance_id)

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        folder = self._here(handle, "status")
        state = _read_json(folder / STATE)
        if state is None:
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"no folder {folder} on {self.host}")
        return self._status(folder, state)

    def _status(self, folder: Path, state: Mapping[str, Any]) -> InstanceStatus:
        if (folder / DELETED).exists():
            return InstanceStatus(state=InstanceState.TERMINATED, detail="deleted on request")
        code = _read_int(folder / EXIT_CODE)
        if code is None:
            code = _summary_exit_code(folder)  # the agent may still deliver its report
        if code is None:
            pid = _read_int(folder / PID)
            if pid is None:
                return _starting(state)
            ticks = state.get("start_ticks") if state.get("pid") == pid else None
            if _alive(pid, ticks if isinstance(ticks, int) else None):
                return InstanceStatus(state=InstanceState.RUNNING, detail=f"pid {pid}")
            code = _read_int(folder / EXIT_CODE)  # it may have ended since the first read
            if code is None:
                return InstanceStatus(
                    state=InstanceState.FAILED,
                    detail=f"process {pid} ended without recording an exit code (killed "
                           "with its wrapper, or the machine restarted)")
        summary = _read_json(folder / SUMMARY)
        return InstanceStatus(state=InstanceState.EXITED, exit_code=code,
                              detail=f"the job's command exited {code}{measured_text(summary)}",
                              measurement=dict(summary) if summary else None)

    def list_managed(self, region: str) -> list[ManagedInstance]:
        """Every instance folder of the root in ``region`` that was not deleted."""
        out: list[ManagedInstance] = []
        if not self.root.is_dir():
            return out
        for folder in sorted(self.root.iterdir()):
            state = _read_json(folder / STATE) if folder.is_dir() else None
            if state is None or state.get("region") != region or (folder / DELETED).exists():
                continue
            attempt = str(state.get("attempt") or "")
            out.append(ManagedInstance(
                handle=self._handle(state), job_id=state.get("job_id") or None,
                attempt=int(attempt) if attempt.isdigit() else None,
                status=self._status(folder, state)))
        return out

    def delete(self, handle: InstanceHandle) -> bool:
        """Stop the job's processes (SIGTERM, SIGKILL after ``grace_s``) and mark the folder
        deleted; its logs and summary stay. True once no process of the job runs.

        Design choice: an agent that outlives its command only to deliver the final report
        (the API is down) is left to finish on its own, bounded by its flush timeout: its
        command has ended, and stopping it would delay the report to the next agent run.
        """
        folder = self._here(handle, "delete")
        state = _read_json(folder / STATE)
        if state is None or (folder / DELETED).exists():
            return True
        pid = _read_int(folder / PID)
        stat = _proc_stat(pid) if pid is not None else None
        wrapper_group = state.get("pgid") if isinstance(state.get("pgid"), int) else (
            stat[2] if stat is not None else None)
        known = _read_json(folder / GROUPS) or {}
        groups = {g for g in known.get("groups", []) if isinstance(g, int)}
        if wrapper_group is not None:
            groups.add(wrapper_group)
        groups = _job_groups(_owned(groups, str(state.get("job_id"))))
        if _summary_exit_code(folder) is not None and not (folder / EXIT_CODE).exists():
            groups.discard(wrapper_group)  # the agent delivering its report, and its wrapper
        met = _stop(groups, grace_s=self.grace_s) if _live_groups(groups) else groups
        if met - set(known.get("groups", [])):
            _write_atomic(folder / GROUPS, json.dumps({"groups": sorted(met)}))
        if _live_groups(met):
            return False
        if not (folder / DELETED).exists():
            _write_atomic(folder / DELETED, _now_iso() + "\n")
        return True


def create(config: Mapping[str, str]) -> LocalProvider:
    """The registry factory: settings from ``config`` and ``GREENPLACE_LOCAL_*``.

    Raises:
        ConfigError: a slot count, grace or retention that is not a number in range.
    """
    settings = merged_settings("LOCAL", config, os.environ, from_env=_SETTINGS.__contains__)
    slots = number_setting("local", settings, "slots", 1, minimum=0)
    if slots != int(slots):
        raise ConfigError(f"local slots {settings['slots']!r} is not a whole number. To fix: "
                          "set GREENPLACE_LOCAL_SLOTS to how many jobs may run at once.")
    grace_s = number_setting("local", settings, "grace_s", 3.0, minimum=0)
    keep_days = number_setting("local", settings, "keep_days", DEFAULT_KEEP_DAYS, minimum=0)
    root = settings.get("root")
    return LocalProvider(root=Path(root).expanduser() if root else default_root(),
                         slots=int(slots), grace_s=min(grace_s, LAUNCH_WAIT_S),
                         keep_days=keep_days)
