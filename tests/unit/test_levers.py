"""The savings decomposition into machine, map and mechanization (LMDI-I): exact, hand-checked."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from greenplace.scheduler.levers import LEVERS, Footprint, decompose, footprint


def test_a_hand_computed_split() -> None:
    chosen = Footprint(it_energy_kwh=10.0, pue=1.1, intensity_g_per_kwh=50.0)  # 0.55 kg
    baseline = Footprint(it_energy_kwh=12.0, pue=1.5, intensity_g_per_kwh=400.0)  # 7.2 kg
    levers = decompose(chosen, baseline)
    assert levers is not None
    weight = (7.2 - 0.55) / math.log(7.2 / 0.55)  # the logarithmic mean of 7.2 and 0.55
    assert levers["machine"]["factor"] == 1.2
    assert levers["map"]["factor"] == 8.0
    assert levers["mechanization"]["factor"] == round(1.5 / 1.1, 6)
    assert math.isclose(levers["machine"]["saved_kg"], weight * math.log(1.2))
    assert math.isclose(levers["map"]["saved_kg"], weight * math.log(8.0))
    assert math.isclose(levers["map"]["saved_kg"], 5.37664, rel_tol=1e-5)  # by hand
    assert math.isclose(sum(v["saved_kg"] for v in levers.values()), 7.2 - 0.55, rel_tol=1e-12)


positive = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False)
pue = st.floats(min_value=1.0, max_value=3.0)


@given(positive, pue, positive, positive, pue, positive)
def test_the_levers_always_add_up_to_the_savings(e1: float, p1: float, i1: float, e2: float,
                                                  p2: float, i2: float) -> None:
    chosen = Footprint(it_energy_kwh=e1, pue=p1, intensity_g_per_kwh=i1)
    baseline = Footprint(it_energy_kwh=e2, pue=p2, intensity_g_per_kwh=i2)
    levers = decompose(chosen, baseline)
    assert levers is not None
    total = baseline.co2e_kg - chosen.co2e_kg
    parts = sum(levers[k]["saved_kg"] for k in LEVERS)
    # exact up to rounding: the logs of factors near 1 carry the floats' relative error
    assert math.isclose(parts, total, rel_tol=1e-9,
                        abs_tol=1e-9 * max(baseline.co2e_kg, chosen.co2e_kg))
    product = math.prod(baseline.factor(k) / chosen.factor(k) for k in LEVERS)
    assert math.isclose(product, baseline.co2e_kg / chosen.co2e_kg, rel_tol=1e-9)


def test_no_difference_no_savings_and_a_zero_factor_has_no_split() -> None:
    same = footprint(energy_kwh=33.0, pue=1.1, intensity_g_per_kwh=120.0)
    assert math.isclose(same.it_energy_kwh, 30.0) and math.isclose(same.co2e_kg, 3.96)
    levers = decompose(same, same)
    assert levers is not None and all(v == {"factor": 1.0, "saved_kg": 0.0}
                                      for v in levers.values())
    zero = Footprint(it_energy_kwh=10.0, pue=1.1, intensity_g_per_kwh=0.0)
    assert decompose(zero, same) is None
