#!/usr/bin/env python3
"""Build the embedded catalog CSVs from the public reference figures in ``../shared/data``.

Usage::

    python scripts/build_catalog.py [--shared-data ../shared/data] [--out scheduler/catalog/data]

Writes ``regions.csv``, ``accelerators.csv`` and ``offers.csv`` (sorted rows, ``\\n`` line
endings, fixed float formatting) so that the same inputs always give byte-identical files.
The project reads only these generated files at run time; nothing under ``../shared`` is
needed on a user's machine. Standard library only.

Regions
-------
One row per (cloud, region) for every AWS, GCP and Azure region found in the data (OCI
excluded; the provider "geography" aliases, staging/EUAP regions and GCP multi-regions that
Cloud Carbon Footprint lists are not regions and are left out).

One basis for every cloud: a region's grid figures are looked up by its Electricity Maps zone
(``em_zone``), so regions in the same zone carry the same figures whatever the cloud.

* ``grid_intensity_avg_g_per_kwh`` and ``grid_cfe_pct``: Electricity Maps' yearly average
  carbon intensity (lifecycle, consumption-based; ``intensity_basis`` = ``lifecycle``) and the
  grid's carbon-free %, from regions/electricitymaps_yearly, year ``EM_YEAR``. ``year`` is that
  year and ``as_of`` its last day. ``EM_YEAR`` is the newest COMPLETE year in the file: the
  file (co2.js' yearly_YEAR.json, one API call per zone for ``YEAR-12-31``) was fetched on
  2026-02-04, after 2025 ended, so 2025 is a whole year; a year still in progress when fetched
  (a year-to-date average) must never be used. Google's region-carbon-info intensity (Google's
  operational "grid" figure, direct emissions), the GSF averages (older years) and Cloud Carbon
  Footprint's country factors are no longer used for intensity: they mix bases and years.
* ``provider_cfe_pct``: the provider's published hourly-matched CFE. Only Google publishes one
  (region-carbon-info, newest year with a figure; the source names the year); empty for every
  AWS and Azure region. GSF's provider-cfe columns are not used (its 2024 GCP column holds
  Google's 2023 figures; its one Azure figure is annual, not hourly).
* ``grid_intensity_marginal_g_per_kwh``: WattTime's annual marginal intensity as republished
  by GSF, from the newest GSF year that has one for the region (the source names the year);
  empty when GSF has none.
* ``pue`` (unchanged rule): the newest GSF region PUE, else a region figure from
  hardware/pue_by_provider_and_region.csv (Google's trailing-twelve-month campus PUE first),
  else the provider's fleet PUE (``pue_basis`` says which).
* Region keys come from GSF, GCP region-carbon-info and Cloud Carbon Footprint (CCF); a region
  whose Electricity Maps zone is unknown is dropped (the build prints a note).

Upstream errors fixed here (each also noted where the fix is made):

* Azure ``northeurope`` appears twice per year in GSF (FI and IE); it is Dublin, Ireland. The FI
  row is dropped.
* Azure ``westus`` is mapped by GSF to BPA / Washington state; West US is in California. Zone,
  WattTime region and location are corrected and the marginal figure is taken from the AWS
  us-west-1 row, which GSF maps to the same CAISO zone and WattTime region.
* Azure ``asiapacific`` is a geography name, not a region; GSF uses it for the Jakarta
  datacentre region, which Azure names ``indonesiacentral``.
* GCP ``me-central1`` (Doha) carries the UAE zone ``AE`` in GSF; Doha is in Qatar (``QA``).
* Wrong or missing coordinates: AWS sa-east-1 and GCP southamerica-east1 (point in Amazonas, not
  Sao Paulo), GCP us-south1 (Oregon, not Dallas), us-west4 (New Mexico, not Las Vegas), us-east5
  (Columbus, Nebraska, not Ohio), europe-west4 (Rotterdam area, not Eemshaven),
  northamerica-south1 (centre of Mexico, not Queretaro); africa-south1, me-central1 and
  me-central2 have none.
* Missing Electricity Maps zones filled from the location (Azure westcentralus -> US-NW-WACM,
  westus3 -> US-SW-AZPS; GCP europe-west10, europe-north2, us-east2, northamerica-south1; AWS
  ca-west-1 -> CA-AB, cn-north-1 and cn-northwest-1 -> CN).
* CCF maps Azure westus2 (Quincy, Washington) to PacifiCorp East; Quincy is served by Grant County
  PUD (``US-NW-GCPD``).

No region is dropped today: AWS ca-west-1 and Azure mexicocentral, which had no average
intensity in the older sources, have a zone and so Electricity Maps figures.

Accelerators
------------
Every row of hardware/accelerators.csv (the V100 row gives two entries, 16 GB and 32 GB), plus
P100, TPU v2 and TPU v3 from public papers and datasheets. All figures are PER CHIP (a TPU v2/v3
chip has two TensorCores; a v5p chip two; a v5e chip one). ``peak_dense_tflops`` is dense BF16
where the chip has it, else dense FP16. Where the vendor publishes no power figure (TPU v5e,
TPU v5p, Trainium, Trainium2, Inferentia2) ``tdp_w`` is an ESTIMATE: the chip's peak TFLOPS
divided by the TFLOPS-per-watt of a published reference chip (TPU v4 for the TPUs, A100 for
Trainium and Inferentia2, H100 for Trainium2); the row's ``source`` says so.

``form_factor`` (SXM, PCIe, NVL, OAM, TPU, custom) makes each physical form of a chip its own
accelerator with its own TDP and peak: a bare chip name (``V100``, ``A100-80GB``, ``H100``) is
the SXM module; ``A100-80GB-PCIe`` (300 W) and ``V100-PCIe`` (250 W, 112 TFLOPS) are added from
NVIDIA's datasheets. Family mapping: AWS p3 = V100 SXM2, p4d = A100 40GB SXM4, p4de = A100 80GB
SXM4, p5 = H100 SXM5, p5e/p5en = H200 SXM; GCP a2-highgpu = A100 40GB SXM4, a2-ultragpu = A100
80GB SXM4, a3-highgpu/-megagpu = H100 SXM5, a3-ultragpu = H200 SXM, N1 V100 = SXM2; Azure ND v2 =
V100 32GB SXM2, ND A100 v4 = A100 SXM4, ND H100 v5 = H100 SXM5, NC A100 v4 = A100 80GB PCIe,
NCads H100 v5 = H100 NVL, NCv3 = V100 PCIe (retired).

Offers
------
One row per (cloud, region, instance_type). Rules:

* Availability zones: the lowest on-demand and, separately, the lowest spot price across the
  region's zones. AWS Local Zones (zone ids like ``use1-atl2-az1``) are not the region and are
  skipped.
* An empty price means "not sold that way" and stays empty (never 0). GCP's 700.0 means
  unavailable and becomes empty. A row with neither price is dropped. A spot price at or above
  on demand (AWS and Azure rows at the on-demand cap) is no spot offer: it is left empty and
  logged.
* ``price_note`` says why a row's price is unchecked or unusual; only such a row may sit outside
  the price band of the offer checks below.
* Accelerators outside the catalog (K80, M60, Radeon MI25, A10, B200, TPU v6e) are dropped.
* AWS p5e.48xlarge has no on-demand price (spot only), as published.
* Azure Standard_ND96isr_H100_v5 has 8 GPUs (the reference says 12). Azure NCads H100 v5 uses the
  H100 NVL (94 GB) and is mapped to ``H100-NVL``; Azure NC A100 v4 uses the PCIe A100 80 GB and
  is mapped to ``A100-80GB-PCIe``.
* Retired Azure sizes are dropped, the retirement in the build log: NC, NCv2, ND and NV
  (2023-09-06), NCv3 (2025-09-30), NVv3 and NVv4 (2026-09-30); the table and its sources are in
  scheduler/catalog/retired.py.

GCP list prices: for the A2, A3 High/Mega and G2 machine types the offer's on-demand and spot
prices are the Cloud Billing Catalog list prices of the whole machine type (GPUs, host VM and
bundled local SSD), re-keyed from Cyclenerd/google-cloud-pricing-cost-calculator pricing.yml
generated 2025-07-31 (``GCP_LIST_PRICES``, ``as_of`` 2025-07-31). The reference's GPU rows hold
two price levels and the low one, about half the list price with spot dearer than on demand, is
not the list price (a3-highgpu-8g us-central1: 43.07 there, 88.49 listed). The table has no
a3-ultragpu-8g: its rows at the list level are kept with a ``price_note``, those at the half
level dropped (build log).

GCP summing rule (N1 with T4/V100, and a3-ultragpu-8g): GCP prices a GPU (per GPU, scaled by
count) and its host VM as separate rows;
the offer's price is GPU row + VM row of the same region, and the spot price is the sum of the
two spot prices (empty if either is missing). The host VM for each (accelerator, count) is
fixed by ``GCP_HOST_FOR``: A2/A3/G2 machine types bundle a fixed GPU count; N1 hosts for T4 and
V100 follow Google's per-GPU vCPU limits (n1-standard-4 for 1 T4, n1-standard-8 for 1 V100,
n1-standard-64 for 8 V100). ``instance_type`` is the host machine type and
``accelerator_count`` the GPU count.

TPU rule: a TPU slice price already includes its TPU VM hosts, so no VM row is added. The
price per chip is the listed slice price / chips (v5p slice names count TensorCores, 2 per chip;
v5e names count chips), and the offer is the smallest single-host slice, ``v5p-8`` (4 chips)
and ``v5litepod-8`` (8 chips), priced per chip x chips.

Where the reference subsets lack a figure the scheduler needs, a small number of figures are
re-keyed (``SUPPLEMENTARY_*`` below): GCP host-VM rows (n1-standard-4/8/64, a3-ultragpu-8g),
GCP V100 GPU rows and TPU v5e slices from the full GCP table of the same public catalog the
subsets were transcribed from, and AWS g4dn (T4) and trn1 (Trainium) on-demand
prices from the AWS EC2 on-demand price page. Their ``source`` column says which.

Offer checks: the build fails unless ``scheduler/catalog/offer_checks.py`` (loaded by path) finds
no problem: spot below on demand, on-demand price per accelerator-hour within 0.5x-2.5x of the
accelerator's median unless the row has a ``price_note``, and known instance types carrying their
documented accelerator and count.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

REPO_ROOT = Path(__file__).resolve().parents[1]


def _catalog_module(file_name: str) -> ModuleType:
    """A pure module of scheduler/catalog (``offer_checks.py``, ``retired.py``), loaded by path
    (they import nothing from greenplace)."""
    path = REPO_ROOT / "scheduler" / "catalog" / file_name
    spec = importlib.util.spec_from_file_location(f"_greenplace_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEFAULT_SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = REPO_ROOT / "scheduler" / "catalog" / "data"

REGION_COLUMNS = (
    "cloud", "region", "location", "country", "continent", "latitude", "longitude", "em_zone",
    "watttime_region", "grid_intensity_avg_g_per_kwh", "intensity_basis", "grid_cfe_pct",
    "provider_cfe_pct", "grid_intensity_marginal_g_per_kwh", "pue", "pue_basis", "year",
    "source", "as_of",
)
ACCELERATOR_COLUMNS = (
    "name", "aliases", "vendor", "form_factor", "tdp_w", "peak_dense_tflops", "memory_gib",
    "source", "as_of",
)
OFFER_COLUMNS = (
    "cloud", "region", "instance_type", "accelerator", "accelerator_count", "vcpus",
    "memory_gib", "price_usd_per_hour", "spot_price_usd_per_hour", "price_note", "source",
    "as_of",
)

# The reference price subsets carry no date. Their contents (AWS's mid-2025 P4/P5 price cut,
# p5.4xlarge and p5en present, GCP A4/A3 Ultra and TPU v6e listed) place the snapshot no earlier
# than August 2025; we record the earliest date consistent with the figures.
PRICE_SNAPSHOT_AS_OF = "2025-08-01"
# hardware/accelerators.csv and pue_by_provider_and_region.csv were compiled with the prices.
HARDWARE_TABLE_AS_OF = "2025-08-01"

GSF_FILE = "regions/gsf_cloud_region_metadata.csv"
EM_FILE = "regions/electricitymaps_yearly/electricitymaps_yearly_2021_2025.csv"
# Newest complete year of EM_FILE: fetched 2026-02-04, so 2025 is whole (see the docstring).
EM_YEAR = 2025
RCI_DIR = "regions/gcp_region_carbon_info"
CCF_FILE = "regions/ccf_grid_emission_factors.csv"
PUE_FILE = "hardware/pue_by_provider_and_region.csv"
HARDWARE_FILE = "hardware/accelerators.csv"
AWS_PRICES = "prices-reference/aws_vms_v9_gpu_subset.csv"
AZURE_PRICES = "prices-reference/azure_vms_v6_gpu_subset.csv"
GCP_PRICES = "prices-reference/gcp_vms_v9_gpu_tpu_subset.csv"

GSF_CLOUDS = {"Amazon Web Services": "aws", "Google Cloud": "gcp", "Microsoft Azure": "azure"}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    """Read a CSV file into a list of row dicts (UTF-8, BOM tolerated)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


def parse_float(text: str | None) -> float | None:
    """Parse a plain decimal figure; empty or non-numeric text gives None."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


_LEADING_NUMBER = re.compile(r"^\s*~?\s*(\d+(?:\.\d+)?)")


def leading_number(text: str) -> float | None:
    """The number a free-text figure starts with: ``"~70 (unofficial)"`` -> 70.

    Text that does not start with a number (``"n/a (no BF16)"``, ``"not published"``) gives None.
    """
    match = _LEADING_NUMBER.match(text)
    return float(match.group(1)) if match else None


def fmt(value: float | None, digits: int) -> str:
    """Format a float deterministically: rounded, shortest repr, empty for None."""
    if value is None:
        return ""
    rounded = round(value, digits)
    if rounded == 0:
        rounded = 0.0  # no "-0.0"
    return repr(float(rounded))


def normalize_name(name: str) -> str:
    """Same folding as scheduler.catalog.model.normalize_name (kept here: stdlib-only script)."""
    return re.sub(r"[\s\-_./]+", "", name.strip().lower())


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------

CONTINENT_BY_COUNTRY = {
    **dict.fromkeys(("US", "CA", "MX"), "north-america"),
    **dict.fromkeys(("BR", "CL"), "south-america"),
    **dict.fromkeys(
        ("AT", "BE", "CH", "DE", "DK", "ES", "FI", "FR", "GB", "GR", "IE", "IT", "NL", "NO",
         "PL", "SE"),
        "europe",
    ),
    **dict.fromkeys(("CN", "HK", "ID", "IN", "JP", "KR", "SG", "TW"), "asia"),
    **dict.fromkeys(("AU", "NZ"), "oceania"),
    "ZA": "africa",
    **dict.fromkeys(("AE", "BH", "IL", "QA", "SA"), "middle-east"),
}

# Renamed regions: (cloud, name in the data) -> region id.
REGION_RENAMES = {
    # "asiapacific" is an Azure geography; the GSF row describes the Jakarta region.
    ("azure", "asiapacific"): "indonesiacentral",
}


@dataclass(frozen=True)
class Fix:
    """Corrections applied to a region's descriptive fields (all years)."""

    reason: str
    location: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    em_zone: str | None = None
    watttime_region: str | None = None
    country: str | None = None


REGION_FIXES: dict[tuple[str, str], Fix] = {
    ("aws", "sa-east-1"): Fix("coordinates: GSF points to Amazonas", latitude=-23.55,
                              longitude=-46.63),
    ("gcp", "southamerica-east1"): Fix("coordinates: GSF points to Amazonas",
                                       location="São Paulo", latitude=-23.55, longitude=-46.63),
    ("gcp", "us-south1"): Fix("coordinates: GSF points to Oregon", latitude=32.78,
                              longitude=-96.8),
    ("gcp", "us-west4"): Fix("coordinates: GSF points to New Mexico", latitude=36.17,
                             longitude=-115.14),
    ("gcp", "us-east5"): Fix("coordinates: GSF points to Columbus, Nebraska", latitude=39.96,
                             longitude=-83.0),
    ("gcp", "europe-west4"): Fix("coordinates: GSF points near Rotterdam", latitude=53.44,
                                 longitude=6.83),
    ("gcp", "africa-south1"): Fix("coordinates missing in GSF", latitude=-26.2, longitude=28.05),
    ("gcp", "me-central2"): Fix("coordinates missing in GSF", latitude=26.43, longitude=50.1),
    ("gcp", "me-central1"): Fix("zone: GSF gives AE for Doha; coordinates missing",
                                latitude=25.29, longitude=51.53, em_zone="QA"),
    ("gcp", "northamerica-south1"): Fix("coordinates and zones: region is in Queretaro",
                                        location="Querétaro", latitude=20.59,
                                        longitude=-100.39, em_zone="MX",
                                        watttime_region="MX_SIN"),
    ("gcp", "europe-north2"): Fix("zones missing in GSF", em_zone="SE", watttime_region="SE"),
    ("gcp", "europe-west10"): Fix("zones missing in GSF", em_zone="DE", watttime_region="DE"),
    ("gcp", "us-east2"): Fix("zones missing in GSF", em_zone="US-SE-SOCO",
                             watttime_region="SOCO"),
    ("azure", "westus"): Fix("West US is in California, not BPA/Washington (GSF error)",
                             location="California: West US", latitude=37.78, longitude=-122.42,
                             em_zone="US-CAL-CISO", watttime_region="CAISO_NORTH"),
    ("azure", "westcentralus"): Fix("zone missing in GSF", em_zone="US-NW-WACM"),
    ("azure", "westus3"): Fix("zone missing in GSF", em_zone="US-SW-AZPS"),
    ("aws", "cn-north-1"): Fix("zone and country missing in GSF", em_zone="CN", country="CN"),
    ("aws", "cn-northwest-1"): Fix("zone and country missing in GSF", em_zone="CN",
                                   country="CN"),
    ("aws", "ca-west-1"): Fix("zone missing in GSF", em_zone="CA-AB"),
}

# Regions whose GSF grid figures belong to the wrong grid: take the same year's figures from a
# donor region that GSF maps to the corrected zone and WattTime region.
GRID_FIGURE_DONORS = {("azure", "westus"): ("aws", "us-west-1")}

# Regions that only appear in GCP region-carbon-info or in CCF, with their documented city.
# (location, latitude, longitude, Electricity Maps zone)
EXTRA_REGION_META: dict[tuple[str, str], tuple[str, float, float, str]] = {
    ("gcp", "us-central2"): ("Oklahoma", 36.24, -95.33, "US-CENT-SWPP"),
    ("azure", "southafricanorth"): ("Johannesburg", -26.2, 28.05, "ZA"),
    ("azure", "southafricawest"): ("Cape Town", -33.92, 18.42, "ZA"),
    ("azure", "australiacentral"): ("Canberra", -35.31, 149.12, "AU-NSW"),
    ("azure", "australiacentral2"): ("Canberra", -35.31, 149.12, "AU-NSW"),
    ("azure", "japaneast"): ("Tokyo", 35.68, 139.77, "JP-TK"),
    ("azure", "japanwest"): ("Osaka", 34.69, 135.5, "JP-KN"),
    ("azure", "koreacentral"): ("Seoul", 37.57, 126.98, "KR"),
    ("azure", "koreasouth"): ("Busan", 35.18, 129.08, "KR"),
    ("azure", "eastasia"): ("Hong Kong", 22.27, 114.19, "HK"),
    ("azure", "centralindia"): ("Pune", 18.58, 73.92, "IN-WE"),
    ("azure", "southindia"): ("Chennai", 12.98, 80.16, "IN-SO"),
    ("azure", "westindia"): ("Mumbai", 19.09, 72.87, "IN-WE"),
    ("azure", "jioindiacentral"): ("Nagpur", 21.15, 79.09, "IN-WE"),
    ("azure", "jioindiawest"): ("Jamnagar", 22.47, 70.06, "IN-WE"),
    ("azure", "francecentral"): ("Paris", 48.86, 2.35, "FR"),
    ("azure", "francesouth"): ("Marseille", 43.3, 5.37, "FR"),
    ("azure", "switzerlandnorth"): ("Zurich", 47.45, 8.56, "CH"),
    ("azure", "switzerlandwest"): ("Geneva", 46.2, 6.14, "CH"),
    ("azure", "uksouth"): ("London", 51.51, -0.13, "GB"),
    ("azure", "ukwest"): ("Cardiff", 51.48, -3.18, "GB"),
    ("azure", "germanynorth"): ("Berlin", 52.52, 13.4, "DE"),
    ("azure", "germanywestcentral"): ("Frankfurt", 50.11, 8.68, "DE"),
    ("azure", "norwayeast"): ("Oslo", 59.91, 10.75, "NO-NO1"),
    ("azure", "norwaywest"): ("Stavanger", 58.97, 5.73, "NO-NO2"),
    ("azure", "uaecentral"): ("Abu Dhabi", 24.47, 54.37, "AE"),
    ("azure", "uaenorth"): ("Dubai", 25.27, 55.3, "AE"),
    ("azure", "canadacentral"): ("Toronto", 43.65, -79.38, "CA-ON"),
    ("azure", "canadaeast"): ("Quebec City", 46.82, -71.22, "CA-QC"),
    # CCF says US-NW-PACE (PacifiCorp East); Quincy, WA is in Grant County PUD's area.
    ("azure", "westus2"): ("Washington: West US 2", 47.23, -119.85, "US-NW-GCPD"),
    ("azure", "brazilsoutheast"): ("Rio de Janeiro", -22.91, -43.17, "BR-CS"),
}

# CCF rows that are not regions: provider geographies, staging/EUAP rings, GCP multi-regions.
CCF_NOT_REGIONS = {
    "aws": {"unknown"},
    "azure": {
        "unknown", "southafrica", "australia", "apeast", "apsoutheast", "japan", "korea", "asia",
        "asiapacific", "eastasiastage", "southeastasiastage", "india", "france", "switzerland",
        "uk", "germany", "norway", "uae", "canada", "brazil", "unitedstates", "unitedstateseuap",
        "centraluseuap", "centralusstage", "eastusstage", "eastus2euap", "eastus2stage",
        "usnorth", "northcentralusstage", "southcentralusstage", "westusstage", "westus2stage",
    },
    "gcp": {"unknown", "asia1", "eur4", "nam4", "asia", "europe", "us"},
}


def parse_geolocation(text: str) -> tuple[float | None, float | None]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        return None, None
    return parse_float(parts[0]), parse_float(parts[1])


@dataclass
class RegionSources:
    """Everything the inputs say about one (cloud, region)."""

    gsf: dict[int, dict[str, str]]
    rci: dict[int, dict[str, str]]


def load_gsf(shared: Path) -> dict[tuple[str, str], dict[int, dict[str, str]]]:
    """GSF rows by (cloud, region) and year, with the northeurope duplicate removed."""
    out: dict[tuple[str, str], dict[int, dict[str, str]]] = {}
    for row in read_csv(shared / GSF_FILE):
        cloud = GSF_CLOUDS.get(row["cloud-provider"].strip())
        if cloud is None:  # Oracle
            continue
        region = row["cloud-region"].strip()
        # GSF lists Azure northeurope twice a year, as Finland and as Ireland; it is Ireland.
        if (cloud, region) == ("azure", "northeurope") and row["em-zone-id"].strip() == "FI":
            continue
        region = REGION_RENAMES.get((cloud, region), region)
        year = int(row["year"])
        by_year = out.setdefault((cloud, region), {})
        if year in by_year:
            raise ValueError(f"duplicate GSF row for {cloud}:{region} {year}")
        by_year[year] = row
    return out


def load_rci(shared: Path) -> dict[str, dict[int, dict[str, str]]]:
    """Google region-carbon-info rows by region and year, 2021+ only (grid, not lifecycle)."""
    out: dict[str, dict[int, dict[str, str]]] = {}
    for path in sorted((shared / RCI_DIR).glob("*.csv")):
        year = int(path.stem)
        if year < 2021:
            continue  # 2019-2020 are lifecycle intensities: never mixed with grid figures
        for row in read_csv(path):
            out.setdefault(row["Google Cloud Region"].strip(), {})[year] = row
    return out


def load_ccf(shared: Path) -> dict[tuple[str, str], dict[str, str]]:
    out: dict[tuple[str, str], dict[str, str]] = {}
    for row in read_csv(shared / CCF_FILE):
        cloud = row["provider"].strip()
        region = row["region_normalized"].strip()
        if region.lower() in CCF_NOT_REGIONS.get(cloud, set()):
            continue
        out[(cloud, region)] = row
    return out


@dataclass(frozen=True)
class GridFigures:
    """Electricity Maps' yearly figures for one zone."""

    intensity_g_per_kwh: float
    cfe_pct: float


def load_em(shared: Path) -> dict[str, GridFigures]:
    """Electricity Maps yearly figures of ``EM_YEAR`` by zone."""
    out: dict[str, GridFigures] = {}
    for row in read_csv(shared / EM_FILE):
        if int(row["year"]) != EM_YEAR:
            continue
        intensity = parse_float(row["carbon_intensity_g_per_kwh"])
        cfe = parse_float(row["carbon_free_pct"])
        if intensity is None or intensity <= 0 or cfe is None:
            raise ValueError(f"{EM_FILE}: zone {row['zone']} {EM_YEAR} lacks a figure")
        out[row["zone"].strip()] = GridFigures(intensity, cfe)
    return out


@dataclass(frozen=True)
class PueChoice:
    value: float
    basis: str
    source: str


def load_pue(shared: Path) -> tuple[dict[tuple[str, str], PueChoice], dict[str, PueChoice]]:
    """Region and fleet PUE figures from hardware/pue_by_provider_and_region.csv."""
    rows = read_csv(shared / PUE_FILE)

    def rank(row: dict[str, str]) -> int:
        vintage = row["year_or_vintage"]
        if "TTM" in vintage:  # Google's trailing-twelve-month campus PUE (newest)
            return 0
        if vintage.startswith("2020-09"):
            return 1
        return 2

    region: dict[tuple[str, str], PueChoice] = {}
    for row in sorted(rows, key=rank):
        if row["scope"] != "region" or row["provider"] not in ("aws", "gcp", "azure"):
            continue
        key = (row["provider"], row["region"])
        if key not in region:
            region[key] = PueChoice(
                float(row["pue"]), "region",
                f"PUE: {row['source']}, {row['year_or_vintage']} (pue_by_provider_and_region)",
            )

    # Fleet figures: the provider's own latest published annual figure, chosen by vintage.
    # cloud -> (vintage prefix in the file, short label for the source column)
    fleet_choice = {
        "aws": ("2024", "AWS fleet PUE 2024 (AWS sustainability page)"),
        "gcp": ("~2021-2023", "Google fleet PUE (Google data center efficiency page)"),
        "azure": ("2022-2024", "Microsoft fleet PUE 2022-2024 (Microsoft via DatacenterDynamics)"),
    }
    fleet: dict[str, PueChoice] = {}
    for cloud, (vintage, label) in fleet_choice.items():
        matches = [r for r in rows if r["provider"] == cloud and r["scope"] == "fleet"
                   and r["year_or_vintage"].startswith(vintage)]
        if len(matches) != 1:
            raise ValueError(f"expected one fleet PUE row for {cloud}, got {len(matches)}")
        fleet[cloud] = PueChoice(float(matches[0]["pue"]), "fleet", f"PUE: {label}")
    return region, fleet


def zone_to_watttime(gsf: dict[tuple[str, str], dict[int, dict[str, str]]]) -> dict[str, str]:
    """Most common WattTime region per Electricity Maps zone in GSF (for regions without one)."""
    counts: dict[str, Counter[str]] = {}
    for (cloud, region), by_year in gsf.items():
        if (cloud, region) in REGION_FIXES and REGION_FIXES[(cloud, region)].em_zone:
            continue
        for row in by_year.values():
            zone, wt = row["em-zone-id"].strip(), row["wt-region-id"].strip()
            if zone and wt:
                counts.setdefault(zone, Counter())[wt] += 1
    return {
        zone: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        for zone, c in counts.items()
    }


def build_regions(shared: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Region rows and a list of human-readable notes about dropped regions."""
    gsf = load_gsf(shared)
    rci = load_rci(shared)
    ccf = load_ccf(shared)
    em = load_em(shared)
    pue_region, pue_fleet = load_pue(shared)
    wt_by_zone = zone_to_watttime(gsf)

    keys = set(gsf) | {("gcp", r) for r in rci} | set(ccf)
    rows: list[dict[str, str]] = []
    notes: list[str] = []
    for cloud, region in sorted(keys):
        src = RegionSources(
            gsf=gsf.get((cloud, region), {}),
            rci=rci.get(region, {}) if cloud == "gcp" else {},
        )
        row = _region_row(cloud, region, src, gsf, em, pue_region, pue_fleet, wt_by_zone)
        if row is None:
            notes.append(f"dropped {cloud}:{region}: no Electricity Maps zone in any source")
            continue
        rows.append(row)
    rows.sort(key=lambda r: (r["cloud"], r["region"]))
    return rows, notes


def _newest(by_year: dict[int, dict[str, str]], column: str) -> tuple[int, float] | None:
    """(year, value) of the newest row whose ``column`` holds a number."""
    for year in sorted(by_year, reverse=True):
        value = parse_float(by_year[year][column])
        if value is not None:
            return year, value
    return None


def _region_row(
    cloud: str,
    region: str,
    src: RegionSources,
    gsf: dict[tuple[str, str], dict[int, dict[str, str]]],
    em: dict[str, GridFigures],
    pue_region: dict[tuple[str, str], PueChoice],
    pue_fleet: dict[str, PueChoice],
    wt_by_zone: dict[str, str],
) -> dict[str, str] | None:
    key = (cloud, region)
    fix = REGION_FIXES.get(key)
    donor = GRID_FIGURE_DONORS.get(key)

    # --- descriptive fields: newest GSF row, then extra table, then fixes ------------------
    newest = src.gsf[max(src.gsf)] if src.gsf else None
    location = newest["location"].strip() if newest else ""
    lat, lon = parse_geolocation(newest["geolocation"]) if newest else (None, None)
    em_zone = newest["em-zone-id"].strip() if newest else ""
    wt = newest["wt-region-id"].strip() if newest else ""
    country = ""
    extra = EXTRA_REGION_META.get(key)
    if extra:
        location, lat, lon, em_zone = extra
        wt = wt_by_zone.get(em_zone, "")
    if not location and src.rci:
        location = src.rci[max(src.rci)]["Location"].strip()
    if fix:
        location = fix.location or location
        lat = fix.latitude if fix.latitude is not None else lat
        lon = fix.longitude if fix.longitude is not None else lon
        em_zone = fix.em_zone or em_zone
        wt = fix.watttime_region or wt
        country = fix.country or ""
    if not em_zone:
        return None
    if em_zone not in em:
        raise ValueError(f"{cloud}:{region}: zone {em_zone} has no {EM_YEAR} figures in {EM_FILE}")
    if not country:
        country = em_zone.split("-")[0]
    if lat is None or lon is None:
        raise ValueError(f"{cloud}:{region} has no coordinates; add a REGION_FIXES entry")
    if country not in CONTINENT_BY_COUNTRY:
        raise ValueError(f"{cloud}:{region}: unknown country {country!r}")

    # --- grid figures: Electricity Maps, by zone, one year and one basis for every cloud ---
    grid = em[em_zone]
    sources = [f"Electricity Maps yearly {EM_YEAR} (zone {em_zone}, lifecycle)"]

    # --- provider CFE: Google's hourly-matched CFE, GCP only -------------------------------
    provider_cfe = _newest(src.rci, "Google CFE")
    if provider_cfe is not None:
        sources.append(f"provider CFE: GCP region-carbon-info {provider_cfe[0]} (hourly)")

    # --- marginal: WattTime via GSF, newest year that has one -------------------------------
    marginal = _newest(gsf.get(donor, {}) if donor else src.gsf,
                       "grid-carbon-intensity-marginal-consumption-annual")
    if marginal is not None:
        donor_note = f", from {donor[0]} {donor[1]}" if donor else ""
        sources.append(f"marginal: WattTime via GSF Cloud_Region_Metadata {marginal[0]}"
                       f"{donor_note}")
    if fix:
        sources.append(f"corrected: {fix.reason}")

    # --- PUE ---------------------------------------------------------------------------------
    pue: PueChoice | None = None
    gsf_pue = _newest(src.gsf, "power-usage-effectiveness")
    if gsf_pue is not None:
        pue = PueChoice(gsf_pue[1], "region", f"PUE: GSF {gsf_pue[0]}")
    else:
        pue = pue_region.get(key) or pue_fleet[cloud]
    sources.append(pue.source)

    return {
        "cloud": cloud,
        "region": region,
        "location": location,
        "country": country,
        "continent": CONTINENT_BY_COUNTRY[country],
        "latitude": fmt(lat, 4),
        "longitude": fmt(lon, 4),
        "em_zone": em_zone,
        "watttime_region": wt,
        "grid_intensity_avg_g_per_kwh": fmt(grid.intensity_g_per_kwh, 2),
        "intensity_basis": "lifecycle",
        "grid_cfe_pct": fmt(grid.cfe_pct, 1),
        "provider_cfe_pct": fmt(None if provider_cfe is None else 100 * provider_cfe[1], 1),
        "grid_intensity_marginal_g_per_kwh": fmt(None if marginal is None else marginal[1], 2),
        "pue": fmt(pue.value, 3),
        "pue_basis": pue.basis,
        "year": str(EM_YEAR),
        "source": "; ".join(sources),
        "as_of": f"{EM_YEAR}-12-31",
    }


# --------------------------------------------------------------------------------------------
# Accelerators
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcceleratorSpec:
    """How one row of hardware/accelerators.csv becomes a catalog entry."""

    name: str
    vendor: str
    form_factor: str  # SXM, PCIe, NVL, TPU or custom (see FORM_FACTORS)
    memory_gib: float
    aliases: tuple[str, ...] = ()


# Physical form of an accelerator. The same chip in another form factor is another catalog
# entry with its own TDP and peak (A100 80GB SXM4 400 W vs PCIe 300 W).
FORM_FACTORS = ("SXM", "PCIe", "NVL", "OAM", "TPU", "custom")

# (accelerator, variant) in hardware/accelerators.csv -> catalog entries. A bare chip name
# (``V100``, ``A100-80GB``, ``H100``) is the SXM module; other form factors carry a suffix.
HARDWARE_ROWS: dict[tuple[str, str], tuple[AcceleratorSpec, ...]] = {
    ("NVIDIA V100", "SXM2 16/32GB"): (
        AcceleratorSpec("V100", "nvidia", "SXM", 16,
                        ("Tesla V100", "V100-16GB", "nvidia-tesla-v100", "V100-SXM2")),
        AcceleratorSpec("V100-32GB", "nvidia", "SXM", 32, ("Tesla V100 32GB", "V100-SXM2-32GB")),
    ),
    ("NVIDIA A100 40GB", "SXM4"): (
        AcceleratorSpec("A100", "nvidia", "SXM", 40,
                        ("A100-40GB", "Tesla A100", "nvidia-tesla-a100", "A100-SXM4-40GB")),
    ),
    ("NVIDIA A100 80GB", "SXM4"): (
        AcceleratorSpec("A100-80GB", "nvidia", "SXM", 80,
                        ("nvidia-a100-80gb", "A100-SXM4-80GB", "A100-80GB-SXM")),
    ),
    ("NVIDIA H100", "SXM5 80GB"): (
        AcceleratorSpec("H100", "nvidia", "SXM", 80,
                        ("H100-SXM", "H100-SXM5", "H100-80GB", "nvidia-h100-80gb", "H100-MEGA",
                         "nvidia-h100-mega-80gb")),
    ),
    ("NVIDIA H100", "PCIe 80GB"): (AcceleratorSpec("H100-PCIe", "nvidia", "PCIe", 80),),
    ("NVIDIA H100", "NVL 94GB"): (
        AcceleratorSpec("H100-NVL", "nvidia", "NVL", 94, ("H100-94GB",)),
    ),
    ("NVIDIA H200", "SXM 141GB"): (
        AcceleratorSpec("H200", "nvidia", "SXM", 141,
                        ("H200-SXM", "H200-141GB", "nvidia-h200-141gb")),
    ),
    ("NVIDIA H200", "NVL 141GB"): (AcceleratorSpec("H200-NVL", "nvidia", "NVL", 141),),
    ("NVIDIA L4", "PCIe"): (AcceleratorSpec("L4", "nvidia", "PCIe", 24, ("nvidia-l4",)),),
    ("NVIDIA T4", "PCIe"): (
        AcceleratorSpec("T4", "nvidia", "PCIe", 16, ("Tesla T4", "nvidia-tesla-t4")),
    ),
    ("NVIDIA A10G", "AWS G5 variant"): (AcceleratorSpec("A10G", "nvidia", "PCIe", 24),),
    ("NVIDIA L40S", "PCIe"): (AcceleratorSpec("L40S", "nvidia", "PCIe", 48, ("nvidia-l40s",)),),
    ("Google TPU v4", "chip"): (
        AcceleratorSpec("TPU-v4", "google", "TPU", 32, ("tpu-v4-podslice",)),
    ),
    ("Google TPU v5e", "chip"): (
        AcceleratorSpec("TPU-v5e", "google", "TPU", 16,
                        ("tpu-v5-lite-podslice", "tpu-v5-lite-device", "tpu-v5litepod",
                         "TPU v5 lite", "v5litepod", "tpu-v5e-slice")),
    ),
    ("Google TPU v5p", "chip"): (
        AcceleratorSpec("TPU-v5p", "google", "TPU", 95, ("tpu-v5p-slice",)),
    ),
    ("AWS Trainium (Trn1)", "chip (2x NeuronCore-v2)"): (
        AcceleratorSpec("Trainium", "aws", "custom", 32,
                        ("Trainium1", "trn1", "trn1n", "AWS Trainium")),
    ),
    ("AWS Trainium2 (Trn2)", "chip (8x NeuronCore-v3)"): (
        AcceleratorSpec("Trainium2", "aws", "custom", 96, ("trn2", "AWS Trainium2")),
    ),
    ("AWS Inferentia2 (Inf2)", "chip (2x NeuronCore-v2)"): (
        AcceleratorSpec("Inferentia2", "aws", "custom", 32, ("inf2", "AWS Inferentia2")),
    ),
}

# Chips the hardware table lacks. Figures PER CHIP.
EXTRA_ACCELERATORS: tuple[dict[str, str], ...] = (
    {
        # Tesla P100 SXM2 (NVLink) module: 300 W, 21.2 TFLOPS FP16 (no BF16), 16 GB HBM2.
        # (The PCIe card GCP attaches to N1 VMs is 250 W / 18.7 TFLOPS FP16.)
        "name": "P100", "aliases": "Tesla P100|nvidia-tesla-p100|P100-SXM2", "vendor": "nvidia",
        "form_factor": "SXM", "tdp_w": "300.0", "peak_dense_tflops": "21.2", "memory_gib": "16.0",
        "source": "NVIDIA Tesla P100 datasheet (SXM2 module: 300 W, 21.2 TFLOPS FP16, 16 GB)",
        "as_of": "2016-10-01",
    },
    {
        # Jouppi et al., "A Domain-Specific Supercomputer for Training Deep Neural Networks",
        # CACM 63(7), 2020, table of TPUv2/v3 features: per CHIP (2 TensorCores each),
        # TPUv2 46 TFLOPS bf16, 16 GiB HBM, TDP 280 W; TPUv3 123 TFLOPS, 32 GiB, 450 W.
        # Google Cloud's docs quote 45 TFLOPS per v2 chip; we keep the paper's figure.
        "name": "TPU-v2", "aliases": "", "vendor": "google", "form_factor": "TPU",
        "tdp_w": "280.0", "peak_dense_tflops": "46.0", "memory_gib": "16.0",
        "source": "Jouppi et al., CACM 63(7) 2020, TPUv2 per chip (2 TensorCores): 280 W TDP, "
                  "46 TFLOPS bf16, 16 GiB HBM",
        "as_of": "2020-07-01",
    },
    {
        "name": "TPU-v3", "aliases": "", "vendor": "google", "form_factor": "TPU",
        "tdp_w": "450.0", "peak_dense_tflops": "123.0", "memory_gib": "32.0",
        "source": "Jouppi et al., CACM 63(7) 2020, TPUv3 per chip (2 TensorCores): 450 W TDP, "
                  "123 TFLOPS bf16, 32 GiB HBM",
        "as_of": "2020-07-01",
    },
    {
        # NVIDIA A100 Tensor Core GPU datasheet (1758950-r4): A100 80GB PCIe, max TDP 300 W
        # (SXM4: 400 W); 312 TFLOPS dense BF16 either way; 80 GB HBM2e.
        "name": "A100-80GB-PCIe", "aliases": "A100-PCIE-80GB|nvidia-a100-80gb-pcie",
        "vendor": "nvidia", "form_factor": "PCIe",
        "tdp_w": "300.0", "peak_dense_tflops": "312.0", "memory_gib": "80.0",
        "source": "NVIDIA A100 datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf): "
                  "A100 80GB PCIe, 300 W max TDP, 312 TFLOPS dense BF16, 80 GB HBM2e",
        "as_of": "2021-06-28",
    },
    {
        # NVIDIA V100 Tensor Core GPU datasheet: V100 PCIe 250 W, 112 TFLOPS tensor (FP16),
        # 16 GB HBM2 (SXM2: 300 W, 125 TFLOPS).
        "name": "V100-PCIe", "aliases": "Tesla V100-PCIE-16GB|V100-PCIe-16GB",
        "vendor": "nvidia", "form_factor": "PCIe",
        "tdp_w": "250.0", "peak_dense_tflops": "112.0", "memory_gib": "16.0",
        "source": "NVIDIA V100 Tensor Core GPU datasheet (V100 PCIe: 250 W, 112 TFLOPS FP16 "
                  "tensor, 16 GB HBM2)",
        "as_of": "2020-01-01",
    },
)

# No published power figure: estimate = peak TFLOPS / (reference TFLOPS per watt).
TDP_ESTIMATE_REFERENCE = {
    "TPU-v5e": "TPU-v4",
    "TPU-v5p": "TPU-v4",
    "Trainium": "A100",
    "Inferentia2": "A100",
    "Trainium2": "H100",
}


@dataclass(frozen=True)
class _HardwareFigures:
    spec: AcceleratorSpec
    tdp_w: float | None  # None: not published
    tflops: float
    source: str


def build_accelerators(shared: Path) -> list[dict[str, str]]:
    parsed: dict[str, _HardwareFigures] = {}
    seen_rows = set()
    for row in read_csv(shared / HARDWARE_FILE):
        key = (row["accelerator"].strip(), row["variant"].strip())
        specs = HARDWARE_ROWS.get(key)
        if specs is None:
            raise ValueError(f"hardware row {key} has no catalog mapping; add it to HARDWARE_ROWS")
        seen_rows.add(key)
        tflops = leading_number(row["peak_dense_bf16_tflops"])
        if tflops is None:  # no BF16: dense FP16
            tflops = leading_number(row["peak_dense_fp16_tflops"])
        if tflops is None:
            raise ValueError(f"no dense TFLOPS for {key}")
        source = (f"{row['source'].strip()} (hardware/accelerators.csv, confidence: "
                  f"{row['confidence'].strip()})")
        for spec in specs:
            parsed[spec.name] = _HardwareFigures(spec, leading_number(row["tdp_w"]), tflops,
                                                 source)
    missing = set(HARDWARE_ROWS) - seen_rows
    if missing:
        raise ValueError(f"hardware rows missing from the input: {sorted(missing)}")

    rows: list[dict[str, str]] = []
    for name, figures in parsed.items():
        tdp, source = figures.tdp_w, figures.source
        if tdp is None:
            ref_name = TDP_ESTIMATE_REFERENCE[name]
            ref = parsed[ref_name]
            if ref.tdp_w is None:
                raise ValueError(f"estimate reference {ref_name} has no TDP")
            tdp = float(round(figures.tflops * ref.tdp_w / ref.tflops))
            source = (f"ESTIMATE tdp_w: vendor publishes no power figure; {figures.tflops:g} TF x "
                      f"({ref.tdp_w:g} W / {ref.tflops:g} TF of {ref_name}); other figures: "
                      f"{source}")
        rows.append({
            "name": name,
            "aliases": "|".join(figures.spec.aliases),
            "vendor": figures.spec.vendor,
            "form_factor": figures.spec.form_factor,
            "tdp_w": fmt(tdp, 1),
            "peak_dense_tflops": fmt(figures.tflops, 1),
            "memory_gib": fmt(figures.spec.memory_gib, 1),
            "source": source,
            "as_of": HARDWARE_TABLE_AS_OF,
        })
    rows.extend(dict(extra) for extra in EXTRA_ACCELERATORS)
    rows.sort(key=lambda r: r["name"])
    _check_names_unique(rows)
    return rows


def _check_names_unique(rows: list[dict[str, str]]) -> None:
    owner: dict[str, str] = {}
    for row in rows:
        for label in [row["name"], *filter(None, row["aliases"].split("|"))]:
            folded = normalize_name(label)
            if folded in owner and owner[folded] != row["name"]:
                raise ValueError(f"name {label!r} of {row['name']} clashes with {owner[folded]}")
            if folded in owner and label != row["name"]:
                raise ValueError(f"alias {label!r} of {row['name']} folds to an existing name")
            owner[folded] = row["name"]


def accelerator_resolver(rows: list[dict[str, str]]) -> dict[str, str]:
    """Folded name or alias -> canonical name."""
    out: dict[str, str] = {}
    for row in rows:
        out[normalize_name(row["name"])] = row["name"]
        for alias in filter(None, row["aliases"].split("|")):
            out[normalize_name(alias)] = row["name"]
    return out


# --------------------------------------------------------------------------------------------
# Offers
# --------------------------------------------------------------------------------------------


@dataclass
class PriceAgg:
    """Lowest on-demand and lowest spot price seen for one key across zones."""

    price: float | None = None
    spot: float | None = None

    def add(self, price: float | None, spot: float | None) -> None:
        if price is not None and (self.price is None or price < self.price):
            self.price = price
        if spot is not None and (self.spot is None or spot < self.spot):
            self.spot = spot


def _price(text: str, *, gcp: bool = False) -> float | None:
    value = parse_float(text)
    if value is None:
        return None
    if gcp and value == 700.0:  # the GCP catalog's "unavailable" marker
        return None
    if value <= 0:
        return None
    return value


_AWS_LOCAL_ZONE = re.compile(r"^[a-z0-9]+-[a-z]+[0-9]+-az[0-9]+$")  # e.g. use1-atl2-az1

AWS_SOURCE = "prices-reference aws_vms_v9_gpu_subset (public catalog from the AWS price API)"
AZURE_SOURCE = "prices-reference azure_vms_v6_gpu_subset (public catalog from the Azure price API)"
GCP_SOURCE = "prices-reference gcp_vms_v9_gpu_tpu_subset"
GCP_FULL_SOURCE = "full GCP table of the public catalog behind prices-reference"
AWS_PAGE_SOURCE = "AWS EC2 On-Demand pricing page, Linux (aws.amazon.com/ec2/pricing/on-demand)"

# AWS on-demand prices re-keyed from the AWS EC2 on-demand price page (Linux), for families the
# subset lacks: g4dn (T4) and trn1 (Trainium). Spot prices vary and are left empty.
# (instance_type, accelerator, count, vcpus, memory_gib, price_usd_per_hour, regions)
SUPPLEMENTARY_AWS = (
    ("g4dn.xlarge", "T4", 1, 4, 16.0, 0.526, ("us-east-1", "us-east-2", "us-west-2")),
    ("g4dn.12xlarge", "T4", 4, 48, 192.0, 3.912, ("us-east-1", "us-east-2", "us-west-2")),
    ("trn1.2xlarge", "Trainium", 1, 8, 32.0, 1.34375, ("us-east-1", "us-west-2")),
    ("trn1.32xlarge", "Trainium", 16, 128, 512.0, 21.5, ("us-east-1", "us-west-2")),
)

# Azure instance types whose GPU differs from the reference's name or count.
# instance type -> (accelerator or None to keep the reference's, GPU count or None to keep it)
AZURE_OVERRIDES: dict[str, tuple[str | None, int | None]] = {
    # The reference lists 12 GPUs; the ND H100 v5 has 8 H100 SXM GPUs.
    "Standard_ND96isr_H100_v5": (None, 8),
    # NCads H100 v5 uses the H100 NVL (94 GB), not the SXM part.
    "Standard_NC40ads_H100_v5": ("H100-NVL", None),
    "Standard_NC80adis_H100_v5": ("H100-NVL", None),
    # NC A100 v4 uses the PCIe A100 80 GB (300 W), not the SXM4 module (400 W).
    "Standard_NC24ads_A100_v4": ("A100-80GB-PCIe", None),
    "Standard_NC48ads_A100_v4": ("A100-80GB-PCIe", None),
    "Standard_NC96ads_A100_v4": ("A100-80GB-PCIe", None),
    # NCv3 uses the V100 PCIe 16 GB (250 W); it is retired below, mapped for completeness.
    "Standard_NC6s_v3": ("V100-PCIe", None),
    "Standard_NC12s_v3": ("V100-PCIe", None),
    "Standard_NC24s_v3": ("V100-PCIe", None),
    "Standard_NC24rs_v3": ("V100-PCIe", None),
}

# Azure VM sizes retired by Microsoft, with their sources: scheduler/catalog/retired.py (loaded by
# path; the live price refresh reads the same table), dropped with the reason in the build log.
AZURE_RETIRED: dict[str, str] = _catalog_module("retired.py").AZURE_RETIRED

# GCP host machine type for each (accelerator name in the GCP catalog, GPU count).
GCP_HOST_FOR = {
    ("A100", 1): "a2-highgpu-1g",
    ("A100", 8): "a2-highgpu-8g",
    ("A100-80GB", 1): "a2-ultragpu-1g",
    ("A100-80GB", 8): "a2-ultragpu-8g",
    ("H100", 1): "a3-highgpu-1g",
    ("H100", 8): "a3-highgpu-8g",
    ("H100-MEGA", 8): "a3-megagpu-8g",  # same H100 SXM; no VM price in the data
    ("H200", 8): "a3-ultragpu-8g",
    ("L4", 1): "g2-standard-4",
    ("T4", 1): "n1-standard-4",
    ("V100", 1): "n1-standard-8",
    ("V100", 8): "n1-standard-64",
}

# Cloud Billing Catalog list prices of whole GPU machine types (GPUs, host VM and the local SSD
# that A3 bundles), USD per hour, on demand and spot, re-keyed as figures from
# Cyclenerd/google-cloud-pricing-cost-calculator pricing.yml (Apache-2.0; built from the Cloud
# Billing Catalog API), the file generated 2025-07-31 (commit c45bd43). They replace the
# reference's GPU + VM sum for these machine types: the reference's GPU rows hold two price
# levels, and the low one (about half the list price, with spot dearer than on demand) is not the
# list price. Regions: those where the reference sells the machine's GPU; a region the table
# lacks is dropped (named in the build log), never priced from the reference.
# machine type -> (vcpus, memory_gib, {region: (on-demand, spot)})
GCP_LIST_AS_OF = "2025-07-31"
GCP_LIST_SOURCE = (
    "Cloud Billing Catalog list price of the machine type (GPUs included) via "
    "Cyclenerd/google-cloud-pricing-cost-calculator pricing.yml generated " + GCP_LIST_AS_OF
)
GCP_LIST_PRICES: dict[str, tuple[int, float, dict[str, tuple[float, float]]]] = {
    "a2-highgpu-1g": (12, 85.0, {
        "us-east1": (3.67339, 1.44295), "us-west1": (3.67339, 1.44295),
        "us-west3": (4.32507, 1.72656), "us-west4": (3.93435, 1.41629),
    }),
    "a2-highgpu-8g": (96, 680.0, {
        "asia-northeast1": (32.39673, 9.39484), "asia-northeast3": (32.39673, 11.17412),
        "asia-southeast1": (32.11006, 12.8436), "europe-west4": (29.98378, 11.89872),
        "me-west1": (32.32579, 10.81408), "us-central1": (29.38708, 11.54364),
        "us-east1": (29.38708, 11.54364), "us-west1": (29.38708, 11.54364),
        "us-west3": (34.60055, 13.81244), "us-west4": (31.47484, 11.33028),
    }),
    "a2-ultragpu-1g": (12, 170.0, {
        "asia-southeast1": (6.24769, 2.51254), "europe-west4": (5.58092, 1.87276),
        "us-central1": (5.0688, 2.02166), "us-east4": (5.70773, 2.22228),
        "us-east5": (5.56491, 1.76548),
    }),
    "a2-ultragpu-8g": (96, 1360.0, {
        "asia-southeast1": (49.98148, 20.10035), "europe-west4": (44.64735, 14.98204),
        "us-central1": (40.55038, 16.17331), "us-east4": (45.66186, 17.77827),
        "us-east5": (44.51932, 14.12383),
    }),
    "a3-highgpu-1g": (26, 234.0, {
        "asia-east1": (12.79485, 2.30947), "asia-northeast1": (15.83042, 11.12619),
        "asia-northeast3": (14.20616, 2.56655), "asia-south1": (11.51685, 2.08876),
        "asia-south2": (13.28558, 9.33423), "asia-southeast1": (14.28479, 2.61761),
        "australia-southeast1": (13.83478, 9.70745), "europe-north1": (12.17945, 2.20658),
        "europe-west1": (12.17123, 2.19723), "europe-west2": (12.61476, 8.89645),
        "europe-west3": (13.05392, 2.38282), "europe-west4": (14.06756, 2.5711),
        "europe-west9": (12.83105, 9.01484), "northamerica-northeast2": (12.17945, 8.55074),
        "us-central1": (11.06125, 2.5462), "us-east4": (11.06947, 2.03943),
        "us-east5": (12.4479, 2.2582), "us-west1": (11.06125, 2.5462),
        "us-west4": (12.45612, 2.25142),
    }),
    "a3-highgpu-8g": (208, 1872.0, {
        "asia-east1": (102.35878, 18.47575), "asia-northeast1": (126.64339, 89.00952),
        "asia-northeast3": (113.64925, 20.53241), "asia-south1": (92.13478, 16.71006),
        "asia-south2": (106.28464, 74.67387), "asia-southeast1": (114.27829, 20.94088),
        "australia-southeast1": (110.67827, 77.65957), "europe-north1": (97.4356, 17.65263),
        "europe-west1": (97.36985, 17.57782), "europe-west2": (100.91807, 71.17158),
        "europe-west3": (104.43135, 19.06255), "europe-west4": (112.54048, 20.56879),
        "europe-west9": (102.64841, 72.11876), "northamerica-northeast2": (97.4356, 68.4059),
        "us-central1": (88.49, 20.36961), "us-east4": (88.55576, 16.31542),
        "us-east5": (99.5832, 18.06557), "us-west1": (88.49, 20.36961),
        "us-west4": (99.64895, 18.01133),
    }),
    "a3-megagpu-8g": (208, 1872.0, {
        "asia-northeast1": (119.27637, 27.99063), "asia-southeast1": (119.97464, 21.97128),
        "australia-southeast1": (116.15547, 27.19107), "europe-west1": (102.19465, 18.44342),
        "europe-west4": (118.23683, 21.60319), "us-east4": (92.93759, 17.10502),
        "us-east5": (94.06664, 17.07597), "us-west4": (104.58423, 18.90333),
    }),
    "g2-standard-4": (4, 16.0, {
        "asia-east1": (0.81844, 0.25294), "asia-northeast1": (0.90771, 0.35681),
        "asia-northeast3": (0.90771, 0.16622), "asia-south1": (0.73578, 0.2932),
        "asia-southeast1": (0.87202, 0.31084), "europe-west1": (0.77829, 0.26623),
        "europe-west2": (0.80479, 0.29318), "europe-west3": (0.83303, 0.31836),
        "europe-west4": (0.74292, 0.27234), "europe-west6": (0.98879, 0.21522),
        "me-central2": (1.13093, 0.43153), "northamerica-northeast1": (0.77829, 0.23349),
        "northamerica-northeast2": (0.77829, 0.29014), "us-central1": (0.70683, 0.28184),
        "us-east1": (0.70683, 0.28184),
    }),
}

# Machine types with no list figure in the table above (it has no a3-ultragpu-8g). The
# reference's H200 GPU rows show the same two price levels as A100/H100: the list level
# (about 9.3 USD per GPU-hour) is kept with a price note, the half level is dropped.
GCP_UNLISTED_KEPT: dict[tuple[str, str], str] = {
    ("a3-ultragpu-8g", region): (
        "not checked against the Cloud Billing Catalog (no a3-ultragpu-8g in the list table); "
        "reference GPU + VM sum at the list level"
    )
    for region in ("us-central1", "us-east4", "us-west1")
}
GCP_UNLISTED_DROPPED: dict[tuple[str, str], str] = {
    ("a3-ultragpu-8g", region): (
        "reference H200 price at the half level (about 4.6 USD per GPU-hour) and no list figure"
    )
    for region in ("asia-south1", "asia-south2", "europe-west1", "europe-west4", "us-east5",
                   "us-south1")
}

# Host-VM rows the GCP subset lacks, re-keyed from the full GCP table of the same public catalog
# (lowest price across the region's zones). machine type -> (vcpus, memory_gib, {region: (price,
# spot)}).
SUPPLEMENTARY_GCP_VMS: dict[str, tuple[int, float, dict[str, tuple[float, float]]]] = {
    "n1-standard-4": (4, 15.0, {
        "asia-east1": (0.22, 0.04531), "asia-east2": (0.26584, 0.06022),
        "asia-northeast1": (0.24376, 0.07712), "asia-northeast3": (0.24376, 0.08618),
        "asia-south1": (0.2282, 0.05782), "asia-southeast1": (0.23439, 0.04945),
        "asia-southeast2": (0.25548, 0.04022), "australia-southeast1": (0.26959, 0.09172),
        "europe-central2": (0.2299, 0.05751), "europe-west1": (0.20901, 0.07922),
        "europe-west2": (0.24479, 0.05801), "europe-west3": (0.24479, 0.08192),
        "europe-west4": (0.20917, 0.11052), "me-west1": (0.209, 0.07496),
        "northamerica-northeast1": (0.20917, 0.10404), "southamerica-east1": (0.3016, 0.0574),
        "us-central1": (0.19, 0.06382), "us-east1": (0.19, 0.06382),
        "us-east4": (0.21398, 0.04977), "us-west1": (0.19, 0.06382),
        "us-west2": (0.22822, 0.08794), "us-west3": (0.22822, 0.07633),
        "us-west4": (0.21398, 0.06395),
    }),
    "n1-standard-8": (8, 30.0, {
        "asia-east1": (0.44, 0.09062), "europe-west4": (0.41834, 0.22104),
        "us-central1": (0.38, 0.12765), "us-east1": (0.38, 0.12765),
        "us-west1": (0.38, 0.12765),
    }),
    "n1-standard-64": (64, 240.0, {
        "asia-east1": (3.51997, 0.72496), "europe-west4": (3.34669, 1.76832),
        "us-central1": (3.03998, 1.0212), "us-east1": (3.03998, 1.0212),
        "us-west1": (3.03998, 1.0212),
    }),
    "a3-ultragpu-8g": (224, 2952.0, {
        "asia-south1": (12.75664, 4.97815), "asia-south2": (14.73269, 4.09367),
        "europe-west1": (13.50609, 5.01674), "europe-west4": (12.8793, 4.79562),
        "us-central1": (12.266, 6.68552), "us-east4": (12.266, 4.77261),
        "us-east5": (13.81519, 4.90394), "us-south1": (14.47387, 3.62842),
        "us-west1": (12.266, 6.68552),
    }),
}

# GPU / TPU rows the GCP subset lacks, from the same full GCP table.
# (accelerator name as in the catalog file, count) -> {region: (price, spot)}
SUPPLEMENTARY_GCP_ACCELERATORS: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("V100", 1): {
        "asia-east1": (2.48, 0.4856), "europe-west4": (2.604, 0.722),
        "us-central1": (2.48, 1.2338), "us-east1": (2.48, 1.2338), "us-west1": (2.48, 1.2338),
    },
    ("V100", 8): {
        "asia-east1": (19.84, 3.8848), "europe-west4": (20.832, 5.776),
        "us-central1": (19.84, 9.8704), "us-east1": (19.84, 9.8704),
        "us-west1": (19.84, 9.8704),
    },
    ("tpu-v5litepod-8", 1): {
        "asia-east1": (11.11584, 3.81218), "asia-northeast1": (12.32832, 2.02722),
        "asia-southeast1": (12.48, 6.24), "europe-north1": (10.57056, 5.28528),
        "europe-west1": (10.57056, 4.22822), "europe-west3": (11.328, 1.86271),
        "europe-west4": (12.48, 4.08089), "northamerica-northeast1": (10.57056, 1.73818),
        "southamerica-west1": (13.728, 2.25736), "us-central1": (9.6, 2.38168),
        "us-east1": (9.6, 2.38168), "us-east5": (9.6, 4.8), "us-south1": (11.328, 5.23354),
        "us-west1": (9.6, 2.38168), "us-west4": (9.6, 4.2029),
    },
}


@dataclass(frozen=True)
class TpuRule:
    """How a GCP TPU family's slice names map to chips and which slice the catalog offers."""

    canonical: str
    cores_per_chip: int  # slice names count TensorCores
    offered_slice: str  # smallest single-host slice
    offered_chips: int
    host_vcpus: int  # TPU VM host shape of the offered slice (Google Cloud TPU docs)
    host_memory_gib: float


TPU_RULES = {
    # v5p-N: N TensorCores, 2 per chip; v5p-8 = 4 chips on one ct5p-hightpu-4t host.
    "tpu-v5p": TpuRule("TPU-v5p", 2, "v5p-8", 4, 208, 448.0),
    # v5litepod-N: N chips (1 TensorCore each); v5litepod-8 = one ct5lp-hightpu-8t host.
    "tpu-v5litepod": TpuRule("TPU-v5e", 1, "v5litepod-8", 8, 224, 384.0),
}
_TPU_NAME = re.compile(r"^(tpu-v[0-9a-z]+)-([0-9]+)$")


@dataclass
class OfferBuild:
    rows: list[dict[str, str]]
    notes: list[str]


def _offer(
    cloud: str, region: str, instance_type: str, accelerator: str, count: int, vcpus: int,
    memory_gib: float, price: float | None, spot: float | None, source: str, *,
    note: str = "", as_of: str = PRICE_SNAPSHOT_AS_OF,
) -> dict[str, str]:
    return {
        "cloud": cloud,
        "region": region,
        "instance_type": instance_type,
        "accelerator": accelerator,
        "accelerator_count": str(count),
        "vcpus": str(vcpus),
        "memory_gib": fmt(memory_gib, 3),
        "price_usd_per_hour": fmt(price, 6),
        "spot_price_usd_per_hour": fmt(spot, 6),
        "price_note": note,
        "source": source,
        "as_of": as_of,
    }


def aws_offers(
    shared: Path, resolve: dict[str, str], notes: list[str]
) -> Iterator[dict[str, str]]:
    aggs: dict[tuple[str, str], PriceAgg] = {}
    shape: dict[str, tuple[str, int, int, float]] = {}
    for row in read_csv(shared / AWS_PRICES):
        name = row["AcceleratorName"].strip()
        if not name:
            continue  # CPU-only rows
        if _AWS_LOCAL_ZONE.match(row["AvailabilityZone"].strip()):
            continue  # Local Zone, not the region itself
        accelerator = resolve.get(normalize_name(name))
        instance = row["InstanceType"].strip()
        if accelerator is None:
            notes.append(f"aws {instance}: accelerator {name!r} not in catalog, dropped")
            continue
        shape[instance] = (accelerator, int(float(row["AcceleratorCount"])),
                           int(float(row["vCPUs"])), float(row["MemoryGiB"]))
        aggs.setdefault((row["Region"].strip(), instance), PriceAgg()).add(
            _price(row["Price"]), _price(row["SpotPrice"]))
    for (region, instance), agg in aggs.items():
        if agg.price is None and agg.spot is None:
            notes.append(f"aws {region} {instance}: no price at all, dropped")
            continue
        accelerator, count, vcpus, memory = shape[instance]
        yield _offer("aws", region, instance, accelerator, count, vcpus, memory, agg.price,
                     agg.spot, AWS_SOURCE)
    for instance, accelerator, count, vcpus, memory, price, regions in SUPPLEMENTARY_AWS:
        for region in regions:
            if (region, instance) in aggs:
                continue
            yield _offer("aws", region, instance, accelerator, count, vcpus, memory, price, None,
                         AWS_PAGE_SOURCE)


def azure_offers(
    shared: Path, resolve: dict[str, str], notes: list[str]
) -> Iterator[dict[str, str]]:
    aggs: dict[tuple[str, str], PriceAgg] = {}
    shape: dict[str, tuple[str, int, int, float]] = {}
    dropped: set[str] = set()
    for row in read_csv(shared / AZURE_PRICES):
        name = row["AcceleratorName"].strip()
        instance = row["InstanceType"].strip()
        if not name:
            continue
        if instance in AZURE_RETIRED:
            notes.append(f"azure {instance}: dropped, {AZURE_RETIRED[instance]}")
            continue
        override_acc, override_count = AZURE_OVERRIDES.get(instance, (None, None))
        accelerator = override_acc or resolve.get(normalize_name(name))
        if accelerator is None:
            if name not in dropped:
                notes.append(f"azure: accelerator {name!r} not in catalog, its VMs dropped")
                dropped.add(name)
            continue
        count = override_count or int(float(row["AcceleratorCount"]))
        shape[instance] = (accelerator, count, int(float(row["vCPUs"])),
                           float(row["MemoryGiB"]))
        aggs.setdefault((row["Region"].strip(), instance), PriceAgg()).add(
            _price(row["Price"]), _price(row["SpotPrice"]))
    for (region, instance), agg in aggs.items():
        if agg.price is None and agg.spot is None:
            notes.append(f"azure {region} {instance}: no price at all, dropped")
            continue
        accelerator, count, vcpus, memory = shape[instance]
        yield _offer("azure", region, instance, accelerator, count, vcpus, memory, agg.price,
                     agg.spot, AZURE_SOURCE)


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def gcp_offers(
    shared: Path, resolve: dict[str, str], notes: list[str]
) -> Iterator[dict[str, str]]:
    vm_prices: dict[tuple[str, str], PriceAgg] = {}
    vm_shape: dict[str, tuple[int, float]] = {}
    vm_origin: dict[tuple[str, str], str] = {}
    acc_prices: dict[tuple[str, int, str], PriceAgg] = {}
    acc_origin: dict[tuple[str, int, str], str] = {}

    for row in read_csv(shared / GCP_PRICES):
        price = _price(row["Price"], gcp=True)
        spot = _price(row["SpotPrice"], gcp=True)
        region = row["Region"].strip()
        instance = row["InstanceType"].strip()
        if instance:
            vm_shape[instance] = (int(float(row["vCPUs"])), float(row["MemoryGiB"]))
            vm_prices.setdefault((instance, region), PriceAgg()).add(price, spot)
            vm_origin[(instance, region)] = GCP_SOURCE
        else:
            key = (row["AcceleratorName"].strip(), int(float(row["AcceleratorCount"])), region)
            acc_prices.setdefault(key, PriceAgg()).add(price, spot)
            acc_origin[key] = GCP_SOURCE

    for instance, (vcpus, memory, by_region) in SUPPLEMENTARY_GCP_VMS.items():
        vm_shape.setdefault(instance, (vcpus, memory))
        for region, (price, spot) in by_region.items():
            if (instance, region) not in vm_prices:
                vm_prices[(instance, region)] = PriceAgg(price, spot)
                vm_origin[(instance, region)] = GCP_FULL_SOURCE
    for (name, count), by_region in SUPPLEMENTARY_GCP_ACCELERATORS.items():
        for region, (price, spot) in by_region.items():
            if (name, count, region) not in acc_prices:
                acc_prices[(name, count, region)] = PriceAgg(price, spot)
                acc_origin[(name, count, region)] = GCP_FULL_SOURCE

    # One on-demand/spot figure per TPU family and region: price per chip from the listed slice.
    tpu_per_chip: dict[tuple[str, str], tuple[PriceAgg, str, str]] = {}

    for (name, count, region), agg in sorted(acc_prices.items()):
        origin = acc_origin[(name, count, region)]
        tpu = _TPU_NAME.match(name)
        if tpu:
            family, size = tpu.group(1), int(tpu.group(2))
            rule = TPU_RULES.get(family)
            if rule is None:
                notes.append(f"gcp {region} {name}: TPU family not in catalog, dropped")
                continue
            chips = size // rule.cores_per_chip
            per_chip = PriceAgg(
                None if agg.price is None else agg.price / chips,
                None if agg.spot is None else agg.spot / chips,
            )
            # Prefer the smallest listed slice as the basis for the per-chip price.
            prev = tpu_per_chip.get((family, region))
            if prev is None or _slice_size(prev[1]) > size:
                tpu_per_chip[(family, region)] = (per_chip, name, origin)
            continue
        accelerator = resolve.get(normalize_name(name))
        if accelerator is None:
            notes.append(f"gcp {region} {name}: accelerator not in catalog, dropped")
            continue
        host = GCP_HOST_FOR.get((name, count))
        if host is None:
            notes.append(f"gcp {region} {name} x{count}: no host machine type, dropped")
            continue
        if host in GCP_LIST_PRICES:
            vcpus, memory, by_region = GCP_LIST_PRICES[host]
            if region not in by_region:
                notes.append(f"gcp {region} {host}: no list price in the Cloud Billing Catalog "
                             "table, dropped")
                continue
            price, spot = by_region[region]
            yield _offer("gcp", region, host, accelerator, count, vcpus, memory, price, spot,
                         GCP_LIST_SOURCE, as_of=GCP_LIST_AS_OF)
            continue
        if (host, region) in GCP_UNLISTED_DROPPED:
            notes.append(f"gcp {region} {host}: dropped, {GCP_UNLISTED_DROPPED[(host, region)]}")
            continue
        vm = vm_prices.get((host, region))
        if vm is None:
            notes.append(f"gcp {region} {name} x{count}: no {host} VM price, dropped")
            continue
        price = _sum(agg.price, vm.price)
        spot = _sum(agg.spot, vm.spot)
        if price is None and spot is None:
            notes.append(f"gcp {region} {host}: no price at all, dropped")
            continue
        vcpus, memory = vm_shape[host]
        source = (f"GCP GPU + host VM summed (public catalog from the GCP price API); GPU: "
                  f"{origin}; VM: {vm_origin[(host, region)]}")
        yield _offer("gcp", region, host, accelerator, count, vcpus, memory, price, spot, source,
                     note=GCP_UNLISTED_KEPT.get((host, region), ""))

    for (family, region), (per_chip, basis, origin) in sorted(tpu_per_chip.items()):
        rule = TPU_RULES[family]
        price = None if per_chip.price is None else per_chip.price * rule.offered_chips
        spot = None if per_chip.spot is None else per_chip.spot * rule.offered_chips
        if price is None and spot is None:
            notes.append(f"gcp {region} {rule.offered_slice}: no price at all, dropped")
            continue
        source = (f"GCP TPU price per chip x {rule.offered_chips} chips (public catalog from "
                  f"the GCP price API); per-chip price from {basis} in {origin}")
        yield _offer("gcp", region, rule.offered_slice, rule.canonical, rule.offered_chips,
                     rule.host_vcpus, rule.host_memory_gib, price, spot, source)


def _slice_size(name: str) -> int:
    match = _TPU_NAME.match(name)
    return int(match.group(2)) if match else 0


def build_offers(shared: Path, accelerators: list[dict[str, str]]) -> OfferBuild:
    resolve = accelerator_resolver(accelerators)
    notes: list[str] = []
    rows = [
        *aws_offers(shared, resolve, notes),
        *azure_offers(shared, resolve, notes),
        *gcp_offers(shared, resolve, notes),
    ]
    rows.sort(key=lambda r: (r["cloud"], r["region"], r["instance_type"]))
    for row in rows:
        price = parse_float(row["price_usd_per_hour"])
        spot = parse_float(row["spot_price_usd_per_hour"])
        if price is not None and spot is not None and spot >= price:
            # Design choice: a spot price at or above on demand (AWS and Azure publish such rows
            # when spot sells at the on-demand cap) is no spot discount: left empty, logged.
            notes.append(f"{row['cloud']} {row['region']} {row['instance_type']}: spot price "
                         f"{spot:g} USD/h is not below on demand {price:g}, spot left empty")
            row["spot_price_usd_per_hour"] = ""
    return OfferBuild(rows, notes)


# --------------------------------------------------------------------------------------------
# Cross-checks and output
# --------------------------------------------------------------------------------------------


def validate(
    regions: list[dict[str, str]], accelerators: list[dict[str, str]],
    offers: list[dict[str, str]],
) -> list[str]:
    """Every problem found; an empty list means the three tables agree."""
    problems: list[str] = []
    region_keys = {(r["cloud"], r["region"]) for r in regions}
    if len(region_keys) != len(regions):
        problems.append("duplicate (cloud, region) in regions")
    names = {a["name"] for a in accelerators}
    problems.extend(f"accelerator {a['name']} has unknown form factor {a['form_factor']!r}"
                    for a in accelerators if a["form_factor"] not in FORM_FACTORS)
    seen: set[tuple[str, str, str]] = set()
    for o in offers:
        key = (o["cloud"], o["region"], o["instance_type"])
        if key in seen:
            problems.append(f"duplicate offer {key}")
        seen.add(key)
        if (o["cloud"], o["region"]) not in region_keys:
            problems.append(f"offer {key} references unknown region")
        if o["accelerator"] not in names:
            problems.append(f"offer {key} references unknown accelerator {o['accelerator']}")
        if int(o["vcpus"]) <= 0 or float(o["memory_gib"]) <= 0:
            problems.append(f"offer {key} has no machine shape")
        if not o["price_usd_per_hour"] and not o["spot_price_usd_per_hour"]:
            problems.append(f"offer {key} has no price")
    for r in regions:
        if float(r["grid_intensity_avg_g_per_kwh"]) <= 0:
            problems.append(f"region {r['cloud']}:{r['region']} has no grid intensity")
        if r["provider_cfe_pct"] and r["cloud"] != "gcp":
            problems.append(f"region {r['cloud']}:{r['region']} has a provider CFE")
    return problems


def offer_problems(offers: list[dict[str, str]]) -> list[str]:
    """The installed catalog's offer invariants (spot < on demand, price band, GPU counts)."""
    rows = [
        SimpleNamespace(
            cloud=o["cloud"], region=o["region"], instance_type=o["instance_type"],
            accelerator=o["accelerator"], accelerator_count=int(o["accelerator_count"]),
            price_usd_per_hour=parse_float(o["price_usd_per_hour"]),
            spot_price_usd_per_hour=parse_float(o["spot_price_usd_per_hour"]),
            price_note=o["price_note"],
        )
        for o in offers
    ]
    checks = _catalog_module("offer_checks.py")
    problems: list[str] = checks.offer_problems(SimpleNamespace(offers=rows))
    return problems


def render_csv(columns: Iterable[str], rows: Iterable[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = tuple(columns)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return buffer.getvalue()


def build(shared: Path) -> tuple[dict[str, str], list[str]]:
    """All three files as text, and the build notes."""
    regions, region_notes = build_regions(shared)
    accelerators = build_accelerators(shared)
    offers = build_offers(shared, accelerators)
    problems = validate(regions, accelerators, offers.rows) + offer_problems(offers.rows)
    if problems:
        raise SystemExit("catalog build failed:\n  " + "\n  ".join(problems))
    files = {
        "regions.csv": render_csv(REGION_COLUMNS, regions),
        "accelerators.csv": render_csv(ACCELERATOR_COLUMNS, accelerators),
        "offers.csv": render_csv(OFFER_COLUMNS, offers.rows),
    }
    summary = [
        f"regions: {len(regions)} ("
        + ", ".join(f"{c} {n}" for c, n in sorted(Counter(r['cloud'] for r in regions).items()))
        + ")",
        f"accelerators: {len(accelerators)}",
        f"offers: {len(offers.rows)} ("
        + ", ".join(f"{c} {n}" for c, n in sorted(Counter(o['cloud'] for o in offers.rows)
                                                     .items()))
        + f"), in {len({(o['cloud'], o['region']) for o in offers.rows})} regions",
    ]
    return files, summary + region_notes + sorted(set(offers.notes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED_DATA,
                        help="folder holding the reference figures (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder to write the CSV files to (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    if not (args.shared_data / GSF_FILE).is_file():
        parser.error(f"{args.shared_data} does not hold the reference data ({GSF_FILE} missing)")
    files, notes = build(args.shared_data)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8", newline="")
    if not args.quiet:
        for line in notes:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
