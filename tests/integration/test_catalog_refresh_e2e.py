"""End to end (issue 15, "Done when"): the live catalog through the real CLI, with the three
real fetchers behind it and each cloud's SDK aimed at its fakes.

The fakes (tests/refresh_fakes.py, as the fetcher tests seed them) run in this process on
loopback: AWS's Price List Query API and EC2 (moto behind the spot-history proxy), GCP's Cloud
Billing Catalog and Compute Engine, Azure's Retail Prices API and Resource Manager (TLS, a
throwaway CA). `greenplace` reaches them through the environment variables an operator would
set (``AWS_ENDPOINT_URL_*``, ``GREENPLACE_GCP_*``, ``GREENPLACE_AZURE_*``), with
``GREENPLACE_CATALOG_PRICES`` at a temp file. The user's path (refresh, check, dry run) runs
``greenplace`` as a subprocess from the venv; the tests that need a retry's wait recorded
rather than slept (Azure's 500 on every page) call the CLI's entry point in this process.

One refresh asks for two regions per cloud, not the whole catalog. No Redis is needed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenplace.policies.model import load_policy
from greenplace.scheduler.catalog.loader import load_embedded_catalog
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.refresh import azure_retail
from greenplace.scheduler.catalog.refresh.store import FileLocation, PricesDocument, read
from greenplace.scheduler.cli import main
from tests.fakes.arm_server import FakeResourceManager
from tests.fakes.aws_pricing import PriceListApi, price_list_server
from tests.fakes.billing_catalog import FakeCloudCatalog
from tests.fakes.ec2_spot import SpotPriceProxy, ec2_with_spot_prices
from tests.fakes.gce_server import FakeComputeEngine
from tests.fakes.json_server import make_test_ca
from tests.fakes.retail_prices import EFFECTIVE, FakeRetailPrices, default_items
from tests.refresh_fakes import (
    AWS_SECRET,
    ZONES,
    aws_credentials,
    aws_endpoints,
    azure_with_subscription,
    catalog_skus,
    gcp_environ,
    offer_machines,
    offer_skus,
    on_demand_of,
    product_for,
    seed_aws,
)

REGIONS = {"aws": ("us-east-1", "eu-north-1"), "gcp": ("us-central1", "europe-west4"),
           "azure": ("eastus", "westus2")}
REGION_ARGS = [arg for cloud, regions in REGIONS.items() for r in regions
               for arg in ("--region", f"{cloud}:{r}")]
# An 8 x A100 machine each cloud sells in the asked regions.
A100X8 = {"aws": "p4d.24xlarge", "gcp": "a2-highgpu-8g", "azure": "Standard_ND96asr_v4"}
_FOREIGN = ("AWS_", "AZURE_", "GOOGLE_", "CLOUDSDK_", "GCE_", "GREENPLACE_")
_GREENPLACE = Path(sys.executable).with_name("greenplace")


@dataclass(frozen=True, slots=True)
class Clouds:
    """The fakes, and the settings that aim each cloud's SDK at them."""

    price_list: PriceListApi
    spot: SpotPriceProxy
    retail: FakeRetailPrices
    settings: dict[str, str]


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    ca_dir = tmp_path_factory.mktemp("ca")
    with ExitStack() as stack:
        ec2_url, spot = stack.enter_context(ec2_with_spot_prices())
        pricing_url, price_list = stack.enter_context(price_list_server())
        gce = offer_machines(stack.enter_context(FakeComputeEngine(zones=ZONES)))
        billing = stack.enter_context(FakeCloudCatalog(catalog_skus()))
        retail = stack.enter_context(FakeRetailPrices())
        tls = make_test_ca(ca_dir)
        arm = offer_skus(stack.enter_context(FakeResourceManager(tls=tls[0])), REGIONS["azure"])
        settings = {**aws_endpoints(ec2_url, pricing_url), **gcp_environ(gce, billing),
                    **azure_with_subscription(retail, arm, tls[1])}
        yield Clouds(price_list=price_list, spot=spot, retail=retail, settings=settings)


@dataclass(frozen=True, slots=True)
class User:
    """A user's shell: the environment `greenplace` runs with, and their folder."""

    env: dict[str, str]
    home: Path

    @property
    def prices(self) -> Path:
        return self.home / "prices.json"

    def document(self) -> PricesDocument:
        return read(FileLocation(self.prices))

    def greenplace(self, *args: str, env: Mapping[str, str] | None = None
                   ) -> subprocess.CompletedProcess[str]:
        """``greenplace ARGS`` from the venv, as the user types it (``env``: instead of the
        user's environment)."""
        command = [str(_GREENPLACE)] if _GREENPLACE.exists() else [
            sys.executable, "-m", "greenplace"]
        return subprocess.run([*command, *args], cwd=self.home, env=dict(env or self.env),
                              capture_output=True, text=True, timeout=120)


@pytest.fixture
def user(clouds: Clouds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> User:
    """Fakes seeded afresh (AWS's spot history as of now); this process's environment is
    the user's too, for the in-process calls."""
    clouds.price_list.reset()
    clouds.spot.reset()
    seed_aws(clouds.price_list, clouds.spot, REGIONS["aws"], now=dt.datetime.now(dt.UTC))
    clouds.retail.items = default_items()
    clouds.retail.broken_pages.clear()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
    env.update({"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
                "GREENPLACE_CATALOG_PRICES": str(tmp_path / "prices.json"),
                **aws_credentials(tmp_path), **clouds.settings})
    for name in os.environ:
        if name.startswith(_FOREIGN):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return User(env=env, home=tmp_path)


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI's entry point in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def cheapest_in(home: Path, *regions: str) -> Path:
    """The `cheapest` preset (price only) kept to ``regions`` (CLOUD:REGION), on demand."""
    policy = load_policy("cheapest").model_dump(mode="json")
    policy["name"] = "cheapest-in-" + "-".join(r.replace(":", "-") for r in regions)
    policy["constraints"].update(regions={"include": list(regions), "exclude": []},
                                 spot="forbid")
    path = home / f"{policy['name']}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def jobs_file(home: Path, policies: Mapping[str, Path]) -> Path:
    """One 8 x A100 training job per named policy."""
    jobs = [{"name": name, "run": "python train.py", "resources": {"accelerators": {"A100": 8}},
             "work": {"hours": 10}, "policy": str(path)} for name, path in policies.items()]
    path = home / "jobs.yaml"
    path.write_text(yaml.safe_dump({"jobs": jobs}))
    return path


def refreshed(document: PricesDocument, cloud: str, region: str, instance_type: str) -> Offer:
    prices = document.sections[cloud].prices
    assert prices is not None, f"{cloud} was not refreshed"
    (found,) = [o for o in prices.offers if (o.region, o.instance_type) == (region, instance_type)]
    return found


def embedded(cloud: str, region: str, instance_type: str) -> Offer:
    (found,) = [o for o in load_embedded_catalog().offers
                if (o.cloud, o.region, o.instance_type) == (cloud, region, instance_type)]
    return found


def fetched_on(document: PricesDocument, cloud: str) -> str:
    """The day ``cloud``'s refreshed prices were fetched: their offers' ``as_of``."""
    prices = document.sections[cloud].prices
    assert prices is not None, f"{cloud} was not refreshed"
    return prices.fetched_at.date().isoformat()


def dry_run(user: User, jobs: Path) -> dict[str, dict[str, Any]]:
    done = user.greenplace("dry-run", str(jobs), "--output", "json", "--explain")
    assert done.returncode == 0, done.stdout + done.stderr
    return {row["job"]: row for row in json.loads(done.stdout)}


def set_aws_price(price_list: PriceListApi, offer: Offer, usd: float) -> None:
    """The price list's Linux, shared-tenancy On-Demand price of ``offer``."""
    def is_it(product: dict[str, Any]) -> bool:
        a = product["product"]["attributes"]
        return (a["regionCode"], a["instanceType"], a["operatingSystem"], a["tenancy"],
                a["capacitystatus"]) == (offer.region, offer.instance_type, "Linux", "Shared",
                                         "Used")

    (index,) = [i for i, p in enumerate(price_list.products) if is_it(p)]
    price_list.products[index] = product_for(offer, usd_per_hour=str(usd))


def set_retail_price(retail: FakeRetailPrices, region: str, size: str, usd: float) -> None:
    """The Retail Prices API's current Linux pay-as-you-go price of ``size`` in ``region``."""
    rows = [r for r in retail.items if (r["armRegionName"], r["armSkuName"]) == (region, size)
            and r["type"] == "Consumption" and r["meterName"] == r["skuName"]
            and not r["productName"].endswith("Windows") and r["effectiveStartDate"] == EFFECTIVE
            and "Spot" not in r["meterName"] and "Low Priority" not in r["meterName"]]
    assert len(rows) == 1, rows
    rows[0].update(retailPrice=usd, unitPrice=usd)


# --------------------------------------------------------------------------------------
def test_refresh_of_three_clouds_passes_the_check_and_the_dry_run_places_with_it(
        user: User) -> None:
    done = user.greenplace("catalog", "refresh", *REGION_ARGS, "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["written"] and report["where"] == str(user.prices)
    assert [(c["cloud"], c["status"], c["regions"]) for c in report["clouds"]] == [
        ("aws", "updated", 2), ("gcp", "updated", 2), ("azure", "updated", 2)]
    assert all(c["offers"] > 0 for c in report["clouds"])
    assert AWS_SECRET not in done.stdout + done.stderr
    document = user.document()
    today = fetched_on(document, "aws")

    # The catalog check passes on the catalog every command now places with, and counts the
    # offers the refresh brought.
    check = user.greenplace("catalog", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    total = sum(c["offers"] for c in report["clouds"])
    assert check.stdout.startswith("OK: ")
    assert f"({total} from a refresh)." in check.stdout

    # Each cloud's A100 x 8 job is priced with the refreshed figure, its as_of and source.
    policies = {cloud: cheapest_in(user.home, *(f"{cloud}:{r}" for r in REGIONS[cloud]))
                for cloud in REGIONS}
    rows = dry_run(user, jobs_file(user.home, policies))
    for cloud, row in rows.items():
        assert row["status"] == "placed" and row["cloud"] == cloud, row
        assert row["instance_type"] == A100X8[cloud]
        offer = refreshed(document, cloud, row["region"], row["instance_type"])
        # (the decision shows USD/h to four places)
        assert row["price_usd_per_hour"] == pytest.approx(offer.price_usd_per_hour, abs=5e-5)
        assert (row["price_as_of"], row["price_source"]) == (today, offer.source)
        assert row["price_age_days"] == 0
    # The AWS figure is the fake price list's (5 % below the embedded one), not the CSV's.
    p4d = embedded("aws", rows["aws"]["region"], "p4d.24xlarge")
    assert rows["aws"]["price_usd_per_hour"] == pytest.approx(float(on_demand_of(p4d)),
                                                              abs=5e-5)
    assert rows["aws"]["price_usd_per_hour"] != p4d.price_usd_per_hour
    assert "Price List" in rows["aws"]["price_source"]

    shown = user.greenplace("catalog", "show", "--output", "json")
    assert shown.returncode == 0, shown.stderr
    for row in json.loads(shown.stdout):
        assert row["fetched_at"].startswith(today) and row["regions"] == 2, row
        assert not row["source"].startswith("embedded catalog"), row


def test_a_price_change_at_the_fake_is_repriced_and_moves_the_placement(
        user: User, clouds: Clouds) -> None:
    east, west = REGIONS["azure"]
    size = A100X8["azure"]
    jobs = jobs_file(user.home, {"train": cheapest_in(user.home, f"azure:{east}",
                                                      f"azure:{west}")})
    done = user.greenplace("catalog", "refresh", "--region", f"azure:{east}",
                           "--region", f"azure:{west}")
    assert done.returncode == 0, done.stdout + done.stderr
    before = dry_run(user, jobs)["train"]
    assert before["instance_type"] == size
    # Both regions sell it at the same list price: the policy's tie-break (lower CO2e) chose.
    chosen = before["region"]
    other = west if chosen == east else east
    list_price = embedded("azure", chosen, size).price_usd_per_hour
    assert list_price is not None
    assert list_price == embedded("azure", other, size).price_usd_per_hour
    assert before["price_usd_per_hour"] == pytest.approx(list_price, abs=5e-5)

    dearer = round(list_price * 1.2, 3)  # the cloud raises it in the chosen region only
    set_retail_price(clouds.retail, chosen, size, dearer)
    done = user.greenplace("catalog", "refresh", "--region", f"azure:{east}",
                           "--region", f"azure:{west}", "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    (azure,) = json.loads(done.stdout)["clouds"]
    assert azure["repriced"] == 1, azure

    diff = user.greenplace("catalog", "diff", "--change", "repriced", "--output", "json")
    assert diff.returncode == 0, diff.stderr
    (change,) = json.loads(diff.stdout)
    today = fetched_on(user.document(), "azure")
    assert (change["cloud"], change["region"], change["instance_type"]) == (
        "azure", chosen, size)
    assert change["price_usd_per_hour_before"] == list_price
    assert change["price_usd_per_hour_after"] == dearer
    assert change["as_of_after"] == today
    assert "Retail Prices" in change["source_after"]

    after = dry_run(user, jobs)["train"]
    assert (after["region"], after["instance_type"]) == (other, size)
    assert after["price_usd_per_hour"] == pytest.approx(list_price, abs=5e-5)
    assert after["price_as_of"] == today
    # The decision names the new price and its as_of: the region it left, in the candidates.
    (left,) = [c for c in after["candidates"] if c["region"] == chosen]
    assert (left["price_usd_per_hour"], left["price_as_of"]) == (dearer, today)
    assert left["rejected_by"] is None
    assert left["cost_usd"] > after["cost_usd"]


def paragraph(out: str, start: str) -> str:
    """The one paragraph of ``out`` that starts with ``start`` (blank-line separated)."""
    (found,) = [p for p in out.split("\n\n") if p.startswith(start)]
    return found


def test_a_cloud_whose_fake_fails_keeps_its_figures_while_the_others_refresh(
        user: User, clouds: Clouds, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = in_process(capsys, "catalog", "refresh", *REGION_ARGS)
    assert code == 0, out + err
    first = user.document()
    waits: list[float] = []
    monkeypatch.setattr(azure_retail, "_sleep", waits.append)  # recorded, not slept
    clouds.retail.fail_page(0, 500)  # every first page, for good: no price reachable
    east = embedded("aws", "us-east-1", "p4d.24xlarge")
    cheaper = round(float(on_demand_of(east)) * 0.9, 4)
    set_aws_price(clouds.price_list, east, cheaper)  # AWS cuts one price meanwhile

    code, out, err = in_process(capsys, "catalog", "refresh", *REGION_ARGS)
    assert code == 1
    assert "Traceback" not in out + err
    assert "aws: updated" in err and "gcp: updated" in err and "azure: failed" in err
    said = paragraph(out, "azure: ")
    assert "\n" not in said.strip() and said.count("To fix:") == 1
    assert "the refresh failed and its previous figures are kept (the figures refreshed at" \
        in said and "500" in said
    assert len(waits) == azure_retail.MAX_TRIES - 1
    second = user.document()
    assert second.sections["azure"].prices == first.sections["azure"].prices
    assert second.sections["azure"].last_failure is not None
    for cloud in ("aws", "gcp"):
        now, then = second.sections[cloud].prices, first.sections[cloud].prices
        assert now is not None and then is not None and now.fetched_at > then.fetched_at
    assert refreshed(second, "aws", "us-east-1", "p4d.24xlarge").price_usd_per_hour == cheaper


def test_aws_without_credentials_is_said_and_the_others_refresh(user: User) -> None:
    env = {k: v for k, v in user.env.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    done = user.greenplace("catalog", "refresh", *REGION_ARGS, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    said = paragraph(done.stdout, "aws: ")
    assert "\n" not in said.strip()
    assert said.startswith("aws: no credentials found, so nothing was fetched or written for "
                           "it; placement keeps the embedded catalog's, as_of ")
    assert said.count("To fix:") == 1 and "AWS_ACCESS_KEY_ID" in said
    document = user.document()
    assert "aws" not in document.sections
    assert document.sections["gcp"].prices is not None
    assert document.sections["azure"].prices is not None
    diff = user.greenplace("catalog", "diff", "--cloud", "aws")
    assert diff.returncode == 0 and "0 offer(s) changed" in diff.stdout, diff.stdout


def test_the_check_finds_a_broken_refreshed_price_and_names_where_it_is(
        user: User, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(capsys, "catalog", "refresh", "--region", "aws:us-east-1")
    assert code == 0, out + err
    code, out, _ = in_process(capsys, "catalog", "check")
    assert code == 0 and "from a refresh)." in out and "(0 from" not in out
    # Someone edits the document by hand: a spot price above its on-demand one.
    data = json.loads(user.prices.read_text())
    (p4d,) = [o for o in data["clouds"]["aws"]["offers"] if o["instance_type"] == "p4d.24xlarge"]
    p4d["spot_price_usd_per_hour"] = p4d["price_usd_per_hour"] * 2
    user.prices.write_text(json.dumps(data))
    code, out, err = in_process(capsys, "catalog", "check")
    assert code == 1 and "Traceback" not in out + err
    assert out.splitlines() == [
        f"refreshed prices ({user.prices}) aws:us-east-1 p4d.24xlarge: spot price "
        f"{p4d['spot_price_usd_per_hour']:g} USD/h is not below on-demand "
        f"{p4d['price_usd_per_hour']:g} USD/h"]
    assert "1 problem(s) in the catalog." in err
