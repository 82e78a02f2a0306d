"""Preset policies load; bad policies fail with a clear message."""

from pathlib import Path

import pytest

from greenplace.policies import DEFAULT_POLICY, CarbonSignal, load_policy, preset_names
from greenplace.scheduler.exceptions import SpecError, UnknownNameError


@pytest.mark.parametrize("name", ["greenest", "cheapest", "balanced", "eu-sovereign"])
def test_each_preset_loads(name: str) -> None:
    policy = load_policy(name)
    assert policy.name == name
    assert policy.weights.carbon + policy.weights.cost + policy.weights.time > 0


def test_presets_are_all_listed_and_default_is_one() -> None:
    assert {"greenest", "cheapest", "balanced", "eu-sovereign"} <= set(preset_names())
    assert DEFAULT_POLICY in preset_names()


def test_preset_semantics() -> None:
    assert load_policy("greenest").weights.cost == 0
    assert load_policy("cheapest").weights.carbon == 0
    eu = load_policy("eu-sovereign")
    assert eu.constraints.continents == ["europe"] and "US" not in (eu.constraints.countries or [])
    assert load_policy("balanced").carbon_signal is CarbonSignal.CFE


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\nweights: {carbon: 0, cost: 0, time: 0}\n", "all zero"),
    ("name: x\nweights: {carbon: -1}\n", "weights.carbon"),
    ("name: x\ncolour: green\n", "'colour': unknown field"),
    ("name: x\ncarbon_signal: lifecycle\n", "carbon_signal"),
    ("name: x\nconstraints: {spot: sometimes}\n", "constraints.spot"),
    ("name: x\nconstraints: {clouds: []}\n", "empty list allows nothing"),
    ("name: x\nconstraints: {clouds: [ibm]}\n", "constraints.clouds.0"),
    ("name: x\nconstraints: {min_cfe_pct: 120}\n", "constraints.min_cfe_pct"),
    ("name: x\nconstraints: {countries: [Germany]}\n", "two-letter"),
    ("name: x\nfailover: {max_attempts: 0}\n", "failover.max_attempts"),
    ("name: [x\n", "broken YAML at line 2"),
    ("- a\n- b\n", "must be a YAML mapping"),
])
def test_bad_policy_files(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_policy(str(path))
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_policy_path() -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_policy("nowhere/policy.yaml")


def test_unknown_preset_suggests() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'greenest'"):
        load_policy("greenst")
