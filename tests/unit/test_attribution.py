"""A measured run is charged at the grid intensity of its own hours (live signals), through
the real signal chain against the Electricity Maps fake (history and past endpoints)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from greenplace.providers.base import InstanceHandle, Placement
from greenplace.scheduler.attribution import _hours, attribute, run_intensity
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.service import job_view, pue_lookup
from greenplace.scheduler.signals.cache import MemoryCache
from greenplace.scheduler.signals.chain import SignalChain
from greenplace.scheduler.signals.config import SignalSettings
from greenplace.scheduler.store import (
    JobStore,
    Move,
    NewJob,
    RunHour,
    encode_fields,
    iso,
    new_job_id,
    pack_run_hours,
    unpack_run_hours,
)
from tests.fakes_signals.electricitymaps import FakeElectricityMaps
from tests.fakes_signals.server import FakeServer
from tests.redisproc import RedisServer
from tests.unit.test_calibration import job

NOW = dt.datetime.now(dt.UTC).replace(minute=40, second=0, microsecond=0)
START = NOW - dt.timedelta(hours=3, minutes=10)  # xx:30, three hours ago
END = START + dt.timedelta(hours=1, minutes=45)  # two hours and a quarter later
# the grid of zone DE by the hour: 100, 200, then 400 g/kWh
CURVE = {START.replace(minute=0): 100.0, START.replace(minute=0) + dt.timedelta(hours=1): 200.0,
         START.replace(minute=0) + dt.timedelta(hours=2): 400.0}


def test_the_hours_a_run_touched_and_its_seconds_in_each() -> None:
    start = dt.datetime(2026, 12, 1, 10, 30, tzinfo=dt.UTC)
    hours = _hours(start, start + dt.timedelta(hours=1, minutes=45))
    assert [(t.strftime("%H:%M"), s) for t, s in hours] == [
        ("10:30", 1800.0), ("11:00", 3600.0), ("12:00", 900.0)]
    assert len(_hours(start, start + dt.timedelta(days=30))) == 72  # sampled, not 720 calls


@pytest.fixture
def chain(monkeypatch: pytest.MonkeyPatch) -> Iterator[SignalChain]:
    api = FakeElectricityMaps(
        api_key="em-key", now=NOW,
        intensity={"DE": lambda t: CURVE.get(t.replace(minute=0, second=0, microsecond=0),
                                             999.0)})
    with FakeServer(api) as fake:
        monkeypatch.setenv("ELECTRICITYMAPS_API_KEY", "em-key")
        monkeypatch.setenv("GREENPLACE_ELECTRICITYMAPS_URL", f"{fake.url}/v3")
        monkeypatch.setenv("GREENPLACE_SIGNAL_SOURCES", "electricitymaps")
        live = SignalChain.from_settings(SignalSettings.from_env(), load_catalog(),
                                         cache=MemoryCache())
        try:
            yield live
        finally:
            live.close()


def test_the_runs_intensity_is_weighted_by_its_time_in_each_hour(chain: SignalChain) -> None:
    region = load_catalog().region("aws:eu-central-1")  # zone DE
    found = run_intensity(chain, region, start=START, end=END)
    assert found is not None
    # 30 min at 100, 60 min at 200, 15 min at 400: (3,000 + 12,000 + 6,000) / 105 = 200
    assert found.g_per_kwh == pytest.approx(200.0)
    assert found.basis == "hourly grid average over the run from electricitymaps (3 hour(s))"
    hour0 = START.replace(minute=0)
    assert [(h.start, h.seconds, h.g_per_kwh, h.source) for h in found.hours] == [
        (hour0, 1800.0, 100.0, "electricitymaps"),
        (hour0 + dt.timedelta(hours=1), 3600.0, 200.0, "electricitymaps"),
        (hour0 + dt.timedelta(hours=2), 900.0, 400.0, "electricitymaps")]


def test_the_hourly_series_is_stored_small_and_read_back_with_its_gaps() -> None:
    first = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    hours = [RunHour(start=first + dt.timedelta(hours=k), seconds=3600.0,
                     g_per_kwh=None if k % 5 == 4 else 123.456 + k,
                     source=None if k % 5 == 4 else ("watttime" if k % 2 else "electricitymaps"))
             for k in range(72)]
    text = pack_run_hours(hours)
    assert len(text) < 1600  # attribution's 72-hour cap: a bounded field in the job hash
    assert len(pack_run_hours(hours[:4])) < 200  # a run of a few hours: a few hundred bytes
    back = unpack_run_hours(text)
    assert [h.start for h in back] == [h.start for h in hours]
    assert back[4].g_per_kwh is None and back[4].source is None
    assert back[1].g_per_kwh == 124.5 and back[1].source == "watttime"  # to 0.1 g/kWh
    assert back[2].source == "electricitymaps" and back[2].seconds == 3600.0
    assert pack_run_hours([]) == "" and unpack_run_hours("") == ()


def test_a_measured_job_is_charged_at_its_hours_and_says_so(
        chain: SignalChain, server: RedisServer) -> None:
    server.client().flushall()
    store = JobStore(server.client())
    (job_id,) = store.create([NewJob(job_id=new_job_id(), job=job())])
    catalog = load_catalog()
    region = catalog.region("aws:eu-central-1")
    handle = InstanceHandle(provider="local-sim", cloud="aws", region="eu-central-1",
                            instance_id="i-1")
    placement = Placement(cloud="aws", region="eu-central-1", instance_type="p5.48xlarge",
                          accelerator="H100", accelerator_count=8, spot=False,
                          price_usd_per_hour=55.0)
    decision = {"cloud": "aws", "region": "eu-central-1", "energy_kwh": 30.0,
                "co2e_kg": 10.26, "intensity_g_per_kwh": 342.0, "cost_usd": 100.0,
                "signal_source": "static:catalog 2025"}
    store.transitions(job_id, [
        Move(to="PLACED", message="p", fields=encode_fields(
            decision=decision, placements=[placement])),
        Move(to="DISPATCHING", message="d", fields=encode_fields(attempt=1, target=0)),
        Move(to="RUNNING", message="r", fields=encode_fields(handle=handle))])
    store.record_telemetry(job_id, at=END, exit_code=0, energy_kwh=20.0,
                           measurement={"started_at": iso(START), "ended_at": iso(END)})
    before = job_view(store.get(job_id), pue_of=pue_lookup(catalog))
    assert before["co2e_kg_measured"] == pytest.approx(20.0 * region.pue * 342.0 / 1000)
    assert "no hourly history" in before["co2e_kg_measured_basis"]

    found = attribute(store, job_id, chain=chain, region=region)
    assert found is not None and found.g_per_kwh == pytest.approx(200.0)
    after = job_view(store.get(job_id), pue_of=pue_lookup(catalog))
    assert after["co2e_kg_measured"] == pytest.approx(20.0 * region.pue * 200.0 / 1000)
    assert "hourly grid average over the run from electricitymaps" in \
        after["co2e_kg_measured_basis"]
    assert before["run_intensity_series"] is None
    assert after["intensity_g_per_kwh_estimated"] == 342.0
    assert after["run_intensity_g_per_kwh"] == pytest.approx(200.0)
    assert [(h["start"], h["seconds"], h["g_per_kwh"]) for h in after["run_intensity_series"]] \
        == [(iso(START.replace(minute=0) + dt.timedelta(hours=k)), s, g)
            for k, (s, g) in enumerate([(1800.0, 100.0), (3600.0, 200.0), (900.0, 400.0)])]
    # without a live chain (static signals) nothing changes
    assert attribute(store, job_id, chain=None, region=region) is None
    # pruned with the job: nothing of it is left in Redis
    store.transitions(job_id, [Move(to="SUCCEEDED", message="done")])
    store.terminated(job_id, message="deleted")
    assert [j.job_id for j in store.prune(older_than_s=0, now=END + dt.timedelta(days=1)).pruned
            ] == [job_id]
    assert not [k for k in server.client().keys("*") if job_id in str(k)]
