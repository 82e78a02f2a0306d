"""Azure vCPU quotas per VM family as capacity pools, read through azure-mgmt-compute from the
local Resource Manager fake (tests/fakes/arm_server.py: locations/{loc}/usages and the
subscription's SKU list, both paged with nextLink, over TLS with a bearer token).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenplace.providers.azure import LOOPBACK_TEST_TOKEN
from greenplace.scheduler.catalog.loader import load_embedded_catalog
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.refresh import azure_retail
from greenplace.scheduler.exceptions import AuthError, InvalidRequestError, TransientError
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.quotas import QuotaAnswer
from greenplace.scheduler.planning.quotas import azure as quotas_azure
from tests.fakes.arm_server import FakeResourceManager, disk_sku, vm_sku, vm_usage
from tests.fakes.json_server import make_test_ca

REGIONS = ("eastus", "westeurope")
USAGES_PATH = r"/locations/eastus/usages$"
# size -> (vCPUs, GPUs, family), as the SKU list of both regions has them.
SIZES: dict[str, tuple[int, int | None, str]] = {
    "Standard_NC24ads_A100_v4": (24, 1, "StandardNCADSA100v4Family"),
    "Standard_NC48ads_A100_v4": (48, 2, "StandardNCADSA100v4Family"),
    "Standard_NC96ads_A100_v4": (96, 4, "StandardNCADSA100v4Family"),
    "Standard_ND96isr_H100_v5": (96, 8, "standardNDSH100v5Family"),
    "Standard_NC4as_T4_v3": (4, 1, "standardNCASv3_T4Family"),
    "Standard_D4s_v5": (4, None, "standardDSv5Family"),
}
# region -> [(usage name, localized name, current, limit)], as Usage - List answers.
USAGES: dict[str, list[tuple[str, str, int, int]]] = {
    "eastus": [
        ("availabilitySets", "Availability Sets", 0, 2500),
        ("cores", "Total Regional vCPUs", 40, 350),
        ("virtualMachines", "Virtual Machines", 3, 25000),
        ("standardDSv5Family", "Standard DSv5 Family vCPUs", 16, 100),
        ("standardNCADSA100v4Family", "Standard NCADS_A100_v4 Family vCPUs", 24, 96),
        ("standardNDSH100v5Family", "Standard NDSH100v5 Family vCPUs", 0, 192),
        ("standardNCASv3_T4Family", "Standard NCASv3_T4 Family vCPUs", 8, 4),  # lowered
        ("standardNVADSA10v5Family", "Standard NVADSA10v5 Family vCPUs", 0, 72),
        ("lowPriorityCores", "Total Regional Spot vCPUs", 0, 100),
    ],
    "westeurope": [
        ("cores", "Total Regional vCPUs", 0, 100),
        ("standardNCADSA100v4Family", "Standard NCADS_A100_v4 Family vCPUs", 0, 48),
        ("lowPriorityCores", "Total Regional Spot vCPUs", 4, 10),
    ],
}


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retries' waits, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(azure_retail, "_sleep", recorded.append)
    return recorded


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def arm(tls: tuple[Any, Path]) -> Iterator[FakeResourceManager]:
    with FakeResourceManager(tls=tls[0]) as fake:
        fake.tokens.add(LOOPBACK_TEST_TOKEN)  # the adapter's `credentials: test-token`
        for region in REGIONS:
            fake.resource_skus[region] = [disk_sku("Premium_LRS", region), *(
                vm_sku(size, region, vcpus=vcpus, memory_gb=vcpus * 8, gpus=gpus, family=family)
                for size, (vcpus, gpus, family) in SIZES.items())]
            fake.usages[region] = [vm_usage(name, localized, current=current, limit=limit)
                                   for name, localized, current, limit in USAGES[region]]
        fake.sku_page_size = 4
        fake.usage_page_size = 3
        yield fake


def environ(arm: FakeResourceManager, ca: Path) -> dict[str, str]:
    return {"GREENPLACE_AZURE_BASE_URL": arm.base_url, "GREENPLACE_AZURE_CA_BUNDLE": str(ca),
            "GREENPLACE_AZURE_CREDENTIALS": "test-token",
            "AZURE_SUBSCRIPTION_ID": arm.subscription}


def by_usage(answer: QuotaAnswer) -> dict[tuple[str, str], CapacityPool]:
    return {(p.region, p.source.split()[2]): p for p in answer.pools}


def offer(size: str, region: str = "eastus") -> Offer:
    found = [o for o in load_embedded_catalog().offers
             if o.cloud == "azure" and o.instance_type == size]
    assert found, size
    return dataclasses.replace(found[0], region=region)


def usage_pages(arm: FakeResourceManager, region: str) -> int:
    return sum(r.path.endswith(f"/locations/{region}/usages") for r in arm.requests)


def test_reads_family_and_regional_quotas_of_several_regions_page_after_page(
        arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    answer = quotas_azure.read_quotas(REGIONS, environ(arm, tls[1]))
    pools = by_usage(answer)
    assert set(pools) == {
        ("eastus", "cores"), ("eastus", "standardNCADSA100v4Family"),
        ("eastus", "standardNDSH100v5Family"), ("eastus", "standardNCASv3_T4Family"),
        ("eastus", "lowPriorityCores"), ("westeurope", "cores"),
        ("westeurope", "standardNCADSA100v4Family"), ("westeurope", "lowPriorityCores")}
    assert all(p.unit is Unit.VCPUS and p.cloud == "azure" for p in pools.values())
    assert pools[("eastus", "standardNCADSA100v4Family")].limit == 96 - 24  # usage subtracted
    assert pools[("eastus", "standardNCASv3_T4Family")].limit == 0  # current above a lowered one
    assert pools[("eastus", "cores")].limit == 310
    assert pools[("westeurope", "lowPriorityCores")].limit == 6
    assert pools[("eastus", "standardNCADSA100v4Family")].instance_types == (
        "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4", "Standard_NC96ads_A100_v4")
    assert usage_pages(arm, "eastus") == 3 and usage_pages(arm, "westeurope") == 1
    assert answer.source == quotas_azure.SOURCE


def test_family_pools_match_their_sizes_and_spot_draws_on_the_regional_spot_quota(
        arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    pools = by_usage(quotas_azure.read_quotas(REGIONS, environ(arm, tls[1])))
    a100, h100 = offer("Standard_NC48ads_A100_v4"), offer("Standard_ND96isr_H100_v5")
    family_a100 = pools[("eastus", "standardNCADSA100v4Family")]
    family_h100 = pools[("eastus", "standardNDSH100v5Family")]
    assert family_a100.units_per_instance(a100, spot=False) == 48
    assert not family_a100.matches(h100, spot=False)
    assert family_h100.units_per_instance(h100, spot=False) == 96
    assert not family_h100.matches(h100, spot=True)  # Spot VMs: the regional Spot quota only
    on_demand = [key[1] for key, p in pools.items() if p.matches(h100, spot=False)]
    spot = [key[1] for key, p in pools.items() if p.matches(h100, spot=True)]
    assert sorted(on_demand) == ["cores", "standardNDSH100v5Family"]
    assert spot == ["lowPriorityCores"]
    assert pools[("eastus", "lowPriorityCores")].units_per_instance(h100, spot=True) == 96
    assert not pools[("westeurope", "cores")].matches(h100, spot=False)  # another region
    assert "Standard_D4s_v5" not in pools[("eastus", "cores")].instance_types  # no GPUs


def test_an_unknown_gpu_family_is_skipped_with_the_reason(
        arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    answer = quotas_azure.read_quotas(("eastus",), environ(arm, tls[1]))
    assert [(s.quota, s.region) for s in answer.skipped] == [
        ("standardNVADSA10v5Family", "eastus")]  # not the DSv5 family, not availabilitySets
    assert "no GPU size" in answer.skipped[0].reason


def test_a_region_arm_serves_no_compute_in_is_skipped_with_the_reason(
        arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    answer = quotas_azure.read_quotas(("westeurope", "southindia"), environ(arm, tls[1]))
    assert {p.region for p in answer.pools} == {"westeurope"}
    assert [(s.region, s.quota) for s in answer.skipped] == [("southindia", "")]
    assert "LocationNotAvailableForResourceType" in answer.skipped[0].reason


def test_a_usage_without_its_figures_is_skipped_never_guessed(
        arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    del arm.usages["westeurope"][1]["currentValue"]
    arm.usages["westeurope"][2]["limit"] = -1
    answer = quotas_azure.read_quotas(("westeurope",), environ(arm, tls[1]))
    assert set(by_usage(answer)) == {("westeurope", "cores")}
    reasons = {s.quota: s.reason for s in answer.skipped}
    assert "currentValue None" in reasons["standardNCADSA100v4Family"]
    assert "below 0" in reasons["lowPriorityCores"]


def test_a_throttled_page_is_asked_again_from_where_it_failed(
        arm: FakeResourceManager, tls: tuple[Any, Path], waits: list[float]) -> None:
    arm.throttle("GET", USAGES_PATH, times=2, retry_after_s=3, query={"$skiptoken": "3"})
    pools = by_usage(quotas_azure.read_quotas(("eastus",), environ(arm, tls[1])))
    assert ("eastus", "standardNDSH100v5Family") in pools  # on the throttled second page
    assert waits == [3.0, 3.0]
    first_pages = [r for r in arm.requests if r.path.endswith("/locations/eastus/usages")
                   and "$skiptoken" not in r.query]
    assert len(first_pages) == 1


def test_throttling_that_never_stops_is_a_bounded_clear_error(
        arm: FakeResourceManager, tls: tuple[Any, Path], waits: list[float]) -> None:
    arm.throttle("GET", USAGES_PATH, times=1000, retry_after_s=1)
    with pytest.raises(TransientError) as caught:
        quotas_azure.read_quotas(REGIONS, environ(arm, tls[1]))
    message = str(caught.value)
    assert r"usage.list (eastus) page 1: HTTP 429" in message and "on all 5 tries" in message
    assert "To fix: plan again later" in message
    assert waits == [1.0] * 4
    assert usage_pages(arm, "westeurope") == 0


def test_refused_credentials_are_an_auth_error_naming_the_permissions(
        arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    arm.tokens = set()
    with pytest.raises(AuthError) as caught:
        quotas_azure.read_quotas(REGIONS, environ(arm, tls[1]))
    assert "InvalidAuthenticationToken" in str(caught.value)
    assert "Microsoft.Compute/locations/usages/read" in str(caught.value)


def test_no_subscription_is_an_invalid_request_and_no_credentials(
        arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    without = {k: v for k, v in environ(arm, tls[1]).items() if k != "AZURE_SUBSCRIPTION_ID"}
    assert not quotas_azure.credentials_found(without)
    with pytest.raises(InvalidRequestError, match="To fix: set the azure 'subscription_id'"):
        quotas_azure.read_quotas(REGIONS, without)
    assert arm.requests == []


def test_credentials_found_reads_only_local_variables_and_files(
        arm: FakeResourceManager, tls: tuple[Any, Path], tmp_path: Path) -> None:
    assert quotas_azure.credentials_found(environ(arm, tls[1]))
    subscription = {"AZURE_SUBSCRIPTION_ID": arm.subscription, "HOME": str(tmp_path)}
    assert not quotas_azure.credentials_found(subscription)
    assert quotas_azure.credentials_found({**subscription, "AZURE_CLIENT_ID": "c",
                                           "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s"})
    assert not quotas_azure.credentials_found({**subscription, "AZURE_CLIENT_ID": "c"})
    (tmp_path / ".azure").mkdir()
    (tmp_path / ".azure" / "msal_token_cache.json").write_text("{}")
    assert quotas_azure.credentials_found(subscription)
    assert arm.requests == []
