"""Temporal shifting: window arithmetic, the (region, start) choice, and the pipeline wiring."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest

from greenplace.policies.model import CarbonSignal, Policy
from greenplace.scheduler.catalog import Catalog, Region
from greenplace.scheduler.jobs import Job, JobSpec, resolve_job
from greenplace.scheduler.placement import Placer
from greenplace.scheduler.placement.timing import (
    choose,
    greenest_slots,
    series,
    wait_limits,
    window_means,
)
from greenplace.scheduler.signals.base import Forecast, SignalPoint
from tests.conftest import NOW

# A 2 h job on the fixture's 8 x A100 gcp offer (64 vCPUs, 512 GiB): accelerators plus the GCP
# host model (estimate.host_power_w), PUE 1.1.
GCP_2H_KWH = 2 * (8 * 320 + 64 * (0.71 + 4.26) / 2 + 512 * 1.073741824 * 0.392) * 1.1 / 1000
H = 3600.0


class Hourly:
    """A forecast provider from hourly values per region key, starting at NOW."""

    def __init__(self, table: dict[str, list[float]], *, offset_h: float = 0.0) -> None:
        self.table = table
        self.offset_h = offset_h
        self.calls: list[tuple[str, CarbonSignal]] = []

    def forecast(self, region: Region, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast | None:
        self.calls.append((region.key, signal))
        values = self.table.get(region.key)
        if values is None:
            return None
        first = NOW + dt.timedelta(hours=self.offset_h)
        return Forecast(source="fake", zone=region.key, signal=signal, issued_at=NOW,
                        points=tuple(SignalPoint(at=first + dt.timedelta(hours=h), value=v)
                                     for h, v in enumerate(values)), step_s=H)


def make_job(catalog: Catalog, *, policy: dict[str, Any] | None = None, **spec: Any) -> Job:
    raw: dict[str, Any] = {"name": "j", "run": "python train.py",
                           "resources": {"accelerators": {"A100": 8}}, "work": {"hours": 2}}
    raw.update(spec)
    pol = Policy.model_validate({"name": "t", "weights": {"carbon": 1, "cost": 0},
                                 "carbon_signal": "average", **(policy or {})})
    return resolve_job(JobSpec.model_validate(raw), catalog, policy=pol, where="test")


ONLY_FI = {"constraints": {"regions": {"include": ["gcp:europe-north1"]}}}


def fc(values: list[float]) -> Forecast:
    return Forecast(source="f", zone="z", signal=CarbonSignal.AVERAGE, issued_at=NOW,
                    points=tuple(SignalPoint(at=NOW + dt.timedelta(hours=h), value=v)
                                 for h, v in enumerate(values)), step_s=H)


def test_window_means_integrate_the_step_function() -> None:
    s = series(fc([100.0, 50.0, 200.0]), now=NOW)
    assert s is not None
    means = window_means(s, starts_s=np.array([0.0, H, 2 * H]), duration_s=1.5 * H)
    assert means[0] == pytest.approx((100 + 25) / 1.5)
    assert means[1] == pytest.approx((50 + 100) / 1.5)
    assert np.isnan(means[2])  # runs past the forecast's end


def test_series_holds_the_first_point_back_one_step_only() -> None:
    later = Forecast(source="f", zone="z", signal=CarbonSignal.AVERAGE, issued_at=NOW,
                     points=(SignalPoint(at=NOW + dt.timedelta(minutes=40), value=5.0),),
                     step_s=H)
    s = series(later, now=NOW)
    assert s is not None and s.bounds[0] == 0.0
    too_late = Forecast(source="f", zone="z", signal=CarbonSignal.AVERAGE, issued_at=NOW,
                        points=(SignalPoint(at=NOW + dt.timedelta(hours=2), value=5.0),),
                        step_s=H)
    assert series(too_late, now=NOW) is None


def test_greenest_slots_for_a_pausable_job() -> None:
    s = series(fc([300.0, 100.0, 200.0, 50.0]), now=NOW)
    assert s is not None
    plan = greenest_slots(s, duration_s=2 * H, latest_end_s=4 * H)
    assert plan is not None
    mean, slots = plan
    assert mean == pytest.approx(75.0)
    assert slots == [(H, 2 * H), (3 * H, 4 * H)]
    assert greenest_slots(s, duration_s=2 * H, latest_end_s=1.5 * H) is None


def test_wait_limits(small_catalog: Catalog) -> None:
    assert wait_limits(make_job(small_catalog), now=NOW, runtime_h=2) is None
    job = make_job(small_catalog, max_delay_hours=6,
                   deadline=(NOW + dt.timedelta(hours=5)).isoformat())
    assert wait_limits(job, now=NOW, runtime_h=2) == (3 * H, 5 * H)
    assert wait_limits(make_job(small_catalog, max_delay_hours=6), now=NOW,
                       runtime_h=2) == (6 * H, 8 * H)


def test_defers_to_the_greener_window(small_catalog: Catalog) -> None:
    provider = Hourly({"gcp:europe-north1": [100, 100, 100, 40, 40, 100, 100, 100, 100]})
    job = make_job(small_catalog, policy=ONLY_FI, max_delay_hours=6)
    d = Placer(small_catalog, forecast=provider).place(job, now=NOW)
    assert d.start_at == "2026-11-27T15:00:00+00:00"
    assert dt.datetime.fromisoformat(d.start_at) - NOW == dt.timedelta(hours=3)
    assert d.summary()["start_at"] == d.start_at
    note = next(n for n in d.notes if n.startswith("temporal shifting"))
    assert "in 3.0 h" in note and "-60 %" in note and "gcp:europe-north1" in note
    assert provider.calls == [("gcp:europe-north1", CarbonSignal.AVERAGE)]


def test_choice_numbers(small_catalog: Catalog) -> None:
    provider = Hourly({"gcp:europe-north1": [100, 100, 100, 40, 40, 100, 100, 100, 100]})
    job = make_job(small_catalog, policy=ONLY_FI, max_delay_hours=6)
    d = Placer(small_catalog).place(job, now=NOW)
    choice = choose(d, job=job, forecasts=provider, now=NOW)
    assert choice is not None and choice.deferred
    # 2 h x (8 x 320 W + the GCP host model's 64 vCPUs x 2.485 W + 512 GiB x 1.0737 x 0.392 W)
    # x PUE 1.1; 40 g vs 100 g
    assert choice.co2e_kg == pytest.approx(GCP_2H_KWH * 40 / 1000)
    assert choice.reference_co2e_kg == pytest.approx(GCP_2H_KWH * 100 / 1000)
    assert choice.saving_pct == pytest.approx(60.0)
    assert choice.window.slots == ((NOW + dt.timedelta(hours=3), NOW + dt.timedelta(hours=5)),)


def test_without_permission_to_wait_nothing_changes(small_catalog: Catalog) -> None:
    provider = Hourly({"gcp:europe-north1": [100, 10, 10, 10]})
    job = make_job(small_catalog, policy=ONLY_FI)
    with_forecast = Placer(small_catalog, forecast=provider).place(job, now=NOW)
    without = Placer(small_catalog).place(job, now=NOW)
    assert with_forecast.start_at is None
    assert with_forecast.summary(explain=True) == without.summary(explain=True)
    assert provider.calls == []  # no forecast is even fetched


def test_allow_defer_false_runs_now(small_catalog: Catalog) -> None:
    provider = Hourly({"gcp:europe-north1": [100, 10, 10, 10, 10]})
    job = make_job(small_catalog, policy=ONLY_FI, max_delay_hours=3)
    d = Placer(small_catalog, forecast=provider).place(job, now=NOW, allow_defer=False)
    assert d.start_at is None and provider.calls == []


def test_without_a_forecast_the_job_runs_now(small_catalog: Catalog) -> None:
    job = make_job(small_catalog, policy=ONLY_FI, max_delay_hours=6)
    d = Placer(small_catalog, forecast=Hourly({})).place(job, now=NOW)
    assert d.start_at is None
    assert any("no forecast for gcp:europe-north1" in n for n in d.notes)


def test_small_savings_do_not_defer(small_catalog: Catalog) -> None:
    provider = Hourly({"gcp:europe-north1": [100, 100, 99, 99, 100, 100]})
    job = make_job(small_catalog, policy=ONLY_FI, max_delay_hours=4)
    d = Placer(small_catalog, forecast=provider).place(job, now=NOW)
    assert d.start_at is None
    assert any("would save only 1.0 %" in n for n in d.notes)


def test_deadline_bounds_the_wait(small_catalog: Catalog) -> None:
    provider = Hourly({"gcp:europe-north1": [100, 100, 100, 40, 40, 100, 100]})
    deadline = (NOW + dt.timedelta(hours=4)).isoformat()  # 2 h run: latest start +2 h
    job = make_job(small_catalog, policy=ONLY_FI, deadline=deadline)
    d = Placer(small_catalog, forecast=provider).place(job, now=NOW)
    assert d.start_at is None or dt.datetime.fromisoformat(d.start_at) <= NOW + dt.timedelta(
        hours=2)


def test_region_and_time_are_chosen_together(small_catalog: Catalog) -> None:
    policy = {"constraints": {"regions": {"include": ["gcp:*"]}}}
    provider = Hourly({"gcp:europe-north1": [100] * 8,
                       "gcp:us-central1": [400, 400, 20, 20, 400, 400, 400, 400]})
    job = make_job(small_catalog, policy=policy, max_delay_hours=4)
    d = Placer(small_catalog, forecast=provider).place(job, now=NOW)
    assert d.start_at == "2026-11-27T14:00:00+00:00"
    assert d.summary()["region"] == "us-central1"  # moved to the head of the ranking
    assert d.placements()[1].region == "europe-north1"  # failover order keeps the rest


def test_marginal_policy_asks_for_a_marginal_forecast(small_catalog: Catalog) -> None:
    provider = Hourly({"aws:us-east-1": [600, 600, 300, 300, 600, 600]})
    job = make_job(small_catalog, policy={"carbon_signal": "marginal"}, max_delay_hours=4)
    d = Placer(small_catalog, forecast=provider).place(job, now=NOW)
    assert provider.calls == [("aws:us-east-1", CarbonSignal.MARGINAL)]
    assert d.start_at == "2026-11-27T14:00:00+00:00"
    assert any("g/kWh marginal" in n for n in d.notes)


def test_cfe_policy_scales_the_average_forecast(small_catalog: Catalog) -> None:
    provider = Hourly({"gcp:europe-north1": [100, 100, 50, 50, 100, 100]})
    job = make_job(small_catalog, policy={**ONLY_FI, "carbon_signal": "cfe"},
                   max_delay_hours=4)
    d = Placer(small_catalog).place(job, now=NOW)
    choice = choose(d, job=job, forecasts=provider, now=NOW)
    assert provider.calls == [("gcp:europe-north1", CarbonSignal.AVERAGE)]
    assert choice is not None and choice.deferred
    assert choice.intensity_g_per_kwh == pytest.approx(50 * (1 - 0.9))
    assert choice.reference_co2e_kg == pytest.approx(float(d.co2e_kg[d.chosen]))
    # ranked on GCP_2H_KWH x 5 g vs x 10 g (-50 %); reported location-based at the forecast
    # grid average: GCP_2H_KWH x 50 g vs x 100 g now
    assert choice.score_co2e_kg == pytest.approx(GCP_2H_KWH * 5 / 1000)
    assert choice.saving_pct == pytest.approx(50.0)
    assert choice.co2e_kg == pytest.approx(GCP_2H_KWH * 50 / 1000)
    assert choice.reference_co2e_kg == pytest.approx(GCP_2H_KWH * 100 / 1000)
    assert any("location-based, forecast grid average" in n for n in choice.notes)


def test_marginal_shift_reports_the_catalog_average_and_says_so(small_catalog: Catalog) -> None:
    provider = Hourly({"aws:us-east-1": [600, 600, 300, 300, 600, 600]})
    job = make_job(small_catalog, policy={"carbon_signal": "marginal"}, max_delay_hours=4)
    d = Placer(small_catalog).place(job, now=NOW)
    choice = choose(d, job=job, forecasts=provider, now=NOW)
    assert choice is not None and choice.deferred and choice.saving_pct == pytest.approx(50.0)
    # 2 h x (8 x 320 W + the AWS host model) x PUE 1.15 at the 380 g catalog average, not the
    # forecast
    aws_2h_kwh = 2 * (8 * 320 + 64 * (0.74 + 3.5) / 2 + 512 * 1.073741824 * 0.392) * 1.15 / 1000
    assert choice.co2e_kg == pytest.approx(aws_2h_kwh * 380 / 1000)
    assert choice.reference_co2e_kg == pytest.approx(aws_2h_kwh * 380 / 1000)
    assert any("catalog's annual grid average, not forecast" in n for n in choice.notes)


def test_pausable_job_gets_a_slot_plan(small_catalog: Catalog) -> None:
    provider = Hourly({"gcp:europe-north1": [300, 100, 300, 100, 300, 300]})
    job = make_job(small_catalog, policy=ONLY_FI, max_delay_hours=2, pausable=True)
    d = Placer(small_catalog).place(job, now=NOW)
    choice = choose(d, job=job, forecasts=provider, now=NOW)
    assert choice is not None and choice.deferred
    assert choice.window.slots == (
        (NOW + dt.timedelta(hours=1), NOW + dt.timedelta(hours=2)),
        (NOW + dt.timedelta(hours=3), NOW + dt.timedelta(hours=4)))
    assert choice.window.forecast_mean == pytest.approx(100.0)
    assert "Pausable plan (2 slots)" in choice.notes[-1]


def test_hourly_forecast_starting_at_the_next_hour(small_catalog: Catalog) -> None:
    # Electricity Maps forecasts start at the next full hour: held back to now.
    provider = Hourly({"gcp:europe-north1": [100, 100, 30, 30, 100]}, offset_h=0.5)
    job = make_job(small_catalog, policy=ONLY_FI, max_delay_hours=3)
    d = Placer(small_catalog, forecast=provider).place(job, now=NOW)
    assert d.start_at == "2026-11-27T14:30:00+00:00"
