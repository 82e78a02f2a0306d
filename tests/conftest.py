"""Shared fixtures: a small hand-made catalog whose numbers tests can check by hand."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest

from greenplace.scheduler.catalog import Accelerator, Catalog, Offer, Region

NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_region(cloud: str, region: str, **kw: object) -> Region:
    fields: dict[str, object] = dict(
        cloud=cloud, region=region, location=region, country="US",
        continent="north-america", latitude=0.0, longitude=0.0, em_zone="", watttime_region="",
        grid_intensity_avg_g_per_kwh=400.0, intensity_basis="lifecycle", grid_cfe_pct=0.0,
        provider_cfe_pct=None, grid_intensity_marginal_g_per_kwh=None, pue=1.1,
        pue_basis="fleet", year=2025, source="test", as_of="2025-12-31",
    )
    fields.update(kw)
    return Region(**fields)  # type: ignore[arg-type]


def make_offer(cloud: str, region: str, instance_type: str, accelerator: str, count: int,
               price: float | None, spot: float | None = None) -> Offer:
    return Offer(cloud=cloud, region=region, instance_type=instance_type,
                 accelerator=accelerator, accelerator_count=count, vcpus=8 * count,
                 memory_gib=64.0 * count, price_usd_per_hour=price,
                 spot_price_usd_per_hour=spot, price_note="", source="test",
                 as_of="2025-01-01")


ACCELERATORS = (
    Accelerator(name="A100", aliases=("A100-40GB",), vendor="NVIDIA", form_factor="SXM",
                tdp_w=400.0, peak_dense_tflops=312.0, memory_gib=40.0, source="test",
                as_of="2024-01-01"),
    Accelerator(name="H100", aliases=("H100-80GB",), vendor="NVIDIA", form_factor="SXM",
                tdp_w=700.0, peak_dense_tflops=989.0, memory_gib=80.0, source="test",
                as_of="2024-01-01"),
    Accelerator(name="TPU-v3", aliases=(), vendor="Google", form_factor="TPU", tdp_w=450.0,
                peak_dense_tflops=123.0, memory_gib=32.0, source="test", as_of="2024-01-01"),
)


def pytest_configure(config: pytest.Config) -> None:
    """With GREENPLACE_TESTS_REQUIRE_REDIS=1 (.ci/run sets it), a missing redis-server is an
    error, not a quiet skip of every test that needs one."""
    if os.environ.get("GREENPLACE_TESTS_REQUIRE_REDIS") == "1" and not shutil.which(
            "redis-server"):
        raise pytest.UsageError(
            "GREENPLACE_TESTS_REQUIRE_REDIS=1 but no redis-server is on PATH, so the Redis and "
            "integration tests would all be skipped. To fix: install redis-server (e.g. "
            "`apt-get install redis-server`) or unset GREENPLACE_TESTS_REQUIRE_REDIS.")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the integration tests first, keeping the collection order otherwise.

    Design choice: scripts/check runs the suite on pytest-xdist workers that each take the
    next test when they finish one. The integration tests take seconds to half a minute
    each, the rest milliseconds; started first, the long ones spread over the workers and
    the short ones fill the gaps, instead of one 30 s test running alone at the end. Every
    test is independent (own Redis, own temp dir), so the order changes no outcome.
    """
    integration = Path(__file__).parent / "integration"
    items.sort(key=lambda item: integration not in item.path.parents)


@pytest.fixture(scope="session", autouse=True)
def _no_refreshed_prices_of_the_user(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test (and every process it starts) places on the embedded catalog unless it
    writes refreshed prices itself: the user's own (``~/.local/share/greenplace/catalog/
    prices.json``, ``GREENPLACE_CATALOG_PRICES``) are out of reach."""
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    os.environ.pop("GREENPLACE_CATALOG_PRICES", None)


@pytest.fixture(scope="session", autouse=True)
def _no_cloud_account_of_the_user(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the developer's own cloud accounts: commands that use whatever
    credentials they find (`greenplace plan`'s account quotas, the daily price refresh) find
    none unless a test points them at a fake."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "AZURE_")) or name in ("GOOGLE_APPLICATION_CREDENTIALS",
                                                           "GOOGLE_CLOUD_PROJECT"):
            os.environ.pop(name)
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(
        tmp_path_factory.mktemp("no-aws") / "none")
    os.environ["CLOUDSDK_CONFIG"] = str(tmp_path_factory.mktemp("no-gcloud"))


@pytest.fixture
def small_catalog() -> Catalog:
    """Four regions with known figures and a few offers.

    - gcp:europe-north1  (FI, Europe) avg 100 g/kWh, grid CFE 90 %, provider CFE 98 %, PUE 1.1
    - gcp:us-central1    (US)         avg 400 g/kWh, grid CFE 95 %, provider CFE 87 %, PUE 1.1
    - aws:us-east-1      (US)         avg 380 g/kWh, marginal 600, grid CFE 0 %, PUE 1.15
    - azure:westeurope   (NL, Europe) avg 300 g/kWh, grid CFE 0 %, PUE 1.2
    (aws and azure publish no provider CFE.)
    """
    regions = (
        make_region("gcp", "europe-north1", country="FI", continent="europe",
                    grid_intensity_avg_g_per_kwh=100.0, grid_cfe_pct=90.0,
                    provider_cfe_pct=98.0),
        make_region("gcp", "us-central1", grid_intensity_avg_g_per_kwh=400.0,
                    grid_cfe_pct=95.0, provider_cfe_pct=87.0),
        make_region("aws", "us-east-1", grid_intensity_avg_g_per_kwh=380.0,
                    grid_intensity_marginal_g_per_kwh=600.0, pue=1.15),
        make_region("azure", "westeurope", country="NL", continent="europe",
                    grid_intensity_avg_g_per_kwh=300.0, pue=1.2),
    )
    offers = (
        make_offer("gcp", "europe-north1", "a2-highgpu-8g", "A100", 8, 32.0, 12.0),
        make_offer("gcp", "us-central1", "a2-highgpu-8g", "A100", 8, 29.0, 10.0),
        make_offer("gcp", "us-central1", "a3-highgpu-8g", "H100", 8, 88.0, None),
        make_offer("aws", "us-east-1", "p4d.24xlarge", "A100", 8, 22.0, 9.0),
        make_offer("aws", "us-east-1", "p5.48xlarge", "H100", 8, 98.0, 40.0),
        make_offer("azure", "westeurope", "Standard_ND96asr_v4", "A100", 8, 27.0, None),
        make_offer("gcp", "us-central1", "a2-highgpu-1g", "A100", 1, 3.7, 1.2),
    )
    return Catalog.build(regions, ACCELERATORS, offers)
