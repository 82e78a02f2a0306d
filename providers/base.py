"""The Provider seam: one protocol every cloud adapter implements, and its data types.

A placed job becomes a ``LaunchRequest`` through ``prepare()`` (pure, no side
effect: the dry run prints it), then an ``InstanceHandle`` through ``submit()``
with an idempotency key derived from job id + attempt. ``status()`` follows the
instance afterwards, ``list_managed()`` lists every greenplace instance of a
region in one call, and ``delete()`` removes an instance with everything
greenplace created for it.

The life of a launch, the same on every cloud:

1. ``submit()`` answers within ``LAUNCH_WAIT_S`` (plus one HTTP round trip): a
   cloud that creates asynchronously (GCE operations, ARM long-running
   operations, an OpenStack server in BUILD) gives back a PENDING handle that
   carries what the adapter needs to follow the operation (``extra``).
2. ``status()`` follows it. An asynchronous refusal (a stockout, an
   ``AllocationFailed``, an ERROR node) is ``LAUNCH_FAILED`` with the error
   classified exactly as a synchronous one would be; an adapter that can try
   another zone of the same region itself does so and returns the new handle in
   ``InstanceStatus.handle`` (still PENDING). ``status()`` does not delete what a
   refused launch left: it keeps answering LAUNCH_FAILED, and the queue, which
   records the refusal and queues the handle for deletion in one pass, calls
   ``delete()``; a worker that dies in between reads the same answer again.
3. The boot script prints ``EXIT_MARKER<code>`` on the serial console when the
   command ends, then powers off. ``status()`` of a powered-off instance is
   ``EXITED`` with ``exit_code`` read back from the console (None while the
   cloud has not published it yet).
4. Whatever the end, the queue calls ``delete()`` until it returns True.

Optional capabilities are declared data (``features``), checked up front by
``missing_features``; no adapter has a method that only raises NotImplementedError.

Errors: adapters wrap their SDK's errors (``raise ... from exc``) into the
ProviderError subclasses of ``greenplace.scheduler.exceptions`` with provider, operation
and the cloud's own error code attached.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from greenplace.scheduler.exceptions import ProviderError

# Namespace for UUID5 request ids derived from idempotency keys (GCE requestId).
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c7f0e-4b8a-5a44-9c1e-2b7a8d0c5e11")


class Feature(StrEnum):
    """Capabilities an adapter may or may not have."""

    SPOT = "spot"
    CANCEL = "cancel"
    TAGS = "tags"
    STARTUP_SCRIPT = "startup_script"
    IDEMPOTENT_SUBMIT = "idempotent_submit"


# The longest an adapter waits on one cloud operation inside a call (submit,
# status, delete). Anything slower is followed by later status() / delete() calls,
# so no queue task blocks on a cloud for longer than a few seconds.
LAUNCH_WAIT_S = 5.0

# The most bytes of boot script (user data) each adapter's cloud accepts, counted raw
# (before the base64 some APIs ask for), from the clouds' API references: EC2 user data
# 16 KB; Azure customData decodes to at most 65,535 bytes; a GCE metadata value holds
# 262,144 bytes; OpenStack's user_data is at most 65,535 bytes once base64-encoded (3/4
# of that raw), the tighter of libcloud's two profiled drivers (DigitalOcean: 64 KiB).
# Kept here, not in each adapter, so that the jobs-file limit on `run`
# (``scheduler.limits``) is derived from them without importing any cloud SDK.
USER_DATA_LIMITS_BYTES: Mapping[str, int] = MappingProxyType({
    "aws": 16 * 1024,
    "azure": 65_535,
    "gcp": 256 * 1024,
    "libcloud": 65_535 * 3 // 4,
})

# What the boot script prints on the serial console when the job's command ends.
EXIT_MARKER = "greenplace-exit-code="
_EXIT_LINE = re.compile(re.escape(EXIT_MARKER) + r"(\d{1,3})\b")


class InstanceState(StrEnum):
    """Provider-neutral instance states that reconcile maps onto job states."""

    PENDING = "pending"  # accepted: creating, booting, or an operation still running
    RUNNING = "running"
    EXITED = "exited"  # powered itself off after the command: see InstanceStatus.exit_code
    LAUNCH_FAILED = "launch_failed"  # the cloud refused the launch after accepting it
    FAILED = "failed"  # the machine failed (host error), not the command
    PREEMPTED = "preempted"  # a spot instance was reclaimed
    TERMINATED = "terminated"  # deleted or stopped through the API
    MISSING = "missing"  # the provider no longer knows the instance


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where a job goes: one ranked candidate of its PlacementDecision."""

    cloud: str
    region: str
    instance_type: str
    accelerator: str
    accelerator_count: int
    spot: bool
    price_usd_per_hour: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobLaunch:
    """The job facts a provider needs (ids and the command, never credentials)."""

    job_id: str
    name: str
    run: str
    policy: str
    attempt: int
    agent: AgentAccess | None = None  # where the job's agent reports, when an API is set


# What the boot script installs to run the job under ``greenplace agent``
# (GREENPLACE_AGENT_PACKAGE: a pip requirement, a wheel URL or ``--index-url URL NAME``).
DEFAULT_AGENT_PACKAGE = "greenplace"
AGENT_VENV = "/opt/greenplace-agent"


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentAccess:
    """The API a job's agent reports to, and the token scoped to that job's telemetry.

    The token is the one secret a boot script carries: it may only post this job's
    telemetry, and it expires when unused (``scheduler/tokens.py``). ``repr`` hides it.
    """

    api_url: str
    token: str = field(repr=False)
    package: str = DEFAULT_AGENT_PACKAGE  # the pip requirement (or wheel URL) of greenplace


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRequest:
    """The exact request an adapter will send; JSON-serialisable, free of credentials.

    Its startup script may carry the job's agent token (``JobLaunch.agent``): scoped to
    that job's telemetry and expiring, it is the one secret a machine is handed. A dry
    run's request never has one.
    """

    provider: str
    cloud: str
    region: str
    instance_type: str
    spot: bool
    tags: dict[str, str]
    startup_script: str
    payload: dict[str, Any] = field(default_factory=dict)  # the cloud's own request body


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceHandle:
    """What identifies a launched instance at its provider. Stored in the job record."""

    provider: str
    cloud: str
    region: str
    instance_id: str
    zone: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStatus:
    """What ``status()`` found.

    Attributes:
        exit_code: for EXITED, the command's exit code read back from the
            console; None while it cannot be read (yet).
        error: for LAUNCH_FAILED, the classified error (CapacityError and
            QuotaError fail over, like a synchronous refusal).
        handle: a replacement handle when the adapter moved the launch on by
            itself (the next zone of the region after a stockout).
        measurement: for EXITED, the job's agent summary when the adapter can read it
            (the ``local`` provider's job folder); reconcile validates and keeps it.
    """

    state: InstanceState
    detail: str = ""
    exit_code: int | None = None
    error: ProviderError | None = None
    handle: InstanceHandle | None = None
    measurement: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagedInstance:
    """One instance carrying the ``greenplace:managed`` tag, as a region list shows it.

    ``status`` comes from the list call alone: no exit code (reading it costs a
    call per instance; ``status()`` does that for the finished ones).
    """

    handle: InstanceHandle
    job_id: str | None
    attempt: int | None
    status: InstanceStatus


@runtime_checkable
class Provider(Protocol):
    """A cloud (or the local simulator) that can launch and follow instances."""

    name: str
    features: frozenset[Feature]

    def check_credentials(self) -> str:
        """Verify usable credentials through the SDK's default chain.

        Returns a description of the identity (never a secret). Raises AuthError.
        """
        ...

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        """Build the exact launch request. Pure: no network, no side effect."""
        ...

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Launch, or find the instance an earlier call with the same key launched.

        Returns within ``LAUNCH_WAIT_S`` plus a round trip, possibly with the
        launch still in progress (see the module docstring).
        """
        ...

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        """The instance's current state (follows a pending launch; reads the exit code)."""
        ...

    def list_managed(self, region: str) -> list[ManagedInstance]:
        """Every instance tagged ``greenplace:managed`` in ``region``, in one list call
        (or one per page), whatever its state."""
        ...

    def delete(self, handle: InstanceHandle) -> bool:
        """Delete the instance and what greenplace created for it (disk, NIC, address).

        Idempotent. Returns True once the cloud confirms nothing of it is left,
        False while a deletion is still in progress (call again later).
        """
        ...


def missing_features(provider: Provider, needed: set[Feature]) -> list[Feature]:
    """Every needed feature the provider lacks, sorted, so all are reported at once."""
    return sorted(needed - provider.features)


def idempotency_key(job_id: str, attempt: int) -> str:
    """The key for one launch attempt of one job: stable across redeliveries."""
    return f"gp-{job_id}-a{attempt}"


def short_token(key: str, length: int = 32) -> str:
    """A stable hex token of ``key`` for clouds that limit token length or charset."""
    return hashlib.sha256(key.encode()).hexdigest()[:length]


def request_uuid(key: str) -> str:
    """A UUID5 of ``key`` (GCE ``requestId`` wants a UUID)."""
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, key))


def job_tags(job: JobLaunch) -> dict[str, str]:
    """The tags / labels every adapter puts on what it creates."""
    return {
        "greenplace:job-id": job.job_id,
        "greenplace:attempt": str(job.attempt),
        "greenplace:policy": job.policy,
        "greenplace:managed": "true",
    }


def startup_script(job: JobLaunch) -> str:
    """The boot script: run the job's command, print its exit code on the serial
    console, then power off.

    Design choice: the serial console is the one channel every cloud publishes
    without an agent (EC2 GetConsoleOutput, GCE getSerialPortOutput, Azure boot
    diagnostics, OpenStack os-getConsoleOutput). The instance powers itself off so
    that it stops computing; greenplace then reads the code and deletes the
    instance (an Azure VM shut down from inside stays allocated and billed until
    it is deleted).
    """
    quoted = _quoted(job.run)
    agent = "" if job.agent is None else (
        f"export GREENPLACE_API_URL='{_quoted(job.agent.api_url)}'\n"
        f"export GREENPLACE_AGENT_TOKEN='{_quoted(job.agent.token)}'\n")
    return (
        "#!/bin/bash\n"
        "set -uo pipefail\n"
        f"export GREENPLACE_JOB_ID='{job.job_id}'\n"
        f"{agent}"
        f"run='{quoted}'\n"
        f"{_run_lines(job.agent)}"
        "status=$?\n"
        f"line=\"{EXIT_MARKER}$status\"\n"
        "echo \"$line\"\n"
        "for console in /dev/ttyS0 /dev/console; do\n"
        "  [ -w \"$console\" ] && echo \"$line\" > \"$console\"\n"
        "done\n"
        "sync\n"
        "shutdown -h now\n"
    )


def _run_lines(agent: AgentAccess | None) -> str:
    """The lines that run ``$run``: under ``greenplace agent`` when an API is set.

    Design choice: the agent is installed into its own venv (nothing touches the image's
    Python), nvidia-ml-py beside it where the index has it (NVML is optional). When the
    install fails the command still runs, unmeasured, and a console line says why: a pip
    hiccup must not cost the user's training run. The command is written once, in ``run``,
    so it counts once in the boot script's size (``scheduler/limits.py``).
    """
    if agent is None:
        return 'bash -lc "$run"\n'
    venv = AGENT_VENV
    return (
        f"read -ra package <<< '{_quoted(agent.package)}'\n"  # its words, never globbed
        f'if python3 -m venv {venv} && {venv}/bin/pip install -q "${{package[@]}}"; then\n'
        f"  {venv}/bin/pip install -q nvidia-ml-py || true\n"
        f'  {venv}/bin/greenplace agent -- bash -lc "$run"\n'
        "else\n"
        '  echo "greenplace: the agent could not be installed; running unmeasured"\n'
        '  bash -lc "$run"\n'
        "fi\n")


def _quoted(text: str) -> str:
    """``text`` for the inside of a single-quoted shell word."""
    return text.replace("'", "'\"'\"'")


def exit_code_in(console_text: str) -> int | None:
    """The exit code the boot script printed (the last one), or None when absent."""
    found = _EXIT_LINE.findall(console_text)
    return int(found[-1]) if found else None


def managed_tags_of(tags: Mapping[str, str]) -> tuple[str | None, int | None]:
    """(job id, attempt) from greenplace tags or their cloud spellings (see each adapter)."""
    job_id = tags.get("greenplace:job-id")
    attempt = tags.get("greenplace:attempt")
    return job_id or None, int(attempt) if attempt and attempt.isdigit() else None


__all__ = [
    "AGENT_VENV", "DEFAULT_AGENT_PACKAGE", "EXIT_MARKER", "LAUNCH_WAIT_S",
    "USER_DATA_LIMITS_BYTES", "AgentAccess", "Feature", "InstanceHandle", "InstanceState",
    "InstanceStatus", "JobLaunch", "LaunchRequest", "ManagedInstance", "Placement", "Provider",
    "ProviderError", "exit_code_in", "idempotency_key", "job_tags", "managed_tags_of",
    "missing_features", "request_uuid", "short_token", "startup_script",
]
