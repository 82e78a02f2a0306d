"""The Azure price refresh (scheduler/catalog/refresh/azure.py) against local fakes.

Prices come over httpx from tests/fakes/retail_prices.py, a Retail Prices API answering in the
API's paged JSON and evaluating its OData filters; availability comes through the real
azure-mgmt-compute client from tests/fakes/arm_server.py (``Microsoft.Compute/skus``, over TLS
with a throwaway CA and the adapter's loopback test token). Nothing in the fetcher is mocked;
the retries' waits are recorded instead of slept.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenplace.scheduler.catalog.check import check_catalog
from greenplace.scheduler.catalog.loader import Catalog, load_embedded_catalog
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.refresh import (
    azure,
    azure_retail,
    credentials_found,
    fetcher,
    needs_credentials,
)
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest
from greenplace.scheduler.exceptions import AuthError, InvalidRequestError, TransientError
from tests.fakes.arm_server import FakeResourceManager, arm_error
from tests.fakes.json_server import make_test_ca
from tests.fakes.retail_prices import PRICES, FakeRetailPrices, item
from tests.refresh_fakes import SHAPES, offer_skus, sku_list
from tests.refresh_fakes import azure_prices_only as prices_only
from tests.refresh_fakes import azure_with_subscription as with_subscription

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
REGIONS = ("eastus", "westus2", "southcentralus")
SKUS_PATH = r"/providers/Microsoft\.Compute/skus$"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The retries' waits, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(azure_retail, "_sleep", recorded.append)
    return recorded


@pytest.fixture
def retail() -> Iterator[FakeRetailPrices]:
    with FakeRetailPrices(page_size=7) as fake:
        yield fake


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def arm(tls: tuple[Any, Path]) -> Iterator[FakeResourceManager]:
    with FakeResourceManager(tls=tls[0]) as fake:
        offer_skus(fake, REGIONS)
        fake.sku_page_size = 4
        yield fake


def request(environ: dict[str, str], regions: tuple[str, ...] = REGIONS,
            catalog: Catalog | None = None) -> RefreshRequest:
    return RefreshRequest(cloud="azure", regions=regions, environ=environ, now=NOW,
                          catalog=catalog or load_embedded_catalog())


def offer(prices: CloudPrices, region: str, size: str) -> Offer:
    found = [o for o in prices.offers if (o.region, o.instance_type) == (region, size)]
    assert len(found) == 1, f"{region} {size}: {len(found)} offers"
    return found[0]


def reasons(prices: CloudPrices, region: str, size: str) -> list[str]:
    return [s.reason for s in prices.skipped if (s.region, s.item) == (region, size)]


def merged(prices: CloudPrices) -> Catalog:
    """The embedded catalog with the priced regions' Azure offers replaced by ``prices``."""
    catalog = load_embedded_catalog()
    kept = [o for o in catalog.offers
            if not (o.cloud == "azure" and o.region in prices.regions)]
    return Catalog.build(catalog.regions, catalog.accelerators, [*kept, *prices.offers])


# --------------------------------------------------------------------------- happy paths


def test_prices_and_availability_of_every_catalog_size_in_several_regions(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    prices = fetcher("azure")(request(with_subscription(retail, arm, tls[1])))
    assert prices.cloud == "azure" and prices.regions == REGIONS
    assert prices.fetched_at == NOW
    assert "Resource SKUs API" in prices.source and "not checked" not in prices.source
    t4 = offer(prices, "eastus", "Standard_NC4as_T4_v3")
    # The Linux pay-as-you-go meter in effect and its Spot meter: not the Windows row, the
    # older price, the Low Priority meter, the Dev/Test row or the one-year reservation.
    assert (t4.price_usd_per_hour, t4.spot_price_usd_per_hour) == (0.526, 0.062699)
    assert (t4.accelerator, t4.accelerator_count, t4.vcpus, t4.memory_gib) == ("T4", 1, 4, 28.0)
    assert t4.as_of == "2026-11-27" and t4.source == prices.source and t4.price_note == ""
    h100 = offer(prices, "southcentralus", "Standard_NC80adis_H100_v5")
    assert (h100.accelerator, h100.accelerator_count) == ("H100-NVL", 2)
    assert (h100.price_usd_per_hour, h100.spot_price_usd_per_hour) == (16.76, None)
    # The SKU list's own memory figure, not the embedded catalog's.
    assert offer(prices, "eastus", "Standard_ND96amsr_A100_v4").memory_gib == 1900.0
    offered = {(o.region, o.instance_type) for o in prices.offers}
    assert offered == {(region, size) for region in REGIONS for size in PRICES[region]
                       if size in SHAPES}
    # Several sizes per request (joined with `or`), one region per request.
    first_pages = [q for q in retail.price_requests() if "$skip" not in q]
    assert len(first_pages) == len(REGIONS) * 2  # 13 sizes, 10 per request
    assert all(q["$filter"].count(" or armSkuName eq ") >= 2 for q in first_pages)
    assert all("priceType eq 'Consumption'" in q["$filter"] for q in first_pages)


def test_without_a_subscription_prices_come_from_the_retail_list_alone(
        retail: FakeRetailPrices, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    # The Retail Prices API needs no credentials: a refresh runs, but with no subscription
    # configured Azure is not in use here, so the service's daily refresh leaves it alone.
    assert needs_credentials("azure") is False and credentials_found("azure", {}) is False
    assert credentials_found("azure", {"AZURE_SUBSCRIPTION_ID": "0000-sub"}) is True
    prices = azure.fetch(request(prices_only(retail), regions=("eastus",)))
    assert prices.source.endswith("availability from the retail price list, not checked "
                                  "against the subscription")
    amsr = offer(prices, "eastus", "Standard_ND96amsr_A100_v4")
    assert (amsr.price_usd_per_hour, amsr.spot_price_usd_per_hour) == (32.77, 3.6047)
    assert amsr.memory_gib == 1800.0  # the embedded catalog's figure: no SKU list was read
    assert len(prices.offers) == len([s for s in PRICES["eastus"] if s in SHAPES])


def test_pages_are_followed_until_next_page_link_is_null(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    environ = with_subscription(retail, arm, tls[1])
    small_pages = azure.fetch(request(environ))
    skips = sorted({int(q["$skip"]) for q in retail.price_requests() if "$skip" in q})
    assert skips[:3] == [7, 14, 21]  # page_size 7: NextPageLink followed page after page
    assert len([r for r in arm.requests if r.path.endswith("/Microsoft.Compute/skus")
                and "$skiptoken" in r.query]) >= len(REGIONS)
    retail.page_size = 1000
    arm.sku_page_size = 1000
    assert azure.fetch(request(environ)).offers == small_pages.offers


# --------------------------------------------------------------------------- failures


def test_a_price_page_failing_midway_fails_the_whole_fetch(
        retail: FakeRetailPrices, waits: list[float]) -> None:
    retail.fail_page(14, 500)  # the third page of every query that has one
    with pytest.raises(TransientError) as caught:
        azure.fetch(request(prices_only(retail)))
    message = str(caught.value)
    assert "Retail Prices API GET page 3 of the prices of 10 VM size(s) in eastus" in message
    assert "HTTP 500 on all 5 tries" in message and "To fix:" in message
    assert waits == [1.0, 2.0, 4.0, 8.0]  # exponential backoff without Retry-After


def test_a_refused_page_fails_at_once(retail: FakeRetailPrices, waits: list[float]) -> None:
    retail.fail_page(7, 400)
    with pytest.raises(InvalidRequestError, match="page 2 .* HTTP 400"):
        azure.fetch(request(prices_only(retail)))
    assert waits == []


def test_a_sku_page_failing_midway_fails_the_whole_fetch(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path],
        waits: list[float]) -> None:
    arm.fail_calls("GET", SKUS_PATH, arm_error(403, "AuthorizationFailed", "The client does "
                   "not have authorization to perform action 'Microsoft.Compute/skus/read'."),
                   query={"$skiptoken": "4"})
    with pytest.raises(AuthError) as caught:
        azure.fetch(request(with_subscription(retail, arm, tls[1])))
    message = str(caught.value)
    assert "resourceSkus.list (location eq 'eastus') page 2" in message
    assert "Reader" in message and "Microsoft.Compute/skus/read" in message
    assert waits == []


def test_throttled_prices_succeed_after_retries(
        retail: FakeRetailPrices, waits: list[float]) -> None:
    retail.throttle(times=2, retry_after_s=3)
    prices = azure.fetch(request(prices_only(retail), regions=("eastus",)))
    assert offer(prices, "eastus", "Standard_NC4as_T4_v3").price_usd_per_hour == 0.526
    assert waits == [3.0, 3.0]  # what Retry-After asked


def test_throttling_that_never_stops_is_a_bounded_clear_error(
        retail: FakeRetailPrices, waits: list[float]) -> None:
    retail.throttle(times=1000, retry_after_s=600)
    with pytest.raises(TransientError) as caught:
        azure.fetch(request(prices_only(retail)))
    assert caught.value.code == "TooManyRequests"
    assert "throttled (HTTP 429) on all 5 tries (240 s of waiting in between)" in str(caught.value)
    assert waits == [60.0] * 4  # Retry-After capped at MAX_WAIT_S
    assert len(retail.price_requests()) == 5


def test_throttled_sku_list_is_asked_again_from_the_failed_page(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path],
        waits: list[float]) -> None:
    arm.throttle("GET", SKUS_PATH, times=2, retry_after_s=2, query={"$skiptoken": "4"})
    prices = azure.fetch(request(with_subscription(retail, arm, tls[1]), regions=("eastus",)))
    assert len(prices.offers) == len([s for s in PRICES["eastus"] if s in SHAPES])
    assert waits == [2.0, 2.0]
    first_pages = [r for r in arm.requests if r.path.endswith("/Microsoft.Compute/skus")
                   and "$skiptoken" not in r.query]
    assert len(first_pages) == 1  # the retries asked page 2 again, not the whole list


def test_a_sku_list_throttled_for_good_is_a_transient_error(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path],
        waits: list[float]) -> None:
    arm.throttle("GET", SKUS_PATH, times=1000, retry_after_s=1)
    with pytest.raises(TransientError, match=r"resourceSkus.list \(location eq 'eastus'\) "
                       r"page 1: HTTP 429 .* on all 5 tries"):
        azure.fetch(request(with_subscription(retail, arm, tls[1])))
    assert waits == [1.0] * 4


def test_refused_credentials_of_a_configured_subscription_are_an_auth_error(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    arm.tokens = set()  # ARM refuses the token: no quiet fall back to unchecked availability
    with pytest.raises(AuthError, match="InvalidAuthenticationToken"):
        azure.fetch(request(with_subscription(retail, arm, tls[1])))


def test_bad_settings_and_regions_are_invalid_requests(retail: FakeRetailPrices) -> None:
    with pytest.raises(InvalidRequestError, match="retail_prices_url .* To fix"):
        azure.fetch(request({"GREENPLACE_AZURE_RETAIL_PRICES_URL":
                             "http://prices.example.com/api/retail/prices"}))
    with pytest.raises(InvalidRequestError, match="mars-north1 is not an Azure region"):
        azure.fetch(request(prices_only(retail), regions=("eastus", "mars-north1")))
    assert retail.price_requests() == []  # refused before any call


def test_the_retail_prices_url_is_a_setting_https_or_loopback_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    assert azure.refresh_settings({}).retail_prices_url == \
        "https://prices.azure.com/api/retail/prices"
    mirror = '{"retail_prices_url": "https://prices.mirror.example/api/retail/prices"}'
    settings = azure.refresh_settings({"GREENPLACE_AZURE_SETTINGS": mirror})
    assert settings.retail_prices_url == "https://prices.mirror.example/api/retail/prices"
    assert settings.subscription_id is None
    assert azure.refresh_settings({"AZURE_SUBSCRIPTION_ID": "sub-1"}).subscription_id == "sub-1"
    with pytest.raises(InvalidRequestError, match="unknown azure adapter setting|Unknown"):
        azure.refresh_settings({"GREENPLACE_AZURE_SETTINGS": '{"retail_price_url": "x"}'})


def test_a_next_page_on_another_host_is_refused(retail: FakeRetailPrices) -> None:
    retail.next_link_base = "http://localhost:9"  # a mirror that links pages elsewhere
    with pytest.raises(InvalidRequestError, match="NextPageLink points at http://localhost"):
        azure.fetch(request(prices_only(retail), regions=("eastus",)))
    assert len(retail.price_requests()) == 1  # the other host was never asked


# --------------------------------------------------------------------------- what is skipped


def test_a_meter_shape_the_code_does_not_know_is_skipped_never_priced(
        retail: FakeRetailPrices) -> None:
    retail.items.append(item("eastus", "Standard_NC8as_T4_v3", price=75.2,
                             meter="NC8as T4 v3", product="Virtual Machines NCasT4_v3 Series",
                             unit="100 Hours"))
    retail.items.append(item("eastus", "Standard_NC16as_T4_v3", price=1.1,
                             meter="NC16as T4 v3", product="Virtual Machines NCasT4_v3 Series",
                             primary=True, effective="2026-01-01T00:00:00Z"))
    retail.items.append(item("eastus", "Standard_NC16as_T4_v3", price=1.3,
                             meter="NC16as T4 v3", product="Virtual Machines NCasT4_v3 Series",
                             effective="2026-01-01T00:00:00Z"))
    prices = azure.fetch(request(prices_only(retail), regions=("eastus",)))
    sizes = {o.instance_type for o in prices.offers}
    assert "Standard_NC8as_T4_v3" not in sizes and "Standard_NC16as_T4_v3" not in sizes
    assert reasons(prices, "eastus", "Standard_NC8as_T4_v3") == [
        "price rows not understood, not priced: meter 'NC8as T4 v3' of 'Virtual Machines "
        "NCasT4_v3 Series': unit '100 Hours', not '1 Hour'"]
    assert "2 different pay-as-you-go prices in effect since 2026-01-01 (1.1, 1.3 USD/h)" in \
        reasons(prices, "eastus", "Standard_NC16as_T4_v3")[0]
    assert "Standard_NC4as_T4_v3" in sizes  # the rest of the batch is priced


def test_the_latest_primary_price_in_effect_wins() -> None:
    def row(price: float, **kw: Any) -> dict[str, Any]:
        return item("eastus", "Standard_NC4as_T4_v3", price=price, meter="NC4as T4 v3",
                    product="Virtual Machines NCasT4_v3 Series", **kw)

    rows = [row(0.6), row(0.5, effective="2026-06-01T00:00:00Z"),
            row(0.55, effective="2026-06-01T00:00:00Z", primary=False),
            row(0.4, effective="2027-01-01T00:00:00Z")]  # announced, not in effect yet
    found = azure_retail.read_prices(rows, now=NOW)
    assert (found.on_demand_usd_per_hour, found.spot_usd_per_hour, found.problem) == (
        0.5, None, "")


def test_a_region_without_the_size_does_not_offer_it(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    only_prices = azure.fetch(request(prices_only(retail), regions=("westus2",)))
    assert reasons(only_prices, "westus2", "Standard_ND96isr_H100_v5") == [
        "no Linux pay-as-you-go or Spot price in this region: not offered here"]
    checked = azure.fetch(request(with_subscription(retail, arm, tls[1]),
                                  regions=("westus2",)))
    assert reasons(checked, "westus2", "Standard_ND96isr_H100_v5") == [
        "not offered in this region: the subscription's SKU list has no such size here"]
    assert not [o for o in checked.offers if o.instance_type == "Standard_ND96isr_H100_v5"]


def test_a_size_restricted_for_the_subscription_is_not_offered_there(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    changes: dict[str, dict[str, Any]] = {
        "Standard_ND96isr_H100_v5": {"restricted": "NotAvailableForSubscription"},
        "Standard_ND96asr_v4": {"restricted": "QuotaId"},
        "Standard_NC4as_T4_v3": {"restricted_zones": ("1", "2", "3")},  # regional VMs still go
        "Standard_NC8as_T4_v3": {"gpus": 2},
        "Standard_NC16as_T4_v3": {"gpus": None},  # a shape without the GPUs capability
    }
    arm.resource_skus["eastus"] = sku_list("eastus", **changes)
    prices = azure.fetch(request(with_subscription(retail, arm, tls[1]),
                                 regions=("eastus", "southcentralus")))
    assert reasons(prices, "eastus", "Standard_ND96isr_H100_v5") == [
        "not offered in this region to the subscription: Location restriction, reason "
        "NotAvailableForSubscription"]
    assert "reason QuotaId" in reasons(prices, "eastus", "Standard_ND96asr_v4")[0]
    assert "gives 2 GPUs, the catalog 1 x T4" in reasons(prices, "eastus",
                                                         "Standard_NC8as_T4_v3")[0]
    assert reasons(prices, "eastus", "Standard_NC16as_T4_v3") == [
        "the SKU list gives no GPUs capability, the catalog 1 x T4: not mapped with certainty"]
    assert reasons(prices, "eastus", "Standard_NC16as_T4_v3") == [
        "the SKU list gives no GPUs capability, the catalog 1 x T4: not mapped with certainty"]
    assert offer(prices, "eastus", "Standard_NC4as_T4_v3").price_usd_per_hour == 0.526
    assert offer(prices, "southcentralus", "Standard_ND96asr_v4").price_usd_per_hour == 32.63


def test_a_retired_size_is_never_offered_even_with_a_price_row(
        retail: FakeRetailPrices) -> None:
    embedded = load_embedded_catalog()
    stale = dataclasses.replace(offer_of(embedded, "eastus", "Standard_NC64as_T4_v3"),
                                instance_type="Standard_NC24s_v3", accelerator="V100-PCIe",
                                accelerator_count=4, vcpus=24, memory_gib=448.0)
    catalog = Catalog.build(embedded.regions, embedded.accelerators, [*embedded.offers, stale])
    prices = azure.fetch(request(prices_only(retail), regions=("eastus",), catalog=catalog))
    assert "Standard_NC24s_v3" not in {o.instance_type for o in prices.offers}
    assert reasons(prices, "", "Standard_NC24s_v3") == [
        "NCv3 series retired by Azure on 2025-09-30: never offered, whatever price row still "
        "names it"]
    assert not [q for q in retail.price_requests() if "Standard_NC24s_v3" in q["$filter"]]


def test_a_spot_price_not_below_on_demand_is_no_spot_offer(retail: FakeRetailPrices) -> None:
    retail.items.append(item("eastus", "Standard_ND40rs_v2", price=23.0,
                             meter="ND40rs v2 Spot", product="Virtual Machines NDv2 Series",
                             effective="2026-02-01T00:00:00Z"))
    prices = azure.fetch(request(prices_only(retail), regions=("eastus",)))
    nd = offer(prices, "eastus", "Standard_ND40rs_v2")
    assert (nd.price_usd_per_hour, nd.spot_price_usd_per_hour) == (22.032, None)
    assert reasons(prices, "eastus", "Standard_ND40rs_v2") == [
        "Spot price 23 USD/h is not below pay-as-you-go 22.032 USD/h: no Spot offer"]


# --------------------------------------------------------------------------- the catalog check


def offer_of(catalog: Catalog, region: str, size: str) -> Offer:
    return next(o for o in catalog.offers
                if (o.cloud, o.region, o.instance_type) == ("azure", region, size))


def test_the_merged_catalog_passes_the_catalog_check(
        retail: FakeRetailPrices, arm: FakeResourceManager, tls: tuple[Any, Path]) -> None:
    prices = azure.fetch(request(with_subscription(retail, arm, tls[1])))
    catalog = merged(prices)
    assert check_catalog(catalog) == []
    assert offer_of(catalog, "eastus", "Standard_ND96amsr_A100_v4").as_of == "2026-11-27"
    # Regions not priced keep their embedded offers.
    assert offer_of(catalog, "westus3", "Standard_NC4as_T4_v3").as_of == "2025-08-01"


def test_a_bad_price_in_the_list_is_flagged_by_the_catalog_check(
        retail: FakeRetailPrices) -> None:
    for row in retail.items:
        if (row["armRegionName"], row["armSkuName"], row["meterName"]) == (
                "eastus", "Standard_ND96asr_v4", "ND96asr A100 v4"):
            row["retailPrice"] = row["unitPrice"] = row["retailPrice"] * 10
    prices = azure.fetch(request(prices_only(retail)))
    problems = check_catalog(merged(prices))
    assert len(problems) == 1
    assert "azure:eastus Standard_ND96asr_v4: 34.00 USD per A100-hour" in problems[0]
