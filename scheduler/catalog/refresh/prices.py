"""The refreshed prices as every process places with them: ``with_prices(catalog, environ)``.

``loader.load_catalog()`` calls this on every use, so it is cached: the file form is parsed
and merged again only when the file's stamp changes (one ``stat`` per call), the Redis form
is re-read at most once a minute (``store.REDIS_REREAD_S``) and merged again only when its
text changed. An unchanged document gives the very same ``Catalog`` object, so a worker can
tell by identity that it must rebuild its placer.

Design choice: when the Redis form cannot be read (Redis down), the last copy read is kept,
or, before any was read, the catalog without refreshed prices, with one warning in the log:
placement goes on, and every decision still carries its prices' ``as_of`` (and the stale
price note), so nothing is placed on old prices silently. A document that does not parse is
an error (``CatalogError``) naming where it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from greenplace.scheduler.catalog.loader import Catalog
from greenplace.scheduler.catalog.refresh.merge import merged
from greenplace.scheduler.catalog.refresh.store import (
    PRICES_ENV,
    REDIS_FORM,
    REDIS_REREAD_S,
    FileLocation,
    PricesLocation,
    RedisLocation,
    loads,
    prices_location,
)

log = logging.getLogger("greenplace.catalog")

# What names the Redis form's location (its client is made once per distinct value).
_REDIS_VARIABLES = ("GREENPLACE_REDIS_URL", "GREENPLACE_REDIS_PASSWORD",
                    "GREENPLACE_REDIS_CA_CERT", "GREENPLACE_KEY_PREFIX")


@dataclass(slots=True)
class _Entry:
    """What one location gave last: its stamp (file) or read time (Redis) and text."""

    stamp: object
    text: str | None
    base: Catalog | None = None
    catalog: Catalog | None = None


_ENTRIES: dict[str, _Entry] = {}
_REDIS_LOCATIONS: dict[tuple[str, ...], PricesLocation] = {}


def _location(environ: Mapping[str, str]) -> PricesLocation:
    if environ.get(PRICES_ENV, "").strip().lower() != REDIS_FORM:
        return prices_location(environ)
    key = tuple(environ.get(name, "") for name in _REDIS_VARIABLES)
    found = _REDIS_LOCATIONS.get(key)
    if found is None:
        found = _REDIS_LOCATIONS[key] = prices_location(environ)
    return found


def _file_text(location: FileLocation) -> tuple[object, str | None]:
    try:
        stat = location.path.stat()
    except FileNotFoundError:
        return None, None
    except OSError:
        return "unreadable", location.read_text()  # raises the one-paragraph error
    stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    entry = _ENTRIES.get(location.where)
    if entry is not None and entry.stamp == stamp:
        return stamp, entry.text
    return stamp, location.read_text()


def _redis_text(location: PricesLocation) -> tuple[object, str | None]:
    import redis

    entry = _ENTRIES.get(location.where)
    now = time.monotonic()
    if entry is not None and isinstance(entry.stamp, float) and now - entry.stamp < REDIS_REREAD_S:
        return entry.stamp, entry.text
    try:
        return now, location.read_text()
    except redis.RedisError as exc:
        kept = "the copy read before" if entry is not None else "the embedded prices"
        log.warning("cannot read the refreshed catalog prices (%s: %s); placing with %s "
                    "until it answers", location.where, exc, kept)
        return now, entry.text if entry is not None else None


def forget(location: PricesLocation) -> None:
    """Drop what this process read from ``location`` (after it wrote there itself)."""
    _ENTRIES.pop(location.where, None)


def with_prices(catalog: Catalog, environ: Mapping[str, str], *,
                location: PricesLocation | None = None) -> Catalog:
    """``catalog`` merged with the refreshed prices at ``location`` (default: where
    ``GREENPLACE_CATALOG_PRICES`` says); ``catalog`` itself when none were written.

    Raises:
        CatalogError: the document does not parse (naming where it is).
        ConfigError: the file cannot be read, or the Redis settings are unusable.
    """
    where = location or _location(environ)
    stamp, text = _file_text(where) if isinstance(where, FileLocation) else _redis_text(where)
    entry = _ENTRIES.get(where.where)
    if entry is not None and entry.text == text and entry.base is catalog \
            and entry.catalog is not None:
        entry.stamp = stamp
        return entry.catalog
    result = catalog if text is None else merged(catalog, loads(text, where=where.where))
    _ENTRIES[where.where] = _Entry(stamp=stamp, text=text, base=catalog, catalog=result)
    return result


__all__ = ["RedisLocation", "forget", "with_prices"]
