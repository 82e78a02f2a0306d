"""An agent's measurement summary: the trust boundary for what a job's machine reports.

The agent (``scheduler/agent.py``) writes it when the job's command ends; it reaches the
service in the exit telemetry report (the API) or, for the ``local`` provider, from the
summary file in the job's folder (reconcile). Both validate it here before the job record
keeps it: known fields only, bounded values, nothing secret.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field


class DeviceMeasurement(BaseModel):
    """One meter of the agent's summary: a GPU, a CPU package, its DRAM or the host model."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=128)
    kind: Literal["gpu", "cpu", "dram", "host"]
    method: Literal["nvml-energy-counter", "nvml-power-integration", "rapl", "host-model"]
    energy_j: float = Field(ge=0, le=1e15)
    avg_power_w: float | None = Field(None, ge=0, le=1e6)
    peak_power_w: float | None = Field(None, ge=0, le=1e6)
    utilization_pct: float | None = Field(None, ge=0, le=100)


class MeasurementSummary(BaseModel):
    """The agent's final summary (``scheduler/agent.py`` ``build_summary``), stored as the
    job's ``measurement``."""

    model_config = ConfigDict(extra="forbid")
    job_id: str | None = Field(None, max_length=64)
    exit_code: int = Field(ge=0, le=255)
    started_at: dt.datetime
    ended_at: dt.datetime
    wall_s: float = Field(ge=0, le=1e9)
    energy_j: float = Field(ge=0, le=1e15)
    method: str = Field(max_length=64, pattern=r"^[a-z0-9+-]+$")
    devices: list[DeviceMeasurement] = Field(default_factory=list, max_length=64)
    notes: list[Annotated[str, Field(max_length=500)]] = Field(default_factory=list,
                                                                max_length=16)
    overhead_cpu_s: float = Field(ge=0, le=1e9)


def checked_summary(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``data`` as a valid summary (JSON-ready), or None when it is missing or invalid."""
    if data is None:
        return None
    try:
        return MeasurementSummary.model_validate(data).model_dump(mode="json")
    except pydantic.ValidationError:
        return None
