"""Energy, emissions and price of a job on a candidate (Patterson et al. 2021).

    energy_kwh = runtime_h x accelerator_count x average_power_w x PUE / 1000
    co2e_kg    = energy_kwh x intensity_g_per_kwh / 1000

Every function works on Python floats and on NumPy arrays alike, so the dry run,
``greenplace estimate`` and the vectorised placement pipeline share one formula. NumPy is
only imported for arrays (which come from NumPy), so ``greenplace estimate`` never loads it.
"""

from __future__ import annotations

import math
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
    idle_w, full_w = HOST_W_PER_VCPU_IDLE_FULL[cloud]
    per_vcpu_w = idle_w + HOST_CPU_UTILIZATION * (full_w - idle_w)
    return vcpus * per_vcpu_w + memory_gib * _GB_PER_GIB * HOST_W_PER_GB_MEMORY


def host_energy_kwh(*, runtime_h: Num, host_power_w: Num, pue: Num) -> Num:
    """Facility energy of the host over the run, PUE included."""
    return runtime_h * host_power_w * pue / 1000.0


def co2e_kg(*, energy_kwh: Num, intensity_g_per_kwh: Num) -> Num:
    """Operational emissions of ``energy_kwh`` at ``intensity_g_per_kwh``."""
    return energy_kwh * intensity_g_per_kwh / 1000.0


def scoring_intensity_g_per_kwh(
    signal: CarbonSignal,
    *,
    grid_average_g_per_kwh: Num,
    grid_marginal_g_per_kwh: Num,
    cfe_pct: Num,
) -> Num:
    """The intensity a candidate is scored with under ``signal``.

    - ``average``: the grid average.
    - ``marginal``: the grid marginal figure (NaN where unknown; such candidates are
      rejected by the pipeline, never scored with another signal type).
    - ``cfe``: grid average x (1 - CFE share). Unknown CFE (NaN) counts as 0 % CFE,
      so a region that does not publish CFE is never treated as green.
    """
    if signal is CarbonSignal.AVERAGE:
        return grid_average_g_per_kwh
    if signal is CarbonSignal.MARGINAL:
        return grid_marginal_g_per_kwh
    if isinstance(grid_average_g_per_kwh, float | int) and isinstance(cfe_pct, float | int):
        cfe_share = 0.0 if math.isnan(cfe_pct) else cfe_pct / 100.0
        return grid_average_g_per_kwh * (1.0 - cfe_share)
    import numpy as np

    array_share = np.nan_to_num(np.asarray(cfe_pct, dtype=float), nan=0.0) / 100.0
    return grid_average_g_per_kwh * (1.0 - array_share)
