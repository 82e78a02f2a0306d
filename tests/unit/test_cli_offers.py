"""`greenplace offers` in each output mode, with its filters and its errors."""

from __future__ import annotations

import csv
import io
import json

import pytest

from greenplace.scheduler.commands.offers import offer_rows
from tests.unit.test_cli_placement import run

COLUMNS = ["cloud", "region", "instance_type", "accelerator", "form_factor", "accelerator_count",
           "tdp_w", "vcpus", "memory_gib", "price_usd_per_hour", "spot_price_usd_per_hour",
           "price_note", "source", "as_of"]


def test_json_lists_every_field_of_the_filtered_offers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "offers", "--cloud", "azure", "--accelerator", "A100-80GB-PCIe",
                       "--output", "json")
    rows = json.loads(out)
    assert code == 0 and rows
    assert all(list(r) == COLUMNS for r in rows)
    assert {(r["cloud"], r["form_factor"], r["tdp_w"]) for r in rows} == {("azure", "PCIe", 300.0)}


def test_csv_has_the_header_and_one_line_per_offer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "offers", "--region", "gcp:us-central1", "-o", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and list(rows[0]) == COLUMNS
    assert len(rows) == len(offer_rows_for("gcp:us-central1"))
    a3 = next(r for r in rows if r["instance_type"] == "a3-highgpu-8g")
    assert (a3["price_usd_per_hour"], a3["spot_price_usd_per_hour"]) == ("88.49", "20.36961")


def offer_rows_for(region: str) -> list[dict[str, object]]:
    from greenplace.scheduler.catalog import load_catalog

    return offer_rows(load_catalog(), region=region)


def test_table_shows_offers_with_form_factor_and_prices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "offers", "--region", "us-central1", "--accelerator", "H100")
    assert code == 0
    assert "gcp:us-central1 a3-highgpu-8g" in out and "SXM" in out and "88.49" in out
    assert "2 offers" in out


@pytest.mark.parametrize("args", [("--accelerator", "B300"), ("--region", "gcp:mars-1"),
                                  ("--region", "mars-1")])
def test_unknown_names_exit_2_with_a_fix(capsys: pytest.CaptureFixture[str],
                                         args: tuple[str, str]) -> None:
    code, _, err = run(capsys, "offers", *args)
    assert code == 2 and "To fix:" in err
