"""Fake WattTime API v3: ``/login`` (basic auth -> token), ``/v3/forecast``,
``/v3/historical``, ``/v3/signal-index``, in the documented shapes:
``{"data": [{"point_time": "...", "value": 812.0}], "meta": {"region": ...,
"signal_type": "co2_moer", "units": "lbs_co2_per_mwh", "generated_at": ...,
"data_point_period_seconds": 300, "warnings": [], "model": {"date": "2023-03-01"}}}``.

``expire_tokens()`` makes every issued token invalid (the next data call gets 401).
Regions outside ``regions`` get 403, as WattTime answers for regions not in a plan.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes_signals.server import FakeApi, Reply, Request

Curve = Callable[[dt.datetime], float]
STEP = dt.timedelta(minutes=5)


def _stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat()


def _floor5(t: dt.datetime) -> dt.datetime:
    return t.replace(minute=t.minute - t.minute % 5, second=0, microsecond=0)


@dataclass
class FakeWattTime(FakeApi):
    username: str = "wt-user"
    password: str = "wt-secret-password"
    now: dt.datetime = dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    moer_lbs_per_mwh: dict[str, Curve] = field(default_factory=dict)
    regions: set[str] | None = None  # None: the plan covers every region in moer_lbs_per_mwh
    units: str = "lbs_co2_per_mwh"
    valid_tokens: set[str] = field(default_factory=set)
    issued: int = 0

    def exempt(self, request: Request) -> bool:
        return request.path == "/login"

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def malformed_body(self, request: Request) -> Any:
        return {"data": [{"point_time": "not a time", "value": None}]}

    def _login(self, request: Request) -> Reply:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return Reply(status=403, body={"error": "Unauthorized: invalid credentials"})
        self.issued += 1
        token = f"token-{self.issued}"
        self.valid_tokens.add(token)
        return Reply(body={"token": token})

    def _series(self, region: str, start: dt.datetime, end: dt.datetime,
                *, generated: bool) -> dict[str, Any]:
        points, t = [], _floor5(start)
        while t <= end:
            points.append({"point_time": _stamp(t),
                           "value": self.moer_lbs_per_mwh[region](t)})
            t += STEP
        meta: dict[str, Any] = {"region": region, "signal_type": "co2_moer",
                                "units": self.units, "data_point_period_seconds": 300,
                                "warnings": [], "model": {"date": "2023-03-01"}}
        if generated:
            meta["generated_at"] = _stamp(_floor5(self.now))
            meta["generated_at_period_seconds"] = 300
        return {"data": points, "meta": meta}

    def route(self, request: Request) -> Reply:
        if request.path == "/login":
            return self._login(request)
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid_tokens:
            return Reply(status=401, body={"error": "Unauthorized", "message": "token expired"})
        region = request.arg("region") or ""
        allowed = self.regions if self.regions is not None else set(self.moer_lbs_per_mwh)
        if region not in allowed or region not in self.moer_lbs_per_mwh:
            return Reply(status=403, body={"error": f"You do not have access to {region}"})
        if request.arg("signal_type") != "co2_moer":
            return Reply(status=400, body={"error": "unsupported signal_type"})
        if request.path == "/v3/forecast":
            hours = float(request.arg("horizon_hours") or 24)
            start = _floor5(self.now)
            return Reply(body=self._series(region, start, start + dt.timedelta(hours=hours)
                                           - STEP, generated=True))
        if request.path == "/v3/historical":
            start = dt.datetime.fromisoformat((request.arg("start") or "").replace("Z", "+00:00"))
            end = dt.datetime.fromisoformat((request.arg("end") or "").replace("Z", "+00:00"))
            return Reply(body=self._series(region, start, end, generated=False))
        if request.path == "/v3/signal-index":
            return Reply(body={"data": [{"point_time": _stamp(_floor5(self.now)), "value": 37.0}],
                               "meta": {"region": region, "signal_type": "co2_moer",
                                        "units": "percentile", "warnings": [],
                                        "data_point_period_seconds": 300,
                                        "model": {"date": "2023-03-01"}}})
        return Reply(status=404, body={"detail": "Not Found"})
