"""Calibration: measured watts per chip from agents' summaries change the next placement."""

from __future__ import annotations

import datetime as dt
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


def job(name: str = "calibrated") -> Job:
    spec = JobSpec.model_validate({"name": name, "run": "python train.py",
                                   "resources": {"accelerators": {"H100": 8}},
                                   "work": {"hours": 10}})
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
    assert "2 accelerator(s) forgotten" in capsys.readouterr().out
    assert calibration.runs(store) == {}
