"""Calibration: each accelerator's measured average power per chip, learnt from finished jobs.

An estimate starts from TDP x utilisation (0.8 by default). Once jobs on an accelerator
have reported what their GPUs really drew (the agent's NVML figures), placement uses the
median of those runs instead, for jobs that give no ``work.avg_power_w`` of their own,
and the decision says "calibrated from N runs".

Keys (under the store's prefix): ``{prefix}:calibration:{accelerator}`` is a list of the
last ``MAX_RUNS`` runs' watts per chip, newest first.

Design choice: the median of the last 100 runs, not a mean: one job that idles its GPUs
for hours (or a fault that pins them) must not move every later estimate, and the window
follows changes in how a team uses the hardware. ``MIN_RUNS`` runs are needed before
calibration replaces the TDP model, and runs shorter than ``MIN_WALL_S`` are ignored
(start-up dominates them). Only NVML methods count: a host model is no measurement.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from greenplace.scheduler.placement.pipeline import CalibratedPower
from greenplace.scheduler.store import JobStore

MAX_RUNS = 100
MIN_RUNS = 3
MIN_WALL_S = 60.0
MAX_POWER_W = 5_000.0  # above any accelerator's limit: a broken report, not a measurement


def _key(store: JobStore, accelerator: str) -> str:
    return f"{store.prefix}:calibration:{accelerator}"


def per_chip_power_w(measurement: Mapping[str, Any]) -> float | None:
    """Watts per GPU over the run from an agent summary, or None when it measured none.

    Each NVML-measured GPU counts once: its energy over the wall time, averaged over the
    GPUs (the chips the job had, whatever its placement said).
    """
    gpus = [d for d in measurement.get("devices") or ()
            if d.get("kind") == "gpu" and str(d.get("method", "")).startswith("nvml")]
    wall_s = measurement.get("wall_s")
    if not gpus or not isinstance(wall_s, int | float) or wall_s < MIN_WALL_S:
        return None
    watts = sum(float(d["energy_j"]) for d in gpus) / wall_s / len(gpus)
    return watts if 0.0 < watts <= MAX_POWER_W else None


def record_run(store: JobStore, *, accelerator: str,
               measurement: Mapping[str, Any]) -> float | None:
    """Add a finished run of ``accelerator`` to its calibration; returns the watts per chip
    it counted (None: the run measured no GPU, or too briefly)."""
    watts = per_chip_power_w(measurement)
    if watts is None:
        return None
    pipe = store.client.pipeline(transaction=True)
    pipe.lpush(_key(store, accelerator), round(watts, 2))
    pipe.ltrim(_key(store, accelerator), 0, MAX_RUNS - 1)
    pipe.execute()
    return watts


def runs(store: JobStore) -> dict[str, list[float]]:
    """Every accelerator's recorded runs (watts per chip, newest first)."""
    prefix = f"{store.prefix}:calibration:"
    keys = sorted(str(k) for k in store.client.scan_iter(f"{prefix}*", count=500))
    pipe = store.client.pipeline(transaction=False)
    for key in keys:
        pipe.lrange(key, 0, -1)
    return {key[len(prefix):]: [float(v) for v in values]
            for key, values in zip(keys, pipe.execute(), strict=True)}


def median(values: list[float]) -> float | None:
    """The statistic calibration uses (None for no runs)."""
    return statistics.median(values) if values else None


def current(store: JobStore) -> dict[str, CalibratedPower]:
    """The calibrated power of each accelerator with at least ``MIN_RUNS`` runs."""
    return {name: CalibratedPower(power_w=statistics.median(values), runs=len(values))
            for name, values in runs(store).items() if len(values) >= MIN_RUNS}


def reset(store: JobStore, accelerator: str | None = None) -> int:
    """Forget the runs of ``accelerator`` (None: of every accelerator); returns how many
    accelerators lost theirs."""
    names = [accelerator] if accelerator is not None else list(runs(store))
    return int(store.client.delete(*(_key(store, n) for n in names))) if names else 0
