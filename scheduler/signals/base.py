"""The carbon signal seam: what a source answers, in which signal type, and how old it is.

A source answers two questions for one of its zones:

- ``value(zone, signal=..., at=None)``: the figure for the zone now (``at=None``)
  or at a past time ``at``;
- ``forecast(zone, signal=..., start=..., end=...)``: the figures over ``[start, end]``.

Every source declares, as data, which signal types it returns (``signal_types``)
and which of them it can forecast (``forecast_types``), so the fallback chain
never asks a source for a type it does not have and never mixes types.

Units: ``average`` and ``marginal`` are grid intensities in gCO2e/kWh; ``cfe`` is
a carbon-free-energy share in percent. Every value carries its source, zone,
signal type and the time it describes, so a placement can say how old it was.

This module also owns the one HTTP helper every live source uses: explicit
timeouts, and each failure mapped onto the ``SignalError`` tree (never with a
key or password in the message).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx
import numpy as np
import pydantic

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Region
from greenplace.scheduler.exceptions import (
    NoSignalDataError,
    SignalAuthError,
    SignalPayloadError,
    SignalTimeoutError,
    SignalUnavailableError,
)

UNITS = {
    CarbonSignal.AVERAGE: "gCO2e/kWh",
    CarbonSignal.MARGINAL: "gCO2e/kWh",
    CarbonSignal.CFE: "%",
}

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


def validate(model: type[pydantic.BaseModel], data: Any, *, source: str,
             operation: str) -> Any:
    """Validate decoded JSON against ``model``; SignalPayloadError when it does not fit."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SignalPayloadError(
            f"{source} {operation}: malformed answer ({exc.error_count()} problem(s), first at "
            f"{where}: {first['msg']}).") from exc


class Payload(pydantic.BaseModel):
    """Base of every wire model: unknown fields (APIs add them) are ignored."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


def new_client(*, timeout_s: float, base_url: str = "") -> httpx.Client:
    """An HTTP client with an explicit timeout on connect, read, write and pool."""
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(connect=timeout_s, read=timeout_s, write=timeout_s,
                              pool=timeout_s),
        follow_redirects=False,
        headers={"user-agent": "greenplace (carbon-aware scheduler)"},
    )


def get_json(
    client: httpx.Client, path: str, *, source: str, operation: str,
    params: Mapping[str, str | list[str]] | None = None,
    headers: Mapping[str, str] | None = None, auth: httpx.Auth | None = None,
    secrets: tuple[str, ...] = (), forbidden_is_no_data: bool = False,
) -> Any:
    """GET ``path`` and decode JSON, mapping every failure onto the SignalError tree.

    Messages name the source, the operation and the HTTP status, never a header,
    key or password: ``secrets`` are also cut out of any text the service echoes.

    Raises:
        SignalTimeoutError: no answer within the client's timeout.
        SignalUnavailableError: connection refused, 429 or 5xx.
        SignalAuthError: 401 or 403 (403 is NoSignalDataError when ``forbidden_is_no_data``:
            an API that answers 403 for a zone outside the account's plan).
        NoSignalDataError: 404, 204 or another 4xx (the zone or time is not covered).
        SignalPayloadError: the body is not JSON.
    """
    try:
        response = client.get(path, params=params, headers=headers, auth=auth)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:
        raise SignalTimeoutError(
            f"{source} {operation}: no answer within {_timeout_s(client)} s "
            f"({type(exc).__name__}).") from exc
    except httpx.HTTPError as exc:
        raise SignalUnavailableError(
            f"{source} {operation}: cannot reach the service ({type(exc).__name__}).") from exc
    status = response.status_code
    if status == 403 and forbidden_is_no_data:
        raise NoSignalDataError(
            f"{source} {operation}: HTTP 403, the account has no access to this zone or signal. "
            f"{_error_hint(response, secrets)}")
    if status in (401, 403):
        raise SignalAuthError(
            f"{source} {operation}: HTTP {status}, the credentials were refused. "
            f"{_error_hint(response, secrets)}")
    if status == 429 or status >= 500:
        raise SignalUnavailableError(
            f"{source} {operation}: HTTP {status}. {_error_hint(response, secrets)}")
    if status == 204 or 400 <= status < 500:
        raise NoSignalDataError(
            f"{source} {operation}: HTTP {status}. {_error_hint(response, secrets)}")
    try:
        return response.json()
    except ValueError as exc:
        raise SignalPayloadError(f"{source} {operation}: the answer is not JSON.") from exc


def _timeout_s(client: httpx.Client) -> float | None:
    return client.timeout.read


def _error_hint(response: httpx.Response, secrets: tuple[str, ...]) -> str:
    """A short, secret-free excerpt of an error body (the API's own message)."""
    if response.status_code == 204:
        return "No content."
    try:
        body = response.json()
    except ValueError:
        return ""
    message = None
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "title"):
            if isinstance(body.get(key), str):
                message = body[key]
                break
    if not message:
        return ""
    return f"The service says: {redact(message[:200], secrets)!r}."


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
