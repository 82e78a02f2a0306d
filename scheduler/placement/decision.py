"""PlacementDecision: the one object that explains a placement.

It holds every candidate of one job as columns (raw scores with units,
normalised scores, total score, rejection code), the ranking of the feasible
ones and the price-only baseline. The dry-run table, ``--explain``, the job
record and the logs all read this object; rows are materialised only on demand.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from greenplace.policies.model import CarbonSignal, Policy
from greenplace.providers.base import Placement
from greenplace.scheduler import estimate
from greenplace.scheduler.catalog import Offer, Region
from greenplace.scheduler.placement.arrays import OfferArrays, RegionSignals
from greenplace.scheduler.placement.filters import FEASIBLE, FILTERS, ReasonContext, reason_text

# Digits each candidate figure is rounded to in every view (summary, candidates).
DIGITS = {"price_usd_per_hour": 4, "runtime_h": 4, "energy_kwh": 4, "accelerator_energy_kwh": 4,
          "host_energy_kwh": 4, "intensity_g_per_kwh": 4, "co2e_kg": 4, "ranked_carbon": 4,
          "cost_usd": 2, "cfe_pct": 1, "norm_carbon": 4, "norm_cost": 4, "norm_time": 4,
          "score": 4}
# A candidate's raw figures, then its normalised scores (the order of ``candidates``' keys).
_CANDIDATE_FIGURES = ("price_usd_per_hour", "runtime_h", "energy_kwh", "accelerator_energy_kwh",
                      "host_energy_kwh", "intensity_g_per_kwh", "co2e_kg", "ranked_carbon",
                      "cost_usd", "cfe_pct")
_SCORE_FIGURES = ("norm_carbon", "norm_cost", "norm_time", "score")


def price_age_days(offer: Offer, now: dt.datetime) -> int | None:
    """Whole days from ``offer``'s price ``as_of`` to ``now`` (None when it is no date)."""
    try:
        return (now.date() - dt.date.fromisoformat(offer.as_of)).days
    except ValueError:
        return None


def stale_price_note(offer: Offer, *, age_days: int | None, max_age_days: float | None) -> str:
    """The note of a choice priced from figures older than ``max_age_days`` ("" if not)."""
    if age_days is None or not max_age_days or age_days <= max_age_days:
        return ""
    return (f"the price of {offer.cloud}:{offer.region} {offer.instance_type} is {age_days} "
            f"days old (as_of {offer.as_of}; GREENPLACE_PRICE_MAX_AGE_DAYS="
            f"{max_age_days:g}): its cost may be off. Run `greenplace catalog refresh --cloud "
            f"{offer.cloud}`.")


def data_notes(signal: CarbonSignal, *, arrays: OfferArrays, region_index: np.ndarray,
               feasible: np.ndarray, cfe_pct: np.ndarray) -> tuple[str, ...]:
    """What the candidates' data lacks and how it was scored (computed once per shape)."""
    if len(region_index) == 0:
        return ("no offer in the catalog carries the requested accelerators",)
    missing_mask = feasible & np.isnan(cfe_pct)
    if signal is not CarbonSignal.CFE or not missing_mask.any():
        return ()
    missing = sorted({arrays.regions[r].key for r in region_index[missing_mask].tolist()})
    return (f"CFE % is not published for {len(missing)} feasible region(s) "
            f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); they are "
            "ranked as 0 % CFE (all their energy uncovered), never as green.",)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementDecision:
    """Every candidate of one job, scored and ranked; ``ranking[0]`` is the choice."""

    job: str
    policy: Policy
    spot: bool
    power_basis: str  # "measured avg_power_w" or "TDP x utilisation 0.80"
    deadline: str | None
    arrays: OfferArrays = field(repr=False)
    signals: RegionSignals = field(repr=False)
    offer_index: np.ndarray  # candidate -> offer position in ``arrays``
    region_index: np.ndarray  # candidate -> region position in ``arrays`` / ``signals``
    requested_count: np.ndarray
    rejected_by: np.ndarray  # filter code per candidate, 0 = feasible
    price_usd_per_hour: np.ndarray
    runtime_h: np.ndarray
    energy_kwh: np.ndarray  # accelerators + host, PUE included
    accelerator_energy_kwh: np.ndarray
    host_energy_kwh: np.ndarray  # modelled (estimate.HOST_POWER_BASIS)
    intensity_g_per_kwh: np.ndarray  # the grid average (location-based accounting)
    co2e_kg: np.ndarray  # energy_kwh x grid average / 1000, whatever the policy's signal
    ranked_carbon: np.ndarray  # what the signal ranks by, in ``ranked_by``'s unit
    cost_usd: np.ndarray
    cfe_pct: np.ndarray
    norm_carbon: np.ndarray  # 0..1, 1 = best of the feasible set; NaN when rejected
    norm_cost: np.ndarray
    norm_time: np.ndarray
    score: np.ndarray
    ranking: np.ndarray  # candidate positions of the feasible ones, best first
    baseline_ranking: np.ndarray  # same, under the price-only objective
    extra_notes: tuple[str, ...] = field(default=())
    data_notes: tuple[str, ...] = field(default=())  # from ``data_notes()``
    # When the decision was made, and the price age (GREENPLACE_PRICE_MAX_AGE_DAYS) past which
    # the chosen offer's price gets a note (None: never); see ``stale_price_note``.
    decided_at: dt.datetime | None = None
    price_max_age_days: float | None = None
    # Views that do not depend on the job's hours, computed once for all the decisions of
    # one shape (``Placer.place_each`` hands them one dict); a job with a deadline has its own.
    shape_memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # When the job should start (ISO 8601, UTC); None = now. Set by temporal shifting
    # when a forecast shows a greener window before the deadline (job becomes DEFERRED).
    start_at: str | None = None

    @property
    def offers(self) -> tuple[Offer, ...]:
        """The candidate offers, in candidate order."""
        return tuple(self.arrays.offers[k] for k in self.offer_index.tolist())

    @property
    def regions(self) -> tuple[Region, ...]:
        """The region of each candidate."""
        return tuple(self.arrays.regions[r] for r in self.region_index.tolist())

    @property
    def notes(self) -> tuple[str, ...]:
        """What a reader must know to trust the figures (missing data and how it was scored)."""
        stale = self.stale_price_note
        return self.extra_notes + self.data_notes + ((stale,) if stale else ())

    def _price_facts(self) -> tuple[int | None, str]:
        """(price age in days, stale-price note) of the current choice.

        Design choice: memoised in ``shape_memo`` by offer and day, since the jobs of one
        shape mostly share their choice: a 100,000-job dry run reads them once per job."""
        chosen = self.chosen
        if chosen is None or self.decided_at is None:
            return None, ""
        offer_pos = self.offer_index.item(chosen)
        key = f"price {offer_pos} {self.decided_at.date()} {self.price_max_age_days}"
        facts: tuple[int | None, str] | None = self.shape_memo.get(key)
        if facts is None:
            offer = self.arrays.offers[offer_pos]
            age = price_age_days(offer, self.decided_at)
            facts = self.shape_memo[key] = (age, stale_price_note(
                offer, age_days=age, max_age_days=self.price_max_age_days))
        return facts

    @property
    def price_age_days(self) -> int | None:
        """Days from the chosen offer's price ``as_of`` to the decision (None: unplaced)."""
        return self._price_facts()[0]

    @property
    def stale_price_note(self) -> str:
        """The note of a choice whose price is older than ``price_max_age_days`` ("" if not).

        A property of the current choice, so a choice that temporal shifting moved first
        is the one described."""
        return self._price_facts()[1]

    @property
    def carbon_signal(self) -> CarbonSignal:
        return self.policy.carbon_signal

    @property
    def ranked_by(self) -> estimate.RankedQuantity:
        """The quantity (and unit) ``ranked_carbon`` holds for this policy's signal."""
        return estimate.RANKED_QUANTITY[self.policy.carbon_signal]

    @property
    def placed(self) -> bool:
        return len(self.ranking) > 0

    @property
    def chosen(self) -> int | None:
        """Candidate position of the choice, or None when unschedulable."""
        return int(self.ranking[0]) if self.placed else None

    @property
    def baseline(self) -> int | None:
        """Candidate position a price-only scheduler would pick under the same constraints."""
        return int(self.baseline_ranking[0]) if len(self.baseline_ranking) else None

    def placements(self, limit: int | None = None) -> list[Placement]:
        """The feasible candidates as launch targets, best first (the failover order);
        the best ``limit`` of them when given."""
        placements = []
        for i in self.ranking[:limit].tolist():
            o = self.arrays.offers[self.offer_index[i]]
            placements.append(Placement(
                cloud=o.cloud, region=o.region, instance_type=o.instance_type,
                accelerator=o.accelerator, accelerator_count=o.accelerator_count,
                spot=self.spot, price_usd_per_hour=float(self.price_usd_per_hour[i]),
            ))
        return placements

    def reason(self, i: int) -> str | None:
        """Why candidate ``i`` was rejected, or None when it is feasible."""
        code = int(self.rejected_by[i])
        if code == FEASIBLE:
            return None
        return reason_text(code, ReasonContext(
            offer=self.arrays.offers[self.offer_index[i]],
            region=self.arrays.regions[self.region_index[i]], policy=self.policy,
            requested_count=int(self.requested_count[i]), spot=self.spot,
            price_usd_per_hour=float(self.price_usd_per_hour[i]),
            runtime_h=float(self.runtime_h[i]), cfe_pct=float(self.cfe_pct[i]),
            deadline=self.deadline,
        ))

    def figure(self, name: str, i: int) -> float | None:
        """Figure ``name`` (a key of ``DIGITS``) of candidate ``i``, rounded; None if unknown."""
        value: float = getattr(self, name).item(i)
        return None if value != value else round(value, DIGITS[name])

    def candidates(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Candidates ``indices`` as plain dicts (JSON-ready), raw and normalised scores
        included, in the order given.

        Design choice: each figure is read as one column for all of them (one NumPy
        gather, then ``tolist``) rather than value by value: the worker builds 24 of
        these for every job it places (``candidate_table``).
        """
        picked = np.asarray(indices, dtype=np.intp)
        columns = {name: [None if v != v else round(v, DIGITS[name])
                          for v in getattr(self, name)[picked].tolist()]
                   for name in (*_CANDIDATE_FIGURES, *_SCORE_FIGURES)}
        out = []
        for k, i in enumerate(picked.tolist()):
            o = self.arrays.offers[self.offer_index[i]]
            region = int(self.region_index[i])
            code = int(self.rejected_by[i])
            out.append({
                "cloud": o.cloud,
                "region": o.region,
                "instance_type": o.instance_type,
                "accelerator": o.accelerator,
                "accelerator_count": o.accelerator_count,
                "spot": self.spot,
                **{name: columns[name][k] for name in _CANDIDATE_FIGURES},
                "price_as_of": o.as_of,
                "signal_source": self.signals.source[region],
                "signal_observed_at": self.signals.observed_at[region],
                **{name: columns[name][k] for name in _SCORE_FIGURES},
                "rejected_by": None if code == FEASIBLE else {
                    "filter": FILTERS[code], "reason": self.reason(i)},
            })
        return out

    def candidate_table(self, *, feasible: int = 12, rejected: int = 12) -> list[dict[str, Any]]:
        """The best ``feasible`` candidates, then the first ``rejected`` ruled-out ones.

        Design choice: what a job record keeps to explain its decision later (the job
        page). Every candidate would be hundreds per job; the leaders and a sample of the
        rejections (``rejections()`` names every distinct reason) explain the choice.
        """
        out = np.flatnonzero(self.rejected_by != FEASIBLE)[:rejected].tolist()
        return self.candidates([*self.ranking[:feasible].tolist(), *out])

    def rejections(self) -> list[dict[str, str]]:
        """Every distinct (region, filter, reason) that ruled a candidate out."""
        reasons = self.shape_memo.get("rejections")
        if reasons is None:
            seen: dict[tuple[str, str, str], None] = {}
            for i in np.flatnonzero(self.rejected_by != FEASIBLE).tolist():
                region = self.arrays.regions[self.region_index[i]].key
                seen[(region, FILTERS[int(self.rejected_by[i])], self.reason(i) or "")] = None
            reasons = self.shape_memo["rejections"] = tuple(seen)
        return [{"region": r, "filter": f, "reason": why} for r, f, why in reasons]

    def summary(self, *, explain: bool = False) -> dict[str, Any]:
        """The dry-run / job-record view: choice, baseline, savings; all candidates if asked."""
        out: dict[str, Any] = {
            "job": self.job,
            "policy": self.policy.name,
            "carbon_signal": str(self.carbon_signal),
            "ranked_by": self.ranked_by.as_dict(),
            "power_basis": self.power_basis,
            "host_power_basis": estimate.HOST_POWER_BASIS,
            "status": "placed" if self.placed else "unschedulable",
            "start_at": self.start_at,
        }
        chosen, base = self.chosen, self.baseline
        if chosen is None or base is None:
            out["reasons"] = self.rejections()
        else:
            o = self.arrays.offers[self.offer_index.item(chosen)]
            out.update(cloud=o.cloud, region=o.region, instance_type=o.instance_type,
                       accelerator=o.accelerator, accelerator_count=o.accelerator_count,
                       spot=self.spot)
            out.update((name, self.figure(name, chosen)) for name in (
                "price_usd_per_hour", "runtime_h", "energy_kwh", "accelerator_energy_kwh",
                "host_energy_kwh", "intensity_g_per_kwh", "co2e_kg", "ranked_carbon",
                "cost_usd", "cfe_pct"))
            out["signal_source"] = self.signals.source[self.region_index.item(chosen)]
            out.update(price_as_of=o.as_of, price_age_days=self.price_age_days,
                       price_source=o.source)
            out["score"] = self.figure("score", chosen)
            b = self.arrays.offers[self.offer_index.item(base)]
            out["baseline"] = {
                "cloud": b.cloud, "region": b.region, "instance_type": b.instance_type,
                "accelerator": b.accelerator, "accelerator_count": b.accelerator_count,
                "energy_kwh": self.figure("energy_kwh", base),
                "intensity_g_per_kwh": self.figure("intensity_g_per_kwh", base),
                "co2e_kg": self.figure("co2e_kg", base),
                "ranked_carbon": self.figure("ranked_carbon", base),
                "cost_usd": self.figure("cost_usd", base), "cfe_pct": self.figure("cfe_pct", base)}
            base_co2e: float = self.co2e_kg.item(base)
            saved = base_co2e - self.co2e_kg.item(chosen)
            out["savings_co2e_kg"] = round(saved, 4)
            out["savings_pct"] = round(100.0 * saved / base_co2e, 2) if base_co2e > 0 else 0.0
            out["feasible_candidates"] = len(self.ranking)
        out["notes"] = list(self.notes)
        if explain:
            rejected = np.flatnonzero(self.rejected_by != FEASIBLE)
            order = [*self.ranking.tolist(), *rejected.tolist()]
            out["candidates"] = self.candidates(order)
        return out
