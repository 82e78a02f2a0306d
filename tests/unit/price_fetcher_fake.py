"""A stand-in for the per-cloud price fetchers (``refresh/aws.py`` ...), for the tests of
what surrounds them: it answers each cloud with the rows, or raises the error, a test put
in ``ANSWERS``, and has credentials for the clouds in ``CREDENTIALS``.

Tests point ``refresh.FETCHER_MODULES`` at this module (``use_fake_fetchers``); the real
fetchers are tested through their SDKs in their own test files.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import pytest

from greenplace.scheduler.catalog import refresh
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest, Skipped

Answer = Callable[[RefreshRequest], CloudPrices] | BaseException
ANSWERS: dict[str, Answer] = {}
CREDENTIALS: set[str] = set()
CALLS: list[RefreshRequest] = []


def fetch(request: RefreshRequest) -> CloudPrices:
    CALLS.append(request)
    answer = ANSWERS[request.cloud]
    if isinstance(answer, BaseException):
        raise answer
    return answer(request)


def _module(cloud: str) -> types.ModuleType:
    """The fetcher module of ``cloud``: credentials when the cloud is in ``CREDENTIALS`` and
    ``FAKE_<CLOUD>_CREDENTIALS=1`` is in the environment the refresh reads."""
    module = types.ModuleType(f"{__name__}.{cloud}")
    module.fetch = fetch  # type: ignore[attr-defined]
    module.credentials_found = (  # type: ignore[attr-defined]
        lambda environ: cloud in CREDENTIALS
        and environ.get(f"FAKE_{cloud.upper()}_CREDENTIALS") == "1")
    return module


def use_fake_fetchers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route every cloud to its fake module, with no answers and no credentials yet."""
    for cloud in refresh.FETCHER_MODULES:
        monkeypatch.setitem(sys.modules, f"{__name__}.{cloud}", _module(cloud))
    monkeypatch.setattr(refresh, "FETCHER_MODULES",
                        {cloud: f"{__name__}.{cloud}" for cloud in refresh.FETCHER_MODULES})
    ANSWERS.clear()
    CREDENTIALS.clear()
    CALLS.clear()


def offer(cloud: str, region: str, instance_type: str, accelerator: str, count: int,
          price: float | None, spot: float | None = None, *, as_of: str = "2026-12-01",
          source: str = "fake price API") -> Offer:
    return Offer(cloud=cloud, region=region, instance_type=instance_type,
                 accelerator=accelerator, accelerator_count=count, vcpus=8 * count,
                 memory_gib=64.0 * count, price_usd_per_hour=price,
                 spot_price_usd_per_hour=spot, price_note="", source=source, as_of=as_of)


def answering(*offers: Offer, regions: tuple[str, ...] | None = None,
              skipped: tuple[Skipped, ...] = (), not_enabled: tuple[str, ...] = (),
              source: str = "fake price API") -> Callable[[RefreshRequest], CloudPrices]:
    """An answer pricing the asked regions (or ``regions``) with ``offers``."""
    def answer(request: RefreshRequest) -> CloudPrices:
        priced = regions if regions is not None else tuple(
            r for r in request.regions if r not in not_enabled)
        return CloudPrices(cloud=request.cloud, source=source, fetched_at=request.now,
                           regions=priced, offers=tuple(o for o in offers),
                           not_enabled=not_enabled, skipped=skipped)
    return answer
