"""The pure placement pipeline and the PlacementDecision it produces."""

from greenplace.scheduler.placement.arrays import OfferArrays, RegionSignals
from greenplace.scheduler.placement.decision import PlacementDecision
from greenplace.scheduler.placement.filters import FILTERS
from greenplace.scheduler.placement.pipeline import Placer

__all__ = ["FILTERS", "OfferArrays", "PlacementDecision", "Placer", "RegionSignals"]
