"""Trace readers (Electricity Maps and EIA hourly CSVs), the gap rule, and the backtest."""

from __future__ import annotations

import datetime as dt
import importlib.resources
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from greenplace.policies.model import CarbonSignal, Policy
from greenplace.scheduler.backtest import (
    FORECASTS,
    MAX_GAP_H,
    TraceForecasts,
    backtest,
    read_trace,
)
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.cli import main
from greenplace.scheduler.exceptions import SpecError
from greenplace.scheduler.jobs import JobSpec, resolve_job
from greenplace.scheduler.signals.base import LIVE_FORECAST_HORIZON_H
from tests.conftest import ACCELERATORS, SHARED_DATA, make_offer, make_region

TRACES = importlib.resources.files("greenplace.scheduler.signals.traces")
EM_SAMPLE = "electricitymaps_hourly_2023-06-05_to_11_4zones.csv"
EIA_SAMPLE = "eia_ba_hourly_2022-06-06_to_12_4bas.csv"
EM_HEADER = ("Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
             "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,"
             "Data Source,Data Estimated,Data Estimation Method")
T0 = dt.datetime(2023, 6, 5, tzinfo=dt.UTC)

# The fixtures' 8-GPU offers have 64 vCPUs and 512 GiB: AWS's host model (estimate.py)
# draws 64 x (0.74 + 0.5 x (3.5 - 0.74)) W + 512 GiB x 1.0737 GB x 0.392 W.
AWS_8_GPU_HOST_W = 64 * 2.12 + 512 * 1.073741824 * 0.392


def em_csv(path: Path, series: dict[str, list[float | None]]) -> Path:
    lines = [EM_HEADER]
    for zone, values in series.items():
        for h, v in enumerate(values):
            t = (T0 + dt.timedelta(hours=h)).strftime("%Y-%m-%d %H:%M:%S")
            cell = "" if v is None else f"{v}"
            lines.append(f"{t},X,{zone} name,{zone},{cell},{cell},50,20,test,false,")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def shipped(name: str) -> Path:
    with importlib.resources.as_file(TRACES / name) as path:
        return Path(path)


def test_electricitymaps_sample() -> None:
    trace = read_trace(shipped(EM_SAMPLE))
    assert trace.format == "electricitymaps" and trace.basis == "direct"
    assert trace.zones == ("DE", "GB", "US-CAL-CISO", "US-MIDA-PJM")
    assert trace.hours == 168 and trace.start == T0 and trace.filled == ()
    assert trace.value_at("US-MIDA-PJM", T0) == 308.41  # first PJM row, direct column
    assert "Electricity Maps" in trace.attribution and "ODbL" in trace.attribution
    lca = read_trace(shipped(EM_SAMPLE), basis="lifecycle")
    assert lca.value_at("US-MIDA-PJM", T0) == 379.25


def test_eia_sample_and_its_gaps() -> None:
    trace = read_trace(shipped(EIA_SAMPLE))
    assert trace.format == "eia" and trace.labels == ("BPAT", "CISO", "MISO", "PJM")
    assert trace.zones == ("US-NW-BPAT", "US-CAL-CISO", "US-MIDW-MISO", "US-MIDA-PJM")
    assert "public domain" in trace.attribution
    filled = dict(trace.filled)
    t = dt.datetime(2022, 6, 6, 22, tzinfo=dt.UTC)
    assert filled["US-MIDW-MISO"] == (t, dt.datetime(2022, 6, 9, 20, tzinfo=dt.UTC),
                                      dt.datetime(2022, 6, 9, 21, tzinfo=dt.UTC))
    miso = trace.row("US-MIDW-MISO")
    k = int((t - trace.start).total_seconds() // 3600)
    assert miso[k] == pytest.approx((miso[k - 1] + miso[k + 1]) / 2)  # one-hour gap
    k = int((dt.datetime(2022, 6, 9, 20, tzinfo=dt.UTC) - trace.start).total_seconds() // 3600)
    step = (miso[k + 2] - miso[k - 1]) / 3  # two-hour gap: straight line
    assert miso[k] == pytest.approx(miso[k - 1] + step)
    assert miso[k + 1] == pytest.approx(miso[k - 1] + 2 * step)
    assert not np.isnan(trace.intensity_g_per_kwh).any()


@pytest.mark.skipif(not (SHARED_DATA / "traces").is_dir(), reason="../shared/data is absent")
def test_full_reference_traces_read() -> None:
    for path in sorted((SHARED_DATA / "traces").glob("*.csv")):
        trace = read_trace(path)
        assert trace.hours == 168 and len(trace.zones) >= 3


def test_gap_rule_edges_absent_rows_and_long_gaps(tmp_path: Path) -> None:
    values: list[float | None] = [None, 10.0, None, None, 40.0, 50.0, None]
    trace = read_trace(em_csv(tmp_path / "t.csv", {"ZZ": values, "YY": [1.0] * 7}))
    assert trace.row("ZZ").tolist() == [10.0, 10.0, 20.0, 30.0, 40.0, 50.0, 50.0]
    assert len(dict(trace.filled)["ZZ"]) == 4
    # a zone whose rows stop early: the absent hours are gaps like blank values
    short = read_trace(em_csv(tmp_path / "s.csv", {"ZZ": [5.0] * 4, "YY": [1.0] * 7}))
    assert short.hours == 7 and short.row("ZZ").tolist() == [5.0] * 7
    with pytest.raises(SpecError, match=f"{MAX_GAP_H + 1} missing hours in a row"):
        read_trace(em_csv(tmp_path / "g.csv", {"ZZ": [1.0] + [None] * (MAX_GAP_H + 1) + [2.0]}))


@pytest.mark.parametrize(("text", "message"), [
    ("a,b\n1,2\n", "unknown trace format"),
    (EM_HEADER + "\n2023-06-05 00:30:00,X,n,ZZ,1,1,1,1,s,false,\n", "not on the hour"),
    (EM_HEADER + "\n2023-06-05 00:00:00,X,n,ZZ,1,1,1,1,s,false,\n"
     "2023-06-05 00:00:00,X,n,ZZ,2,2,1,1,s,false,\n", "twice"),
    (EM_HEADER + "\n2023-06-05 00:00:00,X,n,ZZ,-5,1,1,1,s,false,\n", "non-negative"),
    (EM_HEADER + "\nyesterday,X,n,ZZ,5,1,1,1,s,false,\n", "not ISO 8601"),
])
def test_bad_traces_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=message):
        read_trace(path)
    with pytest.raises(SpecError, match="does not exist"):
        read_trace(tmp_path / "missing.csv")


def test_trace_forecasts(tmp_path: Path) -> None:
    values = [float(h) for h in range(72)]
    trace = read_trace(em_csv(tmp_path / "t.csv", {"ZZ": values}))
    region = make_region("aws", "r-z", em_zone="ZZ")
    now = T0 + dt.timedelta(hours=30)
    oracle = TraceForecasts(trace, horizon_h=5).forecast(
        region, signal=CarbonSignal.AVERAGE, start=now, end=now + dt.timedelta(hours=10))
    assert oracle is not None and [p.value for p in oracle.points] == [30, 31, 32, 33, 34]
    persistence = TraceForecasts(trace, mode="persistence", horizon_h=72).forecast(
        region, signal=CarbonSignal.AVERAGE, start=now, end=now + dt.timedelta(hours=30))
    assert persistence is not None
    got = [p.value for p in persistence.points]
    assert got[:3] == [6.0, 7.0, 8.0]  # same hour yesterday
    assert got[24] == 30.0  # 24 h ahead: the current hour, just observed
    assert got[25] == 7.0  # 25 h ahead: 31:00 is not observed yet, so two days back
    assert TraceForecasts(trace).forecast(region, signal=CarbonSignal.MARGINAL, start=now,
                                          end=now) is None
    # by default a forecast reaches as far as live mode's does (24 h), oracle or persistence
    for mode in FORECASTS:
        default = TraceForecasts(trace, mode=mode).forecast(
            region, signal=CarbonSignal.AVERAGE, start=now, end=now + dt.timedelta(hours=40))
        assert default is not None and len(default.points) == LIVE_FORECAST_HORIZON_H == 24


@pytest.fixture
def two_regions() -> Catalog:
    regions = (make_region("aws", "r-a", em_zone="ZA"), make_region("aws", "r-b", em_zone="ZB"),
               make_region("aws", "r-c", em_zone="ELSEWHERE"))
    offers = (make_offer("aws", "r-a", "p4d", "A100", 8, 10.0),
              make_offer("aws", "r-b", "p4d", "A100", 8, 20.0),
              make_offer("aws", "r-c", "p4d", "A100", 8, 5.0))
    return Catalog.build(regions, ACCELERATORS, offers)


def job(catalog: Catalog, **spec: Any):  # type: ignore[no-untyped-def]
    raw: dict[str, Any] = {"name": "j", "run": "x", "resources": {"accelerators": {"A100": 8}},
                           "work": {"hours": 2}, "max_delay_hours": 4, "home": "aws:r-b"}
    raw.update(spec)
    policy = Policy.model_validate({"name": "g", "weights": {"carbon": 1, "cost": 0},
                                    "carbon_signal": "cfe"})
    return resolve_job(JobSpec.model_validate(raw), catalog, policy=policy, where="test")


def test_backtest_strategies_by_hand(two_regions: Catalog, tmp_path: Path) -> None:
    zb: list[float | None] = [400.0] * 24
    zb[3] = zb[4] = 20.0
    trace = read_trace(em_csv(tmp_path / "t.csv", {"ZA": [100.0] * 24, "ZB": zb}))
    result = backtest([job(two_regions)], trace, two_regions, every_h=24)
    rows = {s.name: s for s in result.strategies}
    kwh = 2 * (8 * 320 + AWS_8_GPU_HOST_W) * 1.1 / 1000  # the same on every candidate
    assert result.replays == 1
    assert rows["run-now"].co2e_kg == pytest.approx(kwh * 0.4, abs=1e-3)  # home r-b now
    assert rows["run-now"].cost_usd == 40.0
    assert rows["price-only"].co2e_kg == pytest.approx(kwh * 0.1, abs=1e-3)  # r-a, $10/h
    assert rows["greenest-now"].co2e_kg == pytest.approx(kwh * 0.1, abs=1e-3)
    assert rows["shift-home"].co2e_kg == pytest.approx(kwh * 0.02, abs=1e-3)  # r-b at 03:00
    assert rows["greenplace-region"].co2e_kg == pytest.approx(kwh * 0.1, abs=1e-3)
    assert rows["greenplace"].co2e_kg == pytest.approx(kwh * 0.02, abs=1e-3)  # r-b, waits 3 h
    assert rows["greenplace"].saved_pct == pytest.approx(95.0, abs=0.1)
    assert rows["greenplace"].cost_change_usd == 0.0
    assert result.deferred == 1 and result.mean_delay_h == 3.0
    assert any("scores on cfe" in n for n in result.notes)
    assert result.to_dict()["strategies"][0]["name"] == "run-now"


def test_backtest_pausable_and_no_wait(two_regions: Catalog, tmp_path: Path) -> None:
    zb: list[float | None] = [400.0] * 24
    zb[1] = zb[4] = 20.0
    za: list[float | None] = [500.0] * 24
    trace = read_trace(em_csv(tmp_path / "t.csv", {"ZA": za, "ZB": zb}))
    kwh = 2 * (8 * 320 + AWS_8_GPU_HOST_W) * 1.1 / 1000
    paused = backtest([job(two_regions, pausable=True)], trace, two_regions, every_h=24)
    assert {s.name: s for s in paused.strategies}["greenplace"].co2e_kg == pytest.approx(
        kwh * 0.02, abs=1e-3)  # hours 1 and 4, paused in between
    hurry = backtest([job(two_regions, max_delay_hours=None)], trace, two_regions, every_h=24)
    rows = {s.name: s for s in hurry.strategies}
    assert rows["shift-home"].co2e_kg == rows["run-now"].co2e_kg
    assert hurry.deferred == 0


def test_backtest_input_errors(two_regions: Catalog, tmp_path: Path) -> None:
    trace = read_trace(em_csv(tmp_path / "t.csv", {"ZA": [100.0] * 24, "ZB": [1.0] * 24}))
    with pytest.raises(SpecError, match="home region aws:r-c is not in a zone"):
        backtest([job(two_regions, home="aws:r-c")], trace, two_regions)
    other = read_trace(em_csv(tmp_path / "o.csv", {"QQ": [1.0] * 24}))
    with pytest.raises(SpecError, match="none of its zones"):
        backtest([job(two_regions)], other, two_regions)
    with pytest.raises(SpecError, match="no job could be replayed"):
        backtest([job(two_regions, work={"hours": 30})], trace, two_regions)


def test_backtest_cli_on_the_shipped_sample(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    jobs = {"jobs": [{"name": "ft", "run": "x", "resources": {"accelerators": {"H100": 8}},
                      "work": {"hours": 6}, "max_delay_hours": 12, "home": "aws:us-east-1"}]}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(jobs), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        main(["backtest", str(path), "--trace", EM_SAMPLE.removesuffix(".csv"),
              "--every", "12", "--output", "json"])
    assert exit_info.value.code == 0
    out = json.loads(capsys.readouterr().out)
    names = [s["name"] for s in out["strategies"]]
    assert names == ["run-now", "price-only", "greenest-now", "shift-home",
                     "greenplace-region", "greenplace"]
    assert out["replays"] > 0 and out["trace"]["zones"] == ["DE", "GB", "US-CAL-CISO",
                                                            "US-MIDA-PJM"]
    assert out["horizon_h"] == LIVE_FORECAST_HORIZON_H
    with pytest.raises(SystemExit) as exit_info:
        main(["backtest", str(path), "--trace", EM_SAMPLE.removesuffix(".csv"),
              "--every", "12", "--horizon-h", "6", "--output", "json"])
    assert exit_info.value.code == 0
    short = json.loads(capsys.readouterr().out)
    assert short["horizon_h"] == 6
    # a shorter view of the future can only find fewer or shorter deferrals
    assert short["greenplace_deferred"] <= out["greenplace_deferred"] or (
        short["greenplace_mean_delay_h"] <= out["greenplace_mean_delay_h"])
    with pytest.raises(SystemExit) as exit_info:
        main(["backtest", "--help"])
    help_text = capsys.readouterr().out
    assert "--horizon-h" in help_text and "live mode" in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["backtest", str(path), "--trace", str(tmp_path / "nope.csv")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["backtest", str(path), "--trace", EIA_SAMPLE, "--home", "aws:nowhere-1"])
    assert exit_info.value.code == 2
