"""AWS account quotas for the accelerator instance families, through boto3's Service Quotas.

What one read calls per region (IAM actions in ``PERMISSIONS``):

* ``servicequotas:ListServiceQuotas`` (``ServiceCode=ec2``, page after page): the applied
  quota values of the account in the region;
* ``servicequotas:GetServiceQuota`` for each quota of ``QUOTAS`` the list did not hold (the
  list omits quotas with no applied value; GetServiceQuota then answers the value in force, or
  ``NoSuchResourceException``: the quota is skipped with that reason).

Each EC2 quota of ``QUOTAS`` is a vCPU limit shared by instance families ("Running On-Demand
P instances", "All P Spot Instance Requests", ...): one pool per (region, quota), counted in
vCPUs, matching the families' instance-type globs (``p*``; ``g*`` and ``vt*``; ``trn*``;
``inf*``), on demand or spot as the quota says. A p5.48xlarge draws 192 vCPUs from the P
pool of its purchase option.

Design choices:

* The limit is the quota's ``Value``; the usage is not subtracted. Service Quotas has no
  usage field: the usage of these quotas is the CloudWatch metric ``AWS/Usage``
  ``ResourceCount`` (``UsageMetric`` of the quota), which would need
  ``cloudwatch:GetMetricData`` and is up to minutes stale. A plan therefore assumes the
  account's instances already running use none of the quota; the pool's ``source`` says so.
* A quota code absent from ``QUOTAS`` whose name is an instance-family vCPU quota (Standard,
  F, X, DL, HPC, ...) is skipped with the reason: those families carry no accelerator that
  greenplace places. Other EC2 quotas (Elastic IPs, AMIs, ...) are not instance capacity
  and are passed over silently.
* A quota with an ``ErrorReason``, or a ``Value`` that is not a finite number at or above 0,
  is skipped with the reason, never guessed.
* Clients, endpoints (``AWS_ENDPOINT_URL_SERVICE_QUOTAS`` / ``AWS_ENDPOINT_URL``), retries
  (botocore standard mode, ``MAX_ATTEMPTS``; ``TooManyRequestsException`` is throttling) and
  the error mapping are the AWS catalog refresh's (``catalog/refresh/aws.py``), which follows
  the adapter's rules; credentials come only from boto3's default chain, never read here.
* Regions of the other partitions (``cn-*``, ``us-gov-*``) are skipped, as the refresh does.
  An opt-in region the account has not enabled answers ``UnrecognizedClientException`` (the
  credentials are unknown there): it is skipped with that reason, without a DescribeRegions
  call (and its permission); refused in every region asked, it is the credentials, an
  AuthError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import boto3

from greenplace.scheduler.catalog.refresh import aws as refresh_aws
from greenplace.scheduler.exceptions import AuthError, ProviderError
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.quotas import QuotaAnswer, QuotaSkip

CLOUD = "aws"
OPERATION = "quota read"
SERVICE = "service-quotas"
SERVICE_CODE = "ec2"
SOURCE = "AWS Service Quotas (ListServiceQuotas, GetServiceQuota; ServiceCode ec2)"
PERMISSIONS = ("servicequotas:ListServiceQuotas", "servicequotas:GetServiceQuota")
PAGE_SIZE = 100  # ListServiceQuotas' largest MaxResults
NO_SUCH_QUOTA = "NoSuchResourceException"
# What AWS answers a request signed for an opt-in region the account has not enabled (the
# credentials are unknown there); the same answer in every region asked is a bad credential.
REGION_REFUSALS = frozenset({"UnrecognizedClientException", "InvalidClientTokenId"})


@dataclass(frozen=True, slots=True)
class _FamilyQuota:
    """An EC2 vCPU quota over some instance families."""

    name: str  # the quota's name in Service Quotas
    instance_types: tuple[str, ...]  # globs of the families' instance types
    spot: bool


# Quota code -> the families it limits. Codes as ListServiceQuotas names them (checked
# against public ListServiceQuotas output, 2026-12).
QUOTAS: dict[str, _FamilyQuota] = {
    "L-417A185B": _FamilyQuota("Running On-Demand P instances", ("p*",), spot=False),
    "L-7212CCBC": _FamilyQuota("All P Spot Instance Requests", ("p*",), spot=True),
    "L-DB2E81BA": _FamilyQuota("Running On-Demand G and VT instances", ("g*", "vt*"),
                               spot=False),
    "L-3819A6DF": _FamilyQuota("All G and VT Spot Instance Requests", ("g*", "vt*"),
                               spot=True),
    "L-2C3B7624": _FamilyQuota("Running On-Demand Trn instances", ("trn*",), spot=False),
    "L-6B0D517C": _FamilyQuota("All Trn Spot Instance Requests", ("trn*",), spot=True),
    "L-1945791B": _FamilyQuota("Running On-Demand Inf instances", ("inf*",), spot=False),
    "L-B5D1601B": _FamilyQuota("All Inf Spot Instance Requests", ("inf*",), spot=True),
}
# The names of EC2's instance-family vCPU quotas (the others: Elastic IPs, AMIs, hosts, ...).
_FAMILY_QUOTA_NAME = re.compile(r"^(Running On-Demand .+ instances|All .+ Spot Instance "
                                r"Requests)$")


def credentials_found(environ: Mapping[str, str]) -> bool:
    """Whether boto3's default chain would find credentials (the refresh's check: local
    variables and shared files only, no network call)."""
    return refresh_aws.credentials_found(environ)


def read_quotas(regions: Sequence[str], environ: Mapping[str, str]) -> QuotaAnswer:
    """The account's accelerator-family vCPU quotas in ``regions``, as capacity pools.

    Raises:
        AuthError: no credentials, or a call refused for lack of permission.
        TransientError: throttling or a server error that outlasted the retries.
        InvalidRequestError: a call refused as malformed (e.g. a bad endpoint setting).
    """
    session = boto3.session.Session()
    pools: list[CapacityPool] = []
    skipped: list[QuotaSkip] = []
    refused: list[AuthError] = []
    read = 0
    for region in dict.fromkeys(regions):
        if region.startswith(refresh_aws.OTHER_PARTITIONS):
            skipped.append(QuotaSkip(region=region, quota="", reason=(
                "a region of another AWS partition (its own account): not read")))
            continue
        client = refresh_aws._client(session, SERVICE, region, environ)
        try:
            quotas = _region_quotas(client, region, skipped)
        except AuthError as exc:
            if exc.code not in REGION_REFUSALS:
                raise
            refused.append(exc)
            skipped.append(QuotaSkip(region=region, quota="", reason=(
                f"the credentials are refused there ({exc.code}): an opt-in region the "
                "account has not enabled")))
            continue
        read += 1
        for code, quota in quotas.items():
            pool = _pool(region, code, quota, skipped)
            if pool is not None:
                pools.append(pool)
    if refused and not read:  # refused everywhere: the credentials, not the regions
        raise refused[0]
    return QuotaAnswer(pools=tuple(pools), skipped=tuple(skipped), source=SOURCE)


def _calling(call: str, region: str) -> AbstractContextManager[None]:
    """The refresh's SDK error mapping, worded for the quota read and its IAM actions."""
    return refresh_aws._calling(call, region, operation=OPERATION, permissions=PERMISSIONS)


def _region_quotas(client: Any, region: str, skipped: list[QuotaSkip]
                   ) -> dict[str, dict[str, Any]]:
    """Quota code -> the ServiceQuota record of each quota of ``QUOTAS`` in ``region``."""
    found: dict[str, dict[str, Any]] = {}
    with _calling("ListServiceQuotas", region):
        pages = client.get_paginator("list_service_quotas").paginate(
            ServiceCode=SERVICE_CODE, PaginationConfig={"PageSize": PAGE_SIZE})
        listed = [quota for page in pages for quota in page.get("Quotas", [])]
    for quota in listed:
        code = str(quota.get("QuotaCode") or "")
        if code in QUOTAS:
            found[code] = quota
        elif _FAMILY_QUOTA_NAME.match(str(quota.get("QuotaName") or "")):
            skipped.append(QuotaSkip(region=region, quota=code, reason=(
                f"{quota.get('QuotaName')!r} limits instance families without an accelerator "
                "greenplace places: no pool")))
    for code in QUOTAS.keys() - found.keys():
        try:
            with _calling("GetServiceQuota", region):
                found[code] = client.get_service_quota(ServiceCode=SERVICE_CODE,
                                                       QuotaCode=code)["Quota"]
        except ProviderError as exc:
            if exc.code != NO_SUCH_QUOTA:
                raise
            skipped.append(QuotaSkip(region=region, quota=code, reason=(
                f"Service Quotas has no value of {QUOTAS[code].name!r} in {region} "
                f"({NO_SUCH_QUOTA})")))
    return dict(sorted(found.items()))


def _pool(region: str, code: str, quota: Mapping[str, Any],
          skipped: list[QuotaSkip]) -> CapacityPool | None:
    family = QUOTAS[code]
    error = quota.get("ErrorReason")
    if error:
        skipped.append(QuotaSkip(region=region, quota=code, reason=(
            f"Service Quotas could not give its value: {error.get('ErrorCode')} "
            f"{error.get('ErrorMessage') or ''}".strip())))
        return None
    value = quota.get("Value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        skipped.append(QuotaSkip(region=region, quota=code,
                                 reason=f"its Value {value!r} is not a vCPU count"))
        return None
    return CapacityPool(
        cloud=CLOUD, region=region, unit=Unit.VCPUS, instance_types=family.instance_types,
        spot=family.spot, limit=math.floor(value),
        source=(f"AWS Service Quotas {code} ({quota.get('QuotaName') or family.name}) in "
                f"{region}; usage not subtracted"))


__all__ = ["PERMISSIONS", "QUOTAS", "SOURCE", "credentials_found", "read_quotas"]
