"""The GREENPLACE_MAX_* limits and short echoes, each through the CLI entry point.

Every refusal is one paragraph on stderr, exit code 2, no traceback, a bounded length,
and it names the limit's setting; nothing is stored (these are the same loader paths
``submit`` takes before it opens Redis).
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from greenplace.providers import aws
from greenplace.providers.base import (
    USER_DATA_LIMITS_BYTES,
    AgentAccess,
    JobLaunch,
    Placement,
    startup_script,
)
from greenplace.scheduler.cli import main
from greenplace.scheduler.exceptions import ConfigError, UnknownNameError, shown
from greenplace.scheduler.limits import (
    AGENT_API_URL_MAX_CHARS,
    AGENT_PACKAGE_MAX_CHARS,
    AGENT_TOKEN_CHARS,
    DEFAULT_MAX_RUN_BYTES,
    JOB_ID_ALLOWANCE_CHARS,
    MAX_SCRIPT_BYTES_PER_CHAR,
    run_bytes,
)
from greenplace.scheduler.settings import Limits, load_limits, load_settings
from greenplace.scheduler.store import new_job_id
from greenplace.scheduler.tokens import TOKEN_BYTES

JOB = "name: a\nrun: x\nresources: {accelerators: {A100: 8}}\nwork: {hours: 1}\n"
MAX_ERROR_CHARS = 1500  # ten problems of cut names, plus the path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one-paragraph error of a command that must exit 2."""
    code, out, err = run(capsys, *args)
    assert code == 2 and out == "", err[:2000]
    assert err.startswith("error: ") and err.count("\n") == 1, err[:2000]
    assert "Traceback" not in err and len(err) < MAX_ERROR_CHARS, err[:2000]
    assert "To fix: " in err
    return err


def json_job(**fields: object) -> dict[str, object]:
    return {"name": "a", "run": "x", "resources": {"accelerators": {"A100": 8}},
            "work": {"hours": 1}, **fields}


# ------------------------------------------------------------------------- file size


def test_a_50_mb_file_is_refused_before_it_is_read(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as file:
        file.truncate(50 * 1024 * 1024)  # sparse: nothing is written to disk
    started = time.perf_counter()
    err = refused(capsys, "dry-run", str(big))
    elapsed_s = time.perf_counter() - started
    assert "33,554,432 bytes" in err and "GREENPLACE_MAX_FILE_BYTES" in err
    assert elapsed_s < 10  # a sanity bound only; benchmarks/limits.py measures it
    # submit (and its --dry-run) refuse before they open Redis: nothing is stored
    assert "GREENPLACE_MAX_FILE_BYTES" in refused(capsys, "submit", str(big), "--dry-run")
    assert "GREENPLACE_MAX_FILE_BYTES" in refused(capsys, "submit", str(big))
    assert "GREENPLACE_MAX_FILE_BYTES" in refused(capsys, "validate", str(big))


def test_the_file_limit_is_a_setting_and_covers_policy_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOB)
    policy = tmp_path / "mine.yaml"
    policy.write_text("name: mine\nweights: {carbon: 1, cost: 0}\n" + "#" * 2000 + "\n")
    assert run(capsys, "dry-run", str(jobs), "-p", str(policy), "-o", "json")[0] == 0
    monkeypatch.setenv("GREENPLACE_MAX_FILE_BYTES", "1024")
    err = refused(capsys, "dry-run", str(jobs), "-p", str(policy))
    assert "policy file" in err and "1,024 bytes" in err
    assert run(capsys, "dry-run", str(jobs), "-o", "json")[0] == 0  # the jobs file fits
    monkeypatch.setenv("GREENPLACE_MAX_FILE_BYTES", "10")
    assert "jobs file" in refused(capsys, "dry-run", str(jobs))


# ------------------------------------------------------------------------- nesting


@pytest.mark.parametrize(("name", "text"), [
    ("open.yaml", "[" * 20_000),
    ("closed.yaml", "[" * 500 + "]" * 500),
    ("map.yaml", "{a: " * 20_000),
    ("block.yaml", "".join(f"{'  ' * i}k{i}:\n" for i in range(60)) + "  " * 60 + "v\n"),
    ("in-a-job.yaml", f"jobs:\n  - name: a\n    extra: {'[' * 40}{']' * 40}\n"),
    ("open.json", "[" * 20_000),
    ("closed.json", "[" * 2_000 + "]" * 2_000),
    ("shallow.json", '{"jobs": [' + "[" * 40 + "]" * 40 + "]}"),
    ("map.json", '{"a": ' * 5_000 + "1" + "}" * 5_000),
    ("lines.jsonl", json.dumps(json_job()) + "\n" + '{"a": ' * 40 + "1" + "}" * 40 + "\n"),
])
def test_deep_nesting_is_one_clear_error(name: str, text: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    err = refused(capsys, "dry-run", str(path))
    assert "nest deeper than 32 levels" in err and "GREENPLACE_MAX_DEPTH" in err
    assert " at line " in err and "RecursionError" not in err


def test_depth_is_a_setting_and_policy_files_are_protected(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(JOB)
    deep_policy = tmp_path / "deep.yaml"
    deep_policy.write_text("name: deep\nweights: " + "{a: " * 20_000)
    err = refused(capsys, "dry-run", str(jobs), "-p", str(deep_policy))
    assert "GREENPLACE_MAX_DEPTH" in err and "at line 2" in err
    assert "GREENPLACE_MAX_DEPTH" in refused(capsys, "validate", str(deep_policy))
    nested = tmp_path / "nested.yaml"
    nested.write_text(JOB + "extra: " + "[" * 12 + "]" * 12 + "\n")
    monkeypatch.setenv("GREENPLACE_MAX_DEPTH", "8")
    assert "over the limit of 8 levels" in refused(capsys, "dry-run", str(nested))
    monkeypatch.setenv("GREENPLACE_MAX_DEPTH", "20")  # deep enough: now the field is wrong
    assert "'extra': unknown field" in refused(capsys, "dry-run", str(nested))
    # valid files need 6 levels: the setting cannot go below 8, nor above what is safe
    for bad in ("7", "5000", "deep"):
        monkeypatch.setenv("GREENPLACE_MAX_DEPTH", bad)
        err = refused(capsys, "dry-run", str(jobs))
        assert err.startswith("error: Unusable settings: GREENPLACE_MAX_DEPTH=")


# ------------------------------------------------------------------------- jobs per file


def test_jobs_per_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert Limits().jobs == 100_000
    lines = tmp_path / "jobs.jsonl"
    lines.write_text("".join(json.dumps(json_job(name=f"j{i}")) + "\n" for i in range(4)))
    yaml_file = tmp_path / "jobs.yaml"
    yaml_file.write_text("jobs:\n" + "".join(
        f"  - {{name: j{i}, run: x, resources: {{accelerators: {{A100: 8}}}}, "
        "work: {hours: 1}}\n" for i in range(4)))
    monkeypatch.setenv("GREENPLACE_MAX_JOBS", "4")
    assert run(capsys, "dry-run", str(lines), "-o", "json")[0] == 0
    monkeypatch.setenv("GREENPLACE_MAX_JOBS", "3")
    for path in (lines, yaml_file):
        err = refused(capsys, "dry-run", str(path))
        assert "more than 3 jobs" in err and "GREENPLACE_MAX_JOBS" in err
        assert "split the jobs into several files" in err


# ------------------------------------------------------------------------- run


def _longest_agent() -> AgentAccess:
    """The agent access with the longest URL the settings accept, and a real token."""
    token = "gpt_" + secrets.token_urlsafe(TOKEN_BYTES)
    assert len(token) == AGENT_TOKEN_CHARS  # what the limit leaves room for
    url = "https://" + "a" * (AGENT_API_URL_MAX_CHARS - 8)
    assert load_settings({"GREENPLACE_AGENT_API_URL": url}).agent_api_url == url
    with pytest.raises(ConfigError, match="GREENPLACE_AGENT_API_URL"):
        load_settings({"GREENPLACE_AGENT_API_URL": url + "a"})
    package = "--index-url https://pypi.example.test/simple " + "g" * (
        AGENT_PACKAGE_MAX_CHARS - 45)
    assert len(package) == AGENT_PACKAGE_MAX_CHARS
    assert load_settings({"GREENPLACE_AGENT_PACKAGE": package}).agent_package == package
    for bad in (package + "g", "greenplace'; rm -rf /", "green\x1bplace"):
        with pytest.raises(ConfigError, match="GREENPLACE_AGENT_PACKAGE"):
            load_settings({"GREENPLACE_AGENT_PACKAGE": bad})
    return AgentAccess(api_url=url, token=token, package=package)


def test_the_default_run_limit_is_derived_from_the_adapters() -> None:
    launch = JobLaunch(job_id="0" * JOB_ID_ALLOWANCE_CHARS, name="a", run="", policy="p",
                       attempt=1, agent=_longest_agent())
    overhead = len(startup_script(launch).encode())
    assert DEFAULT_MAX_RUN_BYTES == min(USER_DATA_LIMITS_BYTES.values()) - overhead
    assert min(USER_DATA_LIMITS_BYTES.values()) == aws.MAX_USER_DATA_BYTES  # EC2's 16 KiB
    assert len(new_job_id()) <= JOB_ID_ALLOWANCE_CHARS
    assert run_bytes("a'b") == 7 and run_bytes("é") == 2  # quotes escaped, UTF-8 counted
    # check_run skips building the script for commands shorter than the limit / 5
    worst = max(run_bytes(c) for c in [*map(chr, range(128)), "é", "€", "\U0001f600"])
    assert worst == MAX_SCRIPT_BYTES_PER_CHAR


@pytest.mark.parametrize("quotes", [0, 100])
def test_a_run_at_the_limit_fits_aws_and_one_byte_more_does_not(quotes: int) -> None:
    at_limit = "'" * quotes + "x" * (DEFAULT_MAX_RUN_BYTES - 5 * quotes)
    assert run_bytes(at_limit) == DEFAULT_MAX_RUN_BYTES
    place = Placement(cloud="aws", region="us-east-1", instance_type="p4d.24xlarge",
                      accelerator="A100", accelerator_count=8, spot=False)
    # the longest job id and agent URL the limit allows for: the script is EC2's limit,
    # to the byte
    agent = _longest_agent()
    job = JobLaunch(job_id="f" * JOB_ID_ALLOWANCE_CHARS, name="a", run=at_limit,
                    policy="balanced", attempt=1, agent=agent)
    request = aws.create({}).prepare(job, place)
    assert len(request.startup_script.encode()) == aws.MAX_USER_DATA_BYTES
    over = JobLaunch(job_id=job.job_id, name="a", run=at_limit + "x", policy="balanced",
                     attempt=1, agent=agent)
    with pytest.raises(Exception, match="UserDataTooLarge|user data"):
        aws.create({}).prepare(over, place)


def test_run_size_and_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(json_job(run="x" * DEFAULT_MAX_RUN_BYTES)))
    assert run(capsys, "submit", str(path), "--dry-run", "-o", "json")[0] == 0
    path.write_text(json.dumps(json_job(run="x" * (DEFAULT_MAX_RUN_BYTES - 1) + "'")))
    err = refused(capsys, "submit", str(path), "--dry-run")
    assert f"{DEFAULT_MAX_RUN_BYTES + 4:,} bytes" in err and "GREENPLACE_MAX_RUN_BYTES" in err
    assert "field 'run'" in err
    path.write_text(json.dumps(json_job(run="x" * 1024 * 1024)))  # refused before Redis
    assert "GREENPLACE_MAX_RUN_BYTES" in refused(capsys, "submit", str(path))
    path.write_text(json.dumps(json_job(run="x" * 50 * 1024 * 1024)))  # the file's limit first
    assert "GREENPLACE_MAX_FILE_BYTES" in refused(capsys, "submit", str(path))
    monkeypatch.setenv("GREENPLACE_MAX_RUN_BYTES", "10")
    path.write_text(json.dumps(json_job(run="x" * 11)))
    assert "over the limit of 10 bytes" in refused(capsys, "dry-run", str(path))
    monkeypatch.delenv("GREENPLACE_MAX_RUN_BYTES")
    for run_text, what, where in [("echo\x00hi", "U+0000 (NUL)", "position 5 (line 1, column 5"),
                                  ("a\nb\r\n", "U+000D (carriage return)", "(line 2, column 2"),
                                  ("a\x1b[31m", "U+001B (escape)", "position 2"),
                                  ("a\x85", "U+0085 (a control character)", "position 2")]:
        path.write_text(json.dumps(json_job(run=run_text)))
        err = refused(capsys, "submit", str(path), "--dry-run")
        assert what in err and where in err and "field 'run'" in err
    path.write_text(json.dumps(json_job(run="python train.py\\\n\t--epochs 3\n")))
    assert run(capsys, "dry-run", str(path), "-o", "json")[0] == 0  # tab and newline are fine


# ------------------------------------------------------------------------- echoes


def test_shown_cuts_long_values_and_keeps_short_ones() -> None:
    assert shown("A100") == "'A100'" and shown("A100", quote=False) == "A100"
    long = shown("n" * 1_000_000)
    assert long.startswith("'nnn") and long.endswith("... (1,000,000 characters)")
    assert len(long) < 100
    error = UnknownNameError("accelerator", "Z" * 1_000_000, ["A100", "H100"])
    assert len(str(error)) < 300 and "1,000,000 characters" in str(error)


@pytest.mark.parametrize(("fields", "expected"), [
    ({"name": "n" * 1_000_000}, "job 'nnnn"),
    ({"resources": {"accelerators": {"Q" * 1_000_000: 1}}}, "Unknown accelerator 'QQQ"),
    ({"resources": {"accelerators": {"Q" * 1_000_000: 0}}}, "count of QQQ"),
    ({"x" * 1_000_000: 1}, "field 'xxx"),
    ({**{f"k{i}" + "y" * 1000: i for i in range(2000)}}, "and 1,990 more"),
    ({"home": "aws:" + "r" * 1_000_000}, "Unknown region"),
    ({"policy": "p" * 1_000_000}, "Unknown policy preset 'ppp"),
    ({"policy": "/" + "p" * 100_000 + ".yaml"}, "policy file '/ppp"),
])
def test_long_user_values_are_cut_in_errors(fields: dict[str, object], expected: str,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(json_job(**fields)))
    err = refused(capsys, "dry-run", str(path))
    assert expected in err


def test_unknown_top_level_fields_are_cut(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "jobs.json"
    extra = {f"top{i}" + "z" * 100_000: 1 for i in range(20)}
    path.write_text(json.dumps({"jobs": [json_job()], **extra}))
    err = refused(capsys, "dry-run", str(path))
    assert "unknown top-level field(s) ['top0" in err and ", and 15 more]" in err


# ------------------------------------------------------------------------- deadlines


def test_a_past_deadline_is_refused_where_now_is_today(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(json_job(deadline="2020-01-01T00:00:00Z")))
    for command in (["submit", str(path)], ["submit", str(path), "--dry-run"],
                    ["dry-run", str(path)], ["validate", str(path)]):
        err = refused(capsys, *command)
        assert "field 'deadline'" in err and "has passed" in err


# ------------------------------------------------------------------------- settings


def test_limits_are_settings_with_every_problem_in_one_error() -> None:
    assert load_limits({}) == Limits() == load_settings({}).limits
    env = {"GREENPLACE_MAX_FILE_BYTES": "1000", "GREENPLACE_MAX_DEPTH": "9",
           "GREENPLACE_MAX_JOBS": "7", "GREENPLACE_MAX_RUN_BYTES": "100"}
    assert load_limits(env) == Limits(file_bytes=1000, depth=9, jobs=7, run_bytes=100)
    assert load_settings(env).limits == load_limits(env)
    bad = {"GREENPLACE_MAX_FILE_BYTES": "8MB", "GREENPLACE_MAX_JOBS": "0",
           "GREENPLACE_MAX_RUN_BYTES": "9" * 10_000}
    with pytest.raises(ConfigError) as info:
        load_limits(bad)
    message = str(info.value)
    assert all(name in message for name in bad) and "To fix:" in message
    assert len(message) < 600
    with pytest.raises(ConfigError, match="GREENPLACE_MAX_JOBS"):
        load_settings(bad)


def test_backtest_replays_past_hours_so_a_past_deadline_is_no_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(json_job(resources={"accelerators": {"H100": 8}},
                                        work={"hours": 6}, home="aws:us-east-1",
                                        deadline="2020-01-01T00:00:00Z")))
    trace = "electricitymaps_hourly_2023-06-05_to_11_4zones"
    code, out, err = run(capsys, "backtest", str(path), "--trace", trace, "--every", "24",
                         "-o", "json")
    assert code == 0, err
    assert any("absolute deadline is ignored" in note for note in json.loads(out)["notes"])
    path.write_text(json.dumps(json_job(run="x\x00")))  # but the limits hold there too
    assert "U+0000" in refused(capsys, "backtest", str(path), "--trace", trace)
