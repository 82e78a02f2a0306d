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
    """Each accelerator's runs, and each (accelerator, label)'s: median watts per chip, and
    what placement uses."""
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
    for (name, label), values in sorted(recorded.items(),
                                        key=lambda item: (item[0][0], item[0][1] or "")):
        tdp_w = next((a.tdp_w for a in catalog.accelerators if a.name == name), None)
        used = len(values) >= calibration.MIN_RUNS
        rows.append({"accelerator": name, "label": label, "runs": len(values),
                     "median_w_per_chip": calibration.median(values), "tdp_w": tdp_w,
                     "tdp_model_w": tdp_w * DEFAULT_UTILIZATION if tdp_w else None,
                     "used_by_placement": used})
    if output == "json":
        print_json(rows)
        return
    print_table(f"{len(rows)} calibration(s)", [
        ("accelerator", "left"), ("label", "left"), ("runs", "right"),
        ("median W/chip", "right"), ("TDP W", "right"), ("TDP x 0.8 W", "right"),
        ("used", "left")],
        [[r["accelerator"], r["label"] or "(all runs)", str(r["runs"]),
          fmt(r["median_w_per_chip"], 0), fmt(r["tdp_w"], 0), fmt(r["tdp_model_w"], 0),
          ("yes" if r["label"] is None else f"yes, for jobs labelled {r['label']}")
          if r["used_by_placement"] else f"no (needs {calibration.MIN_RUNS} runs)"]
         for r in rows],
        footer="Runs are NVML measurements reported by jobs' agents (the last "
        f"{calibration.MAX_RUNS} per accelerator and per label, runs of "
        f"{calibration.MIN_WALL_S:.0f} s or more); a job with a calibration_label uses its "
        "label's median where it has enough runs, else the accelerator's; jobs with "
        "work.avg_power_w keep their own figure.")


@calibration_group.command("reset")
@click.argument("accelerator", required=False)
@click.option("--label", default=None,
              help="only this calibration label's runs (of ACCELERATOR, or of every one)")
def reset_cmd(accelerator: str | None, label: str | None) -> None:
    """Forget the runs of ACCELERATOR, its labels' included (default: of every accelerator);
    with --label, only that label's."""
    from greenplace.scheduler import calibration
    from greenplace.scheduler.settings import load_settings
    from greenplace.scheduler.store import open_store, reachable

    if label is not None:
        calibration.checked_label(label)
    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        forgotten = calibration.reset(store, accelerator, label=label)
    click.echo(f"calibration reset: {forgotten} calibration(s) forgotten")
