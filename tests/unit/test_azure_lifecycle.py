"""The Azure adapter's launch lifecycle through the real SDK against the ARM fake.

Asynchronous allocation failures, exit codes read back from boot diagnostics,
the one-call region list, confirmed deletes, network races, throttling and the
outbound modes. The fake's operations take tenths of seconds of real time; the
tests poll with ``wait_for`` and assert states, never durations.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenplace.providers.azure import AzureProvider, AzureSettings, vm_name
from greenplace.providers.base import InstanceHandle, InstanceState, InstanceStatus
from greenplace.scheduler.exceptions import (
    CapacityError,
    ConfigError,
    ProviderError,
    QuotaError,
    TransientError,
)
from tests.fakes.arm_server import FakeResourceManager, Fault, arm_error
from tests.fakes.json_server import make_test_ca
from tests.unit.test_azure import KEY, StaticToken, placement, settings, submit
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def arm(tls: tuple[Any, Path]) -> Iterator[FakeResourceManager]:
    with FakeResourceManager(tls=tls[0]) as fake:
        yield fake


@pytest.fixture
def make(arm: FakeResourceManager, tls: tuple[Any, Path]) -> Iterator[Any]:
    """Build adapters on the fake with extra settings; closes them afterwards."""
    made: list[AzureProvider] = []

    def build(**extra: str) -> AzureProvider:
        made.append(AzureProvider(settings(arm, tls[1], **extra), credential=StaticToken()))
        return made[-1]

    yield build
    for adapter in made:
        adapter.close()


def until(adapter: AzureProvider, handle: InstanceHandle,
          state: InstanceState) -> InstanceStatus:
    return wait_for(lambda: (s := adapter.status(handle)).state is state and s,
                    timeout_s=10, what=f"{handle.instance_id} {state}", interval_s=0.05)


def delete_until_gone(adapter: AzureProvider, handle: InstanceHandle) -> None:
    wait_for(lambda: adapter.delete(handle), timeout_s=10, what="delete confirmed",
             interval_s=0.05)


# --------------------------------------------------------------------------- launch failures


@pytest.mark.parametrize(("code", "kind"), [
    ("AllocationFailed", CapacityError),
    ("ZonalAllocationFailed", CapacityError),
    ("OverconstrainedAllocationRequest", CapacityError),
    ("SkuNotAvailable", CapacityError),
    ("QuotaExceeded", QuotaError),
])
def test_allocation_failure_after_submit_is_launch_failed_and_cleaned_up(
        arm: FakeResourceManager, make: Any, code: str, kind: type[ProviderError]) -> None:
    adapter = make(operation_timeout_s="0.1")
    arm.fail_next_vm_lro(Fault(code, f"{code}: the VM could not be allocated.", after_s=0.5))
    handle = submit(adapter)  # accepted: submit answers before ARM gives up
    assert adapter.status(handle).state is InstanceState.PENDING
    failed = until(adapter, handle, InstanceState.LAUNCH_FAILED)
    assert isinstance(failed.error, kind) and failed.error.code == code
    assert failed.error.operation == "status" and "To fix:" in str(failed.error)
    # Azure left the Failed VM with its NIC, public IP and disk. status() keeps them (and
    # its answer) until the queue deletes them, so a repeated status() after a worker
    # died reads the same refusal.
    assert arm.vms[handle.instance_id]["properties"]["provisioningState"] == "Failed"
    again = adapter.status(handle)
    assert again.state is InstanceState.LAUNCH_FAILED and isinstance(again.error, kind)
    assert arm.count_resources() == 4
    wait_for(lambda: adapter.delete(handle), timeout_s=10, what="leftovers deleted",
             interval_s=0.05)
    assert arm.count_resources() == 0


def test_submit_answers_at_its_deadline_and_status_follows_to_running(
        arm: FakeResourceManager, make: Any) -> None:
    arm.create_s = 0.6
    adapter = make(operation_timeout_s="0.1")
    handle = submit(adapter)
    assert arm.vms[handle.instance_id]["properties"]["provisioningState"] == "Creating"
    assert adapter.status(handle).state is InstanceState.PENDING
    until(adapter, handle, InstanceState.RUNNING)


def test_a_nic_still_being_created_at_the_deadline_is_transient(arm: FakeResourceManager,
                                                                make: Any) -> None:
    arm.nic_s = 0.5
    adapter = make(operation_timeout_s="0.1")
    with pytest.raises(TransientError, match="still being created") as err:
        submit(adapter)
    assert err.value.code == "OperationInProgress" and not arm.vms  # no VM PUT yet
    handle = wait_for(lambda: _submitted(adapter), timeout_s=10, what="the retried submit")
    until(adapter, handle, InstanceState.RUNNING)


def test_operation_timeout_above_the_launch_wait_is_refused() -> None:
    with pytest.raises(ConfigError, match="at most 5"):
        AzureSettings.from_config({"operation_timeout_s": "120"})


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize("exit_code", [0, 7])
def test_exit_code_is_read_from_the_serial_log_without_azure_credentials(
        arm: FakeResourceManager, make: Any, exit_code: int) -> None:
    adapter = make()
    handle = submit(adapter)
    until(adapter, handle, InstanceState.RUNNING)
    assert adapter.status(handle).exit_code is None
    arm.finish(handle.instance_id, exit_code)
    got = adapter.status(handle)
    assert (got.state, got.exit_code) == (InstanceState.EXITED, exit_code)
    (sas_call,) = [r for r in arm.requests if r.path.endswith("/retrieveBootDiagnosticsData")]
    assert 1 <= int(sas_call.query["sasUriExpirationTimeInMinutes"]) <= 60
    assert arm.blob_requests  # the log was fetched from "storage" ...
    for blob in arm.blob_requests:  # ... with its SAS signature and no bearer token
        assert "authorization" not in blob.headers


def test_powered_off_before_the_log_is_published_is_exited_without_a_code(
        arm: FakeResourceManager, make: Any) -> None:
    adapter = make()
    handle = submit(adapter)
    until(adapter, handle, InstanceState.RUNNING)
    arm.vms[handle.instance_id]["_serial"] = ""  # the blob is not written yet: 404
    arm.set_power(handle.instance_id, "stopped")
    got = adapter.status(handle)
    assert (got.state, got.exit_code) == (InstanceState.EXITED, None)


def test_deallocated_after_the_script_ended_is_still_exited(arm: FakeResourceManager,
                                                           make: Any) -> None:
    adapter = make()
    handle = submit(adapter)
    until(adapter, handle, InstanceState.RUNNING)
    arm.finish(handle.instance_id, 3)
    arm.set_power(handle.instance_id, "deallocated")  # someone deallocated it afterwards
    got = adapter.status(handle)
    assert (got.state, got.exit_code) == (InstanceState.EXITED, 3)


# --------------------------------------------------------------------------- list_managed


def test_list_managed_is_one_paged_list_filtered_by_tag_and_region(
        arm: FakeResourceManager, make: Any) -> None:
    adapter = make()
    arm.page_size = 1  # every VM on its own page: the adapter must follow nextLink
    first = submit(adapter)
    second = submit(adapter, key="gp-job-b-a2")
    elsewhere = submit(adapter, placement(region="northeurope"), key="gp-job-c-a1")
    foreign = submit(adapter, key="gp-job-d-a1")
    arm.vms[foreign.instance_id]["tags"] = {"owner": "someone else"}
    until(adapter, first, InstanceState.RUNNING)
    before = len(arm.requests)
    listed = {m.handle.instance_id: m for m in adapter.list_managed("westeurope")}
    calls = arm.requests[before:]
    assert set(listed) == {first.instance_id, second.instance_id}
    assert elsewhere.instance_id not in listed
    assert all(r.method == "GET" and r.path.endswith("/virtualMachines") for r in calls)
    assert len(calls) == 4 and calls[0].query["$expand"] == "instanceView"  # 4 pages
    assert listed[first.instance_id].handle == first  # the handle submit returned
    assert (listed[first.instance_id].job_id, listed[first.instance_id].attempt) == (
        "JOB_42.alpha", 1)
    assert listed[first.instance_id].status.state is InstanceState.RUNNING
    # the group's listing holds every region: the next region of the pass sends nothing
    before = len(arm.requests)
    assert [m.handle for m in adapter.list_managed("northeurope")] == [elsewhere]
    assert len(arm.requests) == before


def test_list_managed_reports_a_failed_launch(arm: FakeResourceManager, make: Any) -> None:
    adapter = make(operation_timeout_s="0")
    arm.fail_next_vm_lro(Fault("AllocationFailed", "Allocation failed.", after_s=0.1))
    handle = submit(adapter)
    found = wait_for(lambda: [m for m in adapter.list_managed("westeurope")
                              if m.status.state is InstanceState.LAUNCH_FAILED],
                     timeout_s=10, what="the failed launch listed", interval_s=0.05)
    assert found[0].handle.instance_id == handle.instance_id
    assert isinstance(found[0].status.error, CapacityError)


# --------------------------------------------------------------------------- delete


def test_delete_is_confirmed_only_once_everything_is_gone(arm: FakeResourceManager,
                                                         make: Any) -> None:
    arm.delete_s = 0.3
    adapter = make()
    handle = submit(adapter)
    assert arm.count_resources() == 4  # VM, NIC, OS disk, public IP
    assert adapter.delete(handle) is False  # ARM accepted the deletion; it runs
    assert adapter.delete(handle) is False
    deletes = [r for r in arm.requests if r.method == "DELETE"]
    assert len(deletes) == 1  # a VM already Deleting is not deleted again
    delete_until_gone(adapter, handle)
    assert arm.count_resources() == 0
    assert adapter.status(handle).state is InstanceState.MISSING
    assert adapter.delete(handle) is True


def test_delete_removes_the_nic_and_ip_a_refused_vm_left(arm: FakeResourceManager,
                                                        make: Any) -> None:
    adapter = make()
    arm.fail_calls("DELETE", r"/networkInterfaces/", arm_error(500, "InternalServerError",
                                                               "x"), times=1)
    arm.fail_next_vm_put(Fault("SkuNotAvailable", "Not available here.", 409))
    with pytest.raises(CapacityError):
        submit(adapter)
    name = vm_name(KEY, "westeurope")
    assert set(arm.nics) == {f"{name}-nic"} and set(arm.public_ips) == {f"{name}-ip"}
    handle = InstanceHandle(provider="azure", cloud="azure", region="westeurope",
                            instance_id=name)
    assert adapter.delete(handle) is False  # the NIC first: its IP is in use until then
    assert arm.nics == {} and set(arm.public_ips) == {f"{name}-ip"}
    delete_until_gone(adapter, handle)
    assert arm.count_resources() == 0


# --------------------------------------------------------------------------- network races


@pytest.mark.parametrize(("path", "code"), [
    (r"/virtualNetworks/", "AnotherOperationInProgress"),
    (r"/virtualNetworks/", "CanceledAndSupersededDueToAnotherOperation"),
    (r"/networkInterfaces/", "ReferencedResourceNotProvisioned"),
    (r"/networkInterfaces/", "RetryableError"),
])
def test_network_conflicts_are_transient_and_the_retry_succeeds(
        arm: FakeResourceManager, make: Any, path: str, code: str) -> None:
    adapter = make()
    arm.fail_calls("PUT", path, arm_error(409, code, f"{code} on this resource."), times=1)
    with pytest.raises(TransientError) as err:
        submit(adapter)
    assert err.value.code == code
    handle = submit(adapter)  # the queue's retry of the idempotent submit
    until(adapter, handle, InstanceState.RUNNING)


def test_two_workers_first_launches_race_on_the_network(arm: FakeResourceManager,
                                                        make: Any) -> None:
    arm.vnet_s = 0.5
    first, second = make(operation_timeout_s="0.1"), make(operation_timeout_s="0.1")
    with pytest.raises(TransientError, match="still being created"):
        submit(first)  # its VNet PUT was accepted; the network is still Updating
    with pytest.raises(TransientError) as err:
        submit(second, key="gp-other-a1")  # finds the VNet, but its NIC cannot use it yet
    assert err.value.code == "ReferencedResourceNotProvisioned"
    handle = wait_for(lambda: _submitted(first), timeout_s=10, what="the retried submit")
    until(first, handle, InstanceState.RUNNING)
    assert len(arm.puts("virtualNetworks")) == 1


def _submitted(adapter: AzureProvider) -> InstanceHandle | None:
    try:
        return submit(adapter)  # type: ignore[no-any-return]
    except TransientError:
        return None


def test_throttling_is_transient_and_says_when_to_retry(arm: FakeResourceManager,
                                                       make: Any) -> None:
    adapter = make()
    handle = submit(adapter)
    arm.throttle("GET", r"/virtualMachines/[^/]+$", retry_after_s=17)
    with pytest.raises(TransientError, match="retry after 17 s") as err:
        adapter.status(handle)
    assert err.value.code == "TooManyRequests" and err.value.operation == "status"
    assert adapter.status(handle).state in (InstanceState.PENDING, InstanceState.RUNNING)


# --------------------------------------------------------------------------- outbound


def test_nat_gateway_outbound_is_created_once_per_region(arm: FakeResourceManager,
                                                         make: Any) -> None:
    adapter = make(outbound="nat_gateway")
    first = submit(adapter)
    submit(adapter, key="gp-other-a1")
    assert set(arm.nat_gateways) == {"greenplace-westeurope-nat"}
    assert set(arm.public_ips) == {"greenplace-westeurope-nat-ip"}  # none per VM
    subnet = arm.vnets["greenplace-westeurope"]["properties"]["subnets"][0]["properties"]
    assert subnet["natGateway"]["id"] == arm.nat_gateways["greenplace-westeurope-nat"]["id"]
    assert subnet["defaultOutboundAccess"] is False
    assert len(arm.puts("natGateways")) == 1
    delete_until_gone(adapter, first)
    assert "greenplace-westeurope-nat" in arm.nat_gateways  # shared: kept


def test_nat_gateway_is_attached_to_an_existing_subnet(arm: FakeResourceManager,
                                                      make: Any) -> None:
    submit(make())  # the region's network, made with per-VM public IPs
    submit(make(outbound="nat_gateway"), key="gp-other-a1")
    subnet = arm.vnets["greenplace-westeurope"]["properties"]["subnets"][0]["properties"]
    assert subnet["natGateway"]["id"].endswith("/natGateways/greenplace-westeurope-nat")
    assert len(arm.puts("subnets")) == 1


def test_no_outbound_creates_no_address(arm: FakeResourceManager, make: Any) -> None:
    adapter = make(outbound="none")
    handle = submit(adapter)
    assert arm.public_ips == {} and arm.nat_gateways == {}
    nic = arm.nics[f"{handle.instance_id}-nic"]
    assert "publicIPAddress" not in nic["properties"]["ipConfigurations"][0]["properties"]


def test_outbound_settings_are_validated() -> None:
    assert AzureSettings.from_config({}).outbound == "public_ip"
    with pytest.raises(ConfigError, match="public_ip, nat_gateway, none"):
        AzureSettings.from_config({"outbound": "default"})
    with pytest.raises(ConfigError, match="subnet_id"):
        AzureSettings.from_config({"outbound": "nat_gateway", "subnet_id": "/subscriptions/x"})
