"""The AWS adapter: one EC2 instance per launch, through boto3.

What it sends (``prepare()`` builds it; ``submit()`` sends exactly that):
``RunInstances`` in the placed region with the offer's instance type, a Deep
Learning AMI, the job's boot script as user data, the greenplace tags on the
instance and its volumes, IMDSv2 required, shutdown = terminate, and
``InstanceMarketOptions`` (one-time spot, terminate on interruption) when the
placement is spot.

Credentials come from boto3's own default chain (environment, shared files,
SSO, instance or task role); this module never reads, prints or stores one.
Endpoints follow the standard ``AWS_ENDPOINT_URL_EC2`` / ``AWS_ENDPOINT_URL``
variables that botocore honours, which is how tests aim it at a moto server.

Settings (``create(config)``; the plain ones also from ``GREENPLACE_AWS_<KEY>``, and
any of them from ``GREENPLACE_AWS_SETTINGS``, a JSON object):

``image_id``            an AMI id or ``resolve:ssm:<parameter>`` for every region
``image_id.<region>``   the same for one region (wins over ``image_id``)
``ami_parameter``       the SSM public parameter to resolve (default: by architecture)
``key_name``            an EC2 key pair to install
``instance_profile``    IAM instance profile name or ARN for the instance
``subnet_id.<region>``  launch into this subnet (default: the default VPC)
``security_group_ids.<region>``  comma-separated group ids
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

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
    short_token,
    startup_script,
)
from greenplace.providers.errors import ErrorCodeTable, provider_error
from greenplace.providers.settings import merged_settings
from greenplace.scheduler.exceptions import (
    AuthError,
    InvalidRequestError,
    TransientError,
    UnknownNameError,
)

NAME = "aws"

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
ARM64_FAMILIES = frozenset({"g5g", "p6e-gb200", "p6e-gb300"})
NEURON_FAMILIES = frozenset({"inf1", "inf2", "trn1", "trn1n", "trn2", "trn2u"})

# Tag holding the idempotency key; ``submit`` looks instances up by it.
KEY_TAG = "greenplace:idempotency-key"
MAX_USER_DATA_BYTES = 16 * 1024  # EC2's limit, before base64
MAX_CLIENT_TOKEN_CHARS = 64  # EC2's limit, ASCII

ERROR_CODES = ErrorCodeTable(
    capacity=frozenset({
        "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
        "Unsupported", "SpotMaxPriceTooLow",
    }),
    quota=frozenset({
        "InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
    }),
    transient=frozenset({
        "RequestLimitExceeded", "InternalError", "ServiceUnavailable", "Unavailable",
        "InternalFailure", "Throttling", "ThrottlingException",
    }),
    auth=frozenset({
        "AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
        "ExpiredToken", "RequestExpired", "AccessDenied", "AccessDeniedException",
    }),
)

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

SPOT_REASONS = frozenset({
    "Server.SpotInstanceTermination", "Server.SpotInstanceShutdown",
    "Server.SpotInstanceHibernation",
})

_PLAIN_KEYS = ("image_id", "ami_parameter", "key_name", "instance_profile")
_REGIONAL_KEYS = ("image_id.", "subnet_id.", "security_group_ids.")


def client_token(key: str) -> str:
    """The EC2 ClientToken for an idempotency key (at most 64 printable ASCII characters).

    A short printable key is used as is (readable in the console); anything
    longer or outside ASCII becomes ``gp-`` plus a SHA-256 prefix of it.
    """
    if len(key) <= MAX_CLIENT_TOKEN_CHARS and key.isascii() and key.isprintable():
        return key
    return "gp-" + short_token(key, MAX_CLIENT_TOKEN_CHARS - 3)


def default_ami_parameter(instance_type: str) -> str:
    """The public SSM parameter of the Deep Learning AMI that fits ``instance_type``."""
    family = instance_type.split(".", 1)[0]
    if family in NEURON_FAMILIES:
        return DLAMI_PARAMETER_NEURON
    if family in ARM64_FAMILIES:
        return DLAMI_PARAMETER_ARM64
    return DLAMI_PARAMETER_X86_64


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

    def image_for(self, region: str, instance_type: str) -> str:
        """The ``ImageId`` sent for this region and type: an AMI id or ``resolve:ssm:...``."""
        explicit = self._settings.get(f"image_id.{region}") or self._settings.get("image_id")
        if explicit:
            return explicit
        parameter = self._settings.get("ami_parameter") or default_ami_parameter(instance_type)
        return f"resolve:ssm:{parameter}"

    def _wrap(self, exc: Exception, *, operation: str, call: str, region: str) -> Exception:
        where = f"{call} in {region}"
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code") or None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return ERROR_CODES.error(f"{where}: {error.get('Message') or exc}", provider=NAME,
                                     operation=operation, code=code, http_status=status)
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
        """``payload`` with ClientToken and the key tag set for ``key``."""
        keyed = dict(payload)
        keyed["ClientToken"] = client_token(key)
        specs = []
        for spec in payload.get("TagSpecifications", []):
            tags = [t for t in spec["Tags"] if t["Key"] != KEY_TAG]
            specs.append({**spec, "Tags": [*tags, {"Key": KEY_TAG, "Value": key}]})
        keyed["TagSpecifications"] = specs
        return keyed

    @staticmethod
    def _handle(region: str, instance: Mapping[str, Any], key: str) -> InstanceHandle:
        return InstanceHandle(
            provider=NAME, cloud="aws", region=region, instance_id=instance["InstanceId"],
            zone=instance.get("Placement", {}).get("AvailabilityZone"),
            extra={"client_token": instance.get("ClientToken") or client_token(key),
                   "idempotency_key": key,
                   "spot": str(instance.get("InstanceLifecycle") == "spot").lower()},
        )

    # -- Provider --------------------------------------------------------------------

    def check_credentials(self) -> str:
        """Who boto3's default chain authenticates as (``sts:GetCallerIdentity``)."""
        region = self._session.region_name or "us-east-1"
        credentials = self._session.get_credentials()
        if credentials is None:
            raise self._wrap(botocore.exceptions.NoCredentialsError(),
                             operation="check_credentials", call="GetCallerIdentity",
                             region=region)
        try:
            identity = self._client("sts", region).get_caller_identity()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._wrap(exc, operation="check_credentials", call="GetCallerIdentity",
                             region=region) from exc
        return (f"{identity['Arn']} (account {identity['Account']}, "
                f"credentials from {credentials.method})")

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        """The RunInstances request for ``job`` at ``placement``. Pure: no network.

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
            "InstanceInitiatedShutdownBehavior": "terminate",
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
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
        if self._settings.get(f"subnet_id.{region}"):
            payload["SubnetId"] = self._settings[f"subnet_id.{region}"]
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
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._wrap(exc, operation="submit", call="DescribeInstances",
                             region=region) from exc
        instances = [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]
        if not instances:
            return None
        instances.sort(key=lambda i: (
            i.get("State", {}).get("Name") not in ("terminated", "shutting-down"),
            str(i.get("LaunchTime", ""))), reverse=True)
        return self._handle(region, instances[0], key)

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Find the instance launched with this key, else RunInstances (one attempt).

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
        payload = self._keyed(request.payload, idempotency_key)
        try:
            answer = self._client("ec2", region, create=True).run_instances(**payload)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._wrap(exc, operation="submit", call="RunInstances",
                             region=region) from exc
        return self._handle(region, answer["Instances"][0], idempotency_key)

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        """Map the EC2 state (and its state reason) to an InstanceState."""
        try:
            answer = self._client("ec2", handle.region).describe_instances(
                InstanceIds=[handle.instance_id])
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
                return InstanceStatus(state=InstanceState.MISSING,
                                      detail=f"{handle.instance_id} is unknown to EC2")
            raise self._wrap(exc, operation="status", call="DescribeInstances",
                             region=handle.region) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._wrap(exc, operation="status", call="DescribeInstances",
                             region=handle.region) from exc
        instances = [i for r in answer.get("Reservations", []) for i in r.get("Instances", [])]
        if not instances:
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"{handle.instance_id} is unknown to EC2")
        return instance_status(instances[0])

    def cancel(self, handle: InstanceHandle) -> None:
        """TerminateInstances; an instance EC2 no longer knows is already gone."""
        try:
            self._client("ec2", handle.region).terminate_instances(
                InstanceIds=[handle.instance_id])
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
                return
            raise self._wrap(exc, operation="cancel", call="TerminateInstances",
                             region=handle.region) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._wrap(exc, operation="cancel", call="TerminateInstances",
                             region=handle.region) from exc


def instance_status(instance: Mapping[str, Any]) -> InstanceStatus:
    """An EC2 instance description (DescribeInstances shape) as an InstanceStatus.

    pending -> PENDING, running -> RUNNING. For stopping / stopped /
    shutting-down / terminated the state reason decides: a spot interruption is
    PREEMPTED, a shutdown from inside the instance (the job's script powering
    off) SUCCEEDED, a shutdown through the API TERMINATED, any Server.* reason
    FAILED.
    """
    state = instance.get("State", {}).get("Name", "")
    reason = instance.get("StateReason", {}) or {}
    reason_code = reason.get("Code", "") or ""
    detail = f"EC2 state {state}" + (f" ({reason_code})" if reason_code else "")
    if state == "pending":
        return InstanceStatus(state=InstanceState.PENDING, detail=detail)
    if state == "running":
        return InstanceStatus(state=InstanceState.RUNNING, detail=detail)
    if reason_code in SPOT_REASONS or (
            instance.get("InstanceLifecycle") == "spot" and "Spot" in reason_code):
        return InstanceStatus(state=InstanceState.PREEMPTED, detail=detail)
    if reason_code == "Client.InstanceInitiatedShutdown":
        return InstanceStatus(state=InstanceState.SUCCEEDED, detail=detail)
    if reason_code.startswith("Server."):
        return InstanceStatus(state=InstanceState.FAILED, detail=detail)
    return InstanceStatus(state=InstanceState.TERMINATED, detail=detail)


def create(config: Mapping[str, str]) -> AwsProvider:
    """Build the adapter from its settings (``config`` wins over GREENPLACE_AWS_* env).

    Raises:
        UnknownNameError: a setting name the adapter does not know.
    """
    return AwsProvider(settings=_settings(config, os.environ))
