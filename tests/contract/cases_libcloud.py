"""The libcloud adapter against libcloud's DummyNodeDriver keeping node names, and against
a loopback OpenStack through libcloud's real openstack driver.

Both launch on ``test-openstack``, a cloud declared in a catalog overlay (the only clouds
the libcloud adapter launches). libcloud's stock DummyNodeDriver has no case here: it
renames every node and keeps no tags, so no adapter could find its nodes again
(``list_managed``); ``tests/unit/test_libcloud.py`` covers what it can do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from greenplace.providers.base import InstanceHandle, Placement, Provider
from greenplace.providers.registry import get_provider
from tests.contract.adapter_case import AdapterCase, CaseEnv
from tests.fakes import libcloud_dummy
from tests.fakes.http import Reply
from tests.fakes.openstack import (
    CLOUD,
    PASSWORD,
    USER,
    libcloud_settings,
    nova_error,
    openstack_cloud,
    write_overlay,
)

PLACEMENT = Placement(cloud=CLOUD, region="sto-1", instance_type="gpu.a100.8",
                      accelerator="A100-80GB", accelerator_count=8, spot=False)
DUMMY_KEY = "gp-contract-dummy-key-NEVERPRINT"

def _clean(env: CaseEnv) -> None:
    for name in list(os.environ):
        if name.startswith("GREENPLACE_LIBCLOUD_"):
            env.monkeypatch.delenv(name)
    env.monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(write_overlay(env.tmp_path)))

@contextmanager
def named_dummy_case(env: CaseEnv) -> Iterator[AdapterCase]:
    """DummyNodeDriver keeping node names in one shared account, like a real cloud."""
    _clean(env)
    env.monkeypatch.setenv("GP_DUMMY_KEY", DUMMY_KEY)
    libcloud_dummy.NamedDummyNodeDriver.accounts.clear()
    config = {"driver": libcloud_dummy.register(), "key_env": "GP_DUMMY_KEY",
              "image": "Ubuntu 9.10", "size.gpu.a100.8": "XXL Big"}

    def count() -> int:
        return len(libcloud_dummy.NamedDummyNodeDriver.accounts.get(DUMMY_KEY, []))

    yield AdapterCase(
        name="libcloud", make_provider=lambda: get_provider("libcloud", config=config),
        placement=PLACEMENT, unknown_instance_id="987654", secrets=(DUMMY_KEY,),
        count_instances=count, count_resources=count)

@contextmanager
def openstack_case(env: CaseEnv) -> Iterator[AdapterCase]:
    _clean(env)
    env.monkeypatch.setenv("OS_USERNAME", USER)
    env.monkeypatch.setenv("OS_PASSWORD", PASSWORD)
    with openstack_cloud() as cloud:
        config = libcloud_settings(cloud)
        unauthorized = Reply.json(401, {"error": {"code": 401, "title": "Unauthorized",
                                                  "message": "The request you have made "
                                                             "requires authentication."}})
        answers = {
            "capacity": ("/v2.1/servers", nova_error(
                500, "computeFault", "No valid host was found. There are not enough hosts "
                "available.")),
            "quota": ("/v2.1/servers", nova_error(
                403, "forbidden", "Quota exceeded for instances: Requested 1, but already "
                "used 10 of 10 instances")),
            "transient": ("/v2.1/servers", nova_error(
                503, "serviceUnavailable", "The server is currently unavailable.")),
            "auth": ("/v3/auth/tokens", unauthorized),
        }

        def inject(kind: str) -> Provider:
            suffix, reply = answers[kind]
            cloud.fail_next("POST", suffix, reply)
            return get_provider("libcloud", config=config)

        def count() -> int:
            return sum(len(servers) for servers in cloud.servers.values())

        def finish(handle: InstanceHandle, exit_code: int) -> None:
            cloud.finish(handle.instance_id, exit_code)

        yield AdapterCase(
            name="libcloud", make_provider=lambda: get_provider("libcloud", config=config),
            placement=PLACEMENT, unknown_instance_id="00000000-0000-0000-0000-000000000000",
            secrets=(PASSWORD,), count_instances=count, inject_error=inject,
            error_kinds=frozenset(answers), finish=finish,
            count_resources=cloud.count_resources)

CASES = {
    "libcloud-dummy-named": named_dummy_case,
    "libcloud-openstack": openstack_case,
}
