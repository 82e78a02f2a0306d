"""The flow logic (place, dispatch, failover, reconcile, cancel) on a real redis-server and
the real local-sim provider, with no Celery: follow-ups are run in-process in order."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenplace.policies.model import load_policy
from greenplace.providers.base import (
    Feature,
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    LaunchRequest,
    ManagedInstance,
    Placement,
    Provider,
)
from greenplace.providers.local_sim import LocalSim
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.dispatch import (
    DRY_RUN_JOB_ID,
    MAX_TRANSIENT_RETRIES,
    Context,
    Followup,
    Outcome,
    Providers,
    apply_decision,
    cancel_job,
    decide,
    dispatch_job,
    job_launch,
    place_and_dispatch,
    place_job,
    plan,
    reconcile,
    terminate_job,
)
from greenplace.scheduler.exceptions import AuthError, TransientError, UserInputError
from greenplace.scheduler.jobs import Job, JobSpec, resolve_job
from greenplace.scheduler.settings import Settings
from greenplace.scheduler.store import (
    JobState,
    JobStore,
    NewJob,
    encode_fields,
    iso,
    offer_key,
    utc_now,
)
from tests.redisproc import REDIS_SERVER, RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")
S = JobState


def make_job(name: str = "train", policy: str = "balanced", **extra: Any) -> Job:
    raw: dict[str, Any] = {"name": name, "run": "python train.py",
                           "resources": {"accelerators": [{"A100": 8}, {"H100": 8}]},
                           "work": {"hours": 10}, **extra}
    return resolve_job(JobSpec.model_validate(raw), load_catalog(),
                       policy=load_policy(policy), where="test")


def submit(ctx: Context, *jobs: Job) -> list[str]:
    return ctx.store.create([NewJob(job_id=f"job{i}-{j.name}", job=j)
                             for i, j in enumerate(jobs)])


def run(ctx: Context, followups: tuple[Followup, ...] | list[Followup]) -> list[Outcome]:
    """Run follow-ups the way a worker would (retries immediately, counting them)."""
    queue = [(f, 0) for f in followups]
    outcomes = []
    while queue:
        f, retries = queue.pop(0)
        now = utc_now()
        if f.task == "place":  # what the greenplace.place task runs
            outcome = place_and_dispatch(ctx, str(f.args[0]), now=now)
        elif f.task == "dispatch":
            outcome = dispatch_job(ctx, str(f.args[0]), int(f.args[1]), retries=retries, now=now)
        else:
            outcome = terminate_job(ctx, str(f.args[0]), now=now)
        outcomes.append(outcome)
        queue += [(g, 0) for g in outcome.followups]
        if outcome.retry_in_s is not None:
            queue.append((f, retries + 1))
    return outcomes


def place_and_run(ctx: Context, job_id: str) -> list[Outcome]:
    return run(ctx, [Followup(task="place", args=(job_id,))])


def sim_of(ctx: Context) -> LocalSim:
    sim = ctx.providers.by_name("local-sim")
    assert isinstance(sim, LocalSim)
    return sim


def test_place_freezes_the_decision_and_dispatch_launches_once(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx()
    job = make_job()
    (job_id,) = submit(ctx, job)
    now = utc_now()
    outcome = place_job(ctx, job_id, now=now)
    assert outcome.followups == (Followup(task="dispatch", args=(job_id, 1)),)
    record = ctx.store.get(job_id)
    decision = decide(ctx.placer, job, now=now, allow_defer=True)
    assert record.state is S.PLACED
    assert record.placements == tuple(decision.placements()[:12])  # balanced: 3 attempts
    assert record.decision is not None
    assert record.decision["feasible_candidates"] == len(decision.placements()) > 12
    assert record.decision == decision.summary(explain=False)
    run(ctx, outcome.followups)
    record = ctx.store.get(job_id)
    assert record.state is S.RUNNING and record.attempt == 1
    assert record.placement == decision.placements()[0]
    # duplicates and stale messages change nothing
    assert "nothing to do" in dispatch_job(ctx, job_id, 1, now=utc_now()).message
    assert "nothing to do" in dispatch_job(ctx, job_id, 2, now=utc_now()).message
    assert "nothing to do" in place_job(ctx, job_id, now=utc_now()).message
    instances = sim_of(ctx).instances()
    assert len(instances) == 1 and instances[0]["idempotency_key"] == f"gp-{job_id}-a1"
    assert record.handle is not None
    assert instances[0]["instance_id"] == record.handle.instance_id


def test_the_dry_run_shows_exactly_what_the_first_attempt_sends(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx()
    jobs = [make_job("a"), make_job("b", policy="greenest"), make_job("c", policy="cheapest")]
    planned = plan(jobs, placer=ctx.placer, providers=ctx.providers, now=utc_now())
    ids = submit(ctx, *jobs)
    for job_id in ids:
        place_and_run(ctx, job_id)
    by_job = {r["job_id"]: r for r in sim_of(ctx).instances()}
    for launch, job_id, job in zip(planned, ids, jobs, strict=True):
        assert launch.request is not None
        got = by_job[job_id]
        assert (got["cloud"], got["region"], got["instance_type"]) == (
            launch.request.cloud, launch.request.region, launch.request.instance_type)
        record = ctx.store.get(job_id)
        assert record.placement is not None
        sent = sim_of(ctx).prepare(job_launch(job_id, job, attempt=1), record.placement)
        assert dataclasses.replace(sent, tags={}, startup_script="", payload={}) == \
            dataclasses.replace(launch.request, tags={}, startup_script="", payload={})
        assert launch.request.tags["greenplace:job-id"] == DRY_RUN_JOB_ID


def test_a_lost_answer_is_resumed_with_the_same_key(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(transient_error_rate=1.0, seed=2)  # first roll: created, answer lost
    (job_id,) = submit(ctx, make_job())
    place_job(ctx, job_id, now=utc_now())
    first = dispatch_job(ctx, job_id, 1, retries=0, now=utc_now())
    assert first.retry_in_s is not None and ctx.store.get(job_id).state is S.DISPATCHING
    assert len(sim_of(ctx).instances()) == 1
    dispatch_job(ctx, job_id, 1, retries=1, now=utc_now())
    assert ctx.store.get(job_id).state is S.RUNNING
    assert len(sim_of(ctx).instances()) == 1


def test_capacity_errors_fail_over_and_cool_down_for_every_job(
    make_ctx: Callable[..., Context]
) -> None:
    job_a, job_b = make_job("a", policy="greenest"), make_job("b", policy="greenest")
    placements = decide(make_ctx().placer, job_a, now=utc_now(), allow_defer=True).placements()
    best, second = placements[0], placements[1]
    ctx = make_ctx(capacity={offer_key(best): 0})
    id_a, id_b = submit(ctx, job_a, job_b)
    place_and_run(ctx, id_a)
    a = ctx.store.get(id_a)
    assert a.state is S.RUNNING and a.attempt == 2 and a.placement == second
    assert [(r.attempt, r.error, r.code) for r in a.attempt_reasons] == [
        (1, "CapacityError", "InsufficientInstanceCapacity")]
    assert ctx.store.cooling([best]) == {offer_key(best)}
    assert any("failing over" in e.message for e in ctx.store.events(id_a))
    place_and_run(ctx, id_b)
    b = ctx.store.get(id_b)
    assert b.state is S.RUNNING and b.attempt == 1 and b.placement == second


def test_every_attempt_refused_ends_unschedulable_with_reasons(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx(capacity={"*": 0})
    (job_id,) = submit(ctx, make_job())  # balanced: 3 attempts
    place_and_run(ctx, job_id)
    record = ctx.store.get(job_id)
    assert record.state is S.UNSCHEDULABLE and record.attempt == 3
    assert len(record.attempt_reasons) == 3
    assert len({(r.cloud, r.region, r.instance_type) for r in record.attempt_reasons}) == 3
    assert "3 launch attempt(s) refused" in record.reason
    assert "the policy allows 3 attempt(s)" in record.reason
    assert all(f"{r.cloud}:{r.region}" in record.reason for r in record.attempt_reasons)
    assert sim_of(ctx).instances() == []


class Refusing:
    """A provider whose submit always raises ``error`` (prepare works like local-sim's)."""

    name = "refusing"
    features = frozenset(Feature)

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def check_credentials(self) -> str:
        return "none"

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        return LaunchRequest(provider=self.name, cloud=placement.cloud, region=placement.region,
                             instance_type=placement.instance_type, spot=placement.spot,
                             tags={}, startup_script="")

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        self.calls += 1
        raise self.error

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        raise self.error

    def list_managed(self, region: str) -> list[ManagedInstance]:
        raise self.error

    def delete(self, handle: InstanceHandle) -> bool:
        raise self.error


class Only(Providers):
    def __init__(self, settings: Settings, provider: Provider) -> None:
        super().__init__(settings)
        self.provider = provider

    def by_name(self, name: str) -> Provider:
        return self.provider


@pytest.mark.parametrize(("error", "expected", "calls"), [
    (AuthError("token expired", provider="refusing", operation="submit", code="AuthFailure"),
     "credentials were refused", 1),
    # the try inside `place`, then the dispatch message's own tries
    (TransientError("throttled", provider="refusing", operation="submit", code="Throttling"),
     "kept failing with transient errors", MAX_TRANSIENT_RETRIES + 2),
    # an exception the adapter does not classify is retried like a transient one, then
    # fails the job with a reason instead of leaving it DISPATCHING
    (ConnectionResetError("peer reset"), "unexpected ConnectionResetError: peer reset",
     MAX_TRANSIENT_RETRIES + 2),
])
def test_auth_fails_at_once_and_transient_errors_retry_to_a_cap(
    make_ctx: Callable[..., Context], error: Exception, expected: str, calls: int,
) -> None:
    base = make_ctx()
    refusing = Refusing(error)
    ctx = dataclasses.replace(base, providers=Only(base.settings, refusing))
    (job_id,) = submit(ctx, make_job())
    outcomes = place_and_run(ctx, job_id)
    record = ctx.store.get(job_id)
    assert record.state is S.FAILED and expected in record.reason
    assert refusing.calls == calls and record.attempt == 1
    assert sum(o.retry_in_s is not None for o in outcomes) == max(0, calls - 2)


def test_a_deferred_job_is_released_by_reconcile_on_fresh_data(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx()
    job = make_job()
    (job_id,) = submit(ctx, job)
    now = utc_now()
    start = now + dt.timedelta(hours=3)
    decision = dataclasses.replace(decide(ctx.placer, job, now=now, allow_defer=True),
                                   start_at=iso(start))
    outcome = apply_decision(ctx, ctx.store.get(job_id), decision, expect=S.QUEUED, now=now)
    assert outcome.followups == ()
    record = ctx.store.get(job_id)
    assert record.state is S.DEFERRED and record.not_before == iso(start)
    assert reconcile(ctx, now=now + dt.timedelta(hours=1), budget_s=5).followups == ()
    assert ctx.store.get(job_id).state is S.DEFERRED
    released = reconcile(ctx, now=start + dt.timedelta(seconds=1), budget_s=5)
    assert released.counts["released"] == 1
    assert Followup(task="dispatch", args=(job_id, 1)) in released.followups
    record = ctx.store.get(job_id)
    assert record.state is S.PLACED and record.decision is not None
    assert record.decision["start_at"] is None  # re-placed with allow_defer=False
    run(ctx, released.followups)
    assert ctx.store.get(job_id).state is S.RUNNING


def test_reconcile_follows_instances_to_their_end(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(run_time_s=0.2)
    ok_id, gone_id = submit(ctx, make_job("ok"), make_job("gone"))
    place_and_run(ctx, ok_id)
    place_and_run(ctx, gone_id)
    gone = ctx.store.get(gone_id).handle
    assert gone is not None
    sim_of(ctx).client.delete(f"gpsim:instance:{gone.instance_id}")
    ok = ctx.store.get(ok_id).handle
    assert ok is not None
    wait_for(lambda: sim_of(ctx).status(ok).state is InstanceState.EXITED, timeout_s=10,
             what="the instance to finish", interval_s=0.05)
    outcome = reconcile(ctx, now=utc_now(), budget_s=5)
    assert outcome.counts["finished"] == 2
    succeeded = ctx.store.get(ok_id)
    assert succeeded.state is S.SUCCEEDED and succeeded.exit_code == 0
    assert succeeded.summary()["exit_code"] == 0
    failed = ctx.store.get(gone_id)
    assert failed.state is S.FAILED and "disappeared" in failed.reason
    # the same pass deleted the finished instance; nothing is left to delete
    assert outcome.counts["deleted"] == 2 and ctx.store.to_terminate() == []
    assert succeeded.terminated_at
    assert [r["state"] for r in sim_of(ctx).instances()] == ["terminated"]


def test_preempted_spot_jobs_are_launched_again_up_to_the_limit(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx(run_time_s=0.1, preemption_rate=1.0)
    spot_job = make_job("spot", resources={"accelerators": {"A100": 8}, "spot": True})
    (job_id,) = submit(ctx, spot_job)
    place_and_run(ctx, job_id)
    for expected_attempt in (1, 2, 3):
        record = ctx.store.get(job_id)
        assert record.attempt == expected_attempt and record.handle is not None
        handle = record.handle
        wait_for(lambda h=handle: sim_of(ctx).status(h).state is InstanceState.PREEMPTED,
                 timeout_s=10, what=f"attempt {expected_attempt} to be preempted",
                 interval_s=0.05)
        run(ctx, reconcile(ctx, now=utc_now(), budget_s=5).followups)
    record = ctx.store.get(job_id)
    assert record.state is S.FAILED and "(preemption 3)" in record.reason
    assert "all 3 launch attempts" in record.reason
    keys = [r["idempotency_key"] for r in sim_of(ctx).instances()]
    assert keys == [f"gp-{job_id}-a{n}" for n in (1, 2, 3)]


def test_cancel_queued_placed_and_running(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    queued, placed, running = submit(ctx, make_job("q"), make_job("p"), make_job("r"))
    now = utc_now()
    assert cancel_job(ctx.store, queued, now=now).followups == ()
    dispatch_msg = place_job(ctx, placed, now=now).followups
    assert cancel_job(ctx.store, placed, now=now).followups == ()
    run(ctx, dispatch_msg)  # the dispatch message arrives after the cancel: a no-op
    place_and_run(ctx, running)
    outcome = cancel_job(ctx.store, running, now=now)
    assert outcome.followups == (Followup(task="terminate", args=(running,)),)
    run(ctx, outcome.followups)
    for job_id in (queued, placed, running):
        assert ctx.store.get(job_id).state is S.CANCELLED
    instances = sim_of(ctx).instances()
    assert [(r["job_id"], r["state"]) for r in instances] == [(running, "terminated")]
    assert ctx.store.get(running).terminated_at and ctx.store.to_terminate() == []
    deleted = r"already CANCELLED; its instance sim-\w+ was deleted at 20"
    with pytest.raises(UserInputError, match=deleted):
        cancel_job(ctx.store, running, now=now)


def test_cancel_during_a_launch_terminates_what_it_launched(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx(api_latency_s=0.6)
    (job_id,) = submit(ctx, make_job())
    run_followups = place_job(ctx, job_id, now=utc_now()).followups
    worker = threading.Thread(target=run, args=(ctx, run_followups))
    worker.start()
    deadline = time.monotonic() + 10
    while ctx.store.get(job_id).state is not S.DISPATCHING and time.monotonic() < deadline:
        time.sleep(0.01)
    outcome = cancel_job(ctx.store, job_id, now=utc_now())
    run(ctx, outcome.followups)  # waits for the lock, then finds the instance handled
    worker.join()
    record = ctx.store.get(job_id)
    assert record.state is S.CANCELLED and record.handle is not None and record.terminated_at
    assert [r["state"] for r in sim_of(ctx).instances()] == ["terminated"]


def test_cancel_after_the_launcher_died_settles_by_key(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    (job_id,) = submit(ctx, make_job())
    place_job(ctx, job_id, now=utc_now())
    # A worker moved it to DISPATCHING and died before (or after) calling submit.
    ctx.store.transition(job_id, to=S.DISPATCHING, attempt=0, message="then SIGKILL",
                         fields=encode_fields(attempt=1, target=0))
    outcome = cancel_job(ctx.store, job_id, now=utc_now())
    run(ctx, outcome.followups)
    record = ctx.store.get(job_id)
    assert record.state is S.CANCELLED and record.terminated_at
    assert [r["state"] for r in sim_of(ctx).instances()] == ["terminated"]


def test_stalled_jobs_are_re_enqueued_once_per_stall_period(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx()
    old = utc_now() - dt.timedelta(seconds=30)
    ids = ctx.store.create([NewJob(job_id="stuck", job=make_job())], now=old)
    first = reconcile(ctx, now=utc_now(), budget_s=5)
    assert first.followups == (Followup(task="place", args=(ids[0],)),)
    assert reconcile(ctx, now=utc_now(), budget_s=5).followups == ()
    run(ctx, first.followups)
    assert ctx.store.get("stuck").state is S.RUNNING


def test_only_one_reconcile_pass_at_a_time(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    token = ctx.store.acquire_lock("reconcile", ttl_s=5)
    assert token is not None
    assert "another reconcile" in reconcile(ctx, now=utc_now(), budget_s=1).message
    ctx.store.release_lock("reconcile", token)


def test_the_place_task_path_records_every_state_in_four_round_trips(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx()
    (job_id,) = submit(ctx, make_job())
    outcome = place_and_dispatch(ctx, job_id, now=utc_now())
    assert outcome.followups == ()
    assert [(e.state_from, e.state_to) for e in ctx.store.events(job_id)] == [
        ("", "QUEUED"), ("QUEUED", "PLACED"), ("PLACED", "DISPATCHING"),
        ("DISPATCHING", "RUNNING")]
    assert ctx.store.lock_ttl_s(f"dispatch:{job_id}") == 0  # released with the last move


def test_a_redelivered_place_resumes_an_interrupted_launch(
    make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx()
    (job_id,) = submit(ctx, make_job())
    place_job(ctx, job_id, now=utc_now())
    ctx.store.transition(job_id, to=S.DISPATCHING, attempt=0, message="then SIGKILL",
                         fields=encode_fields(attempt=1, target=0))
    place_and_dispatch(ctx, job_id, now=utc_now())  # the place message, redelivered
    record = ctx.store.get(job_id)
    assert record.state is S.RUNNING and record.attempt == 1
    assert len(sim_of(ctx).instances()) == 1


def test_live_signals_defer_a_job_to_the_forecast_green_window(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GREENPLACE_SIGNALS=live: the service places on the signal chain, defers to the
    greener window the forecast shows, and reconcile releases the job there."""
    from greenplace.scheduler.signals.chain import LivePlacer
    from tests.fakes_signals.electricitymaps import FakeElectricityMaps
    from tests.fakes_signals.server import FakeServer

    server.client().flushall()
    now = utc_now()
    green_from = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=5)
    api = FakeElectricityMaps(api_key="em-key", now=now, intensity={
        "DE": lambda t: 40.0 if t >= green_from else 400.0})
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump({
        "name": "frankfurt-green", "weights": {"carbon": 1, "cost": 0},
        "carbon_signal": "average",
        "constraints": {"regions": {"include": ["gcp:europe-west3"]}}}))
    raw = {"name": "wait-ok", "run": "python train.py", "max_delay_hours": 12,
           "resources": {"accelerators": {"H100": 8}}, "work": {"hours": 2}}
    job = resolve_job(JobSpec.model_validate(raw), load_catalog(),
                      policy=load_policy(str(tmp_path / "policy.yaml")), where="test")
    with FakeServer(api) as fake:
        monkeypatch.setenv("ELECTRICITYMAPS_API_KEY", "em-key")
        monkeypatch.setenv("GREENPLACE_ELECTRICITYMAPS_URL", f"{fake.url}/v3")
        monkeypatch.setenv("GREENPLACE_SIGNAL_SOURCES", "electricitymaps")
        (tmp_path / "sim.yaml").write_text(yaml.safe_dump({"launch_latency_s": 0}))
        settings = Settings(redis_url=server.url, sim_config=tmp_path / "sim.yaml",
                            signals="live")
        ctx = Context.build(settings, JobStore(server.client()))
        (job_id,) = submit(ctx, job)
        assert place_job(ctx, job_id, now=now).followups == ()
        record = ctx.store.get(job_id)
        assert record.state is S.DEFERRED
        assert record.decision is not None
        assert dt.datetime.fromisoformat(record.decision["start_at"]) == green_from
        assert record.decision["signal_source"].startswith("electricitymaps")
        released = reconcile(ctx, now=green_from + dt.timedelta(seconds=1), budget_s=5)
        assert released.counts["released"] == 1
        run(ctx, released.followups)
        assert isinstance(ctx.placer, LivePlacer)
        ctx.placer.chain.close()
    record = ctx.store.get(job_id)
    assert record.state is S.RUNNING and record.decision is not None
    assert record.decision["start_at"] is None and record.decision["region"] == "europe-west3"
