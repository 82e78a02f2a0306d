"""Rendering command results: a rich table for people, JSON or CSV for machines."""

from __future__ import annotations

import csv
import functools
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from rich.console import Console

FORMATS = ("table", "json", "csv")
# Work on more items than this shows a progress bar (on stderr, when it is a terminal).
PROGRESS_MIN_ITEMS = 1_000
_ROWS_PER_WRITE = 512

T = TypeVar("T")


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix=f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_json_rows(rows: Iterable[dict[str, Any]]) -> None:
    """Print a JSON array of ``rows`` as they come, never holding them all.

    The layout is ``print_json``'s (two-space indent); orjson encodes each row.
    """
    import orjson

    def encoded() -> Iterator[bytes]:
        for row in rows:
            yield b"  " + orjson.dumps(row, default=str, option=orjson.OPT_INDENT_2).replace(
                b"\n", b"\n  ")

    pending: list[bytes] = []
    opened = False
    for item in encoded():
        pending.append(item)
        if len(pending) >= _ROWS_PER_WRITE:
            sys.stdout.write(("[\n" if not opened else ",\n") + b",\n".join(pending).decode())
            opened, pending = True, []
    if pending:
        sys.stdout.write(("[\n" if not opened else ",\n") + b",\n".join(pending).decode())
        opened = True
    sys.stdout.write("\n]\n" if opened else "[]\n")


def progress(items: Iterable[T], *, total: int, what: str,
             min_items: int = PROGRESS_MIN_ITEMS) -> Iterable[T]:
    """``items``, with a transient progress bar on stderr when stderr is a terminal and
    there are more than ``min_items`` of them; stdout is never touched."""
    if total <= min_items or not sys.stderr.isatty():
        return items
    from rich.progress import track

    return track(items, total=total, description=what, console=Console(stderr=True),
                 transient=True)


def print_csv(rows: Sequence[dict[str, Any]]) -> None:
    flat = [_flatten(r) for r in rows]
    columns: dict[str, None] = {}
    for r in flat:
        columns.update(dict.fromkeys(r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    sys.stdout.write(buf.getvalue())


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: '-' for missing, fixed digits for numbers."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


@functools.cache
def _console_class() -> type[Console]:
    """rich's Console, but a closed stdout raises BrokenPipeError (the CLI exits 0 quietly).

    rich's own handling exits with code 1, which breaks ``greenplace regions | head``
    under ``set -o pipefail``. Built on first use: only commands that draw import rich.
    """
    from rich.console import Console

    class QuietPipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return QuietPipeConsole


def console() -> Console:
    """The console every table goes to: full width when stdout is not a terminal."""
    return _console_class()(width=200 if not sys.stdout.isatty() else None)


def print_table(
    title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]],
    *, footer: str = "",
) -> None:
    """``columns``: (header, justify) pairs; ``rows``: already formatted cells."""
    from rich.table import Table  # imported by the commands that draw a table

    table = Table(title=title, title_justify="left")
    for header, justify in columns:
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*row)
    out = console()
    out.print(table)
    if footer:
        out.print(footer)


def print_rows(
    output: str, rows: Sequence[dict[str, Any]], *, title: str,
    columns: Sequence[tuple[str, str]], cells: Sequence[Sequence[str]], footer: str = "",
) -> None:
    """``rows`` in the chosen ``--output``: JSON, CSV, or the table of ``cells`` (formatted)."""
    if output == "json":
        print_json(rows)
    elif output == "csv":
        print_csv(rows)
    else:
        print_table(title, columns, cells, footer=footer)
