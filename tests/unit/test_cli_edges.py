"""Sharp edges a new user found (issue 10), each through the CLI entry point."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from greenplace.policies.model import DEFAULT_POLICY, load_policy
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "jobs.yaml"
JOB = "name: a\nrun: x\nresources: {accelerators: {A100: 8}}\nwork: {hours: 1}\n"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def one_paragraph_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "NoneType" not in err
    return err


def test_policy_option_never_silently_replaces_a_jobs_own_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "dry-run", str(EXAMPLES), "-p", "cheapest", "-o", "json")
    assert code == 0
    rows = {r["job"]: r for r in json.loads(out)}
    gdpr = rows["gdpr-medical-finetune"]
    eu = set(load_policy("eu-sovereign").constraints.countries or [])
    region = load_catalog().region(f"{gdpr['cloud']}:{gdpr['region']}")
    assert gdpr["policy"] == "eu-sovereign" and region.country in eu
    assert rows["llama-8b-finetune"]["policy"] == "cheapest"
    assert not any("replaced_policy" in r for r in rows.values())
    assert "gdpr-medical-finetune (eu-sovereign)" in err and "--override-policy" in err

    code, out, err = run(capsys, "dry-run", str(EXAMPLES), "-p", "cheapest",
                         "--override-policy", "-o", "json")
    assert code == 0
    replaced = {r["job"]: r.get("replaced_policy") for r in json.loads(out)}
    assert {k: v for k, v in replaced.items() if v} == {
        "gdpr-medical-finetune": "eu-sovereign", "vit-pretrain": "greenest"}
    assert "warning: --override-policy" in err
    assert "gdpr-medical-finetune (own policy 'eu-sovereign')" in err
    assert "vit-pretrain (own policy 'greenest')" in err

    code, out, err = run(capsys, "submit", str(EXAMPLES), "--dry-run", "-p", "cheapest",
                         "--override-policy", "-o", "json")
    assert code == 0 and "gdpr-medical-finetune" in err
    assert {r["job"]: r.get("replaced_policy") for r in json.loads(out)} == replaced
    err = one_paragraph_error(*run(capsys, "dry-run", str(EXAMPLES), "--override-policy"))
    assert "--override-policy needs --policy" in err


def test_a_relative_policy_option_is_taken_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "jobs").mkdir()
    jobs = tmp_path / "jobs" / "jobs.yaml"
    jobs.write_text(JOB)
    (tmp_path / "mine.yaml").write_text("name: mine\nweights: {carbon: 1, cost: 0}\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "dry-run", "jobs/jobs.yaml", "--policy", "mine.yaml", "-o", "json")
    assert code == 0 and json.loads(out)[0]["policy"] == "mine"
    err = one_paragraph_error(*run(capsys, "dry-run", "jobs/jobs.yaml", "--policy", "nope.yaml"))
    assert err.startswith("error: option --policy: ") and "field 'policy'" not in err
    assert str(tmp_path / "nope.yaml") in err and "does not exist" in err


BAD_CONSTRAINTS = [
    ("regions: {include: ['gcp:eu-west4']}", "Did you mean 'gcp:us-west4' or 'gcp:europe-west4'"),
    ("regions: {exclude: ['europe-west99']}", "Did you mean 'europe-west9'"),
    ("countries: [UK]", "Did you mean 'GB' for 'UK'?"),
    ("countries: [CY]", "allows no region of the catalog"),
    ("countries: [US], continents: [europe]",
     "countries ['US'] leave 27, then continents ['europe'] leave 0"),
    ("continents: [Europe]", "Did you mean 'europe'?"),
]


@pytest.mark.parametrize(("constraints", "expected"), BAD_CONSTRAINTS)
def test_policy_values_that_match_no_catalog_region_are_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], constraints: str, expected: str,
) -> None:
    policy = tmp_path / "strict.yaml"
    policy.write_text(f"name: strict\nconstraints: {{{constraints}}}\n")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOB)
    err = one_paragraph_error(*run(capsys, "dry-run", str(jobs), "--policy", str(policy)))
    assert expected in err and err.startswith("error: option --policy: ")
    jobs.write_text(JOB + "policy: strict.yaml\n")  # a job's own policy, next to the file
    err = one_paragraph_error(*run(capsys, "dry-run", str(jobs)))
    assert expected in err and str(jobs) in err and "job 'a', field 'policy'" in err
    err = one_paragraph_error(*run(capsys, "validate", str(policy)))
    assert expected in err


def test_a_past_deadline_is_one_error_not_45_rejections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOB + "deadline: 2021-03-04T05:06:07Z\n")
    for command in ("dry-run", "submit"):
        err = one_paragraph_error(*run(capsys, command, str(jobs)))
        assert "field 'deadline': the deadline 2021-03-04T05:06:07+00:00 has passed (now 20" in err


def test_estimate_uses_the_default_policys_signal_and_labels_pue(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "estimate", "-a", "A100", "-n", "8", "--hours", "1",
                       "--region", "gcp:europe-west4", "-o", "json")
    result = json.loads(out)
    assert code == 0
    assert result["carbon_signal"] == str(load_policy(DEFAULT_POLICY).carbon_signal)
    assert result["pue_basis"] == "published for the region"
    code, out, _ = run(capsys, "dry-run", str(EXAMPLES), "-o", "json")
    assert {r["carbon_signal"] for r in json.loads(out) if r["policy"] == DEFAULT_POLICY} == {
        result["carbon_signal"]}


def test_estimate_reports_location_based_co2e_and_the_ranked_quantity_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ("estimate", "-a", "A100", "-n", "8", "--hours", "1", "--region",
            "gcp:us-central1", "-o", "json")
    region = load_catalog().region("gcp:us-central1")
    average = json.loads(run(capsys, *args, "--signal", "average")[1])
    cfe = json.loads(run(capsys, *args, "--signal", "cfe")[1])
    provider = json.loads(run(capsys, *args, "--signal", "provider_cfe")[1])
    energy = average["energy_kwh"]
    for result in (average, cfe, provider):  # co2e_kg is the same whatever the signal
        assert result["intensity_g_per_kwh"] == region.grid_intensity_avg_g_per_kwh
        assert result["co2e_kg"] == pytest.approx(
            energy * region.grid_intensity_avg_g_per_kwh / 1000, abs=1e-4)
    assert "ranked_quantity" not in average
    assert (cfe["ranked_quantity"], cfe["ranked_unit"]) == ("uncovered_energy_kwh", "kWh")
    assert cfe["ranked_carbon"] == pytest.approx(
        energy * (1 - region.grid_cfe_pct / 100), abs=1e-4)
    assert region.provider_cfe_pct is not None
    assert provider["ranked_carbon"] == pytest.approx(
        energy * (1 - region.provider_cfe_pct / 100), abs=1e-4)
    code, _, err = run(capsys, "estimate", "-a", "A100", "--hours", "1", "--region",
                       "aws:us-east-1", "--signal", "provider_cfe")
    assert code == 2 and "aws publishes no hourly-matched CFE" in err


def test_the_readmes_estimate_example_shows_a_price(capsys: pytest.CaptureFixture[str]) -> None:
    line = next(x for x in (REPO / "README.md").read_text().splitlines()
                if "greenplace estimate " in x)
    args = shlex.split(line.split("greenplace ", 1)[1])
    code, out, err = run(capsys, *args, "--output", "json")
    assert code == 0, err
    assert json.loads(out)["cost_usd"] > 0
    code, out, _ = run(capsys, "estimate", "-a", "A100", "-n", "8", "--hours", "12",
                       "--region", "gcp:europe-north1")
    assert code == 0 and "region region" not in out
    assert "no price: the catalog sells no 8 x A100 on demand in gcp:europe-north1" in out
    assert "greenplace regions --accelerator A100" in out


def test_csv_output_carries_the_explanation(capsys: pytest.CaptureFixture[str]) -> None:
    explained = ("notes", "rejected_candidates", "rejected_by_filter", "top_candidates")
    code, out, _ = run(capsys, "dry-run", str(EXAMPLES), "-o", "csv", "--explain")
    rows = {r["job"]: r for r in csv.DictReader(io.StringIO(out))}
    assert code == 0 and len(rows) == 7
    eu = rows["gdpr-medical-finetune"]
    assert set(explained) <= set(eu)
    assert int(eu["rejected_candidates"]) > 0 and "country=" in eu["rejected_by_filter"]
    assert eu["top_candidates"].startswith(f"{eu['cloud']}:{eu['region']} {eu['instance_type']}")
    code, out, _ = run(capsys, "dry-run", str(EXAMPLES), "-o", "csv")
    assert not set(explained) & set(next(csv.DictReader(io.StringIO(out))))


@pytest.mark.parametrize("args", [["regions"], ["regions", "-o", "json"],
                                  ["dry-run", str(EXAMPLES), "-o", "csv"], ["schema", "job"]])
def test_a_closed_pipe_is_quiet_and_exits_0(args: list[str]) -> None:
    # The reader is gone before the first write (like `| head` that has read enough).
    with subprocess.Popen([sys.executable, "-m", "greenplace", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0 and err == ""


def test_schema_of_a_whole_jobs_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema", "jobs-file")
    schema = json.loads(out)
    assert code == 0
    jsonschema.validate(yaml.safe_load(EXAMPLES.read_text()), schema)
    jsonschema.validate(yaml.safe_load(JOB), schema)
    for bad in ({"jobs": []}, {"jobs": [{"name": "a"}]}, {"jobs": [yaml.safe_load(JOB)], "x": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_validate_a_jobs_file_or_a_policy_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "validate", str(EXAMPLES))
    assert code == 0 and out.startswith(f"OK: {EXAMPLES} is a valid jobs file: 7 job(s)")
    code, out, _ = run(capsys, "validate", str(REPO / "policies" / "eu-sovereign.yaml"))
    assert code == 0 and "valid policy (eu-sovereign)" in out
    broken = tmp_path / "jobs.yaml"
    broken.write_text(JOB.replace("A100", "A1000"))
    err = one_paragraph_error(*run(capsys, "validate", str(broken)))
    assert "Did you mean 'A100'" in err
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\nweights: {carbon: 1, cost: 0}\ncarbon_signal: margnal\n")
    err = one_paragraph_error(*run(capsys, "validate", str(policy)))
    assert "field 'carbon_signal'" in err and "Did you mean 'marginal'?" in err
    err = one_paragraph_error(*run(capsys, "validate", str(policy), "--kind", "jobs"))
    assert "field 'run'" in err


def test_policies_list_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "policies", "list", "-o", "json")
    presets = {p["name"]: p for p in json.loads(out)}
    assert code == 0 and set(presets) == {"balanced", "cheapest", "eu-sovereign", "greenest"}
    assert presets["greenest"]["weights"] == {"carbon": 1.0, "cost": 0.0, "time": 0.0}
    assert presets["eu-sovereign"]["constraints"]["spot"] == "forbid"
    assert presets["balanced"]["constraints"] == {}
    code, out, _ = run(capsys, "policies", "show", "eu-sovereign", "-o", "json")
    assert code == 0 and json.loads(out) == presets["eu-sovereign"]
    (tmp_path / "mine.yaml").write_text("name: mine\nconstraints: {clouds: [gcp]}\n")
    code, out, _ = run(capsys, "policies", "show", str(tmp_path / "mine.yaml"))
    assert code == 0 and yaml.safe_load(out)["constraints"] == {"clouds": ["gcp"]}
    err = one_paragraph_error(*run(capsys, "policies", "show", "greenst"))
    assert "Did you mean 'greenest'" in err


def test_shell_completion_is_documented_and_works() -> None:
    readme = (REPO / "README.md").read_text()
    assert "_GREENPLACE_COMPLETE=bash_source greenplace" in readme
    out = subprocess.run([sys.executable, "-m", "greenplace"], cwd=REPO, capture_output=True,
                         text=True, env={"_GREENPLACE_COMPLETE": "bash_source",
                                         "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0 and "_greenplace_completion" in out.stdout
    # Completing a command name goes through the lazily loaded command table.
    out = subprocess.run([sys.executable, "-m", "greenplace"], cwd=REPO, capture_output=True,
                         text=True, env={"_GREENPLACE_COMPLETE": "bash_complete",
                                         "COMP_WORDS": "greenplace dry-run --ou",
                                         "COMP_CWORD": "2", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0 and "plain,--output" in out.stdout.split()


def test_messages_never_send_users_to_source_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GREENPLACE_SIGNALS", "sometimes")
    err = one_paragraph_error(*run(capsys, "status"))
    assert "GREENPLACE_SIGNALS" in err
    monkeypatch.delenv("GREENPLACE_SIGNALS")
    sim = tmp_path / "sim.yaml"
    sim.write_text("- 1\n")
    monkeypatch.setenv("GREENPLACE_SIM_CONFIG", str(sim))
    err = one_paragraph_error(*run(capsys, "sim", "instances"))
    assert "run_time_s" in err
    code, out, _ = run(capsys, "signals", "--help")
    for text in (err, out):
        assert not re.search(r"\.py\b|scheduler/|providers/", text), text
