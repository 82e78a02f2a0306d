"""Reconcile at scale: one pass over N RUNNING jobs per cloud adapter, on its local fake.

Usage:
    python benchmarks/reconcile.py [--jobs 1000] [--regions 3] [--repeat 5]
                                   [--clouds local-sim,aws,gcp,azure,libcloud-openstack]

For each adapter, its contract case (tests/contract/cases_*.py) starts the fake
cloud the test suite uses (moto behind the EC2 proxy, the Compute Engine fake, the
ARM fake, the OpenStack fake; local-sim on a private redis-server) and builds the
adapter exactly as a worker would. N instances are launched through the adapter's
own ``submit`` in up to ``--regions`` regions of that cloud (catalog regions selling
the case's instance type), untimed; the store gets N RUNNING job records holding
their handles, on a private redis-server. Then ``reconcile`` runs ``--repeat``
passes, each timed, ``--pause-s`` apart (3 s: passes run 10 s apart in production,
and the Azure adapter reuses a resource-group listing for 2 s within one pass),
while every instance is running (a pass changes nothing).

Printed per adapter: jobs, regions in use, the HTTP requests the pass sent (every
request through urllib3, which botocore, the Google, Azure and libcloud SDKs all
use; retries included), the list and status calls reconcile made, and the median
pass time; beside them, what the same N jobs cost polled one ``status()`` each (how
reconcile followed them before): requests and time. The target is at most one list
request per region in use per pass and no per-instance request while instances run.
local-sim reads Redis, not HTTP: its request columns are empty.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

# benchmarks/queue.py shadows the standard library's ``queue`` (which redis-py imports):
# take this directory off the import path before importing anything else.
_HERE = Path(__file__).resolve().parent
REPO = _HERE.parent
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]
sys.path.insert(0, str(REPO))

import pytest  # noqa: E402
import urllib3  # noqa: E402

from greenplace.policies.model import load_policy  # noqa: E402
from greenplace.providers.base import (  # noqa: E402
    InstanceHandle,
    InstanceState,
    JobLaunch,
    Placement,
    Provider,
    idempotency_key,
)
from greenplace.scheduler.catalog import load_catalog  # noqa: E402
from greenplace.scheduler.dispatch import Context, Providers, reconcile  # noqa: E402
from greenplace.scheduler.exceptions import GreenplaceError  # noqa: E402
from greenplace.scheduler.jobs import JobSpec, resolve_job  # noqa: E402
from greenplace.scheduler.settings import Settings  # noqa: E402
from greenplace.scheduler.store import (  # noqa: E402
    JobState,
    JobStore,
    Move,
    NewJob,
    encode_fields,
    utc_now,
)
from tests.contract.adapter_case import AdapterCase, CaseEnv, Shared  # noqa: E402
from tests.contract.conftest import CASES  # noqa: E402
from tests.redisproc import RedisServer  # noqa: E402

S = JobState


class HttpCounter:
    """Counts every HTTP request sent through urllib3 in this process."""

    def __init__(self) -> None:
        self.count = 0
        self._original = urllib3.connectionpool.HTTPConnectionPool.urlopen

    @contextmanager
    def installed(self) -> Iterator[None]:
        original = self._original
        counter = self

        def counting(pool: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return original(pool, *args, **kwargs)

        urllib3.connectionpool.HTTPConnectionPool.urlopen = counting  # type: ignore[method-assign]
        try:
            yield
        finally:
            urllib3.connectionpool.HTTPConnectionPool.urlopen = original  # type: ignore[method-assign]


class One(Providers):
    """Every provider name resolves to the case's adapter."""

    def __init__(self, settings: Settings, provider: Provider) -> None:
        super().__init__(settings)
        self.provider = provider

    def by_name(self, name: str) -> Provider:
        return self.provider


def regions_for(placement: Placement, limit: int) -> list[Placement]:
    """Up to ``limit`` placements of the case's instance type in distinct catalog regions
    of its cloud (the case's own region first); the case's region alone if none else."""
    out = [placement]
    for offer in load_catalog().offers:
        if len(out) >= limit:
            break
        if (offer.cloud == placement.cloud and offer.instance_type == placement.instance_type
                and offer.region not in {p.region for p in out}):
            out.append(Placement(cloud=offer.cloud, region=offer.region,
                                 instance_type=offer.instance_type,
                                 accelerator=offer.accelerator,
                                 accelerator_count=offer.accelerator_count, spot=False))
    return out


def launch(case: AdapterCase, provider: Provider, n: int, regions: int
           ) -> list[tuple[str, Placement, InstanceHandle]]:
    """N instances through ``submit``, spread over the regions, followed until RUNNING."""
    places = regions_for(case.placement, regions)
    launched = []
    for i in range(n):
        placement = places[i % len(places)]
        job = JobLaunch(job_id=f"bench{i:05d}", name=f"bench-{i}", run="python train.py",
                        policy="balanced", attempt=1)
        try:
            handle = provider.submit(provider.prepare(job, placement),
                                     idempotency_key=idempotency_key(job.job_id, 1))
        except GreenplaceError:
            if placement is places[0]:
                raise
            places.remove(placement)  # a region the fake does not serve: use the others
            continue
        launched.append((job.job_id, placement, handle))
    settled = []
    for job_id, placement, handle in launched:
        for _ in range(600):
            status = provider.status(handle)
            handle = status.handle or handle
            if status.state is InstanceState.RUNNING:
                break
            time.sleep(0.05)
        settled.append((job_id, placement, handle))
    return settled


def running_jobs(store: JobStore, launched: list[tuple[str, Placement, InstanceHandle]]
                 ) -> None:
    """RUNNING job records holding the launched handles."""
    spec = JobSpec.model_validate({"name": "bench", "run": "python train.py",
                                   "resources": {"accelerators": {"A100": 1}},
                                   "work": {"hours": 1}})
    job = resolve_job(spec, load_catalog(), policy=load_policy("balanced"), where="bench")
    store.create([NewJob(job_id=job_id, job=job) for job_id, _, _ in launched])
    for job_id, placement, handle in launched:
        store.transitions(job_id, [
            Move(to=S.PLACED, expect=S.QUEUED, message="placed",
                 fields=encode_fields(placements=[placement], target=-1, exhausted=[])),
            Move(to=S.DISPATCHING, expect=S.PLACED, attempt=0, message="launching",
                 fields=encode_fields(attempt=1, target=0)),
            Move(to=S.RUNNING, expect=S.DISPATCHING, attempt=1, message="launched",
                 fields=encode_fields(handle=handle)),
        ])


def bench_case(case_id: str, *, jobs: int, regions: int, repeat: int,
               pause_s: float) -> dict[str, Any]:
    with ExitStack() as stack:
        monkeypatch = pytest.MonkeyPatch()
        stack.callback(monkeypatch.undo)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gp-bench-")))
        env = CaseEnv(monkeypatch=monkeypatch, tmp_path=tmp, shared=Shared(stack))
        case = stack.enter_context(CASES[case_id](env))
        provider = case.make_provider()
        launched = launch(case, provider, jobs, regions)
        server = RedisServer(tmp / "redis").start()
        stack.callback(server.stop)
        store = JobStore(server.client())
        running_jobs(store, launched)
        settings = Settings(redis_url=server.url)
        base = Context.build(settings, store)
        ctx = Context(settings=settings, store=store, providers=One(settings, provider),
                      catalog=base.catalog, placer=base.placer)
        counter = HttpCounter()
        seconds, requests, counts = [], [], {}
        with counter.installed():
            for _ in range(repeat):
                time.sleep(pause_s)  # passes are GREENPLACE_RECONCILE_INTERVAL_S apart
                before = counter.count
                start = time.perf_counter()
                outcome = reconcile(ctx, now=utc_now(), budget_s=600)
                seconds.append(time.perf_counter() - start)
                requests.append(counter.count - before)
                counts = outcome.counts
            before, start = counter.count, time.perf_counter()
            for _, _, handle in launched:  # what one pass cost before: a status per job
                provider.status(handle)
            per_job_s, per_job_requests = time.perf_counter() - start, counter.count - before
        assert store.count(S.RUNNING) == len(launched), "a pass moved a running job"
        in_use = {(h.provider, h.region) for _, _, h in launched}
        return {"case": case_id, "jobs": len(launched), "regions": len(in_use),
                "requests": statistics.median(requests) if case_id != "local-sim" else None,
                "list_calls": counts.get("list_calls"),
                "status_calls": counts.get("status_calls"),
                "median_s": statistics.median(seconds), "all_s": seconds,
                "per_job_s": per_job_s,
                "per_job_requests": per_job_requests if case_id != "local-sim" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--regions", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pause-s", type=float, default=3.0,
                        help="between passes (production: the 10 s reconcile interval); "
                             "longer than the Azure adapter's 2 s listing reuse")
    parser.add_argument("--clouds", default="local-sim,aws,gcp,azure,libcloud-openstack")
    args = parser.parse_args()
    print(f"{'adapter':<20} {'jobs':>5} {'regions':>7} {'HTTP req/pass':>13} "
          f"{'list calls':>10} {'status calls':>12} {'median pass':>11} "
          f"{'status per job: req':>20} {'time':>8}")
    for case_id in args.clouds.split(","):
        if case_id not in CASES:
            raise SystemExit(f"no contract case {case_id!r}; known: {sorted(CASES)}")
        r = bench_case(case_id, jobs=args.jobs, regions=args.regions, repeat=args.repeat,
                       pause_s=args.pause_s)
        req = "-" if r["requests"] is None else f"{r['requests']:g}"
        old = "-" if r["per_job_requests"] is None else str(r["per_job_requests"])
        print(f"{r['case']:<20} {r['jobs']:>5} {r['regions']:>7} {req:>13} "
              f"{r['list_calls']:>10} {r['status_calls']:>12} {r['median_s']:>10.3f}s "
              f"{old:>20} {r['per_job_s']:>7.2f}s"
              f"   (passes: {', '.join(f'{s:.3f}' for s in r['all_s'])})", flush=True)


if __name__ == "__main__":
    main()
