"""The fallback chain, its cache and back-off, and live RegionSignals for placement."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from greenplace.policies.model import CarbonSignal, Policy
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.jobs import JobSpec, resolve_job
from greenplace.scheduler.placement import Placer
from greenplace.scheduler.signals.base import CATALOG_BASIS, EmissionBasis
from greenplace.scheduler.signals.cache import MemoryCache, RedisCache, SignalCache
from greenplace.scheduler.signals.chain import (
    CACHED,
    DOWN,
    MALFORMED,
    NOT_CONFIGURED,
    NOT_IN_PLAN,
    OK,
    OTHER_BASIS,
    RATE_LIMITED,
    TIMEOUT,
    TYPE_NOT_OFFERED,
    WRONG_ZONE,
    ChainForecasts,
    SignalChain,
    build_region_signals,
    place_live,
)
from greenplace.scheduler.signals.electricitymaps import ElectricityMapsSource
from greenplace.scheduler.signals.static import StaticSource
from greenplace.scheduler.signals.uk_carbon_intensity import UkCarbonIntensitySource
from greenplace.scheduler.signals.watttime import WattTimeSource
from tests.conftest import ACCELERATORS, make_offer, make_region
from tests.fakes_signals.electricitymaps import FakeElectricityMaps
from tests.fakes_signals.server import FakeServer
from tests.fakes_signals.uk_carbon_intensity import FakeUkCarbonIntensity
from tests.fakes_signals.watttime import FakeWattTime

NOW = dt.datetime(2026, 11, 27, 12, 30, tzinfo=dt.UTC)
EM_KEY = "em-key-chain-test"


@pytest.fixture
def catalog() -> Catalog:
    regions = (
        make_region("gcp", "europe-west3", country="DE", continent="europe", em_zone="DE",
                    watttime_region="DE", grid_intensity_avg_g_per_kwh=350.0, grid_cfe_pct=60.0,
                    provider_cfe_pct=68.0),
        make_region("aws", "eu-west-2", country="GB", continent="europe", location="London",
                    em_zone="GB", watttime_region="UK", grid_intensity_avg_g_per_kwh=200.0,
                    grid_cfe_pct=55.0),
        make_region("aws", "us-west-1", em_zone="US-CAL-CISO", watttime_region="CAISO_NORTH",
                    grid_intensity_avg_g_per_kwh=250.0, grid_intensity_marginal_g_per_kwh=400.0),
        make_region("azure", "eastus", em_zone="US-MIDA-PJM", watttime_region="PJM_DC",
                    grid_intensity_avg_g_per_kwh=380.0, grid_cfe_pct=40.0),
    )
    offers = (
        make_offer("gcp", "europe-west3", "a2-highgpu-8g", "A100", 8, 30.0),
        make_offer("aws", "eu-west-2", "p4d.24xlarge", "A100", 8, 30.0),
        make_offer("aws", "us-west-1", "p4d.24xlarge", "A100", 8, 30.0),
        make_offer("azure", "eastus", "Standard_ND96asr_v4", "A100", 8, 30.0),
    )
    return Catalog.build(regions, ACCELERATORS, offers)


class Ticker:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def em() -> Iterator[tuple[FakeElectricityMaps, FakeServer]]:
    api = FakeElectricityMaps(
        api_key=EM_KEY, now=NOW,
        intensity={"DE": lambda t: 120.0, "US-CAL-CISO": lambda t: 90.0 + t.hour},
        fossil_free_pct={"DE": lambda t: 70.0, "US-CAL-CISO": lambda t: 50.0})
    with FakeServer(api) as server:
        yield api, server


@pytest.fixture
def uk() -> Iterator[tuple[FakeUkCarbonIntensity, FakeServer]]:
    api = FakeUkCarbonIntensity(now=NOW, regional={13: lambda t: 150.0})
    with FakeServer(api) as server:
        yield api, server


@pytest.fixture
def wt() -> Iterator[tuple[FakeWattTime, FakeServer]]:
    api = FakeWattTime(now=NOW, moer_lbs_per_mwh={"CAISO_NORTH": lambda t: 1000.0})
    with FakeServer(api) as server:
        yield api, server


def make_chain(catalog: Catalog, *, em: FakeServer | None = None, uk: FakeServer | None = None,
               wt: FakeServer | None = None, timeout_s: float = 2.0,
               ticker: Ticker | None = None, cache: SignalCache | None = None,
               bases: dict[CarbonSignal, EmissionBasis] | None = None,
               em_basis: EmissionBasis = EmissionBasis.LIFECYCLE) -> SignalChain:
    sources: list = []
    unconfigured = {}
    if em is not None:
        sources.append(ElectricityMapsSource(api_key=EM_KEY, base_url=f"{em.url}/v3",
                                             timeout_s=timeout_s, clock=lambda: NOW,
                                             emission_factor=em_basis))
    else:
        unconfigured["electricitymaps"] = "set ELECTRICITYMAPS_API_KEY"
    if wt is not None:
        sources.append(WattTimeSource(username="wt-user", password="wt-secret-password",
                                      base_url=wt.url, timeout_s=timeout_s, clock=lambda: NOW))
    if uk is not None:
        sources.append(UkCarbonIntensitySource(base_url=uk.url, timeout_s=timeout_s,
                                               clock=lambda: NOW))
    sources.append(StaticSource(catalog))
    order = ["electricitymaps", "watttime", "uk-carbon-intensity", "static"]
    ticker = ticker or Ticker()
    return SignalChain(sources, order=order, unconfigured=unconfigured,
                       cache=cache or MemoryCache(monotonic=ticker), clock=lambda: NOW,
                       monotonic=ticker, down_for_s=60.0,
                       bases=bases if bases is not None else CATALOG_BASIS)


def outcomes(result) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(a.source, a.outcome) for a in result.attempts]


def test_fallback_order_per_region(catalog: Catalog, em, uk) -> None:  # type: ignore[no-untyped-def]
    with make_chain(catalog, em=em[1], uk=uk[1]) as chain:
        de = chain.value(catalog.region("gcp:europe-west3"), signal=CarbonSignal.AVERAGE)
        gb = chain.value(catalog.region("aws:eu-west-2"), signal=CarbonSignal.AVERAGE)
        pjm = chain.value(catalog.region("azure:eastus"), signal=CarbonSignal.AVERAGE)
    assert de.value.source == "electricitymaps" and de.value.value == 120.0
    assert outcomes(de) == [("electricitymaps", OK)]
    # EM has no GB data in this fake (404); the GB API's figures are direct (operational),
    # not the chain's lifecycle basis, so it is passed over and the catalog answers
    assert gb.value.source == "static" and gb.value.value == 200.0
    assert outcomes(gb)[0] == ("electricitymaps", "no data")
    assert ("uk-carbon-intensity", OTHER_BASIS) in outcomes(gb)
    assert pjm.value.source == "static" and pjm.value.value == 380.0 and not pjm.live
    assert ("uk-carbon-intensity", OTHER_BASIS) in outcomes(pjm)  # asked for no basis's zone


def test_signal_types_are_never_mixed(catalog: Catalog, em, wt) -> None:  # type: ignore[no-untyped-def]
    with make_chain(catalog, em=em[1], wt=wt[1]) as chain:
        ciso = chain.value(catalog.region("aws:us-west-1"), signal=CarbonSignal.MARGINAL)
        pjm = chain.value(catalog.region("azure:eastus"), signal=CarbonSignal.MARGINAL)
        cfe = chain.value(catalog.region("aws:us-west-1"), signal=CarbonSignal.CFE)
        pjm_cfe = chain.value(catalog.region("azure:eastus"), signal=CarbonSignal.CFE)
    assert ciso.value.source == "watttime" and ciso.value.signal is CarbonSignal.MARGINAL
    assert ("electricitymaps", TYPE_NOT_OFFERED) in outcomes(ciso)
    # WattTime's plan has no PJM_DC (403): the static marginal figure, unknown here, is None
    assert pjm.value is None
    assert outcomes(pjm)[-1] == ("static", "no data")
    assert cfe.value.source == "electricitymaps" and cfe.value.value == 50.0
    # No live source has PJM's CFE: the catalog's annual grid CFE, the same type, is used.
    assert outcomes(pjm_cfe) == [("electricitymaps", "no data"), ("watttime", TYPE_NOT_OFFERED),
                                 ("uk-carbon-intensity", NOT_CONFIGURED), ("static", "ok")]
    assert pjm_cfe.value.source == "static" and pjm_cfe.value.value == 40.0
    assert em[0].calls("carbon-intensity") == []  # never asked for an average


def test_other_basis_is_skipped_never_mixed(catalog: Catalog, em, uk) -> None:  # type: ignore[no-untyped-def]
    london = catalog.region("aws:eu-west-2")
    with make_chain(catalog, em=em[1], uk=uk[1]) as chain:  # lifecycle, the catalog's basis
        lifecycle = chain.value(london, signal=CarbonSignal.AVERAGE)
        forecast = chain.forecast(london, signal=CarbonSignal.AVERAGE, start=NOW,
                                  end=NOW + dt.timedelta(hours=3))
    assert lifecycle.value.source == "static"
    skip = next(a for a in lifecycle.attempts if a.source == "uk-carbon-intensity")
    assert skip.outcome == OTHER_BASIS and "direct (operational)" in skip.detail
    assert forecast.forecast is None and ("uk-carbon-intensity", OTHER_BASIS) in outcomes(forecast)
    assert uk[0].requests == []  # never asked
    direct = {**CATALOG_BASIS, CarbonSignal.AVERAGE: EmissionBasis.DIRECT}
    with make_chain(catalog, em=em[1], uk=uk[1], bases=direct,
                    em_basis=EmissionBasis.DIRECT) as chain:
        gb = chain.value(london, signal=CarbonSignal.AVERAGE)
        de = chain.value(catalog.region("gcp:europe-west3"), signal=CarbonSignal.AVERAGE)
        pjm = chain.value(catalog.region("azure:eastus"), signal=CarbonSignal.AVERAGE)
        notes = chain.basis_notes([CarbonSignal.AVERAGE])
    assert gb.value.source == "uk-carbon-intensity" and gb.value.value == 150.0
    # Electricity Maps is asked for direct figures when that is the basis
    assert de.value.source == "electricitymaps" and de.value.value == 120.0 * 0.8
    assert em[0].calls("/latest")[-1].arg("emissionFactorType") == "direct"
    # the catalog's lifecycle averages are another basis now: unknown, not mixed in
    assert pjm.value is None and outcomes(pjm)[-1] == ("static", OTHER_BASIS)
    assert notes and "static (lifecycle) is skipped for average" in notes[0]


def test_403_skips_one_zone_and_endpoint_only(catalog: Catalog, em) -> None:  # type: ignore[no-untyped-def]
    api, server = em
    api.plan_zones = {"DE"}  # a free key: one zone and no forecast
    api.forecast_in_plan = False
    ciso, de = catalog.region("aws:us-west-1"), catalog.region("gcp:europe-west3")
    with make_chain(catalog, em=server) as chain:
        other = chain.value(ciso, signal=CarbonSignal.AVERAGE)
        own = chain.value(de, signal=CarbonSignal.AVERAGE)
        fc = chain.forecast(de, signal=CarbonSignal.AVERAGE, start=NOW,
                            end=NOW + dt.timedelta(hours=3))
        cfe = chain.value(de, signal=CarbonSignal.CFE)
        again = chain.value(ciso, signal=CarbonSignal.AVERAGE, at=NOW - dt.timedelta(hours=1))
        fc_again = chain.forecast(de, signal=CarbonSignal.AVERAGE, start=NOW,
                                  end=NOW + dt.timedelta(hours=5))
        latest_again = chain.value(ciso, signal=CarbonSignal.AVERAGE)
    assert outcomes(other)[0] == ("electricitymaps", NOT_IN_PLAN)
    assert "403" in other.attempts[0].detail and other.value.source == "static"
    assert own.value.source == "electricitymaps" and own.value.value == 120.0  # not marked down
    assert outcomes(fc)[0] == ("electricitymaps", NOT_IN_PLAN) and fc.forecast is None
    assert cfe.value.source == "electricitymaps"
    # a past value of the other zone is another endpoint: asked once, also 403
    assert outcomes(again)[0] == ("electricitymaps", NOT_IN_PLAN)
    # the same (zone, endpoint) again is skipped without a request
    assert outcomes(fc_again)[0] == ("electricitymaps", NOT_IN_PLAN)
    assert "earlier 403" in fc_again.attempts[0].detail
    assert outcomes(latest_again)[0] == ("electricitymaps", NOT_IN_PLAN)
    assert len(api.calls("/forecast")) == 1
    assert len([r for r in api.calls("/carbon-intensity/latest")
                if r.arg("zone") == "US-CAL-CISO"]) == 1


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_honours_retry_after(catalog: Catalog, em, form: str,  # type: ignore[no-untyped-def]
                                 caplog: pytest.LogCaptureFixture) -> None:
    api, server = em
    api.fail_status, api.fail_body = 429, {"message": "Too many requests"}
    api.fail_headers = {"Retry-After": "600" if form == "seconds" else
                        email.utils.format_datetime(NOW + dt.timedelta(seconds=600),
                                                    usegmt=True)}
    ticker = Ticker()
    caplog.set_level(logging.WARNING, logger="greenplace.signals")
    de = catalog.region("gcp:europe-west3")
    with make_chain(catalog, em=server, ticker=ticker) as chain:  # down_for_s is 60 s
        first = chain.value(de, signal=CarbonSignal.AVERAGE)
        api.fail_status = None
        ticker.t += 61  # past the fixed back-off, not past Retry-After
        still = chain.value(de, signal=CarbonSignal.AVERAGE)
        ticker.t += 540  # 601 s: past Retry-After
        back = chain.value(de, signal=CarbonSignal.AVERAGE)
    assert outcomes(first)[0] == ("electricitymaps", RATE_LIMITED)
    assert "wait 600 s, until 2026-11-27T12:40:00Z" in first.attempts[0].detail
    assert outcomes(still)[0] == ("electricitymaps", DOWN)
    assert "rate limited" in still.attempts[0].detail
    assert back.value.source == "electricitymaps"
    assert len(api.calls("/latest")) == 2
    assert "left alone for 600 s (until 2026-11-27T12:40:00Z)" in caplog.text


def test_answer_for_another_zone_is_never_scored(catalog: Catalog, em) -> None:  # type: ignore[no-untyped-def]
    api, server = em
    api.answer_as = {"DE": "FR"}
    with make_chain(catalog, em=server) as chain:
        de = chain.value(catalog.region("gcp:europe-west3"), signal=CarbonSignal.AVERAGE)
        ciso = chain.value(catalog.region("aws:us-west-1"), signal=CarbonSignal.AVERAGE)
    assert outcomes(de)[0] == ("electricitymaps", WRONG_ZONE)
    assert "asked for zone DE but the answer is for zone FR" in de.attempts[0].detail
    assert de.value.source == "static" and de.value.value == 350.0
    assert ciso.value.source == "electricitymaps"  # the source stays in use


def test_cache_hit_then_ttl_expiry(catalog: Catalog, em) -> None:  # type: ignore[no-untyped-def]
    api, server = em
    ticker = Ticker()
    with make_chain(catalog, em=server, ticker=ticker) as chain:
        region = catalog.region("gcp:europe-west3")
        chain.value(region, signal=CarbonSignal.AVERAGE)
        second = chain.value(region, signal=CarbonSignal.AVERAGE)
        assert outcomes(second) == [("electricitymaps", CACHED)]
        assert len(api.calls("/latest")) == 1
        ticker.t += 301  # past the 300 s TTL
        third = chain.value(region, signal=CarbonSignal.AVERAGE)
    assert outcomes(third) == [("electricitymaps", OK)]
    assert len(api.calls("/latest")) == 2


def test_down_source_is_skipped_with_one_warning(catalog: Catalog, em, uk,  # type: ignore[no-untyped-def]
                                                 caplog: pytest.LogCaptureFixture) -> None:
    api, server = em
    api.fail_status, api.fail_body = 503, {"message": "maintenance"}
    ticker = Ticker()
    caplog.set_level(logging.WARNING, logger="greenplace.signals")
    with make_chain(catalog, em=server, uk=uk[1], ticker=ticker) as chain:
        first = chain.value(catalog.region("gcp:europe-west3"), signal=CarbonSignal.AVERAGE)
        second = chain.value(catalog.region("aws:eu-west-2"), signal=CarbonSignal.AVERAGE)
        assert len(api.requests) == 1  # left alone after the failure
        ticker.t += 61
        api.fail_status = None
        third = chain.value(catalog.region("gcp:europe-west3"), signal=CarbonSignal.AVERAGE)
    assert outcomes(first)[0] == ("electricitymaps", DOWN) and first.value.source == "static"
    assert outcomes(second)[0] == ("electricitymaps", DOWN)
    assert "earlier failure: down, electricitymaps" in second.attempts[0].detail
    assert second.value.source == "static"
    assert third.value.source == "electricitymaps"
    warnings = [r for r in caplog.records if "electricitymaps skipped" in r.getMessage()]
    assert len(warnings) == 1 and "503" in warnings[0].getMessage()
    assert EM_KEY not in caplog.text


def test_timeouts_cost_one_wait_per_source(catalog: Catalog, em) -> None:  # type: ignore[no-untyped-def]
    api, server = em
    api.delay_s = 3.0
    with make_chain(catalog, em=server, timeout_s=0.3) as chain:
        started = time.monotonic()
        live = build_region_signals(catalog, chain, signal=CarbonSignal.CFE, now=NOW,
                                    max_workers=1)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert all(not any(r.live for r in answer.values()) for answer in live.results)
    first = live.results[0][CarbonSignal.CFE]
    assert ("electricitymaps", TIMEOUT) in outcomes(first)


def test_malformed_answer_falls_back(catalog: Catalog, em, uk) -> None:  # type: ignore[no-untyped-def]
    api, server = em
    api.malformed = True
    with make_chain(catalog, em=server, uk=uk[1]) as chain:
        gb = chain.value(catalog.region("aws:eu-west-2"), signal=CarbonSignal.AVERAGE)
    assert outcomes(gb)[0] == ("electricitymaps", MALFORMED)
    assert gb.value.source == "static"


def test_live_region_signals_and_provenance(catalog: Catalog, em, uk) -> None:  # type: ignore[no-untyped-def]
    with make_chain(catalog, em=em[1], uk=uk[1]) as chain:
        live = build_region_signals(catalog, chain, signal=CarbonSignal.CFE, now=NOW)
    s = live.signals
    keys = [r.key for r in catalog.regions]
    de, gb, ciso, pjm = (keys.index(k) for k in (
        "gcp:europe-west3", "aws:eu-west-2", "aws:us-west-1", "azure:eastus"))
    assert s.grid_average_g_per_kwh[de] == 120.0 and s.cfe_pct[de] == 70.0
    # no live source publishes a provider's CFE: the catalog's, NaN where there is none
    assert s.provider_cfe_pct[de] == 68.0 and np.isnan(s.provider_cfe_pct[gb])
    assert s.source[de] == "electricitymaps (cfe+average, 30 min old)"
    assert s.observed_at[de] == "2026-11-27T12:00:00Z"
    # GB: the GB API is direct, not lifecycle: the catalog's average and annual grid CFE
    assert s.grid_average_g_per_kwh[gb] == 200.0 and s.cfe_pct[gb] == 55.0
    assert "static:catalog 2025" in s.source[gb]
    assert s.grid_average_g_per_kwh[ciso] == 102.0 and s.cfe_pct[ciso] == 50.0
    assert s.grid_average_g_per_kwh[pjm] == 380.0
    assert s.source[pjm] == ("static:catalog 2025 (cfe+average, annual) "
                             "[skipped: electricitymaps no data]")
    assert s.cfe_pct[pjm] == 40.0
    assert live.live_regions == 2
    assert any("2/4 regions" in n for n in live.notes)
    basis = next(n for n in live.notes if n.startswith("emission basis"))
    assert "uk-carbon-intensity (direct (operational)) is skipped for average" in basis


def test_every_live_source_down_places_on_static_and_says_so(catalog: Catalog) -> None:
    from tests.fakes_signals.server import closed_port_url

    dead = closed_port_url()
    sources = [ElectricityMapsSource(api_key=EM_KEY, base_url=f"{dead}/v3", timeout_s=1),
               UkCarbonIntensitySource(base_url=dead, timeout_s=1), StaticSource(catalog)]
    policy = Policy.model_validate({"name": "g", "weights": {"carbon": 1, "cost": 0},
                                    "carbon_signal": "average"})
    job = resolve_job(JobSpec.model_validate({
        "name": "j", "run": "x", "resources": {"accelerators": {"A100": 8}},
        "work": {"hours": 10}}), catalog, policy=policy, where="test")
    chain = SignalChain(sources, order=["electricitymaps", "watttime", "uk-carbon-intensity",
                                        "static"],
                        unconfigured={"watttime": "set WATTTIME_USERNAME and WATTTIME_PASSWORD"})
    with chain:
        [decision] = place_live(catalog, [job], now=NOW, chain=chain)
    static = Placer(catalog).place(job, now=NOW)
    assert decision.summary()["region"] == static.summary()["region"] == "eu-west-2"
    assert decision.summary()["co2e_kg"] == static.summary()["co2e_kg"]
    note = next(n for n in decision.notes if n.startswith("live signals"))
    assert "no live source answered" in note and "static catalog" in note
    assert "electricitymaps: down" in note and "watttime: not configured" in note


def test_live_signals_change_the_placement(catalog: Catalog, em, uk) -> None:  # type: ignore[no-untyped-def]
    policy = Policy.model_validate({"name": "g", "weights": {"carbon": 1, "cost": 0},
                                    "carbon_signal": "average"})
    job = resolve_job(JobSpec.model_validate({
        "name": "j", "run": "x", "resources": {"accelerators": {"A100": 8}},
        "work": {"hours": 10}}), catalog, policy=policy, where="test")
    with make_chain(catalog, em=em[1], uk=uk[1]) as chain:
        [decision] = place_live(catalog, [job], now=NOW, chain=chain)
    s = decision.summary()
    # static would pick London (200 g); live, California is at 102 g and Germany at 120 g
    assert (s["cloud"], s["region"]) == ("aws", "us-west-1")
    assert s["intensity_g_per_kwh"] == 102.0
    assert s["signal_source"] == "electricitymaps (average, 30 min old)"


def test_forecasts_come_only_from_live_sources(catalog: Catalog, em) -> None:  # type: ignore[no-untyped-def]
    with make_chain(catalog, em=em[1]) as chain:
        forecasts = ChainForecasts(chain)
        got = forecasts.forecast(catalog.region("aws:us-west-1"), signal=CarbonSignal.AVERAGE,
                                 start=NOW, end=NOW + dt.timedelta(hours=5))
        none = forecasts.forecast(catalog.region("azure:eastus"), signal=CarbonSignal.AVERAGE,
                                  start=NOW, end=NOW + dt.timedelta(hours=5))
        result = chain.forecast(catalog.region("azure:eastus"), signal=CarbonSignal.AVERAGE,
                                start=NOW, end=NOW + dt.timedelta(hours=5))
        again = chain.forecast(catalog.region("aws:us-west-1"), signal=CarbonSignal.AVERAGE,
                               start=NOW, end=NOW + dt.timedelta(hours=5))
    assert got is not None and got.source == "electricitymaps"
    assert got.points[0].value == 103.0  # 13:00
    assert none is None
    assert ("static", TYPE_NOT_OFFERED) in outcomes(result)
    assert outcomes(again) == [("electricitymaps", CACHED)]
    assert outcomes(result)[0] == ("electricitymaps", "no data")


def test_unconfigured_sources_are_reported(catalog: Catalog) -> None:
    chain = SignalChain([StaticSource(catalog)], order=["electricitymaps", "static"],
                        unconfigured={"electricitymaps": "set ELECTRICITYMAPS_API_KEY"})
    with chain:
        result = chain.value(catalog.region("azure:eastus"), signal=CarbonSignal.AVERAGE)
    assert result.attempts[0].outcome == NOT_CONFIGURED
    assert "ELECTRICITYMAPS_API_KEY" in result.attempts[0].text()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_cache_shares_answers(catalog: Catalog, em, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import redis

    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        client = redis.Redis(unix_socket_path=str(sock))
        api, server = em
        region = catalog.region("gcp:europe-west3")
        with make_chain(catalog, em=server, cache=RedisCache(client)) as first:
            first.value(region, signal=CarbonSignal.AVERAGE)
        with make_chain(catalog, em=server, cache=RedisCache(client)) as other:  # another worker
            again = other.value(region, signal=CarbonSignal.AVERAGE)
        assert outcomes(again) == [("electricitymaps", CACHED)]
        assert len(api.calls("/latest")) == 1
        ttl_ms = client.pttl("gp:signal:v|electricitymaps|average|DE|latest")
        assert 0 < ttl_ms <= 300_000
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_redis_failure_is_a_miss(catalog: Catalog, em, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(unix_socket_path=str(tmp_path / "nothing.sock"),
                         socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    cache = RedisCache(client)
    assert cache.get("k") is None
    cache.set("k", "v", ttl_s=10)  # logged, not raised
    client.close()
