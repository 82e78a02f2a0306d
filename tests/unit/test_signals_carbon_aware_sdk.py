"""Carbon Aware SDK Web API source against a local fake (EmissionsData / EmissionsForecastDTO)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import (
    ConfigError,
    NoSignalDataError,
    SignalPayloadError,
    SignalTimeoutError,
    SignalUnavailableError,
)
from greenplace.scheduler.signals.base import EmissionBasis
from greenplace.scheduler.signals.carbon_aware_sdk import (
    CarbonAwareSdkSource,
    _minutes,
    parse_locations,
)
from greenplace.scheduler.signals.chain import SignalChain
from greenplace.scheduler.signals.config import SignalSettings, build_sources
from tests.conftest import ACCELERATORS, make_region
from tests.fakes_signals.carbon_aware_sdk import FakeCarbonAwareSdk
from tests.fakes_signals.server import FakeServer

NOW = dt.datetime(2026, 11, 27, 12, 32, tzinfo=dt.UTC)


def rating(t: dt.datetime) -> float:
    return 400.0 + t.hour + t.minute / 100.0


@pytest.fixture
def fake() -> Iterator[tuple[FakeCarbonAwareSdk, FakeServer]]:
    api = FakeCarbonAwareSdk(now=NOW, rating={"eastus": rating}, empty={"westus"},
                             forecast_hours=6)
    with FakeServer(api) as server:
        yield api, server


def source(server: FakeServer, *, signal: CarbonSignal = CarbonSignal.MARGINAL,
           timeout_s: float = 2.0) -> CarbonAwareSdkSource:
    return CarbonAwareSdkSource(base_url=server.url, signal=signal, timeout_s=timeout_s,
                                clock=lambda: NOW, locations={"aws:us-east-1": "eastus"})


def test_bylocations_latest_point(fake: tuple[FakeCarbonAwareSdk, FakeServer]) -> None:
    api, server = fake
    src = source(server)
    try:
        value = src.value("eastus", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()
    assert value.observed_at == dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    assert value.value == rating(value.observed_at) and value.signal is CarbonSignal.MARGINAL
    call = api.calls("/emissions/bylocations")[0]
    assert call.query["location"] == ["eastus"]
    assert (call.arg("time"), call.arg("toTime")) == ("2026-11-27T11:32:00Z",
                                                      "2026-11-27T12:32:00Z")


def test_forecast_current(fake: tuple[FakeCarbonAwareSdk, FakeServer]) -> None:
    _, server = fake
    src = source(server, signal=CarbonSignal.AVERAGE)
    try:
        forecast = src.forecast("eastus", signal=CarbonSignal.AVERAGE, start=NOW,
                                end=NOW + dt.timedelta(hours=2))
    finally:
        src.close()
    assert forecast.signal is CarbonSignal.AVERAGE and forecast.step_s == 300
    assert forecast.points[0].at == dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    assert forecast.issued_at == dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
    assert len(forecast.points) == 25


def test_signal_type_comes_from_config_and_is_never_mixed() -> None:
    src = CarbonAwareSdkSource(base_url="http://127.0.0.1:9", signal=CarbonSignal.AVERAGE)
    try:
        assert src.signal_types == {CarbonSignal.AVERAGE}
        with pytest.raises(NoSignalDataError):
            src.value("eastus", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()
    with pytest.raises(ValueError, match="not a CFE"):
        CarbonAwareSdkSource(base_url="http://127.0.0.1:9", signal=CarbonSignal.CFE)


def test_locations_azure_by_name_others_by_table() -> None:
    src = CarbonAwareSdkSource(base_url="http://127.0.0.1:9", signal=CarbonSignal.MARGINAL,
                               locations={"aws:us-east-1": "eastus"})
    try:
        assert src.zone_for(make_region("azure", "northeurope")) == "northeurope"
        assert src.zone_for(make_region("aws", "us-east-1")) == "eastus"
        assert src.zone_for(make_region("gcp", "us-central1")) is None
    finally:
        src.close()


def test_timespan_durations() -> None:
    assert _minutes("00:05:00") == 5
    assert _minutes("1.02:00:30") == 1440 + 120 + 0.5
    assert _minutes(30) == 30
    with pytest.raises(ValueError):
        _minutes("five minutes")


def test_no_content_unknown_location_and_errors(fake: tuple[FakeCarbonAwareSdk,
                                                            FakeServer]) -> None:
    api, server = fake
    src = source(server, timeout_s=0.2)
    try:
        with pytest.raises(NoSignalDataError, match="204"):
            src.value("westus", signal=CarbonSignal.MARGINAL)
        with pytest.raises(NoSignalDataError, match="LocationConversionException|400"):
            src.value("nowhere", signal=CarbonSignal.MARGINAL)
        api.malformed = True
        with pytest.raises(SignalPayloadError):
            src.value("eastus", signal=CarbonSignal.MARGINAL)
        api.malformed, api.fail_status = False, 500
        with pytest.raises(SignalUnavailableError, match="500"):
            src.forecast("eastus", signal=CarbonSignal.MARGINAL, start=NOW, end=NOW)
        api.fail_status, api.delay_s = None, 2.0
        with pytest.raises(SignalTimeoutError):
            src.value("eastus", signal=CarbonSignal.MARGINAL)
    finally:
        src.close()


def test_location_map_signal_and_basis_come_from_configuration(
    fake: tuple[FakeCarbonAwareSdk, FakeServer],
) -> None:
    api, server = fake
    regions = (
        make_region("aws", "us-east-1", em_zone="US-MIDA-PJM"),
        make_region("gcp", "europe-west4", country="NL", continent="europe", em_zone="NL"),
        make_region("azure", "eastus", em_zone="US-MIDA-PJM"),
        make_region("azure", "westeurope", country="NL", continent="europe", em_zone="NL"),
    )
    catalog = Catalog.build(regions, ACCELERATORS, ())
    api.rating["westeurope"] = lambda t: 222.0
    env = {"GREENPLACE_SIGNAL_SOURCES": "carbon-aware-sdk",
           "GREENPLACE_CARBON_AWARE_SDK_URL": server.url,
           "GREENPLACE_CARBON_AWARE_SDK_SIGNAL": "average",
           "GREENPLACE_CARBON_AWARE_SDK_LOCATIONS":
               "aws:us-east-1=eastus, gcp:europe-west4=westeurope, azure:eastus=westeurope"}
    sources, unconfigured = build_sources(SignalSettings.from_env(env), catalog)
    [src] = [s for s in sources if s.name == "carbon-aware-sdk"]
    try:
        assert unconfigured == {}
        assert src.signal_types == {CarbonSignal.AVERAGE}
        # an average from the SDK's Electricity Maps data source: lifecycle by default
        assert src.emission_basis == {CarbonSignal.AVERAGE: EmissionBasis.LIFECYCLE}
        zones = [src.zone_for(r) for r in regions]
        assert zones == ["eastus", "westeurope", "westeurope", "westeurope"]
        chain = SignalChain([src], clock=lambda: NOW)
        gcp = chain.value(regions[1], signal=CarbonSignal.AVERAGE)
        aws = chain.value(regions[0], signal=CarbonSignal.AVERAGE)
    finally:
        src.close()
    assert gcp.value is not None and gcp.value.value == 222.0
    assert gcp.value.signal is CarbonSignal.AVERAGE and "lifecycle" in gcp.value.detail
    assert aws.value is not None and aws.value.value == rating(aws.value.observed_at)
    assert [c.query["location"] for c in api.calls("/emissions/bylocations")] == [
        ["westeurope"], ["eastus"]]


def test_signal_type_is_required_and_basis_overridable() -> None:
    catalog = Catalog.build((make_region("azure", "eastus"),), ACCELERATORS, ())
    env = {"GREENPLACE_CARBON_AWARE_SDK_URL": "http://127.0.0.1:9"}
    sources, unconfigured = build_sources(SignalSettings.from_env(env), catalog)
    assert "GREENPLACE_CARBON_AWARE_SDK_SIGNAL" in unconfigured["carbon-aware-sdk"]
    assert all(s.name != "carbon-aware-sdk" for s in sources)
    env |= {"GREENPLACE_CARBON_AWARE_SDK_SIGNAL": "marginal"}
    sources, _ = build_sources(SignalSettings.from_env(env), catalog)
    [src] = [s for s in sources if s.name == "carbon-aware-sdk"]
    assert src.emission_basis == {CarbonSignal.MARGINAL: EmissionBasis.DIRECT}
    src.close()
    env |= {"GREENPLACE_CARBON_AWARE_SDK_SIGNAL": "average",
            "GREENPLACE_CARBON_AWARE_SDK_BASIS": "direct"}
    sources, _ = build_sources(SignalSettings.from_env(env), catalog)
    [src] = [s for s in sources if s.name == "carbon-aware-sdk"]
    assert src.emission_basis == {CarbonSignal.AVERAGE: EmissionBasis.DIRECT}
    src.close()
    with pytest.raises(ConfigError, match="GREENPLACE_CARBON_AWARE_SDK_LOCATIONS.*CLOUD:REGION"):
        SignalSettings.from_env({"GREENPLACE_CARBON_AWARE_SDK_LOCATIONS": "us-east-1=eastus"})
    assert parse_locations('{"gcp:us-central1": "centralus"}') == {"gcp:us-central1": "centralus"}
