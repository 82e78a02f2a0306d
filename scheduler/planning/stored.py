"""A batch plan as the service keeps it (``submit --plan``), and how a worker follows it.

``plan_document`` turns a ``Plan`` into the JSON stored once per batch under its plan id
(``JobStore.create(plan=...)``, shown by ``GET /v1/plans/{id}``): the summary (solver,
status, objective, bound, gap), per job its planned offer and start (with the job id it got),
the pools' per-hour use and limits, and the pools' definitions (``pool_defs``: what a
re-plan binds again, ``planning/replan.py``) with the revision number (0 until the batch is
re-planned). ``job_part`` is the slice of it each job record keeps
(``JobRecord.plan``), so a worker reads its own record only.

``follow_plan`` is the worker's side. Design choice: the worker still runs the placement
pipeline for a planned job (as ``place`` does for every job), so the record's frozen ranking
is the fresh one and failover has every feasible candidate to go to; then the plan's offer
is moved to the front of that ranking and the decision's start is the planned start (no
temporal shift of the worker's own: the plan chose the hour). A planned start still ahead
makes the job DEFERRED by the mechanism temporal shifting uses, so reconcile releases it
when its hour comes. Should the planned offer have become infeasible since the plan (its
price gone, its region refused), the pipeline's own ranking stands and a note says so.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from greenplace.scheduler.placement.decision import PlacementDecision
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.plan import Plan, job_rows, pool_rows, summary


def plan_document(plan: Plan, *, plan_id: str, team: str, job_ids: Sequence[str],
                  notes: Sequence[str], created_at: dt.datetime) -> dict[str, Any]:
    """The stored plan: id, team, hour 0, summary, per job its row with its job id, the
    pools."""
    totals = summary(plan)
    totals["notes"] += list(notes)
    return {"plan_id": plan_id, "team": team, "created_at": created_at.isoformat(),
            "start": plan.now.isoformat(), "summary": totals,
            "jobs": planned_rows(plan, job_ids), "pools": pool_rows(plan),
            "pool_defs": [pool_definition(p) for p in plan.problem.pools], "revision": 0}


def planned_rows(plan: Plan, job_ids: Sequence[str]) -> list[dict[str, Any]]:
    """``job_rows`` with each job's id and, for a placed job, the whole hours its run holds
    its pools (``duration_h``: what a re-plan subtracts for a job that keeps its run)."""
    rows = job_rows(plan)
    duration_h = plan.problem.options.duration_h
    for j, (row, job_id) in enumerate(zip(rows, job_ids, strict=True)):
        row["job_id"] = job_id
        k = int(plan.chosen_of_job[j])
        if k >= 0:
            row["duration_h"] = int(duration_h[k])
    return rows


def pool_definition(pool: CapacityPool) -> dict[str, Any]:
    """A capacity pool as JSON (``pool_from_definition`` reads it back)."""
    return {"cloud": pool.cloud, "region": pool.region, "unit": pool.unit.value,
            "accelerators": list(pool.accelerators), "instance_types": list(pool.instance_types),
            "spot": pool.spot, "limit": pool.limit, "hourly_limits": list(pool.hourly_limits),
            "source": pool.source}


def pool_from_definition(d: Mapping[str, Any]) -> CapacityPool:
    """The pool ``pool_definition`` wrote."""
    return CapacityPool(cloud=d["cloud"], region=d["region"], unit=Unit(d["unit"]),
                        accelerators=tuple(d["accelerators"]),
                        instance_types=tuple(d["instance_types"]), spot=d["spot"],
                        limit=int(d["limit"]), hourly_limits=tuple(d["hourly_limits"]),
                        source=d["source"])


def job_part(document: Mapping[str, Any], index: int, *,
             revision: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What job ``index`` of the plan keeps in its record: the plan id, the solver's figures,
    and its planned offer and start, or why the plan left it out. ``revision``: the re-plan
    (``document["revisions"]`` entry) that gave the row, whose solver figures then stand."""
    row = document["jobs"][index]
    s = document["summary"] if revision is None else revision["summary"]
    part: dict[str, Any] = {"plan_id": document["plan_id"], "planned": row["status"],
                            "solver": s["solver"], "solver_status": s["status"],
                            "objective": s["objective"], "bound": s["bound"],
                            "gap_pct": s["gap_pct"]}
    if revision is not None:
        part["revision"] = revision["revision"]
    if row["status"] == "placed":
        part.update({k: row[k] for k in ("cloud", "region", "instance_type", "start_hour",
                                         "start_at")})
    else:
        part.update(binding=row["binding"], reasons=row["reasons"][:10])
    return part


def left_reason(part: Mapping[str, Any]) -> str:
    """The UNSCHEDULABLE reason of a job its plan left out."""
    reasons = "; ".join(part.get("reasons") or []) or "no reason given"
    return (f"the batch plan {part['plan_id']} left it out (binding: {part['binding']}): "
            f"{reasons}")


def follow_plan(decision: PlacementDecision, part: Mapping[str, Any], *,
                now: dt.datetime) -> PlacementDecision:
    """``decision`` with the planned offer first in its ranking and the planned start (None
    once it has come); see the module docstring. ``part``: a placed job's ``job_part``."""
    ranking = decision.ranking.tolist()
    wanted = (part["cloud"], part["region"], part["instance_type"])
    found = []
    for i in ranking:
        offer = decision.arrays.offers[int(decision.offer_index[i])]
        if (offer.cloud, offer.region, offer.instance_type) == wanted:
            found.append(i)
    start = dt.datetime.fromisoformat(part["start_at"])
    start_at = start.isoformat() if start > now else None
    where = f"{part['cloud']}:{part['region']} {part['instance_type']}"
    if not found:
        note = (f"batch plan {part['plan_id']}: its offer {where} is no longer feasible; "
                "placed by the pipeline's own ranking")
        return dataclasses.replace(decision, start_at=start_at,
                                   extra_notes=(*decision.extra_notes, note))
    first = found[0]
    reordered = np.array([first, *(i for i in ranking if i != first)],
                         dtype=decision.ranking.dtype)
    note = (f"batch plan {part['plan_id']}: {where} from hour {part['start_hour']} "
            f"({part['start_at']})")
    return dataclasses.replace(decision, ranking=reordered, start_at=start_at,
                               extra_notes=(*decision.extra_notes, note))
