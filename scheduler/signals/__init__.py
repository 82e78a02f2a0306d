"""Carbon signal sources (static catalog, Electricity Maps, WattTime, Carbon Aware SDK,
GB Carbon Intensity), their TTL cache and the fallback chain.

Kept import-light: ``greenplace.scheduler.signals.base`` is the seam; ``chain`` builds live
``RegionSignals`` and forecasts for the placement pipeline.
"""
