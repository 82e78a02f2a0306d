"""``greenplace prune``: the retention sweep by hand (see ``JobStore.prune``).

Beat runs the same sweep every ``GREENPLACE_PRUNE_INTERVAL_S`` in bounded batches; this
command runs it to the end, for an operator who wants the space back now, or wants to
see (``--dry-run``) what the next sweeps will delete.
"""

from __future__ import annotations

import re
from collections import Counter

import click

from greenplace.scheduler.exceptions import UserInputError, shown
from greenplace.scheduler.output import print_json, print_table
from greenplace.scheduler.settings import load_settings
from greenplace.scheduler.store import FinalJob, open_store, reachable

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration_s(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` (a decimal number and one unit) in seconds.

    Raises:
        UserInputError: anything else.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UserInputError(
            f"--older-than {shown(text)} is not a duration. To fix: write a number and one unit, "
            "d (days), h (hours), m (minutes) or s (seconds): 30d, 12h, 90m, 45s.")
    return float(match[1]) * _UNIT_S[match[2]]


def _row(job: FinalJob, action: str) -> dict[str, str]:
    return {"job_id": job.job_id, "name": job.name, "state": str(job.state),
            "ended_at": job.ended_at, "action": action}


@click.command("prune")
@click.option("--older-than", "older_than", metavar="DURATION",
              help="delete final jobs that ended longer ago than this: 30d, 12h, 90m, 45s "
                   "(default: GREENPLACE_RETENTION_DAYS)")
@click.option("--dry-run", is_flag=True, help="list what would be deleted; delete nothing")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table for people, json for machines")
def prune_cmd(older_than: str | None, dry_run: bool, output: str) -> None:
    """Delete final jobs (record and events) that ended longer ago than the retention period."""
    keep_s = parse_duration_s(older_than) if older_than is not None else None
    settings = load_settings()
    label = older_than.strip() if older_than is not None else f"{settings.retention_days:g}d"
    if keep_s is None:
        keep_s = settings.retention_s
    if keep_s is None:
        click.echo("note: retention is off (GREENPLACE_RETENTION_DAYS=0): nothing pruned. "
                   "To prune by hand anyway, pass --older-than (e.g. 30d).", err=True)
        if output == "json":
            print_json([])
        return
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        result = store.prune(older_than_s=keep_s, limit=2**62, dry_run=dry_run)
    if output == "json":
        print_json([_row(j, "would delete" if dry_run else "deleted") for j in result.pruned]
                   + [_row(j, "kept: instance deletion pending") for j in result.kept_deleting])
        return
    by_state = Counter(str(j.state) for j in result.pruned)
    ended = {state: sorted(j.ended_at for j in result.pruned if str(j.state) == state)
             for state in by_state}
    kept = ", ".join(j.job_id for j in result.kept_deleting[:10])
    if len(result.kept_deleting) > 10:
        kept += ", ..."
    print_table(
        f"final jobs that ended over {label} ago{' (dry run)' if dry_run else ''}",
        [("state", "left"), ("jobs", "right"), ("oldest ended", "left"),
         ("newest ended", "left")],
        [[state, str(n), ended[state][0] or "-", ended[state][-1] or "-"]
         for state, n in sorted(by_state.items())],
        footer=(f"{len(result.pruned)} job(s) {'would be deleted' if dry_run else 'deleted'}"
                + (f"; {len(result.kept_deleting)} kept until their instance is deleted "
                   f"({kept})" if result.kept_deleting else "")))
