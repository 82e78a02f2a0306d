"""HTTP API latency and throughput: `POST /v1/jobs` and `GET /v1/jobs/{id}`, concurrent clients.

Usage:
    python benchmarks/api.py [--clients 50] [--requests 2000] [--repeat 3] [--api-workers 1]
                             [--batch 10000]

Each repeat starts a private redis-server (AOF on, ``appendfsync everysec``, as in
production) and a cold ``greenplace api`` process (uvicorn, ``--api-workers`` processes)
on loopback, and prints the time from start to the first ``/healthz`` answer. Then:

- **submit**: ``--clients`` concurrent HTTP/1.1 clients (one asyncio loop, one keep-alive
  connection each) send ``--requests`` ``POST /v1/jobs`` in all, each a one-job YAML
  file (the first job of ``examples/jobs.yaml``): parsed, validated, written to Redis and
  queued for placement, exactly as for a user. Latency is per request, client side.
- **get**: 200 of those jobs are placed and launched on local-sim in this process (the
  functions the worker's tasks call), so each has a decision and a candidate table; the
  same clients then send ``--requests`` ``GET /v1/jobs/{id}`` over them.
- **ceiling**, side by side: the same clients send ``--requests`` ``GET /healthz`` (a
  route that does nothing): what this client, uvicorn and FastAPI reach on this machine
  with no greenplace work at all. ``post_vs_ceiling`` is submissions/s over that rate.
- **batch**: one ``POST /v1/jobs`` of a ``--batch``-job file (the example jobs in turn,
  renamed), timed end to end by one client: how a large submission goes over HTTP.
- **inner loop**, side by side: the same submission through the service layer in this
  process (``load_submission`` + ``service.submit`` on a Celery app with the same Redis),
  one at a time, so the HTTP and concurrency overhead shows as a ratio.

Printed per repeat: p50 / p99 latency and requests/s of each phase; then the medians.
The clients run on the same machine as the server (2 shared cores here): they take CPU
from it, so the figures are a floor for a real deployment, not a ceiling.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/queue.py shares its name with the standard library's ``queue`` (which redis-py
# imports): take this directory off the import path before importing anything else.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402
import yaml  # noqa: E402

from tests.redisproc import RedisServer, free_port  # noqa: E402

JOB = yaml.safe_dump(yaml.safe_load((REPO / "examples" / "jobs.yaml").read_text())["jobs"][0])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def _load(url: str, token: str, *, clients: int, requests: int, method: str,
                paths: list[str], body: bytes | None) -> tuple[list[float], float, list[str]]:
    """Latencies (s), wall time (s) and the job ids returned, for ``requests`` calls."""
    latencies: list[float] = []
    ids: list[str] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/yaml"}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        for n in counter:
            started = time.perf_counter()
            response = await http.request(method, paths[n % len(paths)], content=body,
                                          headers=headers)
            latencies.append(time.perf_counter() - started)
            if response.status_code not in (200, 201):
                raise SystemExit(f"{method} {paths[0]}: HTTP {response.status_code} "
                                 f"{response.text[:300]}")
            if method == "POST":
                ids.extend(j["job_id"] for j in response.json()["jobs"])

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    return latencies, wall, ids


def _place(redis_url: str, sim: Path, ids: list[str]) -> None:
    from greenplace.scheduler.dispatch import Context, place_and_dispatch
    from greenplace.scheduler.settings import Settings
    from greenplace.scheduler.store import JobStore, redis_client, utc_now

    settings = Settings(redis_url=redis_url, sim_config=sim)
    ctx = Context.build(settings, JobStore(redis_client(redis_url)))
    for job_id in ids:
        place_and_dispatch(ctx, job_id, now=utc_now())


def _batch(url: str, token: str, jobs: int) -> float:
    """Seconds for one POST of a ``jobs``-job YAML file, answered 201."""
    examples = yaml.safe_load((REPO / "examples" / "jobs.yaml").read_text())["jobs"]
    body = yaml.safe_dump({"jobs": [{**examples[n % len(examples)], "name": f"job-{n}"}
                                    for n in range(jobs)]}).encode()
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/jobs", content=body, timeout=600,
                          headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/yaml"})
    if response.status_code != 201:
        raise SystemExit(f"batch POST: HTTP {response.status_code} {response.text[:300]}")
    return time.perf_counter() - started


def _inner_loop(redis_url: str, sim: Path, requests: int) -> list[float]:
    """Per-submission time through the service layer in-process, one at a time."""
    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.service import submit
    from greenplace.scheduler.settings import Settings
    from greenplace.scheduler.store import JobStore, redis_client, utc_now
    from greenplace.scheduler.submission import load_submission
    from greenplace.scheduler.worker.app import create_app

    settings = Settings(redis_url=redis_url, sim_config=sim)
    app = create_app(settings)
    store = JobStore(redis_client(redis_url))
    catalog = load_catalog()
    body = JOB.encode()
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        loaded = load_submission(Path("request-body.yaml"), catalog, policy=None,
                                 override_policy=False, now=utc_now(), content=body,
                                 policy_files=False)
        submit(store, app, loaded.jobs, team="bench")
        out.append(time.perf_counter() - started)
    return out


def one_repeat(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    from greenplace.scheduler.store import JobStore, redis_client
    from greenplace.scheduler.tokens import Role, Tokens

    server = RedisServer(tmp / "redis", extra=["--appendfsync", "everysec"]).start()
    sim = tmp / "sim.yaml"
    sim.write_text(yaml.safe_dump({"launch_latency_s": 0, "run_time_s": 3600}))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENPLACE_")}
    env.update({"GREENPLACE_REDIS_URL": server.url, "GREENPLACE_SIM_CONFIG": str(sim)})
    started = time.perf_counter()
    api = subprocess.Popen([sys.executable, "-m", "greenplace", "api", "--port", str(port),
                            "--workers", str(args.api_workers), "--log-level", "warning"],
                           env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.02)
            if api.poll() is not None:
                raise SystemExit("greenplace api exited")
        cold_s = time.perf_counter() - started
        _, token = Tokens(JobStore(redis_client(server.url))).create(team="bench",
                                                                     role=Role.MEMBER)
        post, post_wall, ids = asyncio.run(_load(
            url, token, clients=args.clients, requests=args.requests, method="POST",
            paths=["/v1/jobs"], body=JOB.encode()))
        _place(server.url, sim, ids[:200])
        get, get_wall, _ = asyncio.run(_load(
            url, token, clients=args.clients, requests=args.requests, method="GET",
            paths=[f"/v1/jobs/{i}" for i in ids[:200]], body=None))
        health, health_wall, _ = asyncio.run(_load(
            url, token, clients=args.clients, requests=args.requests, method="GET",
            paths=["/healthz"], body=None))
        batch_s = _batch(url, token, args.batch)
        inner = _inner_loop(server.url, sim, min(args.requests, 500))
    finally:
        api.terminate()
        api.wait(timeout=30)
        server.stop()
    row = {"cold_start_s": cold_s,
           "post_p50_ms": 1000 * percentile(post, 50), "post_p99_ms": 1000 * percentile(post, 99),
           "submissions_per_s": len(post) / post_wall,
           "get_p50_ms": 1000 * percentile(get, 50), "get_p99_ms": 1000 * percentile(get, 99),
           "gets_per_s": len(get) / get_wall,
           "healthz_per_s": len(health) / health_wall,
           "post_vs_ceiling": (len(post) / post_wall) / (len(health) / health_wall),
           "batch_s": batch_s, "batch_jobs_per_s": args.batch / batch_s,
           "inner_submit_ms": 1000 * statistics.median(inner)}
    print("  ".join(f"{k} {v:,.2f}" for k, v in row.items()), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--api-workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=10_000, help="jobs in the one large POST")
    args = parser.parse_args()
    print(f"{args.clients} clients, {args.requests} requests per phase, "
          f"{args.api_workers} API process(es), {os.cpu_count()} CPUs")
    rows = []
    for n in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"run {n + 1}: ", end="", flush=True)
            rows.append(one_repeat(args, Path(tmp)))
    print("median: " + "  ".join(f"{k} {statistics.median(r[k] for r in rows):,.2f}"
                                 for k in rows[0]))


if __name__ == "__main__":
    main()
