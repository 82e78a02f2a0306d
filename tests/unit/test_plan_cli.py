"""`greenplace plan` and the capacity file through the CLI entry point, on the embedded catalog:
outputs (table, json with every pool-hour, csv), exit codes, and each kind of bad input as one
paragraph with exit 2 and nothing on stdout."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.cli import main
from greenplace.scheduler.exceptions import SpecError
from greenplace.scheduler.planning.capacity import Unit
from greenplace.scheduler.planning.capacity_file import load_capacity

REPO = Path(__file__).resolve().parents[2]
JOBS = str(REPO / "examples" / "jobs.yaml")
CAPACITY = REPO / "examples" / "capacity.yaml"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_the_example_plan_in_json_shows_every_pool_hour_within_its_limit(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", JOBS, "--capacity", str(CAPACITY), "-o", "json",
                         "--explain")
    assert code == 0, err
    result = json.loads(out)
    s = result["summary"]
    assert s["placed"] == s["jobs"] == 7
    assert s["solver"].startswith("HiGHS") and s["status"] == "optimal"
    assert s["gap_pct"] == pytest.approx(0.0, abs=1e-6) and s["bound"] >= s["objective"]
    h100 = next(p for p in result["pools"] if p["pool"].startswith("aws:eu-north-1 H100"))
    assert h100["source"].endswith("capacity.yaml line 7, pool 1")
    assert max(h100["used"]) == 8  # the batch's H100 jobs queue for the 8 reserved H100
    for pool in result["pools"]:
        assert len(pool["used"]) == len(pool["limit"]) >= 48
        assert all(u <= c for u, c in zip(pool["used"], pool["limit"], strict=True))
    rows = {r["job"]: r for r in result["jobs"]}
    # Two L4 sweeps, one spot L4 at a time in europe-west6 for the first six hours.
    sweeps = [rows["bert-sweep-lr3e-5"], rows["bert-sweep-lr1e-4"]]
    assert sorted(r["start_hour"] for r in sweeps if r["region"] == "europe-west6") in (
        [0, 6], [0])
    # The three H100 jobs queue for the 8 reserved H100: each one that waits names the jobs
    # holding the hours its best option (the same offer at hour 0) needed.
    h100_jobs = {"llama-8b-finetune", "vit-pretrain", "gdpr-medical-finetune"}
    waiting = [rows[n] for n in sorted(h100_jobs) if rows[n]["start_hour"] > 0]
    assert len(waiting) == 2
    for r in waiting:
        displaced = r["explain"]["displaced"]
        assert displaced["best_option"].endswith("p5.48xlarge at hour 0")
        assert displaced["by_jobs"] and set(displaced["by_jobs"]) <= h100_jobs - {r["job"]}
        for holder in displaced["by_jobs"]:
            assert r["job"] in rows[holder]["explain"]["displaced_jobs"]
    first = next(rows[n] for n in sorted(h100_jobs) if rows[n]["start_hour"] == 0)
    assert first["explain"]["displaced"] is None and first["explain"]["displaced_jobs"]
    tpu = rows["jax-lm-tpu"]  # its pool in gcp:us-west1 has limit 0: it goes elsewhere
    assert (tpu["cloud"], tpu["region"]) != ("gcp", "us-west1")
    assert tpu["explain"]["displaced"]["why"] == "the pool's own limit leaves it no room"
    assert set(tpu["explain"]) >= {"weights", "norm_carbon", "norm_cost", "norm_time"}


def test_the_table_and_csv_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", JOBS, "--capacity", str(CAPACITY), "--explain")
    assert code == 0
    assert "7/7 placed" in out and "status optimal" in out and "gap 0.0000 %" in out
    assert "aws:eu-north-1 H100 (accelerators)" in out and "peak 8 / 8" in out
    tpu = next(line for line in out.splitlines() if "gcp:us-west1 TPU-v5e" in line)
    assert "peak 0 / 0" in tpu and "a limit of 0: nothing may run on it" in tpu
    assert "weights carbon" in out and "it displaced vit-pretrain" in out
    code, out, _ = run(capsys, "plan", JOBS, "--capacity", str(CAPACITY), "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 7 and all(None not in r for r in rows)
    assert {"job", "cloud", "region", "start_hour", "co2e_kg", "cost_usd"} <= set(rows[0])


def test_a_budget_too_small_lists_the_jobs_left_out_and_exits_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", JOBS, "--budget-usd", "100", "-o", "json")
    assert code == 1
    result = json.loads(out)
    assert result["summary"]["cost_usd"] <= 100
    left = [r for r in result["jobs"] if r["status"] == "unschedulable"]
    assert left and all(r["binding"] == "budget" for r in left)


@pytest.mark.parametrize(("args", "words"), [
    (["--budget-usd", "0"], "--budget-usd must be a positive amount"),
    (["--budget-usd", "-5"], "--budget-usd must be a positive amount"),
    (["--horizon-hours", "0"], "--horizon-hours must be between 1 and 336"),
    (["--horizon-hours", "10000"], "--horizon-hours must be between 1 and 336"),
    (["--time-limit-s", "0"], "--time-limit-s must be a positive number"),
])
def test_bad_numbers_are_one_paragraph_and_exit_2(
        capsys: pytest.CaptureFixture[str], args: list[str], words: str) -> None:
    code, out, err = run(capsys, "plan", JOBS, *args)
    assert code == 2 and out == ""
    assert words in err and "To fix:" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def _capacity_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cap.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_capacity(path, load_catalog())
    message = str(info.value)
    assert "To fix:" in message and "\n" not in message
    return message


ROW = "pools:\n  - cloud: aws\n    region: us-east-1\n    accelerators: H100\n    limit: 8\n"


@pytest.mark.parametrize(("text", "words"), [
    ("pools: [cloud: aws\n", "broken YAML at line"),
    ("", "got an empty file"),
    ("- 1\n- 2\n", "a capacity file is a mapping with `pools:`"),
    ("pools: []\n", "field 'pools'"),
    (ROW.replace("aws", "awz"), "line 2, pool 1, field 'cloud': unknown cloud 'awz' (Did you "
     "mean 'aws'?)"),
    (ROW.replace("us-east-1", "us-eats-1"), "line 2, pool 1, field 'region': aws has no region "
     "'us-eats-1' in the catalog (Did you mean 'us-east-1'?)"),
    (ROW.replace("H100", "H1000"), "line 2, pool 1, field 'accelerators': Unknown accelerator "
     "'H1000'. Did you mean"),
    (ROW.replace("limit: 8", "limit: -1"), "line 2, pool 1: field 'pools.0.limit'"),
    (ROW + "    hourly_limits: [1, -2]\n", "every hourly limit must be 0 or more"),
    (ROW + "    colour: red\n", "field 'pools.0.colour': unknown field"),
    (ROW + ROW.replace("pools:\n", "").replace("aws", "gcp"), "line 6, pool 2, field "
     "'region': gcp has no region 'us-east-1'"),
])
def test_capacity_file_errors_name_the_file_line_and_field(
        tmp_path: Path, text: str, words: str) -> None:
    message = _capacity_error(tmp_path, text)
    assert words in message
    assert "cap.yaml" in message


def test_a_broken_capacity_file_stops_the_command_with_exit_2_and_no_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cap.yaml"
    path.write_text(ROW.replace("us-east-1", "us-eats-1"))
    code, out, err = run(capsys, "plan", JOBS, "--capacity", str(path))
    assert code == 2 and out == ""
    assert "Did you mean 'us-east-1'?" in err and "Traceback" not in err
    code, out, err = run(capsys, "plan", JOBS, "--capacity", str(tmp_path / "missing.yaml"))
    assert code == 2 and out == "" and "does not exist" in err


def test_the_capacity_schema_accepts_the_example_and_rows_become_pools(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema", "capacity")
    assert code == 0
    schema = json.loads(out)
    example = yaml.safe_load(CAPACITY.read_text())
    jsonschema.validate(example, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"pools": [{"cloud": "aws", "limit": 1}]}, schema)
    pools = load_capacity(CAPACITY, load_catalog())
    assert [p.unit for p in pools] == [Unit.ACCELERATORS] * 3
    assert pools[1].spot is True and pools[1].limit_at(0) == 1 and pools[1].limit_at(6) == 4
    assert pools[0].accelerators == ("H100",) and pools[0].limit == 8


def test_json_covers_every_hour_of_the_horizon_even_for_short_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "short.yaml"
    jobs.write_text("jobs:\n  - name: short\n    run: x\n    resources: {accelerators: {H100: 8}}"
                    "\n    work: {hours: 1}\n    policy: greenest\n")
    code, out, err = run(capsys, "plan", str(jobs), "--capacity", str(CAPACITY),
                         "--horizon-hours", "12", "-o", "json")
    assert code == 0, err
    result = json.loads(out)
    (row,) = result["jobs"]
    assert (row["cloud"], row["region"], row["start_hour"]) == ("aws", "eu-north-1", 0)
    h100 = result["pools"][0]
    assert h100["used"] == [8] + [0] * 11 and h100["limit"] == [8] * 12


SIGNAL_ENV = ("GREENPLACE_SIGNAL_SOURCES", "ELECTRICITYMAPS_API_KEY",
              "GREENPLACE_ELECTRICITYMAPS_URL", "WATTTIME_USERNAME", "WATTTIME_PASSWORD",
              "GREENPLACE_WATTTIME_URL", "GREENPLACE_CARBON_AWARE_SDK_URL",
              "GREENPLACE_UK_CARBON_INTENSITY_URL", "GREENPLACE_SIGNAL_TIMEOUT_S",
              "GREENPLACE_SIGNAL_BASIS", "GREENPLACE_CARBON_AWARE_SDK_SIGNAL",
              "GREENPLACE_CARBON_AWARE_SDK_BASIS", "GREENPLACE_CARBON_AWARE_SDK_LOCATIONS")
EM_KEY = "em-plan-key-1618"


def _de_job(tmp_path: Path) -> Path:
    policy = tmp_path / "de.yaml"
    policy.write_text("name: de\nweights: {carbon: 1, cost: 0, time: 0}\n"
                      "carbon_signal: average\n"
                      "constraints: {regions: {include: ['gcp:europe-west3']}}\n")
    jobs = tmp_path / "de-jobs.yaml"
    jobs.write_text(yaml.safe_dump({"jobs": [
        {"name": "de-l4", "run": "x", "resources": {"accelerators": {"L4": 1}},
         "work": {"hours": 2}, "max_delay_hours": 10, "policy": str(policy)}]}))
    return jobs


def test_plan_on_live_forecasts_starts_in_the_greenest_hours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt

    from tests.fakes_signals.electricitymaps import FakeElectricityMaps
    from tests.fakes_signals.server import FakeServer, closed_port_url

    for name in SIGNAL_ENV:
        monkeypatch.delenv(name, raising=False)
    now = dt.datetime.now(dt.UTC)
    hour0 = now.replace(minute=0, second=0, microsecond=0)

    def de(t: dt.datetime) -> float:  # 40 g/kWh in hours 6-7 of the plan, else 400
        return 40.0 if 6 <= (t - hour0).total_seconds() / 3600 < 8 else 400.0

    em = FakeElectricityMaps(api_key=EM_KEY, now=now, intensity={"DE": de},
                             fossil_free_pct={"DE": lambda t: 50.0})
    dead = closed_port_url()
    with FakeServer(em) as server:
        monkeypatch.setenv("ELECTRICITYMAPS_API_KEY", EM_KEY)
        monkeypatch.setenv("GREENPLACE_ELECTRICITYMAPS_URL", f"{server.url}/v3")
        monkeypatch.setenv("GREENPLACE_UK_CARBON_INTENSITY_URL", dead)
        monkeypatch.setenv("GREENPLACE_CARBON_AWARE_SDK_URL", dead)
        monkeypatch.setenv("GREENPLACE_SIGNAL_TIMEOUT_S", "2")
        code, out, err = run(capsys, "plan", str(_de_job(tmp_path)), "--signals", "live",
                             "-o", "json", "--horizon-hours", "24")
    assert code == 0, err
    result = json.loads(out)
    (row,) = result["jobs"]
    # Hour 0 of the plan is the command's current hour (one later if the clock turned).
    shift_h = (dt.datetime.fromisoformat(result["start"]) - hour0).total_seconds() / 3600
    assert (row["region"], row["start_hour"]) == ("europe-west3", 6 - round(shift_h))
    assert any(n.startswith("live signals") for n in result["summary"]["notes"])
    assert EM_KEY not in out + err


def test_plan_live_with_every_source_down_falls_back_to_static(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from tests.fakes_signals.server import closed_port_url

    for name in SIGNAL_ENV:
        monkeypatch.delenv(name, raising=False)
    dead = closed_port_url()
    monkeypatch.setenv("ELECTRICITYMAPS_API_KEY", EM_KEY)
    monkeypatch.setenv("GREENPLACE_ELECTRICITYMAPS_URL", f"{dead}/v3")
    monkeypatch.setenv("GREENPLACE_UK_CARBON_INTENSITY_URL", dead)
    monkeypatch.setenv("GREENPLACE_CARBON_AWARE_SDK_URL", dead)
    jobs = _de_job(tmp_path)
    code, out, err = run(capsys, "plan", str(jobs), "--signals", "live", "-o", "json")
    assert code == 0, err
    live = json.loads(out)
    assert any("no live source answered" in n for n in live["summary"]["notes"])
    code, out, _ = run(capsys, "plan", str(jobs), "-o", "json")
    static = json.loads(out)
    assert [(r["region"], r["start_hour"], r["co2e_kg"]) for r in live["jobs"]] == [
        (r["region"], r["start_hour"], r["co2e_kg"]) for r in static["jobs"]]
