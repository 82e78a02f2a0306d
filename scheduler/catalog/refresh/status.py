"""How old each cloud's prices are and where they come from (``catalog show``, /metrics).

A cloud with a refreshed section is dated by its oldest region's ``priced_at`` (a refresh of
some regions leaves the others as old as they were); a cloud never refreshed places with the
embedded catalog, dated by its newest offer ``as_of``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from greenplace.scheduler.catalog.loader import CLOUDS, Catalog
from greenplace.scheduler.catalog.refresh.store import PricesDocument


def cloud_status(embedded: Catalog, document: PricesDocument, *, now: dt.datetime
              ) -> list[dict[str, Any]]:
    """Per cloud: where its prices come from, how old they are, and its last failure."""
    rows = []
    for cloud in CLOUDS:
        section = document.sections.get(cloud)
        prices = section.prices if section is not None else None
        failure = section.last_failure if section is not None else None
        if prices is None or section is None:
            own = [o for o in embedded.offers if o.cloud == cloud]
            as_of = max((o.as_of for o in own), default="")
            age = (now.date() - dt.date.fromisoformat(as_of)).days * 86400.0 if as_of else None
            row: dict[str, Any] = {
                "cloud": cloud, "source": f"embedded catalog, as_of {as_of}",
                "fetched_at": None, "oldest_region_at": None, "age_s": age,
                "offers": len(own), "regions": len({o.region for o in own}),
                "not_enabled": [], "skipped": 0}
        else:
            oldest = min(section.priced_at.values(), default=prices.fetched_at)
            row = {"cloud": cloud, "source": prices.source,
                   "fetched_at": prices.fetched_at.isoformat(),
                   "oldest_region_at": oldest.isoformat(),
                   "age_s": round((now - oldest).total_seconds(), 1),
                   "offers": len(prices.offers), "regions": len(prices.regions),
                   "not_enabled": list(prices.not_enabled), "skipped": len(prices.skipped)}
        row["last_failure"] = None if failure is None else {
            "at": failure.at.isoformat(), "outcome": failure.outcome,
            "message": failure.message}
        rows.append(row)
    return rows
