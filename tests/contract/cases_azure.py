"""The azure adapter against the local HTTPS Azure Resource Manager fake
(tests/fakes/arm_server.py), built from its str -> str config as a worker process
would build it: ``ca_bundle`` trusts the fake's throwaway CA and ``credentials:
test-token`` (accepted only for a loopback endpoint) stands in for
DefaultAzureCredential."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager

from greenplace.providers.azure import LOOPBACK_TEST_TOKEN
from greenplace.providers.base import Placement, Provider
from greenplace.providers.registry import get_provider
from tests.contract.adapter_case import AdapterCase, CaseEnv
from tests.fakes.arm_server import FakeResourceManager, Fault
from tests.fakes.json_server import make_test_ca

PLACEMENT = Placement(cloud="azure", region="westeurope", instance_type="Standard_NC24ads_A100_v4",
                      accelerator="A100-80GB", accelerator_count=1, spot=False,
                      price_usd_per_hour=3.67)


@contextmanager
def azure_case(env: CaseEnv) -> Iterator[AdapterCase]:
    for name in list(os.environ):
        if name.startswith(("GREENPLACE_AZURE_", "AZURE_")):
            env.monkeypatch.delenv(name)
    tls, ca_bundle = make_test_ca(env.tmp_path)
    made: list[Provider] = []
    with FakeResourceManager(tls=tls) as fake:
        fake.tokens = {LOOPBACK_TEST_TOKEN}
        config = {"subscription_id": fake.subscription, "base_url": fake.base_url,
                  "ca_bundle": str(ca_bundle), "credentials": "test-token",
                  "polling_interval_s": "0.01", "operation_timeout_s": "5"}

        def make() -> Provider:
            made.append(get_provider("azure", config=config))
            return made[-1]

        def inject(kind: str) -> Provider:
            if kind == "capacity":  # accepted, then the long-running operation fails
                fake.fail_next_vm_lro(Fault(
                    "AllocationFailed", "Allocation failed. We do not have sufficient "
                    "capacity for the requested VM size in this region."))
            else:
                fake.fail_next_vm_put({
                    "quota": Fault("OperationNotAllowed", "Operation could not be completed "
                                   "as it results in exceeding approved standardNCADSA100v4 "
                                   "Family Cores quota. Location: westeurope, Current Limit: "
                                   "0, Current Usage: 0, Additional Required: 24.", 409),
                    "transient": Fault("TooManyRequests", "The request is being throttled.",
                                       429),
                    "auth": Fault("AuthorizationFailed", "The client does not have "
                                  "authorization to perform action 'Microsoft.Compute/"
                                  "virtualMachines/write'.", 403),
                }[kind])
            return make()

        try:
            yield AdapterCase(
                name="azure", make_provider=make, placement=PLACEMENT,
                spot_placement=dataclasses.replace(PLACEMENT, spot=True),
                unknown_instance_id="gp-never-issued-vm", secrets=(LOOPBACK_TEST_TOKEN,),
                count_instances=lambda: len(fake.vms), inject_error=inject,
                error_kinds=frozenset({"capacity", "quota", "transient", "auth"}),
                finish=lambda handle, code: fake.finish(handle.instance_id, code),
                count_resources=fake.count_resources)
        finally:
            for provider in made:
                provider.close()  # type: ignore[attr-defined]


CASES = {"azure": azure_case}
