"""``greenplace agent``: run a job's command measured (see ``greenplace.scheduler.agent``).

Exit code: the command's own (128 + N when it died of signal N), 127 when it is not found,
126 when it cannot be run, 2 for a usage error; ``--flush`` exits 0 when every spooled report
was sent, 1 when some are left.

Design choice: this module imports click and the agent only (stdlib; httpx when an API is
set): it runs on every job's machine, before the job's command starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from greenplace.scheduler.exceptions import UserInputError

EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE = 127, 126


@click.command("agent", context_settings={"allow_interspersed_args": False})
@click.option("--job-id", envvar="GREENPLACE_JOB_ID", help="the job (default: $GREENPLACE_JOB_ID)")
@click.option("--api-url", envvar="GREENPLACE_API_URL",
              help="the API to report to (default: $GREENPLACE_API_URL); the token is read "
                   "from $GREENPLACE_AGENT_TOKEN only")
@click.option("--spool", "spool_dir", type=click.Path(file_okay=False, path_type=Path),
              help="where unsent reports wait (default: $XDG_STATE_HOME/greenplace/spool or "
                   "~/.local/state/greenplace/spool)")
@click.option("--summary-file", type=click.Path(dir_okay=False, path_type=Path),
              help="write the summary JSON here (default with no API: "
                   "./greenplace-summary.json)")
@click.option("--interval-s", type=click.FloatRange(0.05, 60.0), default=1.0,
              show_default=True, help="seconds between energy samples")
@click.option("--flush-timeout-s", type=click.FloatRange(0.0, 86400.0), default=600.0,
              envvar="GREENPLACE_AGENT_FLUSH_TIMEOUT_S",
              show_default=True,
              help="how long to wait at exit for the final report "
                   "(default: $GREENPLACE_AGENT_FLUSH_TIMEOUT_S, else 600)")
@click.option("--flush", is_flag=True,
              help="send the spooled reports (of --job-id when set) and exit; runs nothing")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def agent_cmd(job_id: str | None, api_url: str | None, spool_dir: Path | None,
              summary_file: Path | None, interval_s: float, flush_timeout_s: float,
              flush: bool, command: tuple[str, ...]) -> int:
    """Run a job's command, measure its energy (NVML, RAPL or a model) and report it."""
    from greenplace.scheduler.agent import TOKEN_ENV, AgentConfig, default_spool_dir

    token = os.environ.get(TOKEN_ENV) or None
    spool = spool_dir or default_spool_dir()
    if flush:
        return _flush(spool, token=token, job_id=job_id, api_url=api_url,
                      timeout_s=flush_timeout_s)
    if not command:
        raise UserInputError("No command to run. To fix: `greenplace agent [OPTIONS] -- CMD "
                             "[ARGS...]`, or `greenplace agent --flush` to send spooled "
                             "reports.")
    if api_url and not api_url.startswith(("http://", "https://")):
        raise UserInputError(f"--api-url {api_url[:80]!r} is not an http:// or https:// URL. "
                             "To fix: pass the API's URL, or unset GREENPLACE_API_URL.")
    config = AgentConfig(job_id=job_id, api_url=api_url, token=token, spool_dir=spool,
                         summary_file=summary_file, interval_s=interval_s,
                         flush_timeout_s=flush_timeout_s)
    if api_url and not config.reports:
        missing = "GREENPLACE_JOB_ID (or --job-id)" if not job_id else TOKEN_ENV
        click.echo(f"greenplace agent: {missing} is not set, so nothing is reported to "
                   "the API; the summary goes to a file", err=True)
    from greenplace.scheduler.agent import run_agent

    try:
        return run_agent(command, config)
    except FileNotFoundError:
        click.echo(f"greenplace agent: {command[0][:200]}: command not found", err=True)
        return EXIT_NOT_FOUND
    except PermissionError:
        click.echo(f"greenplace agent: {command[0][:200]}: permission denied", err=True)
        return EXIT_NOT_EXECUTABLE


def _flush(spool: Path, *, token: str | None, job_id: str | None, api_url: str | None,
           timeout_s: float) -> int:
    from greenplace.scheduler.agent import TOKEN_ENV, flush, spooled

    if not spooled(spool, job_id):
        click.echo(f"greenplace agent: nothing to send in {spool}", err=True)
        return 0
    if token is None:
        raise UserInputError(f"{TOKEN_ENV} is not set, so the spooled reports cannot be sent. "
                             "To fix: export the job's agent token (its boot script has it).")
    left = flush(spool, token=token, job_id=job_id, api_url=api_url, timeout_s=timeout_s)
    if left:
        click.echo(f"greenplace agent: {len(left)} report(s) still in {spool} (the API did not "
                   "take them); run `greenplace agent --flush` again later", err=True)
        return 1
    click.echo("greenplace agent: every spooled report was sent", err=True)
    sys.stderr.flush()
    return 0
