"""local: runs jobs for real on the machine the worker runs on, or on declared
on-premises hosts over SSH.

Each launch attempt gets a working folder ``{root}/{job_id}-a{attempt}`` (the instance
id) holding everything about it:

``work/``        the command's working directory (what the job writes lands here)
``state.json``   what was launched: ids, idempotency key, tags, command, argv, whether it
                 runs under the agent, pid, process group, start time (never the agent token)
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

The folder operations (launch, status, stop, slot count, log reads) live in
``providers/local_ops.py`` and run on the job's host (``providers/local_hosts.py``): in the
worker's process for this machine, through ``ssh HOST python3 -`` for a declared host,
with the same layout under the same kind of root there.

The command runs inside a small bash wrapper that records its pid and the exit code. On
this machine it runs under ``greenplace agent`` (which measures its energy) when this
greenplace has that command; on an SSH host, under ``greenplace agent`` when that host has
``greenplace`` on the PATH of a non-interactive login, else directly, and its status then
says that nothing was measured. The job's environment is its host's (the worker's, or the
ssh login's) less every ``GREENPLACE_*`` variable (the service's settings, a Redis password
among them), plus ``GREENPLACE_JOB_ID`` and, when the job's agent reports to an API,
``GREENPLACE_API_URL`` and ``GREENPLACE_AGENT_TOKEN`` (sent to an SSH host on ssh's
standard input, never on a command line, never written to the folder).

Settings (``GREENPLACE_LOCAL_<KEY>``, ``GREENPLACE_LOCAL_SETTINGS`` or the adapter config,
see ``providers/settings.py``; dotted keys only through the JSON or the config):

``root``         this machine's folder of instance folders; default
                 ``$XDG_STATE_HOME/greenplace/local`` (``~/.local/state/greenplace/local``)
``slots``        how many jobs may run at once on a host (default 1; 0 takes no job); a
                 launch beyond that is a CapacityError, so the queue fails over to the next
                 candidate. ``slots.<region>`` sets one region's host apart
``grace_s``      how long ``delete()`` waits after SIGTERM before SIGKILL (default 3)
``keep_days``    how long a deleted instance's folder (logs, summary, ``work/``) is kept
                 before it is removed (default 7; 0 removes it at the next submit), on
                 this machine and on every SSH host alike
``host.<region>``  ``user@host[:port]``: the region's jobs run on that host over SSH (user,
                 port, keys and jump hosts may come from the worker's ~/.ssh/config instead);
                 a region with no host declared is this machine
``remote_root``  the root on SSH hosts; default that host's own default root
``ssh_options``  extra ``ssh`` arguments, split like a shell line (they win over greenplace's
                 defaults), e.g. ``-F /etc/greenplace/ssh_config``
``identity_file`` a private key's path handed to ``ssh -i`` (greenplace never reads it);
                 default: the worker's ssh agent and config
``connect_timeout_s`` (10), ``control_persist_s`` (60), ``control_dir`` (the ControlMaster
                 sockets' folder, default ``$XDG_RUNTIME_DIR/greenplace-ssh``)

Retention: each submit, on the job's host under that host's root lock, sets aside (renames
into ``{root}/.removing``) every folder whose instance was deleted more than ``keep_days``
ago and whose process is gone, and removes them once the lock is released, so a large
``work/`` never holds up another worker's submit. The worker sends ``keep_days`` with the
request, like ``slots``; an SSH host thus removes its own expired folders, with its own
clock and its own process table, and this machine's folders go at a launch here. A live
job's folder, or one not yet deleted, is never touched: only ``delete()`` (reconcile,
cancel, ``greenplace gc``) marks a folder deleted, and only once no process of the job
runs.

Design choice: the job is started detached (its own session and process group, reparented
away from the worker, or the ssh session, through a launcher that exits at once), and
everything ``status()`` needs is in its folder, so a job survives the worker's task, the
worker itself, a worker restart, and a dropped ssh connection: any new provider object
finds it again by its folder. A submit that holds the root's lock (on the job's host) and
finds the folder of its key returns that instance (idempotency), and counts live folders
against ``slots`` under the same lock, so two workers cannot both take the last slot.

Each machine is a "region" of a cloud declared in a catalog overlay
(``examples/local-overlay.yaml``, ``examples/ssh-overlay.yaml``) and routed here with
``GREENPLACE_PROVIDERS``; placements on the embedded clouds (aws, gcp, azure) are refused,
as running them here would contradict the figures that chose them.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import re
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from greenplace.providers import local_ops
from greenplace.providers.base import (
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
from greenplace.providers.local_hosts import (
    Host,
    SshHost,
    SshOptions,
    SshTarget,
    ThisMachine,
    parse_target,
    ssh_options_from,
)
from greenplace.providers.settings import merged_settings, number_setting
from greenplace.scheduler.exceptions import (
    CapacityError,
    ConfigError,
    InvalidRequestError,
    ProviderError,
    TransientError,
)

NAME = "local"
EMBEDDED_CLOUDS = ("aws", "gcp", "azure", "local-sim")
_SETTINGS = frozenset({"root", "slots", "grace_s", "keep_days", "remote_root",
                       "ssh_options", "identity_file", "connect_timeout_s", "control_persist_s",
                       "control_dir"})
_SAFE_ID = local_ops.SAFE_ID
_TOKEN_LINE = re.compile(r"^export GREENPLACE_AGENT_TOKEN='(.*)'$", re.MULTILINE)
START_TIMEOUT_S = local_ops.START_TIMEOUT_S
DEFAULT_KEEP_DAYS = 7.0
default_root = local_ops.default_root


def instance_id_of(job_id: str, attempt: int) -> str:
    """The folder name (and instance id) of one launch attempt."""
    return f"{job_id}-a{attempt}"


def agent_available() -> bool:
    """Whether this greenplace has the ``agent`` command (then jobs run under it)."""
    from greenplace.scheduler.cli import LAZY_COMMANDS

    return "agent" in LAZY_COMMANDS


def job_argv(folder: Path, *, agent: bool) -> list[str]:
    """The command the wrapper runs in ``folder``: the job under the agent, or bare."""
    bare = ["bash", str(folder / local_ops.COMMAND)]
    if not agent:
        return bare
    return [sys.executable, "-m", "greenplace", "agent", "--summary-file",
            str(folder / local_ops.SUMMARY), "--", *bare]


def agent_token_in(script: str) -> str | None:
    """The agent token a boot script (``base.startup_script``) exports, unquoted; None
    when it exports none. The boot script is the one place a request carries it."""
    found = _TOKEN_LINE.search(script)
    return found.group(1).replace("'\"'\"'", "'") if found else None


def job_variables(payload: Mapping[str, Any], token: str | None) -> dict[str, str]:
    """The variables the job gets on top of its host's environment."""
    env = {"GREENPLACE_JOB_ID": str(payload["JobId"])}
    api_url = payload.get("AgentApiUrl")
    if api_url and token:
        env["GREENPLACE_API_URL"] = str(api_url)
        env["GREENPLACE_AGENT_TOKEN"] = token
    return env


def measured_text(summary: Mapping[str, Any] | None) -> str:
    """``measured X kWh (method)`` from an agent summary, or '' when it has no energy."""
    if not summary:
        return ""
    energy_j = summary.get("energy_j")
    if not isinstance(energy_j, (int, float)) or isinstance(energy_j, bool):
        return ""
    return f"; measured {energy_j / 3.6e6:.6g} kWh ({summary.get('method') or 'unlabelled'})"


def status_of(answer: Mapping[str, Any], *, where: str) -> InstanceStatus:
    """The InstanceStatus of a ``local_ops`` status answer from host ``where``."""
    state = InstanceState(str(answer["state"]))
    if state is InstanceState.LAUNCH_FAILED:
        instance = answer.get("instance") or {}
        return InstanceStatus(state=state, detail=str(answer.get("detail", "")), error=(
            TransientError(
                f"the job's process in {instance.get('instance_id')} on {where} did not "
                f"start within {START_TIMEOUT_S:g} s. To fix: check the machine's load and "
                "process limits; greenplace tries again as a new attempt.", provider=NAME,
                operation="status", code=str(answer.get("error_code")))))
    if state is not InstanceState.EXITED:
        return InstanceStatus(state=state, detail=str(answer.get("detail", "")))
    code = int(answer["exit_code"])
    summary = answer.get("measurement")
    detail = f"the job's command exited {code}{measured_text(summary)}"
    if not summary and answer.get("agent") is False:
        detail += " (run without `greenplace agent`: nothing measured)"
    return InstanceStatus(state=state, exit_code=code, detail=detail,
                          measurement=dict(summary) if summary else None)


class LocalProvider:
    """Runs each launch as a detached process group in its own folder, on this machine or
    on the SSH host declared for its region. Build with ``create``."""

    name = NAME
    # No spot market here, and no boot script run (the command runs directly).
    features = frozenset({Feature.CANCEL, Feature.TAGS, Feature.IDEMPOTENT_SUBMIT})

    def __init__(self, *, root: Path, slots: int, grace_s: float,
                 hosts: Mapping[str, SshTarget] | None = None,
                 region_slots: Mapping[str, int] | None = None, remote_root: str = "",
                 ssh: SshOptions | None = None, keep_days: float = DEFAULT_KEEP_DAYS) -> None:
        self.root = root
        self.slots = slots
        self.grace_s = grace_s
        self.keep_days = keep_days
        self.hosts = dict(hosts or {})
        self.region_slots = dict(region_slots or {})
        self.remote_root = remote_root
        self.ssh = ssh or SshOptions()
        self.host = socket.gethostname()
        self.this_machine = ThisMachine(root)

    # --- plumbing -----------------------------------------------------------------
    def folder(self, instance_id: str) -> Path:
        """The folder of ``instance_id`` on this machine (refusing anything that is not
        a plain name)."""
        return self.root / _checked_id(instance_id)

    def host_for(self, region: str, *, ssh: str | None = None) -> Host:
        """The host of ``region``'s jobs; ``ssh``, a handle's recorded target, wins (the
        job stays where it was launched when the settings change)."""
        target = parse_target(ssh, setting="the handle's ssh") if ssh else \
            self.hosts.get(region)
        if target is None:
            return self.this_machine
        return SshHost(target, self.remote_root, self.ssh)

    def _slots(self, region: str) -> int:
        return self.region_slots.get(region, self.slots)

    def _handle(self, state: Mapping[str, Any], host: Host) -> InstanceHandle:
        instance_id = str(state["instance_id"])
        folder = str(state.get("dir") or self.root / instance_id)
        extra = {"dir": folder, "host": str(state.get("host") or self.host)}
        if host.ssh:
            extra["ssh"] = host.ssh
        return InstanceHandle(provider=NAME, cloud=str(state["cloud"]),
                              region=str(state["region"]), instance_id=instance_id,
                              extra=extra)

    def _host_of(self, handle: InstanceHandle, operation: str) -> Host:
        """The host of ``handle``: its SSH target, else this machine, which must be the
        one it was launched on.

        Raises:
            TransientError: it runs on another machine (a worker there follows it; this
                one must not report it missing).
        """
        _checked_id(handle.instance_id)
        ssh = handle.extra.get("ssh")
        if ssh:
            return self.host_for(handle.region, ssh=ssh)
        host = handle.extra.get("host")
        if host and host != self.host:
            raise TransientError(
                f"instance {handle.instance_id} runs on host {host}, not on {self.host}. To "
                "fix: run the workers that serve a local cloud on its machine only.",
                provider=NAME, operation=operation, code="OtherHost")
        return self.this_machine

    # --- the Provider protocol ------------------------------------------------------
    def check_credentials(self) -> str:
        """Checks this machine's root, and logs in to every declared host."""
        lines = [self._probe(self.this_machine, None)]
        for region in sorted(self.hosts):
            lines.append(self._probe(self.host_for(region), region))
        return "; ".join(lines)

    def _probe(self, host: Host, region: str | None) -> str:
        """One host's line of ``check_credentials`` (``region`` None: this machine)."""
        answer = host.call("probe", {}, purpose="check_credentials")
        if answer.get("root_problem"):
            raise provider_error(
                InvalidRequestError, f"the local root {answer['root']} on {host.label} is not "
                f"writable ({answer['root_problem']})", provider=NAME,
                operation="check_credentials", code="RootUnwritable",
                fix="point GREENPLACE_LOCAL_ROOT (REMOTE_ROOT for an SSH host) at a folder "
                    "its user may write")
        if not answer.get("bash"):
            raise ConfigError(f"the local provider runs jobs with bash, which is not on the "
                              f"PATH of {host.label}. To fix: install bash there.")
        if host.ssh is None:
            user, agent = getpass.getuser(), agent_available()
        else:
            user, agent = str(answer["user"]), bool(answer.get("greenplace"))
        runs = "under `greenplace agent`" if agent else "without the agent"
        via = f" over ssh {host.ssh}" if host.ssh else ""
        what = f"region {region}" if region else "this machine"
        slots = self.slots if region is None else self._slots(region)
        return (f"local {what} (no credentials needed): jobs run as {user} on "
                f"{answer['host']}{via} in {answer['root']}, {slots} slot(s), {runs}")

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
        target = self.hosts.get(placement.region)
        payload: dict[str, Any] = {"InstanceId": instance_id, "JobId": job.job_id,
                                   "JobName": job.name, "Run": job.run}
        if target is None:
            folder = self.root / instance_id
            agent: bool | None = agent_available()
            payload.update(Folder=str(folder), Agent=agent,
                           Argv=job_argv(folder, agent=bool(agent)))
        else:  # that host decides (its root and its greenplace): see local_ops.submit
            root = self.remote_root or "(its default root)"
            payload.update(Host=str(target), Folder=f"{target}:{root}/{instance_id}",
                           Agent=None, Argv=None)
        payload["Accelerators"] = f"{placement.accelerator_count}x {placement.accelerator}"
        if job.agent is not None:
            payload["AgentApiUrl"] = job.agent.api_url
        return LaunchRequest(
            provider=NAME, cloud=placement.cloud, region=placement.region,
            instance_type=placement.instance_type, spot=False, tags=job_tags(job),
            startup_script=startup_script(job), payload=payload)

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Start the job, or return the instance an earlier submit with this key started.
        The job's host first removes its expired folders (see Retention above).

        Raises:
            CapacityError: every slot is taken (``SlotsFull``), or the region's SSH host
                is unreachable (``HostUnreachable``).
            AuthError: the SSH host refused the login or its host key is not known.
            InvalidRequestError: the key was used for another instance folder, or the
                folder holds another key's launch (``IdempotentParameterMismatch``).
            TransientError: the process could not be started now.
        """
        payload = request.payload
        host = self.host_for(request.region, ssh=payload.get("Host"))
        slots = self._slots(request.region)
        answer = host.call("submit", {
            "instance_id": str(payload["InstanceId"]), "idempotency_key": idempotency_key,
            "run": payload["Run"], "argv": payload.get("Argv"), "agent": payload.get("Agent"),
            "env": job_variables(payload, agent_token_in(request.startup_script)),
            "slots": slots, "keep_days": self.keep_days, "state": {
                "job_id": request.tags.get("greenplace:job-id"),
                "attempt": request.tags.get("greenplace:attempt"), "cloud": request.cloud,
                "region": request.region, "instance_type": request.instance_type,
                "tags": request.tags, "command": payload["Run"]}}, purpose="submit")
        outcome = answer["outcome"]
        if outcome in ("started", "found"):
            return self._handle(answer["state"], host)
        where = self.host if host.ssh is None else host.label
        if outcome == "SlotsFull":
            raise CapacityError(
                f"all {slots} local slot(s) of {where} are taken ({answer['live']} job(s) "
                "running). To fix: nothing in the job is wrong; greenplace fails over to "
                "the next candidate (raise GREENPLACE_LOCAL_SLOTS to run more at once).",
                provider=NAME, operation="submit", code="SlotsFull")
        if outcome == "IdempotentParameterMismatch":
            raise InvalidRequestError(
                f"instance {payload['InstanceId']} was launched with another idempotency "
                "key. To fix: derive one key per launch attempt.", provider=NAME,
                operation="submit", code="IdempotentParameterMismatch")
        if outcome == "RootUnwritable":
            raise _root_unwritable(where, answer.get("error"), operation="submit")
        if outcome == "BashMissing":
            raise provider_error(
                InvalidRequestError, f"the local provider runs jobs with bash, which is not "
                f"on the PATH of {where}", provider=NAME, operation="submit",
                code="BashMissing", fix=f"install bash on {where}")
        raise TransientError(
            f"could not start the job's process of {payload['InstanceId']} on {where}. To "
            "fix: check the machine's process limits and free memory; the queue retries.",
            provider=NAME, operation="submit", code=str(outcome))

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        host = self._host_of(handle, "status")
        answer = host.call("status", {"instance_id": handle.instance_id}, purpose="status")
        if answer["state"] == "missing" and host.ssh:
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"{answer.get('detail')} (over ssh {host.ssh})")
        return status_of(answer, where=host.label)

    def list_managed(self, region: str) -> list[ManagedInstance]:
        """Every instance folder of ``region``'s host in ``region`` that was not deleted."""
        host = self.host_for(region)
        answer = host.call("list", {"region": region}, purpose="list_managed")
        out: list[ManagedInstance] = []
        for item in answer["instances"]:
            state = item["instance"]
            attempt = str(state.get("attempt") or "")
            out.append(ManagedInstance(
                handle=self._handle(state, host), job_id=state.get("job_id") or None,
                attempt=int(attempt) if attempt.isdigit() else None,
                status=status_of(item, where=host.label)))
        return out

    def delete(self, handle: InstanceHandle) -> bool:
        """Stop the job's processes (SIGTERM, SIGKILL after ``grace_s``) and mark the folder
        deleted; its logs and summary stay. True once no process of the job runs."""
        host = self._host_of(handle, "delete")
        answer = host.call("delete", {"instance_id": handle.instance_id,
                                      "grace_s": self.grace_s}, purpose="delete")
        return bool(answer["done"])

    def remove_expired(self, *, region: str | None = None,
                       now: dt.datetime | None = None) -> list[str]:
        """Remove the folders of instances deleted more than ``keep_days`` ago (logs,
        summary and ``work/`` with them) on ``region``'s host (default: this machine),
        judged at ``now`` (default: that host's clock); returns their instance ids.
        ``submit`` does the same on the job's host at each launch.

        Raises:
            InvalidRequestError: the host's root is not writable (``RootUnwritable``).
        """
        host = self.this_machine if region is None else self.host_for(region)
        request: dict[str, Any] = {"keep_days": self.keep_days}
        if now is not None:
            request["now"] = now.isoformat()
        answer = host.call("remove_expired", request, purpose="remove_expired")
        if answer.get("error"):
            raise _root_unwritable(host.label, answer["error"], operation="remove_expired")
        return [str(name) for name in answer["removed"]]


def _root_unwritable(where: str, error: object, *, operation: str) -> ProviderError:
    """The error of a host whose instance folders' root cannot be written."""
    return provider_error(
        InvalidRequestError, f"the local root on {where} is not writable ({error})",
        provider=NAME, operation=operation, code="RootUnwritable",
        fix="point GREENPLACE_LOCAL_ROOT (REMOTE_ROOT for an SSH host) at a folder its user "
            "may write")


def _checked_id(instance_id: str) -> str:
    if not _SAFE_ID.fullmatch(instance_id):
        raise InvalidRequestError(
            f"{instance_id!r} is not a local instance id. To fix: use an id that "
            "`greenplace status` shows for a job of the local provider.",
            provider=NAME, operation="status", code="InvalidInstanceId")
    return instance_id


def _whole(settings: Mapping[str, str], key: str, default: int) -> int:
    value = number_setting("local", settings, key, default, minimum=0)
    if value != int(value):
        raise ConfigError(f"local {key} {settings[key]!r} is not a whole number. To fix: "
                          "set it to how many jobs may run at once.")
    return int(value)


def create(config: Mapping[str, str]) -> LocalProvider:
    """The registry factory: settings from ``config`` and ``GREENPLACE_LOCAL_*``.

    Raises:
        ConfigError: a slot count, grace or retention that is not a number in range, a
            host that is not ``user@host[:port]``, or ssh options that do not parse.
    """
    settings = merged_settings("LOCAL", config, os.environ, from_env=_SETTINGS.__contains__)
    slots = _whole(settings, "slots", 1)
    grace_s = number_setting("local", settings, "grace_s", 3.0, minimum=0)
    keep_days = number_setting("local", settings, "keep_days", DEFAULT_KEEP_DAYS, minimum=0)
    hosts = {key.removeprefix("host."): parse_target(value, setting=key)
             for key, value in settings.items() if key.startswith("host.") and value}
    region_slots = {key.removeprefix("slots."): _whole(settings, key, slots)
                    for key in settings if key.startswith("slots.")}
    root = settings.get("root")
    return LocalProvider(root=Path(root).expanduser() if root else default_root(),
                         slots=slots, grace_s=min(grace_s, local_ops.LAUNCH_WAIT_S),
                         hosts=hosts, region_slots=region_slots,
                         remote_root=settings.get("remote_root", ""),
                         ssh=ssh_options_from(settings) if hosts else None,
                         keep_days=keep_days)
