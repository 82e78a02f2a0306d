"""The catalog overlay: libcloud clouds declared in YAML, merged so placement scores them
with their own grid, PUE and prices, and refused with one clear paragraph per problem."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from greenplace.scheduler import estimate
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.catalog.check import check_catalog
from greenplace.scheduler.catalog.loader import load_embedded_catalog
from greenplace.scheduler.cli import main
from greenplace.scheduler.exceptions import CatalogError, SpecError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "catalog-overlay.yaml"

GOOD = """\
clouds:
  - name: lab-cloud
    source: "lab price list"
    as_of: "2026-10-01"
    regions:
      - name: sto-1
        location: Stockholm
        country: SE
        grid_zone: SE
        pue: 1.25
      - name: isl-1
        location: Reykjavik
        country: IS
        continent: europe
        latitude: 64.1
        longitude: -21.9
        grid_zone: IS
        grid_intensity_g_per_kwh: 28
        grid_cfe_pct: 99.9
        pue: 1.1
    sizes:
      - instance_type: gpu.a100.8
        accelerator: A100-80GB
        accelerator_count: 8
        vcpus: 96
        memory_gib: 1152
        price_usd_per_hour: 30.0
        spot_price_usd_per_hour: 12.0
      - instance_type: gpu.l4.1
        accelerator: nvidia-l4
        accelerator_count: 1
        vcpus: 8
        memory_gib: 32
        price_usd_per_hour: 0.8
        regions: [isl-1]
"""


@pytest.fixture
def overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "overlay.yaml"
    path.write_text(GOOD, encoding="utf-8")
    monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(path))
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_overlay_clouds_join_the_catalog_with_their_own_figures(overlay: Path) -> None:
    catalog = load_catalog()
    embedded = load_embedded_catalog()
    assert len(catalog.regions) == len(embedded.regions) + 2
    assert not any(r.cloud == "lab-cloud" for r in embedded.regions)
    sto = catalog.region("lab-cloud:sto-1")
    same_grid = catalog.region("aws:eu-north-1")  # zone SE too
    assert (sto.grid_intensity_avg_g_per_kwh, sto.grid_cfe_pct, sto.year,
            sto.intensity_basis) == (same_grid.grid_intensity_avg_g_per_kwh,
                                     same_grid.grid_cfe_pct, same_grid.year, "lifecycle")
    assert sto.pue == 1.25 and sto.continent == "europe" and sto.provider_cfe_pct is None
    assert sto.grid_intensity_marginal_g_per_kwh is None  # WattTime does not follow zones
    isl = catalog.region("lab-cloud:isl-1")
    assert (isl.grid_intensity_avg_g_per_kwh, isl.grid_cfe_pct) == (28, 99.9)
    assert "declared by the user" in isl.source and isl.year == 2026
    offers = {(o.region, o.instance_type): o for o in catalog.offers if o.cloud == "lab-cloud"}
    assert set(offers) == {("sto-1", "gpu.a100.8"), ("isl-1", "gpu.a100.8"),
                           ("isl-1", "gpu.l4.1")}
    assert offers["sto-1", "gpu.a100.8"].price_usd_per_hour == 30.0
    assert offers["sto-1", "gpu.a100.8"].spot_price_usd_per_hour == 12.0
    assert offers["isl-1", "gpu.l4.1"].accelerator == "L4"  # an alias, canonicalised
    assert check_catalog(catalog) == []


def test_without_the_variable_the_catalog_is_the_embedded_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENPLACE_CATALOG_OVERLAY", raising=False)
    assert load_catalog() is load_embedded_catalog()


def test_the_example_overlay_passes_the_catalog_check(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(EXAMPLE))
    code, out, _ = _run(capsys, "catalog", "check")
    assert code == 0 and out.startswith("OK: ") and "nordic-openstack" in out


@pytest.mark.parametrize(("old", "new", "line", "field", "what"), [
    ("accelerator: A100-80GB", "accelerator: A100-80G", 23, "clouds[0].sizes[0].accelerator",
     "unknown accelerator 'A100-80G' (did you mean A100-80GB"),
    ("grid_zone: SE\n", "grid_zone: SEE\n", 9, "clouds[0].regions[0].grid_zone",
     "unknown grid zone 'SEE' (did you mean SE"),
    ("name: isl-1", "name: sto-1", 11, "clouds[0].regions[1].name",
     "region 'sto-1' appears twice"),
    ("        price_usd_per_hour: 30.0\n", "", 22, "clouds[0].sizes[0].price_usd_per_hour",
     "missing"),
    ("name: lab-cloud", "name: aws", 2, "clouds[0].name", "'aws' is a cloud of the embedded"),
    ("pue: 1.25", "pue: 0.9", 10, "clouds[0].regions[0].pue", "0.9 is not a number"),
    ("pue: 1.25", "pue: 1.25\n        pu: 1.1", 11, "clouds[0].regions[0].pu",
     "unknown field (did you mean 'pue'?)"),
    ("        grid_cfe_pct: 99.9\n", "", 11, "clouds[0].regions[1].grid_cfe_pct",
     "missing beside a static grid intensity"),
    ("grid_zone: SE\n", "grid_zone: SE\n        grid_intensity_g_per_kwh: 5\n", 10,
     "clouds[0].regions[0].grid_intensity_g_per_kwh", "zone SE is in the catalog"),
])
def test_each_problem_is_one_paragraph_naming_file_line_and_field(
        overlay: Path, old: str, new: str, line: int, field: str, what: str) -> None:
    assert old in GOOD
    overlay.write_text(GOOD.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(CatalogError) as exc:
        load_catalog()
    problem = str(exc.value).splitlines()[0]  # the problem itself, then its consequences
    assert problem.startswith(f"catalog overlay {overlay} line {line}, {field}: ")
    assert what in problem and "To fix: " in problem


def test_every_problem_is_reported_at_once(overlay: Path) -> None:
    overlay.write_text(GOOD.replace("accelerator: A100-80GB", "accelerator: Z9")
                       .replace("grid_zone: SE\n", "grid_zone: XX\n"), encoding="utf-8")
    with pytest.raises(CatalogError) as exc:
        load_catalog()
    assert len(str(exc.value).splitlines()) == 2


def test_catalog_check_lists_overlay_problems_and_exits_1(
        overlay: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overlay.write_text(GOOD.replace("accelerator: A100-80GB", "accelerator: Z9"),
                       encoding="utf-8")
    code, out, _ = _run(capsys, "catalog", "check")
    assert code == 1 and "unknown accelerator 'Z9'" in out and str(overlay) in out


def test_missing_or_broken_overlay_files_say_so(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(tmp_path / "nope.yaml"))
    with pytest.raises(SpecError, match="does not exist"):
        load_catalog()
    broken = _write(tmp_path / "broken.yaml", "clouds: [\n")
    monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(broken))
    with pytest.raises(SpecError, match="broken YAML"):
        load_catalog()
    wrong = _write(tmp_path / "wrong.yaml", "regions: []\n")
    monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(wrong))
    with pytest.raises(CatalogError, match="one key, `clouds`"):
        load_catalog()


def test_an_edited_overlay_is_read_again(overlay: Path) -> None:
    assert load_catalog().region("lab-cloud:sto-1").pue == 1.25
    overlay.write_text(GOOD.replace("pue: 1.25", "pue: 1.3 "), encoding="utf-8")
    assert load_catalog().region("lab-cloud:sto-1").pue == 1.3


# -- the dry run places on the overlay cloud -------------------------------------------------

JOBS = """\
jobs:
  - name: a100-train
    run: python train.py
    resources:
      accelerators: {A100-80GB: 8}
    work: {hours: 2}
    policy: cheapest
"""


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_dry_run_places_a_job_on_the_overlay_cloud_with_its_own_figures(
        overlay: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # An overlay cloud's host draw is modelled with the mean of the three clouds'
    # coefficients; give it AWS's here so that only the site (PUE x grid) differs below.
    monkeypatch.setitem(estimate.HOST_W_PER_VCPU_IDLE_FULL, "lab-cloud",
                        estimate.HOST_W_PER_VCPU_IDLE_FULL["aws"])
    overlay.write_text(GOOD.replace("price_usd_per_hour: 30.0", "price_usd_per_hour: 9.0"),
                       encoding="utf-8")
    jobs = _write(tmp_path / "jobs.yaml", JOBS)
    code, out, err = _run(capsys, "dry-run", str(jobs), "--output", "json", "--explain")
    assert code == 0, err
    (row,) = json.loads(out)
    assert (row["cloud"], row["instance_type"]) == ("lab-cloud", "gpu.a100.8")
    assert row["cost_usd"] == pytest.approx(2 * 9.0)
    candidates: dict[tuple[str, str], dict[str, Any]] = {
        (c["cloud"], c["region"]): c for c in row["candidates"]}
    sto, aws = candidates["lab-cloud", "sto-1"], candidates["aws", "us-east-1"]
    assert aws["instance_type"] == "p4de.24xlarge"  # 8 x A100-80GB, 96 vCPUs, 1152 GiB too
    # same machine and runtime: the carbon differs by the site's PUE x grid intensity alone
    catalog = load_catalog()
    here, there = catalog.region("lab-cloud:sto-1"), catalog.region("aws:us-east-1")
    assert sto["co2e_kg"] == pytest.approx(
        aws["co2e_kg"] * (here.pue * here.grid_intensity_avg_g_per_kwh)
        / (there.pue * there.grid_intensity_avg_g_per_kwh), rel=1e-3)  # JSON rounds
    isl = candidates["lab-cloud", "isl-1"]
    assert isl["co2e_kg"] != sto["co2e_kg"]  # its own static grid figure
