"""The GCP adapter's launch life cycle through the real google-cloud-compute client.

Asynchronous launches (PENDING handles, zone failover inside status(), late
refusals), delete(), list_managed(), exit codes from serial port 1 and
throttling, against tests/fakes/gce_server.py with short operation times.
Nothing in the adapter is mocked; waits poll the fake's state, never the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from greenplace.providers.base import (
    LAUNCH_WAIT_S,
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    Placement,
    idempotency_key,
)
from greenplace.providers.gcp import GcpProvider, GcpSettings, create
from greenplace.scheduler.exceptions import (
    AccountLimitError,
    CapacityError,
    ConfigError,
    QuotaError,
    TransientError,
)
from tests.fakes.gce_server import FakeComputeEngine, InsertFault, http_error

JOB = JobLaunch(job_id="JOB_42.alpha", name="train-bert", run="python train.py",
                policy="greenest", attempt=1)
KEY = idempotency_key(JOB.job_id, JOB.attempt)
ZONES = ("us-central1-a", "us-central1-b", "us-central1-c")
STOCKOUT = "ZONE_RESOURCE_POOL_EXHAUSTED"
GLOBAL_GPU_QUOTA = {"metricName": "compute.googleapis.com/gpus_all_regions",
                    "limitName": "GPUS-ALL-REGIONS-per-project", "dimensions": {"global": "global"},
                    "limit": 0}


def placement(instance_type: str = "a2-highgpu-1g", *, spot: bool = False) -> Placement:
    return Placement(cloud="gcp", region="us-central1", instance_type=instance_type,
                     accelerator="A100", accelerator_count=1, spot=spot)


@pytest.fixture
def gce() -> Iterator[FakeComputeEngine]:
    with FakeComputeEngine() as fake:
        yield fake


@pytest.fixture
def adapters(gce: FakeComputeEngine) -> Iterator[Callable[..., GcpProvider]]:
    made: list[GcpProvider] = []

    def make(**extra: str) -> GcpProvider:
        config = {"project": gce.project, "api_endpoint": gce.base_url,
                  "credentials": "anonymous"}
        config.update(extra)
        made.append(create(config))
        return made[-1]

    yield make
    for adapter in made:
        adapter.close()


def until(check: Callable[[], bool], *, polls: int = 200) -> None:
    """Poll ``check`` every 0.05 s until it holds (a bounded loop, not a timing assertion)."""
    for _ in range(polls):
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("the fake never reached the expected state")


def follow(adapter: GcpProvider, handle: InstanceHandle,
           done: Callable[[InstanceStatus], bool]) -> tuple[InstanceHandle, InstanceStatus]:
    """status() until ``done``, adopting replacement handles as the queue does."""
    for _ in range(200):
        got = adapter.status(handle)
        handle = got.handle or handle
        if done(got):
            return handle, got
        time.sleep(0.05)
    raise AssertionError(f"{handle.instance_id} never settled")


def ops_done(gce: FakeComputeEngine) -> bool:
    with gce.lock:
        gce._tick()
        return all(op["status"] == "DONE" for op in gce.operations.values())


def calls(gce: FakeComputeEngine, method: str, suffix: str) -> int:
    return sum(1 for r in gce.requests if r.method == method and r.path.endswith(suffix))


# --------------------------------------------------------------------------- asynchronous launch


def test_operation_timeout_is_bounded_by_the_launch_wait() -> None:
    assert GcpSettings.from_config({}).operation_timeout_s == LAUNCH_WAIT_S
    with pytest.raises(ConfigError, match="operation_timeout_s 90 is longer"):
        GcpSettings.from_config({"operation_timeout_s": "90"})


def test_slow_insert_returns_a_pending_handle_that_status_follows(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.op_seconds = 0.5
    adapter = adapters(operation_timeout_s="0.1")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    assert handle.zone == "us-central1-a"
    assert handle.extra["operation"].startswith("operation-")
    assert handle.extra["zones_left"] == "us-central1-b,us-central1-c"
    assert adapter.status(handle).state is InstanceState.PENDING
    settled, got = follow(adapter, handle, lambda s: s.state is InstanceState.RUNNING)
    # Once the instance exists, the queue gets a handle without the launch state.
    assert set(settled.extra) == {"project", "spot", "instance_id"}
    assert (settled.zone, settled.instance_id) == (handle.zone, handle.instance_id)
    assert calls(gce, "POST", "/instances") == 1


def test_async_stockout_moves_on_to_the_next_zone_and_deletes_the_leftover(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.op_seconds = 0.2  # the insert into the next zone is still running when status returns
    gce.fail_next_insert(ZONES[0], InsertFault(op_error_code=STOCKOUT, after_s=0.3,
                                               leaves_record=True))
    adapter = adapters(operation_timeout_s="0.05")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    assert handle.zone == ZONES[0] and "operation" in handle.extra
    until(lambda: ops_done(gce))
    got = adapter.status(handle)
    assert got.state is InstanceState.PENDING and got.handle is not None
    assert got.handle.zone == ZONES[1] and got.handle.instance_id == handle.instance_id
    assert f"{ZONES[0]}:{STOCKOUT}" in got.handle.extra["tried"]
    assert got.handle.extra["zones_left"] == ZONES[2]
    deletes = [r.path for r in gce.requests if r.method == "DELETE"]
    assert deletes == [f"/compute/v1/projects/{gce.project}/zones/{ZONES[0]}/instances/"
                       f"{handle.instance_id}"]
    settled, _ = follow(adapter, got.handle, lambda s: s.state is InstanceState.RUNNING)
    until(lambda: ops_done(gce))
    assert [zone for zone, _ in gce.instances] == [ZONES[1]]
    assert gce.resource_count() == 2  # the VM in zone b and its boot disk, nothing in a


def test_every_zone_stocking_out_late_is_launch_failed_capacity(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    for zone in ZONES:
        gce.fail_next_insert(zone, InsertFault(op_error_code=STOCKOUT, after_s=0.2,
                                               leaves_record=True))
    adapter = adapters(operation_timeout_s="0")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    handle, got = follow(adapter, handle, lambda s: s.state is not InstanceState.PENDING)
    assert got.state is InstanceState.LAUNCH_FAILED
    assert isinstance(got.error, CapacityError) and got.error.code == STOCKOUT
    assert all(zone in str(got.error) for zone in ZONES) and "To fix:" in str(got.error)
    assert got.error.operation == "status"
    until(lambda: ops_done(gce))
    assert gce.resource_count() == 0  # each zone's leftover VM record was deleted
    assert adapter.delete(handle) is True


def test_late_quota_refusal_is_launch_failed_quota_without_trying_other_zones(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.fail_next_insert(ZONES[0], InsertFault(
        op_error_code="QUOTA_EXCEEDED", op_http_status=403, after_s=0.2,
        message="Quota 'NVIDIA_A100_GPUS' exceeded.  Limit: 0.0 in region us-central1."))
    adapter = adapters(operation_timeout_s="0")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    _, got = follow(adapter, handle, lambda s: s.state is not InstanceState.PENDING)
    assert got.state is InstanceState.LAUNCH_FAILED
    assert type(got.error) is QuotaError and got.error.code == "QUOTA_EXCEEDED"
    assert calls(gce, "POST", "/instances") == 1


def test_global_gpu_quota_fails_the_job_fast(gce: FakeComputeEngine,
                                             adapters: Callable[..., GcpProvider]) -> None:
    """Asynchronously (operation error with quotaInfo) and synchronously (HTTP 403)."""
    gce.fail_next_insert(ZONES[0], InsertFault(
        op_error_code="QUOTA_EXCEEDED", op_http_status=403, after_s=0.2,
        quota_info=GLOBAL_GPU_QUOTA, message="Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 "
                                             "globally."))
    adapter = adapters(operation_timeout_s="0")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    _, got = follow(adapter, handle, lambda s: s.state is not InstanceState.PENDING)
    assert isinstance(got.error, AccountLimitError) and got.error.code == "quota_global"
    assert "GPUS_ALL_REGIONS" in str(got.error) and "To fix:" in str(got.error)

    gce.fail_next_insert(ZONES[0], InsertFault(
        http_status=403, reason="quotaExceeded",
        message="Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."))
    with pytest.raises(AccountLimitError) as err:
        adapter.submit(adapter.prepare(JOB, placement()), idempotency_key="gp-other-a1")
    assert err.value.code == "quota_global" and err.value.operation == "submit"


def test_regional_quota_named_in_quota_info_stays_a_quota_error(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.fail_next_insert(ZONES[0], InsertFault(
        op_error_code="QUOTA_EXCEEDED", op_http_status=403,
        quota_info={"metricName": "compute.googleapis.com/nvidia_a100_gpus",
                    "limitName": "NVIDIA-A100-GPUS-per-project-region",
                    "dimensions": {"region": "us-central1"}, "limit": 0},
        message="Quota 'NVIDIA_A100_GPUS' exceeded.  Limit: 0.0 in region us-central1."))
    adapter = adapters()
    with pytest.raises(QuotaError) as err:
        adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    assert type(err.value) is QuotaError


def test_instance_not_visible_yet_after_its_insert_is_pending_not_missing(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.op_seconds, gce.visible_after_s = 0.1, 1.0
    adapter = adapters(operation_timeout_s="0")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    until(lambda: ops_done(gce))
    got = adapter.status(handle)
    assert got.state is InstanceState.PENDING and "not visible yet" in got.detail
    assert adapter.delete(handle) is False  # the insert is done, the instance not visible
    follow(adapter, handle, lambda s: s.state is InstanceState.RUNNING)


def test_a_404_long_after_the_insert_means_gone(gce: FakeComputeEngine,
                                               adapters: Callable[..., GcpProvider]) -> None:
    gce.op_seconds = 0.1
    adapter = adapters(operation_timeout_s="0")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    until(lambda: ops_done(gce))
    gce.instances.clear()  # deleted behind greenplace's back
    gce.disks.clear()
    assert adapter.status(handle).state is InstanceState.PENDING  # may be read lag
    (insert,) = gce.operations.values()
    insert["endTime"] = "2026-11-27T12:00:09.000-08:00"  # the insert ended days ago
    assert adapter.status(handle).state is InstanceState.MISSING
    assert adapter.delete(handle) is True


def test_a_throttled_next_zone_insert_is_transient_and_retried(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.fail_next_insert(ZONES[0], InsertFault(op_error_code=STOCKOUT, after_s=0.1))
    adapter = adapters(operation_timeout_s="0")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    until(lambda: ops_done(gce))
    gce.throttle("POST", r"/instances$")
    with pytest.raises(TransientError):
        adapter.status(handle)
    got = adapter.status(handle)  # the same handle: the next call moves on
    assert got.handle is not None and got.handle.zone == ZONES[1]


def test_a_redelivered_submit_during_a_pending_launch_reuses_its_operation(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.op_seconds, gce.visible_after_s = 0.5, 0.5
    first = adapters(operation_timeout_s="0")
    handle = first.submit(first.prepare(JOB, placement()), idempotency_key=KEY)
    other = adapters(operation_timeout_s="0")
    again = other.submit(other.prepare(JOB, placement()), idempotency_key=KEY)
    assert again.extra["operation"] == handle.extra["operation"]
    assert len(gce.instances_named(handle.instance_id)) == 1


# --------------------------------------------------------------------------- delete


def test_delete_is_false_until_gce_confirms_and_sends_one_operation(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    adapter = adapters()
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    assert gce.resource_count() == 2  # the VM and its boot disk
    gce.delete_seconds = 0.3
    assert adapter.delete(handle) is False
    assert adapter.delete(handle) is False  # in progress: same requestId, same operation
    until(lambda: adapter.delete(handle))
    delete_ops = [op for op in gce.operations.values() if op["operationType"] == "delete"]
    assert len(delete_ops) == 1
    assert gce.resource_count() == 0  # autoDelete took the boot disk with it
    assert adapter.delete(handle) is True


def test_delete_waits_for_a_running_insert(gce: FakeComputeEngine,
                                           adapters: Callable[..., GcpProvider]) -> None:
    gce.op_seconds = 0.3
    adapter = adapters(operation_timeout_s="0")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    assert adapter.delete(handle) is False
    assert calls(gce, "DELETE", handle.instance_id) == 0
    until(lambda: adapter.delete(handle))
    assert gce.resource_count() == 0


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize("exit_code", [0, 1, 137])
def test_exit_code_is_read_from_serial_port_1_across_pages(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider], exit_code: int) -> None:
    gce.serial_page_bytes = 40  # the boot log and the marker span several pages
    adapter = adapters()
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    follow(adapter, handle, lambda s: s.state is InstanceState.RUNNING)
    gce.finish(handle.zone or "", handle.instance_id, exit_code)
    got = adapter.status(handle)
    assert (got.state, got.exit_code) == (InstanceState.EXITED, exit_code)
    pages = [r for r in gce.requests if r.path.endswith("/serialPort")]
    assert len(pages) > 3 and pages[0].query["port"] == "1"
    assert [int(p.query.get("start", 0)) for p in pages] == sorted(
        int(p.query.get("start", 0)) for p in pages)


def test_powered_off_without_a_marker_is_exited_with_no_code(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    adapter = adapters()
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    gce.set_status(handle.zone or "", handle.instance_id, "TERMINATED")
    got = adapter.status(handle)
    assert (got.state, got.exit_code) == (InstanceState.EXITED, None)


def test_a_preempted_spot_vm_is_preempted_even_with_a_code_on_its_console(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    adapter = adapters(spot_termination_action="STOP")
    handle = adapter.submit(adapter.prepare(JOB, placement(spot=True)), idempotency_key=KEY)
    follow(adapter, handle, lambda s: s.state is InstanceState.RUNNING)
    gce.finish(handle.zone or "", handle.instance_id, 143)  # SIGTERM from the shutdown
    gce.preempt(handle.zone or "", handle.instance_id)
    assert adapter.status(handle).state is InstanceState.PREEMPTED
    spot_done = JobLaunch(job_id="job-9", name="n", run="r", policy="p", attempt=1)
    other = adapter.submit(adapter.prepare(spot_done, placement(spot=True)),
                           idempotency_key=idempotency_key("job-9", 1))
    gce.finish(other.zone or "", other.instance_id, 0)
    got = adapter.status(other)  # a Spot VM that was not preempted: its code counts
    assert (got.state, got.exit_code) == (InstanceState.EXITED, 0)


def test_host_error_is_failed_not_exited(gce: FakeComputeEngine,
                                         adapters: Callable[..., GcpProvider]) -> None:
    adapter = adapters()
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    gce.host_error(handle.zone or "", handle.instance_id)
    got = adapter.status(handle)
    assert got.state is InstanceState.FAILED and "hostError" in got.detail


# --------------------------------------------------------------------------- list_managed


def test_list_managed_is_one_filtered_call_per_page(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    adapter = adapters()
    handles = [adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)]
    gce.fail_next_insert(ZONES[0], InsertFault(op_error_code=STOCKOUT))
    retry = JobLaunch(job_id="job-2", name="n", run="r", policy="p", attempt=3)
    handles.append(adapter.submit(adapter.prepare(retry, placement(spot=True)),
                                  idempotency_key=idempotency_key("job-2", 3)))
    eu = Placement(cloud="gcp", region="europe-north1", instance_type="a2-highgpu-1g",
                   accelerator="A100", accelerator_count=1, spot=False)
    adapter.submit(adapter.prepare(JOB, eu), idempotency_key="gp-eu-a1")
    unmanaged = dict(gce.instances[(ZONES[0], handles[0].instance_id)], name="someone-else",
                     labels={})
    gce.instances[(ZONES[0], "someone-else")] = unmanaged
    gce.set_status(handles[1].zone or "", handles[1].instance_id, "TERMINATED")
    gce.page_size = 1
    before = len(gce.requests)

    listed = adapter.list_managed("us-central1")

    lists = gce.requests[before:]
    assert {r.path for r in lists} == {f"/compute/v1/projects/{gce.project}/aggregated/instances"}
    assert len(lists) == 3  # three managed instances, one per page: the SDK follows pages
    assert lists[0].query["filter"] == 'labels.greenplace-managed = "true"'
    by_id = {m.handle.instance_id: m for m in listed}
    assert set(by_id) == {h.instance_id for h in handles}  # no other region, no unmanaged
    assert by_id[handles[0].instance_id].handle == handles[0]  # what submit returned
    assert by_id[handles[1].instance_id].handle == handles[1]
    assert (by_id[handles[0].instance_id].job_id,
            by_id[handles[0].instance_id].attempt) == ("JOB_42.alpha", 1)  # exact, unfolded
    assert by_id[handles[1].instance_id].attempt == 3
    assert by_id[handles[1].instance_id].handle.extra["spot"] == "true"
    ended = by_id[handles[1].instance_id].status
    assert (ended.state, ended.exit_code) == (InstanceState.EXITED, None)


def test_list_managed_refuses_a_partial_answer_for_its_region(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    adapter = adapters()
    adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    gce.unreachable_zones = {"europe-north1-b"}
    assert len(adapter.list_managed("us-central1")) == 1  # another region's outage
    gce.unreachable_zones = {ZONES[1]}
    with pytest.raises(TransientError, match="us-central1-b is unreachable") as err:
        adapter.list_managed("us-central1")
    assert err.value.operation == "list_managed"


# --------------------------------------------------------------------------- throttling


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", r"/instances/[^/]+$", 429),
    ("GET", r"/instances/[^/]+$", 403),
    ("GET", r"/serialPort$", 429),
    ("GET", r"/operations$", 429),
])
def test_throttling_in_status_is_transient(gce: FakeComputeEngine,
                                           adapters: Callable[..., GcpProvider],
                                           method: str, path: str, status: int) -> None:
    adapter = adapters()
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    gce.set_status(handle.zone or "", handle.instance_id, "TERMINATED")
    gce.throttle(method, path, status=status)
    with pytest.raises(TransientError) as err:
        adapter.status(handle)
    assert err.value.code in ("rateLimitExceeded", "userRateLimitExceeded")
    assert err.value.operation == "status" and "To fix:" in str(err.value)
    assert adapter.status(handle).state is InstanceState.EXITED  # the throttle passed


def test_throttling_in_a_pending_launch_list_and_delete_is_transient(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.op_seconds = 0.2
    adapter = adapters(operation_timeout_s="0")
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    gce.throttle("GET", r"/operations/[^/]+$")
    with pytest.raises(TransientError):
        adapter.status(handle)
    gce.throttle("GET", r"/aggregated/instances$")
    with pytest.raises(TransientError) as listed:
        adapter.list_managed("us-central1")
    assert listed.value.operation == "list_managed"
    until(lambda: ops_done(gce))
    gce.throttle("DELETE", r"/instances/[^/]+$")
    with pytest.raises(TransientError) as deleted:
        adapter.delete(handle)
    assert deleted.value.operation == "delete"
    until(lambda: adapter.delete(handle))


def test_a_rate_limit_worded_as_quota_is_still_transient(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    gce.throttle("POST", r"/instances$")  # 429: "Quota exceeded for quota metric 'Queries'"
    adapter = adapters()
    with pytest.raises(TransientError) as err:
        adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    assert err.value.code == "rateLimitExceeded"


def test_resource_not_ready_on_delete_means_in_progress(
        gce: FakeComputeEngine, adapters: Callable[..., GcpProvider]) -> None:
    adapter = adapters()
    handle = adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    gce.fail_calls("DELETE", r"/instances/", http_error(
        400, "resourceNotReady", f"The resource 'projects/{gce.project}/zones/{ZONES[0]}/"
        f"instances/{handle.instance_id}' is not ready"))
    assert adapter.delete(handle) is False
