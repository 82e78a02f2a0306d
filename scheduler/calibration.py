"""Calibration: each accelerator's measured average power per chip, learnt from finished jobs,
and the same per optional job label.

An estimate starts from TDP x utilisation (0.8 by default). Once jobs on an accelerator
have reported what their GPUs really drew (the agent's NVML figures), placement uses the
median of those runs instead, for jobs that give no ``work.avg_power_w`` of their own,
and the decision says "calibrated from N runs". A job may name a ``calibration_label``
(``llm-pretrain``, ``eval``): its runs count both for the accelerator and for the
(accelerator, label) pair, and a job with that label is estimated from the label's median
once the label has ``MIN_RUNS`` runs on the accelerator ("calibrated from N runs of label
X"), else from the accelerator's, else from TDP x utilisation.

Keys (under the store's prefix): ``{prefix}:calibration:{accelerator}`` and
``{prefix}:calibration:{accelerator}:{label}`` are lists of the last ``MAX_RUNS`` runs'
watts per chip, newest first (``pipeline.calibration_key`` names them).

Design choice: the median of the last 100 runs, not a mean: one job that idles its GPUs
for hours (or a fault that pins them) must not move every later estimate, and the window
follows changes in how a team uses the hardware. ``MIN_RUNS`` runs are needed before
calibration replaces the TDP model, and runs shorter than ``MIN_WALL_S`` are ignored
(start-up dominates them). Only NVML methods count: a host model is no measurement.
Design choice: a label is one free word, not a mapping of tags: one level below the
accelerator is what a median can learn from a handful of runs; the label's runs also teach
the accelerator's median, so labelled work never leaves the unlabelled estimate behind.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping
from typing import Any

from greenplace.scheduler.exceptions import UserInputError, shown
from greenplace.scheduler.jobs import CALIBRATION_LABEL_PATTERN
from greenplace.scheduler.placement.pipeline import CalibratedPower, calibration_key
from greenplace.scheduler.store import JobRecord, JobStore

MAX_RUNS = 100
MIN_RUNS = 3
MIN_WALL_S = 60.0
MAX_POWER_W = 5_000.0  # above any accelerator's limit: a broken report, not a measurement


def _prefix(store: JobStore) -> str:
    return f"{store.prefix}:calibration:"


def _key(store: JobStore, accelerator: str, label: str | None = None) -> str:
    return _prefix(store) + calibration_key(accelerator, label)


def checked_label(label: str) -> str:
    """``label`` when it is a valid calibration label; else a UserInputError."""
    if not re.fullmatch(CALIBRATION_LABEL_PATTERN, label):
        raise UserInputError(f"{shown(label)} is not a calibration label. To fix: give 1 to 63 "
                             "letters, digits, '.', '_' or '-', as in a job's "
                             "calibration_label.")
    return label


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


def record_run(store: JobStore, *, accelerator: str, measurement: Mapping[str, Any],
               label: str | None = None) -> float | None:
    """Add a finished run of ``accelerator`` to its calibration, and to that of
    (``accelerator``, ``label``) when the job has a label; returns the watts per chip it
    counted (None: the run measured no GPU, or too briefly)."""
    watts = per_chip_power_w(measurement)
    if watts is None:
        return None
    pipe = store.client.pipeline(transaction=True)
    for key in [_key(store, accelerator)] + ([_key(store, accelerator, label)] if label else []):
        pipe.lpush(key, round(watts, 2))
        pipe.ltrim(key, 0, MAX_RUNS - 1)
    pipe.execute()
    return watts


def learn(store: JobStore, record: JobRecord, measurement: Mapping[str, Any]) -> float | None:
    """``record_run`` for a job: its placement's accelerator and its calibration label
    (None: no placement, no GPU measured, or a short run)."""
    placement = record.placement
    if placement is None:
        return None
    label = record.spec.get("calibration_label")
    return record_run(store, accelerator=placement.accelerator, measurement=measurement,
                      label=str(label) if label else None)


def runs(store: JobStore) -> dict[tuple[str, str | None], list[float]]:
    """Every recorded calibration's runs (watts per chip, newest first), by (accelerator,
    label): label None for all of the accelerator's runs."""
    prefix = _prefix(store)
    keys = sorted(str(k) for k in store.client.scan_iter(f"{prefix}*", count=500))
    pipe = store.client.pipeline(transaction=False)
    for key in keys:
        pipe.lrange(key, 0, -1)
    out: dict[tuple[str, str | None], list[float]] = {}
    for key, values in zip(keys, pipe.execute(), strict=True):
        accelerator, _, label = key[len(prefix):].partition(":")
        out[(accelerator, label or None)] = [float(v) for v in values]
    return out


def median(values: list[float]) -> float | None:
    """The statistic calibration uses (None for no runs)."""
    return statistics.median(values) if values else None


def current(store: JobStore) -> dict[str, CalibratedPower]:
    """The calibrated power of each accelerator, and of each (accelerator, label), with at
    least ``MIN_RUNS`` runs, by ``calibration_key``."""
    return {calibration_key(accelerator, label): CalibratedPower(
                power_w=statistics.median(values), runs=len(values))
            for (accelerator, label), values in runs(store).items() if len(values) >= MIN_RUNS}


def reset(store: JobStore, accelerator: str | None = None, *, label: str | None = None) -> int:
    """Forget recorded runs; returns how many calibrations lost theirs.

    ``accelerator`` alone: its own and all its labels'; with ``label``: only that label's on
    it; ``label`` alone: that label's on every accelerator; neither: everything.
    """
    if label is not None:
        checked_label(label)
    names = [(a, lab) for a, lab in runs(store)
             if (accelerator is None or a == accelerator)
             and (label is None or lab == label)]
    keys = [_key(store, a, lab) for a, lab in names]
    return int(store.client.delete(*keys)) if keys else 0
