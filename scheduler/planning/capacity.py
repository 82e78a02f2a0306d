"""Capacity pools: how much of a (cloud, region) a batch plan may use at once, per hour.

A pool is one limit on concurrent use, the shape every source of capacity shares:

* a capacity file row (``greenplace schema capacity``): "16 H100 in aws:us-east-1", counted
  in accelerators;
* an account quota read from the cloud: AWS Service Quotas "Running On-Demand P instances"
  (vCPUs of the P families), GCP's regional ``NVIDIA_H100_GPUS`` (GPUs; ``PREEMPTIBLE_...``
  for spot), Azure's usage limit per VM family (vCPUs of e.g. ``standardNDSH100v5Family``).

An offer draws on every pool that matches it: ``units_per_instance(offer, spot=...)`` is what
one running instance of it uses (accelerators or vCPUs), 0 when the pool does not cover it.
A plan is feasible when, in every hour, the instances running in each pool use at most its
limit for that hour.

Design choice: one generic shape (cloud, region, unit, what it matches, spot or not, limit per
hour) instead of one type per source, so the planner has one kind of capacity constraint and
a quota and a capacity file row bind the same way; each pool names its ``source`` so an
unschedulable job can say which one bound.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from enum import StrEnum

from greenplace.scheduler.catalog.model import Offer, normalize_name


class Unit(StrEnum):
    """What a pool counts."""

    ACCELERATORS = "accelerators"
    VCPUS = "vcpus"


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityPool:
    """At most ``limit`` units in use at once in (cloud, region), for the offers it matches."""

    cloud: str
    region: str
    unit: Unit
    # Canonical accelerator names (``H100``) and/or instance-type globs (``p5.*``,
    # ``Standard_ND96*``); an offer matches when its accelerator or its type matches one.
    accelerators: tuple[str, ...] = ()
    instance_types: tuple[str, ...] = ()
    spot: bool | None = None  # None: spot and on-demand share it; True / False: only that one
    limit: int  # units at once, in every hour without an entry in ``hourly_limits``
    # Per-hour limits from the plan's start (hour 0 = the first hour); hours past the end of
    # the tuple use ``limit``. Empty: ``limit`` in every hour.
    hourly_limits: tuple[int, ...] = ()
    source: str  # e.g. "capacity.yaml line 4", "AWS Service Quotas L-417A185B"

    def __post_init__(self) -> None:
        if self.limit < 0 or any(h < 0 for h in self.hourly_limits):
            raise ValueError(f"capacity pool {self.key}: a limit below 0")
        if not (self.accelerators or self.instance_types):
            raise ValueError(f"capacity pool {self.key}: matches no accelerator or type")

    @property
    def key(self) -> str:
        """``cloud:region`` and what it counts, for messages."""
        what = ", ".join((*self.accelerators, *self.instance_types))
        spot = "" if self.spot is None else (" spot" if self.spot else " on-demand")
        return f"{self.cloud}:{self.region} {what}{spot} ({self.unit.value})"

    def limit_at(self, hour: int) -> int:
        """The limit in hour ``hour`` of the plan (0-based)."""
        return self.hourly_limits[hour] if hour < len(self.hourly_limits) else self.limit

    def matches(self, offer: Offer, *, spot: bool) -> bool:
        """Whether an instance of ``offer`` (spot or not) draws on this pool."""
        if (offer.cloud, offer.region) != (self.cloud, self.region):
            return False
        if self.spot is not None and self.spot != spot:
            return False
        accelerator = normalize_name(offer.accelerator)
        return any(normalize_name(a) == accelerator for a in self.accelerators) or any(
            fnmatch.fnmatchcase(offer.instance_type, g) for g in self.instance_types)

    def units_per_instance(self, offer: Offer, *, spot: bool) -> int:
        """What one running instance of ``offer`` uses of this pool (0 if it does not match)."""
        if not self.matches(offer, spot=spot):
            return 0
        return offer.accelerator_count if self.unit is Unit.ACCELERATORS else offer.vcpus


__all__ = ["CapacityPool", "Unit"]
