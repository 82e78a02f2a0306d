"""Azure adapter: virtual machines through azure-mgmt-compute and azure-mgmt-network.

This module is the only place that imports the Azure SDKs (``azure.mgmt.*``,
``azure.identity``, ``azure.core``). It owns the ARM request bodies for one
job's VM and the network it needs, the idempotent submit (deterministic names,
look-up before PUT), following a launch, reading the exit code back from boot
diagnostics, listing greenplace's VMs, deleting them, and the mapping of ARM
error codes onto the ProviderError tree.

What it creates, all in one configured resource group, with deterministic names:

- ``greenplace-<region>`` virtual network with subnet ``jobs`` (created once per
  region with a GET-then-PUT; skipped when ``subnet_id`` names an existing subnet).
  The subnet is private (``defaultOutboundAccess: false``): see ``outbound``;
- with ``outbound: nat_gateway``, ``greenplace-<region>-nat`` NAT gateway and its
  ``greenplace-<region>-nat-ip`` public IP, attached to that subnet (created once,
  like the network, and never deleted by greenplace: they serve every job);
- with ``outbound: public_ip``, ``<vm>-ip``, a Standard static public IP
  (``deleteOption: Delete``);
- ``<vm>-nic`` network interface (PUT, idempotent by name);
- ``<vm>`` Linux VM (PUT, idempotent by name) whose NIC and OS disk have
  ``deleteOption: Delete``, so deleting the VM removes them too, with managed
  boot diagnostics on (the serial console log is where the exit code is read).

The life of a launch (see providers/base.py): ``submit`` waits on ARM for at most
``operation_timeout_s`` in all (never more than ``LAUNCH_WAIT_S``) and returns the
VM's handle while its creation may still run; ``status`` follows it: a VM whose
provisioning ended Failed is ``LAUNCH_FAILED`` with the classified error (its
deletion is started at once), a VM that powered itself off is ``EXITED`` with the
exit code read from its serial console log (``retrieveBootDiagnosticsData`` gives
a short-lived SAS URL of the log blob; the blob is fetched without any Azure
credential). ``list_managed`` is one paged ``virtualMachines.list`` of the
resource group with ``$expand=instanceView`` (the Compute list API has no tag
filter: the ``greenplace:managed`` tag and the location are filtered here).
``delete`` starts the VM's deletion without waiting and returns True once the VM,
its NIC and its public IP all answer 404.

Settings come from ``create(config)``, else ``GREENPLACE_AZURE_<KEY>``, else the JSON
object ``GREENPLACE_AZURE_SETTINGS`` (see ``AzureSettings.from_config`` for the keys);
credentials come from ``DefaultAzureCredential`` and are never read, printed or stored
here. Settings that shape the lifecycle:

- ``operation_timeout_s`` (default and maximum ``LAUNCH_WAIT_S`` = 5): the longest one
  call waits on ARM operations in all; a NIC or network still being created then is a
  TransientError (the idempotent submit is retried), a VM still being created is a
  pending handle.
- ``outbound`` (default ``public_ip``): how job VMs reach the internet. Azure retires
  default outbound access: subnets created through Network API versions released
  after 31 March 2026 (2025-07-01 and later) are private by default (first announced
  for 30 September 2025; see learn.microsoft.com/azure/virtual-network/ip-services/
  default-outbound-access and the Azure Networking blog "Private subnets by default in
  Azure virtual networks"). ``public_ip``: one Standard static public IP per VM,
  deleted with it (billed only while its VM exists; Standard IPs are closed to inbound
  traffic unless a network security group opens it); ``nat_gateway``: one NAT gateway per region on
  greenplace's subnet (a standing hourly cost, no public address on the VMs; not with
  ``subnet_id``); ``none``: no outbound access (the job's command must need none).

Handles: ``instance_id`` is the VM name, ``zone`` None, ``extra`` holds
``resource_group``, ``subscription_id`` and ``spot`` ("true" / "false"); ``list_managed``
rebuilds the same handle from the VM.

Tags: Azure tag names may not contain ``< > % & \\ ? /`` (``:`` is allowed), so
``greenplace:job-id`` is used as-is; any forbidden character is replaced by ``-``
and values are cut to 256 characters.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.polling import LROPoller
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.core.polling.arm_polling import ARMPolling
from azure.mgmt.network import NetworkManagementClient

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
    short_token,
    startup_script,
)
from greenplace.providers.errors import ErrorCodeTable, provider_error
from greenplace.providers.settings import is_loopback, merged_settings, number_setting
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

PROVIDER = "azure"
ARM_SCOPE = "https://management.azure.com/.default"
SUBSCRIPTION_PLACEHOLDER = "{subscriptionId}"
SUBNET_NAME = "jobs"
MANAGED_TAG = "greenplace:managed"
# The public, unauthenticated Azure Retail Prices API (read by `greenplace catalog refresh`).
RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
OUTBOUND_MODES = ("public_ip", "nat_gateway", "none")
# How long the serial log's SAS URL lives: it is used at once, by this process only.
SAS_MINUTES = 5
LIST_REUSE_S = 2.0  # a resource-group listing answers the other regions of one pass

# ARM error.code values by class (read from the response body, including nested
# details); a code not listed falls back to the HTTP status (429 / 5xx transient,
# 401 / 403 auth), then InvalidRequestError. The network conflicts are transient:
# two workers' first launches in a region race on the same VNet PUT, and a NIC
# PUT can meet a subnet still Updating; the next try finds them settled.
ERRORS = ErrorCodeTable(
    capacity=frozenset({"SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed",
                        "Overconstrained*"}),
    quota=frozenset({"QuotaExceeded", "PublicIPCountLimitReached"}),
    transient=frozenset({"TooManyRequests", "InternalServerError", "ServiceUnavailable",
                         "InternalExecutionError", "InternalOperationError", "RetryableError",
                         "OperationPreempted", "GatewayTimeout", "AnotherOperationInProgress",
                         "ReferencedResourceNotProvisioned",
                         "CanceledAndSupersededDueToAnotherOperation"}),
    auth=frozenset({"AuthorizationFailed", "InvalidAuthenticationToken",
                    "InvalidAuthenticationTokenTenant", "InvalidAuthenticationTokenAudience",
                    "AuthenticationFailed", "ExpiredAuthenticationToken",
                    "LinkedAuthorizationFailed", "SubscriptionNotFound"}),
)

_TAG_FORBIDDEN = re.compile(r"[<>%&\\?/]")
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class AzureSettings:
    """The adapter's own settings (never secrets: credentials come from azure-identity)."""

    subscription_id: str | None = None
    resource_group: str = "greenplace"
    image: str = "microsoft-dsvm:ubuntu-hpc:2204:latest"
    admin_username: str = "greenplace"
    ssh_public_key: str | None = None
    subnet_id: str | None = None
    vnet_address_prefix: str = "10.64.0.0/16"
    subnet_address_prefix: str = "10.64.0.0/20"
    os_disk_gb: int = 256
    os_disk_type: str = "StandardSSD_LRS"
    security_type: str = "Standard"
    spot_eviction_policy: str = "Delete"
    spot_max_price: float = -1.0
    outbound: str = "public_ip"
    operation_timeout_s: float = LAUNCH_WAIT_S
    polling_interval_s: float = 5.0
    base_url: str | None = None
    ca_bundle: str | None = None
    test_token: bool = False
    retail_prices_url: str = RETAIL_PRICES_URL

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> AzureSettings:
        """Parse the flat config mapping.

        Keys: subscription_id (else AZURE_SUBSCRIPTION_ID), resource_group, image (URN
        ``publisher:offer:sku:version`` or an image resource id), admin_username,
        ssh_public_key, subnet_id, vnet_address_prefix, subnet_address_prefix,
        os_disk_gb, os_disk_type, security_type (Standard / TrustedLaunch / "" to
        omit), spot_eviction_policy (Delete / Deallocate), spot_max_price, outbound
        (public_ip / nat_gateway / none, see the module docstring),
        operation_timeout_s (0 to LAUNCH_WAIT_S), polling_interval_s, base_url (ARM
        endpoint), ca_bundle (a PEM file to verify the endpoint's TLS certificate and
        the serial log blob's), credentials ("default", or "test-token", accepted only
        with a loopback base_url), retail_prices_url (the Retail Prices API the catalog refresh
        reads; https, or http on loopback for a test fake).

        Raises:
            UnknownNameError: a key the adapter does not know ("Did you mean").
            ConfigError: an unusable value.
        """
        for key in config:
            if key not in _CONFIG_KEYS:
                raise UnknownNameError("azure adapter setting", key, _CONFIG_KEYS,
                                       hint=f"To fix: use one of {sorted(_CONFIG_KEYS)}.")
        d = cls()  # the defaults (slots dataclasses keep no class-level values)
        get = config.get
        number = functools.partial(number_setting, "azure", config)
        image = get("image") or d.image
        _image_reference(image)  # validate early
        eviction = (get("spot_eviction_policy") or d.spot_eviction_policy).capitalize()
        if eviction not in ("Delete", "Deallocate"):
            raise ConfigError(f"azure spot_eviction_policy {eviction!r} is not Delete or "
                              "Deallocate. To fix: set Delete (default) or Deallocate.")
        credentials = (get("credentials") or "default").strip().lower()
        base_url = get("base_url") or None
        if credentials not in ("default", "test-token"):
            raise ConfigError(f"azure credentials {credentials!r} is not 'default' or "
                              "'test-token'. To fix: leave it unset to use "
                              "DefaultAzureCredential.")
        if credentials == "test-token" and not is_loopback(base_url):
            raise ConfigError("azure credentials 'test-token' is only for a local ARM fake. "
                              "To fix: also set base_url to an https://127.0.0.1:PORT "
                              "address, or leave credentials unset.")
        outbound = (get("outbound") or d.outbound).strip().lower()
        if outbound not in OUTBOUND_MODES:
            raise ConfigError(f"azure outbound {outbound!r} is not one of "
                              f"{', '.join(OUTBOUND_MODES)}. To fix: leave it unset for "
                              "public_ip (a public IP per VM, deleted with it).")
        if outbound == "nat_gateway" and get("subnet_id"):
            raise ConfigError("azure outbound 'nat_gateway' puts a NAT gateway on "
                              "greenplace's own subnet, but subnet_id names another one. "
                              "To fix: attach a NAT gateway to that subnet yourself and set "
                              "outbound to none, or drop subnet_id.")
        retail_prices_url = get("retail_prices_url") or d.retail_prices_url
        if urlsplit(retail_prices_url).scheme != "https" and not (
                urlsplit(retail_prices_url).scheme == "http" and is_loopback(retail_prices_url)):
            raise ConfigError(f"azure retail_prices_url {retail_prices_url[:120]!r} is not an "
                              "https:// address. To fix: leave it unset for "
                              f"{RETAIL_PRICES_URL}, or give an https:// mirror of it.")
        timeout_s = number("operation_timeout_s", d.operation_timeout_s, minimum=0)
        if timeout_s > LAUNCH_WAIT_S:
            raise ConfigError(f"azure operation_timeout_s {timeout_s:g} is above "
                              f"{LAUNCH_WAIT_S:g} s: no queue call may wait longer on a cloud "
                              "operation (later status and delete calls follow it). To fix: "
                              f"set at most {LAUNCH_WAIT_S:g}, or leave it unset.")
        return cls(
            subscription_id=get("subscription_id") or os.environ.get("AZURE_SUBSCRIPTION_ID")
            or None,
            resource_group=get("resource_group") or d.resource_group,
            image=image,
            admin_username=get("admin_username") or d.admin_username,
            ssh_public_key=get("ssh_public_key") or None,
            subnet_id=get("subnet_id") or None,
            vnet_address_prefix=get("vnet_address_prefix") or d.vnet_address_prefix,
            subnet_address_prefix=get("subnet_address_prefix") or d.subnet_address_prefix,
            os_disk_gb=int(number("os_disk_gb", d.os_disk_gb, minimum=1)),
            os_disk_type=get("os_disk_type") or d.os_disk_type,
            security_type=get("security_type", d.security_type),
            spot_eviction_policy=eviction,
            spot_max_price=number("spot_max_price", d.spot_max_price, minimum=-1),
            outbound=outbound,
            operation_timeout_s=timeout_s,
            polling_interval_s=number("polling_interval_s", d.polling_interval_s, minimum=0),
            base_url=base_url,
            ca_bundle=get("ca_bundle") or None,
            test_token=credentials == "test-token",
            retail_prices_url=retail_prices_url,
        )


_CONFIG_KEYS = (
    "subscription_id", "resource_group", "image", "admin_username", "ssh_public_key",
    "subnet_id", "vnet_address_prefix", "subnet_address_prefix", "os_disk_gb", "os_disk_type",
    "security_type", "spot_eviction_policy", "spot_max_price", "outbound",
    "operation_timeout_s", "polling_interval_s", "base_url", "ca_bundle", "credentials",
    "retail_prices_url",
)


def _image_reference(image: str) -> dict[str, str]:
    """An ARM imageReference from a URN or an image resource id."""
    if image.startswith("/subscriptions/"):
        return {"id": image}
    parts = image.split(":")
    if len(parts) != 4 or not all(parts):
        raise ConfigError(f"azure image {image!r} is not publisher:offer:sku:version or an "
                          "image resource id. To fix: use a URN such as "
                          "'microsoft-dsvm:ubuntu-hpc:2204:latest'.")
    publisher, offer, sku, version = parts
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


# --------------------------------------------------------------------------- names and tags


def vm_name(key: str, region: str) -> str:
    """The deterministic VM name for an idempotency key in a region.

    Linux VM names are 1-64 letters, digits and hyphens. Design choice: the hash
    suffix covers the key *and* the region, because VM names are unique per
    resource group across regions; a key reused for another region after a
    failover must not collide with the VM (or failed VM) left in the first region.
    """
    slug = _NAME_BAD.sub("-", key.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = f"gp-{slug}".rstrip("-")
    return f"{slug[:55].rstrip('-')}-{short_token(f'{key}@{region}', 8)}"


def azure_tags(job: JobLaunch) -> dict[str, str]:
    """The tags every resource this adapter creates carries (names keep their ``:``)."""
    return {_TAG_FORBIDDEN.sub("-", k)[:512]: v[:256] for k, v in job_tags(job).items()}


# Design choice: Linux VMs need a password or an SSH key, and a job VM needs
# neither (the job runs from customData). Unless ``ssh_public_key`` is set, the VM
# gets this RSA-3072 public key, whose private half was discarded when it was
# generated for greenplace: nobody can log in, and prepare() stays deterministic.
NO_LOGIN_SSH_KEY = (
    "ssh-rsa "
    "AAAAB3NzaC1yc2EAAAADAQABAAABgQC84XN/CjFjnKpomChHfQkRHvIUvoNRqY4bCNwbMRTFygaRLyPg"
    "UEZxcjgBXCN5woQIBO1joY3OZsZhLg+QnsYFrO2Z5jqtdlSq6FSou0WTRa7nZu8aZOn2w5vNgQ3PQGD3"
    "vp1XYr6iSVHY9hpxPv8S1fEfLhy8ya5izylqFB7rSEMNprII/DlSJygotLimFVdVb0/BgIIMKynX0cex"
    "k1zqyONMuelj1U4LjNWN9EaWs55W9HodrZlmYXayZLEBybt1m9DRgIPIFHz83KTa+86bHj1fFxkA7m/o"
    "4KfJCMnse7QyvqqbTlVBq09mMIRvS4eVr3DjQaQ05tr7trW92uOuKc2bOQ8x9FrP6UcrEaKm3Ma4Q+qC"
    "qQjm0nMqhyZ+cJTi/+afi4oHEe1tnNu9U+bcAc0owBLj7R43KElws23OA/2ayIF9KjwbL/gbBiKprg8K"
    "Y3p5qlrL33EX/w2cSmGznS6IWg39QC9jZcBejWQko/RXk3Yi55wu28AJa8XMR7U="
    " greenplace-no-login"
)


# --------------------------------------------------------------------------- error mapping


FIXES: dict[type[ProviderError], str] = {
    CapacityError: "nothing in the job; greenplace fails over to the next candidate region, "
                   "or retry later",
    QuotaError: "request a vCPU quota increase for this VM family (and the Spot quota for Spot "
                "VMs) in this region (Portal > Quotas > Compute), or let the job fail over",
    TransientError: "nothing; the call is retried with backoff",
    AuthError: "sign in with `az login`, or set AZURE_CLIENT_ID / AZURE_TENANT_ID / "
               "AZURE_CLIENT_SECRET (or use a managed identity), check the subscription id, "
               "and grant the principal 'Virtual Machine Contributor' and 'Network "
               "Contributor' on the resource group",
    InvalidRequestError: "check the azure settings (subscription_id, resource_group, image, "
                         "subnet_id) and the VM size; a missing resource group is created "
                         "with `az group create -n <name> -l <region>`",
}


def _error(cls: type[ProviderError], message: str, *, operation: str,
           code: str | None) -> ProviderError:
    return provider_error(cls, message, provider=PROVIDER, operation=operation, code=code,
                          fix=FIXES[cls])


def _body_of(exc: HttpResponseError) -> dict[str, Any]:
    response = exc.response
    if response is None:
        return {}
    try:
        body = json.loads(response.text() or "{}")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


def _error_codes(error: dict[str, Any]) -> list[str]:
    """The error's code and the codes of its details, depth first."""
    codes = [str(error["code"])] if error.get("code") else []
    for detail in error.get("details") or []:
        if isinstance(detail, dict):
            codes.extend(_error_codes(detail))
    return codes


def classify(codes: list[str], *, message: str,
             http_status: int | None) -> tuple[type[ProviderError], str | None]:
    """The error class of an ARM error and the code that decided it.

    ``OperationNotAllowed`` is ARM's code for many refusals; only with a quota
    message ("exceeding approved ... Cores quota") is it a quota error.
    """
    if "OperationNotAllowed" in codes and "quota" in message.lower():
        return QuotaError, "OperationNotAllowed"
    for code in codes:
        cls = ERRORS.classify(code)
        if cls is not InvalidRequestError:
            return cls, code
    fallback = codes[0] if codes else (str(http_status) if http_status else None)
    return ERRORS.classify(None, http_status=http_status), fallback


def map_azure_error(exc: Exception, *, operation: str, call: str) -> ProviderError:
    """Map an Azure SDK exception to a ProviderError, reading ``error.code`` from the body.

    ``operation`` is the Provider method (submit, status, ...); ``call`` the ARM call
    that failed, which opens the message.
    """
    if isinstance(exc, HttpResponseError) and exc.response is not None:
        body = _body_of(exc)
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        assert isinstance(error, dict)
        codes = _error_codes(error)
        if not codes and exc.error is not None and getattr(exc.error, "code", None):
            codes = [str(exc.error.code)]
        details = [str(d.get("message")) for d in error.get("details") or []
                   if isinstance(d, dict) and d.get("message")]
        text = " ".join([str(error.get("message") or exc.reason or ""), *details]).strip()
        retry_after = (getattr(exc.response, "headers", None) or {}).get("Retry-After")
        if exc.status_code == 429 and retry_after:
            text += f" (ARM asks to retry after {retry_after} s)"
        cls, code = classify(codes, message=text, http_status=exc.status_code)
        return _error(cls, f"{call}: {text}", operation=operation, code=code)
    if isinstance(exc, ClientAuthenticationError):
        # azure-identity's messages name the credentials it tried, never a secret.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _error(AuthError, f"{call}: Azure credentials are unusable ({first})",
                      operation=operation, code=type(exc).__name__)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return _error(TransientError, f"{call}: Azure Resource Manager could not be reached "
                      f"({type(exc).__name__})", operation=operation, code=type(exc).__name__)
    return _error(InvalidRequestError, f"{call}: {type(exc).__name__}: {exc}",
                  operation=operation, code=type(exc).__name__)


_SDK_ERRORS = (HttpResponseError, ClientAuthenticationError, ServiceRequestError,
               ServiceResponseError)


class _PollDeadline(Exception):
    """The long-running operation outlived the adapter's deadline (not an error)."""


class _DeadlinePolling(ARMPolling):
    """ARM polling that gives up (raises _PollDeadline) at a deadline.

    Design choice: an LROPoller polls in a thread; giving up through the polling
    method ends that thread instead of leaving it polling after submit returned.
    """

    def __init__(self, interval_s: float, *, deadline_s: float, base_url: str) -> None:
        super().__init__(interval_s, path_format_arguments={"endpoint": base_url})
        self._deadline = time.monotonic() + deadline_s

    def _delay(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _PollDeadline()
        self._sleep(min(self._extract_delay(), remaining))


LOOPBACK_TEST_TOKEN = "greenplace-loopback-test-token"


class _LoopbackTestCredential:
    """A TokenCredential for a local ARM fake only (config ``credentials: test-token``)."""

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        return AccessToken(LOOPBACK_TEST_TOKEN, int(time.time()) + 3600)


# --------------------------------------------------------------------------- reading VM models


# Power states of a VM whose provisioning failed before it ever ran: a launch failure.
_NEVER_RAN = ("", "starting", "deallocating", "deallocated", "unknown")
# The most of a serial console log kept in memory: its end, where the marker is.
SERIAL_LOG_TAIL_BYTES = 1024 * 1024


def _text(value: Any) -> str:
    """A model field as plain text (the SDKs hand some fields over as str enums)."""
    if isinstance(value, Enum):
        return str(value.value)
    return "" if value is None else str(value)


def _status_codes(vm: Any) -> list[tuple[str, str]]:
    """(code, message) of the VM's instance-view statuses (empty without the view)."""
    view = vm.instance_view
    statuses = (view.statuses if view is not None else None) or []
    return [(_text(s.code), _text(s.message)) for s in statuses]


def power_state(vm: Any) -> str:
    """The VM's power state (``running``, ``stopped``, ...) or "" when not reported."""
    for code, _ in _status_codes(vm):
        if code.startswith("PowerState/"):
            return code.removeprefix("PowerState/")
    return ""


def _provisioning_failure(vm: Any) -> tuple[str, str] | None:
    """(code, message) when the VM's provisioning failed, read from its instance view."""
    if _text(vm.provisioning_state) != "Failed":
        return None
    for code, message in _status_codes(vm):
        if code.startswith("ProvisioningState/failed/"):
            return code.rsplit("/", 1)[1], message
    return "ProvisioningFailed", "the VM's provisioning failed"


def _failure_error(failure: tuple[str, str], *, operation: str) -> ProviderError:
    code, message = failure
    cls, _ = classify([code], message=message, http_status=None)
    return _error(cls, f"virtualMachines.createOrUpdate: {message}", operation=operation,
                  code=code)


def vm_status(vm: Any) -> InstanceStatus:
    """The provider-neutral state of a VM model, from its own fields only (no exit code).

    Design choice: a VM shut down from inside is ``PowerState/stopped`` (still
    allocated, still billed): that is how the boot script ends, so it is EXITED.
    Deallocated is what the API (or a Spot eviction with policy Deallocate) does:
    PREEMPTED for Spot, TERMINATED otherwise, unless ``status()`` then finds the exit
    marker in the serial log. A provisioning failure before the VM ever ran is a
    LAUNCH_FAILED with the classified error; after it ran, the machine FAILED.
    """
    spot = _text(vm.priority) == "Spot"
    provisioning = _text(vm.provisioning_state)
    power = power_state(vm)
    detail = f"provisioningState {provisioning or '-'}, power {power or '-'}"
    failure = _provisioning_failure(vm)
    if failure is not None:
        detail += f": {failure[0]}: {failure[1]}"
        if power in _NEVER_RAN:
            return InstanceStatus(state=InstanceState.LAUNCH_FAILED, detail=detail,
                                  error=_failure_error(failure, operation="status"))
        return InstanceStatus(state=InstanceState.FAILED, detail=detail)
    gone = InstanceState.PREEMPTED if spot else InstanceState.TERMINATED
    if provisioning == "Deleting" or power in ("deallocating", "deallocated"):
        return InstanceStatus(state=gone, detail=detail)
    if power == "stopped":
        return InstanceStatus(state=InstanceState.EXITED, detail=detail)
    state = {"running": InstanceState.RUNNING,
             "stopping": InstanceState.RUNNING}.get(power, InstanceState.PENDING)
    return InstanceStatus(state=state, detail=detail)


# --------------------------------------------------------------------------- the adapter


class AzureProvider:
    """Launches placed jobs as Azure virtual machines."""

    name = PROVIDER
    features = frozenset({Feature.SPOT, Feature.CANCEL, Feature.TAGS, Feature.STARTUP_SCRIPT,
                          Feature.IDEMPOTENT_SUBMIT})

    def __init__(self, settings: AzureSettings, *,
                 credential: TokenCredential | None = None) -> None:
        """Build the adapter; no network until the first call that needs it.

        Args:
            settings: parsed configuration.
            credential: an explicit TokenCredential (tests); default DefaultAzureCredential.
        """
        self.settings = settings
        self._credential = credential
        self._owns_credential = credential is None
        self._compute: ComputeManagementClient | None = None
        self._network: NetworkManagementClient | None = None
        self._ssh_key = settings.ssh_public_key or NO_LOGIN_SSH_KEY
        self._list_lock = threading.Lock()
        self._listed: tuple[float, list[Any]] | None = None  # (monotonic time, VMs)

    # -- plumbing

    def subscription_id(self) -> str:
        if not self.settings.subscription_id:
            raise ConfigError("No Azure subscription is configured. To fix: set the azure "
                              "'subscription_id' setting or AZURE_SUBSCRIPTION_ID.")
        return self.settings.subscription_id

    def _resolve_credential(self) -> TokenCredential:
        if self._credential is None:
            if self.settings.test_token:
                self._credential = _LoopbackTestCredential()
            else:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
        return self._credential

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            # No SDK retries: a capacity error must fail over at once, and transient
            # errors are retried with backoff by the caller (the queue).
            "retry_total": 0,
            "polling_interval": self.settings.polling_interval_s,
        }
        if self.settings.base_url:
            kwargs["base_url"] = self.settings.base_url
        if self.settings.ca_bundle:
            kwargs["connection_verify"] = self.settings.ca_bundle
        return kwargs

    def compute(self) -> ComputeManagementClient:
        if self._compute is None:
            self._compute = ComputeManagementClient(
                self._resolve_credential(), self.subscription_id(), **self._client_kwargs())
        return self._compute

    def network(self) -> NetworkManagementClient:
        if self._network is None:
            self._network = NetworkManagementClient(
                self._resolve_credential(), self.subscription_id(), **self._client_kwargs())
        return self._network

    def close(self) -> None:
        """Close the HTTP sessions of the clients (and the credential) this adapter opened."""
        for client in (self._compute, self._network):
            if client is not None:
                client.close()
        self._compute = self._network = None
        if self._owns_credential and self._credential is not None:
            close = getattr(self._credential, "close", None)
            if callable(close):
                close()
            self._credential = None

    def _base_url(self) -> str:
        return self.settings.base_url or "https://management.azure.com"

    def _polling(self, deadline_s: float) -> _DeadlinePolling:
        return _DeadlinePolling(self.settings.polling_interval_s, deadline_s=deadline_s,
                                base_url=self._base_url())

    def _ids(self, subscription: str) -> str:
        return (f"/subscriptions/{subscription}/resourceGroups/"
                f"{self.settings.resource_group}/providers")

    # -- Provider protocol

    def check_credentials(self) -> str:
        """Get an ARM token through the credential chain and list the resource group's VMs.

        Returns the subscription and the principal's name or app id (read from the
        token's claims); never the token.
        """
        subscription = self.subscription_id()
        try:
            token = self._resolve_credential().get_token(ARM_SCOPE)
        except _SDK_ERRORS as exc:
            raise map_azure_error(exc, operation="check_credentials", call="get_token") from exc
        try:
            next(iter(self.compute().virtual_machines.list(self.settings.resource_group)), None)
        except _SDK_ERRORS as exc:
            raise map_azure_error(exc, operation="check_credentials",
                                  call="virtualMachines.list") from exc
        claims = _jwt_claims(token.token)
        who = (claims.get("upn") or claims.get("unique_name") or claims.get("appid")
               or claims.get("oid"))
        if isinstance(self._credential, _LoopbackTestCredential):
            who = "test token (local fake endpoint)"
        return (f"subscription {subscription}, resource group {self.settings.resource_group}"
                f" as {who or 'the default credential'}")

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        """The exact ARM request bodies; pure (no network, no credentials needed)."""
        if placement.cloud != PROVIDER:
            raise InvalidRequestError(
                f"the azure adapter was handed a {placement.cloud} placement. "
                "To fix: dispatch through the provider named by the placement's cloud.",
                provider=PROVIDER, operation="prepare", code="WRONG_CLOUD",
            )
        s = self.settings
        key = idempotency_key(job.job_id, job.attempt)
        name = vm_name(key, placement.region)
        sub = s.subscription_id or SUBSCRIPTION_PLACEHOLDER
        net = f"{self._ids(sub)}/Microsoft.Network"
        tags = azure_tags(job)
        region = placement.region
        vnet_name = f"greenplace-{region}"
        subnet_id = s.subnet_id or f"{net}/virtualNetworks/{vnet_name}/subnets/{SUBNET_NAME}"
        nat_name = f"greenplace-{region}-nat"
        nat = None if s.outbound != "nat_gateway" else {
            "name": nat_name,
            "body": {"location": region, "tags": {MANAGED_TAG: "true"},
                     "sku": {"name": "Standard"},
                     "properties": {"idleTimeoutInMinutes": 4, "publicIpAddresses": [
                         {"id": f"{net}/publicIPAddresses/{nat_name}-ip"}]}},
            "publicIp": {"name": f"{nat_name}-ip",
                         "body": _public_ip_body(region, {MANAGED_TAG: "true"}, delete=False)},
        }
        subnet_props: dict[str, Any] = {"addressPrefix": s.subnet_address_prefix,
                                        "defaultOutboundAccess": False}
        if nat is not None:
            subnet_props["natGateway"] = {"id": f"{net}/natGateways/{nat_name}"}
        public_ip = None if s.outbound != "public_ip" else {
            "name": f"{name}-ip", "body": _public_ip_body(region, tags, delete=True)}
        ip_config: dict[str, Any] = {"subnet": {"id": subnet_id},
                                     "privateIPAllocationMethod": "Dynamic"}
        if public_ip is not None:
            ip_config["publicIPAddress"] = {"id": f"{net}/publicIPAddresses/{name}-ip"}
        nic_name = f"{name}-nic"
        payload: dict[str, Any] = {
            "subscriptionId": sub,
            "resourceGroup": s.resource_group,
            "natGateway": nat,
            "virtualNetwork": None if s.subnet_id else {
                "name": vnet_name,
                "body": {
                    "location": region,
                    "tags": {MANAGED_TAG: "true"},
                    "properties": {
                        "addressSpace": {"addressPrefixes": [s.vnet_address_prefix]},
                        "subnets": [{"name": SUBNET_NAME, "properties": subnet_props}],
                    },
                },
            },
            "publicIp": public_ip,
            "networkInterface": {
                "name": nic_name,
                "body": {
                    "location": region,
                    "tags": tags,
                    "properties": {"ipConfigurations": [
                        {"name": "ipconfig1", "properties": ip_config}]},
                },
            },
            "virtualMachine": {
                "name": name,
                "body": self._vm_body(job, placement, name=name, tags=tags,
                                      nic_id=f"{net}/networkInterfaces/{nic_name}"),
            },
        }
        return LaunchRequest(
            provider=PROVIDER, cloud=PROVIDER, region=region,
            instance_type=placement.instance_type, spot=placement.spot, tags=tags,
            startup_script=startup_script(job), payload=payload,
        )

    def _vm_body(self, job: JobLaunch, placement: Placement, *, name: str,
                 tags: dict[str, str], nic_id: str) -> dict[str, Any]:
        s = self.settings
        props: dict[str, Any] = {
            "hardwareProfile": {"vmSize": placement.instance_type},
            "storageProfile": {
                "imageReference": _image_reference(s.image),
                "osDisk": {
                    "name": f"{name}-osdisk", "createOption": "FromImage",
                    "deleteOption": "Delete", "diskSizeGB": s.os_disk_gb,
                    "managedDisk": {"storageAccountType": s.os_disk_type},
                },
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": s.admin_username,
                "customData": base64.b64encode(startup_script(job).encode()).decode(),
                "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    "ssh": {"publicKeys": [{
                        "path": f"/home/{s.admin_username}/.ssh/authorized_keys",
                        "keyData": self._ssh_key,
                    }]},
                },
            },
            "networkProfile": {"networkInterfaces": [{
                "id": nic_id, "properties": {"primary": True, "deleteOption": "Delete"},
            }]},
            # Managed boot diagnostics (no storageUri): the serial console log, where the
            # boot script prints the exit code, is kept by Azure in managed storage.
            "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
        }
        if s.security_type:
            props["securityProfile"] = {"securityType": s.security_type}
        if placement.spot:
            props.update({
                "priority": "Spot",
                "evictionPolicy": s.spot_eviction_policy,
                "billingProfile": {"maxPrice": s.spot_max_price},
            })
        return {"location": placement.region, "tags": tags, "properties": props}

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Find the VM of this key, or create its network, public IP, NIC and VM.

        Waits on ARM for at most ``operation_timeout_s`` in all, then returns the
        handle while the VM's creation may still run (``status()`` follows it).

        Design choice: the VM name comes from the key passed here (and the region),
        and a GET precedes the PUT, so a redelivered dispatch returns the VM the
        first delivery created instead of re-sending a PUT that could reset it. A
        VM whose creation failed (ARM leaves it in provisioningState Failed, with
        its NIC and disk) has its deletion started and its error raised again, so a
        redelivery ends the same way as the first delivery.

        Raises:
            CapacityError, QuotaError, AuthError, TransientError (also: the network
            or NIC still being created at the deadline), InvalidRequestError.
        """
        if request.provider != PROVIDER:
            raise InvalidRequestError(
                f"the azure adapter was handed a {request.provider} request. "
                "To fix: submit through the provider that prepared it.",
                provider=PROVIDER, operation="submit", code="WRONG_PROVIDER",
            )
        deadline = time.monotonic() + self.settings.operation_timeout_s
        self._listed = None  # what this adapter changes, its next listing shows
        sub = self.subscription_id()
        rg = self.settings.resource_group
        payload = _fill_subscription(copy.deepcopy(request.payload), sub)
        name = vm_name(idempotency_key, request.region)
        if payload["virtualMachine"]["name"] != name:  # prepared under another key
            payload = _rename(payload, new=name)
        handle = self._handle(request.region, name, spot=request.spot)

        existing = self._get_vm(name, operation="submit")
        if existing is not None:
            failure = _provisioning_failure(existing)
            if failure is None or power_state(existing) not in _NEVER_RAN:
                return handle
            self._delete_quietly(vm_name=name)
            raise _failure_error(failure, operation="submit")

        network = self.network()
        if payload.get("natGateway") is not None:
            self._ensure_nat_gateway(payload["natGateway"], deadline=deadline)
        if payload["virtualNetwork"] is not None:
            self._ensure_network(payload["virtualNetwork"], deadline=deadline)
        ip, nic = payload.get("publicIp"), payload["networkInterface"]
        vm = payload["virtualMachine"]
        if ip is not None:
            self._create(lambda polling: network.public_ip_addresses.begin_create_or_update(
                rg, ip["name"], ip["body"], polling=polling),
                deadline=deadline, call="publicIPAddresses.createOrUpdate", what=ip["name"])
        self._create(lambda polling: network.network_interfaces.begin_create_or_update(
            rg, nic["name"], nic["body"], polling=polling),
            deadline=deadline, call="networkInterfaces.createOrUpdate", what=nic["name"])
        call = "virtualMachines.createOrUpdate"
        try:
            poller = self.compute().virtual_machines.begin_create_or_update(
                rg, name, vm["body"], polling=self._polling(_left(deadline)))
        except _SDK_ERRORS as exc:  # refused up front: no VM, only the NIC (and IP) to remove
            self._delete_quietly(nic_name=nic["name"], ip_name=ip["name"] if ip else None)
            raise map_azure_error(exc, operation="submit", call=call) from exc
        try:
            poller.wait()
        except _PollDeadline:
            pass  # still creating: status() follows it
        except _SDK_ERRORS as exc:  # the VM exists in state Failed: delete it (NIC, disk)
            self._delete_quietly(vm_name=name)
            raise map_azure_error(exc, operation="submit", call=call) from exc
        return handle

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        """Follow the VM: launch failure, run, exit code, eviction (see ``vm_status``).

        A LAUNCH_FAILED VM is left as it is: the Failed VM is the evidence, and the
        queue deletes it (``delete``) in the pass that records the refusal, so a worker
        that dies in between reads the same answer again instead of a VM that went
        missing. A powered-off VM costs two more calls: the boot diagnostics SAS URL and
        the serial log blob, whose last exit marker is the exit code.
        """
        vm = self._get_vm(handle.instance_id, operation="status")
        if vm is None:
            if handle.extra.get("spot") == "true":
                return InstanceStatus(state=InstanceState.PREEMPTED,
                                      detail="Spot VM was evicted (eviction policy Delete)")
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"no VM {handle.instance_id} in "
                                         f"{self.settings.resource_group}")
        found = vm_status(vm)
        if (found.state is not InstanceState.LAUNCH_FAILED
                and power_state(vm) in ("stopped", "deallocated")
                and _text(vm.provisioning_state) != "Deleting"):
            exit_code = self._exit_code(handle.instance_id)
            if exit_code is not None:
                return InstanceStatus(state=InstanceState.EXITED, detail=found.detail,
                                      exit_code=exit_code)
        return found

    def list_managed(self, region: str) -> list[ManagedInstance]:
        """Every VM tagged ``greenplace:managed`` in ``region``: one paged list call.

        Design choice: ``virtualMachines.list`` of the resource group with
        ``$expand=instanceView`` carries the power states (``list_by_location`` does
        not); the Compute list API filters by no tag, so tag and location are
        filtered here.
        """
        wanted = _location(region)
        found: list[ManagedInstance] = []
        for vm in self._list_vms():
            tags = {str(k): str(v) for k, v in (vm.tags or {}).items()}
            if tags.get(MANAGED_TAG) != "true" or _location(_text(vm.location)) != wanted:
                continue
            job_id, attempt = managed_tags_of(tags)
            found.append(ManagedInstance(
                handle=self._handle(region, _text(vm.name), spot=_text(vm.priority) == "Spot"),
                job_id=job_id, attempt=attempt, status=vm_status(vm)))
        return found

    def delete(self, handle: InstanceHandle) -> bool:
        """Start deleting the VM, then its leftovers; True once none of them exists.

        The VM is deleted first (its NIC, public IP and OS disk carry deleteOption
        Delete and go with it); a NIC or public IP still there once the VM is gone
        (a VM PUT refused up front, a VM created without deleteOption) is deleted
        on a later call, NIC before IP (an IP in use by a NIC cannot be deleted).
        Never waits for a deletion.
        """
        rg = self.settings.resource_group
        name = handle.instance_id
        self._listed = None  # what this adapter changes, its next listing shows
        vm = self._get_vm(name, operation="delete")
        if vm is not None:
            if _text(vm.provisioning_state) != "Deleting":
                self._start_delete(lambda: self.compute().virtual_machines.begin_delete(
                    rg, name, polling=False), call="virtualMachines.delete")
            return False
        network = self.network()
        leftovers: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
            ("networkInterfaces", lambda: network.network_interfaces.get(rg, f"{name}-nic"),
             lambda: network.network_interfaces.begin_delete(rg, f"{name}-nic", polling=False)),
            ("publicIPAddresses", lambda: network.public_ip_addresses.get(rg, f"{name}-ip"),
             lambda: network.public_ip_addresses.begin_delete(rg, f"{name}-ip", polling=False)),
        ]
        for kind, get, start in leftovers:
            try:
                found = get()
            except ResourceNotFoundError:
                continue
            except _SDK_ERRORS as exc:
                raise map_azure_error(exc, operation="delete", call=f"{kind}.get") from exc
            if _text(found.provisioning_state) != "Deleting":
                self._start_delete(start, call=f"{kind}.delete")
            return False
        return True

    # -- helpers

    def _handle(self, region: str, name: str, *, spot: bool) -> InstanceHandle:
        extra = {"resource_group": self.settings.resource_group,
                 "subscription_id": self.subscription_id(), "spot": str(spot).lower()}
        return InstanceHandle(provider=PROVIDER, cloud=PROVIDER, region=region,
                              instance_id=name, zone=None, extra=extra)

    def _get_vm(self, name: str, *, operation: str) -> Any | None:
        """The VM model with its instance view, or None when ARM does not know it."""
        try:
            return self.compute().virtual_machines.get(self.settings.resource_group, name,
                                                       expand="instanceView")
        except ResourceNotFoundError as exc:
            codes = _error_codes(_body_of(exc).get("error") or {})
            if "ResourceGroupNotFound" in codes:
                raise map_azure_error(exc, operation=operation, call="virtualMachines.get") from exc
            return None
        except _SDK_ERRORS as exc:
            raise map_azure_error(exc, operation=operation, call="virtualMachines.get") from exc

    def _list_vms(self) -> list[Any]:
        """Every VM of the resource group, with instance views (pages followed).

        Design choice: the listing holds every region of the group, and a reconcile
        pass asks for its regions one after the other, so a listing younger than
        ``LIST_REUSE_S`` answers again instead of listing the whole group once per
        region. Nothing that acts on a VM reads it (status() and delete() ask anew), and
        this adapter's own submit() and delete() drop it.
        """
        with self._list_lock:
            cached = self._listed
            if cached is not None and time.monotonic() - cached[0] < LIST_REUSE_S:
                return cached[1]
            try:
                vms = list(self.compute().virtual_machines.list(self.settings.resource_group,
                                                                expand="instanceView"))
            except _SDK_ERRORS as exc:
                raise map_azure_error(exc, operation="list_managed",
                                      call="virtualMachines.list") from exc
            self._listed = (time.monotonic(), vms)
            return vms

    def _exit_code(self, name: str) -> int | None:
        """The exit code in the VM's serial console log; None while it is not there."""
        try:
            data = self.compute().virtual_machines.retrieve_boot_diagnostics_data(
                self.settings.resource_group, name, sas_uri_expiration_time_in_minutes=SAS_MINUTES)
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            if exc.status_code == 409:  # boot diagnostics not available (yet) for this VM
                return None
            raise map_azure_error(exc, operation="status",
                                  call="virtualMachines.retrieveBootDiagnosticsData") from exc
        except _SDK_ERRORS as exc:
            raise map_azure_error(exc, operation="status",
                                  call="virtualMachines.retrieveBootDiagnosticsData") from exc
        url = _text(data.serial_console_log_blob_uri)
        text = self._read_serial_log(url) if url else None
        return exit_code_in(text) if text else None

    def _read_serial_log(self, url: str) -> str | None:
        """The end of the serial log blob at a SAS ``url``; None when it cannot be read.

        Design choice: the SAS URL is the credential for the blob, so the request
        carries no Azure token (a bearer token must never reach a storage host) and
        the URL is never logged or put in an error. Plain http is accepted only on
        loopback (the test fake).
        """
        parts = urlsplit(url)
        if parts.scheme != "https" and not (parts.scheme == "http" and is_loopback(url)):
            return None
        context = ssl.create_default_context(cafile=self.settings.ca_bundle)
        request = urllib.request.Request(url, headers={"x-ms-version": "2021-08-06"})
        tail = b""
        try:
            with urllib.request.urlopen(request, timeout=LAUNCH_WAIT_S,  # noqa: S310
                                        context=context) as response:
                while chunk := response.read(64 * 1024):
                    tail = (tail + chunk)[-SERIAL_LOG_TAIL_BYTES:]
        except (OSError, ValueError):  # URLError, HTTPError (404 before the first write)
            return None
        return tail.decode("utf-8", errors="replace")

    def _create(self, start: Callable[[ARMPolling], LROPoller[Any]], *, deadline: float,
                call: str, what: str) -> None:
        """Create (PUT) a resource and wait for it until ``deadline``.

        Raises:
            TransientError: still being created at the deadline (the submit is retried).
            ProviderError: the mapped error of the PUT or of its operation.
        """
        try:
            start(self._polling(_left(deadline))).wait()
        except _PollDeadline:
            raise _error(TransientError, f"{call}: {what} is still being created",
                         operation="submit", code="OperationInProgress") from None
        except _SDK_ERRORS as exc:
            raise map_azure_error(exc, operation="submit", call=call) from exc

    def _ensure_nat_gateway(self, nat: dict[str, Any], *, deadline: float) -> None:
        """Create the region's NAT gateway and its public IP unless it exists."""
        rg = self.settings.resource_group
        network = self.network()
        if self._exists(lambda: network.nat_gateways.get(rg, nat["name"]),
                        call="natGateways.get"):
            return
        ip = nat["publicIp"]
        self._create(lambda polling: network.public_ip_addresses.begin_create_or_update(
            rg, ip["name"], ip["body"], polling=polling),
            deadline=deadline, call="publicIPAddresses.createOrUpdate", what=ip["name"])
        self._create(lambda polling: network.nat_gateways.begin_create_or_update(
            rg, nat["name"], nat["body"], polling=polling),
            deadline=deadline, call="natGateways.createOrUpdate", what=nat["name"])

    def _ensure_network(self, vnet: dict[str, Any], *, deadline: float) -> None:
        """Create the region's virtual network and subnet unless they exist (GET, then PUT).

        An existing subnet is brought to the wanted outbound (its NAT gateway) too.
        """
        rg = self.settings.resource_group
        network = self.network()
        try:
            found = network.virtual_networks.get(rg, vnet["name"])
        except ResourceNotFoundError as exc:
            codes = _error_codes(_body_of(exc).get("error") or {})
            if "ResourceGroupNotFound" in codes:
                raise map_azure_error(exc, operation="submit", call="virtualNetworks.get") from exc
            found = None
        except _SDK_ERRORS as exc:
            raise map_azure_error(exc, operation="submit", call="virtualNetworks.get") from exc
        if found is None:
            self._create(lambda polling: network.virtual_networks.begin_create_or_update(
                rg, vnet["name"], vnet["body"], polling=polling),
                deadline=deadline, call="virtualNetworks.createOrUpdate", what=vnet["name"])
            return
        wanted = vnet["body"]["properties"]["subnets"][0]["properties"]
        subnet = next((s for s in found.subnets or [] if _text(s.name) == SUBNET_NAME), None)
        nat_id = (wanted.get("natGateway") or {}).get("id", "")
        has_nat = subnet is not None and subnet.nat_gateway is not None and (
            _text(subnet.nat_gateway.id).lower() == nat_id.lower())
        if subnet is None or (nat_id and not has_nat):
            self._create(lambda polling: network.subnets.begin_create_or_update(
                rg, vnet["name"], SUBNET_NAME, {"properties": wanted},  # type: ignore[call-overload]
                polling=polling),
                deadline=deadline, call="subnets.createOrUpdate", what=SUBNET_NAME)

    def _exists(self, get: Callable[[], Any], *, call: str) -> bool:
        try:
            get()
        except ResourceNotFoundError:
            return False
        except _SDK_ERRORS as exc:
            raise map_azure_error(exc, operation="submit", call=call) from exc
        return True

    def _start_delete(self, start: Callable[[], Any], *, call: str) -> None:
        """Send a DELETE without waiting for its operation; a resource gone is fine."""
        try:
            start()
        except ResourceNotFoundError:
            return
        except _SDK_ERRORS as exc:
            raise map_azure_error(exc, operation="delete", call=call) from exc

    def _delete_quietly(self, *, vm_name: str | None = None,
                        nic_name: str | None = None, ip_name: str | None = None) -> None:
        """Best-effort clean-up after a failed create: start the deletes, do not wait.

        Deleting the VM also deletes its NIC, public IP and OS disk (deleteOption
        Delete); a NIC and public IP left by a VM PUT refused up front are deleted
        directly (the IP may still be in use while the NIC goes: then ``delete()``
        finds and removes it later).
        """
        rg = self.settings.resource_group
        try:
            if vm_name is not None:
                self.compute().virtual_machines.begin_delete(rg, vm_name, polling=False)
            if nic_name is not None:
                self.network().network_interfaces.begin_delete(rg, nic_name, polling=False)
            if ip_name is not None:
                self.network().public_ip_addresses.begin_delete(rg, ip_name, polling=False)
        except _SDK_ERRORS:
            return


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _location(name: str) -> str:
    """An ARM location in its canonical spelling ("West Europe" -> "westeurope")."""
    return name.replace(" ", "").lower()


def _public_ip_body(region: str, tags: dict[str, str], *, delete: bool) -> dict[str, Any]:
    """A Standard static IPv4 public IP (Standard IPs are closed to inbound by default)."""
    props: dict[str, Any] = {"publicIPAllocationMethod": "Static",
                             "publicIPAddressVersion": "IPv4"}
    if delete:
        props["deleteOption"] = "Delete"  # deleted with the VM that uses it
    return {"location": region, "tags": tags, "sku": {"name": "Standard", "tier": "Regional"},
            "properties": props}


def _fill_subscription(value: Any, subscription: str) -> Any:
    if isinstance(value, str):
        return value.replace(SUBSCRIPTION_PLACEHOLDER, subscription)
    if isinstance(value, list):
        return [_fill_subscription(v, subscription) for v in value]
    if isinstance(value, dict):
        return {k: _fill_subscription(v, subscription) for k, v in value.items()}
    return value


def _rename(payload: dict[str, Any], *, new: str) -> dict[str, Any]:
    """The payload with the VM (and its NIC, public IP, OS disk, host name) renamed."""
    nic = payload["networkInterface"]
    vm = payload["virtualMachine"]
    props = vm["body"]["properties"]
    nic_ref = props["networkProfile"]["networkInterfaces"][0]
    nic_ref["id"] = nic_ref["id"].rsplit("/", 1)[0] + f"/{new}-nic"
    nic["name"] = f"{new}-nic"
    if payload.get("publicIp") is not None:
        payload["publicIp"]["name"] = f"{new}-ip"
        ip_ref = nic["body"]["properties"]["ipConfigurations"][0]["properties"][
            "publicIPAddress"]
        ip_ref["id"] = ip_ref["id"].rsplit("/", 1)[0] + f"/{new}-ip"
    vm["name"] = new
    props["osProfile"]["computerName"] = new
    props["storageProfile"]["osDisk"]["name"] = f"{new}-osdisk"
    return payload


def _jwt_claims(token: str) -> dict[str, Any]:
    """The (unverified) claims of a JWT access token; {} when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


def merged_config(config: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Settings from GREENPLACE_AZURE_SETTINGS, GREENPLACE_AZURE_<KEY>, then ``config``."""
    return merged_settings("AZURE", config, environ, from_env=lambda key: key in _CONFIG_KEYS)


def create(config: Mapping[str, str]) -> AzureProvider:
    """The registry's factory: ``get_provider("azure", config=...)``.

    ``config`` wins over GREENPLACE_AZURE_<KEY> variables, which win over
    GREENPLACE_AZURE_SETTINGS.
    """
    return AzureProvider(AzureSettings.from_config(merged_config(config, os.environ)))
