"""A local Cloud Billing Catalog API (v1, REST/JSON) for the GCP price refresh's tests.

It answers ``GET /v1/services/{service}/skus`` as https://cloud.google.com/billing/v1/how-tos/catalog-api
and the API reference (``services.skus.list``) describe it: ``{"skus": [...], "nextPageToken"}``,
pages of at most ``pageSize`` (default and maximum 5000) SKUs, an opaque ``pageToken``, no token
on the last page. Each SKU has the API's fields: ``name``, ``skuId``, ``description``,
``category {serviceDisplayName, resourceFamily, resourceGroup, usageType}``, ``serviceRegions``,
``pricingInfo[] {summary, pricingExpression {usageUnit, usageUnitDescription, baseUnit,
baseUnitDescription, baseUnitConversionFactor, displayQuantity, tieredRates[] {startUsageAmount,
unitPrice {currencyCode, units, nanos}}}, aggregationInfo, currencyConversionRate,
effectiveTime}``, ``serviceProviderName``, ``geoTaxonomy``. int64 ``units`` is a JSON string,
as proto3 JSON writes it.

Errors use Google's JSON error body ``{"error": {"code", "message", "status", "details"}}``:
an unknown service is 404 NOT_FOUND, a bad page token 400 INVALID_ARGUMENT, throttling 429
RESOURCE_EXHAUSTED with an ErrorInfo RATE_LIMIT_EXCEEDED detail.

Test hooks: ``throttle(times)`` (the next calls answer 429), ``fail_page(index, status)``
(every request for that page answers the error: a list failing midway), ``page_size`` (the
most SKUs a page holds whatever ``pageSize`` asks).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from tests.fakes.json_server import JsonServer, Reply

COMPUTE_SERVICE_ID = "6F81-5844-456A"
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
# usageUnit -> (usageUnitDescription, baseUnit, baseUnitDescription, baseUnitConversionFactor)
_UNITS: dict[str, tuple[str, str, str, int]] = {
    "h": ("hour", "s", "second", 3600),
    "GiBy.h": ("gibibyte hour", "By.s", "byte second", 1024 ** 3 * 3600),
    "GiBy.mo": ("gibibyte month", "By.s", "byte second", 1024 ** 3 * 3600 * 730),
}


def google_error(status: int, message: str, *, reason: str | None = None) -> Reply:
    """Google's JSON error body for a OnePlatform API such as Cloud Billing."""
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": _STATUS.get(status, "UNKNOWN")}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": reason, "domain": "googleapis.com",
                             "metadata": {"service": "cloudbilling.googleapis.com"}}]
    return status, {"error": error}, {}


def sku_id(description: str) -> str:
    """A stable id in the Catalog's ``XXXX-XXXX-XXXX`` form."""
    digest = hashlib.sha256(description.encode()).hexdigest().upper()
    return f"{digest[:4]}-{digest[4:8]}-{digest[8:12]}"


def compute_sku(description: str, *, regions: list[str], usd: float, unit: str = "h",
                resource_group: str = "GPU", usage_type: str = "OnDemand",
                tiers: list[tuple[float, float]] | None = None,
                currency: str = "USD") -> dict[str, Any]:
    """One Compute Engine SKU as services.skus.list returns it.

    ``tiers`` replaces the single flat rate with (startUsageAmount, USD) tiers.
    """
    unit_text, base, base_text, factor = _UNITS[unit]
    rates = [{"startUsageAmount": start,
              "unitPrice": {"currencyCode": currency, "units": str(int(price)),
                            "nanos": round((price - int(price)) * 1e9)}}
             for start, price in (tiers or [(0, usd)])]
    ident = sku_id(description)
    return {
        "name": f"services/{COMPUTE_SERVICE_ID}/skus/{ident}", "skuId": ident,
        "description": description,
        "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": "Compute",
                     "resourceGroup": resource_group, "usageType": usage_type},
        "serviceRegions": regions,
        "pricingInfo": [{
            "summary": "",
            "pricingExpression": {
                "usageUnit": unit, "usageUnitDescription": unit_text, "baseUnit": base,
                "baseUnitDescription": base_text, "baseUnitConversionFactor": factor,
                "displayQuantity": 1, "tieredRates": rates},
            "aggregationInfo": {"aggregationLevel": "ACCOUNT", "aggregationInterval": "DAILY",
                                "aggregationCount": 1},
            "currencyConversionRate": 1,
            "effectiveTime": "2026-11-30T12:00:00.000Z"}],
        "serviceProviderName": "Google",
        "geoTaxonomy": {"type": "MULTI_REGIONAL" if len(regions) > 1 else "REGIONAL",
                        "regions": regions},
    }


class FakeCloudCatalog(JsonServer):
    """The public Cloud Billing Catalog, holding the SKUs of the Compute Engine service."""

    def __init__(self, skus: list[dict[str, Any]]) -> None:
        super().__init__()
        self.skus = list(skus)
        self.page_size = 5000
        self.throttled = 0  # how many coming calls answer 429
        self.failing_pages: dict[int, int] = {}  # page index -> HTTP status it answers
        self.route("GET", r"/v1/services/(?P<service>[^/]+)/skus", self._list_skus)

    def throttle(self, times: int) -> None:
        """The next ``times`` calls are rate-limited (429 RESOURCE_EXHAUSTED)."""
        self.throttled = times

    def fail_page(self, index: int, status: int = 500) -> None:
        """Every request for page ``index`` (0 = the first) answers ``status``."""
        self.failing_pages[index] = status

    @staticmethod
    def _token(offset: int) -> str:
        return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()

    def _list_skus(self, m: Any, q: dict[str, str], body: Any) -> Reply:
        if self.throttled > 0:
            self.throttled -= 1
            return google_error(429, "Quota exceeded for quota metric 'Read requests' and "
                                "limit 'Read requests per minute' of service "
                                "'cloudbilling.googleapis.com' for consumer "
                                "'project_number:1'.", reason="RATE_LIMIT_EXCEEDED")
        if m.group("service") != COMPUTE_SERVICE_ID:
            return google_error(404, f"Service {m.group('service')} not found.")
        token = q.get("pageToken") or ""
        try:
            decoded = base64.urlsafe_b64decode(token.encode()).decode() if token else "offset:0"
            offset = int(decoded.removeprefix("offset:"))
        except ValueError:
            return google_error(400, "Invalid page token.")
        try:
            asked = int(q.get("pageSize") or 5000)
        except ValueError:
            return google_error(400, "Invalid value for pageSize.")
        size = min(asked if asked > 0 else 5000, 5000, self.page_size)
        index = offset // size
        if index in self.failing_pages:
            return google_error(self.failing_pages[index], "Internal error encountered.")
        reply: dict[str, Any] = {"skus": self.skus[offset:offset + size]}
        if offset + size < len(self.skus):
            reply["nextPageToken"] = self._token(offset + size)
        return 200, reply, {}
