"""The grid intensity a measured run is charged at: that of the hours it really ran.

An estimate uses the intensity known at placement (the catalog's yearly figure, or the
live value then). Once a job's agent has measured the run, its CO2e is recomputed with the
intensity of the run's own window: with live signals (``GREENPLACE_SIGNALS=live``), the
grid average of the job's region is read from the signal chain for each hour the run
touched (Electricity Maps' history and past endpoints, WattTime's history, ...), and the
hours are averaged weighted by the run's time in each. Hours no source answers are left
out and counted in the basis; with none answered, or static signals, the decision's figure
stays, and the basis says so. The hours themselves (each one's start, intensity, the run's
seconds in it and the source that answered) are kept beside the average, for the report's
and the dashboard's "intensity over the run window" charts.

Design choice: this runs in a worker (reconcile for a provider that reads the summary
itself, the ``greenplace.attribute`` task for a summary that came through the API), never
in an API request: it may take several signal calls, each bounded by the chain's timeouts
and cached in Redis like placement's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Region
from greenplace.scheduler.signals.chain import SignalChain
from greenplace.scheduler.store import JobStore, RunHour, parse_iso

MAX_HOURS = 72  # a longer run is sampled at this many evenly spaced hours


@dataclass(frozen=True, slots=True, kw_only=True)
class RunIntensity:
    """A run's time-weighted grid intensity, and where it comes from."""

    g_per_kwh: float
    basis: str
    hours: tuple[RunHour, ...]  # every hour looked at, those without a value included


def _hours(start: dt.datetime, end: dt.datetime) -> list[tuple[dt.datetime, float]]:
    """(a moment in each hour the run touched, the run's seconds in that hour)."""
    out = []
    hour = start.replace(minute=0, second=0, microsecond=0)
    while hour < end:
        nxt = hour + dt.timedelta(hours=1)
        seconds = (min(end, nxt) - max(start, hour)).total_seconds()
        out.append((max(start, hour), seconds))
        hour = nxt
    if len(out) > MAX_HOURS:
        step = len(out) / MAX_HOURS
        out = [out[int(k * step)] for k in range(MAX_HOURS)]
    return out


def run_intensity(chain: SignalChain, region: Region, *, start: dt.datetime,
                  end: dt.datetime) -> RunIntensity | None:
    """The grid-average intensity over ``[start, end)`` from ``chain``; None when no hour has
    a value from a live source."""
    weighted, seconds, sources, missing = 0.0, 0.0, set(), 0
    hours = _hours(start, end)
    series = []
    for moment, weight in hours:
        result = chain.value(region, signal=CarbonSignal.AVERAGE, at=moment)
        value = result.value
        hour = moment.replace(minute=0, second=0, microsecond=0)
        if value is None or result.label().startswith("static"):
            missing += 1
            series.append(RunHour(start=hour, seconds=weight, g_per_kwh=None, source=None))
            continue
        weighted += value.value * weight
        seconds += weight
        sources.add(result.label())
        series.append(RunHour(start=hour, seconds=weight, g_per_kwh=value.value,
                              source=result.label()))
    if seconds <= 0:
        return None
    gaps = f", {missing} without a value left out" if missing else ""
    return RunIntensity(
        g_per_kwh=round(weighted / seconds, 3),
        basis=f"hourly grid average over the run from {', '.join(sorted(sources))} "
              f"({len(hours) - missing} hour(s){gaps})",
        hours=tuple(series))


def attribute(store: JobStore, job_id: str, *, chain: SignalChain | None,
              region: Region | None) -> RunIntensity | None:
    """Charge the measured run of ``job_id`` at its window's intensity, when a live chain
    knows it; records it in the job and returns it (None: the decision's figure stays)."""
    record = store.get(job_id)
    measurement = record.measurement or {}
    if chain is None or region is None or not measurement.get("started_at"):
        return None
    start = parse_iso(str(measurement["started_at"]))
    end = parse_iso(str(measurement.get("ended_at") or measurement["started_at"]))
    found = run_intensity(chain, region, start=start, end=max(end, start))
    if found is not None:
        store.record_run_intensity(job_id, g_per_kwh=found.g_per_kwh, basis=found.basis,
                                   hours=found.hours)
    return found
