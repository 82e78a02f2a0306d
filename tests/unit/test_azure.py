"""The Azure adapter through the real azure-mgmt-compute / azure-mgmt-network clients.

The clients talk HTTPS to tests/fakes/arm_server.py, a local Azure Resource
Manager in ARM's JSON format, with a throwaway CA that the adapter trusts through
its ``ca_bundle`` setting (azure-core refuses bearer tokens over plain http, and
we keep that check on). Nothing in the adapter is mocked.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from greenplace.providers.azure import (
    LOOPBACK_TEST_TOKEN,
    NO_LOGIN_SSH_KEY,
    AzureProvider,
    AzureSettings,
    create,
    vm_name,
)
from greenplace.providers.base import (
    InstanceState,
    JobLaunch,
    Placement,
    Provider,
    idempotency_key,
    startup_script,
)
from greenplace.providers.registry import get_provider
from greenplace.scheduler.exceptions import (
    AuthError,
    CapacityError,
    ConfigError,
    InvalidRequestError,
    ProviderError,
    QuotaError,
    TransientError,
    UnknownNameError,
)
from tests.fakes.arm_server import TOKEN, FakeResourceManager, Fault, arm_error
from tests.fakes.json_server import make_test_ca
from tests.waiting import wait_for

JOB = JobLaunch(job_id="JOB_42.alpha", name="train-bert", run="python train.py --lr 'x'",
                policy="greenest", attempt=1)
KEY = idempotency_key(JOB.job_id, JOB.attempt)
SSH = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 test@example"


class StaticToken:
    """A TokenCredential that hands out one fixed token."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


def placement(size: str = "Standard_NC4as_T4_v3", *, spot: bool = False,
              region: str = "westeurope") -> Placement:
    return Placement(cloud="azure", region=region, instance_type=size, accelerator="T4",
                     accelerator_count=1, spot=spot)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def arm(tls: tuple[Any, Path]) -> Iterator[FakeResourceManager]:
    with FakeResourceManager(tls=tls[0]) as fake:
        yield fake


def settings(arm: FakeResourceManager, ca: Path, **extra: str) -> AzureSettings:
    config = {"subscription_id": arm.subscription, "base_url": arm.base_url,
              "ca_bundle": str(ca), "polling_interval_s": "0.01", "operation_timeout_s": "5",
              "ssh_public_key": SSH}
    config.update(extra)
    return AzureSettings.from_config(config)


@pytest.fixture
def provider(arm: FakeResourceManager, tls: tuple[Any, Path]) -> Iterator[AzureProvider]:
    adapter = AzureProvider(settings(arm, tls[1]), credential=StaticToken())
    yield adapter
    adapter.close()


def submit(adapter: AzureProvider, where: Placement | None = None,
           key: str = KEY) -> Any:
    return adapter.submit(adapter.prepare(JOB, where or placement()), idempotency_key=key)


# --------------------------------------------------------------------------- prepare


def test_prepare_is_pure_and_builds_the_arm_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    adapter = create({})  # no subscription, no credentials, no endpoint: no network possible
    req = adapter.prepare(JOB, placement("Standard_ND96asr_v4", spot=True))
    json.dumps(req.payload)
    name = vm_name(KEY, "westeurope")
    vm = req.payload["virtualMachine"]
    props = vm["body"]["properties"]
    assert vm["name"] == name and len(name) <= 64
    assert props["hardwareProfile"] == {"vmSize": "Standard_ND96asr_v4"}
    assert props["priority"] == "Spot" and props["evictionPolicy"] == "Delete"
    assert props["billingProfile"] == {"maxPrice": -1.0}
    assert base64.b64decode(props["osProfile"]["customData"]).decode() == startup_script(JOB)
    assert props["storageProfile"]["imageReference"] == {
        "publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"}
    assert props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    assert props["networkProfile"]["networkInterfaces"][0] == {
        "id": "/subscriptions/{subscriptionId}/resourceGroups/greenplace/providers/"
              f"Microsoft.Network/networkInterfaces/{name}-nic",
        "properties": {"primary": True, "deleteOption": "Delete"}}
    key_data = props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"]
    assert key_data == NO_LOGIN_SSH_KEY  # its private half does not exist: nobody logs in
    assert vm["body"]["tags"] == req.tags == {
        "greenplace:job-id": "JOB_42.alpha", "greenplace:attempt": "1",
        "greenplace:policy": "greenest", "greenplace:managed": "true"}
    assert props["diagnosticsProfile"] == {"bootDiagnostics": {"enabled": True}}  # managed
    subnet = req.payload["virtualNetwork"]["body"]["properties"]["subnets"][0]["properties"]
    assert subnet["defaultOutboundAccess"] is False  # explicit outbound: a public IP per VM
    assert req.payload["virtualNetwork"]["name"] == "greenplace-westeurope"
    ip = req.payload["publicIp"]
    assert ip["name"] == f"{name}-ip" and ip["body"]["sku"]["name"] == "Standard"
    assert ip["body"]["properties"]["deleteOption"] == "Delete"
    ip_config = req.payload["networkInterface"]["body"]["properties"]["ipConfigurations"][0]
    assert ip_config["properties"]["publicIPAddress"]["id"].endswith(f"/{name}-ip")
    assert req.payload["natGateway"] is None
    # Deterministic, also across adapter objects (another worker).
    assert create({}).prepare(JOB, placement("Standard_ND96asr_v4", spot=True)) == req


def test_on_demand_has_no_spot_fields_and_custom_image(arm: FakeResourceManager,
                                                       tls: tuple[Any, Path]) -> None:
    adapter = AzureProvider(settings(arm, tls[1], image="Canonical:ubuntu-24_04-lts:server:"
                                     "latest", security_type=""), credential=StaticToken())
    props = adapter.prepare(JOB, placement()).payload["virtualMachine"]["body"]["properties"]
    assert "priority" not in props and "billingProfile" not in props
    assert "securityProfile" not in props
    assert props["storageProfile"]["imageReference"]["publisher"] == "Canonical"


def test_settings_validation() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'resource_group'"):
        AzureSettings.from_config({"resource_grup": "x"})
    with pytest.raises(ConfigError, match="only for a local ARM fake"):
        AzureSettings.from_config({"credentials": "test-token",
                                   "base_url": "https://management.azure.com"})
    with pytest.raises(ConfigError, match="publisher:offer:sku:version"):
        AzureSettings.from_config({"image": "ubuntu"})
    with pytest.raises(ConfigError, match="Delete or Deallocate"):
        AzureSettings.from_config({"spot_eviction_policy": "stop"})


def test_settings_come_from_the_environment_when_config_is_silent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "sub-from-azure-env")
    monkeypatch.setenv("GREENPLACE_AZURE_RESOURCE_GROUP", "ml-jobs")
    adapter = create({})
    assert adapter.settings.subscription_id == "sub-from-azure-env"
    assert adapter.settings.resource_group == "ml-jobs"
    assert create({"resource_group": "other"}).settings.resource_group == "other"


def test_registry_builds_a_provider() -> None:
    adapter = get_provider("azure", config={"subscription_id": "s"})
    assert isinstance(adapter, AzureProvider) and isinstance(adapter, Provider)


# --------------------------------------------------------------------------- submit


def test_submit_creates_network_nic_and_vm_with_the_prepared_bodies(
        arm: FakeResourceManager, provider: AzureProvider) -> None:
    req = provider.prepare(JOB, placement())
    handle = provider.submit(req, idempotency_key=KEY)
    name = vm_name(KEY, "westeurope")
    assert handle.instance_id == name and handle.region == "westeurope"
    assert handle.extra == {"resource_group": "greenplace", "subscription_id": arm.subscription,
                            "spot": "false"}
    (vm_put,) = arm.puts("virtualMachines")
    assert vm_put.body == req.payload["virtualMachine"]["body"]  # exactly what prepare() said
    assert vm_put.query["api-version"]
    (nic_put,) = arm.puts("networkInterfaces")
    assert nic_put.body == req.payload["networkInterface"]["body"]
    assert len(arm.puts("virtualNetworks")) == 1
    (ip_put,) = arm.puts("publicIPAddresses")
    assert ip_put.body == req.payload["publicIp"]["body"]
    assert any("/operations/" in r.path for r in arm.requests)  # it followed the VM's LRO
    assert arm.vms[name]["properties"]["provisioningState"] == "Succeeded"
    assert f"{name}-nic" in arm.nics and f"{name}-osdisk" in arm.disks
    assert f"{name}-ip" in arm.public_ips


def test_the_key_passed_to_submit_names_the_vm(arm: FakeResourceManager,
                                               provider: AzureProvider) -> None:
    handle = provider.submit(provider.prepare(JOB, placement()), idempotency_key="gp-x-a9")
    name = vm_name("gp-x-a9", "westeurope")
    assert handle.instance_id == name and set(arm.vms) == {name}
    assert set(arm.nics) == {f"{name}-nic"} and arm.disks == {f"{name}-osdisk"}
    assert set(arm.public_ips) == {f"{name}-ip"}
    assert arm.vms[name]["properties"]["osProfile"]["computerName"] == name


def test_same_key_twice_creates_one_vm(arm: FakeResourceManager, tls: tuple[Any, Path],
                                       provider: AzureProvider) -> None:
    first = submit(provider)
    again = AzureProvider(settings(arm, tls[1]), credential=StaticToken())  # a fresh worker
    second = submit(again)
    again.close()
    assert second == first
    assert len(arm.vms) == 1 and len(arm.puts("virtualMachines")) == 1
    assert len(arm.puts("networkInterfaces")) == 1


def test_the_region_network_is_created_once(arm: FakeResourceManager,
                                            provider: AzureProvider) -> None:
    submit(provider)
    submit(provider, key="gp-other-a1")
    assert len(arm.vms) == 2 and len(arm.puts("virtualNetworks")) == 1


def test_existing_vnet_without_the_subnet_gets_it(arm: FakeResourceManager,
                                                  provider: AzureProvider) -> None:
    vnet_id = (f"/subscriptions/{arm.subscription}/resourceGroups/greenplace/providers/"
               "Microsoft.Network/virtualNetworks/greenplace-westeurope")
    arm.vnets["greenplace-westeurope"] = {
        "name": "greenplace-westeurope", "id": vnet_id, "location": "westeurope",
        "type": "Microsoft.Network/virtualNetworks", "tags": {},
        "properties": {"addressSpace": {"addressPrefixes": ["10.64.0.0/16"]}, "subnets": [],
                       "provisioningState": "Succeeded"}}
    submit(provider)
    assert [r.path.rsplit("/", 1)[1] for r in arm.puts("subnets")] == ["jobs"]
    assert arm.puts("virtualNetworks") == []


def test_configured_subnet_skips_the_network(arm: FakeResourceManager, tls: tuple[Any, Path],
                                             provider: AzureProvider) -> None:
    submit(provider)  # creates greenplace-westeurope/jobs
    subnet = arm.vnets["greenplace-westeurope"]["properties"]["subnets"][0]["id"]
    adapter = AzureProvider(settings(arm, tls[1], subnet_id=subnet), credential=StaticToken())
    req = adapter.prepare(JOB, placement())
    assert req.payload["virtualNetwork"] is None
    adapter.submit(req, idempotency_key="gp-other-a1")
    adapter.close()
    assert len(arm.vms) == 2
    assert not any(r.path.endswith("/virtualNetworks/greenplace-westeurope")
                   for r in arm.requests[-6:])


def test_lro_ending_in_allocation_failure_is_capacity_and_cleans_up(
        arm: FakeResourceManager, provider: AzureProvider) -> None:
    arm.fail_next_vm_lro(Fault("AllocationFailed", "Allocation failed. We do not have "
                               "sufficient capacity for the requested VM size in this region."))
    with pytest.raises(CapacityError) as err:
        submit(provider)
    assert err.value.code == "AllocationFailed" and err.value.provider == "azure"
    assert err.value.operation == "submit"
    assert "virtualMachines.createOrUpdate: Allocation failed" in str(err.value)
    assert "sufficient capacity" in str(err.value) and "To fix:" in str(err.value)
    # The failed VM's deletion is started: it goes with its NIC, public IP and OS disk.
    assert arm.vms[vm_name(KEY, "westeurope")]["properties"]["provisioningState"] == "Deleting"
    wait_for(lambda: arm.count_resources() == 0, timeout_s=10, what="the failed VM deleted")


def test_redelivery_after_a_failed_create_repeats_the_failure(
        arm: FakeResourceManager, provider: AzureProvider) -> None:
    arm.fail_calls("DELETE", r"/virtualMachines/", arm_error(500, "InternalServerError", "x"))
    arm.fail_next_vm_lro(Fault("ZonalAllocationFailed", "Allocation failed in zone 1."))
    with pytest.raises(CapacityError):
        submit(provider)
    assert arm.vms[vm_name(KEY, "westeurope")]["properties"]["provisioningState"] == "Failed"
    with pytest.raises(CapacityError) as err:
        submit(provider)  # finds the Failed VM: same outcome, no second PUT
    assert err.value.code == "ZonalAllocationFailed"
    assert len(arm.puts("virtualMachines")) == 1


@pytest.mark.parametrize(("code", "kind"), [
    ("OverconstrainedAllocationRequest", CapacityError),
    ("OverconstrainedZonalAllocationRequest", CapacityError),
    ("QuotaExceeded", QuotaError),
    ("InternalExecutionError", TransientError),
    ("OSProvisioningClientError", InvalidRequestError),
])
def test_lro_failure_codes(arm: FakeResourceManager, provider: AzureProvider, code: str,
                           kind: type[ProviderError]) -> None:
    arm.fail_next_vm_lro(Fault(code, f"{code} happened"))
    with pytest.raises(kind) as err:
        submit(provider)
    assert err.value.code == code and f"{code} happened" in str(err.value)


@pytest.mark.parametrize(("status", "code", "message", "kind"), [
    (409, "SkuNotAvailable", "The requested VM size Standard_NC4as_T4_v3 is currently not "
     "available in location 'westeurope'.", CapacityError),
    (409, "OperationNotAllowed", "Operation could not be completed as it results in exceeding "
     "approved standardNCASv3_T4 Family Cores quota. Location: westeurope, Current Limit: 0",
     QuotaError),
    (409, "OperationNotAllowed", "The VM size is not supported for Spot priority.",
     InvalidRequestError),
    (403, "AuthorizationFailed", "The client does not have authorization to perform action "
     "'Microsoft.Compute/virtualMachines/write'.", AuthError),
    (429, "TooManyRequests", "Too many requests.", TransientError),
    (500, "InternalServerError", "An internal error occurred.", TransientError),
    (503, "ServiceUnavailable", "Service unavailable.", TransientError),
    (400, "InvalidParameter", "The value of parameter imageReference is invalid.",
     InvalidRequestError),
])
def test_synchronous_put_errors_map_by_error_code(
        arm: FakeResourceManager, provider: AzureProvider, status: int, code: str,
        message: str, kind: type[ProviderError]) -> None:
    arm.fail_next_vm_put(Fault(code, message, status))
    with pytest.raises(kind) as err:
        submit(provider)
    assert err.value.code == code and message.split(".")[0] in str(err.value)
    assert err.value.operation == "submit"
    assert len(arm.puts("virtualMachines")) == 1  # SDK retries off
    assert arm.vms == {} and arm.nics == {}  # the NIC made for it is removed
    assert arm.public_ips == {}  # and its public IP


def test_nested_detail_code_decides(arm: FakeResourceManager, provider: AzureProvider) -> None:
    arm.fail_calls("PUT", r"/virtualMachines/", (409, {"error": {
        "code": "Conflict", "message": "The operation failed.",
        "details": [{"code": "SkuNotAvailable", "message": "Capacity restrictions: "
                     "Standard_NC4as_T4_v3 in westeurope."}]}}, {}))
    with pytest.raises(CapacityError) as err:
        submit(provider)
    assert err.value.code == "SkuNotAvailable" and "Capacity restrictions" in str(err.value)


def test_refused_token_is_auth_error_without_the_token(arm: FakeResourceManager,
                                                       tls: tuple[Any, Path]) -> None:
    adapter = AzureProvider(settings(arm, tls[1]), credential=StaticToken("expired.jwt.token"))
    with pytest.raises(AuthError) as err:
        submit(adapter)
    adapter.close()
    assert err.value.code == "InvalidAuthenticationToken"
    assert err.value.operation == "submit" and "virtualMachines.get:" in str(err.value)
    assert "expired.jwt.token" not in str(err.value)


def test_missing_resource_group_is_invalid(arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    adapter = AzureProvider(settings(arm, tls[1], resource_group="nope"),
                            credential=StaticToken())
    with pytest.raises(InvalidRequestError, match="az group create") as err:
        submit(adapter)
    adapter.close()
    assert err.value.code == "ResourceGroupNotFound"


def test_tls_is_verified(arm: FakeResourceManager, tls: tuple[Any, Path],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    config = {"subscription_id": arm.subscription, "base_url": arm.base_url,
              "ssh_public_key": SSH}
    adapter = AzureProvider(AzureSettings.from_config(config), credential=StaticToken())
    with pytest.raises(TransientError, match="could not be reached"):
        submit(adapter)  # the test CA is not trusted without ca_bundle
    adapter.close()


def test_config_only_worker_setup_reaches_the_fake(arm: FakeResourceManager,
                                                   tls: tuple[Any, Path]) -> None:
    """What a separate worker process does: everything from the str -> str config."""
    arm.tokens.add(LOOPBACK_TEST_TOKEN)
    adapter = get_provider("azure", config={
        "subscription_id": arm.subscription, "base_url": arm.base_url,
        "ca_bundle": str(tls[1]), "credentials": "test-token", "polling_interval_s": "0.01"})
    assert isinstance(adapter, AzureProvider)
    handle = submit(adapter)
    assert adapter.check_credentials().endswith("as test token (local fake endpoint)")
    adapter.close()
    assert handle.instance_id in arm.vms


# --------------------------------------------------------------------------- status


@pytest.mark.parametrize(("power", "state"), [
    ("starting", InstanceState.PENDING),
    ("running", InstanceState.RUNNING),
    ("stopping", InstanceState.RUNNING),
    ("stopped", InstanceState.EXITED),  # shut down from inside, no exit code in the log yet
    ("deallocated", InstanceState.TERMINATED),
])
def test_status_maps_power_states(arm: FakeResourceManager, provider: AzureProvider,
                                  power: str, state: InstanceState) -> None:
    handle = submit(provider)
    arm.set_power(handle.instance_id, power)
    got = provider.status(handle)
    assert got.state == state and f"power {power}" in got.detail
    assert got.exit_code is None


@pytest.mark.parametrize("policy", ["Delete", "Deallocate"])
def test_spot_eviction_is_preemption(arm: FakeResourceManager, tls: tuple[Any, Path],
                                     policy: str) -> None:
    adapter = AzureProvider(settings(arm, tls[1], spot_eviction_policy=policy),
                            credential=StaticToken())
    handle = submit(adapter, placement(spot=True))
    assert handle.extra["spot"] == "true"
    assert arm.vms[handle.instance_id]["properties"]["evictionPolicy"] == policy
    assert adapter.status(handle).state == InstanceState.RUNNING
    arm.evict(handle.instance_id)
    got = adapter.status(handle)
    adapter.close()
    assert got.state == InstanceState.PREEMPTED


def test_status_of_a_vanished_on_demand_vm_is_missing(arm: FakeResourceManager,
                                                      provider: AzureProvider) -> None:
    handle = submit(provider)
    arm.vms.clear()
    assert provider.status(handle).state == InstanceState.MISSING


def test_slow_create_returns_a_pending_handle(arm: FakeResourceManager,
                                              tls: tuple[Any, Path]) -> None:
    adapter = AzureProvider(settings(arm, tls[1], operation_timeout_s="0.3"),
                            credential=StaticToken())
    arm.hang_operations = True
    arm.op_polls = 0
    handle = submit(adapter)  # returns at the deadline, the creation still running
    got = adapter.status(handle)
    adapter.close()
    assert got.state == InstanceState.PENDING and "Creating" in got.detail


def test_check_credentials_reads_the_principal_not_the_token(
        arm: FakeResourceManager, provider: AzureProvider) -> None:
    who = provider.check_credentials()
    assert who == (f"subscription {arm.subscription}, resource group greenplace as "
                   "11111111-2222-3333-4444-555555555555")
    assert TOKEN not in who
    arm.fail_calls("GET", r"/virtualMachines$", arm_error(
        403, "AuthorizationFailed", "The client does not have authorization to perform action "
        "'Microsoft.Compute/virtualMachines/read'."))
    with pytest.raises(AuthError, match="virtualMachines/read") as err:
        provider.check_credentials()
    assert err.value.operation == "check_credentials"


# --------------------------------------------------------------------------- SDK floors


@pytest.mark.parametrize("distribution", ["azure-mgmt-compute", "azure-mgmt-network"])
def test_the_azure_extra_allows_only_the_sdk_generation_under_test(distribution: str) -> None:
    """The adapter reads SDK models, whose shapes change between major versions (the
    msrest-generation models flatten ``as_dict()`` keys, the current ones keep ARM's): the
    extra's floor is the major version this suite runs against, so what pyproject allows
    is what is tested."""
    import importlib.metadata
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["azure"]
    (floor,) = [r.split(">=")[1] for r in extra if r.startswith(f"{distribution}>=")]
    installed = importlib.metadata.version(distribution)
    assert floor.split(".")[0] == installed.split(".")[0], (
        f"{distribution} {installed} is installed but pyproject's azure extra allows "
        f">={floor}: test with the floor's major version, or raise the floor to {installed}")
