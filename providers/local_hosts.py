"""local_hosts: where the ``local`` provider's folder operations run, this machine or a
declared on-premises host reached with the system ``ssh`` client.

A host answers ``call(operation, request)`` with the JSON answer of one operation of
``providers/local_ops.py``. ``ThisMachine`` calls it in the worker's own process;
``SshHost`` runs the same module on the remote host as ``python3 -``, its source and the
request on ssh's standard input (so the agent token a request carries never appears on a
command line, here or there), and reads the answer from its standard output.

ssh runs in batch mode (never a prompt), with ``ConnectTimeout``, ``ServerAliveInterval``
and a ControlMaster socket kept ``ControlPersist`` seconds, so a worker's status polls and
a ``greenplace logs --follow`` reuse one connection per host. Keys, users, jump hosts and
per-host options come from the worker user's own ssh config and agent; greenplace passes an
``identity_file`` path through to ``ssh -i`` when set and never reads a key itself. A call
over an open shared connection does not log in again: a changed key or known_hosts entry
takes effect once that connection has been idle for ``ControlPersist`` seconds (or after
``ssh -O exit`` with the same ControlPath).

Design choice: ssh's own failures (exit status 255) are classified from its message: a
refused or timed-out connection is ``HostUnreachable`` (a launch fails over to the next
candidate, as on a cloud's stockout; status and delete retry), a refused login or an
unknown or changed host key is an AuthError with what to fix, a connection lost after it
was made is transient on every operation (the request is idempotent: a retried submit finds
its folder), and anything else fails the call as invalid instead of retrying it blindly.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from greenplace.providers import local_ops
from greenplace.providers.errors import provider_error
from greenplace.scheduler.exceptions import (
    AuthError,
    CapacityError,
    ConfigError,
    InvalidRequestError,
    ProviderError,
    TransientError,
)

NAME = "local"
_TARGET = re.compile(
    r"(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]{0,63})@)?"
    r"(?P<host>[A-Za-z0-9_][A-Za-z0-9._-]{0,252}|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?")
# How long one remote operation may take once connected (a delete waits out its grace).
OPERATION_BUDGET_S = 30.0
MAX_CONTROL_PATH_CHARS = 100  # a unix socket path has about 104 bytes; %C adds 40
_UNREACHABLE = ("connection refused", "connection timed out", "operation timed out",
                "no route to host", "could not resolve hostname",
                "name or service not known", "temporary failure in name resolution",
                "network is unreachable", "during banner exchange")
_CONNECTION_LOST = ("connection reset", "closed by remote host", "connection closed by",
                    "broken pipe", "server not responding")
_AUTH_REFUSED = ("permission denied", "too many authentication failures")
_KEY_CHANGED = ("remote host identification has changed",)
_KEY_UNKNOWN = ("host key verification failed", "host key is known",
                "no matching host key")


@dataclass(frozen=True, slots=True, kw_only=True)
class SshTarget:
    """A declared host, ``user@host[:port]`` (user and port optional: ssh config's)."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}" + (f":{self.port}" if self.port else "")


def parse_target(text: str, *, setting: str) -> SshTarget:
    """``user@host[:port]`` as a target.

    Raises:
        ConfigError: anything else (an option-like ``-oProxyCommand=...`` among them).
    """
    found = _TARGET.fullmatch(text.strip())
    port = int(found["port"]) if found and found["port"] else None
    if found is None or (port is not None and not 0 < port < 65536):
        raise ConfigError(
            f"local setting {setting} = {text!r} is not an SSH host. To fix: write it as "
            "user@host or user@host:port (a host name, an address, or a Host alias of the "
            "worker's ~/.ssh/config).")
    return SshTarget(host=found["host"], user=found["user"], port=port)


@dataclass(frozen=True, slots=True, kw_only=True)
class SshOptions:
    """How the worker runs ``ssh``: settings shared by every declared host."""

    options: tuple[str, ...] = ()  # the ``ssh_options`` setting, split like a shell
    identity_file: str | None = None
    connect_timeout_s: float = 10.0
    control_dir: Path | None = None  # default: ``default_control_dir()``
    control_persist_s: int = 60


def default_control_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_RUNTIME_DIR/greenplace-ssh``, else ``~/.cache/greenplace/ssh``."""
    env = os.environ if environ is None else environ
    runtime = env.get("XDG_RUNTIME_DIR", "").strip()
    return Path(runtime) / "greenplace-ssh" if runtime else (
        Path.home() / ".cache" / "greenplace" / "ssh")


def _private_dir(path: Path) -> Path:
    """``path``, created 0700, refused unless this user owns it and nobody else may write
    it: another user's folder could hold a socket that hijacks the connections."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot create the ssh control folder {path} ({exc}). To fix: set "
                          "GREENPLACE_LOCAL_CONTROL_DIR to a folder the worker may write."
                          ) from exc
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"the ssh control folder {path} belongs to another user or others "
                          "may write it. To fix: point GREENPLACE_LOCAL_CONTROL_DIR at a "
                          "folder only the worker's user may write (mode 0700).")
    if len(str(path)) + 41 > MAX_CONTROL_PATH_CHARS:
        raise ConfigError(f"the ssh control folder {path} is too long a path for ssh's "
                          "control socket. To fix: set GREENPLACE_LOCAL_CONTROL_DIR to a "
                          "shorter path (e.g. /run/user/UID/gp).")
    return path


class Host(Protocol):
    """Where one region's jobs run: answers the operations of ``local_ops``."""

    @property
    def label(self) -> str:
        """The host as messages name it."""
        ...

    @property
    def ssh(self) -> str | None:
        """The SSH target a handle records, None for this machine."""
        ...

    def call(self, operation: str, request: Mapping[str, Any], *,
             purpose: str) -> dict[str, Any]:
        """The answer of ``local_ops.OPERATIONS[operation]`` on this host.

        ``purpose`` is the provider operation it serves (``submit``, ``status``, ...),
        which decides how a failure to reach the host is classified.
        """
        ...


@dataclass(frozen=True, slots=True)
class ThisMachine:
    """The worker's own machine: the operations run in this process."""

    root: Path

    @property
    def label(self) -> str:
        return "this machine"

    @property
    def ssh(self) -> str | None:
        return None

    def call(self, operation: str, request: Mapping[str, Any], *,
             purpose: str) -> dict[str, Any]:
        return local_ops.OPERATIONS[operation]({**request, "root": str(self.root)})


@functools.cache
def _program_source() -> str:
    return Path(local_ops.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class SshHost:
    """A declared host: the operations run there through ``ssh TARGET python3 -``."""

    target: SshTarget
    root: str  # on that host; "" for its default (``local_ops.default_root`` there)
    options: SshOptions

    @property
    def label(self) -> str:
        return str(self.target)

    @property
    def ssh(self) -> str | None:
        return str(self.target)

    def argv(self, *remote: str) -> list[str]:
        """The ssh command line running ``remote`` on the host.

        Design choice: the ``ssh_options`` setting comes first, since ssh keeps the first
        value it reads for an option: the operator's choice beats these defaults.
        """
        control_dir = _private_dir(self.options.control_dir or default_control_dir())
        args = ["ssh", *self.options.options]
        if self.options.identity_file:
            args += ["-i", os.path.expanduser(self.options.identity_file),
                     "-o", "IdentitiesOnly=yes"]
        args += ["-o", "BatchMode=yes",
                 "-o", f"ConnectTimeout={max(1, round(self.options.connect_timeout_s))}",
                 "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3",
                 "-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C",
                 "-o", f"ControlPersist={self.options.control_persist_s}"]
        if self.target.port:
            args += ["-p", str(self.target.port)]
        if self.target.user:
            args += ["-l", self.target.user]
        return [*args, "--", self.target.host.strip("[]"), *remote]

    def call(self, operation: str, request: Mapping[str, Any], *,
             purpose: str) -> dict[str, Any]:
        body = json.dumps({**request, "root": self.root})
        program = f"{_program_source()}\nmain({operation!r}, {body!r})\n"
        timeout_s = self.options.connect_timeout_s + OPERATION_BUDGET_S + float(
            request.get("grace_s") or 0)
        try:
            done = subprocess.run(self.argv("python3", "-"), input=program.encode(),
                                  capture_output=True, timeout=timeout_s, check=False)
        except FileNotFoundError as exc:
            raise provider_error(
                InvalidRequestError, f"the local provider reaches {self.label} with the "
                "system ssh client, which is not on the worker's PATH", provider=NAME,
                operation=purpose, code="SshMissing",
                fix="install OpenSSH's client (Debian: apt-get install openssh-client)"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise provider_error(
                TransientError, f"ssh to {self.label} did not answer {operation} within "
                f"{timeout_s:g} s", provider=NAME, operation=purpose, code="SshTimeout",
                fix="the queue retries; check the host's load and network") from exc
        stderr = done.stderr.decode("utf-8", "replace")
        if done.returncode == 255:
            raise ssh_error(self.target, stderr, operation=purpose)
        lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if done.returncode == 0 and lines else None
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            return answer
        raise _remote_failure(self.label, done.returncode, stderr, operation=purpose)


def _remote_failure(label: str, returncode: int, stderr: str, *,
                    operation: str) -> ProviderError:
    """The host was reached, but its python3 failed or is missing."""
    last = " ".join(stderr.strip().splitlines()[-1:]) or "no message"
    if returncode == 127:
        return provider_error(
            InvalidRequestError, f"{label} has no python3 on the PATH of a non-interactive "
            f"ssh login ({last})", provider=NAME, operation=operation,
            code="RemotePythonMissing",
            fix=f"install python3 (3.8 or later) on {label}; the local provider runs its "
                "folder operations there with it")
    return provider_error(
        TransientError, f"the {operation} operation failed on {label} (exit "
        f"{returncode}: {last})", provider=NAME, operation=operation,
        code="RemoteOperationFailed",
        fix=f"the queue retries; check the disk and the remote root on {label}")


def ssh_error(target: SshTarget, stderr: str, *, operation: str) -> ProviderError:
    """The error of an ssh run that exited 255 (ssh's own failure), classified."""
    text = " ".join(line for line in stderr.strip().splitlines()
                    if not line.startswith("Warning: Permanently added"))
    lower = text.lower()
    port = f"-p {target.port} " if target.port else ""
    login = f"{target.user}@{target.host}" if target.user else target.host

    def has(patterns: tuple[str, ...]) -> bool:
        return any(p in lower for p in patterns)

    if has(_KEY_CHANGED):
        return provider_error(
            AuthError, f"the host key of {target} has changed since the worker's known_hosts "
            f"recorded it: {text}", provider=NAME, operation=operation,
            code="SshHostKeyChanged",
            fix=f"a changed key may be an attack: confirm the new key with the host's "
                f"administrator, then replace the old entry (`ssh-keygen -R {target.host}`)")
    if has(_KEY_UNKNOWN):
        return provider_error(
            AuthError, f"the host key of {target} is not in the worker's known_hosts, and "
            f"ssh runs in batch mode (it never asks): {text}", provider=NAME,
            operation=operation, code="SshHostKeyUnknown",
            fix=f"check the host's key fingerprint with its administrator, then add it to "
                f"the worker user's ~/.ssh/known_hosts (`ssh-keyscan {port}{target.host} "
                ">> ~/.ssh/known_hosts`), or set ssh_options to "
                "'-o StrictHostKeyChecking=accept-new' to trust a first key")
    if has(_AUTH_REFUSED):
        return provider_error(
            AuthError, f"{target} refused the worker's ssh login: {text}", provider=NAME,
            operation=operation, code="SshAuthRefused",
            fix=f"`ssh -o BatchMode=yes {port}{login} true` must succeed as the worker's user: "
                "add its public key to that account's ~/.ssh/authorized_keys, load the key "
                "into the worker's ssh-agent or ssh config, or set identity_file "
                "(GREENPLACE_LOCAL_IDENTITY_FILE) to the key's path")
    if has(_UNREACHABLE):
        cls: type[ProviderError] = CapacityError if operation == "submit" else TransientError
        then = {"submit": "greenplace fails over to the next candidate of the placement",
                "logs": "run the command again once the host is back",
                "check_credentials": "check again once the host is back",
                }.get(operation, "the queue retries")
        return provider_error(
            cls, f"host {target} is unreachable: {text}", provider=NAME, operation=operation,
            code="HostUnreachable",
            fix=f"{then}; check that the host is up and that `ssh {port}{login} true` works "
                "from the worker's machine")
    if has(_CONNECTION_LOST):
        return provider_error(
            TransientError, f"the ssh connection to {target} was lost: {text}",
            provider=NAME, operation=operation, code="SshConnectionLost",
            fix="the queue retries (the call is idempotent); check the network to the host")
    return provider_error(
        InvalidRequestError, f"ssh to {target} failed: {text or 'no message'}",
        provider=NAME, operation=operation, code="SshFailed",
        fix="check the ssh_options and identity_file settings and the worker's ~/.ssh/config "
            f"by running `ssh -o BatchMode=yes {port}{login} true` as the worker's user")


def ssh_options_from(settings: Mapping[str, str]) -> SshOptions:
    """The ssh settings (``ssh_options``, ``identity_file``, ``connect_timeout_s``,
    ``control_dir``, ``control_persist_s``) of the provider's merged settings.

    Raises:
        ConfigError: ``ssh_options`` that do not split like a shell line, or times that
            are not positive numbers.
    """
    from greenplace.providers.settings import number_setting

    try:
        options = tuple(shlex.split(settings.get("ssh_options", "")))
    except ValueError as exc:
        raise ConfigError(f"local ssh_options {settings['ssh_options']!r} do not split like a "
                          f"shell line ({exc}). To fix: quote them as on a command line, "
                          "e.g. \"-o StrictHostKeyChecking=accept-new\".") from exc
    control = settings.get("control_dir")
    return SshOptions(
        options=options, identity_file=settings.get("identity_file") or None,
        connect_timeout_s=number_setting("local", settings, "connect_timeout_s", 10.0,
                                         minimum=1),
        control_dir=Path(control).expanduser() if control else None,
        control_persist_s=int(number_setting("local", settings, "control_persist_s", 60,
                                             minimum=1)))
