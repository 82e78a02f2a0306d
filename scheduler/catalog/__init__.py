"""The embedded catalog: regions, accelerators and instance offers, with sources."""

from greenplace.scheduler.catalog.loader import Catalog, load_catalog, load_catalog_from
from greenplace.scheduler.catalog.model import Accelerator, Offer, Region, normalize_name

__all__ = [
    "Accelerator", "Catalog", "Offer", "Region", "load_catalog", "load_catalog_from",
    "normalize_name",
]
