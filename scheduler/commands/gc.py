"""``greenplace gc``: the leak sweep (see ``greenplace.scheduler.gc``)."""

from __future__ import annotations

import sys

import click

from greenplace.scheduler.exceptions import UnknownNameError
from greenplace.scheduler.output import print_rows
from greenplace.scheduler.settings import Settings, load_settings
from greenplace.scheduler.store import open_store, reachable


def sweep_targets(settings: Settings, used: list[tuple[str, str]], *, all_regions: bool,
                  providers: tuple[str, ...], regions: tuple[str, ...]
                  ) -> list[tuple[str, str]]:
    """The (provider, region) pairs to list.

    Named ``regions`` are listed through the provider each one's cloud is routed to;
    otherwise the regions greenplace launched in, plus with ``all_regions`` every
    catalog region of each routed cloud. ``providers`` narrows either to those adapters.

    Raises:
        UnknownNameError: a region no catalog cloud has, or a provider that does not exist.
    """
    from greenplace.providers.registry import REGISTRY

    for name in providers:
        if name not in REGISTRY:
            raise UnknownNameError("provider", name, REGISTRY,
                                   hint=f"To fix: use one of {sorted(REGISTRY)}.")
    pairs = set() if regions else set(used)
    if regions or all_regions:
        from greenplace.scheduler.catalog import load_catalog

        catalog_regions = load_catalog().regions
        known = {r.region for r in catalog_regions}
        for name in regions:
            if name not in known:
                raise UnknownNameError("region", name, known)
        for region in catalog_regions:
            if all_regions or region.region in regions:
                pairs.add((settings.provider_for(region.cloud), region.region))
    return sorted((p, r) for p, r in pairs if not providers or p in providers)


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="list what would be deleted; delete nothing")
@click.option("--all-regions", is_flag=True,
              help="list every catalog region of each routed cloud, not only the regions "
                   "greenplace launched in")
@click.option("--provider", "providers", multiple=True, help="only this provider (repeatable)")
@click.option("--region", "regions", multiple=True,
              help="list this region, launched in or not (repeatable)")
@click.option("--output", "-o", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="table for people, json/csv for machines")
def gc_cmd(dry_run: bool, all_regions: bool, providers: tuple[str, ...],
           regions: tuple[str, ...], output: str) -> None:
    """Delete every greenplace-managed instance whose job is final, unknown or superseded."""
    from greenplace.scheduler.dispatch import Providers
    from greenplace.scheduler.gc import sweep

    settings = load_settings()
    store = open_store(settings)
    with reachable(settings.redacted_redis_url):
        targets = sweep_targets(settings, store.regions_used(), all_regions=all_regions,
                                providers=providers, regions=regions)
        adapters = Providers(settings)
        rows = sweep(store, {name: adapters.by_name(name) for name in {p for p, _ in targets}},
                     targets, dry_run=dry_run)
    listed = [r.as_json() for r in rows]
    acted = sum(r.action in ("deleted", "deleting", "would delete") for r in rows)
    print_rows(
        output, listed,
        title=f"{len(targets)} region(s) swept{' (dry run)' if dry_run else ''}",
        columns=[("provider", "left"), ("region", "left"), ("instance", "left"),
                 ("job", "left"), ("job state", "left"), ("instance state", "left"),
                 ("action", "left"), ("reason", "left")],
        cells=[[r.provider, r.region, r.instance_id or "-", r.job_id or "-",
                r.job_state or "-", r.instance_state or "-", r.action, r.reason]
               for r in rows],
        footer=(f"{acted} instance(s) {'to delete' if dry_run else 'deleted or deleting'}; "
                f"{sum(r.action == 'kept' for r in rows)} kept" if targets else
                "nothing to sweep: this store has launched nothing yet (name regions with "
                "--region, or sweep them all with --all-regions)"))
    if any(r.action == "error" for r in rows):
        sys.exit(1)
