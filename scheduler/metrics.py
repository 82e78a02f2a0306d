"""The fleet's Prometheus metrics: workers write counters to Redis, any API replica reads them.

Most events happen in Celery worker processes on other machines (place, dispatch,
reconcile), while ``GET /metrics`` is served by the API. So the counters live in Redis,
under the job store's prefix (default ``gp``), next to the jobs they describe:

=============================  ======================================================
key                            holds
=============================  ======================================================
``gp:metrics:placement_s``     hash: placement latency histogram: ``le:{bound}`` ->
                               placements that took at most ``bound`` seconds and
                               more than the bound below (not cumulative; ``le:+Inf``
                               for the rest), ``sum`` (seconds), ``count``
``gp:metrics:dispatches``      hash: ``{cloud}|{outcome}`` -> launch attempts
``gp:metrics:failovers``       hash: ``{cloud}|{reason}`` -> failovers to the next
                               candidate (``reason``: the refusal's error family)
``gp:metrics:co2e``            hash: ``jobs``, ``estimated_kg``, ``saved_kg``: placed
                               jobs, their estimated CO2e and savings vs the baseline
``gp:metrics:signal_errors``   hash: ``{source}|{reason}`` -> failed signal calls
``gp:metrics:signal_at``       zset: live signal source -> newest ``observed_at`` of
                               a value fetched from it (Unix seconds)
``gp:metrics:catalog_errors``  hash: ``{cloud}|{reason}`` -> price refreshes that left
                               the cloud's old figures in place (``refused``, or the
                               fetch error's family: ``auth``, ``transient``, ...)
=============================  ======================================================

Write side (``observe_placement``, ``count_dispatch_attempt``, ``count_failover``,
``add_co2e``, ``count_signal_error``, ``note_signal_observed``): one pipelined Redis
round trip per call, and never an exception: a Redis error is logged at debug level and
the figure is lost. A metric must never fail a task. ``ZADD GT`` needs Redis 6.2 or later.

Read side: ``FleetCollector`` (a prometheus_client custom collector) turns those keys,
plus live gauges read at scrape time (jobs by state, Celery queue depths, workers seen,
signal data age, the age of each cloud's prices in the refreshed-prices document the
service places with), into metric families; ``render_metrics(store)`` returns the text
exposition for ``GET /metrics``.

Design choice: inside ``batched()`` (each worker task runs in one) the writes wait and
go to Redis together in one round trip when the block ends. A job's happy path is one
``place`` task of 7 round trips (benchmarks/README.md, "queue"); its three metric writes
(placement latency, CO2e, the launch attempt) make that 8 rather than 10. Figures of a
task killed mid-way are lost with it, which a counter can afford.

Design choice: prometheus_client is imported only when metrics are read (``collect``,
``render_metrics``), so workers and the CLI, which only write, never load it.

Design choice: counters are Redis hash fields that only grow (HINCRBY); Prometheus'
``rate()`` copes with the reset when the keys are deleted or Redis loses them.
``greenplace prune`` leaves them alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, cast

import redis

from greenplace.scheduler.exceptions import (
    AccountLimitError,
    AuthError,
    CapacityError,
    InvalidRequestError,
    MissingSDKError,
    QuotaError,
    RegionRefusedError,
    TransientError,
)
from greenplace.scheduler.settings import Settings
from greenplace.scheduler.signals import static
from greenplace.scheduler.store import JobStore
from greenplace.scheduler.worker.heartbeat import SEEN_WITHIN_S, workers_seen

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector as _CollectorBase
else:
    _CollectorBase = object  # prometheus_client is imported when metrics are read

log = logging.getLogger("greenplace.metrics")

# Placement latency buckets (seconds): a static placement takes milliseconds, one that
# refreshes live signals (HTTP calls, forecasts) can take tens of seconds.
PLACEMENT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAUNCHED = "launched"  # the outcome of an accepted launch attempt
# The text format generate_latest writes (prometheus_client >= 0.22 calls the newer
# 1.0.0 format "latest", which older Prometheus servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Error families, the ``outcome`` / ``reason`` label of a refused attempt; subclasses first.
_FAMILIES: tuple[tuple[type[BaseException], str], ...] = (
    (CapacityError, "capacity"), (QuotaError, "quota"), (AccountLimitError, "account_limit"),
    (RegionRefusedError, "region_refused"), (TransientError, "transient"), (AuthError, "auth"),
    (InvalidRequestError, "invalid_request"), (MissingSDKError, "missing_sdk"),
)
_SEP = "|"  # between the labels of a hash field; never inside an outcome or reason

_Command = tuple[str | int | float, ...]
_PENDING: contextvars.ContextVar[list[tuple[redis.Redis, list[_Command]]] | None] = (
    contextvars.ContextVar("greenplace_metrics_pending", default=None))


def _key(store: JobStore, name: str) -> str:
    return f"{store.prefix}:metrics:{name}"


def error_family(exc: BaseException) -> str:
    """The label of a launch error: ``capacity``, ``quota``, ``region_refused``, ... or
    ``other`` (any other error)."""
    return next((name for kind, name in _FAMILIES if isinstance(exc, kind)), "other")


# --- write side ------------------------------------------------------------------------
def _send(client: redis.Redis, commands: Sequence[_Command]) -> None:
    """Run ``commands`` in one MULTI/EXEC: one round trip, and a scrape never sees half of
    a task's counts (a histogram's count without its bucket). A failure is logged at
    debug level, never raised."""
    if not commands:
        return
    try:
        pipe = client.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute()
    except Exception as exc:  # any error: a metric must never fail a task
        log.debug("metrics not recorded (%s: %s)", type(exc).__name__, exc)


def _write(store: JobStore, commands: list[_Command]) -> None:
    pending = _PENDING.get()
    if pending is None:
        _send(store.client, commands)
    else:
        pending.append((store.client, commands))


@contextlib.contextmanager
def batched() -> Iterator[None]:
    """Hold the metric writes made inside the block and send them in one round trip at its
    end (one per Redis client), also when the block raised, unless what it raised says
    Redis is unreachable (then they are dropped). Nested blocks join the outermost one."""
    if _PENDING.get() is not None:
        yield
        return
    pending: list[tuple[redis.Redis, list[_Command]]] = []
    token = _PENDING.set(pending)
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError):
        pending.clear()  # Redis is unreachable: the block ends now, not after more waits
        raise
    finally:
        _PENDING.reset(token)
        by_client: dict[int, tuple[redis.Redis, list[_Command]]] = {}
        for client, commands in pending:
            by_client.setdefault(id(client), (client, []))[1].extend(commands)
        for client, commands in by_client.values():
            _send(client, commands)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _bucket_field(seconds: float) -> str:
    bound = next((b for b in PLACEMENT_BUCKETS_S if seconds <= b), None)
    return "le:+Inf" if bound is None else f"le:{float(bound)!r}"


def observe_placement(store: JobStore, seconds: float) -> None:
    """Record one placement (the pipeline run of one job) that took ``seconds``."""
    if not _finite(seconds) or seconds < 0:
        log.debug("placement latency %r not recorded", seconds)
        return
    key = _key(store, "placement_s")
    _write(store, [("HINCRBY", key, _bucket_field(seconds), 1),
                   ("HINCRBYFLOAT", key, "sum", seconds), ("HINCRBY", key, "count", 1)])


@contextlib.contextmanager
def placement_timer(store: JobStore) -> Iterator[None]:
    """Time the block as one placement (``observe_placement``); a block that raises is not
    recorded."""
    started = time.perf_counter()
    yield
    observe_placement(store, time.perf_counter() - started)


def count_dispatch_attempt(store: JobStore, *, cloud: str, outcome: str) -> None:
    """Count one launch attempt in ``cloud``: ``launched`` or an ``error_family``."""
    _write(store, [("HINCRBY", _key(store, "dispatches"), f"{cloud}{_SEP}{outcome}", 1)])


@contextlib.contextmanager
def dispatch_attempt(store: JobStore, *, cloud: str) -> Iterator[None]:
    """Count the launch attempt the block makes by how it ends: ``launched`` when it
    returns, the ``error_family`` of what it raises (raised on unchanged)."""
    try:
        yield
    except Exception as exc:
        count_dispatch_attempt(store, cloud=cloud, outcome=error_family(exc))
        raise
    count_dispatch_attempt(store, cloud=cloud, outcome=LAUNCHED)


def count_failover(store: JobStore, *, cloud: str, reason: str) -> None:
    """Count one failover away from an offer in ``cloud`` that refused the launch
    (``reason``: the refusal's ``error_family``)."""
    _write(store, [("HINCRBY", _key(store, "failovers"), f"{cloud}{_SEP}{reason}", 1)])


def add_co2e(store: JobStore, *, estimated_kg: float | None, saved_kg: float | None) -> None:
    """Count one placed job with its estimated CO2e and its savings against the baseline
    (the decision summary's ``co2e_kg`` and ``savings_co2e_kg``; a missing or non-finite
    figure adds nothing)."""
    commands: list[_Command] = [("HINCRBY", _key(store, "co2e"), "jobs", 1)]
    if estimated_kg is not None and _finite(estimated_kg):
        commands.append(("HINCRBYFLOAT", _key(store, "co2e"), "estimated_kg", estimated_kg))
    if saved_kg is not None and _finite(saved_kg):
        commands.append(("HINCRBYFLOAT", _key(store, "co2e"), "saved_kg", saved_kg))
    _write(store, commands)


def count_signal_error(store: JobStore, *, source: str, reason: str = "error") -> None:
    """Count one failed call to a carbon signal source (``reason``: down, timeout, ...)."""
    field = f"{source}{_SEP}{reason.replace(' ', '_')}"
    _write(store, [("HINCRBY", _key(store, "signal_errors"), field, 1)])


def note_signal_observed(store: JobStore, *, source: str, observed_at: dt.datetime) -> None:
    """Note that ``source`` answered a value describing ``observed_at``; the newest one per
    source is kept (ZADD GT), and its age is the source's signal data age."""
    if observed_at.tzinfo is None:
        observed_at = observed_at.replace(tzinfo=dt.UTC)
    _write(store, [("ZADD", _key(store, "signal_at"), "GT", observed_at.timestamp(), source)])


def count_catalog_refresh_error(store: JobStore, *, cloud: str, reason: str) -> None:
    """Count one price refresh of ``cloud`` that kept its old figures (``reason``: refused,
    or the fetch error's ``error_family``)."""
    field = f"{cloud}{_SEP}{reason.replace(' ', '_')}"
    _write(store, [("HINCRBY", _key(store, "catalog_errors"), field, 1)])


def catalog_price_ages_s(store: JobStore, *, now: dt.datetime) -> dict[str, float]:
    """Each cloud's price age in seconds (``refresh.status``), from the document this
    process places with: the store's Redis key for the Redis form, else the file. An
    unreadable document gives no figures (logged at debug level), never a failed scrape."""
    import os

    from greenplace.scheduler.catalog.loader import load_embedded_catalog
    from greenplace.scheduler.catalog.refresh.status import cloud_status
    from greenplace.scheduler.catalog.refresh.store import read, service_location

    try:
        location = service_location(store.client, store.prefix, os.environ)
        rows = cloud_status(load_embedded_catalog(), read(location), now=now)
    except Exception as exc:  # a metric must never fail the scrape
        log.debug("catalog price age not read (%s: %s)", type(exc).__name__, exc)
        return {}
    return {r["cloud"]: float(r["age_s"]) for r in rows if r["age_s"] is not None}


class SignalMetrics:
    """The signal chain's observer (``SignalChain(observer=...)``): its failures and fresh
    live values, written as metrics."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def signal_error(self, source: str, outcome: str) -> None:
        count_signal_error(self.store, source=source, reason=outcome)

    def signal_observed(self, source: str, observed_at: dt.datetime) -> None:
        if source != static.NAME:  # the catalog's annual figures have no meaningful age
            note_signal_observed(self.store, source=source, observed_at=observed_at)


# --- read side -------------------------------------------------------------------------
def queue_keys(queue: str, *, broker_key_prefix: str) -> list[str]:
    """The Redis lists the Celery Redis transport keeps ``queue`` in: one per priority step
    (kombu's ``{queue}`` for priority 0, ``{queue}\\x06\\x16{step}`` for the others),
    each behind the app's ``global_keyprefix``."""
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    return [broker_key_prefix + (f"{queue}{Channel.sep}{step}" if step else queue)
            for step in PRIORITY_STEPS]


def _counter(name: str, documentation: str, labels: list[str],
             fields: dict[str, str]) -> Metric:
    """A counter family with two labels, from a hash of ``label1|label2`` -> count."""
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, documentation, labels=labels)
    for first, second, count in _labelled(fields):
        family.add_metric([first, second], count)
    return family


def _labelled(fields: dict[str, str]) -> Iterator[tuple[str, str, float]]:
    for field, value in sorted(fields.items()):
        first, _, second = field.rpartition(_SEP)
        yield first, second, float(value)


class FleetCollector(_CollectorBase):
    """A prometheus_client collector over one deployment's Redis (see the module docstring).

    Args:
        store: the deployment's job store (its client and key prefix).
        queues: the Celery queues to measure (default: the app's ``QUEUES``).
        broker_key_prefix: kombu's ``global_keyprefix`` (default: the one
            ``Settings.broker_key_prefix`` derives from the store's prefix).

    Raises (from ``collect``): redis errors when Redis is unreachable.
    """

    def __init__(self, store: JobStore, *, queues: Sequence[str] | None = None,
                 broker_key_prefix: str | None = None) -> None:
        if queues is None:
            from greenplace.scheduler.worker.app import QUEUES

            queues = QUEUES
        if broker_key_prefix is None:
            broker_key_prefix = Settings(redis_url="", key_prefix=store.prefix).broker_key_prefix
        self.store = store
        self.queues = tuple(queues)
        self.broker_key_prefix = broker_key_prefix

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        store, now_s = self.store, time.time()
        pipe = store.client.pipeline(transaction=False)
        for name in ("placement_s", "dispatches", "failovers", "co2e", "signal_errors",
                     "catalog_errors"):
            pipe.hgetall(_key(store, name))
        pipe.zrange(_key(store, "signal_at"), 0, -1, withscores=True)
        pipe.hlen(f"{self.broker_key_prefix}unacked")
        lists = [queue_keys(q, broker_key_prefix=self.broker_key_prefix) for q in self.queues]
        for keys in lists:
            for key in keys:
                pipe.llen(key)
        replies = iter(pipe.execute())
        placement, dispatches, failovers, co2e, signal_errors, catalog_errors = (
            cast(dict[str, str], next(replies)) for _ in range(6))
        signal_at = cast(list[tuple[str, float]], next(replies))
        unacked = int(next(replies))
        depths = [sum(int(next(replies)) for _ in keys) for keys in lists]

        cumulative, buckets = 0.0, []
        for bound in (*(repr(float(b)) for b in PLACEMENT_BUCKETS_S), "+Inf"):
            cumulative += float(placement.get(f"le:{bound}", 0))
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "greenplace_placement_duration_seconds",
            "Time to place one job: candidates, filters, scores and the ranked decision "
            "(live signal lookups included).",
            buckets=buckets, sum_value=float(placement.get("sum", 0)))

        yield _counter(
            "greenplace_dispatch_attempts", "Launch attempts by cloud and outcome "
            "(launched, or the refusal's error family: capacity, quota, transient, ...).",
            ["cloud", "outcome"], dispatches)
        yield _counter(
            "greenplace_failovers", "Jobs moved on to their next candidate after a refused "
            "launch, by the refusing cloud and the error family.", ["cloud", "reason"],
            failovers)

        estimated_kg = float(co2e.get("estimated_kg", 0))
        saved_kg = float(co2e.get("saved_kg", 0))
        yield CounterMetricFamily("greenplace_jobs_placed", "Jobs placed (decision frozen, "
                                  "ready to launch).", value=float(co2e.get("jobs", 0)))
        yield CounterMetricFamily(
            "greenplace_estimated_co2e_kg", "Estimated emissions of the jobs placed "
            "(location-based, kg CO2e).", value=estimated_kg)
        yield CounterMetricFamily(
            "greenplace_baseline_co2e_kg", "Estimated emissions the same jobs would have had "
            "on their price-only baseline placement (kg CO2e).", value=estimated_kg + saved_kg)
        yield GaugeMetricFamily(
            "greenplace_saved_co2e_kg", "Baseline minus estimated emissions of the jobs "
            "placed (kg CO2e; a gauge: a placement dirtier than its baseline lowers it).",
            value=saved_kg)

        yield _counter(
            "greenplace_signal_errors", "Failed calls to carbon signal sources, by source and "
            "reason (down, timeout, unauthorised, malformed, rate_limited, no_data, ...).",
            ["source", "reason"], signal_errors)

        age = GaugeMetricFamily(
            "greenplace_signal_data_age_seconds", "Age of the newest value fetched from each "
            "live signal source (now minus the time the value describes).", labels=["source"])
        for source, observed_s in sorted(signal_at):
            age.add_metric([str(source)], max(0.0, now_s - float(observed_s)))
        yield age

        yield _counter(
            "greenplace_catalog_refresh_errors", "Price refreshes that kept a cloud's old "
            "figures, by cloud and reason (refused by the catalog check, or the fetch error's "
            "family: auth, transient, missing_sdk, ...).", ["cloud", "reason"], catalog_errors)
        price_age = GaugeMetricFamily(
            "greenplace_catalog_price_age_seconds", "Age of the prices each cloud is placed "
            "with: its oldest refreshed region, else the embedded catalog's as_of.",
            labels=["cloud"])
        ages = catalog_price_ages_s(store, now=dt.datetime.fromtimestamp(now_s, dt.UTC))
        for cloud, age_s in sorted(ages.items()):
            price_age.add_metric([cloud], age_s)
        yield price_age

        jobs = GaugeMetricFamily("greenplace_jobs", "Jobs in the store by state.",
                                 labels=["state"])
        for state, count in store.counts().items():
            jobs.add_metric([state], count)
        yield jobs

        depth = GaugeMetricFamily(
            "greenplace_queue_depth", "Messages waiting in each Celery queue (every priority).",
            labels=["queue"])
        for queue, waiting in zip(self.queues, depths, strict=True):
            depth.add_metric([queue], waiting)
        yield depth
        yield GaugeMetricFamily(
            "greenplace_queue_unacked", "Messages delivered to workers and not yet "
            "acknowledged (running, or waiting for the visibility timeout).", value=unacked)
        yield GaugeMetricFamily(
            "greenplace_workers_seen", "Workers whose heartbeat was seen in the last "
            f"{SEEN_WITHIN_S:g} s.", value=len(workers_seen(store, now_s=now_s)))


def render_metrics(store: JobStore, *, queues: Sequence[str] | None = None,
                   broker_key_prefix: str | None = None) -> tuple[bytes, str]:
    """The Prometheus text exposition of the deployment: (body, content type).

    A fresh registry per call, so nothing is shared between apps or tests, and nothing
    of this process (the API's own Python metrics) is mixed with the fleet's.

    Raises:
        redis.RedisError: Redis is unreachable (the API answers 503).
    """
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store, queues=queues, broker_key_prefix=broker_key_prefix))
    return generate_latest(registry), CONTENT_TYPE


__all__ = [
    "CONTENT_TYPE", "FleetCollector", "PLACEMENT_BUCKETS_S", "SignalMetrics", "add_co2e",
    "batched", "catalog_price_ages_s", "count_catalog_refresh_error", "count_dispatch_attempt",
    "count_failover", "count_signal_error",
    "dispatch_attempt", "error_family", "note_signal_observed", "observe_placement",
    "placement_timer", "queue_keys", "render_metrics",
]
