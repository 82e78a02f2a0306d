"""Electricity Maps source against a local fake of its v3 API (real request/response shapes)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator

import httpx
import pytest

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.exceptions import (
    NoSignalDataError,
    SignalAuthError,
    SignalPayloadError,
    SignalTimeoutError,
    SignalUnavailableError,
)
from greenplace.scheduler.signals.base import (
    EmissionBasis,
    NotInPlanError,
    RateLimitedError,
    ZoneMismatchError,
)
from greenplace.scheduler.signals.electricitymaps import ElectricityMapsSource
from tests.conftest import make_region
from tests.fakes_signals.electricitymaps import FakeElectricityMaps
from tests.fakes_signals.server import FakeServer, closed_port_url

NOW = dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
KEY = "em-test-key-7f3a"


def de_curve(t: dt.datetime) -> float:
    """Cleanest at 13:00 UTC (solar), dirtiest at 01:00."""
    return 300.0 - 10.0 * (12 - abs(t.hour - 13))


@pytest.fixture
def fake() -> Iterator[tuple[FakeElectricityMaps, FakeServer]]:
    api = FakeElectricityMaps(api_key=KEY, now=NOW, intensity={"DE": de_curve},
                              fossil_free_pct={"DE": lambda t: 55.5})
    with FakeServer(api) as server:
        yield api, server


def source(server: FakeServer, *, key: str = KEY, timeout_s: float = 2.0) -> ElectricityMapsSource:
    return ElectricityMapsSource(api_key=key, base_url=f"{server.url}/v3", timeout_s=timeout_s,
                                 clock=lambda: NOW)


def test_latest_sends_key_header_and_zone(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    api, server = fake
    src = source(server)
    try:
        value = src.value("DE", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()
    assert value.value == de_curve(NOW.replace(minute=0)) == 190.0
    assert value.signal is CarbonSignal.AVERAGE and value.source == "electricitymaps"
    assert value.observed_at == dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    assert value.detail == "lifecycle" and value.age_s(NOW) == 1800
    call = api.calls("/v3/carbon-intensity/latest")[0]
    assert call.headers["auth-token"] == KEY
    assert call.arg("zone") == "DE" and call.arg("emissionFactorType") == "lifecycle"


def test_history_and_past_values(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    api, server = fake
    src = source(server)
    try:
        history = src.history("DE")
        recent = src.value("DE", signal=CarbonSignal.AVERAGE, at=NOW - dt.timedelta(hours=5))
        old = src.value("DE", signal=CarbonSignal.AVERAGE, at=NOW - dt.timedelta(days=3))
    finally:
        src.close()
    assert len(history) == 24 and history[0].observed_at < history[-1].observed_at
    assert recent.observed_at == dt.datetime(2026, 11, 27, 7, tzinfo=dt.UTC)
    assert recent.value == de_curve(recent.observed_at)
    assert old.observed_at == dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)
    assert api.calls("/past")[0].arg("datetime") == "2026-11-24T12:30:00Z"


def test_cfe_comes_from_power_breakdown(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    api, server = fake
    src = source(server)
    try:
        value = src.value("DE", signal=CarbonSignal.CFE)
    finally:
        src.close()
    assert value.value == 55.5 and value.unit == "%"
    assert api.calls("/v3/power-breakdown/latest")


def test_forecast_is_clipped_to_the_window(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    _, server = fake
    src = source(server)
    start, end = NOW, NOW + dt.timedelta(hours=6)
    try:
        forecast = src.forecast("DE", signal=CarbonSignal.AVERAGE, start=start, end=end)
    finally:
        src.close()
    times = [p.at for p in forecast.points]
    assert times[0] == dt.datetime(2026, 11, 27, 13, tzinfo=dt.UTC)  # first forecast hour
    assert times[-1] < end and forecast.step_s == 3600
    assert [p.value for p in forecast.points] == [de_curve(t) for t in times]


def test_marginal_is_not_offered(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    _, server = fake
    src = source(server)
    try:
        with pytest.raises(NoSignalDataError, match="never substitutes"):
            src.value("DE", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()
    assert CarbonSignal.MARGINAL not in src.signal_types


def test_zone_mapping_uses_catalog_em_zone() -> None:
    src = ElectricityMapsSource(api_key=KEY, base_url="http://127.0.0.1:9/v3")
    try:
        assert src.zone_for(make_region("aws", "eu-central-1", em_zone="DE")) == "DE"
        assert src.zone_for(make_region("aws", "x-1", em_zone="")) is None
    finally:
        src.close()


def test_wrong_key_is_unauthorised_and_never_shown(
    fake: tuple[FakeElectricityMaps, FakeServer], caplog: pytest.LogCaptureFixture,
) -> None:
    _, server = fake
    secret = "wrong-key-do-not-print-91"
    src = source(server, key=secret)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(SignalAuthError) as info:
            src.value("DE", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()
    assert "401" in str(info.value) and "Invalid authentication token" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(src)
    assert secret not in caplog.text


def test_unknown_zone_is_no_data(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    _, server = fake
    src = source(server)
    try:
        with pytest.raises(NoSignalDataError, match="404"):
            src.value("XX", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_are_unavailable(fake: tuple[FakeElectricityMaps, FakeServer],
                                       status: int) -> None:
    api, server = fake
    api.fail_status, api.fail_body = status, {"message": "upstream trouble"}
    src = source(server)
    try:
        with pytest.raises(SignalUnavailableError, match=str(status)):
            src.value("DE", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()


def test_slow_answer_times_out(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    api, server = fake
    api.delay_s = 2.0
    src = source(server, timeout_s=0.2)
    try:
        with pytest.raises(SignalTimeoutError, match="within 0.2 s"):
            src.value("DE", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()


def test_malformed_payload(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    api, server = fake
    api.malformed = True
    src = source(server)
    try:
        with pytest.raises(SignalPayloadError, match="malformed"):
            src.value("DE", signal=CarbonSignal.AVERAGE)
        api.malformed, api.not_json = False, True
        with pytest.raises(SignalPayloadError, match="not JSON"):
            src.forecast("DE", signal=CarbonSignal.AVERAGE, start=NOW, end=NOW)
    finally:
        src.close()


def test_null_intensity_is_no_data(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    api, server = fake
    api.intensity["FR"] = lambda t: None  # type: ignore[assignment,return-value]
    src = source(server)
    try:
        with pytest.raises(NoSignalDataError, match="null"):
            src.value("FR", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()


def test_unreachable_service() -> None:
    src = ElectricityMapsSource(api_key=KEY, base_url=f"{closed_port_url()}/v3", timeout_s=1)
    try:
        with pytest.raises(SignalUnavailableError, match="cannot reach"):
            src.value("DE", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()


def test_every_zone_request_disables_the_caller_ip_fallback(
    fake: tuple[FakeElectricityMaps, FakeServer],
) -> None:
    api, server = fake
    api.caller_zone = "DE"  # where this machine's IP address geolocates
    # The API itself (as documented) answers an unknown zone with the caller's zone ...
    raw = httpx.get(f"{server.url}/v3/carbon-intensity/latest", params={"zone": "NL"},
                    headers={"auth-token": KEY}).json()
    assert raw["zone"] == "DE"
    src = source(server)
    try:
        # ... but the source asks it not to: an unknown zone is an error, never DE's figure
        with pytest.raises(NoSignalDataError, match="404.*Zone 'NL' does not exist"):
            src.value("NL", signal=CarbonSignal.AVERAGE)
        src.value("DE", signal=CarbonSignal.CFE)
        src.value("DE", signal=CarbonSignal.CFE, at=NOW - dt.timedelta(hours=2))
        src.value("DE", signal=CarbonSignal.AVERAGE, at=NOW - dt.timedelta(hours=2))
        src.value("DE", signal=CarbonSignal.AVERAGE, at=NOW - dt.timedelta(days=3))
        src.forecast("DE", signal=CarbonSignal.AVERAGE, start=NOW,
                     end=NOW + dt.timedelta(hours=2))
    finally:
        src.close()
    assert len(api.requests) == 7
    assert all(r.arg("shouldUseFallbackCallerLookup") == "false" for r in api.requests[1:])
    assert all(r.arg("emissionFactorType") == "lifecycle"
               for r in api.requests[1:] if "carbon-intensity" in r.path)


def test_direct_basis_is_asked_explicitly(fake: tuple[FakeElectricityMaps, FakeServer]) -> None:
    api, server = fake
    src = ElectricityMapsSource(api_key=KEY, base_url=f"{server.url}/v3", clock=lambda: NOW,
                                emission_factor=EmissionBasis.DIRECT)
    try:
        value = src.value("DE", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()
    assert src.emission_basis == {CarbonSignal.AVERAGE: EmissionBasis.DIRECT}
    assert value.detail == "direct" and value.value == de_curve(NOW.replace(minute=0)) * 0.8
    assert api.requests[0].arg("emissionFactorType") == "direct"


@pytest.mark.parametrize("endpoint", ["latest", "history", "forecast", "power-breakdown"])
def test_answer_for_another_zone_is_rejected(fake: tuple[FakeElectricityMaps, FakeServer],
                                             endpoint: str) -> None:
    api, server = fake
    api.answer_as = {"DE": "FR"}
    src = source(server)
    try:
        with pytest.raises(ZoneMismatchError) as info:
            if endpoint == "latest":
                src.value("DE", signal=CarbonSignal.AVERAGE)
            elif endpoint == "history":
                src.value("DE", signal=CarbonSignal.AVERAGE, at=NOW - dt.timedelta(hours=2))
            elif endpoint == "forecast":
                src.forecast("DE", signal=CarbonSignal.AVERAGE, start=NOW, end=NOW)
            else:
                src.value("DE", signal=CarbonSignal.CFE)
    finally:
        src.close()
    assert isinstance(info.value, SignalPayloadError)
    assert (info.value.asked, info.value.answered) == ("DE", "FR")
    assert "asked for zone DE but the answer is for zone FR" in str(info.value)
    assert "To fix:" in str(info.value)


def test_403_is_not_in_plan_for_that_zone_or_endpoint(
    fake: tuple[FakeElectricityMaps, FakeServer],
) -> None:
    api, server = fake
    api.intensity["FR"] = lambda t: 50.0
    api.plan_zones, api.forecast_in_plan = {"DE"}, False
    src = source(server)
    try:
        with pytest.raises(NotInPlanError) as zone:
            src.value("FR", signal=CarbonSignal.AVERAGE)
        with pytest.raises(NotInPlanError) as forecast:
            src.forecast("DE", signal=CarbonSignal.AVERAGE, start=NOW, end=NOW)
        assert src.value("DE", signal=CarbonSignal.AVERAGE).value == 190.0
    finally:
        src.close()
    assert zone.value.endpoint == "carbon-intensity/latest" and "403" in str(zone.value)
    assert "not included in your plan" in str(zone.value)
    assert forecast.value.endpoint == "carbon-intensity/forecast"
    assert KEY not in str(zone.value)


@pytest.mark.parametrize(("header", "wait_s"), [
    ("120", 120.0), ("Fri, 27 Nov 2026 12:35:00 GMT", 300.0), (None, None)])
def test_429_reads_retry_after(fake: tuple[FakeElectricityMaps, FakeServer],
                               header: str | None, wait_s: float | None) -> None:
    api, server = fake
    api.fail_status, api.fail_body = 429, {"message": "Too many requests"}
    api.fail_headers = {"Retry-After": header} if header else {}
    src = source(server)
    try:
        with pytest.raises(RateLimitedError) as info:
            src.value("DE", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()
    assert info.value.retry_after_s == wait_s
    if wait_s is not None:
        until = NOW + dt.timedelta(seconds=wait_s)
        assert f"until {until.strftime('%Y-%m-%dT%H:%M:%SZ')}" in str(info.value)
    else:
        assert "gives no Retry-After" in str(info.value)
