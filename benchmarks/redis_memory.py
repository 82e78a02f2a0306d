"""Redis memory per job: N jobs run to a final state through the real flow, then pruned.

Usage:
    python benchmarks/redis_memory.py [--jobs 10000] [--repeat 3]

Each run starts two private redis-servers: one holds the job store only (what is
measured), the other local-sim's simulated instances (not the store's cost). The jobs
are the examples/jobs.yaml jobs, repeated in turn; they are written with
``JobStore.create``, then driven in this process by the functions the Celery tasks call
(``place_and_dispatch``, ``dispatch_job``, ``terminate_job``, ``reconcile``), with
follow-ups run at once instead of sent, until every job is final and every instance is
confirmed deleted: the records and events are the ones a real deployment writes.

Printed per run: the final states, the mean number of events per job, Redis
``used_memory`` per job once every job is final (records, events, indexes), ``MEMORY
USAGE`` of a sample of records and event lists, and what is left per job after
``JobStore.prune`` removed them all. The baseline is taken after one
warm-up job went through the same path and was pruned (so Lua scripts, the regions set
and the like are already there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path

# benchmarks/queue.py shadows the standard library's ``queue`` (which redis-py imports):
# take this directory off the import path before importing anything else.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]
sys.path.insert(0, str(REPO))

from greenplace.scheduler.catalog import load_catalog  # noqa: E402
from greenplace.scheduler.dispatch import (  # noqa: E402
    Context,
    Followup,
    dispatch_job,
    place_and_dispatch,
    reconcile,
    terminate_job,
)
from greenplace.scheduler.jobs import Job, load_jobs  # noqa: E402
from greenplace.scheduler.settings import Settings  # noqa: E402
from greenplace.scheduler.store import (  # noqa: E402
    FINAL_STATES,
    JobStore,
    NewJob,
    new_job_id,
    utc_now,
)
from tests.redisproc import RedisServer  # noqa: E402


def run_followups(ctx: Context, followups: tuple[Followup, ...]) -> None:
    """Do what the workers would do with these messages, here and now."""
    todo = deque(followups)
    while todo:
        f = todo.popleft()
        job_id = str(f.args[0])
        if f.task == "place":
            outcome = place_and_dispatch(ctx, job_id, now=utc_now())
        elif f.task == "dispatch":
            outcome = dispatch_job(ctx, job_id, int(f.args[1]), now=utc_now())
        else:
            outcome = terminate_job(ctx, job_id, now=utc_now())
        todo.extend(outcome.followups)


def drive(ctx: Context, jobs: list[Job]) -> list[str]:
    """Submit ``jobs`` and run them until every job is final and nothing awaits deletion."""
    ids = ctx.store.create([NewJob(job_id=new_job_id(), job=job) for job in jobs])
    for job_id in ids:
        run_followups(ctx, (Followup(task="place", args=(job_id,)),))
    while True:
        outcome = reconcile(ctx, now=utc_now(), budget_s=600)
        run_followups(ctx, outcome.followups)
        states = ctx.store.counts()
        active = sum(n for s, n in states.items() if s not in FINAL_STATES)
        if not active and not ctx.store.to_terminate() and not ctx.store.orphans():
            return ids
        time.sleep(0.2)


def used_memory_bytes(ctx: Context) -> int:
    return int(ctx.store.client.info("memory")["used_memory"])


def one_run(jobs: list[Job], tmp: Path) -> dict[str, float]:
    no_aof = ["--appendonly", "no"]  # memory is the question here, not durability
    store_redis = RedisServer(tmp / "store", extra=no_aof).start()
    sim_redis = RedisServer(tmp / "sim", extra=no_aof).start()
    try:
        sim = tmp / "sim.yaml"
        sim.write_text("launch_latency_s: 0\nrun_time_s: 0\n")
        settings = Settings(redis_url=sim_redis.url, sim_config=sim)
        ctx = Context.build(settings, JobStore(store_redis.client()))
        drive(ctx, jobs[:1])  # warm-up: scripts loaded, regions recorded, then pruned
        ctx.store.prune(older_than_s=0, limit=10)
        base = used_memory_bytes(ctx)
        started = time.monotonic()
        ids = drive(ctx, jobs)
        drive_s = time.monotonic() - started
        final = used_memory_bytes(ctx)
        states = Counter(str(r.state) for r in ctx.store.get_many(ids))
        events = sum(int(ctx.store.client.llen(f"gp:job:{i}:events")) for i in ids)
        sample = ids[:: max(1, len(ids) // 200)]
        usage = ctx.store.client.memory_usage  # SAMPLES 0: every field / element counted
        record_b = statistics.mean(int(usage(f"gp:job:{i}", samples=0) or 0) for i in sample)
        events_b = statistics.mean(int(usage(f"gp:job:{i}:events", samples=0) or 0)
                                   for i in sample)
        explain_b = statistics.mean(int(usage(f"gp:job:{i}:explain", samples=0) or 0)
                                    for i in sample)
        started = time.monotonic()
        result = ctx.store.prune(older_than_s=0, limit=len(ids) + 1)
        prune_s = time.monotonic() - started
        after = used_memory_bytes(ctx)
        assert len(result.pruned) == len(ids) and not ctx.store.job_ids()
        n = len(ids)
        print(f"  {n} jobs {dict(sorted(states.items()))}, {events / n:.1f} events/job; "
              f"driven in {drive_s:.1f} s, pruned in {prune_s:.2f} s; used_memory per job: "
              f"final {(final - base) / n:,.0f} B (MEMORY USAGE: record {record_b:,.0f} B, "
              f"events {events_b:,.0f} B, explain {explain_b:,.0f} B), after prune "
              f"{(after - base) / n:,.0f} B")
        return {"final": (final - base) / n, "after": (after - base) / n,
                "events": events / n, "prune_s": prune_s, "record": record_b,
                "events_b": events_b, "explain_b": explain_b}
    finally:
        store_redis.stop()
        sim_redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    catalog = load_catalog()
    templates = load_jobs(REPO / "examples" / "jobs.yaml", catalog)
    jobs = [templates[i % len(templates)] for i in range(args.jobs)]
    redis_version = ""
    runs = []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="gp-redis-memory-") as tmp:
            print(f"run {r + 1}:")
            runs.append(one_run(jobs, Path(tmp)))
            if not redis_version:
                import subprocess

                redis_version = subprocess.run(["redis-server", "--version"], check=True,
                                               capture_output=True, text=True).stdout.split()[2]
    print(f"median of {len(runs)} runs ({redis_version}): "
          f"{statistics.median(r['final'] for r in runs):,.0f} B per final job "
          f"({statistics.median(r['events'] for r in runs):.1f} events; record "
          f"{statistics.median(r['record'] for r in runs):,.0f} B, events "
          f"{statistics.median(r['events_b'] for r in runs):,.0f} B, explain "
          f"{statistics.median(r['explain_b'] for r in runs):,.0f} B), "
          f"{statistics.median(r['after'] for r in runs):,.0f} B per job after prune; "
          f"prune {args.jobs / statistics.median(r['prune_s'] for r in runs):,.0f} jobs/s")


if __name__ == "__main__":
    main()
