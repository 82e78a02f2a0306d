"""Reading user YAML files and turning validation failures into one clear paragraph.

Design choice: pydantic's ValidationError lists every problem with a location
tuple; users want the file, the job and the dotted field, so this module owns
that translation for both jobs files and policy files.

Design choice: YAML is parsed by libyaml (``yaml.CSafeLoader``, about 3x faster than
the pure-Python parser) when PyYAML was built with it, else by ``yaml.SafeLoader``;
both build plain data only (no Python objects from tags) and report line and column.
Nodes are composed by PyYAML's Python composer (``LimitedLoader``), which counts how
deep lists and mappings nest and stops at ``GREENPLACE_MAX_DEPTH`` with the line:
composing recurses, so unbounded nesting would end in a RecursionError (libyaml's
own composer recurses in C, and its parser allows 1,000 levels).

Design choice: a file is opened, its size checked (``GREENPLACE_MAX_FILE_BYTES``)
and only then read, at most one byte over the limit, so a 50 MB file is refused at
once and a pipe or device that reports no size cannot feed more either.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import yaml
from yaml.composer import Composer

from greenplace.scheduler.exceptions import SHOWN_PATH_CHARS, SpecError, shown
from greenplace.scheduler.limits import DEFAULT_MAX_DEPTH, depth_error, file_size_error

if TYPE_CHECKING:
    from greenplace.scheduler.settings import Limits

    SafeLoader = yaml.SafeLoader
else:
    SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# How many field problems one validation message lists (the rest are counted).
MAX_PROBLEMS_SHOWN = 10


def read_bytes(path: Path, *, what: str, max_bytes: int | None = None) -> bytes:
    """The file's content, at most ``max_bytes`` (default: ``GREENPLACE_MAX_FILE_BYTES``).

    Raises SpecError for a missing, unreadable or too big file.
    """
    if max_bytes is None:
        from greenplace.scheduler.settings import load_limits

        max_bytes = load_limits().file_bytes
    name = shown(path, max_chars=SHOWN_PATH_CHARS)
    try:
        with path.open("rb") as file:
            if os.fstat(file.fileno()).st_size > max_bytes:
                raise file_size_error(path, what=what, max_bytes=max_bytes)
            content = file.read(max_bytes + 1)
    except FileNotFoundError as exc:
        raise SpecError(f"{what} file {name} does not exist. To fix: check the path.") from exc
    except OSError as exc:  # its text repeats the path: only its reason is shown
        raise SpecError(f"{what} file {name} cannot be read: {exc.strerror or exc}. To fix: "
                        "check the path and its permissions.") from exc
    if len(content) > max_bytes:
        raise file_size_error(path, what=what, max_bytes=max_bytes)
    return content


class TooDeepError(yaml.MarkedYAMLError):
    """Lists and mappings nest deeper than the loader's ``max_depth``."""

    def __init__(self, mark: Any, *, max_depth: int) -> None:
        super().__init__(problem=f"nested deeper than {max_depth} levels", problem_mark=mark)
        self.max_depth = max_depth


class LimitedLoader(SafeLoader):
    """libyaml's parser (where built) with PyYAML's composer, which refuses nesting
    deeper than ``max_depth`` (set it after construction)."""

    max_depth = DEFAULT_MAX_DEPTH
    depth = 0  # how deep the node being composed is (lists and mappings)

    compose_node = Composer.compose_node
    compose_scalar_node = Composer.compose_scalar_node

    def _deeper(self) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise TooDeepError(self.peek_event().start_mark, max_depth=self.max_depth)

    def compose_sequence_node(self, anchor: Any) -> Any:
        self._deeper()
        try:
            return Composer.compose_sequence_node(self, anchor)
        finally:
            self.depth -= 1

    def compose_mapping_node(self, anchor: Any) -> Any:
        self._deeper()
        try:
            return Composer.compose_mapping_node(self, anchor)
        finally:
            self.depth -= 1


def yaml_error(path: Path, exc: yaml.YAMLError, *, max_depth: int | None = None) -> SpecError:
    """The one-paragraph error for broken (or too deeply nested) YAML, with its line and
    column. libyaml's scanner reads flow collections (``[[[...``) ahead of the composer
    and stops at its own 1,000 levels; with ``max_depth`` that is reported as the
    GREENPLACE_MAX_DEPTH error too."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, TooDeepError):
        return depth_error(f"{path}{where}", max_depth=exc.max_depth)
    if max_depth is not None and "maximum nesting depth" in problem:
        return depth_error(f"{path}{where}", max_depth=max_depth)
    problem = shown(problem, max_chars=200, quote=False)  # it may quote the user's tag
    return SpecError(
        f"{path}: broken YAML{where}: {problem}. To fix: correct the YAML syntax "
        "(indentation, colons, quotes)."
    )


def read_yaml(path: Path, *, what: str, limits: Limits | None = None) -> Any:
    """Parse a YAML file within ``limits`` (default: from the environment).

    Raises SpecError for a missing, too big, too deep or broken file.
    """
    if limits is None:
        from greenplace.scheduler.settings import load_limits

        limits = load_limits()
    content = read_bytes(path, what=what, max_bytes=limits.file_bytes)
    loader = LimitedLoader(content)  # type: ignore[arg-type]
    loader.max_depth = limits.depth
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc, max_depth=limits.depth) from exc
    finally:
        loader.dispose()


def _field_message(err: Any) -> str:
    """pydantic's message in the user's words: no Python type or class names."""
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["input"] is None and err["type"] != "missing":
        return "is empty (null); give it a value"
    message = re.sub(r" or instance of \w+", "", err["msg"]).removeprefix("Value error, ")
    if (err["type"] in ("literal_error", "enum") and isinstance(err["input"], str)
            and len(err["input"]) <= 100):
        expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        close = difflib.get_close_matches(err["input"].lower(), expected, n=1, cutoff=0.5)
        if close:
            message += f" (Did you mean {close[0]!r}?)"
    # A validator may quote what the user wrote (a country list): one message stays short.
    return shown(message, max_chars=300, quote=False)


def validation_message(exc: pydantic.ValidationError, *, where: str) -> str:
    """One paragraph listing the field errors, each with its dotted field path.

    Union branches (``dict[str,int]``, ``list[...]``) are dropped from the path, one
    field gets one message (the first pydantic gives), and a field whose member also
    failed is left to the member's more precise message. Field names are quoted
    through ``shown`` (a user's unknown field may be any length) and at most
    ``MAX_PROBLEMS_SHOWN`` problems are listed, the rest counted.
    """
    parts: dict[str, str] = {}
    parents: set[str] = set()
    for err in exc.errors(include_url=False):
        path = [str(p) for p in err["loc"] if "[" not in str(p)]
        field = ".".join(path) or "(top level)"
        if field not in parts:
            parts[field] = f"field {shown(field)}: {_field_message(err)}"
            parents.update(".".join(path[:n]) for n in range(1, len(path)))
    listed = [text for field, text in parts.items() if field not in parents]
    more = len(listed) - MAX_PROBLEMS_SHOWN
    tail = f"; and {more:,} more" if more > 0 else ""
    return (f"{where}: " + "; ".join(listed[:MAX_PROBLEMS_SHOWN]) + tail
            + ". To fix: correct the field(s) named above.")
