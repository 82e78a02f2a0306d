"""The cloud lifecycle of a job, on a real redis-server and the real local-sim provider:
the exit code decides the outcome, a launch refused after it was accepted fails over,
every instance is deleted when its job ends, reconcile lists each region once, and the
leak sweep deletes what no job needs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from greenplace.providers.base import (
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    LaunchRequest,
    ManagedInstance,
    Placement,
)
from greenplace.providers.local_sim import LocalSim
from greenplace.scheduler.cli import main
from greenplace.scheduler.dispatch import Context, Providers, RegionGate, reconcile
from greenplace.scheduler.exceptions import AccountLimitError, TransientError
from greenplace.scheduler.gc import sweep
from greenplace.scheduler.store import JobState, offer_key, utc_now
from tests.redisproc import RedisServer
from tests.unit.test_dispatch import Only, make_job, place_and_run, run, sim_of, submit
from tests.waiting import wait_for

S = JobState


class Scripted:
    """local-sim, except that ``status()`` answers what a test scripts for an instance."""

    name = "local-sim"

    def __init__(self, sim: LocalSim) -> None:
        self.sim = sim
        self.features = sim.features
        self.answers: dict[str, InstanceStatus] = {}

    def check_credentials(self) -> str:
        return self.sim.check_credentials()

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        return self.sim.prepare(job, placement)

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        return self.sim.submit(request, idempotency_key=idempotency_key)

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        return self.answers.get(handle.instance_id) or self.sim.status(handle)

    def list_managed(self, region: str) -> list[ManagedInstance]:
        return [dataclasses.replace(m, status=self.answers[m.handle.instance_id])
                if m.handle.instance_id in self.answers else m
                for m in self.sim.list_managed(region)]

    def delete(self, handle: InstanceHandle) -> bool:
        return self.sim.delete(handle)


def scripted(ctx: Context) -> tuple[Context, Scripted]:
    provider = Scripted(sim_of(ctx))
    return dataclasses.replace(ctx, providers=Only(ctx.settings, provider)), provider


def running(ctx: Context, name: str = "train", **job: Any) -> tuple[str, InstanceHandle]:
    (job_id,) = submit(ctx, make_job(name, **job))
    place_and_run(ctx, job_id)
    record = ctx.store.get(job_id)
    assert record.state is S.RUNNING and record.handle is not None
    return job_id, record.handle


def pass_(ctx: Context, *, now: dt.datetime | None = None) -> dict[str, int]:
    """One reconcile pass, its follow-ups run; returns its counts."""
    outcome = reconcile(ctx, now=now or utc_now(), budget_s=5)
    run(ctx, outcome.followups)
    return outcome.counts


def sim_states(ctx: Context) -> dict[str, str]:
    provider = ctx.providers.by_name("local-sim")
    sim = provider.sim if isinstance(provider, Scripted) else sim_of(ctx)
    return {r["instance_id"]: r["state"] for r in sim.instances()}


def test_a_failing_command_ends_failed_with_its_exit_code_and_nothing_left(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(run_time_s=0.1, failure_rate=1.0, failure_exit_code=3)
    job_id, handle = running(ctx)
    wait_for(lambda: sim_of(ctx).status(handle).state is InstanceState.EXITED, timeout_s=10,
             what="the command to end", interval_s=0.05)
    counts = pass_(ctx)
    record = ctx.store.get(job_id)
    assert record.state is S.FAILED and record.exit_code == 3
    assert "the job's command exited with 3" in record.reason
    assert record.summary()["exit_code"] == 3 and record.summary()["instance_deleted_at"]
    assert counts["deleted"] == 1 and sim_states(ctx) == {handle.instance_id: "terminated"}
    assert any("deleted instance" in e.message for e in ctx.store.events(job_id))


def test_a_launch_refused_after_it_was_accepted_fails_over_and_leaves_nothing(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(launch_latency_s=0.05, launch_failure_rate=1.0)
    job_id, first = running(ctx)  # balanced: 3 attempts
    for attempt in (1, 2, 3):
        record = ctx.store.get(job_id)
        assert record.state is S.RUNNING and record.attempt == attempt
        assert record.handle is not None
        handle = record.handle
        wait_for(lambda h=handle: sim_of(ctx).status(h).state is InstanceState.LAUNCH_FAILED,
                 timeout_s=10, what="the allocation to fail", interval_s=0.05)
        pass_(ctx)
    record = ctx.store.get(job_id)
    assert record.state is S.UNSCHEDULABLE
    assert [(r.attempt, r.error) for r in record.attempt_reasons] == [
        (1, "CapacityError"), (2, "CapacityError"), (3, "CapacityError")]
    assert "after it was accepted" in " ".join(e.message for e in ctx.store.events(job_id))
    places = {(r.cloud, r.region, r.instance_type) for r in record.attempt_reasons}
    assert len(places) == 3  # each refusal moved on to another candidate
    assert ctx.store.cooling(record.placements) >= {offer_key(p) for p in record.placements[:1]}
    pass_(ctx)  # the last attempt's orphan is deleted on the next pass at the latest
    assert ctx.store.orphans() == []
    assert set(sim_states(ctx).values()) == {"terminated"} and len(sim_states(ctx)) == 3
    assert first.instance_id in sim_states(ctx)


def test_a_transient_failure_after_acceptance_retries_the_same_candidate(
        make_ctx: Callable[..., Context]) -> None:
    ctx, provider = scripted(make_ctx())
    job_id, handle = running(ctx)
    placement = ctx.store.get(job_id).placement
    provider.answers[handle.instance_id] = InstanceStatus(
        state=InstanceState.LAUNCH_FAILED, detail="operation failed internally",
        error=TransientError("internal error", provider="local-sim", operation="status",
                             code="InternalError"))
    pass_(ctx)
    record = ctx.store.get(job_id)
    assert record.state is S.RUNNING and record.attempt == 2
    assert record.placement == placement and record.exhausted == ()
    assert placement is not None and ctx.store.cooling([placement]) == set()
    assert sim_states(ctx)[handle.instance_id] == "terminated"  # the orphan went


def test_an_account_wide_limit_fails_the_job_at_once(make_ctx: Callable[..., Context]) -> None:
    ctx, provider = scripted(make_ctx())
    job_id, handle = running(ctx)
    provider.answers[handle.instance_id] = InstanceStatus(
        state=InstanceState.LAUNCH_FAILED, error=AccountLimitError(
            "GPUS_ALL_REGIONS is 0", provider="local-sim", operation="status",
            code="quota_global"))
    pass_(ctx)
    record = ctx.store.get(job_id)
    assert record.state is S.FAILED and record.attempt == 1 and "GPUS_ALL_REGIONS" in record.reason
    assert sim_states(ctx)[handle.instance_id] == "terminated"


def test_an_unreadable_exit_code_is_awaited_then_fails_the_job(
        make_ctx: Callable[..., Context]) -> None:
    base = make_ctx()
    ctx, provider = scripted(dataclasses.replace(
        base, settings=dataclasses.replace(base.settings, exit_code_wait_s=60)))
    job_id, handle = running(ctx)
    provider.answers[handle.instance_id] = InstanceStatus(state=InstanceState.EXITED,
                                                          detail="stopped")
    start = utc_now()
    pass_(ctx, now=start)
    record = ctx.store.get(job_id)
    assert record.state is S.RUNNING and record.exited_at
    pass_(ctx, now=start + dt.timedelta(seconds=30))
    assert ctx.store.get(job_id).state is S.RUNNING
    pass_(ctx, now=start + dt.timedelta(seconds=61))
    record = ctx.store.get(job_id)
    assert record.state is S.FAILED and record.exit_code is None
    assert "exit code did not appear" in record.reason
    assert sim_states(ctx)[handle.instance_id] == "terminated"


def test_a_replacement_handle_from_the_adapter_is_followed(
        make_ctx: Callable[..., Context]) -> None:
    ctx, provider = scripted(make_ctx())
    job_id, handle = running(ctx)
    moved = dataclasses.replace(handle, instance_id="sim-next-zone", zone="next-zone")
    provider.sim.delete(handle)  # the stocked-out zone's VM is gone from the region's list
    provider.answers[handle.instance_id] = InstanceStatus(
        state=InstanceState.PENDING, detail="zone stocked out", handle=moved)
    provider.answers[moved.instance_id] = InstanceStatus(state=InstanceState.PENDING)
    pass_(ctx)
    record = ctx.store.get(job_id)
    assert record.state is S.RUNNING and record.handle == moved and record.attempt == 1
    assert any("launching sim-next-zone (next-zone) instead" in e.message
               for e in ctx.store.events(job_id))


def test_reconcile_lists_each_region_once_and_polls_no_live_instance(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    jobs = [make_job(f"j{i}", policy=("greenest", "cheapest", "balanced")[i % 3])
            for i in range(12)]
    for job_id in submit(ctx, *jobs):
        place_and_run(ctx, job_id)
    records = [ctx.store.get(j) for j in ctx.store.ids_in_state(S.RUNNING)]
    regions = {(r.handle.provider, r.handle.region) for r in records if r.handle}
    assert len(records) == 12 and len(regions) >= 2
    counts = pass_(ctx)
    assert counts["list_calls"] == len(regions)
    assert counts["status_calls"] == 0 and counts["finished"] == 0


def test_the_leak_sweep_deletes_what_no_job_needs(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    sim = sim_of(ctx)
    live_id, live = running(ctx, "live")
    ended_id, ended = running(ctx, "ended")
    # a crash between the final move and the deletion queue: FAILED, instance still up
    ctx.store.transition(ended_id, to=S.FAILED, message="crashed before queueing deletion")
    stale_id, stale = running(ctx, "stale")
    ctx.store.transition(stale_id, to=S.PLACED, attempt=1, message="moved on, handle lost")
    ctx.store.transition(stale_id, to=S.DISPATCHING, attempt=1, message="attempt 2",
                         fields={"attempt": "2"})
    placement = ctx.store.get(live_id).placement
    assert placement is not None
    stray = sim.submit(sim.prepare(JobLaunch(job_id="never-submitted", name="x", run="true",
                                             policy="balanced", attempt=1), placement),
                       idempotency_key="stray")
    targets = ctx.store.regions_used()
    assert ("local-sim", placement.region) in targets

    dry = sweep(ctx.store, {"local-sim": sim}, targets, dry_run=True)
    verdicts = {r.instance_id: (r.action, r.reason) for r in dry}
    assert verdicts[live.instance_id][0] == "kept"
    assert verdicts[ended.instance_id] == ("would delete", "its job is FAILED")
    assert verdicts[stale.instance_id][0] == "would delete"
    assert "superseded" in verdicts[stale.instance_id][1]
    assert verdicts[stray.instance_id] == (
        "would delete", "job never-submitted is unknown to this store")
    assert "terminated" not in sim_states(ctx).values()  # a dry run deletes nothing

    done = {r.instance_id: r.action for r in sweep(ctx.store, {"local-sim": sim}, targets,
                                                   dry_run=False)}
    assert done[live.instance_id] == "kept"
    assert {done[i.instance_id] for i in (ended, stale, stray)} == {"deleted"}
    states = sim_states(ctx)
    assert states[live.instance_id] != "terminated"
    assert {states[i.instance_id] for i in (ended, stale, stray)} == {"terminated"}


def test_gc_command_reports_in_json(make_ctx: Callable[..., Context], server: RedisServer,
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    ctx = make_ctx()
    ended_id, ended = running(ctx, "ended")
    ctx.store.transition(ended_id, to=S.FAILED, message="crashed before queueing deletion")
    for key in [k for k in os.environ if k.startswith("GREENPLACE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)
    for args, action in ((["--dry-run"], "would delete"), ([], "deleted")):
        with pytest.raises(SystemExit) as info:
            main(["gc", *args, "--output", "json"])
        out, err = capsys.readouterr()
        assert int(info.value.code or 0) == 0, err
        rows = json.loads(out)
        assert [(r["instance_id"], r["job_id"], r["action"]) for r in rows] == [
            (ended.instance_id, ended_id, action)]
    assert sim_states(ctx)[ended.instance_id] == "terminated"


def test_a_region_that_cannot_be_listed_is_reported_not_fatal(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    running(ctx)

    class Throttled(Scripted):
        def list_managed(self, region: str) -> list[ManagedInstance]:
            raise TransientError("Rate exceeded", provider="local-sim", operation="list_managed",
                                 code="RequestLimitExceeded")

    rows = sweep(ctx.store, {"local-sim": Throttled(sim_of(ctx))}, ctx.store.regions_used(),
                 dry_run=False)
    assert [r.action for r in rows] == ["error"] and "RequestLimitExceeded" in rows[0].reason
    ctx2 = dataclasses.replace(ctx, providers=Only(ctx.settings, Throttled(sim_of(ctx))))
    counts = pass_(ctx2)
    assert counts["list_calls"] == 1 and counts["status_calls"] == 0  # no per-job fallback



def test_the_region_gate_asks_the_adapters_that_know_about_opt_in_regions(
        make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()

    class OptIn:
        calls = 0

        def regions_not_enabled(self) -> frozenset[str]:
            OptIn.calls += 1
            return frozenset({"eu-south-2", "me-central-1"})

    class Mapped(Providers):
        def by_name(self, name: str) -> Any:
            return OptIn() if name == "aws" else sim_of(ctx)

    settings = dataclasses.replace(ctx.settings, providers={"aws": "aws", "gcp": "local-sim"})
    gate = RegionGate(Mapped(settings))
    first = gate()
    assert first == {"aws:eu-south-2", "aws:me-central-1"}
    assert gate() is first and OptIn.calls == 2  # asked each time, the same set kept


def test_gc_targets_are_the_regions_launched_in_or_those_named() -> None:
    from greenplace.scheduler.commands.gc import sweep_targets
    from greenplace.scheduler.settings import load_settings

    settings = load_settings({"GREENPLACE_PROVIDERS": "aws=aws"})
    used = [("aws", "us-east-1"), ("local-sim", "europe-north1")]
    assert sweep_targets(settings, used, all_regions=False, providers=(),
                         regions=()) == sorted(used)
    assert sweep_targets(settings, used, all_regions=False, providers=("aws",),
                         regions=()) == [("aws", "us-east-1")]
    assert sweep_targets(settings, used, all_regions=False, providers=(),
                         regions=("eu-south-2",)) == [("aws", "eu-south-2")]
    everything = sweep_targets(settings, used, all_regions=True, providers=(), regions=())
    assert ("aws", "ap-southeast-3") in everything and ("local-sim", "westeurope") in everything
    assert set(used) <= set(everything)


def test_gc_names_an_unknown_region_or_provider_instead_of_sweeping_nothing() -> None:
    from greenplace.scheduler.commands.gc import sweep_targets
    from greenplace.scheduler.exceptions import UnknownNameError
    from greenplace.scheduler.settings import load_settings

    settings = load_settings({})
    with pytest.raises(UnknownNameError, match="Unknown region 'mars-1'"):
        sweep_targets(settings, [], all_regions=False, providers=(), regions=("mars-1",))
    with pytest.raises(UnknownNameError, match="Did you mean 'aws'"):
        sweep_targets(settings, [], all_regions=False, providers=("asw",), regions=())


def test_a_region_is_recorded_once_per_process(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx()
    ctx.store.launched_in("aws", "us-east-1")
    ctx.store.client.delete("gp:regions")  # a second record would write it again
    ctx.store.launched_in("aws", "us-east-1")
    assert ctx.store.regions_used() == []
    ctx.store.launched_in("aws", "eu-west-1")
    assert ctx.store.regions_used() == [("aws", "eu-west-1")]
