"""The `catalog` command group: `catalog check` verifies the embedded catalog's invariants,
and those of the catalog overlay that ``GREENPLACE_CATALOG_OVERLAY`` names."""

from __future__ import annotations

import os
from pathlib import Path

import click

from greenplace.scheduler.catalog import load_catalog_from
from greenplace.scheduler.catalog.check import check_catalog
from greenplace.scheduler.catalog.loader import OVERLAY_ENV, load_embedded_catalog


@click.group("catalog")
def catalog_group() -> None:
    """The embedded catalog (regions, accelerators, offers): check its figures."""


@catalog_group.command("check")
@click.option("--catalog-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="check the regions.csv, accelerators.csv and offers.csv in this folder "
              "instead of the embedded catalog")
def check_cmd(catalog_dir: Path | None) -> None:
    """Check the catalog's invariants: one basis, same zone same figures, prices, counts.

    With GREENPLACE_CATALOG_OVERLAY set, the overlay file is checked first (every problem,
    naming its line and field), then the merged catalog. Exit code 0 and one OK line when
    every invariant holds; 1 with one line per broken row otherwise; 2 when a file does not
    load at all (the loader's error).
    """
    catalog = load_catalog_from(catalog_dir) if catalog_dir else load_embedded_catalog()
    overlay = os.environ.get(OVERLAY_ENV, "").strip()
    problems: list[str] = []
    if overlay:
        from greenplace.scheduler.catalog.loader import with_overlay
        from greenplace.scheduler.catalog.overlay import overlay_problems

        problems, _ = overlay_problems(Path(overlay).expanduser(), regions=catalog.regions,
                                       accelerators=catalog.accelerators)
        if not problems:
            catalog = with_overlay(catalog, Path(overlay).expanduser())
    problems = problems or check_catalog(catalog)
    if problems:
        for problem in problems:
            click.echo(problem)
        click.echo(f"{len(problems)} problem(s) in the catalog.", err=True)
        raise click.exceptions.Exit(1)
    clouds = sorted({r.cloud for r in catalog.regions})
    zones = len({r.em_zone for r in catalog.regions})
    bases = ", ".join(sorted({r.intensity_basis for r in catalog.regions}))
    click.echo(f"OK: {len(catalog.regions)} regions of {', '.join(clouds)} in {zones} grid "
               f"zones on one basis "
               f"({bases}), {len(catalog.offers)} offers.")
