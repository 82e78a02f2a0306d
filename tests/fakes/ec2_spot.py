"""The EC2 error proxy plus a spot price history that behaves like EC2's.

moto answers DescribeSpotPriceHistory with one synthetic record per offered zone (price
0.00001, a 2006 timestamp), ignores ProductDescription, StartTime and EndTime, and never
pages. ``SpotPriceProxy`` answers that action itself from seeded records, as the EC2 API
reference describes it (query protocol in, XML out):

- parameters ``InstanceType.N``, ``ProductDescription.N``, ``AvailabilityZone``,
  ``StartTime``, ``EndTime``, ``MaxResults``, ``NextToken`` and ``Filter.N`` (names
  ``availability-zone``, ``instance-type``, ``product-description``);
- with a StartTime, each series (instance type, zone, product) contributes the last price
  change at or before it (the price in effect then) and every change after it up to
  EndTime; newest first;
- ``MaxResults`` 5..1000; a page may hold fewer (``page_limit``); NextToken is opaque and
  bound to its query (else ``InvalidNextToken``).

Every other action goes to moto through ``Ec2ErrorProxy`` (offerings, instance types,
regions, armed failures, opt-in regions), whose data are a snapshot of real EC2 answers.
``fail_continuation`` breaks a pagination midway: it fails only calls that carry a NextToken.
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
from datetime import datetime
from decimal import Decimal
from xml.sax.saxutils import escape

from tests.fakes.ec2 import (
    EC2_NS,
    Ec2ErrorProxy,
    _error_reply,
    _xml_reply,
    moto_server,
    signing_region_of,
)
from tests.fakes.http import Reply, Request, serve

ACTION = "DescribeSpotPriceHistory"
MAX_RESULTS = 1000


@dataclass(frozen=True, slots=True)
class SpotRecord:
    region: str
    zone: str
    instance_type: str
    product: str  # "Linux/UNIX", "Windows", "Red Hat Enterprise Linux", ...
    usd_per_hour: Decimal
    at: datetime  # UTC


def _when(raw: str) -> datetime:
    return datetime.fromisoformat(raw.replace("Z", "+00:00"))


def _listed(form: dict[str, list[str]], name: str) -> list[str]:
    """The values of an EC2 query list parameter (``Name.1``, ``Name.2``, ...)."""
    return [v[0] for k, v in sorted(form.items()) if k.startswith(f"{name}.")
            and k[len(name) + 1:].isdigit()]


class SpotPriceProxy(Ec2ErrorProxy):
    """Ec2ErrorProxy whose DescribeSpotPriceHistory answers from ``add_price`` records."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self._records: list[SpotRecord] = []
        self._spot_lock = threading.Lock()
        self.page_limit = MAX_RESULTS
        self._continuation_faults: dict[str, list[str]] = {}

    def reset(self) -> None:
        with self._spot_lock:
            self._records.clear()
            self._continuation_faults.clear()
            self.page_limit = MAX_RESULTS
        super().reset()

    def add_price(self, record: SpotRecord) -> None:
        with self._spot_lock:
            self._records.append(record)

    def fail_continuation(self, action: str, code: str, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``action`` that carry a NextToken with ``code``."""
        with self._spot_lock:
            self._continuation_faults.setdefault(action, []).extend([code] * times)

    def _forward(self, request: Request) -> Reply:
        form = request.form() if request.method == "POST" else request.query
        action = (form.get("Action") or ["?"])[0]
        if form.get("NextToken"):
            with self._spot_lock:
                codes = self._continuation_faults.get(action)
                code = codes.pop(0) if codes else None
            if code is not None:
                return _error_reply(code)
        if action != ACTION:
            return super()._forward(request)
        return self._history(signing_region_of(request.headers), form)

    def _history(self, region: str, form: dict[str, list[str]]) -> Reply:
        types = set(_listed(form, "InstanceType"))
        products = set(_listed(form, "ProductDescription"))
        zone = (form.get("AvailabilityZone") or [""])[0]
        filters: dict[str, set[str]] = {}
        for key, value in form.items():
            if key.startswith("Filter.") and key.endswith(".Name"):
                stem = key[: -len("Name")]
                filters[value[0]] = set(_listed(form, f"{stem}Value"))
        known = {"availability-zone", "instance-type", "product-description"}
        if set(filters) - known:
            return _error_reply("InvalidParameterValue",
                                f"The filter '{sorted(set(filters) - known)[0]}' is invalid")
        try:
            start = _when(form["StartTime"][0]) if form.get("StartTime") else None
            end = _when(form["EndTime"][0]) if form.get("EndTime") else None
            max_results = int((form.get("MaxResults") or [str(MAX_RESULTS)])[0])
        except ValueError as exc:
            return _error_reply("InvalidParameterValue", str(exc))
        if not 5 <= max_results <= MAX_RESULTS:
            return _error_reply("InvalidParameterValue",
                                f"MaxResults must be between 5 and {MAX_RESULTS}")
        with self._spot_lock:
            records = [r for r in self._records if r.region == region]
            size = min(max_results, self.page_limit)

        def wanted(r: SpotRecord) -> bool:
            return ((not types or r.instance_type in types)
                    and (not products or r.product in products)
                    and (not zone or r.zone == zone)
                    and r.zone in filters.get("availability-zone", {r.zone})
                    and r.instance_type in filters.get("instance-type", {r.instance_type})
                    and r.product in filters.get("product-description", {r.product})
                    and (end is None or r.at <= end))

        series: dict[tuple[str, str, str], list[SpotRecord]] = {}
        for r in sorted(filter(wanted, records), key=lambda r: r.at):
            series.setdefault((r.instance_type, r.zone, r.product), []).append(r)
        answer: list[SpotRecord] = []
        for history in series.values():
            if start is None:
                answer.extend(history)
                continue
            before = [r for r in history if r.at <= start]
            answer.extend([*before[-1:], *(r for r in history if r.at > start)])
        answer.sort(key=lambda r: (r.at, r.zone, r.instance_type), reverse=True)
        query = hashlib.sha256(json.dumps(
            sorted((k, v) for k, v in form.items() if k != "NextToken")).encode()).hexdigest()
        offset = 0
        if form.get("NextToken"):
            try:
                token = json.loads(base64.b64decode(form["NextToken"][0]))
                offset = int(token["offset"])
                valid = token["query"] == query[:12]
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                return _error_reply("InvalidNextToken", "The specified token is invalid.")
        page = answer[offset:offset + size]
        items = "".join(
            f"<item><instanceType>{escape(r.instance_type)}</instanceType><productDescription>"
            f"{escape(r.product)}</productDescription><spotPrice>{r.usd_per_hour:.6f}"
            f"</spotPrice><timestamp>{r.at.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</timestamp>"
            f"<availabilityZone>{escape(r.zone)}</availabilityZone></item>" for r in page)
        token = ""
        if offset + size < len(answer):
            raw = json.dumps({"offset": offset + size, "query": query[:12]}).encode()
            token = f"<nextToken>{base64.b64encode(raw).decode()}</nextToken>"
        return _xml_reply(200, f'<?xml version="1.0" encoding="UTF-8"?>\n'
                               f'<DescribeSpotPriceHistoryResponse xmlns="{EC2_NS}"><requestId>'
                               f"{uuid.uuid4()}</requestId><spotPriceHistorySet>{items}"
                               f"</spotPriceHistorySet>{token}"
                               "</DescribeSpotPriceHistoryResponse>")


@contextmanager
def ec2_with_spot_prices() -> Iterator[tuple[str, SpotPriceProxy]]:
    """A moto server behind a SpotPriceProxy; yields (proxy URL, proxy)."""
    with moto_server() as upstream:
        proxy = SpotPriceProxy(upstream)
        proxy.reset()
        with serve(proxy) as url:
            yield url, proxy
