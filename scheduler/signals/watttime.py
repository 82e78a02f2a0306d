"""WattTime API v3: marginal operating emissions rate (MOER), forecast and history.

Flow (all ``GET``; regions such as ``CAISO_NORTH`` from the catalog's ``watttime_region``):

- ``/login`` with HTTP basic auth (``WATTTIME_USERNAME`` / ``WATTTIME_PASSWORD``)
  -> ``{"token": ...}``, a bearer token valid for 30 minutes;
- ``/v3/forecast?region=R&signal_type=co2_moer[&horizon_hours=H]``
  -> ``{"data": [{"point_time", "value"}], "meta": {"units", "generated_at", ...}}``;
- ``/v3/historical?region=R&signal_type=co2_moer&start=T1&end=T2`` -> same shape;
- ``/v3/signal-index?region=R&signal_type=co2_moer`` -> the current percentile (0-100).

The token is renewed before it expires and, once, after a 401 (an expired or
revoked token). A 403 means the account's plan does not cover the region: that
region is skipped, the source stays in use for others. Values in lbs/MWh are
converted to gCO2e/kWh. The password and token never appear in a message or log.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Region
from greenplace.scheduler.exceptions import (
    NoSignalDataError,
    SignalAuthError,
    SignalPayloadError,
)
from greenplace.scheduler.signals.base import (
    G_PER_KWH_PER_LB_PER_MWH,
    Clock,
    EmissionBasis,
    Forecast,
    SignalValue,
    iso,
    make_forecast,
    require_type,
    utc,
    utc_now,
)
from greenplace.scheduler.signals.http import Payload, get_json, new_client, validate

NAME = "watttime"
DEFAULT_BASE_URL = "https://api.watttime.org"
TOKEN_LIFETIME_S = 30 * 60
# Renew a little early so a token never expires between the check and the call.
TOKEN_RENEW_AFTER_S = TOKEN_LIFETIME_S - 120
SIGNAL_TYPE = "co2_moer"
_TO_G_PER_KWH = {
    "lbs_co2_per_mwh": G_PER_KWH_PER_LB_PER_MWH,
    "kg_co2_per_mwh": 1.0,
    "g_co2_per_kwh": 1.0,
}


class _Login(Payload):
    token: str


class _Point(Payload):
    point_time: dt.datetime
    value: float


class _Meta(Payload):
    region: str | None = None
    signal_type: str | None = None
    units: str
    generated_at: dt.datetime | None = None
    data_point_period_seconds: float | None = None


class _Series(Payload):
    data: list[_Point]
    meta: _Meta


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalIndex:
    """WattTime's signal index: where the current MOER sits in recent history (0-100)."""

    zone: str
    percentile: float
    observed_at: dt.datetime


class WattTimeSource:
    """WattTime v3: ``marginal`` values and forecasts, with login and token renewal."""

    name = NAME
    signal_types = frozenset({CarbonSignal.MARGINAL})
    forecast_types = frozenset({CarbonSignal.MARGINAL})
    emission_basis: Mapping[CarbonSignal, EmissionBasis] = {
        CarbonSignal.MARGINAL: EmissionBasis.DIRECT}  # MOER: combustion only

    def __init__(
        self, *, username: str, password: str, base_url: str = DEFAULT_BASE_URL,
        timeout_s: float = 5.0, clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._auth = httpx.BasicAuth(username, password)
        self._secrets = (password,)
        self._client = new_client(timeout_s=timeout_s, base_url=base_url.rstrip("/") + "/")
        self._clock = clock
        self._monotonic = monotonic
        self._token: str | None = None
        self._token_at = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show credentials
        return f"WattTimeSource(base_url={str(self._client.base_url)!r})"

    def zone_for(self, region: Region) -> str | None:
        return region.watttime_region or None

    # --- authentication -------------------------------------------------------------

    def _login(self) -> str:
        body = get_json(self._client, "login", auth=self._auth, source=NAME, operation="login",
                        secrets=self._secrets)
        token = validate(_Login, body, source=NAME, operation="login").token
        if not token:
            raise SignalAuthError(f"{NAME} login: the answer carries an empty token.")
        self._token, self._token_at = token, self._monotonic()
        return token

    def _valid_token(self, *, renew: bool = False) -> str:
        with self._lock:
            fresh = (self._token is not None
                     and self._monotonic() - self._token_at < TOKEN_RENEW_AFTER_S)
            if renew or not fresh:
                return self._login()
            assert self._token is not None
            return self._token

    def _get(self, path: str, params: dict[str, str], operation: str) -> object:
        """GET with the bearer token; on a 401 log in again once and retry."""
        token = self._valid_token()
        for attempt in (1, 2):
            try:
                return get_json(
                    self._client, path, params=params, source=NAME, operation=operation,
                    headers={"authorization": f"Bearer {token}"},
                    secrets=(*self._secrets, token), forbidden_is_not_in_plan=True,
                    clock=self._clock)
            except SignalAuthError:
                if attempt == 2:
                    raise
                token = self._valid_token(renew=True)
        raise AssertionError("unreachable")

    # --- endpoints ------------------------------------------------------------------

    def signal_index(self, zone: str) -> SignalIndex:
        """The current MOER percentile of ``zone`` (available on every WattTime plan)."""
        body = validate(_Series, self._get(
            "v3/signal-index", {"region": zone, "signal_type": SIGNAL_TYPE}, "signal-index"),
            source=NAME, operation="signal-index")
        if not body.data:
            raise NoSignalDataError(f"{NAME} signal-index: no data for {zone}.")
        point = body.data[-1]
        return SignalIndex(zone=zone, percentile=point.value, observed_at=utc(point.point_time))

    def _series(self, path: str, params: dict[str, str], operation: str) -> tuple[
            list[tuple[dt.datetime, float]], _Meta]:
        body = validate(_Series, self._get(path, params, operation), source=NAME,
                        operation=operation)
        factor = _TO_G_PER_KWH.get(body.meta.units)
        if factor is None:
            raise SignalPayloadError(
                f"{NAME} {operation}: unexpected units {body.meta.units!r} (expected one of "
                f"{sorted(_TO_G_PER_KWH)}).")
        return [(utc(p.point_time), p.value * factor) for p in body.data], body.meta

    def value(self, zone: str, *, signal: CarbonSignal,
              at: dt.datetime | None = None) -> SignalValue:
        """MOER now (the first point of the current forecast) or at a past time (historical).

        Design choice: v3 has no "latest MOER" endpoint; the current forecast's first
        point is WattTime's real-time estimate for the present five minutes.
        """
        require_type(self, signal)
        if at is None:
            points, meta = self._series(
                "v3/forecast", {"region": zone, "signal_type": SIGNAL_TYPE, "horizon_hours": "1"},
                "forecast")
            now = self._clock()
            current = [p for p in points if p[0] <= now] or points[:1]
            if not current:
                raise NoSignalDataError(f"{NAME} forecast: no data for {zone}.")
            when, value = current[-1]
            detail = "real-time estimate (forecast point 0)"
        else:
            at = utc(at)
            points, meta = self._series("v3/historical", {
                "region": zone, "signal_type": SIGNAL_TYPE,
                "start": iso(at - dt.timedelta(minutes=30)), "end": iso(at)}, "historical")
            before = [p for p in points if p[0] <= at]
            if not before:
                raise NoSignalDataError(f"{NAME} historical: no data for {zone} at {iso(at)}.")
            when, value = before[-1]
            detail = "historical"
        return SignalValue(source=NAME, zone=zone, signal=CarbonSignal.MARGINAL, value=value,
                           observed_at=when, estimated=at is None,
                           detail=f"{detail}, {meta.units} converted")

    def forecast(self, zone: str, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast:
        require_type(self, signal, forecast=True)
        hours = max(1, min(72, int((utc(end) - self._clock()).total_seconds() // 3600) + 1))
        points, meta = self._series(
            "v3/forecast", {"region": zone, "signal_type": SIGNAL_TYPE,
                            "horizon_hours": str(hours)}, "forecast")
        return make_forecast(
            source=NAME, zone=zone, signal=CarbonSignal.MARGINAL,
            issued_at=meta.generated_at or self._clock(), points=points, start=start, end=end,
            default_step_s=meta.data_point_period_seconds or 300.0)

    def history(self, zone: str, *, start: dt.datetime, end: dt.datetime) -> Forecast:
        """Historical MOER over ``[start, end]`` as a time series."""
        points, meta = self._series("v3/historical", {
            "region": zone, "signal_type": SIGNAL_TYPE, "start": iso(start), "end": iso(end)},
            "historical")
        return make_forecast(
            source=NAME, zone=zone, signal=CarbonSignal.MARGINAL, issued_at=self._clock(),
            points=points, start=start, end=end,
            default_step_s=meta.data_point_period_seconds or 300.0)

    def close(self) -> None:
        self._client.close()
