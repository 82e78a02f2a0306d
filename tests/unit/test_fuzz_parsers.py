"""Fuzz the jobs and policy parsers: any input gives a result or a UserInputError."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenplace.policies.model import parse_policy
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import UserInputError
from greenplace.scheduler.jobs import load_jobs

KEYS = st.sampled_from([
    "name", "run", "resources", "accelerators", "work", "hours", "reference", "policy",
    "spot", "deadline", "jobs", "weights", "carbon", "cost", "time", "constraints", "clouds",
    "regions", "include", "exclude", "min_cfe_pct", "carbon_signal", "A100", "H100", "x",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 10_000), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["A100", "greenest", "cfe", "gcp", "*", "2026-01-01"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=20,
)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(VALUES)
def test_policy_parser_never_crashes(data: object) -> None:
    try:
        parse_policy(data, where="fuzz")
    except UserInputError:
        pass


@FUZZ
@given(st.one_of(VALUES.map(lambda v: yaml.safe_dump(v)), st.text(max_size=200)))
def test_jobs_parser_never_crashes(small_catalog: Catalog, text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_jobs(path, small_catalog)
        except UserInputError as exc:
            assert str(path) in str(exc)


@FUZZ
@given(st.lists(st.one_of(VALUES.map(json.dumps), st.text(max_size=40)), max_size=5))
def test_json_lines_parser_never_crashes(small_catalog: Catalog, lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8")
        try:
            load_jobs(path, small_catalog)
        except UserInputError as exc:
            assert str(path) in str(exc)
