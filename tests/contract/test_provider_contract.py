"""The Provider contract, run against every adapter that has a case (see adapter_case.py).

What the queue relies on, whatever the cloud: prepare() is pure and exact,
submit() is idempotent per key (also from another adapter object), status()
follows the instance (and reads the command's exit code back), delete() leaves
nothing behind, list_managed() finds every launched instance, all of them
tolerate an instance's absence, capabilities are
declared honestly, errors arrive as the right class with provider, operation
and the cloud's own code, and no secret ever shows.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import pytest

from greenplace.providers.base import (
    Feature,
    InstanceHandle,
    InstanceState,
    JobLaunch,
    Provider,
    idempotency_key,
    startup_script,
)
from greenplace.providers.registry import REGISTRY
from greenplace.scheduler.exceptions import (
    AuthError,
    CapacityError,
    ProviderError,
    QuotaError,
    TransientError,
)
from greenplace.scheduler.limits import DEFAULT_MAX_RUN_BYTES, JOB_ID_ALLOWANCE_CHARS, run_bytes
from tests.contract.adapter_case import ERROR_KINDS, AdapterCase

LIVE = (InstanceState.PENDING, InstanceState.RUNNING)
GONE = (InstanceState.TERMINATED, InstanceState.MISSING)
EXPECTED_CLASS = {"capacity": CapacityError, "quota": QuotaError, "transient": TransientError,
                  "auth": AuthError}


@pytest.fixture
def job() -> JobLaunch:
    return JobLaunch(job_id=f"contract-{uuid.uuid4().hex[:10]}", name="contract-train",
                     run="python train.py --epochs 1", policy="balanced", attempt=1)


def _key(job: JobLaunch) -> str:
    return idempotency_key(job.job_id, job.attempt)


def _no_secret(case: AdapterCase, text: str) -> None:
    for secret in case.secrets:
        assert secret not in text


def _needs(provider: Provider, feature: Feature) -> None:
    if feature not in provider.features:
        pytest.skip(f"{provider.name} does not declare {feature}")


def test_is_a_registered_provider_with_declared_features(adapter_case: AdapterCase) -> None:
    provider = adapter_case.make_provider()
    assert isinstance(provider, Provider)
    assert provider.name == adapter_case.name and provider.name in REGISTRY
    assert isinstance(provider.features, frozenset)
    assert all(isinstance(f, Feature) for f in provider.features)
    assert Feature.CANCEL in provider.features  # the queue cannot work without it


def test_prepare_is_pure_deterministic_and_serialisable(adapter_case: AdapterCase,
                                                        job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    before = adapter_case.count_instances() if adapter_case.count_instances else None
    request = provider.prepare(job, adapter_case.placement)
    if adapter_case.count_instances is not None:
        assert adapter_case.count_instances() == before
    assert provider.prepare(job, adapter_case.placement) == request
    assert adapter_case.make_provider().prepare(job, adapter_case.placement) == request
    text = json.dumps(dataclasses.asdict(request))
    _no_secret(adapter_case, text)
    assert request.provider == adapter_case.name
    assert request.region == adapter_case.placement.region
    assert request.instance_type == adapter_case.placement.instance_type
    assert request.spot is False
    if Feature.TAGS in provider.features:
        assert request.tags["greenplace:job-id"] == job.job_id
        assert request.tags["greenplace:attempt"] == str(job.attempt)
        assert request.tags["greenplace:policy"] == job.policy
    if Feature.STARTUP_SCRIPT in provider.features:
        assert request.startup_script == startup_script(job)


def test_a_run_at_the_jobs_file_limit_fits_prepare(adapter_case: AdapterCase,
                                                   job: JobLaunch) -> None:
    """The jobs-file limit on `run` (scheduler.limits) leaves no job that prepare() refuses."""
    at_limit = "'" * 10 + "x" * (DEFAULT_MAX_RUN_BYTES - 50)
    assert run_bytes(at_limit) == DEFAULT_MAX_RUN_BYTES
    longest = dataclasses.replace(job, job_id="f" * JOB_ID_ALLOWANCE_CHARS, run=at_limit)
    request = adapter_case.make_provider().prepare(longest, adapter_case.placement)
    assert request.startup_script == startup_script(longest)


def test_spot_is_declared_or_refused(adapter_case: AdapterCase, job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    spot = dataclasses.replace(adapter_case.placement, spot=True)
    if Feature.SPOT in provider.features:
        assert adapter_case.spot_placement is not None
        assert provider.prepare(job, adapter_case.spot_placement).spot is True
    else:
        with pytest.raises(ProviderError, match="To fix:"):
            provider.prepare(job, spot)


def test_submit_launches_and_status_follows(adapter_case: AdapterCase, job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    before = adapter_case.count_instances() if adapter_case.count_instances else None
    handle = provider.submit(provider.prepare(job, adapter_case.placement),
                             idempotency_key=_key(job))
    assert isinstance(handle, InstanceHandle)
    assert handle.provider == adapter_case.name and handle.instance_id
    assert handle.region == adapter_case.placement.region
    assert provider.status(handle).state in LIVE
    if before is not None and adapter_case.count_instances is not None:
        assert adapter_case.count_instances() == before + 1


def test_same_key_returns_the_same_instance(adapter_case: AdapterCase, job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    _needs(provider, Feature.IDEMPOTENT_SUBMIT)
    request = provider.prepare(job, adapter_case.placement)
    handle = provider.submit(request, idempotency_key=_key(job))
    count = adapter_case.count_instances() if adapter_case.count_instances else None
    assert provider.submit(request, idempotency_key=_key(job)).instance_id == handle.instance_id
    other = adapter_case.make_provider()  # a redelivery to another worker
    again = other.submit(other.prepare(job, adapter_case.placement), idempotency_key=_key(job))
    assert again.instance_id == handle.instance_id
    if count is not None and adapter_case.count_instances is not None:
        assert adapter_case.count_instances() == count


def test_next_attempt_is_a_new_instance(adapter_case: AdapterCase, job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    first = provider.submit(provider.prepare(job, adapter_case.placement),
                            idempotency_key=_key(job))
    retry = dataclasses.replace(job, attempt=2)
    second = provider.submit(provider.prepare(retry, adapter_case.placement),
                             idempotency_key=_key(retry))
    assert second.instance_id != first.instance_id


def _delete_until_gone(provider: Provider, handle: InstanceHandle) -> None:
    """delete() until it confirms; a fake's deletion may take a few polls."""
    for _ in range(50):
        if provider.delete(handle):
            return
        time.sleep(0.1)
    raise AssertionError(f"delete({handle.instance_id}) never confirmed")


def _settled(provider: Provider, handle: InstanceHandle) -> InstanceHandle:
    """Follow a pending launch until the instance exists (RUNNING), for up to 10 s."""
    for _ in range(100):
        status = provider.status(handle)
        handle = status.handle or handle
        if status.state is InstanceState.RUNNING:
            return handle
        assert status.state is InstanceState.PENDING, status
        time.sleep(0.1)
    raise AssertionError(f"{handle.instance_id} never reached RUNNING")


def test_delete_leaves_nothing_and_is_idempotent(adapter_case: AdapterCase,
                                                 job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    before = adapter_case.count_resources() if adapter_case.count_resources else None
    handle = provider.submit(provider.prepare(job, adapter_case.placement),
                             idempotency_key=_key(job))
    _delete_until_gone(provider, handle)
    assert provider.status(handle).state in GONE
    assert provider.delete(handle) is True
    assert adapter_case.make_provider().status(handle).state in GONE
    if before is not None and adapter_case.count_resources is not None:
        assert adapter_case.count_resources() == before


def test_unknown_instance_is_missing_and_delete_is_a_no_op(adapter_case: AdapterCase,
                                                           job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    handle = provider.submit(provider.prepare(job, adapter_case.placement),
                             idempotency_key=_key(job))
    unknown = dataclasses.replace(handle, instance_id=adapter_case.unknown_instance_id)
    assert provider.status(unknown).state is InstanceState.MISSING
    assert provider.delete(unknown) is True


def test_list_managed_finds_every_launched_instance(adapter_case: AdapterCase,
                                                    job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    first = _settled(provider, provider.submit(provider.prepare(job, adapter_case.placement),
                                               idempotency_key=_key(job)))
    retry = dataclasses.replace(job, attempt=2)
    second = _settled(provider, provider.submit(
        provider.prepare(retry, adapter_case.placement), idempotency_key=_key(retry)))
    listed = {m.handle.instance_id: m for m in provider.list_managed(first.region)}
    assert {first.instance_id, second.instance_id} <= set(listed)
    assert (listed[first.instance_id].job_id, listed[first.instance_id].attempt) == (
        job.job_id, 1)
    assert listed[second.instance_id].attempt == 2
    assert listed[first.instance_id].status.state in LIVE
    assert listed[first.instance_id].handle.provider == adapter_case.name
    _delete_until_gone(provider, second)
    after = {m.handle.instance_id: m for m in provider.list_managed(first.region)}
    assert second.instance_id not in after or after[second.instance_id].status.state in GONE


@pytest.mark.parametrize("exit_code", [0, 3])
def test_exit_code_is_read_back(adapter_case: AdapterCase, job: JobLaunch,
                                exit_code: int) -> None:
    if adapter_case.finish is None:
        pytest.skip("this fake does not model the serial console")
    provider = adapter_case.make_provider()
    handle = _settled(provider, provider.submit(provider.prepare(job, adapter_case.placement),
                                                idempotency_key=_key(job)))
    adapter_case.finish(handle, exit_code)
    status = adapter_case.make_provider().status(handle)
    assert status.state is InstanceState.EXITED, status
    assert status.exit_code == exit_code
    _delete_until_gone(provider, handle)


def test_spot_launch(adapter_case: AdapterCase, job: JobLaunch) -> None:
    provider = adapter_case.make_provider()
    _needs(provider, Feature.SPOT)
    assert adapter_case.spot_placement is not None
    handle = provider.submit(provider.prepare(job, adapter_case.spot_placement),
                             idempotency_key=_key(job))
    assert provider.status(handle).state in LIVE


def test_check_credentials_describes_without_secrets(
        adapter_case: AdapterCase, capsys: pytest.CaptureFixture[str]) -> None:
    identity = adapter_case.make_provider().check_credentials()
    assert isinstance(identity, str) and identity
    out = capsys.readouterr()
    _no_secret(adapter_case, identity + out.out + out.err)


@pytest.mark.parametrize("kind", ERROR_KINDS)
def test_cloud_errors_arrive_as_their_class(adapter_case: AdapterCase, job: JobLaunch,
                                            kind: str) -> None:
    if adapter_case.inject_error is None or kind not in adapter_case.error_kinds:
        pytest.skip(f"this case cannot inject {kind} errors")
    provider = adapter_case.inject_error(kind)
    request = provider.prepare(job, adapter_case.placement)
    with pytest.raises(ProviderError) as exc:
        provider.submit(request, idempotency_key=_key(job))
    error = exc.value
    assert isinstance(error, EXPECTED_CLASS[kind]), repr(error)
    assert (error.provider, error.operation) == (adapter_case.name, "submit")
    assert error.code
    assert "To fix:" in str(error)
    _no_secret(adapter_case, str(error))
