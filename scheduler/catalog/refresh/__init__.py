"""Live catalog: refresh prices and availability from the clouds' own APIs.

``model`` holds the request and result types; each cloud's fetcher is its own module, imported
only when that cloud is refreshed (its SDK is an optional extra).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from greenplace.scheduler.catalog.refresh.model import CloudPrices, Fetcher, RefreshRequest, Skipped

FETCHER_MODULES = {
    "aws": "greenplace.scheduler.catalog.refresh.aws",
    "gcp": "greenplace.scheduler.catalog.refresh.gcp",
    "azure": "greenplace.scheduler.catalog.refresh.azure",
}


def fetcher(cloud: str) -> Fetcher:
    """The ``fetch`` function of ``cloud``'s refresh module."""
    module = importlib.import_module(FETCHER_MODULES[cloud])
    fetch: Fetcher = module.fetch
    return fetch


def needs_credentials(cloud: str) -> bool:
    """Whether ``cloud``'s refresh cannot run at all without credentials (a fetcher module
    whose price API is public says ``NEEDS_CREDENTIALS = False``)."""
    module = importlib.import_module(FETCHER_MODULES[cloud])
    return bool(getattr(module, "NEEDS_CREDENTIALS", True))


def credentials_found(cloud: str, environ: Mapping[str, str]) -> bool:
    """Whether ``cloud``'s refresh could run here (its SDK's credential chain finds some)."""
    module = importlib.import_module(FETCHER_MODULES[cloud])
    found: bool = module.credentials_found(environ)
    return found


__all__ = ["FETCHER_MODULES", "CloudPrices", "Fetcher", "RefreshRequest", "Skipped",
           "credentials_found", "fetcher", "needs_credentials"]
