"""Azure VM sizes Microsoft retired: never offered, whatever price row still names them.

One table for the catalog build (``scripts/build_catalog.py`` loads this file by path, as it
does ``offer_checks.py``: it imports nothing from greenplace) and for the live price refresh
(``refresh/azure.py``), so a size dropped from the embedded catalog is never brought back by a
stale row of the Retail Prices API.

Sizes retired by Microsoft (or announced for a retirement date before 2026-12-01) are listed
whatever their GPU: a size Azure no longer provisions must not be offered even once its
accelerator is in the catalog.
Sources (checked 2026-12-01):
- "Retired Azure VM size series", learn.microsoft.com/azure/virtual-machines/sizes/retirement/
  retired-sizes-list (MicrosoftDocs/azure-compute-docs): NCv3 and NCv3-NC24rs retired
  2025-09-30; NVv3 and NVv4 announced 2026-04-15 (azure.microsoft.com/updates?id=516070),
  retired 2026-09-30. NDv2, NC T4 v3, NDm A100 v4 (and ND A100 v4, NC A100 v4, the H100
  series) are neither retired nor announced there, so they stay.
- The N-series migration notices (MicrosoftDocs/azure-docs articles/virtual-machines/
  nc-series-retirement, ncv2-series-retirement, nv-series-retirement, nd-series-retirement):
  NC (K80), NCv2 (P100), ND (P40) and NV / NV_Promo (M60) retired 2023-09-06.
"""

from __future__ import annotations

# (series, retirement date, sizes)
_AZURE_RETIREMENTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("NC series (K80)", "2023-09-06", (
        "Standard_NC6", "Standard_NC12", "Standard_NC24", "Standard_NC24r",
        "Standard_NC6_Promo", "Standard_NC12_Promo", "Standard_NC24_Promo",
        "Standard_NC24r_Promo")),
    ("NCv2 series (P100)", "2023-09-06", (
        "Standard_NC6s_v2", "Standard_NC12s_v2", "Standard_NC24s_v2", "Standard_NC24rs_v2")),
    ("ND series (P40)", "2023-09-06", (
        "Standard_ND6s", "Standard_ND12s", "Standard_ND24s", "Standard_ND24rs")),
    ("NV series (M60)", "2023-09-06", (
        "Standard_NV6", "Standard_NV12", "Standard_NV24", "Standard_NV6_Promo",
        "Standard_NV12_Promo", "Standard_NV24_Promo")),
    ("NCv3 series", "2025-09-30", (
        "Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3", "Standard_NC24rs_v3")),
    ("NVv3 series", "2026-09-30", (
        "Standard_NV12s_v3", "Standard_NV24s_v3", "Standard_NV48s_v3")),
    ("NVv4 series", "2026-09-30", (
        "Standard_NV4as_v4", "Standard_NV8as_v4", "Standard_NV16as_v4", "Standard_NV32as_v4")),
)
AZURE_RETIRED: dict[str, str] = {
    size: f"{series} retired by Azure on {date}"
    for series, date, sizes in _AZURE_RETIREMENTS for size in sizes
}
