"""The Provider seam: one protocol every cloud adapter implements, and its data types.

A placed job becomes a ``LaunchRequest`` through ``prepare()`` (pure, no side
effect: the dry run prints it), then an ``InstanceHandle`` through ``submit()``
with an idempotency key derived from job id + attempt. ``status()`` and
``cancel()`` follow the instance afterwards.

Optional capabilities are declared data (``features``), checked up front by
``missing_features``; no adapter has a method that only raises NotImplementedError.

Errors: adapters wrap their SDK's errors (``raise ... from exc``) into the
ProviderError subclasses of ``greenplace.scheduler.exceptions`` with provider, operation
and the cloud's own error code attached.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
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


class InstanceState(StrEnum):
    """Provider-neutral instance states that reconcile maps onto job states."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the job's command exited 0 (or the instance stopped cleanly)
    FAILED = "failed"
    PREEMPTED = "preempted"  # a spot instance was reclaimed
    TERMINATED = "terminated"  # cancelled / deleted
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


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchRequest:
    """The exact request an adapter will send; JSON-serialisable, free of secrets."""

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
    state: InstanceState
    detail: str = ""


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
        """Launch, or find the instance an earlier call with the same key launched."""
        ...

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        """The instance's current state."""
        ...

    def cancel(self, handle: InstanceHandle) -> None:
        """Terminate the instance; a no-op when it is already gone."""
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
    """The boot script: run the job's command, log its exit status, then power off.

    Design choice: the instance powers itself off when the command ends so that it
    stops billing for compute. On EC2 the adapter sets shutdown to terminate; a GCE
    VM that powers off stops (its boot disk stays until the instance is deleted); an
    Azure VM shut down from inside stays allocated until it is deallocated or deleted
    (``cancel``). The exit status is only in the console log: a clean power-off reads
    as SUCCEEDED whatever the command returned.
    """
    quoted = job.run.replace("'", "'\"'\"'")
    return (
        "#!/bin/bash\n"
        "set -uo pipefail\n"
        f"export GREENPLACE_JOB_ID='{job.job_id}'\n"
        f"bash -lc '{quoted}'\n"
        "status=$?\n"
        "echo \"greenplace: job exited with $status\"\n"
        "sync\n"
        "shutdown -h now\n"
    )


__all__ = [
    "Feature", "InstanceHandle", "InstanceState", "InstanceStatus", "JobLaunch", "LaunchRequest",
    "Placement", "Provider", "ProviderError", "idempotency_key", "job_tags", "missing_features",
    "request_uuid", "short_token", "startup_script",
]
