"""Reports: estimated (and, once agents report, measured) energy, CO2e, cost and savings
against each job's baseline, in total, per group (team, policy or day) and per job.

A job counts once it launched (it has an instance handle): a job cancelled before launch
or never placed emitted nothing, and a report of "savings" must not count it. Figures are
those of the placement the job really got (``service.job_view``), so a failover to a
dirtier region shows as a smaller saving, not as the first choice's. Each job's savings
are split into the machine, map and mechanization levers (``scheduler/levers.py``); the
totals add the levers' kg up (``saved_kg_by_lever``), which sum to the total savings of
the jobs that have levers (jobs decided before the baseline kept its energy have none).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import UserInputError, shown
from greenplace.scheduler.levers import LEVERS
from greenplace.scheduler.service import JobFilter, PueOf, job_view, list_jobs, pue_lookup
from greenplace.scheduler.store import JobRecord, JobStore, iso
from greenplace.scheduler.tokens import Principal

GROUPS = ("team", "policy", "day")
FIGURES = ("energy_kwh_estimated", "co2e_kg_estimated", "cost_usd", "baseline_co2e_kg",
           "savings_co2e_kg", "energy_kwh_measured", "co2e_kg_measured")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportQuery:
    """Which launched jobs a report covers, and how it groups them."""

    where: JobFilter
    until: dt.datetime | None = None
    group_by: str | None = None

    def __post_init__(self) -> None:
        if self.group_by is not None and self.group_by not in GROUPS:
            raise UserInputError(f"group_by {shown(self.group_by)} is not known. To fix: use "
                                 f"one of {', '.join(GROUPS)}.")


def _totals(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": 0, **{name: 0.0 for name in FIGURES}}
    measured = 0
    levers_kg = dict.fromkeys(LEVERS, 0.0)
    for row in rows:
        out["jobs"] += 1
        measured += row["energy_kwh_measured"] is not None
        for name in FIGURES:
            out[name] += row[name] or 0.0
        for lever, part in (row["levers"] or {}).items():
            levers_kg[lever] += part["saved_kg"]
    for name in FIGURES:
        out[name] = round(out[name], 6)
    out["saved_kg_by_lever"] = {lever: round(kg, 6) for lever, kg in levers_kg.items()}
    out["jobs_measured"] = measured
    if not measured:  # no agent reported: "nothing measured", not "measured zero"
        out["energy_kwh_measured"] = out["co2e_kg_measured"] = None
    return out


def _group_key(row: dict[str, Any], group_by: str) -> str:
    return str(row["created_at"][:10] if group_by == "day" else row[group_by])


def report(store: JobStore, principal: Principal, catalog: Catalog, *,
           query: ReportQuery) -> dict[str, Any]:
    """Totals, groups (sorted by key) and per-job rows of the launched jobs in ``query``."""
    pue_of = pue_lookup(catalog)
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = list_jobs(store, principal, where=query.where, limit=500, cursor=cursor)
        rows.extend(_row(r, store, pue_of) for r in page.records if _counts(r, query))
        cursor = page.next_cursor
        if cursor is None:
            break
    rows.sort(key=lambda r: (r["created_at"], r["job_id"]))
    out: dict[str, Any] = {"totals": _totals(rows), "jobs": rows}
    if query.group_by is not None:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(_group_key(row, query.group_by), []).append(row)
        out["group_by"] = query.group_by
        out["groups"] = [{"key": key, **_totals(members)}
                         for key, members in sorted(groups.items())]
    return out


def _counts(record: JobRecord, query: ReportQuery) -> bool:
    if record.handle is None or not record.decision:
        return False
    return query.until is None or record.created_at < iso(query.until)


def _row(record: JobRecord, store: JobStore, pue_of: PueOf) -> dict[str, Any]:
    candidates = store.explain(record.job_id) if record.target else None
    view = job_view(record, pue_of=pue_of, candidates=candidates)
    return {"job_id": record.job_id, "name": record.name, "team": record.team,
            "policy": record.policy_name, "state": str(record.state),
            "created_at": record.created_at, **{name: view[name] for name in FIGURES},
            "levers": view["levers"],
            "intensity_g_per_kwh_estimated": view["intensity_g_per_kwh_estimated"],
            "run_intensity_series": view["run_intensity_series"]}
