"""The fleet's Prometheus metrics on a real redis-server: written by the real place /
dispatch / signal code paths, read back through ``render_metrics`` and parsed with
prometheus_client's own parser."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families
from redis.connection import Connection

from greenplace.scheduler import metrics
from greenplace.scheduler.dispatch import Context, decide, place_and_dispatch
from greenplace.scheduler.exceptions import CapacityError, TransientError
from greenplace.scheduler.settings import Settings
from greenplace.scheduler.signals.chain import LivePlacer
from greenplace.scheduler.store import JobStore, offer_key, redis_client, utc_now
from greenplace.scheduler.worker.app import CONTROL_QUEUE, DISPATCH_QUEUE, PLACE_QUEUE, QUEUES
from greenplace.scheduler.worker.heartbeat import beat
from tests.fakes_signals.electricitymaps import FakeElectricityMaps
from tests.fakes_signals.server import FakeServer
from tests.redisproc import REDIS_SERVER, RedisServer, free_port
from tests.unit.test_dispatch import (
    MAX_TRANSIENT_RETRIES,
    Only,
    Refusing,
    make_job,
    place_and_run,
    submit,
)

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(store: JobStore, **kwargs: object) -> Samples:
    """Every sample of ``render_metrics``, as prometheus_client's parser reads it."""
    body, content_type = metrics.render_metrics(store, **kwargs)  # type: ignore[arg-type]
    assert content_type.startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``{label value: sample value}`` of one labelled metric."""
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name}


@pytest.fixture
def store(server: RedisServer) -> JobStore:
    client = server.client()
    client.flushall()
    return JobStore(client, prefix="mt")


def test_the_placement_histogram_is_cumulative_with_sum_and_count(store: JobStore) -> None:
    for seconds in (0.003, 0.005, 0.02, 0.7, 45.0):
        metrics.observe_placement(store, seconds)
    metrics.observe_placement(store, math.nan)  # ignored, as is a negative duration
    metrics.observe_placement(store, -1.0)
    samples = scrape(store)
    buckets = labelled(samples, "greenplace_placement_duration_seconds_bucket", "le")
    assert list(buckets) == [*(str(b) for b in metrics.PLACEMENT_BUCKETS_S), "+Inf"]
    assert buckets["0.005"] == 2 and buckets["0.01"] == 2 and buckets["0.025"] == 3
    assert buckets["0.5"] == 3 and buckets["1.0"] == 4 and buckets["30.0"] == 4
    assert buckets["+Inf"] == 5
    assert list(buckets.values()) == sorted(buckets.values())
    assert value(samples, "greenplace_placement_duration_seconds_count") == 5
    assert value(samples, "greenplace_placement_duration_seconds_sum") == pytest.approx(45.728)


def test_a_failover_is_counted_by_cloud_and_error_family(
    make_ctx: Callable[..., Context]
) -> None:
    """The real place + dispatch path on local-sim: the best offer has no capacity, so
    attempt 1 is refused (capacity), the job fails over and attempt 2 launches."""
    job = make_job("a", policy="greenest")
    placements = decide(make_ctx().placer, job, now=utc_now(), allow_defer=True).placements()
    best, second = placements[0], placements[1]
    ctx = make_ctx(capacity={offer_key(best): 0})
    (job_id,) = submit(ctx, job)
    place_and_run(ctx, job_id)
    record = ctx.store.get(job_id)
    assert record.state.value == "RUNNING" and record.placement == second
    assert record.decision is not None

    samples = scrape(ctx.store)
    attempts = {key: v for (n, key), v in samples.items()
                if n == "greenplace_dispatch_attempts_total"}
    expected = {(("cloud", best.cloud), ("outcome", "capacity")): 1.0}
    launched = (("cloud", second.cloud), ("outcome", "launched"))
    expected[launched] = expected.get(launched, 0.0) + 1.0
    assert attempts == expected
    assert labelled(samples, "greenplace_failovers_total", "reason") == {"capacity": 1.0}
    assert labelled(samples, "greenplace_failovers_total", "cloud") == {best.cloud: 1.0}
    # placed once (a failover keeps the frozen decision), with its estimate and savings
    assert value(samples, "greenplace_placement_duration_seconds_count") == 1
    assert value(samples, "greenplace_jobs_placed_total") == 1
    assert value(samples, "greenplace_estimated_co2e_kg_total") == pytest.approx(
        record.decision["co2e_kg"])
    assert value(samples, "greenplace_saved_co2e_kg") == pytest.approx(
        record.decision["savings_co2e_kg"])
    assert value(samples, "greenplace_baseline_co2e_kg_total") == pytest.approx(
        record.decision["baseline"]["co2e_kg"], rel=1e-3)
    assert labelled(samples, "greenplace_jobs", "state") == {
        state: float(n) for state, n in ctx.store.counts().items()}
    assert value(samples, "greenplace_jobs", state="RUNNING") == 1


def test_transient_refusals_count_every_attempt_and_no_failover(
    make_ctx: Callable[..., Context]
) -> None:
    base = make_ctx()
    refusing = Refusing(TransientError("throttled", provider="refusing", operation="submit",
                                       code="Throttling"))
    ctx = dataclasses.replace(base, providers=Only(base.settings, refusing))
    (job_id,) = submit(ctx, make_job())
    place_and_run(ctx, job_id)
    assert ctx.store.get(job_id).state.value == "FAILED"
    samples = scrape(ctx.store)
    assert refusing.calls == MAX_TRANSIENT_RETRIES + 2
    assert labelled(samples, "greenplace_dispatch_attempts_total", "outcome") == {
        "transient": float(refusing.calls)}
    assert labelled(samples, "greenplace_failovers_total", "reason") == {}
    assert value(samples, "greenplace_jobs", state="FAILED") == 1


def test_an_unschedulable_job_is_timed_but_adds_no_co2e(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx()
    deadline = utc_now() + dt.timedelta(hours=1)  # the job needs 3 h at best
    (job_id,) = submit(ctx, make_job(deadline=deadline.isoformat()))
    place_and_run(ctx, job_id)
    assert ctx.store.get(job_id).state.value == "UNSCHEDULABLE"
    samples = scrape(ctx.store)
    assert value(samples, "greenplace_placement_duration_seconds_count") == 1
    assert value(samples, "greenplace_jobs_placed_total") == 0
    assert value(samples, "greenplace_estimated_co2e_kg_total") == 0
    assert value(samples, "greenplace_jobs", state="UNSCHEDULABLE") == 1


@pytest.mark.parametrize("prefix", ["gp", "tenant-a"])
def test_queue_depth_is_what_celery_enqueued_under_its_key_prefix(
    server: RedisServer, prefix: str
) -> None:
    from greenplace.scheduler.worker.app import create_app

    client = server.client()
    client.flushall()
    settings = Settings(redis_url=server.url, key_prefix=prefix)
    app = create_app(settings)
    try:
        for i in range(3):
            app.send_task("greenplace.place", args=[f"job{i}"])
        for i in range(2):
            app.send_task("greenplace.dispatch", args=[f"job{i}", 1])
        app.send_task("greenplace.reconcile", priority=5)  # a priority-suffixed list
        app.send_task("greenplace.noop")
        with app.connection_for_read() as conn:
            # kombu's own count (a passive queue_declare would be the public way, but kombu
            # 5.7 checks existence with an unprefixed EXISTS under a global_keyprefix)
            kombu_counts = {q: conn.default_channel._size(q) for q in QUEUES}
    finally:
        app.pool.force_close_all()
    if prefix != "gp":  # kombu's global_keyprefix: another deployment's queues stay apart
        assert client.llen(PLACE_QUEUE) == 0 and client.llen(f"{prefix}:{PLACE_QUEUE}") == 3
    assert client.llen(metrics.queue_keys(CONTROL_QUEUE,
                                          broker_key_prefix=settings.broker_key_prefix)[1]) == 1
    depths = labelled(scrape(JobStore(client, prefix=prefix)), "greenplace_queue_depth", "queue")
    assert depths == {PLACE_QUEUE: 3, DISPATCH_QUEUE: 2, CONTROL_QUEUE: 2}
    assert depths == kombu_counts
    other = "gp" if prefix != "gp" else "tenant-a"
    assert set(labelled(scrape(JobStore(client, prefix=other)), "greenplace_queue_depth",
                        "queue").values()) == {0}


def test_workers_seen_and_unacked_messages(store: JobStore) -> None:
    now = time.time()
    beat(store, "w1@a", now_s=now)
    beat(store, "w2@b", now_s=now - 3)
    beat(store, "gone@c", now_s=now - 600)
    store.client.hset("mt:unacked", mapping={"tag1": "{}", "tag2": "{}"})
    samples = scrape(store)
    assert value(samples, "greenplace_workers_seen") == 2
    assert value(samples, "greenplace_queue_unacked") == 2


@pytest.fixture
def live_ctx(server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[Callable[[FakeElectricityMaps], Context]]:
    """A Context with GREENPLACE_SIGNALS=live on one Electricity Maps fake."""
    servers: list[FakeServer] = []
    contexts: list[Context] = []

    def build(api: FakeElectricityMaps) -> Context:
        server.client().flushall()
        fake = FakeServer(api)
        servers.append(fake)
        monkeypatch.setenv("ELECTRICITYMAPS_API_KEY", "em-key")
        monkeypatch.setenv("GREENPLACE_ELECTRICITYMAPS_URL", f"{fake.url}/v3")
        monkeypatch.setenv("GREENPLACE_SIGNAL_SOURCES", "electricitymaps")
        (tmp_path / "sim.yaml").write_text(yaml.safe_dump({"launch_latency_s": 0}))
        settings = Settings(redis_url=server.url, sim_config=tmp_path / "sim.yaml",
                            signals="live")
        ctx = Context.build(settings, JobStore(server.client()))
        contexts.append(ctx)
        return ctx

    yield build
    for ctx in contexts:
        assert isinstance(ctx.placer, LivePlacer)
        ctx.placer.chain.close()
    for fake in servers:
        fake.close()


def test_live_signal_values_give_their_data_age(
    live_ctx: Callable[[FakeElectricityMaps], Context]
) -> None:
    now = utc_now()
    api = FakeElectricityMaps(api_key="em-key", now=now, intensity={"DE": lambda t: 300.0},
                              fossil_free_pct={"DE": lambda t: 60.0})
    ctx = live_ctx(api)
    (job_id,) = submit(ctx, make_job(policy="greenest"))
    place_and_run(ctx, job_id)
    assert api.calls("carbon-intensity/latest")
    samples = scrape(ctx.store)
    ages = labelled(samples, "greenplace_signal_data_age_seconds", "source")
    assert set(ages) == {"electricitymaps"}  # the static catalog source has no age
    # the fake describes the hour that began before ``now``
    observed = now.replace(minute=0, second=0, microsecond=0)
    expected_s = time.time() - observed.timestamp()
    assert ages["electricitymaps"] == pytest.approx(expected_s, abs=30)
    # the fake knows only DE: every other zone asked was a "no data" answer, not a failure
    unknown = [r for r in api.requests if r.arg("zone") != "DE"]
    assert len(unknown) > 0
    assert labelled(samples, "greenplace_signal_errors_total", "reason") == {
        "no_data": len(unknown)}


def test_every_failed_signal_call_is_counted_by_source_and_reason(
    live_ctx: Callable[[FakeElectricityMaps], Context]
) -> None:
    api = FakeElectricityMaps(api_key="em-key", now=utc_now(),
                              intensity={"DE": lambda t: 300.0}, fail_status=503)
    ctx = live_ctx(api)
    (job_id,) = submit(ctx, make_job(policy="greenest"))
    place_and_run(ctx, job_id)
    assert ctx.store.get(job_id).state.value == "RUNNING"  # placed on the static figures
    samples = scrape(ctx.store)
    errors = {key: v for (n, key), v in samples.items() if n == "greenplace_signal_errors_total"}
    assert errors == {(("reason", "down"), ("source", "electricitymaps")): len(api.requests)}
    assert len(api.requests) >= 1
    assert labelled(samples, "greenplace_signal_data_age_seconds", "source") == {}


def test_batched_writes_wait_for_the_end_of_the_block(store: JobStore) -> None:
    key = "mt:metrics:dispatches"
    with metrics.batched():
        metrics.count_dispatch_attempt(store, cloud="aws", outcome="launched")
        with metrics.batched():  # joins the outer block
            metrics.count_failover(store, cloud="aws", reason="quota")
        assert store.client.hgetall(key) == {}
        assert store.client.hgetall("mt:metrics:failovers") == {}
    assert store.client.hgetall(key) == {"aws|launched": "1"}
    assert store.client.hgetall("mt:metrics:failovers") == {"aws|quota": "1"}
    with pytest.raises(CapacityError), metrics.batched():  # flushed, and still raised
        with metrics.dispatch_attempt(store, cloud="gcp"):
            raise CapacityError("no capacity", provider="gcp", operation="submit")
    assert store.client.hgetall(key) == {"aws|launched": "1", "gcp|capacity": "1"}
    with pytest.raises(redis.ConnectionError), metrics.batched():
        metrics.count_dispatch_attempt(store, cloud="aws", outcome="launched")
        raise redis.ConnectionError("Redis went away")
    assert store.client.hget(key, "aws|launched") == "1"  # dropped: Redis was unreachable


def test_a_batched_place_task_sends_its_metrics_in_one_round_trip(
    make_ctx: Callable[..., Context], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The happy path writes three figures (placement latency, CO2e, the launch attempt):
    three round trips of their own, one inside ``batched()`` as each worker task runs."""
    ctx = make_ctx()
    ids = submit(ctx, *(make_job(f"j{i}") for i in range(3)))
    place_and_dispatch(ctx, ids[0], now=utc_now())  # loads the Lua scripts
    sent = [0]
    send = Connection.send_packed_command

    def counting(self: Connection, *args: Any, **kwargs: Any) -> None:
        sent[0] += 1  # one packed command (a pipeline is one) = one round trip
        send(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    place_and_dispatch(ctx, ids[1], now=utc_now())
    alone, sent[0] = sent[0], 0
    with metrics.batched():
        place_and_dispatch(ctx, ids[2], now=utc_now())
    assert alone - sent[0] == 2
    monkeypatch.undo()
    samples = scrape(ctx.store)
    assert value(samples, "greenplace_jobs_placed_total") == 3
    assert value(samples, "greenplace_jobs", state="RUNNING") == 3


def test_writes_return_quietly_when_redis_is_down() -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    down = JobStore(client, prefix="mt")
    started = time.monotonic()
    metrics.observe_placement(down, 0.1)
    metrics.count_dispatch_attempt(down, cloud="aws", outcome="launched")
    metrics.count_failover(down, cloud="aws", reason="capacity")
    metrics.add_co2e(down, estimated_kg=1.0, saved_kg=0.5)
    metrics.count_signal_error(down, source="watttime", reason="timeout")
    metrics.note_signal_observed(down, source="watttime", observed_at=dt.datetime.now(dt.UTC))
    with metrics.batched():
        metrics.count_failover(down, cloud="gcp", reason="quota")
    with pytest.raises(TransientError), metrics.dispatch_attempt(down, cloud="aws"):
        raise TransientError("throttled", provider="aws", operation="submit")
    assert time.monotonic() - started < 10  # each gives up after the client's short retries
    with pytest.raises(redis.ConnectionError):  # reading says so: the API answers 503
        metrics.render_metrics(down)
    client.close()


def test_error_families_label_each_provider_error() -> None:
    from greenplace.scheduler.exceptions import (
        AccountLimitError,
        AuthError,
        QuotaError,
        RegionRefusedError,
    )

    def make(kind: type[Exception]) -> Exception:
        return kind("x", provider="aws", operation="submit")  # type: ignore[call-arg]

    assert [metrics.error_family(make(k)) for k in (
        CapacityError, QuotaError, RegionRefusedError, AccountLimitError, TransientError,
        AuthError)] == ["capacity", "quota", "region_refused", "account_limit", "transient",
                        "auth"]
    assert metrics.error_family(ValueError("bug")) == "other"
