"""The estimator against worked examples computed by hand."""

import math

import numpy as np
import pytest

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler import estimate


def test_energy_and_emissions_worked_example() -> None:
    # 8 x A100 (TDP 400 W) at utilisation 0.8 -> 320 W each; 10 h; PUE 1.1
    # energy = 10 h x 8 x 320 W x 1.1 / 1000 = 28.16 kWh
    # at 400 g/kWh: 28.16 x 400 / 1000 = 11.264 kg CO2e
    power = estimate.average_power_w(tdp_w=400.0, utilization=0.8)
    assert power == pytest.approx(320.0)
    energy = estimate.energy_kwh(runtime_h=10.0, accelerator_count=8, average_power_w=power,
                                 pue=1.1)
    assert energy == pytest.approx(28.16)
    assert estimate.co2e_kg(energy_kwh=energy, intensity_g_per_kwh=400.0) == pytest.approx(11.264)


def test_measured_power_wins_over_tdp() -> None:
    assert estimate.average_power_w(tdp_w=700.0, utilization=0.8, measured_w=510.0) == 510.0
    arr = estimate.average_power_w(tdp_w=np.array([400.0, 700.0]), utilization=0.8,
                                   measured_w=250.0)
    assert arr.tolist() == [250.0, 250.0]


def test_runtime_scales_by_peak_dense_throughput() -> None:
    # 12 h on 8 x A100 (312 TF) -> on 8 x H100 (989 TF): 12 x 312 x 8 / (989 x 8) = 3.7856 h
    hours = estimate.scaled_runtime_h(reference_hours=12.0, reference_tflops=312.0,
                                      reference_count=8, tflops=989.0, count=8)
    assert hours == pytest.approx(3.785642, rel=1e-5)
    # half as many of the same accelerator takes twice as long
    assert estimate.scaled_runtime_h(reference_hours=12.0, reference_tflops=312.0,
                                     reference_count=8, tflops=312.0, count=4) == 24.0


def test_cfe_ranks_the_energy_the_grids_cfe_does_not_cover() -> None:
    # 75 % grid CFE -> 0.25 kWh of every kWh uncovered; the grid average plays no part
    got = estimate.ranked_per_kwh(
        CarbonSignal.CFE, grid_average_g_per_kwh=400.0, grid_marginal_g_per_kwh=math.nan,
        grid_cfe_pct=75.0, provider_cfe_pct=math.nan)
    assert got == pytest.approx(0.25)
    assert estimate.RANKED_QUANTITY[CarbonSignal.CFE].as_dict() == {
        "signal": "cfe", "quantity": "uncovered_energy_kwh", "unit": "kWh"}


def test_unknown_cfe_is_never_green() -> None:
    got = estimate.ranked_per_kwh(
        CarbonSignal.CFE, grid_average_g_per_kwh=np.array([400.0, 300.0]),
        grid_marginal_g_per_kwh=np.array([np.nan, np.nan]),
        grid_cfe_pct=np.array([np.nan, 50.0]), provider_cfe_pct=np.array([np.nan, np.nan]))
    assert got.tolist() == [1.0, 0.5]  # unknown counts as 0 %: the whole kWh uncovered


def test_each_signal_ranks_its_own_quantity_per_kwh() -> None:
    kw = dict(grid_average_g_per_kwh=400.0, grid_marginal_g_per_kwh=650.0, grid_cfe_pct=10.0,
              provider_cfe_pct=80.0)
    assert estimate.ranked_per_kwh(CarbonSignal.AVERAGE, **kw) == pytest.approx(0.4)  # kg
    assert estimate.ranked_per_kwh(CarbonSignal.MARGINAL, **kw) == pytest.approx(0.65)  # kg
    assert estimate.ranked_per_kwh(CarbonSignal.CFE, **kw) == pytest.approx(0.9)  # kWh
    assert estimate.ranked_per_kwh(CarbonSignal.PROVIDER_CFE, **kw) == pytest.approx(0.2)
    units = {s: (q.quantity, q.unit) for s, q in estimate.RANKED_QUANTITY.items()}
    assert units == {
        CarbonSignal.AVERAGE: ("co2e_kg", "kg CO2e"),
        CarbonSignal.MARGINAL: ("marginal_co2e_kg", "kg CO2e"),
        CarbonSignal.CFE: ("uncovered_energy_kwh", "kWh"),
        CarbonSignal.PROVIDER_CFE: ("provider_uncovered_energy_kwh", "kWh")}


def test_a_missing_provider_cfe_is_never_read_as_zero_or_as_the_grids() -> None:
    got = estimate.ranked_per_kwh(
        CarbonSignal.PROVIDER_CFE, grid_average_g_per_kwh=np.array([400.0, 300.0]),
        grid_marginal_g_per_kwh=np.array([np.nan, np.nan]),
        grid_cfe_pct=np.array([90.0, 90.0]), provider_cfe_pct=np.array([np.nan, 60.0]))
    assert np.isnan(got[0]) and got[1] == pytest.approx(0.4)


@pytest.mark.parametrize(("cloud", "idle_w", "full_w"), [
    ("aws", 0.74, 3.5), ("gcp", 0.71, 4.26), ("azure", 0.78, 3.76)])
def test_host_power_is_vcpus_at_half_load_plus_memory(cloud: str, idle_w: float,
                                                       full_w: float) -> None:
    # AWS p4d.24xlarge: 96 vCPUs, 1,152 GiB; CCF: vCPU watts half way between idle and full,
    # memory 0.392 W per GB (1 GiB = 1.073741824 GB).
    expected = 96 * (idle_w + (full_w - idle_w) / 2) + 1152 * 1.073741824 * 0.392
    got = estimate.host_power_w(cloud=cloud, vcpus=96, memory_gib=1152.0)
    assert got == pytest.approx(expected)
    assert estimate.host_energy_kwh(runtime_h=10.0, host_power_w=got, pue=1.2) == pytest.approx(
        10 * expected * 1.2 / 1000)


def test_a_cloud_without_host_coefficients_gets_the_mean_of_the_known_ones() -> None:
    known = [estimate.host_power_w(cloud=c, vcpus=96, memory_gib=1152)
             for c in ("aws", "gcp", "azure")]
    other = estimate.host_power_w(cloud="nordic-openstack", vcpus=96, memory_gib=1152)
    assert other == pytest.approx(sum(known) / 3)
