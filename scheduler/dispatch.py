"""The flow of one job from QUEUED to a final state: place, dispatch, reconcile, cancel.

Plain functions over a ``Context`` (store, providers, placer): no Celery here,
so every rule is tested against a real Redis without a worker. Each function
returns an ``Outcome``: a log line, the follow-up tasks to enqueue, and whether
the task should run again later. ``greenplace.scheduler.worker.tasks`` turns those into
Celery messages.

Exactly-once launch, the argument in four steps:

1. A launch attempt ``k`` of a job starts only by the atomic move PLACED ->
   DISPATCHING that also sets ``attempt = k`` and freezes its target; a second
   ``dispatch(job, k)`` message finds DISPATCHING (resume) or something else (stale).
2. Every ``submit`` for attempt ``k`` uses ``idempotency_key(job, k)``, so the
   provider returns the one instance that key created, however often a crashed or
   redelivered task repeats the call. A per-job lock (SET NX PX, released only
   by its owner) keeps two live workers from racing the same attempt.
3. Attempt ``k + 1`` starts only after attempt ``k`` was refused (capacity /
   quota: no instance exists) or its instance is gone (spot preemption).
4. Lost messages are found by ``reconcile``, which re-enqueues a job that made no
   progress for ``stall_s``; the steps above make the duplicate harmless.

Nothing outlives its job: every move of a launched job to a final state queues
its instance for deletion in the same atomic step (``gp:terminate``), and an
attempt that is superseded (refused after it was accepted, preempted) queues its
handle first (``gp:orphans``); reconcile calls ``Provider.delete`` until the
cloud confirms, and ``greenplace gc`` sweeps whatever a crash could still leave.

The dry run (``plan``) calls the same ``decide``, ``job_launch`` and
``provider.prepare`` as ``place`` and ``dispatch``: what it prints is what the
first launch attempt sends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from greenplace.providers.base import (
    AgentAccess,
    Feature,
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    LaunchRequest,
    Placement,
    Provider,
    idempotency_key,
    missing_features,
)
from greenplace.providers.registry import get_provider
from greenplace.scheduler import metrics
from greenplace.scheduler.catalog import Catalog, load_catalog
from greenplace.scheduler.exceptions import (
    AuthError,
    CapacityError,
    GreenplaceError,
    InvalidRequestError,
    ProviderError,
    QuotaError,
    RegionRefusedError,
    TransientError,
    UserInputError,
)
from greenplace.scheduler.jobs import Job, JobSpec, resolve_job
from greenplace.scheduler.placement import PlacementDecision, Placer
from greenplace.scheduler.placement.pipeline import CalibratedPower
from greenplace.scheduler.settings import MAX_COUNTDOWN_S, Settings
from greenplace.scheduler.signals.cache import RedisCache
from greenplace.scheduler.signals.chain import LivePlacer, SignalChain
from greenplace.scheduler.signals.config import SignalSettings
from greenplace.scheduler.store import (
    FINAL_STATES,
    AttemptReason,
    JobRecord,
    JobState,
    JobStore,
    Lock,
    Move,
    TransitionRefused,
    encode_fields,
    iso,
    offer_key,
    pack_explain,
    parse_iso,
    policy_of,
)

if TYPE_CHECKING:
    from greenplace.scheduler.planning.replan import HeldRun

log = logging.getLogger("greenplace.dispatch")

S = JobState
MAX_TRANSIENT_RETRIES = 5
LIVE = frozenset({InstanceState.PENDING, InstanceState.RUNNING})
# The errors after which the next candidate is tried (no instance of this attempt runs).
FAILOVER_ERRORS = (CapacityError, QuotaError, RegionRefusedError)
DRY_RUN_JOB_ID = "<job-id>"  # job ids are assigned at submit


@dataclass(frozen=True, slots=True, kw_only=True)
class Followup:
    """A task to enqueue after the current one: ``greenplace.<task>(*args)``."""

    task: str  # "place", "dispatch" or "terminate"
    args: tuple[str | int, ...]
    countdown_s: float = 0.0  # send it to run no sooner than this


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a step did, and what should happen next."""

    message: str
    followups: tuple[Followup, ...] = ()
    retry_in_s: float | None = None  # run this step again after that many seconds
    counts: dict[str, int] = field(default_factory=dict)


def _dispatch(job_id: str, attempt: int) -> Followup:
    return Followup(task="dispatch", args=(job_id, attempt))


class Providers:
    """Provider adapters by name, built on first use and reused by a worker process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_name: dict[str, Provider] = {}

    def by_name(self, name: str) -> Provider:
        if name not in self._by_name:
            self._by_name[name] = get_provider(name, config=self.settings.provider_config(name))
        return self._by_name[name]

    def for_cloud(self, cloud: str) -> Provider:
        """The provider the settings map ``cloud`` to (local-sim by default)."""
        return self.by_name(self.settings.provider_for(cloud))


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """Everything the flow needs; one per worker process."""

    settings: Settings
    store: JobStore
    providers: Providers
    catalog: Catalog
    placer: Places
    chain: SignalChain | None = None  # the live signal chain (GREENPLACE_SIGNALS=live)
    # when the placer's calibration was last read from Redis (monotonic s; see ``decide_for``)
    calibrated_at: list[float] = field(default_factory=lambda: [-math.inf])

    @classmethod
    def build(cls, settings: Settings, store: JobStore, *,
              providers: Providers | None = None) -> Context:
        """A context on the current catalog (``load_catalog``: refreshed prices included)."""
        catalog = load_catalog()
        providers = providers or Providers(settings)
        gate = RegionGate(providers)
        placer: Places = Placer(catalog, routes=settings.providers, region_gate=gate,
                                price_max_age_days=settings.price_max_age_days)
        if settings.signals == "live":
            signal_settings = SignalSettings.from_env()
            chain = SignalChain.from_settings(signal_settings, catalog,
                                              cache=RedisCache(store.client, prefix=store.prefix),
                                              observer=metrics.SignalMetrics(store))
            placer = LivePlacer(catalog, chain, refresh_s=signal_settings.ttl_s,
                                routes=settings.providers, region_gate=gate,
                                price_max_age_days=settings.price_max_age_days)
            return cls(settings=settings, store=store, providers=providers,
                       catalog=catalog, placer=placer, chain=chain)
        return cls(settings=settings, store=store, providers=providers,
                   catalog=catalog, placer=placer)


def current(ctx: Context) -> Context:
    """``ctx``, or a new one on the same providers when the catalog changed under it (a
    price refresh wrote new figures: ``load_catalog`` returns a new object only then)."""
    if load_catalog() is ctx.catalog:
        return ctx
    if ctx.chain is not None:
        ctx.chain.close()
    log.info("catalog changed (refreshed prices); placing with the new figures")
    return Context.build(ctx.settings, ctx.store, providers=ctx.providers)


@runtime_checkable
class KnowsEnabledRegions(Protocol):
    """An adapter that can tell which of its cloud's regions the account has not enabled
    (AWS opt-in regions); it caches the answer itself."""

    def regions_not_enabled(self) -> frozenset[str]: ...


class RegionGate:
    """The ``cloud:region`` keys the account may not launch in, from the adapters that know.

    Asked by placement before each decision (the ``region_not_enabled`` filter); only
    clouds routed to such an adapter are asked, so local-sim and the dry run ask nothing.
    """

    def __init__(self, providers: Providers) -> None:
        self.providers = providers
        self._last: frozenset[str] = frozenset()

    def __call__(self) -> frozenset[str]:
        keys: set[str] = set()
        for cloud, name in self.providers.settings.providers.items():
            if name == "local-sim":
                continue
            adapter = self.providers.by_name(name)
            if isinstance(adapter, KnowsEnabledRegions):
                keys |= {f"{cloud}:{region}" for region in adapter.regions_not_enabled()}
        if keys != self._last:
            self._last = frozenset(keys)
        return self._last


class Places(Protocol):
    """What places a job: a static ``Placer`` or a live-signal ``LivePlacer``."""

    def place(self, job: Job, *, now: dt.datetime, allow_defer: bool = True
              ) -> PlacementDecision: ...

    def calibrate(self, calibration: Mapping[str, CalibratedPower]) -> None: ...


CALIBRATION_REFRESH_S = 60.0  # how stale a worker's calibration may be


def decide_for(ctx: Context, job: Job, *, now: dt.datetime,
               allow_defer: bool = True) -> PlacementDecision:
    """The placement step of the service: ``decide`` with the fleet's calibration.

    The calibration (``scheduler/calibration.py``) is read from Redis at most once per
    ``CALIBRATION_REFRESH_S`` per worker process.
    """
    if time.monotonic() - ctx.calibrated_at[0] >= CALIBRATION_REFRESH_S:
        from greenplace.scheduler import calibration

        ctx.placer.calibrate(calibration.current(ctx.store))
        ctx.calibrated_at[0] = time.monotonic()
    with metrics.placement_timer(ctx.store):
        return decide(ctx.placer, job, now=now, allow_defer=allow_defer)


def decide_record(ctx: Context, record: JobRecord, job: Job, *, now: dt.datetime,
                  allow_defer: bool = True) -> PlacementDecision:
    """``decide_for`` for a stored job: a job submitted with a batch plan gets the plan's
    offer first and the plan's start (``planning/stored.py``, ``follow_plan``), never a
    temporal shift of the worker's own."""
    part = record.plan
    if part is None or part.get("planned") != "placed":
        return decide_for(ctx, job, now=now, allow_defer=allow_defer)
    from greenplace.scheduler.planning.stored import follow_plan

    return follow_plan(decide_for(ctx, job, now=now, allow_defer=False), part, now=now)


def _left_by_plan(ctx: Context, record: JobRecord, *, expect: JobState,
                  now: dt.datetime) -> Outcome | None:
    """UNSCHEDULABLE with the plan's reason when the job's batch plan left it out; else None."""
    part = record.plan
    if part is None or part.get("planned") == "placed":
        return None
    from greenplace.scheduler.planning.stored import left_reason

    reason = left_reason(part)
    try:
        ctx.store.transition(record.job_id, to=S.UNSCHEDULABLE, expect=expect, message=reason,
                             data={"plan_id": part["plan_id"], "binding": part["binding"]},
                             fields=encode_fields(placements=[], reason=reason), now=now)
    except TransitionRefused as exc:
        return Outcome(message=f"nothing to do: the job is now {exc.current}")
    return Outcome(message=reason)


# --- shared with the dry run --------------------------------------------------------
def decide(placer: Places, job: Job, *, now: dt.datetime, allow_defer: bool) -> PlacementDecision:
    """The placement step of the flow (the dry run and ``place`` both call this)."""
    return placer.place(job, now=now, allow_defer=allow_defer)


def frozen_ranking(decision: PlacementDecision) -> list[Placement]:
    """The failover order a job record keeps: the best feasible candidates.

    Design choice: a job makes at most ``failover.max_attempts`` launch attempts,
    and cooling offers are only moved back, so the record keeps the best
    ``4 x max_attempts`` (at least 12) candidates rather than every feasible one
    (often 40+): records stay small for the reconcile passes that read them all.
    The decision summary still says how many were feasible.
    """
    keep = max(12, 4 * decision.policy.failover.max_attempts)
    return decision.placements(limit=keep)


def job_launch(job_id: str, job: Job, *, attempt: int,
               agent: AgentAccess | None = None) -> JobLaunch:
    """The job facts a provider gets for one launch attempt."""
    return JobLaunch(job_id=job_id, name=job.name, run=job.spec.run, policy=job.policy.name,
                     attempt=attempt, agent=agent)


def agent_access(ctx: Context, record: JobRecord, *, attempt: int) -> AgentAccess | None:
    """The agent token of this launch attempt, when the API's URL for agents is set.

    The record never holds it; every try of one attempt gets the same token, so a
    retried launch sends the very same boot script (``Tokens.mint_agent``).
    """
    if ctx.settings.agent_api_url is None:
        return None
    from greenplace.scheduler.tokens import Tokens

    token = Tokens(ctx.store).mint_agent(job_id=record.job_id, attempt=attempt,
                                         team=record.team)
    return AgentAccess(api_url=ctx.settings.agent_api_url, token=token,
                       package=ctx.settings.agent_package)


def rebuild_job(record: JobRecord, catalog: Catalog) -> Job:
    """The Job of a stored record (spec and policy validated again). Raises SpecError."""
    spec = JobSpec.model_validate(record.spec)
    return resolve_job(spec, catalog, policy=policy_of(record),
                       where=f"job {record.job_id} ({record.name})")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedLaunch:
    """What the dry run shows for one job: the decision and the first launch request."""

    job: Job
    decision: PlacementDecision
    provider: str | None
    request: LaunchRequest | None
    fallbacks: tuple[Placement, ...]  # the failover order after the first choice


def plan(jobs: Iterable[Job], *, placer: Places, providers: Providers,
         now: dt.datetime) -> list[PlannedLaunch]:
    """The dry run of the service: decide and ``prepare()`` each job; no Redis, no cloud.

    It assumes no offer is cooling down (cool-downs live in Redis).
    """
    out = []
    for job in jobs:
        decision = decide(placer, job, now=now, allow_defer=True)
        placements = decision.placements()
        if not placements:
            out.append(PlannedLaunch(job=job, decision=decision, provider=None, request=None,
                                     fallbacks=()))
            continue
        provider = providers.for_cloud(placements[0].cloud)
        request = provider.prepare(job_launch(DRY_RUN_JOB_ID, job, attempt=1), placements[0])
        out.append(PlannedLaunch(job=job, decision=decision, provider=provider.name,
                                 request=request, fallbacks=tuple(placements[1:])))
    return out


# --- place -------------------------------------------------------------------------
def _rejection_text(summary: dict[str, Any]) -> str:
    reasons = summary.get("reasons") or []
    shown = "; ".join(f"{r['region']}: {r['reason']}" for r in reasons[:5])
    more = f" (and {len(reasons) - 5} more; see `greenplace events`)" if len(reasons) > 5 else ""
    notes = " ".join(summary.get("notes") or [])
    return (f"no candidate is feasible under policy {summary.get('policy')!r}: "
            f"{shown or notes or 'no offer matches'}{more}")


def place_job(ctx: Context, job_id: str, *, now: dt.datetime) -> Outcome:
    """Run the pipeline for a QUEUED job and freeze its ranked decision."""
    record = ctx.store.get(job_id)
    if record.state is S.PLACED and record.attempt == 0:
        # A redelivered place whose dispatch message may never have been sent.
        return Outcome(message="already placed", followups=(_dispatch(job_id, 1),))
    if record.state is S.DISPATCHING:
        # A redelivered place whose inline dispatch was interrupted: resume it.
        return Outcome(message="already dispatching",
                       followups=(_dispatch(job_id, record.attempt),))
    if record.state is not S.QUEUED:
        return Outcome(message=f"nothing to do: the job is {record.state}")
    try:
        job = rebuild_job(record, ctx.catalog)
    except GreenplaceError as exc:
        return _fail(ctx, record, expect=S.QUEUED, reason=f"cannot rebuild the job: {exc}",
                     now=now)
    left = _left_by_plan(ctx, record, expect=S.QUEUED, now=now)
    if left is not None:
        return left
    decision = decide_record(ctx, record, job, now=now)
    return apply_decision(ctx, record, decision, expect=S.QUEUED, now=now)


def apply_decision(ctx: Context, record: JobRecord, decision: PlacementDecision, *,
                   expect: JobState, now: dt.datetime) -> Outcome:
    """Freeze ``decision`` in the record: PLACED, DEFERRED or UNSCHEDULABLE."""
    summary = decision.summary(explain=False)
    placements = frozen_ranking(decision)
    job_id = record.job_id
    explain = pack_explain(decision.candidate_table())  # kept with the move, for the job page
    try:
        if not decision.placed:
            reason = _rejection_text(summary)
            ctx.store.transition(
                job_id, to=S.UNSCHEDULABLE, expect=expect, message=reason,
                data={"rejections": summary.get("reasons", [])[:50]},
                fields=encode_fields(decision=summary, placements=[], reason=reason), now=now,
                explain=explain)
            return Outcome(message=reason)
        first = placements[0]
        where = f"{first.cloud}:{first.region} {first.instance_type}"
        if decision.start_at is not None and parse_iso(decision.start_at) > now:
            not_before = parse_iso(decision.start_at)
            why = (f"deferred to its planned start in batch plan {record.plan['plan_id']}"
                   if record.plan is not None else "deferred to a greener window")
            ctx.store.transition(
                job_id, to=S.DEFERRED, expect=expect,
                message=f"{why}: not before {iso(not_before)} "
                        f"(then re-placed; now best: {where})",
                fields=encode_fields(decision=summary, placements=placements,
                                     not_before=iso(not_before), target=-1, exhausted=[]),
                score=not_before.timestamp(), now=now, explain=explain)
            return Outcome(message=f"deferred until {iso(not_before)}")
        placed = _placed_move(decision, summary, placements, expect=expect)
        ctx.store.transition(job_id, to=placed.to, expect=placed.expect,
                             message=placed.message, data=placed.data, fields=placed.fields,
                             now=now, explain=explain)
        metrics.add_co2e(ctx.store, estimated_kg=summary.get("co2e_kg"),
                         saved_kg=summary.get("savings_co2e_kg"))
    except TransitionRefused as exc:
        return Outcome(message=f"nothing to do: the job is now {exc.current}")
    return Outcome(message=f"placed on {where}",
                   followups=(_dispatch(job_id, record.attempt + 1),))


def _placed_move(decision: PlacementDecision, summary: dict[str, Any],
                 placements: Sequence[Placement], *, expect: JobState) -> Move:
    first = placements[0]
    return Move(
        to=S.PLACED, expect=expect,
        message=f"placed: {first.cloud}:{first.region} {first.instance_type} "
                f"({summary.get('feasible_candidates')} feasible candidate(s), policy "
                f"{decision.policy.name!r}, "
                f"est. {summary.get('co2e_kg')} kg CO2e)",
        data={"cloud": first.cloud, "region": first.region,
              "instance_type": first.instance_type},
        fields=encode_fields(decision=summary, placements=placements, target=-1,
                             exhausted=[]))


def _begin_move(ctx: Context, attempt: int, target: int, placement: Placement) -> Move:
    provider_name = ctx.settings.provider_for(placement.cloud)
    return Move(
        to=S.DISPATCHING, expect=S.PLACED, attempt=attempt - 1,
        message=f"attempt {attempt}: launching {placement.instance_type} in "
                f"{placement.cloud}:{placement.region} via {provider_name}",
        data={"attempt": attempt, "candidate": target},
        fields=encode_fields(attempt=attempt, target=target))


def place_and_dispatch(ctx: Context, job_id: str, *, now: dt.datetime) -> Outcome:
    """Place a QUEUED job and launch its first attempt, in one task and 4 round trips.

    Under the job's dispatch lock (taken with the read), the moves QUEUED -> PLACED
    -> DISPATCHING are written in one script call, then the launch runs exactly as
    ``dispatch_job`` resumes an attempt. Any other situation (a redelivered
    message, a held lock, a deferral) takes the general path: ``place_job`` then
    ``dispatch_job``.

    Design choice: the happy path of a job is one Celery message, not two: a
    dispatch message would only carry the job to the same worker pool a moment
    later, and each message costs about as much as the placement itself. Every
    guarantee stays with the dispatch code (lock, state and attempt checks,
    idempotency key); a crash in between redelivers the place message, which
    resumes the dispatch. Later attempts (failover, retries, preemption,
    recovery) still travel as ``greenplace.dispatch`` messages.
    """
    store = ctx.store
    lock, record, cooling = store.lock_and_read(job_id, lock=f"dispatch:{job_id}",
                                                ttl_s=ctx.settings.dispatch_lock_ttl_s)
    if lock is None or record.state is not S.QUEUED:
        if lock is not None:
            store.release_lock(lock.name, lock.token)
        return _place_then_dispatch(ctx, job_id, now=now)
    try:
        try:
            job = rebuild_job(record, ctx.catalog)
        except GreenplaceError as exc:
            return _fail(ctx, record, expect=S.QUEUED, now=now,
                         reason=f"cannot rebuild the job: {exc}")
        left = _left_by_plan(ctx, record, expect=S.QUEUED, now=now)
        if left is not None:
            return left
        decision = decide_record(ctx, record, job, now=now)
        placements = frozen_ranking(decision)
        later = decision.start_at is not None and parse_iso(decision.start_at) > now
        if not placements or later:
            return apply_decision(ctx, record, decision, expect=S.QUEUED, now=now)
        summary = decision.summary(explain=False)
        target = choose_target(placements, (), cooling)
        assert target is not None
        placed_move = _placed_move(decision, summary, placements, expect=S.QUEUED)
        placed, begun = store.transitions(job_id, [
            placed_move, _begin_move(ctx, 1, target, placements[target])], now=now,
            explain=pack_explain(decision.candidate_table()))
        if isinstance(placed, TransitionRefused):
            return Outcome(message=f"nothing to do: the job is now {placed.current}")
        metrics.add_co2e(store, estimated_kg=summary.get("co2e_kg"),
                         saved_kg=summary.get("savings_co2e_kg"))
        if isinstance(begun, TransitionRefused):
            return Outcome(message=f"placed; the launch found the job {begun.current}",
                           followups=(_dispatch(job_id, 1),))
        assert placed_move.fields is not None
        record = dataclasses.replace(record, state=S.DISPATCHING, attempt=1, target=target,
                                     placements_text=placed_move.fields["placements"],
                                     decision=summary)
        launched = _dispatch_locked(ctx, record, 1, "resume", lock=lock, cooling=cooling,
                                    retries=0, now=now, job=job, placement=placements[target])
    finally:
        if not lock.released:
            store.release_lock(lock.name, lock.token)
    return _with_retry_as_message(job_id, 1, launched, prefix="placed")


def _with_retry_as_message(job_id: str, attempt: int, outcome: Outcome, *,
                           prefix: str) -> Outcome:
    followups = outcome.followups
    if outcome.retry_in_s is not None:
        followups += (Followup(task="dispatch", args=(job_id, attempt),
                               countdown_s=outcome.retry_in_s),)
    return Outcome(message=f"{prefix}; {outcome.message}", followups=followups)


def _place_then_dispatch(ctx: Context, job_id: str, *, now: dt.datetime) -> Outcome:
    """``place_job``, then its first ``dispatch_job`` in the same task.

    Design choice: the happy path of a job is one Celery message, not two: a
    dispatch message would only carry the job to the same worker pool a moment
    later, and each message costs about as much as the placement itself. Every
    guarantee stays with ``dispatch_job`` (lock, state and attempt checks,
    idempotency key); a crash in between redelivers the place message, which
    resumes the dispatch. Later attempts (failover, retries, preemption,
    recovery) still travel as ``greenplace.dispatch`` messages.
    """
    """The general path: ``place_job``, then the dispatch it asks for, inline."""
    placed = place_job(ctx, job_id, now=now)
    first = [f for f in placed.followups if f.task == "dispatch"]
    if len(first) != 1:
        return placed
    attempt = int(first[0].args[1])
    launched = dispatch_job(ctx, job_id, attempt, now=now)
    return _with_retry_as_message(job_id, attempt, launched, prefix=placed.message)


# --- dispatch ----------------------------------------------------------------------
def choose_target(placements: Sequence[Placement], exhausted: Iterable[int],
                  cooling: set[str]) -> int | None:
    """The next candidate to try: best-ranked not yet refused, preferring ones not cooling.

    Design choice: a cooling offer is tried last rather than never, so one job's
    bad luck cannot make another job unschedulable; it only reorders its attempts.
    """
    used = set(exhausted)
    left = [i for i in range(len(placements)) if i not in used]
    if not left:
        return None
    fresh = [i for i in left if offer_key(placements[i]) not in cooling]
    return (fresh or left)[0]


def _backoff_s(retries: int) -> float:
    return min(MAX_COUNTDOWN_S, 0.5 * 2 ** retries) * random.uniform(0.8, 1.0)


def dispatch_job(ctx: Context, job_id: str, attempt: int, *, retries: int = 0,
                 now: dt.datetime) -> Outcome:
    """Launch attempt ``attempt`` of a job (idempotent: resumes or ignores duplicates).

    Args:
        attempt: the attempt this message is for (1 for the first launch).
        retries: how many times this message was retried already (transient errors).
    """
    store = ctx.store
    name = f"dispatch:{job_id}"
    lock, record, cooling = store.lock_and_read(job_id, lock=name,
                                                ttl_s=ctx.settings.dispatch_lock_ttl_s)
    try:
        if record.state is S.PLACED and record.attempt == attempt:
            # This attempt already failed over; make sure the next one was enqueued.
            return Outcome(message=f"attempt {attempt} already resolved",
                           followups=(_dispatch(job_id, attempt + 1),))
        mode = _mode(record, attempt)
        if mode is None:
            return Outcome(message=f"nothing to do: the job is {record.state} at attempt "
                                   f"{record.attempt}")
        if lock is None:
            wait = min(max(store.lock_ttl_s(name), 0.2), MAX_COUNTDOWN_S)
            return Outcome(message="another worker holds this job's dispatch lock",
                           retry_in_s=wait)
        return _dispatch_locked(ctx, record, attempt, mode, lock=lock, cooling=cooling,
                                retries=retries, now=now)
    finally:
        if lock is not None and not lock.released:
            store.release_lock(lock.name, lock.token)


def _mode(record: JobRecord, attempt: int) -> str | None:
    """begin / resume / settle, or None when the message is stale."""
    if record.state is S.PLACED and record.attempt == attempt - 1:
        return "begin"
    if record.state is S.DISPATCHING and record.attempt == attempt:
        return "resume"
    if (record.state is S.CANCELLED and record.cancelled_from == S.DISPATCHING
            and record.attempt == attempt and record.handle is None
            and not record.terminated_at):
        # Cancelled while this attempt was in flight and nobody knows whether an
        # instance exists: submit again with the same key to find it, then cancel it.
        return "settle"
    return None


def _dispatch_locked(ctx: Context, record: JobRecord, attempt: int, mode: str, *,
                     lock: Lock, cooling: set[str], retries: int, now: dt.datetime,
                     job: Job | None = None, placement: Placement | None = None) -> Outcome:
    """One launch attempt under the job's lock. ``job`` and ``placement`` (the record's
    current one) save rebuilding what the caller already holds."""
    store = ctx.store
    job_id = record.job_id
    if mode == "begin":
        target = choose_target(record.placements, record.exhausted, cooling)
        if target is None:
            return _unschedulable(ctx, record, expect=S.PLACED, attempt_guard=attempt - 1,
                                  tail="no candidate is left in the ranking", now=now)
        begin = _begin_move(ctx, attempt, target, record.placements[target])
        try:
            store.transition(job_id, to=begin.to, expect=begin.expect, attempt=begin.attempt,
                             message=begin.message, data=begin.data, fields=begin.fields,
                             now=now)
        except TransitionRefused as exc:
            return Outcome(message=f"nothing to do: the job is now {exc.current}")
        record = dataclasses.replace(record, state=S.DISPATCHING, attempt=attempt,
                                     target=target)
        placement = record.placements[target]
    if placement is None:
        placement = record.placement
    assert placement is not None  # DISPATCHING / settle always have a target
    settle = mode == "settle"
    expect = S.CANCELLED if settle else S.DISPATCHING
    try:
        with metrics.dispatch_attempt(store, cloud=placement.cloud):
            handle = _launch(ctx, record, placement, attempt=attempt, job=job)
    except FAILOVER_ERRORS as exc:
        if settle:
            store.terminated(job_id, message="cancelled before any instance was created")
            return Outcome(message="settled: no instance exists")
        return _failover(ctx, record, exc, expect=S.DISPATCHING, now=now)
    except TransientError as exc:
        if retries < MAX_TRANSIENT_RETRIES:
            wait = _backoff_s(retries)
            store.note(job_id, f"attempt {attempt}: transient error, retrying in {wait:.1f} s: "
                               f"{exc}", data={"code": exc.code}, now=now)
            return Outcome(message=f"transient error: {exc}", retry_in_s=wait)
        if settle:
            return Outcome(message=f"settling gave up for now: {exc}")
        return _fail(ctx, record, expect=expect, attempt_guard=attempt, now=now, reason=(
            f"attempt {attempt} on {offer_key(placement)} kept failing with transient errors "
            f"({retries + 1} tries): {exc}. An instance may exist with tag "
            f"greenplace:job-id={job_id}; the leak sweep (`greenplace gc`) deletes it."))
    except (AuthError, InvalidRequestError, ProviderError, GreenplaceError) as exc:
        if settle:
            store.terminated(job_id, message=f"no instance to terminate ({exc})")
            return Outcome(message="settled")
        kind = ("credentials were refused" if isinstance(exc, AuthError)
                else "the request was refused")
        return _fail(ctx, record, expect=expect, attempt_guard=attempt, now=now,
                     reason=f"attempt {attempt} on {offer_key(placement)}: {kind}: {exc}")
    if settle:
        return _terminate_late(ctx, record, handle, now=now)
    try:
        store.transition(
            job_id, to=S.RUNNING, expect=S.DISPATCHING, attempt=attempt,
            message=f"launched {handle.instance_id} ({placement.instance_type} in "
                    f"{placement.cloud}:{placement.region}, attempt {attempt})",
            data={"instance_id": handle.instance_id, "provider": handle.provider},
            fields=encode_fields(handle=handle), now=now, release=lock)
    except TransitionRefused as exc:
        if exc.current is S.CANCELLED:
            return _terminate_late(ctx, record, handle, now=now)
        return Outcome(message=f"launched, but the job is now {exc.current}")
    return Outcome(message=f"running as {handle.instance_id}")


def _launch(ctx: Context, record: JobRecord, placement: Placement, *, attempt: int,
            job: Job | None) -> InstanceHandle:
    """prepare() + submit() of one attempt through the provider mapped to its cloud.

    Raises:
        ProviderError (or another GreenplaceError): as the adapter classified it.
        TransientError: for any other exception (an SDK error the adapter does not
            map, or an adapter bug), so it is retried a bounded number of times and
            then fails the job with a reason, instead of leaving it DISPATCHING.
    """
    try:
        provider = ctx.providers.for_cloud(placement.cloud)
        needed = {Feature.IDEMPOTENT_SUBMIT} | ({Feature.SPOT} if placement.spot else set())
        missing = missing_features(provider, needed)
        if missing:
            raise InvalidRequestError(
                f"the provider lacks {', '.join(missing)}. To fix: map {placement.cloud} to a "
                "provider that has them in GREENPLACE_PROVIDERS.",
                provider=provider.name, operation="dispatch", code="MissingFeature")
        job = job or rebuild_job(record, ctx.catalog)
        launch = job_launch(record.job_id, job, attempt=attempt,
                            agent=agent_access(ctx, record, attempt=attempt))
        request = provider.prepare(launch, placement)
        ctx.store.launched_in(provider.name, placement.region)  # before: an answer may be lost
        return provider.submit(request, idempotency_key=idempotency_key(record.job_id, attempt))
    except GreenplaceError:
        raise
    except Exception as exc:
        log.exception("unexpected error launching job %s attempt %d", record.job_id, attempt)
        raise TransientError(
            f"unexpected {type(exc).__name__}: {str(exc)[:300]}",
            provider=ctx.settings.provider_for(placement.cloud), operation="submit",
            code=type(exc).__name__) from exc


def _terminate_late(ctx: Context, record: JobRecord, handle: InstanceHandle, *,
                    now: dt.datetime) -> Outcome:
    """The job was cancelled while its launch was in flight: record and stop the instance."""
    store = ctx.store
    store.update(record.job_id, expect=S.CANCELLED, fields=encode_fields(handle=handle),
                 message=f"instance {handle.instance_id} came up after the job was cancelled",
                 now=now)
    return terminate_job(ctx, record.job_id, now=now)


def _failover(ctx: Context, record: JobRecord, exc: ProviderError, *, expect: JobState,
              now: dt.datetime) -> Outcome:
    """Attempt ``record.attempt`` was refused: try the next candidate, or give up.

    ``expect`` is DISPATCHING for a refusal of the launch call itself, RUNNING for
    one the cloud reported after accepting the launch. A TransientError from the
    latter (the cloud's own operation failed internally) tries the same candidate
    again as a new attempt, without cooling it down.
    """
    placement = record.placement
    assert placement is not None and record.target is not None
    attempt = record.attempt
    retry_same = isinstance(exc, TransientError)
    if not retry_same:
        ctx.store.cool_down(placement, seconds=ctx.settings.cooldown_s, reason=str(exc))
    reasons = (*record.attempt_reasons, AttemptReason(
        attempt=attempt, cloud=placement.cloud, region=placement.region,
        instance_type=placement.instance_type, error=type(exc).__name__, code=exc.code,
        message=str(exc)))
    exhausted = record.exhausted if retry_same else (*record.exhausted, record.target)
    max_attempts = policy_of(record).failover.max_attempts
    if (not retry_same and attempt < max_attempts and record.plan is not None
            and isinstance(exc, (CapacityError, QuotaError))):
        replanned = _replan(ctx, record, exc, expect=expect, reasons=reasons, now=now)
        if replanned is not None:
            return replanned
    next_target = choose_target(record.placements, exhausted, ctx.store.cooling_offers())
    if attempt >= max_attempts or next_target is None:
        tail = (f"the policy allows {max_attempts} attempt(s)" if attempt >= max_attempts
                else "no candidate is left in the ranking")
        return _unschedulable(ctx, record, expect=expect, attempt_guard=attempt,
                              tail=tail, reasons=reasons, exhausted=exhausted, now=now)
    nxt = record.placements[next_target]
    when = "" if expect is S.DISPATCHING else " after it was accepted"
    try:
        ctx.store.transition(
            record.job_id, to=S.PLACED, expect=expect, attempt=attempt,
            message=f"attempt {attempt} refused by {offer_key(placement)}{when} "
                    f"({type(exc).__name__}{f' {exc.code}' if exc.code else ''}); "
                    f"{'trying it again as' if retry_same else 'failing over to'} "
                    f"{offer_key(nxt)}",
            data={"error": type(exc).__name__, "code": exc.code},
            fields=encode_fields(exhausted=exhausted, attempt_reasons=reasons), now=now)
    except TransitionRefused as refused:
        return Outcome(message=f"nothing to do: the job is now {refused.current}")
    metrics.count_failover(ctx.store, cloud=placement.cloud, reason=metrics.error_family(exc))
    return Outcome(message=f"failing over to {offer_key(nxt)}",
                   followups=(_dispatch(record.job_id, attempt + 1),))


# --- re-planning a batch when a planned job is refused --------------------------------
REPLAN_TIME_LIMIT_S = 10.0  # the solver's limit for a re-plan, inside a worker task
REPLAN_LOCK_TTL_S = 60.0


def _replan(ctx: Context, record: JobRecord, exc: ProviderError, *, expect: JobState,
            reasons: Sequence[AttemptReason], now: dt.datetime) -> Outcome | None:
    """A planned job was refused (capacity / quota) on its planned offer: plan it again with
    the batch's jobs still DEFERRED to a planned start (``planning/replan.py``); None when
    this refusal does not re-plan, and the job fails over through its ranking as any job.

    Design choices:

    * Bounded: a job re-plans its batch at most once (its part keeps ``replanned_on``); a job
      refused again after that fails over through its ranking up to the policy's attempt
      limit. So a batch of n jobs is re-planned at most n times, and never in a loop.
    * One re-plan of a batch at a time: a lock per plan (``replan:{plan_id}``, as the
      dispatch locks are taken). A refusal that finds it held does not wait inside the
      worker: that job fails over through its ranking, and the re-plan under way (which
      counted it as keeping its run) does not move it.
    * The failing job takes its new planned option: launched now on it (PLACED, the next
      attempt), DEFERRED to its new planned start, or UNSCHEDULABLE when the re-plan leaves it
      out; each re-planned DEFERRED job gets its new offer and start (its ``not_before`` and
      its score in the DEFERRED index moved in one script call) or ends UNSCHEDULABLE, each
      with an event saying it was re-planned and why.
    """
    part = record.plan
    placement = record.placement
    if (part is None or part.get("planned") != "placed" or "replanned_on" in part
            or placement is None
            or (placement.cloud, placement.region, placement.instance_type)
            != (part["cloud"], part["region"], part["instance_type"])):
        return None
    lock = f"replan:{part['plan_id']}"
    token = ctx.store.acquire_lock(lock, ttl_s=REPLAN_LOCK_TTL_S)
    if token is None:
        log.info("job %s: batch plan %s is being re-planned by another worker; failing over "
                 "through its ranking", record.job_id, part["plan_id"])
        return None
    try:
        return _replan_locked(ctx, record, placement, exc, expect=expect, reasons=reasons,
                              now=now)
    finally:
        ctx.store.release_lock(lock, token)


def _replan_locked(ctx: Context, record: JobRecord, placement: Placement, exc: ProviderError,
                   *, expect: JobState, reasons: Sequence[AttemptReason],
                   now: dt.datetime) -> Outcome | None:
    from greenplace.scheduler.planning.plan import make_plan
    from greenplace.scheduler.planning.replan import (
        budget_left_usd,
        kept_old_rows,
        revise_document,
        revised_pools,
    )
    from greenplace.scheduler.planning.stored import job_part

    assert record.plan is not None
    document = ctx.store.plan(str(record.plan["plan_id"]))
    if document is None or "pool_defs" not in document:
        return None  # a plan stored before re-planning existed: nothing to re-plan with
    rows = {str(row["job_id"]): row for row in document["jobs"]}
    others = ctx.store.get_many([i for i in rows if i != record.job_id])
    deferred = [r for r in others if r.state is S.DEFERRED and r.plan is not None
                and r.plan.get("planned") == "placed"]
    held = _held_runs(ctx.catalog, [r for r in others if r.state not in FINAL_STATES
                                    and r.state is not S.DEFERRED], rows)
    chosen = [record, *deferred]
    try:
        jobs = [rebuild_job(r, ctx.catalog) for r in chosen]
    except GreenplaceError as exc_rebuild:
        log.warning("batch plan %s: not re-planned (%s)", record.plan["plan_id"], exc_rebuild)
        return None
    why = (f"attempt {record.attempt} of {record.name} ({record.job_id}) was refused by "
           f"{offer_key(placement)} ({type(exc).__name__}{f' {exc.code}' if exc.code else ''})")
    excluded = [*document.get("excluded_offers", []),
                {"cloud": placement.cloud, "region": placement.region,
                 "instance_type": placement.instance_type, "spot": placement.spot, "why": why}]
    now_h = now.replace(minute=0, second=0, microsecond=0)
    ids = [r.job_id for r in chosen]
    decisions = [decide_for(ctx, job, now=now_h, allow_defer=False) for job in jobs]
    revised = make_plan(jobs, decisions,
                        revised_pools(document, now_h=now_h, held=held, excluded=excluded),
                        now=now_h, horizon_h=int(document["summary"]["horizon_h"]),
                        budget_usd=budget_left_usd(document, ids),
                        time_limit_s=REPLAN_TIME_LIMIT_S)
    before = document
    document = revise_document(document, revised, job_ids=ids, at=now, why=why,
                               excluded=excluded)
    revision = document["revisions"][-1]
    position = {str(row["job_id"]): i for i, row in enumerate(document["jobs"])}
    label = (f"batch plan {document['plan_id']} re-planned (revision {revision['revision']}, "
             f"{len(ids)} job(s)) because {why}")
    kept = [other.job_id for other in deferred
            if not _move_replanned(ctx, other, job_part(document, position[other.job_id],
                                                        revision=revision),
                                   label=label, now=now)]
    # A job reconcile released meanwhile keeps its old plan: the stored plan says so.
    document = kept_old_rows(document, before, kept)
    ctx.store.save_plan(document)
    mine = {**job_part(document, position[record.job_id], revision=revision),
            "replanned_on": revision["revision"]}
    metrics.count_failover(ctx.store, cloud=placement.cloud, reason=metrics.error_family(exc))
    return _take_replanned(ctx, record, mine, decisions[0], excluded, expect=expect,
                           reasons=reasons, label=label, now=now)


def _held_runs(catalog: Catalog, records: Sequence[JobRecord],
               rows: Mapping[str, Mapping[str, Any]]) -> list[HeldRun]:
    """The planned runs of the batch's jobs that keep their place, on the offer each really
    holds (a launched job's, else its planned one)."""
    from greenplace.scheduler.planning.replan import HeldRun

    offers = {(o.cloud, o.region, o.instance_type): o for o in catalog.offers}
    out = []
    for record in records:
        row = rows[record.job_id]
        if row["status"] != "placed":
            continue
        where = (row["cloud"], row["region"], row["instance_type"])
        spot = bool(row["spot"])
        if record.state in (S.DISPATCHING, S.RUNNING) and record.placement is not None:
            p = record.placement
            where, spot = (p.cloud, p.region, p.instance_type), p.spot
        offer = offers.get(where)
        if offer is None:
            continue
        duration_h = int(row.get("duration_h") or math.ceil(float(row["runtime_h"])))
        out.append(HeldRun(offer=offer, spot=spot, duration_h=duration_h,
                           start_at=dt.datetime.fromisoformat(row["start_at"])))
    return out


def _move_replanned(ctx: Context, record: JobRecord, part: Mapping[str, Any], *, label: str,
                    now: dt.datetime) -> bool:
    """A DEFERRED job of a re-planned batch: its new offer and start, or UNSCHEDULABLE.
    False when it was no longer DEFERRED (reconcile released it meanwhile): it keeps its old
    plan."""
    from greenplace.scheduler.planning.stored import left_reason

    data = {"plan_id": part["plan_id"], "revision": part["revision"]}
    try:
        if part["planned"] != "placed":
            reason = f"{label}; {left_reason(part)}"
            ctx.store.transition(record.job_id, to=S.UNSCHEDULABLE, expect=S.DEFERRED,
                                 message=reason, data={**data, "binding": part["binding"]},
                                 fields=encode_fields(reason=reason, placements=[],
                                                      plan=part), now=now)
            return True
        # due now once its new start has come (in milliseconds, as ``not_before`` is kept)
        not_before = parse_iso(iso(max(dt.datetime.fromisoformat(part["start_at"]), now)))
        ctx.store.transition(
            record.job_id, to=S.DEFERRED, expect=S.DEFERRED, score=not_before.timestamp(),
            message=f"{label}: now {part['cloud']}:{part['region']} {part['instance_type']} "
                    f"from {part['start_at']}; not before {iso(not_before)}",
            data=data, fields=encode_fields(plan=part, not_before=iso(not_before)), now=now)
    except TransitionRefused as refused:
        log.info("job %s kept its old plan: it is now %s", record.job_id, refused.current)
        return False
    return True


def _take_replanned(ctx: Context, record: JobRecord, part: Mapping[str, Any],
                    decision: PlacementDecision, excluded: Sequence[Mapping[str, Any]], *,
                    expect: JobState, reasons: Sequence[AttemptReason], label: str,
                    now: dt.datetime) -> Outcome:
    """The refused job takes its option in the re-plan: the next attempt now, DEFERRED to its
    new start, or UNSCHEDULABLE when the re-plan left it out."""
    from greenplace.scheduler.planning.stored import follow_plan, left_reason

    attempt = record.attempt
    try:
        if part["planned"] != "placed":
            reason = f"{label}; {left_reason(part)}"
            ctx.store.transition(record.job_id, to=S.UNSCHEDULABLE, expect=expect,
                                 attempt=attempt, message=reason,
                                 data={"plan_id": part["plan_id"], "binding": part["binding"]},
                                 fields=encode_fields(reason=reason, attempt_reasons=reasons,
                                                      plan=part), now=now)
            return Outcome(message=reason)
        followed = follow_plan(decision, part, now=now)
        placements = frozen_ranking(followed)
        refused = {(e["cloud"], e["region"], e["instance_type"], e["spot"]) for e in excluded}
        exhausted = [i for i, p in enumerate(placements)
                     if (p.cloud, p.region, p.instance_type, p.spot) in refused]
        where = f"{part['cloud']}:{part['region']} {part['instance_type']}"
        fields = encode_fields(decision=followed.summary(explain=False), placements=placements,
                               target=-1, exhausted=exhausted, attempt_reasons=reasons,
                               plan=part)
        if followed.start_at is not None:
            not_before = parse_iso(followed.start_at)
            ctx.store.transition(
                record.job_id, to=S.DEFERRED, expect=expect, attempt=attempt,
                score=not_before.timestamp(),
                message=f"{label}: now {where}, deferred to its new planned start: not before "
                        f"{iso(not_before)}",
                data={"plan_id": part["plan_id"], "revision": part["revision"]},
                fields={**fields, **encode_fields(not_before=iso(not_before))}, now=now)
            return Outcome(message=f"re-planned; deferred until {iso(not_before)}")
        ctx.store.transition(
            record.job_id, to=S.PLACED, expect=expect, attempt=attempt,
            message=f"{label}: now {where}, launching it", fields=fields,
            data={"plan_id": part["plan_id"], "revision": part["revision"]}, now=now)
    except TransitionRefused as exc:
        return Outcome(message=f"nothing to do: the job is now {exc.current}")
    return Outcome(message=f"re-planned onto {where}",
                   followups=(_dispatch(record.job_id, attempt + 1),))


def _unschedulable(ctx: Context, record: JobRecord, *, expect: JobState, attempt_guard: int,
                   tail: str, now: dt.datetime,
                   reasons: Sequence[AttemptReason] | None = None,
                   exhausted: Sequence[int] | None = None) -> Outcome:
    reasons = tuple(record.attempt_reasons if reasons is None else reasons)
    listed = "; ".join(f"attempt {r.attempt} {r.cloud}:{r.region} {r.instance_type}: "
                       f"{r.error}{f' [{r.code}]' if r.code else ''}" for r in reasons)
    reason = (f"{len(reasons)} launch attempt(s) refused ({listed}); {tail}" if reasons
              else f"no launch attempt possible: {tail}")
    try:
        ctx.store.transition(
            record.job_id, to=S.UNSCHEDULABLE, expect=expect, attempt=attempt_guard,
            message=reason, fields=encode_fields(
                reason=reason, attempt_reasons=reasons,
                exhausted=record.exhausted if exhausted is None else exhausted), now=now)
    except TransitionRefused as exc:
        return Outcome(message=f"nothing to do: the job is now {exc.current}")
    return Outcome(message=reason)


def _fail(ctx: Context, record: JobRecord, *, expect: JobState, reason: str,
          now: dt.datetime, attempt_guard: int | None = None,
          exit_code: int | None = None) -> Outcome:
    """FAILED with ``reason``; a launched instance is queued for deletion in the same step."""
    try:
        ctx.store.transition(record.job_id, to=S.FAILED, expect=expect, attempt=attempt_guard,
                             message=reason, terminate=record.handle is not None,
                             fields=encode_fields(reason=reason, exit_code=exit_code), now=now)
    except TransitionRefused as exc:
        return Outcome(message=f"nothing to do: the job is now {exc.current}")
    return Outcome(message=f"failed: {reason}")


# --- cancel and terminate -------------------------------------------------------------
def cancel_job(store: JobStore, job_id: str, *, now: dt.datetime) -> Outcome:
    """Cancel an active job; a launched (or launching) instance is queued for termination.

    Raises:
        JobNotFoundError; UserInputError when the job already reached a final state.
    """
    for _ in range(10):
        record = store.get(job_id)
        if record.state in FINAL_STATES:
            instance = ("" if record.handle is None else
                        f"; its instance {record.handle.instance_id} was deleted at "
                        f"{record.terminated_at}" if record.terminated_at else
                        f"; its instance {record.handle.instance_id} is being deleted")
            raise UserInputError(
                f"Job {job_id} ({record.name}) is already {record.state}{instance}; there is "
                "nothing to cancel. To fix: pick an active job from `greenplace status`.")
        launched = record.state in (S.DISPATCHING, S.RUNNING)
        try:
            store.transition(job_id, to=S.CANCELLED, expect=record.state,
                             message=f"cancelled by the user (was {record.state})",
                             fields=encode_fields(cancelled_from=str(record.state)),
                             terminate=launched, now=now)
        except TransitionRefused:
            continue  # it moved on meanwhile; look again
        followups = (Followup(task="terminate", args=(job_id,)),) if launched else ()
        return Outcome(message=f"cancelled (was {record.state})", followups=followups)
    raise UserInputError(f"Job {job_id} keeps changing state; try again. To fix: run "
                         "`greenplace cancel` once more.")


def terminate_job(ctx: Context, job_id: str, *, now: dt.datetime) -> Outcome:
    """Delete the instance of a job that reached a final state (idempotent).

    The job stays in the deletion queue until the provider confirms nothing of
    the instance is left; each reconcile pass asks again.
    """
    store = ctx.store
    record = store.get(job_id)
    if record.state not in FINAL_STATES or record.terminated_at:
        store.forget_termination(job_id)
        return Outcome(message="nothing to delete")
    handle = record.handle
    if handle is None:
        if record.state is S.CANCELLED and record.cancelled_from == S.DISPATCHING:
            return Outcome(message="waiting for the in-flight launch to settle",
                           followups=(_dispatch(job_id, record.attempt),))
        store.forget_termination(job_id)
        return Outcome(message="no instance was launched")
    try:
        gone = ctx.providers.by_name(handle.provider).delete(handle)
    except TransientError as exc:
        return Outcome(message=f"delete failed transiently: {exc}", retry_in_s=_backoff_s(1))
    except GreenplaceError as exc:
        log.warning("deleting %s of job %s failed (retried next pass): %s",
                    handle.instance_id, job_id, exc)
        return Outcome(message=f"delete failed: {exc}")
    if not gone:
        return Outcome(message=f"deleting {handle.instance_id}: in progress")
    store.terminated(job_id, now=now, message=(
        f"deleted instance {handle.instance_id} ({handle.cloud}:{handle.region}) and what "
        "greenplace created for it"))
    return Outcome(message=f"deleted {handle.instance_id}", counts={"deleted": 1})


def _delete_orphan(ctx: Context, job_id: str, attempt: int, handle: InstanceHandle, *,
                   now: dt.datetime) -> Outcome | None:
    """Delete the instance of a superseded attempt; None until the cloud confirms."""
    try:
        gone = ctx.providers.by_name(handle.provider).delete(handle)
    except GreenplaceError as exc:
        log.warning("deleting %s (job %s attempt %d) failed (retried next pass): %s",
                    handle.instance_id, job_id, attempt, exc)
        return None
    if not gone:
        return None
    ctx.store.orphan_deleted(job_id, attempt, now=now, message=(
        f"deleted instance {handle.instance_id} of attempt {attempt} "
        f"({handle.cloud}:{handle.region})"))
    return Outcome(message=f"deleted {handle.instance_id}", counts={"deleted": 1})


# --- reconcile -----------------------------------------------------------------------
def _follow(ctx: Context, record: JobRecord, status: InstanceStatus, *,
            now: dt.datetime) -> Outcome | None:
    """Move one RUNNING job on from its instance's ``status``; None while it still runs."""
    handle = record.handle
    assert handle is not None
    guard = record.attempt
    try:
        if status.handle is not None and status.handle != handle:
            moved = ((status.handle.instance_id, status.handle.zone)
                     != (handle.instance_id, handle.zone))
            ctx.store.update(
                record.job_id, expect=S.RUNNING, attempt=guard, now=now,
                fields=encode_fields(handle=status.handle),
                message=(f"{handle.instance_id}: {status.detail}; launching "
                         f"{status.handle.instance_id} "
                         f"({status.handle.zone or handle.region}) instead" if moved else
                         f"{handle.instance_id}: the launch operation completed "
                         f"({status.handle.zone or handle.region})"),
                data={"instance_id": status.handle.instance_id})
            handle = status.handle
            record = dataclasses.replace(record, handle=handle)
        state, where = status.state, f"{handle.instance_id} ({handle.cloud}:{handle.region})"
        if state in LIVE:
            return None
        if state is InstanceState.EXITED:
            return _exited(ctx, record, status, where=where, now=now)
        if state is InstanceState.LAUNCH_FAILED:
            return _launch_failed(ctx, record, status, where=where, now=now)
        if state is InstanceState.PREEMPTED and (record.placement and record.placement.spot):
            limit = policy_of(record).failover.max_attempts
            if record.attempt >= limit:
                return _fail(ctx, record, expect=S.RUNNING, attempt_guard=guard, now=now,
                             reason=f"{where} was preempted (preemption "
                                    f"{record.preemptions + 1}); all {limit} launch attempts "
                                    "the policy allows are used")
            ctx.store.orphan(record.job_id, guard, handle)
            ctx.store.transition(
                record.job_id, to=S.PLACED, expect=S.RUNNING, attempt=guard,
                message=f"{where} was preempted; launching again",
                fields=encode_fields(preemptions=record.preemptions + 1), now=now)
            return Outcome(message="preempted; requeued",
                           followups=(_dispatch(record.job_id, guard + 1),))
    except TransitionRefused:
        return None
    reasons = {
        InstanceState.FAILED: f"the machine failed on {where}: {status.detail}",
        InstanceState.PREEMPTED: f"{where} was preempted",
        InstanceState.TERMINATED: f"{where} was terminated outside greenplace",
        InstanceState.MISSING: f"{where} disappeared: {status.detail}",
    }
    return _fail(ctx, record, expect=S.RUNNING, attempt_guard=guard, now=now,
                 reason=reasons.get(state, f"{where} is {state}"))


def _exited(ctx: Context, record: JobRecord, status: InstanceStatus, *, where: str,
            now: dt.datetime) -> Outcome | None:
    """The instance powered itself off: the exit code decides, once the console shows it.

    Design choice: SUCCEEDED needs a read exit code of 0. A clean power-off alone
    proves nothing (a crashed command powers off just as cleanly), so a code that
    stays unreadable for ``exit_code_wait_s`` ends the job FAILED, saying so.
    """
    code, guard = status.exit_code, record.attempt
    _keep_measurement(ctx, record, status, now=now)
    if code is None:
        wait_s = ctx.settings.exit_code_wait_s
        if not record.exited_at:
            ctx.store.update(record.job_id, expect=S.RUNNING, attempt=guard, now=now,
                             fields=encode_fields(exited_at=iso(now)),
                             message=f"{where} powered off; waiting up to {wait_s:g} s for its "
                                     "console to show the command's exit code")
            return None
        if (now - parse_iso(record.exited_at)).total_seconds() < wait_s:
            return None
        return _fail(ctx, record, expect=S.RUNNING, attempt_guard=guard, now=now, reason=(
            f"{where} powered off, but the command's exit code did not appear on its console "
            f"within {wait_s:g} s, so success cannot be confirmed"))
    if code != 0:
        return _fail(ctx, record, expect=S.RUNNING, attempt_guard=guard, now=now,
                     exit_code=code, reason=f"the job's command exited with {code} on {where}")
    ctx.store.transition(record.job_id, to=S.SUCCEEDED, expect=S.RUNNING, attempt=guard,
                         message=f"{where}: the job's command exited with 0",
                         fields=encode_fields(exit_code=0), terminate=True, now=now)
    return Outcome(message="succeeded")


def _keep_measurement(ctx: Context, record: JobRecord, status: InstanceStatus, *,
                      now: dt.datetime) -> None:
    """Keep the agent's summary the provider read (the ``local`` provider's job folder), as
    the API keeps one an agent reports, and let it teach calibration; once per job."""
    from greenplace.scheduler import calibration
    from greenplace.scheduler.measurement import checked_summary

    summary = checked_summary(status.measurement)
    if summary is None or record.measurement is not None:
        return
    ctx.store.record_telemetry(record.job_id, at=now, exit_code=summary["exit_code"],
                               energy_kwh=summary["energy_j"] / 3.6e6, measurement=summary)
    calibration.learn(ctx.store, record, summary)
    attribute_job(ctx, record.job_id)


def attribute_job(ctx: Context, job_id: str) -> Outcome:
    """Charge a measured run at the grid intensity of its own hours (``attribution``)."""
    from greenplace.scheduler.attribution import attribute

    placement = ctx.store.get(job_id).placement
    region = (ctx.catalog.region(f"{placement.cloud}:{placement.region}")
              if placement is not None else None)
    found = attribute(ctx.store, job_id, chain=ctx.chain, region=region)
    return Outcome(message=f"run intensity {found.g_per_kwh:g} g/kWh ({found.basis})"
                   if found else "no hourly intensity: the decision's figure stays")


def _launch_failed(ctx: Context, record: JobRecord, status: InstanceStatus, *, where: str,
                   now: dt.datetime) -> Outcome | None:
    """The cloud refused the launch after accepting it: fail over as for a synchronous refusal."""
    assert record.handle is not None
    exc = status.error or TransientError(
        f"{where}: the launch failed after it was accepted ({status.detail or 'no detail'})",
        provider=record.handle.provider, operation="status", code="LaunchFailed")
    if isinstance(exc, (*FAILOVER_ERRORS, TransientError)):
        ctx.store.orphan(record.job_id, record.attempt, record.handle)
        return _failover(ctx, record, exc, expect=S.RUNNING, now=now)
    return _fail(ctx, record, expect=S.RUNNING, attempt_guard=record.attempt, now=now,
                 reason=f"attempt {record.attempt} on {where}: the cloud refused the launch "
                        f"after accepting it: {exc}")


def _follow_running(ctx: Context, records: Sequence[JobRecord], *, now: dt.datetime,
                    stop_at: float, counts: dict[str, int]) -> list[Outcome]:
    """Follow RUNNING jobs with one ``list_managed`` call per (provider, region).

    An instance the list shows alive needs nothing more. Only one the list shows
    ended, or does not show (just launched and not listed yet, or gone), gets its
    own ``status()`` call, which follows a pending operation and reads the exit
    code. A region whose list call fails (throttled) is skipped this pass rather
    than polled instance by instance, which would only deepen the throttling.
    """
    groups: dict[tuple[str, str], list[JobRecord]] = {}
    outcomes: list[Outcome] = []
    for record in records:
        if record.handle is None:
            outcomes.append(_fail(ctx, record, expect=S.RUNNING, now=now,
                                  reason="running without an instance handle (store damaged)"))
            continue
        groups.setdefault((record.handle.provider, record.handle.region), []).append(record)
    for (provider_name, region), members in sorted(groups.items()):
        if time.monotonic() > stop_at:
            break
        provider = ctx.providers.by_name(provider_name)
        counts["list_calls"] += 1
        try:
            listed = {m.handle.instance_id: m.status for m in provider.list_managed(region)}
        except GreenplaceError as exc:
            log.warning("listing %s instances in %s failed; next pass: %s", provider_name,
                        region, exc)
            continue
        for record in members:
            assert record.handle is not None
            seen = listed.get(record.handle.instance_id)
            if seen is not None and seen.state in LIVE:
                continue
            counts["status_calls"] += 1
            try:
                status = provider.status(record.handle)
            except GreenplaceError as exc:
                log.warning("status of %s (%s) failed: %s", record.job_id,
                            record.handle.instance_id, exc)
                continue
            outcome = _follow(ctx, record, status, now=now)
            if outcome is not None:
                outcomes.append(outcome)
    return outcomes


def reconcile(ctx: Context, *, now: dt.datetime, budget_s: float) -> Outcome:
    """One pass over the service: release due DEFERRED jobs, follow RUNNING ones,
    delete the instances of ended jobs and superseded attempts, and re-enqueue jobs
    whose messages were lost.

    Only one pass runs at a time (a lock); the pass stops after ``budget_s`` and
    the next one carries on.
    """
    store = ctx.store
    token = store.acquire_lock("reconcile", ttl_s=budget_s + 5)
    if token is None:
        return Outcome(message="another reconcile pass is running")
    stop_at = time.monotonic() + budget_s
    counts = {"released": 0, "finished": 0, "deleted": 0, "nudged": 0, "list_calls": 0,
              "status_calls": 0}
    followups: list[Followup] = []

    def add(outcome: Outcome | None, counter: str) -> None:
        if outcome is not None:
            counts[counter] += 1
            followups.extend(outcome.followups)

    try:
        for job_id in store.ids_in_state(S.DEFERRED, max_score=now.timestamp(), limit=500):
            if time.monotonic() > stop_at:
                break
            add(_release(ctx, job_id, now=now), "released")
        running = store.ids_in_state(S.RUNNING)
        records = [r for start in range(0, len(running), 500)
                   for r in store.get_many(running[start:start + 500]) if r.state is S.RUNNING]
        for outcome in _follow_running(ctx, records, now=now, stop_at=stop_at, counts=counts):
            add(outcome, "finished")
        for job_id in store.to_terminate():
            if time.monotonic() > stop_at:
                break
            outcome = terminate_job(ctx, job_id, now=now)
            if outcome.followups and not store.claim_nudge(job_id, ttl_s=ctx.settings.stall_s):
                continue
            followups.extend(outcome.followups)
            counts["deleted"] += outcome.counts.get("deleted", 0)
        for job_id, attempt, handle in store.orphans():
            if time.monotonic() > stop_at:
                break
            add(_delete_orphan(ctx, job_id, attempt, handle, now=now), "deleted")
        followups.extend(_nudges(ctx, now=now, counts=counts))
    finally:
        store.release_lock("reconcile", token)
    return Outcome(message=", ".join(f"{k} {v}" for k, v in counts.items()),
                   followups=tuple(followups), counts=counts)


def _release(ctx: Context, job_id: str, *, now: dt.datetime) -> Outcome:
    """A DEFERRED job's window opened: place it again on fresh data, now, and dispatch."""
    record = ctx.store.get(job_id)
    if record.state is not S.DEFERRED:
        return Outcome(message="not deferred any more")
    try:
        job = rebuild_job(record, ctx.catalog)
    except GreenplaceError as exc:
        return _fail(ctx, record, expect=S.DEFERRED, reason=f"cannot rebuild the job: {exc}",
                     now=now)
    decision = decide_record(ctx, record, job, now=now, allow_defer=False)
    return apply_decision(ctx, record, decision, expect=S.DEFERRED, now=now)


def _nudges(ctx: Context, *, now: dt.datetime, counts: dict[str, int]) -> list[Followup]:
    """Re-enqueue the next step of jobs stuck for ``stall_s`` (a lost or dropped message)."""
    store, settings = ctx.store, ctx.settings
    cutoff = now.timestamp() - settings.stall_s
    out: list[Followup] = []
    for state in (S.QUEUED, S.PLACED, S.DISPATCHING):
        ids = store.ids_in_state(state, max_score=cutoff, limit=1000)
        for record in store.get_many(ids):
            if record.state is not state:
                continue
            if state is S.DISPATCHING and store.lock_ttl_s(f"dispatch:{record.job_id}") > 0:
                continue
            if not store.claim_nudge(record.job_id, ttl_s=settings.stall_s):
                continue
            if state is S.QUEUED:
                out.append(Followup(task="place", args=(record.job_id,)))
            elif state is S.PLACED:
                out.append(_dispatch(record.job_id, record.attempt + 1))
            else:
                out.append(_dispatch(record.job_id, record.attempt))
            counts["nudged"] += 1
    return out


__all__ = [
    "Context", "Followup", "Outcome", "PlannedLaunch", "Providers",
    "apply_decision", "cancel_job", "choose_target", "decide", "dispatch_job", "frozen_ranking",
    "job_launch",
    "place_and_dispatch", "place_job", "plan", "reconcile", "rebuild_job", "terminate_job",
]
