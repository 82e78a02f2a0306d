"""The GCP adapter through the real google-cloud-compute client (REST transport).

The client talks HTTP to tests/fakes/gce_server.py, a local server that answers in
the Compute Engine API's JSON format; nothing in the adapter is mocked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from greenplace.providers.base import (
    InstanceState,
    JobLaunch,
    Placement,
    Provider,
    idempotency_key,
    job_tags,
    startup_script,
)
from greenplace.providers.gcp import (
    GcpProvider,
    GcpSettings,
    _for_zone,
    create,
    instance_name,
    zone_request_id,
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
from tests.fakes.gce_server import FakeComputeEngine, InsertFault, http_error

JOB = JobLaunch(job_id="JOB_42.alpha", name="train-bert", run="python train.py --lr 'x'",
                policy="greenest", attempt=1)
KEY = idempotency_key(JOB.job_id, JOB.attempt)


def placement(instance_type: str = "a2-highgpu-1g", accelerator: str = "A100", count: int = 1,
              *, spot: bool = False, region: str = "us-central1") -> Placement:
    return Placement(cloud="gcp", region=region, instance_type=instance_type,
                     accelerator=accelerator, accelerator_count=count, spot=spot)


@pytest.fixture
def gce() -> Iterator[FakeComputeEngine]:
    with FakeComputeEngine() as fake:
        yield fake


def make(gce: FakeComputeEngine, **extra: str) -> GcpProvider:
    config = {"project": gce.project, "api_endpoint": gce.base_url,
              "credentials": "anonymous", "operation_timeout_s": "5"}
    config.update(extra)
    return create(config)


@pytest.fixture
def provider(gce: FakeComputeEngine) -> Iterator[GcpProvider]:
    adapter = make(gce)
    yield adapter
    adapter.close()


def inserts(gce: FakeComputeEngine) -> list:
    return [r for r in gce.requests if r.method == "POST" and r.path.endswith("/instances")]


# --------------------------------------------------------------------------- prepare


def test_prepare_is_pure_and_builds_the_instance_body() -> None:
    # An endpoint nothing listens on: any network call would fail.
    adapter = create({"project": "p", "zones": "us-central1-b,us-central1-a,europe-north1-a",
                      "api_endpoint": "http://127.0.0.1:9", "credentials": "anonymous"})
    req = adapter.prepare(JOB, placement("n1-standard-4", "T4", 2, spot=True))
    json.dumps(req.payload)  # JSON-serialisable
    body = req.payload["instanceResource"]
    assert req.payload["zones"] == ["us-central1-b", "us-central1-a"]
    assert req.payload["requestIds"] == {z: zone_request_id(KEY, z)
                                         for z in ("us-central1-b", "us-central1-a")}
    assert body["name"] == instance_name(KEY)
    assert body["machineType"] == "zones/{zone}/machineTypes/n1-standard-4"
    assert body["guestAccelerators"] == [{
        "acceleratorType": "zones/{zone}/acceleratorTypes/nvidia-tesla-t4",
        "acceleratorCount": 2}]
    assert body["scheduling"] == {"onHostMaintenance": "TERMINATE", "provisioningModel": "SPOT",
                                  "instanceTerminationAction": "DELETE",
                                  "automaticRestart": False}
    assert "nicType" not in body["networkInterfaces"][0]  # N1: VirtIO, the default
    assert body["labels"] == {"greenplace-job-id": "job_42_alpha", "greenplace-attempt": "1",
                              "greenplace-policy": "greenest", "greenplace-managed": "true"}
    items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert items["startup-script"] == startup_script(JOB) == req.startup_script
    assert items["greenplace-job-id"] == "JOB_42.alpha"  # exact value, unfolded
    assert body["disks"][0]["initializeParams"]["sourceImage"] == (
        "projects/deeplearning-platform-release/global/images/family/"
        "common-cu129-ubuntu-2404-nvidia-580")
    assert req.tags == job_tags(JOB)  # the logical tags; the body carries their GCE labels
    assert req.spot is True and req.region == "us-central1"
    adapter.close()


def test_prepare_bundled_gpu_machine_has_no_guest_accelerators() -> None:
    adapter = create({"project": "p", "image_family": "pytorch-latest-gpu"})
    body = adapter.prepare(JOB, placement("a3-highgpu-8g", "H100", 8)).payload[
        "instanceResource"]
    assert "guestAccelerators" not in body
    assert body["scheduling"] == {"onHostMaintenance": "TERMINATE",
                                  "provisioningModel": "STANDARD", "automaticRestart": False}
    assert body["disks"][0]["initializeParams"]["sourceImage"].endswith("/pytorch-latest-gpu")


@pytest.mark.parametrize(("instance_type", "nic_type", "disk_type"), [
    ("n1-standard-4", None, "pd-balanced"),
    ("a2-highgpu-1g", None, "pd-balanced"),
    ("g2-standard-4", None, "pd-balanced"),
    ("a3-highgpu-8g", "GVNIC", "pd-balanced"),
    ("a3-megagpu-8g", "GVNIC", "pd-balanced"),
    ("a3-ultragpu-8g", "GVNIC", "hyperdisk-balanced"),
    ("a4-highgpu-8g", "GVNIC", "hyperdisk-balanced"),
])
def test_family_defaults_for_nic_disk_scheduling_and_identity(
        instance_type: str, nic_type: str | None, disk_type: str) -> None:
    adapter = create({"project": "p"})
    body = adapter.prepare(JOB, placement(instance_type, "T4", 1)).payload["instanceResource"]
    assert body["networkInterfaces"][0].get("nicType") == nic_type
    assert body["disks"][0]["initializeParams"]["diskType"] == (
        f"zones/{{zone}}/diskTypes/{disk_type}")
    assert body["disks"][0]["autoDelete"] is True  # delete() takes the boot disk along
    assert body["scheduling"]["automaticRestart"] is False  # a batch job never reruns
    assert body["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert body["serviceAccounts"] == [{
        "email": "default", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]


def test_service_account_and_boot_disk_settings() -> None:
    ultra = placement("a3-ultragpu-8g", "H200", 8)
    named = create({"project": "p", "service_account": "runner@p.iam.gserviceaccount.com"})
    body = named.prepare(JOB, ultra).payload["instanceResource"]
    assert body["serviceAccounts"][0]["email"] == "runner@p.iam.gserviceaccount.com"
    bare = create({"project": "p", "service_account": "none"})
    assert "serviceAccounts" not in bare.prepare(JOB, ultra).payload["instanceResource"]
    ssd = create({"project": "p", "boot_disk_type": "pd-ssd"})
    assert ssd.prepare(JOB, placement()).payload["instanceResource"]["disks"][0][
        "initializeParams"]["diskType"].endswith("/pd-ssd")
    with pytest.raises(InvalidRequestError, match="boots only from Hyperdisk") as err:
        ssd.prepare(JOB, ultra)
    assert err.value.code == "UNSUPPORTED_DISK_TYPE" and "To fix:" in str(err.value)
    extreme = create({"project": "p", "boot_disk_type": "hyperdisk-extreme"})
    assert extreme.prepare(JOB, ultra).payload["instanceResource"]["disks"][0][
        "initializeParams"]["diskType"].endswith("/hyperdisk-extreme")


@pytest.mark.parametrize("instance_type", ["a3-highgpu-8g", "a3-ultragpu-8g", "a4-highgpu-8g"])
def test_gvnic_and_hyperdisk_families_launch_where_gce_requires_them(
        gce: FakeComputeEngine, provider: GcpProvider, instance_type: str) -> None:
    request = provider.prepare(JOB, placement(instance_type, "H100", 8))
    handle = provider.submit(request, idempotency_key=KEY)
    assert gce.instances[(handle.zone or "", handle.instance_id)][
        "networkInterfaces"][0]["nicType"] == "GVNIC"
    # Without the family default, the fake refuses the insert as GCE does.
    del request.payload["instanceResource"]["networkInterfaces"][0]["nicType"]
    with pytest.raises(InvalidRequestError, match="requires nicType GVNIC"):
        provider.submit(request, idempotency_key="gp-other-a1")


def test_hyperdisk_only_family_refuses_a_persistent_disk_boot(
        gce: FakeComputeEngine, provider: GcpProvider) -> None:
    request = provider.prepare(JOB, placement("a4-highgpu-8g", "B200", 8))
    request.payload["instanceResource"]["disks"][0]["initializeParams"]["diskType"] = (
        "zones/{zone}/diskTypes/pd-balanced")
    with pytest.raises(InvalidRequestError, match="cannot be used by"):
        provider.submit(request, idempotency_key=KEY)


def test_prepare_rejects_tpus_and_gpus_a_family_cannot_take() -> None:
    adapter = create({"project": "p"})
    with pytest.raises(InvalidRequestError, match="Cloud TPU") as tpu:
        adapter.prepare(JOB, placement("v5litepod-8", "TPU-v5e", 8))
    assert tpu.value.code == "TPU_NOT_SUPPORTED" and "To fix:" in str(tpu.value)
    with pytest.raises(InvalidRequestError, match="cannot be attached"):
        adapter.prepare(JOB, placement("n1-standard-8", "H100", 1))
    with pytest.raises(InvalidRequestError, match="takes no GPUs"):
        adapter.prepare(JOB, placement("e2-standard-8", "T4", 1))


def test_settings_reject_unknown_keys_and_unsafe_anonymous_credentials() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'zones'"):
        GcpSettings.from_config({"zone": "us-central1-a"})
    with pytest.raises(ConfigError, match="only for a local Compute Engine fake"):
        GcpSettings.from_config({"credentials": "anonymous",
                                 "api_endpoint": "https://compute.googleapis.com"})
    with pytest.raises(ConfigError, match="positive integer"):
        GcpSettings.from_config({"boot_disk_gb": "lots"})


def test_settings_come_from_the_environment_when_config_is_silent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENPLACE_GCP_SETTINGS", '{"zones": "us-central1-f", "project": "a"}')
    monkeypatch.setenv("GREENPLACE_GCP_PROJECT", "b")
    adapter = create({"image_family": "pytorch-latest-gpu"})
    assert adapter.settings.zones == ("us-central1-f",)
    assert adapter.settings.project == "b"  # the plain variable wins over the JSON object
    assert create({"project": "c"}).settings.project == "c"  # config wins over both
    monkeypatch.setenv("GREENPLACE_GCP_SETTINGS", "[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        create({})


def test_registry_builds_a_provider() -> None:
    adapter = get_provider("gcp", config={"project": "p"})
    assert isinstance(adapter, GcpProvider) and isinstance(adapter, Provider)


# --------------------------------------------------------------------------- submit


def test_submit_sends_exactly_the_prepared_body(gce: FakeComputeEngine,
                                               provider: GcpProvider) -> None:
    req = provider.prepare(JOB, placement("n1-standard-4", "T4", 1))
    handle = provider.submit(req, idempotency_key=KEY)
    assert handle.zone == "us-central1-a"  # zones listed from the API, in order
    assert handle.instance_id == instance_name(KEY)
    assert handle.extra["project"] == "test-project" and handle.extra["spot"] == "false"
    (call,) = inserts(gce)
    assert call.body == _for_zone(req.payload["instanceResource"], "us-central1-a")
    assert call.query["requestId"] == zone_request_id(KEY, "us-central1-a")
    inst = gce.instances[("us-central1-a", handle.instance_id)]
    assert inst["labels"]["greenplace-job-id"] == "job_42_alpha"
    assert inst["guestAccelerators"][0]["acceleratorType"].endswith(
        "/zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4")


def test_the_key_passed_to_submit_names_the_instance(gce: FakeComputeEngine,
                                                    provider: GcpProvider) -> None:
    handle = provider.submit(provider.prepare(JOB, placement()), idempotency_key="gp-x-a9")
    assert handle.instance_id == instance_name("gp-x-a9")
    assert inserts(gce)[0].query["requestId"] == zone_request_id("gp-x-a9", "us-central1-a")


def test_same_key_twice_launches_one_instance(gce: FakeComputeEngine,
                                              provider: GcpProvider) -> None:
    req = provider.prepare(JOB, placement())
    first = provider.submit(req, idempotency_key=KEY)
    again = make(gce)  # a fresh worker process: no cached state
    second = again.submit(again.prepare(JOB, placement()), idempotency_key=KEY)
    again.close()
    assert second == first
    assert len(gce.instances_named(first.instance_id)) == 1
    assert len(inserts(gce)) == 1  # the second delivery found it by name


def test_request_id_dedupes_an_insert_not_yet_visible(gce: FakeComputeEngine,
                                                      provider: GcpProvider) -> None:
    """A redelivery racing an accepted insert gets GCE's original operation back."""
    req = provider.prepare(JOB, placement())
    first = provider.submit(req, idempotency_key=KEY)
    hidden = gce.instances.pop(("us-central1-a", first.instance_id))  # not visible to GET yet
    second = provider.submit(req, idempotency_key=KEY)
    assert second.zone == first.zone and second.instance_id == first.instance_id
    assert len(inserts(gce)) == 2 and gce.instances_named(first.instance_id) == []
    assert inserts(gce)[0].query["requestId"] == inserts(gce)[1].query["requestId"]
    gce.instances[("us-central1-a", first.instance_id)] = hidden


def test_fake_honours_request_id_through_the_real_client(gce: FakeComputeEngine) -> None:
    client = compute_v1.InstancesClient(credentials=AnonymousCredentials(), transport="rest",
                                        client_options={"api_endpoint": gce.base_url})
    body = _for_zone(create({"project": "p"}).prepare(JOB, placement()).payload[
        "instanceResource"], "us-central1-a")
    ops = [client.insert_unary(request=compute_v1.InsertInstanceRequest(
        project=gce.project, zone="us-central1-a",
        instance_resource=compute_v1.Instance.from_json(json.dumps(body)),
        request_id="8d0c1c2e-7a55-4d4f-9a3c-1f1d7e0b9a10")) for _ in range(2)]
    client.transport.close()
    assert ops[0].name == ops[1].name
    assert len(gce.instances_named(body["name"])) == 1


def test_zone_stockout_fails_over_to_the_next_zone(gce: FakeComputeEngine,
                                                   provider: GcpProvider) -> None:
    gce.fail_next_insert("us-central1-a", InsertFault(
        op_error_code="ZONE_RESOURCE_POOL_EXHAUSTED"))
    gce.fail_next_insert("us-central1-b", InsertFault(
        op_error_code="ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"))
    handle = provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    assert handle.zone == "us-central1-c"
    assert [c.path.split("/")[6] for c in inserts(gce)] == [
        "us-central1-a", "us-central1-b", "us-central1-c"]
    assert len({c.query["requestId"] for c in inserts(gce)}) == 3
    # A redelivery finds the instance in zone c; no new insert anywhere.
    assert provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY) == handle
    assert len(inserts(gce)) == 3


def test_zone_that_lacks_the_machine_type_is_skipped(gce: FakeComputeEngine,
                                                     provider: GcpProvider) -> None:
    gce.missing_machine_types["us-central1-a"] = {"a2-highgpu-1g"}
    handle = provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    assert handle.zone == "us-central1-b"


def test_synchronous_503_stockout_is_capacity(gce: FakeComputeEngine,
                                              provider: GcpProvider) -> None:
    gce.fail_next_insert("us-central1-a", InsertFault(
        http_status=503, reason="backendError",
        message="ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: The zone 'projects/test-project/"
                "zones/us-central1-a' does not have enough resources available to fulfill the "
                "request. '(resource type:compute)'."))
    assert provider.submit(provider.prepare(JOB, placement()),
                           idempotency_key=KEY).zone == "us-central1-b"


def test_stockout_told_only_in_words_is_capacity(gce: FakeComputeEngine,
                                                 provider: GcpProvider) -> None:
    gce.fail_next_insert("us-central1-a", InsertFault(
        http_status=503, reason="backendError",
        message="The zone 'projects/test-project/zones/us-central1-a' does not have enough "
                "resources available to fulfill the request. 'NULL:0 (state:STOCKOUT)'."))
    gce.fail_next_insert("us-central1-b", InsertFault(
        op_error_code="UNKNOWN_STOCK_STATE", message="A n1-standard-4 VM instance with 1 "
        "nvidia-tesla-t4 accelerator(s) is currently unavailable in the us-central1-b zone."))
    handle = provider.submit(provider.prepare(JOB, placement("n1-standard-4", "T4")),
                             idempotency_key=KEY)
    assert handle.zone == "us-central1-c"


def test_every_zone_exhausted_is_a_capacity_error(gce: FakeComputeEngine,
                                                  provider: GcpProvider) -> None:
    for zone in ("us-central1-a", "us-central1-b", "us-central1-c"):
        gce.fail_next_insert(zone, InsertFault(op_error_code="ZONE_RESOURCE_POOL_EXHAUSTED"))
    with pytest.raises(CapacityError) as err:
        provider.submit(provider.prepare(JOB, placement(spot=True)), idempotency_key=KEY)
    assert err.value.provider == "gcp" and err.value.operation == "submit"
    assert err.value.code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert "us-central1-a" in str(err.value) and "us-central1-c" in str(err.value)
    assert "To fix:" in str(err.value)
    assert gce.instances == {}


def test_operation_quota_error_is_quota_and_does_not_try_other_zones(
        gce: FakeComputeEngine, provider: GcpProvider) -> None:
    gce.fail_next_insert("us-central1-a", InsertFault(
        op_error_code="QUOTA_EXCEEDED", op_http_status=403,
        message="Quota 'NVIDIA_A100_GPUS' exceeded.  Limit: 0.0 in region us-central1."))
    with pytest.raises(QuotaError) as err:
        provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    assert err.value.code == "QUOTA_EXCEEDED" and "NVIDIA_A100_GPUS" in str(err.value)
    assert len(inserts(gce)) == 1


@pytest.mark.parametrize(("status", "reason", "kind", "code"), [
    (403, "quotaExceeded", QuotaError, "quotaExceeded"),
    (403, "forbidden", AuthError, "forbidden"),
    (403, "rateLimitExceeded", TransientError, "rateLimitExceeded"),
    (503, "backendError", TransientError, "backendError"),
    (500, "internalError", TransientError, "internalError"),
    (400, "invalid", InvalidRequestError, "invalid"),
])
def test_http_errors_map_to_the_error_tree(gce: FakeComputeEngine, provider: GcpProvider,
                                           status: int, reason: str, kind: type[ProviderError],
                                           code: str) -> None:
    gce.fail_calls("POST", r"/instances$", http_error(status, reason, f"{reason} happened"))
    with pytest.raises(kind) as err:
        provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    assert err.value.code == code
    assert err.value.provider == "gcp" and err.value.operation == "submit"
    assert f"instances.insert: {reason} happened" in str(err.value) and "To fix:" in str(err.value)
    assert len(inserts(gce)) == 1  # SDK retries are off: fail over or back off at once


def test_401_is_auth_error(gce: FakeComputeEngine, provider: GcpProvider) -> None:
    # google-auth answers a 401 by refreshing the credentials and retrying once; anonymous
    # credentials cannot refresh, real ones would retry and then see the 401 again.
    gce.fail_calls("POST", r"/instances$", http_error(401, "authError", "Invalid Credentials"))
    with pytest.raises(AuthError) as err:
        provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    assert err.value.provider == "gcp" and "To fix:" in str(err.value)


def test_permission_denied_on_lookup_is_auth_error(gce: FakeComputeEngine,
                                                   provider: GcpProvider) -> None:
    gce.fail_calls("GET", r"/instances/", http_error(
        403, "forbidden", "Required 'compute.instances.get' permission for "
        "'projects/test-project/zones/us-central1-a/instances/x'"))
    with pytest.raises(AuthError, match="compute.instances.get") as err:
        provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    assert err.value.operation == "submit" and "instances.get:" in str(err.value)
    assert "roles/compute.instanceAdmin.v1" in str(err.value)


def test_unreachable_endpoint_is_transient() -> None:
    adapter = create({"project": "p", "zones": "us-central1-a",
                      "api_endpoint": "http://127.0.0.1:9", "credentials": "anonymous"})
    with pytest.raises(TransientError):
        adapter.submit(adapter.prepare(JOB, placement()), idempotency_key=KEY)
    adapter.close()


def test_zone_discovery_skips_down_zones_and_other_regions(gce: FakeComputeEngine,
                                                           provider: GcpProvider) -> None:
    gce.zone_status["us-central1-a"] = "DOWN"
    handle = provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    assert handle.zone == "us-central1-b"
    eu = provider.submit(provider.prepare(JOB, placement(region="europe-north1")),
                         idempotency_key="gp-other-a1")
    assert eu.zone == "europe-north1-a"


def test_unknown_region_is_invalid(gce: FakeComputeEngine, provider: GcpProvider) -> None:
    with pytest.raises(InvalidRequestError, match="no UP zone"):
        provider.submit(provider.prepare(JOB, placement(region="mars-north1")),
                        idempotency_key=KEY)


def test_wrong_provider_request_is_rejected(provider: GcpProvider) -> None:
    with pytest.raises(InvalidRequestError, match="aws placement"):
        provider.prepare(JOB, Placement(cloud="aws", region="us-east-1",
                                        instance_type="p4d.24xlarge", accelerator="A100",
                                        accelerator_count=8, spot=False))


# --------------------------------------------------------------------------- status


@pytest.mark.parametrize(("gce_status", "state"), [
    ("PROVISIONING", InstanceState.PENDING),
    ("STAGING", InstanceState.PENDING),
    ("RUNNING", InstanceState.RUNNING),
    ("STOPPING", InstanceState.RUNNING),
    ("SUSPENDED", InstanceState.TERMINATED),
])
def test_status_maps_gce_states(gce: FakeComputeEngine, provider: GcpProvider,
                                gce_status: str, state: InstanceState) -> None:
    gce.boot_seconds = 60  # nothing moves on by itself during the test
    handle = provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    gce.set_status(handle.zone or "", handle.instance_id, gce_status)
    got = provider.status(handle)
    assert got.state == state and gce_status in got.detail


def test_status_after_insert_is_staging(gce: FakeComputeEngine, provider: GcpProvider) -> None:
    gce.boot_seconds = 60
    handle = provider.submit(provider.prepare(JOB, placement()), idempotency_key=KEY)
    assert provider.status(handle).state == InstanceState.PENDING


@pytest.mark.parametrize("action", ["DELETE", "STOP"])
def test_spot_preemption_is_detected(gce: FakeComputeEngine, action: str) -> None:
    adapter = make(gce, spot_termination_action=action)
    handle = adapter.submit(adapter.prepare(JOB, placement(spot=True)), idempotency_key=KEY)
    assert handle.extra["spot"] == "true"
    gce.set_status(handle.zone or "", handle.instance_id, "RUNNING")
    assert adapter.status(handle).state == InstanceState.RUNNING
    gce.preempt(handle.zone or "", handle.instance_id)
    got = adapter.status(handle)
    adapter.close()
    assert got.state == InstanceState.PREEMPTED and "preempted" in got.detail


def test_check_credentials_names_identity_not_secrets(gce: FakeComputeEngine,
                                                      provider: GcpProvider) -> None:
    assert provider.check_credentials() == (
        "project test-project as anonymous (local fake endpoint)")
    gce.fail_calls("GET", r"/zones$", http_error(
        403, "accessNotConfigured", "Compute Engine API has not been used in project "
        "test-project before or it is disabled."))
    with pytest.raises(AuthError, match="Compute Engine API has not been used") as err:
        provider.check_credentials()
    assert err.value.operation == "check_credentials"


def test_launchability_table_matches_the_adapter_for_every_catalog_accelerator() -> None:
    """Placement's data table (no provider import) says exactly what prepare() accepts."""
    from greenplace.providers.registry import REGISTRY
    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.placement.launchable import LAUNCHABLE_FORM_FACTORS

    assert set(LAUNCHABLE_FORM_FACTORS) == set(REGISTRY)
    adapter = create({"project": "p"})
    catalog = load_catalog()
    for offer in (o for o in catalog.offers if o.cloud == "gcp"):
        form = catalog.accelerator(offer.accelerator).form_factor
        launches = form in LAUNCHABLE_FORM_FACTORS["gcp"]
        try:
            adapter.prepare(JOB, placement(offer.instance_type, offer.accelerator,
                                           offer.accelerator_count))
            prepared = True
        except InvalidRequestError:
            prepared = False
        assert prepared == launches, offer
