"""The `offers` command: every catalog instance offer with its hardware and prices."""

from __future__ import annotations

from typing import Any

import click

from greenplace.scheduler.catalog import Catalog, load_catalog
from greenplace.scheduler.exceptions import UnknownNameError
from greenplace.scheduler.output import FORMATS, fmt, print_rows


def offer_rows(catalog: Catalog, *, cloud: str | None = None, region: str | None = None,
               accelerator: str | None = None) -> list[dict[str, Any]]:
    """The offers matching every given filter, one flat dict each, in catalog order.

    ``region`` is ``cloud:region`` or a bare region name; ``accelerator`` any spelling of a
    catalog accelerator (a bare chip name is the SXM part: ``A100-80GB-PCIe`` is another).

    Raises:
        UnknownNameError: an accelerator or region the catalog does not know.
    """
    wanted = catalog.accelerator(accelerator).name if accelerator else None
    if region is not None:
        if ":" in region:
            region = catalog.region(region).key
        elif not any(r.region == region for r in catalog.regions):
            raise UnknownNameError("region", region, {r.region for r in catalog.regions},
                                   hint="To fix: use a name listed by `greenplace regions`.")
    rows = []
    for o in catalog.offers:
        if (cloud and o.cloud != cloud) or (wanted and o.accelerator != wanted) or (
                region and region not in (o.region, f"{o.cloud}:{o.region}")):
            continue
        accel = catalog.accelerator(o.accelerator)
        rows.append({
            "cloud": o.cloud, "region": o.region, "instance_type": o.instance_type,
            "accelerator": o.accelerator, "form_factor": accel.form_factor,
            "accelerator_count": o.accelerator_count, "tdp_w": accel.tdp_w, "vcpus": o.vcpus,
            "memory_gib": o.memory_gib, "price_usd_per_hour": o.price_usd_per_hour,
            "spot_price_usd_per_hour": o.spot_price_usd_per_hour, "price_note": o.price_note,
            "source": o.source, "as_of": o.as_of,
        })
    return rows


@click.command("offers")
@click.option("--cloud", type=click.Choice(["aws", "gcp", "azure"]))
@click.option("--region", "-r", help="CLOUD:REGION or a bare region name")
@click.option("--accelerator", "-a", help="only offers carrying it (any spelling of its name)")
@click.option("--output", "-o", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for people, json or csv for machines (with source and as_of)")
def offers_cmd(cloud: str | None, region: str | None, accelerator: str | None,
               output: str) -> None:
    """List every instance offer: hardware, form factor, TDP, prices and their source."""
    rows = offer_rows(load_catalog(), cloud=cloud, region=region, accelerator=accelerator)
    print_rows(
        output, rows, title=f"{len(rows)} offers",
        columns=[("offer", "left"), ("accelerator", "left"), ("form", "left"), ("n", "right"),
                 ("TDP W", "right"), ("vCPU", "right"), ("GiB", "right"), ("USD/h", "right"),
                 ("spot USD/h", "right"), ("as of", "left")],
        cells=[[f"{r['cloud']}:{r['region']} {r['instance_type']}", r["accelerator"],
                r["form_factor"], str(r["accelerator_count"]), fmt(r["tdp_w"], 0),
                str(r["vcpus"]), fmt(r["memory_gib"], 0), fmt(r["price_usd_per_hour"]),
                fmt(r["spot_price_usd_per_hour"]), r["as_of"]] for r in rows],
        footer="Price '-' = not sold that way. --output json|csv adds source and price_note.")
