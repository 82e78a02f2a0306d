"""The AWS price fetcher (catalog refresh, issue 15) through the real boto3 SDK.

Pricing: moto has no ``pricing`` service, so GetProducts is answered by a local fake in the
Price List Query API's JSON 1.1 wire format (tests/fakes/aws_pricing.py). EC2: moto (its
offerings and instance types are a snapshot of real EC2 answers) behind a proxy that answers
DescribeSpotPriceHistory as EC2 does (moto's is synthetic; tests/fakes/ec2_spot.py).

The fakes' figures are the embedded catalog's own AWS offers, re-keyed into each wire format:
the price list quotes them 5 % lower (a price cut the refresh must pick up) and the spot
history holds them per zone, with a stale, a Windows and a future record that must be ignored.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.catalog.check import check_catalog
from greenplace.scheduler.catalog.loader import load_embedded_catalog
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.refresh import CloudPrices, RefreshRequest
from greenplace.scheduler.catalog.refresh import aws as refresh_aws
from greenplace.scheduler.exceptions import AuthError, InvalidRequestError, TransientError
from tests.fakes.aws_pricing import PriceListApi, price_list_server
from tests.fakes.ec2_spot import SpotPriceProxy, ec2_with_spot_prices
from tests.refresh_fakes import (
    AWS_SECRET,
    aws_credentials,
    aws_endpoints,
    on_demand_of,
    product_for,
    seed_aws,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
REGIONS = ("us-east-1", "eu-north-1", "eu-west-3", "ap-southeast-2")
OPT_IN_REGION = "me-central-1"  # an opt-in region; the fake account has not enabled it


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials only from the environment; no shared files, no instance metadata."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "GREENPLACE_AWS_")):
            monkeypatch.delenv(name)
    for name, value in aws_credentials(tmp_path).items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def ec2_server() -> Iterator[tuple[str, SpotPriceProxy]]:
    with ec2_with_spot_prices() as pair:
        yield pair


@pytest.fixture(scope="module")
def pricing_server() -> Iterator[tuple[str, PriceListApi]]:
    with price_list_server() as pair:
        yield pair



@pytest.fixture
def fakes(aws_env: None, ec2_server: tuple[str, SpotPriceProxy],
          pricing_server: tuple[str, PriceListApi]) -> tuple[PriceListApi, SpotPriceProxy]:
    """Both fakes, emptied and seeded with the embedded figures of REGIONS."""
    _, proxy = ec2_server
    _, api = pricing_server
    proxy.reset()
    api.reset()
    proxy.disable_region(OPT_IN_REGION)
    seed_aws(api, proxy, REGIONS, now=NOW)
    return api, proxy


@pytest.fixture
def environ(ec2_server: tuple[str, SpotPriceProxy],
            pricing_server: tuple[str, PriceListApi]) -> dict[str, str]:
    """The settings a fetch reads: botocore's endpoint variables, aimed at the fakes."""
    return aws_endpoints(ec2_server[0], pricing_server[0])


def refresh(environ: dict[str, str], regions: tuple[str, ...] = REGIONS) -> CloudPrices:
    return refresh_aws.fetch(RefreshRequest(cloud="aws", regions=regions,
                                            catalog=load_embedded_catalog(), environ=environ,
                                            now=NOW))


def offer_in(result: CloudPrices, region: str, instance_type: str) -> Offer:
    found = [o for o in result.offers if (o.region, o.instance_type) == (region, instance_type)]
    assert len(found) == 1, f"{region} {instance_type}: {found}"
    return found[0]


def reasons(result: CloudPrices, region: str, item: str) -> list[str]:
    return [s.reason for s in result.skipped if (s.region, s.item) == (region, item)]


def embedded(region: str, instance_type: str) -> Offer:
    return next(o for o in load_embedded_catalog().offers
                if (o.cloud, o.region, o.instance_type) == ("aws", region, instance_type))


def merged(result: CloudPrices) -> Catalog:
    """The embedded catalog with the priced regions' AWS offers replaced by the refresh's."""
    catalog = load_embedded_catalog()
    kept = [o for o in catalog.offers if not (o.cloud == "aws" and o.region in result.regions)]
    return Catalog.build(catalog.regions, catalog.accelerators, [*kept, *result.offers])


# -- the happy path ----------------------------------------------------------------------


def test_prices_several_regions_from_the_price_list_and_spot_history(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    result = refresh(environ, (*REGIONS, OPT_IN_REGION, "us-gov-west-1"))

    assert result.cloud == "aws"
    assert result.regions == REGIONS
    assert result.not_enabled == (OPT_IN_REGION,)
    assert "another AWS partition" in " ".join(reasons(result, "us-gov-west-1", ""))
    assert {o.region for o in result.offers} == set(REGIONS)
    assert all(o.source.startswith(refresh_aws.SOURCE) and o.as_of == "2026-11-27"
               and o.price_note == "" for o in result.offers)

    p4d = offer_in(result, "us-east-1", "p4d.24xlarge")
    assert (p4d.accelerator, p4d.accelerator_count, p4d.vcpus, p4d.memory_gib) == (
        "A100", 8, 96, 1152.0)
    assert p4d.price_usd_per_hour == float(on_demand_of(embedded("us-east-1", "p4d.24xlarge")))
    # The cheapest zone's latest Linux/UNIX price: not the stale, Windows or future record.
    assert p4d.spot_price_usd_per_hour == 6.5323
    assert "6.532300-8.165375 USD/h over 3 zones, cheapest us-east-1a" in p4d.source

    # p4de is offered in us-east-1b and 1c only: zone a's cheaper record is not its price.
    p4de = offer_in(result, "us-east-1", "p4de.24xlarge")
    assert p4de.spot_price_usd_per_hour == float(Decimal("20.128") * Decimal("1.10"))
    assert "cheapest us-east-1b" in p4de.source

    trn1 = offer_in(result, "us-east-1", "trn1.32xlarge")  # Neuron devices, not GPUs
    assert (trn1.accelerator, trn1.accelerator_count, trn1.vcpus, trn1.memory_gib) == (
        "Trainium", 16, 128, 512.0)
    assert trn1.spot_price_usd_per_hour is None and trn1.source == refresh_aws.SOURCE

    # p5e is sold without an on-demand price: a spot-only offer.
    p5e = offer_in(result, "eu-north-1", "p5e.48xlarge")
    assert p5e.price_usd_per_hour is None
    assert p5e.spot_price_usd_per_hour == 12.9925

    # A spot price not below on-demand (68.41 vs 67.97 after the price cut) is left out.
    p5_sydney = offer_in(result, "ap-southeast-2", "p5.48xlarge")
    assert p5_sydney.spot_price_usd_per_hour is None
    assert "not below on-demand" in " ".join(reasons(result, "ap-southeast-2", "p5.48xlarge"))


def test_asks_the_price_list_for_linux_shared_tenancy_in_the_priced_regions_only(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, _ = fakes
    refresh(environ, (*REGIONS, OPT_IN_REGION))

    body = api.requests[0]
    assert body["ServiceCode"] == "AmazonEC2" and body["FormatVersion"] == "aws_v1"
    filters = {f["Field"]: (f["Type"], f["Value"]) for f in body["Filters"]}
    assert filters["tenancy"] == ("TERM_MATCH", "Shared")
    assert filters["operatingSystem"] == ("TERM_MATCH", "Linux")
    assert filters["preInstalledSw"] == ("TERM_MATCH", "NA")
    assert filters["capacitystatus"] == ("TERM_MATCH", "Used")
    assert filters["regionCode"] == ("ANY_OF", ",".join(REGIONS))
    kind, types = filters["instanceType"]
    assert kind == "ANY_OF" and {"p4d.24xlarge", "trn1.32xlarge", "g4dn.xlarge"} <= set(
        types.split(","))


def test_merged_catalog_passes_the_catalog_check(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    assert check_catalog(merged(refresh(environ))) == []


def test_a_wrong_price_from_the_api_is_flagged_by_the_catalog_check(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, _ = fakes
    p5 = embedded("us-east-1", "p5.48xlarge")
    api.products = [p for p in api.products
                    if p["product"]["attributes"]["usagetype"] != "BoxUsage:p5.48xlarge"
                    or p["product"]["attributes"]["regionCode"] != "us-east-1"]
    api.products.append(product_for(p5, usd_per_hour=Decimal("550.40")))  # ten times too dear

    result = refresh(environ)

    assert offer_in(result, "us-east-1", "p5.48xlarge").price_usd_per_hour == 550.4
    problems = check_catalog(merged(result))
    assert len(problems) == 1 and "aws:us-east-1 p5.48xlarge" in problems[0]


def test_a_region_that_does_not_offer_the_type_gets_no_offer_for_it(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    # The embedded catalog has p3.2xlarge in us-east-1; EC2 no longer offers it there.
    result = refresh(environ, ("us-east-1",))

    assert not [o for o in result.offers if o.instance_type == "p3.2xlarge"]
    assert reasons(result, "us-east-1", "p3.2xlarge") == [
        "not offered in us-east-1 (DescribeInstanceTypeOfferings)"]


def test_offered_without_any_price_is_skipped_not_guessed(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    # eu-west-3 offers g6.2xlarge, but the fake's price list and spot history have none.
    result = refresh(environ, ("eu-west-3",))

    assert [o.instance_type for o in result.offers] == ["g6.24xlarge"]
    assert "no Linux on-demand price" in " ".join(reasons(result, "eu-west-3", "g6.2xlarge"))


# -- shapes the fetcher does not know ----------------------------------------------------


def _replace_product(api: PriceListApi, region: str, instance_type: str,
                     **changes: Any) -> None:
    offer = embedded(region, instance_type)
    api.products = [p for p in api.products
                    if (p["product"]["attributes"]["regionCode"],
                        p["product"]["attributes"]["instanceType"]) != (region, instance_type)]
    api.products.append(product_for(offer, **changes))


def test_a_price_shape_it_does_not_know_is_skipped_with_the_reason(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, _ = fakes
    _replace_product(api, "us-east-1", "p4d.24xlarge", unit="Quantity")
    _replace_product(api, "eu-north-1", "p5.48xlarge", currency="CNY")
    duplicate = product_for(embedded("us-east-1", "g6.24xlarge"), usd_per_hour="5.99")
    duplicate["product"]["sku"] = "DUPLICATESKU0001"
    api.products.append(duplicate)

    result = refresh(environ)

    for region, instance_type, why in (("us-east-1", "p4d.24xlarge", "not per hour"),
                                       ("eu-north-1", "p5.48xlarge", "not in USD"),
                                       ("us-east-1", "g6.24xlarge", "disagree")):
        assert not [o for o in result.offers
                    if (o.region, o.instance_type) == (region, instance_type)]
        assert why in " ".join(reasons(result, region, instance_type))
    assert offer_in(result, "us-east-1", "p4de.24xlarge").price_usd_per_hour is not None


def test_a_gpu_count_that_disagrees_with_the_catalog_is_skipped(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, _ = fakes
    _replace_product(api, "us-east-1", "p4d.24xlarge", gpus=4)

    result = refresh(environ, ("us-east-1",))

    assert not [o for o in result.offers if o.instance_type == "p4d.24xlarge"]
    assert "4 GPUs" in " ".join(reasons(result, "us-east-1", "p4d.24xlarge"))


# -- pagination --------------------------------------------------------------------------


def test_reads_every_page_of_the_price_list_and_of_the_spot_history(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, proxy = fakes
    whole = refresh(environ)
    spot_calls = proxy.hits["DescribeSpotPriceHistory"]
    assert len(api.requests) == 1 and spot_calls == len(REGIONS)  # one page each
    api.requests.clear()
    api.page_limit, proxy.page_limit = 3, 2

    paged = refresh(environ)

    assert len(api.requests) > 3 and all(r.get("NextToken") for r in api.requests[1:])
    assert proxy.hits["DescribeSpotPriceHistory"] - spot_calls > 2 * len(REGIONS)
    assert sorted(paged.offers, key=str) == sorted(whole.offers, key=str)


def test_a_price_list_page_failing_midway_fails_the_fetch(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, _ = fakes
    api.page_limit = 3
    api.fail("InternalErrorException", times=100, continuation_only=True)

    with pytest.raises(TransientError) as caught:
        refresh(environ, ("us-east-1",))

    assert "GetProducts" in str(caught.value) and "To fix:" in str(caught.value)
    assert api.requests[0].get("NextToken") is None
    assert len(api.requests) == 1 + refresh_aws.MAX_ATTEMPTS  # the first page, then page 2


def test_a_spot_history_page_failing_midway_fails_the_fetch(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    _, proxy = fakes
    proxy.page_limit = 2
    proxy.fail_continuation("DescribeSpotPriceHistory", "InternalError", times=100)

    with pytest.raises(TransientError) as caught:
        refresh(environ, ("us-east-1",))

    assert "DescribeSpotPriceHistory in us-east-1" in str(caught.value)


# -- throttling --------------------------------------------------------------------------


def test_price_list_throttling_is_retried(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, _ = fakes
    api.fail("ThrottlingException", times=2, message="Rate exceeded")

    result = refresh(environ, ("us-east-1",))

    assert api.requests[0] == api.requests[1] == api.requests[2]
    assert offer_in(result, "us-east-1", "p4d.24xlarge").price_usd_per_hour is not None


def test_price_list_throttling_that_never_stops_is_a_bounded_transient_error(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, _ = fakes
    api.fail("ThrottlingException", times=100, message="Rate exceeded")

    with pytest.raises(TransientError) as caught:
        refresh(environ)

    message = str(caught.value)
    assert caught.value.code == "ThrottlingException"
    assert "GetProducts" in message and f"after {refresh_aws.MAX_ATTEMPTS} attempts" in message
    assert len(api.requests) == refresh_aws.MAX_ATTEMPTS
    assert AWS_SECRET not in message


def test_ec2_request_limit_is_retried(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    _, proxy = fakes
    proxy.fail("DescribeInstanceTypeOfferings", "RequestLimitExceeded", times=2)

    result = refresh(environ, ("us-east-1",))

    assert offer_in(result, "us-east-1", "g6.24xlarge").spot_price_usd_per_hour == 3.0624


def test_ec2_request_limit_that_never_stops_is_a_bounded_transient_error(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    _, proxy = fakes
    proxy.fail("DescribeSpotPriceHistory", "RequestLimitExceeded", times=100)

    with pytest.raises(TransientError) as caught:
        refresh(environ, ("us-east-1",))

    assert caught.value.code == "RequestLimitExceeded"
    assert "DescribeSpotPriceHistory in us-east-1" in str(caught.value)
    assert proxy.hits["DescribeSpotPriceHistory"] == refresh_aws.MAX_ATTEMPTS


# -- credentials -------------------------------------------------------------------------


def test_no_credentials_is_an_auth_error_naming_the_call(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    with pytest.raises(AuthError) as caught:
        refresh(environ)

    assert "DescribeRegions" in str(caught.value) and "To fix:" in str(caught.value)


def test_a_refused_permission_names_the_iam_actions(
        fakes: tuple[PriceListApi, SpotPriceProxy], environ: dict[str, str]) -> None:
    api, _ = fakes
    api.fail("AccessDeniedException", message="User is not authorized to perform "
                                              "pricing:GetProducts")

    with pytest.raises(AuthError) as caught:
        refresh(environ)

    assert "pricing:GetProducts" in str(caught.value)
    assert "ec2:DescribeSpotPriceHistory" in str(caught.value)
    assert AWS_SECRET not in str(caught.value)


def test_an_endpoint_setting_that_is_not_a_url_is_a_clear_error(aws_env: None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        refresh({"AWS_ENDPOINT_URL_EC2": "not a url"})

    assert "'not a url'" in str(caught.value)
    assert "To fix: set AWS_ENDPOINT_URL_EC2" in str(caught.value)


@pytest.mark.parametrize(("files", "variables", "found"), [
    ({}, {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s"}, True),
    ({}, {"AWS_ACCESS_KEY_ID": "AKIA1"}, False),
    ({}, {"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x"}, True),
    ({}, {"AWS_WEB_IDENTITY_TOKEN_FILE": "/t", "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}, True),
    ({"credentials": "[default]\naws_access_key_id = AKIA1\naws_secret_access_key = s\n"},
     {}, True),
    ({"credentials": "[other]\naws_access_key_id = AKIA1\n"}, {}, False),
    ({"config": "[profile ops]\ncredential_source = Ec2InstanceMetadata\n"},
     {"AWS_PROFILE": "ops"}, True),
    ({"config": "[profile ops]\nregion = eu-north-1\n"}, {"AWS_PROFILE": "ops"}, False),
    ({"config": "not an ini file ["}, {}, False),
    ({}, {}, False),
])
def test_credentials_found_reads_the_chain_without_a_network_call(
        tmp_path: Path, files: dict[str, str], variables: dict[str, str], found: bool) -> None:
    for name, text in files.items():
        (tmp_path / ".aws").mkdir(exist_ok=True)
        (tmp_path / ".aws" / name).write_text(text)
    environ = {"HOME": str(tmp_path), **variables}
    assert refresh_aws.credentials_found(environ) is found


# -- what to look for --------------------------------------------------------------------


def test_looks_for_the_known_aws_types_and_the_catalog_offers_with_their_accelerators() -> None:
    catalog = load_embedded_catalog()
    odd = dataclasses.replace(embedded("us-east-1", "g6.24xlarge"), instance_type="g9.xlarge",
                              accelerator="T4")
    odd_too = dataclasses.replace(odd, region="us-west-2", accelerator="L4")
    with_odd = Catalog.build(catalog.regions, catalog.accelerators,
                             [*catalog.offers, odd, odd_too])
    request = RefreshRequest(cloud="aws", regions=("us-east-1",), catalog=with_odd,
                             environ={}, now=NOW)

    wanted, skipped = refresh_aws.wanted_types(request)

    assert wanted["p4de.24xlarge"].accelerator == "A100-80GB"
    assert wanted["trn1.32xlarge"].count == 16
    assert not [t for t in wanted if t.startswith(("Standard_", "a2-", "v5"))]
    assert "g9.xlarge" not in wanted
    assert [s.item for s in skipped] == ["g9.xlarge"] and "disagree" in skipped[0].reason


def test_filter_values_are_cut_to_the_price_list_limit_keeping_every_value() -> None:
    regions = [f"xx-region-{i:03d}" for i in range(150)]  # 14 characters each

    groups = refresh_aws._chunks(regions)

    assert len(groups) > 1
    assert all(len(",".join(g)) <= refresh_aws.MAX_FILTER_VALUE_CHARS for g in groups)
    assert [r for g in groups for r in g] == regions
