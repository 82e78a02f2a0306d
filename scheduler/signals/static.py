"""The static source: the embedded catalog's annual figures, always available, the default.

Its zones are catalog region keys (``gcp:europe-west4``): the annual figures are
per cloud region, not per grid zone. It returns every signal type the catalog
has for a region (grid average, grid marginal where published, and the grid's
carbon-free %); a figure the catalog does not have is
NoSignalDataError, never a stand-in from another type.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from greenplace.policies.model import CarbonSignal
from greenplace.scheduler.catalog import Catalog, Region
from greenplace.scheduler.exceptions import NoSignalDataError
from greenplace.scheduler.signals.base import (
    CATALOG_BASIS,
    EmissionBasis,
    Forecast,
    SignalPoint,
    SignalValue,
    require_type,
    utc,
)

NAME = "static"


class StaticSource:
    """Annual catalog figures per region; no network, never down.

    Design choice: ``forecast_types`` is empty, because an annual figure says
    nothing about which hour is greener. ``forecast`` still answers (the annual
    figure over the whole span, flagged in its notes) so the source honours the
    protocol, but the fallback chain never uses it for temporal shifting.
    """

    name = NAME
    signal_types = frozenset({CarbonSignal.AVERAGE, CarbonSignal.MARGINAL, CarbonSignal.CFE})
    forecast_types: frozenset[CarbonSignal] = frozenset()
    emission_basis: Mapping[CarbonSignal, EmissionBasis] = CATALOG_BASIS

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def zone_for(self, region: Region) -> str | None:
        return region.key

    def _figure(self, region: Region, signal: CarbonSignal) -> float | None:
        if signal is CarbonSignal.AVERAGE:
            return region.grid_intensity_avg_g_per_kwh
        if signal is CarbonSignal.MARGINAL:
            return region.grid_intensity_marginal_g_per_kwh
        return region.grid_cfe_pct

    def value(self, zone: str, *, signal: CarbonSignal,
              at: dt.datetime | None = None) -> SignalValue:
        """The catalog's annual figure for region ``zone`` (the same for every ``at``)."""
        require_type(self, signal)
        region = self._catalog.region(zone)
        figure = self._figure(region, signal)
        if figure is None:
            raise NoSignalDataError(
                f"static: the catalog has no {signal} figure for {region.key}.")
        basis = ", grid CFE" if signal is CarbonSignal.CFE else ""
        return SignalValue(
            source=NAME, zone=region.key, signal=signal, value=float(figure),
            observed_at=dt.datetime.fromisoformat(region.as_of).replace(tzinfo=dt.UTC),
            detail=f"catalog {region.year} annual{basis} ({region.source})",
        )

    def forecast(self, zone: str, *, signal: CarbonSignal, start: dt.datetime,
                 end: dt.datetime) -> Forecast:
        """The annual figure held flat over ``[start, end]`` (no hourly shape is known)."""
        current = self.value(zone, signal=signal)
        start, end = utc(start), utc(end)
        return Forecast(
            source=NAME, zone=current.zone, signal=signal, issued_at=current.observed_at,
            points=(SignalPoint(at=start, value=current.value),),
            step_s=max(1.0, (end - start).total_seconds()),
            notes=("annual figure held flat: no hourly variation is known",),
        )

    def close(self) -> None:
        """Nothing to release."""
