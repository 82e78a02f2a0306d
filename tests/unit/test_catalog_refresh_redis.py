"""The refreshed prices in the service: the Redis form (one key every process shares) on a
real private redis-server, the beat's per-cloud refresh with its metrics, and a worker that
places with new prices once they are written."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from greenplace.scheduler.catalog import load_catalog, refresh
from greenplace.scheduler.catalog.loader import load_declared_catalog
from greenplace.scheduler.catalog.refresh import prices as prices_module
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest
from greenplace.scheduler.catalog.refresh.run import run_refresh
from greenplace.scheduler.catalog.refresh.service import refresh_for_service
from greenplace.scheduler.catalog.refresh.store import (
    PricesDocument,
    RedisLocation,
    Section,
    prices_key,
    read,
)
from greenplace.scheduler.cli import main
from greenplace.scheduler.dispatch import Context, current
from greenplace.scheduler.exceptions import TransientError
from greenplace.scheduler.store import JobStore
from tests.redisproc import REDIS_SERVER, RedisServer, free_port
from tests.unit import price_fetcher_fake as fake
from tests.unit.test_metrics import labelled, scrape

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")

NOW = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
PREFIX = "cr"


def us_east(request: RefreshRequest) -> CloudPrices:
    """The embedded us-east-1 offers of the asked cloud, 10 % cheaper, priced now."""
    offers = tuple(dataclasses.replace(
        o, as_of=request.now.date().isoformat(), source=f"fake {request.cloud} API",
        price_usd_per_hour=None if o.price_usd_per_hour is None
        else round(o.price_usd_per_hour * 0.9, 4),
        spot_price_usd_per_hour=None if o.spot_price_usd_per_hour is None
        else round(o.spot_price_usd_per_hour * 0.9, 4))
        for o in request.catalog.offers
        if o.cloud == request.cloud and o.region in request.regions and not o.price_note)
    return CloudPrices(cloud=request.cloud, source=f"fake {request.cloud} API",
                       fetched_at=request.now, regions=request.regions, offers=offers)


@pytest.fixture
def client(server: RedisServer) -> redis.Redis:
    c = server.client()
    c.flushall()
    return c


@pytest.fixture
def redis_env(server: RedisServer, client: redis.Redis,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisLocation]:
    """``GREENPLACE_CATALOG_PRICES=redis`` on the private server, fake fetchers."""
    fake.use_fake_fetchers(monkeypatch)
    monkeypatch.setenv("GREENPLACE_CATALOG_PRICES", "redis")
    monkeypatch.setenv("GREENPLACE_REDIS_URL", server.url)
    monkeypatch.setenv("GREENPLACE_KEY_PREFIX", PREFIX)
    location = RedisLocation(client, prices_key(PREFIX), server.url)
    yield location
    prices_module.forget(location)


def test_two_writers_of_the_redis_key_keep_both_sections(client: redis.Redis) -> None:
    """Another refresh writes between our WATCH and our EXEC: ours is applied again to its
    result, so neither cloud's section is lost."""
    location = RedisLocation(client, prices_key(PREFIX), "test")
    other = RedisLocation(client, prices_key(PREFIX), "test")
    calls: list[set[str]] = []
    gcp = Section(cloud="gcp", prices=CloudPrices(cloud="gcp", source="g", fetched_at=NOW,
                                                  regions=(), offers=()))
    aws = Section(cloud="aws", prices=CloudPrices(cloud="aws", source="a", fetched_at=NOW,
                                                  regions=(), offers=()))

    def ours(document: PricesDocument) -> PricesDocument:
        calls.append(set(document.sections))
        if len(calls) == 1:
            other.update(lambda d: d.with_section(gcp))  # lands between WATCH and EXEC
        return document.with_section(aws)

    location.update(ours)
    assert calls == [set(), {"gcp"}]
    assert set(read(location).sections) == {"aws", "gcp"}


def test_every_process_reads_the_one_redis_copy(redis_env: RedisLocation,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake.CREDENTIALS.add("aws")
    fake.ANSWERS["aws"] = us_east
    monkeypatch.setenv("FAKE_AWS_CREDENTIALS", "1")
    with pytest.raises(SystemExit) as info:
        main(["catalog", "refresh", "--region", "aws:us-east-1"])
    assert info.value.code == 0, capsys.readouterr()
    raw = redis_env.client.get(prices_key(PREFIX))
    assert raw is not None and json.loads(raw)["clouds"]["aws"]["regions"] == ["us-east-1"]
    east = [o for o in load_catalog().offers if (o.cloud, o.region) == ("aws", "us-east-1")]
    assert east and {o.source for o in east} == {"fake aws API"}


def test_the_redis_form_is_read_again_at_most_once_a_minute(
        redis_env: RedisLocation, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(prices_module.time, "monotonic", lambda: clock[0])
    before = load_catalog()
    assert before is load_declared_catalog()
    fake.CREDENTIALS.add("aws")
    fake.ANSWERS["aws"] = us_east
    another_process = RedisLocation(redis_env.client, redis_env.key, "another process")
    run_refresh({"aws": ["us-east-1"]}, location=another_process,
                catalog=load_declared_catalog(), environ={"FAKE_AWS_CREDENTIALS": "1"},
                now=NOW)
    clock[0] += 59.0
    assert load_catalog() is before  # read 59 s ago: not read again
    clock[0] += 2.0
    after = load_catalog()
    assert after is not before
    assert any(o.source == "fake aws API" for o in after.offers)
    assert load_catalog() is after


def test_an_unreachable_redis_places_with_the_embedded_prices_and_says_so(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("GREENPLACE_CATALOG_PRICES", "redis")
    monkeypatch.setenv("GREENPLACE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("GREENPLACE_KEY_PREFIX", "down")
    with caplog.at_level(logging.WARNING, logger="greenplace.catalog"):
        assert load_catalog() is load_declared_catalog()
    assert "cannot read the refreshed catalog prices (Redis key down:catalog:prices" in \
        caplog.text and "placing with the embedded prices" in caplog.text


def test_beat_refreshes_the_clouds_with_credentials_and_counts_what_kept_old_figures(
        redis_env: RedisLocation, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JobStore(redis_env.client, prefix=PREFIX)
    fake.CREDENTIALS.update(("aws", "gcp"))
    env = {"FAKE_AWS_CREDENTIALS": "1", "FAKE_GCP_CREDENTIALS": "1",
           "GREENPLACE_CATALOG_PRICES": "redis"}
    sent: list[list[str]] = []
    fake.ANSWERS["aws"] = us_east
    fake.ANSWERS["gcp"] = TransientError("throttled. To fix: later.", provider="gcp",
                                         operation="skus.list")
    # Beat's message: aws is refreshed by this task, gcp sent on to the next one; azure has
    # no credentials.
    refresh_for_service(store, clouds=None, environ=env, now=NOW, send=sent.append)
    assert sent == [["gcp"]]
    (request,) = fake.CALLS  # every catalog region of the cloud in one fetch
    assert request.cloud == "aws"
    assert set(request.regions) == {r.region for r in load_declared_catalog().regions
                                    if r.cloud == "aws"}
    refresh_for_service(store, clouds=["gcp"], environ=env, now=NOW, send=sent.append)
    assert sent == [["gcp"]] and [r.cloud for r in fake.CALLS] == ["aws", "gcp"]
    document = read(redis_env)
    assert document.sections["aws"].prices is not None
    assert document.sections["gcp"].last_failure is not None

    samples = scrape(store)
    assert labelled(samples, "greenplace_catalog_refresh_errors_total", "cloud") == {"gcp": 1.0}
    assert labelled(samples, "greenplace_catalog_refresh_errors_total", "reason") == \
        {"transient": 1.0}
    ages = labelled(samples, "greenplace_catalog_price_age_seconds", "cloud")
    now_s = dt.datetime.now(dt.UTC).timestamp()
    assert ages["aws"] == pytest.approx(now_s - NOW.timestamp(), abs=120)
    # gcp and azure place with the embedded catalog: dated by its as_of.
    embedded_s = dt.datetime(2025, 8, 1, tzinfo=dt.UTC).timestamp()
    assert ages["azure"] == pytest.approx(now_s - embedded_s, abs=86400 + 120)
    assert ages["gcp"] == pytest.approx(now_s - embedded_s, abs=86400 + 120)


def test_the_next_cloud_is_sent_on_even_when_one_refresh_breaks(
        redis_env: RedisLocation) -> None:
    store = JobStore(redis_env.client, prefix=PREFIX)
    fake.CREDENTIALS.update(("aws", "gcp"))
    fake.ANSWERS["aws"] = RuntimeError("a bug in a fetcher")  # not a GreenplaceError
    sent: list[list[str]] = []
    with pytest.raises(RuntimeError):
        refresh_for_service(store, clouds=["aws", "gcp", "azure"],
                            environ={"FAKE_AWS_CREDENTIALS": "1"}, now=NOW, send=sent.append)
    assert sent == [["gcp", "azure"]]


def test_a_refused_refresh_is_counted_as_refused(redis_env: RedisLocation) -> None:
    store = JobStore(redis_env.client, prefix=PREFIX)
    fake.CREDENTIALS.add("aws")

    def spot_above(request: RefreshRequest) -> CloudPrices:
        good = us_east(request)
        first = good.offers[0]
        bad = dataclasses.replace(first, price_usd_per_hour=1.0, spot_price_usd_per_hour=2.0)
        return dataclasses.replace(good, offers=(bad, *good.offers[1:]))

    fake.ANSWERS["aws"] = spot_above
    refresh_for_service(store, clouds=["aws"], environ={"FAKE_AWS_CREDENTIALS": "1",
                                                        "GREENPLACE_CATALOG_PRICES": "redis"},
                        now=NOW, send=lambda _: None)
    assert redis_env.client.hgetall(f"{PREFIX}:metrics:catalog_errors") == {"aws|refused": "1"}
    assert read(redis_env).sections["aws"].prices is None


def test_a_worker_places_with_new_prices_once_they_are_written(
        make_ctx: Callable[..., Context], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake.use_fake_fetchers(monkeypatch)
    monkeypatch.setenv("GREENPLACE_CATALOG_PRICES", str(tmp_path / "prices.json"))
    ctx = make_ctx()
    assert current(ctx) is ctx  # nothing changed: the same context, the same placer
    fake.CREDENTIALS.add("aws")
    fake.ANSWERS["aws"] = us_east
    from greenplace.scheduler.catalog.refresh.store import FileLocation

    run_refresh({"aws": ["us-east-1"]}, location=FileLocation(tmp_path / "prices.json"),
                catalog=load_declared_catalog(), environ={"FAKE_AWS_CREDENTIALS": "1"},
                now=NOW)
    new = current(ctx)
    assert new is not ctx and new.providers is ctx.providers and new.store is ctx.store
    assert any(o.source == "fake aws API" for o in new.catalog.offers)
    assert new.placer is not ctx.placer
    assert current(new) is new


def test_beat_skips_a_cloud_whose_fetcher_cannot_be_imported(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A missing SDK extra on the worker skips that cloud (one log line); the others go on."""
    fake.use_fake_fetchers(monkeypatch)
    monkeypatch.setitem(refresh.FETCHER_MODULES, "azure", "tests.unit.no_such_module")
    fake.CREDENTIALS.update(("aws", "azure"))
    from greenplace.scheduler.catalog.refresh.service import clouds_with_credentials

    with caplog.at_level(logging.INFO, logger="greenplace.catalog"):
        found = clouds_with_credentials({"FAKE_AWS_CREDENTIALS": "1",
                                         "FAKE_AZURE_CREDENTIALS": "1"})
    assert found == ["aws"]
    assert "catalog refresh: azure skipped (No module named 'tests.unit.no_such_module')" in \
        caplog.text


@pytest.mark.parametrize("command", [["catalog", "show"],
                                     ["catalog", "refresh", "--region", "aws:us-east-1"]])
def test_an_unreachable_redis_is_one_paragraph_for_the_catalog_commands(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        command: list[str]) -> None:
    fake.use_fake_fetchers(monkeypatch)
    port = free_port()
    monkeypatch.setenv("GREENPLACE_CATALOG_PRICES", "redis")
    monkeypatch.setenv("GREENPLACE_REDIS_URL", f"redis://:s3cret@127.0.0.1:{port}/0")
    with pytest.raises(SystemExit) as info:
        main(command)
    _, err = capsys.readouterr()
    assert info.value.code == 2
    assert f"Cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in err
    assert "To fix:" in err and "Traceback" not in err and "s3cret" not in err
    assert not fake.CALLS


def test_the_api_dry_run_and_a_placed_jobs_record_carry_the_price_as_of(
        server: RedisServer) -> None:
    from tests.unit.test_api import JOB, YAML, Api

    api = Api(server)
    body = "jobs:\n  - " + JOB.format(name="j", policy="greenest").replace(
        "\n", "\n    ").rstrip() + "\n"
    (row,) = api.call("POST", "/v1/dry-run", api.alpha, content=body,
                      headers=YAML).json()["jobs"]
    assert row["price_as_of"].startswith("2025-") and row["price_source"]
    assert any("Run `greenplace catalog refresh" in n for n in row["notes"])
    (job_id,) = api.submit(api.alpha, "j")
    api.launch(job_id)
    record = api.store.get(job_id)
    assert record.decision is not None and record.decision["price_as_of"] == row["price_as_of"]
    view = api.call("GET", f"/v1/jobs/{job_id}", api.alpha).json()
    assert view["decision"]["price_source"] == row["price_source"]
    assert any("catalog refresh" in n for n in view["decision"]["notes"])
    assert view["candidates"] and all(c["price_as_of"] for c in view["candidates"])


def test_a_client_that_does_not_decode_replies_reads_the_same_document(
        server: RedisServer, client: redis.Redis) -> None:
    text = RedisLocation(client, prices_key(PREFIX), "text")
    text.update(lambda d: d.with_section(Section(cloud="aws", prices=CloudPrices(
        cloud="aws", source="a", fetched_at=NOW, regions=(), offers=()))))
    raw = RedisLocation(redis.Redis.from_url(server.url), prices_key(PREFIX), "bytes")
    assert read(raw) == read(text)
    raw.update(lambda d: d.with_section(Section(cloud="gcp")))
    assert set(read(text).sections) == {"aws", "gcp"}
