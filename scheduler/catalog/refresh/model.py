"""What one cloud's price refresh asks for and what it gives back.

Each cloud's fetcher (``refresh/aws.py``, ``gcp.py``, ``azure.py``) is one function
``fetch(request: RefreshRequest) -> CloudPrices`` that calls that cloud's own price and
availability APIs through the SDK greenplace launches with. It returns catalog ``Offer`` rows
(the same frozen type the embedded ``offers.csv`` loads into, ``as_of`` = the day of the fetch,
``source`` naming the API), so a refreshed offer and an embedded one are placed alike.

Contract every fetcher keeps:

* It prices only the ``regions`` asked for, each one a catalog region of its cloud (a region
  the catalog has no grid figures for cannot be scored, so it is never priced).
* Every offer's accelerator is a canonical catalog name (``request.catalog.accelerator``),
  and its count, vCPUs and memory are the cloud's own figures for that instance type. An
  instance type or SKU shape the fetcher cannot map with certainty is listed in ``skipped``
  with the reason; it is never given a guessed price. A type the cloud says is not sold in a
  region is listed there too, marked ``not_offered``.
* A price is USD per hour for the whole instance (accelerators and host together), Linux,
  shared tenancy, on demand; ``spot_price_usd_per_hour`` is the region's spot figure (None when
  the cloud sells none there). An offer with neither price is skipped.
* Failure is all or nothing per cloud: a call that fails after the SDK's retries (throttling,
  a page failing midway, no credentials) raises a ``ProviderError`` subclass naming the call,
  and the caller keeps that cloud's previous figures.
* Credentials are the SDK's own chain; none is read, printed or stored here. Each fetcher
  module also has ``credentials_found(environ) -> bool``: whether the cloud's credentials are
  configured here (no network call), so the service's daily refresh skips a cloud with none;
  a module whose price API is public sets ``NEEDS_CREDENTIALS = False`` so that a refresh a
  user asks for runs without them.
* Settings (endpoints, project, subscription) come from ``request.environ`` by the adapters'
  one rule (``providers/settings.py``: ``GREENPLACE_<CLOUD>_*``), so a test points a fetcher
  at its fake exactly as it points the adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from greenplace.scheduler.catalog.loader import Catalog
from greenplace.scheduler.catalog.model import Offer


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshRequest:
    """What to price for one cloud."""

    cloud: str
    regions: tuple[str, ...]  # catalog region names of ``cloud`` to price (never empty)
    catalog: Catalog  # the embedded catalog: accelerator names, known offers' shapes
    environ: Mapping[str, str]  # where the cloud's settings are read (providers/settings.py rule)
    now: datetime  # UTC; ``as_of`` of every offer is its date


@dataclass(frozen=True, slots=True, kw_only=True)
class Skipped:
    """Something the fetcher saw and would not price, with the reason."""

    region: str  # "" when it applies to every region
    item: str  # instance type, SKU id or meter name
    reason: str
    # True when the cloud says the type is not sold in that region: its embedded offer is
    # retired. False when it is sold but could not be priced with certainty: the embedded
    # offer stays, with its own (older) ``as_of``.
    not_offered: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudPrices:
    """One cloud's refreshed offers: every region asked for, priced in one go."""

    cloud: str
    source: str  # the APIs the figures came from, e.g. "AWS Price List Query API + ..."
    fetched_at: datetime  # UTC
    regions: tuple[str, ...]  # regions priced: their offers replace the embedded ones
    offers: tuple[Offer, ...]
    not_enabled: tuple[str, ...] = ()  # opt-in regions not enabled for the account: not priced
    skipped: tuple[Skipped, ...] = field(default=())


class Fetcher(Protocol):
    """``fetch`` of one cloud's refresh module."""

    def __call__(self, request: RefreshRequest) -> CloudPrices: ...
