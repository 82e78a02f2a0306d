"""Energy, emissions and price of a job on a candidate (Patterson et al. 2021).

    energy_kwh = runtime_h x accelerator_count x average_power_w x PUE / 1000
    co2e_kg    = energy_kwh x intensity_g_per_kwh / 1000   (always the grid average)

The policy's carbon signal only ranks: ``ranked_per_kwh`` gives the ranked quantity
(``RANKED_QUANTITY`` names it and its unit); reported emissions are location-based.

Every function works on Python floats and on NumPy arrays alike, so the dry run,
``greenplace estimate`` and the vectorised placement pipeline share one formula. NumPy is
only imported for arrays (which come from NumPy), so ``greenplace estimate`` never loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from greenplace.policies.model import CarbonSignal

if TYPE_CHECKING:
    import numpy as np

Num = TypeVar("Num", float, "np.ndarray")


def average_power_w(*, tdp_w: Num, utilization: float, measured_w: float | None = None) -> Num:
    """Average draw per accelerator: the measured figure when known, else TDP x utilisation."""
    if measured_w is None:
        return tdp_w * utilization
    if isinstance(tdp_w, float | int):
        return measured_w
    import numpy as np

    return np.full_like(tdp_w, measured_w)


def scaled_runtime_h(
    *,
    reference_hours: float | np.ndarray,
    reference_tflops: float,
    reference_count: int,
    tflops: Num,
    count: Num,
) -> Num:
    """Runtime on another accelerator set, scaled by peak dense throughput.

    ``reference_hours`` may be a column of several jobs' hours (one row per job).

    Design choice: peak dense throughput is the only figure the catalog has for
    every accelerator; real speed-ups depend on the model, so the result is an
    estimate and the decision labels it as such.
    """
    return reference_hours * (reference_tflops * reference_count) / (tflops * count)  # type: ignore[return-value]


def energy_kwh(*, runtime_h: Num, accelerator_count: Num, average_power_w: Num, pue: Num) -> Num:
    """Facility energy of the accelerators over the run, PUE included."""
    return runtime_h * accelerator_count * average_power_w * pue / 1000.0


# The host around the accelerators (CPUs and memory), modelled with Cloud Carbon Footprint's
# published coefficients (methodology, Appendix I): watts per vCPU at 0 % and at 100 % CPU by
# cloud, the hyperscale average CPU utilisation, and 0.000392 kWh per GB-hour of memory.
HOST_W_PER_VCPU_IDLE_FULL = {"aws": (0.74, 3.5), "gcp": (0.71, 4.26), "azure": (0.78, 3.76)}
# A cloud Cloud Carbon Footprint has no coefficients for (a catalog-overlay cloud): the mean
# of the three it has, which differ by under 20 %.
HOST_W_PER_VCPU_OTHER_CLOUD = (
    sum(idle for idle, _ in HOST_W_PER_VCPU_IDLE_FULL.values()) / len(HOST_W_PER_VCPU_IDLE_FULL),
    sum(full for _, full in HOST_W_PER_VCPU_IDLE_FULL.values()) / len(HOST_W_PER_VCPU_IDLE_FULL),
)
HOST_CPU_UTILIZATION = 0.5
HOST_W_PER_GB_MEMORY = 0.392
_GB_PER_GIB = 1.073741824
HOST_POWER_BASIS = (f"modelled: Cloud Carbon Footprint coefficients, vCPUs at "
                    f"{HOST_CPU_UTILIZATION:.0%} CPU + {HOST_W_PER_GB_MEMORY} W per GB of memory")


def host_power_w(*, cloud: str, vcpus: float, memory_gib: float) -> float:
    """Average draw of an instance's host (its vCPUs and memory), accelerators excluded.

    Design choice: the accelerator figure (TDP x utilisation, or measured) covers the
    accelerators only; a GPU machine also powers its CPUs and memory the whole run. The
    coefficients are per cloud averages, so the figure is modelled and labelled as such.
    """
    idle_w, full_w = HOST_W_PER_VCPU_IDLE_FULL.get(cloud, HOST_W_PER_VCPU_OTHER_CLOUD)
    per_vcpu_w = idle_w + HOST_CPU_UTILIZATION * (full_w - idle_w)
    return vcpus * per_vcpu_w + memory_gib * _GB_PER_GIB * HOST_W_PER_GB_MEMORY


def host_energy_kwh(*, runtime_h: Num, host_power_w: Num, pue: Num) -> Num:
    """Facility energy of the host over the run, PUE included."""
    return runtime_h * host_power_w * pue / 1000.0


def co2e_kg(*, energy_kwh: Num, intensity_g_per_kwh: Num) -> Num:
    """Operational emissions of ``energy_kwh`` at ``intensity_g_per_kwh``."""
    return energy_kwh * intensity_g_per_kwh / 1000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RankedQuantity:
    """What a carbon signal ranks candidates by: a named quantity and its unit."""

    signal: CarbonSignal
    quantity: str
    unit: str

    def as_dict(self) -> dict[str, str]:
        return {"signal": str(self.signal), "quantity": self.quantity, "unit": self.unit}


# Each signal's ranked quantity (its value per kWh: ``ranked_per_kwh``). Only ``co2e_kg``
# (grid average) is ever reported as emissions.
RANKED_QUANTITY: dict[CarbonSignal, RankedQuantity] = {
    CarbonSignal.AVERAGE: RankedQuantity(
        signal=CarbonSignal.AVERAGE, quantity="co2e_kg", unit="kg CO2e"),  # x grid average
    CarbonSignal.MARGINAL: RankedQuantity(
        signal=CarbonSignal.MARGINAL, quantity="marginal_co2e_kg", unit="kg CO2e"),
    CarbonSignal.CFE: RankedQuantity(
        signal=CarbonSignal.CFE, quantity="uncovered_energy_kwh", unit="kWh"),
    CarbonSignal.PROVIDER_CFE: RankedQuantity(
        signal=CarbonSignal.PROVIDER_CFE, quantity="provider_uncovered_energy_kwh", unit="kWh"),
}


def ranked_per_kwh(
    signal: CarbonSignal,
    *,
    grid_average_g_per_kwh: Num,
    grid_marginal_g_per_kwh: Num,
    grid_cfe_pct: Num,
    provider_cfe_pct: Num,
) -> Num:
    """The quantity ``signal`` ranks a candidate by, per kWh of its energy.

    Multiply by ``energy_kwh`` for the candidate's ranked carbon (``RANKED_QUANTITY``):

    - ``average``: kg CO2e per kWh at the grid average.
    - ``marginal``: kg CO2e per kWh at the grid marginal figure (NaN where unknown; such
      candidates are rejected by the ``carbon_signal`` filter, never ranked with another type).
    - ``cfe``: the share of each kWh the grid's carbon-free energy does not cover,
      ``1 - grid_cfe_pct / 100``. Unknown grid CFE (NaN) counts as 0 %, never as green.
    - ``provider_cfe``: ``1 - provider_cfe_pct / 100``; NaN where the provider publishes
      none (rejected by the ``carbon_signal`` filter, never read as 0 % or as the grid's).

    Design choice: this only ranks. The emissions greenplace reports are always
    location-based (``co2e_kg`` at the grid average), whatever the signal: a grid CFE
    adjustment of the average intensity would count the grid's clean share twice.
    """
    if signal is CarbonSignal.AVERAGE:
        return grid_average_g_per_kwh / 1000.0
    if signal is CarbonSignal.MARGINAL:
        return grid_marginal_g_per_kwh / 1000.0
    if signal is CarbonSignal.PROVIDER_CFE:
        return 1.0 - provider_cfe_pct / 100.0
    if isinstance(grid_cfe_pct, float | int):
        return 1.0 - (0.0 if math.isnan(grid_cfe_pct) else grid_cfe_pct) / 100.0
    import numpy as np

    return 1.0 - np.nan_to_num(np.asarray(grid_cfe_pct, dtype=float), nan=0.0) / 100.0  # type: ignore[return-value]
