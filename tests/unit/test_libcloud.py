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
    FLAVORS,
    IMAGES,
    PASSWORD,
    USER,
    OpenStackFake,
    libcloud_settings,
    nova_error,
    openstack_cloud,
)

JOB = JobLaunch(job_id="job-42", name="bert", run="python finetune.py", policy="balanced",
                attempt=1)
PLACEMENT = Placement(cloud="aws", region="eu-north-1", instance_type="p4d.24xlarge",
                      accelerator="A100", accelerator_count=8, spot=False)
KEY = idempotency_key(JOB.job_id, JOB.attempt)
DUMMY_KEY = "dummy-account-key-never-printed"


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenStackFake]:
    for name in ("GREENPLACE_LIBCLOUD_DRIVER", "GREENPLACE_LIBCLOUD_IMAGE",
                 "GREENPLACE_LIBCLOUD_KEY_ENV", "GREENPLACE_LIBCLOUD_SECRET_ENV"):
        monkeypatch.delenv(name, raising=False)
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
            "ex_userdata": startup_script(JOB), "ex_metadata": job_tags(JOB),
        },
    }
    assert request.tags == job_tags(JOB) and request.spot is False
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
        "image": "gpu-h100x1-base", "size.p4d.24xlarge": "gpu-h100x1-80gb",
        "region.eu-north-1": "tor1"})
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
    assert server["metadata"] == job_tags(JOB)
    assert base64.b64decode(server["user_data"]).decode() == startup_script(JOB)
    other = dataclasses.replace(PLACEMENT, region="us-east-1")
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


def test_status_follows_build_active_and_cancel(cloud: OpenStackFake) -> None:
    provider = _provider(cloud)
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert provider.status(handle).state is InstanceState.PENDING  # BUILD
    assert provider.status(handle).state is InstanceState.RUNNING  # ACTIVE
    provider.cancel(handle)
    assert cloud.servers["RegionOne"] == {}
    assert provider.status(handle).state is InstanceState.MISSING
    provider.cancel(handle)  # gone already: a no-op


def test_no_valid_host_reads_as_failed_with_the_fault(cloud: OpenStackFake) -> None:
    provider = _provider(cloud)
    cloud.no_valid_host(lc.node_name(KEY))
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    provider.status(handle)
    status = provider.status(handle)
    assert status.state is InstanceState.FAILED
    assert "No valid host was found" in status.detail


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
    provider = _provider(cloud, **{"size.p4d.24xlarge": "gpu.a100.9"})
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
    (NodeState.STOPPED, InstanceState.SUCCEEDED),
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


def test_stock_dummy_driver_launches_follows_and_cancels(dummy_env: None) -> None:
    provider = get_provider("libcloud", config={"driver": "dummy", "key_env": "DUMMY_KEY",
                                                "image": "1", "size.p4d.24xlarge": "Big"})
    # DummyNodeDriver renames every node, so the adapter does not claim idempotency there
    assert provider.features == {Feature.CANCEL}
    handle = provider.submit(provider.prepare(JOB, PLACEMENT), idempotency_key=KEY)
    assert provider.status(handle).state is InstanceState.RUNNING
    provider.cancel(handle)
    assert provider.status(handle).state is InstanceState.MISSING


def test_name_keeping_dummy_driver_is_idempotent_across_adapters(dummy_env: None) -> None:
    config = {"driver": libcloud_dummy.register(), "key_env": "DUMMY_KEY", "image": "Ubuntu 9.10",
              "size.p4d.24xlarge": "XXL Big"}
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
