"""The ``greenplace`` command line: the group, error handling and exit codes.

Exit codes: 0 ok; 1 some jobs unschedulable or failed; 2 bad input or usage.
Only this module catches errors broadly: a user's mistake prints one paragraph
on stderr, never a traceback. Commands live in ``greenplace.scheduler.commands.*``.
"""

from __future__ import annotations

import os
import sys

import click

from greenplace.scheduler.commands import placement, policies, queue, signals
from greenplace.scheduler.commands import providers as provider_commands
from greenplace.scheduler.exceptions import GreenplaceError

EXIT_OK, EXIT_SOME_FAILED, EXIT_BAD_INPUT = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="greenplace")
def cli() -> None:
    """greenplace: place ML training jobs in the greenest cloud region the policy allows."""


for command in placement.COMMANDS:
    cli.add_command(command)

for command in queue.COMMANDS:
    cli.add_command(command)

for command in signals.COMMANDS:
    cli.add_command(command)

for command in provider_commands.COMMANDS:
    cli.add_command(command)

for command in policies.COMMANDS:
    cli.add_command(command)


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
