"""Azure vCPU quotas per VM family as capacity pools, through azure-mgmt-compute.

What one read calls per region (both in the Reader role on the subscription):

* ``usage.list(location)`` (``Microsoft.Compute/locations/usages/read``), page after page:
  each usage ``{name: {value, localizedValue}, currentValue, limit, unit: Count}``, one per
  VM family (``standardNCADSA100v4Family``), plus the regional totals ``cores`` and
  ``lowPriorityCores``;
* ``resource_skus.list(filter="location eq '<region>'")`` (``Microsoft.Compute/skus/read``),
  page after page: which VM sizes of the region carry GPUs, and the ``family`` each belongs to.

Pools, counted in vCPUs, ``limit - currentValue`` (what is left now, never below 0):

* one per GPU family: the family's usage, matching the region's GPU sizes of that family
  (e.g. ``Standard_NC24ads_A100_v4`` ... ``Standard_NC96ads_A100_v4``), on demand only;
* ``cores`` (Total Regional vCPUs): every GPU size of the region, on demand: a family quota
  never lets a region's on-demand VMs exceed its regional total;
* ``lowPriorityCores`` (Total Regional Spot vCPUs): every GPU size of the region, Spot only:
  Azure counts Spot VMs against this one regional quota, not their family's.

Design choices:

* The size -> family mapping is the cloud's own (the SKU list's ``family``), not a table
  kept here, so a family Azure adds is mapped as soon as its sizes are listed. A usage of an
  N-series family (``standardN...Family``: the GPU series) of which the region lists no GPU
  size is skipped with the reason; families of sizes without GPUs are passed over.
* A usage whose figures are missing or negative is skipped, never guessed. A region where
  ARM serves no compute for the subscription (``LocationNotAvailableForResourceType``,
  ``NoRegisteredProviderFound``) is skipped with the reason; other failures fail the read.
* Calls, paging, retries (throttling 429 and 5xx, page by page from the failed ``nextLink``,
  ``MAX_TRIES`` tries waiting what ``Retry-After`` asks) and error mapping are the Azure catalog
  refresh's (``catalog/refresh/azure.py``: ``arm_pages``), with the adapter's client, endpoint,
  CA and credential chain (``providers/azure.py``). A subscription must be configured
  (``subscription_id`` setting or ``AZURE_SUBSCRIPTION_ID``). Credentials are the SDK's chain
  (DefaultAzureCredential), never read, printed or stored here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from greenplace.providers.azure import AzureProvider, AzureSettings
from greenplace.scheduler.catalog.refresh import azure as refresh_azure
from greenplace.scheduler.catalog.refresh.azure import SkuFacts
from greenplace.scheduler.catalog.refresh.azure_retail import error
from greenplace.scheduler.exceptions import InvalidRequestError, ProviderError
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.quotas import QuotaAnswer, QuotaSkip

CLOUD = "azure"
OPERATION = "quota_read"
SOURCE = ("Azure Compute usage.list (vCPU usage and limits per VM family) + resource_skus.list "
          "(GPU sizes and their families)")
USAGES_CALL = "usage.list"
SKUS_CALL = "resourceSkus.list"
REGIONAL_ON_DEMAND = "cores"
REGIONAL_SPOT = "lowPriorityCores"
GPU_FAMILY_PREFIX = "standardn"  # N-series: NC, ND, NG, NV (lower-cased)
AUTH_FIX = ("sign in with `az login`, or set AZURE_CLIENT_ID / AZURE_TENANT_ID / "
            "AZURE_CLIENT_SECRET (or use a managed identity), and give the principal Reader on "
            "the subscription (Microsoft.Compute/locations/usages/read, "
            "Microsoft.Compute/skus/read)")
RETRIES_FIX = "plan again later, or plan with a capacity file alone meanwhile"
# ARM's answers for a location the subscription cannot use Microsoft.Compute in: the region
# is skipped with the reason, not the whole read failed.
REGION_REFUSALS = frozenset({"LocationNotAvailableForResourceType", "NoRegisteredProviderFound"})
# Environment variables through which DefaultAzureCredential finds a credential without a
# network call: a service principal (with a secret, a certificate or a federated token) and
# an App Service / Functions / Arc managed identity.
_SERVICE_PRINCIPAL_PROOFS = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                             "AZURE_FEDERATED_TOKEN_FILE")
_MANAGED_IDENTITY_ENDPOINTS = ("IDENTITY_ENDPOINT", "MSI_ENDPOINT")
_AZ_CLI_FILES = ("msal_token_cache.json", "msal_token_cache.bin", "accessTokens.json")


def credentials_found(environ: Mapping[str, str]) -> bool:
    """Whether a read could run here, without a network call: a subscription is configured
    and the credential chain has something to use (the loopback test token; a service
    principal's or managed identity's variables; an ``az login`` token cache).

    Design choice: a VM's managed identity is only visible through the instance metadata
    service, a network call; there, set the subscription and use the Azure CLI's
    ``az login --identity`` (its cache counts) or the identity endpoint variables.
    """
    try:
        settings = _settings(environ)
    except InvalidRequestError:
        return False
    if not settings.subscription_id:
        return False
    if settings.test_token:  # the settings allow it only with a loopback base_url
        return True
    if (environ.get("AZURE_CLIENT_ID") and environ.get("AZURE_TENANT_ID")
            and any(environ.get(name) for name in _SERVICE_PRINCIPAL_PROOFS)):
        return True
    if any(environ.get(name) for name in _MANAGED_IDENTITY_ENDPOINTS):
        return True
    config_dir = environ.get("AZURE_CONFIG_DIR") or (
        str(Path(environ["HOME"]) / ".azure") if environ.get("HOME") else "")
    return bool(config_dir) and any((Path(config_dir) / name).is_file()
                                    for name in _AZ_CLI_FILES)


def _settings(environ: Mapping[str, str]) -> AzureSettings:
    return refresh_azure.refresh_settings(environ)


def read_quotas(regions: Sequence[str], environ: Mapping[str, str]) -> QuotaAnswer:
    """The subscription's vCPU quotas left for GPU sizes in ``regions``, as capacity pools.

    Raises:
        AuthError: credentials missing or refused.
        TransientError: a page still throttled or failing after the retries (names the call).
        InvalidRequestError: bad azure settings, no subscription, or a region ARM refuses.
    """
    settings = _settings(environ)
    if not settings.subscription_id:
        raise error(
            InvalidRequestError, "no Azure subscription is configured, so its quotas cannot "
            "be read", code="NoSubscription", operation=OPERATION,
            fix="set the azure 'subscription_id' setting or AZURE_SUBSCRIPTION_ID")
    provider = AzureProvider(settings)  # its client, credential chain, endpoint and CA
    pools: list[CapacityPool] = []
    skipped: list[QuotaSkip] = []
    try:
        compute = provider.compute()
        for region in dict.fromkeys(regions):
            try:
                usages = _pages(f"{USAGES_CALL} ({region})",
                                lambda r=region: compute.usage.list(r))
            except InvalidRequestError as exc:
                if exc.code not in REGION_REFUSALS:
                    raise
                skipped.append(QuotaSkip(region=region, quota="", reason=(
                    f"Azure Resource Manager does not serve compute there for the "
                    f"subscription ({exc.code})")))
                continue
            skus = _pages(f"{SKUS_CALL} (location eq '{region}')",
                          lambda r=region: compute.resource_skus.list(
                              filter=f"location eq '{r}'"))
            facts = [(str(sku.name), f) for sku in skus
                     if (f := refresh_azure.sku_facts(sku, region)) is not None]
            pools.extend(_pools(region, usages, facts, skipped))
    finally:
        provider.close()
    return QuotaAnswer(pools=tuple(pools), skipped=tuple(skipped), source=SOURCE)


def _pages(call: str, listing: Any) -> list[Any]:
    return refresh_azure.arm_pages(call, listing, map_error=_arm_error, operation=OPERATION,
                                   fix=RETRIES_FIX)


def _arm_error(exc: Exception, *, call: str) -> ProviderError:
    return refresh_azure.arm_error(exc, call=call, operation=OPERATION, auth_fix=AUTH_FIX)


def _pools(region: str, usages: list[Any], facts: list[tuple[str, SkuFacts]],
           skipped: list[QuotaSkip]) -> list[CapacityPool]:
    """The pools of one region: its GPU families' usages and the two regional totals."""
    gpu_sizes_by_family: dict[str, list[str]] = {}
    for size, fact in facts:
        if fact.gpus:
            gpu_sizes_by_family.setdefault(fact.family.lower(), []).append(size)
    every_gpu_size = tuple(sorted(s for sizes in gpu_sizes_by_family.values() for s in sizes))
    pools: list[CapacityPool] = []
    for usage in usages:
        name = refresh_azure._text(getattr(usage.name, "value", None))
        key = name.lower()
        if key == REGIONAL_ON_DEMAND.lower():
            sizes, spot = every_gpu_size, False
        elif key == REGIONAL_SPOT.lower():
            sizes, spot = every_gpu_size, True
        elif key.endswith("family") and key in gpu_sizes_by_family:
            sizes, spot = tuple(sorted(gpu_sizes_by_family[key])), False
        else:
            if key.startswith(GPU_FAMILY_PREFIX) and key.endswith("family"):
                skipped.append(QuotaSkip(region=region, quota=name, reason=(
                    "an N-series (GPU) family of which the region's SKU list has no GPU size: "
                    "which sizes it limits is unknown")))
            continue
        left = _left(usage)
        if isinstance(left, str):
            skipped.append(QuotaSkip(region=region, quota=name, reason=left))
            continue
        if not sizes:
            continue  # a regional total, in a region without GPU sizes: nothing to limit
        localized = refresh_azure._text(getattr(usage.name, "localized_value", None)) or name
        pools.append(CapacityPool(
            cloud=CLOUD, region=region, unit=Unit.VCPUS, instance_types=sizes, spot=spot,
            limit=left, source=(f"Azure usage {name} ({localized}) in {region}: limit "
                                f"{usage.limit} less current {usage.current_value}")))
    return pools


def _left(usage: Any) -> int | str:
    """``limit - currentValue`` (at least 0), or why the usage cannot be read.

    The unit is not checked: the SDK's Usage model holds it as the constant "Count",
    whatever the answer says (every compute usage is a count).
    """
    limit, current = usage.limit, usage.current_value
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (limit, current)):
        return f"limit {limit!r} / currentValue {current!r} are not vCPU counts"
    if limit < 0:
        return f"limit {limit} is below 0"
    return max(0, math.floor(limit - current))


__all__ = ["AUTH_FIX", "SOURCE", "credentials_found", "read_quotas"]
