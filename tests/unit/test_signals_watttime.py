"""WattTime v3 source against a local fake: login, token renewal, 401 re-login, errors."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import pytest

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.exceptions import (
    NoSignalDataError,
    SignalAuthError,
    SignalPayloadError,
    SignalTimeoutError,
    SignalUnavailableError,
)
from greenplace.scheduler.signals.base import G_PER_KWH_PER_LB_PER_MWH
from greenplace.scheduler.signals.watttime import TOKEN_RENEW_AFTER_S, WattTimeSource
from tests.conftest import make_region
from tests.fakes_signals.server import FakeServer
from tests.fakes_signals.watttime import FakeWattTime

NOW = dt.datetime(2026, 11, 27, 12, 32, tzinfo=dt.UTC)
USER, PASSWORD = "wt-user", "wt-secret-password-x9"


def moer(t: dt.datetime) -> float:
    """lbs/MWh; lowest around 13:00 UTC."""
    return 900.0 - 20.0 * (12 - abs(t.hour - 13))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake() -> Iterator[tuple[FakeWattTime, FakeServer]]:
    api = FakeWattTime(username=USER, password=PASSWORD, now=NOW,
                       moer_lbs_per_mwh={"CAISO_NORTH": moer, "PJM_DC": moer},
                       regions={"CAISO_NORTH"})
    with FakeServer(api) as server:
        yield api, server


def source(server: FakeServer, *, password: str = PASSWORD, timeout_s: float = 2.0,
           monotonic: Clock | None = None) -> WattTimeSource:
    return WattTimeSource(username=USER, password=password, base_url=server.url,
                          timeout_s=timeout_s, clock=lambda: NOW,
                          monotonic=monotonic or Clock())


def test_login_then_current_moer_in_g_per_kwh(fake: tuple[FakeWattTime, FakeServer]) -> None:
    api, server = fake
    src = source(server)
    try:
        value = src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()
    assert value.signal is CarbonSignal.MARGINAL
    assert value.observed_at == dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    assert value.value == pytest.approx(moer(value.observed_at) * G_PER_KWH_PER_LB_PER_MWH)
    login = api.calls("/login")[0]
    assert login.headers["authorization"].startswith("Basic ")
    data = api.calls("/v3/forecast")[0]
    assert data.headers["authorization"] == "Bearer token-1"
    assert data.arg("region") == "CAISO_NORTH" and data.arg("signal_type") == "co2_moer"


def test_token_is_reused_then_renewed_before_expiry(fake: tuple[FakeWattTime,
                                                                FakeServer]) -> None:
    api, server = fake
    clock = Clock()
    src = source(server, monotonic=clock)
    try:
        src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
        clock.t += 60
        src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
        assert len(api.calls("/login")) == 1
        clock.t += TOKEN_RENEW_AFTER_S  # past the renewal point of the 30-minute token
        src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()
    assert len(api.calls("/login")) == 2
    assert api.calls("/v3/forecast")[-1].headers["authorization"] == "Bearer token-2"


def test_expired_token_gets_401_then_relogin(fake: tuple[FakeWattTime, FakeServer]) -> None:
    api, server = fake
    src = source(server)
    try:
        src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
        api.expire_tokens()  # the server revokes every token: the next call gets 401
        value = src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()
    assert value.value > 0
    assert len(api.calls("/login")) == 2
    statuses = [r.headers["authorization"] for r in api.calls("/v3/forecast")]
    assert statuses == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]


def test_bad_password_is_unauthorised_and_never_shown(
    fake: tuple[FakeWattTime, FakeServer], caplog: pytest.LogCaptureFixture,
) -> None:
    _, server = fake
    caplog.set_level(logging.DEBUG)
    secret = "not-the-password-55"
    src = source(server, password=secret)
    try:
        with pytest.raises(SignalAuthError, match="login") as info:
            src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()
    assert secret not in str(info.value) and secret not in repr(src)
    assert secret not in caplog.text and PASSWORD not in caplog.text


def test_region_outside_plan_is_no_data(fake: tuple[FakeWattTime, FakeServer]) -> None:
    _, server = fake
    src = source(server)
    try:
        with pytest.raises(NoSignalDataError, match="403"):
            src.value("PJM_DC", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()


def test_historical_forecast_and_signal_index(fake: tuple[FakeWattTime, FakeServer]) -> None:
    api, server = fake
    src = source(server)
    at = dt.datetime(2026, 11, 26, 3, 7, tzinfo=dt.UTC)
    try:
        past = src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL, at=at)
        forecast = src.forecast("CAISO_NORTH", signal=CarbonSignal.MARGINAL, start=NOW,
                                end=NOW + dt.timedelta(hours=4))
        index = src.signal_index("CAISO_NORTH")
        history = src.history("CAISO_NORTH", start=at, end=at + dt.timedelta(hours=1))
    finally:
        src.close()
    assert past.observed_at == dt.datetime(2026, 11, 26, 3, 5, tzinfo=dt.UTC)
    assert past.detail.startswith("historical")
    call = api.calls("/v3/historical")[0]
    assert (call.arg("start"), call.arg("end")) == ("2026-11-26T02:37:00Z",
                                                    "2026-11-26T03:07:00Z")
    assert forecast.step_s == 300 and forecast.points[0].at <= NOW
    assert forecast.issued_at == dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    assert api.calls("/v3/forecast")[0].arg("horizon_hours") == "5"
    assert index.percentile == 37.0
    # the point in force at 03:07 (03:05) through the last one before 04:07 (04:05)
    assert len(history.points) == 13 and history.points[0].at == past.observed_at


def test_unknown_units_are_malformed(fake: tuple[FakeWattTime, FakeServer]) -> None:
    api, server = fake
    api.units = "furlongs"
    src = source(server)
    try:
        with pytest.raises(SignalPayloadError, match="units"):
            src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
        api.units, api.malformed = "lbs_co2_per_mwh", True
        with pytest.raises(SignalPayloadError, match="malformed"):
            src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()


def test_5xx_and_timeout(fake: tuple[FakeWattTime, FakeServer]) -> None:
    api, server = fake
    api.fail_status, api.fail_body = 503, {"error": "maintenance"}
    src = source(server, timeout_s=0.2)
    try:
        with pytest.raises(SignalUnavailableError, match="503"):
            src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
        api.fail_status, api.delay_s = None, 2.0
        with pytest.raises(SignalTimeoutError):
            src.value("CAISO_NORTH", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()


def test_only_marginal_and_zone_mapping() -> None:
    src = WattTimeSource(username=USER, password=PASSWORD, base_url="http://127.0.0.1:9")
    try:
        assert src.signal_types == {CarbonSignal.MARGINAL}
        assert src.zone_for(make_region("aws", "us-west-1", watttime_region="CAISO_NORTH")) == (
            "CAISO_NORTH")
        assert src.zone_for(make_region("aws", "x-1")) is None
        with pytest.raises(NoSignalDataError):
            src.value("CAISO_NORTH", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()
