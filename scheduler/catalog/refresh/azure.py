"""Azure's live prices and availability for the catalog: ``fetch(request) -> CloudPrices``.

Which sizes: every Azure GPU size greenplace can place, i.e. the embedded catalog's Azure offers
and the Azure entries of ``KNOWN_INSTANCES``, less the sizes Microsoft retired
(``catalog/retired.py``: never offered, whatever price row still names them). The price list
does not say which GPU a size carries, so no size outside these is added.

Prices: the public Azure Retail Prices API (``refresh/azure_retail.py``): the Linux
pay-as-you-go meter of the size in the region is the offer's price, its Spot meter the spot
price; both already cover the whole VM (GPUs, vCPUs, memory). A Spot price at or above the
pay-as-you-go price is no Spot offer (left empty, listed in ``skipped``).

Availability: with a subscription configured (the adapter's ``subscription_id`` setting or
``AZURE_SUBSCRIPTION_ID``), ``resource_skus.list(filter="location eq '<region>'")`` of
azure-mgmt-compute through the adapter's own client and credential chain (Reader on the
subscription is enough: ``Microsoft.Compute/skus/read``). A size that the region's list lacks,
or that carries a ``Location`` restriction there (``NotAvailableForSubscription``, ``QuotaId``),
is not offered in that region (listed in ``skipped`` with the reason). ``Zone`` restrictions do
not remove a size: greenplace's VMs are regional (no zone). The vCPU, memory and GPU counts are
then the SKU's own capabilities (``vCPUs``, ``MemoryGB``, ``GPUs``); a GPU count that differs
from the catalog's leaves the size unpriced there.

Design choice: without a subscription, prices still come (the Retail Prices API needs no
credentials: ``NEEDS_CREDENTIALS`` is False, so ``greenplace catalog refresh`` runs);
availability is then the price list's (a size with a Linux meter in the region is taken as
sold there), not checked against any subscription, and the offers' ``source`` says so. The
vCPU and memory figures are then the embedded catalog's for that size. With a subscription
set, its credentials must work: an unusable credential is an AuthError, never a quiet fall
back to unchecked availability. The service's daily refresh prices Azure only where a
subscription is configured (``credentials_found``): elsewhere Azure is not in use.

Failure is all or nothing: throttling (HTTP 429) and 5xx answers of either API are retried
(``azure_retail.with_retries``: ``MAX_TRIES`` per page, waiting what ``Retry-After`` asks, else
an exponential backoff) and then raise TransientError naming the call and page; nothing partial
is returned. Credentials are the SDK's chain (DefaultAzureCredential), never read, printed or
stored here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from greenplace.providers import credentials
from greenplace.providers.azure import (
    AzureProvider,
    AzureSettings,
    map_azure_error,
    merged_config,
)
from greenplace.scheduler.catalog.loader import Catalog
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.catalog.offer_checks import KNOWN_INSTANCES
from greenplace.scheduler.catalog.refresh import azure_retail
from greenplace.scheduler.catalog.refresh.azure_retail import (
    OPERATION,
    Retryable,
    SizePrices,
    error,
    with_retries,
)
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest, Skipped
from greenplace.scheduler.catalog.retired import AZURE_RETIRED
from greenplace.scheduler.exceptions import (
    AuthError,
    ConfigError,
    InvalidRequestError,
    ProviderError,
    UnknownNameError,
)

CLOUD = "azure"
SKUS_CALL = "resourceSkus.list"
PRICES_SOURCE = "Azure Retail Prices API (Linux pay-as-you-go and Spot meters)"
CHECKED = " + Azure Resource SKUs API (availability and restrictions for the subscription)"
UNCHECKED = ("; availability from the retail price list, not checked against the "
             "subscription")


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A size to price: its accelerator, and its shape as the embedded catalog has it."""

    instance_type: str
    accelerator: str  # canonical catalog name
    accelerator_count: int
    vcpus: int | None  # None: no catalog offer of this size (KNOWN_INSTANCES only)
    memory_gib: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SkuFacts:
    """A size as the subscription's SKU list shows it in one region."""

    vcpus: int | None
    memory_gib: float | None
    gpus: int | None
    restriction: str  # "" when the size may be deployed in the region
    family: str  # the size's vCPU quota family, e.g. "standardNCADSA100v4Family"


# The Retail Prices API is public: a refresh asked for runs without any Azure account.
NEEDS_CREDENTIALS = False


def credentials_found(environ: Mapping[str, str]) -> bool:
    """Whether an Azure subscription is configured (``subscription_id`` or
    ``AZURE_SUBSCRIPTION_ID``): only then is Azure in use here, so the service's daily refresh
    (which refreshes the clouds whose credentials it finds) prices it and checks availability
    against that subscription. Prices alone need none (``NEEDS_CREDENTIALS``)."""
    return credentials.azure_subscription(environ) is not None


def fetch(request: RefreshRequest) -> CloudPrices:
    """Price the catalog's Azure GPU sizes in ``request.regions`` (see the module docstring).

    Raises:
        TransientError: a call still throttled or failing after the retries (names the call).
        AuthError: the configured subscription's credentials are missing or refused.
        InvalidRequestError: bad azure settings, a region outside the catalog, or an answer in
            an unknown format.
    """
    settings = refresh_settings(request.environ)
    regions = _catalog_regions(request)
    targets, skipped = targets_of(request.catalog)
    sizes = sorted(targets)
    prices = azure_retail.fetch_prices(settings.retail_prices_url, regions=regions, sizes=sizes,
                                       now=request.now, ca_bundle=settings.ca_bundle)
    facts = _availability(settings, regions) if settings.subscription_id else None
    source = PRICES_SOURCE + (CHECKED if facts is not None else UNCHECKED)
    offers: list[Offer] = []
    for region in regions:
        for size in sizes:
            offer = _offer(region, targets[size], prices[(region, size)],
                           None if facts is None else facts[region], source=source,
                           as_of=request.now.date().isoformat(), skipped=skipped)
            if offer is not None:
                offers.append(offer)
    return CloudPrices(cloud=CLOUD, source=source, fetched_at=request.now, regions=regions,
                       offers=tuple(offers), skipped=tuple(skipped))


def refresh_settings(environ: Mapping[str, str]) -> AzureSettings:
    """The adapter's settings read from ``environ`` (the adapters' rule), subscription
    included (``AZURE_SUBSCRIPTION_ID`` of ``environ`` when the settings name none)."""
    config = merged_config({}, environ)
    try:
        settings = AzureSettings.from_config(config)
    except (ConfigError, UnknownNameError) as exc:
        raise error(InvalidRequestError, f"the azure settings are unusable: {exc}",
                    code="BadSetting", fix="correct the GREENPLACE_AZURE_* setting named "
                    "above") from exc
    subscription = config.get("subscription_id") or environ.get("AZURE_SUBSCRIPTION_ID")
    return dataclasses.replace(settings, subscription_id=subscription or None)


def _catalog_regions(request: RefreshRequest) -> tuple[str, ...]:
    known = {r.region for r in request.catalog.regions if r.cloud == CLOUD}
    unknown = [r for r in request.regions if r not in known]
    if unknown:
        raise error(InvalidRequestError, f"{', '.join(unknown)} is not an Azure region of the "
                    "catalog, so it cannot be scored", code="UnknownRegion",
                    fix=f"ask for catalog regions only, e.g. {', '.join(sorted(known)[:3])}")
    return tuple(request.regions)


def targets_of(catalog: Catalog) -> tuple[dict[str, Target], list[Skipped]]:
    """The sizes to price (catalog offers and KNOWN_INSTANCES of Azure), and those skipped.

    A size whose accelerator or count the two disagree on, or whose accelerator the catalog
    does not know, is skipped: it cannot be mapped with certainty. Retired sizes are skipped.
    """
    known: dict[str, tuple[str, int]] = {
        size: shape for size, shape in KNOWN_INSTANCES.items() if size.startswith("Standard_")}
    shapes: dict[str, tuple[str, int, int | None, float | None]] = {}
    for o in catalog.offers:
        if o.cloud == CLOUD and o.instance_type not in shapes:
            shapes[o.instance_type] = (o.accelerator, o.accelerator_count, o.vcpus, o.memory_gib)
    for size, (accelerator, count) in known.items():
        shapes.setdefault(size, (accelerator, count, None, None))
    targets: dict[str, Target] = {}
    skipped: list[Skipped] = []
    for size in sorted(shapes):
        accelerator, count, vcpus, memory_gib = shapes[size]
        if size in AZURE_RETIRED:
            skipped.append(Skipped(region="", item=size, reason=f"{AZURE_RETIRED[size]}: never "
                                   "offered, whatever price row still names it"))
            continue
        if size in known and known[size] != (accelerator, count):
            skipped.append(Skipped(region="", item=size, reason=(
                f"the catalog says {count} x {accelerator}, KNOWN_INSTANCES "
                f"{known[size][1]} x {known[size][0]}: not mapped with certainty")))
            continue
        try:
            canonical = catalog.accelerator(accelerator).name
        except UnknownNameError:
            skipped.append(Skipped(region="", item=size,
                                   reason=f"accelerator {accelerator!r} is not in the catalog"))
            continue
        targets[size] = Target(instance_type=size, accelerator=canonical,
                               accelerator_count=count, vcpus=vcpus, memory_gib=memory_gib)
    return targets, skipped


def _offer(region: str, target: Target, prices: SizePrices, facts: dict[str, SkuFacts] | None,
           *, source: str, as_of: str, skipped: list[Skipped]) -> Offer | None:
    """The offer of one size in one region, or None (with the reason added to ``skipped``)."""
    size = target.instance_type

    def skip(reason: str, *, not_offered: bool = False) -> None:
        skipped.append(Skipped(region=region, item=size, reason=reason, not_offered=not_offered))

    vcpus, memory_gib = target.vcpus, target.memory_gib
    if facts is not None:
        sku = facts.get(size)
        if sku is None:
            skip("not offered in this region: the subscription's SKU list has no such size here",
                 not_offered=True)
            return None
        if sku.restriction:
            skip(f"not offered in this region to the subscription: {sku.restriction}",
                 not_offered=True)
            return None
        if sku.gpus != target.accelerator_count:
            gives = "no GPUs capability" if sku.gpus is None else f"{sku.gpus} GPUs"
            skip(f"the SKU list gives {gives}, the catalog {target.accelerator_count} x "
                 f"{target.accelerator}: not mapped with certainty")
            return None
        if sku.vcpus is None or sku.memory_gib is None:
            skip("the SKU list gives no vCPUs or MemoryGB capability for this size")
            return None
        vcpus, memory_gib = sku.vcpus, sku.memory_gib
    if prices.problem:
        skip(f"price rows not understood, not priced: {prices.problem}")
        return None
    on_demand, spot = prices.on_demand_usd_per_hour, prices.spot_usd_per_hour
    if on_demand is None and spot is None:
        skip("no Linux pay-as-you-go or Spot price in this region: not offered here",
             not_offered=True)
        return None
    if on_demand is not None and spot is not None and spot >= on_demand:
        skip(f"Spot price {spot:g} USD/h is not below pay-as-you-go {on_demand:g} USD/h: no "
             "Spot offer")
        spot = None
    if vcpus is None or memory_gib is None:
        skip("vCPUs and memory unknown: the size is not in the embedded catalog and the "
             "subscription's SKU list was not read (no subscription configured)")
        return None
    return Offer(cloud=CLOUD, region=region, instance_type=size, accelerator=target.accelerator,
                 accelerator_count=target.accelerator_count, vcpus=vcpus,
                 memory_gib=memory_gib, price_usd_per_hour=on_demand,
                 spot_price_usd_per_hour=spot, price_note="", source=source, as_of=as_of)


# --------------------------------------------------------------------------- resource SKUs


_SDK_ERRORS = (HttpResponseError, ClientAuthenticationError, ServiceRequestError,
               ServiceResponseError)


def _availability(settings: AzureSettings,
                  regions: Sequence[str]) -> dict[str, dict[str, SkuFacts]]:
    """Each region's VM sizes as the subscription's SKU list shows them."""
    provider = AzureProvider(settings)  # its client, credential chain, endpoint and CA
    try:
        compute = provider.compute()
        return {region: _region_skus(compute, region) for region in regions}
    finally:
        provider.close()


def _region_skus(compute: Any, region: str) -> dict[str, SkuFacts]:
    """One region's VM sizes, page after page, each page retried on throttling."""
    found: dict[str, SkuFacts] = {}
    for sku in arm_pages(f"{SKUS_CALL} (location eq '{region}')",
                         lambda: compute.resource_skus.list(filter=f"location eq '{region}'"),
                         map_error=_arm_error):
        facts = sku_facts(sku, region)
        if facts is not None:
            found[str(sku.name)] = facts
    return found


def arm_pages(call: str, listing: Callable[[], Any], *,
              map_error: Callable[..., ProviderError], operation: str = OPERATION,
              fix: str = azure_retail.RETRIES_FIX) -> list[Any]:
    """Every item of an ARM list (``listing()``: the SDK's ItemPaged), page after page, each
    page retried on throttling, 5xx and connection failures (``with_retries``).

    Design choice: a failed page is asked again from its own ``nextLink`` (the SDK's
    continuation token), not from the first page, so a throttled long list is not read twice.
    The SDK's own retries are off (the adapter's client): this loop is the one retry policy.
    ``map_error(exc, call=...)`` turns any other SDK error into the caller's ProviderError;
    ``operation`` and ``fix`` word the error of a page throttled for good.
    """
    found: list[Any] = []
    token: str | None = None
    page = 0
    while True:
        page += 1
        page_call = f"{call} page {page}"
        start = token

        def one_page(page_call: str = page_call,
                     start: str | None = start) -> tuple[list[Any], str | None]:
            pages = listing().by_page(continuation_token=start)
            try:
                items = list(next(pages, []))
            except HttpResponseError as exc:
                if exc.status_code in azure_retail.RETRY_STATUSES:
                    headers = getattr(exc.response, "headers", None) or {}
                    raise Retryable(f"HTTP {exc.status_code} ({exc.reason})",
                                    code=str(exc.status_code),
                                    retry_after_s=_seconds(headers.get("Retry-After"))) from exc
                raise map_error(exc, call=page_call) from exc
            except (ServiceRequestError, ServiceResponseError) as exc:
                raise Retryable(f"Azure Resource Manager could not be reached "
                                f"({type(exc).__name__})", code=type(exc).__name__) from exc
            except _SDK_ERRORS as exc:
                raise map_error(exc, call=page_call) from exc
            return items, pages.continuation_token

        items, token = with_retries(page_call, one_page, operation=operation, fix=fix)
        found.extend(items)
        if not token:
            return found


def _arm_error(exc: Exception, *, call: str) -> ProviderError:
    """The adapter's mapping of an ARM error, with the refresh's own fix for credentials."""
    return arm_error(exc, call=call, operation=OPERATION, auth_fix=(
        "sign in with `az login`, or set AZURE_CLIENT_ID / AZURE_TENANT_ID / "
        "AZURE_CLIENT_SECRET (or use a managed identity), and give the principal Reader "
        "(Microsoft.Compute/skus/read) on the subscription; or unset subscription_id and "
        "AZURE_SUBSCRIPTION_ID to take prices and availability from the retail price list "
        "alone"))


def arm_error(exc: Exception, *, call: str, operation: str, auth_fix: str) -> ProviderError:
    """The adapter's mapping of an ARM error for ``operation``; a credential error gets
    ``auth_fix`` (the permissions that operation needs) instead of the adapter's advice."""
    mapped = map_azure_error(exc, operation=operation, call=call)
    if not isinstance(mapped, AuthError):
        return mapped
    what = str(mapped).split(": ", 1)[-1].split(" To fix:")[0]
    return error(AuthError, what, code=mapped.code, fix=auth_fix, operation=operation)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def sku_facts(sku: Any, region: str) -> SkuFacts | None:
    """A ``virtualMachines`` ResourceSku in ``region`` as SkuFacts; None for other resource
    types or another region."""
    if str(sku.resource_type or "") != "virtualMachines":
        return None
    if region.lower() not in {str(loc).lower() for loc in sku.locations or []}:
        return None
    capabilities = {str(c.name): str(c.value) for c in sku.capabilities or []}
    restrictions = []
    for r in sku.restrictions or []:
        if str(_text(r.type)) != "Location":
            continue  # Zone: the size is still sold in the region, without a zone
        # ``values_property``: the SDK's name for the JSON ``values`` (``values`` is the
        # model's dict method).
        where = set(r.values_property or []) | set((r.restriction_info.locations or [])
                                                   if r.restriction_info is not None else [])
        if region.lower() in {str(w).lower() for w in where}:
            restrictions.append(f"Location restriction, reason {_text(r.reason_code) or '-'}")
    return SkuFacts(vcpus=_int(capabilities.get("vCPUs")),
                    memory_gib=_float(capabilities.get("MemoryGB")),
                    gpus=_int(capabilities.get("GPUs")), restriction="; ".join(restrictions),
                    family=_text(sku.family))


def _text(value: Any) -> str:
    """An SDK field as text (some are str enums)."""
    return "" if value is None else str(getattr(value, "value", value))


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _float(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


__all__ = ["arm_error", "arm_pages", "credentials_found", "fetch", "refresh_settings", "sku_facts",
           "targets_of"]
