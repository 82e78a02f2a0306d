"""Queue throughput: N jobs submitted and driven to RUNNING on local-sim by one worker.

Usage:
    python benchmarks/queue.py [--jobs 2000] [--repeat 3] [--concurrency 2] [--unix-socket]

Starts a private redis-server (AOF on, ``appendfsync everysec``: the recommended
production setting) and one ``greenplace worker --concurrency 2`` (prefork, the
service's own options: acks late, prefetch 1, JSON). Each repeat measures, on the
same Redis and the same worker, the worker's throughput from a full queue:

- **no-op**: N ``greenplace.noop`` tasks (a task that does nothing) are queued
  while the worker is frozen (SIGSTOP to its process group, so queueing does not
  compete with it for the CPUs); the clock runs from SIGCONT until the queue and
  Redis' unacked hash are both empty: every task ran and was acknowledged.
- **jobs**: N validated jobs are submitted exactly as ``greenplace submit`` does
  (records in one MULTI, one ``place`` message each) while the worker is frozen;
  the clock runs from SIGCONT until all N are RUNNING on
  local-sim (launch latency 0; run time longer than the benchmark). Each job is
  placed over the full catalog, its decision frozen, then launched through
  ``prepare`` + ``submit`` with its idempotency key: 4 atomic state changes.

Printed per repeat: no-op tasks/s, jobs/s, their ratio (target >= 0.5), the
submission time, and jobs/s end to end (submission + drive). Then the medians.
Job files are generated and validated before any clock starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the standard library's ``queue`` (which redis-py
# imports): take its own directory off the import path before importing anything else.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from greenplace.scheduler.catalog import load_catalog  # noqa: E402
from greenplace.scheduler.commands.queue import submit_jobs  # noqa: E402
from greenplace.scheduler.dispatch import Providers, plan  # noqa: E402
from greenplace.scheduler.jobs import load_jobs  # noqa: E402
from greenplace.scheduler.placement import Placer  # noqa: E402
from greenplace.scheduler.settings import load_settings  # noqa: E402
from greenplace.scheduler.store import JobState, JobStore, redis_client, utc_now  # noqa: E402

SHAPES = [
    [{"A100": 8}, {"H100": 8}],
    [{"L4": 1}, {"T4": 1}, {"A100": 1}],
    [{"H100": 8}],
    [{"V100": 4}],
    [{"A100": 1}],
]
POLICIES = ["balanced", "greenest", "cheapest"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_jobs(path: Path, n: int) -> None:
    jobs = [{"name": f"bench-{i}", "run": f"python train.py --seed {i}",
             "resources": {"accelerators": SHAPES[i % len(SHAPES)]},
             "work": {"hours": 1 + i % 24}, "policy": POLICIES[i % len(POLICIES)]}
            for i in range(n)]
    path.write_text(yaml.safe_dump({"jobs": jobs}))


def wait(predicate, *, timeout_s: float, poll_s: float = 0.005) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit("benchmark: timed out (is the worker running? see its log)")
        time.sleep(poll_s)


def clear_service_keys(client) -> None:  # type: ignore[no-untyped-def]
    """Delete job-store and simulator keys (the broker's own bindings stay)."""
    for pattern in ("gp:*", "gpsim:*"):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(batch), 1000):
            client.delete(*batch[start:start + 1000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--unix-socket", action="store_true",
                        help="reach redis-server through a Unix socket instead of TCP loopback")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("benchmark: needs the redis-server binary (apt-get install redis-server)")

    tmp = Path(tempfile.mkdtemp(prefix="gp-queue-bench-"))
    port = free_port()
    sock = tmp / "redis.sock"
    listen = (["--port", "0", "--unixsocket", str(sock)] if args.unix_socket
              else ["--port", str(port), "--bind", "127.0.0.1"])
    redis_proc = subprocess.Popen(
        ["redis-server", *listen, "--dir", str(tmp), "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--logfile", str(tmp / "redis.log")],
        start_new_session=True)
    sim = tmp / "sim.yaml"
    sim.write_text(yaml.safe_dump({"launch_latency_s": 0, "run_time_s": 86_400}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENPLACE_")}
    url = f"unix://{sock}?db=0" if args.unix_socket else f"redis://127.0.0.1:{port}/0"
    env.update(GREENPLACE_REDIS_URL=url,
               GREENPLACE_SIM_CONFIG=str(sim), GREENPLACE_STALL_S="3600",
               PYTHONPATH=str(REPO))
    settings = load_settings(env)
    client = redis_client(settings.redis_url)
    wait(lambda: _ping(client), timeout_s=20, poll_s=0.05)

    from greenplace.scheduler.worker.app import CONTROL_QUEUE, create_app

    app = create_app(settings)
    store = JobStore(client)
    jobs_file = tmp / "jobs.yaml"
    write_jobs(jobs_file, args.jobs)
    catalog = load_catalog()
    jobs = load_jobs(jobs_file, catalog)
    planned = plan(jobs, placer=Placer(catalog), providers=Providers(settings), now=utc_now())
    unplaced = [p.job.name for p in planned if p.request is None]
    if unplaced:
        raise SystemExit(f"benchmark: {len(unplaced)} generated jobs are unschedulable")

    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "greenplace", "worker", "--concurrency", str(args.concurrency),
         "--loglevel", "WARNING"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        # Warm up: pool processes load the catalog and open connections.
        for _ in range(20):
            app.send_task("greenplace.noop")
        submit_jobs(store, app, jobs[:20])
        wait(lambda: store.count(JobState.RUNNING) == 20, timeout_s=120, poll_s=0.05)
        _drain(client, CONTROL_QUEUE)
        where = "a Unix socket" if args.unix_socket else "TCP loopback"
        print(f"queue benchmark: {args.jobs} jobs, worker --concurrency {args.concurrency} "
              f"(prefork), redis-server {_version(client)} on {where}, {os.cpu_count()} CPUs")
        results: list[tuple[float, float, float]] = []
        for rep in range(1, args.repeat + 1):
            clear_service_keys(client)
            os.killpg(worker.pid, signal.SIGSTOP)
            with app.producer_or_acquire() as producer, producer.batch():
                for _ in range(args.jobs):
                    app.send_task("greenplace.noop", producer=producer)
            start = time.perf_counter()
            os.killpg(worker.pid, signal.SIGCONT)
            _drain(client, CONTROL_QUEUE)
            noop_s = time.perf_counter() - start

            os.killpg(worker.pid, signal.SIGSTOP)
            start = time.perf_counter()
            submit_jobs(store, app, jobs)
            submit_s = time.perf_counter() - start
            start = time.perf_counter()
            os.killpg(worker.pid, signal.SIGCONT)
            wait(lambda: store.count(JobState.RUNNING) == args.jobs, timeout_s=1800,
                 poll_s=0.01)
            jobs_s = time.perf_counter() - start
            noop_rate, job_rate = args.jobs / noop_s, args.jobs / jobs_s
            e2e_rate = args.jobs / (submit_s + jobs_s)
            results.append((noop_rate, job_rate, e2e_rate))
            print(f"repeat {rep}: no-op {noop_rate:6.1f} tasks/s ({noop_s:.2f} s); "
                  f"jobs {job_rate:6.1f} jobs/s ({jobs_s:.2f} s); ratio "
                  f"{job_rate / noop_rate:.2f}; submit {submit_s:.2f} s; end to end "
                  f"{e2e_rate:.1f} jobs/s")
        noop_med = statistics.median(r[0] for r in results)
        jobs_med = statistics.median(r[1] for r in results)
        ratio_med = statistics.median(r[1] / r[0] for r in results)
        e2e_med = statistics.median(r[2] for r in results)
        print(f"median: no-op {noop_med:.1f} tasks/s; jobs {jobs_med:.1f} jobs/s; ratio "
              f"{jobs_med / noop_med:.2f} (median of per-repeat ratios {ratio_med:.2f}; "
              f"target >= 0.5); end to end {e2e_med:.1f} jobs/s")
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
        for proc in (worker, redis_proc):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _ping(client) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - still starting
        return False


def _version(client) -> str:  # type: ignore[no-untyped-def]
    return str(client.info("server").get("redis_version"))


def _drain(client, queue: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``queue`` is empty and nothing is unacknowledged: every task ran."""
    wait(lambda: client.llen(queue) == 0 and client.hlen("unacked") == 0, timeout_s=1800)


if __name__ == "__main__":
    main()
