"""The libcloud adapter through the real libcloud drivers.

``openstack`` talks over HTTP to a loopback OpenStack (Keystone v3, Nova,
Glance) answering in those APIs' JSON; ``dummy`` is libcloud's own in-memory
driver, and ``greenplace-test-dummy`` the same driver keeping node names.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libcloud.compute.base import Node
from libcloud.compute.types import NodeState

from greenplace.providers import libcloud as lc
from greenplace.providers.base import (
    Feature,
    InstanceState,
    JobLaunch,
    Placement,
    idempotency_key,
    job_tags,
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
from tests.fakes import libcloud_dummy
from tests.fakes.http import Reply
from tests.fakes.openstack import (
    CLOUD,
    FLAVORS,
    IMAGES,
    PASSWORD,
    USER,
    OpenStackFake,
    libcloud_settings,
    nova_error,
    openstack_cloud,
    write_overlay,
)

JOB = JobLaunch(job_id="job-42", name="bert", run="python finetune.py", policy="balanced",
                attempt=1)
PLACEMENT = Placement(cloud=CLOUD, region="sto-1", instance_type="gpu.a100.8",
                      accelerator="A100-80GB", accelerator_count=8, spot=False)
TAGS = {**job_tags(JOB), "greenplace:cloud": CLOUD, "greenplace:region": "sto-1"}
KEY = idempotency_key(JOB.job_id, JOB.attempt)
DUMMY_KEY = "dummy-account-key-never-printed"


@pytest.fixture(autouse=True)
def overlay(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Declare test-openstack in a catalog overlay, as a user of a libcloud cloud does."""
    for name in ("GREENPLACE_LIBCLOUD_DRIVER", "GREENPLACE_LIBCLOUD_IMAGE",
                 "GREENPLACE_LIBCLOUD_KEY_ENV", "GREENPLACE_LIBCLOUD_SECRET_ENV",
                 "GREENPLACE_LIBCLOUD_CLOUDS", "GREENPLACE_LIBCLOUD_SETTINGS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(write_overlay(tmp_path)))


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenStackFake]:
    monkeypatch.setenv("OS_USERNAME", USER)
    monkeypatch.setenv("OS_PASSWORD", PASSWORD)
    with openstack_cloud() as fake:
        yield fake


def _provider(fake: OpenStackFake, **overrides: str) -> lc.LibcloudProvider:
    provider = get_provider("libcloud", config={**libcloud_settings(fake), **overrides})
    assert isinstance(provider, lc.LibcloudProvider)
    return provider


def _posts(fake: OpenStackFake) -> int:
    return sum(1 for method, path in fake.calls if method == "POST" and path.endswith("/servers"))


# -- prepare -------------------------------------------------------------------------------


def test_prepare_is_pure_and_names_the_exact_create_node_call(cloud: OpenStackFake) -> None:
    provider = _provider(cloud)
    request = provider.prepare(JOB, PLACEMENT)
    assert cloud.calls == []  # no network, not even authentication
    assert request.payload == {
        "driver": "openstack",
        "driver_region": "RegionOne",
        "create_node": {
            "name": lc.node_name(KEY), "size": "gpu.a100.8", "image": "ubuntu-24.04-cuda-12.8",
            "ex_userdata": startup_script(JOB), "ex_metadata": TAGS,
        },
    }
    assert request.tags == TAGS and request.spot is False
    text = json.dumps(dataclasses.asdict(request))
    assert PASSWORD not in text and provider.prepare(JOB, PLACEMENT) == request
    assert provider.features == {Feature.CANCEL, Feature.IDEMPOTENT_SUBMIT, Feature.TAGS,
                                 Feature.STARTUP_SCRIPT}


def test_prepare_refuses_spot(cloud: OpenStackFake) -> None:
    with pytest.raises(InvalidRequestError, match="To fix:") as exc:
        _provider(cloud).prepare(JOB, dataclasses.replace(PLACEMENT, spot=True))
    assert exc.value.code == "SpotUnsupported"


def test_digitalocean_profile_passes_tags_and_region_its_way(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", "dop_v1_never_printed")
    provider = get_provider("libcloud", config={
        "driver": "digitalocean", "key_env": "DIGITALOCEAN_ACCESS_TOKEN",
        "image": "gpu-h100x1-base", "size.gpu.a100.8": "gpu-h100x1-80gb",
        "region.sto-1": "tor1", "clouds": CLOUD})
    call = provider.prepare(JOB, PLACEMENT).payload["create_node"]
    assert call["location"] == "tor1" and call["size"] == "gpu-h100x1-80gb"
    assert call["ex_user_data"] == startup_script(JOB)
    assert "greenplace:job-id:job-42" in call["ex_create_attr"]["tags"]


@given(st.text(min_size=1, max_size=300))
@settings(max_examples=200, deadline=None)
def test_node_names_are_valid_stable_hostnames(key: str) -> None:
    name = lc.node_name(key)
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,61}[a-z0-9]", name), name
    assert "--" not in name and name == lc.node_name(key)


def test_node_names_keep_keys_apart_that_fold_alike() -> None:
    assert lc.node_name("gp-A_b-a1") != lc.node_name("gp-a-b-a1")
    long_a, long_b = "gp-" + "x" * 80 + "-a1", "gp-" + "x" * 80 + "-a2"
    assert lc.node_name(long_a) != lc.node_name(long_b)
    assert lc.node_name(KEY).startswith("gp-job-42-a1-")


# -- OpenStack over HTTP -------------------------------------------------------------------


def test_submit_creates_the_server_in_the_mapped_region(cloud: OpenStackFake) -> None:
    provider = _provider(cloud)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    (server,) = cloud.servers["RegionOne"].values()
    assert cloud.servers["RegionTwo"] == {}
    assert handle.instance_id == server["id"] and handle.provider == "libcloud"
    assert handle.zone == "nova" and handle.extra["node_name"] == server["name"]
    assert server["name"] == lc.node_name(KEY)
    assert server["flavor"]["id"] == FLAVORS[0]["id"]  # looked up by name
    assert server["image"]["id"] == IMAGES[0]["id"]
    assert server["metadata"] == TAGS
    assert base64.b64decode(server["user_data"]).decode() == startup_script(JOB)
    other = dataclasses.replace(PLACEMENT, region="osl-1")
    provider.submit(provider.prepare(JOB, other), idempotency_key=KEY)
    assert len(cloud.servers["RegionTwo"]) == 1


def test_same_key_finds_the_server_from_any_adapter_object(cloud: OpenStackFake) -> None:
    first = _provider(cloud)
    handle = first.submit(first.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert first.submit(first.prepare(JOB, PLACEMENT), idempotency_key=KEY) == handle
    second = _provider(cloud)
    assert second.submit(second.prepare(JOB, PLACEMENT), idempotency_key=KEY) == handle
    assert _posts(cloud) == 1
    retry = dataclasses.replace(JOB, attempt=2)
    new = second.submit(second.prepare(retry, PLACEMENT), idempotency_key=idempotency_key(
        retry.job_id, retry.attempt))
    assert new.instance_id != handle.instance_id and _posts(cloud) == 2


def _deletes(fake: OpenStackFake) -> int:
    return sum(1 for method, _ in fake.calls if method == "DELETE")


def test_submit_returns_while_the_server_is_still_building(cloud: OpenStackFake) -> None:
    cloud.build_s = 3600.0  # a build that would outlast any wait
    provider = _provider(cloud)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert cloud.servers["RegionOne"][handle.instance_id]["status"] == "BUILD"
    assert provider.status(handle).state is InstanceState.PENDING
    cloud.skip(3600.0)
    assert provider.status(handle).state is InstanceState.RUNNING


def test_delete_is_false_while_nova_deletes_then_true(cloud: OpenStackFake) -> None:
    cloud.delete_s = 60.0
    provider = _provider(cloud)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert provider.delete(handle) is False  # task_state deleting: still there
    assert provider.delete(handle) is False
    assert _deletes(cloud) == 1  # not deleted again while Nova is deleting it
    assert provider.status(handle).state is InstanceState.TERMINATED
    cloud.skip(60.0)
    assert provider.delete(handle) is True
    assert provider.status(handle).state is InstanceState.MISSING
    assert provider.delete(handle) is True and cloud.count_resources() == 0


@pytest.mark.parametrize("code", [0, 1, 137])
def test_powered_off_server_is_exited_with_the_console_exit_code(cloud: OpenStackFake,
                                                                 code: int) -> None:
    cloud.build_s = 0.0
    provider = _provider(cloud)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert provider.status(handle).state is InstanceState.RUNNING
    cloud.finish(handle.instance_id, code)
    status = provider.status(handle)
    assert (status.state, status.exit_code) == (InstanceState.EXITED, code)
    assert ("POST", f"/compute/RegionOne/v2.1/servers/{handle.instance_id}/action") in cloud.calls


def test_exit_code_is_none_until_the_console_shows_it(cloud: OpenStackFake) -> None:
    cloud.build_s = 0.0
    provider = _provider(cloud)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    cloud.finish(handle.instance_id, 3, published=False)
    status = provider.status(handle)
    assert (status.state, status.exit_code) == (InstanceState.EXITED, None)
    assert "no exit code" in status.detail


def test_no_valid_host_is_a_launch_failure_and_delete_removes_the_error_node(
        cloud: OpenStackFake) -> None:
    cloud.build_s = 30.0
    provider = _provider(cloud)
    cloud.no_valid_host(lc.node_name(KEY))
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert provider.status(handle).state is InstanceState.PENDING  # accepted, scheduling
    cloud.skip(30.0)
    status = provider.status(handle)
    assert status.state is InstanceState.LAUNCH_FAILED
    assert isinstance(status.error, CapacityError) and "To fix:" in str(status.error)
    assert "No valid host was found" in str(status.error)
    assert (status.error.provider, status.error.code) == ("libcloud", "fault 500")
    # status() leaves the ERROR server (the evidence) to delete(), which the queue calls in
    # the pass that records the refusal: a repeated status() reads the same answer.
    assert _deletes(cloud) == 0
    assert provider.status(handle).state is InstanceState.LAUNCH_FAILED
    assert provider.delete(handle) is False and _deletes(cloud) == 1
    cloud.skip(1.0)
    assert cloud.count_resources() == 0 and provider.delete(handle) is True


@pytest.mark.parametrize(("fault", "expected"), [
    ("Quota exceeded for cores: Requested 96, but already used 64 of 96 cores", QuotaError),
    ("Exceeded maximum number of retries. Exhausted all hosts available for retrying build "
     "failures for instance 1.", CapacityError),
    ("Build of instance 1 aborted: Failed to allocate the network(s), not rescheduling.",
     TransientError),
])
def test_other_build_faults_are_classified_from_their_message(
        cloud: OpenStackFake, fault: str, expected: type[ProviderError]) -> None:
    cloud.build_s = 0.0
    provider = _provider(cloud)
    cloud.fail_build(lc.node_name(KEY), fault)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    status = provider.status(handle)
    assert status.state is InstanceState.LAUNCH_FAILED and type(status.error) is expected


def test_a_host_failure_after_running_is_failed_not_a_launch_failure(
        cloud: OpenStackFake) -> None:
    cloud.build_s = 0.0
    provider = _provider(cloud)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert provider.status(handle).state is InstanceState.RUNNING
    cloud.break_host(handle.instance_id, "Hypervisor lost power")
    status = provider.status(handle)
    assert status.state is InstanceState.FAILED and status.error is None
    assert "Hypervisor lost power" in status.detail and _deletes(cloud) == 0


@pytest.mark.parametrize("status_code", [429, 413])
def test_nova_rate_limits_are_transient_with_their_retry_after(cloud: OpenStackFake,
                                                               status_code: int) -> None:
    provider = _provider(cloud)
    request = provider.prepare(JOB, PLACEMENT)
    cloud.throttle_next("POST", "/v2.1/servers", status=status_code, retry_after_s=7)
    with pytest.raises(TransientError) as exc:
        provider.submit(request, idempotency_key=KEY)
    assert exc.value.code == f"HTTP {status_code}"
    assert "retry after 7 s" in str(exc.value) and "To fix:" in str(exc.value)


def test_a_hung_endpoint_times_out_as_a_transient_error(cloud: OpenStackFake) -> None:
    provider = _provider(cloud, timeout_s="0.2")
    provider.check_credentials()  # authenticated, sizes listed
    cloud.stall_next("GET", "/v2.1/servers/detail", 2.0)
    with pytest.raises(TransientError) as exc:
        provider.list_managed("sto-1")
    assert exc.value.operation == "list_managed" and "To fix:" in str(exc.value)


def test_timeout_setting_must_be_a_number(cloud: OpenStackFake) -> None:
    with pytest.raises(ConfigError, match="timeout_s"):
        _provider(cloud, timeout_s="soon")


def test_list_managed_reads_one_list_and_keeps_only_greenplace_servers_of_the_region(
        cloud: OpenStackFake) -> None:
    cloud.build_s = 0.0
    provider = _provider(cloud)
    first = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    retry = dataclasses.replace(JOB, attempt=2)
    provider.submit(provider.prepare(retry, dataclasses.replace(PLACEMENT, region="osl-1")),
                    idempotency_key=idempotency_key(retry.job_id, retry.attempt))
    cloud.servers["RegionOne"]["someone-elses"] = {
        **cloud.servers["RegionOne"][first.instance_id], "id": "someone-elses",
        "name": "web-1", "metadata": {"owner": "web-team"}}
    cloud.calls.clear()
    (listed,) = provider.list_managed("sto-1")
    assert [c for c in cloud.calls if "/compute/" in c[1]] == [
        ("GET", "/compute/RegionOne/v2.1/servers/detail")]
    assert listed.handle == first  # the very handle submit returned
    assert (listed.job_id, listed.attempt) == (JOB.job_id, 1)
    assert listed.status.state is InstanceState.RUNNING
    (other,) = provider.list_managed("osl-1")
    assert (other.handle.region, other.attempt, other.handle.cloud) == ("osl-1", 2, CLOUD)


def test_list_managed_follows_every_page(cloud: OpenStackFake) -> None:
    cloud.page_size = 2
    provider = _provider(cloud)
    launched = set()
    for attempt in range(1, 6):
        job = dataclasses.replace(JOB, attempt=attempt)
        launched.add(provider.submit(provider.prepare(job, PLACEMENT), idempotency_key=(
            idempotency_key(job.job_id, attempt))).instance_id)
    cloud.calls.clear()
    assert {m.handle.instance_id for m in provider.list_managed("sto-1")} == launched
    assert cloud.calls.count(("GET", "/compute/RegionOne/v2.1/servers/detail")) == 3


def test_node_names_lead_back_to_their_key_only_when_exact() -> None:
    assert lc.key_of_name(lc.node_name(KEY)) == (JOB.job_id, 1)
    assert lc.key_of_name(lc.node_name(idempotency_key("Job_Upper", 3))) is None  # folded
    assert lc.key_of_name("gp-web-a1-00000000") is None
    assert lc.key_of_name("dummy-1") is None


# -- libcloud clouds are their own clouds ----------------------------------------------------


@pytest.mark.parametrize("borrowed", ["aws", "gcp", "azure"])
def test_a_placement_on_a_first_class_cloud_is_refused(cloud: OpenStackFake,
                                                       borrowed: str) -> None:
    placement = dataclasses.replace(PLACEMENT, cloud=borrowed, region="eu-north-1")
    with pytest.raises(InvalidRequestError, match="never borrows an AWS/GCP/Azure region") as exc:
        _provider(cloud).prepare(JOB, placement)
    assert exc.value.code == "BorrowedRegion" and "To fix:" in str(exc.value)
    assert cloud.calls == []


def test_only_clouds_of_the_overlay_or_the_clouds_setting_are_launched(
        cloud: OpenStackFake, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = dataclasses.replace(PLACEMENT, cloud="other-openstack")
    with pytest.raises(InvalidRequestError, match="launches: test-openstack") as exc:
        _provider(cloud).prepare(JOB, elsewhere)
    assert exc.value.code == "UndeclaredCloud"
    monkeypatch.delenv("GREENPLACE_CATALOG_OVERLAY")
    with pytest.raises(InvalidRequestError, match="launches: none"):
        _provider(cloud).prepare(JOB, PLACEMENT)
    assert _provider(cloud, clouds="test-openstack").prepare(JOB, PLACEMENT).cloud == CLOUD


def test_the_clouds_setting_cannot_name_a_first_class_cloud(cloud: OpenStackFake) -> None:
    with pytest.raises(ConfigError, match="never borrows an AWS/GCP/Azure region"):
        _provider(cloud, clouds="test-openstack, aws")


@pytest.mark.parametrize(("reply", "expected", "code"), [
    (nova_error(403, "forbidden", "Quota exceeded for cores: Requested 96, but already used "
                "0 of 64 cores"), QuotaError, "HTTP 403"),
    (nova_error(500, "computeFault", "No valid host was found. There are not enough hosts "
                "available."), CapacityError, "HTTP 500"),
    (nova_error(503, "serviceUnavailable", "The server is currently unavailable. Please try "
                "again at a later time."), TransientError, "HTTP 503"),
    (nova_error(400, "badRequest", "Invalid key_name provided."), InvalidRequestError,
     "HTTP 400"),
])
def test_create_errors_map_to_classes(cloud: OpenStackFake, reply: Reply,
                                      expected: type[ProviderError], code: str) -> None:
    provider = _provider(cloud)
    request = provider.prepare(JOB, PLACEMENT)
    cloud.fail_next("POST", "/v2.1/servers", reply)
    with pytest.raises(expected) as exc:
        provider.submit(request, idempotency_key=KEY)
    assert type(exc.value) is expected
    assert (exc.value.provider, exc.value.operation, exc.value.code) == (
        "libcloud", "submit", code)
    message = json.loads(reply.body)
    assert next(iter(message.values()))["message"] in str(exc.value)
    assert "To fix:" in str(exc.value) and PASSWORD not in str(exc.value)
    assert _posts(cloud) == 1


def test_refused_password_is_an_auth_error(cloud: OpenStackFake,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_PASSWORD", "wrong-password-also-secret")
    provider = _provider(cloud)
    with pytest.raises(AuthError) as exc:
        provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert (exc.value.operation, exc.value.code) == ("submit", "HTTP 401")
    assert "wrong-password-also-secret" not in str(exc.value)
    with pytest.raises(AuthError):
        provider.check_credentials()


def test_missing_credential_variable_says_which_to_export(
        cloud: OpenStackFake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OS_PASSWORD")
    provider = _provider(cloud)
    with pytest.raises(AuthError, match="export OS_PASSWORD") as exc:
        provider.check_credentials()
    assert exc.value.code == "MissingCredentials"
    assert cloud.calls == []


def test_status_error_carries_its_operation(cloud: OpenStackFake) -> None:
    provider = _provider(cloud)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    cloud.fail_next("GET", f"/servers/{handle.instance_id}",
                    nova_error(503, "serviceUnavailable", "The server is currently unavailable."))
    with pytest.raises(TransientError) as exc:
        provider.status(handle)
    assert exc.value.operation == "status"


def test_unknown_size_fails_before_anything_is_created(cloud: OpenStackFake) -> None:
    provider = _provider(cloud, **{"size.gpu.a100.8": "gpu.a100.9"})
    with pytest.raises(InvalidRequestError, match="Did you mean 'gpu.a100.8'"):
        provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert _posts(cloud) == 0


def test_check_credentials_describes_without_secrets(
        cloud: OpenStackFake, capsys: pytest.CaptureFixture[str]) -> None:
    identity = _provider(cloud).check_credentials()
    assert identity == ("openstack driver, key from $OS_USERNAME and secret from $OS_PASSWORD "
                        "(2 sizes visible)")
    out = capsys.readouterr()
    assert PASSWORD not in identity + out.out + out.err


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "error", "match"), [
    ({"driver": "openstack", "key_env": "K", "image": "i", "imagee": "x"}, UnknownNameError,
     "Did you mean 'image'"),
    ({"driver": "openstak", "key_env": "K", "image": "i"}, UnknownNameError,
     "Did you mean 'openstack'"),
    ({"key_env": "K", "image": "i"}, ConfigError, "needs a driver"),
    ({"driver": "openstack", "image": "i"}, ConfigError, "key_env"),
    ({"driver": "openstack", "key_env": "K"}, ConfigError, "image"),
    ({"driver": "openstack", "key_env": "K", "image": "i", "ex_force_auth_token": "t"},
     ConfigError, "looks like a secret"),
    ({"driver": "openstack", "key_env": "K", "image": "i", "region_via": "zone"},
     ConfigError, "region_via"),
])
def test_bad_settings_are_clear(monkeypatch: pytest.MonkeyPatch, config: dict[str, str],
                                error: type, match: str) -> None:
    monkeypatch.delenv("GREENPLACE_LIBCLOUD_DRIVER", raising=False)
    with pytest.raises(error, match=match):
        get_provider("libcloud", config=config)


def test_all_settings_can_come_from_the_environment(
        cloud: OpenStackFake, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = libcloud_settings(cloud)
    monkeypatch.setenv("GREENPLACE_LIBCLOUD_SETTINGS", json.dumps(
        {k: v for k, v in settings.items() if "." in k}))
    for key, value in settings.items():
        if "." not in key:
            monkeypatch.setenv(f"GREENPLACE_LIBCLOUD_{key.upper()}", value)
    provider = get_provider("libcloud")
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert cloud.servers["RegionOne"][handle.instance_id]["flavor"]["id"] == FLAVORS[0]["id"]


@pytest.mark.parametrize(("state", "expected"), [
    (NodeState.RUNNING, InstanceState.RUNNING),
    (NodeState.PENDING, InstanceState.PENDING),
    (NodeState.STARTING, InstanceState.PENDING),
    (NodeState.REBOOTING, InstanceState.RUNNING),
    (NodeState.STOPPED, InstanceState.EXITED),
    (NodeState.TERMINATED, InstanceState.TERMINATED),
    (NodeState.ERROR, InstanceState.FAILED),
    (NodeState.UNKNOWN, InstanceState.PENDING),
])
def test_node_states_map(state: str, expected: InstanceState) -> None:
    node = Node(id="1", name="n", state=state,  # type: ignore[arg-type]  # a NodeState value
                public_ips=[], private_ips=[], driver=None)
    assert lc.node_state(node).state is expected


# -- libcloud's DummyNodeDriver ------------------------------------------------------------


@pytest.fixture
def dummy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUMMY_KEY", DUMMY_KEY)
    libcloud_dummy.NamedDummyNodeDriver.accounts.clear()


def test_stock_dummy_driver_launches_follows_and_deletes(dummy_env: None) -> None:
    provider = get_provider("libcloud", config={"driver": "dummy", "key_env": "DUMMY_KEY",
                                                "image": "1", "size.gpu.a100.8": "Big"})
    # DummyNodeDriver renames every node, so the adapter does not claim idempotency there
    assert provider.features == {Feature.CANCEL}
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert provider.status(handle).state is InstanceState.RUNNING
    assert provider.list_managed("sto-1") == []  # renamed, untagged: nothing to find it by
    assert provider.delete(handle) is True  # the dummy deletes at once
    assert provider.status(handle).state is InstanceState.MISSING


def test_name_keeping_dummy_driver_is_idempotent_across_adapters(dummy_env: None) -> None:
    config = {"driver": libcloud_dummy.register(), "key_env": "DUMMY_KEY", "image": "Ubuntu 9.10",
              "size.gpu.a100.8": "XXL Big"}
    first = get_provider("libcloud", config=config)
    assert Feature.IDEMPOTENT_SUBMIT in first.features
    handle = first.submit(first.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    second = get_provider("libcloud", config=config)
    assert second.submit(second.prepare(JOB, PLACEMENT), idempotency_key=KEY) == handle
    (node,) = [n for n in libcloud_dummy.NamedDummyNodeDriver.accounts[DUMMY_KEY]
               if n.name == lc.node_name(KEY)]
    assert node.size is not None and node.image is not None
    assert node.size.name == "XXL Big" and node.image.name == "Ubuntu 9.10"
    assert DUMMY_KEY not in second.check_credentials()


def test_a_driver_without_a_console_exits_without_an_exit_code(dummy_env: None) -> None:
    config = {"driver": libcloud_dummy.register(), "key_env": "DUMMY_KEY", "image": "Ubuntu 9.10",
              "size.gpu.a100.8": "XXL Big"}
    provider = get_provider("libcloud", config=config)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    (listed,) = provider.list_managed("sto-1")  # found by its name alone: no tags here
    assert (listed.handle, listed.job_id, listed.attempt) == (handle, JOB.job_id, 1)
    libcloud_dummy.power_off(DUMMY_KEY, handle.instance_id)
    status = provider.status(handle)
    assert (status.state, status.exit_code) == (InstanceState.EXITED, None)
    assert provider.delete(handle) is True
    assert libcloud_dummy.NamedDummyNodeDriver.accounts[DUMMY_KEY] == []
