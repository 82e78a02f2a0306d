"""The Green Software Foundation Carbon Aware SDK Web API (a service you run yourself).

Endpoints used (``GET``, no auth by default; base URL from config):

- ``/emissions/bylocations?location=L&time=T1&toTime=T2``
  -> ``[{"location", "time", "rating", "duration"}]`` (rating in gCO2e/kWh; 204 = no data);
- ``/emissions/forecasts/current?location=L``
  -> ``[{"generatedAt", "location", "forecastData": [{"timestamp", "duration", "value"}], ...}]``.

Locations are the SDK's own names. Out of the box the SDK knows Azure region
names (``eastus``, ``northeurope``), so Azure regions map to their name; other
clouds map only through an explicit ``locations`` table.

The signal type depends on the data source the SDK is configured with (WattTime
gives ``marginal``, Electricity Maps ``average``); it is set in config and every
value is labelled with it, never guessed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

import pydantic

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Region
from greenplace.scheduler.exceptions import NoSignalDataError
from greenplace.scheduler.signals.base import (
    Clock,
    Forecast,
    SignalValue,
    iso,
    make_forecast,
    require_type,
    utc,
    utc_now,
)
from greenplace.scheduler.signals.http import Payload, get_json, new_client, validate

NAME = "carbon-aware-sdk"


def _minutes(value: object) -> object:
    """``duration`` is whole minutes (DTOs) or a .NET TimeSpan string ``hh:mm:ss``."""
    if isinstance(value, str):
        match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?", value.strip())
        if match is None:
            raise ValueError(f"duration {value!r} is neither minutes nor hh:mm:ss")
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        return days * 1440 + hours * 60 + minutes + seconds / 60.0
    return value


class _Emissions(Payload):
    location: str
    time: dt.datetime
    rating: float
    duration: float = 0.0

    @pydantic.field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return _minutes(value)


class _DataPoint(Payload):
    location: str | None = None
    timestamp: dt.datetime
    duration: float = 0.0
    value: float

    @pydantic.field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return _minutes(value)


class _ForecastDto(Payload):
    generatedAt: dt.datetime | None = None
    location: str
    forecastData: list[_DataPoint] | None = None


class _ForecastList(pydantic.RootModel[list[_ForecastDto]]):
    pass


class _EmissionsList(pydantic.RootModel[list[_Emissions]]):
    pass


class CarbonAwareSdkSource:
    """A Carbon Aware SDK Web API deployment; one configured signal type (average or marginal)."""

    name = NAME

    def __init__(
        self, *, base_url: str, signal: CarbonSignal = CarbonSignal.MARGINAL,
        timeout_s: float = 5.0, locations: Mapping[str, str] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        if signal is CarbonSignal.CFE:
            raise ValueError("the Carbon Aware SDK reports intensities, not a CFE share")
        self.signal_types: frozenset[CarbonSignal] = frozenset({signal})
        self.forecast_types: frozenset[CarbonSignal] = frozenset({signal})
        self._signal = signal
        self._client = new_client(timeout_s=timeout_s, base_url=base_url.rstrip("/") + "/")
        self._locations = dict(locations or {})
        self._clock = clock

    def __repr__(self) -> str:
        return f"CarbonAwareSdkSource(base_url={str(self._client.base_url)!r})"

    def zone_for(self, region: Region) -> str | None:
        mapped = self._locations.get(region.key)
        if mapped:
            return mapped
        return region.region if region.cloud == "azure" else None

    def value(self, zone: str, *, signal: CarbonSignal,
              at: dt.datetime | None = None) -> SignalValue:
        require_type(self, signal)
        when = utc(at) if at is not None else self._clock()
        raw = get_json(self._client, "emissions/bylocations", source=NAME,
                       operation="emissions/bylocations", params={
                           "location": [zone], "time": iso(when - dt.timedelta(hours=1)),
                           "toTime": iso(when)})
        rows = validate(_EmissionsList, raw, source=NAME,
                        operation="emissions/bylocations").root
        before = sorted((r for r in rows if utc(r.time) <= when), key=lambda r: r.time)
        if not before:
            raise NoSignalDataError(f"{NAME} emissions/bylocations: no data for {zone} at "
                                    f"{iso(when)}.")
        row = before[-1]
        return SignalValue(source=NAME, zone=zone, signal=self._signal, value=row.rating,
                           observed_at=utc(row.time), detail="emissions/bylocations")

    def forecast(self, zone: str, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast:
        require_type(self, signal, forecast=True)
        raw = get_json(self._client, "emissions/forecasts/current", source=NAME,
                       operation="emissions/forecasts/current", params={"location": [zone]})
        forecasts = validate(_ForecastList, raw, source=NAME,
                             operation="emissions/forecasts/current").root
        mine = [f for f in forecasts if f.location == zone] or forecasts[:1]
        if not mine or not mine[0].forecastData:
            raise NoSignalDataError(f"{NAME}: no current forecast for {zone}.")
        data = mine[0].forecastData
        step_min = next((p.duration for p in data if p.duration > 0), 5.0)
        return make_forecast(
            source=NAME, zone=zone, signal=self._signal,
            issued_at=mine[0].generatedAt or self._clock(),
            points=[(p.timestamp, p.value) for p in data], start=start, end=end,
            default_step_s=step_min * 60.0)

    def close(self) -> None:
        self._client.close()
