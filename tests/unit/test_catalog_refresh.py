"""The live catalog's core: the prices document (file form), merge and diff, and the refresh
run (per-cloud outcomes, the catalog check's refusals, one atomic write).

The per-cloud fetchers are stood in for by ``price_fetcher_fake`` (rows each test chooses);
their own tests drive the real SDKs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
from pathlib import Path

import pytest

from greenplace.scheduler.catalog import refresh
from greenplace.scheduler.catalog.loader import Catalog, load_declared_catalog
from greenplace.scheduler.catalog.refresh.merge import diff, merged
from greenplace.scheduler.catalog.refresh.model import CloudPrices, Skipped
from greenplace.scheduler.catalog.refresh.run import (
    FAILED,
    NO_CREDENTIALS,
    REFUSED,
    UPDATED,
    run_refresh,
)
from greenplace.scheduler.catalog.refresh.store import (
    FileLocation,
    PricesDocument,
    Section,
    default_path,
    dumps,
    loads,
    prices_location,
    read,
)
from greenplace.scheduler.exceptions import AuthError, CatalogError, TransientError
from tests.unit import price_fetcher_fake as fake
from tests.unit.price_fetcher_fake import answering, offer

NOW = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
ENV_ALL = {"FAKE_AWS_CREDENTIALS": "1", "FAKE_GCP_CREDENTIALS": "1", "FAKE_AZURE_CREDENTIALS": "1"}


@pytest.fixture
def catalog() -> Catalog:
    return load_declared_catalog()


@pytest.fixture
def fetchers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake.use_fake_fetchers(monkeypatch)
    fake.CREDENTIALS.update(("aws", "gcp", "azure"))


def aws_answer(**changes: float | None) -> CloudPrices:
    """us-east-1 as the fake AWS API prices it: p5.48xlarge repriced, g6.2xlarge new."""
    p5 = offer("aws", "us-east-1", "p5.48xlarge", "H100", 8, 50.0, 20.0)
    p5 = dataclasses.replace(p5, **changes)  # type: ignore[arg-type]
    return CloudPrices(cloud="aws", source="fake AWS Price List API", fetched_at=NOW,
                       regions=("us-east-1",),
                       offers=(p5, offer("aws", "us-east-1", "g6.2xlarge", "L4", 1, 0.98, 0.3)),
                       skipped=(Skipped(region="us-east-1", item="p6-b200.48xlarge",
                                        reason="accelerator B200 is not in the catalog"),))


def section(prices: CloudPrices) -> Section:
    return Section(cloud=prices.cloud, prices=prices,
                   priced_at=dict.fromkeys(prices.regions, prices.fetched_at))


# --- the document ------------------------------------------------------------------------
def test_document_round_trips_through_json() -> None:
    document = PricesDocument().with_section(section(aws_answer()))
    again = loads(dumps(document), where="x")
    assert again == document
    assert json.loads(dumps(document))["clouds"]["aws"]["offers"][0]["instance_type"] == \
        "p5.48xlarge"


@pytest.mark.parametrize(("text", "expected"), [
    ("{not json", "is not JSON"),
    ('{"format": "something else"}', "is not a greenplace-catalog-prices document"),
    ('{"format": "greenplace-catalog-prices", "version": 9, "clouds": {}}', "version"),
    ('{"format": "greenplace-catalog-prices", "version": 1, "clouds": {"oci": {}}}',
     "'oci', not one of aws, gcp, azure"),
])
def test_a_broken_document_is_one_paragraph_naming_where_it_is(text: str, expected: str) -> None:
    with pytest.raises(CatalogError) as info:
        loads(text, where="/data/prices.json")
    message = str(info.value)
    assert expected in message and "/data/prices.json" in message and "To fix:" in message
    assert "\n" not in message


def test_a_document_with_a_bad_offer_names_the_row() -> None:
    data = json.loads(dumps(PricesDocument().with_section(section(aws_answer()))))
    data["clouds"]["aws"]["offers"][1]["price_usd_per_hour"] = -1.0
    with pytest.raises(CatalogError, match=r"clouds\.aws\.offers\[1\] price_usd_per_hour -1.0 "
                       "is out of range"):
        loads(json.dumps(data), where="p")


def test_the_default_place_is_the_users_data_folder(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    assert default_path(env) == tmp_path / "greenplace" / "catalog" / "prices.json"
    assert prices_location(env) == FileLocation(default_path(env))
    assert prices_location({"GREENPLACE_CATALOG_PRICES": str(tmp_path / "p.json")}) == \
        FileLocation(tmp_path / "p.json")
    assert default_path({}).parts[-5:] == (".local", "share", "greenplace", "catalog",
                                           "prices.json")


def test_a_write_that_fails_midway_leaves_the_old_document(tmp_path: Path) -> None:
    location = FileLocation(tmp_path / "prices.json")
    location.update(lambda d: d.with_section(section(aws_answer())))
    before = (tmp_path / "prices.json").read_text()

    def broken(_: PricesDocument) -> PricesDocument:
        raise RuntimeError("crashed while building the new document")

    with pytest.raises(RuntimeError):
        location.update(broken)
    assert (tmp_path / "prices.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prices.json", "prices.json.lock"]


def test_two_writers_of_the_file_keep_both_sections(tmp_path: Path) -> None:
    """The second writer waits for the first (the lock), then applies its change to the
    first's result, so neither section is lost."""
    location = FileLocation(tmp_path / "prices.json")
    first_inside, second_started = threading.Event(), threading.Event()
    seen_by_second: list[PricesDocument] = []
    gcp = CloudPrices(cloud="gcp", source="fake billing", fetched_at=NOW,
                      regions=("us-central1",), offers=())

    def first(d: PricesDocument) -> PricesDocument:
        first_inside.set()
        second_started.wait(timeout=1.0)  # the second is blocked on the lock meanwhile
        return d.with_section(section(aws_answer()))

    def second(d: PricesDocument) -> PricesDocument:
        seen_by_second.append(d)
        return d.with_section(section(gcp))

    thread = threading.Thread(target=location.update, args=(first,))
    thread.start()
    assert first_inside.wait(timeout=10)
    second_started.set()
    location.update(second)
    thread.join()
    assert set(seen_by_second[0].sections) == {"aws"}
    assert set(read(location).sections) == {"aws", "gcp"}


# --- merge and diff ----------------------------------------------------------------------
def test_a_priced_region_holds_exactly_the_refreshed_offers(catalog: Catalog) -> None:
    result = merged(catalog, PricesDocument().with_section(section(aws_answer())))
    east = {o.instance_type: o for o in result.offers
            if (o.cloud, o.region) == ("aws", "us-east-1")}
    assert set(east) == {"p5.48xlarge", "g6.2xlarge"}
    assert east["p5.48xlarge"].price_usd_per_hour == 50.0
    assert (east["p5.48xlarge"].as_of, east["p5.48xlarge"].source) == ("2026-12-01",
                                                                        "fake price API")
    untouched = [o for o in catalog.offers if o.cloud != "aws" or o.region != "us-east-1"]
    assert [o for o in result.offers if o.cloud != "aws" or o.region != "us-east-1"] == \
        sorted(untouched, key=lambda o: (o.cloud, o.region, o.instance_type))


def test_diff_names_new_retired_and_repriced_offers(catalog: Catalog) -> None:
    changes = diff(catalog, merged(catalog, PricesDocument().with_section(
        section(aws_answer()))))
    kinds = {(c.change, c.offer.instance_type) for c in changes}
    assert ("repriced", "p5.48xlarge") in kinds and ("new", "g6.2xlarge") in kinds
    retired = {i for k, i in kinds if k == "retired"}
    assert retired == {o.instance_type for o in catalog.offers
                       if (o.cloud, o.region) == ("aws", "us-east-1")} - {"p5.48xlarge"}
    row = next(c for c in changes if c.change == "repriced").as_row()
    assert row["price_usd_per_hour_before"] == 55.04 and row["price_usd_per_hour_after"] == 50.0
    assert row["price_change_pct"] == round(100 * (50.0 - 55.04) / 55.04, 2)
    assert row["spot_price_usd_per_hour_before"] is None and row["spot_price_change_pct"] is None


def test_an_offer_seen_but_not_priceable_keeps_its_embedded_row(catalog: Catalog) -> None:
    # The fetcher saw two embedded types: one it could not price with certainty (kept at its
    # embedded price and as_of), one the cloud says is not sold there (retired).
    east = sorted(o.instance_type for o in catalog.offers
                  if (o.cloud, o.region) == ("aws", "us-east-1")
                  and o.instance_type != "p5.48xlarge")
    unpriceable, gone = east[0], east[1]
    prices = dataclasses.replace(aws_answer(), skipped=(
        Skipped(region="us-east-1", item=unpriceable, reason="price shape not understood"),
        Skipped(region="us-east-1", item=gone, reason="not offered in us-east-1",
                not_offered=True)))
    document = PricesDocument().with_section(section(prices))
    result = {o.instance_type: o for o in merged(catalog, document).offers
              if (o.cloud, o.region) == ("aws", "us-east-1")}
    embedded = next(o for o in catalog.offers
                    if (o.cloud, o.region, o.instance_type) == ("aws", "us-east-1", unpriceable))
    assert result[unpriceable] == embedded
    assert gone not in result
    # It survives the document's JSON form, and the diff calls it neither new nor retired.
    assert loads(dumps(document), where="x").sections["aws"].prices == prices
    changed = {c.offer.instance_type for c in diff(catalog, merged(catalog, document))}
    assert unpriceable not in changed and gone in changed


def test_offers_of_regions_the_catalog_lost_are_left_out(catalog: Catalog) -> None:
    gone = offer("aws", "mars-north-1", "p5.48xlarge", "H100", 8, 50.0)
    prices = dataclasses.replace(aws_answer(), regions=("us-east-1", "mars-north-1"),
                                 offers=(*aws_answer().offers, gone))
    result = merged(catalog, PricesDocument().with_section(section(prices)))
    assert not any(o.region == "mars-north-1" for o in result.offers)


# --- the refresh run ---------------------------------------------------------------------
def refresh_all(location: FileLocation, catalog: Catalog, *, env: dict[str, str] | None = None,
                asked: dict[str, list[str]] | None = None) -> list[str]:
    result = run_refresh(asked or {"aws": ["us-east-1"], "gcp": ["us-central1"]},
                         location=location, catalog=catalog, environ=env or ENV_ALL, now=NOW)
    return [o.status for o in result.outcomes]


def gcp_answer(price: float = 80.0) -> CloudPrices:
    return CloudPrices(cloud="gcp", source="fake billing", fetched_at=NOW,
                       regions=("us-central1",),
                       offers=(offer("gcp", "us-central1", "a3-highgpu-8g", "H100", 8, price,
                                     18.0),))


def test_a_failing_cloud_keeps_its_old_section_and_the_others_update(
        tmp_path: Path, catalog: Catalog, fetchers: None) -> None:
    location = FileLocation(tmp_path / "prices.json")
    fake.ANSWERS.update(aws=lambda r: aws_answer(), gcp=lambda r: gcp_answer())
    assert refresh_all(location, catalog) == [UPDATED, UPDATED]
    old_aws = read(location).sections["aws"]

    fake.ANSWERS["aws"] = TransientError(
        "GetProducts throttled after 5 tries. To fix: refresh again later.", provider="aws",
        operation="GetProducts")
    fake.ANSWERS["gcp"] = lambda r: gcp_answer(price=84.0)
    result = run_refresh({"aws": ["us-east-1"], "gcp": ["us-central1"]}, location=location,
                         catalog=catalog, environ=ENV_ALL, now=NOW + dt.timedelta(days=1))
    aws, gcp = result.outcomes
    assert (aws.status, gcp.status) == (FAILED, UPDATED)
    assert "previous figures are kept (the figures refreshed at 2026-12-01 03:00 UTC)" in \
        aws.message and "GetProducts throttled" in aws.message and "\n" not in aws.message
    document = read(location)
    assert document.sections["aws"].prices == old_aws.prices
    assert document.sections["aws"].last_failure is not None
    assert document.sections["aws"].last_failure.outcome == FAILED
    assert document.sections["gcp"].prices is not None
    assert document.sections["gcp"].prices.offers[0].price_usd_per_hour == 84.0
    assert not result.ok


def test_a_failed_first_refresh_says_the_embedded_figures_are_kept(
        tmp_path: Path, catalog: Catalog, fetchers: None) -> None:
    fake.ANSWERS["aws"] = AuthError("no credentials. To fix: configure them.", provider="aws",
                                    operation="GetProducts")
    result = run_refresh({"aws": ["us-east-1"]}, location=FileLocation(tmp_path / "p.json"),
                         catalog=catalog, environ=ENV_ALL, now=NOW)
    assert "kept (the embedded catalog's, as_of 2025-08-01)" in result.outcomes[0].message
    assert read(FileLocation(tmp_path / "p.json")).sections["aws"].prices is None


@pytest.mark.parametrize(("changes", "expected"), [
    ({"spot_price_usd_per_hour": 60.0},
     "refreshed prices aws:us-east-1 p5.48xlarge: spot price 60 USD/h is not below on-demand "
     "50 USD/h"),
    ({"price_usd_per_hour": 500.0, "spot_price_usd_per_hour": None},
     "refreshed prices aws:us-east-1 p5.48xlarge: 62.50 USD per H100-hour is"),
    ({"accelerator_count": 4},
     "refreshed prices aws:us-east-1 p5.48xlarge: carries 4 x H100, the instance type has 8"),
])
def test_the_catalog_check_refuses_a_section_naming_its_rows(
        tmp_path: Path, catalog: Catalog, fetchers: None, changes: dict[str, float],
        expected: str) -> None:
    location = FileLocation(tmp_path / "prices.json")
    fake.ANSWERS["aws"] = lambda r: aws_answer(**changes)
    result = run_refresh({"aws": ["us-east-1"]}, location=location, catalog=catalog,
                         environ=ENV_ALL, now=NOW)
    (outcome,) = result.outcomes
    assert outcome.status == REFUSED
    assert any(p.startswith(expected) for p in outcome.problems), outcome.problems
    assert expected in outcome.message and "To fix:" in outcome.message
    assert read(location).sections["aws"].prices is None  # refused: nothing stored


@pytest.mark.parametrize(("answer", "expected"), [
    (lambda r: dataclasses.replace(aws_answer(), regions=("us-east-1", "us-west-2")),
     "refreshed prices aws:us-west-2: priced, but not asked for"),
    (lambda r: dataclasses.replace(aws_answer(), offers=(
        *aws_answer().offers, offer("aws", "us-east-1", "x9.huge", "B200", 8, 90.0))),
     "refreshed prices aws:us-east-1 x9.huge: unknown region or accelerator 'B200'"),
    (lambda r: dataclasses.replace(aws_answer(), offers=aws_answer().offers * 2),
     "refreshed prices aws:us-east-1 p5.48xlarge: appears twice"),
    (lambda r: dataclasses.replace(aws_answer(), fetched_at=NOW.replace(tzinfo=None)),
     "refreshed prices aws: fetched_at 2026-12-01T03:00:00 has no UTC offset"),
    (lambda r: dataclasses.replace(aws_answer(), offers=()),
     "refreshed prices aws:us-east-1: no offer priced, where the embedded catalog has some"),
])
def test_an_answer_outside_the_fetcher_contract_is_refused(
        tmp_path: Path, catalog: Catalog, fetchers: None, answer: fake.Answer,
        expected: str) -> None:
    fake.ANSWERS["aws"] = answer
    result = run_refresh({"aws": ["us-east-1"]}, location=FileLocation(tmp_path / "p.json"),
                         catalog=catalog, environ=ENV_ALL, now=NOW)
    assert result.outcomes[0].status == REFUSED
    assert any(p.startswith(expected) for p in result.outcomes[0].problems), \
        result.outcomes[0].problems


def test_no_credentials_fetches_and_writes_nothing(
        tmp_path: Path, catalog: Catalog, fetchers: None) -> None:
    fake.ANSWERS["aws"] = lambda r: aws_answer()
    result = run_refresh({"aws": ["us-east-1"]}, location=FileLocation(tmp_path / "p.json"),
                         catalog=catalog, environ={}, now=NOW)
    (outcome,) = result.outcomes
    assert outcome.status == NO_CREDENTIALS and not result.written and not fake.CALLS
    assert "aws: no credentials found" in outcome.message and "AWS_PROFILE" in outcome.message
    assert "To fix:" in outcome.message
    assert not (tmp_path / "p.json").exists()


def test_a_missing_sdk_extra_is_a_failure_naming_the_extra(
        tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refresh, "FETCHER_MODULES",
                        {**refresh.FETCHER_MODULES, "gcp": "tests.unit.no_such_fetcher_module"})
    result = run_refresh({"gcp": ["us-central1"]}, location=FileLocation(tmp_path / "p.json"),
                         catalog=catalog, environ={}, now=NOW)
    (outcome,) = result.outcomes
    assert outcome.status == FAILED
    assert "pip install 'greenplace[gcp]'" in outcome.message


def test_a_refresh_of_some_regions_keeps_the_others(
        tmp_path: Path, catalog: Catalog, fetchers: None) -> None:
    location = FileLocation(tmp_path / "prices.json")
    west = offer("aws", "us-west-2", "p5.48xlarge", "H100", 8, 52.0, 21.0)
    fake.ANSWERS["aws"] = lambda r: CloudPrices(
        cloud="aws", source="fake", fetched_at=r.now, regions=r.regions,
        offers=tuple(o for o in (*aws_answer().offers, west) if o.region in r.regions))
    run_refresh({"aws": ["us-east-1", "us-west-2"]}, location=location, catalog=catalog,
                environ=ENV_ALL, now=NOW)
    later = NOW + dt.timedelta(days=2)
    run_refresh({"aws": ["us-west-2"]}, location=location, catalog=catalog, environ=ENV_ALL,
                now=later)
    aws = read(location).sections["aws"]
    assert aws.prices is not None
    assert {o.region for o in aws.prices.offers} == {"us-east-1", "us-west-2"}
    assert aws.priced_at == {"us-east-1": NOW, "us-west-2": later}
    assert fake.CALLS[-1].regions == ("us-west-2",)


def test_two_refreshes_of_different_clouds_keep_each_others_section(
        tmp_path: Path, catalog: Catalog, fetchers: None) -> None:
    """A refresh applies its sections to the document as it is when it writes, not as it
    was when it started: the gcp refresh that wrote meanwhile is kept."""
    location = FileLocation(tmp_path / "prices.json")

    def aws_while_gcp_refreshes(request: refresh.RefreshRequest) -> CloudPrices:
        fake.ANSWERS["gcp"] = lambda r: gcp_answer()
        run_refresh({"gcp": ["us-central1"]}, location=location, catalog=catalog,
                    environ=ENV_ALL, now=NOW)
        return aws_answer()

    fake.ANSWERS["aws"] = aws_while_gcp_refreshes
    run_refresh({"aws": ["us-east-1"]}, location=location, catalog=catalog, environ=ENV_ALL,
                now=NOW)
    assert set(read(location).sections) == {"aws", "gcp"}


def test_skipped_items_and_regions_not_enabled_are_kept_with_the_section(
        tmp_path: Path, catalog: Catalog, fetchers: None) -> None:
    location = FileLocation(tmp_path / "prices.json")
    fake.ANSWERS["aws"] = answering(*aws_answer().offers, not_enabled=("eu-south-2",),
                                    skipped=aws_answer().skipped)
    result = run_refresh({"aws": ["us-east-1", "eu-south-2"]}, location=location,
                         catalog=catalog, environ=ENV_ALL, now=NOW)
    assert result.outcomes[0].status == UPDATED, result.outcomes[0].message
    aws = read(location).sections["aws"].prices
    assert aws is not None
    assert aws.not_enabled == ("eu-south-2",) and aws.regions == ("us-east-1",)
    assert aws.skipped[0].item == "p6-b200.48xlarge"
    # eu-south-2 was not priced: the embedded offers there stay.
    embedded = [o for o in catalog.offers if o.region == "eu-south-2"]
    assert [o for o in merged(catalog, read(location)).offers if o.region == "eu-south-2"] == \
        embedded
