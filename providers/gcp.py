"""GCP adapter: Compute Engine VM instances through google-cloud-compute (REST transport).

This module is the only place that imports ``google.cloud.compute_v1`` and
``google.auth``. It owns the translation from a placed job to an
``instances.insert`` request body, the asynchronous launch with zone failover
inside a region, the idempotent submit (deterministic instance name + a
``requestId`` per zone), the exit code read back from serial port 1, the
region-wide list of managed instances, deletion, and the mapping of Compute
Engine errors onto the ProviderError tree.

What it sends (the ``payload`` of ``prepare()``)::

    {"project": "...", "region": "us-central1",
     "zones": ["us-central1-a", ...],      # [] = every UP zone of the region, listed at submit
     "zonePlaceholder": "{zone}",
     "requestIds": {"us-central1-a": "<uuid5>", ...},
     "instanceResource": {<the Compute Engine Instance JSON, with {zone} in zonal URLs>}}

The life of a launch (see ``providers/base.py``): ``submit()`` inserts into the
first zone and waits on the zone operation for ``operation_timeout_s`` at most
(never more than ``LAUNCH_WAIT_S``). An operation still RUNNING then gives a
PENDING handle whose ``extra`` carries it; ``status()`` follows it with one
``zoneOperations.get`` per call, moves a stockout on to the next zone itself
(returning the new handle) and reports ``LAUNCH_FAILED`` with the classified
error when no zone is left. A failed insert that left a VM record behind is
deleted before the adapter moves on.

``InstanceHandle.extra`` keys:

- ``project``, ``spot`` ("true"/"false"), ``instance_id`` (GCE's numeric id):
  on every handle, rebuilt by ``list_managed()``;
- while a launch is in flight only: ``operation`` (the insert's zone operation
  name), ``zones_left`` (comma-separated zones still to try), ``tried``
  (``zone:code`` of the zones that refused), ``key`` (the idempotency key, for
  the per-zone requestId) and ``launch`` (the Instance JSON with ``{zone}``, to
  insert into the next zone). ``status()`` hands back a handle without them
  once the instance exists.

Settings come from ``create(config)``, else ``GREENPLACE_GCP_<KEY>``, else the JSON
object ``GREENPLACE_GCP_SETTINGS``; credentials come from Application Default
Credentials (``google.auth.default()``) and are never read, printed or stored here.

- ``project``: the project id (default: the one ADC names).
- ``zones``: comma-separated zones to use (default: every UP zone of the region).
- ``image_project`` / ``image_family``: the boot image (a Deep Learning VM image).
- ``boot_disk_gb``: boot disk size (200).
- ``boot_disk_type``: unset = per machine family: ``hyperdisk-balanced`` where the
  family accepts only Hyperdisk (A3 Ultra, A4, A4X, G4), else ``pd-balanced``. A
  Persistent Disk type named for such a family is refused in ``prepare()``.
- ``network`` / ``subnetwork`` / ``external_ip`` (true/false).
- ``service_account``: the e-mail the VM runs as, with the cloud-platform scope;
  unset = ``default`` (the project's Compute Engine default service account),
  ``none`` = no service account at all.
- ``spot_termination_action``: DELETE (default) or STOP.
- ``operation_timeout_s``: how long one call waits on a zone operation; default and
  maximum ``LAUNCH_WAIT_S`` (5 s). It used to allow minutes; larger values are refused.
- ``api_endpoint`` and ``credentials`` ("default", or "anonymous" with a loopback
  ``api_endpoint`` only): for the local Compute Engine fake.
- ``billing_api_endpoint``: the Cloud Billing Catalog API's endpoint, read only by the price
  refresh (``scheduler/catalog/refresh/gcp.py``); unset = Google's. With anonymous
  credentials it must be a loopback address too.

Labels: GCE label keys and values allow only ``[a-z0-9_-]`` (keys start with a
letter, 63 characters at most), so ``greenplace:job-id`` becomes the label
``greenplace-job-id`` and the value is folded to lower case with other
characters replaced by ``_``. The exact, unfolded values also go into instance
metadata (``greenplace-job-id``, ``greenplace-attempt``, ``greenplace-policy``),
which is where ``list_managed()`` reads them back.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import google.auth
import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import compute_v1

from greenplace.providers.base import (
    LAUNCH_WAIT_S,
    Feature,
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    LaunchRequest,
    ManagedInstance,
    Placement,
    exit_code_in,
    idempotency_key,
    job_tags,
    managed_tags_of,
    request_uuid,
    short_token,
    startup_script,
)
from greenplace.providers.errors import ErrorCodeTable, provider_error
from greenplace.providers.settings import is_loopback, merged_settings, number_setting
from greenplace.scheduler.catalog.model import normalize_name
from greenplace.scheduler.exceptions import (
    AccountLimitError,
    AuthError,
    CapacityError,
    ConfigError,
    InvalidRequestError,
    ProviderError,
    QuotaError,
    TransientError,
    UnknownNameError,
)

PROVIDER = "gcp"
ZONE_PLACEHOLDER = "{zone}"
COMPUTE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
HTTP_TIMEOUT_S = 30.0
MANAGED_LABEL = "greenplace-managed"
SERIAL_PORT = 1
MAX_SERIAL_PAGES = 32  # getSerialPortOutput keeps 1 MB; pages beyond this are not read
READ_LAG_GRACE_S = 60.0  # how long after its insert a 404 may mean "not visible yet"
# Transport failures and SDK errors every call wraps.
CALL_ERRORS = (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                requests.exceptions.RequestException)

# Operation / error codes that mean "this zone has no capacity for this shape now"
# (https://cloud.google.com/compute/docs/troubleshooting/troubleshooting-resource-availability).
CAPACITY_CODES = frozenset({
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
})
# API rate limits (https://cloud.google.com/compute/api-quota): 403 rateLimitExceeded /
# userRateLimitExceeded, or 429 RESOURCE_EXHAUSTED. Always transient, whatever else the
# message says ("Quota exceeded for quota metric 'Queries'" is a rate, not a quota).
THROTTLE_CODES = frozenset({"rateLimitExceeded", "userRateLimitExceeded",
                            "RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"})
# Operation error codes (UPPER_CASE) and HTTP error reasons (camelCase) by class; a code
# not listed falls back to the HTTP status (5xx / 429 transient, 401 / 403 auth), then
# InvalidRequestError.
ERRORS = ErrorCodeTable(
    capacity=CAPACITY_CODES,
    quota=frozenset({"QUOTA_EXCEEDED", "quotaExceeded"}),
    transient=THROTTLE_CODES | {"backendError", "internalError", "RESOURCE_NOT_READY",
                                "resourceNotReady"},
    auth=frozenset({"forbidden", "insufficientPermissions", "accessNotConfigured",
                    "authError", "unauthorized", "PERMISSIONS_ERROR"}),
)
# A quota no other region lifts: GPUS_ALL_REGIONS (and the other *_ALL_REGIONS quotas)
# answers "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally."
# (https://cloud.google.com/compute/resource-usage#gpu_quota).
_GLOBAL_QUOTA = re.compile(r"_ALL_REGIONS|ALL-REGIONS|all_regions|\bglobally\b")
GLOBAL_QUOTA_CODE = "quota_global"
_STOCKOUT_TEXT = re.compile(
    r"STOCKOUT|does not have enough resources available|is currently unavailable in the",
)
_ZONE_LACKS_OFFER = re.compile(r"(machineTypes|acceleratorTypes)\S*.*(does not exist|was not found)"
                               r"|does not exist in zone")

# Canonical catalog accelerator (normalize_name) -> Compute Engine acceleratorType, for the
# machine families that take GPUs as guestAccelerators (N1).
GPU_ACCELERATOR_TYPES: dict[str, str] = {
    "t4": "nvidia-tesla-t4",
    "v100": "nvidia-tesla-v100",
    "p100": "nvidia-tesla-p100",
    "p4": "nvidia-tesla-p4",
    "k80": "nvidia-tesla-k80",
}
ATTACHABLE_GPU_FAMILIES = frozenset({"n1"})
# Accelerator-optimized families: the machine type itself carries its GPUs.
BUNDLED_GPU_FAMILIES = frozenset({"a2", "a3", "a4", "a4x", "g2", "g4"})
# Machine-type prefixes whose VMs support only the gVNIC network interface: A3 (High,
# Mega, Edge, Ultra), A4, A4X and G4 are Titanium machines with gVNIC as their only
# virtual NIC (https://cloud.google.com/compute/docs/accelerator-optimized-machines,
# https://cloud.google.com/compute/docs/networking/using-gvnic). An insert without
# nicType GVNIC is refused.
GVNIC_MACHINE_PREFIXES = ("a3-", "a4-", "a4x-", "g4-")
# Machine-type prefixes whose boot disk must be Hyperdisk: A3 Ultra, A4, A4X and G4 list no
# Persistent Disk type among their supported disks
# (https://cloud.google.com/compute/docs/accelerator-optimized-machines#supported_disk_types).
HYPERDISK_MACHINE_PREFIXES = ("a3-ultragpu-", "a4-", "a4x-", "g4-")
HYPERDISK_BOOT_TYPE = "hyperdisk-balanced"
PD_BOOT_TYPE = "pd-balanced"

# GCE instance status -> provider-neutral state, as a list shows it (no exit code read).
# A powered-off VM (TERMINATED / STOPPED) is EXITED: the boot script powers it off when
# the command ends; status() reads the code and tells preemption / host errors apart.
_STATUS_MAP: dict[str, InstanceState] = {
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "PENDING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "REPAIRING": InstanceState.RUNNING,
    "STOPPING": InstanceState.RUNNING,
    "SUSPENDING": InstanceState.RUNNING,
    "SUSPENDED": InstanceState.TERMINATED,
    "STOPPED": InstanceState.EXITED,
    "TERMINATED": InstanceState.EXITED,
}
_POWERED_OFF = frozenset({"TERMINATED", "STOPPED"})
# System events GCE logs as zone operations on the instance (operationType).
_PREEMPTED = "compute.instances.preempted"
_HOST_FAILURES = frozenset({"compute.instances.hostError",
                            "compute.instances.terminateOnHostMaintenance"})
_API_STOPS = frozenset({"stop", "suspend"})

_HTTP_PREFIX = re.compile(r"^(?:GET|POST|PUT|PATCH|DELETE) \S+: ")
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class GcpSettings:
    """The adapter's own settings (never secrets: credentials come from google.auth).

    Design choice: configuration arrives as a flat ``str -> str`` mapping (from the
    environment or a settings file); this class parses it once, rejects unknown
    keys with a "Did you mean" hint, and keeps typed values.
    """

    project: str | None = None
    zones: tuple[str, ...] = ()
    image_project: str = "deeplearning-platform-release"
    image_family: str = "common-cu129-ubuntu-2404-nvidia-580"
    boot_disk_gb: int = 200
    boot_disk_type: str | None = None  # None: per machine family (boot_disk_type_for)
    network: str = "global/networks/default"
    subnetwork: str | None = None
    external_ip: bool = True
    service_account: str | None = "default"  # None: no service account
    spot_termination_action: str = "DELETE"
    operation_timeout_s: float = LAUNCH_WAIT_S
    api_endpoint: str | None = None
    billing_api_endpoint: str | None = None  # Cloud Billing Catalog (the price refresh only)
    anonymous_credentials: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> GcpSettings:
        """Parse the flat config mapping (keys: see the module docstring).

        Raises:
            UnknownNameError: a key the adapter does not know ("Did you mean").
            ConfigError: an unusable value.
        """
        for key in config:
            if key not in _CONFIG_KEYS:
                raise UnknownNameError("gcp adapter setting", key, _CONFIG_KEYS,
                                       hint=f"To fix: use one of {sorted(_CONFIG_KEYS)}.")
        get = config.get
        zones = tuple(z.strip() for z in get("zones", "").split(",") if z.strip())
        termination = get("spot_termination_action", "DELETE").strip().upper()
        if termination not in ("DELETE", "STOP"):
            raise ConfigError(
                f"gcp spot_termination_action {termination!r} is not DELETE or STOP. "
                "To fix: set it to DELETE (default) or STOP."
            )
        credentials = get("credentials", "default").strip().lower()
        endpoint = get("api_endpoint") or None
        if credentials not in ("default", "anonymous"):
            raise ConfigError(
                f"gcp credentials {credentials!r} is not 'default' or 'anonymous'. "
                "To fix: leave it unset to use Application Default Credentials."
            )
        billing_endpoint = get("billing_api_endpoint") or None
        if credentials == "anonymous" and not (
                is_loopback(endpoint) and (billing_endpoint is None
                                           or is_loopback(billing_endpoint))):
            raise ConfigError(
                "gcp credentials 'anonymous' is only for a local Compute Engine fake. "
                "To fix: also set api_endpoint (and billing_api_endpoint, if set) to an "
                "http://127.0.0.1:PORT address, or leave credentials unset."
            )
        wait_s = number_setting("gcp", config, "operation_timeout_s", LAUNCH_WAIT_S, minimum=0)
        if wait_s > LAUNCH_WAIT_S:
            raise ConfigError(
                f"gcp operation_timeout_s {wait_s:g} is longer than the {LAUNCH_WAIT_S:g} s a "
                "queue task may wait on a cloud operation; slower operations are followed "
                "by status() instead. To fix: unset it or set at most "
                f"{LAUNCH_WAIT_S:g}."
            )
        account = (get("service_account") or "default").strip()
        d = cls()  # the defaults (slots dataclasses keep no class-level values)
        return cls(
            project=get("project") or None,
            zones=zones,
            image_project=get("image_project") or d.image_project,
            image_family=get("image_family") or d.image_family,
            boot_disk_gb=_int_setting(config, "boot_disk_gb", d.boot_disk_gb),
            boot_disk_type=get("boot_disk_type") or None,
            network=get("network") or d.network,
            subnetwork=get("subnetwork") or None,
            external_ip=_bool_setting(config, "external_ip", True),
            service_account=None if account.lower() == "none" else account,
            spot_termination_action=termination,
            operation_timeout_s=wait_s,
            api_endpoint=endpoint,
            billing_api_endpoint=billing_endpoint,
            anonymous_credentials=credentials == "anonymous",
        )


_CONFIG_KEYS = (
    "project", "zones", "image_project", "image_family", "boot_disk_gb", "boot_disk_type",
    "network", "subnetwork", "external_ip", "service_account", "spot_termination_action",
    "operation_timeout_s", "api_endpoint", "billing_api_endpoint", "credentials",
)


def _int_setting(config: Mapping[str, str], key: str, default: int) -> int:
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"gcp {key} {raw!r} is not a positive integer. "
                          f"To fix: set it to a whole number such as {default}.")
    return value


def _bool_setting(config: Mapping[str, str], key: str, default: bool) -> bool:
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    folded = raw.strip().lower()
    if folded in ("1", "true", "yes", "on"):
        return True
    if folded in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"gcp {key} {raw!r} is not true or false. To fix: set true or false.")


# --------------------------------------------------------------------------- names and labels


def instance_name(key: str) -> str:
    """The deterministic instance name for an idempotency key.

    GCE names match ``[a-z]([-a-z0-9]{0,61}[a-z0-9])?``. The key is folded into
    that alphabet and suffixed with a hash of the exact key, so two keys that
    fold alike (``Job_1`` / ``job-1``) still get different names.
    """
    slug = _NAME_BAD.sub("-", key.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"gp-{slug}".rstrip("-")
    return f"{slug[:54].rstrip('-')}-{short_token(key, 8)}"


def label_key(tag: str) -> str:
    """A greenplace tag name as a GCE label key (``greenplace:job-id`` -> ``greenplace-job-id``)."""
    folded = _LABEL_BAD.sub("-", tag.lower().replace(":", "-"))
    if not folded or not folded[0].isalpha():
        folded = f"gp-{folded}"
    return folded[:63]


def label_value(value: str) -> str:
    """A tag value as a GCE label value: lower case, ``[a-z0-9_-]``, 63 characters at most."""
    return _LABEL_BAD.sub("_", value.lower())[:63]


def gce_labels(job: JobLaunch) -> dict[str, str]:
    """The labels every instance this adapter creates carries."""
    return {label_key(k): label_value(v) for k, v in job_tags(job).items()}


# --------------------------------------------------------------------------- request building


def _accelerators(placement: Placement) -> list[dict[str, Any]]:
    """guestAccelerators for the machine type ([] when the machine type carries its GPUs).

    Raises:
        InvalidRequestError: TPUs, or a GPU this machine family cannot take.
    """
    family = placement.instance_type.split("-", 1)[0].lower()
    accel = normalize_name(placement.accelerator or "")
    count = placement.accelerator_count
    if not accel or count <= 0:
        return []
    if accel.startswith("tpu"):
        raise InvalidRequestError(
            f"{placement.accelerator} is a Cloud TPU; TPU VMs are created through the Cloud TPU "
            "API, which this adapter does not drive (it launches Compute Engine instances). "
            "To fix: exclude TPU accelerators from this job's policy for gcp, or ask for a GPU.",
            provider=PROVIDER, operation="prepare", code="TPU_NOT_SUPPORTED",
        )
    if family in BUNDLED_GPU_FAMILIES:
        return []
    if family in ATTACHABLE_GPU_FAMILIES:
        accel_type = GPU_ACCELERATOR_TYPES.get(accel)
        if accel_type is None:
            raise InvalidRequestError(
                f"{placement.accelerator} cannot be attached to an {family.upper()} machine "
                f"({placement.instance_type}). To fix: use one of "
                f"{sorted(GPU_ACCELERATOR_TYPES)} on N1, or an accelerator-optimized "
                "machine type (A2, A3, G2) that carries its own GPUs.",
                provider=PROVIDER, operation="prepare", code="UNSUPPORTED_ACCELERATOR",
            )
        return [{
            "acceleratorType": f"zones/{ZONE_PLACEHOLDER}/acceleratorTypes/{accel_type}",
            "acceleratorCount": count,
        }]
    raise InvalidRequestError(
        f"machine type {placement.instance_type} takes no GPUs, yet the placement asks for "
        f"{count}x {placement.accelerator}. To fix: use an N1 machine with attached GPUs or "
        "an accelerator-optimized machine type (A2, A3, G2).",
        provider=PROVIDER, operation="prepare", code="UNSUPPORTED_ACCELERATOR",
    )


def boot_disk_type_for(settings: GcpSettings, machine_type: str) -> str:
    """The boot disk type for a machine type: the setting, else the family's default.

    Raises:
        InvalidRequestError: the setting names a Persistent Disk type for a family
            that boots only from Hyperdisk.
    """
    hyperdisk_only = machine_type.lower().startswith(HYPERDISK_MACHINE_PREFIXES)
    chosen = settings.boot_disk_type
    if chosen is None:
        return HYPERDISK_BOOT_TYPE if hyperdisk_only else PD_BOOT_TYPE
    if hyperdisk_only and not chosen.startswith("hyperdisk-"):
        raise InvalidRequestError(
            f"machine type {machine_type} boots only from Hyperdisk, but the gcp "
            f"boot_disk_type setting is {chosen!r}. To fix: unset boot_disk_type (greenplace "
            f"then picks {HYPERDISK_BOOT_TYPE} for A3 Ultra, A4, A4X and G4 and "
            f"{PD_BOOT_TYPE} elsewhere) or set a hyperdisk-* type.",
            provider=PROVIDER, operation="prepare", code="UNSUPPORTED_DISK_TYPE",
        )
    return chosen


def build_instance_body(settings: GcpSettings, job: JobLaunch, placement: Placement,
                        *, name: str) -> dict[str, Any]:
    """The Compute Engine Instance JSON, with ``{zone}`` in its zonal URLs.

    Design choice: every greenplace VM is a batch job, so ``scheduling`` always has
    ``automaticRestart: false`` and ``onHostMaintenance: TERMINATE``. A VM that GCE
    restarted after a host event would run the boot script, hence the job, a second
    time; GPU and Spot VMs cannot live-migrate anyway
    (https://cloud.google.com/compute/docs/instances/setting-vm-host-options). A host
    failure leaves the VM TERMINATED with a ``compute.instances.hostError`` event,
    which status() reports as FAILED so the queue retries the job.

    The VM runs as ``settings.service_account`` (default: ``default``, the project's
    Compute Engine default service account) with the cloud-platform scope, so the job
    can reach Cloud Storage with the account's IAM roles; an API insert without
    ``serviceAccounts`` would give the VM no identity at all.
    """
    accelerators = _accelerators(placement)
    machine_type = placement.instance_type
    scheduling: dict[str, Any] = {"onHostMaintenance": "TERMINATE", "automaticRestart": False}
    if placement.spot:
        scheduling.update({"provisioningModel": "SPOT",
                           "instanceTerminationAction": settings.spot_termination_action})
    else:
        scheduling["provisioningModel"] = "STANDARD"
    interface: dict[str, Any] = {"network": settings.network}
    if settings.subnetwork:
        interface["subnetwork"] = settings.subnetwork
    if settings.external_ip:
        interface["accessConfigs"] = [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]
    if machine_type.lower().startswith(GVNIC_MACHINE_PREFIXES):
        interface["nicType"] = "GVNIC"
    disk_type = boot_disk_type_for(settings, machine_type)
    body: dict[str, Any] = {
        "name": name,
        "machineType": f"zones/{ZONE_PLACEHOLDER}/machineTypes/{machine_type}",
        "labels": gce_labels(job),
        "metadata": {"items": [
            {"key": "startup-script", "value": startup_script(job)},
            {"key": "greenplace-job-id", "value": job.job_id},
            {"key": "greenplace-attempt", "value": str(job.attempt)},
            {"key": "greenplace-policy", "value": job.policy},
        ]},
        "disks": [{
            "boot": True,
            "autoDelete": True,
            "initializeParams": {
                "sourceImage": (f"projects/{settings.image_project}/global/images/family/"
                                f"{settings.image_family}"),
                "diskSizeGb": str(settings.boot_disk_gb),
                "diskType": f"zones/{ZONE_PLACEHOLDER}/diskTypes/{disk_type}",
            },
        }],
        "networkInterfaces": [interface],
        "scheduling": scheduling,
    }
    if accelerators:
        body["guestAccelerators"] = accelerators
    if settings.service_account:
        body["serviceAccounts"] = [{"email": settings.service_account,
                                    "scopes": list(COMPUTE_SCOPES)}]
    return body


def _for_zone(value: Any, zone: str) -> Any:
    """``value`` with every ``{zone}`` placeholder filled in."""
    if isinstance(value, str):
        return value.replace(ZONE_PLACEHOLDER, zone)
    if isinstance(value, list):
        return [_for_zone(v, zone) for v in value]
    if isinstance(value, dict):
        return {k: _for_zone(v, zone) for k, v in value.items()}
    return value


def zone_request_id(key: str, zone: str) -> str:
    """The ``requestId`` of the insert of ``key`` into ``zone``.

    Design choice: a UUID5 of the key *and the zone*, not of the key alone. GCE
    answers a repeated requestId with the original operation; if the id did not
    depend on the zone, the insert into the next zone after a stockout could be
    answered with the first zone's failed operation and never be tried.
    Redelivery of the same dispatch still reuses each zone's id.
    """
    return request_uuid(f"{key}/{zone}")


# --------------------------------------------------------------------------- error mapping


FIXES: dict[type[ProviderError], str] = {
    CapacityError: "nothing in the job; greenplace fails over to the next candidate region, "
                   "or retry later",
    QuotaError: "request a quota increase for this machine family / GPU in this region "
                "(IAM & Admin > Quotas), or let the job fail over",
    AccountLimitError: "request a higher global quota (IAM & Admin > Quotas, e.g. "
                       "GPUS_ALL_REGIONS for GPU jobs); no other region can help until then, "
                       "so the job fails now instead of failing over",
    TransientError: "nothing; the call is retried with backoff",
    AuthError: "run `gcloud auth application-default login` or set "
               "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, grant the "
               "principal roles/compute.instanceAdmin.v1 (plus roles/iam.serviceAccountUser if "
               "a service account is attached) on the project, and enable the Compute Engine API",
    InvalidRequestError: "check the gcp settings (project, zones, image, network) and the "
                         "placement's machine type",
}


def _error(cls: type[ProviderError], message: str, *, operation: str,
           code: str | None,
           fixes: Mapping[type[ProviderError], str] | None = None) -> ProviderError:
    return provider_error(cls, message, provider=PROVIDER, operation=operation, code=code,
                          fix=(fixes or {}).get(cls) or FIXES[cls])


def _classify(codes: list[str], *, message: str, http_status: int | None,
              quota_names: Iterable[str] = ()) -> tuple[type[ProviderError], str | None]:
    """The error class and the code that decided it.

    In order: throttling (a rate limit is transient whatever else the error says),
    capacity, then the first code that classifies, then the HTTP status. GCE puts
    stockouts in an operation's ``errors[].code``, in an HTTP error's message text
    (``ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: The zone ...``) or only in words
    (``state:STOCKOUT``, "does not have enough resources"); all three count as
    capacity. A quota error about a global quota (``quota_names``: the quotaInfo
    metric / limit names, else the message) is an AccountLimitError with code
    ``quota_global``: no other region lifts it.
    """
    if http_status == 429 or any(code in THROTTLE_CODES for code in codes):
        throttle = next((code for code in codes if code in THROTTLE_CODES), "429")
        return TransientError, throttle
    classified = [(ERRORS.classify(code), code) for code in codes]
    fallback = codes[0] if codes else (str(http_status) if http_status else None)
    capacity = next((code for cls, code in classified if cls is CapacityError), None)
    if capacity is not None:
        return CapacityError, capacity
    if _STOCKOUT_TEXT.search(message):  # before 5xx: a stockout can come as a 503
        return CapacityError, fallback
    for cls, code in classified:
        if cls is QuotaError and _GLOBAL_QUOTA.search(" ".join([*quota_names, message])):
            return AccountLimitError, GLOBAL_QUOTA_CODE
        if cls is not InvalidRequestError:
            return cls, code
    return ERRORS.classify(None, http_status=http_status), fallback


def _codes_in(message: str) -> list[str]:
    """Capacity / quota code names that GCE embeds in a message text."""
    return [c for c in (*sorted(CAPACITY_CODES), "QUOTA_EXCEEDED") if c in message]


def map_api_error(exc: Exception, *, operation: str, call: str,
                  fixes: Mapping[type[ProviderError], str] | None = None) -> ProviderError:
    """Map an HTTP-level Compute Engine error (or a transport failure) to a ProviderError.

    ``operation`` is the Provider method (submit, status, ...); ``call`` the API call
    that failed, which opens the message. ``fixes`` replaces the adapter's ``To fix``
    advice per class for a caller with other needs (the price refresh's permissions).
    """
    if isinstance(exc, gexc.GoogleAPICallError):
        reasons = [str(e.get("reason")) for e in (exc.errors or [])
                   if isinstance(e, dict) and e.get("reason")]
        # api_core prefixes "POST https://...: "; the call name says it shorter.
        message = _HTTP_PREFIX.sub("", str(exc.message), count=1)
        status = int(exc.code) if isinstance(exc.code, int) else None
        cls, code = _classify(_codes_in(message) + reasons, message=message,
                              http_status=status)
        return _error(cls, f"{call}: {message}", operation=operation, code=code,
                      fixes=fixes)
    if isinstance(exc, auth_exc.GoogleAuthError):
        # The exception names the failure, never the credential itself.
        return _error(AuthError, f"{call}: Google credentials are unusable "
                      f"({type(exc).__name__}: {exc})", operation=operation,
                      code=type(exc).__name__, fixes=fixes)
    if isinstance(exc, requests.exceptions.RequestException):
        return _error(TransientError, f"{call}: the Compute Engine API could not be reached "
                      f"({type(exc).__name__})", operation=operation, code=type(exc).__name__,
                      fixes=fixes)
    return _error(InvalidRequestError, f"{call}: {type(exc).__name__}: {exc}",
                  operation=operation, code=type(exc).__name__, fixes=fixes)


def map_operation_error(op: compute_v1.Operation, *, operation: str,
                        call: str) -> ProviderError:
    """Map a DONE zone operation that carries an ``error`` block."""
    errors = list(op.error.errors)
    message = "; ".join(f"{e.code}: {e.message}" for e in errors) or op.http_error_message
    quota_names = [name for e in errors for d in e.error_details
                   for name in (d.quota_info.metric_name, d.quota_info.limit_name,
                                *d.quota_info.dimensions.keys()) if name]
    cls, code = _classify([e.code for e in errors if e.code], message=message,
                          http_status=op.http_error_status_code or None,
                          quota_names=quota_names)
    return _error(cls, f"{call}: {message}", operation=operation, code=code)


def _zone_lacks_offer(err: ProviderError) -> bool:
    """A 400/404 saying this zone does not offer the machine or accelerator type."""
    return isinstance(err, InvalidRequestError) and bool(_ZONE_LACKS_OFFER.search(str(err)))


def _zone_refused(err: ProviderError) -> bool:
    """Whether the next zone of the region may succeed where this one refused."""
    return isinstance(err, CapacityError) or _zone_lacks_offer(err)


# --------------------------------------------------------------------------- the adapter


class GcpProvider:
    """Launches placed jobs as Compute Engine VM instances."""

    name = PROVIDER
    features = frozenset({Feature.SPOT, Feature.CANCEL, Feature.TAGS, Feature.STARTUP_SCRIPT,
                          Feature.IDEMPOTENT_SUBMIT})

    def __init__(self, settings: GcpSettings, *, credentials: Credentials | None = None) -> None:
        """Build the adapter; no network until the first call that needs it.

        Args:
            settings: parsed configuration.
            credentials: explicit credentials (tests); default is google.auth.default().
        """
        self.settings = settings
        self._credentials = credentials
        self._project: str | None = settings.project
        self._clients: dict[str, Any] = {}
        self._zones_by_region: dict[str, list[str]] = {}

    # -- plumbing

    def _resolve_credentials(self, operation: str) -> Credentials:
        if self._credentials is None:
            if self.settings.anonymous_credentials:
                self._credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
            else:
                try:
                    creds, project = google.auth.default(scopes=list(COMPUTE_SCOPES))
                except auth_exc.GoogleAuthError as exc:
                    raise map_api_error(exc, operation=operation,
                                        call="google.auth.default") from exc
                self._credentials = creds
                self._project = self._project or project
        return self._credentials

    def credentials(self, operation: str) -> Credentials:
        """The credentials this adapter's clients use (ADC, or anonymous for a local fake)."""
        return self._resolve_credentials(operation)

    def project(self, operation: str = "check_credentials") -> str:
        """The project id: from settings, else from Application Default Credentials."""
        self._resolve_credentials(operation)
        if not self._project:
            raise ConfigError(
                "No GCP project is configured and the default credentials name none. "
                "To fix: set the gcp 'project' setting or GOOGLE_CLOUD_PROJECT."
            )
        return self._project

    def _client(self, kind: str, operation: str) -> Any:
        if kind not in self._clients:
            factory = {
                "instances": compute_v1.InstancesClient,
                "zone_operations": compute_v1.ZoneOperationsClient,
                "zones": compute_v1.ZonesClient,
            }[kind]
            options = ({"api_endpoint": self.settings.api_endpoint}
                       if self.settings.api_endpoint else None)
            self._clients[kind] = factory(credentials=self._resolve_credentials(operation),
                                          transport="rest", client_options=options)
        return self._clients[kind]

    def close(self) -> None:
        """Close the HTTP sessions of every client this adapter opened."""
        for client in self._clients.values():
            client.transport.close()
        self._clients.clear()

    # -- Provider protocol

    def check_credentials(self) -> str:
        """Resolve credentials and list one zone of the project (compute.zones.list).

        Returns the identity (service-account e-mail or "user credentials") and the
        project; never a token or key.
        """
        project = self.project()
        try:
            zones = self._client("zones", "check_credentials").list(
                request=compute_v1.ListZonesRequest(project=project, max_results=1),
                retry=None, timeout=HTTP_TIMEOUT_S)
            next(iter(zones), None)
        except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                requests.exceptions.RequestException) as exc:
            raise map_api_error(exc, operation="check_credentials", call="zones.list") from exc
        creds = self._credentials
        who = getattr(creds, "service_account_email", None)
        if isinstance(creds, AnonymousCredentials):
            who = "anonymous (local fake endpoint)"
        return f"project {project} as {who or 'user credentials'}"

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        """The exact insert request; pure (no network, no credentials needed)."""
        if placement.cloud != PROVIDER:
            raise InvalidRequestError(
                f"the gcp adapter was handed a {placement.cloud} placement. "
                "To fix: dispatch through the provider named by the placement's cloud.",
                provider=PROVIDER, operation="prepare", code="WRONG_CLOUD",
            )
        key = idempotency_key(job.job_id, job.attempt)
        body = build_instance_body(self.settings, job, placement, name=instance_name(key))
        zones = [z for z in self.settings.zones if z.startswith(f"{placement.region}-")]
        return LaunchRequest(
            provider=PROVIDER, cloud=PROVIDER, region=placement.region,
            instance_type=placement.instance_type, spot=placement.spot,
            tags=job_tags(job), startup_script=startup_script(job),
            payload={
                "project": self.settings.project or "",
                "region": placement.region,
                "zones": zones,
                "zonePlaceholder": ZONE_PLACEHOLDER,
                "requestIds": {z: zone_request_id(key, z) for z in zones},
                "instanceResource": body,
            },
        )

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Find the instance of this key, or start inserting it in the region's first zone.

        Waits on each zone operation until ``operation_timeout_s`` (at most
        ``LAUNCH_WAIT_S``) after the call began; a stockout in one zone moves on to
        the next at once. An operation still RUNNING at the deadline gives a PENDING
        handle that ``status()`` follows (see the module docstring for its extra).

        Design choice: the name is derived from the key passed here (the same key
        prepare() used in the normal flow), so "same key, one instance" holds even if
        a caller re-prepared. Before inserting, every candidate zone is asked for an
        instance of that name; each insert carries a per-zone requestId, so a
        redelivered dispatch whose earlier insert is still in flight gets the same
        operation back instead of a second VM.

        Raises:
            CapacityError: every zone of the region is out of capacity.
            AccountLimitError: a global quota (GPUS_ALL_REGIONS) is exhausted.
            QuotaError, AuthError, TransientError, InvalidRequestError: as the cloud says.
        """
        if request.provider != PROVIDER:
            raise InvalidRequestError(
                f"the gcp adapter was handed a {request.provider} request. "
                "To fix: submit through the provider that prepared it.",
                provider=PROVIDER, operation="submit", code="WRONG_PROVIDER",
            )
        deadline = time.monotonic() + self.settings.operation_timeout_s
        payload = request.payload
        body = copy.deepcopy(payload["instanceResource"])
        name = instance_name(idempotency_key)
        body["name"] = name
        project = self.project("submit")
        zones = list(payload.get("zones") or []) or self._discover_zones(project, request.region)
        extra = {"project": project, "spot": str(request.spot).lower()}

        for zone in zones:
            found = self._get_instance(project, zone, name, operation="submit")
            if found is not None:
                return self._handle(request.region, zone, name, found.id, extra)
        launch = _Launch(project=project, region=request.region, key=idempotency_key,
                         body=body, spot=request.spot, zones=zones, tried=[])
        return self._launch(launch, deadline=deadline, operation="submit")

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        """Follow a pending launch, else map the instance's GCE status.

        A powered-off VM is EXITED with the exit code read from serial port 1; when no
        code is there, the zone's operation log tells a Spot preemption (PREEMPTED), a
        host failure (FAILED) and a stop through the API (TERMINATED) apart.
        """
        project = handle.extra.get("project") or self.project("status")
        zone = self._handle_zone(handle, "status")
        insert = None
        if operation := handle.extra.get("operation"):
            insert = self._zone_operation(project, zone, operation, operation_name="status")
            followed = self._follow_launch(handle, project, zone, insert)
            if followed is not None:
                return followed
        spot = handle.extra.get("spot") == "true"
        inst = self._get_instance(project, zone, handle.instance_id, operation="status")
        if inst is None:
            if insert is not None and _just_done(insert):  # reads may lag behind the insert
                return InstanceStatus(state=InstanceState.PENDING,
                                      detail=f"{handle.instance_id} created, not visible yet")
            if spot and self._was_preempted(project, zone, handle.instance_id):
                return InstanceStatus(state=InstanceState.PREEMPTED,
                                      detail="Spot VM was preempted and deleted by GCE")
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"no instance {handle.instance_id} in {zone}")
        settled = None
        if handle.extra.get("operation"):  # the launch is over: a handle without its state
            settled = self._handle(handle.region, zone, handle.instance_id, inst.id,
                                   {"project": project, "spot": str(spot).lower()})
        gce_status = inst.status or "UNKNOWN"
        detail = f"GCE status {gce_status}" + (
            f": {inst.status_message}" if inst.status_message else "")
        if gce_status not in _POWERED_OFF:
            return InstanceStatus(state=_STATUS_MAP.get(gce_status, InstanceState.PENDING),
                                  detail=detail, handle=settled)
        # A preempted Spot VM's guest may still print a code (the command killed by the
        # shutdown): the preemption event wins, so the queue requeues instead of failing.
        events = self._events(project, zone, inst.id) if spot else None
        code = None
        if not events or _PREEMPTED not in events:
            code = exit_code_in(self._serial_output(project, zone, handle.instance_id))
        if code is not None:
            return InstanceStatus(state=InstanceState.EXITED, exit_code=code,
                                  detail=f"{detail}; the command exited with {code}",
                                  handle=settled)
        if events is None:
            events = self._events(project, zone, inst.id)
        if _PREEMPTED in events:
            return InstanceStatus(state=InstanceState.PREEMPTED, handle=settled,
                                  detail=f"Spot VM was preempted ({detail})")
        if failures := sorted(events & _HOST_FAILURES):
            return InstanceStatus(state=InstanceState.FAILED, handle=settled,
                                  detail=f"the host failed ({', '.join(failures)}); {detail}")
        if events & _API_STOPS:
            return InstanceStatus(state=InstanceState.TERMINATED, handle=settled,
                                  detail=f"stopped through the API; {detail}")
        return InstanceStatus(state=InstanceState.EXITED, handle=settled,
                              detail=f"{detail}; no exit code on serial port 1 yet")

    def list_managed(self, region: str) -> list[ManagedInstance]:
        """Every instance labelled ``greenplace-managed=true`` in ``region``.

        Design choice: one ``instances.aggregatedList`` call (one per page of 500),
        filtered on the label server-side, covers every zone; the region is picked
        from its ``zones/<zone>`` scopes here because the list filter cannot express
        "zone in region". A zone of the region that the answer marks UNREACHABLE
        raises TransientError: a partial list would make its instances look gone.
        """
        project = self.project("list_managed")
        found: list[ManagedInstance] = []
        try:
            pager = self._client("instances", "list_managed").aggregated_list(
                request=compute_v1.AggregatedListInstancesRequest(
                    project=project, filter=f'labels.{MANAGED_LABEL} = "true"',
                    max_results=500),
                retry=None, timeout=HTTP_TIMEOUT_S)
            for page in pager.pages:
                for scope, scoped in page.items.items():
                    zone = scope.rsplit("/", 1)[-1]
                    if not zone.startswith(f"{region}-"):
                        continue
                    if scoped.warning.code == "UNREACHABLE":
                        raise _error(TransientError, f"instances.aggregatedList: zone {zone} "
                                     f"is unreachable ({scoped.warning.message})",
                                     operation="list_managed", code="UNREACHABLE")
                    found.extend(self._managed(project, region, zone, inst)
                                 for inst in scoped.instances)
        except CALL_ERRORS as exc:
            raise map_api_error(exc, operation="list_managed",
                                call="instances.aggregatedList") from exc
        return found

    def delete(self, handle: InstanceHandle) -> bool:
        """Delete the instance; its boot disk goes with it (``autoDelete: true``).

        Returns True once ``instances.get`` answers 404, False while an insert or a
        delete of it is still running. The delete carries a requestId derived from the
        instance, so repeated calls do not queue more operations.
        """
        project = handle.extra.get("project") or self.project("delete")
        zone = self._handle_zone(handle, "delete")
        name = handle.instance_id
        lagging = False
        if operation := handle.extra.get("operation"):
            insert = self._zone_operation(project, zone, operation, operation_name="delete")
            if insert is not None and insert.status != compute_v1.Operation.Status.DONE:
                return False  # the instance may still appear: delete it once it exists
            lagging = insert is not None and _just_done(insert)
        if self._get_instance(project, zone, name, operation="delete") is None:
            return not lagging
        op = self._start_delete(project, zone, name, operation="delete")
        if op is None or op.status != compute_v1.Operation.Status.DONE:
            return False
        if op.error.errors:
            raise map_operation_error(op, operation="delete", call="instances.delete")
        return self._get_instance(project, zone, name, operation="delete") is None

    # -- launching

    def _launch(self, launch: _Launch, *, deadline: float, operation: str) -> InstanceHandle:
        """Insert into ``launch.zones`` in turn until one accepts, waiting until ``deadline``.

        Raises:
            CapacityError: every zone refused (``launch.tried`` lists them).
            ProviderError: any other refusal, as classified.
        """
        zones = list(launch.zones)
        while zones:
            zone = zones.pop(0)
            body = _for_zone(launch.body, zone)
            try:
                op = self._insert(launch.project, zone, body,
                                  request_id=zone_request_id(launch.key, zone),
                                  operation=operation)
            except ProviderError as exc:
                if not _zone_refused(exc):
                    raise
                launch.tried.append(f"{zone}:{exc.code}")
                continue
            if op is None:  # alreadyExists: an earlier attempt created it
                found = self._get_instance(launch.project, zone, body["name"],
                                           operation=operation)
                if found is not None:
                    return self._handle(launch.region, zone, body["name"], found.id,
                                        launch.extra())
                raise _error(TransientError, f"instances.insert in {zone}: "
                             f"{body['name']} exists but cannot be read yet",
                             operation=operation, code="alreadyExists")
            op = self._wait(launch.project, zone, op, deadline=deadline, operation=operation)
            if op.status != compute_v1.Operation.Status.DONE:
                return self._handle(launch.region, zone, body["name"], op.target_id,
                                    launch.extra(), pending=(op.name, zones))
            if not op.error.errors:
                return self._handle(launch.region, zone, body["name"], op.target_id,
                                    launch.extra())
            error = map_operation_error(op, operation=operation,
                                        call=f"instances.insert in {zone}")
            self._start_delete(launch.project, zone, body["name"], operation=operation)
            if not _zone_refused(error):
                raise error
            launch.tried.append(f"{zone}:{error.code}")
        raise launch.exhausted(operation)

    def _follow_launch(self, handle: InstanceHandle, project: str, zone: str,
                       op: compute_v1.Operation | None) -> InstanceStatus | None:
        """The status of a launch still in flight, or None once its insert succeeded.

        A refused insert is cleaned up (its VM record deleted), then moved on to the
        next zone (PENDING with the new handle) or reported as LAUNCH_FAILED.
        """
        if op is None:
            return None  # GCE keeps operations for a while only; the instance tells
        if op.status != compute_v1.Operation.Status.DONE:
            return InstanceStatus(state=InstanceState.PENDING,
                                  detail=f"instances.insert in {zone} is {op.status.name}")
        if not op.error.errors:
            return None
        error = map_operation_error(op, operation="status", call=f"instances.insert in {zone}")
        self._start_delete(project, zone, handle.instance_id, operation="status")
        launch = _Launch.of(handle, project=project)
        launch.tried.append(f"{zone}:{error.code}")
        if not _zone_refused(error):
            return InstanceStatus(state=InstanceState.LAUNCH_FAILED, error=error,
                                  detail=str(error))
        try:
            moved = self._launch(launch, deadline=time.monotonic(), operation="status")
        except TransientError:
            raise  # a throttled insert: the next status() call tries the same zone again
        except ProviderError as exc:
            return InstanceStatus(state=InstanceState.LAUNCH_FAILED, error=exc, detail=str(exc))
        return InstanceStatus(state=InstanceState.PENDING, handle=moved,
                              detail=f"{zone} refused ({error.code}); launching in "
                                     f"{moved.zone}")

    # -- helpers

    def _handle(self, region: str, zone: str, name: str, instance_id: int | str,
                extra: dict[str, str],
                pending: tuple[str, list[str]] | None = None) -> InstanceHandle:
        fields = {k: v for k, v in extra.items()
                  if pending is not None or k in ("project", "spot")}
        if instance_id:
            fields["instance_id"] = str(instance_id)
        if pending is not None:
            fields["operation"], zones_left = pending[0], pending[1]
            fields["zones_left"] = ",".join(zones_left)
        return InstanceHandle(provider=PROVIDER, cloud=PROVIDER, region=region,
                              instance_id=name, zone=zone, extra=fields)

    def _managed(self, project: str, region: str, zone: str,
                 inst: compute_v1.Instance) -> ManagedInstance:
        """One aggregatedList entry as the queue sees it (exact tags from metadata)."""
        tags = {item.key.replace("greenplace-", "greenplace:", 1): item.value
                for item in inst.metadata.items if item.key.startswith("greenplace-")}
        job_id, attempt = managed_tags_of(tags)
        spot = inst.scheduling.provisioning_model == "SPOT"
        gce_status = inst.status or "UNKNOWN"
        state = _STATUS_MAP.get(gce_status, InstanceState.PENDING)
        return ManagedInstance(
            handle=self._handle(region, zone, inst.name, inst.id,
                                {"project": project, "spot": str(spot).lower()}),
            job_id=job_id, attempt=attempt,
            status=InstanceStatus(state=state, detail=f"GCE status {gce_status}"))

    @staticmethod
    def _handle_zone(handle: InstanceHandle, operation: str) -> str:
        if not handle.zone:
            raise InvalidRequestError(
                f"the gcp handle of {handle.instance_id} names no zone. "
                "To fix: use the handle that submit() returned.",
                provider=PROVIDER, operation=operation, code="NO_ZONE",
            )
        return handle.zone

    def _discover_zones(self, project: str, region: str) -> list[str]:
        if region not in self._zones_by_region:
            try:
                pager = self._client("zones", "submit").list(
                    request=compute_v1.ListZonesRequest(project=project),
                    retry=None, timeout=HTTP_TIMEOUT_S)
                zones = sorted(z.name for z in pager
                               if z.region.rstrip("/").endswith(f"/regions/{region}")
                               and z.status == "UP")
            except CALL_ERRORS as exc:
                raise map_api_error(exc, operation="submit", call="zones.list") from exc
            if not zones:
                raise InvalidRequestError(
                    f"project {project} sees no UP zone in region {region!r}. "
                    "To fix: check the region name, or set the gcp 'zones' setting.",
                    provider=PROVIDER, operation="submit", code="NO_ZONE",
                )
            self._zones_by_region[region] = zones
        return self._zones_by_region[region]

    def _get_instance(self, project: str, zone: str, name: str, *,
                      operation: str) -> compute_v1.Instance | None:
        try:
            inst: compute_v1.Instance = self._client("instances", operation).get(
                request=compute_v1.GetInstanceRequest(project=project, zone=zone, instance=name),
                retry=None, timeout=HTTP_TIMEOUT_S)
            return inst
        except gexc.NotFound:
            return None
        except CALL_ERRORS as exc:
            raise map_api_error(exc, operation=operation, call="instances.get") from exc

    def _insert(self, project: str, zone: str, body: dict[str, Any], *, request_id: str,
                operation: str) -> compute_v1.Operation | None:
        """Start the insert; None when the instance already exists (409)."""
        resource = compute_v1.Instance.from_json(json.dumps(body))
        try:
            op: compute_v1.Operation = self._client("instances", operation).insert_unary(
                request=compute_v1.InsertInstanceRequest(
                    project=project, zone=zone, instance_resource=resource,
                    request_id=request_id),
                retry=None, timeout=HTTP_TIMEOUT_S)
            return op
        except gexc.Conflict:
            return None
        except CALL_ERRORS as exc:
            raise map_api_error(exc, operation=operation, call="instances.insert") from exc

    def _start_delete(self, project: str, zone: str, name: str, *,
                      operation: str) -> compute_v1.Operation | None:
        """Ask GCE to delete the instance; None when it is gone or busy (try again later)."""
        try:
            op: compute_v1.Operation = self._client("instances", operation).delete_unary(
                request=compute_v1.DeleteInstanceRequest(
                    project=project, zone=zone, instance=name,
                    request_id=request_uuid(f"delete/{project}/{zone}/{name}")),
                retry=None, timeout=HTTP_TIMEOUT_S)
            return op
        except gexc.NotFound:
            return None
        except gexc.BadRequest as exc:
            if _reasons(exc) & {"resourceNotReady"}:  # an insert or delete still runs
                return None
            raise map_api_error(exc, operation=operation, call="instances.delete") from exc
        except CALL_ERRORS as exc:
            raise map_api_error(exc, operation=operation, call="instances.delete") from exc

    def _wait(self, project: str, zone: str, op: compute_v1.Operation, *,
              deadline: float, operation: str) -> compute_v1.Operation:
        """Wait for a zone operation until DONE or ``deadline`` (monotonic seconds)."""
        client = self._client("zone_operations", operation)
        while op.status != compute_v1.Operation.Status.DONE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            asked = time.monotonic()
            try:
                op = client.wait(
                    request=compute_v1.WaitZoneOperationRequest(
                        project=project, zone=zone, operation=op.name),
                    retry=None, timeout=remaining)
            except requests.exceptions.Timeout:
                break
            except CALL_ERRORS as exc:
                raise map_api_error(exc, operation=operation, call="zoneOperations.wait") from exc
            if op.status != compute_v1.Operation.Status.DONE and time.monotonic() - asked < 0.1:
                # wait answered at once without DONE (best effort): do not spin on it.
                time.sleep(max(0.0, min(0.2, deadline - time.monotonic())))
        return op

    def _zone_operation(self, project: str, zone: str, name: str, *,
                        operation_name: str) -> compute_v1.Operation | None:
        """One zoneOperations.get; None when GCE no longer knows the operation."""
        try:
            op: compute_v1.Operation = self._client("zone_operations", operation_name).get(
                request=compute_v1.GetZoneOperationRequest(
                    project=project, zone=zone, operation=name),
                retry=None, timeout=HTTP_TIMEOUT_S)
            return op
        except gexc.NotFound:
            return None
        except CALL_ERRORS as exc:
            raise map_api_error(exc, operation=operation_name,
                                call="zoneOperations.get") from exc

    def _serial_output(self, project: str, zone: str, name: str) -> str:
        """Serial port 1 as far as GCE keeps it (1 MB), page by page (``start``/``next``).

        Returns "" when GCE cannot show it (the instance is gone, or the output is
        not ready): the exit code is then "not published yet", not an error.
        """
        client = self._client("instances", "status")
        text: list[str] = []
        start = 0
        for _ in range(MAX_SERIAL_PAGES):
            try:
                out = client.get_serial_port_output(
                    request=compute_v1.GetSerialPortOutputInstanceRequest(
                        project=project, zone=zone, instance=name, port=SERIAL_PORT,
                        start=start),
                    retry=None, timeout=HTTP_TIMEOUT_S)
            except (gexc.NotFound, gexc.BadRequest):
                break
            except CALL_ERRORS as exc:
                raise map_api_error(exc, operation="status",
                                    call="instances.getSerialPortOutput") from exc
            text.append(out.contents)
            if not out.contents or out.next_ <= start:
                break
            start = out.next_
        return "".join(text)

    def _events(self, project: str, zone: str, instance_id: int) -> set[str]:
        """The operationType of every zone operation GCE logged on the instance."""
        try:
            ops = self._client("zone_operations", "status").list(
                request=compute_v1.ListZoneOperationsRequest(
                    project=project, zone=zone, filter=f'targetId = "{instance_id}"'),
                retry=None, timeout=HTTP_TIMEOUT_S)
            return {op.operation_type for op in ops if op.target_id == instance_id}
        except CALL_ERRORS as exc:
            raise map_api_error(exc, operation="status", call="zoneOperations.list") from exc

    def _was_preempted(self, project: str, zone: str, name: str) -> bool:
        """Whether GCE logged a ``compute.instances.preempted`` operation for this instance."""
        try:
            ops = self._client("zone_operations", "status").list(
                request=compute_v1.ListZoneOperationsRequest(
                    project=project, zone=zone,
                    filter=f'operationType = "{_PREEMPTED}"'),
                retry=None, timeout=HTTP_TIMEOUT_S)
            return any(op.target_link.rstrip("/").endswith(f"/instances/{name}") for op in ops)
        except CALL_ERRORS as exc:
            raise map_api_error(exc, operation="status", call="zoneOperations.list") from exc


@dataclass(slots=True, kw_only=True)
class _Launch:
    """A launch moving through the zones of one region (kept in a pending handle's extra)."""

    project: str
    region: str
    key: str
    body: dict[str, Any]  # the Instance JSON with {zone} placeholders
    spot: bool
    zones: list[str]  # still to try
    tried: list[str]  # "zone:code" of the zones that refused

    @classmethod
    def of(cls, handle: InstanceHandle, *, project: str) -> _Launch:
        extra = handle.extra
        return cls(project=project, region=handle.region, key=extra.get("key", ""),
                   body=json.loads(extra.get("launch") or "{}"),
                   spot=extra.get("spot") == "true",
                   zones=[z for z in extra.get("zones_left", "").split(",") if z],
                   tried=[t for t in extra.get("tried", "").split(",") if t])

    def extra(self) -> dict[str, str]:
        """What a handle of this launch carries (the launch keys only while pending)."""
        return {"project": self.project, "spot": str(self.spot).lower(), "key": self.key,
                "launch": json.dumps(self.body, separators=(",", ":"), sort_keys=True),
                "tried": ",".join(self.tried)}

    def exhausted(self, operation: str) -> CapacityError:
        """The error when no zone of the region is left."""
        tried = ", ".join(f"{t.split(':', 1)[0]} ({t.split(':', 1)[1]})" for t in self.tried)
        last = self.tried[-1].split(":", 1)[1] if self.tried else "NO_ZONE"
        instance_type = str(self.body.get("machineType", "")).rsplit("/", 1)[-1]
        return CapacityError(
            f"no zone of {self.region} could launch {instance_type}"
            f"{' (spot)' if self.spot else ''}: tried {tried or 'none'}. "
            "To fix: nothing in the job; greenplace fails over to the next candidate region, "
            "or set the gcp 'zones' setting to zones that offer this machine type.",
            provider=PROVIDER, operation=operation, code=last,
        )


def _just_done(op: compute_v1.Operation) -> bool:
    """Whether ``op`` ended well less than ``READ_LAG_GRACE_S`` ago.

    Design choice: GCE reads are eventually consistent after an insert; within the
    grace a 404 for the instance a successful insert created means "not visible
    yet" (status PENDING, delete False), after it the instance is really gone. The
    operation's own ``endTime`` dates it, so the rule holds across worker processes.
    """
    if op.status != compute_v1.Operation.Status.DONE or op.error.errors:
        return False
    try:
        ended = dt.datetime.fromisoformat(op.end_time)
    except ValueError:
        return False
    if ended.tzinfo is None:
        return False
    return (dt.datetime.now(dt.UTC) - ended).total_seconds() < READ_LAG_GRACE_S


def _reasons(exc: gexc.GoogleAPICallError) -> set[str]:
    return {str(e.get("reason")) for e in (exc.errors or []) if isinstance(e, dict)}


def merged_config(config: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Settings from GREENPLACE_GCP_SETTINGS, GREENPLACE_GCP_<KEY>, then ``config``."""
    return merged_settings("GCP", config, environ, from_env=lambda key: key in _CONFIG_KEYS)


def create(config: Mapping[str, str]) -> GcpProvider:
    """The registry's factory: ``get_provider("gcp", config=...)``.

    ``config`` wins over GREENPLACE_GCP_<KEY> variables, which win over
    GREENPLACE_GCP_SETTINGS.
    """
    return GcpProvider(GcpSettings.from_config(merged_config(config, os.environ)))
