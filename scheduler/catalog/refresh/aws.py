"""AWS prices and availability for the live catalog (issue 15), through boto3.

What one ``fetch`` calls (all reads; the IAM actions are listed in ``PERMISSIONS``):

* ``ec2:DescribeRegions`` (``AllRegions=true``, in the home region): opt-in regions the
  account has not enabled (``not-opted-in``) go to ``CloudPrices.not_enabled``, unpriced.
* ``pricing:GetProducts`` (the Price List Query API, endpoint in us-east-1): service
  ``AmazonEC2``, Linux, shared tenancy, no pre-installed software, capacity status ``Used``,
  the instance types and regions asked for (``ANY_OF`` filters), page after page.
* per region, ``ec2:DescribeInstanceTypeOfferings`` (by region, then by Availability Zone),
  ``ec2:DescribeInstanceTypes`` (vCPUs, memory, GPU / Neuron device count) and
  ``ec2:DescribeSpotPriceHistory`` (``Linux/UNIX``, the price in effect at ``request.now``).

How an offer is composed: the on-demand price is the one ``OnDemand`` term's one hourly USD
price dimension of the region's product; the spot price is the cheapest Availability Zone's
latest Linux/UNIX spot price among the zones that offer the type, and the offer's ``source``
gives the spread when the zones differ (not ``price_note``: a note there explains an unusual
price and exempts the row from the catalog's price band, which a spread must not). vCPUs,
memory and the accelerator count are EC2's own (DescribeInstanceTypes); the accelerator's
name is the catalog's (``KNOWN_INSTANCES``, else the embedded offers of that type): EC2 names
chips (``A100``) but not their memory or form.

Design choices:

* Only instance types greenplace can place are looked for: the catalog's AWS offers and the
  AWS rows of ``KNOWN_INSTANCES``. A type whose count from EC2 disagrees with the catalog's,
  a product whose price shape is not one hourly USD figure, or two products that disagree,
  is skipped with the reason, never priced by a guess.
* Regions of the other partitions (``cn-*``, ``us-gov-*``) need their own accounts and
  price lists: they are skipped, not priced with commercial figures.
* Calls go one after the other (about four per region plus a few price-list pages), each
  with botocore's standard retry mode and ``MAX_ATTEMPTS`` attempts (throttling:
  ``ThrottlingException``, ``RequestLimitExceeded``); a call that still fails raises, so a
  fetch is all or nothing.
* Endpoints come from ``request.environ`` by botocore's own variables
  (``AWS_ENDPOINT_URL_PRICING``, ``AWS_ENDPOINT_URL_EC2``, ``AWS_ENDPOINT_URL``), the rule the
  AWS adapter follows; credentials only from boto3's default chain, never read here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal, InvalidOperation
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from greenplace.providers import aws as adapter
from greenplace.providers import credentials
from greenplace.providers.errors import provider_error
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.offer_checks import KNOWN_INSTANCES
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest, Skipped
from greenplace.scheduler.exceptions import (
    AuthError,
    InvalidRequestError,
    TransientError,
    UnknownNameError,
)

CLOUD = "aws"
OPERATION = "catalog refresh"
SOURCE = ("AWS Price List Query API (GetProducts) + EC2 DescribeSpotPriceHistory, "
          "DescribeInstanceTypeOfferings, DescribeInstanceTypes")
PERMISSIONS = ("pricing:GetProducts", "ec2:DescribeRegions",
               "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
               "ec2:DescribeSpotPriceHistory")
# The Price List Query API answers in us-east-1, eu-central-1 and ap-south-1, with the same
# figures; us-east-1 is its first documented endpoint.
PRICING_REGION = "us-east-1"
DEFAULT_HOME_REGION = "us-east-1"  # where DescribeRegions is asked, unless AWS_REGION says
MAX_ATTEMPTS = 3  # botocore standard mode: the first call and two retries with backoff
RETRY_CONFIG = botocore.config.Config(
    retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    connect_timeout=10, read_timeout=60,
)
PRICE_LIST_PAGE_SIZE = 100  # GetProducts' maximum
MAX_FILTER_VALUE_CHARS = 1024  # a GetProducts filter value's maximum length
# The product every offer prices: what the catalog's on-demand column means.
PRICE_LIST_TERMS = {"tenancy": "Shared", "operatingSystem": "Linux", "preInstalledSw": "NA",
                    "capacitystatus": "Used"}
SPOT_PRODUCT = "Linux/UNIX"
OTHER_PARTITIONS = ("cn-", "us-gov-")
NOT_OPTED_IN = "not-opted-in"
_AWS_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9]+")
# Profile keys through which boto3's chain finds credentials (static keys, an assumed role,
# an external process, IAM Identity Center, web identity, an instance or task role).


@dataclass(frozen=True, slots=True)
class _Expected:
    """What the catalog says an instance type carries."""

    accelerator: str  # canonical catalog name
    count: int


@dataclass(frozen=True, slots=True)
class _Spec:
    """EC2's own figures for an instance type (DescribeInstanceTypes)."""

    vcpus: int
    memory_gib: float
    accelerator_count: int | None  # GPUs or Neuron devices; None when EC2 lists neither


class _UnknownShape(Exception):
    """A price-list product or spot record the fetcher cannot read with certainty."""


# -- credentials -------------------------------------------------------------------------


def credentials_found(environ: Mapping[str, str]) -> bool:
    """Whether boto3's default chain would find credentials here, without a network call
    (``providers.credentials.aws``: an EC2 instance role must be named in a profile)."""
    return credentials.aws(environ)


# -- errors ------------------------------------------------------------------------------


@contextmanager
def _calling(call: str, where: str, *, operation: str = OPERATION,
             permissions: tuple[str, ...] = PERMISSIONS) -> Iterator[None]:
    """Turn an SDK error of ``call`` (after botocore's retries) into a ProviderError.

    ``operation`` and ``permissions`` name what the caller does and the IAM actions it needs
    (the account quota reader shares this mapping with its own).
    """
    try:
        yield
    except adapter._CREDENTIAL_ERRORS as exc:
        raise provider_error(
            AuthError, f"{call} in {where}: no usable AWS credentials ({type(exc).__name__})",
            provider=CLOUD, operation=operation, code=type(exc).__name__,
            fix="configure credentials for boto3's default chain (AWS_PROFILE, `aws "
                "configure`, `aws sso login`, or an instance / task role)") from exc
    except adapter._CONNECTION_ERRORS as exc:
        raise provider_error(TransientError, f"{call} in {where}: {exc}", provider=CLOUD,
                             operation=operation, code=type(exc).__name__) from exc
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code") or None
        metadata = exc.response.get("ResponseMetadata", {})
        retries = int(metadata.get("RetryAttempts") or 0)
        tried = f" (gave up after {retries + 1} attempts)" if retries else ""
        message = f"{call} in {where}: {error.get('Message') or exc}{tried}"
        cls = adapter.ERROR_CODES.classify(code, http_status=metadata.get("HTTPStatusCode"))
        fix = (f"give the credentials these IAM actions: {', '.join(permissions)}"
               if cls is AuthError else None)
        raise adapter.ERROR_CODES.error(
            message, provider=CLOUD, operation=operation, code=code,
            http_status=metadata.get("HTTPStatusCode"), fix=fix) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise provider_error(InvalidRequestError, f"{call} in {where}: {exc}", provider=CLOUD,
                             operation=operation, code=type(exc).__name__) from exc


# -- what to look for --------------------------------------------------------------------


def wanted_types(request: RefreshRequest) -> tuple[dict[str, _Expected], list[Skipped]]:
    """The AWS instance types greenplace can place, with the catalog's accelerator and count.

    From ``KNOWN_INSTANCES`` (its AWS rows) and the catalog's AWS offers; a type whose
    offers disagree on their accelerator, or name one the catalog does not know, is skipped.
    """
    shapes: dict[str, set[tuple[str, int]]] = {}
    for instance_type, shape in KNOWN_INSTANCES.items():
        if _AWS_INSTANCE_TYPE.fullmatch(instance_type):
            shapes[instance_type] = {shape}
    for offer in request.catalog.offers:
        if offer.cloud == CLOUD and offer.instance_type not in KNOWN_INSTANCES:
            shapes.setdefault(offer.instance_type, set()).add(
                (offer.accelerator, offer.accelerator_count))
    wanted: dict[str, _Expected] = {}
    skipped: list[Skipped] = []
    for instance_type, found in sorted(shapes.items()):
        if len(found) != 1:
            skipped.append(Skipped(region="", item=instance_type, reason=(
                f"the catalog's offers of it disagree on its accelerator ({sorted(found)})")))
            continue
        ((name, count),) = found
        try:
            wanted[instance_type] = _Expected(request.catalog.accelerator(name).name, count)
        except UnknownNameError:
            skipped.append(Skipped(region="", item=instance_type,
                                   reason=f"accelerator {name!r} is not in the catalog"))
    return wanted, skipped


def _chunks(values: Iterable[str], limit: int = MAX_FILTER_VALUE_CHARS) -> list[list[str]]:
    """``values`` cut into groups whose comma-joined text fits one filter value."""
    groups: list[list[str]] = [[]]
    for value in values:
        if groups[-1] and len(",".join([*groups[-1], value])) > limit:
            groups.append([])
        groups[-1].append(value)
    return [g for g in groups if g]


# -- the price list ----------------------------------------------------------------------


def _price_list(pricing: Any, types: list[str], regions: list[str]
                ) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], list[Skipped]]:
    """Every price-list product of ``types`` in ``regions``, by (region, instance type)."""
    products: dict[tuple[str, str], list[dict[str, Any]]] = {}
    skipped: list[Skipped] = []
    asked = {(r, t) for r in regions for t in types}
    fixed = [{"Type": "TERM_MATCH", "Field": field, "Value": value}
             for field, value in PRICE_LIST_TERMS.items()]
    for type_group in _chunks(types):
        for region_group in _chunks(regions):
            filters = [*fixed,
                       {"Type": "ANY_OF", "Field": "instanceType", "Value": ",".join(type_group)},
                       {"Type": "ANY_OF", "Field": "regionCode", "Value": ",".join(region_group)}]
            with _calling("GetProducts", f"{PRICING_REGION} (Price List Query API)"):
                pages = pricing.get_paginator("get_products").paginate(
                    ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1",
                    PaginationConfig={"PageSize": PRICE_LIST_PAGE_SIZE})
                entries = [entry for page in pages for entry in page.get("PriceList", [])]
            for entry in entries:
                try:
                    document = json.loads(entry) if isinstance(entry, str) else entry
                    attributes = document["product"]["attributes"]
                    key = (str(attributes["regionCode"]), str(attributes["instanceType"]))
                except (ValueError, TypeError, KeyError) as exc:
                    skipped.append(Skipped(region="", item="GetProducts entry", reason=(
                        f"not a price-list product with a region and instance type ({exc!r})")))
                    continue
                if key in asked and all(attributes.get(field) == value
                                        for field, value in PRICE_LIST_TERMS.items()):
                    products.setdefault(key, []).append(document)
    return products, skipped


def hourly_usd(document: Mapping[str, Any]) -> float | None:
    """The on-demand USD per hour of one price-list product; None when it has no on-demand
    term (a type sold otherwise, e.g. through Capacity Blocks only).

    Raises:
        _UnknownShape: anything but one term with one hourly, positive USD price dimension.
    """
    terms = (document.get("terms") or {}).get("OnDemand") or {}
    if not terms:
        return None
    if len(terms) != 1:
        raise _UnknownShape(f"{len(terms)} on-demand terms in one product")
    (term,) = terms.values()
    dimensions = term.get("priceDimensions") or {}
    if len(dimensions) != 1:
        raise _UnknownShape(f"{len(dimensions)} price dimensions in the on-demand term")
    (dimension,) = dimensions.values()
    if dimension.get("unit") != "Hrs":
        raise _UnknownShape(f"on-demand price per {dimension.get('unit')!r}, not per hour")
    prices = dimension.get("pricePerUnit") or {}
    if "USD" not in prices:
        raise _UnknownShape(f"on-demand price in {sorted(prices)}, not in USD")
    try:
        usd = Decimal(str(prices["USD"]))
    except InvalidOperation as exc:
        raise _UnknownShape(f"on-demand price {prices['USD']!r} is not a number") from exc
    if not usd.is_finite() or usd <= 0:
        raise _UnknownShape(f"on-demand price {prices['USD']!r} USD per hour")
    return float(usd)


def _on_demand(documents: list[dict[str, Any]], expected: _Expected) -> float | None:
    """The one on-demand price the products of one (region, type) agree on."""
    for document in documents:
        gpus = str(document["product"]["attributes"].get("gpu", "")).strip()
        if gpus.isdigit() and int(gpus) != expected.count:
            raise _UnknownShape(f"the price list gives it {gpus} GPUs, the catalog "
                                f"{expected.count} x {expected.accelerator}")
    prices = {hourly_usd(document) for document in documents}
    if len(prices) > 1:
        raise _UnknownShape(f"{len(documents)} products disagree on the on-demand price "
                            f"({sorted(str(p) for p in prices)})")
    return prices.pop() if prices else None


# -- EC2, one region ---------------------------------------------------------------------


def _offered(ec2: Any, region: str, types: list[str], location_type: str
             ) -> dict[str, set[str]]:
    """Instance type -> the locations (the region, or its zones) EC2 offers it in."""
    offered: dict[str, set[str]] = {}
    with _calling("DescribeInstanceTypeOfferings", f"{region} ({location_type})"):
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType=location_type, Filters=[{"Name": "instance-type", "Values": types}])
        for page in pages:
            for offering in page.get("InstanceTypeOfferings", []):
                offered.setdefault(offering["InstanceType"], set()).add(offering["Location"])
    return offered


def _specs(ec2: Any, region: str, types: list[str]) -> dict[str, _Spec]:
    """EC2's vCPUs, memory and accelerator count of each of ``types``."""
    specs: dict[str, _Spec] = {}
    with _calling("DescribeInstanceTypes", region):
        for page in ec2.get_paginator("describe_instance_types").paginate(InstanceTypes=types):
            for item in page.get("InstanceTypes", []):
                devices = ((item.get("GpuInfo") or {}).get("Gpus")
                           or (item.get("NeuronInfo") or {}).get("NeuronDevices") or [])
                count = sum(int(d.get("Count") or 0) for d in devices)
                specs[item["InstanceType"]] = _Spec(
                    vcpus=int(item["VCpuInfo"]["DefaultVCpus"]),
                    memory_gib=int(item["MemoryInfo"]["SizeInMiB"]) / 1024,
                    accelerator_count=count or None)
    return specs


def _spot_by_zone(ec2: Any, region: str, types: list[str], request: RefreshRequest
                  ) -> dict[str, dict[str, Decimal]]:
    """Instance type -> zone -> the Linux/UNIX spot price in effect at ``request.now``.

    ``StartTime`` = ``EndTime`` = now: EC2 answers, per zone, the last price change at or
    before that moment; the latest record of each zone wins.
    """
    latest: dict[tuple[str, str], tuple[Any, Decimal]] = {}
    with _calling("DescribeSpotPriceHistory", region):
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=types, ProductDescriptions=[SPOT_PRODUCT], StartTime=request.now,
            EndTime=request.now)
        for page in pages:
            for record in page.get("SpotPriceHistory", []):
                if record.get("ProductDescription") != SPOT_PRODUCT:
                    continue
                try:
                    price = Decimal(str(record["SpotPrice"]))
                except (KeyError, InvalidOperation):
                    continue  # no figure to keep; the zone counts as having no spot price
                key = (record["InstanceType"], record["AvailabilityZone"])
                stamp = record["Timestamp"]
                if price > 0 and stamp <= request.now and (
                        key not in latest or stamp > latest[key][0]):
                    latest[key] = (stamp, price)
    by_type: dict[str, dict[str, Decimal]] = {}
    for (instance_type, zone), (_, price) in latest.items():
        by_type.setdefault(instance_type, {})[zone] = price
    return by_type


def spot_note(prices_by_zone: Mapping[str, Decimal]) -> str:
    """The spread of spot prices across zones ("" when every zone has the same price)."""
    if len(set(prices_by_zone.values())) < 2:
        return ""
    cheapest = min(prices_by_zone, key=lambda zone: (prices_by_zone[zone], zone))
    return (f"spot by Availability Zone: {min(prices_by_zone.values())}-"
            f"{max(prices_by_zone.values())} USD/h over {len(prices_by_zone)} zones, "
            f"cheapest {cheapest} (EC2 spot price history)")


@dataclass(frozen=True, slots=True)
class _RegionAnswers:
    """What EC2 says about the wanted types in one region."""

    zones: dict[str, set[str]]  # offered types -> the zones offering them
    specs: dict[str, _Spec]
    spot: dict[str, dict[str, Decimal]]


def _ask_region(ec2: Any, region: str, types: list[str], request: RefreshRequest
                ) -> _RegionAnswers:
    offered = sorted(_offered(ec2, region, types, "region"))
    if not offered:
        return _RegionAnswers(zones={}, specs={}, spot={})
    zones = _offered(ec2, region, offered, "availability-zone")
    return _RegionAnswers(zones={t: zones.get(t, set()) for t in offered},
                          specs=_specs(ec2, region, offered),
                          spot=_spot_by_zone(ec2, region, offered, request))


def _region_offers(
    region: str, answers: _RegionAnswers, wanted: Mapping[str, _Expected],
    products: Mapping[tuple[str, str], list[dict[str, Any]]], request: RefreshRequest,
) -> tuple[list[Offer], list[Skipped]]:
    offers: list[Offer] = []
    skipped: list[Skipped] = []
    embedded = {o.instance_type for o in request.catalog.offers
                if o.cloud == CLOUD and o.region == region}
    for instance_type in sorted(embedded - answers.zones.keys()):
        if instance_type in wanted:
            skipped.append(Skipped(region=region, item=instance_type, not_offered=True, reason=(
                f"not offered in {region} (DescribeInstanceTypeOfferings)")))
    for instance_type in sorted(answers.zones):
        expected = wanted[instance_type]

        def skip(reason: str, item: str = instance_type) -> None:
            skipped.append(Skipped(region=region, item=item, reason=reason))

        spec = answers.specs.get(instance_type)
        if spec is None or spec.accelerator_count is None:
            skip("DescribeInstanceTypes lists no GPU or Neuron device for it")
            continue
        if spec.accelerator_count != expected.count:
            skip(f"EC2 gives it {spec.accelerator_count} accelerators, the catalog "
                 f"{expected.count} x {expected.accelerator}")
            continue
        try:
            on_demand = _on_demand(products.get((region, instance_type), []), expected)
        except _UnknownShape as exc:
            skip(f"price list product not understood: {exc}")
            continue
        zones = answers.zones[instance_type]
        spot_zones = {z: p for z, p in answers.spot.get(instance_type, {}).items()
                      if not zones or z in zones}
        spot = float(min(spot_zones.values())) if spot_zones else None
        if spot is not None and on_demand is not None and spot >= on_demand:
            skip(f"spot price {spot:g} USD/h is not below on-demand {on_demand:g} USD/h: "
                 "spot left out")
            spot, spot_zones = None, {}
        if on_demand is None and spot is None:
            skip("offered, but with no Linux on-demand price in the price list and no spot price")
            continue
        offers.append(Offer(
            cloud=CLOUD, region=region, instance_type=instance_type,
            accelerator=expected.accelerator, accelerator_count=expected.count,
            vcpus=spec.vcpus, memory_gib=spec.memory_gib, price_usd_per_hour=on_demand,
            spot_price_usd_per_hour=spot, price_note="",
            source="; ".join(filter(None, (SOURCE, spot_note(spot_zones)))),
            as_of=request.now.date().isoformat()))
    return offers, skipped


# -- the fetch ---------------------------------------------------------------------------


def _endpoint(environ: Mapping[str, str], service: str) -> str | None:
    """botocore's endpoint variables, read from ``environ``: the service's own, else the
    global one (None: the SDK's default endpoint)."""
    service_variable = service.upper().replace("-", "_")  # service-quotas: SERVICE_QUOTAS
    return (environ.get(f"AWS_ENDPOINT_URL_{service_variable}")
            or environ.get("AWS_ENDPOINT_URL") or None)


def _client(session: Any, service: str, region: str, environ: Mapping[str, str]) -> Any:
    """A boto3 client of ``service`` in ``region``, at the endpoint ``environ`` names."""
    endpoint = _endpoint(environ, service)
    try:
        return session.client(service, region_name=region, endpoint_url=endpoint,
                              config=RETRY_CONFIG)
    except ValueError as exc:  # botocore's answer to an endpoint that is not a URL
        raise provider_error(
            InvalidRequestError, f"the {service} endpoint {endpoint!r} is not usable ({exc})",
            provider=CLOUD, operation=OPERATION, code="InvalidEndpoint",
            fix=f"set AWS_ENDPOINT_URL_{service.upper().replace('-', '_')} (or "
                "AWS_ENDPOINT_URL) to a URL such "
                "as https://host:port, or unset it to use AWS's own endpoint") from exc


def _region_states(ec2: Any, home: str) -> dict[str, str]:
    """Region name -> OptInStatus, for every region of the partition (DescribeRegions)."""
    with _calling("DescribeRegions", home):
        answer = ec2.describe_regions(AllRegions=True)
    return {r["RegionName"]: r.get("OptInStatus", "") for r in answer.get("Regions", [])}


def fetch(request: RefreshRequest) -> CloudPrices:
    """On-demand and spot prices and availability of the wanted AWS instance types in
    ``request.regions``, all or nothing.

    Raises:
        AuthError: no credentials, or a call refused for lack of permission.
        TransientError: throttling or a server error that outlasted the retries.
        InvalidRequestError: a call refused as malformed (e.g. a bad endpoint setting).
    """
    if request.now.tzinfo is None:  # the contract says UTC; EC2's timestamps are aware
        request = dataclasses.replace(request, now=request.now.replace(tzinfo=UTC))
    wanted, skipped = wanted_types(request)
    session = boto3.session.Session()
    home = (request.environ.get("AWS_REGION") or request.environ.get("AWS_DEFAULT_REGION")
            or DEFAULT_HOME_REGION)
    states = _region_states(_client(session, "ec2", home, request.environ), home)
    priced: list[str] = []
    not_enabled: list[str] = []
    for region in dict.fromkeys(request.regions):
        if region.startswith(OTHER_PARTITIONS):
            skipped.append(Skipped(region=region, item="", reason=(
                "a region of another AWS partition (own account, own price list): not "
                "refreshed")))
        elif region not in states:
            skipped.append(Skipped(region=region, item="", reason=(
                f"DescribeRegions in {home} does not list it for this account")))
        elif states[region] == NOT_OPTED_IN:
            not_enabled.append(region)
        else:
            priced.append(region)
    offers: list[Offer] = []
    if priced and wanted:
        pricing = _client(session, "pricing", PRICING_REGION, request.environ)
        products, unread = _price_list(pricing, sorted(wanted), priced)
        skipped.extend(unread)
        for region in priced:
            ec2 = _client(session, "ec2", region, request.environ)
            answers = _ask_region(ec2, region, sorted(wanted), request)
            found, passed = _region_offers(region, answers, wanted, products, request)
            offers.extend(found)
            skipped.extend(passed)
    return CloudPrices(cloud=CLOUD, source=SOURCE, fetched_at=request.now,
                       regions=tuple(priced), offers=tuple(offers),
                       not_enabled=tuple(not_enabled), skipped=tuple(skipped))


__all__ = ["PERMISSIONS", "SOURCE", "credentials_found", "fetch", "hourly_usd", "spot_note",
           "wanted_types"]
