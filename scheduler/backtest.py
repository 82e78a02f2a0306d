"""Backtest: replay hourly grid intensities and compare placement strategies.

``read_trace`` reads the two hourly formats of the reference traces:

- the Electricity Maps data-portal CSV (``Datetime (UTC)``, ``Zone Id``,
  ``Carbon Intensity gCO₂eq/kWh (direct)`` and ``(LCA)``, ...); zone ids are
  Electricity Maps zones, matched to the catalog's ``em_zone``;
- the EIA hourly balancing-authority CSV (``balancing_authority``, ``timestamp``,
  generation by fuel, ``avg_CI``); BA codes are mapped to the Electricity Maps
  zone of the same BA (``EIA_TO_EM_ZONE``).

Gap rule (documented, applied per zone on one hourly axis from the trace's first
to its last hour): a missing hour (a blank value or an absent row) is filled by
linear interpolation between the nearest known hours of the same zone when the
gap is at most ``MAX_GAP_H`` hours; a gap at the start or end of the trace of at
most ``MAX_GAP_H`` hours takes the nearest known value; a longer gap is an error,
because interpolating it would invent a day's shape. Every filled hour is listed
in the result. (The EIA sample's MISO series has three missing hours: one alone,
two in a row; all are interpolated.)

``backtest`` places each job at submission times every ``every_h`` hours across
the trace, with the trace's value at submission as the "live" signal and a
forecast drawn from the trace (``oracle``: the trace itself, an upper bound;
``persistence``: each future hour takes the value observed 24 h, 48 h... earlier,
a forecast anyone could make), each reaching ``horizon_h`` hours ahead: by default
``LIVE_FORECAST_HORIZON_H`` (24 h), as far as live mode's Electricity Maps forecast
reaches, so the backtest never defers into a window live mode could not see. Each
strategy's run is then charged the trace's
actual intensities over the hours it really ran:

==================  ============================================================
run-now             the job's home region (``home:``, else the price-only region), now
price-only          the cheapest feasible offer, now (SkyPilot-style baseline)
greenest-now        the lowest-emission feasible offer at submission, now
shift-home          the home region's offer at its best start (temporal shifting alone)
greenplace-region   the policy's choice at submission, now (region choice alone)
greenplace          the policy's region and start time (region + temporal shifting)
==================  ============================================================

All strategies use the same signal type, the trace's grid-average intensity: a
policy scored on ``cfe`` or ``marginal`` is scored on ``average`` here (the trace
has nothing else), and the result says so. Savings are against run-now.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Catalog, Region
from greenplace.scheduler.exceptions import SpecError
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.placement import timing
from greenplace.scheduler.placement.arrays import RegionSignals, provider_cfe_column
from greenplace.scheduler.placement.decision import PlacementDecision
from greenplace.scheduler.placement.pipeline import Placer
from greenplace.scheduler.signals.base import (
    LIVE_FORECAST_HORIZON_H,
    Forecast,
    SignalPoint,
    iso,
    utc,
)

MAX_GAP_H = 6
HOUR = dt.timedelta(hours=1)
# EIA balancing-authority codes -> the Electricity Maps zone of the same area.
EIA_TO_EM_ZONE = {
    "PJM": "US-MIDA-PJM", "CISO": "US-CAL-CISO", "ERCO": "US-TEX-ERCO",
    "MISO": "US-MIDW-MISO", "NYIS": "US-NY-NYIS", "BPAT": "US-NW-BPAT",
    "ISNE": "US-NE-ISNE", "SWPP": "US-CENT-SWPP", "SOCO": "US-SE-SOCO",
    "DUK": "US-CAR-DUK", "TVA": "US-TEN-TVA", "PACE": "US-NW-PACE", "AZPS": "US-SW-AZPS",
}
STRATEGIES = (
    ("run-now", "run now in the job's home region"),
    ("price-only", "price-only placement, now"),
    ("greenest-now", "greenest region now"),
    ("shift-home", "home region, best start time (time only)"),
    ("greenplace-region", "greenplace region choice, now (region only)"),
    ("greenplace", "greenplace region + time choice"),
)
FORECASTS = ("oracle", "persistence")


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """Hourly grid-average intensity per zone on one hourly axis, gaps filled by the rule."""

    name: str
    format: str  # "electricitymaps" or "eia"
    basis: str  # which intensity column: "direct", "lifecycle" or "EIA avg_CI"
    start: dt.datetime
    zones: tuple[str, ...]  # Electricity Maps zone ids
    labels: tuple[str, ...]  # each zone as the file names it (EIA: the BA code)
    intensity_g_per_kwh: np.ndarray  # shape (zones, hours)
    filled: tuple[tuple[str, tuple[dt.datetime, ...]], ...]  # (zone, hours filled by the rule)
    attribution: str

    @property
    def hours(self) -> int:
        return int(self.intensity_g_per_kwh.shape[1])

    @property
    def end(self) -> dt.datetime:
        return self.start + self.hours * HOUR

    def row(self, zone: str) -> np.ndarray:
        return self.intensity_g_per_kwh[self.zones.index(zone)]

    def value_at(self, zone: str, at: dt.datetime) -> float:
        """The value of the hour containing ``at``."""
        k = int((utc(at) - self.start).total_seconds() // 3600)
        if not 0 <= k < self.hours:
            raise ValueError(f"{iso(at)} is outside the trace {self.name}")
        return float(self.row(zone)[k])

    def integral(self, zone: str, start: dt.datetime, end: dt.datetime) -> float:
        """Integral of intensity over ``[start, end]`` in (g/kWh) x hours (hourly steps)."""
        a = (utc(start) - self.start).total_seconds() / 3600.0
        b = (utc(end) - self.start).total_seconds() / 3600.0
        if a < -1e-9 or b > self.hours + 1e-9:
            raise ValueError(f"[{iso(start)}, {iso(end)}] is outside the trace {self.name}")
        cumulative = np.concatenate([[0.0], np.cumsum(self.row(zone))])
        grid = np.arange(self.hours + 1, dtype=float)
        return float(np.interp(b, grid, cumulative) - np.interp(a, grid, cumulative))


def _read_lines(path: Path) -> tuple[str, str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise SpecError(f"trace file {str(path)!r} does not exist. To fix: check the path, or "
                        "use a shipped sample (see `greenplace backtest --help`).") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"trace file {str(path)!r} cannot be read: {exc}.") from exc
    comments = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    return body, " ".join(comments)


def _hour_of(raw: str, *, where: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise SpecError(f"{where}: timestamp {raw!r} is not ISO 8601. To fix: use "
                        "'YYYY-MM-DD HH:MM:SS' in UTC.") from exc
    value = utc(value)
    if value.minute or value.second or value.microsecond:
        raise SpecError(f"{where}: timestamp {raw!r} is not on the hour; the backtest needs "
                        "hourly rows. To fix: resample the trace to hourly values.")
    return value


def read_trace(path: Path, *, basis: str = "direct") -> Trace:
    """Read an Electricity Maps or EIA hourly CSV (detected from its header).

    Args:
        basis: for Electricity Maps files, ``direct`` (operational) or ``lifecycle``
            (LCA) intensity; EIA files have one figure, ``avg_CI``.

    Raises:
        SpecError: unreadable file, unknown format, bad timestamp or value, a
            duplicate hour, or a gap longer than MAX_GAP_H hours.
    """
    body, attribution = _read_lines(path)
    reader = csv.DictReader(io.StringIO(body))
    header = reader.fieldnames or []
    name = path.name
    if "Zone Id" in header and "Datetime (UTC)" in header:
        fmt = "electricitymaps"
        suffix = {"direct": "(direct)", "lifecycle": "(LCA)"}.get(basis)
        if suffix is None:
            raise SpecError(f"unknown intensity basis {basis!r}. To fix: use direct or "
                            "lifecycle.")
        column = next((h for h in header if h.startswith("Carbon Intensity")
                       and h.endswith(suffix)), None)
        if column is None:
            raise SpecError(f"{name}: no 'Carbon Intensity ... {suffix}' column.")
        time_col, zone_col = "Datetime (UTC)", "Zone Id"
        attribution = attribution or "Electricity Maps (ODbL)"
    elif header[:2] == ["balancing_authority", "timestamp"] and "avg_CI" in header:
        fmt, column, time_col, zone_col = "eia", "avg_CI", "timestamp", "balancing_authority"
        basis = "EIA avg_CI"
        attribution = attribution or "U.S. EIA (public domain)"
    else:
        raise SpecError(
            f"{name}: unknown trace format (header {header[:4]}...). To fix: give an "
            "Electricity Maps hourly CSV (Datetime (UTC), Zone Id, Carbon Intensity ...) or an "
            "EIA hourly CSV (balancing_authority, timestamp, ..., avg_CI).")
    values: dict[str, dict[dt.datetime, float | None]] = {}
    for line_no, row in enumerate(reader, start=2):
        where = f"{name} line {line_no}"
        label = (row.get(zone_col) or "").strip()
        if not label:
            raise SpecError(f"{where}: the zone column {zone_col!r} is empty.")
        hour = _hour_of(row.get(time_col) or "", where=where)
        raw = (row.get(column) or "").strip()
        value: float | None = None
        if raw:
            try:
                value = float(raw)
            except ValueError as exc:
                raise SpecError(f"{where}: {column} {raw!r} is not a number.") from exc
            if not math.isfinite(value) or value < 0:
                raise SpecError(f"{where}: {column} {raw!r} is not a non-negative number.")
        series = values.setdefault(label, {})
        if hour in series:
            raise SpecError(f"{where}: {label} has the hour {iso(hour)} twice. To fix: keep "
                            "one row per zone and hour.")
        series[hour] = value
    if not values:
        raise SpecError(f"{name}: the trace has no rows.")
    start = min(h for s in values.values() for h in s)
    end = max(h for s in values.values() for h in s) + HOUR
    hours = int((end - start).total_seconds() // 3600)
    labels = tuple(sorted(values))
    zones = tuple(EIA_TO_EM_ZONE.get(label, label) if fmt == "eia" else label
                  for label in labels)
    matrix = np.empty((len(labels), hours))
    filled = []
    for i, label in enumerate(labels):
        raw_row = np.full(hours, np.nan)
        for hour, value in values[label].items():
            if value is not None:
                raw_row[int((hour - start).total_seconds() // 3600)] = value
        matrix[i], holes = _fill(raw_row, label=label, name=name, start=start)
        if holes:
            filled.append((zones[i], tuple(start + k * HOUR for k in holes)))
    return Trace(name=name, format=fmt, basis=basis, start=start, zones=zones, labels=labels,
                 intensity_g_per_kwh=matrix, filled=tuple(filled), attribution=attribution)


def _fill(row: np.ndarray, *, label: str, name: str,
          start: dt.datetime) -> tuple[np.ndarray, list[int]]:
    """Apply the gap rule to one zone's hourly row; returns the row and the filled hours."""
    missing = np.flatnonzero(np.isnan(row))
    if len(missing) == 0:
        return row, []
    known = np.flatnonzero(~np.isnan(row))
    if len(known) == 0:
        raise SpecError(f"{name}: zone {label} has no value at all.")
    runs: list[list[int]] = []
    for k in missing.tolist():
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    for run in runs:
        if len(run) > MAX_GAP_H:
            raise SpecError(
                f"{name}: zone {label} has {len(run)} missing hours in a row from "
                f"{iso(start + run[0] * HOUR)}; the gap rule fills at most {MAX_GAP_H}. To fix: "
                "use a trace without long gaps, or cut the trace around the gap.")
    out = row.copy()
    out[missing] = np.interp(missing, known, row[known])  # edges take the nearest value
    return out, missing.tolist()


@dataclass(frozen=True, slots=True)
class TraceForecasts:
    """Forecasts drawn from a trace: ``oracle`` (the trace itself) or daily ``persistence``."""

    trace: Trace
    mode: str = "oracle"
    horizon_h: int = LIVE_FORECAST_HORIZON_H

    def forecast(self, region: Region, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast | None:
        if signal is not CarbonSignal.AVERAGE or region.em_zone not in self.trace.zones:
            return None
        zone = region.em_zone
        now = utc(start)
        first = self.trace.start + HOUR * int((now - self.trace.start).total_seconds() // 3600)
        last = min(utc(end), now + self.horizon_h * HOUR, self.trace.end)
        points = []
        t = first
        while t < last:
            if self.mode == "oracle":
                source_hour = t
            else:  # the latest observed hour (at or before the current one) of the same clock time
                days = max(1, math.ceil((t - first).total_seconds() / 86400.0))
                source_hour = t - dt.timedelta(days=days)
            if source_hour < self.trace.start:
                break
            points.append(SignalPoint(at=t, value=self.trace.value_at(zone, source_hour)))
            t += HOUR
        if not points:
            return None
        return Forecast(source=f"trace {self.mode}", zone=zone, signal=CarbonSignal.AVERAGE,
                        issued_at=now, points=tuple(points), step_s=3600.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyTotal:
    """One strategy's totals over every replay, and its savings against run-now."""

    name: str
    label: str
    co2e_kg: float
    cost_usd: float
    saved_co2e_kg: float
    saved_pct: float
    cost_change_usd: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BacktestResult:
    """The backtest table and how it was made."""

    trace: Trace
    forecast: str
    every_h: float
    horizon_h: int
    replays: int
    jobs: tuple[str, ...]
    strategies: tuple[StrategyTotal, ...]
    deferred: int  # greenplace replays that started later than submission
    mean_delay_h: float  # over the deferred ones
    per_job: tuple[dict[str, Any], ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace": {"name": self.trace.name, "format": self.trace.format,
                      "basis": self.trace.basis, "zones": list(self.trace.zones),
                      "start": iso(self.trace.start), "end": iso(self.trace.end),
                      "filled_hours": {z: [iso(h) for h in hours]
                                       for z, hours in self.trace.filled},
                      "attribution": self.trace.attribution},
            "forecast": self.forecast, "horizon_h": self.horizon_h, "every_h": self.every_h,
            "replays": self.replays,
            "jobs": list(self.jobs),
            "strategies": [dataclasses.asdict(s) for s in self.strategies],
            "greenplace_deferred": self.deferred,
            "greenplace_mean_delay_h": round(self.mean_delay_h, 2),
            "per_job": list(self.per_job), "notes": list(self.notes),
        }


def trace_catalog(catalog: Catalog, trace: Trace) -> Catalog:
    """The catalog cut down to the regions whose grid zone the trace covers."""
    regions = [r for r in catalog.regions if r.em_zone in trace.zones]
    if not regions:
        raise SpecError(
            f"{trace.name}: none of its zones ({', '.join(trace.zones)}) is the grid zone "
            "(em_zone) of a catalog region. To fix: use a trace of zones that host cloud "
            "regions (e.g. US-MIDA-PJM, DE, GB).")
    keys = {r.key for r in regions}
    offers = [o for o in catalog.offers if f"{o.cloud}:{o.region}" in keys]
    return Catalog.build(regions, catalog.accelerators, offers)


def _signals_at(catalog: Catalog, trace: Trace, at: dt.datetime) -> RegionSignals:
    values = np.array([trace.value_at(r.em_zone, at) for r in catalog.regions])
    nan = np.full(len(catalog.regions), np.nan)
    return RegionSignals(
        grid_average_g_per_kwh=values, grid_marginal_g_per_kwh=nan, cfe_pct=nan.copy(),
        provider_cfe_pct=provider_cfe_column(catalog),
        source=tuple(f"trace {trace.name}" for _ in catalog.regions),
        observed_at=tuple(iso(at) for _ in catalog.regions))


def _for_backtest(job: Job) -> Job:
    """The job scored on the trace's signal type, its absolute deadline dropped."""
    policy = job.policy
    if policy.carbon_signal is not CarbonSignal.AVERAGE:
        policy = policy.model_copy(update={"carbon_signal": CarbonSignal.AVERAGE})
    spec = job.spec
    if spec.deadline is not None:
        spec = spec.model_copy(update={"deadline": None})
    return dataclasses.replace(job, policy=policy, spec=spec)


def _emitted_kg(decision: PlacementDecision, candidate: int, trace: Trace,
                slots: Sequence[tuple[dt.datetime, dt.datetime]]) -> float:
    """Energy spread evenly over the run slots, charged the trace's intensities."""
    zone = decision.arrays.regions[decision.region_index[candidate]].em_zone
    hours = sum((b - a).total_seconds() / 3600.0 for a, b in slots)
    area = sum(trace.integral(zone, a, b) for a, b in slots)
    return float(decision.energy_kwh[candidate]) * (area / hours) / 1000.0


def backtest(jobs: Sequence[Job], trace: Trace, catalog: Catalog, *, every_h: float = 6.0,
             forecast: str = "oracle", horizon_h: int = LIVE_FORECAST_HORIZON_H,
             home: str | None = None,
             min_saving_pct: float = timing.MIN_SAVING_PCT,
             progress: Callable[[Sequence[Job]], Iterable[Job]] = iter) -> BacktestResult:
    """Replay ``jobs`` over ``trace`` and total each strategy's emissions and cost.

    Args:
        horizon_h: how far ahead each forecast reaches, in hours (default: what live mode
            gets, ``LIVE_FORECAST_HORIZON_H``).
        home: a CLOUD:REGION that replaces every job's own ``home`` (the run-now region).
        progress: wraps the loop over the jobs (the CLI shows a progress bar with it).

    Raises:
        SpecError: no catalog region in the trace's zones, a job's home region outside
            them or without an offer for the job, or no replay fitting in the trace.
    """
    if forecast not in FORECASTS:
        raise SpecError(f"unknown forecast {forecast!r}. To fix: use one of {FORECASTS}.")
    if every_h <= 0:
        raise SpecError("--every must be a positive number of hours.")
    if horizon_h < 1:
        raise SpecError(f"--horizon-h {horizon_h} is not a positive number of hours. To fix: "
                        f"give at least 1 (live mode sees {LIVE_FORECAST_HORIZON_H}).")
    sub = trace_catalog(catalog, trace)
    forecasts = TraceForecasts(trace, mode=forecast, horizon_h=horizon_h)
    first = trace.start + (dt.timedelta(days=1) if forecast == "persistence" else dt.timedelta())
    totals = {name: [0.0, 0.0] for name, _ in STRATEGIES}
    notes: list[str] = []
    per_job: list[dict[str, Any]] = []
    replays = deferred = 0
    delay_h = 0.0
    signals_cache: dict[dt.datetime, RegionSignals] = {}
    for job in progress(jobs):
        scored = _for_backtest(job)
        if job.policy.carbon_signal is not CarbonSignal.AVERAGE:
            notes.append(f"{job.name}: policy {job.policy.name!r} scores on "
                         f"{job.policy.carbon_signal}; the trace has grid averages only, so the "
                         "backtest scores it on average.")
        if job.spec.deadline is not None:
            notes.append(f"{job.name}: its absolute deadline is ignored (replays happen at many "
                         "times); give max_delay_hours to let it wait.")
        home_key = home or job.spec.home
        if home_key is not None and home_key not in {r.key for r in sub.regions}:
            raise SpecError(
                f"{job.name}: home region {home_key} is not in a zone of trace {trace.name} "
                f"({', '.join(trace.zones)}). To fix: choose a home region in those zones.")
        wait_h = job.spec.max_delay_hours or 0.0
        job_totals = {name: [0.0, 0.0] for name, _ in STRATEGIES}
        job_replays = 0
        t0 = first
        while t0 < trace.end:
            signals = signals_cache.get(t0)
            if signals is None:
                signals = signals_cache[t0] = _signals_at(sub, trace, t0)
            decision = Placer(sub, signals=signals).place(scored, now=t0, allow_defer=False)
            if not decision.placed:
                notes.append(f"{job.name}: unschedulable over the trace's regions; skipped.")
                break
            feasible = decision.ranking.tolist()
            longest = float(decision.runtime_h[feasible].max())
            if t0 + dt.timedelta(hours=wait_h + longest) > trace.end:
                break
            home_c = _home_candidate(decision, home_key, job_name=job.name)
            runs = _strategy_runs(decision, scored, home=home_c, forecasts=forecasts, now=t0,
                                  min_saving_pct=min_saving_pct)
            for name, (candidate, slots) in runs.items():
                kg = _emitted_kg(decision, candidate, trace, slots)
                usd = float(decision.cost_usd[candidate])
                job_totals[name][0] += kg
                job_totals[name][1] += usd
            start = runs["greenplace"][1][0][0]
            if start > t0:
                deferred += 1
                delay_h += (start - t0).total_seconds() / 3600.0
            job_replays += 1
            t0 += dt.timedelta(hours=every_h)
        if job_replays == 0:
            notes.append(f"{job.name}: no submission time leaves room for its wait and runtime "
                         "inside the trace; not replayed.")
        for name in totals:
            totals[name][0] += job_totals[name][0]
            totals[name][1] += job_totals[name][1]
        replays += job_replays
        per_job.append({"job": job.name, "replays": job_replays, **{
            name: {"co2e_kg": round(v[0], 3), "cost_usd": round(v[1], 2)}
            for name, v in job_totals.items()}})
    if replays == 0:
        raise SpecError(f"no job could be replayed over {trace.name} ({trace.hours} h). To fix: "
                        "use shorter jobs or max_delay_hours, or a longer trace.")
    base_kg, base_usd = totals["run-now"]
    strategies = tuple(
        StrategyTotal(name=name, label=label, co2e_kg=round(totals[name][0], 3),
                      cost_usd=round(totals[name][1], 2),
                      saved_co2e_kg=round(base_kg - totals[name][0], 3),
                      saved_pct=round(100.0 * (base_kg - totals[name][0]) / base_kg, 2)
                      if base_kg > 0 else 0.0,
                      cost_change_usd=round(totals[name][1] - base_usd, 2))
        for name, label in STRATEGIES)
    if home is None and any(j.spec.home is None for j in jobs):
        notes.append("jobs without `home:` run now in the price-only choice's region, so their "
                     "run-now and price-only rows coincide.")
    for zone, hours in trace.filled:
        notes.append(f"{trace.name}: {zone} has {len(hours)} missing hour(s) filled by the gap "
                     f"rule ({', '.join(iso(h) for h in hours[:5])}"
                     f"{'...' if len(hours) > 5 else ''}).")
    return BacktestResult(
        trace=trace, forecast=forecast, every_h=every_h, horizon_h=horizon_h, replays=replays,
        jobs=tuple(j.name for j in jobs), strategies=strategies, deferred=deferred,
        mean_delay_h=delay_h / deferred if deferred else 0.0, per_job=tuple(per_job),
        notes=tuple(dict.fromkeys(notes)))


def _home_candidate(decision: PlacementDecision, home_key: str | None, *,
                    job_name: str) -> int:
    """The cheapest feasible offer in the home region (else the price-only choice)."""
    base = decision.baseline
    assert base is not None
    if home_key is None:
        return base
    regions = decision.arrays.regions
    here = [c for c in decision.ranking.tolist()
            if regions[decision.region_index[c]].key == home_key]
    if not here:
        raise SpecError(
            f"{job_name}: no feasible offer in its home region {home_key} (accelerators, price "
            "or policy constraints). To fix: choose a home region that sells the job's "
            "accelerators under its policy.")
    return min(here, key=lambda c: (float(decision.cost_usd[c]), float(decision.co2e_kg[c])))


def _strategy_runs(
    decision: PlacementDecision, job: Job, *, home: int, forecasts: TraceForecasts,
    now: dt.datetime, min_saving_pct: float,
) -> dict[str, tuple[int, tuple[tuple[dt.datetime, dt.datetime], ...]]]:
    """(candidate, run slots) of every strategy at submission time ``now``."""

    def now_run(c: int) -> tuple[int, tuple[tuple[dt.datetime, dt.datetime], ...]]:
        return c, ((now, now + dt.timedelta(hours=float(decision.runtime_h[c]))),)

    def timed(d: PlacementDecision, fallback: int) -> tuple[
            int, tuple[tuple[dt.datetime, dt.datetime], ...]]:
        choice = timing.choose(d, job=job, forecasts=forecasts, now=now,
                               min_saving_pct=min_saving_pct)
        if choice is None or not choice.deferred:
            return now_run(fallback)
        return choice.candidate, choice.window.slots

    feasible = decision.ranking.tolist()
    greenest = min(feasible, key=lambda c: (float(decision.co2e_kg[c]),
                                            float(decision.cost_usd[c])))
    chosen = decision.chosen
    assert chosen is not None and decision.baseline is not None
    home_only = dataclasses.replace(decision, ranking=np.array([home], dtype=np.int64))
    return {
        "run-now": now_run(home),
        "price-only": now_run(decision.baseline),
        "greenest-now": now_run(greenest),
        "shift-home": timed(home_only, home),
        "greenplace-region": now_run(chosen),
        "greenplace": timed(decision, chosen),
    }
