"""Re-planning the rest of a batch when a planned job's launch is refused (issue 13, part 3).

When the cloud refuses a planned job for capacity or quota on its planned offer, the plan's
assumption about that offer was wrong, and the jobs of the batch still waiting for their
planned start would walk into the same wall. The worker (``dispatch._replan``) then plans
again, from the current hour, the failing job and the batch's jobs still DEFERRED to a
planned start; this module holds the pure part of that: which pools the re-plan binds and
how the stored plan records the revision.

Design choices:

* The pools are the stored plan's own definitions (``pool_defs``), so the re-plan binds the
  same capacity file rows and quotas. From each, every hour, the units held by the batch's
  jobs that keep their runs (launched, launching, or about to: not re-planned and not ended)
  are subtracted, over the hours of their planned runs on the offer they really hold.
* The refused offer is *excluded* for the re-planned jobs (a pool of limit 0 on exactly that
  cloud, region, instance type and spot-or-not), rather than limited to what the batch has in
  use there: a refusal says the cloud has no more now, and the units already in use are the
  batch's running jobs, which the re-plan does not count anyway. Every offer refused in an
  earlier revision stays excluded (``excluded_offers``), so a revision never plans a job back
  onto an offer the cloud already refused for this batch.
* The budget left is the plan's budget less the planned cost of every job not re-planned.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.plan import Plan, pool_rows, summary
from greenplace.scheduler.planning.stored import planned_rows, pool_from_definition


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HeldRun:
    """A run of the batch that keeps its place: what it draws on, from when, how long."""

    offer: Offer
    spot: bool
    start_at: dt.datetime
    duration_h: int


def hours_between(earlier: dt.datetime, later: dt.datetime) -> int:
    """Whole hours from ``earlier`` to ``later`` (both on the hour in a plan), rounded."""
    return round((later - earlier).total_seconds() / 3600)


def revised_pools(document: Mapping[str, Any], *, now_h: dt.datetime,
                  held: Sequence[HeldRun],
                  excluded: Sequence[Mapping[str, Any]]) -> list[CapacityPool]:
    """The pools a re-plan from ``now_h`` binds: the plan's own, each hour less what the
    ``held`` runs use then, plus a pool of 0 per ``excluded`` offer (module docstring)."""
    origin = dt.datetime.fromisoformat(document["start"])
    offset_h = hours_between(origin, now_h)
    out: list[CapacityPool] = []
    for definition in document.get("pool_defs", []):
        pool = pool_from_definition(definition)
        spans = [(hours_between(now_h, run.start_at), run.duration_h,
                  pool.units_per_instance(run.offer, spot=run.spot)) for run in held]
        spans = [(begin, length, units) for begin, length, units in spans if units]
        hours = max([len(pool.hourly_limits) - offset_h, 0,
                     *(begin + length for begin, length, _ in spans)])
        hourly = []
        for h in range(hours):
            in_use = sum(units for begin, length, units in spans if begin <= h < begin + length)
            hourly.append(max(0, pool.limit_at(h + offset_h) - in_use))
        out.append(dataclasses.replace(
            pool, hourly_limits=tuple(hourly),
            source=f"{pool.source}; less the batch's runs that keep their place"))
    for offer in excluded:
        out.append(CapacityPool(
            cloud=offer["cloud"], region=offer["region"], unit=Unit.VCPUS,
            instance_types=(offer["instance_type"],), spot=offer["spot"], limit=0,
            source=f"refused by the cloud: {offer['why']}"))
    return out


def budget_left_usd(document: Mapping[str, Any], replanned: Sequence[str]) -> float | None:
    """The plan's budget less the planned cost of every placed job not re-planned."""
    budget = document["summary"].get("budget_usd")
    if budget is None:
        return None
    again = set(replanned)
    spent = sum(float(row.get("cost_usd", 0.0)) for row in document["jobs"]
                if row["status"] == "placed" and row["job_id"] not in again)
    return max(0.0, float(budget) - spent)


def revise_document(document: Mapping[str, Any], plan: Plan, *, job_ids: Sequence[str],
                    at: dt.datetime, why: str,
                    excluded: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The stored plan after re-planning ``job_ids`` (``plan``'s jobs, in its order): their
    rows replaced (each with the revision number), the revision number raised, and the
    revision kept in ``revisions`` (when, why, which jobs, the solver's summary and the
    pools' per-hour use against the limits the re-plan bound)."""
    revision = int(document.get("revision", 0)) + 1
    rows = planned_rows(plan, job_ids)
    position = {row["job_id"]: i for i, row in enumerate(document["jobs"])}
    jobs = list(document["jobs"])
    for row in rows:
        row["revision"] = revision
        jobs[position[row["job_id"]]] = row
    entry = {"revision": revision, "at": at.isoformat(), "why": why, "start": plan.now.isoformat(),
             "job_ids": list(job_ids), "excluded_offers": [dict(e) for e in excluded],
             "summary": summary(plan), "pools": pool_rows(plan)}
    return {**document, "jobs": jobs, "revision": revision,
            "excluded_offers": [dict(e) for e in excluded],
            "revisions": [*document.get("revisions", []), entry]}




def kept_old_rows(revised: Mapping[str, Any], before: Mapping[str, Any],
                  job_ids: Sequence[str]) -> dict[str, Any]:
    """``revised`` with the rows of ``job_ids`` put back as ``before`` had them: jobs the
    re-plan could not move (reconcile released them meanwhile, on their old plan). The
    revision lists them under ``kept_old_plan``; its pool figures still count them as
    re-planned, which the revision's record says."""
    if not job_ids:
        return dict(revised)
    old = {str(row["job_id"]): row for row in before["jobs"]}
    jobs = [old[str(row["job_id"])] if str(row["job_id"]) in job_ids else row
            for row in revised["jobs"]]
    revisions = [*revised["revisions"][:-1],
                 {**revised["revisions"][-1], "kept_old_plan": list(job_ids),
                  "kept_old_plan_note": "released on their old plan before the re-plan could "
                  "move them; the pools' use above counts them as re-planned"}]
    return {**revised, "jobs": jobs, "revisions": revisions}


__all__ = ["HeldRun", "budget_left_usd", "hours_between", "kept_old_rows", "revise_document",
           "revised_pools"]
