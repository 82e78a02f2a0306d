"""A fake AWS Price List Query API (boto3 service ``pricing``), answering in its wire format.

moto (5.x) has no ``pricing`` service, so this is a small server of its own, built from the
API reference (GetProducts, Filter, common errors):

- AWS JSON 1.1: ``POST /`` with ``X-Amz-Target: AWSPriceListService.GetProducts`` and a JSON
  body ``{ServiceCode, Filters: [{Type, Field, Value}], FormatVersion, MaxResults, NextToken}``.
- The answer is ``{"FormatVersion": "aws_v1", "PriceList": [...], "NextToken": ...}`` where
  each PriceList entry is one product document *serialised to a JSON string*.
- Filters: ``TERM_MATCH`` / ``EQUALS`` (the attribute equals the value), ``CONTAINS``
  (substring), ``ANY_OF`` / ``NONE_OF`` (a comma-separated list of values). ``ServiceCode``
  is a field as well as a parameter. Products match only when every filter matches.
- ``MaxResults`` is 1..100; a server may answer fewer per page (``page_limit``). NextToken
  is opaque and bound to the query it came from: sent with another query, or made up, it is
  ``InvalidNextTokenException``.
- Errors are JSON 1.1 errors: body ``{"__type": code, "Message": ...}``, header
  ``x-amzn-ErrorType``, HTTP 400 for client-side codes (throttling included), 500 for
  ``InternalErrorException``.

Products are built with ``ec2_product`` in the price list's EC2 shape (product family,
attributes as strings such as ``"memory": "1,152 GiB"``, On-Demand and Reserved terms keyed
by offer term codes). ``fail`` arms error answers, for the first page or for continuation
pages only, so a test can break a pagination midway.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tests.fakes.http import Reply, Request, aws_json_error, serve

TARGET_PREFIX = "AWSPriceListService."
MAX_RESULTS = 100
ERROR_STATUS = {"InternalErrorException": 500}
ON_DEMAND_TERM = "JRTCKXETXF"  # the price list's offer term code of On-Demand
ON_DEMAND_RATE = "6YS6EN2CT7"
RESERVED_TERM = "4NA7Y494T4"  # 1 year, No Upfront, standard
RESERVED_RATE = "6YS6EN2CT7"


def _sku(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16].upper()


def ec2_product(
    *, region: str, location: str, instance_type: str, usd_per_hour: Decimal | str | None,
    vcpus: int, memory_gib: int, gpus: int | None, operating_system: str = "Linux",
    tenancy: str = "Shared", capacity_status: str = "Used", pre_installed_sw: str = "NA",
    unit: str = "Hrs", currency: str = "USD", publication: str = "2026-11-20T18:12:41Z",
) -> dict[str, Any]:
    """One AmazonEC2 price-list product (a ``Compute Instance``), as GetProducts holds it.

    ``usd_per_hour`` None: the product has no On-Demand term (sold otherwise); a Reserved
    term is always there, at a lower figure, as in the real list.
    """
    sku = _sku(region, instance_type, operating_system, tenancy, capacity_status)
    memory = f"{memory_gib:,} GiB"
    attributes = {
        "instanceType": instance_type, "instanceFamily": "GPU instance", "vcpu": str(vcpus),
        "memory": memory, "storage": "EBS only", "networkPerformance": "100 Gigabit",
        "tenancy": tenancy, "operatingSystem": operating_system, "licenseModel":
        "No License required", "preInstalledSw": pre_installed_sw, "capacitystatus":
        capacity_status, "location": location, "locationType": "AWS Region",
        "regionCode": region, "usagetype": f"BoxUsage:{instance_type}", "operation":
        "RunInstances", "servicecode": "AmazonEC2", "servicename":
        "Amazon Elastic Compute Cloud", "currentGeneration": "Yes", "marketoption": "OnDemand",
        "processorArchitecture": "64-bit", "instancesku": _sku(sku, "instance"),
    }
    if gpus is not None:
        attributes["gpu"] = str(gpus)
    terms: dict[str, Any] = {"Reserved": {}}
    if usd_per_hour is not None:
        price = Decimal(str(usd_per_hour))
        terms["OnDemand"] = {f"{sku}.{ON_DEMAND_TERM}": {
            "priceDimensions": {f"{sku}.{ON_DEMAND_TERM}.{ON_DEMAND_RATE}": {
                "unit": unit, "endRange": "Inf", "beginRange": "0", "appliesTo": [],
                "description": f"${price} per On Demand {operating_system} {instance_type} "
                               "Instance Hour",
                "rateCode": f"{sku}.{ON_DEMAND_TERM}.{ON_DEMAND_RATE}",
                "pricePerUnit": {currency: f"{price:.10f}"}}},
            "sku": sku, "effectiveDate": "2026-11-01T00:00:00Z", "offerTermCode": ON_DEMAND_TERM,
            "termAttributes": {}}}
        reserved = (price * Decimal("0.62")).quantize(Decimal("0.0000001"))
        terms["Reserved"] = {f"{sku}.{RESERVED_TERM}": {
            "priceDimensions": {f"{sku}.{RESERVED_TERM}.{RESERVED_RATE}": {
                "unit": "Hrs", "endRange": "Inf", "beginRange": "0", "appliesTo": [],
                "description": f"{operating_system}/UNIX (Amazon VPC), {instance_type} "
                               "reserved instance applied",
                "rateCode": f"{sku}.{RESERVED_TERM}.{RESERVED_RATE}",
                "pricePerUnit": {"USD": f"{reserved:.10f}"}}},
            "sku": sku, "effectiveDate": "2026-11-01T00:00:00Z", "offerTermCode": RESERVED_TERM,
            "termAttributes": {"LeaseContractLength": "1yr", "OfferingClass": "standard",
                               "PurchaseOption": "No Upfront"}}}
    return {"product": {"productFamily": "Compute Instance", "attributes": attributes,
                        "sku": sku},
            "serviceCode": "AmazonEC2", "terms": terms, "version": "20261120181241",
            "publicationDate": publication}


@dataclass
class _Fault:
    code: str
    times: int
    continuation_only: bool
    message: str


def _error(code: str, message: str) -> Reply:
    return aws_json_error(code, message, ERROR_STATUS.get(code, 400))


def _matches(product: dict[str, Any], service_code: str, flt: dict[str, Any]) -> bool:
    field, kind, value = flt.get("Field"), flt.get("Type"), str(flt.get("Value", ""))
    actual = (service_code if field == "ServiceCode"
              else product["product"]["attributes"].get(field))
    if actual is None:
        return kind == "NONE_OF"
    values = [v.strip() for v in value.split(",")]
    if kind in ("TERM_MATCH", "EQUALS"):
        return bool(actual == value)
    if kind == "CONTAINS":
        return value in actual
    if kind == "ANY_OF":
        return actual in values
    if kind == "NONE_OF":
        return actual not in values
    raise ValueError(kind)


class PriceListApi:
    """The GetProducts handler (``tests.fakes.http.serve`` runs it); seed ``products``."""

    def __init__(self) -> None:
        self.products: list[dict[str, Any]] = []  # AmazonEC2 products, in list order
        self.page_limit = MAX_RESULTS  # most products one page holds, whatever MaxResults says
        self.requests: list[dict[str, Any]] = []  # every request body, in order
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        """No products, no armed faults, no recorded requests, full pages."""
        with self._lock:
            self.products.clear()
            self.requests.clear()
            self._faults.clear()
            self.page_limit = MAX_RESULTS

    def fail(self, code: str, *, times: int = 1, continuation_only: bool = False,
             message: str = "") -> None:
        """Answer the next ``times`` matching calls with error ``code`` (only calls that
        carry a NextToken when ``continuation_only``)."""
        with self._lock:
            self._faults.append(_Fault(code, times, continuation_only,
                                       message or f"{code} (injected)"))

    def pages_served(self) -> int:
        with self._lock:
            return len(self.requests)

    @staticmethod
    def _query_key(body: dict[str, Any]) -> str:
        query = {k: body.get(k) for k in ("ServiceCode", "Filters", "FormatVersion")}
        return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:12]

    def __call__(self, request: Request) -> Reply:
        target = request.headers.get("x-amz-target", "")
        if request.method != "POST" or not target.startswith(TARGET_PREFIX):
            return _error("UnknownOperationException", f"no operation {target!r}")
        if target != TARGET_PREFIX + "GetProducts":
            return _error("UnknownOperationException", f"the fake has no {target}")
        body = request.json() or {}
        with self._lock:
            self.requests.append(body)
            fault = next((f for f in self._faults
                          if not f.continuation_only or body.get("NextToken")), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        if fault is not None:
            return _error(fault.code, fault.message)
        return self._get_products(body)

    def _get_products(self, body: dict[str, Any]) -> Reply:
        service_code = body.get("ServiceCode")
        if not service_code:
            return _error("InvalidParameterException", "ServiceCode is required")
        max_results = body.get("MaxResults", MAX_RESULTS)
        if not isinstance(max_results, int) or not 1 <= max_results <= MAX_RESULTS:
            return _error("InvalidParameterException",
                          f"MaxResults must be between 1 and {MAX_RESULTS}")
        if body.get("FormatVersion", "aws_v1") != "aws_v1":
            return _error("InvalidParameterException", "FormatVersion must be aws_v1")
        filters = body.get("Filters") or []
        for flt in filters:
            if flt.get("Type") not in ("TERM_MATCH", "EQUALS", "CONTAINS", "ANY_OF", "NONE_OF"):
                return _error("InvalidParameterException",
                              f"Invalid filter type {flt.get('Type')!r}")
            if len(str(flt.get("Value", ""))) > 1024:
                return _error("InvalidParameterException", "Filter value is too long")
        key = self._query_key(body)
        offset = 0
        if body.get("NextToken"):
            try:
                token = json.loads(base64.b64decode(body["NextToken"]))
                offset, token_key = int(token["offset"]), token["query"]
            except (ValueError, KeyError, TypeError):
                return _error("InvalidNextTokenException", "The NextToken is not valid")
            if token_key != key:
                return _error("InvalidNextTokenException",
                              "The NextToken does not belong to this query")
        with self._lock:
            catalogue = list(self.products) if service_code == "AmazonEC2" else []
            size = min(max_results, self.page_limit)
        matched = [p for p in catalogue if all(_matches(p, service_code, f) for f in filters)]
        page = matched[offset:offset + size]
        answer: dict[str, Any] = {"FormatVersion": "aws_v1",
                                  "PriceList": [json.dumps(p) for p in page]}
        if offset + size < len(matched):
            answer["NextToken"] = base64.b64encode(json.dumps(
                {"offset": offset + size, "query": key}).encode()).decode()
        return Reply.json(200, answer, headers={"Content-Type": "application/x-amz-json-1.1",
                                                "x-amzn-RequestId": str(uuid.uuid4())})


@contextmanager
def price_list_server() -> Iterator[tuple[str, PriceListApi]]:
    """The fake on a free loopback port; yields (its URL, the fake)."""
    api = PriceListApi()
    with serve(api) as url:
        yield url, api
