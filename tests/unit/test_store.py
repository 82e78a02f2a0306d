"""The Redis job store against a real, private redis-server: records, transitions, events."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenplace.policies.model import load_policy
from greenplace.providers.base import InstanceHandle, Placement
from greenplace.scheduler.catalog import Catalog, load_catalog
from greenplace.scheduler.dispatch import rebuild_job
from greenplace.scheduler.exceptions import IllegalTransitionError, JobNotFoundError
from greenplace.scheduler.jobs import Job, JobSpec, resolve_job
from greenplace.scheduler.store import (
    FINAL_STATES,
    TRANSITIONS,
    AttemptReason,
    JobState,
    JobStore,
    NewJob,
    encode_fields,
    new_job_id,
)
from tests.redisproc import REDIS_SERVER, RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")
S = JobState


@pytest.fixture
def store(server: RedisServer) -> JobStore:
    client = server.client()
    client.flushall()
    return JobStore(client)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def make_job(catalog: Catalog, name: str = "train", **extra: object) -> Job:
    raw: dict[str, object] = {"name": name, "run": "python train.py --lr 3e-4",
                              "resources": {"accelerators": [{"A100": 8}, {"H100": 8}]},
                              "work": {"hours": 4, "utilization": 0.7},
                              "deadline": "2030-01-01T00:00:00Z", **extra}
    return resolve_job(JobSpec.model_validate(raw), catalog, policy=load_policy("greenest"),
                       where="test")


def submit(store: JobStore, catalog: Catalog, n: int = 1) -> list[str]:
    return store.create([NewJob(job_id=new_job_id(), job=make_job(catalog, f"j{i}"))
                         for i in range(n)])


def test_nine_states_and_finals_are_terminal() -> None:
    assert len(JobState) == 9
    assert {str(s) for s in JobState} == {
        "QUEUED", "PLACED", "DEFERRED", "DISPATCHING", "RUNNING", "SUCCEEDED", "FAILED",
        "CANCELLED", "UNSCHEDULABLE"}
    for final in FINAL_STATES:
        assert TRANSITIONS[final] == frozenset()


def test_record_round_trip_rebuilds_the_job(store: JobStore, catalog: Catalog) -> None:
    job = make_job(catalog)
    (job_id,) = store.create([NewJob(job_id="abc123", job=job)])
    record = store.get(job_id)
    assert (record.job_id, record.name, record.state, record.attempt) == (
        "abc123", "train", S.QUEUED, 0)
    rebuilt = rebuild_job(record, catalog)
    assert rebuilt.spec == job.spec
    assert rebuilt.policy == job.policy
    assert rebuilt.alternatives == job.alternatives
    assert store.ids_in_state(S.QUEUED) == ["abc123"]
    assert store.job_ids() == ["abc123"]


def test_missing_job_is_a_clear_error(store: JobStore) -> None:
    with pytest.raises(JobNotFoundError, match="No job has id 'nope'"):
        store.get("nope")
    with pytest.raises(JobNotFoundError):
        store.transition("nope", to=S.PLACED, message="x")


def test_life_cycle_moves_fields_indexes_and_events(store: JobStore, catalog: Catalog) -> None:
    (job_id,) = submit(store, catalog)
    placement = Placement(cloud="gcp", region="europe-north1", instance_type="a2-highgpu-8g",
                          accelerator="A100", accelerator_count=8, spot=False,
                          price_usd_per_hour=30.0)
    store.transition(job_id, to=S.PLACED, expect=S.QUEUED, message="placed",
                     fields=encode_fields(placements=[placement], decision={"co2e_kg": 1.5}))
    store.transition(job_id, to=S.DISPATCHING, expect=S.PLACED, attempt=0, message="go",
                     fields=encode_fields(attempt=1, target=0))
    handle = InstanceHandle(provider="local-sim", cloud="gcp", region="europe-north1",
                            instance_id="sim-1")
    previous = store.transition(job_id, to=S.RUNNING, attempt=1, message="up",
                                fields=encode_fields(handle=handle))
    assert previous is S.DISPATCHING
    record = store.get(job_id)
    assert record.state is S.RUNNING and record.handle == handle
    assert record.placement == placement and record.decision == {"co2e_kg": 1.5}
    assert store.ids_in_state(S.RUNNING) == [job_id] and store.ids_in_state(S.PLACED) == []
    store.transition(job_id, to=S.SUCCEEDED, message="done")
    events = store.events(job_id)
    assert [(e.state_from, e.state_to) for e in events] == [
        ("", "QUEUED"), ("QUEUED", "PLACED"), ("PLACED", "DISPATCHING"),
        ("DISPATCHING", "RUNNING"), ("RUNNING", "SUCCEEDED")]
    assert store.counts()["SUCCEEDED"] == 1 and store.counts()["RUNNING"] == 0
    summary = store.get(job_id).summary()
    assert summary["cloud"] == "gcp" and summary["instance_id"] == "sim-1"
    assert summary["attempts"] == 1 and summary["state"] == "SUCCEEDED"


def test_illegal_transitions_are_refused_without_side_effects(
    store: JobStore, catalog: Catalog
) -> None:
    (job_id,) = submit(store, catalog)
    with pytest.raises(IllegalTransitionError, match="cannot move to RUNNING: it is QUEUED"):
        store.transition(job_id, to=S.RUNNING, message="skip ahead")
    store.transition(job_id, to=S.CANCELLED, message="bye")
    for target in JobState:
        with pytest.raises(IllegalTransitionError):
            store.transition(job_id, to=target, message="after the end")
    assert store.get(job_id).state is S.CANCELLED
    assert len(store.events(job_id)) == 2


def test_expectation_and_attempt_guards(store: JobStore, catalog: Catalog) -> None:
    (job_id,) = submit(store, catalog)
    with pytest.raises(IllegalTransitionError):  # legal move, but not from the state we expect
        store.transition(job_id, to=S.CANCELLED, expect=S.RUNNING, message="x")
    store.transition(job_id, to=S.PLACED, message="placed")
    with pytest.raises(IllegalTransitionError, match="attempt is no longer 3"):
        store.transition(job_id, to=S.DISPATCHING, attempt=3, message="x")
    store.transition(job_id, to=S.DISPATCHING, attempt=0, message="ok",
                     fields=encode_fields(attempt=1))
    assert store.get(job_id).attempt == 1


def test_racing_workers_move_a_job_once(server: RedisServer, store: JobStore,
                                        catalog: Catalog) -> None:
    (job_id,) = submit(store, catalog)
    store.transition(job_id, to=S.PLACED, message="placed")
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        with server.client() as client:  # closed here, not whenever the GC gets to it
            own = JobStore(client)
            barrier.wait()
            try:
                own.transition(job_id, to=S.DISPATCHING, expect=S.PLACED, attempt=0,
                               message=f"worker {n}", fields=encode_fields(attempt=1))
                wins.append(n)
            except IllegalTransitionError:
                pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert [e.message for e in store.events(job_id)][-1] == f"worker {wins[0]}"


def test_update_writes_fields_without_moving(store: JobStore, catalog: Catalog) -> None:
    (job_id,) = submit(store, catalog)
    store.transition(job_id, to=S.CANCELLED, message="bye", terminate=True)
    assert store.to_terminate() == [job_id]
    reason = AttemptReason(attempt=1, cloud="aws", region="us-east-1", instance_type="p4d",
                           error="CapacityError", code="InsufficientInstanceCapacity",
                           message="full")
    store.update(job_id, expect=S.CANCELLED, message="noted",
                 fields=encode_fields(attempt_reasons=[reason]))
    assert store.get(job_id).attempt_reasons == (reason,)
    assert store.get(job_id).state is S.CANCELLED
    store.terminated(job_id, message="gone")
    assert store.to_terminate() == [] and store.get(job_id).terminated_at


def test_locks_belong_to_their_owner(store: JobStore) -> None:
    token = store.acquire_lock("dispatch:x", ttl_s=5)
    assert token and store.acquire_lock("dispatch:x", ttl_s=5) is None
    assert 0 < store.lock_ttl_s("dispatch:x") <= 5
    store.release_lock("dispatch:x", "someone-else")
    assert store.acquire_lock("dispatch:x", ttl_s=5) is None
    store.release_lock("dispatch:x", token)
    assert store.lock_ttl_s("dispatch:x") == 0
    assert store.acquire_lock("dispatch:x", ttl_s=0.05)


def test_cool_downs_are_shared_and_expire(store: JobStore) -> None:
    a = Placement(cloud="gcp", region="europe-north1", instance_type="a2", accelerator="A100",
                  accelerator_count=8, spot=False)
    b = Placement(cloud="aws", region="us-east-1", instance_type="p4d", accelerator="A100",
                  accelerator_count=8, spot=False)
    store.cool_down(a, seconds=30, reason="no capacity")
    other = JobStore(store.client)
    assert other.cooling([a, b]) == {"gcp:europe-north1:a2"}
    store.cool_down(b, seconds=0.05, reason="short")
    wait_for(lambda: store.cooling([b]) == set(), timeout_s=10, what="the cool-down to expire",
             interval_s=0.02)
    assert store.claim_nudge("j", ttl_s=30) and not store.claim_nudge("j", ttl_s=30)


def test_events_history_is_append_only(store: JobStore, catalog: Catalog) -> None:
    (job_id,) = submit(store, catalog)
    store.note(job_id, "first note", data={"k": 1})
    store.transition(job_id, to=S.PLACED, message="placed")
    events = store.events(job_id)
    assert [e.kind for e in events] == ["transition", "note", "transition"]
    assert events[1].data == {"k": 1}
    assert events == store.events(job_id)[: len(events)]


def test_store_survives_a_redis_restart_with_aof(tmp_path: Path, catalog: Catalog) -> None:
    server = RedisServer(tmp_path / "aof").start()
    try:
        store = JobStore(server.client())
        ids = submit(store, catalog, n=5)
        store.transition(ids[0], to=S.PLACED, message="placed")
        server.kill()
        server.start()
        again = JobStore(server.client())
        assert sorted(again.job_ids()) == sorted(ids)
        assert again.get(ids[0]).state is S.PLACED
        assert len(again.events(ids[0])) == 2
    finally:
        server.stop()


_ORDERED = list(JobState)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_ORDERED), min_size=1, max_size=12))
def test_any_sequence_of_moves_matches_the_life_cycle(
    store: JobStore, catalog: Catalog, moves: list[JobState]
) -> None:
    (job_id,) = submit(store, catalog)
    state = S.QUEUED
    for target in moves:
        legal = target in TRANSITIONS[state]
        try:
            store.transition(job_id, to=target, message="move")
            assert legal
            state = target
        except IllegalTransitionError:
            assert not legal
        assert store.get(job_id).state is state
    assert job_id in store.ids_in_state(state)


def test_wrong_password_is_a_config_error(tmp_path: Path) -> None:
    from greenplace.scheduler.exceptions import ConfigError
    from greenplace.scheduler.store import reachable, redis_client

    server = RedisServer(tmp_path / "pw", password="s3cret").start()
    try:
        bad = f"redis://:wrong@127.0.0.1:{server.port}/0"
        with pytest.raises(ConfigError, match="refused the credentials") as info:
            with reachable("redis://:***@127.0.0.1"):
                redis_client(bad).ping()
        assert "wrong" not in str(info.value)
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="Cannot reach Redis"):
        with reachable("redis://127.0.0.1:1/0"):
            redis_client(f"redis://127.0.0.1:{server.port}/0").ping()


def test_several_moves_in_one_step_and_after_a_script_flush(
    store: JobStore, catalog: Catalog
) -> None:
    from greenplace.scheduler.store import Move, TransitionRefused

    (job_id,) = submit(store, catalog)
    store.client.script_flush()  # as after a Redis restart without the script cache
    left = store.transitions(job_id, [
        Move(to=S.PLACED, expect=S.QUEUED, message="placed"),
        Move(to=S.DISPATCHING, expect=S.PLACED, attempt=0, message="go",
             fields=encode_fields(attempt=1))])
    assert left == [S.QUEUED, S.PLACED]
    assert store.get(job_id).state is S.DISPATCHING and store.get(job_id).attempt == 1
    assert store.ids_in_state(S.DISPATCHING) == [job_id]
    assert store.ids_in_state(S.QUEUED) == store.ids_in_state(S.PLACED) == []
    # A refused move stops the sequence: later moves may rely on the earlier ones.
    refused = store.transitions(job_id, [Move(to=S.PLACED, expect=S.QUEUED, message="x"),
                                         Move(to=S.RUNNING, attempt=1, message="up")])
    assert all(isinstance(r, TransitionRefused) for r in refused)
    assert store.get(job_id).state is S.DISPATCHING
    assert len(store.events(job_id)) == 3
    # A later move's guard sees what the earlier moves wrote; a refusal keeps them.
    replies = store.transitions(job_id, [
        Move(to=S.PLACED, expect=S.DISPATCHING, attempt=1, message="refused by the cloud"),
        Move(to=S.DISPATCHING, expect=S.PLACED, attempt=1, message="next",
             fields=encode_fields(attempt=2)),
        Move(to=S.RUNNING, attempt=1, message="stale")])
    assert replies[:2] == [S.DISPATCHING, S.PLACED]
    assert isinstance(replies[2], TransitionRefused) and replies[2].current is S.DISPATCHING
    record = store.get(job_id)
    assert record.state is S.DISPATCHING and record.attempt == 2
    assert [(e.state_from, e.state_to) for e in store.events(job_id)[3:]] == [
        ("DISPATCHING", "PLACED"), ("PLACED", "DISPATCHING")]
    assert store.ids_in_state(S.DISPATCHING) == [job_id] and store.ids_in_state(S.PLACED) == []
