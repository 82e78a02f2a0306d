"""Frozen row types of the embedded catalog: regions, accelerators, instance offers.

Every row carries ``source`` and ``as_of`` so each figure can be traced to the
public document it was re-keyed from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def normalize_name(name: str) -> str:
    """Fold a name for matching: lower case, no spaces, dashes, dots or underscores.

    ``TPU v3``, ``tpu-v3`` and ``TPUv3`` all fold to ``tpuv3``.
    """
    return re.sub(r"[\s\-_./]+", "", name.strip().lower())


@dataclass(frozen=True, slots=True, kw_only=True)
class Region:
    """One cloud region and its carbon, location and efficiency figures.

    Design choice: the grid figures (average intensity, grid CFE) come from one source on one
    basis for every cloud, by the region's Electricity Maps zone, so regions in the same zone
    carry the same figures whatever the cloud. The provider's own CFE (Google's hourly-matched
    CFE, which counts its clean-energy contracts) is a different signal, kept apart.
    ``year`` and ``as_of`` date the grid figures; ``source`` names every figure's origin.
    """

    cloud: str
    region: str
    location: str
    country: str  # ISO 3166-1 alpha-2
    continent: str  # europe, north-america, south-america, asia, oceania, africa, middle-east
    latitude: float
    longitude: float
    em_zone: str  # Electricity Maps zone id ("" when unknown)
    watttime_region: str  # WattTime region id ("" when unknown)
    grid_intensity_avg_g_per_kwh: float  # Electricity Maps yearly average of em_zone
    intensity_basis: str  # emission basis of the average: "lifecycle" for every cloud
    grid_cfe_pct: float  # carbon-free % of em_zone's grid (Electricity Maps, same year)
    provider_cfe_pct: float | None  # provider's hourly-matched CFE % (GCP only), else None
    grid_intensity_marginal_g_per_kwh: float | None  # WattTime marginal (via GSF), None if unknown
    pue: float
    pue_basis: str  # "region" or "fleet"
    year: int
    source: str
    as_of: str

    @property
    def key(self) -> str:
        """``cloud:region``, the id users type."""
        return f"{self.cloud}:{self.region}"


# Physical form of an accelerator: NVIDIA SXM module, PCIe card, NVL (PCIe cards bridged in
# pairs), OCP accelerator module, Google TPU chip, or a cloud's own board (Trainium).
FORM_FACTORS = ("SXM", "PCIe", "NVL", "OAM", "TPU", "custom")


@dataclass(frozen=True, slots=True, kw_only=True)
class Accelerator:
    """One accelerator model in one form factor, with its power and peak throughput.

    Design choice: a bare chip name (``A100-80GB``, ``V100``, ``H100``) is the SXM module, as
    the clouds' multi-GPU training machines carry; other form factors are their own entries
    (``A100-80GB-PCIe``, ``V100-PCIe``, ``H100-NVL``) with their own TDP and peak, so a job
    asking for ``A100-80GB`` is never scored with a 300 W card's figures as if it were 400 W.
    A job that accepts either lists both as alternatives.
    """

    name: str  # canonical name, e.g. "A100-80GB", "A100-80GB-PCIe", "TPU-v5e"
    aliases: tuple[str, ...]
    vendor: str
    form_factor: str  # one of FORM_FACTORS: the same chip in two forms is two accelerators
    tdp_w: float
    peak_dense_tflops: float  # dense BF16 where the chip has it, else FP16
    memory_gib: float
    source: str
    as_of: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """One purchasable instance type in one region, with its accelerators and prices.

    For GCP, host VM and accelerator prices are already summed into one figure.
    """

    cloud: str
    region: str
    instance_type: str
    accelerator: str  # canonical Accelerator.name
    accelerator_count: int
    vcpus: int
    memory_gib: float
    price_usd_per_hour: float | None  # on-demand; None when not sold on demand
    spot_price_usd_per_hour: float | None
    price_note: str  # why a price is unusual or unchecked ("" when nothing to say)
    source: str
    as_of: str
