"""The thin, named Celery tasks: ids in, ``greenplace.scheduler.dispatch`` does the work.

Each task reads the job store, calls one function of ``greenplace.scheduler.dispatch``,
enqueues the follow-ups it returns and, when asked, retries itself with a
bounded countdown. Every task is idempotent: a redelivered or duplicated message
finds the job already moved on and does nothing (or re-sends the next step).

Design choice: follow-ups are sent after the state change they follow is
committed. A worker that dies in between leaves the job in a state whose
message is redelivered (acks_late) or, at worst, found by reconcile's stall
sweep; sending first could dispatch a job whose state change never happened.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import redis
from celery import Celery, Task, shared_task
from celery.exceptions import MaxRetriesExceededError

from greenplace.scheduler.dispatch import (
    Context,
    Followup,
    Outcome,
    dispatch_job,
    place_and_dispatch,
    reconcile,
    terminate_job,
)
from greenplace.scheduler.exceptions import JobNotFoundError
from greenplace.scheduler.store import JobStore, redis_client, utc_now
from greenplace.scheduler.worker.app import settings_of

log = logging.getLogger("greenplace.tasks")

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
# Lock waits and transient provider errors both retry; dispatch_job caps the
# transient ones at MAX_TRANSIENT_RETRIES, this caps the total.
MAX_TASK_RETRIES = 20

_CONTEXTS: dict[tuple[int, int], Context] = {}


def context(app: Celery) -> Context:
    """This process's Context (store, providers, placer), built on first use after fork."""
    key = (os.getpid(), id(app))
    found = _CONTEXTS.get(key)
    if found is None:
        settings = settings_of(app)
        store = JobStore(redis_client(settings.redis_url, ca_cert=settings.redis_ca_cert),
                         prefix=settings.key_prefix)
        found = _CONTEXTS[key] = Context.build(settings, store)
    return found


def enqueue(app: Celery, followups: Iterable[Followup]) -> None:
    """Send each follow-up as its named task (routed to its queue by the app's routes)."""
    for f in followups:
        app.send_task(f"greenplace.{f.task}", args=list(f.args),
                      countdown=f.countdown_s or None)


def _finish(task: Task, outcome: Outcome, what: str) -> None:
    log.info("%s: %s", what, outcome.message)
    enqueue(task.app, outcome.followups)
    if outcome.retry_in_s is not None:
        try:
            raise task.retry(countdown=outcome.retry_in_s, max_retries=MAX_TASK_RETRIES)
        except MaxRetriesExceededError:
            log.warning("%s: gave up after %d retries; reconcile will pick it up", what,
                        MAX_TASK_RETRIES)


# A Redis outage (restart, failover) retries the task with backoff, 5 times at most.
@shared_task(name="greenplace.place", bind=True, autoretry_for=REDIS_ERRORS, retry_backoff=1,
             retry_backoff_max=10, retry_jitter=True, max_retries=5)
def place(self: Task, job_id: str) -> None:
    """Place a QUEUED job (freeze its ranked decision), then launch attempt 1 in the same task."""
    try:
        outcome = place_and_dispatch(context(self.app), job_id, now=utc_now())
    except JobNotFoundError:
        log.warning("place %s: no such job (store flushed?)", job_id)
        return
    _finish(self, outcome, f"place {job_id}")


# A Redis outage (restart, failover) retries the task with backoff, 5 times at most.
@shared_task(name="greenplace.dispatch", bind=True, autoretry_for=REDIS_ERRORS, retry_backoff=1,
             retry_backoff_max=10, retry_jitter=True, max_retries=5)
def dispatch(self: Task, job_id: str, attempt: int) -> None:
    """Launch attempt ``attempt`` of a job (prepare + idempotent submit; never waits for boot)."""
    try:
        outcome = dispatch_job(context(self.app), job_id, int(attempt),
                               retries=self.request.retries, now=utc_now())
    except JobNotFoundError:
        log.warning("dispatch %s: no such job (store flushed?)", job_id)
        return
    _finish(self, outcome, f"dispatch {job_id} attempt {attempt}")


# A Redis outage (restart, failover) retries the task with backoff, 5 times at most.
@shared_task(name="greenplace.terminate", bind=True, autoretry_for=REDIS_ERRORS, retry_backoff=1,
             retry_backoff_max=10, retry_jitter=True, max_retries=5)
def terminate(self: Task, job_id: str) -> None:
    """Delete the instance of a job that ended (cancelled or finished); reconcile repeats it
    until the cloud confirms."""
    try:
        outcome = terminate_job(context(self.app), job_id, now=utc_now())
    except JobNotFoundError:
        return
    _finish(self, outcome, f"terminate {job_id}")


@shared_task(name="greenplace.reconcile", bind=True)
def reconcile_task(self: Task) -> None:
    """Beat's periodic pass: follow RUNNING jobs, release DEFERRED ones, recover lost ones."""
    ctx = context(self.app)
    budget_s = max(1.0, ctx.settings.task_time_limit_s - 10.0)
    try:
        outcome = reconcile(ctx, now=utc_now(), budget_s=budget_s)
    except REDIS_ERRORS as exc:
        log.warning("reconcile skipped: Redis unavailable (%s)", exc)
        return
    if outcome.followups or any(outcome.counts.values()):
        log.info("reconcile: %s", outcome.message)
    enqueue(self.app, outcome.followups)


@shared_task(name="greenplace.gc", bind=True)
def gc_task(self: Task, provider: str | None = None, region: str | None = None) -> None:
    """The leak sweep (``greenplace gc``). Beat's message names no region: it fans out one
    message per (provider, region) greenplace launched in, so each task lists one region
    and stays well inside the time limit however many regions are in use."""
    from greenplace.scheduler.gc import sweep

    ctx = context(self.app)
    try:
        if provider is None or region is None:
            for name, where in ctx.store.regions_used():
                self.app.send_task("greenplace.gc", args=[name, where])
            return
        rows = sweep(ctx.store, {provider: ctx.providers.by_name(provider)},
                     [(provider, region)], dry_run=False)
    except REDIS_ERRORS as exc:
        log.warning("gc skipped: Redis unavailable (%s)", exc)
        return
    for row in rows:
        if row.action not in ("kept", "gone"):
            log.info("gc: %s %s %s (%s): %s", row.action, row.provider, row.instance_id or "",
                     row.region, row.reason)


@shared_task(name="greenplace.noop")
def noop() -> None:
    """Does nothing: the baseline of the queue benchmark and a cheap liveness probe."""


# Jobs one prune task removes at most; a sweep with more to do sends itself again.
PRUNE_BATCH = 5000


@shared_task(name="greenplace.prune", bind=True)
def prune_task(self: Task) -> None:
    """The retention sweep (``GREENPLACE_RETENTION_DAYS``): delete final jobs that ended
    longer ago, in batches that stay well inside the task time limit."""
    ctx = context(self.app)
    keep_s = ctx.settings.retention_s
    if keep_s is None:
        return
    budget_s = max(1.0, ctx.settings.task_time_limit_s - 10.0)
    try:
        result = ctx.store.prune(older_than_s=keep_s, limit=PRUNE_BATCH, budget_s=budget_s)
    except REDIS_ERRORS as exc:
        log.warning("prune skipped: Redis unavailable (%s)", exc)
        return
    if result.pruned or result.kept_deleting:
        log.info("prune: %d final job(s) deleted; %d kept until their instance is deleted",
                 len(result.pruned), len(result.kept_deleting))
    if result.more and result.pruned:
        self.app.send_task("greenplace.prune")
