"""Signal settings from the environment, the sources they build, the static source and cache."""

from __future__ import annotations

import datetime as dt

import pytest

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import ConfigError, NoSignalDataError
from greenplace.scheduler.signals.base import (
    Forecast,
    SignalPoint,
    SignalSource,
    SignalValue,
    make_forecast,
)
from greenplace.scheduler.signals.cache import MemoryCache
from greenplace.scheduler.signals.chain import SignalChain
from greenplace.scheduler.signals.config import SOURCE_NAMES, SignalSettings, build_sources
from greenplace.scheduler.signals.static import StaticSource


def test_defaults_without_environment(small_catalog: Catalog) -> None:
    settings = SignalSettings.from_env({})
    assert settings.sources == SOURCE_NAMES and settings.timeout_s == 5.0
    sources, unconfigured = build_sources(settings, small_catalog)
    assert [s.name for s in sources] == ["uk-carbon-intensity", "static"]
    assert set(unconfigured) == {"electricitymaps", "watttime", "carbon-aware-sdk"}
    assert "ELECTRICITYMAPS_API_KEY" in unconfigured["electricitymaps"]
    assert all(isinstance(s, SignalSource) for s in sources)
    for s in sources:
        s.close()


def test_environment_configures_sources_and_hides_secrets(small_catalog: Catalog) -> None:
    env = {
        "GREENPLACE_SIGNAL_SOURCES": "watttime, electricitymaps",
        "ELECTRICITYMAPS_API_KEY": "em-secret-123", "WATTTIME_USERNAME": "me",
        "WATTTIME_PASSWORD": "wt-secret-456", "GREENPLACE_SIGNAL_TIMEOUT_S": "1.5",
        "GREENPLACE_CARBON_AWARE_SDK_URL": "http://127.0.0.1:9",
    }
    settings = SignalSettings.from_env(env)
    assert settings.sources == ("watttime", "electricitymaps", "static")  # static appended
    assert "em-secret-123" not in repr(settings) and "wt-secret-456" not in repr(settings)
    chain = SignalChain.from_settings(settings, small_catalog, cache=MemoryCache())
    with chain:
        assert [s.name for s in chain.sources] == ["watttime", "electricitymaps", "static"]
        assert all("secret" not in repr(s) for s in chain.sources)


@pytest.mark.parametrize(("env", "variable"), [
    ({"GREENPLACE_SIGNAL_SOURCES": "electricitymap,static"}, "GREENPLACE_SIGNAL_SOURCES"),
    ({"GREENPLACE_SIGNAL_TIMEOUT_S": "-1"}, "GREENPLACE_SIGNAL_TIMEOUT_S"),
    ({"GREENPLACE_CARBON_AWARE_SDK_SIGNAL": "cfe"}, "GREENPLACE_CARBON_AWARE_SDK_SIGNAL"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable) as info:
        SignalSettings.from_env(env)
    assert "To fix" in str(info.value)


def test_static_source_returns_catalog_figures_by_type(small_catalog: Catalog) -> None:
    src = StaticSource(small_catalog)
    value = src.value("aws:us-east-1", signal=CarbonSignal.MARGINAL)
    assert value.value == 600.0 and value.observed_at == dt.datetime(2025, 12, 31,
                                                                     tzinfo=dt.UTC)
    assert src.value("gcp:europe-north1", signal=CarbonSignal.CFE).value == 90.0
    with pytest.raises(NoSignalDataError):
        src.value("gcp:europe-north1", signal=CarbonSignal.MARGINAL)
    flat = src.forecast("gcp:us-central1", signal=CarbonSignal.AVERAGE,
                        start=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                        end=dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    assert [p.value for p in flat.points] == [400.0] and flat.step_s == 86400
    assert src.forecast_types == frozenset()  # never used for temporal shifting


def test_values_and_forecasts_round_trip_json() -> None:
    t = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    value = SignalValue(source="s", zone="Z", signal=CarbonSignal.CFE, value=12.5,
                        observed_at=t, estimated=True, detail="d")
    assert SignalValue.from_json(value.to_json()) == value
    forecast = Forecast(source="s", zone="Z", signal=CarbonSignal.AVERAGE, issued_at=t,
                        points=(SignalPoint(at=t, value=1.0),), step_s=60.0)
    assert Forecast.from_json(forecast.to_json()) == forecast


def test_make_forecast_keeps_the_point_in_force_at_start() -> None:
    t0 = dt.datetime(2026, 11, 27, 12, tzinfo=dt.UTC)
    points = [(t0 + dt.timedelta(hours=h), float(h)) for h in (3, 0, 1, 2, 1)]
    f = make_forecast(source="s", zone="Z", signal=CarbonSignal.AVERAGE, issued_at=t0,
                      points=points, start=t0 + dt.timedelta(minutes=30),
                      end=t0 + dt.timedelta(hours=2), default_step_s=60)
    assert [p.at.hour for p in f.points] == [12, 13] and f.step_s == 3600
    with pytest.raises(NoSignalDataError):
        make_forecast(source="s", zone="Z", signal=CarbonSignal.AVERAGE, issued_at=t0,
                      points=points, start=t0 + dt.timedelta(hours=9),
                      end=t0 + dt.timedelta(hours=8), default_step_s=60)


def test_memory_cache_ttl() -> None:
    now = [0.0]
    cache = MemoryCache(monotonic=lambda: now[0], max_entries=2)
    cache.set("a", "1", ttl_s=10)
    assert cache.get("a") == "1"
    now[0] = 10.0
    assert cache.get("a") is None
    cache.set("b", "2", ttl_s=10)
    cache.set("c", "3", ttl_s=10)
    cache.set("d", "4", ttl_s=10)  # over max_entries: the oldest goes
    assert len(cache) == 2 and cache.get("d") == "4"
    cache.set("e", "5", ttl_s=0)
    assert cache.get("e") is None
