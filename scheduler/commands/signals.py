"""Commands about carbon signals: ``signals`` (live values, fallback outcome) and ``backtest``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.resources
from concurrent.futures import ThreadPoolExecutor
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import click

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.backtest import FORECASTS, BacktestResult, backtest, read_trace
from greenplace.scheduler.catalog import Catalog, Region, load_catalog
from greenplace.scheduler.commands.common import load_cli_jobs, policy_options
from greenplace.scheduler.exceptions import SignalError, UserInputError
from greenplace.scheduler.output import fmt, print_csv, print_json, print_table, progress
from greenplace.scheduler.signals import static, watttime
from greenplace.scheduler.signals.base import LIVE_FORECAST_HORIZON_H, iso
from greenplace.scheduler.signals.cache import MemoryCache
from greenplace.scheduler.signals.chain import ChainResult, SignalChain
from greenplace.scheduler.signals.config import SignalSettings

_TYPES = [s.value for s in CarbonSignal]
TRACES_PACKAGE = "greenplace.scheduler.signals.traces"


def signal_chain(catalog: Catalog) -> SignalChain:
    """The fallback chain the environment configures (CLI and API)."""
    return SignalChain.from_settings(SignalSettings.from_env(), catalog, cache=MemoryCache())


def _row(result: ChainResult, *, source: str, zone: str | None,
         now: dt.datetime) -> dict[str, Any]:
    value = result.value
    attempt = result.attempts[-1] if result.attempts else None
    return {
        "source": source, "zone": zone, "signal": str(result.signal),
        "value": round(value.value, 2) if value else None,
        "unit": value.unit if value else None,
        "observed_at": iso(value.observed_at) if value else None,
        "age": result.age_text(now) if value else None,
        "detail": value.detail if value else None,
        "status": "ok" if value else (attempt.text().split(": ", 1)[1] if attempt else "-"),
    }


def _outcome(result: ChainResult, now: dt.datetime) -> dict[str, Any]:
    skipped = [a.text() for a in result.attempts if a.outcome not in ("ok", "cached")]
    return {
        "signal": str(result.signal),
        "source": result.label() if result.value else None,
        "value": round(result.value.value, 2) if result.value else None,
        "unit": result.value.unit if result.value else None,
        "observed_at": iso(result.value.observed_at) if result.value else None,
        "age": result.age_text(now) if result.value else None,
        "passed_over": skipped,
    }


def _quiet(attempt_text: str) -> bool:
    """Attempts the tables leave out: sources not configured or without the signal type."""
    return ": not configured" in attempt_text or ": type not offered" in attempt_text


def _region_report(chain: SignalChain, region: Region, types: list[CarbonSignal],
                   now: dt.datetime) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name in chain.order:
        source = next((s for s in chain.sources if s.name == name), None)
        if source is None:
            rows.append({"source": name, "zone": None, "signal": None, "value": None,
                         "unit": None, "observed_at": None, "age": None, "detail": None,
                         "status": chain.unconfigured.get(name, "not configured")})
            continue
        zone = source.zone_for(region)
        for t in types:
            if t not in source.signal_types:
                continue
            if zone is None:
                rows.append({"source": name, "zone": None, "signal": str(t), "value": None,
                             "unit": None, "observed_at": None, "age": None, "detail": None,
                             "status": "no zone for this region"})
                continue
            rows.append(_row(chain.value_in_zone(name, zone, signal=t), source=name, zone=zone,
                             now=now))
        if isinstance(source, watttime.WattTimeSource) and zone is not None:
            rows.append(_index_row(source, zone))
    outcome = [_outcome(chain.value(region, signal=t), now) for t in types]
    return {"region": region.key, "em_zone": region.em_zone or None,
            "watttime_region": region.watttime_region or None, "sources": rows,
            "fallback": outcome, "notes": chain.basis_notes(types)}


def _index_row(source: watttime.WattTimeSource, zone: str) -> dict[str, Any]:
    try:
        index = source.signal_index(zone)
    except SignalError as exc:
        status = str(exc)
        return {"source": source.name, "zone": zone, "signal": "marginal index", "value": None,
                "unit": None, "observed_at": None, "age": None, "detail": None,
                "status": status}
    return {"source": source.name, "zone": zone, "signal": "marginal index",
            "value": index.percentile, "unit": "percentile", "observed_at": iso(
                index.observed_at), "age": None, "detail": "signal-index (0 = cleanest)",
            "status": "ok"}


def _zone_report(chain: SignalChain, catalog: Catalog, zone: str, types: list[CarbonSignal],
                 now: dt.datetime) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    outcome: dict[str, dict[str, Any]] = {}
    regions = [r for r in catalog.regions if zone in (r.em_zone, r.watttime_region, r.key)]
    for name in chain.order:
        if name in chain.unconfigured:
            rows.append({"source": name, "zone": zone, "signal": None, "value": None,
                         "unit": None, "observed_at": None, "age": None, "detail": None,
                         "status": chain.unconfigured[name]})
            continue
        source = next(s for s in chain.sources if s.name == name)
        asked = zone
        if name == static.NAME:
            if not regions:
                continue
            asked = regions[0].key
        for t in types:
            if t not in source.signal_types:
                continue
            result = chain.value_in_zone(name, asked, signal=t)
            rows.append(_row(result, source=name, zone=asked, now=now))
            if result.value is not None and str(t) not in outcome:
                outcome[str(t)] = _outcome(result, now)
    return {"zone": zone, "regions": [r.key for r in regions], "sources": rows,
            "fallback": [outcome.get(str(t), {"signal": str(t), "source": None, "value": None})
                         for t in types], "notes": chain.basis_notes(types)}


def all_region_signals(chain: SignalChain, catalog: Catalog, types: list[CarbonSignal],
                 now: dt.datetime) -> list[dict[str, Any]]:
    """The fallback outcome of each signal type for every catalog region (CLI and API)."""

    def ask(region: Region) -> list[dict[str, Any]]:
        out = []
        for t in types:
            result = chain.value(region, signal=t)
            row = _outcome(result, now)
            out.append({"region": region.key, **row})
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [row for rows in pool.map(ask, catalog.regions) for row in rows]


@click.command("signals")
@click.option("--zone", "-z", help="a source zone id (Electricity Maps zone, WattTime region, "
              "Carbon Aware SDK location, 'national' / 'regionid:N' for GB)")
@click.option("--region", "-r", "region_key", help="a catalog region as CLOUD:REGION")
@click.option("--signal", "-s", "signal", type=click.Choice(_TYPES),
              help="only this signal type [default: all three]")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
def signals_cmd(zone: str | None, region_key: str | None, signal: str | None,
                output: str) -> None:
    """Current carbon signal values per source, and which one the fallback chain uses.

    Sources and their order come from the environment (GREENPLACE_SIGNAL_SOURCES,
    ELECTRICITYMAPS_API_KEY, WATTTIME_USERNAME/PASSWORD, GREENPLACE_CARBON_AWARE_SDK_URL;
    see the README's "Live carbon signals"). Without --zone or --region, every catalog region
    is listed with the fallback outcome only. Sources whose emission basis is not the chain's
    (GREENPLACE_SIGNAL_BASIS, lifecycle by default) are shown as skipped, with a note.
    """
    if zone and region_key:
        raise UserInputError("Give --zone or --region, not both. To fix: drop one of them.")
    catalog = load_catalog()
    types = [CarbonSignal(signal)] if signal else list(CarbonSignal)
    with signal_chain(catalog) as chain:
        now = chain.now()
        if region_key:
            report: Any = _region_report(chain, catalog.region(region_key), types, now)
        elif zone:
            report = _zone_report(chain, catalog, zone, types, now)
        else:
            report = all_region_signals(chain, catalog, types, now)
        notes = chain.basis_notes(types)
    if output == "json":
        print_json(report)
        return
    if isinstance(report, list):
        print_table(
            f"carbon signals for {len({r['region'] for r in report})} regions (fallback outcome)",
            [("region", "left"), ("signal", "left"), ("value", "right"), ("unit", "left"),
             ("source", "left"), ("age", "left"), ("passed over", "left")],
            [[r["region"], r["signal"], fmt(r["value"], 1), r["unit"] or "-",
              r["source"] or "none", r["age"] or "-",
              "; ".join(p for p in r["passed_over"] if not _quiet(p)) or "-"]
             for r in report],
            footer="Sources not configured: " + (", ".join(chain.unconfigured) or "none") + ".")
        for note in notes:
            click.echo(f"note: {note}")
        return
    subject = report.get("region") or report.get("zone")
    print_table(
        f"carbon signals for {subject}",
        [("source", "left"), ("zone", "left"), ("signal", "left"), ("value", "right"),
         ("unit", "left"), ("observed", "left"), ("age", "left"), ("status", "left")],
        [[r["source"], r["zone"] or "-", r["signal"] or "-", fmt(r["value"], 1),
          r["unit"] or "-", r["observed_at"] or "-", r["age"] or "-", r["status"]]
         for r in report["sources"]])
    click.echo("fallback outcome:")
    for o in report["fallback"]:
        if o.get("source") is None:
            click.echo(f"  {o['signal']}: no source has it")
            continue
        passed = [p for p in o.get("passed_over", []) if not _quiet(p)]
        click.echo(f"  {o['signal']}: {o['value']} {o['unit']} from {o['source']} "
                   f"({o['age']})" + (f"; passed over: {'; '.join(passed)}" if passed else ""))
    for note in notes:
        click.echo(f"note: {note}")


def _shipped(trace: str) -> Traversable | None:
    """The shipped sample named ``trace`` (with or without ``.csv``), unless it is a path."""
    if Path(trace).exists() or "/" in trace:
        return None
    files = importlib.resources.files(TRACES_PACKAGE)
    for name in (trace, f"{trace}.csv"):
        resource = files / name
        if resource.is_file():
            return resource
    return None


def _print_backtest(result: BacktestResult) -> None:
    print_table(
        f"backtest over {result.trace.name} ({result.trace.basis}, {result.trace.hours} h): "
        f"{result.replays} replays of {len(result.jobs)} jobs",
        [("strategy", "left"), ("kg CO2e", "right"), ("USD", "right"),
         ("saved kg vs run-now", "right"), ("saved %", "right"), ("USD vs run-now", "right")],
        [[s.label, fmt(s.co2e_kg, 1), fmt(s.cost_usd, 0), fmt(s.saved_co2e_kg, 1),
          fmt(s.saved_pct, 1), fmt(s.cost_change_usd, 0)] for s in result.strategies],
        footer=(f"{result.replays} replays (a submission every {result.every_h:g} h); "
                f"forecast: {result.forecast}, {result.horizon_h} h ahead; greenplace deferred "
                f"{result.deferred} of them "
                f"(mean wait {result.mean_delay_h:.1f} h). Emissions charged at the trace's "
                f"actual hourly intensity. Data: {result.trace.attribution}"))
    for note in result.notes:
        click.echo(f"note: {note}")


@click.command("backtest")
@click.argument("jobs_file", type=click.Path(path_type=Path))
@click.option("--trace", "-t", required=True,
              help="an Electricity Maps or EIA hourly CSV, or the name of a shipped sample: "
              "electricitymaps_hourly_2023-06-05_to_11_4zones, "
              "eia_ba_hourly_2022-06-06_to_12_4bas")
@policy_options
@click.option("--every", "every_h", type=click.FloatRange(min=0, min_open=True), default=6.0,
              show_default=True, help="hours between replayed submissions")
@click.option("--forecast", type=click.Choice(FORECASTS), default="oracle", show_default=True,
              help="oracle: the trace itself (an upper bound); persistence: same hour of the "
              "last observed day")
@click.option("--horizon-h", "horizon_h", type=click.IntRange(min=1),
              default=LIVE_FORECAST_HORIZON_H, show_default=True,
              help="hours each forecast reaches ahead; the default is what live mode gets "
              "(Electricity Maps' forecast covers the next 24 h), so the backtest promises no "
              "deferral live mode could not see")
@click.option("--basis", type=click.Choice(["direct", "lifecycle"]), default="direct",
              show_default=True, help="Electricity Maps traces: which intensity column")
@click.option("--home", "home", help="CLOUD:REGION replacing every job's own `home:` (the "
              "run-now region)")
@click.option("--output", "-o", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
def backtest_cmd(jobs_file: Path, trace: str, policy: str | None, override_policy: bool,
                 every_h: float,
                 forecast: str, horizon_h: int, basis: str, home: str | None, output: str) -> None:
    """Replay JOBS_FILE over an hourly carbon trace and compare placement strategies.

    Reports total kg CO2e and cost for: run now in each job's home region
    (`home: CLOUD:REGION`), price-only placement, the greenest region now,
    temporal shifting alone, greenplace's region choice alone, and greenplace's
    region + time choice, with savings against run-now.
    """
    catalog = load_catalog()
    jobs = load_cli_jobs(jobs_file, catalog, policy=policy, override_policy=override_policy)
    resource = _shipped(trace)
    if resource is not None:
        with importlib.resources.as_file(resource) as path:
            parsed = read_trace(path, basis=basis)
    else:
        parsed = read_trace(Path(trace), basis=basis)
    if home is not None:
        home = catalog.region(home).key
    result = backtest(jobs, parsed, catalog, every_h=every_h, forecast=forecast,
                      horizon_h=horizon_h, home=home,
                      progress=lambda js: progress(js, total=len(js), what="replaying",
                                                   min_items=0))
    if output == "json":
        print_json(result.to_dict())
    elif output == "csv":
        print_csv([{"trace": parsed.name, "forecast": forecast, "horizon_h": horizon_h,
                    **dataclasses.asdict(s)}
                   for s in result.strategies])
    else:
        _print_backtest(result)
