"""Refreshed prices over the embedded catalog: ``merged(catalog, document)`` and ``diff``.

For each refreshed cloud, the offers of every region it priced are exactly the refreshed
offers: an embedded offer the refresh did not find there is retired, one it found is
repriced (with the refresh's ``as_of`` and ``source``), a new one is added. Regions the
refresh did not price (not asked, not enabled for the account) keep the embedded offers.

Design choice: the refresh is the cloud's own word on what it sells in a region it priced,
so an offer missing from it is retired rather than kept at an old price; regions it did not
price are not evidence of anything. The one exception is an offer the fetcher saw but could
not price with certainty (``skipped`` without ``not_offered``, e.g. GCP's TPUs, whose prices
live in another service): nothing says it is no longer sold, so its embedded row stays, with
its own older ``as_of``, which every decision shows. A refreshed offer whose region or
accelerator the catalog no longer knows (the document outlived an upgrade) is left out and
counted, never an error that would stop every command.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from greenplace.scheduler.catalog.loader import Catalog
from greenplace.scheduler.catalog.model import Offer, normalize_name
from greenplace.scheduler.catalog.refresh.store import PricesDocument

_Key = tuple[str, str, str]


def _key(o: Offer) -> _Key:
    return o.cloud, o.region, o.instance_type


def priced_regions(document: PricesDocument) -> dict[str, frozenset[str]]:
    """cloud -> the regions whose offers the document replaces."""
    return {cloud: frozenset(s.priced_at or (s.prices.regions if s.prices else ()))
            for cloud, s in document.sections.items() if s.prices is not None}


def refreshed_offers(document: PricesDocument) -> list[Offer]:
    """Every refreshed offer of the document, clouds in name order."""
    return [o for cloud in sorted(document.sections)
            if (p := document.sections[cloud].prices) is not None for o in p.offers]


def unpriced_offers(document: PricesDocument) -> frozenset[_Key]:
    """(cloud, region or "", instance type) the refresh saw sold but could not price."""
    return frozenset((cloud, s.region, s.item) for cloud in document.sections
                     if (p := document.sections[cloud].prices) is not None
                     for s in p.skipped if not s.not_offered)


def usable(catalog: Catalog, offers: Iterable[Offer]) -> tuple[list[Offer], list[Offer]]:
    """(offers whose region and accelerator the catalog knows, the others)."""
    regions = {r.key for r in catalog.regions}
    names = {normalize_name(s) for a in catalog.accelerators for s in (a.name, *a.aliases)}
    known: list[Offer] = []
    unknown: list[Offer] = []
    for o in offers:
        ok = f"{o.cloud}:{o.region}" in regions and normalize_name(o.accelerator) in names
        (known if ok else unknown).append(o)
    return known, unknown


def merged(catalog: Catalog, document: PricesDocument) -> Catalog:
    """``catalog`` with the document's refreshed regions replaced (see the module docstring).

    Offers are in (cloud, region, instance type) order, as the embedded file keeps them.
    """
    replaced = priced_regions(document)
    if not replaced:
        return catalog
    fresh, _ = usable(catalog, refreshed_offers(document))
    found = {_key(o) for o in fresh}
    unpriced = unpriced_offers(document)
    kept = [o for o in catalog.offers
            if o.region not in replaced.get(o.cloud, frozenset())
            or (_key(o) not in found and ((o.cloud, o.region, o.instance_type) in unpriced
                                         or (o.cloud, "", o.instance_type) in unpriced))]
    return Catalog.build(catalog.regions, catalog.accelerators, sorted([*kept, *fresh], key=_key))


@dataclass(frozen=True, slots=True, kw_only=True)
class OfferChange:
    """One offer that differs between two catalogs."""

    change: str  # "new", "retired" or "repriced"
    before: Offer | None
    after: Offer | None

    @property
    def offer(self) -> Offer:
        found = self.after or self.before
        assert found is not None
        return found

    def as_row(self) -> dict[str, Any]:
        """A flat row for tables, JSON and CSV (prices in USD per hour)."""
        o, b, a = self.offer, self.before, self.after
        return {
            "cloud": o.cloud, "region": o.region, "instance_type": o.instance_type,
            "change": self.change, "accelerator": o.accelerator,
            "accelerator_count": o.accelerator_count,
            "price_usd_per_hour_before": b.price_usd_per_hour if b else None,
            "price_usd_per_hour_after": a.price_usd_per_hour if a else None,
            "price_change_pct": _pct(b.price_usd_per_hour if b else None,
                                     a.price_usd_per_hour if a else None),
            "spot_price_usd_per_hour_before": b.spot_price_usd_per_hour if b else None,
            "spot_price_usd_per_hour_after": a.spot_price_usd_per_hour if a else None,
            "spot_price_change_pct": _pct(b.spot_price_usd_per_hour if b else None,
                                          a.spot_price_usd_per_hour if a else None),
            "as_of_before": b.as_of if b else None, "as_of_after": a.as_of if a else None,
            "source_after": a.source if a else None,
        }


def _pct(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return round(100.0 * (after - before) / before, 2)


def diff(before: Catalog | Sequence[Offer], after: Catalog | Sequence[Offer]) -> list[OfferChange]:
    """Offers new in ``after``, retired from ``before``, and repriced (on-demand or spot
    differs), in (cloud, region, instance type) order."""
    old = {_key(o): o for o in (before.offers if isinstance(before, Catalog) else before)}
    new = {_key(o): o for o in (after.offers if isinstance(after, Catalog) else after)}
    changes = []
    for key in sorted(old.keys() | new.keys()):
        b, a = old.get(key), new.get(key)
        if b is None:
            changes.append(OfferChange(change="new", before=None, after=a))
        elif a is None:
            changes.append(OfferChange(change="retired", before=b, after=None))
        elif (b.price_usd_per_hour, b.spot_price_usd_per_hour) != (
                a.price_usd_per_hour, a.spot_price_usd_per_hour):
            changes.append(OfferChange(change="repriced", before=b, after=a))
    return changes


__all__ = ["OfferChange", "diff", "merged", "priced_regions", "refreshed_offers",
           "unpriced_offers", "usable"]
