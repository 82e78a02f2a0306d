"""A catalog overlay: clouds a user declares in a YAML file (libcloud clouds), merged into
the embedded catalog so placement scores them with their own figures.

The embedded catalog knows AWS, GCP and Azure. A cloud reached through the libcloud
adapter (an OpenStack research cloud, a regional provider) is its own datacenter with its
own grid, PUE and prices; scoring it as if it were ``aws:us-east-1`` would describe another
place. The overlay file (path in ``GREENPLACE_CATALOG_OVERLAY``) declares such clouds::

    clouds:
      - name: nordic-openstack          # not aws, gcp or azure
        source: "Nordic Research Cloud price list"
        as_of: "2026-10-01"
        regions:
          - name: sto-1
            location: Stockholm
            country: SE
            grid_zone: SE               # Electricity Maps zone of the site's grid
            pue: 1.15
            # grid_intensity_g_per_kwh / grid_cfe_pct: only for a zone the catalog lacks
            # continent / latitude / longitude: default to those of a catalog region of the zone
        sizes:
          - instance_type: gpu.a100.8
            accelerator: A100-80GB      # a catalog accelerator name or alias
            accelerator_count: 8
            vcpus: 96
            memory_gib: 1152
            price_usd_per_hour: 14.2    # on demand, required
            # spot_price_usd_per_hour: optional
            # regions: [sto-1]          # default: every region of the cloud

Design choice: a region's grid figures come from its Electricity Maps zone as the embedded
catalog carries them (one basis for every cloud, the same figures for the same grid), so a
known zone takes no figures from the user; a static intensity (with the grid's carbon-free
%) is accepted only for a zone the catalog does not know, and is labelled as declared by the
user in the row's ``source``. Marginal intensity is left unknown (WattTime regions do not
follow zones). Every problem of the file is collected, each one paragraph naming the file,
the line and the field (``overlay_problems``); ``load_overlay`` raises them together.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from greenplace.scheduler.catalog.model import Accelerator, Offer, Region, normalize_name
from greenplace.scheduler.exceptions import CatalogError
from greenplace.scheduler.yamlfile import SafeLoader, read_bytes, yaml_error

# Clouds with a first-class adapter and figures in the embedded catalog: never overlaid.
RESERVED_CLOUDS = ("aws", "gcp", "azure", "local-sim")

_CLOUD_KEYS = {"name", "source", "as_of", "regions", "sizes"}
_REGION_KEYS = {"name", "location", "country", "grid_zone", "pue", "continent", "latitude",
                "longitude", "grid_intensity_g_per_kwh", "grid_cfe_pct"}
_SIZE_KEYS = {"instance_type", "accelerator", "accelerator_count", "vcpus", "memory_gib",
              "price_usd_per_hour", "spot_price_usd_per_hour", "regions"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Overlay:
    """The rows an overlay file adds, and the clouds it declares."""

    path: Path
    clouds: tuple[str, ...]
    regions: tuple[Region, ...]
    offers: tuple[Offer, ...]


class _Lines:
    """Line numbers of the YAML nodes, by path (``("clouds", 0, "sizes", 1, "vcpus")``)."""

    def __init__(self, node: yaml.Node | None) -> None:
        self._lines: dict[tuple[Any, ...], int] = {}
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self._lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self._walk(value, (*path, key.value))
                self._lines[(*path, key.value)] = key.start_mark.line + 1  # the key's line
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, (*path, i))

    def of(self, path: tuple[Any, ...]) -> int:
        """The line of ``path``, or of its nearest ancestor present in the file."""
        while path and path not in self._lines:
            path = path[:-1]
        return self._lines.get(path, 1)


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Problems:
    """Collects one-paragraph problems naming the file, line and field."""

    def __init__(self, path: Path, lines: _Lines) -> None:
        self.path, self.lines, self.items = path, lines, list[str]()

    def add(self, where: tuple[Any, ...], what: str, fix: str) -> None:
        self.items.append(f"catalog overlay {self.path} line {self.lines.of(where)}, "
                          f"{_dotted(where)}: {what}. To fix: {fix}.")


def _number(problems: _Problems, item: Mapping[str, Any], where: tuple[Any, ...], key: str, *,
            low: float, high: float, required: bool = True, integer: bool = False
            ) -> float | None:
    value = item.get(key)
    if value is None:
        if required:
            problems.add((*where, key), "missing", f"give {key} (a number)")
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not low <= value <= high:
        kind = "a whole number" if integer else "a number"
        problems.add((*where, key), f"{value!r} is not {kind} between {low:g} and {high:g}",
                     f"write {key} as {kind} in that range")
        return None
    return float(value)


def _text(problems: _Problems, item: Mapping[str, Any], where: tuple[Any, ...], key: str,
          fix: str) -> str:
    value = item.get(key)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or not str(value):
        problems.add((*where, key), "missing" if value is None else f"{value!r} is not text",
                     fix)
        return ""
    return str(value).strip()


def _mapping_items(problems: _Problems, data: Any, where: tuple[Any, ...], key: str,
                   allowed: set[str]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """The mappings of the list at ``data[key]``, each checked for unknown keys."""
    items = data.get(key)
    if not isinstance(items, list) or not items:
        problems.add((*where, key), "missing or empty", f"give {key} as a list of mappings")
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            problems.add((*where, key, i), "is not a mapping", "write `key: value` lines")
            continue
        for unknown in sorted(set(map(str, item)) - allowed):
            close = difflib.get_close_matches(unknown, sorted(allowed), n=1)
            problems.add((*where, key, i, unknown), "unknown field"
                         + (f" (did you mean {close[0]!r}?)" if close else ""),
                         f"use only {', '.join(sorted(allowed))}")
        yield i, item


def _zone_rows(catalog_regions: tuple[Region, ...]) -> dict[str, Region]:
    """One embedded region per Electricity Maps zone (its grid figures are the zone's)."""
    zones: dict[str, Region] = {}
    for r in catalog_regions:
        if r.em_zone:
            zones.setdefault(r.em_zone, r)
    return zones


def _or_zone(declared: float | None, of_zone: float | None) -> float:
    """A declared coordinate, else the one of the zone's catalog region (one is present)."""
    value = declared if declared is not None else of_zone
    assert value is not None  # _region refused a site with neither
    return value


def _region(problems: _Problems, item: Mapping[str, Any], where: tuple[Any, ...], *,
            cloud: str, source: str, as_of: str, zones: Mapping[str, Region]) -> Region | None:
    before = len(problems.items)
    name = _text(problems, item, where, "name", "give the region's name as the cloud spells it")
    location = _text(problems, item, where, "location", "give the city of the datacenter")
    country = _text(problems, item, where, "country", "give the ISO 3166-1 alpha-2 code, "
                    "e.g. SE")
    if country and not (len(country) == 2 and country.isalpha() and country.isupper()):
        problems.add((*where, "country"), f"{country!r} is not an ISO 3166-1 alpha-2 code",
                     "write two capital letters, e.g. SE")
    zone = _text(problems, item, where, "grid_zone", "give the Electricity Maps zone id of the "
                 "site's grid, e.g. SE-SE3 or DE")
    pue = _number(problems, item, where, "pue", low=1.0, high=3.0)
    static = item.get("grid_intensity_g_per_kwh") is not None
    known = zones.get(zone)
    intensity = _number(problems, item, where, "grid_intensity_g_per_kwh", low=0.1,
                        high=2000, required=False)
    cfe = _number(problems, item, where, "grid_cfe_pct", low=0, high=100, required=False)
    if zone and known is not None and (static or item.get("grid_cfe_pct") is not None):
        problems.add((*where, "grid_intensity_g_per_kwh" if static else "grid_cfe_pct"),
                     f"zone {zone} is in the catalog, whose figures for it apply to every "
                     "region on that grid", "remove the static grid figures")
    if zone and known is None and not static:
        close = difflib.get_close_matches(zone, sorted(zones), n=3)
        problems.add((*where, "grid_zone"), f"unknown grid zone {zone!r}"
                     + (f" (did you mean {', '.join(close)}?)" if close else ""),
                     "use an Electricity Maps zone of the catalog (`greenplace regions` shows "
                     "them), or give grid_intensity_g_per_kwh and grid_cfe_pct for this site")
    if zone and known is None and static and item.get("grid_cfe_pct") is None:
        problems.add((*where, "grid_cfe_pct"), "missing beside a static grid intensity",
                     "give the grid's carbon-free % (0-100)")
    own_site = known is None and static  # nothing in the catalog to take the place from
    place: dict[str, Any] = {}
    for key, low, high in (("latitude", -90, 90), ("longitude", -180, 180)):
        place[key] = _number(problems, item, where, key, low=low, high=high,
                             required=own_site)
    continent = item.get("continent")
    if continent is None and own_site:
        problems.add((*where, "continent"), "missing for a zone the catalog does not know",
                     "give the continent, e.g. europe")
    if len(problems.items) > before:
        return None
    if known is not None:
        grid: dict[str, Any] = {
            "grid_intensity_avg_g_per_kwh": known.grid_intensity_avg_g_per_kwh,
            "grid_cfe_pct": known.grid_cfe_pct, "intensity_basis": known.intensity_basis,
            "year": known.year}
        grid_source = (f"grid: Electricity Maps yearly {known.year} (zone {zone}, "
                       f"{known.intensity_basis}) as in the catalog")
        dated = known.as_of
    else:
        assert intensity is not None and cfe is not None
        grid = {"grid_intensity_avg_g_per_kwh": intensity, "grid_cfe_pct": cfe,
                "intensity_basis": "lifecycle", "year": int(as_of[:4])}
        grid_source = f"grid: static figures declared by the user for zone {zone}"
        dated = as_of
    return Region(
        cloud=cloud, region=name, location=location, country=country,
        continent=str(continent or (known.continent if known else "")),
        latitude=_or_zone(place["latitude"], known.latitude if known else None),
        longitude=_or_zone(place["longitude"], known.longitude if known else None),
        em_zone=zone, watttime_region="", provider_cfe_pct=None,
        grid_intensity_marginal_g_per_kwh=None, pue=float(pue or 1.0), pue_basis="region",
        source=f"catalog overlay {problems.path.name}: {source}; {grid_source}; "
               "PUE declared by the user", as_of=dated, **grid)


def _accelerator(name: str, accelerators: Mapping[str, Accelerator]) -> Accelerator | None:
    return accelerators.get(normalize_name(name))


def _sizes(problems: _Problems, cloud_item: Mapping[str, Any], where: tuple[Any, ...], *,
           cloud: str, regions: list[str], source: str, as_of: str,
           accelerators: Mapping[str, Accelerator]) -> Iterator[Offer]:
    seen: set[str] = set()
    for i, item in _mapping_items(problems, cloud_item, where, "sizes", _SIZE_KEYS):
        at = (*where, "sizes", i)
        before = len(problems.items)
        instance_type = _text(problems, item, at, "instance_type",
                              "give the cloud's name of the size (flavor)")
        if instance_type in seen:
            problems.add((*at, "instance_type"), f"size {instance_type!r} appears twice",
                         "declare each size once (list its regions under `regions`)")
        seen.add(instance_type)
        name = _text(problems, item, at, "accelerator", "give a catalog accelerator name")
        accelerator = _accelerator(name, accelerators) if name else None
        if name and accelerator is None:
            names = sorted({a.name for a in accelerators.values()})
            close = difflib.get_close_matches(name, names, n=3)
            problems.add((*at, "accelerator"), f"unknown accelerator {name!r}"
                         + (f" (did you mean {', '.join(close)}?)" if close else ""),
                         "use one of the accelerators that `greenplace offers` lists")
        count = _number(problems, item, at, "accelerator_count", low=1, high=64, integer=True)
        vcpus = _number(problems, item, at, "vcpus", low=1, high=4096, integer=True)
        memory = _number(problems, item, at, "memory_gib", low=0.5, high=65536)
        price = _number(problems, item, at, "price_usd_per_hour", low=0.0001, high=10000)
        spot = _number(problems, item, at, "spot_price_usd_per_hour", low=0.0001, high=10000,
                       required=False)
        where_sold = item.get("regions", regions)
        if not isinstance(where_sold, list) or not where_sold:
            problems.add((*at, "regions"), "is not a list of region names",
                         f"list some of {', '.join(regions)}, or leave it out for all")
            where_sold = []
        for region in where_sold:
            if region not in regions:
                problems.add((*at, "regions"), f"region {region!r} is not declared by cloud "
                             f"{cloud}", f"use one of {', '.join(regions) or '(none)'}")
        if len(problems.items) > before or accelerator is None:
            continue
        for region in where_sold:
            yield Offer(cloud=cloud, region=str(region), instance_type=instance_type,
                        accelerator=accelerator.name, accelerator_count=int(count or 1),
                        vcpus=int(vcpus or 1), memory_gib=float(memory or 0.5),
                        price_usd_per_hour=price, spot_price_usd_per_hour=spot, price_note="",
                        source=f"catalog overlay {problems.path.name}: {source}",
                        as_of=as_of)


def overlay_problems(path: Path, *, regions: tuple[Region, ...],
                     accelerators: tuple[Accelerator, ...]) -> tuple[list[str], Overlay]:
    """Every problem of the overlay file at ``path`` against the embedded catalog's rows, and
    the rows of its valid parts.

    Raises:
        SpecError: the file is missing or is not YAML.
    """
    content = read_bytes(path, what="catalog overlay")
    try:
        node = yaml.compose(content, Loader=SafeLoader)  # noqa: S506 (a safe loader)
        data = yaml.load(content, Loader=SafeLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from exc
    problems = _Problems(path, _Lines(node))
    by_alias = {normalize_name(s): a for a in accelerators for s in (a.name, *a.aliases)}
    zones = _zone_rows(regions)
    embedded = {r.cloud for r in regions}
    out_regions: list[Region] = []
    out_offers: list[Offer] = []
    clouds: list[str] = []
    if not isinstance(data, dict) or set(map(str, data)) != {"clouds"}:
        problems.add((), "the file must hold one key, `clouds`, a list of clouds",
                     "start the file with `clouds:` (see examples/catalog-overlay.yaml)")
        data = {}
    for c, item in (_mapping_items(problems, data, (), "clouds", _CLOUD_KEYS) if data else ()):
        where = ("clouds", c)
        cloud = _text(problems, item, where, "name", "give the cloud a name, e.g. "
                      "nordic-openstack").lower()
        if cloud in RESERVED_CLOUDS or cloud in embedded:
            problems.add((*where, "name"), f"{cloud!r} is a cloud of the embedded catalog; an "
                         "overlay declares other clouds, never another datacenter's figures "
                         "under its name", "give the libcloud cloud its own name")
            continue
        if cloud in clouds:
            problems.add((*where, "name"), f"cloud {cloud!r} is declared twice",
                         "declare each cloud once")
            continue
        source = _text(problems, item, where, "source", "say where the prices come from")
        as_of = _text(problems, item, where, "as_of", "give the date of the figures, "
                      "YYYY-MM-DD")
        if as_of and not (len(as_of) == 10 and as_of[4] == "-" and as_of[7] == "-"
                          and as_of[:4].isdigit()):
            problems.add((*where, "as_of"), f"{as_of!r} is not a date",
                         "write it as YYYY-MM-DD")
            as_of = ""
        clouds.append(cloud)
        names: list[str] = []
        for r, region_item in _mapping_items(problems, item, where, "regions", _REGION_KEYS):
            region = _region(problems, region_item, (*where, "regions", r), cloud=cloud,
                             source=source, as_of=as_of or "2000-01-01", zones=zones)
            name = str(region_item.get("name", ""))
            if name and name in names:
                problems.add((*where, "regions", r, "name"), f"region {name!r} appears twice "
                             f"in cloud {cloud}", "declare each region once")
                continue
            names.append(name)
            if region is not None:
                out_regions.append(region)
        out_offers.extend(_sizes(problems, item, where, cloud=cloud, regions=names,
                                 source=source, as_of=as_of or "2000-01-01",
                                 accelerators=by_alias))
    overlay = Overlay(path=path, clouds=tuple(clouds), regions=tuple(out_regions),
                      offers=tuple(out_offers))
    return problems.items, overlay


def load_overlay(path: Path, *, regions: tuple[Region, ...],
                 accelerators: tuple[Accelerator, ...]) -> Overlay:
    """The overlay's rows. Raises CatalogError listing every problem (one paragraph each)."""
    problems, overlay = overlay_problems(path, regions=regions, accelerators=accelerators)
    if problems:
        raise CatalogError("\n".join(problems))
    return overlay

