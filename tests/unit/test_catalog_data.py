"""Checks on the shipped catalog CSVs, read directly with the csv module (no loader).

These guard the figures themselves: exact headers, coverage, the upstream errors the build
script corrects, and the GCP GPU + VM price summing. The last test rebuilds the files from
``../shared/data`` (when present) and requires a byte-for-byte match with what ships.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from greenplace.scheduler.catalog.model import Accelerator, Offer, Region, normalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "scheduler" / "catalog" / "data"
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_catalog.py"
FILES = ("regions.csv", "accelerators.csv", "offers.csv")

REGION_HEADER = [
    "cloud", "region", "location", "country", "continent", "latitude", "longitude", "em_zone",
    "watttime_region", "grid_intensity_avg_g_per_kwh", "intensity_basis", "grid_cfe_pct",
    "provider_cfe_pct", "grid_intensity_marginal_g_per_kwh", "pue", "pue_basis", "year",
    "source", "as_of",
]
ACCELERATOR_HEADER = [
    "name", "aliases", "vendor", "form_factor", "tdp_w", "peak_dense_tflops", "memory_gib",
    "source", "as_of",
]
OFFER_HEADER = [
    "cloud", "region", "instance_type", "accelerator", "accelerator_count", "vcpus",
    "memory_gib", "price_usd_per_hour", "spot_price_usd_per_hour", "price_note", "source",
    "as_of",
]


def read(name: str) -> tuple[list[str], list[dict[str, str]]]:
    with (DATA_DIR / name).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def regions() -> list[dict[str, str]]:
    return read("regions.csv")[1]


def accelerators() -> list[dict[str, str]]:
    return read("accelerators.csv")[1]


def offers() -> list[dict[str, str]]:
    return read("offers.csv")[1]


def offer(cloud: str, region: str, instance_type: str) -> dict[str, str]:
    matches = [o for o in offers()
               if (o["cloud"], o["region"], o["instance_type"]) == (cloud, region, instance_type)]
    assert len(matches) == 1, (cloud, region, instance_type, matches)
    return matches[0]


# --- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected", "row_type"),
    [
        ("regions.csv", REGION_HEADER, Region),
        ("accelerators.csv", ACCELERATOR_HEADER, Accelerator),
        ("offers.csv", OFFER_HEADER, Offer),
    ],
)
def test_headers_are_exact_and_match_the_row_types(
    name: str, expected: list[str], row_type: type
) -> None:
    header, rows = read(name)
    assert header == expected
    assert header == [f.name for f in dataclasses.fields(row_type)]
    assert rows, f"{name} is empty"


def test_files_use_plain_newlines_and_end_with_one() -> None:
    for name in FILES:
        raw = (DATA_DIR / name).read_bytes()
        assert b"\r" not in raw, name
        assert raw.endswith(b"\n") and not raw.endswith(b"\n\n"), name


# --- provenance -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_every_row_has_source_and_iso_as_of(name: str) -> None:
    for row in read(name)[1]:
        assert row["source"].strip(), row
        assert dt.date.fromisoformat(row["as_of"]).isoformat() == row["as_of"], row


# --- regions --------------------------------------------------------------------------------


def test_at_least_90_regions_over_three_clouds() -> None:
    rows = regions()
    assert len(rows) >= 90
    assert {r["cloud"] for r in rows} == {"aws", "gcp", "azure"}
    keys = [(r["cloud"], r["region"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert keys == sorted(keys)


def test_region_values_are_in_range() -> None:
    continents = {"europe", "north-america", "south-america", "asia", "oceania", "africa",
                  "middle-east"}
    for r in regions():
        assert len(r["country"]) == 2 and r["country"].isupper(), r
        assert r["continent"] in continents, r
        assert -90 <= float(r["latitude"]) <= 90 and -180 <= float(r["longitude"]) <= 180, r
        assert float(r["grid_intensity_avg_g_per_kwh"]) > 0, r
        if r["grid_intensity_marginal_g_per_kwh"]:
            assert float(r["grid_intensity_marginal_g_per_kwh"]) > 0, r
        assert 1.0 <= float(r["pue"]) < 2.0, r
        assert r["pue_basis"] in ("region", "fleet"), r
        assert 2019 <= int(r["year"]) <= 2030, r
        assert r["as_of"] == f"{r['year']}-12-31", r


def region(cloud: str, name: str) -> dict[str, str]:
    (row,) = [r for r in regions() if (r["cloud"], r["region"]) == (cloud, name)]
    return row


def test_grid_cfe_everywhere_provider_cfe_only_where_published() -> None:
    for r in regions():
        assert 0 <= float(r["grid_cfe_pct"]) <= 100, r
        # AWS and Azure publish no hourly-matched CFE per region: empty, never "0".
        assert r["provider_cfe_pct"] == "" or r["cloud"] == "gcp", r
    # Google's hourly-matched CFE counts its contracts; the grid's carbon-free % does not.
    us_central1 = region("gcp", "us-central1")
    assert float(us_central1["provider_cfe_pct"]) > 80 > 50 > float(us_central1["grid_cfe_pct"])


def test_every_region_is_on_one_basis_from_one_complete_year() -> None:
    rows = regions()
    assert {r["intensity_basis"] for r in rows} == {"lifecycle"}
    (year,) = {int(r["year"]) for r in rows}
    assert year < dt.date.today().year  # a complete year, never the year in progress
    for r in rows:
        assert r["source"].startswith(f"Electricity Maps yearly {year} (zone {r['em_zone']},"), r


def test_same_zone_same_grid_figures_whatever_the_cloud() -> None:
    quebec = [region("gcp", "northamerica-northeast1"), region("aws", "ca-central-1"),
              region("azure", "canadaeast")]
    assert {r["em_zone"] for r in quebec} == {"CA-QC"}
    assert {(r["grid_intensity_avg_g_per_kwh"], r["grid_cfe_pct"]) for r in quebec} == {
        ("41.0", "97.0")}
    # Azure's three western regions sit on three different grids.
    west = [region("azure", name) for name in ("westus2", "westus3", "westcentralus")]
    assert len({r["grid_intensity_avg_g_per_kwh"] for r in west}) == 3


def test_grid_figures_are_the_electricity_maps_figures_of_the_zone() -> None:
    path = SHARED_DATA / "regions/electricitymaps_yearly/electricitymaps_yearly_2021_2025.csv"
    if not path.is_file():
        pytest.skip(f"reference data not present at {SHARED_DATA}")
    with path.open(newline="", encoding="utf-8") as handle:
        em = {(row["zone"], row["year"]): row for row in csv.DictReader(handle)}
    for r in regions():
        figures = em[(r["em_zone"], r["year"])]
        assert float(r["grid_intensity_avg_g_per_kwh"]) == float(
            figures["carbon_intensity_g_per_kwh"]), r
        assert float(r["grid_cfe_pct"]) == float(figures["carbon_free_pct"]), r


def test_azure_northeurope_is_ireland_and_listed_once() -> None:
    rows = [r for r in regions() if (r["cloud"], r["region"]) == ("azure", "northeurope")]
    assert len(rows) == 1
    assert rows[0]["country"] == "IE"
    assert rows[0]["em_zone"] == "IE"
    assert rows[0]["continent"] == "europe"


def test_azure_westus_is_california() -> None:
    (row,) = [r for r in regions() if (r["cloud"], r["region"]) == ("azure", "westus")]
    assert row["em_zone"] == "US-CAL-CISO"
    assert row["watttime_region"] == "CAISO_NORTH"
    assert 32 < float(row["latitude"]) < 42  # California, not Washington state
    # The BPA (hydro) figure GSF attached to westus must be gone.
    bpa = next(r for r in regions() if (r["cloud"], r["region"]) == ("aws", "us-west-2"))
    assert row["grid_intensity_avg_g_per_kwh"] != bpa["grid_intensity_avg_g_per_kwh"]


def test_region_names_are_provider_ids() -> None:
    ids = {(r["cloud"], r["region"]) for r in regions()}
    for expected in [("aws", "us-east-1"), ("gcp", "europe-west4"), ("azure", "westeurope")]:
        assert expected in ids
    # Provider geographies and CCF's staging rings are not regions.
    for not_a_region in [("azure", "asiapacific"), ("azure", "unitedstates"), ("gcp", "us"),
                         ("azure", "eastus2euap")]:
        assert not_a_region not in ids


# --- accelerators -----------------------------------------------------------------------------


def test_accelerators_cover_the_hardware_table_and_extras() -> None:
    names = {a["name"] for a in accelerators()}
    assert {
        "V100", "A100", "A100-80GB", "H100", "H200", "L4", "T4", "A10G", "L40S", "P100",
        "TPU-v2", "TPU-v3", "TPU-v4", "TPU-v5e", "TPU-v5p", "Trainium", "Trainium2",
        "Inferentia2",
    } <= names


def test_accelerator_names_and_aliases_are_unambiguous() -> None:
    owner: dict[str, str] = {}
    for a in accelerators():
        for spelling in [a["name"], *filter(None, a["aliases"].split("|"))]:
            folded = normalize_name(spelling)
            assert owner.get(folded, a["name"]) == a["name"], spelling
            owner[folded] = a["name"]
        assert float(a["tdp_w"]) > 0 and float(a["peak_dense_tflops"]) > 0, a
        assert float(a["memory_gib"]) > 0, a


def test_accelerator_figures_per_chip() -> None:
    by_name = {a["name"]: a for a in accelerators()}
    # V100 has no BF16: dense FP16 tensor peak (125 TF), not a number read from "no BF16".
    assert float(by_name["V100"]["peak_dense_tflops"]) == 125.0
    assert float(by_name["T4"]["peak_dense_tflops"]) == 65.0
    assert float(by_name["TPU-v3"]["tdp_w"]) == 450.0
    assert float(by_name["TPU-v3"]["peak_dense_tflops"]) == 123.0
    assert float(by_name["TPU-v3"]["memory_gib"]) == 32.0
    assert float(by_name["P100"]["tdp_w"]) == 300.0
    # Unpublished power figures are labelled as estimates.
    for name in ("TPU-v5e", "TPU-v5p", "Trainium", "Trainium2", "Inferentia2"):
        assert "ESTIMATE" in by_name[name]["source"], name


def test_price_file_spellings_resolve_through_aliases() -> None:
    lookup: dict[str, str] = {}
    for a in accelerators():
        for spelling in [a["name"], *filter(None, a["aliases"].split("|"))]:
            lookup[normalize_name(spelling)] = a["name"]
    assert lookup[normalize_name("A100 80GB")] == "A100-80GB"
    assert lookup[normalize_name("tpu-v5-lite-podslice")] == "TPU-v5e"
    assert lookup[normalize_name("trn1")] == "Trainium"
    assert lookup[normalize_name("nvidia-tesla-t4")] == "T4"


# --- offers ---------------------------------------------------------------------------------


def test_offers_reference_known_regions_and_accelerators() -> None:
    region_keys = {(r["cloud"], r["region"]) for r in regions()}
    names = {a["name"] for a in accelerators()}
    keys = []
    for o in offers():
        assert (o["cloud"], o["region"]) in region_keys, o
        assert o["accelerator"] in names, o  # canonical name, not an alias
        keys.append((o["cloud"], o["region"], o["instance_type"]))
    assert len(keys) == len(set(keys))
    assert keys == sorted(keys)


def test_offer_values_are_in_range() -> None:
    for o in offers():
        assert int(o["accelerator_count"]) > 0, o
        assert int(o["vcpus"]) > 0, o
        assert float(o["memory_gib"]) > 0, o
        prices = [o["price_usd_per_hour"], o["spot_price_usd_per_hour"]]
        assert any(prices), o  # sold at least one way
        for price in prices:
            assert price == "" or float(price) > 0, o  # empty, never 0, for "not sold"
            assert price == "" or float(price) != 700.0, o  # GCP's "unavailable" marker


# Required coverage: (cloud, accelerator) pairs the scheduler must be able to place.
# Azure sells no L4 and no TPUs/Trainium, so those pairs are not required there.
REQUIRED = [
    (cloud, acc)
    for cloud in ("aws", "gcp", "azure")
    for acc in ("H100", "A100", "A100-80GB", "T4")
] + [
    ("aws", "V100"), ("gcp", "V100"), ("azure", "V100-32GB"), ("azure", "A100-80GB-PCIe"),
    ("aws", "L4"), ("gcp", "L4"), ("gcp", "TPU-v5e"), ("gcp", "TPU-v5p"), ("aws", "Trainium"),
]


@pytest.mark.parametrize(("cloud", "accelerator"), REQUIRED)
def test_coverage(cloud: str, accelerator: str) -> None:
    assert any(o["cloud"] == cloud and o["accelerator"] == accelerator for o in offers())


def test_at_least_40_regions_have_offers() -> None:
    assert len({(o["cloud"], o["region"]) for o in offers()}) >= 40


def test_azure_nd_h100_v5_has_eight_gpus() -> None:
    row = offer("azure", "eastus", "Standard_ND96isr_H100_v5")
    assert row["accelerator"] == "H100"
    assert row["accelerator_count"] == "8"  # the reference says 12


def test_aws_p5e_has_no_on_demand_price() -> None:
    rows = [o for o in offers() if o["cloud"] == "aws" and o["instance_type"] == "p5e.48xlarge"]
    assert rows
    assert all(o["price_usd_per_hour"] == "" and o["spot_price_usd_per_hour"] for o in rows)


def test_gcp_offer_prices_are_gpu_plus_vm() -> None:
    # Hand-checked against prices-reference/gcp_vms_v9_gpu_tpu_subset.csv and the full table:
    #   V100 x8, us-central1: 19.84 on demand, 9.8704 spot (GPU row)
    #   n1-standard-64, us-central1: 3.03998 on demand, 1.0212 spot (VM row)
    #   -> 19.84 + 3.03998 = 22.87998 ; 9.8704 + 1.0212 = 10.8916
    row = offer("gcp", "us-central1", "n1-standard-64")
    assert (row["accelerator"], row["accelerator_count"]) == ("V100", "8")
    assert float(row["price_usd_per_hour"]) == pytest.approx(22.87998, abs=1e-9)
    assert float(row["spot_price_usd_per_hour"]) == pytest.approx(10.8916, abs=1e-9)


@pytest.mark.parametrize(("region", "instance_type", "listed", "listed_spot", "half_level"), [
    # Cloud Billing Catalog list (Cyclenerd pricing.yml, 2025-07-31) vs the reference's low level
    ("us-central1", "a3-highgpu-8g", 88.49, 20.36961, 43.06617),
    ("us-central1", "a2-ultragpu-1g", 5.0688, 2.02166, 2.94582),
    ("europe-west4", "a2-ultragpu-1g", 5.58092, 1.87276, 3.24335),
    ("asia-northeast1", "a2-highgpu-8g", 32.39673, 9.39484, 21.23111),
])
def test_gcp_gpu_machine_prices_are_the_list_prices(
    region: str, instance_type: str, listed: float, listed_spot: float, half_level: float
) -> None:
    row = offer("gcp", region, instance_type)
    assert float(row["price_usd_per_hour"]) == pytest.approx(listed, abs=1e-9)
    assert float(row["spot_price_usd_per_hour"]) == pytest.approx(listed_spot, abs=1e-9)
    assert float(row["price_usd_per_hour"]) > 1.5 * half_level
    assert "Cloud Billing Catalog" in row["source"] and row["as_of"] == "2025-07-31"


def test_spot_is_cheaper_than_on_demand_wherever_both_exist() -> None:
    for o in offers():
        if o["price_usd_per_hour"] and o["spot_price_usd_per_hour"]:
            assert float(o["spot_price_usd_per_hour"]) < float(o["price_usd_per_hour"]), o


def test_form_factors_give_each_part_its_own_power() -> None:
    by_name = {a["name"]: a for a in accelerators()}
    assert (by_name["A100-80GB"]["form_factor"], by_name["A100-80GB"]["tdp_w"]) == ("SXM", "400.0")
    assert (by_name["A100-80GB-PCIe"]["form_factor"], by_name["A100-80GB-PCIe"]["tdp_w"]) == (
        "PCIe", "300.0")
    assert (by_name["V100-PCIe"]["form_factor"], by_name["V100-PCIe"]["tdp_w"]) == (
        "PCIe", "250.0")
    assert by_name["H100-NVL"]["form_factor"] == "NVL"
    assert by_name["TPU-v5e"]["form_factor"] == "TPU"
    row = offer("azure", "eastus", "Standard_NC24ads_A100_v4")
    assert row["accelerator"] == "A100-80GB-PCIe"


def test_retired_azure_ncv3_is_not_offered() -> None:
    retired = {"Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_NC24rs_v3"}
    assert not [o for o in offers() if o["instance_type"] in retired]


def test_gcp_tpu_price_is_per_chip_times_chips() -> None:
    #   tpu-v5p-12288 (12288 TensorCores = 6144 chips), us-central1: 25804.8 per hour
    #   -> 25804.8 / 6144 = 4.2 per chip ; v5p-8 = 4 chips -> 16.8
    row = offer("gcp", "us-central1", "v5p-8")
    assert (row["accelerator"], row["accelerator_count"]) == ("TPU-v5p", "4")
    assert float(row["price_usd_per_hour"]) == pytest.approx(16.8, abs=1e-9)


# --- reproducibility ------------------------------------------------------------------------


def test_rebuilding_from_shared_data_reproduces_the_shipped_files(tmp_path: Path) -> None:
    if not (SHARED_DATA / "regions" / "gsf_cloud_region_metadata.csv").is_file():
        pytest.skip(f"reference data not present at {SHARED_DATA}")
    result = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--shared-data", str(SHARED_DATA),
         "--out", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), (
            f"{name} differs from a fresh build: run scripts/build_catalog.py and commit"
        )
