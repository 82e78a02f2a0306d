"""The leak sweep: delete every greenplace-managed instance whose job no longer needs it.

Reconcile deletes each job's instance when the job ends, and each superseded
attempt's instance when it is superseded. The sweep is the backstop for what a
crash between two steps, a lost answer or an edit by hand can still leave: it
lists, per (provider, region), every instance tagged ``greenplace:managed``
(``Provider.list_managed``, one call each) and deletes those whose job is final,
unknown to the store, or at a later attempt than the instance's.

Design choice: an instance is kept while its job may still be launching it (the
job is DISPATCHING at that attempt or earlier), so the sweep can run at any time
beside a live service without racing a launch whose handle is not stored yet.
One store per cloud account: the sweep of a second greenplace deployment on the
same account would see this one's instances as belonging to unknown jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from greenplace.providers.base import InstanceState, ManagedInstance, Provider
from greenplace.scheduler.exceptions import GreenplaceError, RegionRefusedError
from greenplace.scheduler.store import FINAL_STATES, JobRecord, JobStore

log = logging.getLogger("greenplace.gc")

GONE = frozenset({InstanceState.TERMINATED, InstanceState.MISSING})


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepRow:
    """What the sweep found for one instance (or one region it could not list)."""

    provider: str
    region: str
    instance_id: str | None
    job_id: str | None
    job_state: str | None
    instance_state: str | None
    action: str  # kept | deleted | deleting | would delete | gone | skipped | error
    reason: str

    def as_json(self) -> dict[str, str | None]:
        return {"provider": self.provider, "region": self.region,
                "instance_id": self.instance_id, "job_id": self.job_id,
                "job_state": self.job_state, "instance_state": self.instance_state,
                "action": self.action, "reason": self.reason}


def why_delete(instance: ManagedInstance, record: JobRecord | None) -> str | None:
    """Why ``instance`` must go, or None while its job may still need it."""
    if instance.job_id is None:
        return "it carries no greenplace:job-id tag"
    if record is None:
        return f"job {instance.job_id} is unknown to this store"
    if record.state in FINAL_STATES:
        return f"its job is {record.state}"
    if instance.attempt is not None and instance.attempt < record.attempt:
        return (f"attempt {instance.attempt} was superseded (the job is at attempt "
                f"{record.attempt})")
    return None  # the current attempt's instance, possibly still being launched


def sweep(store: JobStore, providers: Mapping[str, Provider],
          targets: Iterable[tuple[str, str]], *, dry_run: bool) -> list[SweepRow]:
    """List each (provider, region) of ``targets`` once and delete what no job needs.

    ``providers`` maps provider names to adapters; a target whose provider is not
    in it is reported as skipped.
    """
    rows: list[SweepRow] = []
    for provider_name, region in targets:
        provider = providers.get(provider_name)
        if provider is None:
            rows.append(_region_row(provider_name, region, "skipped",
                                    "no adapter is configured under that name"))
            continue
        try:
            instances = provider.list_managed(region)
        except RegionRefusedError as exc:
            rows.append(_region_row(provider_name, region, "skipped",
                                    f"the region is not enabled for the account: {exc}"))
            continue
        except GreenplaceError as exc:
            rows.append(_region_row(provider_name, region, "error", str(exc)))
            continue
        ids = sorted({i.job_id for i in instances if i.job_id})
        records = {r.job_id: r for r in store.get_many(ids)}
        for instance in instances:
            record = records.get(instance.job_id or "")
            rows.append(_judge(provider, instance, record, dry_run=dry_run))
    return rows


def _judge(provider: Provider, instance: ManagedInstance, record: JobRecord | None, *,
           dry_run: bool) -> SweepRow:
    def row(action: str, reason: str) -> SweepRow:
        return SweepRow(provider=provider.name, region=instance.handle.region,
                        instance_id=instance.handle.instance_id, job_id=instance.job_id,
                        job_state=str(record.state) if record else None,
                        instance_state=str(instance.status.state), action=action,
                        reason=reason)

    reason = why_delete(instance, record)
    if reason is None:
        assert record is not None
        return row("kept", f"its job is {record.state} at attempt {record.attempt}")
    if instance.status.state in GONE:
        return row("gone", reason)
    if dry_run:
        return row("would delete", reason)
    try:
        gone = provider.delete(instance.handle)
    except GreenplaceError as exc:
        log.warning("gc: deleting %s failed: %s", instance.handle.instance_id, exc)
        return row("error", f"{reason}; deleting failed: {exc}")
    return row("deleted" if gone else "deleting", reason)


def _region_row(provider: str, region: str, action: str, reason: str) -> SweepRow:
    return SweepRow(provider=provider, region=region, instance_id=None, job_id=None,
                    job_state=None, instance_state=None, action=action, reason=reason)


__all__ = ["SweepRow", "sweep", "why_delete"]
