"""The placement commands end to end through the CLI entry point, on the embedded catalog."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from greenplace.scheduler.cli import main
from greenplace.scheduler.commands.placement import DEFAULT_TABLE_ROWS

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobs.yaml"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def dry_run_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    code, out, err = run(capsys, "dry-run", str(EXAMPLES), "--output", "json", *args)
    assert code == 0, err
    return json.loads(out)


REQUIRED = {"job", "status", "cloud", "region", "instance_type", "accelerator",
            "accelerator_count", "runtime_h", "energy_kwh", "co2e_kg", "cost_usd", "cfe_pct",
            "baseline", "savings_co2e_kg", "savings_pct"}
CANDIDATE = {"cloud", "region", "instance_type", "accelerator", "co2e_kg", "cost_usd",
             "runtime_h", "cfe_pct", "norm_carbon", "norm_cost", "norm_time", "score",
             "rejected_by"}


def test_dry_run_json_places_every_example_job(capsys: pytest.CaptureFixture[str]) -> None:
    rows = dry_run_json(capsys)
    assert len(rows) == 7
    for row in rows:
        assert REQUIRED <= set(row), row["job"]
        assert row["status"] == "placed"
        assert {"cloud", "region", "instance_type", "co2e_kg", "cost_usd"} <= set(row["baseline"])
    eu = next(r for r in rows if r["job"] == "gdpr-medical-finetune")
    assert eu["policy"] == "eu-sovereign"


def test_greenest_is_at_least_as_green_as_every_feasible_candidate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for row in dry_run_json(capsys, "--policy", "greenest", "--override-policy", "--explain"):
        feasible = [c for c in row["candidates"] if c["rejected_by"] is None]
        assert feasible
        assert set(CANDIDATE) <= set(feasible[0])
        assert row["co2e_kg"] <= min(c["co2e_kg"] for c in feasible) + 1e-9
        assert row["savings_co2e_kg"] >= 0


def test_cheapest_matches_the_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    for row in dry_run_json(capsys, "--policy", "cheapest", "--override-policy"):
        base = row["baseline"]
        assert (row["cloud"], row["region"], row["instance_type"]) == (
            base["cloud"], base["region"], base["instance_type"])
        assert row["savings_co2e_kg"] == 0


def test_explain_rejections_name_filter_and_reason(capsys: pytest.CaptureFixture[str]) -> None:
    rows = dry_run_json(capsys, "--explain")
    eu = next(r for r in rows if r["job"] == "gdpr-medical-finetune")
    rejected = [c for c in eu["candidates"] if c["rejected_by"]]
    assert rejected
    assert all(c["rejected_by"]["filter"] and c["rejected_by"]["reason"] for c in rejected)
    chosen_country_ok = [c for c in eu["candidates"] if c["rejected_by"] is None]
    assert all(c["region"] for c in chosen_country_ok)


def test_table_and_csv_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "dry-run", str(EXAMPLES))
    assert code == 0
    assert "llama-8b-finetune" in out and "kg CO2e" in out and "saved" in out
    code, out, _ = run(capsys, "dry-run", str(EXAMPLES), "--output", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 7
    assert {"job", "region", "co2e_kg", "baseline.region", "savings_pct"} <= set(rows[0])


def test_unschedulable_job_exits_1_with_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "strict.yaml").write_text(
        "name: strict\nconstraints: {continents: [europe], max_price_usd_per_hour: 0.01}\n")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("name: j\nrun: x\nresources: {accelerators: {A100: 8}}\nwork: {hours: 1}\n"
                    "policy: strict.yaml\n")
    code, out, _ = run(capsys, "dry-run", str(jobs), "--output", "json")
    assert code == 1
    (row,) = json.loads(out)
    assert row["status"] == "unschedulable"
    filters = {r["filter"] for r in row["reasons"]}
    assert {"continent", "max_price"} <= filters
    code, out, _ = run(capsys, "dry-run", str(jobs))
    assert code == 1 and "unschedulable" in out and "[max_price]" in out


def test_large_table_is_limited_but_totals_and_json_cover_every_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(
        json.dumps({"name": f"j{i}", "run": "x", "resources": {"accelerators": {"H100": 8}},
                    "work": {"hours": 1 + i % 7}}) + "\n" for i in range(120)))
    code, out, err = run(capsys, "dry-run", str(jobs), "--output", "json")
    rows = json.loads(out)
    assert code == 0 and err == ""  # no progress bar when stderr is not a terminal
    assert [r["job"] for r in rows] == [f"j{i}" for i in range(120)]
    total = sum(r["co2e_kg"] for r in rows)
    code, out, _ = run(capsys, "dry-run", str(jobs), "--output", "csv")
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == 120
    code, out, _ = run(capsys, "dry-run", str(jobs), "--limit", "10")
    assert code == 0 and "j9 " in out and "j10 " not in out
    assert "120/120 placed" in out and f"Estimated {total:,.1f} kg CO2e" in out
    assert "110 more rows not shown" in out
    code, out, _ = run(capsys, "dry-run", str(jobs), "--limit", "0")
    assert "j119 " in out and "not shown" not in out
    code, out, _ = run(capsys, "dry-run", str(jobs))
    assert f"{120 - DEFAULT_TABLE_ROWS} more rows not shown" in out


@pytest.mark.parametrize(("content", "expected"), [
    ("jobs: [{name: a, run: x\n", "broken YAML"),
    ("name: a\nrun: x\nresources: {accelerators: {H1000: 8}}\nwork: {hours: 1}\n",
     "Did you mean 'H100'"),
    ("name: a\nrun: x\nresources: {accelerators: {H100: 8}}\nwork: {hours: 1}\nfoo: 1\n",
     "'foo': unknown field"),
])
def test_bad_input_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(content)
    code, out, err = run(capsys, "dry-run", str(jobs))
    assert code == 2
    assert expected in err and str(jobs) in err
    assert "Traceback" not in err and out == ""


def test_bad_flag_and_missing_file_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "dry-run", "missing.yaml")[0] == 2
    assert run(capsys, "dry-run", str(EXAMPLES), "--output", "xml")[0] == 2
    code, _, err = run(capsys, "dry-run", str(EXAMPLES), "--policy", "nope/p.yaml")
    assert code == 2 and "does not exist" in err


def test_estimate_worked_example(capsys: pytest.CaptureFixture[str]) -> None:
    # 8 x A100 (TDP 400 W x 0.8 = 320 W) x 10 h x PUE 1.1 = 28.16 kWh; x 400 g = 11.264 kg
    code, out, _ = run(capsys, "estimate", "--accelerator", "a100", "--count", "8",
                       "--hours", "10", "--pue", "1.1", "--intensity-g-per-kwh", "400",
                       "--output", "json")
    assert code == 0
    result = json.loads(out)
    assert result["energy_kwh"] == pytest.approx(28.16)
    assert result["co2e_kg"] == pytest.approx(11.264)
    code, out, _ = run(capsys, "estimate", "-a", "A100", "-n", "8", "--hours", "10",
                       "--avg-power-w", "250", "--pue", "1.0", "--intensity-g-per-kwh", "100",
                       "--output", "json")
    assert json.loads(out)["energy_kwh"] == pytest.approx(20.0)  # 10 x 8 x 250 / 1000


def test_estimate_with_region_gives_cost(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "regions", "--accelerator", "A100", "--output", "json")
    region = json.loads(out)[0]
    key = f"{region['cloud']}:{region['region']}"
    code, out, err = run(capsys, "estimate", "-a", "A100", "-n", "8", "--hours", "2",
                         "--region", key, "--output", "json")
    assert code == 0, err
    result = json.loads(out)
    assert result["region"] == key and result["pue"] == region["pue"]
    assert "cost_usd" in result and "energy_kwh" in result and "co2e_kg" in result


def test_estimate_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "estimate", "-a", "A100", "--hours", "1", "--region",
                       "gcp:europe-west44")
    assert code == 2 and "Did you mean" in err
    code, _, err = run(capsys, "estimate", "-a", "A100", "--hours", "1")
    assert code == 2 and "exactly one of" in err


def test_regions_sorting_and_filters(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "regions", "--output", "json")
    rows = json.loads(out)
    assert len(rows) >= 90
    intensities = [r["grid_intensity_avg_g_per_kwh"] for r in rows]
    assert intensities == sorted(intensities)
    code, out, _ = run(capsys, "regions", "--cloud", "gcp", "--sort", "cfe", "--output", "json")
    rows = json.loads(out)
    assert {r["cloud"] for r in rows} == {"gcp"}
    cfe = [r["grid_cfe_pct"] for r in rows]
    assert cfe == sorted(cfe, reverse=True)
    code, out, _ = run(capsys, "regions", "-a", "H100", "--sort", "price", "--output", "json")
    prices = [r["min_price_usd_per_accelerator_hour"] for r in json.loads(out)]
    assert prices and prices == sorted(prices)


def test_regions_json_puts_same_zone_regions_on_one_basis(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "regions", "--output", "json")
    assert code == 0
    rows = {f"{r['cloud']}:{r['region']}": r for r in json.loads(out)}
    # AWS ca-central-1, Azure canadaeast and GCP northamerica-northeast1 share Quebec's grid.
    quebec = [rows[k] for k in ("aws:ca-central-1", "azure:canadaeast",
                                "gcp:northamerica-northeast1")]
    assert {r["em_zone"] for r in quebec} == {"CA-QC"}
    for field in ("grid_intensity_avg_g_per_kwh", "grid_cfe_pct", "basis", "year"):
        assert len({r[field] for r in quebec}) == 1, field
    assert quebec[0]["basis"] == "lifecycle" and "Electricity Maps" in quebec[0]["source"]
    # Only Google publishes an hourly-matched CFE; it is a column of its own.
    assert quebec[0]["provider_cfe_pct"] is None and quebec[1]["provider_cfe_pct"] is None
    assert quebec[2]["provider_cfe_pct"] is not None
    assert {r["basis"] for r in rows.values()} == {"lifecycle"}


def test_schema_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for kind, field in (("job", "resources"), ("policy", "weights")):
        code, out, _ = run(capsys, "schema", kind)
        assert code == 0
        assert field in json.loads(out)["properties"]
