"""GB Carbon Intensity API source against a local fake (national and regional shapes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.exceptions import (
    NoSignalDataError,
    SignalPayloadError,
    SignalTimeoutError,
    SignalUnavailableError,
)
from greenplace.scheduler.signals.uk_carbon_intensity import UkCarbonIntensitySource
from tests.conftest import make_region
from tests.fakes_signals.server import FakeServer
from tests.fakes_signals.uk_carbon_intensity import FakeUkCarbonIntensity

NOW = dt.datetime(2026, 11, 27, 12, 40, tzinfo=dt.UTC)


def london(t: dt.datetime) -> float:
    return 150.0 + t.hour  # rises through the day


@pytest.fixture
def fake() -> Iterator[tuple[FakeUkCarbonIntensity, FakeServer]]:
    api = FakeUkCarbonIntensity(now=NOW, national=lambda t: 200.0, regional={13: london})
    with FakeServer(api) as server:
        yield api, server


def source(server: FakeServer, timeout_s: float = 2.0) -> UkCarbonIntensitySource:
    return UkCarbonIntensitySource(base_url=server.url, timeout_s=timeout_s, clock=lambda: NOW)


def test_national_now_prefers_the_actual(fake: tuple[FakeUkCarbonIntensity,
                                                     FakeServer]) -> None:
    api, server = fake
    src = source(server)
    try:
        value = src.value("national", signal=CarbonSignal.AVERAGE)
        api.actual_known = False
        forecast_only = src.value("national", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()
    assert value.value == 198.0 and value.detail.startswith("actual") and not value.estimated
    assert value.observed_at == dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    assert forecast_only.value == 200.0 and forecast_only.estimated
    assert api.calls("/intensity")[0].path == "/intensity"


def test_regional_now_and_past(fake: tuple[FakeUkCarbonIntensity, FakeServer]) -> None:
    api, server = fake
    src = source(server)
    try:
        now = src.value("regionid:13", signal=CarbonSignal.AVERAGE)
        past = src.value("regionid:13", signal=CarbonSignal.AVERAGE,
                         at=dt.datetime(2026, 11, 26, 8, 10, tzinfo=dt.UTC))
    finally:
        src.close()
    assert now.value == london(NOW) and now.detail.startswith("forecast")
    assert past.value == london(dt.datetime(2026, 11, 26, 8, tzinfo=dt.UTC))
    assert api.calls("/regional/regionid/13")
    assert api.calls("/regional/intensity/2026-11-26T07:40Z/2026-11-26T08:40Z/regionid/13")


def test_forecast_national_and_regional(fake: tuple[FakeUkCarbonIntensity,
                                                    FakeServer]) -> None:
    api, server = fake
    src = source(server)
    end = NOW + dt.timedelta(hours=3)
    try:
        national = src.forecast("national", signal=CarbonSignal.AVERAGE, start=NOW, end=end)
        regional = src.forecast("regionid:13", signal=CarbonSignal.AVERAGE, start=NOW, end=end)
    finally:
        src.close()
    assert national.step_s == 1800 and national.points[0].at == dt.datetime(
        2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    assert len(national.points) == 7  # 12:30 .. 15:30
    assert [p.value for p in regional.points][:2] == [162.0, 163.0]  # 12:30, 13:00
    assert api.calls("/intensity/2026-11-27T12:40Z/fw48h")
    assert api.calls("/regional/intensity/2026-11-27T12:40Z/fw48h/regionid/13")


def test_zone_mapping_gb_only() -> None:
    src = UkCarbonIntensitySource(base_url="http://127.0.0.1:9")
    try:
        assert src.zone_for(make_region("gcp", "europe-west2", country="GB",
                                        location="London")) == "regionid:13"
        assert src.zone_for(make_region("azure", "ukwest", country="GB",
                                        location="Cardiff")) == "regionid:7"
        assert src.zone_for(make_region("aws", "eu-x", country="GB",
                                        location="Somewhere")) == "national"
        assert src.zone_for(make_region("aws", "us-east-1")) is None
        with pytest.raises(NoSignalDataError, match="regionid"):
            src.value("london", signal=CarbonSignal.AVERAGE)
    finally:
        src.close()


def test_errors(fake: tuple[FakeUkCarbonIntensity, FakeServer]) -> None:
    api, server = fake
    src = source(server, timeout_s=0.2)
    try:
        with pytest.raises(NoSignalDataError, match="400"):
            src.value("regionid:5", signal=CarbonSignal.AVERAGE)
        api.malformed = True
        with pytest.raises(SignalPayloadError):
            src.value("national", signal=CarbonSignal.AVERAGE)
        api.malformed, api.fail_status = False, 502
        with pytest.raises(SignalUnavailableError):
            src.value("national", signal=CarbonSignal.AVERAGE)
        api.fail_status, api.delay_s = None, 2.0
        with pytest.raises(SignalTimeoutError):
            src.forecast("national", signal=CarbonSignal.AVERAGE, start=NOW, end=NOW)
    finally:
        src.close()
