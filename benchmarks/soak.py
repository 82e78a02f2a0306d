"""Soak: Redis faults under load, with real `greenplace worker` processes.

Usage:
    python benchmarks/soak.py [--runs 5] [--jobs 1000] [--fault outage|kill]
                              [--outage-s 30] [--workers 1] [--timeout-s 900]

Each run starts a private redis-server (AOF, ``appendfsync always``), ``--workers``
``greenplace worker --concurrency 2`` processes and one ``greenplace beat`` with the
fast timings of the integration suite (``tests/integration/conftest.py`` SERVICE_ENV,
local-sim: launch latency 0, 0.05 s per API call, 1 s run time), submits ``--jobs``
jobs with ``greenplace submit``, waits until a fifth of them are final, then injects
the fault:

- ``outage``: redis-server is shut down (SIGTERM) for ``--outage-s`` seconds, then
  started again on the same port and append-only file;
- ``kill``: redis-server is SIGKILLed and started again at once.

A run passes when every job is final (SUCCEEDED) within ``--timeout-s``, local-sim
holds exactly one instance per job (none lost, none launched twice), and every
worker is alive at the end. The soak's own supervisor restarts a worker that exited
with a NON-ZERO code (as systemd ``Restart=on-failure`` or Kubernetes would) and
counts it; a worker that exits 0 is a failure of the run (a supervisor that restarts
on failure would never restart it). Printed per run: the time from the end of the
fault until every job was final (``drain_s``), the whole run's time, and restarts;
then the medians. Exit status 1 when any run failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/queue.py shadows the standard library's ``queue`` (which redis-py imports):
# take this directory off the import path before importing anything else.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import collections  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from greenplace.scheduler.store import FINAL_STATES, JobState  # noqa: E402
from tests.integration.conftest import Proc, Service, training_job, write_jobs  # noqa: E402
from tests.redisproc import RedisServer  # noqa: E402


@dataclass
class Supervisor:
    """Restarts a worker that exited non-zero; remembers a zero exit as a failure."""

    service: Service
    workers: list[Proc]
    restarts: int = 0
    zero_exits: int = 0
    exit_codes: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            for i, proc in enumerate(self.workers):
                code = proc.popen.poll()
                if code is None:
                    continue
                self.exit_codes.append(code)
                if code == 0:
                    self.zero_exits += 1
                else:
                    self.restarts += 1
                proc.kill_group()  # its pool processes, if any are left
                self.workers[i] = self.service._start("worker", "worker", "--concurrency",
                                                      "2", "--loglevel", "INFO")


@dataclass
class RunResult:
    ok: bool
    drain_s: float
    total_s: float
    restarts: int
    zero_exits: int
    problems: list[str]


def one_run(tmp: Path, *, jobs: int, fault: str, outage_s: float, workers: int,
            timeout_s: float) -> RunResult:
    server = RedisServer(tmp / "redis").start()
    service = Service(tmp, server)
    service.write_sim(run_time_s=1.0, api_latency_s=0.05)
    supervisor = Supervisor(service, [service.start_worker() for _ in range(workers)])
    problems: list[str] = []
    try:
        service.start_beat()
        path = write_jobs(tmp / "jobs.yaml", [training_job(f"s{i}") for i in range(jobs)])
        started = time.monotonic()
        ids = service.submit(path)
        supervisor.start()
        store = service.store()

        def finals() -> int:
            try:
                return sum(store.count(s) for s in FINAL_STATES)
            except Exception:  # Redis down: not final yet
                return -1

        while finals() < jobs // 5:
            time.sleep(0.2)
        if fault == "outage":
            server.stop()
            time.sleep(outage_s)
        else:
            server.kill()
        server.start()
        fault_end = time.monotonic()
        deadline = fault_end + timeout_s
        while finals() < jobs and time.monotonic() < deadline:
            time.sleep(0.5)
        done = time.monotonic()
        records = service.records(ids)
        states = collections.Counter(str(r.state) for r in records)
        if states != {str(JobState.SUCCEEDED): jobs}:
            problems.append(f"not all SUCCEEDED: {dict(states)}")
        per_job = collections.Counter(str(i["job_id"]) for i in service.instances())
        doubled = [j for j in ids if per_job[j] > 1]
        missing = [j for j in ids if per_job[j] == 0]
        if doubled or missing or sum(per_job.values()) != jobs:
            problems.append(f"instances: {len(doubled)} doubled, {len(missing)} missing, "
                            f"{sum(per_job.values())} in all")
        supervisor.stop()
        dead = [p.log.name for p in supervisor.workers if p.popen.poll() is not None]
        if dead:
            problems.append(f"worker(s) not alive at the end: {dead}")
        if supervisor.zero_exits:
            problems.append(f"{supervisor.zero_exits} worker exit(s) with code 0")
        return RunResult(ok=not problems, drain_s=done - fault_end, total_s=done - started,
                         restarts=supervisor.restarts, zero_exits=supervisor.zero_exits,
                         problems=problems)
    finally:
        supervisor.stop()
        service.stop_all()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--fault", choices=["outage", "kill"], default="outage")
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--keep", action="store_true", help="keep each run's logs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up like Ctrl-C
    results = []
    for n in range(1, args.runs + 1):
        tmp = Path(tempfile.mkdtemp(prefix=f"gp-soak-{args.fault}-"))
        result = one_run(tmp, jobs=args.jobs, fault=args.fault, outage_s=args.outage_s,
                         workers=args.workers, timeout_s=args.timeout_s)
        results.append(result)
        print(f"run {n}: {'ok' if result.ok else 'FAILED'}  drain {result.drain_s:.1f} s  "
              f"total {result.total_s:.1f} s  restarts {result.restarts}  "
              f"{'; '.join(result.problems)}  (logs: {tmp})", flush=True)
    passed = sum(r.ok for r in results)
    print(f"{args.fault}: {passed}/{len(results)} runs passed; median drain "
          f"{statistics.median(r.drain_s for r in results):.1f} s, median total "
          f"{statistics.median(r.total_s for r in results):.1f} s, restarts "
          f"{[r.restarts for r in results]}")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
