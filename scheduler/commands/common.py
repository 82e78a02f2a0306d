"""What several commands share: the --policy / --override-policy options and jobs-file loading.

The rules (a --policy is a default, not a hammer) live in ``scheduler.service``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.jobs import Job

F = TypeVar("F", bound=Callable[..., object])


def policy_options(command: F) -> F:
    """Add --policy and --override-policy to a command that reads a jobs file."""
    command = click.option(
        "--override-policy", is_flag=True,
        help="apply --policy to every job, replacing jobs' own policies (each replaced one "
        "is named on stderr)")(command)
    return click.option(
        "--policy", "-p",
        help="preset name or policy YAML path (relative to the current folder) for the jobs "
        "without their own `policy:`")(command)


def load_cli_jobs(jobs_file: Path, catalog: Catalog, *, policy: str | None,
                  override_policy: bool, now: dt.datetime | None = None) -> list[Job]:
    """Load a jobs file with the command line's policy options; say on stderr what they did."""
    from greenplace.scheduler.submission import load_submission

    loaded = load_submission(jobs_file, catalog, policy=policy, override_policy=override_policy,
                             now=now)
    for note in loaded.notes:
        click.echo(note, err=True)
    return loaded.jobs
