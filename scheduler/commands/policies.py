"""Commands about input files: `policies list|show` (the presets) and `validate FILE`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
import yaml

from greenplace.policies.model import Policy, preset_names
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.commands.common import load_cli_jobs
from greenplace.scheduler.output import FORMATS, print_json, print_rows
from greenplace.scheduler.submission import load_policy_option
from greenplace.scheduler.yamlfile import read_yaml

_JOB_KEYS = frozenset({"jobs", "run", "resources", "work"})


def policy_view(policy: Policy) -> dict[str, Any]:
    """A policy as shown to people and machines: only the constraints it sets."""
    data = policy.model_dump(mode="json")
    data["constraints"] = policy.constraints.model_dump(mode="json", exclude_defaults=True)
    return data


@click.group("policies")
def policies_group() -> None:
    """The preset placement policies: their weights, carbon signal and constraints."""


@policies_group.command("list")
@click.option("--output", "-o", type=click.Choice(FORMATS), default="table", show_default=True)
def policies_list(output: str) -> None:
    """List the preset policies (use one with --policy NAME or `policy: NAME` in a job)."""
    catalog = load_catalog()
    rows = [policy_view(load_policy_option(name, catalog, label=f"preset {name}"))
            for name in preset_names()]
    print_rows(
        output, rows, title=f"{len(rows)} preset policies",
        columns=[("name", "left"), ("carbon", "right"), ("cost", "right"), ("time", "right"),
                 ("signal", "left"), ("constraints", "left"), ("attempts", "right"),
                 ("description", "left")],
        cells=[[r["name"], f"{r['weights']['carbon']:g}", f"{r['weights']['cost']:g}",
                f"{r['weights']['time']:g}", r["carbon_signal"],
                "; ".join(f"{k}: {v}" for k, v in r["constraints"].items()) or "-",
                str(r["failover"]["max_attempts"]), r["description"]] for r in rows],
        footer="Default: balanced. `greenplace policies show NAME` prints one in full.")


@policies_group.command("show")
@click.argument("name_or_path")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table: the policy as YAML; json for machines")
def policies_show(name_or_path: str, output: str) -> None:
    """Show one policy: a preset NAME or a policy YAML path (relative to the current folder)."""
    policy = load_policy_option(name_or_path, load_catalog(), label=f"policy {name_or_path!r}")
    if output == "json":
        print_json(policy_view(policy))
    else:
        click.echo(yaml.safe_dump(policy_view(policy), sort_keys=False).rstrip())


@click.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["auto", "jobs", "policy"]), default="auto",
              show_default=True, help="auto: a file with `jobs:`, `run:`, `resources:` or "
              "`work:` is a jobs file, any other mapping a policy file")
def validate_cmd(file: Path, kind: str) -> None:
    """Check a jobs file or a policy file as dry-run and submit would; prints OK or the error.

    Exit code 0 when valid, 2 with a one-paragraph error otherwise (nothing is placed).
    """
    catalog = load_catalog()
    if kind == "auto":
        data = read_yaml(file, what="input")
        is_policy = isinstance(data, dict) and not _JOB_KEYS & set(data)
        kind = "policy" if is_policy else "jobs"
    if kind == "policy":
        policy = load_policy_option(str(file.absolute()), catalog, label=None)
        click.echo(f"OK: {file} is a valid policy ({policy.name}).")
        return
    jobs = load_cli_jobs(file, catalog, policy=None, override_policy=False,
                         now=dt.datetime.now(dt.UTC))
    used = ", ".join(dict.fromkeys(j.policy.name for j in jobs))
    click.echo(f"OK: {file} is a valid jobs file: {len(jobs)} job(s), policies {used}.")
