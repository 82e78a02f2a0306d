"""offer_problems on the shipped catalog and on copies with one invariant broken each."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from greenplace.scheduler.catalog import load_catalog, load_catalog_from
from greenplace.scheduler.catalog.offer_checks import offer_problems

DATA_DIR = Path(__file__).resolve().parents[2] / "scheduler" / "catalog" / "data"


def test_shipped_catalog_passes() -> None:
    assert offer_problems(load_catalog()) == []


def _copy_with(tmp_path: Path, row_start: str, edit: dict[int, str]) -> Path:
    """Copy the shipped CSVs, replacing columns (by index) in the offer row starting so."""
    for name in ("regions.csv", "accelerators.csv", "offers.csv"):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    path = tmp_path / "offers.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    (index,) = [i for i, line in enumerate(lines) if line.startswith(row_start)]
    cells = lines[index].split(",")
    for column, value in edit.items():
        cells[column] = value
    lines[index] = ",".join(cells)
    path.write_text("\n".join(lines), encoding="utf-8")
    return tmp_path


# offers.csv columns: 3 accelerator, 4 accelerator_count, 7 price, 8 spot, 9 price_note
@pytest.mark.parametrize(("row_start", "edit", "expected"), [
    ("gcp,us-central1,a3-highgpu-8g,", {8: "95.0"},
     "gcp:us-central1 a3-highgpu-8g: spot price 95 USD/h is not below on-demand 88.49"),
    ("gcp,us-central1,a3-highgpu-8g,", {7: "43.06617"},
     "gcp:us-central1 a3-highgpu-8g: 5.38 USD per H100-hour is 0.44x the median"),
    ("aws,us-east-1,p4d.24xlarge,", {4: "9"},
     "aws:us-east-1 p4d.24xlarge: carries 9 x A100, the instance type has 8 x A100"),
    ("azure,eastus,Standard_NC24ads_A100_v4,", {3: "A100-80GB"},
     "azure:eastus Standard_NC24ads_A100_v4: carries 1 x A100-80GB, the instance type has "
     "1 x A100-80GB-PCIe"),
])
def test_each_broken_invariant_is_reported_naming_the_row(
    tmp_path: Path, row_start: str, edit: dict[int, str], expected: str
) -> None:
    problems = offer_problems(load_catalog_from(_copy_with(tmp_path, row_start, edit)))
    assert len(problems) == 1, problems
    assert problems[0].startswith(expected)


def test_a_price_note_exempts_a_row_from_the_price_band(tmp_path: Path) -> None:
    directory = _copy_with(tmp_path, "gcp,us-central1,a3-highgpu-8g,",
                           {7: "43.06617", 8: "20.0", 9: "committed-use price"})
    assert offer_problems(load_catalog_from(directory)) == []
