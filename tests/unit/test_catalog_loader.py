"""The catalog loader's schema validation, and name look-ups on the embedded catalog."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from greenplace.scheduler.catalog import Accelerator, Offer, Region, load_catalog, load_catalog_from
from greenplace.scheduler.exceptions import CatalogError, UnknownNameError
from tests.conftest import ACCELERATORS, make_offer, make_region


def write_csv(path: Path, rows: list[object], row_type: type) -> None:
    fields = [f.name for f in dataclasses.fields(row_type)]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(fields)
        for row in rows:
            values = []
            for name in fields:
                value = getattr(row, name)
                if value is None:
                    value = ""
                elif isinstance(value, tuple):
                    value = "|".join(value)
                values.append(value)
            writer.writerow(values)


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    write_csv(tmp_path / "regions.csv", [make_region("gcp", "europe-north1", grid_cfe_pct=95.0,
                                                     provider_cfe_pct=90.0),
                                         make_region("aws", "us-east-1")], Region)
    write_csv(tmp_path / "accelerators.csv", list(ACCELERATORS), Accelerator)
    write_csv(tmp_path / "offers.csv", [make_offer("aws", "us-east-1", "p4d.24xlarge", "A100",
                                                   8, 21.96, None)], Offer)
    return tmp_path


def test_valid_files_round_trip(catalog_dir: Path) -> None:
    catalog = load_catalog_from(catalog_dir)
    assert [r.key for r in catalog.regions] == ["gcp:europe-north1", "aws:us-east-1"]
    assert catalog.regions[0].provider_cfe_pct == 90.0
    assert catalog.regions[1].provider_cfe_pct is None  # empty cell -> unknown, not 0
    assert catalog.offers[0].spot_price_usd_per_hour is None


def edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize(("file", "old", "new", "expected"), [
    ("regions.csv", "cloud,region", "provider,region", "header is"),
    ("regions.csv", "gcp,europe-north1", "ibm,europe-north1", "column 'cloud'"),
    ("regions.csv", ",95.0,90.0,", ",95.0,190.0,", "column 'provider_cfe_pct'"),
    ("regions.csv", ",95.0,90.0,", ",,90.0,", "column 'grid_cfe_pct'"),
    ("regions.csv", ",lifecycle,", ",direct,", "column 'intensity_basis'"),
    ("regions.csv", ",400.0,", ",lots,", "column 'grid_intensity_avg_g_per_kwh'"),
    ("regions.csv", ",1.1,fleet", ",0.9,fleet", "column 'pue'"),
    ("offers.csv", ",21.96,", ",-3,", "column 'price_usd_per_hour'"),
    ("offers.csv", ",test,", ",,", "column 'source'"),
    ("offers.csv", "us-east-1,p4d", "us-east-9,p4d", "unknown region"),
    ("offers.csv", ",A100,", ",B200,", "unknown accelerator"),
    ("accelerators.csv", "A100,A100-40GB", "A100,H100-80GB", "names both"),
])
def test_schema_errors_name_file_line_and_column(
    catalog_dir: Path, file: str, old: str, new: str, expected: str
) -> None:
    edit(catalog_dir / file, old, new)
    with pytest.raises(CatalogError) as info:
        load_catalog_from(catalog_dir)
    assert expected in str(info.value)
    assert file in str(info.value)


def test_duplicate_region_is_caught(catalog_dir: Path) -> None:
    path = catalog_dir / "regions.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(CatalogError, match="appears twice"):
        load_catalog_from(catalog_dir)


@pytest.mark.parametrize(("spelling", "canonical"), [
    ("TPU v3", "TPU-v3"), ("tpu-v3", "TPU-v3"), ("TPUv3", "TPU-v3"),
    ("A100-80GB", "A100-80GB"), ("A100 80GB", "A100-80GB"), ("a100_80gb", "A100-80GB"),
    ("h100", "H100"), ("TPU v5e", "TPU-v5e"),
])
def test_embedded_accelerator_aliases(spelling: str, canonical: str) -> None:
    assert load_catalog().accelerator(spelling).name == canonical


def test_embedded_lookups_suggest_close_names() -> None:
    catalog = load_catalog()
    with pytest.raises(UnknownNameError, match="Did you mean"):
        catalog.accelerator("H1OO")
    with pytest.raises(UnknownNameError, match="Did you mean 'gcp:europe-west4'"):
        catalog.region("gcp:europe-west44")
    assert catalog.region("gcp:europe-west4").country == "NL"


def test_embedded_catalog_is_loaded_once() -> None:
    assert load_catalog() is load_catalog()
