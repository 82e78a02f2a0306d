"""The embedded catalog offers no Azure VM size that Microsoft retired (scripts/build_catalog.py
keeps the list, with its sources, in AZURE_RETIRED)."""

from __future__ import annotations

import csv
import runpy
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def retired_sizes() -> dict[str, str]:
    """AZURE_RETIRED of the build script (run as a module, not as __main__)."""
    found: dict[str, str] = runpy.run_path(str(REPO_ROOT / "scripts" / "build_catalog.py"),
                                           run_name="build_catalog")["AZURE_RETIRED"]
    return found


def test_no_retired_azure_size_is_offered() -> None:
    retired = retired_sizes()
    with (REPO_ROOT / "scheduler" / "catalog" / "data" / "offers.csv").open() as handle:
        offered = {row["instance_type"] for row in csv.DictReader(handle)
                   if row["cloud"] == "azure"}
    assert offered, "the catalog holds no Azure offer at all"
    assert not offered & set(retired)


def test_the_retirements_announced_before_december_2026_are_listed() -> None:
    retired = retired_sizes()
    # NVv3 / NVv4: announced 2026-04-15, retired 2026-09-30; NCv3: retired 2025-09-30.
    for size in ("Standard_NV12s_v3", "Standard_NV4as_v4", "Standard_NC24rs_v3",
                 "Standard_NC6", "Standard_NV6"):
        assert size in retired
    # Still provisioned (not announced): kept in the catalog.
    for size in ("Standard_ND40rs_v2", "Standard_NC4as_T4_v3", "Standard_ND96amsr_A100_v4"):
        assert size not in retired
