"""`greenplace catalog check` and the pure check behind it, on the shipped catalog and on
copies of it with one invariant broken (the copy is loaded with --catalog-dir)."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import pytest

from greenplace.scheduler.catalog import Catalog, load_catalog
from greenplace.scheduler.catalog.check import check_catalog
from greenplace.scheduler.cli import main

DATA_DIR = Path(__file__).resolve().parents[2] / "scheduler" / "catalog" / "data"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["catalog", "check", *args])
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def catalog_copy(tmp_path: Path, key: str, **changes: str) -> Path:
    """The shipped CSVs in ``tmp_path``, with the region row ``key`` changed."""
    for name in ("regions.csv", "accelerators.csv", "offers.csv"):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    path = tmp_path / "regions.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    (row,) = [r for r in rows if f"{r['cloud']}:{r['region']}" == key]
    row.update(changes)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def test_the_shipped_catalog_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_catalog(load_catalog()) == []
    code, out, _ = run(capsys)
    assert code == 0
    assert out.startswith("OK: ") and "lifecycle" in out and len(out.splitlines()) == 1
    assert out.endswith(" offers (0 from a refresh).\n")  # no refreshed prices here


@pytest.mark.parametrize(("key", "changes", "expected"), [
    # Same Electricity Maps zone, another grid intensity (CCF's old 2021 country factor).
    ("azure:canadaeast", {"grid_intensity_avg_g_per_kwh": "120.0"},
     "120 g/kWh (lifecycle), grid CFE 97 %, year 2025 in Electricity Maps zone CA-QC, but"),
    # Same zone, another grid CFE.
    ("aws:eu-north-1", {"grid_cfe_pct": "80.0"}, "grid CFE 80 %"),
    # Same zone, figures of another year.
    ("azure:francecentral", {"year": "2021", "as_of": "2021-12-31"}, "year 2021"),
    ("azure:westus2", {"em_zone": ""}, "no Electricity Maps zone"),
    ("aws:us-east-1", {"source": "GSF Cloud_Region_Metadata 2024"}, "does not name the origin"),
    ("aws:ca-central-1", {"provider_cfe_pct": "99.0"}, "aws publishes no hourly-matched CFE"),
    ("gcp:europe-west4", {"as_of": "2024-12-31"}, "year 2025 and as_of 2024-12-31 disagree"),
])
def test_each_broken_invariant_fails_naming_the_row(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, key: str, changes: dict[str, str],
        expected: str) -> None:
    code, out, err = run(capsys, "--catalog-dir", str(catalog_copy(tmp_path, key, **changes)))
    assert code == 1
    lines = out.splitlines()
    assert any(expected in line for line in lines), out
    # Only the broken row is blamed, not the other regions of its zone.
    assert lines and all(line.startswith(f"regions.csv {key}: ") for line in lines), out
    assert all("To fix:" in line for line in lines) and "problem(s)" in err


def test_another_emission_basis_is_reported() -> None:
    # The loader refuses it in a file; the check refuses it in a catalog built in code too.
    shipped = load_catalog()
    regions = [dataclasses.replace(r, intensity_basis="direct") if r.key == "gcp:us-central1"
               else r for r in shipped.regions]
    problems = check_catalog(Catalog.build(regions, shipped.accelerators, shipped.offers))
    assert problems and all(p.startswith("regions.csv gcp:us-central1:") for p in problems)
    assert any("intensity basis 'direct'" in p for p in problems)


def test_a_broken_offer_fails_the_check_naming_the_row(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = catalog_copy(tmp_path, "aws:us-east-1")  # regions unchanged
    path = directory / "offers.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    row = next(r for r in rows if r["spot_price_usd_per_hour"] and r["price_usd_per_hour"])
    row["spot_price_usd_per_hour"] = str(float(row["price_usd_per_hour"]) * 1.1)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    code, out, _ = run(capsys, "--catalog-dir", str(directory))
    assert code == 1
    label = f"offers.csv {row['cloud']}:{row['region']} {row['instance_type']}"
    assert [line for line in out.splitlines() if line.startswith(label)], out
