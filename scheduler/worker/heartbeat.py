"""Worker heartbeats: each worker's main process says "alive" in Redis every few seconds.

Key: ``{prefix}:workers``, a zset of worker hostname -> when it was last seen (Unix
seconds), with the job store's key prefix. Design choices:

- A zset rather than one key per worker with a TTL: the CLI can then name the
  last worker seen and when, even after every worker is gone ("last seen 7 min
  ago"), which is what an operator needs to know. Entries older than a day are
  pruned by each write, so hostnames of dead workers do not pile up.
- Written by a daemon thread of the worker's main process (the process that
  consumes and acknowledges messages), started when the worker is ready
  (``tasks`` connects it to Celery's ``worker_ready``; this module imports no
  Celery, so the CLI reads heartbeats without loading it). It
  survives Redis outages: a failed write is logged once per outage and tried
  again on the next tick. It stops writing as soon as the worker leaves its
  running state (shutdown, an unrecoverable error), so a worker stuck on its
  way out is not reported alive.
- Readers (``greenplace status`` / ``submit``, the HTTP API's readiness probe)
  call ``workers_seen(store, within_s)``: one ZRANGEBYSCORE, no Celery round trip
  (the former check waited 1 s for a ping answer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import cast

import redis

from greenplace.scheduler.store import JobStore

log = logging.getLogger("greenplace.heartbeat")

HEARTBEAT_INTERVAL_S = 5.0
# A worker not seen for this long counts as gone (three missed beats).
SEEN_WITHIN_S = 3 * HEARTBEAT_INTERVAL_S
FORGET_AFTER_S = 86_400.0


def heartbeat_key(store: JobStore) -> str:
    return f"{store.prefix}:workers"


def beat(store: JobStore, hostname: str, *, now_s: float | None = None) -> None:
    """Record ``hostname`` as seen at ``now_s`` (default: now); forget day-old entries."""
    now_s = time.time() if now_s is None else now_s
    key = heartbeat_key(store)
    pipe = store.client.pipeline(transaction=False)
    pipe.zadd(key, {hostname: now_s})
    pipe.zremrangebyscore(key, "-inf", now_s - FORGET_AFTER_S)
    pipe.execute()


def workers_seen(store: JobStore, within_s: float = SEEN_WITHIN_S, *,
                 now_s: float | None = None) -> dict[str, float]:
    """The workers seen in the last ``within_s`` seconds: hostname -> last seen (Unix s).

    Raises redis errors when Redis is unreachable (callers decide what that means).
    """
    now_s = time.time() if now_s is None else now_s
    rows = cast(list[tuple[str, float]], store.client.zrangebyscore(
        heartbeat_key(store), now_s - within_s, "+inf", withscores=True))
    return {str(name): float(score) for name, score in rows}


def last_seen(store: JobStore) -> tuple[str, float] | None:
    """The worker seen most recently and when (Unix s), or None if none ever was."""
    rows = cast(list[tuple[str, float]],
                store.client.zrevrange(heartbeat_key(store), 0, 0, withscores=True))
    return (str(rows[0][0]), float(rows[0][1])) if rows else None


class Heartbeat:
    """The thread that calls ``beat`` every ``interval_s`` while ``alive()`` holds."""

    def __init__(self, store: JobStore, hostname: str, *, alive: Callable[[], bool],
                 interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.store = store
        self.hostname = hostname
        self.alive = alive
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="greenplace-heartbeat",
                                        daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        failing = False
        while self.alive() and not self._stop.is_set():
            try:
                beat(self.store, self.hostname)
                if failing:
                    log.info("heartbeat: Redis reachable again")
                failing = False
            except redis.RedisError as exc:
                if not failing:
                    log.warning("heartbeat: cannot reach Redis (%s); trying every %.0f s",
                                exc, self.interval_s)
                failing = True
            self._stop.wait(self.interval_s)
