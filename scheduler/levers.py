"""Where a job's savings come from: the machine, the map and the mechanization.

A placement's emissions are the product of three factors::

    co2e_kg = it_energy_kwh x pue x intensity_g_per_kwh / 1000
              (machine)       (mechanization) (map)

``it_energy_kwh`` is what the hardware draws over the run (accelerators and host, before
the data centre's overhead): the **machine** lever, set by the hardware chosen and how
long it runs. ``pue`` is the data centre's overhead: the **mechanization** lever.
``intensity_g_per_kwh`` is the grid's: the **map** lever. Against the price-only baseline
each lever has a factor, ``baseline / chosen`` (above 1: the choice is better there), and
the three factors multiply to the baseline's emissions over the choice's, exactly.

Design choice: the savings in kg are split with the logarithmic mean Divisia index
(LMDI-I; Ang, Energy Policy 32 (2004) 1131-1139): with ``L = (B - C) / ln(B / C)`` for
baseline emissions B and chosen C, lever k saves ``L x ln(factor_k)`` kg. The three parts
sum to ``B - C`` exactly (the logs of the factors sum to ``ln(B / C)``), whatever the
order of the levers, which a step-by-step substitution does not achieve. A lever whose
factor is 1 saves 0 kg; one that made things worse has a negative share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

LEVERS = ("machine", "map", "mechanization")


@dataclass(frozen=True, slots=True, kw_only=True)
class Footprint:
    """The three factors of one placement's emissions."""

    it_energy_kwh: float
    pue: float
    intensity_g_per_kwh: float

    @property
    def co2e_kg(self) -> float:
        return self.it_energy_kwh * self.pue * self.intensity_g_per_kwh / 1000.0

    def factor(self, lever: str) -> float:
        return {"machine": self.it_energy_kwh, "map": self.intensity_g_per_kwh,
                "mechanization": self.pue}[lever]


def footprint(*, energy_kwh: float, pue: float, intensity_g_per_kwh: float) -> Footprint:
    """The footprint of facility energy ``energy_kwh`` (PUE included, as estimates give it)."""
    return Footprint(it_energy_kwh=energy_kwh / pue, pue=pue,
                     intensity_g_per_kwh=intensity_g_per_kwh)


def decompose(chosen: Footprint, baseline: Footprint) -> dict[str, dict[str, float]] | None:
    """Per lever: ``factor`` (baseline / chosen) and ``saved_kg`` (its LMDI share of the
    savings). None when a factor is not positive (a logarithm needs one)."""
    if any(not f.factor(lever) > 0 for f in (chosen, baseline) for lever in LEVERS):
        return None
    total_kg = baseline.co2e_kg - chosen.co2e_kg
    ratio = baseline.co2e_kg / chosen.co2e_kg
    weight = total_kg / math.log(ratio) if not math.isclose(ratio, 1.0) else chosen.co2e_kg
    out = {}
    for lever in LEVERS:
        factor = baseline.factor(lever) / chosen.factor(lever)
        out[lever] = {"factor": round(factor, 6), "saved_kg": weight * math.log(factor)}
    return out


def rounded(levers: dict[str, dict[str, float]] | None, *, digits: int = 6) -> Any:
    """``levers`` with its kg rounded for display (the factors are rounded already)."""
    if levers is None:
        return None
    return {k: {"factor": v["factor"], "saved_kg": round(v["saved_kg"], digits) + 0.0}
            for k, v in levers.items()}  # + 0.0: no "-0.0" for a lever that saved nothing
