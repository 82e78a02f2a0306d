"""What several commands share: the --policy / --override-policy options and jobs-file loading.

Design choice: a policy named on the command line is a default, not a hammer. It applies
to jobs without their own `policy:`; replacing a job's own policy (which may carry
constraints such as data residency) takes --override-policy, and every job that loses
its own policy is named on stderr and in JSON output (``replaced_policy``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from greenplace.policies.model import Policy, load_policy
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import SpecError, UserInputError
from greenplace.scheduler.jobs import Job, load_jobs

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


def load_cli_policy(ref: str, catalog: Catalog, *,
                    label: str | None = "option --policy") -> Policy:
    """A policy named on the command line: a relative path is taken from the current folder.

    Errors start with ``label`` (the option or argument that named the policy), if any.
    """
    from greenplace.scheduler.policycheck import check_policy  # NumPy: loaded when checking

    try:
        policy = load_policy(ref, base_dir=Path.cwd())
        check_policy(policy, catalog)
    except UserInputError as exc:
        if label is None:
            raise
        raise SpecError(f"{label}: {exc}") from exc
    return policy


def check_job_policies(jobs_file: Path, jobs: list[Job], catalog: Catalog,
                       *, skip: Policy | None = None) -> None:
    """Check each distinct policy of ``jobs`` against the catalog, naming the job that uses it."""
    from greenplace.scheduler.policycheck import check_policy  # NumPy: loaded when checking

    checked = {id(skip)}
    for job in jobs:
        if id(job.policy) in checked:
            continue
        checked.add(id(job.policy))
        try:
            check_policy(job.policy, catalog)
        except UserInputError as exc:
            raise SpecError(f"{jobs_file}, job {job.name!r}, field 'policy': {exc}") from exc


def load_cli_jobs(jobs_file: Path, catalog: Catalog, *, policy: str | None,
                  override_policy: bool, now: dt.datetime | None = None) -> list[Job]:
    """Load a jobs file with the command line's policy options; say on stderr what they did."""
    if override_policy and policy is None:
        raise UserInputError("--override-policy needs --policy (the policy that replaces each "
                             "job's own). To fix: add --policy NAME_OR_PATH, or drop "
                             "--override-policy.")
    cli_policy = load_cli_policy(policy, catalog) if policy is not None else None
    jobs = load_jobs(jobs_file, catalog, policy=cli_policy, override_policy=override_policy,
                     now=now)
    check_job_policies(jobs_file, jobs, catalog, skip=cli_policy)
    if cli_policy is None:
        return jobs
    replaced = [f"{j.name} (own policy {j.replaced_policy!r})" for j in jobs if j.replaced_policy]
    kept = [f"{j.name} ({j.policy.name})" for j in jobs if j.policy is not cli_policy]
    if replaced:
        click.echo(f"warning: --override-policy drops the own policy, and every constraint in "
                   f"it, of {len(replaced)} job(s): {', '.join(replaced)}; they use "
                   f"{cli_policy.name!r}.", err=True)
    elif kept:
        click.echo(f"note: --policy {cli_policy.name} applies to the jobs without their own "
                   f"policy; {len(kept)} job(s) keep theirs: {', '.join(kept)}. To replace "
                   "them too, add --override-policy.", err=True)
    return jobs
