"""Fake Carbon Aware SDK Web API: ``/emissions/bylocations`` and ``/emissions/forecasts/current``.

Shapes as the SDK serialises them: ``EmissionsData`` rows
``{"location": "eastus", "time": "...", "rating": 410.2, "duration": "00:05:00"}``
(a .NET TimeSpan), ``EmissionsForecastDTO`` objects with ``forecastData`` points
``{"location", "timestamp", "duration": 5, "value"}``; an unknown location gets
400 with a ValidationProblemDetails body, no data gets 204.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes_signals.server import FakeApi, Reply, Request

Curve = Callable[[dt.datetime], float]
STEP = dt.timedelta(minutes=5)


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat()


def _parse(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _floor5(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=t.minute - t.minute % 5, second=0, microsecond=0)


@dataclass
class FakeCarbonAwareSdk(FakeApi):
    now: dt.datetime = dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    rating: dict[str, Curve] = field(default_factory=dict)
    empty: set[str] = field(default_factory=set)  # known locations with no data (204)
    forecast_hours: int = 24

    def malformed_body(self, request: Request) -> Any:
        return [{"location": "eastus", "time": "yesterday", "rating": "a lot"}]

    def _problem(self, detail: str) -> Reply:
        return Reply(status=400, body={
            "type": "https://tools.ietf.org/html/rfc7231#section-6.5.1",
            "title": "LocationConversionException", "status": 400, "detail": detail,
            "errors": {}})

    def route(self, request: Request) -> Reply:
        locations = request.query.get("location", [])
        unknown = [loc for loc in locations if loc not in self.rating and loc not in self.empty]
        if not locations or unknown:
            return self._problem(f"Unknown location(s) {unknown or locations}")
        if request.path == "/emissions/bylocations":
            start = _parse(request.arg("time") or _stamp(self.now - dt.timedelta(hours=1)))
            end = _parse(request.arg("toTime") or _stamp(self.now))
            rows = []
            for loc in locations:
                if loc in self.empty:
                    continue
                t = _floor5(start)
                while t <= end:
                    rows.append({"location": loc, "time": _stamp(t),
                                 "rating": self.rating[loc](t), "duration": "00:05:00"})
                    t += STEP
            return Reply(status=200, body=rows) if rows else Reply(status=204)
        if request.path == "/emissions/forecasts/current":
            out = []
            for loc in locations:
                if loc in self.empty:
                    continue
                start = _floor5(self.now)
                points = [{"location": loc, "timestamp": _stamp(start + k * STEP), "duration": 5,
                           "value": self.rating[loc](start + k * STEP)}
                          for k in range(self.forecast_hours * 12)]
                best = min(points, key=lambda p: p["value"])
                out.append({"generatedAt": _stamp(start), "requestedAt": _stamp(self.now),
                            "location": loc, "dataStartAt": points[0]["timestamp"],
                            "dataEndAt": points[-1]["timestamp"], "windowSize": 5,
                            "optimalDataPoints": [best], "forecastData": points})
            if not out:
                return Reply(status=500, body={"title": "no forecast", "status": 500})
            return Reply(body=out)
        return Reply(status=404, body=None)
