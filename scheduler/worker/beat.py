"""Replicated beat: any number of beat processes, one lease in Redis, one sender per tick.

Run ``greenplace beat`` (or ``greenplace worker --beat``) on two or more machines.
Each runs ``LeasedScheduler``: every process follows the schedule, but only the one
that holds the lease ``{prefix}:lock:beat`` sends a due task; the others stand by and
take the lease over when it expires, so RUNNING jobs keep being followed when a beat
dies.

The lease (``BeatLease``), with ``L`` = ``GREENPLACE_BEAT_LEASE_S``:

- Taken when free (``SET key token PX L``) or renewed by its owner (``PEXPIRE``
  only while the key still holds our token), in one script run every ``L/4`` by
  every process: the owner renews, a standby tries to take it. The token names the
  process (``host/pid/random``) so ``beat_leader`` can say who holds it.
- Before each send the owner checks, locally, that its last successful renewal
  started less than ``3L/4`` ago, then in one script that Redis still holds its token
  with more than ``L/4`` to live (the same script records the send time). A leader
  that cannot renew (Redis down, process paused) therefore stops sending at least a
  quarter lease before a standby can take over.
- Released (compare-and-delete) on a clean shutdown, so a standby takes over at its
  next attempt, within ``L/4``; after a crash, within ``3L/4`` to ``5L/4``.
- A Redis error never escapes: the process stands by, logs the outage once, and
  tries again at its next attempt.

Design choice: our own small lease rather than celery-redbeat (a new dependency).
RedBeat also moves the schedule into Redis and brings its own lock and settings;
all this needs is "one of N sends", and the job store already holds locks the same
way (SET NX PX with an owner token), under the same key prefix.

Design choice: the schedule lives in memory, and each send's time in the Redis hash
``{prefix}:beat:sent`` (entry -> epoch seconds), instead of Celery's shelve file. A
standby advances its entries as if it had sent, and a process that takes the lease
first adopts the times in that hash, so it sends an overdue entry at once and does
not repeat one the old leader just sent; the 15-minute leak sweep keeps its rhythm
across failovers and restarts. Celery's shelve file could not be shared by two beats on
one machine (``dbm.dumb`` has no locking), which is exactly how a replicated beat is
first tried.

What the lease cannot rule out: a process paused between its last check and the
publish itself could still send one message after its lease ran out. Both beat tasks
tolerate that: ``reconcile`` runs under its own lock in the job store and the leak
sweep is idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.beat import ScheduleEntry, Scheduler

from greenplace.scheduler.store import JobStore, open_store
from greenplace.scheduler.worker.app import settings_of

log = logging.getLogger("greenplace.beat")

# KEYS: lease. ARGV: token, ttl ms. Takes a free lease or extends our own (compare and
# extend); 0 when another process holds it.
_TAKE_OR_RENEW_LUA = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: lease, sent-times hash. ARGV: token, margin ms, entry name, now (epoch s).
# 1 (and the send time recorded) when we hold the lease with more than the margin left.
_MAY_SEND_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('PTTL', KEYS[1]) > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  return 1
end
return 0
"""
# KEYS: lease. ARGV: token. Deletes the lease only while it holds our token.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_key(store: JobStore) -> str:
    """The lease's key, under the job store's prefix."""
    return f"{store.prefix}:lock:beat"


def sent_key(store: JobStore) -> str:
    """The hash of each beat entry's last send time (epoch seconds)."""
    return f"{store.prefix}:beat:sent"


@dataclass(frozen=True, slots=True, kw_only=True)
class BeatLeader:
    """Who holds the beat lease (``host/pid/random``) and until when (UTC)."""

    owner: str
    expires_at: dt.datetime


def beat_leader(store: JobStore) -> BeatLeader | None:
    """The beat process holding the lease now, or None when no beat does.

    Raises:
        redis.RedisError: Redis cannot be reached (the caller decides how to say so).
    """
    with store.client.pipeline(transaction=True) as pipe:
        pipe.get(lease_key(store))
        pipe.pttl(lease_key(store))
        owner, ttl_ms = pipe.execute()
    if owner is None or int(ttl_ms) <= 0:
        return None
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=int(ttl_ms))
    return BeatLeader(owner=str(owner), expires_at=expires_at)


class BeatLease:
    """This process's side of the lease: take, renew, check before a send, release.

    Times are taken from the monotonic clock before each Redis call, so a slow or
    hung call only shortens what this process believes it holds.
    """

    def __init__(self, store: JobStore, *, lease_s: float) -> None:
        self.store = store
        self.lease_s = lease_s
        self.token = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(6)}"
        self._key = lease_key(store)
        self._sent_key = sent_key(store)
        self._take_or_renew = store.client.register_script(_TAKE_OR_RENEW_LUA)
        self._may_send = store.client.register_script(_MAY_SEND_LUA)
        self._release = store.client.register_script(_RELEASE_LUA)
        self._valid_until = 0.0  # monotonic; we may send until a margin before it
        self._redis_down = False
        self._leading = False  # what the log last said (holding() decides what we may do)
        self._told_standby = False

    @property
    def renew_every_s(self) -> float:
        """How often the owner renews and a standby tries to take over."""
        return self.lease_s / 4

    @property
    def margin_s(self) -> float:
        """How much of the lease must be left for a send to go ahead."""
        return self.lease_s / 4

    @property
    def _ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    @property
    def leading(self) -> bool:
        """Whether the last take-or-renew succeeded (what the log said last)."""
        return self._leading

    def holding(self) -> bool:
        """Whether this process may still act on its last successful renewal."""
        return time.monotonic() < self._valid_until - self.margin_s

    def maintain(self) -> bool:
        """Renew the lease if we hold it, else try to take it; returns whether we hold it."""
        was = self.holding()
        started = time.monotonic()
        try:
            ok = bool(self._take_or_renew(keys=[self._key], args=[self.token, self._ms]))
        except redis.RedisError as exc:
            self._on_redis_error(exc)
            ok = False
            if was and self.holding():
                return True  # not renewed, but still inside what we held: keep it
        else:
            self._on_redis_ok()
        if ok:
            self._valid_until = started + self.lease_s
            if not self._leading:
                log.info("beat: %s took the beat lease; this process sends the schedule",
                         self.token)
            self._leading = True
        else:
            self._lose("another beat holds it" if not self._redis_down else "Redis is down")
        return ok

    def may_send(self, entry_name: str) -> bool:
        """Check the lease right before sending ``entry_name``; record the send if it holds."""
        if not self.holding():
            return False
        try:
            ok = bool(self._may_send(keys=[self._key, self._sent_key],
                                     args=[self.token, int(self.margin_s * 1000), entry_name,
                                           repr(time.time())]))
        except redis.RedisError as exc:
            self._on_redis_error(exc)
            return False
        self._on_redis_ok()
        if not ok:
            self._lose("it expired or another beat holds it")
        return ok

    def sent_times(self) -> dict[str, dt.datetime]:
        """Each entry's last send time as recorded by whichever beat sent it (UTC)."""
        raw = self.store.client.hgetall(self._sent_key)
        return {str(name): dt.datetime.fromtimestamp(float(at), dt.UTC)
                for name, at in raw.items()}

    def release(self) -> None:
        """Give the lease up (clean shutdown) if we still hold it; never raises for Redis."""
        if not self._leading:
            return
        self._valid_until, self._leading = 0.0, False
        try:
            self._release(keys=[self._key], args=[self.token])
        except redis.RedisError as exc:
            log.warning("beat: could not release the beat lease (%s); it expires by itself "
                        "within %g s", exc, self.lease_s)
            return
        log.info("beat: %s released the beat lease", self.token)

    def _lose(self, why: str) -> None:
        self._valid_until = 0.0
        if self._leading:
            log.info("beat: %s lost the beat lease (%s); standing by", self.token, why)
        elif not self._told_standby:
            log.info("beat: %s standing by (%s); it takes over when the lease is free",
                     self.token, why)
        self._leading = False
        self._told_standby = True

    def _on_redis_error(self, exc: redis.RedisError) -> None:
        if not self._redis_down:
            log.warning("beat: Redis is unreachable (%s); standing by and trying again every "
                        "%g s", exc, self.renew_every_s)
        self._redis_down = True

    def _on_redis_ok(self) -> None:
        if self._redis_down:
            log.info("beat: Redis answers again")
        self._redis_down = False


class LeasedScheduler(Scheduler):
    """Celery beat's scheduler, sending only while this process holds the beat lease.

    Wired with ``celery beat --scheduler greenplace.scheduler.worker.beat:LeasedScheduler``
    (what ``greenplace beat`` and ``greenplace worker --beat`` pass).
    """

    def __init__(self, app: Celery, *args: Any, lease: BeatLease | None = None,
                 **kwargs: Any) -> None:
        self._lease = lease
        self._next_maintain_s = 0.0  # monotonic
        super().__init__(app, *args, **kwargs)
        # Wake at least as often as the lease is renewed.
        renew_s = self.lease.renew_every_s
        self.max_interval = min(float(self.max_interval), renew_s)  # type: ignore[has-type]

    @property
    def lease(self) -> BeatLease:
        if self._lease is None:
            settings = settings_of(self.app)
            self._lease = BeatLease(open_store(settings), lease_s=settings.beat_lease_s)
        return self._lease

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Renew or try to take the lease when due, then Celery's tick (which may send)."""
        now = time.monotonic()
        if now >= self._next_maintain_s:
            was = self.lease.leading
            if self.lease.maintain() and not was:
                self._adopt_sent_times()
            self._next_maintain_s = now + self.lease.renew_every_s
        delay = float(super().tick(*args, **kwargs))
        return max(0.0, min(delay, self._next_maintain_s - time.monotonic()))

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        """Send ``entry`` only if the lease still holds (a standby just advances it)."""
        if self.lease.may_send(entry.name):
            super().apply_entry(entry, producer=producer)

    def close(self) -> None:
        """Release the lease so a standby takes over at its next attempt."""
        try:
            if self._lease is not None:
                self._lease.release()
        finally:
            super().close()

    def _adopt_sent_times(self) -> None:
        """Continue the schedule where the previous sender left it."""
        try:
            sent = self.lease.sent_times()
        except redis.RedisError:
            return  # keep our own rhythm; the next send records the times again
        for name, at in sent.items():
            entry = self.schedule.get(name)
            if entry is not None:
                entry.last_run_at = at
        self._heap = None  # rebuilt from the entries at the next tick

    @property
    def info(self) -> str:
        return f"    . lease -> {lease_key(self.lease.store)} ({self.lease.lease_s:g} s)"


SCHEDULER = f"{LeasedScheduler.__module__}:{LeasedScheduler.__qualname__}"
