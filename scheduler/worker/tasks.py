"""The thin, named Celery tasks: ids in, ``greenplace.scheduler.dispatch`` does the work.

Each task reads the job store, calls one function of ``greenplace.scheduler.dispatch``,
enqueues the follow-ups it returns and, when asked, retries itself with a
bounded countdown. Every task is idempotent: a redelivered or duplicated message
finds the job already moved on and does nothing (or re-sends the next step).

Design choice: follow-ups are sent after the state change they follow is
committed. A worker that dies in between leaves the job in a state whose
message is redelivered (acks_late) or, at worst, found by reconcile's stall
sweep; sending first could dispatch a job whose state change never happened.

**Redis outages: fail fast, end cleanly.** Root cause of the workers that stopped
after a 30 s outage (``Soft time limit exceeded`` then ``Unrecoverable error:
UnicodeDecodeError``, exit 0): during the outage a task's Redis I/O retried for
seconds (the store's client, Celery's publish retries), then the task raised
(``autoretry_for`` -> ``retry`` -> ``Reject`` whose traceback rides back to the
main process). Meanwhile the worker's main process sat in its reconnect loop,
reading no results; when Redis came back its timers fired at once for every task
that had run during the outage, and the hard time limit SIGKILLed pool processes
that were still writing a multi-kilobyte failure result into their pipe. The
main process then read a torn message and stopped. So now:

- every Redis call is bounded (``store.redis_client``: 2 quick retries, 2 s connect
  and 5 s read timeouts; the broker: ``app.PUBLISH_RETRY_POLICY`` and socket
  timeouts), so a task in an outage ends within a few seconds;
- a task never raises on Redis trouble, a lost broker or its soft time limit
  (``_run``): it logs one line and returns None, whose result is a few bytes (one
  atomic pipe write, which a kill cannot tear). It first asks for a retry in a
  few seconds; when even that publish fails (the broker is the same Redis), its
  message is left to the broker: the ack goes to a closed channel,
  which ``app.ClosedChannelSafeRequest`` skips, and the visibility sweep
  redelivers the message once Redis is back; where it was acknowledged
  anyway, reconcile's stall sweep re-enqueues the job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import redis
from celery import Celery, Task, bootsteps, shared_task, signals
from celery.exceptions import MaxRetriesExceededError, Reject, SoftTimeLimitExceeded
from kombu import exceptions as kombu_exceptions

from greenplace.scheduler import metrics
from greenplace.scheduler.dispatch import (
    Context,
    Followup,
    Outcome,
    attribute_job,
    current,
    dispatch_job,
    place_and_dispatch,
    reconcile,
    terminate_job,
)
from greenplace.scheduler.exceptions import JobNotFoundError
from greenplace.scheduler.store import open_store, utc_now
from greenplace.scheduler.worker.app import settings_of
from greenplace.scheduler.worker.heartbeat import Heartbeat

log = logging.getLogger("greenplace.tasks")

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
# Redis (store or broker) unreachable: what a task gives up on at once.
OUTAGE_ERRORS = (*REDIS_ERRORS, kombu_exceptions.OperationalError)
# Lock waits and transient provider errors both retry; dispatch_job caps the
# transient ones at MAX_TRANSIENT_RETRIES, this caps the total.
MAX_TASK_RETRIES = 20
# A task that met a Redis outage asks to run again this much later (seconds).
OUTAGE_RETRY_S = 3.0

_CONTEXTS: dict[tuple[int, int], Context] = {}


def context(app: Celery) -> Context:
    """This process's Context (store, providers, placer), built on first use after fork and
    rebuilt on the new figures when a price refresh changed the catalog."""
    key = (os.getpid(), id(app))
    found = _CONTEXTS.get(key)
    if found is None:
        settings = settings_of(app)
        found = _CONTEXTS[key] = Context.build(settings, open_store(settings))
    else:
        found = _CONTEXTS[key] = current(found)
    return found


def enqueue(app: Celery, followups: Iterable[Followup]) -> None:
    """Send each follow-up as its named task (routed to its queue by the app's routes)."""
    for f in followups:
        app.send_task(f"greenplace.{f.task}", args=list(f.args),
                      countdown=f.countdown_s or None)


def _retry(task: Task, countdown_s: float, what: str) -> None:
    """Send this task again in ``countdown_s``; never raises (see the module docstring).

    ``throw=False``: the task then returns normally; its message is acknowledged and
    the new one carries on. A publish that fails (broker down) leaves the message to
    redelivery.
    """
    try:
        task.retry(countdown=countdown_s, max_retries=MAX_TASK_RETRIES, throw=False)
    except MaxRetriesExceededError:
        log.warning("%s: gave up after %d retries; reconcile will pick it up", what,
                    MAX_TASK_RETRIES)
    except Reject as exc:  # Celery's answer to a failed publish
        log.warning("%s: cannot send its retry (%s); the message is redelivered or "
                    "reconcile picks the job up", what, exc.reason)


def _finish(task: Task, outcome: Outcome, what: str) -> None:
    log.info("%s: %s", what, outcome.message)
    enqueue(task.app, outcome.followups)
    if outcome.retry_in_s is not None:
        _retry(task, outcome.retry_in_s, what)


def _run(task: Task, what: str, work: Callable[[], Outcome | None]) -> None:
    """Run one task's work and finish it; Redis trouble or the soft time limit end it
    quietly (one log line, a result of a few bytes) instead of raising, asking for a
    retry a few seconds later."""
    try:
        with metrics.batched():  # the task's metric writes in one round trip
            outcome = work()
        if outcome is not None:
            _finish(task, outcome, what)
    except JobNotFoundError:
        log.warning("%s: no such job (store flushed?)", what)
    except OUTAGE_ERRORS as exc:
        _again(task, what, f"Redis unavailable ({type(exc).__name__}: {exc})")
    except SoftTimeLimitExceeded:
        # A slow step (a first import, a loaded machine, a slow cloud API): everything
        # it did is recorded step by step, so the retry carries on where it stopped.
        _again(task, what, "soft time limit reached")


def _again(task: Task, what: str, why: str) -> None:
    log.warning("%s: %s; trying again in %.0f s", what, why, OUTAGE_RETRY_S)
    try:
        _retry(task, OUTAGE_RETRY_S, what)
    except OUTAGE_ERRORS:
        log.warning("%s: cannot send its retry; the message is redelivered", what)


@shared_task(name="greenplace.place", bind=True)
def place(self: Task, job_id: str) -> None:
    """Place a QUEUED job (freeze its ranked decision), then launch attempt 1 in the same task."""
    _run(self, f"place {job_id}",
         lambda: place_and_dispatch(context(self.app), job_id, now=utc_now()))


@shared_task(name="greenplace.dispatch", bind=True)
def dispatch(self: Task, job_id: str, attempt: int) -> None:
    """Launch attempt ``attempt`` of a job (prepare + idempotent submit; never waits for boot)."""
    _run(self, f"dispatch {job_id} attempt {attempt}",
         lambda: dispatch_job(context(self.app), job_id, int(attempt),
                              retries=self.request.retries, now=utc_now()))


@shared_task(name="greenplace.attribute", bind=True)
def attribute(self: Task, job_id: str) -> None:
    """Charge a job's measured run at the grid intensity of the hours it ran."""
    _run(self, f"attribute {job_id}",
         lambda: attribute_job(context(self.app), job_id))


@shared_task(name="greenplace.terminate", bind=True)
def terminate(self: Task, job_id: str) -> None:
    """Delete the instance of a job that ended (cancelled or finished); reconcile repeats it
    until the cloud confirms."""
    _run(self, f"terminate {job_id}",
         lambda: terminate_job(context(self.app), job_id, now=utc_now()))


def _pass(what: str, work: Callable[[], None]) -> None:
    """One pass of a periodic task (reconcile, gc, prune): Redis trouble or the soft time
    limit end this pass with one log line; the next pass carries on."""
    try:
        with metrics.batched():
            work()
    except OUTAGE_ERRORS as exc:
        log.warning("%s skipped: Redis unavailable (%s)", what, exc)
    except SoftTimeLimitExceeded:
        log.warning("%s stopped at its soft time limit; the next pass goes on", what)


@shared_task(name="greenplace.reconcile", bind=True)
def reconcile_task(self: Task) -> None:
    """Beat's periodic pass: follow RUNNING jobs, release DEFERRED ones, recover lost ones."""
    def work() -> None:
        ctx = context(self.app)
        budget_s = max(1.0, ctx.settings.task_time_limit_s - 10.0)
        outcome = reconcile(ctx, now=utc_now(), budget_s=budget_s)
        if outcome.followups or any(outcome.counts.values()):
            log.info("reconcile: %s", outcome.message)
        enqueue(self.app, outcome.followups)

    _pass("reconcile", work)


@shared_task(name="greenplace.gc", bind=True)
def gc_task(self: Task, provider: str | None = None, region: str | None = None) -> None:
    """The leak sweep (``greenplace gc``). Beat's message names no region: it fans out one
    message per (provider, region) greenplace launched in, so each task lists one region
    and stays well inside the time limit however many regions are in use."""
    from greenplace.scheduler.gc import sweep

    def work() -> None:
        ctx = context(self.app)
        if provider is None or region is None:
            for name, where in ctx.store.regions_used():
                self.app.send_task("greenplace.gc", args=[name, where])
            return
        rows = sweep(ctx.store, {provider: ctx.providers.by_name(provider)},
                     [(provider, region)], dry_run=False)
        for row in rows:
            if row.action not in ("kept", "gone"):
                log.info("gc: %s %s %s (%s): %s", row.action, row.provider,
                         row.instance_id or "", row.region, row.reason)

    _pass("gc", work)


# The price refresh's own limits (hard, soft): the clouds' price APIs page through thousands
# of items, so a refresh takes minutes, not the seconds of every other task (see app.py).
CATALOG_REFRESH_TIME_LIMIT_S = 900.0
CATALOG_REFRESH_SOFT_LIMIT_S = 870.0


@shared_task(name="greenplace.catalog_refresh", bind=True, acks_late=False,
             time_limit=CATALOG_REFRESH_TIME_LIMIT_S,
             soft_time_limit=CATALOG_REFRESH_SOFT_LIMIT_S)
def catalog_refresh_task(self: Task, clouds: list[str] | None = None) -> None:
    """Beat's price refresh (``greenplace catalog refresh`` by hand). Beat's message names
    no cloud: the clouds whose credentials are found (no network) are refreshed one per task,
    each task sending the next (``refresh.service``). Each writes where
    ``GREENPLACE_CATALOG_PRICES`` says, and counts what kept old figures as a metric."""
    from greenplace.scheduler.catalog.refresh.service import refresh_for_service

    def work() -> None:
        refresh_for_service(context(self.app).store, clouds=clouds, environ=os.environ,
                            now=utc_now(), send=lambda rest: self.app.send_task(
                                "greenplace.catalog_refresh", args=[rest]))

    _pass("catalog refresh", work)


@shared_task(name="greenplace.noop")
def noop() -> None:
    """Does nothing: the baseline of the queue benchmark and a cheap liveness probe."""


# Jobs one prune task removes at most; a sweep with more to do sends itself again.
PRUNE_BATCH = 5000


@shared_task(name="greenplace.prune", bind=True)
def prune_task(self: Task) -> None:
    """The retention sweep (``GREENPLACE_RETENTION_DAYS``): delete final jobs that ended
    longer ago, in batches that stay well inside the task time limit."""
    def work() -> None:
        ctx = context(self.app)
        keep_s = ctx.settings.retention_s
        if keep_s is None:
            return
        budget_s = max(1.0, ctx.settings.task_time_limit_s - 10.0)
        result = ctx.store.prune(older_than_s=keep_s, limit=PRUNE_BATCH, budget_s=budget_s)
        if result.pruned or result.kept_deleting:
            log.info("prune: %d final job(s) deleted; %d kept until their instance is deleted",
                     len(result.pruned), len(result.kept_deleting))
        if result.more and result.pruned:
            self.app.send_task("greenplace.prune")

    _pass("prune", work)


_HEARTBEATS: list[Heartbeat] = []


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Start this worker's heartbeat once its consumer is connected (main process); it
    stops writing when the worker leaves its running state."""
    blueprint = getattr(getattr(sender, "controller", None), "blueprint", None)

    def running() -> bool:
        return blueprint is None or blueprint.state == bootsteps.RUN

    store = open_store(settings_of(sender.app))
    _HEARTBEATS.append(Heartbeat(store, sender.hostname, alive=running).start())


@signals.worker_shutting_down.connect
@signals.worker_shutdown.connect
def _stop_heartbeat(**_: Any) -> None:
    while _HEARTBEATS:
        _HEARTBEATS.pop().stop()


@signals.worker_init.connect
def _import_adapters(sender: Any = None, **_: Any) -> None:
    """Import the routed providers' adapters (and cloud SDKs) in the worker's main process,
    before it forks its pool, so no task pays for an import inside its time limit."""
    from greenplace.providers.registry import import_adapter
    from greenplace.scheduler.exceptions import GreenplaceError

    settings = settings_of(sender.app)
    for name in sorted(set(settings.providers.values())):
        try:
            import_adapter(name)
        except GreenplaceError as exc:  # said again, to the job, when the adapter is used
            log.warning("cannot load the %s adapter: %s", name, exc)
