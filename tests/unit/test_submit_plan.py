"""`submit --plan` on a private redis-server with the real flow code and the real local-sim
provider (no Celery worker: the place tasks are run in-process as the worker runs them):
the plan is stored once and each job keeps its part; a job planned for hour 0 launches on
its planned offer, a later one is DEFERRED until its planned start and reconcile launches it
there; a job the plan left out ends UNSCHEDULABLE with the plan's reason; bad options write
nothing. The service with real worker processes: tests/integration/test_submit_plan_service.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from greenplace.scheduler.cli import main
from greenplace.scheduler.commands.plan import plan_batch
from greenplace.scheduler.dispatch import Context, Followup, decide, reconcile
from greenplace.scheduler.exceptions import JobNotFoundError
from greenplace.scheduler.planning.plan import Plan
from greenplace.scheduler.planning.stored import follow_plan
from greenplace.scheduler.service import submit_planned, visible_plan
from greenplace.scheduler.store import JobState, iso, offer_key, utc_now
from greenplace.scheduler.tokens import Principal, Role
from greenplace.scheduler.worker.app import PLACE_QUEUE, create_app
from tests.redisproc import REDIS_SERVER, RedisServer
from tests.unit.test_api import Api
from tests.unit.test_dispatch import make_job, run

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")
S = JobState
REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "examples" / "jobs.yaml"
CAPACITY = REPO / "examples" / "capacity.yaml"


def _plan(now: dt.datetime, **options: Any) -> Plan:
    plan, _ = plan_batch(JOBS, capacity_file=CAPACITY, budget_usd=options.get("budget_usd"),
                         horizon_hours=48, time_limit_s=30.0, policy=None,
                         override_policy=False, signals="static", quotas=False, now=now)
    return plan


def _submit(ctx: Context, plan: Plan) -> tuple[list[str], dict[str, Any]]:
    celery = create_app(ctx.settings)
    before = int(ctx.store.client.llen(PLACE_QUEUE))
    ids, document = submit_planned(ctx.store, celery, plan, team="default", notes=["a note"],
                                   now=utc_now())
    assert int(ctx.store.client.llen(PLACE_QUEUE)) - before == len(ids)  # one place each
    return ids, document


def _hour_now() -> dt.datetime:
    return utc_now().replace(minute=0, second=0, microsecond=0)


def test_a_planned_batch_launches_on_its_planned_offers_and_starts(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    plan = _plan(_hour_now())
    assert not plan.left
    ids, document = _submit(ctx, plan)
    assert ctx.store.plan(document["plan_id"]) == document
    assert document["summary"]["notes"][-1] == "a note"
    rows = document["jobs"]
    assert [r["job_id"] for r in rows] == ids
    later = [i for i, r in enumerate(rows) if r["start_hour"] > 0]
    assert later and len(later) < len(rows)  # the H100 jobs queue for the reserved H100
    for job_id, row in zip(ids, rows, strict=True):
        part = ctx.store.get(job_id).plan
        assert part is not None and part["plan_id"] == document["plan_id"]
        assert (part["cloud"], part["region"], part["instance_type"], part["start_at"]) == (
            row["cloud"], row["region"], row["instance_type"], row["start_at"])
        assert part["solver"] == document["summary"]["solver"]
        assert part["solver_status"] == document["summary"]["status"]
        run(ctx, [Followup(task="place", args=(job_id,))])
    for i, (job_id, row) in enumerate(zip(ids, rows, strict=True)):
        record = ctx.store.get(job_id)
        planned = (row["cloud"], row["region"], row["instance_type"])
        first = record.placements[0]
        assert (first.cloud, first.region, first.instance_type) == planned
        assert len(record.placements) > 1  # the rest of its ranking, for failover
        if i in later:
            assert record.state is S.DEFERRED, record.reason
            assert record.not_before == iso(dt.datetime.fromisoformat(row["start_at"]))
            events = ctx.store.events(job_id)
            assert f"planned start in batch plan {document['plan_id']}" in events[-1].message
        else:
            assert record.state is S.RUNNING, record.reason
            placement = record.placement
            assert placement is not None
            assert (placement.cloud, placement.region, placement.instance_type) == planned
    # Each deferred job is released at its planned start (earliest first), on its offer.
    for i in sorted(later, key=lambda i: rows[i]["start_hour"]):
        start = dt.datetime.fromisoformat(rows[i]["start_at"])
        early = reconcile(ctx, now=start - dt.timedelta(minutes=1), budget_s=5)
        assert ctx.store.get(ids[i]).state is S.DEFERRED
        run(ctx, early.followups)
        released = reconcile(ctx, now=start + dt.timedelta(seconds=1), budget_s=5)
        assert released.counts["released"] >= 1
        run(ctx, released.followups)
        record = ctx.store.get(ids[i])
        assert record.state is S.RUNNING, record.reason
        assert record.placement is not None
        assert offer_key(record.placement) == (
            f"{rows[i]['cloud']}:{rows[i]['region']}:{rows[i]['instance_type']}")


def test_a_job_the_plan_left_out_ends_unschedulable_with_the_plans_reason(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    plan = _plan(_hour_now(), budget_usd=200.0)
    assert plan.left and len(plan.left) < len(plan.jobs)
    ids, document = _submit(ctx, plan)
    for job_id, row in zip(ids, document["jobs"], strict=True):
        run(ctx, [Followup(task="place", args=(job_id,))])
        record = ctx.store.get(job_id)
        if row["status"] == "placed":
            assert record.state in (S.RUNNING, S.DEFERRED), record.reason
            continue
        assert record.state is S.UNSCHEDULABLE
        assert record.plan is not None and record.plan["binding"] == row["binding"]
        assert record.reason.startswith(f"the batch plan {document['plan_id']} left it out "
                                        f"(binding: {row['binding']})")
        assert row["reasons"][0] in record.reason
        assert record.placements == ()


def _member(team: str | None) -> Principal:
    return Principal(token_id="t", team=team, role=Role.MEMBER if team else Role.ADMIN,
                     name="n")


def test_the_plan_is_shown_to_its_team_only(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    _, document = _submit(ctx, _plan(_hour_now()))
    plan_id = document["plan_id"]
    assert visible_plan(ctx.store, _member("default"), plan_id) == document
    assert visible_plan(ctx.store, _member(None), plan_id) == document
    for principal, asked in ((_member("other"), plan_id),
                             (_member(None), "0123456789abcdef"),
                             (_member(None), "bad:id")):
        with pytest.raises(JobNotFoundError, match="No batch plan has id"):
            visible_plan(ctx.store, principal, asked)


def test_follow_plan_puts_the_planned_offer_first_or_keeps_the_ranking_with_a_note(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    now = utc_now()
    decision = decide(ctx.placer, make_job(), now=now, allow_defer=False)
    third = decision.placements()[2]
    part = {"plan_id": "p1", "planned": "placed", "cloud": third.cloud,
            "region": third.region, "instance_type": third.instance_type, "start_hour": 2,
            "start_at": (now + dt.timedelta(hours=2)).isoformat()}
    followed = follow_plan(decision, part, now=now)
    assert followed.placements()[0] == third
    assert sorted(followed.ranking.tolist()) == sorted(decision.ranking.tolist())
    assert followed.start_at == part["start_at"]
    assert followed.extra_notes[-1].startswith("batch plan p1: ")
    # Once the planned start has come, the job starts now.
    assert follow_plan(decision, part, now=now + dt.timedelta(hours=3)).start_at is None
    gone = {**part, "instance_type": "no-such-type"}
    kept = follow_plan(decision, gone, now=now)
    assert np.array_equal(kept.ranking, decision.ranking)
    assert "no longer feasible" in kept.extra_notes[-1]
    assert dataclasses.replace(kept, extra_notes=()).placements() == decision.placements()


@pytest.mark.parametrize(("args", "says"), [
    (["--capacity", str(CAPACITY)], "--capacity applies only with --plan"),
    (["--no-quotas", "--horizon-hours", "4"],
     "--horizon-hours, --no-quotas apply only with --plan"),
    (["--plan", "--dry-run"], "--plan and --dry-run do not go together"),
    (["--plan", "--horizon-hours", "0"], "--horizon-hours must be between 1"),
    (["--plan", "--budget-usd", "-5"], "--budget-usd must be a positive amount"),
    (["--plan", "--capacity", "/no/such/capacity.yaml"], "To fix"),
])
def test_bad_plan_options_write_nothing(server: RedisServer, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch, args: list[str],
                                        says: str) -> None:
    server.client().flushall()
    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)
    monkeypatch.delenv("GREENPLACE_API_URL", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["submit", str(JOBS), *args])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == ""
    assert says in err and "To fix" in err and "Traceback" not in err
    assert server.client().dbsize() == 0


def test_status_and_the_api_show_each_jobs_plan(server: RedisServer,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    api = Api(server)
    ids, document = submit_planned(api.store, create_app(api.settings), _plan(_hour_now()),
                                   team="alpha", notes=[], now=utc_now())
    plan_id, row = document["plan_id"], document["jobs"][0]
    api.launch(ids[0])
    view = api.call("GET", f"/v1/jobs/{ids[0]}", api.alpha).json()
    assert view["plan"]["plan_id"] == plan_id
    assert (view["plan"]["cloud"], view["plan"]["instance_type"], view["plan"]["start_at"]) == (
        row["cloud"], row["instance_type"], row["start_at"])
    assert view["plan"]["gap_pct"] == document["summary"]["gap_pct"]
    assert api.call("GET", f"/v1/plans/{plan_id}", api.alpha).json() == document
    assert api.call("GET", f"/v1/plans/{plan_id}", api.beta).status_code == 404
    assert api.call("GET", f"/v1/plans/{plan_id}", None).status_code == 401

    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)
    monkeypatch.delenv("GREENPLACE_API_URL", raising=False)
    with pytest.raises(SystemExit):
        main(["status", ids[0], "-o", "json"])
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["plan"] == view["plan"]
    with pytest.raises(SystemExit):
        main(["status", ids[0]])
    out = capsys.readouterr().out
    assert (f"plan {plan_id} ({document['summary']['solver']}, "
            f"{document['summary']['status']}, gap ") in out
    assert f"planned on {row['cloud']}:{row['region']} {row['instance_type']} from hour " in out


def test_prune_deletes_a_batch_plan_with_the_last_of_its_jobs(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    ids, document = _submit(ctx, _plan(_hour_now()))
    for job_id in ids:
        ctx.store.transition(job_id, to=S.CANCELLED, expect=S.QUEUED,
                             message="cancelled by the test", now=utc_now())
    later = utc_now() + dt.timedelta(days=2)
    # Pruning some of its jobs keeps the plan: the others still point at it.
    assert len(ctx.store.prune(older_than_s=0, now=later, limit=len(ids) - 1).pruned) == \
        len(ids) - 1
    assert ctx.store.plan(document["plan_id"]) is not None
    # A dry run removes nothing, the plan included.
    assert len(ctx.store.prune(older_than_s=0, now=later, dry_run=True).pruned) == 1
    assert ctx.store.plan(document["plan_id"]) is not None
    assert len(ctx.store.prune(older_than_s=0, now=later).pruned) == 1
    assert ctx.store.plan(document["plan_id"]) is None
