"""TTL caches for signal answers: in memory for a dry run, Redis when the service runs.

Entries are JSON strings (``SignalValue.to_json`` / ``Forecast.to_json``) under
keys the fallback chain builds from source, kind, signal type, zone and time.

Design choice: a cache failure never fails a placement. A Redis error is logged
once as a warning and treated as a miss; the chain then asks the source (and,
failing that, falls back as usual).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis

log = logging.getLogger("greenplace.signals")

DEFAULT_KEY_PREFIX = "gp"  # the deployment's GREENPLACE_KEY_PREFIX


class SignalCache(Protocol):
    """A string cache with a time to live per entry."""

    def get(self, key: str) -> str | None:
        """The cached text, or None when absent or expired."""
        ...

    def set(self, key: str, value: str, *, ttl_s: float) -> None:
        """Store ``value`` for ``ttl_s`` seconds."""
        ...


class MemoryCache:
    """An in-process TTL cache (thread-safe), for the dry run and tests."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic,
                 max_entries: int = 10_000) -> None:
        self._entries: dict[str, tuple[float, str]] = {}
        self._monotonic = monotonic
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, value = entry
            if self._monotonic() >= expires:
                del self._entries[key]
                return None
            return value

    def set(self, key: str, value: str, *, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self._max_entries:
                now = self._monotonic()
                self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
                if len(self._entries) >= self._max_entries:
                    self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (self._monotonic() + ttl_s, value)

    def __len__(self) -> int:
        return len(self._entries)


class RedisCache:
    """A TTL cache in Redis (``SET key value PX ttl``), shared by every worker.

    Args:
        client: a ``redis.Redis`` client (``decode_responses`` either way); the cache
            never creates a connection itself.
        prefix: the deployment's key prefix (``GREENPLACE_KEY_PREFIX``); entries live
            under ``{prefix}:signal:``, apart from the job store's keys and from any other
            deployment sharing the Redis.
    """

    def __init__(self, client: Any, *, prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self._client = client
        self._prefix = f"{prefix}:signal:"
        self._warned = False

    def _failed(self, operation: str, exc: Exception) -> None:
        if not self._warned:
            log.warning("signal cache: Redis %s failed (%s); continuing without the cache",
                        operation, type(exc).__name__)
            self._warned = True

    def get(self, key: str) -> str | None:
        try:
            value = self._client.get(self._prefix + key)
        except redis.RedisError as exc:
            self._failed("GET", exc)
            return None
        if value is None:
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def set(self, key: str, value: str, *, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        try:
            self._client.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except redis.RedisError as exc:
            self._failed("SET", exc)
