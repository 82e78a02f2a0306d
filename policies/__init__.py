"""Placement policies: the Policy model, its loader and the preset YAML files."""

from greenplace.policies.model import (
    DEFAULT_POLICY,
    CarbonSignal,
    Policy,
    SpotMode,
    load_policy,
    parse_policy,
    preset_names,
)

__all__ = [
    "DEFAULT_POLICY", "CarbonSignal", "Policy", "SpotMode", "load_policy", "parse_policy",
    "preset_names",
]
