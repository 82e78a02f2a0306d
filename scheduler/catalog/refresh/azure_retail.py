"""The Azure Retail Prices API, read for the live catalog: what a VM size costs in a region.

This module owns the API's wire format and how its rows become two prices per VM size and
region: the Linux pay-as-you-go price and the Spot price, USD per hour for the whole VM. It
knows nothing of the catalog (``refresh/azure.py`` decides which sizes to ask for and what to
offer); it also holds the bounded retry that both Azure calls of the refresh use.

The API (learn.microsoft.com/rest/api/cost-management/retail-prices/azure-retail-prices) is
public and needs no credentials. One GET per region and batch of sizes::

    $filter=serviceName eq 'Virtual Machines' and priceType eq 'Consumption'
            and armRegionName eq 'eastus' and (armSkuName eq 'A' or armSkuName eq 'B' ...)

answers pages of ``Items`` followed through ``NextPageLink`` until it is null. At most
``SIZES_PER_REQUEST`` sizes go in one filter: users of the API report that much longer filters
are refused.

Design choice: which rows make a price. Every row of a size in a region is read, and a row
the rules below do not know (another unit, currency, price type or service, a missing or
non-positive price, a tiered price) makes the whole size unpriced in that region, with the
reason: a price is never guessed from the rows that remain.

* ``priceType eq 'Consumption'`` keeps out reservations (whose ``retailPrice`` is the whole
  term) and Dev/Test prices;
* a ``productName`` holding "Windows" is the Windows product (licence included): not read;
* a ``meterName`` or ``skuName`` holding "Low Priority" is the low-priority offer, which
  greenplace does not launch: not read; one holding "Spot" is the Spot price, any other the
  pay-as-you-go price;
* ``unitOfMeasure`` must be "1 Hour" and ``currencyCode`` "USD";
* of several rows of one kind, the latest ``effectiveStartDate`` not in the future wins, a
  primary meter region row before a non-primary one; rows that still disagree leave the size
  unpriced.

Pinned to api-version ``2023-01-01-preview``: filter values are case-sensitive there, so the
exact spellings above (``Virtual Machines``, ``Consumption``) and the ARM names are sent.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from greenplace.providers.errors import provider_error
from greenplace.scheduler.exceptions import InvalidRequestError, ProviderError, TransientError
from greenplace.scheduler.signals.http import retry_after_s

PROVIDER = "azure"
OPERATION = "catalog_refresh"
API = "Retail Prices API"
API_VERSION = "2023-01-01-preview"
SIZES_PER_REQUEST = 10  # armSkuName comparisons joined by `or` in one $filter
TIMEOUT_S = 30.0
MAX_TRIES = 5  # per page, the first try included
FIRST_BACKOFF_S = 1.0  # doubled each try when the API gives no Retry-After
MAX_WAIT_S = 60.0  # the longest one wait, whatever Retry-After asks
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

T = TypeVar("T")
_sleep: Callable[[float], None] = time.sleep  # the one place the retries wait


@dataclass(frozen=True, slots=True, kw_only=True)
class SizePrices:
    """What the price list says of one VM size in one region.

    ``problem`` is "" when the rows could be read; else why the size is not priced there (the
    prices are then None).
    """

    on_demand_usd_per_hour: float | None
    spot_usd_per_hour: float | None
    problem: str = ""


class Retryable(Exception):
    """A try that may succeed later: throttling, a 5xx, a connection that failed."""

    def __init__(self, detail: str, *, retry_after_s: float | None = None,
                 code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.code = code


RETRIES_FIX = "run the refresh again later; the previous Azure prices are kept meanwhile"


def error(cls: type[ProviderError], message: str, *, code: str | None,
          fix: str, operation: str = OPERATION) -> ProviderError:
    """An error of the Azure price refresh (``azure catalog_refresh [code]: ... To fix: ...``),
    or of another ``operation`` that shares these calls (the account quota reader)."""
    return provider_error(cls, message, provider=PROVIDER, operation=operation, code=code,
                          fix=fix)


def with_retries(call: str, attempt: Callable[[], T], *, operation: str = OPERATION,
                 fix: str = RETRIES_FIX) -> T:
    """``attempt()``, tried again after a wait while it raises Retryable, ``MAX_TRIES`` in all.

    The wait is what ``Retry-After`` asks, else ``FIRST_BACKOFF_S`` doubled each time; never
    more than ``MAX_WAIT_S``. ``operation`` and ``fix`` word the error for the caller.

    Raises:
        TransientError: every try failed; names ``call`` and how long it waited.
    """
    waited_s = 0.0
    for tries in range(1, MAX_TRIES + 1):
        try:
            return attempt()
        except Retryable as exc:
            if tries == MAX_TRIES:
                raise error(TransientError, f"{call}: {exc.detail} on all {MAX_TRIES} tries "
                            f"({waited_s:g} s of waiting in between)", code=exc.code,
                            fix=fix, operation=operation) from exc
            backoff_s = FIRST_BACKOFF_S * 2 ** (tries - 1)
            wait_s = min(MAX_WAIT_S, backoff_s if exc.retry_after_s is None
                         else exc.retry_after_s)
            _sleep(wait_s)
            waited_s += wait_s
    raise AssertionError("unreachable")  # the loop returns or raises


def filter_for(region: str, sizes: Sequence[str]) -> str:
    """The OData ``$filter`` of one region and a batch of sizes."""
    names = " or ".join(f"armSkuName eq {_quoted(size)}" for size in sizes)
    return ("serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and "
            f"armRegionName eq {_quoted(region)} and ({names})")


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def fetch_prices(url: str, *, regions: Sequence[str], sizes: Sequence[str], now: dt.datetime,
                 ca_bundle: str | None = None) -> dict[tuple[str, str], SizePrices]:
    """The prices of ``sizes`` in ``regions``: one entry per (region, size) asked for.

    ``ca_bundle``: a PEM file to verify the API's TLS certificate with (the adapter's setting,
    for a TLS-inspecting proxy); else the system's default trust.

    A size without a single row in a region has both prices None and no problem: the price
    list does not sell it there.

    Raises:
        TransientError: a page still failed (throttled, 5xx, unreachable) after the retries.
        InvalidRequestError: the API refused the query, or answered in an unknown format.
    """
    rows: dict[tuple[str, str], list[Any]] = {(r, s): [] for r in regions for s in sizes}
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_bundle) \
        if ca_bundle else True
    with httpx.Client(timeout=TIMEOUT_S, follow_redirects=False, verify=verify,
                      headers={"user-agent": "greenplace (carbon-aware scheduler)"}) as client:
        for region in regions:
            for start in range(0, len(sizes), SIZES_PER_REQUEST):
                batch = sizes[start:start + SIZES_PER_REQUEST]
                for item in _items(client, url, region=region, batch=batch):
                    key = (_field(item, "armRegionName"), _field(item, "armSkuName"))
                    if key in rows:  # the API answers only what was asked; others are ignored
                        rows[key].append(item)
    return {key: read_prices(found, now=now) for key, found in rows.items()}


def _field(item: Any, name: str) -> str:
    return str(item.get(name, "")) if isinstance(item, dict) else ""


def _items(client: httpx.Client, url: str, *, region: str,
           batch: Sequence[str]) -> Iterator[Any]:
    """Every item of one query, page after page (``NextPageLink`` until null)."""
    params: dict[str, str] | None = {"api-version": API_VERSION,
                                     "$filter": filter_for(region, batch)}
    next_url: str | None = url
    page = 0
    while next_url is not None:
        page += 1
        call = (f"{API} GET page {page} of the prices of {len(batch)} VM size(s) in {region} "
                f"({', '.join(batch[:3])}{', ...' if len(batch) > 3 else ''})")
        body = with_retries(call, functools.partial(_get, client, next_url, params, call=call))
        items, next_url = _page(body, call=call)
        yield from items
        params = None  # NextPageLink carries the whole query
        if next_url is not None:
            _check_same_api(next_url, url, call=call)


def _get(client: httpx.Client, url: str, params: dict[str, str] | None, *, call: str) -> Any:
    """One GET, its JSON body; Retryable for what may pass, InvalidRequestError otherwise."""
    try:
        response = client.get(url, params=params)
    except httpx.TransportError as exc:
        raise Retryable(f"the API could not be reached ({type(exc).__name__})",
                        code=type(exc).__name__) from exc
    if response.status_code in RETRY_STATUSES:
        label = "throttled (HTTP 429)" if response.status_code == 429 else \
            f"HTTP {response.status_code}"
        raise Retryable(label, code="TooManyRequests" if response.status_code == 429 else
                        str(response.status_code),
                        retry_after_s=retry_after_s(response.headers.get("retry-after"),
                                                    now=dt.datetime.now(dt.UTC)))
    if response.status_code != 200:
        raise error(InvalidRequestError, f"{call}: HTTP {response.status_code}: "
                    f"{response.text[:300]}", code=str(response.status_code),
                    fix="check the azure retail_prices_url setting (leave it unset for the "
                    "public API); if it is unset, the API changed: report it to greenplace")
    try:
        return response.json()
    except ValueError as exc:
        raise _unknown_format(call, "the answer is not JSON") from exc


def _page(body: Any, *, call: str) -> tuple[list[Any], str | None]:
    """(items, next page URL) of one answer."""
    if not isinstance(body, dict) or not isinstance(body.get("Items"), list):
        raise _unknown_format(call, "no Items list in the answer")
    link = body.get("NextPageLink")
    if link is not None and not isinstance(link, str):
        raise _unknown_format(call, "NextPageLink is not a URL")
    return body["Items"], link or None


def _check_same_api(link: str, url: str, *, call: str) -> None:
    """A next page must come from the API that was asked (scheme and host)."""
    got, asked = urlsplit(link), urlsplit(url)
    if (got.scheme, got.hostname) != (asked.scheme, asked.hostname):
        raise _unknown_format(call, f"NextPageLink points at {got.scheme}://{got.hostname}, "
                              f"not at {asked.scheme}://{asked.hostname}")


def _unknown_format(call: str, what: str) -> ProviderError:
    return error(InvalidRequestError, f"{call}: {what}", code="UnknownAnswerFormat",
                 fix="check the azure retail_prices_url setting (leave it unset for the public "
                 "API); if it is unset, the API changed: report it to greenplace")


# --------------------------------------------------------------------------- rows -> prices


@dataclass(frozen=True, slots=True)
class _Meter:
    """One usable row: its kind, price and when it took effect."""

    spot: bool
    usd_per_hour: float
    effective: dt.datetime
    primary: bool


def read_prices(rows: Iterable[Any], *, now: dt.datetime) -> SizePrices:
    """The on-demand and Spot prices the rows of one size in one region give (pure)."""
    meters: list[_Meter] = []
    for row in rows:
        meter = _meter(row, now=now)
        if isinstance(meter, str):
            return SizePrices(on_demand_usd_per_hour=None, spot_usd_per_hour=None,
                              problem=meter)
        if meter is not None:
            meters.append(meter)
    on_demand, problem = _pick([m for m in meters if not m.spot], kind="pay-as-you-go")
    spot, spot_problem = _pick([m for m in meters if m.spot], kind="Spot")
    if problem or spot_problem:
        return SizePrices(on_demand_usd_per_hour=None, spot_usd_per_hour=None,
                          problem=problem or spot_problem)
    return SizePrices(on_demand_usd_per_hour=on_demand, spot_usd_per_hour=spot)


def _meter(row: Any, *, now: dt.datetime) -> _Meter | str | None:
    """A usable row, None for a row that is not read (Windows, Low Priority, not yet in
    effect), or the reason a row is not understood."""
    if not isinstance(row, dict):
        return f"a price row is not an object: {str(row)[:80]!r}"
    text = {k: str(row.get(k) or "") for k in (
        "serviceName", "type", "productName", "meterName", "skuName", "unitOfMeasure",
        "currencyCode", "effectiveStartDate")}
    name = f"meter {text['meterName']!r} of {text['productName']!r}"
    if "Windows" in text["productName"]:
        return None
    if "Low Priority" in text["meterName"] or "Low Priority" in text["skuName"]:
        return None
    if text["serviceName"] != "Virtual Machines" or text["type"] != "Consumption":
        return (f"{name}: service {text['serviceName']!r}, price type {text['type']!r} (only "
                "'Virtual Machines' 'Consumption' rows are read)")
    if text["unitOfMeasure"] != "1 Hour":
        return f"{name}: unit {text['unitOfMeasure']!r}, not '1 Hour'"
    if text["currencyCode"] != "USD":
        return f"{name}: currency {text['currencyCode']!r}, not USD"
    price = row.get("retailPrice")
    if isinstance(price, bool) or not isinstance(price, int | float) or not (
            math.isfinite(price) and price > 0):
        return f"{name}: retailPrice {price!r} is not a positive number"
    if row.get("tierMinimumUnits") not in (None, 0, 0.0):
        return f"{name}: a tiered price (tierMinimumUnits {row.get('tierMinimumUnits')!r})"
    try:
        effective = dt.datetime.fromisoformat(text["effectiveStartDate"])
    except ValueError:
        return f"{name}: effectiveStartDate {text['effectiveStartDate']!r} is not a date"
    if effective.tzinfo is None:
        effective = effective.replace(tzinfo=dt.UTC)
    if effective > now:
        return None  # announced, not in effect yet
    spot = "Spot" in text["meterName"] or "Spot" in text["skuName"]
    return _Meter(spot=spot, usd_per_hour=float(price), effective=effective,
                  primary=row.get("isPrimaryMeterRegion") is not False)


def _pick(meters: list[_Meter], *, kind: str) -> tuple[float | None, str]:
    """The price in effect among rows of one kind: (price or None, problem or "")."""
    if not meters:
        return None, ""
    latest = max(m.effective for m in meters)
    current = [m for m in meters if m.effective == latest]
    if any(m.primary for m in current):
        current = [m for m in current if m.primary]
    prices = sorted({m.usd_per_hour for m in current})
    if len(prices) > 1:
        return None, (f"{len(prices)} different {kind} prices in effect since "
                      f"{latest.date().isoformat()} ({', '.join(f'{p:g}' for p in prices)} "
                      "USD/h)")
    return prices[0], ""
