"""Reading jobs files of any size, one raw job at a time: YAML, JSON and JSON lines.

A jobs file holds ``jobs:`` (a list) or a single job mapping, in YAML or JSON, or one
JSON object per line (JSON lines). ``.json`` files are read as JSON and ``.jsonl`` /
``.ndjson`` as JSON lines; any other file is JSON if its content parses as JSON, JSON
lines if its first line is a JSON object and more lines follow, else YAML. Every raw
job carries the line it starts on (unknown inside a ``.json`` document), for errors.

Design choice: a YAML jobs file is not loaded whole. libyaml parses it and PyYAML's
composer builds one job of the ``jobs:`` list at a time, which is then constructed
(with the same safe constructor) and handed on. A whole-file load keeps a node graph
of about 10 KB per job (1 GB for 100,000 jobs) and spends two thirds of its time in
the garbage collector walking it; streaming keeps memory to the validated jobs and
makes a large file load about 3x faster than ``yaml.load`` with ``CSafeLoader``
(benchmarks/README.md).

The limits of ``scheduler.limits`` are checked here as the file is read: its size
before reading, the nesting depth while YAML is composed (JSON: after orjson parsed a
document or line, whose own limit of 1,024 levels is reported the same way), and the
number of jobs as they are yielded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import ComposerError
from yaml.events import (
    MappingEndEvent,
    MappingStartEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, ScalarNode

from greenplace.scheduler.exceptions import SpecError, shown
from greenplace.scheduler.limits import (
    depth_error,
    file_size_error,
    jobs_count_error,
    json_depth_position,
    too_deep,
)
from greenplace.scheduler.yamlfile import LimitedLoader, read_bytes, yaml_error

if TYPE_CHECKING:
    from greenplace.scheduler.settings import Limits

JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True, slots=True)
class RawJob:
    """One job as parsed, before validation."""

    data: Any
    line: int | None  # 1-based line the job starts on, when known


def read_jobs(path: Path, limits: Limits, *, content: bytes | None = None) -> Iterator[RawJob]:
    """The raw jobs of a jobs file, in file order.

    ``content``: the file's bytes when they did not come from a file (an API request
    body); ``path`` then only names them in errors.

    Raises (while iterating):
        SpecError: a missing or unreadable file, broken YAML or JSON (with line and
            column), a top level that is not ``jobs:`` with a non-empty list or one
            job, or a file over ``limits`` (size, nesting depth, number of jobs). A
            problem at the top level after the ``jobs:`` list is raised after its jobs.
    """
    if content is None:
        content = read_bytes(path, what="jobs", max_bytes=limits.file_bytes)
    elif len(content) > limits.file_bytes:
        raise file_size_error(path, what="jobs", max_bytes=limits.file_bytes)
    suffix = path.suffix.lower()
    if suffix in JSON_LINES_SUFFIXES or (suffix != ".json" and _json_lines(content)):
        raw_jobs = _read_json_lines(path, content, max_depth=limits.depth)
    elif suffix == ".json" or _json_document(content):
        data = _parse_json(path, content, max_depth=limits.depth)
        raw_jobs = _top_level(path, data, line=None)
    else:
        raw_jobs = _read_yaml(path, content, max_depth=limits.depth)
    for count, raw_job in enumerate(raw_jobs, start=1):
        if count > limits.jobs:
            raise jobs_count_error(path, max_jobs=limits.jobs)
        yield raw_job


def _json_document(content: bytes) -> bool:
    import orjson

    if content.lstrip()[:1] not in (b"{", b"["):
        return False
    try:
        orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return True


def _json_lines(content: bytes) -> bool:
    import orjson

    first, _, rest = content.lstrip().partition(b"\n")
    if not first.startswith(b"{") or not rest.strip():
        return False
    try:
        return isinstance(orjson.loads(first), dict)
    except orjson.JSONDecodeError:
        return False


def _parse_json(path: Path, content: bytes, *, max_depth: int, line: int | None = None) -> Any:
    """Parse a JSON document (or, with ``line``, one line of JSON lines) within ``max_depth``."""
    import orjson

    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        if exc.msg != "depth limit exceeded":  # orjson's own limit (1,024): reported below
            where = (f"line {exc.lineno}, column {exc.colno}" if line is None
                     else f"line {line}, column {exc.colno}")
            fix = "write one JSON object per line" if line else "correct the JSON syntax"
            raise SpecError(f"{path}: broken JSON at {where}: {exc.msg}. To fix: {fix}.") from exc
        data = None
    # A document with fewer brackets than the limit cannot nest deeper (a C-speed count
    # spares the walk for each line of a JSON-lines file).
    brackets = content.count(b"[") + content.count(b"{")
    if data is None or (brackets > max_depth and too_deep(data, max_depth)):
        deep_at = json_depth_position(content, max_depth) or (1, 1)
        at_line = deep_at[0] if line is None else line
        raise depth_error(f"{path} at line {at_line}, column {deep_at[1]}", max_depth=max_depth)
    return data


def _read_json_lines(path: Path, content: bytes, *, max_depth: int) -> Iterator[RawJob]:
    count = 0
    for number, text in enumerate(content.splitlines(), start=1):
        if text.strip():
            count += 1
            yield RawJob(_parse_json(path, text, max_depth=max_depth, line=number), number)
    if not count:
        raise SpecError(f"{path}: no jobs (the file is empty). To fix: write one JSON "
                        "object per line, one line per job.")


def kind_of(value: object) -> str:
    """What a YAML value is, in the user's words (never a Python type name)."""
    if value is None:
        return "nothing (an empty document or entry)"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number"}
    return names.get(type(value), "a scalar value")


def _top_level(path: Path, data: Any, *, line: int | None) -> Iterator[RawJob]:
    """The jobs of a whole parsed document: ``jobs:`` with a list, or one job."""
    if isinstance(data, dict) and "jobs" in data:
        _no_extra_fields(path, data)
        raw_jobs = data["jobs"]
        if not isinstance(raw_jobs, list) or not raw_jobs:
            raise SpecError(f"{path}: `jobs` must be a non-empty list of jobs.")
        yield from (RawJob(raw, None) for raw in raw_jobs)
    elif isinstance(data, dict):
        yield RawJob(data, line)
    else:
        raise SpecError(
            f"{path}: expected `jobs:` with a list of jobs, or a single job mapping; "
            f"found {kind_of(data)}."
        )


def _no_extra_fields(path: Path, top: dict[Any, Any]) -> None:
    extra = sorted(str(k) for k in top if k != "jobs")
    if extra:
        more = f", and {len(extra) - 5:,} more" if len(extra) > 5 else ""
        raise SpecError(
            f"{path}: unknown top-level field(s) [{', '.join(shown(k) for k in extra[:5])}"
            f"{more}]. To fix: a jobs file holds `jobs:` (a list) or a single job."
        )


def _read_yaml(path: Path, content: bytes, *, max_depth: int) -> Iterator[RawJob]:
    loader = LimitedLoader(content)  # type: ignore[arg-type]
    loader.max_depth = max_depth
    try:
        yield from _stream_yaml(path, loader)
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc, max_depth=max_depth) from exc
    finally:
        loader.dispose()


def _stream_yaml(path: Path, loader: Any) -> Iterator[RawJob]:
    """Yield the items of a top-level ``jobs:`` list as they are parsed; any other
    document is composed whole and read like a JSON document."""
    loader.anchors = {}
    loader.get_event()  # stream start
    if loader.check_event(StreamEndEvent):
        yield from _top_level(path, None, line=None)  # an empty file
        return
    document = loader.get_event()
    if not loader.check_event(MappingStartEvent):
        yield from _top_level(path, loader.construct_document(loader.compose_node(None, None)),
                              line=None)
    else:
        start = loader.get_event()
        tag = start.tag if start.tag not in (None, "!") else loader.resolve(
            MappingNode, None, start.implicit)
        top = MappingNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        loader.depth = 1  # inside the top mapping, composed here rather than by the loader
        jobs_seen = 0
        while not loader.check_event(MappingEndEvent):
            key = loader.compose_node(top, None)
            if (isinstance(key, ScalarNode) and key.value == "jobs"
                    and loader.check_event(SequenceStartEvent)):
                loader.get_event()
                loader.depth = 2  # and inside its `jobs:` list
                while not loader.check_event(SequenceEndEvent):
                    node = loader.compose_node(None, None)
                    jobs_seen += 1
                    yield RawJob(loader.construct_document(node), node.start_mark.line + 1)
                loader.get_event()
                loader.depth = 1
                jobs_seen = jobs_seen or -1  # -1: a `jobs:` list with nothing in it
            else:
                top.value.append((key, loader.compose_node(top, key)))
        top.end_mark = loader.get_event().end_mark
        rest = loader.construct_document(top)
        if jobs_seen:
            _no_extra_fields(path, rest)
            if jobs_seen < 0:
                raise SpecError(f"{path}: `jobs` must be a non-empty list of jobs.")
        else:
            yield from _top_level(path, rest, line=start.start_mark.line + 1)
    loader.get_event()  # document end
    if not loader.check_event(StreamEndEvent):
        raise ComposerError("expected a single document in the stream", document.start_mark,
                            "but found another document", loader.get_event().start_mark)
