"""Worker heartbeats against a real redis-server: recorded, read back, and kept up through
an outage; the CLI's "no worker seen" warning names the last one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from greenplace.scheduler.store import JobStore
from greenplace.scheduler.worker.heartbeat import (
    FORGET_AFTER_S,
    SEEN_WITHIN_S,
    Heartbeat,
    beat,
    last_seen,
    workers_seen,
)
from tests.redisproc import REDIS_SERVER, RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs redis-server")


@pytest.fixture
def store(server: RedisServer) -> JobStore:
    client = server.client()
    client.flushall()
    return JobStore(client, prefix="hb")


def test_workers_seen_within_a_window_and_the_last_one(store: JobStore) -> None:
    now = 1_000_000.0
    assert workers_seen(store, 15, now_s=now) == {} and last_seen(store) is None
    beat(store, "old@a", now_s=now - 60)
    beat(store, "new@b", now_s=now - 2)
    assert workers_seen(store, 15, now_s=now) == {"new@b": now - 2}
    assert set(workers_seen(store, 120, now_s=now)) == {"old@a", "new@b"}
    assert last_seen(store) == ("new@b", now - 2)
    assert store.client.exists("hb:workers")  # under the store's key prefix
    beat(store, "new@b", now_s=now + FORGET_AFTER_S)  # a day later: old@a is forgotten
    assert set(workers_seen(store, 2 * FORGET_AFTER_S, now_s=now + FORGET_AFTER_S)) == {
        "new@b"}


def test_the_heartbeat_thread_survives_an_outage_and_stops_with_the_worker(
        tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        from greenplace.scheduler.store import redis_client

        store = JobStore(redis_client(server.url), prefix="hb")
        running = [True]
        hb = Heartbeat(store, "w@h", alive=lambda: running[0], interval_s=0.05).start()
        wait_for(lambda: "w@h" in workers_seen(store, 1), timeout_s=10, what="a first beat")
        server.kill()
        time.sleep(0.5)  # several failed beats
        server.start()
        t_restart = time.time()
        wait_for(lambda: workers_seen(store, 1).get("w@h", 0) > t_restart, timeout_s=10,
                 what="beats after the restart")
        running[0] = False  # the worker left its running state: no more beats
        time.sleep(0.2)
        stopped_at = workers_seen(store, 10)["w@h"]
        time.sleep(0.3)
        assert workers_seen(store, 10)["w@h"] == stopped_at
        hb.stop()
        store.client.close()
    finally:
        server.stop()


def test_status_names_the_last_worker_seen(store: JobStore,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from greenplace.scheduler.commands.queue import _warn_without_worker

    _warn_without_worker(store)
    assert "no greenplace worker has ever been seen" in capsys.readouterr().err
    beat(store, "greenplace-42@node7", now_s=time.time() - 300)
    _warn_without_worker(store)
    err = capsys.readouterr().err
    assert f"no greenplace worker was seen in the last {SEEN_WITHIN_S:.0f} s" in err
    assert "greenplace-42@node7" in err and "5 min ago" in err and "To fix" in err
    beat(store, "greenplace-43@node8")
    _warn_without_worker(store)
    assert capsys.readouterr().err == ""
