"""The gcp adapter against the local Compute Engine fake (tests/fakes/gce_server.py),
built from its str -> str config as a worker process would build it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager

from greenplace.providers.base import InstanceHandle, Placement, Provider
from greenplace.providers.registry import get_provider
from tests.contract.adapter_case import AdapterCase, CaseEnv
from tests.fakes.gce_server import FakeComputeEngine, InsertFault

PLACEMENT = Placement(cloud="gcp", region="us-central1", instance_type="a2-highgpu-1g",
                      accelerator="A100", accelerator_count=1, spot=False,
                      price_usd_per_hour=3.67)


@contextmanager
def gcp_case(env: CaseEnv) -> Iterator[AdapterCase]:
    for name in list(os.environ):
        if name.startswith("GREENPLACE_GCP_"):
            env.monkeypatch.delenv(name)
    made: list[Provider] = []
    with FakeComputeEngine() as fake:
        # Operations take a little time, and a new VM boots, like on GCE.
        fake.op_seconds = fake.delete_seconds = fake.boot_seconds = 0.05
        config = {"project": fake.project, "api_endpoint": fake.base_url,
                  "credentials": "anonymous", "operation_timeout_s": "5"}

        def make() -> Provider:
            made.append(get_provider("gcp", config=config))
            return made[-1]

        zones = [z for z, region in fake.zones.items() if region == PLACEMENT.region]
        faults = {
            # every zone of the region stocks out: the region has no capacity
            "capacity": [(z, InsertFault(op_error_code="ZONE_RESOURCE_POOL_EXHAUSTED"))
                         for z in zones],
            "quota": [(zones[0], InsertFault(
                op_error_code="QUOTA_EXCEEDED", op_http_status=403,
                message="Quota 'NVIDIA_A100_GPUS' exceeded.  Limit: 0.0 in region "
                        "us-central1."))],
            "transient": [(zones[0], InsertFault(http_status=503, reason="backendError",
                                                 message="Backend Error"))],
            "auth": [(zones[0], InsertFault(
                http_status=403, reason="forbidden",
                message="Required 'compute.instances.create' permission for "
                        "'projects/test-project/zones/us-central1-a/instances/x'"))],
        }

        def inject(kind: str) -> Provider:
            for zone, fault in faults[kind]:
                fake.fail_next_insert(zone, fault)
            return make()

        def finish(handle: InstanceHandle, exit_code: int) -> None:
            fake.finish(handle.zone or "", handle.instance_id, exit_code)

        try:
            yield AdapterCase(
                name="gcp", make_provider=make, placement=PLACEMENT,
                spot_placement=dataclasses.replace(PLACEMENT, spot=True),
                unknown_instance_id="gp-never-issued-00000000",
                count_instances=lambda: len(fake.instances),
                inject_error=inject, error_kinds=frozenset(faults),
                finish=finish, count_resources=fake.resource_count)
        finally:
            for provider in made:
                provider.close()  # type: ignore[attr-defined]


CASES = {"gcp": gcp_case}
