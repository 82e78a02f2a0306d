"""The ``greenplace`` command line: the group, error handling and exit codes.

Exit codes: 0 ok; 1 some jobs unschedulable or failed; 2 bad input or usage.
Only this module catches errors broadly: a user's mistake prints one paragraph
on stderr, never a traceback. Commands live in ``greenplace.scheduler.commands.*``.

Design choice: the group knows each command by name, module and one-line help, and imports
a command's module only when that command runs. ``greenplace --help`` then loads click alone,
and a dry run loads no Redis, HTTP, Celery or cloud client. A test checks that each entry's
help is the command's own, so the table cannot drift from the code.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from greenplace.scheduler.exceptions import GreenplaceError

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT = 0, 1, 2

_COMMANDS_PACKAGE = "greenplace.scheduler.commands"

# name -> (module in scheduler/commands, attribute, the command's one-line help)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "agent": ("agent", "agent_cmd",
        "Run a job's command, measure its energy (NVML, RAPL or a model) and report it."),
    "admin": ("admin", "admin_group",
        "Administer the service: API tokens of teams (needs direct Redis access)."),
    "api": ("api", "api_cmd",
        "Serve the HTTP API (/v1), the dashboard (/) and /metrics; tokens from `admin token`."),
    "calibration": ("calibration", "calibration_group",
        "Measured power per accelerator, learnt from finished jobs: show or reset it."),
    "catalog": ("catalog", "catalog_group",
        "The catalog (regions, accelerators, offers): check it, refresh and show its prices."),
    "dry-run": ("placement", "dry_run",
        "Show where each job would run and why, with no service and no cloud call."),
    "estimate": ("placement", "estimate_cmd",
        "Energy and emissions of ACCELERATOR x COUNT for HOURS (Patterson et al. 2021)."),
    "plan": ("plan", "plan_cmd",
        "Plan a batch jointly: offers and start hours under capacity, budget and policies."),
    "regions": ("placement", "regions_cmd",
        "List catalog regions with their carbon figures, PUE and cheapest accelerator-hour."),
    "schema": ("placement", "schema_cmd",
        "Print the JSON Schema of a job, a whole jobs file or a policy (for editors and CI)."),
    "submit": ("queue", "submit_cmd",
        "Queue every job of JOBS_FILE and print their ids (nothing is written on bad input)."),
    "status": ("queue", "status_cmd",
        "Show jobs (all, or JOB_ID): state, where, instance, attempts, reason."),
    "events": ("queue", "events_cmd", "Show the event history of JOB_ID, oldest first."),
    "cancel": ("queue", "cancel_cmd", "Cancel JOB_ID; an instance it launched is deleted."),
    "logs": ("logs", "logs_cmd",
        "Print JOB_ID's stdout and stderr (jobs the local provider ran on this machine)."),
    "gc": ("gc", "gc_cmd",
        "Delete every greenplace-managed instance whose job is final, unknown or superseded."),
    "prune": ("prune", "prune_cmd",
        "Delete final jobs (record and events) that ended longer ago than the retention period."),
    "worker": ("queue", "worker_cmd",
        "Run a Celery worker with greenplace's options (acks late, prefetch 1, JSON only)."),
    "beat": ("queue", "beat_cmd",
        "Run Celery beat: it sends `reconcile`, the leak sweep `gc` and `prune` on schedule."),
    "report": ("report", "report_cmd",
        "Energy, CO2e, cost and savings vs baseline of launched jobs: totals, groups, jobs."),
    "sim": ("queue", "sim_group", "Inspect the local-sim provider (the simulated multi-cloud)."),
    "signals": ("signals", "signals_cmd",
        "Current carbon signal values per source, and which one the fallback chain uses."),
    "backtest": ("signals", "backtest_cmd",
        "Replay JOBS_FILE over an hourly carbon trace and compare placement strategies."),
    "offers": ("offers", "offers_cmd",
        "List every instance offer: hardware, form factor, TDP, prices and their source."),
    "providers": ("providers", "providers_group", "Cloud adapters: credentials and set-up."),
    "policies": ("policies", "policies_group",
        "The preset placement policies: their weights, carbon signal and constraints."),
    "validate": ("policies", "validate_cmd",
        "Check a jobs file or a policy file as dry-run and submit would; prints OK or the error."),
}


def load_command(name: str) -> click.Command:
    """Import the module of command ``name`` and return the command."""
    module, attribute, _ = LAZY_COMMANDS[name]
    command: click.Command = getattr(importlib.import_module(f"{_COMMANDS_PACKAGE}.{module}"),
                                     attribute)
    return command


class LazyGroup(click.Group):
    """A group whose commands are imported on first use (see the module docstring)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in LAZY_COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))  # one line each, as click does
        rows = [(name, click.Command(name, help=LAZY_COMMANDS[name][2]).get_short_help_str(limit))
                for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="greenplace")
def cli() -> None:
    """greenplace: place ML training jobs in the greenest cloud region the policy allows."""


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``greenplace regions | head``): stop quietly, exit 0.

    Design choice: as the Python docs advise for SIGPIPE, stdout is pointed at devnull so
    that the interpreter's final flush does not raise a second time.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the documented exit code."""
    stdout = sys.stdout
    try:
        code = cli.main(args=argv, prog_name="greenplace", standalone_mode=False)
        sys.stdout.flush()
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    except SystemExit:
        # click turns EPIPE into exit 1, and only then swaps stdout for a wrapper.
        if sys.stdout is stdout:
            raise
        code = _quiet_broken_pipe()
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = EXIT_BAD_INPUT
    except click.Abort:
        click.echo("Aborted.", err=True)
        code = EXIT_SOME_FAILED
    except GreenplaceError as exc:
        click.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else EXIT_OK)
