"""The aws adapter against moto (a moto server behind the EC2 proxy of tests/fakes/ec2.py).

The proxy makes the account behave like EC2 in time: instances boot for a
fifth of a second, terminate for a fifth, and stay invisible to DescribeInstances
for 0.3 s after RunInstances (eventual consistency).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from greenplace.providers.base import Placement, Provider
from greenplace.providers.registry import get_provider
from tests.contract.adapter_case import AdapterCase, CaseEnv
from tests.fakes.ec2 import Ec2ErrorProxy, ec2_with_errors

SECRET = "gpContractAwsSecret0123456789NEVERPRINT"
PLACEMENT = Placement(cloud="aws", region="us-west-2", instance_type="p5.48xlarge",
                      accelerator="H100", accelerator_count=8, spot=False,
                      price_usd_per_hour=98.32)
INJECTED = {"capacity": "InsufficientInstanceCapacity", "quota": "VcpuLimitExceeded",
            "transient": "RequestLimitExceeded", "auth": "AuthFailure"}


def _start(stack: ExitStack) -> tuple[str, Ec2ErrorProxy]:
    return stack.enter_context(ec2_with_errors())


@contextmanager
def aws_case(env: CaseEnv) -> Iterator[AdapterCase]:
    url, proxy = env.shared.get("ec2-server", _start)
    proxy.reset()
    proxy.boot_s, proxy.terminate_s, proxy.not_visible_s = 0.2, 0.2, 0.3
    for name in list(os.environ):
        if name.startswith(("AWS_", "GREENPLACE_AWS_")):
            env.monkeypatch.delenv(name)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAGREENPLACECONTRACT", "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url,
        "AWS_CONFIG_FILE": str(env.tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(env.tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        env.monkeypatch.setenv(name, value)

    def inject(kind: str) -> Provider:
        proxy.fail("RunInstances", INJECTED[kind])
        return get_provider("aws")

    yield AdapterCase(
        name="aws", make_provider=lambda: get_provider("aws"), placement=PLACEMENT,
        spot_placement=dataclasses.replace(PLACEMENT, spot=True),
        unknown_instance_id="i-0123456789abcdef0", secrets=(SECRET,),
        count_instances=lambda: proxy.count_instances(PLACEMENT.region), inject_error=inject,
        error_kinds=frozenset(INJECTED),
        finish=lambda handle, code: proxy.finish(handle.region, handle.instance_id, code),
        count_resources=lambda: proxy.count_resources(PLACEMENT.region))


CASES = {"aws": aws_case}
