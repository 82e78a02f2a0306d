"""The scheduler service end to end: real redis-server, real Celery workers, local-sim."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from greenplace.scheduler.store import JobState
from tests.integration.conftest import (
    REPO,
    Service,
    training_job,
    wait_for,
    write_jobs,
)
from tests.redisproc import REDIS_SERVER, RedisServer, make_tls_files

pytestmark = pytest.mark.integration
S = JobState
EXAMPLES = REPO / "examples" / "jobs.yaml"


def one_instance_per_job(service: Service, ids: list[str]) -> list[dict[str, object]]:
    instances = service.instances()
    per_job = collections.Counter(str(i["job_id"]) for i in instances)
    assert {job_id: per_job[job_id] for job_id in ids} == dict.fromkeys(ids, 1)
    assert len(instances) == len(ids)
    return instances


def test_a_batch_runs_to_succeeded_where_the_dry_run_said(service: Service) -> None:
    predicted = service.cli_json("submit", str(EXAMPLES), "--dry-run")
    placement_dry_run = service.cli_json("dry-run", str(EXAMPLES))
    where = {r["job"]: (r["cloud"], r["region"], r["instance_type"]) for r in predicted}
    assert where == {r["job"]: (r["cloud"], r["region"], r["instance_type"])
                     for r in placement_dry_run}
    assert all(r["provider"] == "local-sim" and r["request"]["tags"] for r in predicted)

    service.start_worker()
    service.start_beat()
    ids = service.submit(EXAMPLES)
    assert len(ids) == len(predicted) == len(set(ids))
    watch = service.cli("status", "--watch", "--interval", "0.5", "--output", "json",
                        timeout_s=180)
    assert watch.returncode == 0, watch.stderr
    assert "no greenplace worker" not in watch.stderr  # a worker answers the ping
    lines = [json.loads(line) for line in watch.stdout.splitlines()]
    final = list({r["job_id"]: r for r in lines}.values())  # the last line of each job
    assert len(final) == len(ids)
    assert {r["state"] for r in final} == {"SUCCEEDED"}
    assert {r["name"]: (r["cloud"], r["region"], r["instance_type"]) for r in final} == where
    assert all(r["attempts"] == 1 and r["exit_code"] == 0 for r in final)

    instances = service.cli_json("sim", "instances")
    by_job = {i["job_id"]: i for i in instances}
    assert len(instances) == len(ids) and set(by_job) == set(ids)
    for r in final:
        i = by_job[r["job_id"]]
        assert (i["cloud"], i["region"], i["instance_type"]) == where[r["name"]]
        assert i["idempotency_key"] == f"gp-{r['job_id']}-a1"
    # every instance is deleted once its job ended (the pass after, at the latest)
    wait_for(lambda: {i["state"] for i in service.cli_json("sim", "instances")} == {
        "terminated"}, timeout_s=60, what="every instance to be deleted")

    events = service.cli_json("events", ids[0])
    assert [(e["from"], e["to"]) for e in events if e["kind"] == "transition"] == [
        ("", "QUEUED"), ("QUEUED", "PLACED"), ("PLACED", "DISPATCHING"),
        ("DISPATCHING", "RUNNING"), ("RUNNING", "SUCCEEDED")]
    # What Flower uses (remote control) works against the app unchanged.
    inspect = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "greenplace.scheduler.worker.app", "inspect",
         "registered", "--timeout", "10"], cwd=REPO, env=service.env, capture_output=True,
        text=True, timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    assert "greenplace.dispatch" in inspect.stdout


def test_sigkilled_workers_lose_no_job_and_launch_none_twice(service: Service) -> None:
    service.write_sim(run_time_s=1.0, api_latency_s=0.8)  # each launch answers after 0.8 s
    jobs = write_jobs(service.tmp / "jobs.yaml", [training_job(f"k{i}") for i in range(10)])
    worker = service.start_worker()
    service.start_beat()
    ids = service.submit(jobs)
    store = service.store()
    kills = 0
    launched_but_unrecorded: set[str] = set()
    for _ in range(3):  # kill every pool process while launches are in flight
        wait_for(lambda: store.count(S.DISPATCHING) > 0, timeout_s=90,
                 what="a launch in flight", interval_s=0.05)
        time.sleep(0.3)  # inside submit(): the instance exists, the answer has not come back
        kills += len(worker.kill_children())
        in_flight = set(store.ids_in_state(S.DISPATCHING))
        launched_but_unrecorded |= in_flight & {str(i["job_id"]) for i in service.instances()}
        wait_for(lambda: len(worker.children()) == 2, timeout_s=60, what="the pool to respawn")
    # Then the whole worker, as if its machine died: its messages come back after the
    # visibility timeout, through a new worker.
    wait_for(lambda: store.count(S.DISPATCHING) + store.count(S.QUEUED)
             + store.count(S.PLACED) > 0, timeout_s=60, what="work left to interrupt",
             interval_s=0.05)
    worker.kill_group()
    worker.popen.wait(timeout=30)
    service.start_worker()
    service.wait_states(ids, {S.SUCCEEDED}, timeout_s=240)
    assert kills >= 3
    # The dangerous window was hit: instances existed for jobs whose worker died before
    # recording them; the redelivered dispatch found them by idempotency key.
    assert launched_but_unrecorded
    one_instance_per_job(service, ids)
    assert all(r.attempt == 1 for r in service.records(ids))


def test_a_redis_restart_with_aof_loses_no_job(service: Service, redis_server: RedisServer
                                               ) -> None:
    service.write_sim(run_time_s=1.0, api_latency_s=0.2)
    jobs = write_jobs(service.tmp / "jobs.yaml", [training_job(f"r{i}") for i in range(16)])
    worker = service.start_worker()
    service.start_beat()
    ids = service.submit(jobs)
    store = service.store()
    wait_for(lambda: store.count(S.RUNNING) + store.count(S.SUCCEEDED) >= 3, timeout_s=90,
             what="the batch to be under way", interval_s=0.05)
    redis_server.kill()  # SIGKILL: only the append-only file survives
    time.sleep(1.0)
    redis_server.start()
    service.wait_states(ids, {S.SUCCEEDED}, timeout_s=240)
    one_instance_per_job(service, ids)
    assert worker.popen.poll() is None, worker.output()[-3000:]


def test_the_worker_rides_out_a_redis_outage(service: Service, redis_server: RedisServer
                                             ) -> None:
    """Redis down for longer than the task time limit, in the middle of a batch: the worker
    stays up, no job is lost or launched twice, and its heartbeat resumes."""
    service.write_sim(run_time_s=1.0, api_latency_s=0.05)
    jobs = write_jobs(service.tmp / "jobs.yaml", [training_job(f"o{i}") for i in range(60)])
    worker = service.start_worker()
    service.start_beat()
    ids = service.submit(jobs)
    store = service.store()
    wait_for(lambda: store.count(S.SUCCEEDED) >= 5, timeout_s=90,
             what="the batch to be under way", interval_s=0.05)
    redis_server.stop()  # shut down; nothing answers on its port
    time.sleep(10.0)  # > GREENPLACE_TASK_TIME_LIMIT_S (8 s)
    redis_server.start()
    service.wait_states(ids, {S.SUCCEEDED}, timeout_s=240)
    one_instance_per_job(service, ids)
    assert worker.popen.poll() is None, worker.output()[-3000:]
    assert "Unrecoverable error" not in worker.output()
    status = service.cli("status")
    assert status.returncode == 0 and "no greenplace worker" not in status.stderr


def test_a_worker_that_cannot_go_on_exits_non_zero(service: Service, redis_server: RedisServer
                                                   ) -> None:
    """An error Celery cannot recover from (here: Redis refuses the worker's BRPOP under an
    ACL change) ends `greenplace worker` with a non-zero code, so a supervisor that restarts
    on failure restarts it."""
    admin = redis_server.client()
    admin.acl_setuser("gpworker", enabled=True, passwords=["+worker-pw"], keys=["*"],
                      channels=["*"], commands=["+@all"])
    url = redis_server.url.replace("redis://", "redis://gpworker:worker-pw@")
    service.env = {**service.env, "GREENPLACE_REDIS_URL": url}
    worker = service.start_worker()
    admin.acl_setuser("gpworker", commands=["-brpop"])
    code = worker.popen.wait(timeout=60)
    assert code != 0, worker.output()[-3000:]
    assert "Unrecoverable error" in worker.output()


def test_capacity_errors_fail_over_and_exhaustion_is_unschedulable(service: Service) -> None:
    plan = service.cli_json("submit", str(write_jobs(service.tmp / "a.yaml", [
        training_job("probe", policy="greenest")])), "--dry-run")[0]
    best = f"{plan['cloud']}:{plan['region']}:{plan['instance_type']}"
    second = plan["fallbacks"][0]
    service.write_sim(run_time_s=1.0, capacity={best: 0})
    service.start_worker()
    service.start_beat()
    first = service.submit(write_jobs(service.tmp / "b.yaml", [
        training_job("first", policy="greenest")]))
    (a,) = service.wait_states(first, {S.SUCCEEDED}, timeout_s=120)
    assert a.attempt == 2 and a.placement is not None
    assert f"{a.placement.cloud}:{a.placement.region}:{a.placement.instance_type}" == second
    assert [(r.error, f"{r.cloud}:{r.region}:{r.instance_type}") for r in a.attempt_reasons] \
        == [("CapacityError", best)]
    # The exhausted offer cools down for every job: the next one goes straight to the second.
    later = service.submit(write_jobs(service.tmp / "c.yaml", [
        training_job("second", policy="greenest")]))
    (b,) = service.wait_states(later, {S.SUCCEEDED}, timeout_s=120)
    assert b.attempt == 1 and b.placement == a.placement
    assert len(service.instances()) == 2


def test_all_regions_exhausted_ends_unschedulable_with_reasons(service: Service) -> None:
    service.write_sim(capacity={"*": 0})
    policy = service.tmp / "three-tries.yaml"
    policy.write_text("name: three-tries\nweights: {carbon: 1, cost: 0}\n"
                      "carbon_signal: cfe\nfailover: {max_attempts: 3}\n")
    service.start_worker()
    ids = service.submit(write_jobs(service.tmp / "jobs.yaml", [training_job("doomed")]),
                         "--policy", str(policy))
    (record,) = service.wait_states(ids, {S.UNSCHEDULABLE}, timeout_s=120)
    assert record.attempt == 3 and len(record.attempt_reasons) == 3
    status = service.cli("status", ids[0], "--output", "json")
    assert status.returncode == 1  # documented: some jobs unschedulable or failed
    (row,) = json.loads(status.stdout)
    assert row["state"] == "UNSCHEDULABLE" and "3 launch attempt(s) refused" in row["reason"]
    assert [r["error"] for r in row["attempt_reasons"]] == ["CapacityError"] * 3
    assert service.instances() == []


def test_concurrent_submissions_from_several_processes(service: Service) -> None:
    service.start_worker()
    service.start_beat()
    files = [write_jobs(service.tmp / f"team{t}.yaml",
                        [training_job(f"t{t}-{i}") for i in range(4)]) for t in range(4)]
    procs = [subprocess.Popen([sys.executable, "-m", "greenplace", "submit", str(f), "--output",
                               "json"], cwd=REPO, env=service.env, stdout=subprocess.PIPE,
                              text=True) for f in files]
    ids = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        ids += [r["job_id"] for r in json.loads(out)]
    assert len(ids) == len(set(ids)) == 16
    service.wait_states(ids, {S.SUCCEEDED}, timeout_s=180)
    one_instance_per_job(service, ids)


def test_cancel_a_queued_a_placed_and_a_running_job(service: Service) -> None:
    service.write_sim(run_time_s=1.0, run_time_s_by_name={"long-*": 600})
    # No worker yet: both jobs wait in QUEUED.
    queued, placed = service.submit(write_jobs(service.tmp / "jobs.yaml", [
        training_job("queued"), training_job("placed")]))
    assert service.cli("cancel", queued).returncode == 0
    # Another worker "holds" the second job's dispatch lock: it gets placed, then its
    # launch waits (retrying) in PLACED.
    redis = service.redis.client()
    redis.set(f"gp:lock:dispatch:{placed}", "someone-else", px=120_000)
    worker = service.start_worker()
    service.start_beat()
    service.wait_states([placed], {S.PLACED})
    cancel = service.cli("cancel", placed)
    assert cancel.returncode == 0 and "was PLACED" in cancel.stdout
    redis.delete(f"gp:lock:dispatch:{placed}")  # the retried dispatch now finds it cancelled
    (running,) = service.submit(write_jobs(service.tmp / "long.yaml", [
        training_job("long-run")]))
    service.wait_states([running], {S.RUNNING})
    cancel = service.cli("cancel", running)
    assert cancel.returncode == 0 and "will be deleted" in cancel.stdout
    wait_for(lambda: [(i["job_id"], i["state"]) for i in service.instances()]
             == [(running, "terminated")], timeout_s=60, what="the instance to be terminated")
    records = service.records([queued, placed, running])
    assert [r.state for r in records] == [S.CANCELLED] * 3
    assert records[1].attempt == 0 and records[2].terminated_at
    again = service.cli("cancel", running)
    assert again.returncode == 2 and "already CANCELLED" in again.stderr
    # The placed job's retried dispatch message ran, found it cancelled and did nothing.
    wait_for(lambda: f"dispatch {placed} attempt 1: nothing to do: the job is CANCELLED"
             in worker.output(), timeout_s=60, what="the stale dispatch to run")
    assert [i["job_id"] for i in service.instances()] == [running]
    assert [r.state for r in service.records([placed, running])] == [S.CANCELLED] * 2


def test_bad_input_writes_nothing_and_exits_2(service: Service) -> None:
    bad = service.tmp / "bad.yaml"
    bad.write_text("jobs:\n  - name: ok\n    run: x\n    resources: {accelerators: {A100: 8}}\n"
                   "    work: {hours: 1}\n  - name: broken\n    run: x\n"
                   "    resources: {accelerators: {Z999: 8}}\n    work: {hours: 1}\n")
    result = service.cli("submit", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Z999" in result.stderr and "To fix" in result.stderr
    assert service.redis.client().dbsize() == 0
    env = {**service.env, "GREENPLACE_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"}
    down = service.cli("status", env=env)
    assert down.returncode == 2 and "Cannot reach Redis" in down.stderr
    assert "hunter2" not in down.stderr and "Traceback" not in down.stderr
    missing = service.cli("events", "nope")
    assert missing.returncode == 2 and "No job has id 'nope'" in missing.stderr
    # The dry run needs no Redis at all.
    dry = service.cli("submit", str(EXAMPLES), "--dry-run", env=env)
    assert dry.returncode == 0 and "via local-sim" in dry.stdout, dry.stderr


def test_tls_and_password(tmp_path: Path) -> None:
    if REDIS_SERVER is None or shutil.which("openssl") is None:
        pytest.skip("needs the redis-server and openssl binaries")
    tls = make_tls_files(tmp_path / "tls")
    server = RedisServer(tmp_path / "redis", password="s3cr3t-pw", tls=tls).start()
    service = Service(tmp_path, server, tls=tls)
    try:
        assert service.env["GREENPLACE_REDIS_URL"].startswith("rediss://")
        worker = service.start_worker()
        beat = service.start_beat()
        ids = service.submit(write_jobs(tmp_path / "jobs.yaml",
                                        [training_job("tls-a"), training_job("tls-b")]))
        service.wait_states(ids, {S.SUCCEEDED}, timeout_s=120)
        status = service.cli("status")
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout
        for text in (worker.output(), beat.output(), status.stdout, status.stderr):
            assert "s3cr3t-pw" not in text
    finally:
        service.stop_all()
        server.stop()

