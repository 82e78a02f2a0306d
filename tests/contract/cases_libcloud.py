"""The libcloud adapter against libcloud's DummyNodeDriver (stock, and keeping names)
and against a loopback OpenStack through libcloud's real openstack driver."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from greenplace.providers.base import Placement, Provider
from greenplace.providers.registry import get_provider
from tests.contract.adapter_case import AdapterCase, CaseEnv
from tests.fakes import libcloud_dummy
from tests.fakes.http import Reply
from tests.fakes.openstack import (
    PASSWORD,
    USER,
    libcloud_settings,
    nova_error,
    openstack_cloud,
)

PLACEMENT = Placement(cloud="aws", region="eu-north-1", instance_type="p4d.24xlarge",
                      accelerator="A100", accelerator_count=8, spot=False)
DUMMY_KEY = "gp-contract-dummy-key-NEVERPRINT"


def _clean(env: CaseEnv) -> None:
    for name in list(os.environ):
        if name.startswith("GREENPLACE_LIBCLOUD_"):
            env.monkeypatch.delenv(name)


@contextmanager
def stock_dummy_case(env: CaseEnv) -> Iterator[AdapterCase]:
    """libcloud's own DummyNodeDriver: it renames nodes, so no idempotency is claimed."""
    _clean(env)
    env.monkeypatch.setenv("GP_DUMMY_KEY", DUMMY_KEY)
    config = {"driver": "dummy", "key_env": "GP_DUMMY_KEY", "image": "1",
              "size.p4d.24xlarge": "Big"}
    yield AdapterCase(
        name="libcloud", make_provider=lambda: get_provider("libcloud", config=config),
        placement=PLACEMENT, unknown_instance_id="987654", secrets=(DUMMY_KEY,))


@contextmanager
def named_dummy_case(env: CaseEnv) -> Iterator[AdapterCase]:
    """DummyNodeDriver keeping node names in one shared account, like a real cloud."""
    _clean(env)
    env.monkeypatch.setenv("GP_DUMMY_KEY", DUMMY_KEY)
    libcloud_dummy.NamedDummyNodeDriver.accounts.clear()
    config = {"driver": libcloud_dummy.register(), "key_env": "GP_DUMMY_KEY",
              "image": "Ubuntu 9.10", "size.p4d.24xlarge": "XXL Big"}

    def count() -> int:
        return len(libcloud_dummy.NamedDummyNodeDriver.accounts.get(DUMMY_KEY, []))

    yield AdapterCase(
        name="libcloud", make_provider=lambda: get_provider("libcloud", config=config),
        placement=PLACEMENT, unknown_instance_id="987654", secrets=(DUMMY_KEY,),
        count_instances=count)


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

        yield AdapterCase(
            name="libcloud", make_provider=lambda: get_provider("libcloud", config=config),
            placement=PLACEMENT, unknown_instance_id="00000000-0000-0000-0000-000000000000",
            secrets=(PASSWORD,), count_instances=count, inject_error=inject,
            error_kinds=frozenset(answers))


CASES = {
    "libcloud-dummy": stock_dummy_case,
    "libcloud-dummy-named": named_dummy_case,
    "libcloud-openstack": openstack_case,
}
