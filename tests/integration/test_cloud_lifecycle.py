"""The cloud lifecycle end to end, through a real worker and beat, on each cloud's fake.

The same service as test_cloud_dispatch.py (one private redis-server, one worker with
aws -> aws, gcp -> gcp, azure -> azure, each SDK aimed at its loopback fake), plus
beat, so reconcile runs every 0.5 s as in production. What is checked, per cloud:

- the command's exit code, read back from the console, decides SUCCEEDED or FAILED
  (``exit_code`` in ``status --output json``), and nothing of the job is left after;
- a stockout the cloud reports 15 s after accepting the launch (later than the
  worker's 12 s task time limit, so no task could have waited for it) fails over to
  the next zone (GCE) or the next candidate (EC2, Azure), and leaves nothing behind;
- ``greenplace gc`` finds a tagged machine no job owns and deletes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenplace.providers.base import JobLaunch, Placement, idempotency_key
from greenplace.providers.registry import get_provider
from greenplace.scheduler.store import JobState
from tests.fakes.arm_server import Fault
from tests.fakes.gce_server import InsertFault
from tests.integration.cloud_fixtures import CloudFakes, cloud_service
from tests.integration.conftest import Service, wait_for
from tests.integration.test_cloud_dispatch import frozen_order, job_file, submit_one, wait_running
from tests.redisproc import REDIS_SERVER

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary"),
]
S = JobState
CLOUDS = ["aws", "gcp", "azure"]
LATE_S = 15.0  # later than the 12 s task time limit the cloud service runs with
FINAL = {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.UNSCHEDULABLE}


@pytest.fixture(scope="module")
def lifecycle_stack(tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[Service, CloudFakes]]:
    with cloud_service(tmp_path_factory.mktemp("lifecycle")) as (service, fakes):
        service.start_beat()
        yield service, fakes


@pytest.fixture
def clouds(lifecycle_stack: tuple[Service, CloudFakes]
           ) -> Iterator[tuple[Service, CloudFakes]]:
    yield lifecycle_stack
    lifecycle_stack[1].disarm()


def resources(fakes: CloudFakes, cloud: str, region: str) -> int:
    """Everything the fake account holds (VMs, disks, NICs, addresses) where it counts."""
    if cloud == "aws":
        return int(fakes.ec2.count_resources(region))
    if cloud == "gcp":
        return int(fakes.gce.resource_count())
    return int(fakes.arm.count_resources())


def gce_zone_of(fakes: CloudFakes, name: str) -> str:
    [zone] = [z for (z, n) in list(fakes.gce.instances) if n == name]
    return str(zone)


def finish(fakes: CloudFakes, cloud: str, row: dict[str, Any], exit_code: int) -> None:
    """The fake cloud runs the boot script to its end with ``exit_code``."""
    if cloud == "aws":
        fakes.ec2.finish(row["region"], row["instance_id"], exit_code)
    elif cloud == "gcp":
        fakes.gce.finish(gce_zone_of(fakes, row["instance_id"]), row["instance_id"], exit_code)
    else:
        fakes.arm.finish(row["instance_id"], exit_code)


def wait_final(service: Service, job_id: str) -> dict[str, Any]:
    service.wait_states([job_id], FINAL, timeout_s=90)
    [row] = service.cli_json("status", job_id)
    return dict(row)


def wait_deleted(service: Service, fakes: CloudFakes, cloud: str, job_id: str, region: str,
                 before: int) -> None:
    wait_for(lambda: service.cli_json("status", job_id)[0]["instance_deleted_at"],
             timeout_s=60, what="the job's instance to be confirmed deleted")
    wait_for(lambda: resources(fakes, cloud, region) == before, timeout_s=60,
             what=f"{cloud} to hold nothing of the job (was {before} resources before it)")


@pytest.mark.parametrize("exit_code", [0, 3])
@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_exit_code_decides_the_outcome_and_nothing_is_left(
        clouds: tuple[Service, CloudFakes], tmp_path: Path, cloud: str, exit_code: int) -> None:
    service, fakes = clouds
    jobs = job_file(tmp_path, cloud=cloud, name=f"{cloud}-exit-{exit_code}",
                    accelerators={"T4": 1})
    region = frozen_order(jobs)[0].region
    before = resources(fakes, cloud, region)
    job_id = submit_one(service, jobs)
    row = wait_running(service, job_id)
    assert resources(fakes, cloud, region) > before
    finish(fakes, cloud, row, exit_code)

    final = wait_final(service, job_id)
    assert final["exit_code"] == exit_code
    if exit_code == 0:
        assert final["state"] == "SUCCEEDED" and final["reason"] is None
    else:
        assert final["state"] == "FAILED"
        assert f"the job's command exited with {exit_code}" in final["reason"]
    wait_deleted(service, fakes, cloud, job_id, region, before)
    events = service.cli_json("events", job_id)
    assert any("deleted instance" in e["message"] for e in events), events


def _late_stockout(fakes: CloudFakes, cloud: str, region: str) -> str:
    """Arm a stockout reported LATE_S after the cloud accepted the launch; its code."""
    if cloud == "aws":
        fakes.ec2.fail_launch_later("Server.InsufficientInstanceCapacity", after_s=LATE_S,
                                    region=region)
        return "Server.InsufficientInstanceCapacity"
    if cloud == "gcp":  # the first zone only: GCE moves the launch to the region's next zone
        fakes.gce.fail_next_insert(f"{region}-a", InsertFault(
            op_error_code="ZONE_RESOURCE_POOL_EXHAUSTED", after_s=LATE_S, leaves_record=True))
        return "ZONE_RESOURCE_POOL_EXHAUSTED"
    fakes.arm.fail_next_vm_in(region, Fault(
        "AllocationFailed", "Allocation failed. We do not have sufficient capacity for the "
        "requested VM size in this region.", after_s=LATE_S))
    return "AllocationFailed"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_a_stockout_reported_after_the_launch_fails_over_and_leaves_nothing(
        clouds: tuple[Service, CloudFakes], tmp_path: Path, cloud: str) -> None:
    service, fakes = clouds
    # an offer no other test of this module launches (a stockout cools it down)
    gpus = {"T4": 4} if cloud == "azure" else {"L4": 1}
    jobs = job_file(tmp_path, cloud=cloud, name=f"{cloud}-late", accelerators=gpus)
    first, second = frozen_order(jobs)[:2]
    assert first.region != second.region
    before = resources(fakes, cloud, first.region)
    code = _late_stockout(fakes, cloud, first.region)
    job_id = submit_one(service, jobs)
    wait_running(service, job_id)

    def moved_on() -> dict[str, Any] | None:
        [row] = service.cli_json("status", job_id)
        if row["state"] in {str(state) for state in FINAL}:
            raise AssertionError(f"the job ended instead of moving on: {row}")
        if row["state"] != "RUNNING":
            return None  # PLACED / DISPATCHING between the refusal and the next launch
        events = service.cli_json("events", job_id)
        if cloud == "gcp":
            return row if any("instead" in e["message"] for e in events) else None
        return row if row["attempts"] == 2 else None

    row = wait_for(moved_on, timeout_s=LATE_S + 60, what="the launch to move on")
    events = service.cli_json("events", job_id)
    if cloud == "gcp":  # the next zone of the same region, same attempt
        assert (row["region"], row["attempts"]) == (first.region, 1)
        assert gce_zone_of(fakes, row["instance_id"]) == f"{first.region}-b"
        [moved] = [e for e in events if "instead" in e["message"]]
        assert f"{first.region}-b" in moved["message"]
    else:  # the next candidate, attempt 2
        assert (row["region"], row["instance_type"]) == (second.region, second.instance_type)
        [reason] = row["attempt_reasons"]
        assert (reason["region"], reason["error"], reason["code"]) == (
            first.region, "CapacityError", code)
        refused = [e for e in events if (e["from"], e["to"]) == ("RUNNING", "PLACED")]
        assert len(refused) == 1 and "after it was accepted" in refused[0]["message"]
        wait_for(lambda: any("of attempt 1" in e["message"] and "deleted instance" in e["message"]
                             for e in service.cli_json("events", job_id)),
                 timeout_s=60, what="the refused attempt's instance to be deleted")
    # Once the job is cancelled, nothing of either launch is left.
    assert service.cli("cancel", job_id).returncode == 0
    wait_deleted(service, fakes, cloud, job_id, first.region, before)


def _leak(fakes: CloudFakes, cloud: str, placement: Placement,
          monkeypatch: pytest.MonkeyPatch) -> str:
    """Launch a tagged machine for a job the store never had, as a crash could leave one."""
    for name, value in fakes.worker_env().items():
        monkeypatch.setenv(name, value)
    provider = get_provider(cloud)
    job = JobLaunch(job_id=f"leaked-{cloud}-{os.getpid()}", name="leaked", run="true",
                    policy="balanced", attempt=1)
    handle = provider.submit(provider.prepare(job, placement),
                             idempotency_key=idempotency_key(job.job_id, 1))
    return handle.instance_id


@pytest.mark.parametrize("cloud", CLOUDS)
def test_gc_finds_and_deletes_a_leaked_machine(
        clouds: tuple[Service, CloudFakes], tmp_path: Path, cloud: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    service, fakes = clouds
    jobs = job_file(tmp_path, cloud=cloud, name=f"{cloud}-leak", accelerators={"T4": 1})
    placement = frozen_order(jobs)[0]
    before = resources(fakes, cloud, placement.region)
    instance_id = _leak(fakes, cloud, placement, monkeypatch)
    assert resources(fakes, cloud, placement.region) > before

    args = ("gc", "--provider", cloud, "--region", placement.region, "--output", "json")
    dry = {r["instance_id"]: r for r in service.cli_json(*args[:1], "--dry-run", *args[1:])}
    assert dry[instance_id]["action"] == "would delete"
    assert "unknown to this store" in dry[instance_id]["reason"]
    assert resources(fakes, cloud, placement.region) > before

    def swept() -> bool:
        rows = {r["instance_id"]: r for r in service.cli_json(*args)}
        return instance_id not in rows or rows[instance_id]["action"] in ("deleted", "gone")

    wait_for(swept, timeout_s=60, what="gc to delete the leaked machine")
    wait_for(lambda: resources(fakes, cloud, placement.region) == before, timeout_s=60,
             what="nothing of the leaked machine to remain")
