"""The capacity file: how many accelerators a batch plan may use at once, per (cloud, region).

A YAML file (schema: ``greenplace schema capacity``)::

    pools:
      - cloud: aws
        region: us-east-1
        accelerators: [H100]      # one name, or several sharing the limit
        limit: 16                 # accelerators running at once
        spot: false               # optional: only on-demand (true: only spot; absent: both)
        hourly_limits: [16, 16, 8, 8]  # optional: hour 0, 1, ... of the plan; then `limit`

Each row becomes one ``CapacityPool`` counted in accelerators, its ``source`` naming the
file and line, so an unschedulable job can say which row bound it.

Design choice: names are checked against the catalog when the file is read (cloud, region,
accelerator, with a "did you mean"), so a typo is refused before any planning instead of
silently matching nothing; errors are one paragraph naming the file, the line and the field,
as the jobs-file loader's are.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field

from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import SpecError, UnknownNameError, shown
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.yamlfile import LimitedLoader, read_bytes, validation_message, yaml_error

# Per-hour limits a row may list (a year of hours): the planner's horizon is far shorter.
MAX_HOURLY_LIMITS = 8760


class PoolRow(BaseModel):
    """One row: at most ``limit`` accelerators of ``accelerators`` at once in cloud:region."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: str = Field(description="aws, gcp or azure (a cloud of the catalog)")
    region: str = Field(description="the region's name in that cloud, e.g. us-east-1")
    accelerators: str | list[str] = Field(
        description="an accelerator name, or several that share this limit")
    limit: int = Field(ge=0, le=1_000_000, description="accelerators running at once")
    spot: bool | None = Field(
        None, description="true: only spot instances draw on it; false: only on-demand; "
        "absent: both")
    hourly_limits: list[int] = Field(
        default_factory=list, max_length=MAX_HOURLY_LIMITS,
        description="per-hour limits from the plan's start (hour 0 first); later hours use "
        "`limit`")

    @pydantic.field_validator("hourly_limits")
    @classmethod
    def _non_negative(cls, value: list[int]) -> list[int]:
        if any(v < 0 for v in value):
            raise ValueError("every hourly limit must be 0 or more")
        return value

    @pydantic.field_validator("accelerators")
    @classmethod
    def _some(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("list at least one accelerator")
        return value


class CapacityFile(BaseModel):
    """A whole capacity file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pools: list[PoolRow] = Field(min_length=1)


def capacity_file_schema() -> dict[str, Any]:
    """The JSON Schema of a capacity file (``greenplace schema capacity``)."""
    return {"title": "greenplace capacity file", **CapacityFile.model_json_schema()}


def _parse(path: Path) -> tuple[Any, list[int]]:
    """The file's data, and the line (1-based) of each item of ``pools`` (0 when unknown)."""
    from greenplace.scheduler.settings import load_limits

    limits = load_limits()
    content = read_bytes(path, what="capacity", max_bytes=limits.file_bytes)
    loader = LimitedLoader(content)  # type: ignore[arg-type]
    loader.max_depth = limits.depth
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc, max_depth=limits.depth) from exc
    finally:
        loader.dispose()
    lines: list[int] = []
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if getattr(key, "value", None) == "pools" and isinstance(value, yaml.SequenceNode):
                lines = [item.start_mark.line + 1 for item in value.value]
    return data, lines


def _close(name: str, known: list[str]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.5) if len(name) < 200 else []
    return f" (Did you mean {match[0]!r}?)" if match else ""


def _pool(row: PoolRow, catalog: Catalog, *, where: str) -> CapacityPool:
    """One row checked against the catalog, as a pool."""
    clouds = sorted({r.cloud for r in catalog.regions})
    if row.cloud not in clouds:
        raise SpecError(f"{where}, field 'cloud': unknown cloud {shown(row.cloud)}"
                        f"{_close(row.cloud, clouds)}. To fix: use one of {', '.join(clouds)}.")
    regions = sorted(r.region for r in catalog.regions if r.cloud == row.cloud)
    if row.region not in regions:
        raise SpecError(f"{where}, field 'region': {row.cloud} has no region "
                        f"{shown(row.region)} in the catalog{_close(row.region, regions)}. "
                        f"To fix: use a region `greenplace regions --cloud {row.cloud}` lists.")
    names = [row.accelerators] if isinstance(row.accelerators, str) else row.accelerators
    canonical = []
    for name in names:
        try:
            canonical.append(catalog.accelerator(name).name)
        except UnknownNameError as exc:
            raise SpecError(f"{where}, field 'accelerators': {exc}") from exc
    return CapacityPool(cloud=row.cloud, region=row.region, unit=Unit.ACCELERATORS,
                        accelerators=tuple(dict.fromkeys(canonical)), spot=row.spot,
                        limit=row.limit, hourly_limits=tuple(row.hourly_limits),
                        source=where)


def load_capacity(path: Path, catalog: Catalog) -> list[CapacityPool]:
    """The pools of a capacity file; all or nothing (SpecError naming file, line, field)."""
    data, lines = _parse(path)
    name = shown(str(path), max_chars=256, quote=False)
    if not isinstance(data, dict):
        raise SpecError(f"{name}: a capacity file is a mapping with `pools:` (a list of "
                        "rows), got " + ("an empty file" if data is None else
                                         type(data).__name__.replace("str", "text")) +
                        ". To fix: see `greenplace schema capacity` and "
                        "examples/capacity.yaml.")
    try:
        parsed = CapacityFile.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        where = name
        if len(first) >= 2 and first[0] == "pools" and isinstance(first[1], int):
            line = lines[first[1]] if first[1] < len(lines) else 0
            where = f"{name} line {line}, pool {first[1] + 1}" if line else name
        raise SpecError(validation_message(exc, where=where)) from exc
    return [_pool(row, catalog, where=f"{name} line {lines[i] if i < len(lines) else '?'}, "
                  f"pool {i + 1}") for i, row in enumerate(parsed.pools)]


__all__ = ["CapacityFile", "PoolRow", "capacity_file_schema", "load_capacity"]
