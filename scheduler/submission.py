"""Reading a submission: a jobs file (or an API request body) with the policy options.

Shared by the CLI and the API (and loaded without Redis, Celery or HTTP, so a dry run
stays light).

Design choice: a policy given with the submission is a default, not a hammer. It
applies to jobs without their own `policy:`; replacing a job's own policy (which may
carry constraints such as data residency) takes ``override_policy``, and every job that
loses its own is named in the notes and in ``Job.replaced_policy``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from greenplace.policies.model import Policy, load_policy, preset_names
from greenplace.scheduler.catalog import Catalog
from greenplace.scheduler.exceptions import SpecError, UserInputError, shown
from greenplace.scheduler.jobs import Job, load_jobs


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """Validated jobs, and what the policy options did to them (one line each)."""

    jobs: list[Job]
    notes: list[str]


def load_policy_option(ref: str, catalog: Catalog, *, label: str | None = "option --policy",
                       policy_files: bool = True) -> Policy:
    """A policy named by the caller (CLI option or API query), checked against the catalog;
    a relative path is taken from the current folder. Errors start with ``label`` if any."""
    from greenplace.scheduler.policycheck import check_policy  # NumPy: loaded when checking

    try:
        if not policy_files and ref not in preset_names():
            raise SpecError(f"{shown(ref)} is not a preset, and the API reads no policy "
                            f"files. To fix: name a preset ({', '.join(preset_names())}).")
        policy = load_policy(ref, base_dir=Path.cwd())
        check_policy(policy, catalog)
    except UserInputError as exc:
        if label is None:
            raise
        raise SpecError(f"{label}: {exc}") from exc
    return policy


def _check_job_policies(source: Path, jobs: list[Job], catalog: Catalog,
                        *, skip: Policy | None) -> None:
    """Check each distinct policy of ``jobs`` against the catalog, naming the job using it."""
    from greenplace.scheduler.policycheck import check_policy  # NumPy: loaded when checking

    checked = {id(skip)}
    for job in jobs:
        if id(job.policy) in checked:
            continue
        checked.add(id(job.policy))
        try:
            check_policy(job.policy, catalog)
        except UserInputError as exc:
            raise SpecError(f"{source}, job {job.name!r}, field 'policy': {exc}") from exc


def load_submission(source: Path, catalog: Catalog, *, policy: str | None,
                    override_policy: bool, now: dt.datetime | None = None,
                    content: bytes | None = None, policy_label: str = "option --policy",
                    policy_files: bool = True) -> Loaded:
    """Load a jobs file (or request body ``content``, named ``source``) with the policy
    options; all or nothing (see the module docstring for what the options do).

    ``policy_files``: False (the API) refuses a policy given by file path, in the
    options or in a job: a request must not make the server read its own files.
    """
    if override_policy and policy is None:
        raise UserInputError("--override-policy needs --policy (the policy that replaces each "
                             "job's own). To fix: add --policy NAME_OR_PATH, or drop "
                             "--override-policy.")
    chosen = (load_policy_option(policy, catalog, label=policy_label, policy_files=policy_files)
              if policy is not None else None)
    jobs = load_jobs(source, catalog, policy=chosen, override_policy=override_policy, now=now,
                     content=content, policy_files=policy_files)
    _check_job_policies(source, jobs, catalog, skip=chosen)
    notes: list[str] = []
    if chosen is not None:
        replaced = [f"{j.name} (own policy {j.replaced_policy!r})" for j in jobs
                    if j.replaced_policy]
        kept = [f"{j.name} ({j.policy.name})" for j in jobs if j.policy is not chosen]
        if replaced:
            notes.append(f"warning: --override-policy drops the own policy, and every "
                         f"constraint in it, of {len(replaced)} job(s): {', '.join(replaced)}; "
                         f"they use {chosen.name!r}.")
        elif kept:
            notes.append(f"note: --policy {chosen.name} applies to the jobs without their own "
                         f"policy; {len(kept)} job(s) keep theirs: {', '.join(kept)}. To "
                         "replace them too, add --override-policy.")
    return Loaded(jobs=jobs, notes=notes)
