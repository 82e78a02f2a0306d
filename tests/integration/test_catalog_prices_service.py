"""Refreshed prices in a running service: with ``GREENPLACE_CATALOG_PRICES=redis`` the CLI, the
dry run and real Celery workers all place with the one copy in Redis, and every decision
carries its price's ``as_of`` and source."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from greenplace.scheduler.catalog.loader import load_declared_catalog
from greenplace.scheduler.catalog.refresh.model import CloudPrices
from greenplace.scheduler.catalog.refresh.store import RedisLocation, Section, prices_key
from greenplace.scheduler.store import JobState
from tests.integration.conftest import Service, training_job, write_jobs

pytestmark = pytest.mark.integration
SOURCE = "integration test refresh"


def test_the_cli_and_the_workers_place_with_the_prices_in_redis(service: Service) -> None:
    service.env["GREENPLACE_CATALOG_PRICES"] = "redis"
    jobs = write_jobs(service.tmp / "jobs.yaml", [training_job("priced")])
    before = service.cli_json("dry-run", str(jobs))[0]
    assert before["price_as_of"].startswith("2025-")
    assert any("greenplace catalog refresh" in n for n in before["notes"])

    # A refresh of the chosen region, at the same prices (so the choice stays), dated now.
    now = dt.datetime.now(dt.UTC)
    cloud, region = before["cloud"], before["region"]
    offers = tuple(dataclasses.replace(o, as_of=now.date().isoformat(), source=SOURCE)
                   for o in load_declared_catalog().offers
                   if (o.cloud, o.region) == (cloud, region))
    location = RedisLocation(service.store().client, prices_key("gp"), "test")
    location.update(lambda d: d.with_section(Section(
        cloud=cloud, priced_at={region: now}, prices=CloudPrices(
            cloud=cloud, source=SOURCE, fetched_at=now, regions=(region,), offers=offers))))

    after = service.cli_json("dry-run", str(jobs))[0]
    assert (after["cloud"], after["region"]) == (cloud, region)
    assert (after["price_as_of"], after["price_source"]) == (now.date().isoformat(), SOURCE)
    assert not any("catalog refresh" in n for n in after["notes"])
    shown = {r["cloud"]: r for r in service.cli_json("catalog", "show")}
    assert shown[cloud]["source"] == SOURCE and shown[cloud]["regions"] == 1

    service.start_worker()
    ids = service.submit(jobs)
    (record,) = service.wait_states(ids, {JobState.RUNNING, JobState.SUCCEEDED})
    assert record.decision is not None
    assert (record.decision["price_as_of"], record.decision["price_source"]) == (
        now.date().isoformat(), SOURCE)
