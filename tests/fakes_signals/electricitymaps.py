"""Fake Electricity Maps API v3 (carbon-intensity latest/history/past/forecast, power-breakdown).

Answers in the documented v3 shapes, e.g. ``/v3/carbon-intensity/latest?zone=DE`` ->
``{"zone": "DE", "carbonIntensity": 302, "datetime": "2026-11-27T11:00:00.000Z",
"updatedAt": ..., "createdAt": ..., "emissionFactorType": "lifecycle",
"isEstimated": false, "estimationMethod": null}``. Requires the ``auth-token`` header.

Behaves like the real API where greenplace depends on it:

- a zone it does not know is answered with the zone of the caller's IP location
  (``caller_zone``) unless the request says ``shouldUseFallbackCallerLookup=false``; then
  it is an error (404 ``Zone '...' does not exist.``);
- ``emissionFactorType`` picks lifecycle (the default when absent) or direct figures;
- a key's plan covers ``plan_zones`` (None: every zone) and the forecast endpoint only when
  ``forecast_in_plan``; anything else is 403 (a free key: one zone, no forecast);
- ``answer_as`` makes the API answer another zone's id than the one asked (zone aliases).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes_signals.server import FakeApi, Reply, Request

Curve = Callable[[dt.datetime], float]


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _hour(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=0, second=0, microsecond=0)


@dataclass
class FakeElectricityMaps(FakeApi):
    api_key: str = "em-test-key"
    now: dt.datetime = dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    intensity: dict[str, Curve] = field(default_factory=dict)
    fossil_free_pct: dict[str, Curve] = field(default_factory=dict)
    forecast_hours: int = 24
    caller_zone: str | None = None  # the zone the caller's IP geolocates to
    plan_zones: set[str] | None = None
    forecast_in_plan: bool = True
    answer_as: dict[str, str] = field(default_factory=dict)
    direct_factor: float = 0.8  # direct figures are this share of the lifecycle ones

    def malformed_body(self, request: Request) -> Any:
        return {"zone": request.arg("zone"), "carbonIntensity": "high", "datetime": "soon"}

    def _intensity(self, zone: str, t: dt.datetime, factor: str) -> Any:
        value = self.intensity[zone](t)
        return value * self.direct_factor if factor == "direct" and value is not None else value

    def _point(self, zone: str, t: dt.datetime, factor: str) -> dict[str, Any]:
        return {"zone": self.answer_as.get(zone, zone),
                "carbonIntensity": self._intensity(zone, t, factor), "datetime": _stamp(t),
                "updatedAt": _stamp(self.now), "createdAt": _stamp(t),
                "emissionFactorType": factor, "isEstimated": False, "estimationMethod": None}

    def _breakdown(self, zone: str, t: dt.datetime, factor: str) -> dict[str, Any]:
        ff = self.fossil_free_pct[zone](t)
        return {"zone": self.answer_as.get(zone, zone), "datetime": _stamp(t),
                "updatedAt": _stamp(self.now),
                "createdAt": _stamp(t),
                "powerConsumptionBreakdown": {"nuclear": 100, "wind": 200, "gas": 300},
                "powerProductionBreakdown": {"nuclear": 100, "wind": 200, "gas": 300},
                "powerImportBreakdown": {}, "powerExportBreakdown": {},
                "fossilFreePercentage": ff, "renewablePercentage": ff / 2,
                "powerConsumptionTotal": 600, "powerProductionTotal": 600,
                "powerImportTotal": 0, "powerExportTotal": 0, "isEstimated": False,
                "estimationMethod": None}

    def route(self, request: Request) -> Reply:
        if request.headers.get("auth-token") != self.api_key:
            return Reply(status=401, body={"status": "error",
                                           "message": "Invalid authentication token"})
        zone = request.arg("zone") or ""
        factor = request.arg("emissionFactorType") or "lifecycle"
        kind, _, temporality = request.path.removeprefix("/v3/").partition("/")
        table = self.intensity if kind == "carbon-intensity" else self.fossil_free_pct
        if kind not in ("carbon-intensity", "power-breakdown"):
            return Reply(status=404, body={"error": "Not found"})
        fallback = request.arg("shouldUseFallbackCallerLookup") != "false"
        if zone not in table and fallback and self.caller_zone in table:
            zone = self.caller_zone  # the real API silently answers the caller's own zone
        elif zone not in table:
            return Reply(status=404, body={"status": "error",
                                           "message": f"Zone '{zone}' does not exist."})
        if self.plan_zones is not None and zone not in self.plan_zones:
            return Reply(status=403, body={
                "status": "error",
                "message": f"Request unauthorized for zone {zone}: not included in your plan."})
        if temporality == "forecast" and not self.forecast_in_plan:
            return Reply(status=403, body={
                "status": "error",
                "message": "Request unauthorized: forecast is not included in your plan."})
        point = self._point if kind == "carbon-intensity" else self._breakdown
        latest = _hour(self.now)
        if temporality == "latest":
            return Reply(body=point(zone, latest, factor))
        if temporality == "history":
            hours = [latest - dt.timedelta(hours=h) for h in range(23, -1, -1)]
            return Reply(body={"zone": self.answer_as.get(zone, zone),
                               "history": [point(zone, t, factor) for t in hours]})
        if temporality == "past" and kind == "carbon-intensity":
            raw = (request.arg("datetime") or "").replace("Z", "+00:00")
            return Reply(body=point(zone, _hour(dt.datetime.fromisoformat(raw)), factor))
        if temporality == "forecast" and kind == "carbon-intensity":
            hours = [latest + dt.timedelta(hours=h) for h in range(1, self.forecast_hours + 1)]
            return Reply(body={"zone": self.answer_as.get(zone, zone), "forecast": [
                {"carbonIntensity": self._intensity(zone, t, factor), "datetime": _stamp(t)}
                for t in hours], "updatedAt": _stamp(self.now)})
        return Reply(status=404, body={"error": "Not found"})
