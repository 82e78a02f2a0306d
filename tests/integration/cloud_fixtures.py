"""Cloud fakes plus a private Redis and a real worker that launches through the real adapters.

``cloud_service(tmp)`` starts, in the test process: a moto server behind the
region-aware EC2 error proxy, the Compute Engine fake (two zones in every GCP
region of the catalog) and the HTTPS Azure Resource Manager fake (a throwaway
CA); then a redis-server and one ``python -m scheduler worker`` whose
environment maps aws -> aws, gcp -> gcp, azure -> azure and aims each SDK at
its fake over loopback, the way an operator configures a real deployment
(``AWS_ENDPOINT_URL_EC2``, ``GREENPLACE_GCP_SETTINGS``, ``GREENPLACE_AZURE_SETTINGS``).
Everything is stopped when the context exits, in reverse order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from greenplace.scheduler.catalog import load_catalog
from tests.fakes.ec2 import moto_server
from tests.fakes.gce_server import FakeComputeEngine
from tests.fakes.http import serve
from tests.fakes.json_server import make_test_ca
from tests.fakes.regional import RegionalEc2Proxy, RegionalResourceManager
from tests.integration.conftest import Service
from tests.redisproc import RedisServer

AWS_ACCESS_KEY_ID = "AKIAGREENPLACEQUEUE0"
AWS_SECRET = "gpQueueAwsSecret0123456789NEVERPRINT"
# A task limit above the suite's 8 s: the first gcp / azure task of a pool process
# imports that SDK inside its time limit, which can take seconds on a loaded machine.
# The visibility timeout must be >= limit + 10 + 5 (scheduler.settings enforces it).
CLOUD_SERVICE_ENV = {
    "GREENPLACE_TASK_TIME_LIMIT_S": "12",
    "GREENPLACE_VISIBILITY_TIMEOUT_S": "27",
    "GREENPLACE_PROVIDERS": "aws=aws,gcp=gcp,azure=azure",
}
_FOREIGN_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "CLOUDSDK_", "GCE_", "GREENPLACE_AWS_",
                     "GREENPLACE_GCP_", "GREENPLACE_AZURE_", "GREENPLACE_LIBCLOUD_")


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudFakes:
    """The three clouds' fakes, as the test process sees them."""

    moto_url: str  # moto itself (for checking state)
    ec2_url: str  # the error proxy in front of moto (what the worker talks to)
    ec2: RegionalEc2Proxy
    gce: FakeComputeEngine
    arm: RegionalResourceManager
    ca_bundle: Path

    def ec2_client(self, region: str) -> Any:
        """A boto3 EC2 client on moto itself (bypassing the proxy) for ``region``."""
        return boto3.client("ec2", region_name=region, endpoint_url=self.moto_url,
                            aws_access_key_id=AWS_ACCESS_KEY_ID,
                            aws_secret_access_key=AWS_SECRET)

    def ec2_instances(self, region: str, *, job_id: str) -> list[dict[str, Any]]:
        """The instances in ``region`` tagged ``greenplace:job-id = job_id``."""
        answer = self.ec2_client(region).describe_instances(
            Filters=[{"Name": "tag:greenplace:job-id", "Values": [job_id]}])
        return [i for r in answer["Reservations"] for i in r["Instances"]]

    def disarm(self) -> None:
        """Forget every fault and hook a test armed but did not use up."""
        self.ec2.disarm()
        with self.gce.lock:
            self.gce.insert_faults.clear()
            self.gce.call_faults.clear()
        self.arm.disarm()

    def worker_env(self) -> dict[str, str]:
        """The variables that aim each adapter of a worker process at its fake."""
        return {
            "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL_EC2": self.ec2_url,
            "AWS_CONFIG_FILE": "/nonexistent/greenplace-test/config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/greenplace-test/credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
            "GREENPLACE_GCP_SETTINGS": json.dumps({
                "project": self.gce.project, "api_endpoint": self.gce.base_url,
                "credentials": "anonymous", "operation_timeout_s": "5"}),
            "GREENPLACE_AZURE_SETTINGS": json.dumps({
                "subscription_id": self.arm.subscription, "base_url": self.arm.base_url,
                "ca_bundle": str(self.ca_bundle), "credentials": "test-token",
                "polling_interval_s": "0.01", "operation_timeout_s": "5"}),
        }


@contextmanager
def cloud_fakes(tmp: Path) -> Iterator[CloudFakes]:
    """Start the EC2 (moto + proxy), Compute Engine and ARM fakes on loopback ports."""
    from greenplace.providers.azure import LOOPBACK_TEST_TOKEN

    gcp_regions = sorted({r.region for r in load_catalog().regions if r.cloud == "gcp"})
    with ExitStack() as stack:
        moto_url = stack.enter_context(moto_server())
        proxy = RegionalEc2Proxy(moto_url)
        proxy.reset()
        ec2_url = stack.enter_context(serve(proxy))
        gce = stack.enter_context(FakeComputeEngine(
            zones={region: [f"{region}-a", f"{region}-b"] for region in gcp_regions}))
        tmp.mkdir(parents=True, exist_ok=True)
        tls, ca_bundle = make_test_ca(tmp)
        arm = stack.enter_context(RegionalResourceManager(tls=tls))
        arm.tokens = {LOOPBACK_TEST_TOKEN}
        yield CloudFakes(moto_url=moto_url, ec2_url=ec2_url, ec2=proxy, gce=gce, arm=arm,
                         ca_bundle=ca_bundle)


@contextmanager
def cloud_service(tmp: Path) -> Iterator[tuple[Service, CloudFakes]]:
    """The fakes, a private redis-server and one real worker wired to the cloud adapters."""
    with ExitStack() as stack:
        fakes = stack.enter_context(cloud_fakes(tmp / "fakes"))
        redis_server = RedisServer(tmp / "redis").start()
        stack.callback(redis_server.stop)
        service = Service(tmp, redis_server)
        stack.callback(service.stop_all)
        for name in [n for n in service.env if n.startswith(_FOREIGN_PREFIXES)]:
            del service.env[name]
        service.env.update(CLOUD_SERVICE_ENV)
        service.env.update(fakes.worker_env())
        service.start_worker()
        yield service, fakes
