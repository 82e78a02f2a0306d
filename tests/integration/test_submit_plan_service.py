"""`submit --plan` end to end: real redis-server, real Celery worker and beat processes, and
local-sim with the capacity file's limits as its own capacities.

The jobs planned for hour 0 run on their planned offers; the ones planned later stay DEFERRED
until their planned start. Hours are not waited out: each one's release is the reconcile pass
the beat runs, called here with the clock at its planned start (as the flow tests do), and
its launch is sent to the real worker.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from greenplace.scheduler.dispatch import Context, Outcome, reconcile
from greenplace.scheduler.settings import Settings
from greenplace.scheduler.store import JobState, iso
from greenplace.scheduler.worker.app import create_app
from greenplace.scheduler.worker.tasks import enqueue
from tests.integration.conftest import REPO, Service, wait_for

pytestmark = pytest.mark.integration
S = JobState
JOBS = REPO / "examples" / "jobs.yaml"
CAPACITY = REPO / "examples" / "capacity.yaml"


def _where(row: dict[str, Any]) -> str:
    return f"{row['cloud']}:{row['region']}:{row['instance_type']}"


def test_a_planned_batch_runs_on_its_planned_offers_at_its_planned_starts(
        service: Service) -> None:
    planned = service.cli_json("plan", str(JOBS), "--capacity", str(CAPACITY), "--no-quotas")
    rows = {r["job"]: r for r in planned["jobs"]}
    # local-sim holds the capacity file's pools: one 8x H100 block, one spot L4 at once.
    service.write_sim(run_time_s=1.0, capacity={
        "aws:eu-north-1:p5.48xlarge": 1, "gcp:europe-west6:g2-standard-4": 1})
    service.start_worker()
    service.start_beat()
    done = service.cli("submit", str(JOBS), "--plan", "--capacity", str(CAPACITY),
                       "--no-quotas", "--output", "json")
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout)
    plan_id = submitted[0]["plan_id"]
    assert f"plan {plan_id}: 7/7 placed by the HiGHS" in done.stderr
    ids = {r["name"]: r["job_id"] for r in submitted}
    stored = service.store().plan(plan_id)
    assert stored is not None
    by_name = {r["job"]: r for r in stored["jobs"]}
    # The same batch planned by `greenplace plan` a moment ago: same offers and starts, when
    # both planned from the same hour 0 (a run across the top of the hour plans from two).
    if stored["start"] == planned["start"]:
        assert {n: (_where(r), r["start_hour"]) for n, r in by_name.items()} == {
            n: (_where(r), r["start_hour"]) for n, r in rows.items()}
    now_names = [n for n, r in by_name.items() if r["start_hour"] == 0]
    later_names = sorted((n for n, r in by_name.items() if r["start_hour"] > 0),
                         key=lambda n: by_name[n]["start_hour"])
    assert now_names and later_names
    for record in service.wait_states([ids[n] for n in now_names], {S.SUCCEEDED},
                                      timeout_s=180):
        assert record.placement is not None and record.attempt == 1
        planned_where = _where(by_name[record.name])
        assert (f"{record.placement.cloud}:{record.placement.region}:"
                f"{record.placement.instance_type}") == planned_where
    for record in service.records([ids[n] for n in later_names]):
        assert record.state is S.DEFERRED
        start = dt.datetime.fromisoformat(by_name[record.name]["start_at"])
        assert record.not_before == iso(start)
    shown = service.cli_json("status", ids[later_names[0]])
    assert shown[0]["plan"]["plan_id"] == plan_id

    settings = Settings(redis_url=service.redis.url, sim_config=service.sim_path)
    ctx = Context.build(settings, service.store())
    celery = create_app(settings)
    for name in later_names:
        start = dt.datetime.fromisoformat(by_name[name]["start_at"])

        def release(at: dt.datetime = start) -> Outcome | None:
            outcome = reconcile(ctx, now=at + dt.timedelta(seconds=1), budget_s=10)
            return outcome if "released" in outcome.counts else None  # the beat held it

        outcome = wait_for(release, timeout_s=60, what="a reconcile pass of our own")
        enqueue(celery, outcome.followups)
        (record,) = service.wait_states([ids[name]], {S.SUCCEEDED}, timeout_s=180)
        assert record.placement is not None
        assert (f"{record.placement.cloud}:{record.placement.region}:"
                f"{record.placement.instance_type}") == _where(by_name[name])
