"""`greenplace plan`: place a batch jointly against capacity, budget and the policies.

Loads the jobs as ``dry-run`` does (same policy options, same placement pipeline), reads
the capacity file, plans (``scheduler.planning.plan``) and prints per job the chosen offer,
region, start hour, co2e and cost; the totals; the solver, its status, objective, bound and
gap; and per pool its use per hour against the limit (json: every hour). Besides the
capacity file, the account quotas of every cloud whose credentials are found bind too
(``--no-quotas`` to leave them out), each read only for the regions the jobs may run in.
Every input is checked before anything is printed: bad input is one paragraph on stderr
and exit 2.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from greenplace.scheduler.commands.common import load_cli_jobs, policy_options
from greenplace.scheduler.exceptions import UserInputError
from greenplace.scheduler.output import FORMATS, fmt, print_csv, print_json, print_table

if TYPE_CHECKING:
    from greenplace.scheduler.catalog import Catalog
    from greenplace.scheduler.jobs import Job
    from greenplace.scheduler.placement.decision import PlacementDecision
    from greenplace.scheduler.planning.capacity import CapacityPool
    from greenplace.scheduler.planning.plan import Plan


def _check_numbers(budget_usd: float | None, horizon_h: int, time_limit_s: float) -> None:
    from greenplace.scheduler.planning.plan import MAX_HORIZON_H

    if budget_usd is not None and not (budget_usd > 0 and math.isfinite(budget_usd)):
        raise UserInputError(f"--budget-usd must be a positive amount, got {budget_usd:g}. "
                             "To fix: give the most the batch may cost in USD, e.g. "
                             "--budget-usd 5000, or leave it out for no budget.")
    if not 1 <= horizon_h <= MAX_HORIZON_H:
        raise UserInputError(f"--horizon-hours must be between 1 and {MAX_HORIZON_H} (two "
                             f"weeks), got {horizon_h}. To fix: give the hours over which jobs "
                             "may start, e.g. --horizon-hours 48.")
    if not (time_limit_s > 0 and math.isfinite(time_limit_s)):
        raise UserInputError(f"--time-limit-s must be a positive number of seconds, got "
                             f"{time_limit_s:g}. To fix: e.g. --time-limit-s 30.")


def _hours_at_limit(used: list[int], limit: list[int]) -> str:
    from greenplace.scheduler.planning.plan import _hours_text

    if limit and max(limit) == 0:
        return "all (a limit of 0: nothing may run on it)"
    full = [h for h, (u, c) in enumerate(zip(used, limit, strict=True)) if u >= c and u > 0]
    return _hours_text(full) if full else "none"


def _print_table(result: dict[str, Any], explain: bool) -> None:
    s = result["summary"]
    cells = []
    for r in result["jobs"]:
        if r["status"] != "placed":
            cells.append([r["job"], "UNSCHEDULABLE", "-", "-", "-", "-", "-", r["binding"]])
            continue
        cells.append([r["job"], f"{r['cloud']}:{r['region']}", r["instance_type"],
                      f"{r['accelerator_count']}x {r['accelerator']}"
                      + (" spot" if r["spot"] else ""),
                      str(r["start_hour"]), fmt(r["co2e_kg"], 2), fmt(r["cost_usd"], 0),
                      fmt(r["score"], 3)])
    gap = "-" if s["gap_pct"] is None else f"{s['gap_pct']:.4f} %"
    bound = "none (heuristic)" if s["bound"] is None else f"{s['bound']:.4f}"
    footer = (f"{s['placed']}/{s['jobs']} placed. Total {s['co2e_kg']:,.1f} kg CO2e "
              f"(location-based), {s['cost_usd']:,.0f} USD"
              + (f" of a {s['budget_usd']:,.0f} USD budget" if s["budget_usd"] else "") + ".\n"
              f"Solver: {s['solver']}, status {s['status']}, objective {s['objective']:.4f}, "
              f"bound {bound}, gap {gap}, {s['solve_s']:.2f} s "
              f"({s['model']['columns']:,} options, {s['model']['rows']:,} rows). "
              f"Start hours over {s['horizon_h']} h, every {s['start_step_h']} h; hour 0 = "
              f"{result['start']}.")
    for note in s["notes"]:
        footer += f"\nnote: {note}"
    print_table("greenplace plan",
                [("job", "left"), ("region", "left"), ("instance", "left"),
                 ("accelerators", "left"), ("start h", "right"), ("kg CO2e", "right"),
                 ("USD", "right"), ("score", "right")], cells, footer=footer)
    if result["pools"]:
        click.echo("\nCapacity pools (units in use at peak / limit; hours at the limit):")
        for p in result["pools"]:
            click.echo(f"  {p['pool']} [{p['source']}]: peak {p['peak_used']} / "
                       f"{max(p['limit']) if p['limit'] else 0}; at the limit in hours "
                       f"{_hours_at_limit(p['used'], p['limit'])} (--output json: every hour)")
    for r in result["jobs"]:
        if r["status"] != "placed":
            click.echo(f"\n{r['job']}: unschedulable ({r['binding']}):")
            for reason in r["reasons"][:10]:
                click.echo(f"  - {reason}")
            if len(r["reasons"]) > 10:
                click.echo(f"  ... {len(r['reasons']) - 10} more (see --output json)")
        elif explain:
            e = r["explain"]
            w = e["weights"]
            click.echo(f"\n{r['job']} (policy {r['policy']}): score {r['score']:.3f} = "
                       f"weights carbon {w['carbon']:g} x {e['norm_carbon']:.3f} + cost "
                       f"{w['cost']:g} x {e['norm_cost']:.3f} + time {w['time']:g} x "
                       f"{e['norm_time']:.3f} (normalised over its options, 1 = best)")
            if e["displaced_jobs"]:
                click.echo(f"  it displaced {', '.join(e['displaced_jobs'])} from their best "
                           "option (it holds pool-hours they needed)")
            shifted = e["displaced"]
            if shifted is None:
                click.echo("  it has its best option")
            else:
                by = ", ".join(shifted["by_jobs"]) or "-"
                click.echo(f"  its best option {shifted['best_option']} (score "
                           f"{shifted['best_score']:.3f}) was not open: {shifted['why']}; "
                           f"held by: {by}")


def _csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in result["jobs"]:
        row = {k: v for k, v in r.items() if k not in ("reasons", "explain")}
        if "reasons" in r:
            row["reasons"] = " | ".join(r["reasons"])
        if "explain" in r:
            e = r["explain"]
            row.update(norm_carbon=e["norm_carbon"], norm_cost=e["norm_cost"],
                       norm_time=e["norm_time"],
                       displaced_by=" ".join((e["displaced"] or {}).get("by_jobs", [])),
                       displaced_jobs=" ".join(e["displaced_jobs"]))
        out.append(row)
    return out


def _account_pools(decisions: Sequence[PlacementDecision], *, read: bool,
                   environ: Mapping[str, str]) -> tuple[list[CapacityPool], list[str]]:
    """The account quotas, as capacity pools, of every cloud whose credentials are found,
    in the regions the jobs' feasible candidates are in; and one note per cloud read or
    failed (a failed cloud is planned without its quotas, never stopped)."""
    regions: dict[str, set[str]] = {}
    for d in decisions if read else ():
        for i in d.ranking.tolist():
            offer = d.arrays.offers[d.offer_index[i]]
            regions.setdefault(offer.cloud, set()).add(offer.region)
    if not regions:
        return [], []
    from greenplace.scheduler.planning.quotas import QuotaStatus, read_all

    reading = read_all(sorted(regions), {c: sorted(r) for c, r in regions.items()}, environ)
    notes = []
    for c in reading.clouds:
        if c.status is QuotaStatus.OK and c.answer is not None:
            notes.append(f"account quotas of {c.cloud}: {len(c.answer.pools)} pool(s) from "
                         f"{c.answer.source}, {len(c.answer.skipped)} quota(s) skipped")
        elif c.status is QuotaStatus.FAILED:
            notes.append(f"account quotas of {c.cloud} not read, planned without them: "
                         f"{c.error}")
    return list(reading.pools), notes


def _live_plan(catalog: Catalog, jobs: list[Job], pools: list[CapacityPool], *,
               now: dt.datetime, horizon_h: int, budget_usd: float | None,
               time_limit_s: float, routes: Mapping[str, str],
               price_max_age_days: float | None,
               quotas: Callable[[Sequence[PlacementDecision]],
                                tuple[list[CapacityPool], list[str]]]
               ) -> tuple[Plan, list[str]]:
    """Plan on the configured live signals: the pipeline scores on the chain's current
    values (as ``dry-run --signals live``), without its own temporal shift, and the planner
    scores each start hour on the chain's forecasts. Returns the plan and the chain's notes
    (which sources answered), each once."""
    from greenplace.scheduler.planning.plan import make_plan
    from greenplace.scheduler.signals.cache import MemoryCache
    from greenplace.scheduler.signals.chain import ChainForecasts, LivePlacer, SignalChain
    from greenplace.scheduler.signals.config import SignalSettings

    chain = SignalChain.from_settings(SignalSettings.from_env(), catalog, cache=MemoryCache())
    try:
        placer = LivePlacer(catalog, chain, refresh_s=float("inf"), routes=routes,
                            price_max_age_days=price_max_age_days)
        decisions = [placer.place(job, now=now, allow_defer=False) for job in jobs]
        account_pools, quota_notes = quotas(decisions)
        plan = make_plan(jobs, decisions, [*pools, *account_pools], now=now,
                         horizon_h=horizon_h,
                         budget_usd=budget_usd, time_limit_s=time_limit_s,
                         forecasts=ChainForecasts(chain))
    finally:
        chain.close()
    notes = dict.fromkeys(n for d in decisions for n in d.extra_notes
                          if n.startswith(("live signals", "signal type", "emission basis")))
    return plan, [*notes, *quota_notes]



def plan_batch(jobs_file: Path, *, capacity_file: Path | None, budget_usd: float | None,
               horizon_hours: int, time_limit_s: float, policy: str | None,
               override_policy: bool, signals: str, quotas: bool,
               now: dt.datetime) -> tuple[Plan, list[str]]:
    """Check the options, load the jobs and the capacity file, and plan the batch (``plan``
    and ``submit --plan`` both run this). Returns the plan and its extra notes (signals,
    quotas). Raises UserInputError on bad input, before anything is planned."""
    _check_numbers(budget_usd, horizon_hours, time_limit_s)
    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.placement import Placer  # NumPy: imported when placing
    from greenplace.scheduler.planning.capacity_file import load_capacity
    from greenplace.scheduler.planning.plan import make_plan
    from greenplace.scheduler.settings import load_settings

    catalog = load_catalog()
    pools = load_capacity(capacity_file, catalog) if capacity_file is not None else []
    jobs = load_cli_jobs(jobs_file, catalog, policy=policy, override_policy=override_policy,
                         now=now)
    settings = load_settings()

    def account_pools(decisions: Sequence[PlacementDecision]
                      ) -> tuple[list[CapacityPool], list[str]]:
        return _account_pools(decisions, read=quotas, environ=os.environ)

    if signals == "live":
        return _live_plan(catalog, jobs, pools, now=now, horizon_h=horizon_hours,
                          budget_usd=budget_usd, time_limit_s=time_limit_s,
                          routes=settings.providers,
                          price_max_age_days=settings.price_max_age_days,
                          quotas=account_pools)
    decisions = Placer(catalog, routes=settings.providers,
                       price_max_age_days=settings.price_max_age_days).place_all(jobs, now=now)
    more_pools, notes = account_pools(decisions)
    plan = make_plan(jobs, decisions, [*pools, *more_pools], now=now, horizon_h=horizon_hours,
                     budget_usd=budget_usd, time_limit_s=time_limit_s)
    return plan, notes


@click.command("plan")
@click.argument("jobs_file", type=click.Path(path_type=Path))
@click.option("--capacity", "capacity_file", type=click.Path(path_type=Path),
              help="capacity file (YAML; `greenplace schema capacity`): accelerators at once "
              "per cloud:region; without it no capacity binds")
@click.option("--budget-usd", type=float, help="the most the whole batch may cost")
@click.option("--horizon-hours", type=int, default=48, show_default=True,
              help="jobs may start in hours 0 .. H-1 (within their deadline / max delay)")
@click.option("--time-limit-s", type=float, default=30.0, show_default=True,
              help="the MILP solver's time limit; past it the best plan found and its gap")
@policy_options
@click.option("--output", "-o", type=click.Choice(FORMATS), default="table",
              show_default=True, help="table for people, json or csv for machines")
@click.option("--explain", is_flag=True,
              help="per job: its objective terms and what the batch displaced it from")
@click.option("--signals", type=click.Choice(["static", "live"]), default="static",
              show_default=True, help="static: catalog figures; live: the configured carbon "
              "APIs (fallback to static), their forecasts scoring each start hour")
@click.option("--quotas/--no-quotas", default=True, show_default=True,
              help="also bind the account quotas of every cloud whose credentials are found "
              "(AWS Service Quotas, GCP regional GPU quotas, Azure usage per VM family), read "
              "for the regions the jobs may run in")
def plan_cmd(jobs_file: Path, capacity_file: Path | None, budget_usd: float | None,
             horizon_hours: int, time_limit_s: float, policy: str | None,
             override_policy: bool, output: str, explain: bool, signals: str,
             quotas: bool) -> None:
    """Plan a batch jointly: offers and start hours under capacity, budget and policies."""
    from greenplace.scheduler.planning.plan import job_rows, pool_rows, summary

    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    plan, notes = plan_batch(jobs_file, capacity_file=capacity_file, budget_usd=budget_usd,
                             horizon_hours=horizon_hours, time_limit_s=time_limit_s,
                             policy=policy, override_policy=override_policy, signals=signals,
                             quotas=quotas, now=now)
    totals = summary(plan)
    totals["notes"] += notes
    result = {"start": now.isoformat(), "summary": totals,
              "jobs": job_rows(plan, explain=explain), "pools": pool_rows(plan)}
    if output == "json":
        print_json(result)
    elif output == "csv":
        print_csv(_csv_rows(result))
    else:
        _print_table(result, explain)
    if plan.left:
        raise click.exceptions.Exit(1)
