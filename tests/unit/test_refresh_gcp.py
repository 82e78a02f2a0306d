"""The GCP price refresh through the real google-cloud-billing and google-cloud-compute clients.

Both clients use their REST transport against local fakes that answer in the APIs' JSON:
tests/fakes/billing_catalog.py (Cloud Billing Catalog ``services.skus.list``) and
tests/fakes/gce_server.py (Compute Engine ``machineTypes`` / ``acceleratorTypes``
aggregatedList). Nothing in the fetcher is mocked.

The fake's SKU prices are re-keyed from the embedded offers.csv (Cloud Billing list prices of
2025-07-31): the Americas core, RAM and GPU rates compose exactly into the embedded us-central1
prices, which the happy path checks; Netherlands (europe-west4) is scaled from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from greenplace.providers import credentials
from greenplace.scheduler.catalog.check import check_catalog
from greenplace.scheduler.catalog.loader import Catalog, load_embedded_catalog
from greenplace.scheduler.catalog.refresh import credentials_found, fetcher
from greenplace.scheduler.catalog.refresh import gcp as refresh_gcp
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest
from greenplace.scheduler.exceptions import AuthError, InvalidRequestError, TransientError
from tests.fakes.billing_catalog import FakeCloudCatalog, compute_sku, sku_id
from tests.fakes.gce_server import FakeComputeEngine
from tests.refresh_fakes import (
    PLACES,
    ZONES,
    catalog_skus,
    description,
    offer_machines,
    rate,
)
from tests.refresh_fakes import gcp_environ as environ

NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


@pytest.fixture
def gce() -> Iterator[FakeComputeEngine]:
    with FakeComputeEngine(zones=ZONES) as fake:
        yield offer_machines(fake)


@pytest.fixture
def billing() -> Iterator[FakeCloudCatalog]:
    with FakeCloudCatalog(catalog_skus()) as fake:
        yield fake


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff in hundredths of a second, bounded at half a second per call."""
    monkeypatch.setattr(refresh_gcp, "RETRY_INITIAL_S", 0.01)
    monkeypatch.setattr(refresh_gcp, "RETRY_MAXIMUM_S", 0.05)
    monkeypatch.setattr(refresh_gcp, "RETRY_DEADLINE_S", 0.5)



def request(gce: FakeComputeEngine, billing: FakeCloudCatalog,
            regions: tuple[str, ...] = ("us-central1", "europe-west4", "europe-north1"),
            ) -> RefreshRequest:
    return RefreshRequest(cloud="gcp", regions=regions, catalog=load_embedded_catalog(),
                          environ=environ(gce, billing), now=NOW)


def by_key(prices: CloudPrices) -> dict[tuple[str, str], Any]:
    return {(o.region, o.instance_type): o for o in prices.offers}


def skipped(prices: CloudPrices, region: str, item: str) -> list[str]:
    return [s.reason for s in prices.skipped if s.region == region and s.item == item]


def merged(catalog: Catalog, prices: CloudPrices) -> Catalog:
    """The catalog with the priced regions' embedded GCP offers replaced by the fetched ones."""
    kept = [o for o in catalog.offers
            if not (o.cloud == prices.cloud and o.region in prices.regions)]
    return Catalog.build(catalog.regions, catalog.accelerators, [*kept, *prices.offers])


# --------------------------------------------------------------------------- happy path


def test_prices_gpu_machines_of_several_regions_as_compute_engine_bills_them(
        gce: FakeComputeEngine, billing: FakeCloudCatalog) -> None:
    billing.page_size = 9  # the SKUs come in several pages
    gce.page_size = 4  # and so do the machine types
    prices = fetcher("gcp")(request(gce, billing))
    offers = by_key(prices)

    assert prices.cloud == "gcp" and prices.fetched_at == NOW
    assert prices.regions == ("us-central1", "europe-west4", "europe-north1")
    assert "Cloud Billing Catalog API" in prices.source
    # N1 + an attached GPU: N1 core and RAM SKUs plus the GPU's SKU.
    t4 = offers[("us-central1", "n1-standard-4")]
    assert (t4.accelerator, t4.accelerator_count, t4.vcpus, t4.memory_gib) == ("T4", 1, 4, 15.0)
    assert t4.price_usd_per_hour == pytest.approx(
        4 * 0.031611 + 15 * 0.004237 + 0.35, abs=1e-6)
    assert t4.spot_price_usd_per_hour == pytest.approx(
        4 * 0.00696 + 15 * 0.000932 + 0.14, abs=1e-6)
    assert (t4.as_of, t4.source, t4.price_note) == ("2026-12-02", prices.source, "")
    # A bundled family: its own core / RAM SKUs, count and memory from the machine type.
    a2 = offers[("us-central1", "a2-highgpu-1g")]
    assert (a2.accelerator, a2.accelerator_count, a2.vcpus, a2.memory_gib) == ("A100", 1, 12,
                                                                                85.0)
    mega = offers[("europe-west4", "a3-megagpu-8g")]
    assert (mega.accelerator, mega.accelerator_count, mega.vcpus) == ("H100", 8, 208)
    assert mega.price_usd_per_hour == pytest.approx(
        208 * rate("Netherlands", "A3", "Core") + 1872 * rate("Netherlands", "A3", "Ram")
        + 8 * rate("Netherlands", "Nvidia H100 80GB Mega", "GPU"), abs=1e-5)
    # A size the embedded catalog lacks, whose GPU maps with certainty, is added.
    assert offers[("us-central1", "g2-standard-8")].accelerator == "L4"
    # V100 x 8 on n1-standard-64 only where the zone takes 8 V100s on one VM.
    assert ("us-central1", "n1-standard-64") in offers
    assert ("europe-west4", "n1-standard-64") not in offers
    # No GPU, no offer; a region's regional SKUs price only that region.
    assert all(o.instance_type != "e2-standard-4" for o in prices.offers)
    assert offers[("europe-west4", "n1-standard-4")].price_usd_per_hour == pytest.approx(
        4 * rate("Netherlands", "N1 Predefined", "Core")
        + 15 * rate("Netherlands", "N1 Predefined", "Ram")
        + rate("Netherlands", "Nvidia Tesla T4", "GPU"), abs=1e-6)
    for offer in prices.offers:
        assert offer.spot_price_usd_per_hour is not None
        assert offer.spot_price_usd_per_hour < offer.price_usd_per_hour


def test_composed_prices_match_the_embedded_cloud_billing_list_prices(
        gce: FakeComputeEngine, billing: FakeCloudCatalog) -> None:
    """The Americas rates were re-keyed from offers.csv: composing them must give its rows."""
    catalog = load_embedded_catalog()
    prices = fetcher("gcp")(request(gce, billing, regions=("us-central1",)))
    offers = by_key(prices)
    embedded = {(o.region, o.instance_type): o for o in catalog.offers
                if o.cloud == "gcp" and o.region == "us-central1"}
    compared = sorted(set(offers) & set(embedded))
    assert len(compared) >= 7
    for key in compared:
        assert offers[key].price_usd_per_hour == pytest.approx(
            embedded[key].price_usd_per_hour, abs=0.01), key
        assert (offers[key].accelerator, offers[key].accelerator_count) == (
            embedded[key].accelerator, embedded[key].accelerator_count)


def test_merged_catalog_passes_the_catalog_check(gce: FakeComputeEngine,
                                                 billing: FakeCloudCatalog) -> None:
    catalog = load_embedded_catalog()
    prices = fetcher("gcp")(request(gce, billing))
    assert check_catalog(merged(catalog, prices)) == []


def test_a_bad_price_in_the_catalog_is_flagged_by_the_catalog_check(
        gce: FakeComputeEngine) -> None:
    """An L4 SKU at ten times its price gives offers the catalog check rejects."""
    text = description("Netherlands", "Nvidia L4", "GPU", spot=False)
    bad = compute_sku(text, regions=PLACES["Netherlands"], usd=10 * rate("Netherlands",
                                                                          "Nvidia L4", "GPU"))
    with FakeCloudCatalog(catalog_skus({text: {"pricingInfo": bad["pricingInfo"]}})) as billing:
        prices = fetcher("gcp")(request(gce, billing))
    problems = check_catalog(merged(load_embedded_catalog(), prices))
    assert any("gcp:europe-west4 g2-standard-4" in p and "median" in p for p in problems)


# --------------------------------------------------------------------------- skips


def test_unknown_sku_shapes_are_skipped_with_the_reason_never_priced(
        gce: FakeComputeEngine) -> None:
    l4 = description("Netherlands", "Nvidia L4", "GPU", spot=False)
    tiered = compute_sku(l4, regions=PLACES["Netherlands"], usd=0.6,
                         tiers=[(0, 0.6), (730, 0.5)])
    spot_core = description("Americas", "G2", "Core", spot=True)
    monthly = compute_sku(spot_core, regions=PLACES["Americas"], usd=7.0, unit="GiBy.mo",
                          resource_group="CPU", usage_type="Preemptible")
    overrides = {l4: {"pricingInfo": tiered["pricingInfo"]},
                 spot_core: {"pricingInfo": monthly["pricingInfo"]}}
    with FakeCloudCatalog(catalog_skus(overrides)) as billing:
        prices = fetcher("gcp")(request(gce, billing))
    offers = by_key(prices)

    # A tiered GPU price: the machine is not priced at all there, and says why.
    assert ("europe-west4", "g2-standard-4") not in offers
    [reason] = skipped(prices, "europe-west4", "g2-standard-4")
    assert "price tiers" in reason and sku_id(l4) in reason
    # A spot SKU in another unit: the on-demand price stands, the spot price is not guessed.
    g2 = offers[("us-central1", "g2-standard-4")]
    assert g2.price_usd_per_hour == pytest.approx(0.70683, abs=1e-5)
    assert g2.spot_price_usd_per_hour is None
    [reason] = skipped(prices, "us-central1", "g2-standard-4")
    assert reason.startswith("spot price not published") and "'GiBy.mo'" in reason
    # GPU SKUs the composer cannot read are listed, and price nothing.
    for text in ("H200 141GB GPU running in Americas",
                 "Nvidia L4 Virtual Workstation GPU running in Americas"):
        [reason] = skipped(prices, "us-central1", sku_id(text))
        assert "not one the price composer knows" in reason
    assert offers[("us-central1", "g2-standard-8")].price_usd_per_hour == pytest.approx(
        8 * 0.024988 + 32 * 0.002928 + 0.56003, abs=1e-6)


def test_a_family_without_a_composition_rule_is_skipped(gce: FakeComputeEngine,
                                                        billing: FakeCloudCatalog) -> None:
    prices = fetcher("gcp")(request(gce, billing, regions=("us-central1",)))
    assert ("us-central1", "a3-ultragpu-8g") not in by_key(prices)
    [reason] = skipped(prices, "us-central1", "a3-ultragpu-8g")
    assert "nvidia-h200-141gb" in reason and "no rule" in reason


def test_conflicting_skus_for_one_component_price_nothing(gce: FakeComputeEngine) -> None:
    other = compute_sku("Nvidia Tesla T4 GPU running in Iowa", regions=["us-central1"], usd=0.5)
    other["description"] = description("Americas", "Nvidia Tesla T4", "GPU", spot=False)
    with FakeCloudCatalog([*catalog_skus(), other]) as billing:
        prices = fetcher("gcp")(request(gce, billing, regions=("us-central1",)))
    assert ("us-central1", "n1-standard-4") not in by_key(prices)
    [reason] = skipped(prices, "us-central1", "n1-standard-4")
    assert "differently" in reason and other["skuId"] in reason


def test_a_region_the_cloud_does_not_offer_the_type_in(gce: FakeComputeEngine,
                                                       billing: FakeCloudCatalog) -> None:
    prices = fetcher("gcp")(request(gce, billing, regions=("europe-north1",)))
    offers = by_key(prices)
    # The embedded catalog sells A3 in europe-north1; Compute Engine lists it in no zone.
    for name in ("a3-highgpu-1g", "a3-highgpu-8g"):
        assert ("europe-north1", name) not in offers
        [reason] = skipped(prices, "europe-north1", name)
        assert reason.startswith("not offered there")
    # No zone there takes a T4, so n1-standard-4 + T4 is not offered either.
    assert ("europe-north1", "n1-standard-4") not in offers
    # TPUs are not refreshed, and the skip says why.
    [reason] = skipped(prices, "europe-north1", "v5litepod-8")
    assert "Cloud TPU" in reason
    assert prices.offers == ()


# --------------------------------------------------------------------------- failures


def test_a_sku_page_failing_midway_fails_the_whole_fetch(gce: FakeComputeEngine,
                                                         billing: FakeCloudCatalog) -> None:
    billing.page_size = 10
    billing.fail_page(2)
    with pytest.raises(TransientError) as caught:
        fetcher("gcp")(request(gce, billing))
    assert "cloudbilling services.skus.list" in str(caught.value)
    assert "To fix:" in str(caught.value)
    pages = [r.query.get("pageToken", "") for r in billing.requests]
    assert len(pages) >= 3 and pages[0] == ""  # pages 0 and 1 were read, then page 2 failed


def test_throttling_that_passes_is_retried(gce: FakeComputeEngine,
                                           billing: FakeCloudCatalog) -> None:
    billing.throttle(2)
    gce.throttle("GET", r"/aggregated/machineTypes$", times=2)
    gce.throttle("GET", r"/aggregated/acceleratorTypes$", times=1, status=403)  # user rate
    prices = fetcher("gcp")(request(gce, billing, regions=("us-central1",)))
    assert ("us-central1", "n1-standard-4") in by_key(prices)
    assert len(billing.requests) == 3  # two 429s, then the one page
    assert sum(r.path.endswith("/aggregated/machineTypes") for r in gce.requests) == 3
    assert sum(r.path.endswith("/aggregated/acceleratorTypes") for r in gce.requests) == 2


def test_throttling_that_never_stops_is_a_bounded_clear_error(
        gce: FakeComputeEngine, billing: FakeCloudCatalog) -> None:
    billing.throttle(10**9)
    with pytest.raises(TransientError) as caught:
        fetcher("gcp")(request(gce, billing))
    message = str(caught.value)
    assert caught.value.code == "retries_exhausted"
    assert "cloudbilling services.skus.list" in message and "Quota exceeded" in message
    assert "To fix:" in message
    assert 1 < len(billing.requests) < 1000


def test_an_unreachable_zone_of_an_asked_region_fails_the_fetch(
        gce: FakeComputeEngine, billing: FakeCloudCatalog) -> None:
    gce.unreachable_zones = {"us-central1-b"}
    with pytest.raises(TransientError, match="us-central1-b is unreachable"):
        fetcher("gcp")(request(gce, billing, regions=("us-central1",)))
    # A zone of a region not asked for does not matter.
    assert fetcher("gcp")(request(gce, billing, regions=("europe-west4",))).offers


def test_refused_credentials_are_an_auth_error(gce: FakeComputeEngine,
                                               billing: FakeCloudCatalog) -> None:
    billing.fail_page(0, 403)
    with pytest.raises(AuthError) as caught:
        fetcher("gcp")(request(gce, billing))
    assert "roles/compute.viewer" in str(caught.value)


def test_bad_settings_are_an_invalid_request(gce: FakeComputeEngine,
                                             billing: FakeCloudCatalog) -> None:
    bad = dataclasses.replace(request(gce, billing), environ={
        **environ(gce, billing), "GREENPLACE_GCP_BILLING_API_ENDPOINT":
        "https://cloudbilling.googleapis.com"})
    with pytest.raises(InvalidRequestError, match="To fix:"):
        fetcher("gcp")(bad)
    typo = dataclasses.replace(request(gce, billing), environ={
        **environ(gce, billing), "GREENPLACE_GCP_SETTINGS": '{"projetc": "x"}'})
    with pytest.raises(InvalidRequestError, match="Did you mean 'project'"):
        fetcher("gcp")(typo)
    assert billing.requests == [] and gce.requests == []


# --------------------------------------------------------------------------- credentials


def test_credentials_found_reads_only_local_files(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    product = tmp_path / "product_name"
    product.write_text("Standard PC (Q35 + ICH9, 2009)\n")
    monkeypatch.setattr(credentials, "GCE_PRODUCT_FILE", product)
    assert credentials_found("gcp", {}) is False
    assert credentials_found("gcp", {"HOME": str(tmp_path)}) is False
    adc = tmp_path / ".config" / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_text("{}")
    assert credentials_found("gcp", {"HOME": str(tmp_path)}) is True
    assert credentials_found("gcp", {"GOOGLE_APPLICATION_CREDENTIALS": str(adc)}) is True
    assert credentials_found("gcp", {
        "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "missing.json")}) is False
    fakes = {"GREENPLACE_GCP_CREDENTIALS": "anonymous",
             "GREENPLACE_GCP_API_ENDPOINT": "http://127.0.0.1:1"}
    assert credentials_found("gcp", fakes) is False  # the Catalog API would be Google's
    assert credentials_found("gcp", {
        **fakes, "GREENPLACE_GCP_BILLING_API_ENDPOINT": "http://127.0.0.1:2"}) is True
    assert credentials_found("gcp", {"GREENPLACE_GCP_CREDENTIALS": "anonymous"}) is False
    product.write_text("Google Compute Engine\n")
    assert credentials_found("gcp", {}) is True
