"""A fake AWS Service Quotas API (boto3 service ``service-quotas``), in its wire format.

moto (5.x) implements Service Quotas for the ``vpc`` service's defaults only (no
ListServiceQuotas, no ec2), so this is a small server of its own, built from the API
reference (ListServiceQuotas, GetServiceQuota, ServiceQuota, common errors):

- AWS JSON 1.1: ``POST /`` with ``X-Amz-Target: ServiceQuotasV20190624.<Operation>`` and a
  JSON body. The region is the one the SigV4 ``Authorization`` header's credential scope
  names (``Credential=AKID/20261202/us-east-1/servicequotas/aws4_request``): one endpoint
  serves every region, each with its own quotas.
- ListServiceQuotas ``{ServiceCode, MaxResults 1..100, NextToken, QuotaCode}`` answers
  ``{"Quotas": [ServiceQuota...], "NextToken"}``; a server may hold fewer per page
  (``page_limit``); NextToken is opaque and bound to its query (else
  ``InvalidPaginationTokenException``). Like the real API it lists only quotas with an
  applied value (``listed`` False keeps a quota out of the list).
- GetServiceQuota ``{ServiceCode, QuotaCode}`` answers ``{"Quota": ServiceQuota}`` or
  ``NoSuchResourceException``.
- Errors: body ``{"__type": code, "Message": ...}`` with header ``x-amzn-ErrorType``; HTTP 400
  for client-side codes (``TooManyRequestsException`` included), 403 for
  ``UnrecognizedClientException`` (an access key the service does not know, and every key in
  an opt-in region the account has not enabled: ``disabled_regions``), 500 for
  ``ServiceException``.

``fail`` arms error answers for the next matching calls (continuation pages only with
``continuation_only``), so a test can throttle a call or break a pagination midway.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.fakes.http import Reply, Request, aws_json_error, serve

TARGET_PREFIX = "ServiceQuotasV20190624."
MAX_RESULTS = 100
ERROR_STATUS = {"ServiceException": 500, "UnrecognizedClientException": 403}
_SCOPE = re.compile(r"Credential=(?P<key>[^/]+)/\d{8}/(?P<region>[^/]+)/servicequotas/")


def ec2_quota(region: str, code: str, name: str, value: float | None, *,
              account: str = "123456789012", **extra: Any) -> dict[str, Any]:
    """One EC2 ServiceQuota record as the API returns it (a vCPU quota: ``Unit`` "None")."""
    record: dict[str, Any] = {
        "ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
        "QuotaArn": f"arn:aws:servicequotas:{region}:{account}:ec2/{code}",
        "QuotaCode": code, "QuotaName": name, "Unit": "None", "Adjustable": True,
        "GlobalQuota": False,
        "UsageMetric": {"MetricNamespace": "AWS/Usage", "MetricName": "ResourceCount",
                        "MetricDimensions": {"Class": "None", "Resource": "vCPU",
                                             "Service": "EC2", "Type": "Resource"},
                        "MetricStatisticRecommendation": "Maximum"},
        "QuotaAppliedAtLevel": "ACCOUNT",
        **extra,
    }
    if value is not None:
        record["Value"] = value
    return record


@dataclass
class _Fault:
    operation: str
    code: str
    times: int
    continuation_only: bool


def _error(code: str, message: str) -> Reply:
    return aws_json_error(code, message, ERROR_STATUS.get(code, 400))


class ServiceQuotasApi:
    """The Service Quotas handler (``tests.fakes.http.serve`` runs it).

    Seed ``quotas[region]`` with ``ec2_quota`` records; ``unlisted`` holds (region, code)
    pairs that GetServiceQuota answers but ListServiceQuotas leaves out.
    """

    def __init__(self) -> None:
        self.quotas: dict[str, list[dict[str, Any]]] = {}
        self.unlisted: set[tuple[str, str]] = set()
        self.known_keys: set[str] | None = None  # None: any access key is accepted
        self.disabled_regions: set[str] = set()  # opt-in regions the account has not enabled
        self.page_limit = MAX_RESULTS
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (region, operation, body)
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def fail(self, operation: str, code: str, *, times: int = 1,
             continuation_only: bool = False) -> None:
        """Answer the next ``times`` calls of ``operation`` with error ``code``."""
        with self._lock:
            self._faults.append(_Fault(operation, code, times, continuation_only))

    def calls(self, operation: str, region: str | None = None) -> int:
        with self._lock:
            return sum(1 for r, op, _ in self.requests
                       if op == operation and region in (None, r))

    def __call__(self, request: Request) -> Reply:
        target = request.headers.get("x-amz-target", "")
        scope = _SCOPE.search(request.headers.get("authorization", ""))
        if request.method != "POST" or not target.startswith(TARGET_PREFIX) or scope is None:
            return _error("UnknownOperationException", f"no operation {target!r}")
        if (self.known_keys is not None and scope["key"] not in self.known_keys
                or scope["region"] in self.disabled_regions):
            return _error("UnrecognizedClientException",
                          "The security token included in the request is invalid.")
        operation = target[len(TARGET_PREFIX):]
        body = request.json() or {}
        region = scope["region"]
        with self._lock:
            self.requests.append((region, operation, body))
            fault = next((f for f in self._faults if f.operation == operation
                          and (not f.continuation_only or body.get("NextToken"))), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
        if fault is not None:
            return _error(fault.code, f"{fault.code} (injected)")
        if operation == "ListServiceQuotas":
            return self._list(region, body)
        if operation == "GetServiceQuota":
            return self._get(region, body)
        return _error("UnknownOperationException", f"the fake has no {operation}")

    def _records(self, region: str, service_code: str) -> list[dict[str, Any]]:
        with self._lock:
            return [q for q in self.quotas.get(region, []) if q["ServiceCode"] == service_code]

    def _list(self, region: str, body: dict[str, Any]) -> Reply:
        service_code = body.get("ServiceCode")
        if not service_code:
            return _error("IllegalArgumentException", "ServiceCode is required")
        max_results = body.get("MaxResults", MAX_RESULTS)
        if not isinstance(max_results, int) or not 1 <= max_results <= MAX_RESULTS:
            return _error("IllegalArgumentException",
                          f"MaxResults must be between 1 and {MAX_RESULTS}")
        key = hashlib.sha256(json.dumps([region, service_code, body.get("QuotaCode")])
                             .encode()).hexdigest()[:12]
        offset = 0
        if body.get("NextToken"):
            try:
                token = json.loads(base64.b64decode(body["NextToken"]))
                offset, token_key = int(token["offset"]), token["query"]
            except (ValueError, KeyError, TypeError):
                return _error("InvalidPaginationTokenException", "Invalid pagination token")
            if token_key != key:
                return _error("InvalidPaginationTokenException", "Invalid pagination token")
        listed = [q for q in self._records(region, service_code)
                  if (region, q["QuotaCode"]) not in self.unlisted
                  and body.get("QuotaCode") in (None, q["QuotaCode"])]
        size = min(max_results, self.page_limit)
        answer: dict[str, Any] = {"Quotas": listed[offset:offset + size]}
        if offset + size < len(listed):
            answer["NextToken"] = base64.b64encode(json.dumps(
                {"offset": offset + size, "query": key}).encode()).decode()
        return Reply.json(200, answer, headers={"Content-Type": "application/x-amz-json-1.1",
                                                "x-amzn-RequestId": str(uuid.uuid4())})

    def _get(self, region: str, body: dict[str, Any]) -> Reply:
        if not body.get("ServiceCode") or not body.get("QuotaCode"):
            return _error("IllegalArgumentException", "ServiceCode and QuotaCode are required")
        for quota in self._records(region, body["ServiceCode"]):
            if quota["QuotaCode"] == body["QuotaCode"]:
                return Reply.json(200, {"Quota": quota}, headers={
                    "Content-Type": "application/x-amz-json-1.1",
                    "x-amzn-RequestId": str(uuid.uuid4())})
        return _error("NoSuchResourceException",
                      f"The request failed because the specified quota {body['QuotaCode']} "
                      "does not exist.")


@contextmanager
def service_quotas_server() -> Iterator[tuple[str, ServiceQuotasApi]]:
    """The fake on a free loopback port; yields (its URL, the fake)."""
    api = ServiceQuotasApi()
    with serve(api) as url:
        yield url, api
