"""One price refresh: fetch each asked cloud, check its figures, then write the document once.

For each cloud, in order: are there credentials at all (``credentials_found``, no network)?
Fetch (``fetcher(cloud)``); check the figures (their shape, then ``check_catalog`` on the
catalog merged with the cloud's new section); each cloud ends ``updated``, ``failed`` (the
fetch raised: its previous figures are kept), ``refused`` (the check failed: its previous
figures are kept, the broken rows named) or ``no_credentials`` (nothing fetched, nothing
written for it). Only then is the document written, once, atomically
(``PricesLocation.update``), with every updated section and the failures recorded beside
the figures they left in place.

Design choice: a fetcher's ``ProviderError`` / ``ConfigError`` (any ``GreenplaceError``) and a
missing SDK extra (``ImportError``) are that cloud's failure, told in one paragraph; anything
else is a bug and propagates. A refresh of some regions of a cloud replaces those regions'
offers only: the section keeps the others, each region dated by ``priced_at``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from greenplace.scheduler.catalog import refresh
from greenplace.scheduler.catalog.check import check_catalog
from greenplace.scheduler.catalog.loader import Catalog, value_problems
from greenplace.scheduler.catalog.refresh.merge import diff, merged, usable
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest
from greenplace.scheduler.catalog.refresh.store import (
    Failure,
    PricesDocument,
    PricesLocation,
    Section,
    read,
)
from greenplace.scheduler.exceptions import GreenplaceError

UPDATED, FAILED, REFUSED, NO_CREDENTIALS = "updated", "failed", "refused", "no_credentials"

# Where each cloud's SDK looks for credentials (the fetchers never read them themselves).
CREDENTIAL_HINTS = {
    "aws": "give the AWS SDK credentials (AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
           "AWS_SECRET_ACCESS_KEY, or an instance role) allowed pricing:GetProducts and "
           "ec2:DescribeSpotPriceHistory",
    "gcp": "give Google Application Default Credentials (`gcloud auth application-default "
           "login`, or GOOGLE_APPLICATION_CREDENTIALS) able to read the Cloud Billing Catalog",
    "azure": "sign in for the Azure SDK (`az login`, or AZURE_CLIENT_ID, AZURE_TENANT_ID and "
             "AZURE_CLIENT_SECRET)",
}
_SHOWN_PROBLEMS = 5  # rows a refusal's paragraph names; the outcome keeps them all


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudOutcome:
    """How one cloud's refresh ended, in one paragraph, with its counts."""

    cloud: str
    status: str  # UPDATED, FAILED, REFUSED or NO_CREDENTIALS
    message: str
    regions: tuple[str, ...] = ()  # asked
    offers: int = 0  # refreshed offers stored (updated only)
    skipped: int = 0
    not_enabled: tuple[str, ...] = ()
    new: int = 0  # offers against the figures placed with before
    retired: int = 0
    repriced: int = 0
    problems: tuple[str, ...] = ()  # every row a refusal names
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, object]:
        return {"cloud": self.cloud, "status": self.status, "regions": len(self.regions),
                "offers": self.offers, "new": self.new, "retired": self.retired,
                "repriced": self.repriced, "skipped": self.skipped,
                "not_enabled": list(self.not_enabled), "problems": list(self.problems),
                "message": self.message}


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshResult:
    """Every asked cloud's outcome, and where the document was written."""

    outcomes: tuple[CloudOutcome, ...]
    where: str
    written: bool

    @property
    def ok(self) -> bool:
        """Whether every asked cloud was updated."""
        return all(o.status == UPDATED for o in self.outcomes)


def _kept(section: Section | None, catalog: Catalog, cloud: str) -> str:
    """What a cloud keeps placing with when its refresh did not replace its figures."""
    if section is not None and section.prices is not None:
        return f"the figures refreshed at {section.prices.fetched_at:%Y-%m-%d %H:%M} UTC"
    dates = sorted({o.as_of for o in catalog.offers if o.cloud == cloud})
    return f"the embedded catalog's, as_of {dates[-1] if dates else 'unknown'}"


def _fix_of(exc: BaseException, cloud: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ImportError):
        return (f"its SDK is not installed ({text}). To fix: pip install "
                f"'greenplace[{cloud}]'.")
    return text if "To fix" in text else (
        f"{text}. To fix: check the cloud's credentials and settings "
        f"(`greenplace providers check --cloud {cloud}`), then refresh again.")


def combined(old: Section | None, new: CloudPrices, *, asked: Sequence[str]) -> Section:
    """``old`` with the regions ``new`` priced replaced by ``new``'s offers (the others kept)."""
    priced = frozenset(new.regions)
    was = old.prices if old is not None else None
    keep_offers = [o for o in (was.offers if was else ()) if o.region not in priced]
    keep_skipped = [s for s in (was.skipped if was else ())
                    if s.region and s.region not in asked]
    not_enabled = (set(was.not_enabled if was else ()) - set(asked)) | set(new.not_enabled)
    priced_at = {r: at for r, at in (old.priced_at if old else {}).items() if r not in priced}
    priced_at.update(dict.fromkeys(new.regions, new.fetched_at))
    prices = CloudPrices(
        cloud=new.cloud, source=new.source, fetched_at=new.fetched_at,
        regions=tuple(sorted(priced_at)), offers=(*keep_offers, *new.offers),
        not_enabled=tuple(sorted(not_enabled)), skipped=(*keep_skipped, *new.skipped))
    return Section(cloud=new.cloud, prices=prices, priced_at=priced_at)


def shape_problems(prices: CloudPrices, *, cloud: str, asked: Sequence[str],
                   catalog: Catalog) -> list[str]:
    """What breaks the fetcher contract (``model``): the wrong cloud, a time without its UTC
    offset, a region not asked, an offer outside the regions priced, an unknown region or
    accelerator, a bad value, or the same offer twice."""
    out = []
    label = f"refreshed prices {cloud}"
    if prices.cloud != cloud:
        out.append(f"{label}: the fetcher answered for cloud {prices.cloud!r}")
    if prices.fetched_at.utcoffset() is None:
        out.append(f"{label}: fetched_at {prices.fetched_at.isoformat()} has no UTC offset")
    for region in sorted(set(prices.regions) - set(asked)):
        out.append(f"{label}:{region}: priced, but not asked for")
    _, unknown = usable(catalog, prices.offers)
    seen: set[tuple[str, str]] = set()
    for o in prices.offers:
        where = f"{label}:{o.region} {o.instance_type}"
        if o.cloud != cloud or o.region not in prices.regions:
            out.append(f"{where}: not in the regions this refresh priced")
        if (o.region, o.instance_type) in seen:
            out.append(f"{where}: appears twice")
        seen.add((o.region, o.instance_type))
        out.extend(f"{where}: {p}" for p in value_problems(o))
        if o.price_usd_per_hour is None and o.spot_price_usd_per_hour is None:
            out.append(f"{where}: has neither an on-demand nor a spot price")
    out.extend(f"{label}:{o.region} {o.instance_type}: unknown region or accelerator "
               f"{o.accelerator!r}" for o in unknown)
    return out


def check_problems(catalog: Catalog, document: PricesDocument, *, cloud: str,
                   regions: Iterable[str]) -> list[str]:
    """The catalog check's problems with the refreshed offers of ``cloud`` in ``regions``,
    on the catalog merged with ``document`` (named ``refreshed prices cloud:region type``)."""
    labels = {f"{cloud}:{r}" for r in regions}
    out = []
    for problem in check_catalog(merged(catalog, document)):
        origin, _, rest = problem.partition(" ")
        if origin == "offers.csv" and rest.split(" ", 1)[0] in labels:
            out.append(f"refreshed prices {rest}")
    return out


def _emptied(catalog: Catalog, prices: CloudPrices) -> list[str]:
    """Regions where the refresh found no offer at all (priced, or seen but not priceable)
    while the catalog sells some there: an empty answer is far likelier a broken fetch than a
    cloud that sells nothing."""
    unpriced = {(s.region, s.item) for s in prices.skipped if not s.not_offered}
    sold = {o.region for o in catalog.offers if o.cloud == prices.cloud}
    found = {o.region for o in prices.offers} | {
        o.region for o in catalog.offers if o.cloud == prices.cloud
        and ((o.region, o.instance_type) in unpriced or ("", o.instance_type) in unpriced)}
    return [f"refreshed prices {prices.cloud}:{r}: no offer priced, where the embedded catalog "
            "has some; refusing to retire them all"
            for r in sorted(set(prices.regions) & sold - found)]


def refresh_cloud(cloud: str, regions: Sequence[str], *, catalog: Catalog,
                  current: PricesDocument, environ: Mapping[str, str], now: dt.datetime
                  ) -> tuple[CloudOutcome, CloudPrices | None]:
    """Fetch and check one cloud: its outcome, and what it fetched when updated."""
    old = current.sections.get(cloud)
    kept = _kept(old, catalog, cloud)
    asked = tuple(regions)
    try:
        if refresh.needs_credentials(cloud) and not refresh.credentials_found(cloud, environ):
            return CloudOutcome(
                cloud=cloud, status=NO_CREDENTIALS, regions=asked,
                message=f"{cloud}: no credentials found, so nothing was fetched or written for "
                f"it; placement keeps {kept}. To fix: {CREDENTIAL_HINTS[cloud]}, then run "
                f"`greenplace catalog refresh --cloud {cloud}`."), None
        prices = refresh.fetcher(cloud)(RefreshRequest(
            cloud=cloud, regions=asked, catalog=catalog, environ=environ, now=now))
    except (GreenplaceError, ImportError) as exc:
        return CloudOutcome(
            cloud=cloud, status=FAILED, regions=asked, error=exc,
            message=f"{cloud}: the refresh failed and its previous figures are kept ({kept}): "
            f"{_fix_of(exc, cloud)}"), None
    problems = shape_problems(prices, cloud=cloud, asked=asked, catalog=catalog)
    section = combined(old, prices, asked=asked)
    if not problems:
        problems = _emptied(catalog, prices) or check_problems(
            catalog, current.with_section(section), cloud=cloud, regions=prices.regions)
    if problems:
        shown = "; ".join(problems[:_SHOWN_PROBLEMS])
        more = f" (and {len(problems) - _SHOWN_PROBLEMS} more)" if len(problems) > \
            _SHOWN_PROBLEMS else ""
        return CloudOutcome(
            cloud=cloud, status=REFUSED, regions=asked, problems=tuple(problems),
            skipped=len(prices.skipped),
            message=f"{cloud}: the refreshed prices fail the catalog check in "
            f"{len(problems)} row(s), so they were not stored and the previous figures are "
            f"kept ({kept}): {shown}{more}. To fix: nothing to do here if the cloud's own "
            "figures are wrong for a while; if they are right, report it so the check "
            "(scheduler/catalog/offer_checks.py) learns them."), None
    before = merged(catalog, current)
    changes = diff(before, merged(catalog, current.with_section(section)))
    counts = {kind: sum(1 for c in changes if c.change == kind)
              for kind in ("new", "retired", "repriced")}
    new, retired, repriced = counts["new"], counts["retired"], counts["repriced"]
    return CloudOutcome(
        cloud=cloud, status=UPDATED, regions=asked, offers=len(prices.offers),
        skipped=len(prices.skipped), not_enabled=prices.not_enabled, new=new,
        retired=retired, repriced=repriced,
        message=f"{cloud}: {len(prices.offers)} offers priced in {len(prices.regions)} "
        f"region(s) ({new} new, {retired} retired, {repriced} repriced), "
        f"{len(prices.skipped)} item(s) skipped"
        + (f", {len(prices.not_enabled)} region(s) not enabled for the account"
           if prices.not_enabled else "") + "."), prices


def run_refresh(asked: Mapping[str, Sequence[str]], *, location: PricesLocation,
                catalog: Catalog, environ: Mapping[str, str], now: dt.datetime,
                starting: Callable[[str, Sequence[str]], None] | None = None,
                progress: Callable[[CloudOutcome], None] | None = None) -> RefreshResult:
    """Refresh every cloud of ``asked`` (cloud -> regions), then write the document once.

    Args:
        catalog: the catalog without refreshed prices (``load_declared_catalog``).
        starting: called with each cloud and its regions before its fetch.
        progress: called with each cloud's outcome as it ends.

    Raises:
        CatalogError: the document there does not parse.
        ConfigError: the document cannot be written (nothing was changed).
    """
    current = read(location)
    outcomes: list[CloudOutcome] = []
    fresh: dict[str, CloudPrices] = {}
    for cloud, regions in asked.items():
        if starting is not None:
            starting(cloud, regions)
        outcome, prices = refresh_cloud(cloud, regions, catalog=catalog, current=current,
                                        environ=environ, now=now)
        outcomes.append(outcome)
        if prices is not None:
            fresh[cloud] = prices
        if progress is not None:
            progress(outcome)
    failures = {o.cloud: Failure(at=now, outcome=o.status, message=o.message)
                for o in outcomes if o.status in (FAILED, REFUSED)}
    if not fresh and not failures:
        return RefreshResult(outcomes=tuple(outcomes), where=location.where, written=False)

    def change(latest: PricesDocument) -> PricesDocument:
        """Applied to the document as it is when written: the sections (and regions) that
        another refresh wrote meanwhile stay as they are."""
        for cloud, prices in fresh.items():
            latest = latest.with_section(combined(latest.sections.get(cloud), prices,
                                                  asked=asked[cloud]))
        for cloud, failure in failures.items():
            there = latest.sections.get(cloud) or Section(cloud=cloud)
            latest = latest.with_section(Section(cloud=cloud, prices=there.prices,
                                                 priced_at=there.priced_at,
                                                 last_failure=failure))
        return latest

    location.update(change)
    from greenplace.scheduler.catalog.refresh.prices import forget

    forget(location)  # this process places with what it just wrote
    return RefreshResult(outcomes=tuple(outcomes), where=location.where, written=True)


__all__ = ["CREDENTIAL_HINTS", "CloudOutcome", "FAILED", "NO_CREDENTIALS", "REFUSED",
           "RefreshResult", "UPDATED", "check_problems", "combined", "refresh_cloud",
           "run_refresh", "shape_problems"]
