"""The GB Carbon Intensity API (api.carbonintensity.org.uk; NESO, no key): GB regions only.

Endpoints used (``GET``, times as ``YYYY-MM-DDThh:mmZ``, half-hour periods):

- national: ``/intensity`` (now), ``/intensity/{from}/{to}`` (past),
  ``/intensity/{from}/fw48h`` (forecast)
  -> ``{"data": [{"from", "to", "intensity": {"forecast", "actual", "index"}}]}``;
- regional: ``/regional/regionid/{id}`` (now), ``/regional/intensity/{from}/{to}/regionid/{id}``
  and ``/regional/intensity/{from}/fw48h/regionid/{id}``
  -> ``{"data": [{"regionid", "shortname", "data": [{"from", "to", "intensity"}]}]}``
  (some answers carry ``data`` as one object instead of a one-item list; both are read).

Zones: ``national`` or ``regionid:N`` (13 = London, 7 = South Wales). Regional
figures are forecasts only; national ones carry an actual when it is known,
and the value's detail says which was used.

Emission basis: direct (operational) intensities, unlike Electricity Maps' and the
catalog's lifecycle ones; the chain skips this source for ``average`` unless
``GREENPLACE_SIGNAL_BASIS=direct``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import pydantic

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Region
from greenplace.scheduler.exceptions import NoSignalDataError
from greenplace.scheduler.signals.base import (
    Clock,
    EmissionBasis,
    Forecast,
    SignalValue,
    make_forecast,
    require_type,
    utc,
    utc_now,
)
from greenplace.scheduler.signals.http import Payload, get_json, new_client, validate

NAME = "uk-carbon-intensity"
DEFAULT_BASE_URL = "https://api.carbonintensity.org.uk"
NATIONAL = "national"
# Catalog locations -> GB DNO region ids of the Carbon Intensity API.
_REGION_IDS = {"london": 13, "cardiff": 7, "wales": 7, "manchester": 3, "edinburgh": 2}
HALF_HOUR = dt.timedelta(minutes=30)


class _Intensity(Payload):
    forecast: float | None = None
    actual: float | None = None
    index: str | None = None


class _Period(Payload):
    from_: dt.datetime = pydantic.Field(alias="from")
    to: dt.datetime
    intensity: _Intensity


class _National(Payload):
    data: list[_Period]


class _Region(Payload):
    regionid: int
    shortname: str | None = None
    data: list[_Period]


class _Regional(Payload):
    data: list[_Region] | _Region


def _stamp(value: dt.datetime) -> str:
    return utc(value).strftime("%Y-%m-%dT%H:%MZ")


class UkCarbonIntensitySource:
    """GB grid-average intensity, national or per DNO region, with a 48 h forecast."""

    name = NAME
    signal_types = frozenset({CarbonSignal.AVERAGE})
    forecast_types = frozenset({CarbonSignal.AVERAGE})
    # NESO's methodology counts generation emissions only: direct (operational), not
    # lifecycle, so the chain uses it for `average` only when that is the configured basis.
    emission_basis: Mapping[CarbonSignal, EmissionBasis] = {
        CarbonSignal.AVERAGE: EmissionBasis.DIRECT}

    def __init__(self, *, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 5.0,
                 clock: Clock = utc_now) -> None:
        self._client = new_client(timeout_s=timeout_s, base_url=base_url.rstrip("/") + "/")
        self._clock = clock

    def __repr__(self) -> str:
        return f"UkCarbonIntensitySource(base_url={str(self._client.base_url)!r})"

    def zone_for(self, region: Region) -> str | None:
        if region.country != "GB":
            return None
        location = region.location.lower()
        for word, region_id in _REGION_IDS.items():
            if word in location:
                return f"regionid:{region_id}"
        return NATIONAL

    @staticmethod
    def _region_id(zone: str) -> int | None:
        if zone == NATIONAL:
            return None
        prefix, _, number = zone.partition(":")
        if prefix != "regionid" or not number.isdigit() or not 1 <= int(number) <= 18:
            raise NoSignalDataError(
                f"{NAME}: zone {zone!r} is neither 'national' nor 'regionid:N' (N = 1..18).")
        return int(number)

    def _periods(self, zone: str, path_national: str, path_regional: str,
                 operation: str) -> list[_Period]:
        region_id = self._region_id(zone)
        if region_id is None:
            raw = get_json(self._client, path_national, source=NAME, operation=operation,
                           clock=self._clock)
            return validate(_National, raw, source=NAME, operation=operation).data
        raw = get_json(self._client, path_regional.format(id=region_id), source=NAME,
                       operation=operation, clock=self._clock)
        body = validate(_Regional, raw, source=NAME, operation=operation)
        regions = body.data if isinstance(body.data, list) else [body.data]
        found = [r for r in regions if r.regionid == region_id] or regions[:1]
        return found[0].data if found else []

    def value(self, zone: str, *, signal: CarbonSignal,
              at: dt.datetime | None = None) -> SignalValue:
        require_type(self, signal)
        if at is None:
            periods = self._periods(zone, "intensity", "regional/regionid/{id}", "intensity")
            when = self._clock()
        else:
            when = utc(at)
            span = f"{_stamp(when - HALF_HOUR)}/{_stamp(when + HALF_HOUR)}"
            periods = self._periods(zone, f"intensity/{span}",
                                    f"regional/intensity/{span}/regionid/{{id}}", "intensity")
        usable = [p for p in periods if _figure(p) is not None]
        covering = [p for p in usable if utc(p.from_) <= when < utc(p.to)]
        chosen = covering[-1] if covering else (usable[-1] if usable and at is None else None)
        if chosen is None:
            raise NoSignalDataError(f"{NAME}: no intensity for {zone} at {_stamp(when)}.")
        value, kind = _figure(chosen)  # type: ignore[misc]
        return SignalValue(source=NAME, zone=zone, signal=CarbonSignal.AVERAGE, value=value,
                           observed_at=utc(chosen.from_), estimated=kind == "forecast",
                           detail=f"{kind} ({chosen.intensity.index or 'no index'})")

    def forecast(self, zone: str, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast:
        require_type(self, signal, forecast=True)
        begin = _stamp(start)
        periods = self._periods(zone, f"intensity/{begin}/fw48h",
                                f"regional/intensity/{begin}/fw48h/regionid/{{id}}", "forecast")
        points = [(p.from_, p.intensity.forecast) for p in periods
                  if p.intensity.forecast is not None]
        if not points:
            raise NoSignalDataError(f"{NAME}: the forecast for {zone} is empty.")
        return make_forecast(source=NAME, zone=zone, signal=CarbonSignal.AVERAGE,
                             issued_at=self._clock(), points=points,  # type: ignore[arg-type]
                             start=start, end=end, default_step_s=1800.0)

    def close(self) -> None:
        self._client.close()


def _figure(period: _Period) -> tuple[float, str] | None:
    """The actual intensity when published, else the forecast, with which one it is."""
    if period.intensity.actual is not None:
        return period.intensity.actual, "actual"
    if period.intensity.forecast is not None:
        return period.intensity.forecast, "forecast"
    return None
