"""The refreshed-prices document and where it lives: a JSON file, or one Redis key.

The document holds, per cloud, what the last refreshes fetched from that cloud's own APIs::

    {"format": "greenplace-catalog-prices", "version": 1,
     "clouds": {"aws": {"source": "...", "fetched_at": "2026-12-01T03:00:00+00:00",
                        "regions": ["us-east-1", ...],
                        "priced_at": {"us-east-1": "2026-12-01T03:00:00+00:00", ...},
                        "not_enabled": [...], "offers": [{...one Offer...}, ...],
                        "skipped": [{"region": "...", "item": "...", "reason": "..."}],
                        "last_failure": {"at": "...", "outcome": "failed", "message": "..."}}}}

Where (``GREENPLACE_CATALOG_PRICES``): unset, the user's data folder
(``$XDG_DATA_HOME/greenplace/catalog/prices.json``, else ``~/.local/share/...``); a path, that
file (a volume every process of a deployment mounts); ``redis``, the key
``{GREENPLACE_KEY_PREFIX}:catalog:prices`` on the service's Redis, so every worker, the beat and
the API read one copy.

Design choice: every write is one read-modify-write of the whole document, atomic where it
lives: a file is rewritten under an exclusive lock (``fcntl.flock`` on ``prices.json.lock``)
through a temporary file and ``os.replace``, so a reader sees the old or the new document,
never half of one; a Redis key is rewritten with ``WATCH`` / ``MULTI`` / ``SET`` and tried
again when another writer changed it in between. Two refreshes of different clouds therefore
never lose each other's section. A document that does not parse is a ``CatalogError`` naming
where it is and how to recover; nothing reads a cloud SDK here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from greenplace.scheduler.catalog.loader import CLOUDS, value_problems
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.refresh.model import CloudPrices, Skipped
from greenplace.scheduler.exceptions import CatalogError, ConfigError, shown

if TYPE_CHECKING:
    import redis

PRICES_ENV = "GREENPLACE_CATALOG_PRICES"
REDIS_FORM = "redis"
FORMAT = "greenplace-catalog-prices"
VERSION = 1
# How often a process re-reads the Redis form (the file form is re-read when it changes).
REDIS_REREAD_S = 60.0
_WATCH_TRIES = 20  # a Redis update retried this often when other writers keep winning

_OFFER_FIELDS = tuple(f.name for f in dataclasses.fields(Offer))


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """The last refresh of a cloud that did not replace its figures, and why."""

    at: dt.datetime
    outcome: str  # "failed" (the fetch raised) or "refused" (the check failed)
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    """One cloud's refreshed figures (None until a refresh succeeded) and its last failure.

    ``priced_at`` dates each region: a refresh of some regions keeps the others' figures.
    """

    cloud: str
    prices: CloudPrices | None = None
    priced_at: Mapping[str, dt.datetime] = field(default_factory=dict)
    last_failure: Failure | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PricesDocument:
    """Every cloud's section; an empty document when nothing was ever refreshed."""

    sections: Mapping[str, Section] = field(default_factory=dict)

    def with_section(self, section: Section) -> PricesDocument:
        """This document with ``section`` replacing its cloud's."""
        return PricesDocument(sections={**self.sections, section.cloud: section})


# --- JSON -------------------------------------------------------------------------------
def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat()


def _skipped_json(s: Skipped) -> dict[str, str | bool]:
    return {"region": s.region, "item": s.item, "reason": s.reason,
            "not_offered": s.not_offered}


def _section_json(s: Section) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.prices is not None:
        p = s.prices
        out.update(source=p.source, fetched_at=_iso(p.fetched_at), regions=list(p.regions),
                   priced_at={r: _iso(at) for r, at in sorted(s.priced_at.items())},
                   not_enabled=list(p.not_enabled),
                   offers=[dataclasses.asdict(o) for o in p.offers],
                   skipped=[_skipped_json(k) for k in p.skipped])
    if s.last_failure is not None:
        f = s.last_failure
        out["last_failure"] = {"at": _iso(f.at), "outcome": f.outcome, "message": f.message}
    return out


def dumps(document: PricesDocument) -> str:
    """The document as JSON text (clouds in name order)."""
    return json.dumps({"format": FORMAT, "version": VERSION,
                       "clouds": {c: _section_json(document.sections[c])
                                  for c in sorted(document.sections)}}, indent=1)


class _Reader:
    """Parses one document, raising a CatalogError that names where it is and the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, what: str) -> CatalogError:
        return CatalogError(
            f"The refreshed catalog prices at {self.where} are unreadable: {path} {what}. "
            f"To fix: delete {self.where}; greenplace then places with the embedded catalog "
            "until `greenplace catalog refresh` writes new prices.")

    def get(self, data: Mapping[str, Any], path: str, key: str, kind: type | tuple[type, ...]
            ) -> Any:
        value = data.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self.fail(f"{path}.{key}", f"is {shown(value)}, not the expected "
                            f"{getattr(kind, '__name__', 'value')}")
        return value

    def when(self, raw: Any, path: str) -> dt.datetime:
        try:
            at = dt.datetime.fromisoformat(str(raw))
        except ValueError as exc:
            raise self.fail(path, f"is {shown(raw)}, not an ISO 8601 time") from exc
        if at.tzinfo is None:
            raise self.fail(path, f"is {shown(raw)}, a time without its UTC offset")
        return at.astimezone(dt.UTC)

    def names(self, data: Mapping[str, Any], path: str, key: str) -> tuple[str, ...]:
        items = self.get(data, path, key, list)
        if not all(isinstance(i, str) for i in items):
            raise self.fail(f"{path}.{key}", "holds something other than names")
        return tuple(items)

    def offer(self, raw: Any, path: str, cloud: str) -> Offer:
        if not isinstance(raw, dict) or tuple(sorted(raw)) != tuple(sorted(_OFFER_FIELDS)):
            raise self.fail(path, f"is not an offer with the fields {', '.join(_OFFER_FIELDS)}")
        try:
            offer = Offer(**raw)
        except TypeError as exc:
            raise self.fail(path, str(exc)) from exc
        problems = value_problems(offer)
        if offer.cloud != cloud:
            problems.append(f"cloud {offer.cloud!r} is not {cloud!r}")
        if problems:
            raise self.fail(path, "; ".join(problems))
        return offer

    def section(self, cloud: str, data: Any) -> Section:
        path = f"clouds.{cloud}"
        if not isinstance(data, dict):
            raise self.fail(path, "is not a mapping")
        failure = None
        if "last_failure" in data:
            f = self.get(data, path, "last_failure", dict)
            fp = f"{path}.last_failure"
            failure = Failure(at=self.when(f.get("at"), f"{fp}.at"),
                              outcome=self.get(f, fp, "outcome", str),
                              message=self.get(f, fp, "message", str))
        if "offers" not in data:
            return Section(cloud=cloud, last_failure=failure)
        skipped = []
        for i, s in enumerate(self.get(data, path, "skipped", list)):
            sp = f"{path}.skipped[{i}]"
            if not isinstance(s, dict):
                raise self.fail(sp, "is not a mapping")
            skipped.append(Skipped(region=self.get(s, sp, "region", str),
                                   item=self.get(s, sp, "item", str),
                                   reason=self.get(s, sp, "reason", str),
                                   not_offered=s.get("not_offered") is True))
        prices = CloudPrices(
            cloud=cloud, source=self.get(data, path, "source", str),
            fetched_at=self.when(data.get("fetched_at"), f"{path}.fetched_at"),
            regions=self.names(data, path, "regions"),
            offers=tuple(self.offer(o, f"{path}.offers[{i}]", cloud)
                         for i, o in enumerate(self.get(data, path, "offers", list))),
            not_enabled=self.names(data, path, "not_enabled"), skipped=tuple(skipped))
        priced = self.get(data, path, "priced_at", dict)
        priced_at = {str(r): self.when(at, f"{path}.priced_at.{r}") for r, at in priced.items()}
        return Section(cloud=cloud, prices=prices, priced_at=priced_at, last_failure=failure)


def loads(text: str, *, where: str) -> PricesDocument:
    """Parse a document. Raises CatalogError naming ``where`` and the broken field."""
    reader = _Reader(where)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise reader.fail("the file", f"is not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise reader.fail("the document", f"is not a {FORMAT} document")
    if data.get("version") != VERSION:
        raise reader.fail("version", f"is {shown(data.get('version'))}; this greenplace reads "
                          f"version {VERSION}")
    clouds = reader.get(data, "document", "clouds", dict)
    unknown = sorted(set(clouds) - set(CLOUDS))
    if unknown:
        raise reader.fail("clouds", f"names {', '.join(map(repr, unknown))}, not one of "
                          f"{', '.join(CLOUDS)}")
    return PricesDocument(sections={c: reader.section(c, clouds[c]) for c in clouds})


# --- where it lives ---------------------------------------------------------------------
class PricesLocation(Protocol):
    """Where the document is kept: read it, and change it atomically."""

    @property
    def where(self) -> str:
        """For messages: the file's path or ``redis key K on URL`` (never a password)."""
        ...

    def read_text(self) -> str | None:
        """The document's text, or None when none was written yet."""
        ...

    def update(self, change: Callable[[PricesDocument], PricesDocument]) -> PricesDocument:
        """Apply ``change`` to the current document and write the result atomically."""
        ...


def read(location: PricesLocation) -> PricesDocument:
    """The document at ``location`` (empty when there is none). Raises CatalogError."""
    text = location.read_text()
    return PricesDocument() if text is None else loads(text, where=location.where)


@dataclass(frozen=True, slots=True)
class FileLocation:
    """The document as one JSON file, rewritten atomically under a lock."""

    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    def read_text(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"Cannot read the refreshed catalog prices at {self.path} "
                              f"({exc.strerror}). To fix: make the file readable, or point "
                              f"{PRICES_ENV} at another file.") from exc

    def update(self, change: Callable[[PricesDocument], PricesDocument]) -> PricesDocument:
        import fcntl  # POSIX; imported when a refresh writes

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                new = change(read(self))
                self._replace(dumps(new))
                return new
        except OSError as exc:
            raise ConfigError(f"Cannot write the refreshed catalog prices at {self.path} "
                              f"({exc.strerror or exc}); nothing was changed. To fix: make "
                              f"{self.path.parent} writable, or point {PRICES_ENV} at a "
                              "writable file.") from exc

    def _replace(self, text: str) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o644)  # public figures, read by every process that places
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@dataclass(frozen=True, slots=True)
class RedisLocation:
    """The document as one Redis string, rewritten with WATCH / MULTI / SET."""

    client: redis.Redis
    key: str
    url: str  # redacted, for messages

    @property
    def where(self) -> str:
        return f"Redis key {self.key} on {self.url}"

    def read_text(self) -> str | None:
        return _text(self.client.get(self.key))

    def update(self, change: Callable[[PricesDocument], PricesDocument]) -> PricesDocument:
        import redis as redis_lib

        for _ in range(_WATCH_TRIES):
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self.key)
                    raw = _text(pipe.get(self.key))
                    current = PricesDocument() if raw is None else loads(raw, where=self.where)
                    new = change(current)
                    pipe.multi()
                    pipe.set(self.key, dumps(new))
                    pipe.execute()
                    return new
                except redis_lib.WatchError:
                    continue  # another refresh wrote in between: apply ours to its result
        raise ConfigError(f"Could not write the refreshed catalog prices to {self.where}: "
                          f"other writers changed it {_WATCH_TRIES} times in a row. To fix: "
                          "run the refresh again once the others have finished.")


def _text(value: object) -> str | None:
    """A Redis reply as text, whether the client decodes replies or not."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def prices_key(prefix: str) -> str:
    """The Redis key of the document under a deployment's key prefix."""
    return f"{prefix}:catalog:prices"


def service_location(client: redis.Redis, prefix: str, environ: Mapping[str, str]
                     ) -> PricesLocation:
    """Where a service process (worker, beat, API) finds the document: the Redis form on
    its own store's client and key prefix, else the file ``prices_location`` names."""
    if environ.get(PRICES_ENV, "").strip().lower() == REDIS_FORM:
        return RedisLocation(client, prices_key(prefix), "the service's Redis")
    return prices_location(environ)


def default_path(environ: Mapping[str, str]) -> Path:
    """``$XDG_DATA_HOME/greenplace/catalog/prices.json`` (else under ``~/.local/share``)."""
    base = environ.get("XDG_DATA_HOME", "").strip()
    root = Path(base) if base else Path.home() / ".local" / "share"
    return root / "greenplace" / "catalog" / "prices.json"


def prices_location(environ: Mapping[str, str]) -> PricesLocation:
    """Where ``GREENPLACE_CATALOG_PRICES`` says the document lives (see the module docstring).

    Raises:
        ConfigError: ``redis`` with unusable Redis settings (``load_settings``' message).
    """
    raw = environ.get(PRICES_ENV, "").strip()
    if raw.lower() == REDIS_FORM:
        from greenplace.scheduler.settings import load_settings
        from greenplace.scheduler.store import redis_client

        settings = load_settings(environ)
        return RedisLocation(redis_client(settings.redis_url, ca_cert=settings.redis_ca_cert),
                             prices_key(settings.key_prefix), settings.redacted_redis_url)
    return FileLocation(Path(raw).expanduser() if raw else default_path(environ))


__all__ = ["FileLocation", "Failure", "PRICES_ENV", "PricesDocument", "PricesLocation",
           "RedisLocation", "Section", "default_path", "dumps", "loads", "prices_key",
           "prices_location", "read", "service_location"]
