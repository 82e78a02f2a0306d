"""`greenplace signals` and `greenplace dry-run --signals live` against local fakes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from greenplace.scheduler.cli import main
from tests.fakes_signals.electricitymaps import FakeElectricityMaps
from tests.fakes_signals.server import FakeServer, closed_port_url
from tests.fakes_signals.uk_carbon_intensity import FakeUkCarbonIntensity
from tests.fakes_signals.watttime import FakeWattTime

EM_KEY = "em-cli-key-3141"
WT_PASSWORD = "wt-cli-password-2718"
ENV = ("GREENPLACE_SIGNAL_SOURCES", "ELECTRICITYMAPS_API_KEY", "GREENPLACE_ELECTRICITYMAPS_URL",
       "WATTTIME_USERNAME", "WATTTIME_PASSWORD", "GREENPLACE_WATTTIME_URL",
       "GREENPLACE_CARBON_AWARE_SDK_URL", "GREENPLACE_UK_CARBON_INTENSITY_URL",
       "GREENPLACE_SIGNAL_TIMEOUT_S", "GREENPLACE_SIGNAL_BASIS",
       "GREENPLACE_CARBON_AWARE_SDK_SIGNAL", "GREENPLACE_CARBON_AWARE_SDK_BASIS",
       "GREENPLACE_CARBON_AWARE_SDK_LOCATIONS")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def live(clean_env: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    now = dt.datetime.now(dt.UTC)
    em = FakeElectricityMaps(api_key=EM_KEY, now=now, intensity={"DE": lambda t: 111.0},
                             fossil_free_pct={"DE": lambda t: 66.0})
    wt = FakeWattTime(password=WT_PASSWORD, now=now, moer_lbs_per_mwh={"DE": lambda t: 1000.0})
    uk = FakeUkCarbonIntensity(now=now, regional={13: lambda t: 140.0})
    with FakeServer(em) as em_server, FakeServer(wt) as wt_server, FakeServer(uk) as uk_server:
        clean_env.setenv("ELECTRICITYMAPS_API_KEY", EM_KEY)
        clean_env.setenv("GREENPLACE_ELECTRICITYMAPS_URL", f"{em_server.url}/v3")
        clean_env.setenv("WATTTIME_USERNAME", "wt-user")
        clean_env.setenv("WATTTIME_PASSWORD", WT_PASSWORD)
        clean_env.setenv("GREENPLACE_WATTTIME_URL", wt_server.url)
        clean_env.setenv("GREENPLACE_UK_CARBON_INTENSITY_URL", uk_server.url)
        clean_env.setenv("GREENPLACE_SIGNAL_TIMEOUT_S", "2")
        yield {"em": em, "wt": wt, "uk": uk}


def test_signals_for_a_region(live: dict[str, object], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "signals", "--region", "gcp:europe-west3", "--output", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["em_zone"] == "DE" and report["watttime_region"] == "DE"
    rows = {(r["source"], r["signal"]): r for r in report["sources"]}
    assert rows[("electricitymaps", "average")]["value"] == 111.0
    assert rows[("electricitymaps", "cfe")]["value"] == 66.0
    assert rows[("watttime", "marginal")]["value"] == pytest.approx(453.59, abs=0.01)
    assert rows[("watttime", "marginal index")]["value"] == 37.0
    assert rows[("carbon-aware-sdk", None)]["status"].startswith("set GREENPLACE_CARBON")
    assert rows[("uk-carbon-intensity", "average")]["status"] == "no zone for this region"
    assert rows[("static", "average")]["status"] == "ok"
    outcome = {o["signal"]: o for o in report["fallback"]}
    assert outcome["average"]["source"] == "electricitymaps"
    assert outcome["marginal"]["source"] == "watttime"
    assert outcome["cfe"]["source"] == "electricitymaps"
    assert EM_KEY not in out + err and WT_PASSWORD not in out + err


def test_signals_table_for_a_zone_and_fallback(live: dict[str, object],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    em = live["em"]
    assert isinstance(em, FakeElectricityMaps)
    em.fail_status = 500
    code, out, err = run(capsys, "signals", "--zone", "DE")
    assert code == 0, err
    assert "carbon signals for DE" in out and "HTTP 500" in out
    assert "average:" in out and "from static" in out  # the fallback outcome
    assert EM_KEY not in out + err


def test_signals_for_every_region(live: dict[str, object],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "signals", "--signal", "average", "--output", "json")
    assert code == 0, err
    rows = json.loads(out)
    by_region = {r["region"]: r for r in rows}
    assert by_region["gcp:europe-west3"]["source"] == "electricitymaps"
    # London: the GB API's figures are direct, not the catalog's lifecycle basis
    london = by_region["gcp:europe-west2"]
    assert london["source"].startswith("static")
    assert any(p.startswith("uk-carbon-intensity: other basis (average on a direct "
                            "(operational) basis") for p in london["passed_over"])
    assert by_region["aws:us-east-1"]["source"].startswith("static")


def test_signals_shows_the_basis_skip(live: dict[str, object],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "signals", "--region", "gcp:europe-west2", "--signal",
                         "average")
    assert code == 0, err
    assert "other basis" in out
    assert ("note: emission basis: average is kept on the lifecycle basis, so "
            "uk-carbon-intensity (direct (operational)) is skipped for average") in out
    uk = live["uk"]
    assert isinstance(uk, FakeUkCarbonIntensity) and uk.requests == []
    code, out, err = run(capsys, "signals", "--signal", "average")
    assert code == 0, err
    assert "note: emission basis" in out
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GREENPLACE_SIGNAL_BASIS", "direct")
        code, out, err = run(capsys, "signals", "--region", "gcp:europe-west2", "--signal",
                             "average", "--output", "json")
    report = json.loads(out)
    assert code == 0, err
    assert report["fallback"][0]["source"] == "uk-carbon-intensity"
    assert "static (lifecycle) is skipped for average" in report["notes"][0]


def test_signals_usage_errors(clean_env: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "signals", "--zone", "DE", "--region", "gcp:europe-west3")
    assert code == 2 and "not both" in err
    clean_env.setenv("GREENPLACE_SIGNAL_SOURCES", "electricitymap")
    code, _, err = run(capsys, "signals", "--zone", "DE")
    assert code == 2 and "GREENPLACE_SIGNAL_SOURCES" in err and "Traceback" not in err


@pytest.fixture
def jobs_file(tmp_path: Path) -> Path:
    jobs = {"jobs": [
        {"name": "ft", "run": "x", "resources": {"accelerators": {"H100": 8}},
         "work": {"hours": 4}, "policy": "eu-sovereign"},
        {"name": "sweep", "run": "x", "resources": {"accelerators": {"L4": 1}},
         "work": {"hours": 2}, "max_delay_hours": 6},
    ]}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump(jobs), encoding="utf-8")
    return path


def test_dry_run_live_with_every_source_down(clean_env: pytest.MonkeyPatch, jobs_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    dead = closed_port_url()
    clean_env.setenv("ELECTRICITYMAPS_API_KEY", EM_KEY)
    clean_env.setenv("GREENPLACE_ELECTRICITYMAPS_URL", f"{dead}/v3")
    clean_env.setenv("GREENPLACE_UK_CARBON_INTENSITY_URL", dead)
    clean_env.setenv("GREENPLACE_CARBON_AWARE_SDK_URL", dead)
    code, out, err = run(capsys, "dry-run", str(jobs_file), "--signals", "live")
    assert code == 0, err
    assert "no live source answered" in out and "static catalog figures" in out
    assert EM_KEY not in out + err
    code, out, _ = run(capsys, "dry-run", str(jobs_file), "--signals", "live", "--output",
                       "json")
    live_rows = json.loads(out)
    code, out, _ = run(capsys, "dry-run", str(jobs_file), "--output", "json")
    static_rows = json.loads(out)
    for live_row, static_row in zip(live_rows, static_rows, strict=True):
        assert live_row["status"] == static_row["status"] == "placed"
        assert (live_row["region"], live_row["co2e_kg"]) == (static_row["region"],
                                                             static_row["co2e_kg"])
        assert any("no live source answered" in n for n in live_row["notes"])
        assert live_row["start_at"] is None  # no forecast: the waiting job runs now


def test_dry_run_live_uses_live_values(live: dict[str, object], jobs_file: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "dry-run", str(jobs_file), "--signals", "live", "--output",
                         "json", "--explain")
    assert code == 0, err
    rows = json.loads(out)
    candidates = rows[0]["candidates"]
    de = [c for c in candidates if c["region"] == "europe-west3"]
    assert de and de[0]["signal_source"].startswith("electricitymaps (cfe+average, ")
    # reported at the live grid average; ranked (cfe) on the energy its live CFE leaves uncovered
    assert de[0]["intensity_g_per_kwh"] == pytest.approx(111.0)
    assert de[0]["ranked_carbon"] == pytest.approx(de[0]["energy_kwh"] * (1 - 0.66), abs=1e-3)
    assert any(n.startswith("live signals (cfe)") for n in rows[0]["notes"])
    # the job that may wait asked for forecasts; only DE has one in these fakes
    assert any(n.startswith("temporal shifting") for n in rows[1]["notes"])
    assert EM_KEY not in out + err
