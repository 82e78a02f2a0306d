"""The pure placement pipeline and the PlacementDecision it produces."""

from scheduler.placement.arrays import OfferArrays, RegionSignals
from scheduler.placement.decision import PlacementDecision
from scheduler.placement.filters import FILTERS
from scheduler.placement.pipeline import Placer

__all__ = ["FILTERS", "OfferArrays", "PlacementDecision", "Placer", "RegionSignals"]
