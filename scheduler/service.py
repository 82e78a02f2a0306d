"""The one service layer under the CLI and the HTTP API: submit, list, show, cancel.

Every rule about jobs that both front ends need lives here once: which jobs a caller may
see (``Principal``: a member sees its team's jobs only, and another team's job is "not
found"), how a job is shown (estimated figures for the placement it really got, measured
ones once its agent reported), how listing pages, and what cancelling does. The CLI
prints, the API serialises; neither decides anything on its own. Reading a submission is
in ``scheduler/submission.py``, reports in ``scheduler/report.py``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import JobNotFoundError, UserInputError, shown
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.store import (
    DEFAULT_TEAM,
    JobRecord,
    JobState,
    JobStore,
    NewJob,
    checked_team,
    job_not_found,
    new_job_id,
)
from greenplace.scheduler.tokens import Principal

if TYPE_CHECKING:
    from celery import Celery

    from greenplace.scheduler.dispatch import Outcome
    from greenplace.scheduler.planning.plan import Plan
    from greenplace.scheduler.settings import Settings

MAX_PAGE = 500  # jobs per page of a listing
_SCAN_PER_PAGE = 5000  # ids one listing call looks at before it returns a cursor


# --- submitting -------------------------------------------------------------------------


def submit(store: JobStore, app: Celery, jobs: Sequence[Job], *, team: str) -> list[str]:
    """Write QUEUED records of ``team`` for ``jobs`` (all or none), enqueue ``place`` for each.

    If sending stops half-way (Redis gone), the records already written stay QUEUED and
    reconcile's stall sweep enqueues them later.
    """
    new = [NewJob(job_id=new_job_id(), job=job, team=checked_team(team)) for job in jobs]
    ids = store.create(new)
    _enqueue(app, ids)
    return ids


def submit_planned(store: JobStore, app: Celery, plan: Plan, *, team: str,
                   notes: Sequence[str], now: dt.datetime) -> tuple[list[str], dict[str, Any]]:
    """Submit the jobs of a batch ``plan`` (``submit --plan``): the plan is stored once under
    a new plan id, each record keeps its part of it (planned offer and start, or why it was
    left out; ``planning/stored.py``), all in one MULTI; then ``place`` is enqueued for each,
    and the worker follows the plan. Returns the job ids and the stored plan."""
    from greenplace.scheduler.planning.stored import job_part, plan_document

    ids = [new_job_id() for _ in plan.jobs]
    document = plan_document(plan, plan_id=new_job_id(), team=checked_team(team), job_ids=ids,
                             notes=notes, created_at=now)
    new = [NewJob(job_id=job_id, job=job, team=checked_team(team),
                  plan=job_part(document, index))
           for index, (job_id, job) in enumerate(zip(ids, plan.jobs, strict=True))]
    store.create(new, plan=document)
    _enqueue(app, ids)
    return ids, document


def _enqueue(app: Celery, ids: Sequence[str]) -> None:
    """Send ``place`` for each job."""
    with app.producer_or_acquire() as producer:
        # kombu >= 5.7 pipelines the publishes of a batch; older ones publish one by one.
        batch = getattr(producer, "batch", None)
        with batch() if batch is not None else contextlib.nullcontext():
            for job_id in ids:
                app.send_task("greenplace.place", args=[job_id], producer=producer)


def team_of_submission(principal: Principal, team: str | None) -> str:
    """The team a submission belongs to: a member's own; an admin's choice (default 'default')."""
    if principal.team is None:
        return checked_team(team or DEFAULT_TEAM)
    if team is not None and team != principal.team:
        raise UserInputError(f"this token belongs to team {principal.team!r} and cannot "
                             f"submit for team {shown(team)}. To fix: drop the team, or use a "
                             "token of that team.")
    return principal.team


def dry_run_rows(jobs: Sequence[Job], settings: Settings, *,
                 now: dt.datetime) -> list[dict[str, Any]]:
    """Where each job would go and why, with its exact first launch request (no write)."""
    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.dispatch import Providers, plan
    from greenplace.scheduler.placement import Placer

    launches = plan(jobs, placer=Placer(load_catalog(), routes=settings.providers,
                                        price_max_age_days=settings.price_max_age_days),
                    providers=Providers(settings), now=now)
    rows = []
    for launch in launches:
        row: dict[str, Any] = {"job": launch.job.name, "policy": launch.job.policy.name,
                               "status": "placed" if launch.request else "unschedulable",
                               "start_at": launch.decision.start_at}
        if launch.job.replaced_policy:
            row["replaced_policy"] = launch.job.replaced_policy
        if launch.request is None:
            row["reasons"] = launch.decision.summary()["reasons"]
        else:
            row.update(provider=launch.provider, cloud=launch.request.cloud,
                       region=launch.request.region,
                       instance_type=launch.request.instance_type,
                       request=dataclasses.asdict(launch.request),
                       fallbacks=[f"{p.cloud}:{p.region}:{p.instance_type}"
                                  for p in launch.fallbacks[:10]])
            summary = launch.decision.summary()
            row.update(price_as_of=summary.get("price_as_of"),
                       price_source=summary.get("price_source"), notes=summary["notes"])
        rows.append(row)
    return rows


# --- reading ----------------------------------------------------------------------------


def visible_job(store: JobStore, principal: Principal, job_id: str) -> JobRecord:
    """The job, if ``principal`` may see it; another team's job is "not found" (no probing)."""
    record = store.get(job_id)
    if not principal.sees_team(record.team):
        raise job_not_found(job_id)
    return record


def visible_plan(store: JobStore, principal: Principal, plan_id: str) -> dict[str, Any]:
    """The stored batch plan, if ``principal`` may see it (its team's); else "not found"."""
    document = store.plan(plan_id)
    if document is None or not principal.sees_team(str(document.get("team", DEFAULT_TEAM))):
        raise JobNotFoundError(f"No batch plan has id {shown(plan_id)}. To fix: use the plan id "
                               "`greenplace submit --plan` printed, or the plan_id a planned "
                               "job shows (`greenplace status JOB_ID --output json`).")
    return document


def _figures_of(record: JobRecord, candidates: Sequence[dict[str, Any]] | None
                ) -> dict[str, Any]:
    """Estimated figures of the placement the job really got (a fallback's, after a failover)."""
    decision = record.decision or {}
    figures = {name: decision.get(name) for name in ("energy_kwh", "co2e_kg", "cost_usd",
                                                      "intensity_g_per_kwh")}
    placement = record.placement
    if placement is not None and candidates:
        for row in candidates:
            if (row["cloud"], row["region"], row["instance_type"]) == (
                    placement.cloud, placement.region, placement.instance_type):
                figures = {name: row.get(name) for name in figures}
                break
    return figures


PueOf = Callable[[str], float | None]  # "cloud:region" -> the region's PUE (None: unknown)


def job_view(record: JobRecord, *, pue_of: PueOf | None = None,
             candidates: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One job as both front ends show it: the record's summary, estimated figures for its
    placement, its baseline, savings and their levers, and measured figures once its agent
    reported.

    ``pue_of``: PUEs by region (``pue_lookup``), to turn the agent's measured machine
    energy into facility energy as the estimate counts it, and to split the savings into
    levers (None: neither is shown).

    ``run_intensity_series``: the hours of the run's window attribution charged (each
    one's start, g/kWh or None, the run's seconds in it, the source), None before
    attribution or with static signals; ``intensity_g_per_kwh_estimated`` is the figure the
    estimate used, the reference to draw it against.
    """
    decision = record.decision or {}
    figures = _figures_of(record, candidates)
    intensity = figures.pop("intensity_g_per_kwh")
    base = decision.get("baseline") or {}
    baseline = base.get("co2e_kg")
    co2e, energy = figures["co2e_kg"], figures["energy_kwh"]
    view = record.summary()
    view.update(energy_kwh_estimated=energy, co2e_kg_estimated=co2e,
                cost_usd=figures["cost_usd"], baseline_co2e_kg=baseline,
                savings_co2e_kg=(round(baseline - co2e, 4)
                                 if baseline is not None and co2e is not None else None))
    placement = record.placement
    where = (f"{placement.cloud}:{placement.region}" if placement is not None
             else f"{decision['cloud']}:{decision['region']}" if "cloud" in decision else None)
    pue = pue_of(where) if pue_of is not None and where is not None else None
    measured_kwh = record.measured_energy_kwh
    view["energy_kwh_measured"] = measured_kwh
    run_intensity = (record.run_intensity_g_per_kwh
                     if record.run_intensity_g_per_kwh is not None else intensity)
    view["co2e_kg_measured"] = (
        float(f"{measured_kwh * pue * run_intensity / 1000.0:.6g}")  # 6 significant digits
        if measured_kwh is not None and pue is not None and run_intensity is not None
        else None)
    view["co2e_kg_measured_basis"] = (
        f"measured energy x PUE {pue} x {run_intensity:g} g/kWh, "
        + (record.run_intensity_basis if record.run_intensity_g_per_kwh is not None else
           f"the grid figure the decision used ({decision.get('signal_source', 'catalog')}); "
           "no hourly history for the run's window")
        if view["co2e_kg_measured"] is not None else None)
    view["estimate_error_pct"] = (
        round(100.0 * (energy - measured_kwh * pue) / (measured_kwh * pue), 2)
        if energy is not None and measured_kwh and pue is not None else None)
    view["intensity_g_per_kwh_estimated"] = intensity
    view["run_intensity_g_per_kwh"] = record.run_intensity_g_per_kwh
    view["run_intensity_series"] = ([hour.as_json() for hour in record.run_intensity_series]
                                    if record.run_intensity_series else None)
    measurement = record.measurement or {}
    view["measurement_method"] = measurement.get("method")
    view["measurement"] = record.measurement
    view["agent_seen_at"] = record.agent_seen_at or None
    view["agent_exit_code"] = record.agent_exit_code
    view["levers"] = _levers(figures, intensity, pue, base, pue_of)
    return view


def _levers(figures: dict[str, Any], intensity: float | None, pue: float | None,
            base: dict[str, Any], pue_of: PueOf | None) -> Any:
    """The savings split into machine, map and mechanization (``scheduler/levers.py``)."""
    from greenplace.scheduler.levers import decompose, footprint, rounded

    base_pue = (pue_of(f"{base['cloud']}:{base['region']}")
                if pue_of is not None and "cloud" in base else None)
    energy, base_energy = figures["energy_kwh"], base.get("energy_kwh")
    base_intensity = base.get("intensity_g_per_kwh")
    if (energy is None or intensity is None or pue is None or base_energy is None
            or base_intensity is None or base_pue is None):
        return None  # not placed, or decided before the baseline kept its energy
    return rounded(decompose(
        footprint(energy_kwh=float(energy), pue=pue, intensity_g_per_kwh=intensity),
        footprint(energy_kwh=float(base_energy), pue=base_pue,
                  intensity_g_per_kwh=float(base_intensity))))


def pue_lookup(catalog: Catalog) -> PueOf:
    """PUEs of the catalog's regions by ``cloud:region`` (None for one it does not know)."""
    def pue(where: str) -> float | None:
        try:
            return catalog.region(where).pue
        except UserInputError:
            return None
    return pue


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """What a listing keeps; None keeps everything. ``name`` matches a part, any case."""

    state: JobState | None = None
    name: str | None = None
    policy: str | None = None
    team: str | None = None
    since: dt.datetime | None = None

    def keeps(self, record: JobRecord) -> bool:
        return ((self.state is None or record.state == self.state)
                and (self.name is None or self.name.lower() in record.name.lower())
                and (self.policy is None or record.policy_name == self.policy)
                and (self.team is None or record.team == self.team))


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One page of a listing, newest first; ``next_cursor`` None on the last page."""

    records: list[JobRecord]
    next_cursor: str | None


def _encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{job_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = text.split("|", 1)
        if not math.isfinite(float(score)):
            raise ValueError(score)
        return float(score), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise UserInputError(f"cursor {shown(cursor)} is not one this service handed out. "
                             "To fix: pass the next_cursor of the previous page as is, or "
                             "start again without a cursor.") from exc


def list_jobs(store: JobStore, principal: Principal, *, where: JobFilter, limit: int = 50,
              cursor: str | None = None) -> Page:
    """A page of the jobs ``principal`` may see that ``where`` keeps, newest first.

    Design choice: the index holds ids by submission time (per team, and all), so a page
    walks it from the cursor and reads records in batches; a filter that keeps few jobs
    returns a shorter page with a cursor after ``_SCAN_PER_PAGE`` ids, so no call reads
    the whole store.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise UserInputError(f"limit {limit} is out of range. To fix: ask for 1 to {MAX_PAGE} "
                             "jobs per page.")
    team = principal.team if principal.team is not None else where.team
    if principal.team is not None and where.team not in (None, principal.team):
        return Page(records=[], next_cursor=None)
    position = _decode_cursor(cursor) if cursor else None
    min_score = where.since.timestamp() if where.since else None
    kept: list[JobRecord] = []
    scanned = 0
    while len(kept) < limit and scanned < _SCAN_PER_PAGE:
        rows = store.newest_ids(team=team, before=position, count=min(200, limit * 2),
                                min_score=min_score)
        if not rows:
            return Page(records=kept, next_cursor=None)
        scores = dict(rows)
        for record in store.get_many([job_id for job_id, _ in rows]):
            position = (scores[record.job_id], record.job_id)
            scanned += 1
            if where.keeps(record):
                kept.append(record)
                if len(kept) == limit:
                    break
        else:
            position = rows[-1][1], rows[-1][0]
    more = bool(store.newest_ids(team=team, before=position, count=1, min_score=min_score))
    return Page(records=kept, next_cursor=_encode_cursor(*position) if more and position
                else None)


def parse_since(text: str | None) -> dt.datetime | None:
    """An ISO 8601 moment from a filter (naive = UTC), or a clear error."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UserInputError(f"since {shown(text)} is not an ISO 8601 date or time. To fix: "
                             "write e.g. 2026-12-01 or 2026-12-01T08:00:00Z.") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def learn_power(store: JobStore, job_id: str, measurement: Mapping[str, Any]) -> float | None:
    """Add a job's measured run to its accelerator's calibration, and its label's
    (``scheduler/calibration``); returns the watts per chip counted, or None (no GPU
    measured, a short run, no placement)."""
    from greenplace.scheduler import calibration

    return calibration.learn(store, store.get(job_id), measurement)


# --- acting -----------------------------------------------------------------------------


def cancel(store: JobStore, principal: Principal, job_id: str, *,
           send: Callable[[Outcome], None], now: dt.datetime) -> Outcome:
    """Cancel a job ``principal`` may see; ``send`` enqueues the deletion of its instance."""
    from greenplace.scheduler.dispatch import cancel_job

    visible_job(store, principal, job_id)
    outcome = cancel_job(store, job_id, now=now)
    if outcome.followups:
        send(outcome)
    return outcome
