"""`greenplace catalog refresh / show / diff`, the refreshed prices every command then places
with, each decision's price ``as_of`` and the stale-price note, and the settings behind them.

The per-cloud fetchers are stood in for by ``price_fetcher_fake``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.catalog.loader import load_declared_catalog
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest
from greenplace.scheduler.catalog.refresh.store import FileLocation, Section, read
from greenplace.scheduler.cli import main
from greenplace.scheduler.exceptions import ConfigError, TransientError
from greenplace.scheduler.settings import load_settings
from tests.unit import price_fetcher_fake as fake

EXAMPLES = str(Path(__file__).resolve().parents[2] / "examples" / "jobs.yaml")
TODAY = dt.datetime.now(dt.UTC).date().isoformat()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def echo_embedded(factor: float, *, source: str = "fake price API") -> fake.Answer:
    """An API that sells what the embedded catalog lists in the asked regions, at
    ``factor`` times its prices, priced today."""
    def answer(request: RefreshRequest) -> CloudPrices:
        offers = tuple(
            dataclasses.replace(
                o, as_of=request.now.date().isoformat(), source=source, price_note="",
                price_usd_per_hour=None if o.price_usd_per_hour is None
                else round(o.price_usd_per_hour * factor, 4),
                spot_price_usd_per_hour=None if o.spot_price_usd_per_hour is None
                else round(o.spot_price_usd_per_hour * factor, 4))
            for o in request.catalog.offers
            if o.cloud == request.cloud and o.region in request.regions and o.price_note == "")
        return CloudPrices(cloud=request.cloud, source=source, fetched_at=request.now,
                           regions=request.regions, offers=offers)
    return answer


@pytest.fixture
def prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake fetchers with credentials for aws and gcp; prices written to a temp file."""
    fake.use_fake_fetchers(monkeypatch)
    fake.CREDENTIALS.update(("aws", "gcp", "azure"))
    monkeypatch.setenv("FAKE_AWS_CREDENTIALS", "1")
    monkeypatch.setenv("FAKE_GCP_CREDENTIALS", "1")
    path = tmp_path / "prices.json"
    monkeypatch.setenv("GREENPLACE_CATALOG_PRICES", str(path))
    return path


# --- refresh -----------------------------------------------------------------------------
def test_refresh_updates_the_asked_regions_and_exits_0(
        capsys: pytest.CaptureFixture[str], prices: Path) -> None:
    fake.ANSWERS["aws"] = echo_embedded(0.9)
    code, out, err = run(capsys, "catalog", "refresh", "--cloud", "aws", "--region",
                         "us-east-1", "--region", "aws:eu-north-1")
    assert code == 0, out + err
    assert "aws: fetching prices of 2 region(s)..." in err and "aws: updated" in err
    assert "updated" in out and f"Written to {prices}." in out
    assert fake.CALLS[0].regions == ("us-east-1", "eu-north-1")
    section = read(FileLocation(prices)).sections["aws"]
    assert section.prices is not None and section.prices.regions == ("eu-north-1", "us-east-1")
    east = [o for o in load_catalog().offers if (o.cloud, o.region) == ("aws", "us-east-1")]
    assert east and all(o.as_of == TODAY and o.source == "fake price API" for o in east)


def test_refresh_json_reports_every_cloud(capsys: pytest.CaptureFixture[str],
                                         prices: Path) -> None:
    fake.ANSWERS["aws"] = echo_embedded(1.1)
    code, out, _ = run(capsys, "catalog", "refresh", "--region", "us-east-1", "-o", "json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] and data["written"] and data["where"] == str(prices)
    (aws,) = data["clouds"]
    assert aws["cloud"] == "aws" and aws["status"] == "updated" and aws["repriced"] > 0
    assert aws["offers"] == aws["repriced"] + aws["new"]


def test_refresh_with_a_failing_cloud_exits_1_and_keeps_its_figures(
        capsys: pytest.CaptureFixture[str], prices: Path) -> None:
    fake.ANSWERS["aws"] = echo_embedded(0.9)
    fake.ANSWERS["gcp"] = TransientError(
        "cloudbilling services.skus.list failed on page 7 after 5 tries (503). To fix: run "
        "the refresh again later.", provider="gcp", operation="skus.list")
    code, out, err = run(capsys, "catalog", "refresh", "--region", "aws:us-east-1",
                         "--region", "gcp:us-central1")
    assert code == 1
    assert "gcp: failed" in err
    assert ("gcp: the refresh failed and its previous figures are kept (the embedded "
            "catalog's, as_of 2025-08-01): gcp skus.list: cloudbilling services.skus.list failed "
            "on page 7") \
        in out
    document = read(FileLocation(prices))
    assert document.sections["aws"].prices is not None
    assert document.sections["gcp"].prices is None
    assert document.sections["gcp"].last_failure is not None
    central = [o for o in load_catalog().offers if (o.cloud, o.region) == ("gcp", "us-central1")]
    assert central == [o for o in load_declared_catalog().offers
                       if (o.cloud, o.region) == ("gcp", "us-central1")]


def test_refresh_without_credentials_says_which_and_writes_nothing(
        capsys: pytest.CaptureFixture[str], prices: Path) -> None:
    code, out, _ = run(capsys, "catalog", "refresh", "--cloud", "azure")
    assert code == 1
    assert "azure: no credentials found, so nothing was fetched or written for it" in out
    assert "To fix: sign in for the Azure SDK (`az login`" in out
    assert "Nothing written" in out and not prices.exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--region", "us-east-9"], "Did you mean"),
    (["--cloud", "gcp", "--region", "aws:us-east-1"], "Unknown region 'aws:us-east-1'"),
    (["--cloud", "aws", "--cloud", "gcp", "--region", "us-east-1"],
     "--cloud gcp is given but no --region of it"),
])
def test_refresh_with_bad_regions_is_bad_input(capsys: pytest.CaptureFixture[str],
                                               prices: Path, args: list[str],
                                               expected: str) -> None:
    code, _, err = run(capsys, "catalog", "refresh", *args)
    assert code == 2
    assert expected in err and "To fix:" in err and "Traceback" not in err
    assert not fake.CALLS and not prices.exists()


def test_a_broken_prices_file_is_one_paragraph(capsys: pytest.CaptureFixture[str],
                                               prices: Path) -> None:
    prices.write_text("{")
    code, _, err = run(capsys, "catalog", "show")
    assert code == 1
    assert f"The refreshed catalog prices at {prices} are unreadable" in err
    assert f"To fix: delete {prices};" in err and "Traceback" not in err
    code, _, err = run(capsys, "catalog", "refresh", "--region", "aws:us-east-1")
    assert code == 1 and f"To fix: delete {prices};" in err and not fake.CALLS


# --- show --------------------------------------------------------------------------------
def test_show_before_any_refresh_names_the_embedded_catalog(
        capsys: pytest.CaptureFixture[str], prices: Path) -> None:
    code, out, _ = run(capsys, "catalog", "show", "-o", "json")
    assert code == 0
    rows = {r["cloud"]: r for r in json.loads(out)}
    assert set(rows) == {"aws", "gcp", "azure"}
    assert all(r["source"] == "embedded catalog, as_of 2025-08-01" for r in rows.values())
    assert rows["aws"]["offers"] == sum(1 for o in load_declared_catalog().offers
                                        if o.cloud == "aws")
    code, out, _ = run(capsys, "catalog", "show")
    assert "embedded catalog, as_of 2025-08-01" in out and str(prices) in out


def test_show_after_a_refresh_gives_source_age_counts_and_the_last_failure(
        capsys: pytest.CaptureFixture[str], prices: Path) -> None:
    fake.ANSWERS["aws"] = echo_embedded(0.9, source="fake AWS Price List API")
    fake.ANSWERS["gcp"] = TransientError("throttled. To fix: later.", provider="gcp",
                                         operation="skus.list")
    run(capsys, "catalog", "refresh", "--region", "aws:us-east-1", "--region",
        "aws:us-west-2", "--region", "gcp:us-central1")
    code, out, _ = run(capsys, "catalog", "show", "-o", "json")
    rows = {r["cloud"]: r for r in json.loads(out)}
    aws = rows["aws"]
    assert aws["source"] == "fake AWS Price List API" and aws["regions"] == 2
    assert aws["offers"] == len(read(FileLocation(prices)).sections["aws"].prices.offers)  # type: ignore[union-attr]
    assert 0 <= aws["age_s"] < 600 and aws["last_failure"] is None
    assert rows["gcp"]["source"] == "embedded catalog, as_of 2025-08-01"
    assert rows["gcp"]["last_failure"]["outcome"] == "failed"
    code, out, _ = run(capsys, "catalog", "show")
    assert "fake AWS Price List API" in out and "gcp: last refresh failed at" in out


def test_show_csv_has_one_row_per_cloud(capsys: pytest.CaptureFixture[str],
                                        prices: Path) -> None:
    code, out, _ = run(capsys, "catalog", "show", "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["cloud"] for r in rows] == ["aws", "gcp", "azure"]


# --- diff --------------------------------------------------------------------------------
def test_diff_lists_what_the_refresh_changed(capsys: pytest.CaptureFixture[str],
                                            prices: Path) -> None:
    code, out, _ = run(capsys, "catalog", "diff")
    assert code == 0 and "No change" in out
    embedded = [o for o in load_declared_catalog().offers
                if (o.cloud, o.region) == ("aws", "us-east-1")]
    kept = [o for o in embedded if o.price_usd_per_hour is not None][1:]
    fake.ANSWERS["aws"] = lambda r: CloudPrices(
        cloud="aws", source="fake", fetched_at=r.now, regions=r.regions,
        offers=(*(dataclasses.replace(o, price_usd_per_hour=round(o.price_usd_per_hour * 1.2, 4),  # type: ignore[operator]
                                      spot_price_usd_per_hour=None, as_of=TODAY) for o in kept),
                fake.offer("aws", "us-east-1", "g6.2xlarge", "L4", 1, 0.98, 0.3, as_of=TODAY)))
    assert run(capsys, "catalog", "refresh", "--region", "aws:us-east-1")[0] == 0
    code, out, _ = run(capsys, "catalog", "diff", "-o", "json")
    rows = json.loads(out)
    by_kind: dict[str, set[str]] = {}
    for row in rows:
        by_kind.setdefault(row["change"], set()).add(row["instance_type"])
    assert by_kind["new"] == {"g6.2xlarge"}
    assert by_kind["retired"] == {embedded_o.instance_type for embedded_o in embedded} - {
        o.instance_type for o in kept}
    assert by_kind["repriced"] == {o.instance_type for o in kept}
    repriced = next(r for r in rows if r["change"] == "repriced")
    assert repriced["price_change_pct"] == pytest.approx(20.0, abs=0.01)
    code, out, _ = run(capsys, "catalog", "diff")
    assert f"aws: 1 new, {len(by_kind['retired'])} retired, {len(kept)} repriced." in out
    assert "(+20.0 %)" in out
    code, out, _ = run(capsys, "catalog", "diff", "--change", "new", "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["instance_type"] for r in rows] == ["g6.2xlarge"]
    assert rows[0]["price_usd_per_hour_after"] == "0.98"


# --- decisions ---------------------------------------------------------------------------
def test_every_decision_carries_its_price_as_of_and_a_stale_price_note(
        capsys: pytest.CaptureFixture[str], prices: Path) -> None:
    code, out, _ = run(capsys, "dry-run", EXAMPLES, "--explain", "-o", "json")
    assert code == 0
    rows = json.loads(out)
    for row in rows:
        assert row["price_as_of"] in ("2025-08-01", "2025-07-31")
        assert row["price_age_days"] == (dt.date.today() - dt.date.fromisoformat(
            row["price_as_of"])).days
        assert row["price_source"]
        assert all(c["price_as_of"] for c in row["candidates"])
        stale = [n for n in row["notes"] if "GREENPLACE_PRICE_MAX_AGE_DAYS=30" in n]
        assert len(stale) == 1
        assert f"days old (as_of {row['price_as_of']}" in stale[0]
        assert f"Run `greenplace catalog refresh --cloud {row['cloud']}`" in stale[0]


def test_the_dry_run_table_says_stale_prices_once(capsys: pytest.CaptureFixture[str],
                                                  prices: Path) -> None:
    code, out, _ = run(capsys, "dry-run", EXAMPLES)
    out = " ".join(out.split())  # the console wraps long lines
    assert code == 0
    assert out.count("Run `greenplace catalog refresh`") == 1
    assert "note: 7 of 7 placed job(s) chose an offer priced from figures older than " \
           "GREENPLACE_PRICE_MAX_AGE_DAYS" in " ".join(out.split())
    assert "Some jobs have notes" not in out  # the stale prices are the only note
    code, out, _ = run(capsys, "dry-run", EXAMPLES, "--explain")
    assert " ".join(out.split()).count("catalog refresh") == 1
    assert "(priced 2025-08-01)" in out  # each candidate line dates its price


def test_no_stale_note_with_refreshed_prices_or_the_check_off(
        capsys: pytest.CaptureFixture[str], prices: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = json.loads(run(capsys, "dry-run", EXAMPLES, "-o", "json")[1])
    chosen = {(r["cloud"], r["region"]) for r in rows}
    fake.ANSWERS["aws"] = echo_embedded(1.0, source="fake AWS Price List API")
    fake.ANSWERS["gcp"] = echo_embedded(1.0, source="fake Cloud Billing Catalog")
    args = [a for cloud, region in sorted(chosen) for a in ("--region", f"{cloud}:{region}")]
    assert run(capsys, "catalog", "refresh", *args)[0] == 0, chosen
    rows = json.loads(run(capsys, "dry-run", EXAMPLES, "-o", "json")[1])
    for row in rows:
        assert row["price_as_of"] == TODAY and row["price_age_days"] == 0
        assert row["price_source"].startswith("fake ")
        assert not any("catalog refresh" in n for n in row["notes"])
    monkeypatch.setenv("GREENPLACE_PRICE_MAX_AGE_DAYS", "0")
    prices.unlink()
    rows = json.loads(run(capsys, "dry-run", EXAMPLES, "-o", "json")[1])
    assert not any("catalog refresh" in n for r in rows for n in r["notes"])


def test_load_catalog_is_cached_until_the_prices_change(prices: Path) -> None:
    first = load_catalog()
    assert first is load_catalog() is load_declared_catalog()  # nothing refreshed yet
    fake.ANSWERS["aws"] = echo_embedded(0.9)
    from greenplace.scheduler.catalog.refresh.run import run_refresh

    run_refresh({"aws": ["us-east-1"]}, location=FileLocation(prices),
                catalog=load_declared_catalog(), environ={"FAKE_AWS_CREDENTIALS": "1"},
                now=dt.datetime.now(dt.UTC))
    second = load_catalog()
    assert second is not first and second is load_catalog()


# --- settings ----------------------------------------------------------------------------
def test_the_price_settings_default_and_validate() -> None:
    s = load_settings({})
    assert (s.price_max_age_days, s.catalog_refresh_interval_s) == (30.0, 86400.0)
    s = load_settings({"GREENPLACE_PRICE_MAX_AGE_DAYS": "7.5",
                       "GREENPLACE_CATALOG_REFRESH_INTERVAL_S": "0"})
    assert (s.price_max_age_days, s.catalog_refresh_interval_s) == (7.5, 0.0)
    with pytest.raises(ConfigError) as info:
        load_settings({"GREENPLACE_PRICE_MAX_AGE_DAYS": "a month",
                       "GREENPLACE_CATALOG_REFRESH_INTERVAL_S": "60"})
    message = str(info.value)
    assert "GREENPLACE_PRICE_MAX_AGE_DAYS='a month' is not a number of days" in message
    assert "GREENPLACE_CATALOG_REFRESH_INTERVAL_S (60) must be 0 (off) or at least 3600" in \
        message
    assert "To fix:" in message
    with pytest.raises(ConfigError, match="GREENPLACE_PRICE_MAX_AGE_DAYS='-1' must be at "
                       "least 0"):
        load_settings({"GREENPLACE_PRICE_MAX_AGE_DAYS": "-1"})


def test_a_bad_price_age_setting_stops_the_dry_run(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENPLACE_PRICE_MAX_AGE_DAYS", "soon")
    code, out, err = run(capsys, "dry-run", EXAMPLES)
    assert code == 2 and not out
    assert "GREENPLACE_PRICE_MAX_AGE_DAYS='soon'" in err and "Traceback" not in err


SHOW_THEN_LIST_SDKS = """
import json, sys
from greenplace.scheduler.cli import main
for args in (["catalog", "show", "-o", "json"], ["catalog", "diff", "-o", "json"],
             ["dry-run", {jobs!r}, "-o", "json"]):
    try:
        main(args)
    except SystemExit as exc:
        assert exc.code == 0, (args, exc.code)
sdks = ("boto3", "botocore", "google.cloud", "google.auth", "azure", "libcloud")
print(json.dumps(sorted(m for m in sys.modules if any(m == s or m.startswith(s + ".")
                                                      for s in sdks))))
"""


def test_show_diff_and_the_dry_run_load_no_cloud_sdk(tmp_path: Path) -> None:
    """Only `catalog refresh` loads a cloud's fetcher (and its SDK); reading the refreshed
    prices never does."""
    location = FileLocation(tmp_path / "prices.json")
    request = RefreshRequest(cloud="aws", regions=("us-east-1",), catalog=load_declared_catalog(),
                             environ={}, now=dt.datetime.now(dt.UTC))
    location.update(lambda d: d.with_section(Section(
        cloud="aws", prices=echo_embedded(0.9)(request),  # type: ignore[operator]
        priced_at={"us-east-1": request.now})))
    env = {**os.environ, "GREENPLACE_CATALOG_PRICES": str(location.path)}
    out = subprocess.run([sys.executable, "-c", SHOW_THEN_LIST_SDKS.format(jobs=EXAMPLES)],
                         capture_output=True, text=True, timeout=120, env=env, check=True)
    assert '"source": "fake price API"' in out.stdout  # the refreshed prices were read
    assert json.loads(out.stdout.splitlines()[-1]) == []
