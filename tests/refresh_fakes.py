"""The three clouds' price-refresh fakes, seeded: shared by the fetcher tests
(tests/unit/test_refresh_*.py) and the end-to-end CLI tests
(tests/integration/test_catalog_refresh_e2e.py).

Each fake answers in its API's own wire format (see tests/fakes/); this module only says what
they sell: AWS the embedded catalog's offers re-keyed into price-list products (5 % below the
embedded figures) and spot records per zone; GCP Cloud Billing SKUs and Compute Engine
machine / GPU types; Azure the Retail Prices items of ``tests.fakes.retail_prices.PRICES`` and
the ARM SKU list of its sizes. The settings functions give the environment variables a
fetcher (or ``greenplace catalog refresh``) reads to reach them.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from greenplace.providers.azure import LOOPBACK_TEST_TOKEN
from greenplace.scheduler.catalog.loader import load_embedded_catalog
from greenplace.scheduler.catalog.model import Offer
from tests.fakes.arm_server import FakeResourceManager, disk_sku, vm_sku
from tests.fakes.aws_pricing import PriceListApi, ec2_product
from tests.fakes.billing_catalog import FakeCloudCatalog, compute_sku
from tests.fakes.ec2_spot import SpotPriceProxy, SpotRecord
from tests.fakes.gce_server import FakeComputeEngine
from tests.fakes.retail_prices import PRICES, FakeRetailPrices

# --- AWS: the Price List Query API and EC2's spot price history ---------------------------
PRICE_CUT = Decimal("0.95")  # the fake price list quotes the embedded figures 5 % lower
ZONE_FACTORS = {"a": Decimal("1.00"), "b": Decimal("1.10"), "c": Decimal("1.25")}
AWS_SECRET = "gpRefreshSecretValue0123456789NEVERPRINT"
SIX_PLACES = Decimal("0.000001")


def on_demand_of(offer: Offer) -> Decimal:
    assert offer.price_usd_per_hour is not None
    return (Decimal(str(offer.price_usd_per_hour)) * PRICE_CUT).quantize(SIX_PLACES)


def product_for(offer: Offer, **changes: Any) -> dict[str, Any]:
    catalog = load_embedded_catalog()
    fields: dict[str, Any] = dict(
        region=offer.region, location=catalog.region(f"aws:{offer.region}").location,
        instance_type=offer.instance_type, vcpus=offer.vcpus,
        memory_gib=int(offer.memory_gib),
        gpus=None if offer.accelerator.startswith("Trainium") else offer.accelerator_count,
        usd_per_hour=None if offer.price_usd_per_hour is None else on_demand_of(offer))
    fields.update(changes)
    return ec2_product(**fields)


def seed_aws(api: PriceListApi, proxy: SpotPriceProxy, regions: tuple[str, ...], *,
             now: datetime) -> None:
    """The embedded AWS offers of ``regions`` as price-list products and spot records,
    with products and records the fetcher must not take (other OS, tenancy, capacity
    status; stale, Windows and future spot records)."""
    for offer in load_embedded_catalog().offers:
        if offer.cloud != "aws" or offer.region not in regions:
            continue
        if offer.price_usd_per_hour is not None:
            api.products.append(product_for(offer))
            dear = (on_demand_of(offer) * 2).quantize(SIX_PLACES)
            api.products.append(product_for(offer, operating_system="Windows",
                                            usd_per_hour=dear))
            api.products.append(product_for(offer, tenancy="Dedicated", usd_per_hour=dear))
            api.products.append(product_for(offer, capacity_status="UnusedCapacityReservation",
                                            usd_per_hour=dear))
        if offer.spot_price_usd_per_hour is None:
            continue
        spot = Decimal(str(offer.spot_price_usd_per_hour))
        for suffix, factor in ZONE_FACTORS.items():
            proxy.add_price(SpotRecord(
                region=offer.region, zone=f"{offer.region}{suffix}",
                instance_type=offer.instance_type, product="Linux/UNIX",
                usd_per_hour=(spot * factor).quantize(SIX_PLACES), at=now - timedelta(hours=2)))
        zone_a = f"{offer.region}a"
        for product, factor, at in (("Linux/UNIX", "0.5", now - timedelta(days=3)),
                                    ("Windows", "0.3", now - timedelta(hours=1)),
                                    ("Linux/UNIX", "0.2", now + timedelta(hours=1))):
            proxy.add_price(SpotRecord(
                region=offer.region, zone=zone_a, instance_type=offer.instance_type,
                product=product, usd_per_hour=(spot * Decimal(factor)).quantize(SIX_PLACES),
                at=at))


def aws_credentials(home: Path) -> dict[str, str]:
    """Keys only from the environment: no shared files (under ``home``, absent), no instance
    metadata. Values to set after removing every other ``AWS_*`` variable."""
    return {"AWS_ACCESS_KEY_ID": "AKIAGREENPLACEREFRESH", "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_CONFIG_FILE": str(home / "no-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true"}


def aws_endpoints(ec2_url: str, pricing_url: str) -> dict[str, str]:
    """botocore's endpoint variables, aimed at the EC2 proxy and the price list fake."""
    return {"AWS_ENDPOINT_URL_EC2": ec2_url, "AWS_ENDPOINT_URL_PRICING": pricing_url}


# --- GCP: the Cloud Billing Catalog and Compute Engine ---------------------------------
ZONES = {
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c"],
    "europe-west4": ["europe-west4-a", "europe-west4-b"],
    "europe-north1": ["europe-north1-a"],
}
# Where each SKU location's prices apply (serviceRegions): a multi-regional "Americas" SKU and
# regional ones, as the Catalog publishes them.
PLACES = {"Americas": ["us-central1", "us-east1", "us-east4", "us-west1"],
          "Netherlands": ["europe-west4"], "Finland": ["europe-north1"]}

# USD per hour (core, GPU) or per GiB-hour (RAM): (on demand, spot), Americas.
AMERICAS: dict[tuple[str, str], tuple[float, float]] = {
    ("N1 Predefined", "Core"): (0.031611, 0.00696), ("N1 Predefined", "Ram"): (0.004237, 0.000932),
    ("A2", "Core"): (0.031611, 0.0127), ("A2", "Ram"): (0.004237, 0.0017),
    ("A3", "Core"): (0.029563, 0.0065), ("A3", "Ram"): (0.002478, 0.0006),
    ("G2", "Core"): (0.024988, 0.0099), ("G2", "Ram"): (0.002928, 0.0012),
    ("Nvidia Tesla T4", "GPU"): (0.35, 0.14), ("Nvidia Tesla V100", "GPU"): (2.48, 1.24),
    ("Nvidia Tesla A100", "GPU"): (2.933908, 1.17),
    ("Nvidia Tesla A100 80GB", "GPU"): (3.969175, 1.59),
    ("Nvidia H100 80GB", "GPU"): (9.71276, 2.0), ("Nvidia H100 80GB Mega", "GPU"): (10.4, 2.2),
    ("Nvidia L4", "GPU"): (0.56003, 0.22),
}
SCALE = {"Americas": 1.0, "Netherlands": 1.07, "Finland": 1.09}

# Machine types per zone: name -> (vCPUs, memoryMb, bundled GPUs or None).
MACHINES: dict[str, tuple[int, int, tuple[str, int] | None]] = {
    "n1-standard-4": (4, 15360, None), "n1-standard-8": (8, 30720, None),
    "n1-standard-64": (64, 245760, None),
    "a2-highgpu-1g": (12, 87040, ("nvidia-tesla-a100", 1)),
    "a2-highgpu-8g": (96, 696320, ("nvidia-tesla-a100", 8)),
    "a2-ultragpu-1g": (12, 174080, ("nvidia-a100-80gb", 1)),
    "a3-highgpu-1g": (26, 239616, ("nvidia-h100-80gb", 1)),
    "a3-highgpu-8g": (208, 1916928, ("nvidia-h100-80gb", 8)),
    "a3-megagpu-8g": (208, 1916928, ("nvidia-h100-mega-80gb", 8)),
    "a3-ultragpu-8g": (224, 3022848, ("nvidia-h200-141gb", 8)),
    "g2-standard-4": (4, 16384, ("nvidia-l4", 1)),
    "g2-standard-8": (8, 32768, ("nvidia-l4", 1)),
    "e2-standard-4": (4, 16384, None),  # no GPU: never asked for
}
OFFERED: dict[str, list[str]] = {  # zone -> machine types it offers
    "us-central1-a": ["n1-standard-4", "n1-standard-8", "n1-standard-64", "a2-highgpu-1g",
                      "a2-highgpu-8g", "a3-highgpu-1g", "a3-highgpu-8g", "a3-ultragpu-8g",
                      "e2-standard-4"],
    "us-central1-b": ["n1-standard-4", "a2-ultragpu-1g", "g2-standard-4", "g2-standard-8"],
    "us-central1-c": ["n1-standard-4", "g2-standard-4"],
    "europe-west4-a": ["n1-standard-4", "n1-standard-8", "a2-highgpu-8g", "a3-megagpu-8g"],
    "europe-west4-b": ["n1-standard-4", "g2-standard-4", "a3-highgpu-1g"],
    "europe-north1-a": ["n1-standard-4", "e2-standard-4"],
}
GPUS: dict[str, list[tuple[str, int]]] = {  # zone -> attachable GPUs (type, max per VM)
    "us-central1-a": [("nvidia-tesla-t4", 4), ("nvidia-tesla-v100", 8)],
    "us-central1-b": [("nvidia-tesla-t4", 4)],
    "europe-west4-a": [("nvidia-tesla-t4", 4), ("nvidia-tesla-v100", 8)],
    "europe-north1-a": [("nvidia-tesla-p100", 4)],
}


def rate(place: str, name: str, part: str, *, spot: bool = False) -> float:
    """The fake's price of one component in one SKU location."""
    return round(AMERICAS[(name, part)][1 if spot else 0] * SCALE[place], 6)


def description(place: str, name: str, part: str, *, spot: bool) -> str:
    if part == "GPU":
        middle = " attached to Spot Preemptible VMs" if spot else ""
        return f"{name} GPU{middle} running in {place}"
    return f"{'Spot Preemptible ' if spot else ''}{name} Instance {part} running in {place}"


def catalog_skus(overrides: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The Compute Engine SKUs of the fake, plus others the composer must leave alone."""
    skus = []
    for place, regions in PLACES.items():
        for (name, part) in AMERICAS:
            for spot in (False, True):
                text = description(place, name, part, spot=spot)
                group = {"GPU": "GPU", "Core": "CPU", "Ram": "RAM"}[part]
                if name == "N1 Predefined":
                    group = "N1Standard"
                sku = compute_sku(text, regions=regions, usd=rate(place, name, part, spot=spot),
                                  unit="GiBy.h" if part == "Ram" else "h",
                                  resource_group=group,
                                  usage_type="Preemptible" if spot else "OnDemand")
                sku.update((overrides or {}).get(text, {}))
                skus.append(sku)
    skus += [
        compute_sku("Balanced PD Capacity in Americas", regions=PLACES["Americas"], usd=0.1,
                    unit="GiBy.mo", resource_group="SSD"),
        compute_sku("N2 Instance Core running in Americas", regions=PLACES["Americas"],
                    usd=0.031611, resource_group="CPU"),
        compute_sku("Commitment v1: A2 Cpu in Americas for 1 Year", regions=PLACES["Americas"],
                    usd=0.019915, resource_group="CPU", usage_type="Commit1Yr"),
        # GPU SKUs whose description the composer does not know: listed as skipped.
        compute_sku("H200 141GB GPU running in Americas", regions=PLACES["Americas"],
                    usd=10.85),
        compute_sku("Nvidia L4 Virtual Workstation GPU running in Americas",
                    regions=PLACES["Americas"], usd=0.2),
    ]
    return skus


def offer_machines(fake: FakeComputeEngine) -> FakeComputeEngine:
    """``fake`` (made with ``zones=ZONES``) offering the machine and GPU types of OFFERED and
    GPUS."""
    for zone, names in OFFERED.items():
        for name in names:
            vcpus, memory_mb, gpus = MACHINES[name]
            fake.offer_machine_type(zone, name, vcpus=vcpus, memory_mb=memory_mb, gpus=gpus)
    for zone, gpus in GPUS.items():
        for gpu, most in gpus:
            fake.offer_accelerator_type(zone, gpu, max_cards=most)
    return fake


def gcp_environ(gce: FakeComputeEngine, billing: FakeCloudCatalog) -> dict[str, str]:
    """The settings a GCP refresh reads, aimed at both fakes (anonymous credentials)."""
    return {"GREENPLACE_GCP_PROJECT": gce.project, "GREENPLACE_GCP_API_ENDPOINT": gce.base_url,
            "GREENPLACE_GCP_BILLING_API_ENDPOINT": billing.base_url,
            "GREENPLACE_GCP_CREDENTIALS": "anonymous"}


# --- Azure: the Retail Prices API and Resource Manager's SKU list ------------------------
# Each size as ARM's SKU list describes it: (vCPUs, MemoryGB, GPUs, family). ND96amsr A100 v4
# has 1900 GB (the embedded catalog says 1800): the refresh takes the cloud's own figure.
SHAPES: dict[str, tuple[int, float, int, str]] = {
    "Standard_NC4as_T4_v3": (4, 28, 1, "standardNCASv3_T4Family"),
    "Standard_NC8as_T4_v3": (8, 56, 1, "standardNCASv3_T4Family"),
    "Standard_NC16as_T4_v3": (16, 110, 1, "standardNCASv3_T4Family"),
    "Standard_NC64as_T4_v3": (64, 440, 4, "standardNCASv3_T4Family"),
    "Standard_NC24ads_A100_v4": (24, 220, 1, "StandardNCADSA100v4Family"),
    "Standard_NC48ads_A100_v4": (48, 440, 2, "StandardNCADSA100v4Family"),
    "Standard_NC96ads_A100_v4": (96, 880, 4, "StandardNCADSA100v4Family"),
    "Standard_NC40ads_H100_v5": (40, 320, 1, "StandardNCadsH100v5Family"),
    "Standard_NC80adis_H100_v5": (80, 640, 2, "StandardNCadsH100v5Family"),
    "Standard_ND40rs_v2": (40, 672, 8, "standardNDSv2Family"),
    "Standard_ND96asr_v4": (96, 900, 8, "standardNDASv4_A100Family"),
    "Standard_ND96amsr_A100_v4": (96, 1900, 8, "standardNDAMSv4_A100Family"),
    "Standard_ND96isr_H100_v5": (96, 1900, 8, "standardNDSH100v5Family"),
}


def sku_list(region: str, **changes: dict[str, Any]) -> list[dict[str, Any]]:
    """A region's SKU list: its GPU sizes (those the fake price list sells there), a disk and a
    size without GPUs. ``changes``: vm_sku keywords per size."""
    skus = [disk_sku("Premium_LRS", region),
            vm_sku("Standard_D4s_v5", region, vcpus=4, memory_gb=16, gpus=None,
                   family="standardDSv5Family")]
    for size in sorted(PRICES[region]):
        if size not in SHAPES:
            continue
        vcpus, memory_gb, gpus, family = SHAPES[size]
        keywords: dict[str, Any] = {"vcpus": vcpus, "memory_gb": memory_gb, "gpus": gpus,
                                    "family": family, **changes.get(size, {})}
        skus.append(vm_sku(size, region, **keywords))
    return skus


def offer_skus(fake: FakeResourceManager, regions: tuple[str, ...]) -> FakeResourceManager:
    """``fake`` accepting the adapter's loopback test token and listing ``regions``' SKUs."""
    fake.tokens.add(LOOPBACK_TEST_TOKEN)  # the adapter's `credentials: test-token`
    fake.resource_skus = {region: sku_list(region) for region in regions}
    return fake


def azure_prices_only(retail: FakeRetailPrices) -> dict[str, str]:
    """The settings of a price-only Azure refresh (no subscription: availability unchecked)."""
    return {"GREENPLACE_AZURE_RETAIL_PRICES_URL": retail.url}


def azure_with_subscription(retail: FakeRetailPrices, arm: FakeResourceManager,
                            ca: Path) -> dict[str, str]:
    """The settings of an Azure refresh that also checks availability in the ARM fake
    (TLS with the test CA ``ca``, the adapter's loopback test token)."""
    return {**azure_prices_only(retail), "GREENPLACE_AZURE_BASE_URL": arm.base_url,
            "GREENPLACE_AZURE_CA_BUNDLE": str(ca), "GREENPLACE_AZURE_CREDENTIALS": "test-token",
            "AZURE_SUBSCRIPTION_ID": arm.subscription}
