"""The carbon signal seam: what a source answers, in which signal type, and how old it is.

A source answers two questions for one of its zones:

- ``value(zone, signal=..., at=None)``: the figure for the zone now (``at=None``)
  or at a past time ``at``;
- ``forecast(zone, signal=..., start=..., end=...)``: the figures over ``[start, end]``.

Every source declares, as data, which signal types it returns (``signal_types``),
which of them it can forecast (``forecast_types``) and the emission basis of each
intensity type (``emission_basis``: ``lifecycle`` or ``direct``), so the fallback
chain never asks a source for a type it does not have and never mixes types or bases.

Emission basis: a ``lifecycle`` intensity counts the whole life of each plant (build,
fuel supply, operation; Electricity Maps' default, and the catalog's annual grid
averages); a ``direct`` (operational) one counts only what the stacks emit (the GB
Carbon Intensity API, WattTime's MOER). The same grid differs by tens of percent
between the two, so figures of different bases are never compared in one decision.

Units: ``average`` and ``marginal`` are grid intensities in gCO2e/kWh; ``cfe`` is
a carbon-free-energy share in percent. Every value carries its source, zone,
signal type and the time it describes, so a placement can say how old it was.

The HTTP and wire-format helpers of the live sources live in ``signals.http``, so the
placement pipeline, which uses these types, loads no HTTP client.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

import numpy as np

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Region
from greenplace.scheduler.exceptions import (
    NoSignalDataError,
    SignalPayloadError,
    SignalUnavailableError,
)

UNITS = {
    CarbonSignal.AVERAGE: "gCO2e/kWh",
    CarbonSignal.MARGINAL: "gCO2e/kWh",
    CarbonSignal.CFE: "%",
}

# Design choice: live mode's forecast horizon. Temporal shifting asks the chain for a
# forecast up to the job's latest end, but Electricity Maps (the source of the catalog's
# basis, lifecycle grid averages) answers /carbon-intensity/forecast with the next 24
# hours when no horizon is given, and greenplace gives none. So live mode sees 24 h
# ahead at most; the backtest's default horizon is the same, so it promises no saving
# that live mode could not find.
LIVE_FORECAST_HORIZON_H = 24


class EmissionBasis(StrEnum):
    """What an intensity counts: the plants' whole life, or only their stacks."""

    LIFECYCLE = "lifecycle"
    DIRECT = "direct"  # operational: combustion only

    @property
    def label(self) -> str:
        return "lifecycle" if self is EmissionBasis.LIFECYCLE else "direct (operational)"


# The catalog's bases (its annual grid averages are Electricity Maps lifecycle figures via
# the GSF Cloud_Region_Metadata; its marginal figures are WattTime MOERs, operational).
CATALOG_BASIS: Mapping[CarbonSignal, EmissionBasis] = {
    CarbonSignal.AVERAGE: EmissionBasis.LIFECYCLE,
    CarbonSignal.MARGINAL: EmissionBasis.DIRECT,
}


class NotInPlanError(NoSignalDataError):
    """HTTP 403 for one zone or endpoint: the account's plan does not cover it.

    Concerns that (zone, endpoint) only: the source stays in use for the others.
    """

    def __init__(self, message: str, *, endpoint: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class RateLimitedError(SignalUnavailableError):
    """HTTP 429; ``retry_after_s`` is what the service's ``Retry-After`` asks (None: absent)."""

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ZoneMismatchError(SignalPayloadError):
    """The answer is for another zone than the one asked; it is never scored."""

    def __init__(self, message: str, *, asked: str, answered: str) -> None:
        super().__init__(message)
        self.asked, self.answered = asked, answered


# One pound per megawatt-hour in grams per kilowatt-hour (WattTime reports lbs/MWh).
G_PER_KWH_PER_LB_PER_MWH = 0.45359237


Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    """The current time, aware, in UTC (the default clock of every source)."""
    return dt.datetime.now(dt.UTC)


def utc(value: dt.datetime) -> dt.datetime:
    """``value`` as an aware UTC datetime (naive values are taken to be UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def iso(value: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix, to the second."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalValue:
    """One figure from one source for one zone, with its provenance."""

    source: str
    zone: str
    signal: CarbonSignal
    value: float  # gCO2e/kWh for average and marginal, percent for cfe
    observed_at: dt.datetime  # the time the figure describes (start of its interval)
    estimated: bool = False
    detail: str = ""  # e.g. "lifecycle", "forecast (no actual yet)", "catalog 2024 annual"

    @property
    def unit(self) -> str:
        return UNITS[self.signal]

    def age_s(self, now: dt.datetime) -> float:
        """Seconds between the time the figure describes and ``now`` (never negative)."""
        return max(0.0, (utc(now) - utc(self.observed_at)).total_seconds())

    def to_json(self) -> str:
        return json.dumps({
            "source": self.source, "zone": self.zone, "signal": str(self.signal),
            "value": self.value, "observed_at": iso(self.observed_at),
            "estimated": self.estimated, "detail": self.detail,
        })

    @classmethod
    def from_json(cls, text: str) -> SignalValue:
        raw = json.loads(text)
        return cls(source=raw["source"], zone=raw["zone"], signal=CarbonSignal(raw["signal"]),
                   value=float(raw["value"]), observed_at=parse_time(raw["observed_at"]),
                   estimated=bool(raw["estimated"]), detail=raw["detail"])


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalPoint:
    """One forecast point: ``value`` holds from ``at`` until the next point."""

    at: dt.datetime
    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Forecast:
    """A forecast (or any time series) of one signal type for one zone, oldest point first.

    Each point holds until the next one; the last holds for ``step_s`` seconds.
    """

    source: str
    zone: str
    signal: CarbonSignal
    issued_at: dt.datetime
    points: tuple[SignalPoint, ...]
    step_s: float
    notes: tuple[str, ...] = field(default=())
    # The points as arrays (epoch seconds, values), built once for vectorised windows.
    starts_epoch_s: np.ndarray = field(init=False, repr=False, compare=False)
    values: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts_epoch_s", np.array(
            [p.at.timestamp() for p in self.points], dtype=float))
        object.__setattr__(self, "values", np.array([p.value for p in self.points],
                                                    dtype=float))

    @property
    def start(self) -> dt.datetime:
        return self.points[0].at

    @property
    def end(self) -> dt.datetime:
        return self.points[-1].at + dt.timedelta(seconds=self.step_s)

    def to_json(self) -> str:
        return json.dumps({
            "source": self.source, "zone": self.zone, "signal": str(self.signal),
            "issued_at": iso(self.issued_at), "step_s": self.step_s,
            "points": [[iso(p.at), p.value] for p in self.points], "notes": list(self.notes),
        })

    @classmethod
    def from_json(cls, text: str) -> Forecast:
        raw = json.loads(text)
        return cls(source=raw["source"], zone=raw["zone"], signal=CarbonSignal(raw["signal"]),
                   issued_at=parse_time(raw["issued_at"]), step_s=float(raw["step_s"]),
                   points=tuple(SignalPoint(at=parse_time(t), value=float(v))
                                for t, v in raw["points"]),
                   notes=tuple(raw.get("notes", ())))


def make_forecast(
    *, source: str, zone: str, signal: CarbonSignal, issued_at: dt.datetime,
    points: list[tuple[dt.datetime, float]], start: dt.datetime, end: dt.datetime,
    default_step_s: float,
) -> Forecast:
    """Sort, de-duplicate and clip raw points to ``[start, end]`` into a Forecast.

    The point in force at ``start`` (the last one at or before it) is kept, so the
    forecast covers ``start`` itself. Raises NoSignalDataError when nothing is left.
    """
    by_time = {utc(t): float(v) for t, v in points}
    times = sorted(by_time)
    if len(times) >= 2:
        diffs = sorted((b - a).total_seconds() for a, b in zip(times, times[1:], strict=False))
        step_s = diffs[len(diffs) // 2]
    else:
        step_s = default_step_s
    start, end = utc(start), utc(end)
    until = [*times[1:], times[-1] + dt.timedelta(seconds=step_s)] if times else []
    kept = [SignalPoint(at=t, value=by_time[t]) for t, u in zip(times, until, strict=True)
            if u > start and t < end]
    if not kept:
        raise NoSignalDataError(
            f"{source} has no {signal} forecast for zone {zone} between {iso(start)} and "
            f"{iso(end)}.")
    return Forecast(source=source, zone=zone, signal=signal, issued_at=utc(issued_at),
                    points=tuple(kept), step_s=step_s)


@runtime_checkable
class SignalSource(Protocol):
    """A carbon signal source: one name, the signal types it returns and forecasts."""

    name: str
    signal_types: frozenset[CarbonSignal]
    forecast_types: frozenset[CarbonSignal]  # a subset of signal_types; may be empty
    @property
    def emission_basis(self) -> Mapping[CarbonSignal, EmissionBasis]:
        """The basis of each intensity type it returns (average, marginal); cfe has none."""
        ...

    def zone_for(self, region: Region) -> str | None:
        """This source's zone id for a catalog region, or None when it does not cover it."""
        ...

    def value(self, zone: str, *, signal: CarbonSignal,
              at: dt.datetime | None = None) -> SignalValue:
        """The figure for ``zone`` now (``at=None``) or at the past time ``at``.

        Raises:
            SignalError (a subclass): the source could not answer.
        """
        ...

    def forecast(self, zone: str, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast:
        """The figures for ``zone`` over ``[start, end]``.

        Raises:
            SignalError (a subclass): the source could not answer.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def require_type(source: SignalSource, signal: CarbonSignal, *, forecast: bool = False) -> None:
    """Raise NoSignalDataError when ``source`` does not return (or forecast) ``signal``."""
    offered = source.forecast_types if forecast else source.signal_types
    if signal not in offered:
        what = "forecast" if forecast else "value"
        raise NoSignalDataError(
            f"{source.name} offers no {signal} {what} (it has "
            f"{', '.join(sorted(map(str, offered))) or 'none'}); greenplace never substitutes "
            "another signal type.")


def parse_time(value: str) -> dt.datetime:
    """Parse an ISO 8601 timestamp (``Z`` or offset; minutes-only accepted) into UTC."""
    text = value.strip().replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise SignalPayloadError(f"timestamp {value!r} is not ISO 8601.") from exc
    return utc(parsed)
