"""Commands that need no service: dry-run, estimate, regions, schema."""

from __future__ import annotations

import datetime as dt
import gc
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from greenplace.policies.model import DEFAULT_POLICY, CarbonSignal, Policy, load_policy
from greenplace.scheduler import estimate as est
from greenplace.scheduler.catalog import Catalog, load_catalog
from greenplace.scheduler.commands.common import load_cli_jobs, policy_options
from greenplace.scheduler.exceptions import UserInputError
from greenplace.scheduler.jobs import DEFAULT_UTILIZATION, JobSpec, jobs_file_schema
from greenplace.scheduler.output import (
    FORMATS,
    fmt,
    print_csv,
    print_json,
    print_json_rows,
    print_rows,
    print_table,
    progress,
)

if TYPE_CHECKING:
    from greenplace.scheduler.placement import PlacementDecision

# Rows the dry-run table shows unless --limit says otherwise (a screenful or two).
DEFAULT_TABLE_ROWS = 50

_output = click.option("--output", "-o", type=click.Choice(FORMATS), default="table",
                       show_default=True, help="table for people, json or csv for machines")


def dry_run_rows(
    jobs_file: Path, *, policy: str | None, explain: bool, now: dt.datetime | None = None,
    signals: str = "static", override_policy: bool = False,
) -> Iterator[tuple[dict[str, Any], PlacementDecision]]:
    """Validate every job of a jobs file, then place them as the result is read.

    Returns, in file order, each job's summary with its decision; nothing is kept, so a
    batch of any size streams through. ``signals="live"`` scores on the configured live
    sources (fallback chain, in-memory cache, temporal shifting from their forecasts);
    ``static`` on the catalog only.
    """
    from greenplace.scheduler.placement import Placer  # NumPy: imported when placing
    from greenplace.scheduler.settings import load_settings

    catalog = load_catalog()
    settings = load_settings()
    routes = settings.providers  # the adapters dispatch would use: same candidates
    max_age = settings.price_max_age_days
    when = now or dt.datetime.now(dt.UTC)
    jobs = load_cli_jobs(jobs_file, catalog, policy=policy, override_policy=override_policy,
                         now=when)
    decisions: Iterable[PlacementDecision]
    if signals == "live":
        from greenplace.scheduler.signals.chain import place_live  # HTTP clients, Redis cache

        decisions = place_live(catalog, jobs, now=when, routes=routes,
                               price_max_age_days=max_age)
    else:
        decisions = Placer(catalog, routes=routes,
                           price_max_age_days=max_age).place_each(jobs, now=when)
    replaced = {job.name: job.replaced_policy for job in jobs if job.replaced_policy}
    return _summarised(progress(decisions, total=len(jobs), what="placing"), explain=explain,
                       replaced_policy=replaced)


def _summarised(decisions: Iterable[PlacementDecision], *, explain: bool,
                replaced_policy: dict[str, str]
                ) -> Iterator[tuple[dict[str, Any], PlacementDecision]]:
    """Each decision with its summary (naming the job's own policy if --override-policy
    replaced it).

    Design choice: the jobs, already loaded, live until the command ends; frozen out of
    the cyclic garbage collector's reach while the rows stream, they are not rescanned by
    every collection (about 20 % of a 100,000-job run otherwise: 7.3 s against 9.5 s).
    """
    gc.freeze()
    try:
        for d in decisions:
            row = d.summary(explain=explain)
            if d.job in replaced_policy:
                row["replaced_policy"] = replaced_policy[d.job]
            yield row, d
    finally:
        gc.unfreeze()


def _print_dry_run_table(pairs: Iterable[tuple[dict[str, Any], PlacementDecision]],
                         explain: bool, *, limit: int) -> list[PlacementDecision]:
    """Print the first ``limit`` rows (0: all) and totals over every job; returns the
    decisions that carry notes of live signals or timing, for ``live_notes``."""
    cells, shown, noted = [], [], []
    count = placed = 0
    total = base = 0.0
    has_notes = False
    stale = _StalePrices()
    for r, d in pairs:
        count += 1
        stale.add(d)
        has_notes = has_notes or any(n != d.stale_price_note for n in r["notes"])
        if r["status"] == "placed":
            placed += 1
            total += r["co2e_kg"]
            base += r["baseline"]["co2e_kg"]
        if d.extra_notes:
            noted.append(d)
        if limit and count > limit:
            continue
        shown.append((r, len(d.offers) - d.ranking.size, d.stale_price_note))
        if r["status"] != "placed":
            cells.append([r["job"], "UNSCHEDULABLE", *["-"] * 10])
            continue
        cells.append([
            r["job"], r["cloud"], r["region"], r["instance_type"],
            f"{r['accelerator_count']}x {r['accelerator']}" + (" spot" if r["spot"] else ""),
            fmt(r["runtime_h"], 1), fmt(r["energy_kwh"], 1), fmt(r["co2e_kg"], 2),
            fmt(r["cost_usd"], 0), fmt(r["cfe_pct"], 0), fmt(r["savings_co2e_kg"], 2),
            fmt(r["savings_pct"], 0),
        ])
    footer = (f"{placed}/{count} placed. Estimated {total:,.1f} kg CO2e vs "
              f"{base:,.1f} kg for a price-only scheduler ({base - total:,.1f} kg saved; "
              "location-based: energy x grid average, whatever each policy ranks by). "
              "Estimates scale runtime by peak throughput and use TDP x utilisation unless "
              "a measured power is given.")
    if len(shown) < count:
        footer += (f"\n{count - len(shown):,} more rows not shown (the totals cover every "
                   "job); --limit 0 shows all, --output json or csv lists every job.")
    if has_notes and not explain:
        footer += "\nSome jobs have notes (e.g. regions without published CFE, ranked as 0 % "\
                  "CFE); see --explain."
    footer += stale.line(placed)
    print_table(
        "greenplace dry run",
        [("job", "left"), ("cloud", "left"), ("region", "left"), ("instance", "left"),
         ("accelerators", "left"), ("hours", "right"), ("kWh", "right"),
         ("kg CO2e", "right"), ("USD", "right"), ("CFE %", "right"),
         ("saved kg", "right"), ("saved %", "right")],
        cells, footer=footer)
    for r, rejected, stale_note in shown:
        if r["status"] != "placed":
            click.echo(f"\n{r['job']}: unschedulable under policy {r['policy']!r}:")
            for reason in r["reasons"][:20]:
                click.echo(f"  - {reason['region']}: [{reason['filter']}] {reason['reason']}")
            if len(r["reasons"]) > 20:
                click.echo(f"  ... {len(r['reasons']) - 20} more (see --output json)")
        elif explain:
            ranked_by = r["ranked_by"]
            click.echo(f"\n{r['job']} (policy {r['policy']}, signal {r['carbon_signal']} ranks "
                       f"{ranked_by['quantity']} in {ranked_by['unit']}, power "
                       f"{r['power_basis']}): top candidates")
            for c in r["candidates"][:5]:
                click.echo(f"  score {c['score']:.3f}  {c['cloud']}:{c['region']} "
                           f"{c['instance_type']}  {c['co2e_kg']:.1f} kg CO2e  "
                           f"ranked {c['ranked_carbon']:.2f} {ranked_by['unit']}  "
                           f"${c['cost_usd']:.0f} (priced {c['price_as_of']})  "
                           f"{c['runtime_h']:.1f} h  (carbon {c['norm_carbon']:.2f}, "
                           f"cost {c['norm_cost']:.2f}, time {c['norm_time']:.2f})")
            click.echo(f"  baseline (price only): {r['baseline']['cloud']}:"
                       f"{r['baseline']['region']} {r['baseline']['instance_type']}")
            click.echo(f"  {rejected} candidates rejected "
                       "(see --output json --explain for every reason)")
            for note in r["notes"]:
                if note != stale_note:  # said once, under the table
                    click.echo(f"  note: {note}")
    return noted


class _StalePrices:
    """The jobs whose chosen offer's price is older than GREENPLACE_PRICE_MAX_AGE_DAYS: the
    table says so once, under it, rather than once per job (json and csv carry each note)."""

    def __init__(self) -> None:
        self.jobs = 0
        self.oldest: tuple[int, str, str] | None = None  # age in days, as_of, cloud

    def add(self, d: PlacementDecision) -> None:
        if not d.stale_price_note or d.chosen is None:
            return
        self.jobs += 1
        age, o = d.price_age_days or 0, d.arrays.offers[d.offer_index.item(d.chosen)]
        if self.oldest is None or age > self.oldest[0]:
            self.oldest = (age, o.as_of, o.cloud)

    def line(self, placed: int) -> str:
        if self.oldest is None:
            return ""
        age, as_of, _ = self.oldest
        return (f"\nnote: {self.jobs} of {placed} placed job(s) chose an offer priced from "
                f"figures older than GREENPLACE_PRICE_MAX_AGE_DAYS (the oldest: as_of {as_of}, "
                f"{age} days); their cost and savings may be off. Run `greenplace catalog "
                "refresh` for current prices (`greenplace catalog show` says how old each "
                "cloud's are).")


def _csv_row(row: dict[str, Any], explain: bool) -> dict[str, Any]:
    """One job per CSV row; --explain adds what the table's explanation shows, as columns."""
    out = {k: v for k, v in row.items() if k not in ("candidates", "notes")}
    if not explain:
        return out
    candidates = row.get("candidates", [])
    rejected: dict[str, int] = {}
    for c in candidates:
        if c["rejected_by"]:
            rejected[c["rejected_by"]["filter"]] = rejected.get(c["rejected_by"]["filter"], 0) + 1
    out["notes"] = " | ".join(row["notes"])
    out["rejected_candidates"] = sum(rejected.values())
    out["rejected_by_filter"] = " ".join(f"{k}={n}" for k, n in sorted(rejected.items()))
    out["top_candidates"] = " | ".join(
        f"{c['cloud']}:{c['region']} {c['instance_type']} score {c['score']:.3f}"
        for c in candidates[:5] if c["rejected_by"] is None)
    return out


@click.command("dry-run")
@click.argument("jobs_file", type=click.Path(path_type=Path))
@policy_options
@_output
@click.option("--explain", is_flag=True, help="list every candidate, its scores and rejection")
@click.option("--signals", type=click.Choice(["static", "live"]), default="static",
              show_default=True, help="static: catalog figures; live: the configured carbon "
              "APIs with fallback to static (see `greenplace signals`)")
@click.option("--limit", type=click.IntRange(min=0), default=DEFAULT_TABLE_ROWS,
              show_default=True, help="table rows shown (0: all); the totals cover every job, "
              "and json/csv output is never cut")
def dry_run(jobs_file: Path, policy: str | None, override_policy: bool, output: str,
            explain: bool, signals: str, limit: int) -> None:
    """Show where each job would run and why, with no service and no cloud call.

    JOBS_FILE is YAML, JSON or JSON lines (one job per line: .jsonl / .ndjson).
    """
    pairs = dry_run_rows(jobs_file, policy=policy, explain=explain, signals=signals,
                         override_policy=override_policy)
    unschedulable = 0

    def counted() -> Iterator[tuple[dict[str, Any], PlacementDecision]]:
        nonlocal unschedulable
        for row, decision in pairs:
            unschedulable += row["status"] != "placed"
            yield row, decision

    if output == "json":
        print_json_rows(r for r, _ in counted())
    elif output == "csv":
        print_csv([_csv_row(r, explain) for r, _ in counted()])
    else:
        noted = _print_dry_run_table(counted(), explain, limit=limit)
        if signals == "live":
            from greenplace.scheduler.signals.chain import live_notes

            for line in live_notes(noted):
                click.echo(line)
    if unschedulable:
        raise click.exceptions.Exit(1)


@click.command("estimate")
@click.option("--accelerator", "-a", required=True)
@click.option("--count", "-n", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--hours", type=click.FloatRange(min=0, min_open=True), required=True)
@click.option("--avg-power-w", type=click.FloatRange(min=0, min_open=True),
              help="measured average draw per accelerator (else TDP x utilisation)")
@click.option("--utilization", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="share of TDP drawn on average [default: 0.8]")
@click.option("--pue", type=click.FloatRange(min=1.0), help="default: the region's, else 1.0")
@click.option("--intensity-g-per-kwh", type=click.FloatRange(min=0))
@click.option("--region", "region_key", help="CLOUD:REGION, e.g. gcp:europe-west4")
@click.option("--signal", type=click.Choice([s.value for s in CarbonSignal]),
              help="with --region, also show what this signal ranks by (co2e_kg is always "
              "at the grid average) [default: the signal of the default policy, "
              f"{DEFAULT_POLICY}, as in dry-run]")
@_output
def estimate_cmd(accelerator: str, count: int, hours: float, avg_power_w: float | None,
                 utilization: float | None, pue: float | None,
                 intensity_g_per_kwh: float | None, region_key: str | None,
                 signal: str | None, output: str) -> None:
    """Energy and emissions of ACCELERATOR x COUNT for HOURS (Patterson et al. 2021)."""
    catalog = load_catalog()
    accel = catalog.accelerator(accelerator)
    if (intensity_g_per_kwh is None) == (region_key is None):
        raise UserInputError("Give exactly one of --intensity-g-per-kwh or --region. To fix: "
                             "pass a grid intensity, or a region as CLOUD:REGION.")
    result: dict[str, Any] = {"accelerator": accel.name, "accelerator_count": count,
                              "runtime_h": hours}
    if region_key is not None:
        region = catalog.region(region_key)
        carbon_signal = CarbonSignal(signal or load_policy(DEFAULT_POLICY).carbon_signal)
        marginal = region.grid_intensity_marginal_g_per_kwh
        if carbon_signal is CarbonSignal.MARGINAL and marginal is None:
            raise UserInputError(f"No marginal intensity is known for {region.key}. To fix: use "
                                 "--signal average or cfe, or give --intensity-g-per-kwh.")
        if carbon_signal is CarbonSignal.PROVIDER_CFE and region.provider_cfe_pct is None:
            raise UserInputError(f"{region.cloud} publishes no hourly-matched CFE % for "
                                 f"{region.key}. To fix: use --signal cfe (the grid's CFE) or "
                                 "average, or a region whose provider publishes one (GCP).")
        intensity = region.grid_intensity_avg_g_per_kwh  # co2e_kg is location-based
        ranked_per_kwh = est.ranked_per_kwh(
            carbon_signal, grid_average_g_per_kwh=region.grid_intensity_avg_g_per_kwh,
            grid_marginal_g_per_kwh=float("nan") if marginal is None else marginal,
            grid_cfe_pct=region.grid_cfe_pct,
            provider_cfe_pct=(float("nan") if region.provider_cfe_pct is None
                              else region.provider_cfe_pct))
        pue_used, pue_basis = (pue, "given") if pue else (region.pue, _PUE_BASIS[region.pue_basis])
        result.update(region=region.key, carbon_signal=str(carbon_signal),
                      grid_cfe_pct=region.grid_cfe_pct)
    else:
        intensity = float(intensity_g_per_kwh)  # type: ignore[arg-type]
        pue_used, pue_basis = (pue, "given") if pue else (1.0, "assumed 1.0 (no region given)")
    util = utilization or DEFAULT_UTILIZATION
    power = est.average_power_w(tdp_w=accel.tdp_w, utilization=util, measured_w=avg_power_w)
    energy = est.energy_kwh(runtime_h=hours, accelerator_count=count, average_power_w=power,
                            pue=pue_used)
    result.update(
        average_power_w=power,
        power_basis="measured (given)" if avg_power_w else f"TDP {accel.tdp_w:g} W x {util:g}",
        pue=pue_used, pue_basis=pue_basis, intensity_g_per_kwh=round(float(intensity), 3),
        energy_kwh=round(float(energy), 4),
        co2e_kg=round(float(est.co2e_kg(energy_kwh=energy, intensity_g_per_kwh=intensity)), 4),
    )
    if region_key is not None and carbon_signal is not CarbonSignal.AVERAGE:
        ranked = est.RANKED_QUANTITY[carbon_signal]
        result.update(ranked_quantity=ranked.quantity, ranked_unit=ranked.unit,
                      ranked_carbon=round(float(energy * ranked_per_kwh), 4))
    if region_key is not None:
        offers = [o for o in catalog.offers if f"{o.cloud}:{o.region}" == result["region"]
                  and o.accelerator == accel.name and o.accelerator_count == count
                  and o.price_usd_per_hour is not None]
        if offers:
            cheapest = min(offers, key=lambda o: o.price_usd_per_hour or 0.0)
            result.update(instance_type=cheapest.instance_type,
                          price_usd_per_hour=cheapest.price_usd_per_hour,
                          cost_usd=round((cheapest.price_usd_per_hour or 0.0) * hours, 2))
        else:
            sold = sorted({f"{o.accelerator_count} x {o.accelerator}" for o in catalog.offers
                           if f"{o.cloud}:{o.region}" == result["region"]})
            result.update(cost_usd=None, note=(
                f"no price: the catalog sells no {count} x {accel.name} on demand in "
                f"{result['region']} (it sells {', '.join(sold) or 'no accelerators'} there); "
                f"`greenplace regions --accelerator {accel.name} --sort price` lists regions "
                "that do"))
    if output == "json":
        print_json(result)
    elif output == "csv":
        print_csv([result])
    else:
        for key, value in result.items():
            click.echo(f"{key:>22}: {fmt(value, 4)}")


_PUE_BASIS = {"region": "published for the region", "fleet": "provider's fleet average"}


def region_rows(catalog: Catalog, *, cloud: str | None, accelerator: str | None,
                sort: str) -> list[dict[str, Any]]:
    """Catalog regions with carbon figures, PUE and cheapest accelerator-hour (CLI and API)."""
    accel = catalog.accelerator(accelerator).name if accelerator else None
    price: dict[str, float] = {}
    for o in catalog.offers:
        if o.price_usd_per_hour is None or (accel and o.accelerator != accel):
            continue
        key = f"{o.cloud}:{o.region}"
        per_accel = o.price_usd_per_hour / o.accelerator_count
        price[key] = min(price.get(key, per_accel), per_accel)
    rows = []
    for r in catalog.regions:
        if (cloud and r.cloud != cloud) or (accel and r.key not in price):
            continue
        rows.append({
            "cloud": r.cloud, "region": r.region, "location": r.location, "country": r.country,
            "continent": r.continent,
            "grid_intensity_avg_g_per_kwh": r.grid_intensity_avg_g_per_kwh,
            "basis": r.intensity_basis, "grid_cfe_pct": r.grid_cfe_pct,
            "provider_cfe_pct": r.provider_cfe_pct,
            "grid_intensity_marginal_g_per_kwh": r.grid_intensity_marginal_g_per_kwh,
            "pue": r.pue, "pue_basis": r.pue_basis,
            "min_price_usd_per_accelerator_hour": price.get(r.key),
            "em_zone": r.em_zone, "year": r.year, "source": r.source, "as_of": r.as_of,
        })
    keys = {
        "cfe": lambda x: -x["grid_cfe_pct"],
        "intensity": lambda x: x["grid_intensity_avg_g_per_kwh"],
        "price": lambda x: (x["min_price_usd_per_accelerator_hour"] is None,
                            x["min_price_usd_per_accelerator_hour"] or 0),
    }
    rows.sort(key=lambda x: (x["cloud"], x["region"]))
    rows.sort(key=keys[sort])
    return rows


@click.command("regions")
@click.option("--cloud", type=click.Choice(["aws", "gcp", "azure"]))
@click.option("--accelerator", "-a", help="only regions that sell it; price is per accelerator")
@click.option("--sort", type=click.Choice(["cfe", "intensity", "price"]), default="intensity",
              show_default=True, help="cfe: the grid's carbon-free %, highest first")
@_output
def regions_cmd(cloud: str | None, accelerator: str | None, sort: str, output: str) -> None:
    """List catalog regions with their carbon figures, PUE and cheapest accelerator-hour."""
    rows = region_rows(load_catalog(), cloud=cloud, accelerator=accelerator, sort=sort)
    print_rows(
        output, rows,
        title=f"{len(rows)} regions" + (f" selling {accelerator}" if accelerator else ""),
        columns=[("region", "left"), ("location", "left"), ("grid CFE %", "right"),
                 ("provider CFE %", "right"), ("avg g/kWh", "right"), ("marg g/kWh", "right"),
                 ("PUE", "right"), ("USD/accel-h", "right")],
        cells=[[f"{r['cloud']}:{r['region']}", r["location"], fmt(r["grid_cfe_pct"], 0),
                fmt(r["provider_cfe_pct"], 0), fmt(r["grid_intensity_avg_g_per_kwh"], 0),
                fmt(r["grid_intensity_marginal_g_per_kwh"], 0), fmt(r["pue"], 2),
                fmt(r["min_price_usd_per_accelerator_hour"], 2)] for r in rows],
        footer="Grid figures: Electricity Maps yearly, lifecycle, by grid zone (same zone, "
        "same figures on every cloud). Provider CFE '-' = not published (GCP only).")


@click.command("schema")
@click.argument("kind", type=click.Choice(["job", "jobs-file", "policy", "capacity"]))
def schema_cmd(kind: str) -> None:
    """Print the JSON Schema of a job, a whole jobs file or a policy (for editors and CI).

    `capacity`: the capacity file of `greenplace plan --capacity`.

    `greenplace validate FILE` checks a file against the catalog as well.
    """
    from greenplace.scheduler.planning.capacity_file import capacity_file_schema

    schemas = {"job": JobSpec.model_json_schema, "jobs-file": jobs_file_schema,
               "policy": Policy.model_json_schema, "capacity": capacity_file_schema}
    click.echo(json.dumps(schemas[kind](), indent=2))
