"""GCP price refresh: Compute Engine GPU machine prices from the Cloud Billing Catalog API.

What it calls (read-only), through the SDKs greenplace launches with (REST transport):

* Cloud Billing Catalog API ``services.skus.list`` of the Compute Engine service
  (``services/6F81-5844-456A``, every page; google-cloud-billing ``CloudCatalogClient``);
* Compute Engine ``machineTypes.aggregatedList`` (filtered to the GPU machine series) and
  ``acceleratorTypes.aggregatedList`` (the GPUs an N1 machine can take), for which machine
  types and GPUs exist in which zones, with their vCPUs, memory and bundled GPUs.

How a price is composed, exactly as Compute Engine bills a GPU VM: ``vCPUs x core price +
memory GiB x RAM price + GPUs x GPU price``, each from the region's SKU of that machine
family (``A2 Instance Core running in Americas``, ``A2 Instance Ram ...``, ``Nvidia Tesla A100
GPU running in ...``; N1 machines use the ``N1 Predefined Instance Core / Ram`` SKUs plus the
SKU of the GPU attached). The spot price is the same sum over the ``Spot Preemptible ...`` SKUs
(usageType ``Preemptible``). A SKU applies to the regions its ``serviceRegions`` lists.

Design choice: the composer knows a closed set of description shapes (``_HOST_SKU``,
``_GPU_SKU``) and machine series (``HOST_SKU_NAMES``); anything else is never priced. A GPU
SKU whose description it cannot read, a price in another unit, currency or with tiers, two
SKUs disagreeing on one component, a machine series without a rule (A3 Ultra, A3 Edge, ...)
or a GPU type it cannot map to a catalog accelerator with certainty: each is listed in
``CloudPrices.skipped`` with the reason, never turned into a guessed price.

Cloud TPUs are not refreshed: their prices are SKUs of the Cloud TPU service, not of Compute
Engine, and TPU slices are listed by the Cloud TPU API, which this fetcher does not call; the
embedded TPU offers of a refreshed region are reported as skipped with that reason.

Settings are the GCP adapter's (``providers/gcp.py`` ``GcpSettings``, read by the adapters'
rule from ``GREENPLACE_GCP_*``): ``project`` (default: the one Application Default
Credentials name), ``api_endpoint`` (Compute Engine), ``billing_api_endpoint`` (Cloud Billing)
and ``credentials`` (``anonymous`` only against loopback fakes). Credentials are ADC's own;
nothing here reads, prints or stores them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import billing_v1, compute_v1

from greenplace.providers import credentials
from greenplace.providers.gcp import (
    CALL_ERRORS,
    GPU_ACCELERATOR_TYPES,
    HTTP_TIMEOUT_S,
    PROVIDER,
    THROTTLE_CODES,
    GcpProvider,
    GcpSettings,
    map_api_error,
    merged_config,
)
from greenplace.providers.settings import is_loopback
from greenplace.scheduler.catalog.loader import Catalog
from greenplace.scheduler.catalog.model import Offer, normalize_name
from greenplace.scheduler.catalog.offer_checks import KNOWN_INSTANCES
from greenplace.scheduler.catalog.refresh.model import CloudPrices, RefreshRequest, Skipped
from greenplace.scheduler.exceptions import (
    AuthError,
    GreenplaceError,
    InvalidRequestError,
    ProviderError,
    TransientError,
)

OPERATION = "catalog refresh"
COMPUTE_SERVICE = "services/6F81-5844-456A"  # Compute Engine in the Cloud Billing Catalog
SOURCE = ("Cloud Billing Catalog API (Compute Engine SKUs, services/6F81-5844-456A) + "
          "Compute Engine machineTypes / acceleratorTypes aggregatedList")
SKU_PAGE_SIZE = 5000  # the Catalog API's largest page
LIST_PAGE_SIZE = 500  # Compute Engine's largest page

# Throttling (429 RESOURCE_EXHAUSTED, 403 rateLimitExceeded) and 503 are retried with
# exponential backoff for at most RETRY_DEADLINE_S per call; then the refresh fails.
RETRY_INITIAL_S = 1.0
RETRY_MAXIMUM_S = 16.0
RETRY_DEADLINE_S = 120.0

# Machine series (the machine type without its size) -> the name its core and RAM SKUs carry
# ("A2 Instance Core running in Americas"). A series missing here is skipped: A3 Ultra (H200),
# A3 Edge, A4 and G4 have core / RAM SKUs of their own that this table does not know.
HOST_SKU_NAMES: dict[str, str] = {
    "a2-highgpu": "A2", "a2-megagpu": "A2", "a2-ultragpu": "A2",
    "a3-highgpu": "A3", "a3-megagpu": "A3",
    "g2-standard": "G2",
    "n1-standard": "N1 Predefined", "n1-highmem": "N1 Predefined", "n1-highcpu": "N1 Predefined",
}
# Machine families whose machine types carry their GPUs (``accelerators`` of the type).
BUNDLED_FAMILIES = ("a2", "a3", "g2")
# Compute Engine acceleratorType -> (the GPU's name in its SKU descriptions, catalog name).
GPU_TYPES: dict[str, tuple[str, str]] = {
    "nvidia-tesla-t4": ("Nvidia Tesla T4", "T4"),
    "nvidia-tesla-v100": ("Nvidia Tesla V100", "V100"),
    "nvidia-tesla-p100": ("Nvidia Tesla P100", "P100"),
    "nvidia-tesla-a100": ("Nvidia Tesla A100", "A100"),
    "nvidia-a100-80gb": ("Nvidia Tesla A100 80GB", "A100-80GB"),
    "nvidia-h100-80gb": ("Nvidia H100 80GB", "H100"),
    "nvidia-h100-mega-80gb": ("Nvidia H100 80GB Mega", "H100"),
    "nvidia-l4": ("Nvidia L4", "L4"),
}
_GPU_SKU_NAMES = frozenset(name for name, _ in GPU_TYPES.values())

# "A2 Instance Core running in Americas", "Spot Preemptible N1 Predefined Instance Ram running
# in Belgium"; "Nvidia L4 GPU running in Iowa", "Nvidia L4 GPU attached to Spot Preemptible
# VMs running in Iowa".
_HOST_SKU = re.compile(r"^(?P<spot>Spot Preemptible )?(?P<name>A2|A3|G2|N1 Predefined) "
                       r"Instance (?P<part>Core|Ram) running in (?P<place>.+)$")
_GPU_SKU = re.compile(r"^(?P<name>Nvidia .+?) GPU (?P<spot>attached to Spot Preemptible VMs )?"
                      r"running in (?P<place>.+)$")
_PLAIN_NAME = re.compile(r"[a-z0-9-]+")
_USAGE_TYPES = {False: "OnDemand", True: "Preemptible"}
_UNITS = {"core": "h", "ram": "GiBy.h", "gpu": "h"}  # usageUnit each component is priced in

_TPU_REASON = ("Cloud TPU prices are SKUs of the Cloud TPU service, not Compute Engine's, and "
               "TPU slices are listed by the Cloud TPU API, which this fetcher does not call: "
               "TPU offers are not refreshed")

FIXES: dict[type[ProviderError], str] = {
    TransientError: "retry the refresh later; the previous figures stay in use until then",
    AuthError: "run `gcloud auth application-default login` or set "
               "GOOGLE_APPLICATION_CREDENTIALS; the principal needs roles/compute.viewer on the "
               "project (compute.machineTypes.list, compute.acceleratorTypes.list) and the "
               "Cloud Billing API enabled (services.skus.list needs no role)",
    InvalidRequestError: "check the gcp settings (project, api_endpoint, billing_api_endpoint)",
}

_T = TypeVar("_T")
# The file Linux fills with the machine's product name; "Google Compute Engine" on a GCE VM,
# whose metadata server then gives credentials (read locally: no network call).


# --------------------------------------------------------------------------- settings, creds


def _settings(environ: Mapping[str, str]) -> GcpSettings:
    """The adapter's settings from ``environ``; bad ones raise InvalidRequestError."""
    try:
        return GcpSettings.from_config(merged_config({}, environ))
    except GreenplaceError as exc:  # ConfigError, UnknownNameError: already say "To fix"
        raise InvalidRequestError(str(exc), provider=PROVIDER, operation=OPERATION,
                                  code="settings") from exc


def credentials_found(environ: Mapping[str, str]) -> bool:
    """Whether a refresh could run here: Application Default Credentials exist (no network).

    ADC looks, in order, at ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's
    ``application_default_credentials.json`` and the metadata server of a GCE VM; so does
    this check, reading only local files. Anonymous credentials count against loopback fakes
    of both APIs (``api_endpoint`` and ``billing_api_endpoint``).
    """
    try:
        settings = _settings(environ)
    except InvalidRequestError:
        return False
    if settings.anonymous_credentials:  # local fakes: both endpoints must be loopback
        return is_loopback(settings.billing_api_endpoint)
    return credentials.gcp_adc(environ)


# --------------------------------------------------------------------------- calls


def _throttled(exc: Exception) -> bool:
    """Retry predicate: 429 / RESOURCE_EXHAUSTED, 503, and GCE's 403 rate limits."""
    if isinstance(exc, (gexc.TooManyRequests, gexc.ResourceExhausted,
                        gexc.ServiceUnavailable)):
        return True
    if isinstance(exc, gexc.Forbidden):
        reasons = {str(e.get("reason")) for e in (exc.errors or []) if isinstance(e, dict)}
        return bool(reasons & THROTTLE_CODES)
    return False


def _retry() -> Retry:
    return Retry(predicate=_throttled, initial=RETRY_INITIAL_S, maximum=RETRY_MAXIMUM_S,
                 multiplier=2.0, timeout=RETRY_DEADLINE_S)


def _listed(call: str, list_all: Callable[[], _T], *, operation: str = OPERATION,
            fixes: Mapping[type[ProviderError], str] = FIXES) -> _T:
    """Every item of a paged list call (or one call's answer), or the ProviderError naming
    ``call``; ``operation`` and ``fixes`` are the caller's (the quota reader shares this).

    A page that fails (after the retries) fails the whole list: nothing partial is returned.
    """
    try:
        return list_all()
    except gexc.RetryError as exc:
        last = exc.cause if exc.cause is not None else exc
        text = getattr(last, "message", None) or str(last)
        raise TransientError(
            f"{call}: still throttled or unavailable after retrying for up to "
            f"{RETRY_DEADLINE_S:g} s (last answer: {text}). To fix: {fixes[TransientError]}.",
            provider=PROVIDER, operation=operation, code="retries_exhausted") from exc
    except CALL_ERRORS as exc:
        raise map_api_error(exc, operation=operation, call=call, fixes=fixes) from exc


@dataclass(frozen=True, slots=True)
class _Clients:
    project: str
    catalog: Any  # billing_v1.CloudCatalogClient
    machine_types: Any  # compute_v1.MachineTypesClient
    accelerator_types: Any  # compute_v1.AcceleratorTypesClient

    def close(self) -> None:
        """Close the HTTP sessions of the three clients."""
        for client in (self.catalog, self.machine_types, self.accelerator_types):
            client.transport.close()


def project_and_credentials(settings: GcpSettings, *, operation: str = OPERATION
                            ) -> tuple[str, Any]:
    """The project and the credentials the adapter resolves (ADC, or anonymous for a local
    fake). Raises InvalidRequestError when no project is configured, a ProviderError when
    the credentials are unusable."""
    adapter = GcpProvider(settings)
    try:
        return adapter.project(operation), adapter.credentials(operation)
    except ProviderError:
        raise
    except GreenplaceError as exc:  # no project configured
        raise InvalidRequestError(str(exc), provider=PROVIDER, operation=operation,
                                  code="settings") from exc


def _clients(settings: GcpSettings) -> _Clients:
    project, credentials = project_and_credentials(settings)

    def options(endpoint: str | None) -> dict[str, str] | None:
        return {"api_endpoint": endpoint} if endpoint else None

    billing = settings.billing_api_endpoint
    if settings.anonymous_credentials and not is_loopback(billing):
        raise InvalidRequestError(
            "gcp credentials 'anonymous' are for local fakes, but billing_api_endpoint is not "
            "a loopback address. To fix: set billing_api_endpoint to the fake's "
            "http://127.0.0.1:PORT, or leave credentials unset.",
            provider=PROVIDER, operation=OPERATION, code="settings")
    return _Clients(
        project=project,
        catalog=billing_v1.CloudCatalogClient(credentials=credentials, transport="rest",
                                              client_options=options(billing)),
        machine_types=compute_v1.MachineTypesClient(
            credentials=credentials, transport="rest",
            client_options=options(settings.api_endpoint)),
        accelerator_types=compute_v1.AcceleratorTypesClient(
            credentials=credentials, transport="rest",
            client_options=options(settings.api_endpoint)),
    )


# --------------------------------------------------------------------------- SKU price book


@dataclass(frozen=True, slots=True)
class _Rate:
    usd: float  # per hour (core, GPU) or per GiB-hour (RAM)
    sku_id: str


_Key = tuple[str, str, bool, str]  # (component "core"/"ram"/"gpu", SKU name, spot, region)


@dataclass(frozen=True, slots=True)
class _Missing:
    """Why a component has no price: ``refused`` when a SKU was there but unusable."""

    reason: str
    refused: bool


@dataclass(slots=True)
class _PriceBook:
    """Component prices per region, and why a component could not be priced."""

    rates: dict[_Key, _Rate]
    refused: dict[_Key, str]  # a SKU was there but not usable: the reason
    unknown: list[Skipped]  # GPU SKUs of an asked region whose description is not known

    def rate(self, key: _Key) -> _Rate | _Missing:
        """The rate, else why there is none."""
        if key in self.refused:
            return _Missing(self.refused[key], refused=True)
        found = self.rates.get(key)
        if found is not None:
            return found
        component, name, spot, region = key
        what = f"{'spot ' if spot else ''}{name} {component if component != 'gpu' else 'GPU'}"
        return _Missing(f"no Cloud Billing SKU prices the {what} in {region}", refused=False)


def _hourly_usd(sku: Any, unit: str) -> float | str:
    """The SKU's current USD price per ``unit``, or why it cannot be read with certainty."""
    infos = list(sku.pricing_info)
    if not infos:
        return f"SKU {sku.sku_id} ({sku.description!r}) has no pricingInfo"
    info = max(infos, key=lambda i: i.effective_time.timestamp() if i.effective_time else 0)
    expression = info.pricing_expression
    if expression.usage_unit != unit:
        return (f"SKU {sku.sku_id} ({sku.description!r}) is priced per "
                f"{expression.usage_unit!r}, not per {unit!r}")
    rates = list(expression.tiered_rates)
    if len(rates) != 1 or rates[0].start_usage_amount != 0:
        return (f"SKU {sku.sku_id} ({sku.description!r}) has {len(rates)} price tiers; "
                "only a single flat rate is composed")
    money = rates[0].unit_price
    if money.currency_code != "USD":
        return f"SKU {sku.sku_id} ({sku.description!r}) is priced in {money.currency_code!r}"
    usd = money.units + money.nanos / 1e9
    if usd < 0:
        return f"SKU {sku.sku_id} ({sku.description!r}) has a negative price"
    return usd


def _sku_key(sku: Any) -> tuple[str, str, bool] | str | None:
    """(component, name, spot) of a SKU the composer uses; a reason string for a GPU SKU it
    cannot read; None for every other Compute Engine SKU (disks, other families, ...)."""
    description = sku.description
    usage_type = sku.category.usage_type
    host = _HOST_SKU.match(description)
    gpu = _GPU_SKU.match(description)
    if host is not None:
        key = ("core" if host["part"] == "Core" else "ram", host["name"], bool(host["spot"]))
    elif gpu is not None and gpu["name"] in _GPU_SKU_NAMES:
        key = ("gpu", gpu["name"], bool(gpu["spot"]))
    elif sku.category.resource_group == "GPU" and usage_type in _USAGE_TYPES.values():
        return (f"GPU SKU description {description!r} is not one the price composer knows; "
                "no machine type is priced from it")
    else:
        return None
    if usage_type != _USAGE_TYPES[key[2]]:
        return (f"SKU description {description!r} says {'spot' if key[2] else 'on demand'} "
                f"but its usageType is {usage_type!r}")
    return key


def _price_book(skus: Iterable[Any], regions: tuple[str, ...]) -> _PriceBook:
    """Index the Compute Engine SKUs by component and region (only ``regions``)."""
    book = _PriceBook(rates={}, refused={}, unknown=[])
    asked = set(regions)
    for sku in skus:
        where = [r for r in sku.service_regions if r in asked]
        if not where:
            continue
        key = _sku_key(sku)
        if key is None:
            continue
        if isinstance(key, str):
            book.unknown.extend(Skipped(region=r, item=sku.sku_id, reason=key) for r in where)
            continue
        usd = _hourly_usd(sku, _UNITS[key[0]])
        for region in where:
            full: _Key = (*key, region)
            other = book.rates.get(full)
            if isinstance(usd, str):
                book.refused.setdefault(full, usd)
            elif other is None:
                book.rates[full] = _Rate(usd=usd, sku_id=sku.sku_id)
            elif abs(other.usd - usd) > 1e-9:  # two SKUs, two prices: neither is certain
                book.refused[full] = (f"SKUs {other.sku_id} and {sku.sku_id} both price "
                                      f"{sku.description!r} in {region}, differently "
                                      f"({other.usd:g} and {usd:g} USD)")
    return book


# --------------------------------------------------------------------------- availability


@dataclass(frozen=True, slots=True)
class _Shape:
    """One machine type (with its GPUs) that exists in a region."""

    region: str
    instance_type: str
    gpu_type: str  # Compute Engine acceleratorType
    accelerator: str  # canonical catalog name
    count: int
    vcpus: int
    memory_gib: float


def _region_of(scope: str) -> str:
    """``zones/us-central1-a`` -> ``us-central1``."""
    zone = scope.rsplit("/", 1)[-1]
    return zone.rsplit("-", 1)[0]


def _n1_candidates(catalog: Catalog) -> dict[str, set[tuple[str, int]]]:
    """N1 machine type -> (acceleratorType, count) pairs the catalog places (N1 + a GPU)."""
    out: dict[str, set[tuple[str, int]]] = {}
    for offer in catalog.offers:
        if offer.cloud != PROVIDER or not offer.instance_type.startswith("n1-"):
            continue
        gpu_type = GPU_ACCELERATOR_TYPES.get(normalize_name(offer.accelerator))
        if gpu_type is not None:
            out.setdefault(offer.instance_type, set()).add((gpu_type, offer.accelerator_count))
    return out


def _zones_unreachable(call: str, scope: str, scoped: Any, regions: set[str]) -> None:
    warning = scoped.warning
    if warning and warning.code == "UNREACHABLE" and _region_of(scope) in regions:
        raise TransientError(
            f"{call}: zone scope {scope} is unreachable, so what it offers is unknown. "
            f"To fix: {FIXES[TransientError]}.",
            provider=PROVIDER, operation=OPERATION, code="UNREACHABLE")


def _shapes(clients: _Clients, request: RefreshRequest,
            skipped: list[Skipped]) -> dict[tuple[str, str], _Shape]:
    """(region, instance type) -> shape, for every GPU machine type priced in ``regions``."""
    regions = set(request.regions)
    n1 = _n1_candidates(request.catalog)
    # Compute Engine's ``name eq "RE2"`` filter keeps the list to the GPU families; names are
    # [a-z0-9-] (catalog instance types / acceleratorTypes), nothing to escape.
    names = "|".join([f"{family}-.*" for family in BUNDLED_FAMILIES]
                     + [name for name in sorted(n1) if _PLAIN_NAME.fullmatch(name)])
    machine_call = "compute machineTypes.aggregatedList"
    machine_types = _listed(machine_call, lambda: list(
        clients.machine_types.aggregated_list(
            request=compute_v1.AggregatedListMachineTypesRequest(
                project=clients.project, filter=f'name eq "({names})"',
                max_results=LIST_PAGE_SIZE),
            retry=_retry(), timeout=HTTP_TIMEOUT_S)))
    gpu_call = "compute acceleratorTypes.aggregatedList"
    gpu_names = "|".join(sorted({t for pairs in n1.values() for t, _ in pairs}))
    accelerator_types = _listed(gpu_call, lambda: list(
        clients.accelerator_types.aggregated_list(
            request=compute_v1.AggregatedListAcceleratorTypesRequest(
                project=clients.project, filter=f'name eq "({gpu_names})"',
                max_results=LIST_PAGE_SIZE),
            retry=_retry(), timeout=HTTP_TIMEOUT_S))) if n1 else []

    max_cards: dict[tuple[str, str], int] = {}  # (zone, acceleratorType) -> most per VM
    for scope, scoped in accelerator_types:
        _zones_unreachable(gpu_call, scope, scoped, regions)
        for gpu in scoped.accelerator_types:
            max_cards[(scope.rsplit("/", 1)[-1], gpu.name)] = gpu.maximum_cards_per_instance

    shapes: dict[tuple[str, str], _Shape] = {}
    for scope, scoped in machine_types:
        _zones_unreachable(machine_call, scope, scoped, regions)
        region, zone = _region_of(scope), scope.rsplit("/", 1)[-1]
        if region not in regions:
            continue
        for machine in scoped.machine_types:
            if machine.deprecated and machine.deprecated.state in ("OBSOLETE", "DELETED"):
                continue
            family = machine.name.split("-", 1)[0]
            if family in BUNDLED_FAMILIES:
                pairs = {(a.guest_accelerator_type, a.guest_accelerator_count)
                         for a in machine.accelerators}
            else:
                pairs = {(t, n) for t, n in n1.get(machine.name, ())
                         if max_cards.get((zone, t), 0) >= n}
            for gpu_type, count in sorted(pairs):
                shape = _shape(request.catalog, region, machine, gpu_type, count, skipped)
                if shape is not None:
                    shapes.setdefault((region, shape.instance_type), shape)
    return shapes


def _shape(catalog: Catalog, region: str, machine: Any, gpu_type: str, count: int,
           skipped: list[Skipped]) -> _Shape | None:
    """The machine type as a shape to price, or None (a skip with its reason)."""
    name = machine.name
    mapped = GPU_TYPES.get(gpu_type)
    if mapped is None:
        skipped.append(Skipped(region=region, item=name, reason=(
            f"carries {count} x {gpu_type}, a GPU the price refresh has no rule for (neither "
            "its SKUs nor its catalog accelerator are mapped with certainty)")))
        return None
    accelerator = catalog.accelerator(mapped[1]).name
    expected = KNOWN_INSTANCES.get(name)
    if expected is not None and expected != (accelerator, count):
        skipped.append(Skipped(region=region, item=name, reason=(
            f"Compute Engine lists {count} x {gpu_type}, but the instance type is known to carry "
            f"{expected[1]} x {expected[0]}")))
        return None
    return _Shape(region=region, instance_type=name, gpu_type=gpu_type, accelerator=accelerator,
                  count=count, vcpus=machine.guest_cpus,
                  memory_gib=round(machine.memory_mb / 1024, 3))


# --------------------------------------------------------------------------- composition


def _compose(shape: _Shape, book: _PriceBook, *, spot: bool) -> float | _Missing:
    """vCPUs x core + GiB x RAM + GPUs x GPU over the family's SKUs; else why not."""
    series = shape.instance_type.rsplit("-", 1)[0]
    host = HOST_SKU_NAMES.get(series)
    if host is None:
        return _Missing(f"no price composition rule for the {series} series (its core and "
                        "RAM SKUs are not known to the composer)", refused=True)
    parts = (("core", host, shape.vcpus), ("ram", host, shape.memory_gib),
             ("gpu", GPU_TYPES[shape.gpu_type][0], shape.count))
    total_usd = 0.0
    for component, name, quantity in parts:
        rate = book.rate((component, name, spot, shape.region))
        if isinstance(rate, _Missing):
            return rate
        total_usd += quantity * rate.usd
    return round(total_usd, 6)


def _offers(shapes: Mapping[tuple[str, str], _Shape], book: _PriceBook, as_of: str,
            skipped: list[Skipped]) -> list[Offer]:
    offers = []
    for (region, instance_type), shape in sorted(shapes.items()):
        on_demand = _compose(shape, book, spot=False)
        if isinstance(on_demand, _Missing):
            skipped.append(Skipped(region=region, item=instance_type, reason=on_demand.reason))
            continue
        spot: float | None
        composed = _compose(shape, book, spot=True)
        if isinstance(composed, _Missing):
            # No spot SKU at all: Compute Engine sells no spot VM of it there. A refused one:
            # the spot price is unknown, which the caller must hear about.
            if composed.refused:
                skipped.append(Skipped(region=region, item=instance_type,
                                       reason=f"spot price not published: {composed.reason}"))
            spot = None
        else:
            spot = composed
        offers.append(Offer(
            cloud=PROVIDER, region=region, instance_type=instance_type,
            accelerator=shape.accelerator, accelerator_count=shape.count, vcpus=shape.vcpus,
            memory_gib=shape.memory_gib, price_usd_per_hour=on_demand,
            spot_price_usd_per_hour=spot, price_note="", source=SOURCE, as_of=as_of))
    return offers


def _not_offered(catalog: Catalog, regions: tuple[str, ...], priced: set[tuple[str, str]],
                 skipped: list[Skipped]) -> None:
    """Embedded offers of the asked regions that this refresh does not price, with why."""
    handled = {(s.region, s.item) for s in skipped}
    for offer in catalog.offers:
        key = (offer.region, offer.instance_type)
        if offer.cloud != PROVIDER or offer.region not in regions or key in priced \
                or key in handled:
            continue
        tpu = normalize_name(offer.accelerator).startswith("tpu")
        reason = _TPU_REASON if tpu else (
            "not offered there: Compute Engine lists this machine type (with "
            f"{offer.accelerator_count} x {offer.accelerator}) in no zone of the region")
        skipped.append(Skipped(region=offer.region, item=offer.instance_type, reason=reason,
                               not_offered=not tpu))


def fetch(request: RefreshRequest) -> CloudPrices:
    """Price every GPU machine type of ``request.regions`` from the Cloud Billing Catalog.

    Raises:
        TransientError: throttling or 5xx that outlasted the retries, a page failing midway,
            an unreachable zone of an asked region (the message names the call).
        AuthError: credentials missing or refused.
        InvalidRequestError: bad gcp settings, or no project configured.
    """
    settings = _settings(request.environ)
    clients = _clients(settings)
    fetched_at: datetime = request.now
    skipped: list[Skipped] = []
    try:
        shapes = _shapes(clients, request, skipped)
        skus = _listed("cloudbilling services.skus.list", lambda: list(
            clients.catalog.list_skus(
                request=billing_v1.ListSkusRequest(parent=COMPUTE_SERVICE, currency_code="USD",
                                                   page_size=SKU_PAGE_SIZE),
                retry=_retry(), timeout=HTTP_TIMEOUT_S)))
    finally:
        clients.close()
    book = _price_book(skus, request.regions)
    skipped.extend(book.unknown)
    offers = _offers(shapes, book, request.now.date().isoformat(), skipped)
    _not_offered(request.catalog, request.regions,
                 {(o.region, o.instance_type) for o in offers}, skipped)
    return CloudPrices(cloud=PROVIDER, source=SOURCE, fetched_at=fetched_at,
                       regions=request.regions, offers=tuple(offers), skipped=tuple(skipped))


__all__ = ["COMPUTE_SERVICE", "SOURCE", "credentials_found", "fetch"]
