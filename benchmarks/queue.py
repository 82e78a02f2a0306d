"""Queue throughput: N jobs submitted and driven to RUNNING on local-sim by one worker.

Usage:
    python benchmarks/queue.py [--jobs 2000] [--repeat 5] [--chunks 4] [--concurrency 2]
                               [--unix-socket] [--count-round-trips 200]

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

Side by side: a repeat alternates no-op and job batches (``--chunks`` of each, N /
chunks tasks per batch) and adds up each kind's time, so both kinds see the same
background load on a shared machine; the ratio of one repeat is jobs/s over no-op
tasks/s. Printed per repeat: both rates, their ratio (target >= 0.5), the submission
time, and jobs/s end to end (submission + drive); then every ratio, the median and
the lowest. ``--count-round-trips N`` first counts, untimed, the commands Redis
receives per no-op task and per job (``redis-cli monitor``).
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
import functools  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import typing  # noqa: E402

import yaml  # noqa: E402

from greenplace.scheduler.catalog import load_catalog  # noqa: E402
from greenplace.scheduler.dispatch import Providers, plan  # noqa: E402
from greenplace.scheduler.jobs import load_jobs  # noqa: E402
from greenplace.scheduler.placement import Placer  # noqa: E402
from greenplace.scheduler.service import submit  # noqa: E402
from greenplace.scheduler.settings import load_settings  # noqa: E402
from greenplace.scheduler.store import JobState, JobStore, redis_client, utc_now  # noqa: E402

SHAPES = [
    [{"A100": 8}, {"H100": 8}],
    [{"L4": 1}, {"T4": 1}, {"A100": 1}],
    [{"H100": 8}],
    [{"V100": 8}],  # 4 x V100 was only sold as Azure NCv3 (retired 2025-09-30)
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
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--chunks", type=int, default=4,
                        help="alternate no-op and job batches this many times per repeat")
    parser.add_argument("--count-round-trips", type=int, default=0, metavar="N",
                        help="first count Redis round trips over N no-op tasks and N jobs "
                             "(untimed, through redis-cli MONITOR)")
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
        submit(store, app, jobs[:20], team="bench")
        wait(lambda: store.count(JobState.RUNNING) == 20, timeout_s=120, poll_s=0.05)
        _drain(client, CONTROL_QUEUE)
        where = "a Unix socket" if args.unix_socket else "TCP loopback"
        print(f"queue benchmark: {args.jobs} jobs, worker --concurrency {args.concurrency} "
              f"(prefork), redis-server {_version(client)} on {where}, {os.cpu_count()} CPUs")
        if args.count_round_trips:
            _print_round_trips(app, client, store, worker, jobs[:args.count_round_trips],
                               ["-s", str(sock)] if args.unix_socket else ["-p", str(port)])
        size = -(-args.jobs // args.chunks)
        results: list[tuple[float, float, float]] = []
        for rep in range(1, args.repeat + 1):
            clear_service_keys(client)
            noop_s = jobs_s = submit_s = 0.0
            for first in range(0, args.jobs, size):
                chunk = jobs[first:first + size]
                noop_s += _drive_noops(app, client, worker, len(chunk))
                submit_part, jobs_part = _drive_jobs(app, store, worker, chunk,
                                                     running=first + len(chunk))
                submit_s += submit_part
                jobs_s += jobs_part
            noop_rate, job_rate = args.jobs / noop_s, args.jobs / jobs_s
            e2e_rate = args.jobs / (submit_s + jobs_s)
            results.append((noop_rate, job_rate, e2e_rate))
            print(f"repeat {rep}: no-op {noop_rate:6.1f} tasks/s ({noop_s:.2f} s); "
                  f"jobs {job_rate:6.1f} jobs/s ({jobs_s:.2f} s); ratio "
                  f"{job_rate / noop_rate:.2f}; submit {submit_s:.2f} s; end to end "
                  f"{e2e_rate:.1f} jobs/s", flush=True)
        ratios = [r[1] / r[0] for r in results]
        print(f"ratios: {' '.join(f'{r:.2f}' for r in ratios)}; median "
              f"{statistics.median(ratios):.2f} (target >= 0.5), lowest {min(ratios):.2f}; "
              "median no-op "
              f"{statistics.median(r[0] for r in results):.1f} tasks/s, jobs "
              f"{statistics.median(r[1] for r in results):.1f} jobs/s, end to end "
              f"{statistics.median(r[2] for r in results):.1f} jobs/s")
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


def _drive_noops(app, client, worker, n: int, *, before=None) -> float:  # type: ignore[no-untyped-def]
    """Queue ``n`` no-op tasks with the worker frozen; seconds until all ran and were acked."""
    from greenplace.scheduler.worker.app import CONTROL_QUEUE

    os.killpg(worker.pid, signal.SIGSTOP)
    with app.producer_or_acquire() as producer, producer.batch():
        for _ in range(n):
            app.send_task("greenplace.noop", producer=producer)
    if before is not None:
        before()
    start = time.perf_counter()
    os.killpg(worker.pid, signal.SIGCONT)
    _drain(client, CONTROL_QUEUE)
    return time.perf_counter() - start


def _drive_jobs(app, store, worker, jobs, *, running: int, before=None  # type: ignore[no-untyped-def]
                ) -> tuple[float, float]:
    """Submit ``jobs`` with the worker frozen; (submit seconds, seconds until ``running``
    jobs are RUNNING). ``before`` runs between the two."""
    os.killpg(worker.pid, signal.SIGSTOP)
    start = time.perf_counter()
    submit(store, app, jobs, team="bench")
    submit_s = time.perf_counter() - start
    if before is not None:
        before()
    start = time.perf_counter()
    os.killpg(worker.pid, signal.SIGCONT)
    wait(lambda: store.count(JobState.RUNNING) == running, timeout_s=1800, poll_s=0.005)
    return submit_s, time.perf_counter() - start


def _start_monitor(monitors: list[subprocess.Popen[bytes]], where: list[str],
                   out: typing.IO[str]) -> None:
    monitors.append(subprocess.Popen(["redis-cli", *where, "monitor"], stdout=out))
    time.sleep(0.5)


def _print_round_trips(app, client, store, worker, jobs, where: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Untimed: the commands Redis receives per no-op task and per job (redis-cli MONITOR).

    A round trip is one command a client sends and waits for; a MULTI ... EXEC block
    (kombu's pipelines) counts once; commands a Lua script runs are counted apart.
    """
    clear_service_keys(client)
    for kind in ("no-op task", "job"):
        with tempfile.TemporaryFile("w+") as out:
            monitors: list[subprocess.Popen[bytes]] = []
            watch = functools.partial(_start_monitor, monitors, where, out)
            if kind == "job":
                _drive_jobs(app, store, worker, jobs, running=len(jobs), before=watch)
            else:
                _drive_noops(app, client, worker, len(jobs), before=watch)
            (monitor,) = monitors
            time.sleep(0.5)
            monitor.terminate()
            monitor.wait()
            out.seek(0)
            trips, scripted, in_multi = 0, 0, set()
            for line in out:
                parts = line.split(" ", 3)
                if len(parts) < 4:
                    continue
                who, command = parts[2], parts[3].split()[0].strip('"').upper()
                if who == "lua]":
                    scripted += 1
                elif command in ("ZCARD", "LLEN", "HLEN", "INFO"):  # the benchmark polling
                    continue
                elif command == "MULTI":
                    in_multi.add(who)
                elif command == "EXEC":
                    in_multi.discard(who)
                    trips += 1
                elif who not in in_multi:
                    trips += 1
        n = len(jobs)
        print(f"per {kind}: {trips / n:.2f} round trips to Redis, {scripted / n:.1f} commands "
              "inside Lua scripts")
    clear_service_keys(client)


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
