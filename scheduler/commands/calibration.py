"""The `calibration` commands: what placement learnt of each accelerator's real power."""

from __future__ import annotations

from typing import Any

import click

from greenplace.scheduler.output import fmt, print_json, print_table


@click.group("calibration")
def calibration_group() -> None:
    """Measured power per accelerator, learnt from finished jobs: show or reset it."""


@calibration_group.command("show")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table for people, json for machines")
def show_cmd(output: str) -> None:
    """Each accelerator's runs, median watts per chip, and what placement uses."""
    from greenplace.scheduler import calibration
    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.jobs import DEFAULT_UTILIZATION
    from greenplace.scheduler.settings import load_settings
    from greenplace.scheduler.store import open_store, reachable

    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        recorded = calibration.runs(store)
    catalog = load_catalog()
    rows: list[dict[str, Any]] = []
    for name, values in recorded.items():
        tdp_w = next((a.tdp_w for a in catalog.accelerators if a.name == name), None)
        used = len(values) >= calibration.MIN_RUNS
        rows.append({"accelerator": name, "runs": len(values),
                     "median_w_per_chip": calibration.median(values), "tdp_w": tdp_w,
                     "tdp_model_w": tdp_w * DEFAULT_UTILIZATION if tdp_w else None,
                     "used_by_placement": used})
    if output == "json":
        print_json(rows)
        return
    print_table(f"{len(rows)} calibrated accelerator(s)", [
        ("accelerator", "left"), ("runs", "right"), ("median W/chip", "right"),
        ("TDP W", "right"), ("TDP x 0.8 W", "right"), ("used", "left")],
        [[r["accelerator"], str(r["runs"]), fmt(r["median_w_per_chip"], 0), fmt(r["tdp_w"], 0),
          fmt(r["tdp_model_w"], 0), "yes" if r["used_by_placement"] else
          f"no (needs {calibration.MIN_RUNS} runs)"] for r in rows],
        footer="Runs are NVML measurements reported by jobs' agents (the last "
        f"{calibration.MAX_RUNS} per accelerator, runs of {calibration.MIN_WALL_S:.0f} s or "
        "more); jobs with work.avg_power_w keep their own figure.")


@calibration_group.command("reset")
@click.argument("accelerator", required=False)
def reset_cmd(accelerator: str | None) -> None:
    """Forget the runs of ACCELERATOR (default: of every accelerator)."""
    from greenplace.scheduler import calibration
    from greenplace.scheduler.settings import load_settings
    from greenplace.scheduler.store import open_store, reachable

    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        forgotten = calibration.reset(store, accelerator)
    click.echo(f"calibration reset: {forgotten} accelerator(s) forgotten")
