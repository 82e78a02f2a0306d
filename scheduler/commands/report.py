"""The `report` command: energy, CO2e, cost and savings of launched jobs (local or via API)."""

from __future__ import annotations

from typing import Any

import click

from greenplace.scheduler.output import fmt, print_json, print_table


@click.command("report")
@click.option("--team", help="only this team's jobs")
@click.option("--policy", "-p", help="only jobs placed under this policy (its name)")
@click.option("--since", help="jobs submitted at or after this ISO 8601 time")
@click.option("--until", help="jobs submitted before this ISO 8601 time")
@click.option("--group-by", type=click.Choice(["team", "policy", "day"]),
              help="also total per team, policy or day of submission")
@click.option("--output", "-o", type=click.Choice(["table", "json", "csv", "html"]),
              default="table", show_default=True,
              help="table for people, json / csv (one row per job) for machines, html: one "
              "self-contained file with charts (redirect it: -o html > report.html)")
def report_cmd(team: str | None, policy: str | None, since: str | None, until: str | None,
               group_by: str | None, output: str) -> None:
    """Energy, CO2e, cost and savings vs baseline of launched jobs: totals, groups, jobs.

    Estimated figures are those of the placement each job really got; measured ones
    appear once the job's agent reported energy. Through the API with
    GREENPLACE_API_URL and GREENPLACE_TOKEN set, a member's token covers its team only.
    """
    from greenplace.scheduler.client import remote

    client = remote()
    if client is not None:
        result = client.report(team=team, policy=policy, since=since, until=until,
                               group_by=group_by)
    else:
        result = _local(team, policy, since, until, group_by)
    if output == "json":
        print_json(result)
    elif output == "csv":
        _print_csv(result["jobs"])
    elif output == "html":
        import datetime as dt

        from greenplace.scheduler.report_html import render

        click.echo(render(result, generated_at=dt.datetime.now(dt.UTC),
                          title="greenplace report"), nl=False)
    else:
        _print(result)


def _print_csv(jobs: list[dict[str, Any]]) -> None:
    """One row per job; each lever as two columns (factor, saved kg)."""
    import csv
    import sys

    from greenplace.scheduler.levers import LEVERS
    from greenplace.scheduler.report import FIGURES

    scalar = ["job_id", "name", "team", "policy", "state", "created_at", *FIGURES]
    header = [*scalar, *(f"{lever}_{part}" for lever in LEVERS
                         for part in ("factor", "saved_kg"))]
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    for job in jobs:
        levers = job["levers"] or {}
        writer.writerow([job[k] for k in scalar] + [
            (levers.get(lever) or {}).get(part) for lever in LEVERS
            for part in ("factor", "saved_kg")])


def _local(team: str | None, policy: str | None, since: str | None, until: str | None,
           group_by: str | None) -> dict[str, Any]:
    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.report import ReportQuery, report
    from greenplace.scheduler.service import JobFilter, parse_since
    from greenplace.scheduler.settings import load_settings
    from greenplace.scheduler.store import open_store, reachable
    from greenplace.scheduler.tokens import LOCAL

    query = ReportQuery(where=JobFilter(team=team, policy=policy, since=parse_since(since)),
                        until=parse_since(until), group_by=group_by)
    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        return report(store, LOCAL, load_catalog(), query=query)


_COLUMNS = [("jobs", "right"), ("energy kWh", "right"), ("CO2e kg", "right"),
            ("baseline kg", "right"), ("saved kg", "right"), ("cost USD", "right"),
            ("measured kWh", "right"), ("measured kg", "right")]


def _cells(row: dict[str, Any]) -> list[str]:
    return [str(row.get("jobs", 1)), fmt(row["energy_kwh_estimated"], 2),
            fmt(row["co2e_kg_estimated"], 3),
            fmt(row["baseline_co2e_kg"], 3), fmt(row["savings_co2e_kg"], 3),
            fmt(row["cost_usd"], 2), fmt(row["energy_kwh_measured"], 2),
            fmt(row["co2e_kg_measured"], 3)]


def _print(result: dict[str, Any]) -> None:
    if result.get("groups") is not None:
        print_table(f"by {result['group_by']}", [(result["group_by"], "left"), *_COLUMNS],
                    [[g["key"], *_cells(g)] for g in result["groups"]])
    totals = result["totals"]
    levers = ", ".join(f"{lever} {fmt(kg, 3)} kg"
                       for lever, kg in totals["saved_kg_by_lever"].items())
    print_table("launched jobs", [("", "left"), *_COLUMNS], [["total", *_cells(totals)]],
                footer=f"Saved by lever: {levers} (LMDI split of each job's savings). "
                f"{totals['jobs_measured']} of {totals['jobs']} job(s) measured by their "
                "agent; the rest are estimates (Patterson et al. 2021).")
