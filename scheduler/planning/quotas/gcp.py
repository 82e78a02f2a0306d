"""GCP regional GPU quotas as capacity pools, through google-cloud-compute (REST).

What one read calls: Compute Engine ``regions.get`` for each region asked (permission
``compute.regions.get``, in ``roles/compute.viewer``); its ``quotas`` list holds each quota
of the project in the region as ``{metric, limit, usage}``.

Each GPU metric of ``GPU_METRICS`` becomes one pool per region, counted in accelerators,
``limit - usage`` (what is left now, never below 0): ``NVIDIA_L4_GPUS`` matches the catalog's
L4 offers; ``PREEMPTIBLE_NVIDIA_L4_GPUS`` the same offers as Spot VMs. The H100 metrics are
split by machine series, since the catalog names both GPUs "H100": ``NVIDIA_H100_GPUS``
counts A3 High / Edge GPUs (``a3-highgpu-*``, ``a3-edgegpu-*``), ``NVIDIA_H100_MEGA_GPUS``
A3 Mega's (``a3-megagpu-*``); ``NVIDIA_H200_GPUS`` counts A3 Ultra's.

Design choices:

* Spot VMs use the preemptible quota of their GPU when the project has one in the region
  (a limit above 0), else the standard quota (Compute Engine's rule: "to prevent Spot VMs
  from consuming your quotas for standard VMs ..., request preemptible quota"). So a
  standard metric's pool is on-demand only when its ``PREEMPTIBLE_`` twin has a limit in the
  region, and shared by both purchase options otherwise.
* A GPU metric missing from ``GPU_METRICS`` (a GPU the catalog does not sell, a virtual
  workstation ``_VWS_`` metric, a ``COMMITTED_`` one, which counts committed-use VMs only) is
  skipped with the reason; metrics that are not GPUs (CPUS, DISKS_TOTAL_GB, ...) are passed
  over. The machine families' CPU quotas (``A2_CPUS``, ...) are not read: the GPU quota of
  each of these families binds first for greenplace's shapes.
* A region Compute Engine does not know (404 ``notFound``) is skipped with the reason; any
  other failure fails the whole read (throttling, 429 / 403 rateLimitExceeded / 503, is
  retried first with the catalog refresh's backoff).
* Settings, credentials, retries and error mapping are the catalog refresh's
  (``catalog/refresh/gcp.py``), i.e. the GCP adapter's settings ``GREENPLACE_GCP_*``:
  ``project``, ``api_endpoint`` and ``credentials`` (``anonymous`` only against a loopback
  fake). Credentials are ADC's own; nothing here reads, prints or stores them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.cloud import compute_v1

from greenplace.providers.gcp import HTTP_TIMEOUT_S, PROVIDER
from greenplace.scheduler.catalog.refresh import gcp as refresh_gcp
from greenplace.scheduler.exceptions import (
    AuthError,
    InvalidRequestError,
    ProviderError,
    TransientError,
)
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.quotas import QuotaAnswer, QuotaSkip

OPERATION = "quota read"
CALL = "compute regions.get"
SOURCE = "Compute Engine regions.get (the project's regional GPU quotas)"
PREEMPTIBLE = "PREEMPTIBLE_"
FIXES: dict[type[ProviderError], str] = {
    TransientError: "plan again later, or plan with a capacity file alone meanwhile",
    AuthError: "run `gcloud auth application-default login` or set "
               "GOOGLE_APPLICATION_CREDENTIALS; the principal needs compute.regions.get "
               "(roles/compute.viewer) on the project",
    InvalidRequestError: "check the gcp settings (project, api_endpoint)",
}


@dataclass(frozen=True, slots=True)
class _Gpus:
    """What a GPU metric counts: catalog accelerators and / or machine-type globs."""

    accelerators: tuple[str, ...] = ()
    instance_types: tuple[str, ...] = ()


# Standard GPU metric -> what it counts (its PREEMPTIBLE_ twin counts the same, for Spot).
GPU_METRICS: dict[str, _Gpus] = {
    "NVIDIA_T4_GPUS": _Gpus(accelerators=("T4",)),
    "NVIDIA_V100_GPUS": _Gpus(accelerators=("V100",)),
    "NVIDIA_P100_GPUS": _Gpus(accelerators=("P100",)),
    "NVIDIA_P4_GPUS": _Gpus(accelerators=("P4",)),
    "NVIDIA_L4_GPUS": _Gpus(accelerators=("L4",)),
    "NVIDIA_A100_GPUS": _Gpus(accelerators=("A100",)),
    "NVIDIA_A100_80GB_GPUS": _Gpus(accelerators=("A100-80GB",)),
    "NVIDIA_H100_GPUS": _Gpus(instance_types=("a3-highgpu-*", "a3-edgegpu-*")),
    "NVIDIA_H100_MEGA_GPUS": _Gpus(instance_types=("a3-megagpu-*",)),
    "NVIDIA_H200_GPUS": _Gpus(instance_types=("a3-ultragpu-*",)),
}


def credentials_found(environ: Mapping[str, str]) -> bool:
    """Whether a read could run here (no network): anonymous credentials against a loopback
    fake, else Application Default Credentials found as the catalog refresh finds them."""
    try:
        settings = refresh_gcp._settings(environ)
    except InvalidRequestError:
        return False
    if settings.anonymous_credentials:  # the settings allow it only with a loopback endpoint
        return True
    return refresh_gcp.credentials_found(environ)


def read_quotas(regions: Sequence[str], environ: Mapping[str, str]) -> QuotaAnswer:
    """The project's GPU quotas left in ``regions``, as capacity pools.

    Raises:
        AuthError: credentials missing or refused.
        TransientError: throttling or 5xx that outlasted the retries.
        InvalidRequestError: bad gcp settings, or no project configured.
    """
    settings = refresh_gcp._settings(environ)
    project, credentials = refresh_gcp.project_and_credentials(settings, operation=OPERATION)
    options = {"api_endpoint": settings.api_endpoint} if settings.api_endpoint else None
    client = compute_v1.RegionsClient(credentials=credentials, transport="rest",
                                      client_options=options)
    pools: list[CapacityPool] = []
    skipped: list[QuotaSkip] = []
    try:
        for region in dict.fromkeys(regions):
            quotas = _region_quotas(client, project, region, skipped)
            if quotas is not None:
                pools.extend(_pools(region, quotas, skipped))
    finally:
        client.transport.close()
    return QuotaAnswer(pools=tuple(pools), skipped=tuple(skipped), source=SOURCE)


def _region_quotas(client: Any, project: str, region: str,
                   skipped: list[QuotaSkip]) -> dict[str, tuple[float, float]] | None:
    """Metric -> (limit, usage) in ``region``; None when Compute Engine has no such region."""
    try:
        answer = refresh_gcp._listed(
            f"{CALL} ({region})",
            lambda: client.get(project=project, region=region, retry=refresh_gcp._retry(),
                               timeout=HTTP_TIMEOUT_S),
            operation=OPERATION, fixes=FIXES)
    except ProviderError as exc:
        if exc.code != "notFound":
            raise
        skipped.append(QuotaSkip(region=region, quota="", reason=(
            f"Compute Engine has no region {region!r} for project {project} (404 notFound)")))
        return None
    return {str(q.metric): (float(q.limit), float(q.usage)) for q in answer.quotas}


def _pools(region: str, quotas: Mapping[str, tuple[float, float]],
           skipped: list[QuotaSkip]) -> list[CapacityPool]:
    pools: list[CapacityPool] = []
    for metric, (limit, usage) in sorted(quotas.items()):
        spot = metric.startswith(PREEMPTIBLE)
        base = metric.removeprefix(PREEMPTIBLE)
        gpus = GPU_METRICS.get(base)
        if gpus is None:
            if base.endswith("_GPUS") and base != "GPUS_ALL_REGIONS":
                skipped.append(QuotaSkip(region=region, quota=metric, reason=(
                    "not a GPU metric greenplace maps to catalog offers with certainty "
                    "(a GPU the catalog does not sell, a virtual workstation or committed-use "
                    "quota)")))
            continue
        if not (math.isfinite(limit) and math.isfinite(usage) and limit >= 0):
            skipped.append(QuotaSkip(region=region, quota=metric, reason=(
                f"limit {limit!r} / usage {usage!r} are not GPU counts")))
            continue
        pool_spot: bool | None = True  # a preemptible metric: Spot VMs only
        if not spot:  # on demand only when Spot VMs have a preemptible quota of their own
            twin = quotas.get(PREEMPTIBLE + metric)
            pool_spot = False if twin is not None and twin[0] > 0 else None
        left = max(0, math.floor(limit - usage))
        pools.append(CapacityPool(
            cloud=PROVIDER, region=region, unit=Unit.ACCELERATORS,
            accelerators=gpus.accelerators, instance_types=gpus.instance_types, spot=pool_spot,
            limit=left, source=(f"GCP quota {metric} in {region}: limit {limit:g} less "
                                f"usage {usage:g}")))
    return pools


__all__ = ["GPU_METRICS", "SOURCE", "credentials_found", "read_quotas"]
