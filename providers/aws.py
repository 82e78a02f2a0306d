"""The AWS adapter: one EC2 instance per launch, through boto3.

What it sends (``prepare()`` builds it; ``submit()`` sends exactly that):
``RunInstances`` in the placed region with the offer's instance type, a Deep
Learning AMI, the job's boot script as user data, the greenplace tags on the
instance and its volumes, IMDSv2 required (hop limit 2, so that containers on
the instance reach it), the instance-initiated shutdown behaviour (see
``shutdown_behavior``), and ``InstanceMarketOptions`` (one-time spot, terminate
on interruption) when the placement is spot.

The life of a launch on EC2 (the Provider protocol, ``providers/base.py``):

- ``submit()`` makes one RunInstances per configured subnet (one per
  Availability Zone), moving to the next subnet on a synchronous capacity error.
  EC2 answers RunInstances at once, so no call waits on the cloud.
- ``status()`` maps the instance state and its state reason: a launch that EC2
  accepted and then abandoned (``pending -> terminated`` with
  ``Server.InsufficientInstanceCapacity``) is LAUNCH_FAILED with a CapacityError
  (design choice: not relaunched in the next subnet by status(), which does not
  hold the request; EC2 almost always refuses capacity synchronously, and the
  queue fails over); an instance that powered itself off (``Client.InstanceInitiatedShutdown``) is
  EXITED with the exit code read back through ``GetConsoleOutput``.
- ``InvalidInstanceID.NotFound`` within ``EVENTUAL_CONSISTENCY_WINDOW_S`` of the
  launch is EC2's documented eventual consistency, not an absence: status() reads
  PENDING and delete() returns False until the window has passed.
- ``delete()`` terminates the instance, then deletes any volume tagged with the
  launch's idempotency key that survived it; True once DescribeInstances shows
  the instance terminated (or unknown past the window) and no such volume is left.
- ``list_managed()`` is one paginated DescribeInstances filtered server-side on
  ``tag:greenplace:managed=true`` (pages of LIST_PAGE_SIZE). Eventual consistency
  applies here too: an instance launched moments ago may be missing from it.
- ``regions_not_enabled()`` (not part of the protocol) names the opt-in regions
  the account has not enabled, for placement to leave out.

Credentials come from boto3's own default chain (environment, shared files,
SSO, instance or task role); this module never reads, prints or stores one.
Endpoints follow the standard ``AWS_ENDPOINT_URL_EC2`` / ``AWS_ENDPOINT_URL``
variables that botocore honours, which is how tests aim it at a moto server.

Settings (``create(config)``; the plain ones also from ``GREENPLACE_AWS_<KEY>``, and
any of them from ``GREENPLACE_AWS_SETTINGS``, a JSON object):

``image_id``            an AMI id or ``resolve:ssm:<parameter>`` for every region
``image_id.<region>``   the same for one region (wins over ``image_id``)
``ami_parameter``       the SSM public parameter to resolve (default: by family)
``key_name``            an EC2 key pair to install
``instance_profile``    IAM instance profile name or ARN for the instance
``subnet_ids.<region>`` comma-separated subnet ids, one per Availability Zone, tried
                        in turn on a capacity error (default: the default VPC)
``subnet_id.<region>``  one subnet id: a one-item ``subnet_ids`` (which wins when both are set)
``security_group_ids.<region>``  comma-separated group ids
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from greenplace.providers.base import (
    USER_DATA_LIMITS_BYTES,
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
from greenplace.providers.settings import merged_settings
from greenplace.scheduler.exceptions import (
    AuthError,
    CapacityError,
    InvalidRequestError,
    ProviderError,
    RegionRefusedError,
    TransientError,
    UnknownNameError,
)

NAME = "aws"
log = logging.getLogger(__name__)

# Deep Learning AMIs, resolved per region by EC2 itself from these public SSM
# parameters (``ImageId="resolve:ssm:<name>"``). Base images carry the NVIDIA
# (or Neuron) driver, CUDA, Docker and the NVIDIA container toolkit.
DLAMI_PARAMETER_X86_64 = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"
)
DLAMI_PARAMETER_ARM64 = (
    "/aws/service/deeplearning/ami/arm64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)
DLAMI_PARAMETER_NEURON = "/aws/service/neuron/dlami/multi-framework/ubuntu-24.04/latest/image_id"
# The OSS-driver DLAMIs do not list P3 (V100, pre-Turing: NVIDIA's open kernel
# modules need Turing or newer). The "Deep Learning Base Proprietary Nvidia Driver
# AMI (Amazon Linux 2)" lists P3 and P3dn; its parameter follows the DLAMI naming
# rule (the AMI name without "deep", "learning", "ami").
DLAMI_PARAMETER_PROPRIETARY = (
    "/aws/service/deeplearning/ami/x86_64/base-proprietary-nvidia-driver-amazon-linux-2"
    "/latest/ami-id"
)
ARM64_FAMILIES = frozenset({"g5g", "p6e-gb200", "p6e-gb300"})
NEURON_FAMILIES = frozenset({"inf1", "inf2", "trn1", "trn1n", "trn2", "trn2u"})
PROPRIETARY_DRIVER_FAMILIES = frozenset({"p3", "p3dn"})

# Tag holding the idempotency key; ``submit`` looks instances up by it and
# ``delete`` finds the launch's volumes by it.
KEY_TAG = "greenplace:idempotency-key"
MANAGED_TAG = "greenplace:managed"
MAX_USER_DATA_BYTES = USER_DATA_LIMITS_BYTES[NAME]  # EC2's limit, before base64
MAX_CLIENT_TOKEN_CHARS = 64  # EC2's limit, ASCII
# IMDSv2 answers a PUT only this many network hops away; 2 lets a container on the
# instance (one bridge hop) read its role credentials, as the EC2 guide advises.
IMDS_HOP_LIMIT = 2

# EC2's API is eventually consistent: "Eventual consistency in the Amazon EC2 API"
# advises retrying a Describe after InvalidInstanceID.NotFound with a backoff
# "increasing gradually up to about five minutes". Within this long after the
# launch, an unknown id is an instance not visible yet; after it, one that is gone.
EVENTUAL_CONSISTENCY_WINDOW_S = 300.0
# How long ``regions_not_enabled`` trusts one DescribeRegions answer (enabling a
# region takes minutes to hours, so a quarter of an hour is fresh enough).
REGIONS_CACHE_S = 900.0
REGIONS_ERROR_CACHE_S = 60.0  # after a failed DescribeRegions: placement asks at every job
# DescribeInstances page size for list_managed (EC2 allows 5..1000 with filters).
LIST_PAGE_SIZE = 1000
# ``InstanceHandle.extra`` keys: the launch time (ISO 8601, from EC2) and the id it
# was recorded for (a handle rebuilt with another id carries no launch time).
LAUNCHED_AT = "launched_at"
LAUNCHED_ID = "launched_instance_id"

ERROR_CODES = ErrorCodeTable(
    capacity=frozenset({
        "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
        "Unsupported", "SpotMaxPriceTooLow",
        # State reasons of a launch EC2 accepted and then abandoned (see LAUNCH_FAILURES).
        "Server.InsufficientInstanceCapacity", "Server.InternalError",
    }),
    quota=frozenset({
        "InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
        "Client.VolumeLimitExceeded",
    }),
    transient=frozenset({
        "RequestLimitExceeded", "InternalError", "ServiceUnavailable", "Unavailable",
        "InternalFailure", "Throttling", "ThrottlingException", "TooManyRequestsException",
    }),
    auth=frozenset({
        "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
        "ExpiredToken", "RequestExpired", "AccessDenied", "AccessDeniedException",
    }),
)

# Fixes for codes whose default advice would mislead.
FIXES = {
    "IdempotentParameterMismatch": (
        "EC2 already holds a launch with this ClientToken (job id + attempt) made with other "
        "parameters: the adapter settings (image, subnet, instance profile...) changed between "
        "two deliveries of the same attempt. Keep the settings stable while jobs are in flight, "
        "or resubmit the job so that it gets a new attempt"
    ),
    "VPCIdNotSpecified": (
        "the region has no default VPC: set `subnet_ids.<region>` (one subnet per "
        "Availability Zone, e.g. in GREENPLACE_AWS_SETTINGS) so that launches have a network"
    ),
    "OptInRequired": (
        "enable the region for the account (AWS console > Account > AWS Regions) or keep it "
        "out of the policy; meanwhile greenplace fails over to the next candidate"
    ),
    "Client.InternalError": (
        "check that the launch's volumes can be created: an encrypted EBS default needs a KMS "
        "key the caller may use (kms:CreateGrant, kms:Decrypt)"
    ),
    "Client.InvalidSnapshot.NotFound": (
        "the image refers to a snapshot that no longer exists: use another `image_id` / "
        "`ami_parameter`"
    ),
}

# State reasons that end a launch EC2 first accepted ("StateReason" in the EC2
# API reference: each says "during launch" or is a launch-time limit). The
# instance went pending -> terminated; the class decides what the queue does.
LAUNCH_FAILURES = frozenset({
    "Server.InsufficientInstanceCapacity", "Server.InternalError", "Client.VolumeLimitExceeded",
    "Client.InternalError", "Client.InvalidSnapshot.NotFound",
})

# Design choice: create calls make exactly one attempt. botocore's default retry
# modes retry HTTP 500/503 answers, and EC2 answers InsufficientInstanceCapacity
# with 500: three attempts would triple the time to fail over for nothing, and the
# queue owns retries (with backoff) for TransientError anyway. Reads and
# terminations are idempotent and keep a few standard-mode attempts.
CREATE_CONFIG = botocore.config.Config(
    retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=30,
)
READ_CONFIG = botocore.config.Config(
    retries={"total_max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=30,
)

_CONNECTION_ERRORS = (
    botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ProxyConnectionError,
)
_CREDENTIAL_ERRORS = (
    botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError, botocore.exceptions.TokenRetrievalError,
)
_SDK_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
NOT_FOUND = "InvalidInstanceID.NotFound"

SPOT_REASONS = frozenset({
    "Server.SpotInstanceTermination", "Server.SpotInstanceShutdown",
    "Server.SpotInstanceHibernation",
})

_PLAIN_KEYS = ("image_id", "ami_parameter", "key_name", "instance_profile")
_REGIONAL_KEYS = ("image_id.", "subnet_id.", "subnet_ids.", "security_group_ids.")


def client_token(key: str) -> str:
    """The EC2 ClientToken for an idempotency key (at most 64 printable ASCII characters).

    A short printable key is used as is (readable in the console); anything
    longer or outside ASCII becomes ``gp-`` plus a SHA-256 prefix of it.
    """
    if len(key) <= MAX_CLIENT_TOKEN_CHARS and key.isascii() and key.isprintable():
        return key
    return "gp-" + short_token(key, MAX_CLIENT_TOKEN_CHARS - 3)


def launch_token(key: str, subnet_id: str | None) -> str:
    """The ClientToken of one RunInstances: the key, plus the subnet when there is one.

    Design choice: each subnet tried for one attempt gets its own token, so that a
    launch refused in one subnet can be retried in the next one (EC2 would answer
    IdempotentParameterMismatch to the same token with another subnet), while a
    redelivered call for the same subnet still finds the first launch.
    """
    return client_token(key if not subnet_id else f"{key}@{subnet_id}")


def default_ami_parameter(instance_type: str) -> str:
    """The public SSM parameter of the Deep Learning AMI that fits ``instance_type``."""
    family = instance_type.split(".", 1)[0]
    if family in NEURON_FAMILIES:
        return DLAMI_PARAMETER_NEURON
    if family in ARM64_FAMILIES:
        return DLAMI_PARAMETER_ARM64
    if family in PROPRIETARY_DRIVER_FAMILIES:
        return DLAMI_PARAMETER_PROPRIETARY
    return DLAMI_PARAMETER_X86_64


def shutdown_behavior(*, spot: bool) -> str:
    """What EC2 does when the boot script powers the instance off.

    Design choice: ``stop`` for on-demand instances. A stopped instance keeps its
    id, its console output ("available for at least one hour after the most
    recent post", GetConsoleOutput reference) and its state reason, and costs
    only its EBS volume until greenplace has read the exit code and terminates
    it (the queue always deletes after reading). ``terminate`` would also post
    the output, but leave greenplace racing EC2's clean-up of terminated
    instances. Spot instances must use ``terminate``: EC2 refuses ``stop`` for
    spot instances of a one-time request ("You can only stop Spot Instances
    associated with persistent Spot Instance requests"); their console output is
    still posted on termination and stays readable for the hour the terminated
    instance remains visible.
    """
    return "terminate" if spot else "stop"


def _subnet_list(raw: str) -> list[str]:
    return [s.strip() for s in raw.split(",") if s.strip()]


def _settings(config: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """Settings from, in rising precedence: GREENPLACE_AWS_SETTINGS (a JSON object),
    GREENPLACE_AWS_<KEY> for the plain keys, then ``config``."""
    known = [*_PLAIN_KEYS, *(k + "<region>" for k in _REGIONAL_KEYS)]
    merged = merged_settings("AWS", config, environ, from_env=lambda key: key in _PLAIN_KEYS)
    settings: dict[str, str] = {}
    for key, value in merged.items():
        if key not in _PLAIN_KEYS and not key.startswith(_REGIONAL_KEYS):
            raise UnknownNameError("aws adapter setting", key, known,
                                   hint=f"To fix: use one of {known}.")
        settings[key] = str(value).strip()
    return settings


def _error_code(exc: Exception) -> str | None:
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code") or None
    return None


def _instances(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]


def _tags(instance: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t.get("Value", "") for t in instance.get("Tags", []) or []}


class AwsProvider:
    """EC2 through boto3. Thread-safe: one boto3 session, clients cached per region."""

    name = NAME
    features = frozenset({
        Feature.SPOT, Feature.CANCEL, Feature.TAGS, Feature.STARTUP_SCRIPT,
        Feature.IDEMPOTENT_SUBMIT,
    })

    def __init__(self, *, settings: Mapping[str, str]) -> None:
        self._settings = dict(settings)
        self._session = boto3.session.Session()
        self._clients: dict[tuple[str, str, bool], Any] = {}
        self._lock = threading.Lock()
        self._regions_cache: tuple[float, frozenset[str]] | None = None  # (expires at, ...)

    # -- helpers ---------------------------------------------------------------------

    def _client(self, service: str, region: str, *, create: bool = False) -> Any:
        key = (service, region, create)
        with self._lock:  # boto3 sessions are not thread-safe; clients are
            client = self._clients.get(key)
            if client is None:
                client = self._session.client(
                    service, region_name=region, config=CREATE_CONFIG if create else READ_CONFIG)
                self._clients[key] = client
            return client

    @property
    def _home_region(self) -> str:
        return self._session.region_name or "us-east-1"

    def image_for(self, region: str, instance_type: str) -> str:
        """The ``ImageId`` sent for this region and type: an AMI id or ``resolve:ssm:...``."""
        explicit = self._settings.get(f"image_id.{region}") or self._settings.get("image_id")
        if explicit:
            return explicit
        parameter = self._settings.get("ami_parameter") or default_ami_parameter(instance_type)
        return f"resolve:ssm:{parameter}"

    def subnets_for(self, region: str) -> list[str]:
        """The subnets to try in ``region``, in order (empty: the default VPC)."""
        raw = (self._settings.get(f"subnet_ids.{region}")
               or self._settings.get(f"subnet_id.{region}") or "")
        return _subnet_list(raw)

    def _wrap(self, exc: Exception, *, operation: str, call: str, region: str) -> ProviderError:
        where = f"{call} in {region}"
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code") or None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = f"{where}: {error.get('Message') or exc}"
            if code == "OptInRequired" or (
                    code == "AuthFailure" and region in self.regions_not_enabled()):
                return provider_error(
                    RegionRefusedError, f"{message} ({region} is an opt-in region that is not "
                    "enabled for this account)", provider=NAME, operation=operation, code=code,
                    fix=FIXES["OptInRequired"])
            return ERROR_CODES.error(message, provider=NAME, operation=operation, code=code,
                                     http_status=status, fix=FIXES.get(code or ""))
        if isinstance(exc, _CREDENTIAL_ERRORS):
            return provider_error(
                AuthError, f"{where}: no usable AWS credentials ({type(exc).__name__})",
                provider=NAME, operation=operation, code=type(exc).__name__,
                fix="configure credentials for boto3's default chain (AWS_PROFILE, "
                    "`aws configure`, `aws sso login`, or an instance / task role)")
        if isinstance(exc, _CONNECTION_ERRORS):
            return provider_error(TransientError, f"{where}: {exc}", provider=NAME,
                                  operation=operation, code=type(exc).__name__)
        return provider_error(InvalidRequestError, f"{where}: {exc}", provider=NAME,
                              operation=operation, code=type(exc).__name__)

    @staticmethod
    def _keyed(payload: Mapping[str, Any], key: str) -> dict[str, Any]:
        """``payload`` with the ClientToken (key + subnet) and the key tag set for ``key``."""
        keyed = dict(payload)
        keyed["ClientToken"] = launch_token(key, payload.get("SubnetId"))
        specs = []
        for spec in payload.get("TagSpecifications", []):
            tags = [t for t in spec["Tags"] if t["Key"] != KEY_TAG]
            specs.append({**spec, "Tags": [*tags, {"Key": KEY_TAG, "Value": key}]})
        keyed["TagSpecifications"] = specs
        return keyed

    @staticmethod
    def _handle(region: str, instance: Mapping[str, Any], key: str | None) -> InstanceHandle:
        extra = {"spot": str(instance.get("InstanceLifecycle") == "spot").lower()}
        if key:
            extra["idempotency_key"] = key
        token = instance.get("ClientToken") or (key and client_token(key))
        if token:
            extra["client_token"] = token
        launched = instance.get("LaunchTime")
        if isinstance(launched, datetime):
            extra[LAUNCHED_AT] = launched.isoformat()
            extra[LAUNCHED_ID] = instance["InstanceId"]
        if instance.get("SubnetId"):
            extra["subnet_id"] = instance["SubnetId"]
        return InstanceHandle(
            provider=NAME, cloud="aws", region=region, instance_id=instance["InstanceId"],
            zone=instance.get("Placement", {}).get("AvailabilityZone"), extra=extra,
        )

    @staticmethod
    def maybe_not_visible_yet(handle: InstanceHandle, *, now: datetime | None = None) -> bool:
        """Whether an unknown ``handle`` may be EC2's eventual consistency: launched
        less than EVENTUAL_CONSISTENCY_WINDOW_S ago (a handle without a launch time
        of its own instance is past it)."""
        raw = handle.extra.get(LAUNCHED_AT)
        if not raw or handle.extra.get(LAUNCHED_ID) != handle.instance_id:
            return False
        try:
            launched = datetime.fromisoformat(raw)
        except ValueError:
            return False
        if launched.tzinfo is None:
            launched = launched.replace(tzinfo=UTC)
        age_s = ((now or datetime.now(UTC)) - launched).total_seconds()
        return age_s < EVENTUAL_CONSISTENCY_WINDOW_S

    def _describe(self, handle: InstanceHandle, *, operation: str) -> dict[str, Any] | None:
        """The instance as DescribeInstances shows it, or None when EC2 does not know it."""
        try:
            answer = self._client("ec2", handle.region).describe_instances(
                InstanceIds=[handle.instance_id])
        except _SDK_ERRORS as exc:
            if _error_code(exc) == NOT_FOUND:
                return None
            raise self._wrap(exc, operation=operation, call="DescribeInstances",
                             region=handle.region) from exc
        found = _instances(answer)
        return found[0] if found else None

    # -- Provider --------------------------------------------------------------------

    def check_credentials(self) -> str:
        """Who boto3's default chain authenticates as (``sts:GetCallerIdentity``)."""
        region = self._home_region
        credentials = self._session.get_credentials()
        if credentials is None:
            raise self._wrap(botocore.exceptions.NoCredentialsError(),
                             operation="check_credentials", call="GetCallerIdentity",
                             region=region)
        try:
            identity = self._client("sts", region).get_caller_identity()
        except _SDK_ERRORS as exc:
            raise self._wrap(exc, operation="check_credentials", call="GetCallerIdentity",
                             region=region) from exc
        return (f"{identity['Arn']} (account {identity['Account']}, "
                f"credentials from {credentials.method})")

    def regions_not_enabled(self) -> frozenset[str]:
        """The opt-in regions this account has not enabled (DescribeRegions, AllRegions).

        Answers from a cache for REGIONS_CACHE_S. Design choice: an error (no
        ``ec2:DescribeRegions`` permission, throttling) answers the empty set with a
        logged warning instead of raising: placement then keeps every region, and a
        launch in a disabled one still fails over as RegionRefusedError. That answer
        is kept for REGIONS_ERROR_CACHE_S, since placement asks before every job.
        """
        now = time.monotonic()
        with self._lock:
            cached = self._regions_cache
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            answer = self._client("ec2", self._home_region).describe_regions(AllRegions=True)
        except _SDK_ERRORS as exc:
            log.warning("aws: could not list the account's regions (DescribeRegions in %s: %s); "
                        "treating every region as enabled. To fix: allow ec2:DescribeRegions.",
                        self._home_region, _error_code(exc) or type(exc).__name__)
            with self._lock:
                self._regions_cache = (now + REGIONS_ERROR_CACHE_S, frozenset())
            return frozenset()
        regions = frozenset(r["RegionName"] for r in answer.get("Regions", [])
                            if r.get("OptInStatus") == "not-opted-in")
        with self._lock:
            self._regions_cache = (now + REGIONS_CACHE_S, regions)
        return regions

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        """The RunInstances request for ``job`` at ``placement``. Pure: no network.

        With several subnets configured, the request names the first one;
        ``submit`` moves to the next ones on a capacity error.

        Raises:
            InvalidRequestError: the placement is not an AWS one, or the boot
                script exceeds EC2's 16 KiB user-data limit.
        """
        if placement.cloud != "aws":
            raise provider_error(
                InvalidRequestError, f"placement is for cloud {placement.cloud!r}",
                provider=NAME, operation="prepare", code="WrongCloud",
                fix="send the placement to the adapter of its own cloud")
        script = startup_script(job)
        if len(script.encode()) > MAX_USER_DATA_BYTES:
            raise provider_error(
                InvalidRequestError,
                f"the boot script is {len(script.encode())} bytes; EC2 user data holds "
                f"{MAX_USER_DATA_BYTES}", provider=NAME, operation="prepare",
                code="UserDataTooLarge",
                fix="shorten the job's `run` command, e.g. call a script shipped in the image")
        region = placement.region
        tags = {**job_tags(job), "Name": f"greenplace-{job.name}"[:256]}
        tag_list = [{"Key": k, "Value": v[:256]} for k, v in tags.items()]
        payload: dict[str, Any] = {
            "ImageId": self.image_for(region, placement.instance_type),
            "InstanceType": placement.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": script,
            "InstanceInitiatedShutdownBehavior": shutdown_behavior(spot=placement.spot),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": IMDS_HOP_LIMIT},
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
        }
        if placement.spot:
            payload["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time",
                                "InstanceInterruptionBehavior": "terminate"},
            }
        if self._settings.get("key_name"):
            payload["KeyName"] = self._settings["key_name"]
        profile = self._settings.get("instance_profile")
        if profile:
            payload["IamInstanceProfile"] = (
                {"Arn": profile} if profile.startswith("arn:") else {"Name": profile})
        subnets = self.subnets_for(region)
        if subnets:
            payload["SubnetId"] = subnets[0]
        groups = self._settings.get(f"security_group_ids.{region}")
        if groups:
            payload["SecurityGroupIds"] = [g.strip() for g in groups.split(",") if g.strip()]
        key = idempotency_key(job.job_id, job.attempt)
        payload = self._keyed(payload, key)
        return LaunchRequest(
            provider=NAME, cloud="aws", region=region, instance_type=placement.instance_type,
            spot=placement.spot, tags={**tags, KEY_TAG: key}, startup_script=script,
            payload=payload,
        )

    def find(self, region: str, key: str) -> InstanceHandle | None:
        """The instance an earlier launch with ``key`` created in ``region``, if any.

        Live instances come first; among equals, the newest.
        """
        try:
            answer = self._client("ec2", region).describe_instances(
                Filters=[{"Name": f"tag:{KEY_TAG}", "Values": [key]}])
        except _SDK_ERRORS as exc:
            raise self._wrap(exc, operation="submit", call="DescribeInstances",
                             region=region) from exc
        instances = _instances(answer)
        if not instances:
            return None
        instances.sort(key=lambda i: (
            i.get("State", {}).get("Name") not in ("terminated", "shutting-down"),
            str(i.get("LaunchTime", ""))), reverse=True)
        return self._handle(region, instances[0], key)

    def _subnet_order(self, region: str, first: str | None) -> list[str | None]:
        """The subnets one submit tries: the request's own first, then the others."""
        configured = self.subnets_for(region)
        if first is None:
            return [None]
        if first not in configured:
            return [first]
        start = configured.index(first)
        return [*configured[start:], *configured[:start]]

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Find the instance launched with this key, else RunInstances, one subnet after
        the other while EC2 answers a capacity error (one attempt per subnet).

        Design choice: both guards are needed. The tag look-up survives EC2's
        ClientToken expiry and a redelivery long after; the ClientToken closes the
        race between two workers that both looked and found nothing.
        """
        if request.provider != NAME:
            raise provider_error(
                InvalidRequestError, f"request was prepared by {request.provider!r}",
                provider=NAME, operation="submit", code="WrongProvider",
                fix="submit a request with the adapter that prepared it")
        region = request.region
        existing = self.find(region, idempotency_key)
        if existing is not None:
            return existing
        subnets = self._subnet_order(region, request.payload.get("SubnetId"))
        for position, subnet in enumerate(subnets):
            payload = dict(request.payload)
            if subnet:
                payload["SubnetId"] = subnet
            payload = self._keyed(payload, idempotency_key)
            try:
                answer = self._client("ec2", region, create=True).run_instances(**payload)
            except _SDK_ERRORS as exc:
                error = self._wrap(exc, operation="submit", call="RunInstances", region=region)
                if isinstance(error, CapacityError) and position + 1 < len(subnets):
                    log.info("aws: no capacity in subnet %s (%s); trying subnet %s",
                             subnet, error.code, subnets[position + 1])
                    continue
                raise error from exc
            return self._handle(region, answer["Instances"][0], idempotency_key)
        raise AssertionError("unreachable: the last subnet returns or raises")

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        """Map the EC2 state (and its state reason) to an InstanceState; read the exit
        code of an instance that powered itself off."""
        instance = self._describe(handle, operation="status")
        if instance is None:
            if self.maybe_not_visible_yet(handle):
                return InstanceStatus(
                    state=InstanceState.PENDING,
                    detail=f"{handle.instance_id} is not visible yet (EC2 eventual consistency)")
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"{handle.instance_id} is unknown to EC2")
        found = instance_status(instance, region=handle.region)
        if found.state is InstanceState.EXITED:
            return dataclasses.replace(found, exit_code=self.exit_code(handle))
        return found

    def exit_code(self, handle: InstanceHandle) -> int | None:
        """The exit code the boot script printed on the console, None while absent.

        Reads the latest serial output (``Latest=True``, Nitro instances) and falls
        back to the buffered output EC2 posts at each state transition (stop,
        terminate) when the latest is refused (Xen families such as p3, or a state
        EC2 cannot serve it in) or does not hold the marker.
        """
        for latest in (True, False):
            try:
                answer = self._client("ec2", handle.region).get_console_output(
                    InstanceId=handle.instance_id, **({"Latest": True} if latest else {}))
            except _SDK_ERRORS as exc:
                if latest and _latest_refused(exc):
                    continue
                raise self._wrap(exc, operation="status", call="GetConsoleOutput",
                                 region=handle.region) from exc
            # EC2 sends Output base64-encoded; botocore decodes it (its
            # GetConsoleOutput customisation), so this is the console text.
            code = exit_code_in(answer.get("Output") or "")
            if code is not None:
                return code
        return None

    def list_managed(self, region: str) -> list[ManagedInstance]:
        """Every instance tagged ``greenplace:managed=true`` in ``region``: one
        DescribeInstances filtered by EC2 on the tag, page after page."""
        managed: list[ManagedInstance] = []
        try:
            pages = self._client("ec2", region).get_paginator("describe_instances").paginate(
                Filters=[{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}],
                PaginationConfig={"PageSize": LIST_PAGE_SIZE})
            for page in pages:
                for instance in _instances(page):
                    tags = _tags(instance)
                    job_id, attempt = managed_tags_of(tags)
                    managed.append(ManagedInstance(
                        handle=self._handle(region, instance, tags.get(KEY_TAG)),
                        job_id=job_id, attempt=attempt,
                        status=instance_status(instance, region=region)))
        except _SDK_ERRORS as exc:
            raise self._wrap(exc, operation="list_managed", call="DescribeInstances",
                             region=region) from exc
        return managed

    def delete(self, handle: InstanceHandle) -> bool:
        """Terminate the instance, then delete the volumes of its launch that outlived it.

        True once DescribeInstances shows the instance terminated (or unknown past
        the eventual-consistency window) and no volume tagged with the launch's
        idempotency key is left; False while EC2 is still at it.
        """
        instance = self._describe(handle, operation="delete")
        if instance is None:
            if self.maybe_not_visible_yet(handle):
                return False  # not visible yet is not gone: it may still be running
        elif instance.get("State", {}).get("Name") != "terminated":
            if instance.get("State", {}).get("Name") != "shutting-down":
                self._terminate(handle)
            return False
        if instance is not None:
            key = _tags(instance).get(KEY_TAG)
        elif handle.extra.get(LAUNCHED_ID) == handle.instance_id:
            key = handle.extra.get("idempotency_key")
        else:
            key = None  # nothing ties this handle to a launch's volumes
        return self._delete_volumes(handle, key) if key else True

    def _terminate(self, handle: InstanceHandle) -> None:
        try:
            self._client("ec2", handle.region).terminate_instances(
                InstanceIds=[handle.instance_id])
        except _SDK_ERRORS as exc:
            if _error_code(exc) == NOT_FOUND:
                return  # raced its own disappearance; the next delete() confirms
            raise self._wrap(exc, operation="delete", call="TerminateInstances",
                             region=handle.region) from exc

    def _delete_volumes(self, handle: InstanceHandle, key: str) -> bool:
        """Delete the detached volumes tagged with ``key``; True when none of them is left
        (volumes attached to another instance are not this launch's leftovers).

        Design choice: the launch's volumes come from the image's block device
        mapping, whose DeleteOnTermination greenplace cannot see before the launch
        (the AMI is resolved by EC2). The Deep Learning AMIs delete their root
        volume with the instance; a custom image that keeps it would leak a billed
        volume per job, so the tag every launch puts on its volumes is checked.
        """
        region = handle.region
        ec2 = self._client("ec2", region)
        try:
            tagged = ec2.describe_volumes(
                Filters=[{"Name": f"tag:{KEY_TAG}", "Values": [key]}]).get("Volumes", [])
            volumes = [v for v in tagged if all(
                a.get("InstanceId") == handle.instance_id for a in v.get("Attachments", []))]
            for volume in volumes:
                if volume.get("State") == "available":
                    ec2.delete_volume(VolumeId=volume["VolumeId"])
        except _SDK_ERRORS as exc:
            if _error_code(exc) == "InvalidVolume.NotFound":
                return False  # deleted meanwhile; confirm on the next call
            raise self._wrap(exc, operation="delete", call="DescribeVolumes/DeleteVolume",
                             region=region) from exc
        return not volumes


def _latest_refused(exc: Exception) -> bool:
    """Whether EC2 refused ``Latest=true`` itself (UnsupportedOperation on a Xen
    family, a state it cannot serve it in), rather than the caller or the moment:
    an auth, throttling or server error must not be hidden by the fallback."""
    code = _error_code(exc)
    return code is not None and ERROR_CODES.classify(code) is InvalidRequestError


def launch_failure(instance: Mapping[str, Any], *, region: str) -> ProviderError:
    """The error of a launch EC2 accepted and then abandoned (see LAUNCH_FAILURES)."""
    reason = instance.get("StateReason", {}) or {}
    code = reason.get("Code", "")
    message = (f"{instance.get('InstanceId', 'the instance')} in {region} went from pending "
               f"to {instance.get('State', {}).get('Name', '?')}: "
               f"{reason.get('Message') or code}")
    cls = ERROR_CODES.classify(code)
    return provider_error(cls, message, provider=NAME, operation="status", code=code,
                          fix=FIXES.get(code))


def instance_status(instance: Mapping[str, Any], *, region: str) -> InstanceStatus:
    """An EC2 instance description (DescribeInstances shape) as an InstanceStatus.

    pending -> PENDING, running -> RUNNING. For stopping / stopped /
    shutting-down / terminated the state reason decides: a launch-time reason
    (LAUNCH_FAILURES) is LAUNCH_FAILED, a spot interruption PREEMPTED, a
    shutdown from inside the instance (the boot script powering off) EXITED
    (the exit code is read by ``status()``), any other Server.* reason FAILED
    (the host failed), a shutdown through the API TERMINATED.
    """
    state = instance.get("State", {}).get("Name", "")
    reason = instance.get("StateReason", {}) or {}
    reason_code = reason.get("Code", "") or ""
    detail = f"EC2 state {state}" + (f" ({reason_code})" if reason_code else "")
    if state == "pending":
        return InstanceStatus(state=InstanceState.PENDING, detail=detail)
    if state == "running":
        return InstanceStatus(state=InstanceState.RUNNING, detail=detail)
    if reason_code in LAUNCH_FAILURES:
        return InstanceStatus(state=InstanceState.LAUNCH_FAILED, detail=detail,
                              error=launch_failure(instance, region=region))
    if reason_code in SPOT_REASONS or (
            instance.get("InstanceLifecycle") == "spot" and "Spot" in reason_code):
        return InstanceStatus(state=InstanceState.PREEMPTED, detail=detail)
    if reason_code == "Client.InstanceInitiatedShutdown":
        return InstanceStatus(state=InstanceState.EXITED, detail=detail)
    if reason_code.startswith("Server."):
        return InstanceStatus(state=InstanceState.FAILED, detail=detail)
    return InstanceStatus(state=InstanceState.TERMINATED, detail=detail)


def create(config: Mapping[str, str]) -> AwsProvider:
    """Build the adapter from its settings (``config`` wins over GREENPLACE_AWS_* env).

    Raises:
        UnknownNameError: a setting name the adapter does not know.
    """
    return AwsProvider(settings=_settings(config, os.environ))
