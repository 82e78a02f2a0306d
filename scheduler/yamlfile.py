"""Reading user YAML files and turning validation failures into one clear paragraph.

Design choice: pydantic's ValidationError lists every problem with a location
tuple; users want the file, the job and the dotted field, so this module owns
that translation for both jobs files and policy files.

Design choice: YAML is parsed by libyaml (``yaml.CSafeLoader``, about 3x faster than
the pure-Python parser) when PyYAML was built with it, else by ``yaml.SafeLoader``;
both build plain data only (no Python objects from tags) and report line and column.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic
import yaml

from greenplace.scheduler.exceptions import SpecError

if TYPE_CHECKING:
    SafeLoader = yaml.SafeLoader
else:
    SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_bytes(path: Path, *, what: str) -> bytes:
    """The file's content. Raises SpecError for a missing or unreadable file."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise SpecError(
            f"{what} file {str(path)!r} does not exist. To fix: check the path."
        ) from exc
    except OSError as exc:
        raise SpecError(f"{what} file {str(path)!r} cannot be read: {exc}.") from exc


def yaml_error(path: Path, exc: yaml.YAMLError) -> SpecError:
    """The one-paragraph error for broken YAML, with its line and column."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return SpecError(
        f"{path}: broken YAML{where}: {problem}. To fix: correct the YAML syntax "
        "(indentation, colons, quotes)."
    )


def read_yaml(path: Path, *, what: str) -> Any:
    """Parse a YAML file. Raises SpecError for a missing file or broken YAML."""
    content = read_bytes(path, what=what)
    try:
        return yaml.load(content, Loader=SafeLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from exc


def _field_message(err: Any) -> str:
    """pydantic's message in the user's words: no Python type or class names."""
    if err["type"] == "extra_forbidden":
        return "unknown field"
    if err["input"] is None and err["type"] != "missing":
        return "is empty (null); give it a value"
    message = re.sub(r" or instance of \w+", "", err["msg"]).removeprefix("Value error, ")
    if err["type"] in ("literal_error", "enum") and isinstance(err["input"], str):
        expected = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        close = difflib.get_close_matches(err["input"].lower(), expected, n=1, cutoff=0.5)
        if close:
            message += f" (Did you mean {close[0]!r}?)"
    return message


def validation_message(exc: pydantic.ValidationError, *, where: str) -> str:
    """One paragraph listing every field error, each with its dotted field path.

    Union branches (``dict[str,int]``, ``list[...]``) are dropped from the path, one
    field gets one message (the first pydantic gives), and a field whose member also
    failed is left to the member's more precise message.
    """
    parts: dict[str, str] = {}
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"] if "[" not in str(p)) or "(top level)"
        parts.setdefault(field, f"field {field!r}: {_field_message(err)}")
    shown = [text for field, text in parts.items()
             if not any(other.startswith(f"{field}.") for other in parts)]
    return (f"{where}: " + "; ".join(shown)
            + ". To fix: correct the field(s) named above.")
