"""Limits on what a jobs or policy file may hold, checked when the file is loaded.

A jobs file is refused before anything is stored when it is bigger than
``GREENPLACE_MAX_FILE_BYTES`` (checked on the open file before it is read), nests
deeper than ``GREENPLACE_MAX_DEPTH``, holds more than ``GREENPLACE_MAX_JOBS`` jobs,
or has a job whose ``run`` takes more than ``GREENPLACE_MAX_RUN_BYTES`` in the boot
script or holds a control character. ``scheduler.settings.Limits`` holds the values;
each error is one paragraph naming the limit, the setting that raises it and the fix.

Design choice: the checks happen at the trust boundary (the jobs-file loader every
command goes through: submit, dry-run, validate, backtest), not where the value first
hurts (EC2 refusing a 50 MB boot script at launch, a RecursionError in PyYAML's
composer), so a bad file fails the same way, at once, in every command.

Design choice: the default ``run`` limit is derived, not chosen. Every job may be
placed on any cloud, so its boot script (``providers.base.startup_script``) must fit
the smallest user-data limit of all adapters (``USER_DATA_LIMITS_BYTES``: EC2's
16 KiB). What is left for ``run`` is that limit minus the script's own bytes around
an empty command (with the agent's API URL, token and package spec at their longest, and
the lines that install and start the agent), and ``run`` is measured as the script writes
it (each ``'`` is escaped into five bytes), so a job within the limit launches on every
adapter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from greenplace.providers.base import (
    USER_DATA_LIMITS_BYTES,
    AgentAccess,
    JobLaunch,
    startup_script,
)
from greenplace.scheduler.exceptions import SHOWN_PATH_CHARS, SpecError, shown

# 100,000 jobs (DEFAULT_MAX_JOBS) take 14-15 MiB as YAML or JSON lines with short
# commands (benchmarks/README.md); 32 MiB leaves room for longer ones.
DEFAULT_MAX_FILE_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_DEPTH = 32  # a valid jobs file nests 6 deep, a policy file 4
MIN_DEPTH = 8  # below this, valid jobs files would be refused
# PyYAML's composer recurses about three Python frames per level; under Python's
# default recursion limit of 1,000 this leaves room for the caller's frames.
MAX_DEPTH = 200
DEFAULT_MAX_JOBS = 100_000  # the largest batch benchmarks/README.md measures end to end
# Room for the job id in the boot script: ids are 16 hex characters
# (``store.new_job_id``); 64 keeps the limit valid if they ever grow (a UUID is 36).
JOB_ID_ALLOWANCE_CHARS = 64
# Room for the agent's API URL (GREENPLACE_AGENT_API_URL is refused above this) and its
# token (``scheduler.tokens``: "gpt_" + 32 random bytes in URL-safe base64, 47 characters;
# tests/unit/test_tokens.py checks it), which the boot script exports when an API is set.
AGENT_API_URL_MAX_CHARS = 256
AGENT_TOKEN_CHARS = 47
# Room for what the boot script pip-installs to run the job under ``greenplace agent``
# (GREENPLACE_AGENT_PACKAGE is refused above this): a wheel URL or ``--index-url URL NAME``.
# The allowance counts each character as one byte, which the setting's check guarantees by
# refusing quotes and control characters.
AGENT_PACKAGE_MAX_CHARS = 512
# Control characters (C0, DEL, C1) other than tab and newline: a NUL ends a C string
# early in cloud APIs and shells, a carriage return breaks a bash command line.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {0x00: "NUL", 0x0D: "carriage return", 0x1B: "escape", 0x7F: "DEL",
                  0x0B: "vertical tab", 0x0C: "form feed", 0x08: "backspace"}
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _boot_script_bytes(run: str) -> int:
    agent = AgentAccess(api_url="h" * AGENT_API_URL_MAX_CHARS, token="t" * AGENT_TOKEN_CHARS,
                        package="p" * AGENT_PACKAGE_MAX_CHARS)
    launch = JobLaunch(job_id="0" * JOB_ID_ALLOWANCE_CHARS, name="-", run=run, policy="-",
                       attempt=1, agent=agent)
    return len(startup_script(launch).encode())


_SCRIPT_OVERHEAD_BYTES = _boot_script_bytes("")
# The most bytes one character of ``run`` takes in the boot script: a ``'`` is escaped
# into five, UTF-8 takes at most four (tests/unit/test_limits.py checks every ASCII
# character). A command shorter than the limit / 5 needs no script built to check it.
MAX_SCRIPT_BYTES_PER_CHAR = 5
DEFAULT_MAX_RUN_BYTES = min(USER_DATA_LIMITS_BYTES.values()) - _SCRIPT_OVERHEAD_BYTES
MAX_RUN_BYTES = max(USER_DATA_LIMITS_BYTES.values()) - _SCRIPT_OVERHEAD_BYTES


def run_bytes(run: str) -> int:
    """The bytes ``run`` takes in the boot script (UTF-8, quotes escaped as it writes them)."""
    return _boot_script_bytes(run) - _SCRIPT_OVERHEAD_BYTES


def limit_error(subject: str, *, limit: str, setting: str, fix: str) -> SpecError:
    """The one-paragraph error for a value over a limit: what, the limit, its setting, the fix."""
    return SpecError(f"{subject}, over the limit of {limit} ({setting}). To fix: {fix}, or "
                     f"raise {setting} (an environment variable).")


def file_size_error(path: Path, *, what: str, max_bytes: int) -> SpecError:
    return limit_error(
        f"{what} file {shown(path, max_chars=SHOWN_PATH_CHARS)} is bigger than "
        f"{max_bytes:,} bytes",
        limit=f"{max_bytes:,} bytes", setting="GREENPLACE_MAX_FILE_BYTES",
        fix="split the jobs into several files" if what == "jobs" else "shorten the file")


def depth_error(where: str, *, max_depth: int) -> SpecError:
    return limit_error(
        f"{where}: values nest deeper than {max_depth} levels", limit=f"{max_depth} levels",
        setting="GREENPLACE_MAX_DEPTH",
        fix="check the brackets and indentation (a jobs file nests 6 levels deep)")


def jobs_count_error(path: Path, *, max_jobs: int) -> SpecError:
    return limit_error(
        f"{path}: more than {max_jobs:,} jobs", limit=f"{max_jobs:,} jobs per file",
        setting="GREENPLACE_MAX_JOBS", fix="split the jobs into several files")


def check_run(run: str, *, where: str, max_bytes: int) -> None:
    """Refuse a ``run`` command that would not fit every cloud's boot script, or that
    holds a control character other than tab and newline (named, with its position)."""
    bad = _CONTROL.search(run)
    if bad is not None:
        code = ord(bad.group())
        name = _CONTROL_NAMES.get(code, "a control character")
        line = run.count("\n", 0, bad.start()) + 1
        column = bad.start() - (run.rfind("\n", 0, bad.start()) + 1) + 1
        raise SpecError(
            f"{where}, field 'run': character U+{code:04X} ({name}) at position "
            f"{bad.start() + 1:,} (line {line}, column {column} of the command) is not "
            "allowed: a boot script takes no control characters but newline and tab. To fix: "
            "remove it (write Windows line endings as plain newlines).")
    if len(run) * MAX_SCRIPT_BYTES_PER_CHAR <= max_bytes:
        return
    size = run_bytes(run)
    if size > max_bytes:
        raise limit_error(
            f"{where}, field 'run': the command takes {size:,} bytes in the boot script "
            "(each ' counts 5)", limit=f"{max_bytes:,} bytes",
            setting="GREENPLACE_MAX_RUN_BYTES",
            fix="ship the commands as a script in the image or a repository and call it")


def too_deep(data: Any, max_depth: int) -> bool:
    """Whether lists and mappings nest deeper than ``max_depth`` in ``data`` (parsed JSON).

    Iterative, level by level, visiting only lists and mappings: no recursion however deep.
    """
    level: list[Any] = [data] if type(data) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > max_depth:
            return True
        deeper: list[Any] = []
        for item in level:
            values: Iterable[Any] = item.values() if type(item) is dict else item
            deeper += [v for v in values if type(v) in _CONTAINERS]
        level = deeper
    return False


_CONTAINERS = frozenset({dict, list})  # what orjson builds: exact types, no subclasses


def json_depth_position(content: bytes, max_depth: int) -> tuple[int, int] | None:
    """(line, column), 1-based, of the first bracket nesting deeper than ``max_depth``
    in JSON text, or None. For the error path only: a scan in Python, not a parser."""
    depth = 0
    for token in _JSON_TOKEN.finditer(content):
        mark = token.group()[:1]
        if mark in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                offset = token.start()
                line = content.count(b"\n", 0, offset) + 1
                return line, offset - (content.rfind(b"\n", 0, offset) + 1) + 1
        elif mark in (b"]", b"}"):
            depth -= 1
    return None
