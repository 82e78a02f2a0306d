"""Electricity Maps API v3: grid-average carbon intensity and the grid's carbon-free share.

Endpoints used (all ``GET``, ``auth-token`` header, zone ids such as ``DE`` or
``US-MIDA-PJM`` from the catalog's ``em_zone`` column):

- ``/carbon-intensity/latest?zone=Z``   -> ``{zone, carbonIntensity, datetime, ...}``
- ``/carbon-intensity/history?zone=Z``  -> ``{zone, history: [{carbonIntensity, datetime}]}`` (24 h)
- ``/carbon-intensity/past?zone=Z&datetime=T`` -> one point (older than the history)
- ``/carbon-intensity/forecast?zone=Z`` -> ``{zone, forecast: [{carbonIntensity, datetime}]}``
- ``/power-breakdown/latest|history?zone=Z`` -> ``{..., fossilFreePercentage, ...}``: the CFE %

Every zone request carries ``shouldUseFallbackCallerLookup=false``: without it the API
answers a zone it does not know with the zone of the caller's IP address, so a
typo or a retired zone id would silently score another grid. Carbon-intensity
requests name ``emissionFactorType`` (the chain's basis, ``lifecycle`` by default,
like the catalog) instead of relying on the API's default. An answer whose ``zone``
is not the zone asked is rejected (ZoneMismatchError), never scored.

A 403 means the key's plan does not cover that zone or endpoint (a free key covers
one zone and no forecast): NotInPlanError, so the chain skips that zone or endpoint
only. Without a horizon the forecast covers the next 24 hours
(``base.LIVE_FORECAST_HORIZON_H``).

The API key comes from ``ELECTRICITYMAPS_API_KEY`` (see ``greenplace.scheduler.signals.config``);
it travels only in the ``auth-token`` header and never appears in a message or log.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import httpx

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Region
from greenplace.scheduler.exceptions import NoSignalDataError, SignalPayloadError
from greenplace.scheduler.signals.base import (
    Clock,
    EmissionBasis,
    Forecast,
    SignalValue,
    ZoneMismatchError,
    iso,
    make_forecast,
    require_type,
    utc,
    utc_now,
)
from greenplace.scheduler.signals.http import Payload, get_json, new_client, validate

NAME = "electricitymaps"
DEFAULT_BASE_URL = "https://api.electricitymaps.com/v3"
HISTORY_SPAN = dt.timedelta(hours=24)


class _Intensity(Payload):
    zone: str | None = None
    carbonIntensity: float | None
    datetime: dt.datetime
    isEstimated: bool | None = None
    emissionFactorType: str | None = None


class _History(Payload):
    zone: str | None = None
    history: list[_Intensity]


class _ForecastPoint(Payload):
    carbonIntensity: float | None
    datetime: dt.datetime


class _ForecastBody(Payload):
    zone: str | None = None
    forecast: list[_ForecastPoint]
    updatedAt: dt.datetime | None = None


class _Breakdown(Payload):
    zone: str | None = None
    datetime: dt.datetime
    fossilFreePercentage: float | None
    isEstimated: bool | None = None


class _BreakdownHistory(Payload):
    zone: str | None = None
    history: list[_Breakdown]


class ElectricityMapsSource:
    """Electricity Maps: ``average`` (carbon-intensity) and ``cfe`` (power-breakdown).

    Design choice: the grid's ``fossilFreePercentage`` is the CFE figure. It is the
    grid's carbon-free share, not a provider's contracted CFE; the decision's
    ``signal_source`` names the source so the two are never confused silently.
    """

    name = NAME
    signal_types = frozenset({CarbonSignal.AVERAGE, CarbonSignal.CFE})
    forecast_types = frozenset({CarbonSignal.AVERAGE})

    def __init__(
        self, *, api_key: str, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 5.0,
        emission_factor: EmissionBasis = EmissionBasis.LIFECYCLE,
        clock: Clock = utc_now,
    ) -> None:
        self._key = api_key
        self._client: httpx.Client = new_client(timeout_s=timeout_s,
                                                base_url=base_url.rstrip("/") + "/")
        self._emission_factor = EmissionBasis(emission_factor)
        # The basis it asks for, declared beside its signal types (cfe has none).
        self.emission_basis: Mapping[CarbonSignal, EmissionBasis] = {
            CarbonSignal.AVERAGE: self._emission_factor}
        self._clock = clock

    def __repr__(self) -> str:  # never show the key
        return f"ElectricityMapsSource(base_url={str(self._client.base_url)!r})"

    def zone_for(self, region: Region) -> str | None:
        return region.em_zone or None

    def _get(self, path: str, params: dict[str, str], operation: str) -> object:
        return get_json(self._client, path, params=params, headers={"auth-token": self._key},
                        source=NAME, operation=operation, secrets=(self._key,),
                        forbidden_is_not_in_plan=True, clock=self._clock)

    def _now(self) -> dt.datetime:
        return self._clock()

    def latest(self, zone: str) -> SignalValue:
        """The latest grid-average intensity of ``zone``."""
        body = validate(_Intensity, self._get(
            "carbon-intensity/latest", self._params(zone), "carbon-intensity/latest"),
            source=NAME, operation="carbon-intensity/latest")
        _same_zone(zone, body.zone, "carbon-intensity/latest")
        return self._intensity_value(zone, body)

    def history(self, zone: str) -> list[SignalValue]:
        """The last 24 hours of grid-average intensity of ``zone``, oldest first."""
        body = validate(_History, self._get(
            "carbon-intensity/history", self._params(zone), "carbon-intensity/history"),
            source=NAME, operation="carbon-intensity/history")
        _same_zone(zone, body.zone, "carbon-intensity/history")
        return sorted((self._intensity_value(zone, p) for p in body.history
                       if p.carbonIntensity is not None), key=lambda v: v.observed_at)

    def power_breakdown(self, zone: str, *, at: dt.datetime | None = None) -> SignalValue:
        """The grid's carbon-free share (``fossilFreePercentage``) now or at a past hour."""
        if at is None:
            body = validate(_Breakdown, self._get(
                "power-breakdown/latest", _zone_params(zone), "power-breakdown/latest"),
                source=NAME, operation="power-breakdown/latest")
            _same_zone(zone, body.zone, "power-breakdown/latest")
            return self._cfe_value(zone, body)
        hist = validate(_BreakdownHistory, self._get(
            "power-breakdown/history", _zone_params(zone), "power-breakdown/history"),
            source=NAME, operation="power-breakdown/history")
        _same_zone(zone, hist.zone, "power-breakdown/history")
        point = _covering([p for p in hist.history if p.fossilFreePercentage is not None], at)
        if point is None:
            raise NoSignalDataError(f"{NAME}: no power breakdown for {zone} at {iso(at)}.")
        return self._cfe_value(zone, point)

    def value(self, zone: str, *, signal: CarbonSignal,
              at: dt.datetime | None = None) -> SignalValue:
        require_type(self, signal)
        if signal is CarbonSignal.CFE:
            return self.power_breakdown(zone, at=at)
        if at is None:
            return self.latest(zone)
        at = utc(at)
        if self._now() - at <= HISTORY_SPAN:
            found = _covering_value(self.history(zone), at)
            if found is not None:
                return found
        body = validate(_Intensity, self._get(
            "carbon-intensity/past", {**self._params(zone), "datetime": iso(at)},
            "carbon-intensity/past"), source=NAME, operation="carbon-intensity/past")
        _same_zone(zone, body.zone, "carbon-intensity/past")
        return self._intensity_value(zone, body)

    def forecast(self, zone: str, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast:
        require_type(self, signal, forecast=True)
        body = validate(_ForecastBody, self._get(
            "carbon-intensity/forecast", self._params(zone), "carbon-intensity/forecast"),
            source=NAME, operation="carbon-intensity/forecast")
        _same_zone(zone, body.zone, "carbon-intensity/forecast")
        points = [(p.datetime, p.carbonIntensity) for p in body.forecast
                  if p.carbonIntensity is not None]
        if not points:
            raise NoSignalDataError(f"{NAME}: the forecast for {zone} is empty.")
        return make_forecast(
            source=NAME, zone=zone, signal=signal, issued_at=body.updatedAt or self._now(),
            points=points, start=start, end=end, default_step_s=3600.0)  # type: ignore[arg-type]

    def close(self) -> None:
        self._client.close()

    def _params(self, zone: str) -> dict[str, str]:
        return {**_zone_params(zone), "emissionFactorType": str(self._emission_factor)}

    def _intensity_value(self, zone: str, body: _Intensity) -> SignalValue:
        if body.carbonIntensity is None:
            raise NoSignalDataError(f"{NAME}: no carbon intensity for {zone} (null).")
        if body.emissionFactorType and body.emissionFactorType != self._emission_factor:
            raise SignalPayloadError(
                f"{NAME}: asked for {self._emission_factor} intensities of {zone} but the answer "
                f"is {body.emissionFactorType}; greenplace never mixes emission bases. To fix: "
                "report it to Electricity Maps; meanwhile the next source answers.")
        return SignalValue(
            source=NAME, zone=zone, signal=CarbonSignal.AVERAGE, value=body.carbonIntensity,
            observed_at=utc(body.datetime), estimated=bool(body.isEstimated),
            detail=body.emissionFactorType or str(self._emission_factor))

    def _cfe_value(self, zone: str, body: _Breakdown) -> SignalValue:
        if body.fossilFreePercentage is None:
            raise NoSignalDataError(f"{NAME}: no carbon-free share for {zone} (null).")
        return SignalValue(
            source=NAME, zone=zone, signal=CarbonSignal.CFE, value=body.fossilFreePercentage,
            observed_at=utc(body.datetime), estimated=bool(body.isEstimated),
            detail="grid fossil-free share")


def _zone_params(zone: str) -> dict[str, str]:
    """The zone, and no fallback to the caller's IP location when the API does not know it."""
    return {"zone": zone, "shouldUseFallbackCallerLookup": "false"}


def _same_zone(asked: str, answered: str | None, operation: str) -> None:
    """Raise ZoneMismatchError when the answer names another zone than the one asked."""
    if answered is not None and answered != asked:
        raise ZoneMismatchError(
            f"{NAME} {operation}: asked for zone {asked} but the answer is for zone "
            f"{answered}; greenplace does not score it as {asked}. To fix: check the "
            f"catalog's em_zone for the region (the zone ids are listed by GET /v3/zones), or "
            f"ask Electricity Maps why {asked} resolves to {answered}.",
            asked=asked, answered=answered)


def _covering(points: list[_Breakdown], at: dt.datetime) -> _Breakdown | None:
    """The last point at or before ``at`` within one hour (hourly data)."""
    at = utc(at)
    before = [p for p in points if utc(p.datetime) <= at < utc(p.datetime) + dt.timedelta(hours=1)]
    return max(before, key=lambda p: p.datetime, default=None)


def _covering_value(values: list[SignalValue], at: dt.datetime) -> SignalValue | None:
    hits = [v for v in values if v.observed_at <= at < v.observed_at + dt.timedelta(hours=1)]
    return hits[-1] if hits else None
