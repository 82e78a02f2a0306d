"""A local Azure Retail Prices API (``GET /api/retail/prices``) for the Azure price refresh.

It answers as the public, unauthenticated API documents (learn.microsoft.com/rest/api/
cost-management/retail-prices/azure-retail-prices): a JSON page ``{"BillingCurrency": "USD",
"CustomerEntityId": "Default", "CustomerEntityType": "Retail", "Items": [...], "NextPageLink":
..., "Count": n}`` of price items (``currencyCode``, ``tierMinimumUnits``, ``retailPrice``,
``unitPrice``, ``armRegionName``, ``location``, ``effectiveStartDate``, ``meterId``,
``meterName``, ``productId``, ``skuId``, ``productName``, ``skuName``, ``serviceName``,
``serviceId``, ``serviceFamily``, ``unitOfMeasure``, ``type``, ``isPrimaryMeterRegion``,
``armSkuName``, and ``reservationTerm`` on reservations), ``page_size`` items at a time, with
``NextPageLink`` (the same query plus ``$skip``) until it is null.

Like the real API it:
- evaluates the OData ``$filter`` (``eq`` comparisons joined by ``and`` / ``or``, parentheses;
  the documented filter fields, ``priceType`` matching the item's ``type``) and answers 400 to a
  filter it cannot parse or a field it does not know; values are case-sensitive from
  api-version ``2023-01-01-preview`` on, case-insensitive before;
- holds, beside each VM size's Linux pay-as-you-go meter, the rows a careless reader would take
  for it: the Windows product, Spot and Low Priority meters, a DevTestConsumption row, one-year
  reservations (``unitOfMeasure`` "1 Hour" but ``retailPrice`` the whole term), and an older
  price of the same meter (an earlier ``effectiveStartDate``);
- throttles on demand (429, with or without ``Retry-After``) and fails a given page on demand;
  ``next_link_base`` makes its NextPageLink name another host (a misconfigured mirror).

Prices are figures of the embedded catalog (offers.csv, from the public Azure price list of
2025-08), re-keyed into the API's items; ``PRICES`` says which.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from tests.fakes.json_server import JsonServer, Reply

PATH = "/api/retail/prices"
CASE_SENSITIVE_FROM = "2023-01-01-preview"

# The filter fields the API documents, and the item key each one compares.
FILTER_FIELDS = {
    "armRegionName": "armRegionName", "location": "location", "meterId": "meterId",
    "meterName": "meterName", "productId": "productId", "skuId": "skuId",
    "productName": "productName", "skuName": "skuName", "serviceName": "serviceName",
    "serviceId": "serviceId", "serviceFamily": "serviceFamily", "priceType": "type",
    "armSkuName": "armSkuName",
}

# armRegionName -> the API's display location.
LOCATIONS = {"eastus": "US East", "eastus2": "US East 2", "westus2": "US West 2",
             "westus3": "US West 3", "southcentralus": "US South Central",
             "centralus": "US Central", "westeurope": "EU West"}


@dataclass(frozen=True, slots=True)
class Series:
    """How the price list names a VM size: its product and its meter."""

    product: str  # "Virtual Machines NCasT4_v3 Series" (+ " Windows" for Windows)
    meter: str  # "NC4as T4 v3" (+ " Spot" / " Low Priority")
    vcpus: int  # sets the Windows licence part of the Windows row


SERIES: dict[str, Series] = {
    "Standard_NC4as_T4_v3": Series("Virtual Machines NCasT4_v3 Series", "NC4as T4 v3", 4),
    "Standard_NC8as_T4_v3": Series("Virtual Machines NCasT4_v3 Series", "NC8as T4 v3", 8),
    "Standard_NC16as_T4_v3": Series("Virtual Machines NCasT4_v3 Series", "NC16as T4 v3", 16),
    "Standard_NC64as_T4_v3": Series("Virtual Machines NCasT4_v3 Series", "NC64as T4 v3", 64),
    "Standard_NC24ads_A100_v4": Series("Virtual Machines NCadsA100v4 Series", "NC24ads A100 v4",
                                       24),
    "Standard_NC48ads_A100_v4": Series("Virtual Machines NCadsA100v4 Series", "NC48ads A100 v4",
                                       48),
    "Standard_NC96ads_A100_v4": Series("Virtual Machines NCadsA100v4 Series", "NC96ads A100 v4",
                                       96),
    "Standard_NC40ads_H100_v5": Series("Virtual Machines NCadsH100v5 Series", "NC40ads H100 v5",
                                       40),
    "Standard_NC80adis_H100_v5": Series("Virtual Machines NCadsH100v5 Series",
                                        "NC80adis H100 v5", 80),
    "Standard_ND40rs_v2": Series("Virtual Machines NDv2 Series", "ND40rs v2", 40),
    "Standard_ND96asr_v4": Series("Virtual Machines NDasrA100v4 Series", "ND96asr A100 v4", 96),
    "Standard_ND96amsr_A100_v4": Series("Virtual Machines NDamsrA100v4 Series",
                                        "ND96amsr A100 v4", 96),
    "Standard_ND96isr_H100_v5": Series("Virtual Machines NDisrH100v5 Series", "ND96isr H100 v5",
                                       96),
    "Standard_NC24s_v3": Series("Virtual Machines NCSv3 Series", "NC24s v3", 24),  # retired
}

# region -> size -> (Linux on-demand, Spot) USD/hour; None: no such meter. Re-keyed from the
# embedded offers.csv (prices-reference azure_vms_v6_gpu_subset, 2025-08-01). A size missing
# from a region has no meter there (NC H100 v5 is not sold in westus2). Standard_NC24s_v3 (NCv3,
# retired 2025-09-30) keeps a stale row in eastus, as price lists do after a retirement.
PRICES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "eastus": {
        "Standard_NC4as_T4_v3": (0.526, 0.062699), "Standard_NC8as_T4_v3": (0.752, 0.089638),
        "Standard_NC16as_T4_v3": (1.204, 0.143517), "Standard_NC64as_T4_v3": (4.352, 0.518758),
        "Standard_NC24ads_A100_v4": (3.673, 0.444433),
        "Standard_NC48ads_A100_v4": (7.346, 0.888866),
        "Standard_NC96ads_A100_v4": (14.692, 1.777732),
        "Standard_NC40ads_H100_v5": (6.98, None), "Standard_NC80adis_H100_v5": (13.96, None),
        "Standard_ND40rs_v2": (22.032, 2.42352), "Standard_ND96asr_v4": (27.197, 2.99167),
        "Standard_ND96amsr_A100_v4": (32.77, 3.6047), "Standard_ND96isr_H100_v5": (98.32, None),
        "Standard_NC24s_v3": (3.06, 0.612),
    },
    "westus2": {
        "Standard_NC4as_T4_v3": (0.526, 0.061595), "Standard_NC8as_T4_v3": (0.752, 0.088059),
        "Standard_NC16as_T4_v3": (1.204, 0.140988), "Standard_NC64as_T4_v3": (4.352, 0.509619),
        "Standard_NC24ads_A100_v4": (3.673, 0.615962),
        "Standard_NC48ads_A100_v4": (7.346, 1.231924),
        "Standard_NC96ads_A100_v4": (14.692, 2.463848),
        "Standard_ND40rs_v2": (22.032, 2.42352), "Standard_ND96asr_v4": (27.197, 2.99167),
    },
    "southcentralus": {
        "Standard_NC4as_T4_v3": (0.631, 0.06941), "Standard_NC8as_T4_v3": (0.902, 0.09922),
        "Standard_NC16as_T4_v3": (1.445, 0.15895), "Standard_NC64as_T4_v3": (5.222, 0.57442),
        "Standard_NC24ads_A100_v4": (4.408, 0.57304),
        "Standard_NC48ads_A100_v4": (8.815, 1.14595),
        "Standard_NC96ads_A100_v4": (17.63, 2.2919),
        "Standard_NC40ads_H100_v5": (8.38, None), "Standard_NC80adis_H100_v5": (16.76, None),
        "Standard_ND40rs_v2": (26.438, 2.90818), "Standard_ND96asr_v4": (32.63, 3.5893),
        "Standard_ND96amsr_A100_v4": (39.324, 4.32564),
    },
}
EFFECTIVE = "2025-08-01T00:00:00Z"
OLDER = "2023-05-01T00:00:00Z"  # an earlier price of the same meter, still listed
WINDOWS_USD_PER_VCPU_HOUR = 0.046  # the Windows licence part of a Windows meter


def _id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def item(region: str, size: str, *, price: float, meter: str, product: str,
         price_type: str = "Consumption", unit: str = "1 Hour", effective: str = EFFECTIVE,
         primary: bool = True, currency: str = "USD", **extra: Any) -> dict[str, Any]:
    """One price item in the API's shape."""
    product_id = "DZH318Z0" + _id(product)[:4].upper()
    sku_id = f"{product_id}/{_id(meter)[:4].upper()}"
    found: dict[str, Any] = {
        "currencyCode": currency, "tierMinimumUnits": 0.0, "retailPrice": price,
        "unitPrice": price, "armRegionName": region, "location": LOCATIONS.get(region, region),
        "effectiveStartDate": effective, "meterId": _id(region, size, meter, price_type),
        "meterName": meter, "productId": product_id, "skuId": sku_id, "productName": product,
        "skuName": meter, "serviceName": "Virtual Machines", "serviceId": "DZH313Z7MMC8",
        "serviceFamily": "Compute", "unitOfMeasure": unit, "type": price_type,
        "isPrimaryMeterRegion": primary, "armSkuName": size,
    }
    found.update(extra)
    return found


def items_for(region: str, size: str, on_demand: float | None,
              spot: float | None) -> list[dict[str, Any]]:
    """Every row the price list holds for one size in one region."""
    series = SERIES[size]
    windows = f"{series.product} Windows"
    licence = round(WINDOWS_USD_PER_VCPU_HOUR * series.vcpus, 6)
    rows: list[dict[str, Any]] = []
    if on_demand is not None:
        rows += [
            item(region, size, price=on_demand, meter=series.meter, product=series.product),
            item(region, size, price=round(on_demand * 1.25, 6), meter=series.meter,
                 product=series.product, effective=OLDER),
            item(region, size, price=round(on_demand + licence, 6), meter=series.meter,
                 product=windows),
            item(region, size, price=on_demand, meter=series.meter, product=windows,
                 price_type="DevTestConsumption"),
            item(region, size, price=round(on_demand * 0.62 * 8760, 2), meter=series.meter,
                 product=series.product, price_type="Reservation", reservationTerm="1 Year"),
            item(region, size, price=round(on_demand * 0.2, 6), meter=f"{series.meter} Low "
                 "Priority", product=series.product),
        ]
    if spot is not None:
        rows += [
            item(region, size, price=spot, meter=f"{series.meter} Spot", product=series.product),
            item(region, size, price=round(spot + licence, 6), meter=f"{series.meter} Spot",
                 product=windows),
        ]
    return rows


def default_items() -> list[dict[str, Any]]:
    """The price list of ``PRICES``, in a stable order that mixes regions and sizes."""
    rows = [row for region, sizes in PRICES.items() for size, (od, spot) in sizes.items()
            for row in items_for(region, size, od, spot)]
    return sorted(rows, key=lambda r: (r["meterId"], r["effectiveStartDate"]))


class FilterError(ValueError):
    """A ``$filter`` the API would refuse."""


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<paren>[()])|(?P<word>[A-Za-z_]\w*))")


def _tokens(text: str) -> list[str]:
    found: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FilterError(f"cannot read the filter at character {pos}: {text[pos:pos + 20]!r}")
        found.append(m.group(m.lastgroup or "word"))
        pos = m.end()
    return found


def parse_filter(text: str, *, case_sensitive: bool) -> Any:
    """``$filter`` as a predicate on an item: ``eq``, ``and``, ``or``, parentheses."""
    tokens = _tokens(text)
    at = 0

    def take() -> str:
        nonlocal at
        if at >= len(tokens):
            raise FilterError("the filter ends too early")
        at += 1
        return tokens[at - 1]

    def peek() -> str | None:
        return tokens[at] if at < len(tokens) else None

    def comparison() -> Any:
        first = take()
        if first == "(":
            inner = disjunction()
            if take() != ")":
                raise FilterError("a parenthesis is not closed")
            return inner
        if first not in FILTER_FIELDS:
            raise FilterError(f"Could not find a property named '{first}'")
        if take().lower() != "eq":
            raise FilterError(f"only eq comparisons are supported after {first}")
        literal = take()
        if not (literal.startswith("'") and literal.endswith("'")):
            raise FilterError(f"{first} must be compared with a string in quotes")
        value = literal[1:-1].replace("''", "'")
        key = FILTER_FIELDS[first]

        def test(row: dict[str, Any]) -> bool:
            found = str(row.get(key, ""))
            return found == value if case_sensitive else found.lower() == value.lower()
        return test

    def conjunction() -> Any:
        parts = [comparison()]
        while (peek() or "").lower() == "and":
            take()
            parts.append(comparison())
        return lambda row: all(p(row) for p in parts)

    def disjunction() -> Any:
        parts = [conjunction()]
        while (peek() or "").lower() == "or":
            take()
            parts.append(conjunction())
        return lambda row: any(p(row) for p in parts)

    predicate = disjunction()
    if at != len(tokens):
        raise FilterError(f"unexpected {tokens[at]!r} in the filter")
    return predicate


class FakeRetailPrices(JsonServer):
    """The Retail Prices API over plain http on loopback (the refresh allows http there only)."""

    def __init__(self, items: list[dict[str, Any]] | None = None, *, page_size: int = 100) -> None:
        super().__init__()
        self.items = default_items() if items is None else items
        self.page_size = page_size
        self.throttles: list[str | None] = []  # Retry-After of each coming 429 (None: no header)
        self.page_faults: dict[int, list[int]] = {}  # $skip -> statuses still to answer
        self.broken_pages: dict[int, int] = {}  # $skip -> status answered for good
        self.next_link_base: str | None = None  # another scheme://host:port for NextPageLink
        self.route("GET", PATH, self._prices)

    @property
    def url(self) -> str:
        return self.base_url + PATH

    def throttle(self, *, times: int, retry_after_s: int | None = 0) -> None:
        """Answer the next ``times`` requests with 429 Too Many Requests."""
        with self.lock:
            self.throttles += [None if retry_after_s is None else str(retry_after_s)] * times

    def fail_page(self, skip: int, status: int = 500, *, times: int | None = None) -> None:
        """Answer the page starting at ``$skip`` = ``skip`` with ``status``, ``times`` times
        (for good when None)."""
        with self.lock:
            if times is None:
                self.broken_pages[skip] = status
            else:
                self.page_faults.setdefault(skip, []).extend([status] * times)

    def price_requests(self) -> list[dict[str, str]]:
        """The query of every request received, in order."""
        with self.lock:
            return [r.query for r in self.requests if r.path == PATH]

    def _prices(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if self.throttles:
            retry_after = self.throttles.pop(0)
            headers = {} if retry_after is None else {"Retry-After": retry_after}
            return 429, {"Error": {"Code": "TooManyRequests", "Message": "Too many requests. "
                                   "Please retry later."}}, headers
        try:
            skip = int(q.get("$skip") or 0)
        except ValueError:
            return 400, {"Error": {"Code": "BadRequest", "Message": "$skip is not a number"}}, {}
        if skip in self.broken_pages:
            return self.broken_pages[skip], {"Error": {"Code": "InternalServerError",
                                                       "Message": "An error occurred."}}, {}
        statuses = self.page_faults.get(skip)
        if statuses:
            return statuses.pop(0), {"Error": {"Code": "InternalServerError",
                                               "Message": "An error occurred."}}, {}
        case_sensitive = q.get("api-version", "") >= CASE_SENSITIVE_FROM
        try:
            predicate = parse_filter(q["$filter"], case_sensitive=case_sensitive) \
                if q.get("$filter") else (lambda row: True)
        except FilterError as exc:
            return 400, {"Error": {"Code": "BadRequest", "Message": f"Invalid OData filter: "
                                   f"{exc}"}}, {}
        matched = [row for row in self.items if predicate(row)]
        page = matched[skip:skip + self.page_size]
        next_link = None
        if skip + self.page_size < len(matched):
            rest = {k: v for k, v in q.items() if k != "$skip"}
            rest["$skip"] = str(skip + self.page_size)
            query = urlencode(rest, quote_via=quote, safe="$'")
            next_link = f"{self.next_link_base or self.base_url}{PATH}?{query}"
        return 200, {"BillingCurrency": "USD", "CustomerEntityId": "Default",
                     "CustomerEntityType": "Retail", "Items": page, "NextPageLink": next_link,
                     "Count": len(page)}, {}
