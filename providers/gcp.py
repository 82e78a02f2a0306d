"""GCP adapter: Compute Engine VM instances through google-cloud-compute (REST transport).

This module is the only place that imports ``google.cloud.compute_v1`` and
``google.auth``. It owns the translation from a placed job to an
``instances.insert`` request body, the zone failover inside a region, the
idempotent submit (deterministic instance name + a ``requestId`` per zone),
and the mapping of Compute Engine errors onto the ProviderError tree.

What it sends (the ``payload`` of ``prepare()``)::

    {"project": "...", "region": "us-central1",
     "zones": ["us-central1-a", ...],      # [] = every UP zone of the region, listed at submit
     "zonePlaceholder": "{zone}",
     "requestIds": {"us-central1-a": "<uuid5>", ...},
     "instanceResource": {<the Compute Engine Instance JSON, with {zone} in zonal URLs>}}

Settings come from ``create(config)``, else ``GREENPLACE_GCP_<KEY>``, else the JSON
object ``GREENPLACE_GCP_SETTINGS`` (see ``GcpSettings.from_config`` for the keys);
credentials come from Application Default Credentials (``google.auth.default()``)
and are never read, printed or stored here.

Labels: GCE label keys and values allow only ``[a-z0-9_-]`` (keys start with a
letter, 63 characters at most), so ``greenplace:job-id`` becomes the label
``greenplace-job-id`` and the value is folded to lower case with other
characters replaced by ``_``. The exact, unfolded values also go into instance
metadata (``greenplace-job-id``, ``greenplace-attempt``, ``greenplace-policy``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import google.auth
import requests
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import compute_v1

from greenplace.providers.base import (
    Feature,
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    LaunchRequest,
    Placement,
    idempotency_key,
    job_tags,
    request_uuid,
    short_token,
    startup_script,
)
from greenplace.providers.errors import ErrorCodeTable, provider_error
from greenplace.providers.settings import is_loopback, merged_settings, number_setting
from greenplace.scheduler.catalog.model import normalize_name
from greenplace.scheduler.exceptions import (
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

# Operation / error codes that mean "this zone has no capacity for this shape now".
CAPACITY_CODES = frozenset({
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
})
# Operation error codes (UPPER_CASE) and HTTP error reasons (camelCase) by class; a code
# not listed falls back to the HTTP status (5xx / 429 transient, 401 / 403 auth), then
# InvalidRequestError.
ERRORS = ErrorCodeTable(
    capacity=CAPACITY_CODES,
    quota=frozenset({"QUOTA_EXCEEDED", "quotaExceeded"}),
    transient=frozenset({"rateLimitExceeded", "userRateLimitExceeded", "backendError",
                         "internalError", "RESOURCE_NOT_READY"}),
    auth=frozenset({"forbidden", "insufficientPermissions", "accessNotConfigured",
                    "authError", "unauthorized", "PERMISSIONS_ERROR"}),
)
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

# GCE instance status -> provider-neutral state.
_STATUS_MAP: dict[str, InstanceState] = {
    "PROVISIONING": InstanceState.PENDING,
    "STAGING": InstanceState.PENDING,
    "PENDING": InstanceState.PENDING,
    "RUNNING": InstanceState.RUNNING,
    "REPAIRING": InstanceState.RUNNING,
    "STOPPING": InstanceState.RUNNING,
    "SUSPENDING": InstanceState.RUNNING,
    "SUSPENDED": InstanceState.SUCCEEDED,
    "STOPPED": InstanceState.SUCCEEDED,
    "TERMINATED": InstanceState.SUCCEEDED,
}

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
    boot_disk_type: str = "pd-balanced"
    network: str = "global/networks/default"
    subnetwork: str | None = None
    external_ip: bool = True
    service_account: str | None = None
    spot_termination_action: str = "DELETE"
    operation_timeout_s: float = 90.0
    api_endpoint: str | None = None
    anonymous_credentials: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> GcpSettings:
        """Parse the flat config mapping.

        Keys: project, zones (comma-separated), image_project, image_family,
        boot_disk_gb, boot_disk_type, network, subnetwork, external_ip (true/false),
        service_account, spot_termination_action (DELETE/STOP), operation_timeout_s,
        api_endpoint (for a local Compute Engine fake), credentials ("default", or
        "anonymous", which is accepted only with a loopback api_endpoint).

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
        if credentials == "anonymous" and not is_loopback(endpoint):
            raise ConfigError(
                "gcp credentials 'anonymous' is only for a local Compute Engine fake. "
                "To fix: also set api_endpoint to an http://127.0.0.1:PORT address, "
                "or leave credentials unset."
            )
        d = cls()  # the defaults (slots dataclasses keep no class-level values)
        return cls(
            project=get("project") or None,
            zones=zones,
            image_project=get("image_project") or d.image_project,
            image_family=get("image_family") or d.image_family,
            boot_disk_gb=_int_setting(config, "boot_disk_gb", d.boot_disk_gb),
            boot_disk_type=get("boot_disk_type") or d.boot_disk_type,
            network=get("network") or d.network,
            subnetwork=get("subnetwork") or None,
            external_ip=_bool_setting(config, "external_ip", True),
            service_account=get("service_account") or None,
            spot_termination_action=termination,
            operation_timeout_s=number_setting("gcp", config, "operation_timeout_s",
                                               d.operation_timeout_s, minimum=0),
            api_endpoint=endpoint,
            anonymous_credentials=credentials == "anonymous",
        )


_CONFIG_KEYS = (
    "project", "zones", "image_project", "image_family", "boot_disk_gb", "boot_disk_type",
    "network", "subnetwork", "external_ip", "service_account", "spot_termination_action",
    "operation_timeout_s", "api_endpoint", "credentials",
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


def _accelerators(placement: Placement) -> tuple[list[dict[str, Any]], bool]:
    """guestAccelerators for the machine type, and whether the VM has GPUs at all.

    Raises:
        InvalidRequestError: TPUs, or a GPU this machine family cannot take.
    """
    family = placement.instance_type.split("-", 1)[0].lower()
    accel = normalize_name(placement.accelerator or "")
    count = placement.accelerator_count
    if not accel or count <= 0:
        return [], family in BUNDLED_GPU_FAMILIES
    if accel.startswith("tpu"):
        raise InvalidRequestError(
            f"{placement.accelerator} is a Cloud TPU; TPU VMs are created through the Cloud TPU "
            "API, which this adapter does not drive (it launches Compute Engine instances). "
            "To fix: exclude TPU accelerators from this job's policy for gcp, or ask for a GPU.",
            provider=PROVIDER, operation="prepare", code="TPU_NOT_SUPPORTED",
        )
    if family in BUNDLED_GPU_FAMILIES:
        return [], True
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
        }], True
    raise InvalidRequestError(
        f"machine type {placement.instance_type} takes no GPUs, yet the placement asks for "
        f"{count}x {placement.accelerator}. To fix: use an N1 machine with attached GPUs or "
        "an accelerator-optimized machine type (A2, A3, G2).",
        provider=PROVIDER, operation="prepare", code="UNSUPPORTED_ACCELERATOR",
    )


def build_instance_body(settings: GcpSettings, job: JobLaunch, placement: Placement,
                        *, name: str) -> dict[str, Any]:
    """The Compute Engine Instance JSON, with ``{zone}`` in its zonal URLs."""
    accelerators, has_gpu = _accelerators(placement)
    scheduling: dict[str, Any] = {}
    if has_gpu or placement.spot:
        # GPU VMs cannot live-migrate; Spot VMs cannot either.
        scheduling["onHostMaintenance"] = "TERMINATE"
    if placement.spot:
        scheduling.update({
            "provisioningModel": "SPOT",
            "instanceTerminationAction": settings.spot_termination_action,
            "automaticRestart": False,
        })
    else:
        scheduling.update({"provisioningModel": "STANDARD", "automaticRestart": True})
    interface: dict[str, Any] = {"network": settings.network}
    if settings.subnetwork:
        interface["subnetwork"] = settings.subnetwork
    if settings.external_ip:
        interface["accessConfigs"] = [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]
    body: dict[str, Any] = {
        "name": name,
        "machineType": f"zones/{ZONE_PLACEHOLDER}/machineTypes/{placement.instance_type}",
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
                "diskType": f"zones/{ZONE_PLACEHOLDER}/diskTypes/{settings.boot_disk_type}",
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
    TransientError: "nothing; the call is retried with backoff",
    AuthError: "run `gcloud auth application-default login` or set "
               "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, grant the "
               "principal roles/compute.instanceAdmin.v1 (plus roles/iam.serviceAccountUser if "
               "a service account is attached) on the project, and enable the Compute Engine API",
    InvalidRequestError: "check the gcp settings (project, zones, image, network) and the "
                         "placement's machine type",
}


def _error(cls: type[ProviderError], message: str, *, operation: str,
           code: str | None) -> ProviderError:
    return provider_error(cls, message, provider=PROVIDER, operation=operation, code=code,
                          fix=FIXES[cls])


def _classify(codes: list[str], *, message: str,
              http_status: int | None) -> tuple[type[ProviderError], str | None]:
    """The error class and the code that decided it (the first one that classifies).

    GCE puts stockouts in an operation's ``errors[].code``, in an HTTP error's
    message text (``ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: The zone ...``) or
    only in words (``state:STOCKOUT``, "does not have enough resources"); all
    three count as capacity.
    """
    classified = [(ERRORS.classify(code), code) for code in codes]
    fallback = codes[0] if codes else (str(http_status) if http_status else None)
    capacity = next((code for cls, code in classified if cls is CapacityError), None)
    if capacity is not None:
        return CapacityError, capacity
    if _STOCKOUT_TEXT.search(message):  # before 5xx: a stockout can come as a 503
        return CapacityError, fallback
    for cls, code in classified:
        if cls is not InvalidRequestError:
            return cls, code
    return ERRORS.classify(None, http_status=http_status), fallback


def _codes_in(message: str) -> list[str]:
    """Capacity / quota code names that GCE embeds in a message text."""
    return [c for c in (*sorted(CAPACITY_CODES), "QUOTA_EXCEEDED") if c in message]


def map_api_error(exc: Exception, *, operation: str, call: str) -> ProviderError:
    """Map an HTTP-level Compute Engine error (or a transport failure) to a ProviderError.

    ``operation`` is the Provider method (submit, status, ...); ``call`` the API call
    that failed, which opens the message.
    """
    if isinstance(exc, gexc.GoogleAPICallError):
        reasons = [str(e.get("reason")) for e in (exc.errors or [])
                   if isinstance(e, dict) and e.get("reason")]
        # api_core prefixes "POST https://...: "; the call name says it shorter.
        message = _HTTP_PREFIX.sub("", str(exc.message), count=1)
        status = int(exc.code) if isinstance(exc.code, int) else None
        cls, code = _classify(_codes_in(message) + reasons, message=message,
                              http_status=status)
        return _error(cls, f"{call}: {message}", operation=operation, code=code)
    if isinstance(exc, auth_exc.GoogleAuthError):
        # The exception names the failure, never the credential itself.
        return _error(AuthError, f"{call}: Google credentials are unusable "
                      f"({type(exc).__name__}: {exc})", operation=operation,
                      code=type(exc).__name__)
    if isinstance(exc, requests.exceptions.RequestException):
        return _error(TransientError, f"{call}: the Compute Engine API could not be reached "
                      f"({type(exc).__name__})", operation=operation, code=type(exc).__name__)
    return _error(InvalidRequestError, f"{call}: {type(exc).__name__}: {exc}",
                  operation=operation, code=type(exc).__name__)


def map_operation_error(op: compute_v1.Operation, *, operation: str,
                        call: str) -> ProviderError:
    """Map a DONE zone operation that carries an ``error`` block."""
    errors = list(op.error.errors)
    message = "; ".join(f"{e.code}: {e.message}" for e in errors) or op.http_error_message
    cls, code = _classify([e.code for e in errors if e.code], message=message,
                          http_status=op.http_error_status_code or None)
    return _error(cls, f"{call}: {message}", operation=operation, code=code)


def _zone_lacks_offer(err: ProviderError) -> bool:
    """A 400/404 saying this zone does not offer the machine or accelerator type."""
    return isinstance(err, InvalidRequestError) and bool(_ZONE_LACKS_OFFER.search(str(err)))


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
        """Find the instance of this key, or insert it in the first zone with capacity.

        Design choice: the name is derived from the key passed here (the same key
        prepare() used in the normal flow), so "same key, one instance" holds even if
        a caller re-prepared. Before inserting, every candidate zone is asked for an
        instance of that name; each insert carries a per-zone requestId, so a
        redelivered dispatch whose earlier insert is still in flight gets the same
        operation back instead of a second VM.

        Raises:
            CapacityError: every zone of the region is out of capacity.
            QuotaError, AuthError, TransientError, InvalidRequestError: as the cloud says.
        """
        if request.provider != PROVIDER:
            raise InvalidRequestError(
                f"the gcp adapter was handed a {request.provider} request. "
                "To fix: submit through the provider that prepared it.",
                provider=PROVIDER, operation="submit", code="WRONG_PROVIDER",
            )
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

        failures: list[str] = []
        last: ProviderError | None = None
        for zone in zones:
            try:
                return self._insert(project, zone, _for_zone(body, zone),
                                    request_id=zone_request_id(idempotency_key, zone),
                                    region=request.region, extra=extra)
            except CapacityError as exc:
                failures.append(f"{zone} ({exc.code})")
                last = exc
            except InvalidRequestError as exc:
                if not _zone_lacks_offer(exc):
                    raise
                failures.append(f"{zone} (does not offer {request.instance_type})")
                last = exc
        raise CapacityError(
            f"no zone of {request.region} could launch {request.instance_type}"
            f"{' (spot)' if request.spot else ''}: tried {', '.join(failures)}. "
            "To fix: nothing in the job; greenplace fails over to the next candidate region, "
            "or set the gcp 'zones' setting to zones that offer this machine type.",
            provider=PROVIDER, operation="submit",
            code=last.code if last is not None else "NO_ZONE",
        )

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        """Map the instance's GCE status; detect Spot preemption through zone operations."""
        project = handle.extra.get("project") or self.project("status")
        zone = self._handle_zone(handle, "status")
        spot = handle.extra.get("spot") == "true"
        inst = self._get_instance(project, zone, handle.instance_id, operation="status")
        if inst is None:
            if spot and self._was_preempted(project, zone, handle.instance_id):
                return InstanceStatus(state=InstanceState.PREEMPTED,
                                      detail="Spot VM was preempted and deleted by GCE")
            failed = self._failed_insert(project, zone, handle.extra.get("operation"))
            if failed:
                return InstanceStatus(state=InstanceState.FAILED, detail=failed)
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"no instance {handle.instance_id} in {zone}")
        gce_status = inst.status or "UNKNOWN"
        if (spot and gce_status in ("STOPPING", "TERMINATED", "STOPPED")
                and self._was_preempted(project, zone, handle.instance_id)):
            return InstanceStatus(state=InstanceState.PREEMPTED,
                                  detail=f"Spot VM was preempted (GCE status {gce_status})")
        state = _STATUS_MAP.get(gce_status, InstanceState.PENDING)
        detail = f"GCE status {gce_status}"
        if inst.status_message:
            detail += f": {inst.status_message}"
        return InstanceStatus(state=state, detail=detail)

    def cancel(self, handle: InstanceHandle) -> None:
        """Delete the instance; a no-op when it is already gone."""
        project = handle.extra.get("project") or self.project("cancel")
        zone = self._handle_zone(handle, "cancel")
        try:
            self._client("instances", "cancel").delete_unary(
                request=compute_v1.DeleteInstanceRequest(
                    project=project, zone=zone, instance=handle.instance_id,
                    request_id=request_uuid(f"delete/{project}/{zone}/{handle.instance_id}")),
                retry=None, timeout=HTTP_TIMEOUT_S)
        except gexc.NotFound:
            return
        except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                requests.exceptions.RequestException) as exc:
            raise map_api_error(exc, operation="cancel", call="instances.delete") from exc

    # -- helpers

    def _handle(self, region: str, zone: str, name: str, instance_id: int | str,
                extra: dict[str, str], operation: str = "") -> InstanceHandle:
        fields = dict(extra)
        if instance_id:
            fields["instance_id"] = str(instance_id)
        if operation:
            fields["operation"] = operation
        return InstanceHandle(provider=PROVIDER, cloud=PROVIDER, region=region,
                              instance_id=name, zone=zone, extra=fields)

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
            except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                    requests.exceptions.RequestException) as exc:
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
        except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                requests.exceptions.RequestException) as exc:
            raise map_api_error(exc, operation=operation, call="instances.get") from exc

    def _insert(self, project: str, zone: str, body: dict[str, Any], *, request_id: str,
                region: str, extra: dict[str, str]) -> InstanceHandle:
        resource = compute_v1.Instance.from_json(json.dumps(body))
        try:
            op = self._client("instances", "submit").insert_unary(
                request=compute_v1.InsertInstanceRequest(
                    project=project, zone=zone, instance_resource=resource,
                    request_id=request_id),
                retry=None, timeout=HTTP_TIMEOUT_S)
        except gexc.Conflict as exc:
            # alreadyExists: an earlier attempt created it; return that instance.
            found = self._get_instance(project, zone, body["name"], operation="submit")
            if found is None:
                raise map_api_error(exc, operation="submit", call="instances.insert") from exc
            return self._handle(region, zone, body["name"], found.id, extra)
        except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                requests.exceptions.RequestException) as exc:
            raise map_api_error(exc, operation="submit", call="instances.insert") from exc
        op = self._wait(project, zone, op)
        if op.status != compute_v1.Operation.Status.DONE:
            # Still running at our deadline: hand back the instance; status() follows it
            # and reports a late failure of this operation.
            return self._handle(region, zone, body["name"], op.target_id, extra, op.name)
        if op.error.errors:
            raise map_operation_error(op, operation="submit", call=f"instances.insert in {zone}")
        return self._handle(region, zone, body["name"], op.target_id, extra)

    def _wait(self, project: str, zone: str, op: compute_v1.Operation) -> compute_v1.Operation:
        """Wait for a zone operation until DONE or the configured deadline."""
        deadline = time.monotonic() + self.settings.operation_timeout_s
        client = self._client("zone_operations", "submit")
        while op.status != compute_v1.Operation.Status.DONE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            asked = time.monotonic()
            try:
                op = client.wait(
                    request=compute_v1.WaitZoneOperationRequest(
                        project=project, zone=zone, operation=op.name),
                    retry=None, timeout=max(remaining, 1.0))
            except requests.exceptions.Timeout:
                break
            except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                    requests.exceptions.RequestException) as exc:
                raise map_api_error(exc, operation="submit", call="zoneOperations.wait") from exc
            if op.status != compute_v1.Operation.Status.DONE and time.monotonic() - asked < 1:
                # wait answered early without DONE: do not spin on it.
                time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
        return op

    def _was_preempted(self, project: str, zone: str, name: str) -> bool:
        """Whether GCE logged a ``compute.instances.preempted`` operation for this instance."""
        try:
            ops = self._client("zone_operations", "status").list(
                request=compute_v1.ListZoneOperationsRequest(
                    project=project, zone=zone,
                    filter='operationType = "compute.instances.preempted"'),
                retry=None, timeout=HTTP_TIMEOUT_S)
            return any(op.target_link.rstrip("/").endswith(f"/instances/{name}") for op in ops)
        except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                requests.exceptions.RequestException) as exc:
            raise map_api_error(exc, operation="status", call="zoneOperations.list") from exc

    def _failed_insert(self, project: str, zone: str, operation: str | None) -> str:
        """The error of the insert operation, when it ended in one."""
        if not operation:
            return ""
        try:
            op = self._client("zone_operations", "status").get(
                request=compute_v1.GetZoneOperationRequest(
                    project=project, zone=zone, operation=operation),
                retry=None, timeout=HTTP_TIMEOUT_S)
        except gexc.NotFound:
            return ""
        except (gexc.GoogleAPICallError, auth_exc.GoogleAuthError,
                requests.exceptions.RequestException) as exc:
            raise map_api_error(exc, operation="status", call="zoneOperations.get") from exc
        if op.status == compute_v1.Operation.Status.DONE and op.error.errors:
            return str(map_operation_error(op, operation="submit", call="instances.insert"))
        return ""


def merged_config(config: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Settings from GREENPLACE_GCP_SETTINGS, GREENPLACE_GCP_<KEY>, then ``config``."""
    return merged_settings("GCP", config, environ, from_env=lambda key: key in _CONFIG_KEYS)


def create(config: Mapping[str, str]) -> GcpProvider:
    """The registry's factory: ``get_provider("gcp", config=...)``.

    ``config`` wins over GREENPLACE_GCP_<KEY> variables, which win over
    GREENPLACE_GCP_SETTINGS.
    """
    return GcpProvider(GcpSettings.from_config(merged_config(config, os.environ)))
