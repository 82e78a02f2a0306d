"""The service's price refresh (beat's ``greenplace.catalog_refresh``): which clouds, where
it writes, and the metrics of what kept old figures.

Design choice: the clouds refreshed are those whose SDK finds credentials
(``credentials_found``, no network call); a cloud without is skipped with one log line, not
counted as an error (most deployments use one or two clouds). Each cloud is refreshed by its
own task, every catalog region of it in one fetch, and written where every process of the
deployment reads (``store.service_location``: the Redis form when
``GREENPLACE_CATALOG_PRICES=redis``). The clouds go one after another, each task sending the
next when it ends (whatever its outcome): a refresh takes minutes, and one at a time it holds
one worker pool slot, never all of them, so placement and reconcile go on meanwhile.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence

from greenplace.scheduler import metrics
from greenplace.scheduler.catalog import refresh
from greenplace.scheduler.catalog.loader import CLOUDS, load_declared_catalog
from greenplace.scheduler.catalog.refresh.run import FAILED, UPDATED, run_refresh
from greenplace.scheduler.catalog.refresh.store import PRICES_ENV, service_location
from greenplace.scheduler.exceptions import GreenplaceError
from greenplace.scheduler.store import JobStore

log = logging.getLogger("greenplace.catalog")


def clouds_with_credentials(environ: Mapping[str, str]) -> list[str]:
    """The clouds whose refresh could run here; the others are logged once each."""
    found = []
    for cloud in CLOUDS:
        try:
            ok = refresh.credentials_found(cloud, environ)
        except (GreenplaceError, ImportError) as exc:
            log.info("catalog refresh: %s skipped (%s)", cloud, exc)
            continue
        if ok:
            found.append(cloud)
        else:
            log.info("catalog refresh: %s skipped: no credentials found", cloud)
    return found


def refresh_for_service(store: JobStore, *, clouds: Sequence[str] | None,
                        environ: Mapping[str, str], now: dt.datetime,
                        send: Callable[[list[str]], None]) -> None:
    """Refresh the first of ``clouds`` (None: those with credentials), then ``send`` the rest
    to a task of their own (also when this one raised)."""
    todo = list(clouds_with_credentials(environ) if clouds is None else clouds)
    if not todo:
        return
    try:
        refresh_one(store, cloud=todo[0], environ=environ, now=now)
    finally:
        if todo[1:]:
            send(todo[1:])


def refresh_one(store: JobStore, *, cloud: str, environ: Mapping[str, str],
                now: dt.datetime) -> None:
    """Refresh every catalog region of ``cloud``, write the document, count a kept-old
    outcome as a metric and log each outcome."""
    location = service_location(store.client, store.prefix, environ)
    if not environ.get(PRICES_ENV, "").strip():
        log.warning("catalog refresh writes to %s, this machine's data folder "
                    "(%s is unset); set it to `redis` so every worker and the API share the "
                    "refreshed prices", location.where, PRICES_ENV)
    catalog = load_declared_catalog()
    regions = [r.region for r in catalog.regions if r.cloud == cloud]
    result = run_refresh({cloud: regions}, location=location, catalog=catalog,
                         environ=environ, now=now)
    for outcome in result.outcomes:
        if outcome.status == UPDATED:
            log.info("catalog refresh: %s", outcome.message)
            continue
        reason = outcome.status
        if outcome.status == FAILED and outcome.error is not None:
            reason = "missing_sdk" if isinstance(outcome.error, ImportError) \
                else metrics.error_family(outcome.error)
        metrics.count_catalog_refresh_error(store, cloud=outcome.cloud, reason=reason)
        log.warning("catalog refresh: %s", outcome.message)
