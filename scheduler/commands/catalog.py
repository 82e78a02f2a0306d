"""The `catalog` command group: `check` verifies the catalog's invariants (embedded, the
overlay ``GREENPLACE_CATALOG_OVERLAY`` names, and the refreshed prices merged in);
`refresh` fetches prices from the clouds' own APIs into the refreshed-prices document
(``GREENPLACE_CATALOG_PRICES``); `show` says how old each cloud's prices are and where they
came from; `diff` lists what the refresh changed against the embedded catalog.

Exit codes: 0 ok; 1 a check problem, or a cloud whose refresh failed, was refused or had no
credentials (its old figures kept, and said); 2 bad input or unusable settings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from greenplace.scheduler.catalog import load_catalog_from
from greenplace.scheduler.catalog.check import check_catalog
from greenplace.scheduler.catalog.loader import (
    CLOUDS,
    OVERLAY_ENV,
    Catalog,
    load_declared_catalog,
    load_embedded_catalog,
)
from greenplace.scheduler.exceptions import UnknownNameError, UserInputError
from greenplace.scheduler.output import FORMATS, fmt, print_json, print_rows

if TYPE_CHECKING:
    from greenplace.scheduler.catalog.refresh.run import CloudOutcome
    from greenplace.scheduler.catalog.refresh.store import PricesLocation

_output = click.option("--output", "-o", type=click.Choice(FORMATS), default="table",
                       show_default=True, help="table for people, json or csv for machines")


@click.group("catalog")
def catalog_group() -> None:
    """The catalog (regions, accelerators, offers): check it, refresh and show its prices."""


@catalog_group.command("check")
@click.option("--catalog-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="check the regions.csv, accelerators.csv and offers.csv in this folder "
              "instead of the embedded catalog")
def check_cmd(catalog_dir: Path | None) -> None:
    """Check the catalog's invariants: one basis, same zone same figures, prices, counts.

    With GREENPLACE_CATALOG_OVERLAY set, the overlay file is checked first (every problem,
    naming its line and field), then the merged catalog. Without --catalog-dir, the catalog
    checked is the one every command places with: with the refreshed prices
    (GREENPLACE_CATALOG_PRICES) merged in, a broken refreshed row named as such, and the OK
    line says how many offers come from a refresh; --catalog-dir checks that folder's files
    without them. Exit code 0 and one OK line when every invariant holds; 1 with one line per
    broken row otherwise; 2 when a file does not load at all (the loader's error).
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
    refreshed = _Refreshed(offers=frozenset(), where="")
    if not problems and catalog_dir is None:
        catalog, refreshed = _with_refreshed_prices(catalog)
    problems = problems or [refreshed.named(p) for p in check_catalog(catalog)]
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
               f"({bases}), {len(catalog.offers)} offers ({len(refreshed.offers)} from a "
               "refresh).")


@dataclass(frozen=True, slots=True)
class _Refreshed:
    """The offers a refresh brought into the checked catalog, and where they are kept."""

    offers: frozenset[str]  # "cloud:region instance_type", as the check names an offer
    where: str

    def named(self, problem: str) -> str:
        """``problem`` naming the refreshed-prices document rather than offers.csv when it
        is about a refreshed offer (the row to fix is there, not in the embedded file)."""
        origin, _, rest = problem.partition(" ")
        offer = rest.partition(": ")[0]  # "cloud:region instance_type: what is wrong"
        if origin == "offers.csv" and offer in self.offers:
            return f"refreshed prices ({self.where}) {rest}"
        return problem


def _with_refreshed_prices(catalog: Catalog) -> tuple[Catalog, _Refreshed]:
    """``catalog`` with the refreshed prices merged in, as ``load_catalog()`` merges them,
    and the offers that came from the refresh.

    Design choice: the document is read and merged here rather than through
    ``load_catalog()`` so the offers counted are those of this very merge (and no process
    cache is used).
    """
    from greenplace.scheduler.catalog.refresh.merge import merged, refreshed_offers, usable
    from greenplace.scheduler.catalog.refresh.store import prices_location, read

    location = prices_location(os.environ)
    with _reachable(location):
        document = read(location)
    fresh, _ = usable(catalog, refreshed_offers(document))
    return merged(catalog, document), _Refreshed(
        offers=frozenset(f"{o.cloud}:{o.region} {o.instance_type}" for o in fresh),
        where=location.where)


def asked_regions(catalog: Catalog, clouds: Sequence[str], regions: Sequence[str]
                  ) -> dict[str, list[str]]:
    """cloud -> catalog regions to refresh, from ``--cloud`` and ``--region`` (CLOUD:REGION
    or a region name one of the clouds has). Default: every catalog region of each cloud.

    Raises:
        UnknownNameError: a region no asked cloud has.
        UserInputError: a region name two clouds share, or a --cloud no --region names.
    """
    wanted = list(dict.fromkeys(clouds)) or list(CLOUDS)
    of_cloud = {c: [r.region for r in catalog.regions if r.cloud == c] for c in wanted}
    if not regions:
        return of_cloud
    asked: dict[str, list[str]] = {}
    for raw in regions:
        cloud, sep, name = raw.strip().partition(":")
        if sep:
            clouds_of = [cloud.lower()] if cloud.lower() in of_cloud and \
                name in of_cloud[cloud.lower()] else []
        else:
            name = cloud
            clouds_of = [c for c in wanted if name in of_cloud[c]]
        if not clouds_of:
            raise UnknownNameError(
                "region", raw, [f"{c}:{r}" for c in wanted for r in of_cloud[c]],
                hint=f"To fix: name a catalog region of {', '.join(wanted)} as CLOUD:REGION "
                "(`greenplace regions` lists them).")
        if len(clouds_of) > 1:
            raise UserInputError(f"Region {raw!r} is a region of {' and '.join(clouds_of)}. "
                                 f"To fix: write it as CLOUD:REGION, e.g. {clouds_of[0]}:{name}.")
        asked.setdefault(clouds_of[0], [])
        if name not in asked[clouds_of[0]]:
            asked[clouds_of[0]].append(name)
    idle = [c for c in clouds if c not in asked]
    if idle:
        raise UserInputError(f"--cloud {' '.join(idle)} is given but no --region of it. "
                             "To fix: add its regions, or drop --region to refresh every "
                             "catalog region of each cloud.")
    return {c: asked[c] for c in wanted if c in asked}


@contextlib.contextmanager
def _reachable(location: PricesLocation) -> Iterator[None]:
    """Redis down or refusing us, for the Redis form: one paragraph (exit 2), no traceback."""
    from greenplace.scheduler.catalog.refresh.store import RedisLocation

    if not isinstance(location, RedisLocation):
        yield
        return
    from greenplace.scheduler.store import reachable

    with reachable(location.url):
        yield


def _starting(cloud: str, regions: Sequence[str]) -> None:
    click.echo(f"{cloud}: fetching prices of {len(regions)} region(s)...", err=True)


def _progress(outcome: CloudOutcome) -> None:
    click.echo(f"{outcome.cloud}: {outcome.status.replace('_', ' ')}", err=True)


@catalog_group.command("refresh")
@click.option("--cloud", "clouds", multiple=True, type=click.Choice(CLOUDS),
              help="refresh this cloud (repeat for more) [default: aws, gcp and azure]")
@click.option("--region", "regions", multiple=True, metavar="[CLOUD:]REGION",
              help="refresh only this catalog region (repeat for more) [default: every "
              "catalog region of each cloud]")
@click.option("--output", "-o", type=click.Choice(("table", "json")), default="table",
              show_default=True, help="table for people, json for machines")
def refresh_cmd(clouds: tuple[str, ...], regions: tuple[str, ...], output: str) -> None:
    """Fetch on-demand and spot prices and availability from each cloud's own APIs.

    Each cloud's figures are checked (spot below on-demand, accelerator counts, outliers)
    and stored in the refreshed-prices document (GREENPLACE_CATALOG_PRICES; default:
    the user's data folder), written once, atomically; every command, the dry run and the
    service then place with them. A cloud whose fetch fails or whose figures fail the
    check keeps its previous figures, and says why. Exit code 0 when every asked cloud was
    updated; 1 when any failed, was refused or had no credentials.
    """
    from greenplace.scheduler.catalog.refresh.run import UPDATED, run_refresh
    from greenplace.scheduler.catalog.refresh.store import prices_location

    catalog = load_declared_catalog()
    asked = asked_regions(catalog, clouds, regions)
    location = prices_location(os.environ)
    with _reachable(location):
        result = run_refresh(asked, location=location, catalog=catalog, environ=os.environ,
                             now=dt.datetime.now(dt.UTC), starting=_starting,
                             progress=_progress)
    rows = [o.as_dict() for o in result.outcomes]
    if output == "json":
        print_json({"where": result.where, "written": result.written, "ok": result.ok,
                    "clouds": rows})
    else:
        print_rows(
            "table", rows, title="greenplace catalog refresh",
            columns=[("cloud", "left"), ("status", "left"), ("regions", "right"),
                     ("offers", "right"), ("new", "right"), ("retired", "right"),
                     ("repriced", "right"), ("skipped", "right"), ("not enabled", "right")],
            cells=[[o.cloud, o.status.replace("_", " "), str(len(o.regions)), str(o.offers),
                    str(o.new), str(o.retired), str(o.repriced), str(o.skipped),
                    str(len(o.not_enabled))] for o in result.outcomes],
            footer=(f"Written to {result.where}." if result.written
                    else "Nothing written: no cloud was refreshed."))
        for o in result.outcomes:
            if o.status != UPDATED:
                click.echo(f"\n{o.message}")
                for problem in o.problems[5:]:
                    click.echo(f"  - {problem}")
    if not result.ok:
        raise click.exceptions.Exit(1)


def _age(seconds: float) -> str:
    """A short age: ``45 min``, ``5 h``, ``12 days``."""
    if seconds < 3600:
        return f"{max(0, int(seconds // 60))} min"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


@catalog_group.command("show")
@_output
def show_cmd(output: str) -> None:
    """Per cloud: where its prices come from, their age, offers, regions and skips.

    A cloud never refreshed places with the embedded catalog's prices (their as_of shown).
    """
    from greenplace.scheduler.catalog.refresh.status import cloud_status
    from greenplace.scheduler.catalog.refresh.store import prices_location, read

    location = prices_location(os.environ)
    with _reachable(location):
        document = read(location)
    rows = cloud_status(load_embedded_catalog(), document, now=dt.datetime.now(dt.UTC))
    failed = [r for r in rows if r["last_failure"]]
    print_rows(
        output, rows, title=f"catalog prices ({location.where})",
        columns=[("cloud", "left"), ("source", "left"), ("fetched at (UTC)", "left"),
                 ("age", "right"), ("offers", "right"), ("regions", "right"),
                 ("not enabled", "left"), ("skipped", "right")],
        cells=[[r["cloud"], r["source"], (r["fetched_at"] or "-")[:16].replace("T", " "),
                "-" if r["age_s"] is None else _age(r["age_s"]), str(r["offers"]),
                str(r["regions"]), ", ".join(r["not_enabled"]) or "-", str(r["skipped"])]
               for r in rows],
        footer="\n".join(
            f"{r['cloud']}: last refresh {r['last_failure']['outcome']} at "
            f"{r['last_failure']['at'][:16].replace('T', ' ')} UTC: "
            f"{r['last_failure']['message']}" for r in failed)
        or "Age: of the oldest region's prices. `greenplace catalog refresh` fetches new ones.")


def _pct(value: object) -> str:
    return "" if value is None else f" ({float(value):+.1f} %)"  # type: ignore[arg-type]


def _price_change(before: object, after: object, pct: object) -> str:
    return f"{fmt(before, 4)} -> {fmt(after, 4)}{_pct(pct)}"


@catalog_group.command("diff")
@click.option("--cloud", type=click.Choice(CLOUDS), help="only this cloud's offers")
@click.option("--change", type=click.Choice(("new", "retired", "repriced")),
              help="only offers with this change")
@_output
def diff_cmd(cloud: str | None, change: str | None, output: str) -> None:
    """What the refreshed prices change against the embedded catalog: new, retired and
    repriced offers (on-demand and spot, old -> new, % change), per cloud."""
    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.catalog.refresh.merge import diff

    changes = [c for c in diff(load_declared_catalog(), load_catalog())
               if (cloud is None or c.offer.cloud == cloud)
               and (change is None or c.change == change)]
    rows = [c.as_row() for c in changes]
    counts: dict[str, dict[str, int]] = {}
    for c in changes:
        per = counts.setdefault(c.offer.cloud, {"new": 0, "retired": 0, "repriced": 0})
        per[c.change] += 1
    print_rows(
        output, rows, title=f"{len(rows)} offer(s) changed against the embedded catalog",
        columns=[("cloud", "left"), ("region", "left"), ("instance", "left"),
                 ("change", "left"), ("on-demand USD/h", "right"), ("spot USD/h", "right")],
        cells=[[r["cloud"], r["region"], r["instance_type"], r["change"],
                _price_change(r["price_usd_per_hour_before"], r["price_usd_per_hour_after"],
                              r["price_change_pct"]),
                _price_change(r["spot_price_usd_per_hour_before"],
                              r["spot_price_usd_per_hour_after"], r["spot_price_change_pct"])]
               for r in rows],
        footer=_diff_footer(counts))


def _diff_footer(counts: Mapping[str, Mapping[str, int]]) -> str:
    if not counts:
        return ("No change: every cloud places with the embedded catalog's prices (or the "
                "refresh found the same). `greenplace catalog show` says which.")
    return "; ".join(f"{c}: {n['new']} new, {n['retired']} retired, {n['repriced']} repriced"
                     for c, n in sorted(counts.items())) + "."
