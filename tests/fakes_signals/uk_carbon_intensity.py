"""Fake GB Carbon Intensity API (api.carbonintensity.org.uk), national and regional.

Shapes: ``/intensity`` -> ``{"data": [{"from": "2026-11-27T12:00Z", "to": "...12:30Z",
"intensity": {"forecast": 190, "actual": 186, "index": "moderate"}}]}``; regional
answers nest ``data`` in a region object ``{"regionid", "dnoregion", "shortname",
"data": [...]}`` with ``generationmix``; ``/regional/intensity/{from}/fw48h/regionid/{id}``
carries that region object directly under ``data`` (not in a list).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes_signals.server import FakeApi, Reply, Request

Curve = Callable[[dt.datetime], float]
HALF = dt.timedelta(minutes=30)
NAMES = {13: ("UKPN London", "London"), 7: ("WPD South Wales", "South Wales")}


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


def _parse(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%MZ").replace(tzinfo=dt.UTC)


def _floor30(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=t.minute - t.minute % 30, second=0, microsecond=0)


def _index(value: float) -> str:
    return "low" if value < 120 else "moderate" if value < 200 else "high"


@dataclass
class FakeUkCarbonIntensity(FakeApi):
    now: dt.datetime = dt.datetime(2026, 11, 27, 12, 40, tzinfo=dt.UTC)
    national: Curve = field(default=lambda t: 180.0)
    regional: dict[int, Curve] = field(default_factory=dict)
    actual_known: bool = True

    def malformed_body(self, request: Request) -> Any:
        return {"data": [{"from": "2026-11-27T12:00Z", "intensity": "low"}]}

    def _period(self, curve: Curve, t: dt.datetime, *, regional: bool) -> dict[str, Any]:
        value = curve(t)
        intensity: dict[str, Any] = {"forecast": round(value), "index": _index(value)}
        if not regional:
            intensity["actual"] = round(value) - 2 if self.actual_known and t <= self.now else None
        out: dict[str, Any] = {"from": _stamp(t), "to": _stamp(t + HALF), "intensity": intensity}
        if regional:
            out["generationmix"] = [{"fuel": "gas", "perc": 40.0}, {"fuel": "wind", "perc": 35.0},
                                    {"fuel": "nuclear", "perc": 25.0}]
        return out

    def _region(self, region_id: int, periods: list[dict[str, Any]]) -> dict[str, Any]:
        dno, short = NAMES.get(region_id, (f"DNO {region_id}", f"Region {region_id}"))
        return {"regionid": region_id, "dnoregion": dno, "shortname": short, "data": periods}

    def _error(self, message: str) -> Reply:
        return Reply(status=400, body={"error": {"code": "400 Bad Request", "message": message}})

    def route(self, request: Request) -> Reply:
        parts = [p for p in request.path.split("/") if p]
        try:
            if parts == ["intensity"]:
                return Reply(body={"data": [self._period(self.national, _floor30(self.now),
                                                         regional=False)]})
            if len(parts) == 3 and parts[0] == "intensity":
                start = _floor30(_parse(parts[1]))
                end = start + dt.timedelta(hours=48) if parts[2] == "fw48h" else _parse(parts[2])
                times = _range(start, end)
                return Reply(body={"data": [self._period(self.national, t, regional=False)
                                            for t in times]})
            if parts[:2] == ["regional", "regionid"] and len(parts) == 3:
                region_id = int(parts[2])
                if region_id not in self.regional:
                    return self._error("Please enter a valid region id")
                period = self._period(self.regional[region_id], _floor30(self.now),
                                      regional=True)
                return Reply(body={"data": [self._region(region_id, [period])]})
            if parts[:2] == ["regional", "intensity"] and len(parts) == 6:
                region_id = int(parts[5])
                if region_id not in self.regional:
                    return self._error("Please enter a valid region id")
                start = _floor30(_parse(parts[2]))
                end = start + dt.timedelta(hours=48) if parts[3] == "fw48h" else _parse(parts[3])
                periods = [self._period(self.regional[region_id], t, regional=True)
                           for t in _range(start, end)]
                body = self._region(region_id, periods)
                return Reply(body={"data": body if parts[3] == "fw48h" else [body]})
        except ValueError:
            return self._error("Please enter a valid ISO 8601 datetime")
        return Reply(status=404, body={"error": {"code": "404 Not Found",
                                                 "message": "Not found"}})


def _range(start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    out, t = [], start
    while t < end:
        out.append(t)
        t += HALF
    return out
