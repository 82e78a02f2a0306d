"""Jobs files: the accepted forms and every bad-input case, with file/job/field named."""

import datetime as dt
import json
from pathlib import Path

import pytest

from greenplace.policies.model import load_policy
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import SpecError
from greenplace.scheduler.jobs import DEFAULT_UTILIZATION, load_jobs

JOB_FLOW = "run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1}"
GOOD_JOB = """
name: ft
run: python train.py
resources: {accelerators: [{a100: 8}, {H100 80GB: 8}]}
work: {hours: 10}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    return path


def test_single_job_form_and_aliases(tmp_path: Path, small_catalog: Catalog) -> None:
    (job,) = load_jobs(write(tmp_path, GOOD_JOB), small_catalog)
    assert job.alternatives == (("A100", 8), ("H100", 8))
    assert job.reference == ("A100", 8)
    assert job.policy.name == "balanced"
    assert job.utilization == DEFAULT_UTILIZATION


def test_list_form_policy_per_job_and_relative_policy_path(
    tmp_path: Path, small_catalog: Catalog
) -> None:
    (tmp_path / "mine.yaml").write_text("name: mine\nweights: {carbon: 1, cost: 0}\n")
    text = """
jobs:
  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1}, policy: greenest}
  - {name: b, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1}, policy: mine.yaml}
  - name: c
    run: x
    resources: {accelerators: {tpu v3: 8, A100: 8}}
    work: {hours: 1, reference: A100}
"""
    a, b, c = load_jobs(write(tmp_path, text), small_catalog)
    assert (a.policy.name, b.policy.name, c.policy.name) == ("greenest", "mine", "balanced")
    assert c.alternatives == (("TPU-v3", 8), ("A100", 8)) and c.reference == ("A100", 8)


def test_a_given_policy_applies_to_jobs_without_their_own_unless_overriding(
    tmp_path: Path, small_catalog: Catalog
) -> None:
    text = (f"jobs:\n  - {{name: own, {JOB_FLOW}, policy: eu-sovereign}}\n"
            f"  - {{name: none, {JOB_FLOW}}}\n")
    cheapest = load_policy("cheapest")
    own, none = load_jobs(write(tmp_path, text), small_catalog, policy=cheapest)
    assert (own.policy.name, none.policy.name) == ("eu-sovereign", "cheapest")
    assert own.replaced_policy is None and none.replaced_policy is None
    own, none = load_jobs(write(tmp_path, text), small_catalog, policy=cheapest,
                          override_policy=True)
    assert (own.policy.name, none.policy.name) == ("cheapest", "cheapest")
    assert (own.replaced_policy, none.replaced_policy) == ("eu-sovereign", None)


@pytest.mark.parametrize(("text", "expected"), [
    ("", "found nothing"),
    ("jobs:\n  -\n", "found nothing"),
    ("name: a\nrun: x\nresources:\nwork: {hours: 1}\n", "'resources': is empty (null)"),
    ("name: a\nrun: x\nresources: {accelerators: {A100: null}}\nwork: {hours: 1}\n",
     "'resources.accelerators.A100': is empty (null)"),
])
def test_empty_values_are_named_without_python_type_names(
    tmp_path: Path, small_catalog: Catalog, text: str, expected: str
) -> None:
    with pytest.raises(SpecError) as info:
        load_jobs(write(tmp_path, text), small_catalog)
    message = str(info.value)
    assert expected in message
    assert "NoneType" not in message and "instance of" not in message and "[str,int]" not in message


def test_a_past_deadline_is_one_clear_error(tmp_path: Path, small_catalog: Catalog) -> None:
    now = dt.datetime(2030, 1, 2, tzinfo=dt.UTC)
    path = write(tmp_path, GOOD_JOB + "deadline: 2030-01-01T00:00:00Z\n")
    with pytest.raises(SpecError) as info:
        load_jobs(path, small_catalog, now=now)
    message = str(info.value)
    assert "field 'deadline'" in message and "has passed" in message
    assert "2030-01-01T00:00:00+00:00" in message and "now 2030-01-02T00:00:00+00:00" in message
    assert load_jobs(path, small_catalog)  # no `now`, no check (e.g. a backtest's replays)


@pytest.mark.parametrize(("text", "expected"), [
    ("jobs: [{name: a, run: x\n", "broken YAML"),
    ("jobs: []\n", "non-empty list"),
    ("42\n", "found a number"),
    ("jobs: [1]\n", "job #1: a job must be a mapping"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: ten}}\n",
     "job 'a': field 'work.hours'"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1},"
     " gpus: 8}\n", "job 'a': field 'gpus': unknown field"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 0}}, work: {hours: 1}}\n",
     "count of A100 must be between 1"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A1000: 8}}, work: {hours: 1}}\n",
     "Unknown accelerator 'A1000'. Did you mean 'A100'"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1,"
     " reference: H100}}\n", "field 'work.reference': H100 is not one of"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1},"
     " policy: missing/policy.yaml}\n", "field 'policy'"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1},"
     " policy: greenst}\n", "Did you mean 'greenest'"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 8}, spot: true},"
     " work: {hours: 1}, policy: eu-sovereign}\n", "forbids spot"),
    ("jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1}}\n"
     "  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1}}\n",
     "used twice"),
    ("jobs:\n  - {name: 'bad name!', run: x, resources: {accelerators: {A100: 8}},"
     " work: {hours: 1}}\n", "field 'name'"),
    ("jobs: [{name: a}]\nextra: 1\n", "unknown top-level field"),
])
def test_bad_jobs_files(tmp_path: Path, small_catalog: Catalog, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_jobs(path, small_catalog)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "Traceback" not in message


def test_missing_jobs_file(tmp_path: Path, small_catalog: Catalog) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_jobs(tmp_path / "nope.yaml", small_catalog)


JOBS_YAML = """
jobs:
  - name: a
    run: x
    resources: {accelerators: {A100: 8}, spot: true}
    work: {hours: 1.5}
  - name: b
    run: x
    resources:
      accelerators: [{tpu v3: 8}, {A100: 8}]
    work: {hours: 2, reference: A100}
    deadline: 2026-12-01T00:00:00Z
"""
JOBS_DATA = [
    {"name": "a", "run": "x", "resources": {"accelerators": {"A100": 8}, "spot": True},
     "work": {"hours": 1.5}},
    {"name": "b", "run": "x", "resources": {"accelerators": [{"tpu v3": 8}, {"A100": 8}]},
     "work": {"hours": 2, "reference": "A100"}, "deadline": "2026-12-01T00:00:00Z"},
]


@pytest.mark.parametrize(("filename", "text"), [
    ("jobs.yaml", JOBS_YAML),
    ("jobs.json", json.dumps({"jobs": JOBS_DATA}, indent=2)),
    ("jobs.jsonl", "\n".join(json.dumps(j) for j in JOBS_DATA) + "\n\n"),
    ("jobs.ndjson", "\n".join(json.dumps(j) for j in JOBS_DATA)),
    ("jobs.txt", json.dumps({"jobs": JOBS_DATA})),  # JSON by content
    ("jobs", "\n".join(json.dumps(j) for j in JOBS_DATA)),  # JSON lines by content
    ("jobs.yml", "\n".join(json.dumps(j) for j in JOBS_DATA)),  # JSON lines by content
])
def test_yaml_json_and_json_lines_give_the_same_jobs(
    tmp_path: Path, small_catalog: Catalog, filename: str, text: str
) -> None:
    path = tmp_path / filename
    path.write_text(text)
    a, b = load_jobs(path, small_catalog)
    assert (a.name, a.alternatives, a.spec.resources.spot, a.spec.work.hours) == (
        "a", (("A100", 8),), True, 1.5)
    assert b.alternatives == (("TPU-v3", 8), ("A100", 8)) and b.reference == ("A100", 8)
    assert b.spec.deadline is not None
    assert b.spec.deadline.isoformat() == "2026-12-01T00:00:00+00:00"


def test_yaml_anchors_and_merge_keys_work_across_streamed_jobs(
    tmp_path: Path, small_catalog: Catalog
) -> None:
    text = """jobs:
  - &base {name: a, run: x, resources: {accelerators: {A100: 8}}, work: {hours: 1}}
  - <<: *base
    name: b
    work: {hours: 3}
"""
    a, b = load_jobs(write(tmp_path, text), small_catalog)
    assert (a.name, b.name, b.alternatives, b.spec.work.hours) == ("a", "b", (("A100", 8),), 3)


@pytest.mark.parametrize(("filename", "text", "expected"), [
    ("jobs.yaml", "jobs:\n  - {name: a, run: x, resources: {accelerators: {A100: 8}}, work: "
     "{hours: 1}}\n  - name: b\n    run: x\n    resources: {accelerators: {A100: 8}}\n"
     "    work: {hours: -1}\n", "line 3, job 'b': field 'work.hours'"),
    ("jobs.jsonl", '{"name": "a", "run": "x", "resources": {"accelerators": {"A100": 8}}, '
     '"work": {"hours": 1}}\n\n{"name": "b", "run": "x"}\n',
     "line 3, job 'b': field 'resources': Field required"),
    ("jobs.jsonl", '{"name": "a"}\n{"name": "b", "run": }\n',
     "broken JSON at line 2, column 22"),
    ("jobs.jsonl", '{"name": "a", "run": "x", "resources": {"accelerators": {"A100": 8}}, '
     '"work": {"hours": 1}}\n[1, 2]\n', "line 2, job #2: a job must be a mapping, found a list"),
    ("jobs.jsonl", "\n\n", "no jobs"),
    ("jobs.json", '{"jobs": [\n  {"name": "a",}\n]}',
     "broken JSON at line 2, column 15: trailing comma"),
    ("jobs.json", '{"jobs": []}', "non-empty list"),
    ("jobs.json", "[1]", "found a list"),
    ("jobs.yaml", "jobs: [{name: a}]\n---\njobs: []\n",
     "line 2, column 1: but found another document"),
    # a problem at the top level after the list is reported before a bad job in it
    ("jobs.yaml", "jobs:\n  - {name: a}\nextra: 1\n", "unknown top-level field(s) ['extra']"),
    ("jobs.yaml", "jobs:\n  - {name: a}\n  - {name: b\n", "broken YAML at line 4"),
])
def test_bad_json_and_streamed_yaml_files_name_the_line(
    tmp_path: Path, small_catalog: Catalog, filename: str, text: str, expected: str
) -> None:
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_jobs(path, small_catalog)
    message = str(info.value)
    assert expected in message
    assert message.startswith(str(path)) and "\n" not in message
