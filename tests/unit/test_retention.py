"""Retention (``JobStore.prune``, ``greenplace prune``) and the deployment key prefix,
against a real private redis-server."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from greenplace.policies.model import load_policy
from greenplace.providers.base import InstanceHandle, JobLaunch, Placement
from greenplace.providers.local_sim import LocalSim, SimConfig, create
from greenplace.scheduler.catalog import Catalog, load_catalog
from greenplace.scheduler.cli import main
from greenplace.scheduler.commands.prune import parse_duration_s
from greenplace.scheduler.exceptions import ConfigError, UserInputError
from greenplace.scheduler.jobs import Job, JobSpec, resolve_job
from greenplace.scheduler.settings import load_settings
from greenplace.scheduler.signals.cache import RedisCache
from greenplace.scheduler.store import (
    JobState,
    JobStore,
    Move,
    NewJob,
    new_job_id,
    pack_explain,
    utc_now,
)
from tests.redisproc import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")
S = JobState
DAY_S = 86400.0
LONG_AGO = utc_now() - dt.timedelta(days=40)
RECENTLY = utc_now() - dt.timedelta(days=2)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture
def client(server: RedisServer):  # type: ignore[no-untyped-def]
    c = server.client()
    c.flushall()
    return c


def make_job(catalog: Catalog, name: str) -> Job:
    spec = JobSpec.model_validate({"name": name, "run": "python train.py",
                                   "resources": {"accelerators": [{"A100": 8}]},
                                   "work": {"hours": 1}})
    return resolve_job(spec, catalog, policy=load_policy("greenest"), where="test")


def submit(store: JobStore, catalog: Catalog, name: str) -> str:
    (job_id,) = store.create([NewJob(job_id=new_job_id(), job=make_job(catalog, name),
                                     team="ml")], now=LONG_AGO - dt.timedelta(hours=1))
    # what the job's agent adds to the record: pruned with it
    assert store.record_telemetry(job_id, at=LONG_AGO, energy_kwh=1.0)
    return job_id


def run_to(store: JobStore, job_id: str, final: JobState, *, when: dt.datetime,
           terminate: bool = False) -> None:
    """QUEUED -> ... -> ``final``, entering ``final`` at ``when``."""
    if final is S.SUCCEEDED:
        store.transitions(job_id, [Move(to=S.PLACED, message="placed"),
                                   Move(to=S.DISPATCHING, message="launching"),
                                   Move(to=S.RUNNING, message="running")], now=when,
                          explain=pack_explain([{"cloud": "aws", "region": "us-east-1"}]))
        assert store.explain(job_id) == [{"cloud": "aws", "region": "us-east-1"}]
    store.transition(job_id, to=final, message=f"to {final}", now=when, terminate=terminate)


def keys_naming(client, job_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Every key whose name or members still mention ``job_id``."""
    found = [k for k in client.keys("*") if job_id in k]
    for key in client.keys("*"):
        kind = client.type(key)
        members: list[str] = []
        if kind == "zset":
            members = client.zrange(key, 0, -1)
        elif kind == "set":
            members = list(client.smembers(key))
        elif kind == "hash" and job_id not in key:
            members = list(client.hkeys(key))
        if any(job_id in m for m in members):
            found.append(key)
    return found


def test_prune_removes_old_final_jobs_entirely_and_keeps_the_rest(
    client, catalog: Catalog,  # type: ignore[no-untyped-def]
) -> None:
    store = JobStore(client)
    old = {state: submit(store, catalog, f"old-{state}") for state in
           (S.SUCCEEDED, S.FAILED, S.CANCELLED, S.UNSCHEDULABLE)}
    for state, job_id in old.items():
        run_to(store, job_id, state, when=LONG_AGO)
    store.claim_nudge(old[S.FAILED], ttl_s=600)
    young = submit(store, catalog, "young")
    run_to(store, young, S.SUCCEEDED, when=RECENTLY)
    running = submit(store, catalog, "running")
    store.transitions(running, [Move(to=S.PLACED, message="p"),
                                Move(to=S.DISPATCHING, message="d"),
                                Move(to=S.RUNNING, message="r")], now=LONG_AGO)

    result = store.prune(older_than_s=30 * DAY_S)

    assert {j.job_id: j.state for j in result.pruned} == {v: k for k, v in old.items()}
    assert all(j.ended_at.startswith(LONG_AGO.date().isoformat()) for j in result.pruned)
    assert not result.more and not result.kept_deleting
    for job_id in old.values():
        assert keys_naming(client, job_id) == []
        # an agent reporting late on a pruned job recreates nothing
        assert not store.record_telemetry(job_id, at=RECENTLY, exit_code=0, energy_kwh=2.0)
        assert keys_naming(client, job_id) == []
    assert sorted(store.job_ids()) == sorted([young, running])
    assert store.get(young).state is S.SUCCEEDED and len(store.events(young)) == 5
    assert store.get(running).state is S.RUNNING
    assert store.counts()["SUCCEEDED"] == 1 and store.counts()["FAILED"] == 0
    assert store.prune(older_than_s=30 * DAY_S).pruned == ()  # nothing left to do


def test_a_pending_instance_deletion_keeps_the_job_until_confirmed(
    client, catalog: Catalog,  # type: ignore[no-untyped-def]
) -> None:
    store = JobStore(client)
    ending = submit(store, catalog, "instance-not-deleted")
    run_to(store, ending, S.SUCCEEDED, when=LONG_AGO, terminate=True)
    superseded = submit(store, catalog, "orphan-not-deleted")
    store.transitions(superseded, [Move(to=S.PLACED, message="p"),
                                   Move(to=S.DISPATCHING, message="d",
                                        fields={"attempt": "2"})], now=LONG_AGO)
    store.orphan(superseded, 1, InstanceHandle(provider="local-sim", cloud="aws",
                                               region="us-east-1", instance_id="i-1"))
    store.transition(superseded, to=S.CANCELLED, message="cancel", now=LONG_AGO)

    result = store.prune(older_than_s=30 * DAY_S)
    assert result.pruned == ()
    assert sorted(j.job_id for j in result.kept_deleting) == sorted([ending, superseded])
    assert store.get(ending) and store.get(superseded)

    store.terminated(ending, message="instance deleted")
    store.orphan_deleted(superseded, 1, message="orphan deleted")
    result = store.prune(older_than_s=30 * DAY_S)
    assert sorted(j.job_id for j in result.pruned) == sorted([ending, superseded])
    assert keys_naming(client, ending) == [] and keys_naming(client, superseded) == []


def test_dry_run_deletes_nothing_and_limit_bounds_a_sweep(
    client, catalog: Catalog,  # type: ignore[no-untyped-def]
) -> None:
    store = JobStore(client)
    ids = [submit(store, catalog, f"j{i}") for i in range(7)]
    for job_id in ids:
        run_to(store, job_id, S.CANCELLED, when=LONG_AGO)
    before = sorted(client.keys("*"))

    dry = store.prune(older_than_s=30 * DAY_S, dry_run=True)
    assert sorted(j.job_id for j in dry.pruned) == sorted(ids)
    assert sorted(client.keys("*")) == before

    first = store.prune(older_than_s=30 * DAY_S, limit=5)
    assert len(first.pruned) == 5 and first.more
    second = store.prune(older_than_s=30 * DAY_S, limit=5)
    assert len(second.pruned) == 2 and not second.more
    assert {j.job_id for j in first.pruned + second.pruned} == set(ids)
    assert store.job_ids() == []
    # a sweep as of 50 days ago finds nothing that had ended 30 days before that
    assert store.prune(older_than_s=30 * DAY_S,
                       now=utc_now() - dt.timedelta(days=50)).pruned == ()


def test_key_prefixes_keep_two_deployments_apart_in_one_redis(
    server: RedisServer, client, catalog: Catalog,  # type: ignore[no-untyped-def]
) -> None:
    blue, green = JobStore(client, prefix="blue"), JobStore(client, prefix="green")
    b = submit(blue, catalog, "blue-job")
    g = submit(green, catalog, "green-job")
    run_to(green, g, S.FAILED, when=LONG_AGO)
    assert blue.job_ids() == [b] and green.job_ids() == [g]
    assert blue.counts()["FAILED"] == 0 and green.counts()["QUEUED"] == 0
    assert all(k.startswith(("blue:", "green:")) for k in client.keys("*"))

    run_to(blue, b, S.FAILED, when=LONG_AGO)
    assert [j.job_id for j in green.prune(older_than_s=DAY_S).pruned] == [g]
    assert blue.get(b).state is S.FAILED  # the other deployment's job is untouched

    # local-sim and the signal cache follow the prefix; the default prefix keeps gpsim:
    o = sorted(catalog.offers, key=lambda o: (o.cloud, o.region, o.instance_type))[0]
    placement = Placement(cloud=o.cloud, region=o.region, instance_type=o.instance_type,
                          accelerator=o.accelerator, accelerator_count=o.accelerator_count,
                          spot=False, price_usd_per_hour=o.price_usd_per_hour)
    sims = {"blue": create({"redis_url": server.url, "key_prefix": "blue"}),
            "gp": LocalSim(config=SimConfig(), redis_url=server.url)}
    for prefix, sim in sims.items():
        request = sim.prepare(JobLaunch(job_id=f"{prefix}-1", name="t", run="true",
                                        policy="greenest", attempt=1), placement)
        sim.submit(request, idempotency_key=f"{prefix}-1")
        assert [r["job_id"] for r in sim.instances()] == [f"{prefix}-1"]
        cache = RedisCache(client, prefix=prefix)
        cache.set("probe", prefix, ttl_s=60)
        assert client.get(f"{prefix}:signal:probe") == prefix
    assert client.keys("gpsim:*") and client.keys("bluesim:*")
    for sim in sims.values():
        sim.client.close()


def test_retention_and_prefix_settings() -> None:
    default = load_settings({})
    assert default.retention_days == 30 and default.retention_s == 30 * DAY_S
    assert default.key_prefix == "gp" and default.broker_key_prefix == ""
    assert default.prune_interval_s == 3600
    assert default.provider_config("local-sim")["key_prefix"] == "gp"
    assert load_settings({"GREENPLACE_RETENTION_DAYS": "0"}).retention_s is None
    assert load_settings({"GREENPLACE_RETENTION_DAYS": "0.5"}).retention_s == DAY_S / 2
    blue = load_settings({"GREENPLACE_KEY_PREFIX": "team-blue.v2"})
    assert blue.key_prefix == "team-blue.v2" and blue.broker_key_prefix == "team-blue.v2:"
    with pytest.raises(ConfigError) as info:
        load_settings({"GREENPLACE_RETENTION_DAYS": "forever", "GREENPLACE_KEY_PREFIX": "a:b",
                       "GREENPLACE_PRUNE_INTERVAL_S": "0"})
    message = str(info.value)
    assert "GREENPLACE_RETENTION_DAYS='forever' is not a number of days" in message
    assert "GREENPLACE_KEY_PREFIX='a:b'" in message and "GREENPLACE_PRUNE_INTERVAL_S" in message
    assert "To fix" in message and "\n" not in message
    with pytest.raises(ConfigError):
        load_settings({"GREENPLACE_KEY_PREFIX": "x" * 33})


def test_durations() -> None:
    assert [parse_duration_s(t) for t in ("30d", "12h", "90m", "45s", "1.5h")] == [
        30 * DAY_S, 12 * 3600, 90 * 60, 45, 5400]
    for bad in ("30", "d", "-1d", "1w", "1d2h", ""):
        with pytest.raises(UserInputError, match="To fix"):
            parse_duration_s(bad)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_prune_command(server: RedisServer, client, catalog: Catalog,  # type: ignore[no-untyped-def]
                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                       ) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("GREENPLACE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)
    monkeypatch.setenv("GREENPLACE_KEY_PREFIX", "ops")
    store = JobStore(client, prefix="ops")
    old, young = submit(store, catalog, "old"), submit(store, catalog, "young")
    run_to(store, old, S.SUCCEEDED, when=LONG_AGO)
    run_to(store, young, S.FAILED, when=RECENTLY)

    code, out, err = cli(capsys, "prune", "--older-than", "3 weeks")
    assert code == 2 and out == "" and "To fix" in err and "Traceback" not in err

    code, out, _ = cli(capsys, "prune", "--dry-run", "--output", "json")
    assert code == 0 and [(r["job_id"], r["action"]) for r in json.loads(out)] == [
        (old, "would delete")]
    code, out, _ = cli(capsys, "prune", "--older-than", "1d", "--dry-run")
    assert code == 0 and "2 job(s) would be deleted" in out and "SUCCEEDED" in out
    assert sorted(store.job_ids()) == sorted([old, young])

    code, out, _ = cli(capsys, "prune")  # the 30-day default
    assert code == 0 and "1 job(s) deleted" in out
    assert store.job_ids() == [young]

    monkeypatch.setenv("GREENPLACE_RETENTION_DAYS", "0")
    code, out, err = cli(capsys, "prune", "--output", "json")
    assert code == 0 and json.loads(out) == [] and "retention is off" in err
    code, out, _ = cli(capsys, "prune", "--older-than", "36h", "--output", "json")
    assert code == 0 and [r["job_id"] for r in json.loads(out)] == [young]
    assert store.job_ids() == []
