"""The fallback chain over signal sources, and the builder of live RegionSignals.

``SignalChain`` asks its sources in the configured order for one signal type.
A source that does not return that type is never asked (types are never mixed),
nor one whose emission basis for that type is not the chain's (``bases``: the
catalog's lifecycle grid averages unless configured otherwise; bases are never
mixed either); a source with no zone for the region is passed over; a source that
is down, slow (timeout on every HTTP call), unauthorised or answers a malformed
payload is skipped with one warning and left alone for ``down_for_s`` seconds (a
429 for as long as its ``Retry-After`` asks), and the next source of the same type
answers. A 403 "not in your plan" for one zone or endpoint skips that (source, zone,
endpoint) for ``plan_skip_s`` only; an answer for another zone than the one asked is
rejected and that zone alone falls back. The static catalog source, always last,
answers whatever the catalog has. Every answer is cached with a TTL and comes
back as a ``ChainResult`` carrying the value and every attempt, so a decision
can say which source, which signal type and how old each value was.

``build_region_signals`` turns chain answers into the ``RegionSignals`` the
placement pipeline scores with, for one policy signal type; ``ChainForecasts``
gives temporal shifting its forecasts from the same chain.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Catalog, Region
from greenplace.scheduler.exceptions import (
    NoSignalDataError,
    SignalAuthError,
    SignalError,
    SignalPayloadError,
    SignalTimeoutError,
    SignalUnavailableError,
)
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.placement.arrays import RegionSignals
from greenplace.scheduler.placement.decision import PlacementDecision
from greenplace.scheduler.placement.pipeline import CalibratedPower, Placer
from greenplace.scheduler.signals import static
from greenplace.scheduler.signals.base import (
    CATALOG_BASIS,
    Clock,
    EmissionBasis,
    Forecast,
    NotInPlanError,
    RateLimitedError,
    SignalSource,
    SignalValue,
    ZoneMismatchError,
    iso,
    utc,
    utc_now,
)
from greenplace.scheduler.signals.cache import MemoryCache, SignalCache
from greenplace.scheduler.signals.config import SignalSettings, build_sources

log = logging.getLogger("greenplace.signals")

# Attempt outcomes. The first group means "this source cannot serve this question"
# (no warning; "not in plan" and "wrong zone" concern one zone or endpoint); the second
# means "this source failed" (warning, and the source is left alone for a while); the
# last two mean it answered.
NOT_CONFIGURED, TYPE_NOT_OFFERED, OTHER_BASIS, NO_ZONE, NO_DATA = (
    "not configured", "type not offered", "other basis", "no zone", "no data")
NOT_IN_PLAN, WRONG_ZONE = "not in plan", "wrong zone"
DOWN, TIMEOUT, UNAUTHORISED, MALFORMED, RATE_LIMITED = (
    "down", "timeout", "unauthorised", "malformed", "rate limited")
OK, CACHED = "ok", "cached"
FAILURES = frozenset({DOWN, TIMEOUT, UNAUTHORISED, MALFORMED, RATE_LIMITED})
# Outcomes that concern one zone or endpoint of a source, reported like failures.
ZONE_PROBLEMS = frozenset({NO_DATA, NOT_IN_PLAN, WRONG_ZONE})


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One source asked (or passed over) for one question, and what happened."""

    source: str
    outcome: str
    detail: str = ""

    def text(self) -> str:
        return f"{self.source}: {self.outcome}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainResult:
    """The chain's answer for one region and signal type, with every attempt."""

    subject: str  # region key (or zone id for a direct zone question)
    signal: CarbonSignal
    value: SignalValue | None
    attempts: tuple[Attempt, ...]

    @property
    def source(self) -> str | None:
        return self.value.source if self.value else None

    @property
    def live(self) -> bool:
        """Whether a live source (not the static catalog) answered."""
        return self.value is not None and self.value.source != static.NAME

    def failures(self) -> list[Attempt]:
        """Sources that were skipped because they failed (not merely inapplicable)."""
        return [a for a in self.attempts if a.outcome in FAILURES or a.outcome in ZONE_PROBLEMS]

    def label(self) -> str:
        """Short source label: ``electricitymaps`` or ``static:catalog 2024``."""
        if self.value is None:
            return "unknown"
        if self.value.source == static.NAME:
            year = self.value.detail.split()[1] if self.value.detail.startswith("catalog ") else ""
            return f"static:catalog {year}".strip()
        return self.value.source

    def age_text(self, now: dt.datetime) -> str:
        if self.value is None:
            return "no source has it"
        if self.value.source == static.NAME:
            return "annual"
        return _age(self.value.age_s(now))


@dataclass(frozen=True, slots=True, kw_only=True)
class ForecastResult:
    """The chain's forecast for one region and signal type (None when no live source had one)."""

    forecast: Forecast | None
    attempts: tuple[Attempt, ...]


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s old"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min old"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h old"
    return f"{seconds / 86400:.0f} days old"


# What a failure is called, subclasses before their parents (a 429 is also "unavailable").
_OUTCOMES: tuple[tuple[type[SignalError], str], ...] = (
    (RateLimitedError, RATE_LIMITED), (NotInPlanError, NOT_IN_PLAN),
    (ZoneMismatchError, WRONG_ZONE), (SignalTimeoutError, TIMEOUT),
    (SignalUnavailableError, DOWN), (SignalAuthError, UNAUTHORISED),
    (SignalPayloadError, MALFORMED), (NoSignalDataError, NO_DATA),
)


class SignalObserver(Protocol):
    """Told of each failed source call and each fresh current value (the service's metrics,
    ``scheduler/metrics.py``); must not raise."""

    def signal_error(self, source: str, outcome: str) -> None: ...

    def signal_observed(self, source: str, observed_at: dt.datetime) -> None: ...


def _outcome(exc: SignalError) -> str:
    return next((name for kind, name in _OUTCOMES if isinstance(exc, kind)), DOWN)


def _endpoint(signal: CarbonSignal, *, forecast: bool, past: bool) -> str:
    """The kind of question a 403 "not in plan" is remembered for (with source and zone)."""
    return f"{'forecast' if forecast else 'past value' if past else 'value'} {signal}"


def _floor(value: dt.datetime, minutes: int) -> dt.datetime:
    value = utc(value)
    return value.replace(minute=value.minute - value.minute % minutes, second=0, microsecond=0)


class SignalChain:
    """Ordered signal sources with a TTL cache, per-source back-off and provenance.

    Args:
        sources: the sources, in fallback order.
        order: every configured source name in order, including unconfigured ones
            (defaults to the sources' names).
        unconfigured: name -> why that source is not available (reported in attempts).
        cache: where answers are cached (default: in memory).
        ttl_s / forecast_ttl_s: cache lifetimes of current values and forecasts.
        down_for_s: how long a failed source is left alone before it is tried again (a
            429 with ``Retry-After``: as long as the service asks instead).
        bases: the emission basis kept per intensity type (default: the catalog's,
            lifecycle averages and direct marginal figures); a source that declares
            another basis for the type asked is passed over, never mixed in.
        plan_skip_s: how long a (source, zone, endpoint) answered 403 "not in plan" is
            skipped before it is asked again.
        observer: told of every failed source call and every current value fetched.

    Design choice: a failure that concerns the source as a whole (down, timeout,
    refused credentials, malformed answers, rate limit) marks the source down for
    ``down_for_s``, so a dead API costs one timeout per placement batch, not one
    per region. "No data for this zone", a 403 for one zone or endpoint outside the
    account's plan, and an answer for the wrong zone concern one zone and never take
    the source down; a 403 is remembered so that zone or endpoint is not asked again
    for ``plan_skip_s``.
    """

    def __init__(
        self, sources: Sequence[SignalSource], *, order: Sequence[str] | None = None,
        unconfigured: Mapping[str, str] | None = None, cache: SignalCache | None = None,
        ttl_s: float = 300.0, forecast_ttl_s: float = 1800.0, down_for_s: float = 120.0,
        bases: Mapping[CarbonSignal, EmissionBasis] = CATALOG_BASIS,
        plan_skip_s: float = 3600.0, observer: SignalObserver | None = None,
        clock: Clock = utc_now, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._observer = observer
        self._sources = {s.name: s for s in sources}
        self.order: tuple[str, ...] = tuple(order or [s.name for s in sources])
        self.unconfigured = dict(unconfigured or {})
        self._cache: SignalCache = cache if cache is not None else MemoryCache()
        self._ttl_s, self._forecast_ttl_s, self._down_for_s = ttl_s, forecast_ttl_s, down_for_s
        self._clock, self._monotonic = clock, monotonic
        self._down: dict[str, tuple[float, str]] = {}
        self.bases: dict[CarbonSignal, EmissionBasis] = dict(bases)
        self._plan_skip_s = plan_skip_s
        self._not_in_plan: dict[tuple[str, str, str], tuple[float, str]] = {}
        self._warned: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    @classmethod
    def from_settings(cls, settings: SignalSettings, catalog: Catalog, *,
                      cache: SignalCache | None = None,
                      observer: SignalObserver | None = None) -> SignalChain:
        """The chain the settings describe (sources in order, unconfigured ones reported)."""
        sources, unconfigured = build_sources(settings, catalog)
        return cls(sources, order=settings.sources, unconfigured=unconfigured, cache=cache,
                   ttl_s=settings.ttl_s, forecast_ttl_s=settings.forecast_ttl_s,
                   bases=settings.bases(), observer=observer)

    @property
    def sources(self) -> tuple[SignalSource, ...]:
        return tuple(self._sources[n] for n in self.order if n in self._sources)

    def now(self) -> dt.datetime:
        return self._clock()

    def close(self) -> None:
        for source in self._sources.values():
            source.close()

    def __enter__(self) -> SignalChain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- bookkeeping -------------------------------------------------------------------

    def _is_down(self, name: str) -> str | None:
        with self._lock:
            entry = self._down.get(name)
            if entry is None:
                return None
            until, reason = entry
            if self._monotonic() >= until:
                del self._down[name]
                return None
            return reason

    def _failed(self, name: str, outcome: str, exc: SignalError, *,
                zone: str = "", endpoint: str = "") -> None:
        down_for_s = self._down_for_s
        if isinstance(exc, RateLimitedError) and exc.retry_after_s is not None:
            down_for_s = exc.retry_after_s
        with self._lock:
            if outcome in FAILURES:
                self._down[name] = (self._monotonic() + down_for_s, f"{outcome}, {exc}")
            if outcome == NOT_IN_PLAN:
                self._not_in_plan[(name, zone, endpoint)] = (
                    self._monotonic() + self._plan_skip_s, str(exc))
            first = (name, outcome) not in self._warned
            self._warned.add((name, outcome))
        if self._observer is not None:
            self._observer.signal_error(name, outcome)
        if first and outcome in FAILURES:
            until = iso(self._clock() + dt.timedelta(seconds=down_for_s))
            log.warning("signal source %s skipped (%s): %s Using the next source; %s is left "
                        "alone for %.0f s (until %s).", name, outcome, exc, name, down_for_s,
                        until)
        elif first and outcome == WRONG_ZONE:
            log.warning("signal source %s: %s", name, exc)
        elif first:
            log.info("signal source %s: %s", name, exc)

    def _plan_excludes(self, name: str, zone: str, endpoint: str) -> str | None:
        """Why (source, zone, endpoint) is skipped after a 403 "not in plan", or None."""
        with self._lock:
            entry = self._not_in_plan.get((name, zone, endpoint))
            if entry is None:
                return None
            if self._monotonic() >= entry[0]:
                del self._not_in_plan[(name, zone, endpoint)]
                return None
            return entry[1]

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            lock = self._key_locks.get(key)
            if lock is None:
                lock = self._key_locks[key] = threading.Lock()
            return lock

    def _pass_over(self, name: str, signal: CarbonSignal, *, forecast: bool) -> Attempt | None:
        """Why source ``name`` cannot be asked at all, or None when it can."""
        if name in self.unconfigured:
            return Attempt(source=name, outcome=NOT_CONFIGURED, detail=self.unconfigured[name])
        source = self._sources.get(name)
        if source is None:
            return Attempt(source=name, outcome=NOT_CONFIGURED)
        offered = source.forecast_types if forecast else source.signal_types
        if signal not in offered:
            have = ", ".join(sorted(map(str, offered))) or "none"
            return Attempt(source=name, outcome=TYPE_NOT_OFFERED,
                           detail=f"{'forecasts' if forecast else 'returns'} {have}")
        wanted = self.bases.get(signal)
        basis = source.emission_basis.get(signal)
        if wanted is not None and basis != wanted:
            theirs = basis.label if basis is not None else "an undeclared basis"
            return Attempt(source=name, outcome=OTHER_BASIS, detail=(
                f"{signal} on a {theirs} basis; this chain keeps {wanted.label} {signal} "
                "figures (GREENPLACE_SIGNAL_BASIS)"))
        down = self._is_down(name)
        if down is not None:
            return Attempt(source=name, outcome=DOWN, detail=f"left alone after an earlier "
                           f"failure: {down}")
        return None

    def basis_notes(self, signals: Iterable[CarbonSignal]) -> list[str]:
        """One note per signal type for which configured sources of another basis are skipped."""
        notes = []
        for signal in signals:
            wanted = self.bases.get(signal)
            if wanted is None:
                continue
            skipped = []
            for source in self.sources:
                basis = source.emission_basis.get(signal)
                if signal in source.signal_types and basis != wanted:
                    skipped.append(f"{source.name} ({basis.label if basis else 'undeclared'})")
            if skipped:
                notes.append(
                    f"emission basis: {signal} is kept on the {wanted.label} basis, so "
                    f"{', '.join(skipped)} {'is' if len(skipped) == 1 else 'are'} skipped for "
                    f"{signal}, never mixed in." + (
                        f" To use {'it' if len(skipped) == 1 else 'them'}, set "
                        "GREENPLACE_SIGNAL_BASIS to that basis (every source of the other "
                        "basis, the catalog's included, is then skipped instead)."
                        if signal is CarbonSignal.AVERAGE else ""))
        return notes

    # --- questions ---------------------------------------------------------------------

    def value(self, region: Region, *, signal: CarbonSignal,
              at: dt.datetime | None = None) -> ChainResult:
        """The first answer for ``region`` and ``signal`` along the chain (now, or at ``at``)."""
        attempts: list[Attempt] = []
        for name in self.order:
            skip = self._pass_over(name, signal, forecast=False)
            if skip is not None:
                attempts.append(skip)
                continue
            source = self._sources[name]
            zone = source.zone_for(region)
            if zone is None:
                attempts.append(Attempt(source=name, outcome=NO_ZONE))
                continue
            found, attempt = self._ask_value(source, zone, signal=signal, at=at)
            attempts.append(attempt)
            if found is not None:
                return ChainResult(subject=region.key, signal=signal, value=found,
                                   attempts=tuple(attempts))
        return ChainResult(subject=region.key, signal=signal, value=None,
                           attempts=tuple(attempts))

    def value_in_zone(self, name: str, zone: str, *, signal: CarbonSignal) -> ChainResult:
        """Ask one source directly for one of its zones (``greenplace signals --zone``)."""
        skip = self._pass_over(name, signal, forecast=False)
        if skip is not None:
            return ChainResult(subject=zone, signal=signal, value=None, attempts=(skip,))
        found, attempt = self._ask_value(self._sources[name], zone, signal=signal, at=None)
        return ChainResult(subject=zone, signal=signal, value=found, attempts=(attempt,))

    def _ask_value(self, source: SignalSource, zone: str, *, signal: CarbonSignal,
                   at: dt.datetime | None) -> tuple[SignalValue | None, Attempt]:
        when = "latest" if at is None else iso(_floor(at, 5))
        key = f"v|{source.name}|{signal}|{zone}|{when}"
        endpoint = _endpoint(signal, forecast=False, past=at is not None)
        with self._key_lock(key):
            cached = self._cache.get(key)
            if cached is not None:
                return SignalValue.from_json(cached), Attempt(source=source.name, outcome=CACHED)
            excluded = self._plan_excludes(source.name, zone, endpoint)
            if excluded is not None:
                return None, Attempt(source=source.name, outcome=NOT_IN_PLAN,
                                     detail=f"skipped after an earlier 403: {excluded}")
            if self._is_down(source.name):
                return None, Attempt(source=source.name, outcome=DOWN,
                                     detail="skipped after an earlier failure")
            try:
                found = source.value(zone, signal=signal, at=at)
            except SignalError as exc:
                outcome = _outcome(exc)
                self._failed(source.name, outcome, exc, zone=zone, endpoint=endpoint)
                return None, Attempt(source=source.name, outcome=outcome, detail=str(exc))
            if not math.isfinite(found.value) or found.value < 0 or (
                    signal is CarbonSignal.CFE and found.value > 100):
                bad = SignalPayloadError(
                    f"{source.name}: value {found.value!r} for {zone} is out of range.")
                self._failed(source.name, MALFORMED, bad)
                return None, Attempt(source=source.name, outcome=MALFORMED, detail=str(bad))
            self._cache.set(key, found.to_json(), ttl_s=self._ttl_s)
            if at is None and self._observer is not None:
                self._observer.signal_observed(source.name, found.observed_at)
            return found, Attempt(source=source.name, outcome=OK)

    def forecast(self, region: Region, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> ForecastResult:
        """The first live forecast of ``signal`` for ``region`` over ``[start, end]``."""
        attempts: list[Attempt] = []
        span_start, span_end = _floor(start, 60), _floor(end, 60) + dt.timedelta(hours=1)
        for name in self.order:
            skip = self._pass_over(name, signal, forecast=True)
            if skip is not None:
                attempts.append(skip)
                continue
            source = self._sources[name]
            zone = source.zone_for(region)
            if zone is None:
                attempts.append(Attempt(source=name, outcome=NO_ZONE))
                continue
            key = f"f|{name}|{signal}|{zone}|{iso(span_start)}|{iso(span_end)}"
            endpoint = _endpoint(signal, forecast=True, past=False)
            with self._key_lock(key):
                cached = self._cache.get(key)
                if cached is not None:
                    attempts.append(Attempt(source=name, outcome=CACHED))
                    return ForecastResult(forecast=Forecast.from_json(cached),
                                          attempts=tuple(attempts))
                excluded = self._plan_excludes(name, zone, endpoint)
                if excluded is not None:
                    attempts.append(Attempt(source=name, outcome=NOT_IN_PLAN,
                                            detail=f"skipped after an earlier 403: {excluded}"))
                    continue
                if self._is_down(name):
                    attempts.append(Attempt(source=name, outcome=DOWN,
                                            detail="skipped after an earlier failure"))
                    continue
                try:
                    found = source.forecast(zone, signal=signal, start=span_start, end=span_end)
                except SignalError as exc:
                    outcome = _outcome(exc)
                    self._failed(name, outcome, exc, zone=zone, endpoint=endpoint)
                    attempts.append(Attempt(source=name, outcome=outcome, detail=str(exc)))
                    continue
                self._cache.set(key, found.to_json(), ttl_s=self._forecast_ttl_s)
                attempts.append(Attempt(source=name, outcome=OK))
                return ForecastResult(forecast=found, attempts=tuple(attempts))
        return ForecastResult(forecast=None, attempts=tuple(attempts))


class ChainForecasts:
    """Temporal shifting's forecast provider, backed by a signal chain (live forecasts only).

    Design choice: answers are also kept in this object for its lifetime (one placement
    batch), keyed by region, signal and hour-aligned span, so a batch of many waiting
    jobs decodes each region's forecast once instead of once per job. Make a new one
    per batch; the chain's TTL cache spans batches.
    """

    def __init__(self, chain: SignalChain) -> None:
        self._chain = chain
        self._memo: dict[tuple[str, CarbonSignal, dt.datetime, dt.datetime], Forecast | None] = {}
        self._lock = threading.Lock()

    def forecast(self, region: Region, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast | None:
        key = (region.key, signal, _floor(start, 60), _floor(end, 60))
        with self._lock:
            if key in self._memo:
                return self._memo[key]
        found = self._chain.forecast(region, signal=signal, start=start, end=end).forecast
        with self._lock:
            self._memo[key] = found
        return found


# Which RegionSignals columns a policy's signal type is scored from.
COLUMNS_FOR: dict[CarbonSignal, tuple[CarbonSignal, ...]] = {
    CarbonSignal.AVERAGE: (CarbonSignal.AVERAGE,),
    CarbonSignal.MARGINAL: (CarbonSignal.MARGINAL,),
    CarbonSignal.CFE: (CarbonSignal.CFE, CarbonSignal.AVERAGE),
    # No live source publishes a provider's CFE: it is the catalog's; the average is live.
    CarbonSignal.PROVIDER_CFE: (CarbonSignal.AVERAGE,),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveSignals:
    """RegionSignals built from a chain for one policy signal type, with how it went."""

    signal: CarbonSignal
    signals: RegionSignals
    results: tuple[dict[CarbonSignal, ChainResult], ...]  # per catalog region
    notes: tuple[str, ...] = field(default=())

    @property
    def live_regions(self) -> int:
        return sum(1 for r in self.results if any(c.live for c in r.values()))


def build_region_signals(
    catalog: Catalog, chain: SignalChain, *, signal: CarbonSignal, now: dt.datetime,
    regions: Iterable[str] | None = None, max_workers: int = 8,
) -> LiveSignals:
    """RegionSignals for every catalog region, scored columns taken from the chain.

    Only the columns that ``signal`` is scored from are asked for (``cfe`` needs the
    CFE share and the grid average; ``average`` and ``marginal`` one column each);
    the others keep the static catalog figures (the ``min_cfe_pct`` filter reads the
    CFE column whatever the signal). A value no source has stays NaN: the pipeline
    then treats it as unknown and never fills it from another type.

    Args:
        regions: only these region keys are asked (the rest keep static figures);
            default all.
    """
    base = RegionSignals.from_catalog(catalog)
    columns = {
        CarbonSignal.AVERAGE: base.grid_average_g_per_kwh.copy(),
        CarbonSignal.MARGINAL: base.grid_marginal_g_per_kwh.copy(),
        CarbonSignal.CFE: base.cfe_pct.copy(),
    }
    wanted = COLUMNS_FOR[signal]
    keys = set(regions) if regions is not None else None
    todo = [i for i, r in enumerate(catalog.regions) if keys is None or r.key in keys]

    def ask(i: int) -> dict[CarbonSignal, ChainResult]:
        return {t: chain.value(catalog.regions[i], signal=t) for t in wanted}

    results: list[dict[CarbonSignal, ChainResult]] = [{} for _ in catalog.regions]
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(todo)))) as pool:
            for i, answer in zip(todo, pool.map(ask, todo), strict=True):
                results[i] = answer
    sources = list(base.source)
    observed = list(base.observed_at)
    for i in todo:
        answer = results[i]
        for t, result in answer.items():
            columns[t][i] = result.value.value if result.value is not None else np.nan
        sources[i] = _provenance(answer, now)
        times = [r.value.observed_at for r in answer.values() if r.value is not None]
        if times:
            observed[i] = iso(min(times))
    signals = RegionSignals(
        grid_average_g_per_kwh=columns[CarbonSignal.AVERAGE],
        grid_marginal_g_per_kwh=columns[CarbonSignal.MARGINAL],
        cfe_pct=columns[CarbonSignal.CFE], provider_cfe_pct=base.provider_cfe_pct,
        source=tuple(sources), observed_at=tuple(observed))
    asked = [results[i] for i in todo]
    return LiveSignals(signal=signal, signals=signals, results=tuple(results),
                       notes=tuple(_notes(signal, asked, chain)))


def _provenance(answer: Mapping[CarbonSignal, ChainResult], now: dt.datetime) -> str:
    """One region's signal_source text: sources, types, ages, and live failures skipped."""
    labels = {(r.label(), r.age_text(now)) for r in answer.values()}
    if len(labels) == 1:
        label, age = labels.pop()
        text = f"{label} ({'+'.join(str(t) for t in answer)}, {age})"
    else:
        text = "; ".join(f"{t}={r.label()} ({r.age_text(now)})" for t, r in answer.items())
    failed = sorted({f"{a.source} {a.outcome}" for r in answer.values() for a in r.failures()
                     if a.source != static.NAME})
    if failed:
        text += f" [skipped: {', '.join(failed)}]"
    return text


def _notes(signal: CarbonSignal, asked: list[dict[CarbonSignal, ChainResult]],
           chain: SignalChain) -> list[str]:
    notes: list[str] = []
    if not asked:
        return notes
    live_by_source: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for answer in asked:
        for result in answer.values():
            if result.live:
                live_by_source[result.label()] += 1
            for a in result.attempts:
                if a.source != static.NAME and a.outcome not in (OK, CACHED, TYPE_NOT_OFFERED,
                                                                 OTHER_BASIS):
                    reasons[f"{a.source} {a.outcome}"] += 1
    live_regions = sum(1 for answer in asked if any(r.live for r in answer.values()))
    live_names = [n for n in chain.order if n != static.NAME]
    if live_regions == 0:
        why = []
        for name in live_names:
            first: dict[str, str] = {}
            for answer in asked:
                for r in answer.values():
                    for a in r.attempts:
                        if a.source == name and a.outcome not in first:
                            first[a.outcome] = a.detail
            parts = [o + (f" ({d[:140]})" if d and (o in FAILURES or o == NOT_CONFIGURED)
                          else "") for o, d in sorted(first.items())]
            why.append(f"{name}: {', '.join(parts) or 'not asked'}")
        notes.append(
            "live signals: no live source answered (" + "; ".join(why) + "); every region was "
            "placed on the static catalog figures.")
    else:
        by_source = ", ".join(f"{n} {c}" for n, c in live_by_source.most_common())
        fell = ", ".join(f"{k} x{c}" for k, c in reasons.most_common(6))
        notes.append(
            f"live signals ({signal}): {live_regions}/{len(asked)} regions scored with at least "
            f"one live value (answers: {by_source}); the others use the static catalog figures"
            + (f" (passed over: {fell})." if fell else "."))
    other_type = sorted({f"{a.source} {a.detail}" for answer in asked for r in answer.values()
                         for a in r.attempts if a.outcome == TYPE_NOT_OFFERED})
    if other_type:
        wanted = "+".join(str(t) for t in COLUMNS_FOR[signal])
        notes.append(
            f"signal type {signal} (scored from {wanted}): each figure was asked only of sources "
            f"that return its type ({'; '.join(other_type)}); where no live source had a "
            "figure, the static catalog figure of the same type was used, never another type.")
    notes.extend(chain.basis_notes(COLUMNS_FOR[signal]))
    return notes


class LivePlacer:
    """Places jobs on live signals and forecasts from a chain (static where none answer).

    Keeps one Placer per carbon-signal type, built from the chain's current values
    and rebuilt once it is ``refresh_s`` old, so a long-lived worker re-reads the
    grid as it changes while a batch of jobs shares one snapshot. Every decision
    carries the chain's notes (how many regions got live values, which sources were
    passed over and why, or that every live source was unavailable). Jobs that may
    wait get temporal shifting from the chain's forecasts.

    Design choice: it has Placer's ``place`` signature, so the service and the dry
    run call the same method whether signals are static or live.
    """

    def __init__(self, catalog: Catalog, chain: SignalChain, *, refresh_s: float,
                 routes: Mapping[str, str] | None = None,
                 region_gate: Callable[[], frozenset[str]] | None = None,
                 price_max_age_days: float | None = None) -> None:
        self.catalog = catalog
        self.price_max_age_days = price_max_age_days
        self.routes = routes
        self.region_gate = region_gate
        self.chain = chain
        self.refresh_s = refresh_s
        self._placers: dict[CarbonSignal, tuple[dt.datetime, Placer, tuple[str, ...]]] = {}
        self._calibration: dict[str, CalibratedPower] = {}

    def calibrate(self, calibration: Mapping[str, CalibratedPower]) -> None:
        """Like ``Placer.calibrate``, for every snapshot, current and to come."""
        self._calibration = dict(calibration)
        for _, placer, _ in self._placers.values():
            placer.calibrate(self._calibration)

    def _placer(self, signal: CarbonSignal, now: dt.datetime) -> tuple[Placer, tuple[str, ...]]:
        entry = self._placers.get(signal)
        if entry is None or (now - entry[0]).total_seconds() >= self.refresh_s:
            live = build_region_signals(self.catalog, self.chain, signal=signal, now=now)
            placer = Placer(self.catalog, signals=live.signals,
                            forecast=ChainForecasts(self.chain), routes=self.routes,
                            region_gate=self.region_gate,
                            price_max_age_days=self.price_max_age_days)
            placer.calibrate(self._calibration)
            entry = self._placers[signal] = (now, placer, tuple(live.notes))
        return entry[1], entry[2]

    def place(self, job: Job, *, now: dt.datetime, allow_defer: bool = True) -> PlacementDecision:
        """Like ``Placer.place``, on the live snapshot for the job's signal type."""
        placer, notes = self._placer(job.policy.carbon_signal, now)
        decision = placer.place(job, now=now, allow_defer=allow_defer)
        return dataclasses.replace(decision, extra_notes=(*notes, *decision.extra_notes))


def place_live(catalog: Catalog, jobs: Sequence[Job], *, now: dt.datetime,
               chain: SignalChain | None = None,
               routes: Mapping[str, str] | None = None,
               price_max_age_days: float | None = None) -> list[PlacementDecision]:
    """Place ``jobs`` on one live snapshot from ``chain`` (see ``LivePlacer``).

    Args:
        chain: default: the chain the environment configures, with an in-memory cache.
        price_max_age_days: as ``Placer``'s.
    """
    own = chain is None
    active = chain or SignalChain.from_settings(SignalSettings.from_env(), catalog,
                                                cache=MemoryCache())
    try:
        placer = LivePlacer(catalog, active, refresh_s=float("inf"), routes=routes,
                            price_max_age_days=price_max_age_days)
        return [placer.place(job, now=now) for job in jobs]
    finally:
        if own:
            active.close()


def live_notes(decisions: Sequence[PlacementDecision]) -> list[str]:
    """The signal and timing notes of a live dry run, each once, for people to read."""
    lines: dict[str, None] = {}
    for d in decisions:
        for note in d.extra_notes:
            if note.startswith(("live signals", "signal type", "emission basis")):
                lines[f"note: {note}"] = None
            elif note.startswith("temporal shifting"):
                lines[f"note ({d.job}): {note}"] = None
    return list(lines)
