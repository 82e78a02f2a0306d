"""The beat lease (scheduler/worker/beat.py) against a private redis-server.

Two ``LeasedScheduler`` instances tick in turn, as two beat processes would; what
each one sent is read from the broker queue itself (the control queue's length in
Redis before and after its tick), so nothing in the send path is replaced.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from greenplace.scheduler.commands.queue import _warn_without_beat
from greenplace.scheduler.exceptions import ConfigError
from greenplace.scheduler.settings import Settings, load_settings
from greenplace.scheduler.store import JobStore
from greenplace.scheduler.worker.app import CONTROL_QUEUE, create_app
from greenplace.scheduler.worker.beat import BeatLease, LeasedScheduler, beat_leader, lease_key
from tests.redisproc import RedisServer

INTERVAL_S = 0.2
LEASE_S = 1.0


@pytest.fixture
def client(server: RedisServer) -> redis.Redis:
    found = server.client()
    found.flushall()
    return found


def _scheduler(url: str, client: redis.Redis) -> LeasedScheduler:
    settings = Settings(redis_url=url, reconcile_interval_s=INTERVAL_S, beat_lease_s=LEASE_S)
    app = create_app(settings)
    lease = BeatLease(JobStore(client), lease_s=LEASE_S)
    return LeasedScheduler(app=app, lease=lease)


@pytest.fixture
def pair(server: RedisServer, client: redis.Redis) -> Iterator[list[LeasedScheduler]]:
    found = [_scheduler(server.url, client), _scheduler(server.url, client)]
    yield found
    for scheduler in found:
        scheduler.close()


def _sent(client: redis.Redis, scheduler: LeasedScheduler) -> int:
    """Tick ``scheduler`` once; how many messages it put on the control queue."""
    before = int(client.llen(CONTROL_QUEUE))
    scheduler.tick()
    return int(client.llen(CONTROL_QUEUE)) - before


def _run(client: redis.Redis, schedulers: list[LeasedScheduler], seconds: float
         ) -> list[list[float]]:
    """Tick each scheduler in turn for ``seconds``; per scheduler, the times it sent."""
    sends: list[list[float]] = [[] for _ in schedulers]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i, scheduler in enumerate(schedulers):
            sends[i] += [time.monotonic()] * _sent(client, scheduler)
        time.sleep(0.01)
    return sends


def test_exactly_one_of_two_schedulers_sends_each_tick(
        client: redis.Redis, pair: list[LeasedScheduler]) -> None:
    seconds = 2.0
    sends = _run(client, pair, seconds)
    merged = sorted(sends[0] + sends[1])
    # About one send per interval, whichever scheduler holds the lease: no tick was
    # sent twice (two sends close together) and none was lost.
    gaps = [b - a for a, b in zip(merged, merged[1:], strict=False)]
    assert min(gaps) >= INTERVAL_S * 0.5, gaps
    assert seconds / INTERVAL_S * 0.7 <= len(merged) <= seconds / INTERVAL_S + 2, merged
    holder = beat_leader(JobStore(client))
    assert holder is not None and holder.owner in {s.lease.token for s in pair}


def test_a_standby_takes_over_once_the_leader_stops_renewing(
        client: redis.Redis, pair: list[LeasedScheduler]) -> None:
    first, second = pair
    assert _run(client, [first, second], 0.6)[0]  # `first` ticked first: it leads
    # `first` never ticks again (a SIGKILL, a pause): its lease runs out in Redis at
    expires_at = time.monotonic() + client.pttl(lease_key(first.lease.store)) / 1000
    sends = _run(client, [second], LEASE_S * 2.5)[0]
    assert sends, "the standby never took over"
    # Not before the leader's lease ran out, and within a renewal period after.
    assert expires_at - 0.01 <= sends[0] <= expires_at + second.lease.renew_every_s + 0.5
    # It went on at the schedule's pace, continuing from the leader's last send.
    assert len(sends) >= (sends[-1] - sends[0]) / INTERVAL_S * 0.7


def test_a_leader_whose_lease_was_taken_stops_sending(
        client: redis.Redis, pair: list[LeasedScheduler]) -> None:
    first, _ = pair
    assert _run(client, [first], 0.5)[0]
    client.set(lease_key(JobStore(client)), "thief", px=10_000)
    assert _run(client, [first], 1.0) == [[]]
    assert not first.lease.leading
    assert client.get(lease_key(JobStore(client))) == "thief"  # a standby does not steal back


def test_a_leader_that_cannot_renew_stops_sending_before_its_lease_expires(
        client: redis.Redis, pair: list[LeasedScheduler]) -> None:
    first, _ = pair
    lease = first.lease
    assert lease.maintain()
    time.sleep(LEASE_S * 0.8)  # no renewal for 3/4 of the lease and a bit
    assert client.pttl(lease_key(lease.store)) > 0  # Redis still says it is ours ...
    assert not lease.may_send("greenplace-reconcile")  # ... but it no longer sends


def test_redis_down_neither_crashes_nor_sends_and_beat_resumes(
        tmp_path: Path) -> None:
    srv = RedisServer(tmp_path).start()
    try:
        client = srv.client()
        scheduler = _scheduler(srv.url, client)
        assert _run(client, [scheduler], 0.6)[0]
        queued = int(client.llen(CONTROL_QUEUE))
        srv.stop()
        end = time.monotonic() + LEASE_S * 1.5
        while time.monotonic() < end:
            scheduler.tick()  # raises nothing
        assert not scheduler.lease.leading
        srv.start()
        assert int(client.llen(CONTROL_QUEUE)) == queued  # nothing was sent meanwhile (AOF)
        assert _run(client, [scheduler], 1.0)[0]  # back in the lead once Redis answers
        scheduler.close()
        assert beat_leader(JobStore(client)) is None  # released on a clean shutdown
    finally:
        srv.stop()


def test_status_warns_only_when_no_beat_holds_the_lease(
        client: redis.Redis, pair: list[LeasedScheduler], capsys: pytest.CaptureFixture[str]
) -> None:
    store = JobStore(client)
    _warn_without_beat(store)
    assert "no greenplace beat holds the beat lease" in capsys.readouterr().err
    assert pair[0].lease.maintain()
    _warn_without_beat(store)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("env", "lease_s"), [
    ({}, 10.0),
    ({"GREENPLACE_RECONCILE_INTERVAL_S": "0.5"}, 2.0),
    ({"GREENPLACE_RECONCILE_INTERVAL_S": "30"}, 30.0),
    ({"GREENPLACE_BEAT_LEASE_S": "4"}, 4.0),
])
def test_the_lease_defaults_to_the_reconcile_interval(env: dict[str, str], lease_s: float
                                                      ) -> None:
    assert load_settings(env).beat_lease_s == lease_s


@pytest.mark.parametrize(("env", "words"), [
    ({"GREENPLACE_BEAT_LEASE_S": "0.5"}, "must be at least 1"),
    ({"GREENPLACE_BEAT_LEASE_S": "soon"}, "is not a number"),
    ({"GREENPLACE_BEAT_LEASE_S": "101"}, "at most 10 reconcile intervals"),
])
def test_an_unusable_lease_is_one_clear_error(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        load_settings(env)
    assert "To fix:" in str(caught.value)
