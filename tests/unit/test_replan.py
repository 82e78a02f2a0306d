"""A planned job refused for capacity on its planned offer re-plans the rest of its batch
(``dispatch._replan``, ``planning/replan.py``), on a private redis-server with the real flow
code and the real local-sim provider, whose capacity for the planned H100 offer is lower
than the plan assumed (none at all).

The example batch (examples/jobs.yaml with examples/capacity.yaml) queues its three H100 jobs
for the one reserved H100 instance in aws:eu-north-1: llama-8b-finetune from hour 0, the two
others DEFERRED to later hours. Every other job is placed first, so when llama-8b-finetune is
refused, the deferred jobs are re-planned with it and the running ones hold their pools.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.dispatch import Context, Followup, place_and_dispatch
from greenplace.scheduler.planning import plan as planning_plan
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.replan import HeldRun, revised_pools
from greenplace.scheduler.planning.stored import pool_definition, pool_from_definition
from greenplace.scheduler.store import JobState, iso, offer_key, policy_of
from tests.redisproc import REDIS_SERVER
from tests.unit.test_dispatch import run
from tests.unit.test_submit_plan import _hour_now, _plan, _submit

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")
S = JobState
REFUSED = "aws:eu-north-1:p5.48xlarge"
FIRST = "llama-8b-finetune"


def _submitted(ctx: Context) -> tuple[dict[str, str], dict[str, Any]]:
    """The example batch submitted with its plan; every job but ``FIRST`` placed (launched or
    DEFERRED). Returns job ids by name and the stored plan."""
    plan = _plan(_hour_now())
    ids, document = _submit(ctx, plan)
    by_name = {row["job"]: job_id for row, job_id in zip(document["jobs"], ids, strict=True)}
    first_row = next(r for r in document["jobs"] if r["job"] == FIRST)
    assert (f"{first_row['cloud']}:{first_row['region']}:{first_row['instance_type']}",
            first_row["start_hour"]) == (REFUSED, 0)
    for name, job_id in by_name.items():
        if name != FIRST:
            run(ctx, [Followup(task="place", args=(job_id,))])
    return by_name, document


def _deferred_on_refused(ctx: Context, by_name: dict[str, str]) -> list[str]:
    return [i for i in by_name.values() if ctx.store.get(i).state is S.DEFERRED
            and ctx.store.get(i).plan is not None
            and offer_key(ctx.store.get(i).placements[0]) == REFUSED]


def _pools_hold(document: dict[str, Any]) -> None:
    """Every pool of the original plan, in every hour, holds the runs of the revised plan
    (the re-planned jobs' new runs and the others' kept ones), counted from the rows."""
    offers = {(o.cloud, o.region, o.instance_type): o for o in load_catalog().offers}
    origin = dt.datetime.fromisoformat(document["start"])
    runs = []
    for row in document["jobs"]:
        if row["status"] != "placed":
            continue
        begin = round((dt.datetime.fromisoformat(row["start_at"]) - origin).total_seconds()
                      / 3600)
        runs.append((offers[(row["cloud"], row["region"], row["instance_type"])], row["spot"],
                     begin, row["duration_h"]))
    last = max(begin + length for _, _, begin, length in runs)
    for definition in document["pool_defs"]:
        pool = pool_from_definition(definition)
        for hour in range(last):
            used = sum(pool.units_per_instance(offer, spot=spot) for offer, spot, begin, length
                       in runs if begin <= hour < begin + length)
            assert used <= pool.limit_at(hour), (pool.key, hour, used)


def test_a_refused_planned_job_re_plans_the_rest_of_its_batch(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(capacity={REFUSED: 0})
    by_name, before = _submitted(ctx)
    waiting = _deferred_on_refused(ctx, by_name)
    assert len(waiting) == 2  # vit-pretrain and gdpr-medical-finetune queue for the H100
    assert before["revision"] == 0 and before["pool_defs"]
    kept = {i: ctx.store.get(i).state for i in by_name.values()
            if i != by_name[FIRST] and ctx.store.get(i).state is not S.DEFERRED}
    assert kept and all(s is S.RUNNING for s in kept.values())

    run(ctx, [Followup(task="place", args=(by_name[FIRST],))])

    document = ctx.store.plan(before["plan_id"])
    assert document is not None and document["revision"] == 1
    (revision,) = document["revisions"]
    assert revision["revision"] == 1
    assert f"refused by {REFUSED} (CapacityError" in revision["why"]
    again = set(revision["job_ids"])
    assert by_name[FIRST] in again and set(waiting) <= again
    assert not again & set(kept)  # the running jobs keep their runs
    assert [e["instance_type"] for e in document["excluded_offers"]] == ["p5.48xlarge"]
    for pool in revision["pools"]:  # what the re-plan bound: nothing over its limit
        assert all(u <= lim for u, lim in zip(pool["used"], pool["limit"], strict=False))
    _pools_hold(document)
    for i in by_name.values():
        if i in kept:  # unchanged: its row and its part are the first plan's
            assert ctx.store.get(i).state is S.RUNNING
            assert "revision" not in (ctx.store.get(i).plan or {"revision": None})
            assert next(r for r in document["jobs"] if r["job_id"] == i) == next(
                r for r in before["jobs"] if r["job_id"] == i)
            continue
        record = ctx.store.get(i)
        part = record.plan
        assert part is not None and part["revision"] == 1
        row = next(r for r in document["jobs"] if r["job_id"] == i)
        assert row["revision"] == 1
        if part["planned"] != "placed":
            assert record.state is S.UNSCHEDULABLE
            assert "re-planned (revision 1" in record.reason
            continue
        assert f"{part['cloud']}:{part['region']}:{part['instance_type']}" != REFUSED
        assert (part["cloud"], part["region"], part["instance_type"], part["start_at"]) == (
            row["cloud"], row["region"], row["instance_type"], row["start_at"])
        messages = [e.message for e in ctx.store.events(i)]
        assert any(f"batch plan {document['plan_id']} re-planned (revision 1" in m
                   for m in messages), messages
        start = dt.datetime.fromisoformat(part["start_at"])
        if record.state is S.DEFERRED:
            assert record.not_before == iso(max(start, record_time(ctx, i)))
            due = ctx.store.ids_in_state(S.DEFERRED, max_score=dt.datetime.fromisoformat(
                record.not_before).timestamp())
            assert i in due
            early = ctx.store.ids_in_state(S.DEFERRED, max_score=dt.datetime.fromisoformat(
                record.not_before).timestamp() - 1)
            assert i not in early  # its score in the DEFERRED index moved with it
        else:
            assert record.state is S.RUNNING and i == by_name[FIRST], record.reason
            assert record.placement is not None
            assert offer_key(record.placement) == (
                f"{part['cloud']}:{part['region']}:{part['instance_type']}")
    first = ctx.store.get(by_name[FIRST])
    assert first.plan is not None and first.plan["replanned_on"] == 1
    assert [r.error for r in first.attempt_reasons] == ["CapacityError"]
    assert first.state is S.RUNNING and first.attempt == 2, first.reason


def record_time(ctx: Context, job_id: str) -> dt.datetime:
    """When the job's last event was written (the re-plan's ``now``)."""
    return dt.datetime.fromisoformat(ctx.store.events(job_id)[-1].at)


def test_a_second_refusal_fails_over_through_the_ranking_without_re_planning_again(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(capacity={REFUSED: 0})
    by_name, before = _submitted(ctx)
    job_id = by_name[FIRST]
    first = place_and_dispatch(ctx, job_id, now=dt.datetime.now(dt.UTC))
    record = ctx.store.get(job_id)
    assert record.plan is not None and record.plan["replanned_on"] == 1
    if record.state is not S.PLACED:
        pytest.skip(f"the re-plan deferred {FIRST} ({record.state}); nothing launches now")
    # From now on the cloud refuses everything: the re-planned offer is refused too.
    refusing = make_ctx(capacity={"*": 0})
    outcomes = run(refusing, list(first.followups))
    record = ctx.store.get(job_id)
    limit = policy_of(record).failover.max_attempts
    assert record.state is S.UNSCHEDULABLE, record.reason
    assert record.attempt == limit
    assert len(record.attempt_reasons) == limit
    assert all(r.error == "CapacityError" for r in record.attempt_reasons)
    assert f"the policy allows {limit} attempt(s)" in record.reason
    document = ctx.store.plan(before["plan_id"])
    assert document is not None and document["revision"] == 1  # no second re-plan
    assert len(outcomes) == limit - 1  # one dispatch per attempt after the re-plan


def test_revised_pools_subtract_the_kept_runs_from_the_hour_of_the_re_plan() -> None:
    """A plan made 2 h ago with a pool of 8 H100 (2 in its first 3 hours): a kept 8-H100 run
    from hour 1 to 4 of the plan holds the pool in hours 0-1 of the re-plan, the pool's own
    hourly limit still binds hour 0, and the refused offer becomes a pool of 0."""
    catalog = load_catalog()
    offer = next(o for o in catalog.offers if offer_key_of(o) == REFUSED)
    origin = _hour_now() - dt.timedelta(hours=2)
    pool = CapacityPool(cloud="aws", region="eu-north-1", unit=Unit.ACCELERATORS,
                        accelerators=("H100",), limit=16, hourly_limits=(2, 2, 2),
                        source="capacity.yaml line 7")
    document = {"start": origin.isoformat(), "pool_defs": [pool_definition(pool)]}
    held = [HeldRun(offer=offer, spot=False, start_at=origin + dt.timedelta(hours=1),
                    duration_h=3)]
    excluded = [{"cloud": "aws", "region": "eu-north-1", "instance_type": "p5.48xlarge",
                 "spot": False, "why": "attempt 1 was refused"}]
    revised, refused = revised_pools(document, now_h=_hour_now(), held=held, excluded=excluded)
    assert revised.hourly_limits == (0, 8)  # hour 2 of the plan: 2 - 8 -> 0; hour 3: 16 - 8
    assert revised.limit_at(2) == 16
    assert revised.source.startswith("capacity.yaml line 7")
    assert refused.limit == 0 and refused.units_per_instance(offer, spot=False) > 0
    assert refused.units_per_instance(offer, spot=True) == 0
    assert "attempt 1 was refused" in refused.source


def offer_key_of(offer: Any) -> str:
    return f"{offer.cloud}:{offer.region}:{offer.instance_type}"


def test_a_refusal_while_its_batch_is_being_re_planned_fails_over_through_its_ranking(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(capacity={REFUSED: 0})
    by_name, before = _submitted(ctx)
    token = ctx.store.acquire_lock(f"replan:{before['plan_id']}", ttl_s=60)
    assert token is not None  # another worker's re-plan of this batch is under way
    try:
        run(ctx, [Followup(task="place", args=(by_name[FIRST],))])
    finally:
        ctx.store.release_lock(f"replan:{before['plan_id']}", token)
    record = ctx.store.get(by_name[FIRST])
    assert record.state is S.RUNNING and record.attempt == 2, record.reason
    assert record.placement is not None and offer_key(record.placement) != REFUSED
    assert record.plan is not None and "replanned_on" not in record.plan
    document = ctx.store.plan(before["plan_id"])
    assert document is not None and document["revision"] == 0
    assert "revisions" not in document
    assert len(_deferred_on_refused(ctx, by_name)) == 2  # the batch keeps its plan


def test_a_job_released_while_its_batch_re_plans_keeps_its_old_plan_and_row(
        make_ctx: Callable[..., Context], monkeypatch: pytest.MonkeyPatch) -> None:
    # Reconcile may release a DEFERRED job of the batch after the re-plan read it and before
    # the re-plan moves it: that job goes on with its old plan, and the stored plan must say
    # so rather than list a row the job never took.
    ctx = make_ctx(capacity={REFUSED: 0})
    by_name, before = _submitted(ctx)
    released = _deferred_on_refused(ctx, by_name)[0]
    real_make_plan = planning_plan.make_plan
    done: list[str] = []

    def reconcile_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not done:  # once, while the re-plan solves: after its reads, before its moves
            ctx.store.transition(released, to=S.PLACED, expect=S.DEFERRED,
                                 message="released by reconcile", now=dt.datetime.now(dt.UTC))
            done.append(released)
        return real_make_plan(*args, **kwargs)

    monkeypatch.setattr(planning_plan, "make_plan", reconcile_meanwhile)
    run(ctx, [Followup(task="place", args=(by_name[FIRST],))])

    assert done == [released]
    document = ctx.store.plan(before["plan_id"])
    assert document is not None and document["revision"] == 1
    (revision,) = document["revisions"]
    assert released in revision["job_ids"] and revision["kept_old_plan"] == [released]
    old_row = next(r for r in before["jobs"] if r["job_id"] == released)
    assert next(r for r in document["jobs"] if r["job_id"] == released) == old_row
    record = ctx.store.get(released)
    assert record.plan is not None and "revision" not in record.plan  # its part is the old one
    assert not any("re-planned" in e.message for e in ctx.store.events(released))
