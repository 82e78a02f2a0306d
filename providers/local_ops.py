"""local_ops: the ``local`` provider's folder operations, run on the host of the jobs.

Each operation takes a JSON-ready request and returns a JSON-ready answer: ``probe``,
``submit`` (retention, idempotency and slot count under the root's lock, detached start),
``status``, ``list``, ``delete`` (stop the job's process groups), ``logs`` (what the
output files gained since given offsets) and ``remove_expired`` (retention alone). The
folder layout and the retention rule are described in ``providers/local.py``.

Design choice: this module imports the standard library only, nothing of greenplace, and
runs on any python3 from 3.8, so the very same code serves both kinds of host
(``providers/local_hosts.py``): for this machine the worker calls it in its own process;
for a declared SSH host it is the program that ``python3 -`` reads from ssh's standard
input on that host, the request appended as one JSON literal. One implementation of
launch, status, stop and slot counting, two ways to reach the host. Answers carry plain
codes, never exceptions: the provider turns them into its ProviderError classes, on the
worker, for both hosts alike.
"""

from __future__ import annotations

import base64
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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

STATE, COMMAND, PID, EXIT_CODE = "state.json", "command.sh", "pid", "exit_code"
STDOUT, STDERR, SUMMARY, DELETED = "stdout.log", "stderr.log", "summary.json", "deleted"
WORK, GROUPS, LOCK = "work", "groups.json", ".lock"
REMOVING = ".removing"  # folders set aside for removal (retention), emptied after the lock
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # an instance id, a folder name
START_TIMEOUT_S = 60.0  # a wrapper that wrote no pid file by then never started
LAUNCH_WAIT_S = 5.0  # as providers/base.py: the longest a submit waits for the pid file
LOG_CHUNK_BYTES = 1 << 20  # the most bytes of one log file one ``logs`` answer carries

# The job's wrapper ($0 gp-local-job, "$@" the command): records its pid, runs the
# command, records the exit code. Files are written under a temporary name and renamed,
# so a reader never sees half a number.
WRAPPER = """d=$PWD
echo $$ > "$d/pid.tmp" && mv -f "$d/pid.tmp" "$d/pid"
cd work && "$@"
code=$?
echo "$code" > "$d/exit_code.tmp" && mv -f "$d/exit_code.tmp" "$d/exit_code"
exit "$code"
"""
# The launcher starts the wrapper in the background and exits, so the wrapper is nobody's
# child in the worker (no zombie left to reap) yet keeps the launcher's session and group.
LAUNCHER = 'w=$1; shift; bash -c "$w" gp-local-job "$@" </dev/null >stdout.log 2>stderr.log &'


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/greenplace/local``, else ``~/.local/state/greenplace/local``."""
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME", "").strip()
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "greenplace" / "local"


def root_of(request: Mapping[str, Any]) -> Path:
    """The request's root (``~`` expanded on this host), else this host's default."""
    given = str(request.get("root") or "")
    return Path(os.path.expanduser(given)) if given else default_root()


# A remote host's python3 may predate 3.11 (no ``datetime.UTC``, no "Z" in fromisoformat).
_UTC = dt.timezone.utc  # noqa: UP017


def _now_iso() -> str:
    return dt.datetime.now(_UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when absent, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- processes ------------------------------------------------------------------------
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


# --- folders ---------------------------------------------------------------------------
class RootUnwritable(Exception):
    """The root (or its lock file) cannot be created or opened here."""


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """The root's lock: submits (idempotency and slot count) never interleave, even
    between workers on different machines that launch on the same host."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = (root / LOCK).open("a")
    except OSError as exc:
        raise RootUnwritable(str(exc)) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _summary_exit_code(folder: Path) -> int | None:
    """The exit code in the agent's summary, written as soon as the command ended."""
    code = (read_json(folder / SUMMARY) or {}).get("exit_code")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _starting(state: Mapping[str, Any]) -> dict[str, Any]:
    """A launch whose wrapper has not recorded its pid: starting, or never started."""
    try:
        created = dt.datetime.fromisoformat(str(state.get("created_at")).replace("Z", "+00:00"))
    except ValueError:
        created = dt.datetime.now(_UTC)
    if (dt.datetime.now(_UTC) - created).total_seconds() < START_TIMEOUT_S:
        return {"state": "pending", "detail": "starting"}
    return {"state": "launch_failed", "error_code": "NeverStarted",
            "detail": f"the job's process did not start within {START_TIMEOUT_S:g} s"}


def folder_status(folder: Path, state: Mapping[str, Any]) -> dict[str, Any]:
    """The status of one instance folder: ``state`` (an InstanceState value), ``detail``,
    and for an ended command ``exit_code`` and the agent's ``measurement``."""
    if (folder / DELETED).exists():
        return {"state": "terminated", "detail": "deleted on request"}
    code = _read_int(folder / EXIT_CODE)
    if code is None:
        code = _summary_exit_code(folder)  # the agent may still deliver its report
    if code is None:
        pid = _read_int(folder / PID)
        if pid is None:
            return _starting(state)
        ticks = state.get("start_ticks") if state.get("pid") == pid else None
        if _alive(pid, ticks if isinstance(ticks, int) else None):
            return {"state": "running", "detail": f"pid {pid}"}
        code = _read_int(folder / EXIT_CODE)  # it may have ended since the first read
        if code is None:
            return {"state": "failed",
                    "detail": f"process {pid} ended without recording an exit code (killed "
                              "with its wrapper, or the machine restarted)"}
    return {"state": "exited", "exit_code": code, "measurement": read_json(folder / SUMMARY),
            "agent": state.get("agent")}


def _live(root: Path) -> int:
    """How many instances of the root hold a slot (started or starting, not ended)."""
    count = 0
    for folder in root.iterdir():
        state = read_json(folder / STATE) if folder.is_dir() else None
        if state is not None and folder_status(folder, state)["state"] in ("pending", "running"):
            count += 1
    return count


# --- retention -------------------------------------------------------------------------
def _deleted_at(folder: Path) -> dt.datetime | None:
    """When ``delete()`` marked ``folder`` deleted (the marker's time, else for a marker
    written by hand its file time); None when it is not marked, or the marker vanished."""
    marker = folder / DELETED
    try:
        text = marker.read_text().strip()
    except OSError:
        return None
    try:
        deleted_at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return dt.datetime.fromtimestamp(marker.stat().st_mtime, _UTC)
        except OSError:
            return None
    return deleted_at if deleted_at.tzinfo is not None else deleted_at.replace(tzinfo=_UTC)


def _expired(folder: Path, *, keep_days: float, now: dt.datetime) -> bool:
    """Whether ``folder``'s instance was deleted more than ``keep_days`` before ``now``
    and no process of it runs (the wrapper's pid, checked as ``folder_status`` does)."""
    deleted_at = _deleted_at(folder)
    if deleted_at is None:  # not deleted: a live, starting or undeleted instance
        return False
    if (now - deleted_at).total_seconds() < keep_days * 86_400:
        return False
    pid = _read_int(folder / PID)
    state = read_json(folder / STATE) or {}
    ticks = state.get("start_ticks") if state.get("pid") == pid else None
    return pid is None or not _alive(pid, ticks if isinstance(ticks, int) else None)


def _set_aside_expired(root: Path, *, keep_days: float, now: dt.datetime,
                       keep: str | None = None) -> list[str]:
    """Under the root's lock: move each expired instance folder into ``.removing`` (a
    rename, instant whatever it holds), but ``keep`` (the instance a submit is about: its
    key's folder answers a repeated submit); returns their instance ids, sorted."""
    moved = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not SAFE_ID.fullmatch(folder.name) \
                or folder.name == keep or not _expired(folder, keep_days=keep_days, now=now):
            continue
        trash = root / REMOVING
        trash.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # a same-named leftover there: a later submit
            os.replace(folder, trash / folder.name)
            moved.append(folder.name)
    return moved


def _empty_trash(root: Path) -> None:
    """Remove what was set aside (also what a process that died mid-removal left); run
    after the lock is released, so a large ``work/`` never holds up another submit."""
    trash = root / REMOVING
    if trash.is_dir():
        for folder in trash.iterdir():
            shutil.rmtree(folder, ignore_errors=True)


def _moment(request: Mapping[str, Any]) -> dt.datetime:
    """The request's ``now`` (ISO 8601, for a test's later day), else the clock."""
    given = request.get("now")
    if not given:
        return dt.datetime.now(_UTC)
    moment = dt.datetime.fromisoformat(str(given).replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=_UTC)


def _job_argv(folder: Path, argv: list[str] | None) -> tuple[list[str], bool]:
    """The command the wrapper runs, and whether it runs under the agent.

    ``argv`` given: the worker chose it (this machine). None: this host decides, under
    ``greenplace agent`` when it has ``greenplace`` on PATH, else the bare command.
    """
    if argv is not None:
        return argv, "agent" in argv
    bare = ["bash", str(folder / COMMAND)]
    greenplace = shutil.which("greenplace")
    if greenplace is None:
        return bare, False
    return [greenplace, "agent", "--summary-file", str(folder / SUMMARY), "--", *bare], True


def _start(folder: Path, state: dict[str, Any], env: Mapping[str, str]) -> str | None:
    """Launch the wrapper detached, wait for its pid file, record pid and group.

    Returns None once started, else the code of why not (``BashMissing``, ``SpawnFailed``).
    """
    try:
        launcher = subprocess.Popen(
            ["bash", "-c", LAUNCHER, "gp-local-launch", WRAPPER, *state["argv"]],
            cwd=folder, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        launcher.wait(timeout=LAUNCH_WAIT_S)
    except FileNotFoundError:
        return "BashMissing"
    except (OSError, subprocess.TimeoutExpired):
        return "SpawnFailed"
    deadline = time.monotonic() + LAUNCH_WAIT_S
    pid = _read_int(folder / PID)
    while pid is None and time.monotonic() < deadline and not (folder / EXIT_CODE).exists():
        time.sleep(0.01)
        pid = _read_int(folder / PID)
    stat = _proc_stat(pid) if pid is not None else None
    state.update(pid=pid, pgid=launcher.pid, start_ticks=stat[3] if stat is not None else None)
    _write_atomic(folder / STATE, json.dumps(state, indent=2))
    return None


def job_environment(added: Mapping[str, str],
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's environment: this host's less ``GREENPLACE_*`` (the service's settings,
    a Redis password among them), plus the job's own variables ``added``."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if not k.startswith("GREENPLACE_")}
    env.update(added)
    return env


# --- the operations ----------------------------------------------------------------------
def probe(request: Mapping[str, Any]) -> dict[str, Any]:
    """What the provider's credential check reports: who and where, and what is missing."""
    root = root_of(request)
    problem = None
    try:
        with _locked(root):
            pass
    except RootUnwritable as exc:
        problem = str(exc)
    return {"host": socket.gethostname(), "user": getpass.getuser(), "root": str(root),
            "root_problem": problem, "bash": shutil.which("bash") is not None,
            "greenplace": shutil.which("greenplace")}


def submit(request: Mapping[str, Any]) -> dict[str, Any]:
    """Start the job, or find the instance an earlier submit with this key started.

    First, under the root's lock, the folders of instances deleted more than
    ``keep_days`` ago are set aside (never the submitted one), and removed once the lock
    is released: each host applies the retention to its own root at each launch there.

    Answers ``outcome``: ``started``, ``found`` (with ``state``), or the code of a
    refusal: ``SlotsFull`` (with ``live``), ``IdempotentParameterMismatch``,
    ``RootUnwritable`` (with ``error``), ``BashMissing``, ``SpawnFailed``.
    """
    root = root_of(request)
    folder = root / str(request["instance_id"])
    key = str(request["idempotency_key"])
    env = job_environment(request.get("env") or {})
    try:
        with _locked(root):
            _set_aside_expired(root, keep_days=float(request["keep_days"]),
                               now=_moment(request), keep=folder.name)
            return _submit_locked(root, folder, request, key=key, env=env)
    except RootUnwritable as exc:
        return {"outcome": "RootUnwritable", "error": str(exc)}
    finally:
        _empty_trash(root)


def _submit_locked(root: Path, folder: Path, request: Mapping[str, Any], *, key: str,
                   env: Mapping[str, str]) -> dict[str, Any]:
    """``submit``'s work under the root's lock."""
    state = read_json(folder / STATE)
    if state is not None:
        if state.get("idempotency_key") != key:
            return {"outcome": "IdempotentParameterMismatch"}
        failed = None
        if not (folder / PID).exists() and not (folder / EXIT_CODE).exists() \
                and not (folder / DELETED).exists():
            failed = _start(folder, state, env)  # an earlier submit died before it
        return {"outcome": failed or "found", "state": state}
    live = _live(root)
    slots = int(request["slots"])
    if live >= slots:
        return {"outcome": "SlotsFull", "live": live}
    (folder / WORK).mkdir(parents=True, exist_ok=True)
    (folder / COMMAND).write_text(str(request["run"]) + "\n", encoding="utf-8")
    argv, agent = _job_argv(folder, request.get("argv"))
    state = {**request["state"], "instance_id": folder.name, "idempotency_key": key,
             "argv": argv, "agent": agent, "host": socket.gethostname(),
             "dir": str(folder), "created_at": _now_iso(), "pid": None, "pgid": None,
             "start_ticks": None}
    _write_atomic(folder / STATE, json.dumps(state, indent=2))
    return {"outcome": _start(folder, state, env) or "started", "state": state}


def status(request: Mapping[str, Any]) -> dict[str, Any]:
    """The status of one instance (``missing`` when its folder has no state)."""
    folder = root_of(request) / str(request["instance_id"])
    state = read_json(folder / STATE)
    if state is None:
        return {"state": "missing", "detail": f"no folder {folder} on {socket.gethostname()}"}
    return {**folder_status(folder, state), "instance": state}


def list_region(request: Mapping[str, Any]) -> dict[str, Any]:
    """Every instance of the root in ``region`` that was not deleted, with its status."""
    root = root_of(request)
    out: list[dict[str, Any]] = []
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            state = read_json(folder / STATE) if folder.is_dir() else None
            if state is None or state.get("region") != request["region"] \
                    or (folder / DELETED).exists():
                continue
            out.append({**folder_status(folder, state), "instance": state})
    return {"instances": out}


def delete(request: Mapping[str, Any]) -> dict[str, Any]:
    """Stop the job's processes (SIGTERM, SIGKILL after ``grace_s``) and mark the folder
    deleted; its logs and summary stay. ``done`` once no process of the job runs.

    Design choice: an agent that outlives its command only to deliver the final report
    (the API is down) is left to finish on its own, bounded by its flush timeout: its
    command has ended, and stopping it would delay the report to the next agent run.
    """
    folder = root_of(request) / str(request["instance_id"])
    state = read_json(folder / STATE)
    if state is None or (folder / DELETED).exists():
        return {"done": True}
    pid = _read_int(folder / PID)
    stat = _proc_stat(pid) if pid is not None else None
    wrapper_group = state.get("pgid") if isinstance(state.get("pgid"), int) else (
        stat[2] if stat is not None else None)
    known = read_json(folder / GROUPS) or {}
    groups = {g for g in known.get("groups", []) if isinstance(g, int)}
    if wrapper_group is not None:
        groups.add(wrapper_group)
    groups = _job_groups(_owned(groups, str(state.get("job_id"))))
    if _summary_exit_code(folder) is not None and not (folder / EXIT_CODE).exists():
        groups.discard(wrapper_group)  # the agent delivering its report, and its wrapper
    grace_s = float(request["grace_s"])
    met = _stop(groups, grace_s=grace_s) if _live_groups(groups) else groups
    if met - set(known.get("groups", [])):
        _write_atomic(folder / GROUPS, json.dumps({"groups": sorted(met)}))
    if _live_groups(met):
        return {"done": False}
    if not (folder / DELETED).exists():
        _write_atomic(folder / DELETED, _now_iso() + "\n")
    return {"done": True}


def logs(request: Mapping[str, Any]) -> dict[str, Any]:
    """What each of ``offsets``' output files (``stdout.log``, ``stderr.log``) holds past
    its offset, base64, at most ``LOG_CHUNK_BYTES`` each; ``exists`` is False when the
    instance folder has no state (not on this host)."""
    folder = root_of(request) / str(request["instance_id"])
    if not (folder / STATE).exists():
        return {"exists": False, "chunks": {}}
    chunks: dict[str, str] = {}
    for name, offset in dict(request["offsets"]).items():
        if name not in (STDOUT, STDERR):
            continue
        try:
            with (folder / name).open("rb") as file:
                file.seek(int(offset))
                chunks[name] = base64.b64encode(file.read(LOG_CHUNK_BYTES)).decode("ascii")
        except FileNotFoundError:
            chunks[name] = ""
    return {"exists": True, "chunks": chunks}


def remove_expired(request: Mapping[str, Any]) -> dict[str, Any]:
    """The retention of ``submit`` alone: remove the folders of instances deleted more
    than ``keep_days`` before ``now`` (default: the clock); answers their ids as
    ``removed``, or ``RootUnwritable`` as ``error``."""
    root = root_of(request)
    if not root.is_dir():
        return {"removed": []}
    try:
        with _locked(root):
            moved = _set_aside_expired(root, keep_days=float(request["keep_days"]),
                                       now=_moment(request))
    except RootUnwritable as exc:
        return {"removed": [], "error": str(exc)}
    finally:
        _empty_trash(root)
    return {"removed": moved}


OPERATIONS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "probe": probe, "submit": submit, "status": status, "list": list_region,
    "delete": delete, "logs": logs, "remove_expired": remove_expired,
}


def main(operation: str, request_json: str) -> None:
    """The entry point on a remote host: one operation, its answer as one JSON line."""
    answer = OPERATIONS[operation](json.loads(request_json))
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
