"""The Green Software Foundation Carbon Aware SDK Web API (a service you run yourself).

Endpoints used (``GET``, no auth by default; base URL from config):

- ``/emissions/bylocations?location=L&time=T1&toTime=T2``
  -> ``[{"location", "time", "rating", "duration"}]`` (rating in gCO2e/kWh; 204 = no data);
- ``/emissions/forecasts/current?location=L``
  -> ``[{"generatedAt", "location", "forecastData": [{"timestamp", "duration", "value"}], ...}]``.

Locations are the SDK's own names: the keys of its ``LocationDataSourcesConfiguration``
(Azure region names such as ``eastus`` out of the box, plus any location file you add).
``locations`` maps catalog regions of any cloud (``aws:us-east-1``, ``gcp:europe-west4``)
to those names (``GREENPLACE_CARBON_AWARE_SDK_LOCATIONS``); an Azure region not in
the map keeps its own name, the SDK's default; any other region the map leaves out
has no zone here.

The signal type and its emission basis depend on the data source the SDK is set up
with (WattTime: ``marginal``, direct; Electricity Maps: ``average``, lifecycle by the
API's default). Both are configuration (``GREENPLACE_CARBON_AWARE_SDK_SIGNAL``, required,
and ``GREENPLACE_CARBON_AWARE_SDK_BASIS``), never guessed, and every value is labelled
with them.
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
    """A Carbon Aware SDK Web API deployment; one configured signal type (average or marginal).

    Args:
        signal: what the SDK's data source returns (no default: it is the deployment's).
        basis: its emission basis; default: direct for marginal (WattTime MOER), lifecycle
            for average (Electricity Maps' default emission factor).
        locations: catalog region key -> the SDK's location name, for any cloud.
    """

    name = NAME

    def __init__(
        self, *, base_url: str, signal: CarbonSignal, basis: EmissionBasis | None = None,
        timeout_s: float = 5.0, locations: Mapping[str, str] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        if signal is CarbonSignal.CFE:
            raise ValueError("the Carbon Aware SDK reports intensities, not a CFE share")
        self.signal_types: frozenset[CarbonSignal] = frozenset({signal})
        self.forecast_types: frozenset[CarbonSignal] = frozenset({signal})
        self.basis = basis or default_basis(signal)
        self.emission_basis: Mapping[CarbonSignal, EmissionBasis] = {signal: self.basis}
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

    @property
    def locations(self) -> dict[str, str]:
        """The configured region -> location map (Azure's own names are not listed)."""
        return dict(self._locations)

    def value(self, zone: str, *, signal: CarbonSignal,
              at: dt.datetime | None = None) -> SignalValue:
        require_type(self, signal)
        when = utc(at) if at is not None else self._clock()
        raw = get_json(self._client, "emissions/bylocations", source=NAME,
                       operation="emissions/bylocations", clock=self._clock, params={
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
                           observed_at=utc(row.time),
                           detail=f"{self.basis}, emissions/bylocations")

    def forecast(self, zone: str, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast:
        require_type(self, signal, forecast=True)
        raw = get_json(self._client, "emissions/forecasts/current", source=NAME,
                       operation="emissions/forecasts/current", params={"location": [zone]},
                       clock=self._clock)
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


def default_basis(signal: CarbonSignal) -> EmissionBasis:
    """The basis of the SDK's usual data source for ``signal`` (WattTime or Electricity Maps)."""
    return EmissionBasis.DIRECT if signal is CarbonSignal.MARGINAL else EmissionBasis.LIFECYCLE


def parse_locations(text: str) -> dict[str, str]:
    """``aws:us-east-1=eastus, gcp:europe-west4=westeurope`` (or a JSON object) as a dict.

    Raises:
        ValueError: an entry is not ``CLOUD:REGION=LOCATION``.
    """
    import json

    text = text.strip()
    if text.startswith("{"):
        raw = json.loads(text)
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in raw.items()):
            raise ValueError("the JSON form must map 'cloud:region' strings to location names")
        pairs = list(raw.items())
    else:
        pairs = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            key, sep, location = entry.partition("=")
            pairs.append((key, location) if sep else (entry, ""))
    out: dict[str, str] = {}
    for key, location in pairs:
        key, location = key.strip(), location.strip()
        cloud, colon, region = key.partition(":")
        if not colon or not cloud or not region or not location:
            raise ValueError(f"entry {key + '=' + location if location else key!r} is not "
                             "CLOUD:REGION=LOCATION (e.g. aws:us-east-1=eastus)")
        out[f"{cloud.lower()}:{region}"] = location
    return out
