"""Account quotas as capacity pools, read through each cloud's SDK (issue 13).

Each cloud has one module (``aws``, ``gcp``, ``azure``) with the same two functions:

* ``credentials_found(environ) -> bool``: whether the SDK's credential chain would find
  something here, from local files and variables only (no network call);
* ``read_quotas(regions, environ) -> QuotaAnswer``: the account's accelerator quotas in
  ``regions`` as ``CapacityPool`` rows, and what was read but not turned into a pool
  (``QuotaSkip``: an unknown quota, metric or family, a quota without a value), with why.

``read_all`` reads every cloud asked for that has credentials, one after the other, and says
per cloud whether it was read (``ok``), failed (the one-paragraph error, ending with "To
fix: ..."), had no credentials, or has no quota reader; the pools of the clouds that were
read are returned whatever happened to the others.

Design choices:

* A reader is all or nothing per cloud, like the catalog refresh it shares its clients, retry
  policy and error mapping with: a region whose call still fails after the retries fails the
  cloud's read, so a plan never binds on half an account's quotas without saying so.
* A pool's ``limit`` is what is left now: the quota's limit less its current usage where the
  API gives the usage (GCP, Azure); AWS Service Quotas gives only the limit (its usage is a
  CloudWatch metric, not read: see ``aws``), so an AWS pool is the whole quota.
* The cloud modules import their SDKs; this module imports none, so the planner may import
  it at start-up and a cloud's SDK loads only when that cloud is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, cast

from greenplace.providers import credentials
from greenplace.scheduler.exceptions import GreenplaceError
from greenplace.scheduler.planning.capacity import CapacityPool

# Clouds with a quota reader -> its module.
READERS: dict[str, str] = {
    "aws": "greenplace.scheduler.planning.quotas.aws",
    "gcp": "greenplace.scheduler.planning.quotas.gcp",
    "azure": "greenplace.scheduler.planning.quotas.azure",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaSkip:
    """A quota the reader saw and did not turn into a pool, with the reason."""

    region: str  # "" when it applies to every region asked
    quota: str  # AWS quota code, GCP metric, Azure usage name
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaAnswer:
    """One cloud's accelerator quotas in the regions asked, as capacity pools."""

    pools: tuple[CapacityPool, ...]
    skipped: tuple[QuotaSkip, ...] = ()
    source: str  # the API read, e.g. "AWS Service Quotas (ListServiceQuotas, ...)"


class QuotaStatus(StrEnum):
    """What happened when ``read_all`` came to a cloud."""

    OK = "ok"
    FAILED = "failed"
    NO_CREDENTIALS = "no credentials"
    NO_READER = "no quota reader"


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudQuotas:
    """One cloud's outcome in ``read_all``."""

    cloud: str
    status: QuotaStatus
    answer: QuotaAnswer | None = None  # set when ``status`` is OK
    error: str = ""  # the one-paragraph error when ``status`` is FAILED


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaReading:
    """Every cloud's outcome, in the order asked."""

    clouds: tuple[CloudQuotas, ...]

    @property
    def pools(self) -> tuple[CapacityPool, ...]:
        """The pools of every cloud read successfully."""
        return tuple(pool for c in self.clouds if c.answer is not None
                     for pool in c.answer.pools)

    @property
    def failed(self) -> tuple[CloudQuotas, ...]:
        return tuple(c for c in self.clouds if c.status is QuotaStatus.FAILED)


class _Reader(Protocol):
    def credentials_found(self, environ: Mapping[str, str]) -> bool: ...

    def read_quotas(self, regions: Sequence[str], environ: Mapping[str, str]
                    ) -> QuotaAnswer: ...


def reader(cloud: str) -> _Reader | None:
    """The quota reader module of ``cloud`` (its SDK loads now), or None without one.

    Raises:
        MissingSDKError: the cloud's SDK is not installed (names the pip extra), as the
            adapter's own import reports it.
    """
    module = READERS.get(cloud)
    if module is None:
        return None
    from greenplace.providers.registry import import_adapter

    import_adapter(cloud)  # the SDK, or the adapter's MissingSDKError naming the extra
    return cast(_Reader, importlib.import_module(module))


def read_all(clouds: Sequence[str], regions_by_cloud: Mapping[str, Sequence[str]],
             environ: Mapping[str, str]) -> QuotaReading:
    """Read the quotas of each of ``clouds`` that has credentials, in ``regions_by_cloud``.

    A cloud whose read fails (a ``GreenplaceError``: refused credentials, throttling that
    outlasted the retries, bad settings, its SDK not installed) is reported FAILED with its
    message; the others'
    pools are still returned. A cloud with no regions asked is read as OK with no pools,
    without a call. Anything else raised is a bug and propagates.
    """
    outcomes: list[CloudQuotas] = []
    for cloud in dict.fromkeys(clouds):
        if not credentials.may_have(cloud, environ):  # no SDK imported for nothing
            outcomes.append(CloudQuotas(cloud=cloud, status=QuotaStatus.NO_CREDENTIALS))
            continue
        try:
            module = reader(cloud)
        except GreenplaceError as exc:  # the cloud's SDK is not installed
            outcomes.append(CloudQuotas(cloud=cloud, status=QuotaStatus.FAILED,
                                        error=" ".join(str(exc).split())))
            continue
        if module is None:
            outcomes.append(CloudQuotas(cloud=cloud, status=QuotaStatus.NO_READER))
            continue
        if not module.credentials_found(environ):
            outcomes.append(CloudQuotas(cloud=cloud, status=QuotaStatus.NO_CREDENTIALS))
            continue
        regions = tuple(dict.fromkeys(regions_by_cloud.get(cloud, ())))
        try:
            answer = (module.read_quotas(regions, environ) if regions
                      else QuotaAnswer(pools=(), source="no region asked"))
        except GreenplaceError as exc:
            outcomes.append(CloudQuotas(cloud=cloud, status=QuotaStatus.FAILED,
                                        error=" ".join(str(exc).split())))
            continue
        outcomes.append(CloudQuotas(cloud=cloud, status=QuotaStatus.OK, answer=answer))
    return QuotaReading(clouds=tuple(outcomes))


__all__ = ["READERS", "CloudQuotas", "QuotaAnswer", "QuotaReading", "QuotaSkip",
           "QuotaStatus", "read_all", "reader"]
