"""Commands of the service: submit, status, events, cancel, worker, beat, sim instances.

Exit codes (as everywhere): 0 ok; 1 some jobs unschedulable or failed (``submit
--dry-run``, ``status``); 2 bad input, unusable settings or Redis unreachable.
Celery is imported only by the commands that send tasks or run a worker.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.commands.common import load_cli_jobs, policy_options
from greenplace.scheduler.exceptions import UserInputError
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.output import console, fmt, print_json, print_table
from greenplace.scheduler.service import team_of_submission
from greenplace.scheduler.settings import Settings, load_settings
from greenplace.scheduler.store import (
    FINAL_STATES,
    JobState,
    JobStore,
    open_store,
    reachable,
    utc_now,
)
from greenplace.scheduler.tokens import LOCAL

if TYPE_CHECKING:
    from greenplace.scheduler.dispatch import Outcome

_output = click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
                       show_default=True, help="table for people, json for machines")
_BAD_STATES = frozenset({JobState.FAILED, JobState.UNSCHEDULABLE})


def _replaced(job: Job) -> dict[str, str]:
    return {"replaced_policy": job.replaced_policy} if job.replaced_policy else {}


def _dry_run(jobs: Sequence[Job], settings: Settings, output: str) -> None:
    from greenplace.scheduler.service import dry_run_rows

    rows = dry_run_rows(jobs, settings, now=utc_now())
    if output == "json":
        print_json(rows)
    else:
        for row in rows:
            if row["status"] != "placed":
                click.echo(f"{row['job']}: UNSCHEDULABLE under policy {row['policy']!r}")
                for r in row["reasons"][:10]:
                    click.echo(f"  - {r['region']}: [{r['filter']}] {r['reason']}")
                continue
            later = f", not before {row['start_at']}" if row["start_at"] else ""
            click.echo(f"{row['job']}: {row['cloud']}:{row['region']} {row['instance_type']} "
                       f"via {row['provider']}{later}; then "
                       f"{', '.join(row['fallbacks'][:3]) or 'no fallback'}")
            click.echo("  " + json.dumps(row["request"], indent=2).replace("\n", "\n  "))
        click.echo("Dry run: nothing was written or sent; job ids are assigned at submit.")
    if any(r["status"] != "placed" for r in rows):
        raise click.exceptions.Exit(1)


_team = click.option("--team", help="the team the jobs belong to [default: GREENPLACE_TEAM, "
                     "else 'default'; through the API: the token's team]")


@click.command("submit")
@click.argument("jobs_file", type=click.Path(path_type=Path))
@policy_options
@click.option("--dry-run", is_flag=True,
              help="print each job's placement and exact launch request; no Redis, no cloud")
@click.option("--plan", "planned", is_flag=True,
              help="place the batch jointly with the planner (as `greenplace plan`) and "
              "launch each job on its planned offer at its planned start")
@click.option("--capacity", "capacity_file", type=click.Path(path_type=Path),
              help="with --plan: capacity file (YAML; `greenplace schema capacity`)")
@click.option("--budget-usd", type=float, help="with --plan: the most the batch may cost")
@click.option("--horizon-hours", type=int,
              help="with --plan: jobs may start in hours 0 .. H-1  [default: 48]")
@click.option("--no-quotas", is_flag=True,
              help="with --plan: leave out the account quotas (as `plan --no-quotas`)")
@_team
@_output
def submit_cmd(jobs_file: Path, policy: str | None, override_policy: bool, dry_run: bool,
               planned: bool, capacity_file: Path | None, budget_usd: float | None,
               horizon_hours: int | None, no_quotas: bool, team: str | None,
               output: str) -> None:
    """Queue every job of JOBS_FILE and print their ids (nothing is written on bad input).

    With --plan the batch is planned first (`greenplace plan`): each job is launched on its
    planned offer at its planned start, a job the plan leaves out ends UNSCHEDULABLE with
    the plan's reason, and the plan is stored (`status`, `GET /v1/plans/{id}`).

    With GREENPLACE_API_URL and GREENPLACE_TOKEN set, the file goes to that API (a job's
    `policy:` must then name a preset) and nothing here needs Redis.
    """
    from greenplace.scheduler.client import remote

    _check_plan_options(planned, dry_run=dry_run, capacity_file=capacity_file,
                        budget_usd=budget_usd, horizon_hours=horizon_hours,
                        no_quotas=no_quotas)
    client = None if dry_run else remote()
    if planned:
        if client is not None:
            raise UserInputError("submit --plan runs the planner here and writes to Redis, "
                                 "and the API takes no plans yet. To fix: unset "
                                 "GREENPLACE_API_URL to submit against Redis directly, or "
                                 "submit without --plan.")
        _submit_planned(jobs_file, policy=policy, override_policy=override_policy,
                        capacity_file=capacity_file, budget_usd=budget_usd,
                        horizon_hours=horizon_hours, quotas=not no_quotas, team=team,
                        output=output)
        return
    if client is not None:
        result = client.submit(jobs_file, policy=policy, override_policy=override_policy,
                               team=team)
        for note in result.get("notes", []):
            click.echo(note, err=True)
        _print_submitted(result["jobs"], output)
        return
    settings = load_settings()
    jobs = load_cli_jobs(jobs_file, load_catalog(), policy=policy,
                         override_policy=override_policy, now=utc_now())
    if dry_run:
        _dry_run(jobs, settings, output)
        return
    from greenplace.scheduler.service import submit
    from greenplace.scheduler.worker.app import app

    owner = team_of_submission(LOCAL, team or os.environ.get("GREENPLACE_TEAM") or None)
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        ids = submit(store, app, jobs, team=owner)
    _warn_without_worker(store)
    _print_submitted([{"job_id": i, "name": j.name, "state": str(JobState.QUEUED),
                       "team": owner, **_replaced(j)} for i, j in zip(ids, jobs, strict=True)],
                     output)


def _check_plan_options(planned: bool, *, dry_run: bool, capacity_file: Path | None,
                        budget_usd: float | None, horizon_hours: int | None,
                        no_quotas: bool) -> None:
    given = [name for name, value in (("--capacity", capacity_file),
                                      ("--budget-usd", budget_usd),
                                      ("--horizon-hours", horizon_hours),
                                      ("--no-quotas", no_quotas or None)) if value is not None]
    if given and not planned:
        raise UserInputError(f"{', '.join(given)} "
                             f"{'apply' if len(given) > 1 else 'applies'} only with --plan. "
                             "To fix: add --plan to plan the batch, or drop them.")
    if planned and dry_run:
        raise UserInputError("--plan and --dry-run do not go together. To fix: run `greenplace "
                             "plan JOBS.yaml` (same options) to see the plan without "
                             "submitting, or drop --dry-run.")


def _submit_planned(jobs_file: Path, *, policy: str | None, override_policy: bool,
                    capacity_file: Path | None, budget_usd: float | None,
                    horizon_hours: int | None, quotas: bool, team: str | None,
                    output: str) -> None:
    """Plan the batch as `greenplace plan` does (same checks: nothing is written on bad
    input), then store the plan and submit its jobs (``service.submit_planned``)."""
    from greenplace.scheduler.commands.plan import plan_batch
    from greenplace.scheduler.planning.plan import DEFAULT_HORIZON_H, DEFAULT_TIME_LIMIT_S
    from greenplace.scheduler.service import submit_planned
    from greenplace.scheduler.worker.app import app

    now = utc_now()
    owner = team_of_submission(LOCAL, team or os.environ.get("GREENPLACE_TEAM") or None)
    plan, notes = plan_batch(
        jobs_file, capacity_file=capacity_file, budget_usd=budget_usd,
        horizon_hours=DEFAULT_HORIZON_H if horizon_hours is None else horizon_hours,
        time_limit_s=DEFAULT_TIME_LIMIT_S, policy=policy, override_policy=override_policy,
        signals="static", quotas=quotas, now=now.replace(minute=0, second=0, microsecond=0))
    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        ids, document = submit_planned(store, app, plan, team=owner, notes=notes, now=now)
    _warn_without_worker(store)
    s = document["summary"]
    gap = "-" if s["gap_pct"] is None else f"{s['gap_pct']:.4f} %"
    click.echo(f"plan {document['plan_id']}: {s['placed']}/{s['jobs']} placed by the "
               f"{s['solver']} ({s['status']}, gap {gap}); `greenplace status JOB_ID` shows "
               "each job's part", err=True)
    for row in document["jobs"]:
        if row["status"] != "placed":
            click.echo(f"warning: the plan left {row['job']} out ({row['binding']}); it will "
                       "end UNSCHEDULABLE with the plan's reason", err=True)
    _print_submitted([{"job_id": i, "name": j.name, "state": str(JobState.QUEUED),
                       "team": owner, "plan_id": document["plan_id"],
                       "planned": {k: row.get(k) for k in ("status", "cloud", "region",
                                                           "instance_type", "start_at")},
                       **_replaced(j)}
                      for i, j, row in zip(ids, plan.jobs, document["jobs"], strict=True)],
                     output)


def _print_submitted(rows: list[dict[str, Any]], output: str) -> None:
    if output == "json":
        print_json(rows)
    else:
        for row in rows:
            click.echo(f"{row['job_id']}  {row['name']}")


def _warn_without_worker(store: JobStore) -> None:
    """Say on stderr when no worker's heartbeat was seen recently (queued jobs would wait),
    naming the last worker seen and when. Redis trouble here only skips the warning."""
    import redis

    from greenplace.scheduler.worker.heartbeat import SEEN_WITHIN_S, last_seen, workers_seen

    try:
        if workers_seen(store, SEEN_WITHIN_S):
            return
        last = last_seen(store)
    except redis.RedisError:
        return
    if last is None:
        seen = "no greenplace worker has ever been seen on this Redis"
    else:
        host, at_s = last
        when = dt.datetime.fromtimestamp(at_s, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        seen = (f"no greenplace worker was seen in the last {SEEN_WITHIN_S:.0f} s (the last "
                f"one, {host}, at {when}, {_ago(time.time() - at_s)} ago)")
    click.echo(f"warning: {seen}, so queued jobs wait until one runs. To fix: start "
               "`greenplace worker --beat` (or `greenplace worker` and `greenplace beat`) "
               "with the same GREENPLACE_REDIS_URL.", err=True)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _warn_without_beat(store: JobStore) -> None:
    """Say on stderr when no beat holds the lease (nothing follows RUNNING jobs then)."""
    from greenplace.scheduler.worker.beat import beat_leader

    if beat_leader(store) is None:
        click.echo("warning: no greenplace beat holds the beat lease, so RUNNING jobs are not "
                   "being followed (nor DEFERRED ones released). To fix: start `greenplace "
                   "beat` (or `greenplace worker --beat`) with the same GREENPLACE_REDIS_URL; "
                   "run two for failover.", err=True)


def _status_source(job_id: str | None) -> tuple[Callable[[], list[dict[str, Any]]],
                                                 Callable[[list[dict[str, Any]]], None]]:
    """What `status` shows (read from the API when one is configured, else from Redis), and
    what warns on stderr when jobs wait on a missing worker or beat (only against Redis:
    through the API the service's own /readyz says it)."""
    from greenplace.scheduler.client import remote

    client = remote()
    if client is not None:
        if job_id is not None:
            return lambda: [client.job(job_id)], lambda views: None
        return lambda: list(reversed(list(client.jobs()))), lambda views: None  # oldest first
    from greenplace.scheduler.service import job_view, pue_lookup

    settings = load_settings()
    store = open_store(settings)
    pue_of = pue_lookup(load_catalog())

    def fetch() -> list[dict[str, Any]]:
        with reachable(settings.redacted_redis_url):
            records = ([store.get(job_id)] if job_id is not None
                       else store.get_many(store.job_ids()))
        return [job_view(r, pue_of=pue_of) for r in records]

    def warn(views: list[dict[str, Any]]) -> None:
        if any(v["state"] not in FINAL_STATES for v in views):
            with reachable(settings.redacted_redis_url):
                _warn_without_worker(store)
                _warn_without_beat(store)

    return fetch, warn


def _where(view: dict[str, Any]) -> str:
    return f"{view['cloud']}:{view['region']}" if view["cloud"] else "-"


def _status_table(views: Sequence[dict[str, Any]]) -> None:
    cells = []
    for v in views:
        reason = (v["reason"] or "")[:80] or (f"not before {v['not_before']}"
                                              if v["not_before"] else "")
        cells.append([v["job_id"], v["name"], v["team"], v["state"], _where(v),
                      fmt(v["instance_type"]), fmt(v["instance_id"]), str(v["attempts"]),
                      v["updated_at"][11:19], reason])
    counts: dict[str, int] = {}
    for v in views:
        counts[v["state"]] = counts.get(v["state"], 0) + 1
    print_table(f"{len(views)} job(s)", [
        ("job id", "left"), ("name", "left"), ("team", "left"), ("state", "left"),
        ("where", "left"), ("instance type", "left"), ("instance", "left"),
        ("attempts", "right"), ("updated", "left"), ("reason", "left")], cells,
        footer=", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


def _plan_lines(views: Sequence[dict[str, Any]]) -> None:
    """Under one job's table: its part of the batch plan it was submitted with, if any."""
    for v in views:
        part = v.get("plan")
        if not part:
            continue
        gap = "-" if part["gap_pct"] is None else f"{part['gap_pct']:.4f} %"
        how = f"{part['solver']}, {part['solver_status']}, gap {gap}"
        if part["planned"] == "placed":
            click.echo(f"plan {part['plan_id']} ({how}): planned on {part['cloud']}:"
                       f"{part['region']} {part['instance_type']} from hour "
                       f"{part['start_hour']} ({part['start_at']})")
        else:
            click.echo(f"plan {part['plan_id']} ({how}): left out ({part['binding']})")


@click.command("status")
@click.argument("job_id", required=False)
@click.option("--watch", "-w", is_flag=True, help="refresh until every job shown is final; "
              "with --output json, JSON lines: one object per job each time it changes")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="seconds between refreshes with --watch")
@_output
def status_cmd(job_id: str | None, watch: bool, interval: float, output: str) -> None:
    """Show jobs (all, or JOB_ID): state, where, instance, attempts, reason."""
    fetch, warn = _status_source(job_id)
    views = fetch()
    warn(views)
    if watch:
        views = _watch(fetch, interval, output, views)
    elif output == "json":
        print_json(views)
    else:
        _status_table(views)
        if job_id is not None:
            _plan_lines(views)
    if any(v["state"] in _BAD_STATES for v in views):
        raise click.exceptions.Exit(1)


def _final(views: Sequence[dict[str, Any]]) -> bool:
    return all(v["state"] in FINAL_STATES for v in views)


def _watch(fetch: Callable[[], list[dict[str, Any]]], interval: float, output: str,
           views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from rich.live import Live
    from rich.table import Table

    def render(vs: Sequence[dict[str, Any]]) -> Table:
        table = Table(title=f"{len(vs)} job(s), {dt.datetime.now():%H:%M:%S}",
                      title_justify="left")
        for name in ("job id", "name", "state", "where", "instance", "attempts", "reason"):
            table.add_column(name)
        for v in vs:
            table.add_row(v["job_id"], v["name"], v["state"], _where(v),
                          fmt(v["instance_id"]), str(v["attempts"]), (v["reason"] or "")[:60])
        return table

    last: dict[str, str] = {}
    try:
        if output == "json":
            # JSON lines: one object per job each time that job's view changes.
            while True:
                for v in views:
                    text = json.dumps(v, default=str)
                    if last.get(v["job_id"]) != text:
                        sys.stdout.write(text + "\n")
                        last[v["job_id"]] = text
                sys.stdout.flush()
                if _final(views):
                    return views
                time.sleep(interval)
                views = fetch()
        with Live(render(views), console=console(), refresh_per_second=4) as live:
            while not _final(views):
                time.sleep(interval)
                views = fetch()
                live.update(render(views))
    except KeyboardInterrupt:
        pass
    return views


@click.command("events")
@click.argument("job_id")
@_output
def events_cmd(job_id: str, output: str) -> None:
    """Show the event history of JOB_ID, oldest first."""
    from greenplace.scheduler.client import remote

    client = remote()
    if client is not None:
        events = client.events(job_id)
    else:
        settings = load_settings()
        store = open_store(settings)
        with reachable(settings.redacted_redis_url):
            events = [e.as_json() for e in store.events(job_id)]
    if output == "json":
        print_json(events)
        return
    print_table(f"events of {job_id}", [("at", "left"), ("change", "left"),
                                        ("message", "left")],
                [[e["at"], f"{e['from']} -> {e['to']}" if e["kind"] == "transition" else "note",
                  e["message"]] for e in events])


@click.command("cancel")
@click.argument("job_id")
def cancel_cmd(job_id: str) -> None:
    """Cancel JOB_ID; an instance it launched is deleted."""
    from greenplace.scheduler.client import remote

    client = remote()
    if client is not None:
        result = client.cancel(job_id)
        message, deleting = result["message"], result["instance_deletion_queued"]
    else:
        from greenplace.scheduler.service import cancel

        settings = load_settings()
        store = open_store(settings)
        with reachable(settings.redacted_redis_url):
            outcome = cancel(store, LOCAL, job_id, send=_send, now=utc_now())
        message, deleting = outcome.message, bool(outcome.followups)
    tail = "; its instance will be deleted" if deleting else ""
    click.echo(f"{job_id}: {message}{tail}")


def _send(outcome: Outcome) -> None:
    from greenplace.scheduler.worker.app import app
    from greenplace.scheduler.worker.tasks import enqueue

    enqueue(app, outcome.followups)


@click.command("worker")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, show_default=True,
              help="pool processes")
@click.option("--pool", type=click.Choice(["prefork", "solo", "threads"]), default="prefork",
              show_default=True)
@click.option("--queues", "-Q", help="comma-separated queues [default: all of greenplace's]")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--beat", "-B", "with_beat", is_flag=True,
              help="also run beat inside this worker (any number may: one lease in Redis "
              "picks the one that sends)")
def worker_cmd(concurrency: int, pool: str, queues: str | None, loglevel: str,
               with_beat: bool) -> None:
    """Run a Celery worker with greenplace's options (acks late, prefetch 1, JSON only).

    Exits with the worker's own exit code: non-zero when it stopped on an error it
    could not recover from, so a supervisor that restarts on failure restarts it.
    (Celery's ``worker_main`` drops that code, and such a worker used to exit 0.)
    """
    from greenplace.scheduler.worker.app import QUEUES

    argv = ["worker", f"--concurrency={concurrency}", f"--pool={pool}",
            f"--loglevel={loglevel}", f"--queues={queues or ','.join(QUEUES)}",
            "--prefetch-multiplier=1", "--without-gossip", "--without-mingle",
            f"--hostname=greenplace-{os.getpid()}@%h"]
    if with_beat:
        from greenplace.scheduler.worker.beat import SCHEDULER

        argv += ["--beat", f"--scheduler={SCHEDULER}"]
    # Not app.worker_main(): it drops the code the worker exits with (Celery's command
    # returns it instead of raising, and worker_main returns None). Run the command ourselves.
    from celery.bin.celery import celery as celery_command

    code = celery_command.main(args=["--app", "greenplace.scheduler.worker.app:app", *argv],
                               standalone_mode=False)
    if code:
        raise click.exceptions.Exit(code)


@click.command("beat")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--schedule", type=click.Path(path_type=Path), hidden=True,
              help="ignored: beat keeps its schedule in Redis (accepted for old scripts)")
def beat_cmd(loglevel: str, schedule: Path | None) -> None:
    """Run Celery beat: it sends `reconcile`, the leak sweep `gc` and `prune` on schedule.

    Run two or more for failover: the one holding the beat lease in Redis sends,
    the others stand by and take over within about one lease.
    """
    from greenplace.scheduler.worker.app import app
    from greenplace.scheduler.worker.beat import SCHEDULER

    del schedule  # see the option's help
    app.start(["beat", f"--loglevel={loglevel}", f"--scheduler={SCHEDULER}"])


@click.group("sim")
def sim_group() -> None:
    """Inspect the local-sim provider (the simulated multi-cloud)."""


@sim_group.command("instances")
@_output
def sim_instances_cmd(output: str) -> None:
    """List every instance local-sim launched, with its job, idempotency key and state."""
    from greenplace.providers.local_sim import create

    settings = load_settings()
    sim = create(settings.provider_config("local-sim"))
    with reachable(settings.redacted_redis_url):
        rows = sim.instances()
    if output == "json":
        print_json(rows)
        return
    print_table(f"{len(rows)} local-sim instance(s)", [
        ("instance", "left"), ("job id", "left"), ("job", "left"), ("attempt", "right"),
        ("where", "left"), ("instance type", "left"), ("spot", "left"), ("state", "left")],
        [[r["instance_id"], r["job_id"], r["job_name"], fmt(r["attempt"]),
          f"{r['cloud']}:{r['region']}", r["instance_type"], "yes" if r["spot"] else "no",
          r["state"]] for r in rows])
