"""Invariants of the catalog's instance offers: prices that make sense, GPU counts that are right.

``offer_problems(catalog)`` lists every broken invariant, each naming the offer as
``cloud:region instance_type``; an empty list means the offers pass. It is pure and imports
nothing from greenplace, so ``scripts/build_catalog.py`` (standard library only) loads this
file by path and fails the build on the same checks that ``greenplace catalog check`` runs on
an installed catalog.

Invariants:

* spot is cheaper than on demand when both prices exist;
* the on-demand price per accelerator-hour lies within ``PRICE_BAND`` (0.5x to 2.5x) of the
  median for that accelerator over every offer of it, unless the row's ``price_note`` explains
  why (an unchecked or unusual figure);
* an instance type listed in ``KNOWN_INSTANCES`` carries that accelerator and that count.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Protocol

PRICE_BAND = (0.5, 2.5)  # allowed ratio to the accelerator's median price per accelerator-hour

# Instance type -> (accelerator, count), from each cloud's instance-type documentation.
# Bare chip names are SXM modules; PCIe and NVL parts are named as such.
KNOWN_INSTANCES: dict[str, tuple[str, int]] = {
    # AWS: p3 = V100 SXM2, p4d = A100 40GB SXM4, p4de = A100 80GB SXM4, p5 = H100 SXM5,
    # p5e/p5en = H200 SXM, g4dn = T4, g6 = L4, trn1 = Trainium.
    "p3.2xlarge": ("V100", 1), "p3.8xlarge": ("V100", 4), "p3.16xlarge": ("V100", 8),
    "p3dn.24xlarge": ("V100-32GB", 8),
    "p4d.24xlarge": ("A100", 8), "p4de.24xlarge": ("A100-80GB", 8),
    "p5.4xlarge": ("H100", 1), "p5.48xlarge": ("H100", 8),
    "p5e.48xlarge": ("H200", 8), "p5en.48xlarge": ("H200", 8),
    "g4dn.xlarge": ("T4", 1), "g4dn.12xlarge": ("T4", 4),
    "g6.2xlarge": ("L4", 1), "g6.24xlarge": ("L4", 4),
    "trn1.2xlarge": ("Trainium", 1), "trn1.32xlarge": ("Trainium", 16),
    # Azure: ND v2 = V100 32GB SXM2, ND A100 v4 = A100 SXM4 (40 / 80 GB), ND H100 v5 = H100
    # SXM5, NC A100 v4 = A100 80GB PCIe, NCads H100 v5 = H100 NVL, NCasT4_v3 = T4.
    "Standard_ND40rs_v2": ("V100-32GB", 8),
    "Standard_ND96asr_v4": ("A100", 8), "Standard_ND96amsr_A100_v4": ("A100-80GB", 8),
    "Standard_ND96isr_H100_v5": ("H100", 8),
    "Standard_NC24ads_A100_v4": ("A100-80GB-PCIe", 1),
    "Standard_NC48ads_A100_v4": ("A100-80GB-PCIe", 2),
    "Standard_NC96ads_A100_v4": ("A100-80GB-PCIe", 4),
    "Standard_NC40ads_H100_v5": ("H100-NVL", 1), "Standard_NC80adis_H100_v5": ("H100-NVL", 2),
    "Standard_NC4as_T4_v3": ("T4", 1), "Standard_NC8as_T4_v3": ("T4", 1),
    "Standard_NC16as_T4_v3": ("T4", 1), "Standard_NC64as_T4_v3": ("T4", 4),
    # GCP: a2-highgpu = A100 40GB SXM4, a2-ultragpu = A100 80GB SXM4, a3-highgpu/megagpu =
    # H100 SXM5, a3-ultragpu = H200 SXM, g2 = L4; TPU slices count chips.
    "a2-highgpu-1g": ("A100", 1), "a2-highgpu-8g": ("A100", 8),
    "a2-ultragpu-1g": ("A100-80GB", 1), "a2-ultragpu-8g": ("A100-80GB", 8),
    "a3-highgpu-1g": ("H100", 1), "a3-highgpu-8g": ("H100", 8), "a3-megagpu-8g": ("H100", 8),
    "a3-ultragpu-8g": ("H200", 8), "g2-standard-4": ("L4", 1),
    "v5litepod-8": ("TPU-v5e", 8), "v5p-8": ("TPU-v5p", 4),
}


class OfferRow(Protocol):
    """The offer fields the checks read (``greenplace.scheduler.catalog.Offer`` has them)."""

    @property
    def cloud(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def instance_type(self) -> str: ...
    @property
    def accelerator(self) -> str: ...
    @property
    def accelerator_count(self) -> int: ...
    @property
    def price_usd_per_hour(self) -> float | None: ...
    @property
    def spot_price_usd_per_hour(self) -> float | None: ...
    @property
    def price_note(self) -> str: ...


class HasOffers(Protocol):
    """A catalog, or anything else holding offers."""

    @property
    def offers(self) -> Sequence[OfferRow]: ...


def _label(o: OfferRow) -> str:
    return f"{o.cloud}:{o.region} {o.instance_type}"


def _per_accelerator_hour(o: OfferRow) -> float | None:
    return None if o.price_usd_per_hour is None else o.price_usd_per_hour / o.accelerator_count


def _medians(offers: Iterable[OfferRow]) -> dict[str, float]:
    prices: dict[str, list[float]] = {}
    for o in offers:
        per_hour = _per_accelerator_hour(o)
        if per_hour is not None:
            prices.setdefault(o.accelerator, []).append(per_hour)
    return {name: statistics.median(values) for name, values in prices.items()}


def offer_problems(catalog: HasOffers) -> list[str]:
    """Every broken offer invariant of ``catalog``, one sentence each naming the offer.

    Returns:
        Problems in catalog order (spot, band, shape for each offer); empty when all pass.
    """
    offers = catalog.offers
    medians = _medians(offers)
    low, high = PRICE_BAND
    problems: list[str] = []
    for o in offers:
        price, spot = o.price_usd_per_hour, o.spot_price_usd_per_hour
        if price is not None and spot is not None and spot >= price:
            problems.append(f"{_label(o)}: spot price {spot:g} USD/h is not below on-demand "
                            f"{price:g} USD/h")
        per_hour = _per_accelerator_hour(o)
        if per_hour is not None and not o.price_note:
            ratio = per_hour / medians[o.accelerator]
            if not low <= ratio <= high:
                problems.append(
                    f"{_label(o)}: {per_hour:.2f} USD per {o.accelerator}-hour is {ratio:.2f}x "
                    f"the median {medians[o.accelerator]:.2f} (allowed {low}x-{high}x without a "
                    "price_note)")
        expected = KNOWN_INSTANCES.get(o.instance_type)
        if expected is not None and expected != (o.accelerator, o.accelerator_count):
            problems.append(f"{_label(o)}: carries {o.accelerator_count} x {o.accelerator}, "
                            f"the instance type has {expected[1]} x {expected[0]}")
    return problems
