"""The libcloud adapter: one node per launch on any Apache Libcloud compute driver.

A generic way to reach the many clouds libcloud speaks to (OpenStack
clouds, DigitalOcean, ...) with the same Provider contract as the first-class
adapters. Which driver, which credentials and how offers map to the driver's
sizes and images is configuration:

``driver``                   libcloud provider name (``openstack``, ``digitalocean``, ``dummy``...)
``key_env``                  name of the environment variable that holds the key / user / token
``secret_env``               name of the one that holds the secret / password (optional)
``image`` / ``image.<instance_type>``   image id or name to boot (required)
``size.<instance_type>``     the driver's size (flavor) id or name; default: the instance type
                             (an overlay size is already named as the cloud names it)
``region.<region>``          the driver's name for a placement region; default: the same name
``region_via``               how the region reaches the driver: ``location`` (create_node's
                             location), ``constructor:<kwarg>`` (e.g.
                             ``constructor:ex_force_service_region``) or ``none``
``user_data_arg``            create_node keyword that takes the boot script
``metadata_arg``             create_node keyword that takes the tags as a dict
``capacity_messages`` / ``quota_messages``  extra comma-separated phrases that mark an error
``check_region``             the driver region ``check_credentials`` talks to
``timeout_s``                seconds one HTTP call may take (a timeout is a TransientError);
                             default 30 for openstack and digitalocean, libcloud's own for
                             other drivers (0 keeps libcloud's own)
``clouds``                   comma-separated names of the catalog-overlay clouds this driver
                             launches; default: every cloud the catalog overlay
                             (``GREENPLACE_CATALOG_OVERLAY``) declares
``secure``, ``host``, ``port``, ``api_version``, ``ex_*``  driver constructor options
                             (never secrets: those only come from ``key_env`` / ``secret_env``)

Every plain and ``ex_*`` setting can also come from ``GREENPLACE_LIBCLOUD_<SETTING>``,
and any of them from ``GREENPLACE_LIBCLOUD_SETTINGS``, a JSON object (the way to
give ``size.<instance_type>`` maps through the environment).
Known drivers (``openstack``, ``digitalocean``) get their ``user_data_arg``,
``metadata_arg`` and ``region_via`` defaults from ``DRIVER_PROFILES``.

Idempotency: the node name is derived from the idempotency key
(``node_name``), and ``submit`` lists nodes and returns the one with that name
before creating anything. A driver that renames nodes (libcloud's ``dummy``)
cannot be looked up by name, so the adapter does not declare
IDEMPOTENT_SUBMIT for it.

A libcloud cloud is its own cloud: placement scores it with the figures the user
declared in the catalog overlay (``scheduler/catalog/overlay.py``), and the adapter
launches only placements of such a cloud. A placement on aws / gcp / azure is
refused (InvalidRequestError ``BorrowedRegion``): booting an OpenStack flavor for
"aws:us-east-1" would run in another datacenter than the one whose carbon and
price figures chose it.

Lifecycle: ``submit`` returns as soon as create_node does (an OpenStack server
is then BUILD: PENDING); it never waits for ACTIVE. ``status`` follows the node:
ERROR with a fault from the build ("No valid host was found", a quota, "Build of
instance ... aborted") is LAUNCH_FAILED with the fault classified like a
synchronous error (``classify``), and the ERROR node, which holds quota, is
deleted at once; an ERROR node that had a host and no build fault is FAILED (the
machine failed). A node STOPPED (OpenStack SHUTOFF) is EXITED, its exit code
read from the console log (OpenStack ``os-getConsoleOutput`` through libcloud's
``ex_get_console_output``; None while the marker is not there yet). Other drivers
publish no console: their exit code is always None. ``delete`` calls
destroy_node once (not again while OpenStack shows ``task_state: deleting``) and
is True only once the node is gone. ``list_managed`` lists the region's nodes in
one list_nodes call (libcloud offers no server-side metadata filter) and keeps
those carrying ``greenplace:managed`` in their metadata / tags, or, for drivers
without either, whose name is exactly the ``node_name`` of a greenplace key.

Errors: libcloud keeps a cloud's message and HTTP status but drops its error
code, so the code carried is ``HTTP <status>`` and capacity / quota are read
from the message (``CAPACITY_PHRASES``, ``QUOTA_PHRASES``, extendable by
settings) before the status decides (5xx, 429 and Nova's legacy 413 rate limit
transient, with the ``Retry-After`` seconds in the message; 401 / 403 auth).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import libcloud.common.exceptions
import libcloud.common.types
import requests
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeLocation, NodeSize
from libcloud.compute.providers import DRIVERS, get_driver
from libcloud.compute.types import NodeState

from greenplace.providers.base import (
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
from greenplace.providers.errors import ErrorCodeTable, provider_error, redact
from greenplace.providers.settings import merged_settings, number_setting
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

NAME = "libcloud"
# Longest one HTTP call may take before it counts as a transient failure: a hung endpoint
# must not hold a queue task (libcloud waits forever by default).
HTTP_TIMEOUT_S = 30.0
MAX_NODE_NAME_CHARS = 63  # one DNS label
# Clouds of the embedded catalog, each with its own adapter: never launched through libcloud.
BORROWED_CLOUDS = ("aws", "gcp", "azure")
# Extra tags: which overlay cloud and placement region a node belongs to (list_managed).
CLOUD_TAG, REGION_TAG = "greenplace:cloud", "greenplace:region"
_NAME_OF_KEY = re.compile(r"gp-(?P<job>.+)-a(?P<attempt>\d+)-[0-9a-f]{8}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverProfile:
    """How one libcloud driver takes the boot script, the tags and the region."""

    user_data_arg: str | None = None
    metadata_arg: str | None = None  # a create_node keyword taking a dict of tags
    tag_list_attr: str | None = None  # ex_create_attr key taking a list of "key:value" tags
    region_via: str = "none"
    keeps_names: bool = True  # False: the driver renames nodes, so name look-ups cannot work
    timeout_s: float | None = None  # HTTP timeout handed to the driver (None: libcloud's own)


DRIVER_PROFILES: dict[str, DriverProfile] = {
    "openstack": DriverProfile(user_data_arg="ex_userdata", metadata_arg="ex_metadata",
                               region_via="constructor:ex_force_service_region",
                               timeout_s=HTTP_TIMEOUT_S),
    "digitalocean": DriverProfile(user_data_arg="ex_user_data", tag_list_attr="tags",
                                  region_via="location", timeout_s=HTTP_TIMEOUT_S),
    "dummy": DriverProfile(keeps_names=False),
}

# Phrases (lower case) that mark an error answer as capacity or quota whatever
# its HTTP status: libcloud keeps the cloud's message but not its error code.
CAPACITY_PHRASES = (
    "no valid host", "insufficient capacity", "out of capacity", "not enough hosts",
    "not available in this region", "capacity not available", "out of stock",
    "exhausted all hosts",
)
RATE_LIMIT_PHRASES = ("rate limit", "rate-limited", "ratelimit")
# Fault phrases of a build that failed (rather than a machine that ran and then failed).
BUILD_FAULT_PHRASES = ("build of instance", "exceeded maximum number of retries")
QUOTA_PHRASES = ("quota exceeded", "quota", "limit exceeded", "exceed your", "droplet limit")

# No codes: libcloud errors are classified by phrase + status. Nova's legacy rate limit is a
# 413 ``overLimit`` (a 413 naming a quota is caught by the quota phrases first).
_STATUS_TABLE = ErrorCodeTable(transient_http_statuses=frozenset({413, 429, 500, 502, 503,
                                                                  504}))

_PLAIN_KEYS = (
    "driver", "key_env", "secret_env", "image", "region_via", "user_data_arg", "metadata_arg",
    "capacity_messages", "quota_messages", "secure", "host", "port", "api_version",
    "check_region", "clouds", "timeout_s",
)
_PREFIX_KEYS = ("image.", "size.", "region.", "ex_")
_SECRET_WORDS = ("token", "password", "secret", "passwd", "apikey", "api_key", "credential")

_STATE_MAP: dict[str, InstanceState] = {
    NodeState.RUNNING: InstanceState.RUNNING,
    NodeState.REBOOTING: InstanceState.RUNNING,
    NodeState.RECONFIGURING: InstanceState.RUNNING,
    NodeState.MIGRATING: InstanceState.RUNNING,
    NodeState.UPDATING: InstanceState.RUNNING,
    NodeState.NORMAL: InstanceState.RUNNING,
    NodeState.STOPPING: InstanceState.RUNNING,
    NodeState.STARTING: InstanceState.PENDING,
    NodeState.PENDING: InstanceState.PENDING,
    NodeState.SUSPENDED: InstanceState.PENDING,
    NodeState.PAUSED: InstanceState.PENDING,
    NodeState.UNKNOWN: InstanceState.PENDING,
    NodeState.STOPPED: InstanceState.EXITED,
    NodeState.TERMINATED: InstanceState.TERMINATED,
    NodeState.ERROR: InstanceState.FAILED,
}


def node_name(key: str, *, max_chars: int = MAX_NODE_NAME_CHARS) -> str:
    """A valid hostname label derived from an idempotency key, the same every time.

    Lower-case letters, digits and dashes, starting with a letter, at most
    ``max_chars`` long, ending in 8 hex digits of the key's hash so that keys
    which fold or truncate to the same text still get different names.
    """
    slug = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", key.lower())).strip("-")
    if not slug[:1].isalpha():
        slug = f"gp-{slug}".rstrip("-")
    digest = short_token(key, 8)
    head = slug[: max_chars - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def classify(message: str, http_status: int | None, *, capacity_phrases: tuple[str, ...],
             quota_phrases: tuple[str, ...]) -> type[ProviderError]:
    """The error class of a cloud message: a rate limit (429, or Nova's legacy 413
    "rate-limited") is transient, then capacity / quota phrases, then the status."""
    lower = message.lower()
    if http_status == 429 or any(p in lower for p in RATE_LIMIT_PHRASES):
        return TransientError
    if any(p in lower for p in capacity_phrases):
        return CapacityError
    if any(p in lower for p in quota_phrases):
        return QuotaError
    return _STATUS_TABLE.classify(None, http_status=http_status)


def _fault(node: Node) -> tuple[int | None, str]:
    fault = (node.extra or {}).get("fault")
    if not isinstance(fault, Mapping):
        return None, ""
    code = fault.get("code")
    return (int(code) if isinstance(code, int) else None), str(fault.get("message") or "")


def node_state(node: Node, *, capacity_phrases: tuple[str, ...] = CAPACITY_PHRASES,
               quota_phrases: tuple[str, ...] = QUOTA_PHRASES) -> InstanceStatus:
    """A libcloud node as an InstanceStatus, from the node alone (no exit code).

    An unknown state counts as pending; a node OpenStack is deleting is TERMINATED. An
    ERROR node whose build failed (no host, a build fault, or a capacity / quota fault) is
    LAUNCH_FAILED with the fault classified; any other ERROR node is FAILED.
    """
    extra = node.extra or {}
    if extra.get("task_state") == "deleting":
        return InstanceStatus(state=InstanceState.TERMINATED, detail="being deleted")
    state = _STATE_MAP.get(str(node.state), InstanceState.PENDING)
    detail = f"libcloud state {node.state}"
    code, message = _fault(node)
    if message:
        detail += f": {message}"
    if state is not InstanceState.FAILED:
        return InstanceStatus(state=state, detail=detail)
    cls = classify(message, code, capacity_phrases=capacity_phrases,
                   quota_phrases=quota_phrases)
    lower = message.lower()
    if message and (not extra.get("hostId") or cls in (CapacityError, QuotaError)
                    or any(p in lower for p in BUILD_FAULT_PHRASES)):
        error = provider_error(cls, f"node {node.id} went to ERROR: {message}", provider=NAME,
                               operation="status", code=f"fault {code}" if code else "fault")
        return InstanceStatus(state=InstanceState.LAUNCH_FAILED, detail=detail, error=error)
    return InstanceStatus(state=state, detail=detail)


def _node_tags(node: Node) -> dict[str, str]:
    """greenplace tags of a node: OpenStack metadata, or DigitalOcean-style "key:value" tags."""
    extra = node.extra or {}
    metadata = extra.get("metadata")
    if isinstance(metadata, Mapping):
        return {str(k): str(v) for k, v in metadata.items()}
    tags = extra.get("tags")
    if isinstance(tags, list):
        pairs = (str(t).rpartition(":") for t in tags if str(t).startswith("greenplace:"))
        return {k: v for k, _, v in pairs if k}
    return {}


def key_of_name(name: str) -> tuple[str, int] | None:
    """(job id, attempt) whose key ``node_name`` turns into exactly ``name``, else None."""
    found = _NAME_OF_KEY.fullmatch(name)
    if found is None:
        return None
    job_id, attempt = found["job"], int(found["attempt"])
    return (job_id, attempt) if node_name(idempotency_key(job_id, attempt)) == name else None


def _as_bool(name: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"libcloud setting {name!r} must be true or false, got {value!r}. "
                      "To fix: write true or false.")


def _phrases(extra: str | None, defaults: tuple[str, ...]) -> tuple[str, ...]:
    more = tuple(p.strip().lower() for p in (extra or "").split(",") if p.strip())
    return defaults + more


class LibcloudProvider:
    """A libcloud NodeDriver behind the Provider protocol; drivers cached per region."""

    name = NAME

    def __init__(self, *, settings: Mapping[str, str], environ: Mapping[str, str]) -> None:
        self._settings = dict(settings)
        self._environ = environ
        driver_name = self._settings.get("driver", "")
        if not driver_name:
            raise ConfigError("the libcloud adapter needs a driver name. To fix: set "
                              "`driver` (or GREENPLACE_LIBCLOUD_DRIVER), e.g. openstack.")
        if driver_name not in DRIVERS and driver_name.lower() not in {
                str(d).lower() for d in DRIVERS}:
            raise UnknownNameError("libcloud driver", driver_name, [str(d) for d in DRIVERS],
                                   hint="To fix: use a libcloud compute provider name.")
        if not self._settings.get("key_env"):
            raise ConfigError("the libcloud adapter needs `key_env`, the NAME of the "
                              "environment variable holding the key. To fix: set key_env "
                              "(e.g. OS_USERNAME); never put the key itself in settings.")
        if not (self._settings.get("image") or any(k.startswith("image.")
                                                    for k in self._settings)):
            raise ConfigError("the libcloud adapter needs an image to boot. To fix: set "
                              "`image` (or image.<instance_type>) to an image id or name.")
        self.driver_name = driver_name
        profile = DRIVER_PROFILES.get(driver_name.lower(), DriverProfile())
        self._profile = DriverProfile(
            user_data_arg=self._settings.get("user_data_arg", profile.user_data_arg),
            metadata_arg=self._settings.get("metadata_arg", profile.metadata_arg),
            tag_list_attr=profile.tag_list_attr,
            region_via=self._settings.get("region_via", profile.region_via),
            keeps_names=profile.keeps_names,
            timeout_s=number_setting(NAME, self._settings, "timeout_s", profile.timeout_s or 0,
                                     minimum=0) or None,
        )
        if not (self._profile.region_via in ("none", "location")
                or self._profile.region_via.startswith("constructor:")):
            raise ConfigError(f"libcloud setting region_via={self._profile.region_via!r} is "
                              "unknown. To fix: use location, constructor:<kwarg> or none.")
        features = {Feature.CANCEL}
        if self._profile.keeps_names:
            features.add(Feature.IDEMPOTENT_SUBMIT)
        if self._profile.user_data_arg:
            features.add(Feature.STARTUP_SCRIPT)
        if self._profile.metadata_arg or self._profile.tag_list_attr:
            features.add(Feature.TAGS)
        self.features = frozenset(features)
        self._capacity_phrases = _phrases(self._settings.get("capacity_messages"),
                                          CAPACITY_PHRASES)
        self._quota_phrases = _phrases(self._settings.get("quota_messages"), QUOTA_PHRASES)
        self._clouds = tuple(c.strip().lower() for c in self._settings.get("clouds", "").split(",")
                             if c.strip())
        borrowed = sorted(set(self._clouds) & set(BORROWED_CLOUDS))
        if borrowed:
            raise ConfigError(f"libcloud setting clouds names {', '.join(borrowed)}: a libcloud "
                              "placement never borrows an AWS/GCP/Azure region. To fix: declare "
                              "the libcloud cloud under its own name in a catalog overlay "
                              "(GREENPLACE_CATALOG_OVERLAY) and list that name in `clouds`.")
        self._drivers: dict[str | None, NodeDriver] = {}
        self._catalogs: dict[tuple[str | None, str], list[Any]] = {}
        self._lock = threading.Lock()

    # -- configuration ---------------------------------------------------------------

    def _secrets(self) -> list[str | None]:
        return [self._environ.get(self._settings.get(k, "") or "")
                for k in ("key_env", "secret_env")]

    def driver_region(self, region: str) -> str | None:
        """The driver's own name for a placement region (None when regions are not used)."""
        if self._profile.region_via == "none":
            return None
        return self._settings.get(f"region.{region}", region)

    def _driver(self, driver_region: str | None, *, operation: str) -> NodeDriver:
        with self._lock:
            driver = self._drivers.get(driver_region)
            if driver is not None:
                return driver
            key_env = self._settings["key_env"]
            key = self._environ.get(key_env)
            if not key:
                raise provider_error(
                    AuthError, f"environment variable {key_env} is not set", provider=NAME,
                    operation=operation, code="MissingCredentials",
                    fix=f"export {key_env} (the {self.driver_name} key / user) in the "
                        "environment of the process that launches jobs")
            args: list[Any] = [key]
            secret_env = self._settings.get("secret_env")
            if secret_env:
                secret = self._environ.get(secret_env)
                if not secret:
                    raise provider_error(
                        AuthError, f"environment variable {secret_env} is not set",
                        provider=NAME, operation=operation, code="MissingCredentials",
                        fix=f"export {secret_env} (the {self.driver_name} secret)")
                args.append(secret)
            options: dict[str, Any] = {}
            for name, value in self._settings.items():
                if name.startswith("ex_") or name in ("host", "api_version"):
                    options[name] = value
                elif name == "port":
                    options[name] = int(value)
                elif name == "secure":
                    options[name] = _as_bool(name, value)
            if self._profile.timeout_s:
                options["timeout"] = self._profile.timeout_s
            if self._profile.region_via.startswith("constructor:") and driver_region:
                options[self._profile.region_via.split(":", 1)[1]] = driver_region
            try:
                driver = get_driver(self.driver_name)(*args, **options)
            except Exception as exc:  # TypeError, LibcloudError, ValueError...
                raise ConfigError(f"libcloud driver {self.driver_name!r} refused the settings: "
                                  f"{redact(str(exc), self._secrets())}. To fix: pass only "
                                  "constructor options this driver takes.") from exc
            self._drivers[driver_region] = driver
            return driver

    def _wrap(self, exc: BaseException, *, operation: str, call: str) -> ProviderError:
        """A libcloud / transport exception as the matching ProviderError."""
        message = redact(f"{call}: {getattr(exc, 'message', None) or exc}", self._secrets())
        status: int | None = None
        if isinstance(exc, libcloud.common.exceptions.BaseHTTPError):
            status = int(exc.code)
            retry_after_s = (exc.headers or {}).get("retry-after")
            if retry_after_s:
                message += f" (the cloud asks to retry after {retry_after_s} s)"
        elif isinstance(exc, libcloud.common.types.ProviderError):
            status = int(exc.http_code)
            message = redact(f"{call}: {exc.value}", self._secrets())
        if isinstance(exc, libcloud.common.types.InvalidCredsError):
            cls: type[ProviderError] = AuthError
        elif isinstance(exc, (libcloud.common.types.MalformedResponseError,
                              requests.exceptions.RequestException, ConnectionError,
                              TimeoutError)):
            cls = TransientError
        else:
            cls = classify(message, status, capacity_phrases=self._capacity_phrases,
                           quota_phrases=self._quota_phrases)
        code = f"HTTP {status}" if status is not None else type(exc).__name__
        return provider_error(cls, message, provider=NAME, operation=operation, code=code)

    def _listed(self, driver_region: str | None, what: str, *, operation: str) -> list[Any]:
        """Sizes or images of a region, listed once per adapter (they rarely change)."""
        cache_key = (driver_region, what)
        if cache_key not in self._catalogs:
            driver = self._driver(driver_region, operation=operation)
            try:
                items = driver.list_sizes() if what == "sizes" else driver.list_images()
            except Exception as exc:  # libcloud raises many unrelated types
                raise self._wrap(exc, operation=operation, call=f"list {what}") from exc
            self._catalogs[cache_key] = list(items)
        return self._catalogs[cache_key]

    def _pick(self, items: list[Any], wanted: str, what: str) -> Any:
        for item in items:
            if str(item.id) == wanted:
                return item
        for item in items:
            if item.name == wanted:
                return item
        known = [str(i.name) for i in items] + [str(i.id) for i in items]
        raise UnknownNameError(f"{self.driver_name} {what}", wanted, known,
                               hint=f"To fix: map the instance type to one of the driver's "
                                    f"{what}s with the `{what}.<instance_type>` setting.")

    # -- Provider --------------------------------------------------------------------

    def check_credentials(self) -> str:
        """Build the driver from the configured env variables and list sizes with it."""
        key_env = self._settings["key_env"]
        region = self._settings.get("check_region")
        sizes = self._listed(region, "sizes", operation="check_credentials")
        return (f"{self.driver_name} driver, key from ${key_env}"
                + (f" and secret from ${self._settings['secret_env']}"
                   if self._settings.get("secret_env") else "")
                + f" ({len(sizes)} sizes visible)")

    def served_clouds(self) -> tuple[str, ...]:
        """The overlay clouds this adapter launches: the ``clouds`` setting, else every
        cloud the catalog overlay declares (the catalog's clouds beyond aws / gcp / azure)."""
        if self._clouds:
            return self._clouds
        from greenplace.scheduler.catalog import load_catalog  # the overlay, read once

        return tuple(sorted({r.cloud for r in load_catalog().regions} - set(BORROWED_CLOUDS)))

    def _check_cloud(self, placement: Placement) -> None:
        where = f"{placement.cloud}:{placement.region}"
        if placement.cloud in BORROWED_CLOUDS:
            raise provider_error(
                InvalidRequestError, f"placement {where} was given to the libcloud adapter, "
                "but a libcloud placement never borrows an AWS/GCP/Azure region: its carbon "
                "and price figures describe another datacenter", provider=NAME,
                operation="prepare", code="BorrowedRegion",
                fix="declare the libcloud cloud with its own regions and sizes in a catalog "
                    "overlay (GREENPLACE_CATALOG_OVERLAY, see examples/catalog-overlay.yaml) "
                    f"and route {placement.cloud} to its own adapter")
        served = self.served_clouds()
        if placement.cloud not in served:
            raise provider_error(
                InvalidRequestError, f"placement {where} is on a cloud this libcloud adapter "
                f"does not launch (it launches: {', '.join(served) or 'none'})",
                provider=NAME, operation="prepare", code="UndeclaredCloud",
                fix=f"declare {placement.cloud} in the catalog overlay "
                    "(GREENPLACE_CATALOG_OVERLAY) and list it in the libcloud `clouds` setting")

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        """The create_node call for ``job`` at ``placement``, with ids. Pure: no network.

        Raises:
            InvalidRequestError: the placement is on aws / gcp / azure
                (``BorrowedRegion``) or on a cloud this adapter does not serve
                (``UndeclaredCloud``), or asks for spot (libcloud has no generic
                spot market).
        """
        self._check_cloud(placement)
        if placement.spot:
            raise provider_error(
                InvalidRequestError, "spot capacity was asked for, but the libcloud adapter "
                "launches on-demand nodes only", provider=NAME, operation="prepare",
                code="SpotUnsupported",
                fix="use a policy that allows on-demand, or a cloud adapter with spot")
        instance_type = placement.instance_type
        script = startup_script(job)
        tags = {**job_tags(job), CLOUD_TAG: placement.cloud, REGION_TAG: placement.region}
        key = idempotency_key(job.job_id, job.attempt)
        call: dict[str, Any] = {
            "name": node_name(key),
            "size": self._settings.get(f"size.{instance_type}", instance_type),
            "image": self._settings.get(f"image.{instance_type}") or self._settings["image"],
        }
        driver_region = self.driver_region(placement.region)
        if self._profile.region_via == "location" and driver_region:
            call["location"] = driver_region
        if self._profile.user_data_arg:
            call[self._profile.user_data_arg] = script
        if self._profile.metadata_arg:
            call[self._profile.metadata_arg] = dict(tags)
        if self._profile.tag_list_attr:
            call["ex_create_attr"] = {self._profile.tag_list_attr: [
                re.sub(r"[^A-Za-z0-9:_-]", "_", f"{k}:{v}")[:255] for k, v in tags.items()]}
        return LaunchRequest(
            provider=NAME, cloud=placement.cloud, region=placement.region,
            instance_type=instance_type, spot=False, tags=tags, startup_script=script,
            payload={"driver": self.driver_name, "driver_region": driver_region,
                     "create_node": call},
        )

    def _find_by_name(self, driver: NodeDriver, name: str, *, operation: str) -> Node | None:
        try:
            nodes = [n for n in driver.list_nodes() if n.name == name]
        except Exception as exc:
            raise self._wrap(exc, operation=operation, call="list nodes") from exc
        nodes.sort(key=lambda n: str(n.state) != NodeState.TERMINATED, reverse=True)
        return nodes[0] if nodes else None

    def _handle(self, request: LaunchRequest, node: Node, name: str) -> InstanceHandle:
        return InstanceHandle(
            provider=NAME, cloud=request.cloud, region=request.region,
            instance_id=str(node.id), zone=(node.extra or {}).get("availability_zone"),
            extra={"node_name": name, "driver": self.driver_name,
                   "driver_region": request.payload.get("driver_region") or ""},
        )

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Return the node named after the key if it exists, else create_node.

        Design choice: sizes and images are looked up by id or name in the
        driver's own lists (cached per adapter) instead of being built from bare
        ids: a wrong mapping then fails before anything is created, with the
        driver's real names in the message.
        """
        if request.provider != NAME:
            raise provider_error(
                InvalidRequestError, f"request was prepared by {request.provider!r}",
                provider=NAME, operation="submit", code="WrongProvider",
                fix="submit a request with the adapter that prepared it")
        driver_region = request.payload.get("driver_region")
        driver = self._driver(driver_region, operation="submit")
        call = dict(request.payload["create_node"])
        name = node_name(idempotency_key)
        call["name"] = name
        existing = self._find_by_name(driver, name, operation="submit")
        if existing is not None:
            return self._handle(request, existing, name)
        try:
            size: NodeSize = self._pick(
                self._listed(driver_region, "sizes", operation="submit"), call["size"], "size")
            image: NodeImage = self._pick(
                self._listed(driver_region, "images", operation="submit"), call["image"],
                "image")
        except UnknownNameError as exc:
            raise provider_error(InvalidRequestError, str(exc), provider=NAME,
                                 operation="submit", code="UnknownSizeOrImage",
                                 fix="correct the size./image. settings") from exc
        call["size"], call["image"] = size, image
        if "location" in call:
            call["location"] = NodeLocation(id=call["location"], name=call["location"],
                                            country="", driver=driver)
        try:
            node = driver.create_node(**call)
        except Exception as exc:
            raise self._wrap(exc, operation="submit", call="create node") from exc
        return self._handle(request, node, name)

    def _node(self, handle: InstanceHandle, *, operation: str) -> Node | None:
        driver = self._driver(handle.extra.get("driver_region") or None, operation=operation)
        try:
            getter = getattr(driver, "ex_get_node_details", None)
            if getter is not None:
                found: Node | None = getter(handle.instance_id)
                return found
            return next((n for n in driver.list_nodes() if str(n.id) == handle.instance_id),
                        None)
        except libcloud.common.exceptions.BaseHTTPError as exc:
            if int(exc.code) == 404:
                return None
            raise self._wrap(exc, operation=operation, call="get node") from exc
        except Exception as exc:
            raise self._wrap(exc, operation=operation, call="get node") from exc

    def _node_status(self, node: Node) -> InstanceStatus:
        return node_state(node, capacity_phrases=self._capacity_phrases,
                          quota_phrases=self._quota_phrases)

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        """The node's state: MISSING when the driver no longer knows it, EXITED with the
        exit code read from the console, LAUNCH_FAILED when its build failed.

        The ERROR node is left as it is (it holds quota until deleted): the queue deletes
        it in the pass that records the refusal, so a worker that dies in between reads
        the same answer again rather than a node that went missing."""
        node = self._node(handle, operation="status")
        if node is None:
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"node {handle.instance_id} is unknown to the driver")
        status = self._node_status(node)
        if status.state is InstanceState.EXITED:
            code = self._exit_code(node)
            detail = status.detail + ("" if code is not None else
                                      "; no exit code on the console (yet)")
            return InstanceStatus(state=InstanceState.EXITED, detail=detail, exit_code=code)
        return status

    def _exit_code(self, node: Node) -> int | None:
        """The exit code the boot script printed on the console, None while absent or where
        the driver publishes no console (every driver but OpenStack)."""
        reader = getattr(node.driver, "ex_get_console_output", None)
        if reader is None:
            return None
        try:
            output = reader(node)
        except libcloud.common.exceptions.BaseHTTPError as exc:
            if int(exc.code) in (404, 409):  # gone, or not ready: nothing to read yet
                return None
            raise self._wrap(exc, operation="status", call="console output") from exc
        except Exception as exc:
            raise self._wrap(exc, operation="status", call="console output") from exc
        text = output.get("output", "") if isinstance(output, Mapping) else output
        return exit_code_in(str(text or ""))

    def _destroy(self, node: Node, *, operation: str) -> None:
        """destroy_node, once: not again while the cloud is already deleting the node."""
        if (node.extra or {}).get("task_state") == "deleting":
            return
        try:
            node.driver.destroy_node(node)
        except libcloud.common.exceptions.BaseHTTPError as exc:
            if int(exc.code) == 404:
                return
            raise self._wrap(exc, operation=operation, call="destroy node") from exc
        except Exception as exc:
            raise self._wrap(exc, operation=operation, call="destroy node") from exc

    def delete(self, handle: InstanceHandle) -> bool:
        """destroy_node; True once the driver no longer shows the node (the node is all
        the adapter creates: the cloud removes its port and root disk with it).

        Design choice: one re-read after the destroy call, so a driver that deletes at
        once (dummy) confirms in the same call, and an OpenStack server still
        ``deleting`` answers False without another destroy on the next call.
        """
        node = self._node(handle, operation="delete")
        if node is None or str(node.state) == NodeState.TERMINATED:
            return True
        self._destroy(node, operation="delete")
        again = self._node(handle, operation="delete")
        return again is None or str(again.state) == NodeState.TERMINATED

    def list_managed(self, region: str) -> list[ManagedInstance]:
        """Every greenplace node of ``region`` from one list_nodes call (no exit codes).

        A node counts when its metadata / tags say ``greenplace:managed`` (and name this
        region, where they name one), or, on a driver without either, when its name is the
        ``node_name`` of a greenplace key. Where regions do not reach the driver
        (``region_via: none``) the one node list serves every region.
        """
        driver_region = self.driver_region(region)
        driver = self._driver(driver_region, operation="list_managed")
        try:
            nodes = driver.list_nodes()
        except Exception as exc:
            raise self._wrap(exc, operation="list_managed", call="list nodes") from exc
        served = self._clouds or None
        found: list[ManagedInstance] = []
        for node in nodes:
            tags = _node_tags(node)
            if tags:
                if tags.get("greenplace:managed") != "true" or tags.get(REGION_TAG,
                                                                         region) != region:
                    continue
                job_id, attempt = managed_tags_of(tags)
                cloud = tags.get(CLOUD_TAG, "")
            else:
                from_name = key_of_name(str(node.name))
                if from_name is None:
                    continue
                job_id, attempt = from_name
                served = served or self.served_clouds()
                cloud = served[0] if len(served) == 1 else ""
            handle = InstanceHandle(
                provider=NAME, cloud=cloud, region=region, instance_id=str(node.id),
                zone=(node.extra or {}).get("availability_zone"),
                extra={"node_name": str(node.name), "driver": self.driver_name,
                       "driver_region": driver_region or ""})
            found.append(ManagedInstance(handle=handle, job_id=job_id, attempt=attempt,
                                         status=self._node_status(node)))
        return found


def _settings(config: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Settings from, in rising precedence: GREENPLACE_LIBCLOUD_SETTINGS (a JSON object),
    GREENPLACE_LIBCLOUD_<KEY> for plain and ``ex_*`` keys, then ``config``."""
    merged = merged_settings("LIBCLOUD", config, environ,
                             from_env=lambda key: key in _PLAIN_KEYS or key.startswith("ex_"))
    settings: dict[str, str] = {}
    known = [*_PLAIN_KEYS, *(p + "<...>" for p in _PREFIX_KEYS)]
    for key, value in merged.items():
        if key not in _PLAIN_KEYS and not key.startswith(_PREFIX_KEYS):
            raise UnknownNameError("libcloud adapter setting", key, known,
                                   hint=f"To fix: use one of {known}.")
        if key.startswith("ex_") and any(w in key.lower() for w in _SECRET_WORDS):
            raise ConfigError(
                f"libcloud setting {key!r} looks like a secret; settings are printed by "
                "dry runs and stored with jobs. To fix: put secrets in environment variables "
                "named by key_env / secret_env.")
        settings[key] = str(value).strip()
    return settings


def create(config: Mapping[str, str]) -> LibcloudProvider:
    """Build the adapter from settings (``config`` wins over GREENPLACE_LIBCLOUD_* env).

    Raises:
        ConfigError / UnknownNameError: a missing or unknown setting or driver.
    """
    return LibcloudProvider(settings=_settings(config, os.environ), environ=os.environ)
