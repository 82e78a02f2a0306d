"""The queue service launching through the real cloud adapters, end to end.

One private redis-server and one real ``python -m scheduler worker`` (module
scope) with aws -> aws, gcp -> gcp and azure -> azure; each adapter talks
through its own SDK to a loopback fake in this process: EC2 is a moto server
behind the region-aware error proxy (``AWS_ENDPOINT_URL_EC2``), GCP the Compute
Engine JSON fake, Azure the HTTPS ARM fake. Jobs go in with ``greenplace submit``
(a subprocess) and are checked with ``greenplace status`` / ``events`` and in
each fake's own state.

Each test uses its own offer (cloud, region, instance type), so the cool-down one
test's capacity error leaves in Redis cannot reorder another test's attempts.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenplace.providers.base import Placement
from greenplace.scheduler.catalog import Catalog, load_catalog
from greenplace.scheduler.dispatch import decide, frozen_ranking
from greenplace.scheduler.jobs import load_jobs
from greenplace.scheduler.placement import Placer
from greenplace.scheduler.settings import load_settings
from greenplace.scheduler.store import JobState
from tests.fakes.arm_server import Fault
from tests.fakes.gce_server import InsertFault
from tests.integration.cloud_fixtures import CloudFakes, cloud_service
from tests.integration.conftest import Service, wait_for, write_jobs
from tests.redisproc import REDIS_SERVER

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary"),
]
S = JobState
RUNNING_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def cloud_stack(tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[Service, CloudFakes]]:
    with cloud_service(tmp_path_factory.mktemp("clouds")) as started:
        yield started


@pytest.fixture
def clouds(cloud_stack: tuple[Service, CloudFakes]) -> Iterator[tuple[Service, CloudFakes]]:
    """The shared service; a fault or hook a failed test left armed is dropped after it."""
    yield cloud_stack
    cloud_stack[1].disarm()


@functools.cache
def _catalog_and_placer() -> tuple[Catalog, Placer]:
    catalog = load_catalog()
    return catalog, Placer(catalog)


def write_policy(path: Path, *, cloud: str) -> Path:
    """A policy that allows only ``cloud``, on-demand, ranked by price alone."""
    path.write_text(yaml.safe_dump({
        "name": f"{cloud}-only-cheapest",
        "weights": {"carbon": 0.0, "cost": 1.0, "time": 0.0},
        "carbon_signal": "average",
        "constraints": {"clouds": [cloud], "spot": "forbid"},
        "failover": {"max_attempts": 3},
    }))
    return path


def job_file(tmp: Path, *, cloud: str, name: str, accelerators: dict[str, int]) -> Path:
    policy = write_policy(tmp / f"{name}-policy.yaml", cloud=cloud)
    return write_jobs(tmp / f"{name}-jobs.yaml", [{
        "name": name, "run": f"python train.py --run {name}",
        "resources": {"accelerators": accelerators}, "work": {"hours": 2},
        "policy": str(policy)}])


def frozen_order(jobs_path: Path) -> list[Placement]:
    """The ranking ``place`` freezes for the file's one job (the worker's own functions)."""
    catalog, placer = _catalog_and_placer()
    [job] = load_jobs(jobs_path, catalog)
    decision = decide(placer, job, now=dt.datetime.now(dt.UTC), allow_defer=True)
    assert decision.start_at is None, "the worker has no forecast: it never defers"
    return frozen_ranking(decision)


def submit_one(service: Service, jobs_path: Path) -> str:
    [job_id] = service.submit(jobs_path)
    return job_id


def wait_running(service: Service, job_id: str) -> dict[str, Any]:
    """Wait for RUNNING (failing fast on a final state); the ``status --output json`` row."""
    final = {S.FAILED, S.UNSCHEDULABLE, S.CANCELLED, S.SUCCEEDED}
    [record] = service.wait_states([job_id], {S.RUNNING, *final}, timeout_s=RUNNING_TIMEOUT_S)
    [row] = service.cli_json("status", job_id)
    assert record.state is S.RUNNING, (row, [p.output()[-3000:] for p in service.procs])
    return dict(row)


def tag_map(tags: list[dict[str, str]]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags}


# --- AWS: submit + worker launch one tagged EC2 instance, exactly once --------------------------
def test_submit_launches_one_ec2_instance_tagged_with_the_job_in_the_chosen_region(
        clouds: tuple[Service, CloudFakes], tmp_path: Path) -> None:
    service, fakes = clouds
    jobs = job_file(tmp_path, cloud="aws", name="aws-once", accelerators={"A100": 8})
    ranking = frozen_order(jobs)
    chosen = ranking[0]
    assert chosen.cloud == "aws" and not chosen.spot

    job_id = submit_one(service, jobs)
    row = wait_running(service, job_id)
    assert (row["cloud"], row["region"], row["instance_type"]) == (
        "aws", chosen.region, chosen.instance_type)
    assert row["provider"] == "aws" and row["attempts"] == 1

    [instance] = fakes.ec2_instances(chosen.region, job_id=job_id)
    assert instance["InstanceId"] == row["instance_id"]
    assert instance["InstanceType"] == chosen.instance_type
    assert instance["Placement"]["AvailabilityZone"].startswith(chosen.region)
    tags = tag_map(instance["Tags"])
    assert tags["greenplace:job-id"] == job_id
    assert tags["greenplace:attempt"] == "1"
    assert tags["greenplace:policy"] == "aws-only-cheapest"
    for other in {p.region for p in ranking} - {chosen.region}:
        assert fakes.ec2_instances(other, job_id=job_id) == []

    # A second delivery of the same dispatch (and of the place that led to it) reaches
    # the real worker and launches nothing.
    from greenplace.scheduler.worker.app import create_app

    launches_before = fakes.ec2.calls_of("RunInstances")
    app = create_app(load_settings(service.env))
    try:
        app.send_task("greenplace.dispatch", args=[job_id, 1])
        app.send_task("greenplace.place", args=[job_id])
    finally:
        app.close()
    worker = service.procs[0]
    wait_for(lambda: (f"dispatch {job_id} attempt 1: nothing to do" in worker.output()
                      and f"place {job_id}: nothing to do" in worker.output()),
             timeout_s=60, what="the worker to handle the redelivered dispatch and place")
    assert fakes.ec2.calls_of("RunInstances") == launches_before
    [again] = fakes.ec2_instances(chosen.region, job_id=job_id)
    assert again["InstanceId"] == row["instance_id"]
    [row_after] = service.cli_json("status", job_id)
    assert row_after["state"] == "RUNNING" and row_after["instance_id"] == row["instance_id"]


def test_a_dispatch_redelivered_after_its_worker_died_mid_launch_finds_the_instance(
        clouds: tuple[Service, CloudFakes], tmp_path: Path) -> None:
    """The pool process is SIGKILLed right after EC2 created the instance and before the
    store heard of it: the message comes back (acks_late + reject on worker lost), the
    resumed attempt submits with the same idempotency key, finds the instance by its tag
    and records it; RunInstances was called once."""
    service, fakes = clouds
    worker = service.procs[0]
    jobs = job_file(tmp_path, cloud="aws", name="aws-crash", accelerators={"T4": 1})
    chosen = frozen_order(jobs)[0]

    killed: list[int] = []
    fakes.ec2.after_success("RunInstances", lambda region: killed.extend(worker.kill_children()))
    launches_before = len(fakes.ec2.calls_of("RunInstances"))
    job_id = submit_one(service, jobs)
    row = wait_running(service, job_id)

    assert killed, "the hook should have killed the pool process that launched"
    assert fakes.ec2.calls_of("RunInstances")[launches_before:] == [(chosen.region, 200)]
    [instance] = fakes.ec2_instances(chosen.region, job_id=job_id)
    assert instance["InstanceId"] == row["instance_id"]
    assert (row["region"], row["attempts"]) == (chosen.region, 1)
    assert tag_map(instance["Tags"])["greenplace:attempt"] == "1"


# --- failover on a capacity error, per cloud ----------------------------------------------------
def _inject_capacity(fakes: CloudFakes, cloud: str, region: str) -> str:
    """Make the first region refuse the launch for lack of capacity; the expected code."""
    if cloud == "aws":
        fakes.ec2.fail_in_region("RunInstances", region, "InsufficientInstanceCapacity")
        return "InsufficientInstanceCapacity"
    if cloud == "gcp":
        for zone in [z for z, r in fakes.gce.zones.items() if r == region]:
            fakes.gce.fail_next_insert(zone, InsertFault(
                op_error_code="ZONE_RESOURCE_POOL_EXHAUSTED"))
        return "ZONE_RESOURCE_POOL_EXHAUSTED"
    fakes.arm.fail_next_vm_in(region, Fault(
        "AllocationFailed", "Allocation failed. We do not have sufficient capacity for the "
        "requested VM size in this region."))
    return "AllocationFailed"


def _launch_regions(fakes: CloudFakes, cloud: str, job_id: str) -> list[str]:
    """The region of each create call the GCE / ARM fake received for ``job_id``, in order."""
    if cloud == "gcp":
        inserts = [r for r in list(fakes.gce.requests) if r.method == "POST"
                   and r.path.endswith("/instances") and isinstance(r.body, dict)
                   and (r.body.get("labels") or {}).get("greenplace-job-id") == job_id]
        return [fakes.gce.zones[r.path.split("/zones/")[1].split("/")[0]] for r in inserts]
    puts = [r for r in fakes.arm.puts("virtualMachines") if isinstance(r.body, dict)
            and (r.body.get("tags") or {}).get("greenplace:job-id") == job_id]
    return [r.body["location"] for r in puts]


def _live_instances(fakes: CloudFakes, cloud: str, job_id: str,
                    regions: set[str]) -> dict[str, list[dict[str, Any]]]:
    """What exists for ``job_id`` in each region, read from the fake's own state."""
    out: dict[str, list[dict[str, Any]]] = {}
    for region in regions:
        if cloud == "aws":
            found = fakes.ec2_instances(region, job_id=job_id)
        elif cloud == "gcp":
            found = [i for (zone, _), i in list(fakes.gce.instances.items())
                     if fakes.gce.zones[zone] == region
                     and (i.get("labels") or {}).get("greenplace-job-id") == job_id]
        else:
            found = [vm for vm in fakes.arm.vms_in(region)
                     if (vm.get("tags") or {}).get("greenplace:job-id") == job_id]
        out[region] = found
    return out


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_a_capacity_error_in_the_first_region_fails_over_to_the_next_candidate(
        clouds: tuple[Service, CloudFakes], tmp_path: Path, cloud: str) -> None:
    service, fakes = clouds
    jobs = job_file(tmp_path, cloud=cloud, name=f"{cloud}-failover", accelerators={"H100": 8})
    ranking = frozen_order(jobs)
    first, second = ranking[0], ranking[1]
    assert {first.cloud, second.cloud} == {cloud}
    assert first.region != second.region, f"pick a job whose top two regions differ: {ranking}"
    code = _inject_capacity(fakes, cloud, first.region)
    aws_launches_before = len(fakes.ec2.calls_of("RunInstances"))

    job_id = submit_one(service, jobs)
    row = wait_running(service, job_id)

    # The job runs on the second candidate of the frozen ranking, at attempt 2 ...
    assert (row["cloud"], row["region"], row["instance_type"]) == (
        cloud, second.region, second.instance_type)
    assert row["provider"] == cloud and row["attempts"] == 2
    [reason] = row["attempt_reasons"]
    assert (reason["attempt"], reason["region"], reason["instance_type"]) == (
        1, first.region, first.instance_type)
    assert (reason["error"], reason["code"]) == ("CapacityError", code)

    # ... its events show the capacity error for the first placement, then the launch ...
    events = service.cli_json("events", job_id)
    refused = [e for e in events if (e["from"], e["to"]) == ("DISPATCHING", "PLACED")]
    assert len(refused) == 1, events
    assert refused[0]["data"] == {"error": "CapacityError", "code": code}
    assert f"{cloud}:{first.region}:{first.instance_type}" in refused[0]["message"]
    assert f"failing over to {cloud}:{second.region}:{second.instance_type}" in (
        refused[0]["message"])
    launched = [e for e in events if e["to"] == "RUNNING"]
    assert len(launched) == 1 and f"{cloud}:{second.region}" in launched[0]["message"]
    assert launched[0]["data"]["instance_id"] == row["instance_id"]

    # ... and the cloud itself saw a refused launch in the first region and holds one
    # instance of the job, in the second region, tagged with the job and attempt 2.
    if cloud == "aws":
        assert fakes.ec2.calls_of("RunInstances")[aws_launches_before:] == [
            (first.region, 500), (second.region, 200)]
    elif cloud == "gcp":  # every zone of the first region was tried before failing over
        zones_of_first = sum(1 for r in fakes.gce.zones.values() if r == first.region)
        assert _launch_regions(fakes, cloud, job_id) == (
            [first.region] * zones_of_first + [second.region])
    else:
        assert _launch_regions(fakes, cloud, job_id) == [first.region, second.region]
    found = _live_instances(fakes, cloud, job_id, {first.region, second.region})
    assert found[first.region] == []
    [instance] = found[second.region]
    if cloud == "aws":
        assert instance["InstanceId"] == row["instance_id"]
        assert tag_map(instance["Tags"])["greenplace:attempt"] == "2"
    elif cloud == "gcp":
        assert instance["name"] == row["instance_id"]
        assert instance["labels"]["greenplace-attempt"] == "2"
    else:
        assert instance["name"] == row["instance_id"]
        assert instance["properties"]["provisioningState"] == "Succeeded"
        assert instance["tags"]["greenplace:attempt"] == "2"
