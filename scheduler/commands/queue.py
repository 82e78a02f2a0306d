"""Commands of the service: submit, status, events, cancel, worker, beat, sim instances.

Exit codes (as everywhere): 0 ok; 1 some jobs unschedulable or failed (``submit
--dry-run``, ``status``); 2 bad input, unusable settings or Redis unreachable.
Celery is imported only by the commands that send tasks or run a worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.commands.common import load_cli_jobs, policy_options
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.output import console, fmt, print_json, print_table
from greenplace.scheduler.settings import Settings, load_settings
from greenplace.scheduler.store import (
    FINAL_STATES,
    JobRecord,
    JobState,
    JobStore,
    NewJob,
    new_job_id,
    open_store,
    reachable,
    utc_now,
)

if TYPE_CHECKING:
    from celery import Celery

_output = click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
                       show_default=True, help="table for people, json for machines")
_BAD_STATES = frozenset({JobState.FAILED, JobState.UNSCHEDULABLE})


def submit_jobs(store: JobStore, app: Celery, jobs: Sequence[Job]) -> list[str]:
    """Write QUEUED records for ``jobs`` (all or none) and enqueue ``place`` for each.

    If sending stops half-way (Redis gone), the records already written stay
    QUEUED and reconcile's stall sweep enqueues them later.
    """
    new = [NewJob(job_id=new_job_id(), job=job) for job in jobs]
    ids = store.create(new)
    with app.producer_or_acquire() as producer:
        # kombu >= 5.7 pipelines the publishes of a batch; older ones publish one by one.
        batch = getattr(producer, "batch", None)
        with batch() if batch is not None else contextlib.nullcontext():
            for job_id in ids:
                app.send_task("greenplace.place", args=[job_id], producer=producer)
    return ids


def _replaced(job: Job) -> dict[str, str]:
    return {"replaced_policy": job.replaced_policy} if job.replaced_policy else {}


def _dry_run(jobs: Sequence[Job], settings: Settings, output: str) -> None:
    from greenplace.scheduler.dispatch import Providers, plan
    from greenplace.scheduler.placement import Placer

    launches = plan(jobs, placer=Placer(load_catalog(), routes=settings.providers),
                    providers=Providers(settings), now=utc_now())
    rows = []
    for launch in launches:
        row: dict[str, Any] = {"job": launch.job.name, "policy": launch.job.policy.name,
                               "status": "placed" if launch.request else "unschedulable",
                               "start_at": launch.decision.start_at,
                               **_replaced(launch.job)}
        if launch.request is None:
            row["reasons"] = launch.decision.summary()["reasons"]
        else:
            row.update(provider=launch.provider, cloud=launch.request.cloud,
                       region=launch.request.region,
                       instance_type=launch.request.instance_type,
                       request=dataclasses.asdict(launch.request),
                       fallbacks=[f"{p.cloud}:{p.region}:{p.instance_type}"
                                  for p in launch.fallbacks[:10]])
        rows.append(row)
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


@click.command("submit")
@click.argument("jobs_file", type=click.Path(path_type=Path))
@policy_options
@click.option("--dry-run", is_flag=True,
              help="print each job's placement and exact launch request; no Redis, no cloud")
@_output
def submit_cmd(jobs_file: Path, policy: str | None, override_policy: bool, dry_run: bool,
               output: str) -> None:
    """Queue every job of JOBS_FILE and print their ids (nothing is written on bad input)."""
    settings = load_settings()
    jobs = load_cli_jobs(jobs_file, load_catalog(), policy=policy,
                         override_policy=override_policy, now=utc_now())
    if dry_run:
        _dry_run(jobs, settings, output)
        return
    from greenplace.scheduler.worker.app import app

    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        ids = submit_jobs(store, app, jobs)
    _warn_without_worker(store)
    if output == "json":
        print_json([{"job_id": i, "name": j.name, "state": str(JobState.QUEUED), **_replaced(j)}
                    for i, j in zip(ids, jobs, strict=True)])
    else:
        for job_id, job in zip(ids, jobs, strict=True):
            click.echo(f"{job_id}  {job.name}")


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


def _status_rows(store: JobStore, job_id: str | None) -> list[JobRecord]:
    if job_id is not None:
        return [store.get(job_id)]
    return store.get_many(store.job_ids())


def _status_table(records: Sequence[JobRecord]) -> None:
    cells = []
    for r in records:
        s = r.summary()
        where = f"{s['cloud']}:{s['region']}" if s["cloud"] else "-"
        reason = (s["reason"] or "")[:80] or (f"not before {s['not_before']}"
                                              if s["not_before"] else "")
        cells.append([r.job_id, r.name, str(r.state), where, fmt(s["instance_type"]),
                      fmt(s["instance_id"]), str(r.attempt), r.updated_at[11:19], reason])
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.state)] = counts.get(str(r.state), 0) + 1
    print_table(f"{len(records)} job(s)", [
        ("job id", "left"), ("name", "left"), ("state", "left"), ("where", "left"),
        ("instance type", "left"), ("instance", "left"), ("attempts", "right"),
        ("updated", "left"), ("reason", "left")], cells,
        footer=", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


@click.command("status")
@click.argument("job_id", required=False)
@click.option("--watch", "-w", is_flag=True, help="refresh until every job shown is final; "
              "with --output json, JSON lines: one object per job each time it changes")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="seconds between refreshes with --watch")
@_output
def status_cmd(job_id: str | None, watch: bool, interval: float, output: str) -> None:
    """Show jobs (all, or JOB_ID): state, where, instance, attempts, reason."""
    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        records = _status_rows(store, job_id)
        if any(r.state not in FINAL_STATES for r in records):
            _warn_without_worker(store)
            _warn_without_beat(store)
        if watch:
            records = _watch(store, job_id, interval, output, records)
        elif output == "json":
            print_json([r.summary() for r in records])
        else:
            _status_table(records)
    if any(r.state in _BAD_STATES for r in records):
        raise click.exceptions.Exit(1)


def _watch(store: JobStore, job_id: str | None, interval: float, output: str,
           records: list[JobRecord]) -> list[JobRecord]:
    from rich.live import Live
    from rich.table import Table

    def render(rs: Sequence[JobRecord]) -> Table:
        table = Table(title=f"{len(rs)} job(s), {dt.datetime.now():%H:%M:%S}",
                      title_justify="left")
        for name in ("job id", "name", "state", "where", "instance", "attempts", "reason"):
            table.add_column(name)
        for r in rs:
            s = r.summary()
            table.add_row(r.job_id, r.name, str(r.state),
                          f"{s['cloud']}:{s['region']}" if s["cloud"] else "-",
                          fmt(s["instance_id"]), str(r.attempt), (s["reason"] or "")[:60])
        return table

    last: dict[str, str] = {}
    try:
        if output == "json":
            # JSON lines: one object per job each time that job's summary changes.
            while True:
                for r in records:
                    text = json.dumps(r.summary(), default=str)
                    if last.get(r.job_id) != text:
                        sys.stdout.write(text + "\n")
                        last[r.job_id] = text
                sys.stdout.flush()
                if all(r.state in FINAL_STATES for r in records):
                    return records
                time.sleep(interval)
                records = _status_rows(store, job_id)
        with Live(render(records), console=console(), refresh_per_second=4) as live:
            while not all(r.state in FINAL_STATES for r in records):
                time.sleep(interval)
                records = _status_rows(store, job_id)
                live.update(render(records))
    except KeyboardInterrupt:
        pass
    return records


@click.command("events")
@click.argument("job_id")
@_output
def events_cmd(job_id: str, output: str) -> None:
    """Show the event history of JOB_ID, oldest first."""
    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        events = store.events(job_id)
    if output == "json":
        print_json([e.as_json() for e in events])
        return
    print_table(f"events of {job_id}", [("at", "left"), ("change", "left"),
                                        ("message", "left")],
                [[e.at, f"{e.state_from} -> {e.state_to}" if e.kind == "transition" else "note",
                  e.message] for e in events])


@click.command("cancel")
@click.argument("job_id")
def cancel_cmd(job_id: str) -> None:
    """Cancel JOB_ID; an instance it launched is deleted."""
    from greenplace.scheduler.dispatch import cancel_job

    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        outcome = cancel_job(store, job_id, now=utc_now())
        if outcome.followups:
            from greenplace.scheduler.worker.app import app
            from greenplace.scheduler.worker.tasks import enqueue

            enqueue(app, outcome.followups)
    tail = "; its instance will be deleted" if outcome.followups else ""
    click.echo(f"{job_id}: {outcome.message}{tail}")


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


__all__ = ["submit_jobs"]
