"""Calibration: measured watts per chip from agents' summaries change the next placement."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from greenplace.policies.model import load_policy
from greenplace.scheduler import calibration
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.cli import main
from greenplace.scheduler.dispatch import Context, place_and_dispatch
from greenplace.scheduler.jobs import Job, JobSpec, resolve_job
from greenplace.scheduler.placement import Placer
from greenplace.scheduler.placement.pipeline import CalibratedPower
from greenplace.scheduler.settings import Settings
from greenplace.scheduler.store import JobStore, NewJob, new_job_id
from tests.redisproc import RedisServer

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def summary(*gpu_energy_j: float, wall_s: float = 3600.0, method: str = "nvml-energy-counter"
            ) -> dict[str, object]:
    devices = [{"name": f"gpu{n}", "kind": "gpu", "method": method, "energy_j": e}
               for n, e in enumerate(gpu_energy_j)]
    devices.append({"name": "host", "kind": "host", "method": "host-model", "energy_j": 9e9})
    return {"wall_s": wall_s, "devices": devices}


def test_watts_per_chip_from_a_summary() -> None:
    # two GPUs over an hour: 350 W and 450 W -> 400 W per chip; the host model is no GPU
    assert calibration.per_chip_power_w(summary(350 * 3600, 450 * 3600)) == 400.0
    assert calibration.per_chip_power_w(summary(350 * 30, wall_s=30)) is None  # too short
    assert calibration.per_chip_power_w(summary(method="host-model")) is None
    assert calibration.per_chip_power_w(summary(9e12)) is None  # 2.5 MW: a broken report
    assert calibration.per_chip_power_w({"devices": None}) is None


def job(name: str = "calibrated", *, label: str | None = None,
        accelerators: object = None) -> Job:
    spec = JobSpec.model_validate({"name": name, "run": "python train.py",
                                   "resources": {"accelerators": accelerators or {"H100": 8}},
                                   "work": {"hours": 10}, "calibration_label": label})
    return resolve_job(spec, load_catalog(), policy=load_policy("greenest"), where="test")


def test_the_median_of_the_runs_replaces_tdp_x_utilisation() -> None:
    placer = Placer(load_catalog())
    before = placer.place(job(), now=NOW)
    assert before.power_basis == "TDP x utilisation 0.80"
    chosen = before.ranking[0]
    runtime_h = float(before.runtime_h[chosen])
    count = before.offers[chosen].accelerator_count
    pue = before.regions[chosen].pue
    tdp_w = load_catalog().accelerator("H100").tdp_w
    assert float(before.accelerator_energy_kwh[chosen]) == pytest.approx(
        runtime_h * count * tdp_w * 0.8 * pue / 1000)

    placer.calibrate({"H100": CalibratedPower(power_w=420.0, runs=5)})
    after = placer.place(job(), now=NOW)
    assert after.power_basis == "H100 calibrated from 5 runs (420 W per chip)"
    chosen = after.ranking[0]
    assert float(after.accelerator_energy_kwh[chosen]) == pytest.approx(
        float(after.runtime_h[chosen]) * count * 420.0 * pue / 1000)
    assert after.summary()["power_basis"] == after.power_basis


def test_runs_recorded_in_redis_reach_the_workers_next_placement(
        server: RedisServer, tmp_path: Path) -> None:
    server.client().flushall()
    store = JobStore(server.client())
    for watts in (300.0, 900.0):  # two runs are not enough yet
        calibration.record_run(store, accelerator="H100",
                               measurement=summary(watts * 3600))
    assert calibration.current(store) == {}
    calibration.record_run(store, accelerator="H100", measurement=summary(320.0 * 3600))
    assert calibration.current(store) == {"H100": CalibratedPower(power_w=320.0, runs=3)}

    sim = tmp_path / "sim.yaml"
    sim.write_text("launch_latency_s: 0\n")
    ctx = Context.build(Settings(redis_url=server.url, sim_config=sim), store)
    (job_id,) = store.create([NewJob(job_id=new_job_id(), job=job())])
    place_and_dispatch(ctx, job_id, now=dt.datetime.now(dt.UTC))
    decision = store.get(job_id).decision
    assert decision is not None
    assert decision["power_basis"] == "H100 calibrated from 3 runs (320 W per chip)"

    assert calibration.reset(store, "H100") == 1 and calibration.current(store) == {}


def test_the_calibration_commands(server: RedisServer, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    import json

    server.client().flushall()
    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)
    store = JobStore(server.client())
    for watts in (500.0, 520.0, 540.0):
        calibration.record_run(store, accelerator="A100-80GB", measurement=summary(watts * 3600))
    calibration.record_run(store, accelerator="H100", measurement=summary(600.0 * 3600))
    with pytest.raises(SystemExit) as done:
        main(["calibration", "show", "-o", "json"])
    assert done.value.code == 0
    rows = {r["accelerator"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["A100-80GB"]["median_w_per_chip"] == 520.0 and rows["A100-80GB"]["runs"] == 3
    assert rows["A100-80GB"]["used_by_placement"] and not rows["H100"]["used_by_placement"]
    with pytest.raises(SystemExit):
        main(["calibration", "show"])
    assert "needs 3 runs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["calibration", "reset"])
    assert "2 calibration(s) forgotten" in capsys.readouterr().out
    assert calibration.runs(store) == {}


def test_placement_uses_the_labels_median_then_the_accelerators_then_tdp() -> None:
    placer = Placer(load_catalog())
    tdp = placer.place(job(label="llm-pretrain"), now=NOW)
    assert tdp.power_basis == "TDP x utilisation 0.80"
    placer.calibrate({"H100": CalibratedPower(power_w=500.0, runs=9)})
    fallback = placer.place(job(label="llm-pretrain"), now=NOW)
    assert fallback.power_basis == ("H100 calibrated from 9 runs of any label (500 W per chip; "
                                    "too few runs of label llm-pretrain)")
    placer.calibrate({"H100": CalibratedPower(power_w=500.0, runs=9),
                      "H100:llm-pretrain": CalibratedPower(power_w=650.0, runs=4),
                      "H100:eval": CalibratedPower(power_w=200.0, runs=5)})
    labelled = placer.place(job(label="llm-pretrain"), now=NOW)
    assert labelled.power_basis == "H100 calibrated from 4 runs of label llm-pretrain " \
        "(650 W per chip)"
    chosen = labelled.ranking[0]
    assert float(labelled.accelerator_energy_kwh[chosen]) == pytest.approx(
        float(labelled.runtime_h[chosen]) * labelled.offers[chosen].accelerator_count * 650.0
        * labelled.regions[chosen].pue / 1000)
    # an unlabelled job, and another label, are not moved by llm-pretrain's runs
    assert placer.place(job(), now=NOW).power_basis == \
        "H100 calibrated from 9 runs (500 W per chip)"
    assert placer.place(job(label="eval"), now=NOW).power_basis.startswith(
        "H100 calibrated from 5 runs of label eval (200 W")
    # a label calibrated on one accelerator only: the other falls back to its own figure
    both = placer.place(job(label="llm-pretrain", accelerators=[{"H100": 8}, {"A100": 8}]),
                        now=NOW)
    assert both.power_basis == ("H100 calibrated from 4 runs of label llm-pretrain (650 W per "
                                "chip); TDP x utilisation 0.80 for the others")


def test_jobs_of_one_shape_but_different_labels_are_estimated_apart() -> None:
    placer = Placer(load_catalog())
    placer.calibrate({"H100": CalibratedPower(power_w=500.0, runs=9),
                      "H100:eval": CalibratedPower(power_w=200.0, runs=5)})
    plain, labelled = placer.place_all([job("plain"), job("labelled", label="eval")], now=NOW)
    assert plain.power_basis.startswith("H100 calibrated from 9 runs (500 W")
    assert labelled.power_basis.startswith("H100 calibrated from 5 runs of label eval")
    ratio = (float(plain.accelerator_energy_kwh[plain.ranking[0]])
             / float(labelled.accelerator_energy_kwh[labelled.ranking[0]]))
    assert ratio == pytest.approx(500.0 / 200.0)


def test_a_labelled_run_teaches_both_levels_and_reaches_placement(
        server: RedisServer, tmp_path: Path) -> None:
    server.client().flushall()
    store = JobStore(server.client())
    for watts in (600.0, 640.0):
        calibration.record_run(store, accelerator="H100", measurement=summary(watts * 3600))
    (labelled_id,) = store.create([NewJob(job_id=new_job_id(),
                                          job=job("taught", label="llm-pretrain"))])
    sim = tmp_path / "sim.yaml"
    sim.write_text("launch_latency_s: 0\n")
    ctx = Context.build(Settings(redis_url=server.url, sim_config=sim), store)
    place_and_dispatch(ctx, labelled_id, now=dt.datetime.now(dt.UTC))
    # learn() takes the accelerator from the job's placement and the label from its spec
    for watts in (700.0, 720.0, 710.0):
        assert calibration.learn(store, store.get(labelled_id),
                                 summary(watts * 3600)) == pytest.approx(watts)
    assert calibration.runs(store) == {("H100", None): [710.0, 720.0, 700.0, 640.0, 600.0],
                                       ("H100", "llm-pretrain"): [710.0, 720.0, 700.0]}
    assert calibration.current(store) == {
        "H100": CalibratedPower(power_w=700.0, runs=5),
        "H100:llm-pretrain": CalibratedPower(power_w=710.0, runs=3)}

    ctx.calibrated_at[0] = float("-inf")  # the worker re-reads calibration
    (next_id, plain_id) = store.create([
        NewJob(job_id=new_job_id(), job=job("next", label="llm-pretrain")),
        NewJob(job_id=new_job_id(), job=job("plain"))])
    for job_id in (next_id, plain_id):
        place_and_dispatch(ctx, job_id, now=dt.datetime.now(dt.UTC))
    assert (store.get(next_id).decision or {})["power_basis"] == \
        "H100 calibrated from 3 runs of label llm-pretrain (710 W per chip)"
    assert (store.get(plain_id).decision or {})["power_basis"] == \
        "H100 calibrated from 5 runs (700 W per chip)"


def test_show_lists_both_levels_and_reset_takes_a_label(
        server: RedisServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    server.client().flushall()
    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)
    store = JobStore(server.client())
    for watts in (500.0, 520.0, 540.0):
        calibration.record_run(store, accelerator="H100", measurement=summary(watts * 3600),
                               label="eval")
    calibration.record_run(store, accelerator="A100", measurement=summary(300.0 * 3600),
                           label="eval")
    with pytest.raises(SystemExit) as done:
        main(["calibration", "show", "-o", "json"])
    assert done.value.code == 0
    rows = {(r["accelerator"], r["label"]): r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {("A100", None), ("A100", "eval"), ("H100", None), ("H100", "eval")}
    assert rows[("H100", "eval")]["median_w_per_chip"] == 520.0
    assert rows[("H100", "eval")]["used_by_placement"]
    assert not rows[("A100", "eval")]["used_by_placement"]
    with pytest.raises(SystemExit):
        main(["calibration", "show"])
    out = capsys.readouterr().out
    assert "(all runs)" in out and "yes, for jobs labelled eval" in out

    # a bad label is refused before Redis is touched, in one paragraph
    with pytest.raises(SystemExit) as done:
        main(["calibration", "reset", "--label", "no:colons"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "is not a calibration label" in err and "To fix:" in err and "Traceback" not in err
    assert len(calibration.runs(store)) == 4

    with pytest.raises(SystemExit):  # one label on one accelerator
        main(["calibration", "reset", "H100", "--label", "eval"])
    assert "1 calibration(s) forgotten" in capsys.readouterr().out
    assert set(calibration.runs(store)) == {("A100", None), ("A100", "eval"), ("H100", None)}
    assert calibration.reset(store, label="eval") == 1  # that label on every accelerator
    assert calibration.reset(store, "A100") == 1
    assert set(calibration.runs(store)) == {("H100", None)}


@pytest.mark.parametrize("label", ["", "has space", "a:b", "-leading", "x" * 64])
def test_a_bad_calibration_label_is_a_clear_jobs_file_error(
        label: str, tmp_path: Path) -> None:
    from greenplace.scheduler.exceptions import SpecError
    from greenplace.scheduler.jobs import load_jobs

    path = tmp_path / "jobs.yaml"
    path.write_text(json.dumps({"jobs": [{
        "name": "a", "run": "x", "resources": {"accelerators": {"H100": 8}},
        "work": {"hours": 1}, "calibration_label": label}]}))
    with pytest.raises(SpecError) as info:
        load_jobs(path, load_catalog())
    message = str(info.value)
    assert "field 'calibration_label'" in message and "is not a calibration label" in message
    assert "To fix:" in message and "Traceback" not in message
    good = tmp_path / "good.yaml"
    good.write_text(path.read_text().replace(json.dumps(label), '"llm-pretrain.v2_a"'))
    (loaded,) = load_jobs(good, load_catalog())
    assert loaded.spec.calibration_label == "llm-pretrain.v2_a"


def test_the_jobs_file_schema_documents_the_label(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["schema", "jobs-file"])
    assert done.value.code == 0
    schema = json.loads(capsys.readouterr().out)
    label = schema["$defs"]["JobSpec"]["properties"]["calibration_label"]
    assert label["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
    assert "measured power per chip" in label["description"]
