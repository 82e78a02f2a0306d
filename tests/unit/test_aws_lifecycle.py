"""The AWS adapter's launch life cycle through boto3 against the EC2 fake (moto behind the
proxy of tests/fakes/ec2.py): exit codes from the console, eventual consistency after
RunInstances, launches EC2 abandons, deletion down to the volumes, the managed-instance
list, opt-in regions, subnets per Availability Zone and the errors they bring.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from greenplace.providers import aws
from greenplace.providers.base import (
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    Placement,
    idempotency_key,
)
from greenplace.providers.registry import get_provider
from greenplace.scheduler.exceptions import (
    AuthError,
    CapacityError,
    InvalidRequestError,
    QuotaError,
    RegionRefusedError,
    TransientError,
)
from tests.fakes.ec2 import Ec2ErrorProxy, ec2_with_errors

REGION = "us-west-2"
JOB = JobLaunch(job_id="job-life", name="life", run="python train.py", policy="greenest",
                attempt=1)
KEY = idempotency_key(JOB.job_id, JOB.attempt)
ON_DEMAND = Placement(cloud="aws", region=REGION, instance_type="p5.48xlarge",
                      accelerator="H100", accelerator_count=8, spot=False)
SPOT = dataclasses.replace(ON_DEMAND, spot=True)
V100 = dataclasses.replace(ON_DEMAND, instance_type="p3.8xlarge", accelerator="V100",
                           accelerator_count=4)


@pytest.fixture(scope="module")
def ec2_server() -> Iterator[tuple[str, Ec2ErrorProxy]]:
    with ec2_with_errors() as pair:
        yield pair


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
         ec2_server: tuple[str, Ec2ErrorProxy]) -> Ec2ErrorProxy:
    """A fresh account on the EC2 fake, reached through AWS_ENDPOINT_URL."""
    url, proxy = ec2_server
    proxy.reset()
    for name in list(os.environ):
        if name.startswith(("AWS_", "GREENPLACE_AWS_")):
            monkeypatch.delenv(name)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAGREENPLACELIFE01", "AWS_SECRET_ACCESS_KEY": "lifecycle-secret",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    return proxy


def _launch(provider: aws.AwsProvider, placement: Placement = ON_DEMAND) -> InstanceHandle:
    return provider.submit(provider.prepare(JOB, placement), idempotency_key=KEY)


def _until(provider: aws.AwsProvider, handle: InstanceHandle,
           done: tuple[InstanceState, ...]) -> InstanceStatus:
    """status() until it is one of ``done`` (the fake's delays are tenths of seconds)."""
    for _ in range(100):
        status = provider.status(handle)
        if status.state in done:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{handle.instance_id} stayed {status}")


def _delete(provider: aws.AwsProvider, handle: InstanceHandle) -> int:
    """delete() until confirmed; how many calls it took."""
    for calls in range(1, 60):
        if provider.delete(handle):
            return calls
        time.sleep(0.05)
    raise AssertionError(f"delete({handle.instance_id}) never confirmed")


# -- the exit code, read back from the console ------------------------------------------


@pytest.mark.parametrize(("placement", "stopped_as"), [(ON_DEMAND, "stopped"),
                                                       (SPOT, "terminated"),
                                                       (V100, "stopped")])
def test_an_instance_that_powered_itself_off_is_exited_with_its_exit_code(
        fake: Ec2ErrorProxy, placement: Placement, stopped_as: str) -> None:
    provider = aws.create({})
    handle = _launch(provider, placement)
    assert provider.status(handle).state is InstanceState.RUNNING
    fake.finish(REGION, handle.instance_id, 7)
    status = provider.status(handle)
    assert status.state is InstanceState.EXITED
    assert status.exit_code == 7
    assert f"EC2 state {stopped_as} (Client.InstanceInitiatedShutdown)" == status.detail
    assert _delete(provider, handle) >= 1
    assert fake.count_resources(REGION) == 0


def test_latest_console_output_is_asked_for_and_its_refusal_falls_back(
        fake: Ec2ErrorProxy) -> None:
    provider = aws.create({})
    nitro = _launch(provider)
    fake.finish(REGION, nitro.instance_id, 0)
    assert provider.status(nitro).exit_code == 0
    assert fake.hits["GetConsoleOutput"] == 1  # Latest=true answered at once
    xen = provider.submit(provider.prepare(dataclasses.replace(JOB, attempt=2), V100),
                          idempotency_key=idempotency_key(JOB.job_id, 2))
    fake.finish(REGION, xen.instance_id, 0)
    assert provider.status(xen).exit_code == 0
    assert fake.hits["GetConsoleOutput"] == 3  # refused with Latest, read buffered


@pytest.mark.parametrize(("code", "falls_back"), [("IncorrectInstanceState", True),
                                                  ("UnauthorizedOperation", False)])
def test_a_refused_latest_read_falls_back_but_an_auth_error_does_not(
        fake: Ec2ErrorProxy, code: str, falls_back: bool) -> None:
    provider = aws.create({})
    handle = _launch(provider)
    fake.finish(REGION, handle.instance_id, 4)
    fake.fail("GetConsoleOutput", code)
    if falls_back:
        assert provider.status(handle).exit_code == 4
    else:
        with pytest.raises(AuthError) as exc:
            provider.status(handle)
        assert (exc.value.operation, exc.value.code) == ("status", code)


def test_exit_code_is_none_while_the_console_has_no_marker(fake: Ec2ErrorProxy) -> None:
    provider = aws.create({})
    handle = _launch(provider)
    fake.finish(REGION, handle.instance_id, 0)
    fake.set_console(handle.instance_id, "[    0.000000] Linux version 6.8.0-1021-aws\n")
    status = provider.status(handle)
    assert (status.state, status.exit_code) == (InstanceState.EXITED, None)


# -- eventual consistency after RunInstances -------------------------------------------


def test_an_id_not_visible_yet_is_pending_and_not_deleted(fake: Ec2ErrorProxy) -> None:
    fake.not_visible_s = 30.0  # longer than the test: the id stays invisible throughout
    provider = aws.create({})
    handle = _launch(provider)
    status = provider.status(handle)
    assert status.state is InstanceState.PENDING
    assert "eventual consistency" in status.detail
    assert provider.delete(handle) is False
    assert fake.hits["TerminateInstances"] == 0
    assert fake.count_resources(REGION) >= 1  # it is there, running



def test_a_redelivery_inside_the_window_gets_the_same_instance_by_its_token(
        fake: Ec2ErrorProxy) -> None:
    fake.not_visible_s = 30.0  # the tag look-up cannot see the first launch yet
    first = _launch(aws.create({}))
    resources = fake.count_resources(REGION)
    again = _launch(aws.create({}))  # another worker, same key
    assert again.instance_id == first.instance_id
    assert fake.hits["RunInstances"] == 2
    assert fake.count_resources(REGION) == resources
    changed = aws.create({"key_name": "ops"})  # same token, other parameters
    with pytest.raises(InvalidRequestError) as exc:
        _launch(changed)
    assert exc.value.code == "IdempotentParameterMismatch"
    assert "settings" in str(exc.value).split("To fix:", 1)[1]


def test_an_id_still_unknown_past_the_window_is_missing_and_deleted(
        fake: Ec2ErrorProxy) -> None:
    provider = aws.create({})
    handle = _launch(provider)
    unknown = "i-0123456789abcdef0"
    launched = datetime.fromisoformat(handle.extra[aws.LAUNCHED_AT])
    recent = dataclasses.replace(handle, instance_id=unknown, extra={
        **handle.extra, aws.LAUNCHED_ID: unknown})
    assert provider.status(recent).state is InstanceState.PENDING
    assert provider.delete(recent) is False
    past_window = launched - timedelta(seconds=aws.EVENTUAL_CONSISTENCY_WINDOW_S + 1)
    old = dataclasses.replace(recent, extra={**recent.extra,
                                             aws.LAUNCHED_AT: past_window.isoformat()})
    assert provider.status(old).state is InstanceState.MISSING
    assert provider.delete(old) is True


def test_the_window_counts_from_the_launch_of_that_very_instance() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    handle = InstanceHandle(provider="aws", cloud="aws", region=REGION, instance_id="i-1",
                            extra={aws.LAUNCHED_AT: (now - timedelta(seconds=10)).isoformat(),
                                   aws.LAUNCHED_ID: "i-1"})
    assert aws.AwsProvider.maybe_not_visible_yet(handle, now=now)
    assert not aws.AwsProvider.maybe_not_visible_yet(
        handle, now=now + timedelta(seconds=aws.EVENTUAL_CONSISTENCY_WINDOW_S))
    other = dataclasses.replace(handle, instance_id="i-2")
    assert not aws.AwsProvider.maybe_not_visible_yet(other, now=now)
    bare = dataclasses.replace(handle, extra={})
    assert not aws.AwsProvider.maybe_not_visible_yet(bare, now=now)


# -- a launch EC2 accepts and then abandons ---------------------------------------------


def test_pending_then_terminated_for_capacity_is_a_launch_failure(fake: Ec2ErrorProxy) -> None:
    fake.fail_launch_later("Server.InsufficientInstanceCapacity", after_s=0.2)
    provider = aws.create({})
    handle = _launch(provider)
    assert provider.status(handle).state is InstanceState.PENDING
    status = _until(provider, handle, (InstanceState.LAUNCH_FAILED,))
    assert isinstance(status.error, CapacityError)
    assert (status.error.provider, status.error.operation, status.error.code) == (
        "aws", "status", "Server.InsufficientInstanceCapacity")
    assert "To fix:" in str(status.error) and handle.instance_id in str(status.error)
    assert _delete(provider, handle) == 1  # terminated already, nothing left behind
    assert fake.count_resources(REGION) == 0


@pytest.mark.parametrize(("reason", "expected"), [
    ("Server.InternalError", CapacityError),
    ("Client.VolumeLimitExceeded", QuotaError),
    ("Client.InternalError", InvalidRequestError),
])
def test_other_launch_time_reasons_are_classified(fake: Ec2ErrorProxy, reason: str,
                                                  expected: type) -> None:
    fake.fail_launch_later(reason, after_s=0.0)
    provider = aws.create({})
    status = _until(provider, _launch(provider), (InstanceState.LAUNCH_FAILED,))
    assert type(status.error) is expected
    assert status.error is not None and status.error.code == reason


# -- delete: instance and volumes ------------------------------------------------------


def test_delete_waits_for_termination_and_removes_a_volume_left_behind(
        fake: Ec2ErrorProxy) -> None:
    fake.terminate_s = 0.2
    provider = aws.create({})
    handle = _launch(provider)
    ec2 = boto3.client("ec2", region_name=REGION)
    # What a custom image whose mapping keeps a volume (DeleteOnTermination=false) leaves.
    kept = ec2.create_volume(AvailabilityZone=handle.zone, Size=100, TagSpecifications=[{
        "ResourceType": "volume", "Tags": [{"Key": aws.KEY_TAG, "Value": KEY}]}])["VolumeId"]
    assert provider.delete(handle) is False
    assert provider.status(handle).state is InstanceState.TERMINATED
    assert fake.hits["TerminateInstances"] == 1
    _delete(provider, handle)
    assert fake.hits["TerminateInstances"] == 1  # shutting-down is waited for, not re-sent
    assert fake.hits["DeleteVolume"] == 1
    left = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [kept]}])["Volumes"]
    assert left == []
    assert fake.count_resources(REGION) == 0


# -- list_managed ----------------------------------------------------------------------


def test_list_managed_is_one_call_and_rebuilds_the_submitted_handles(
        fake: Ec2ErrorProxy) -> None:
    provider = aws.create({})
    first = _launch(provider)
    retry = dataclasses.replace(JOB, attempt=2)
    second = provider.submit(provider.prepare(retry, SPOT),
                             idempotency_key=idempotency_key(retry.job_id, 2))
    ec2 = boto3.client("ec2", region_name=REGION)
    ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)  # not greenplace's
    fake.finish(REGION, second.instance_id, 1)
    before = fake.hits["DescribeInstances"]
    listed = {m.handle.instance_id: m for m in provider.list_managed(REGION)}
    assert fake.hits["DescribeInstances"] == before + 1
    assert set(listed) == {first.instance_id, second.instance_id}
    assert listed[first.instance_id].handle == first
    assert listed[second.instance_id].handle == second
    assert (listed[first.instance_id].job_id, listed[first.instance_id].attempt) == (
        JOB.job_id, 1)
    assert listed[first.instance_id].status.state is InstanceState.RUNNING
    finished = listed[second.instance_id].status
    assert (finished.state, finished.exit_code) == (InstanceState.EXITED, None)
    assert fake.hits["GetConsoleOutput"] == 0
    assert provider.list_managed("eu-west-1") == []


def test_list_managed_follows_every_page(fake: Ec2ErrorProxy,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aws, "LIST_PAGE_SIZE", 5)
    provider = aws.create({})
    launched = set()
    for attempt in range(1, 8):
        job = dataclasses.replace(JOB, attempt=attempt)
        launched.add(provider.submit(provider.prepare(job, ON_DEMAND),
                                     idempotency_key=idempotency_key(job.job_id, attempt)
                                     ).instance_id)
    before = fake.hits["DescribeInstances"]
    listed = provider.list_managed(REGION)
    assert {m.handle.instance_id for m in listed} == launched
    assert sorted(m.attempt or 0 for m in listed) == list(range(1, 8))
    assert fake.hits["DescribeInstances"] == before + 2  # two pages of at most five


def test_list_managed_throttled_is_transient(fake: Ec2ErrorProxy) -> None:
    fake.fail("DescribeInstances", "RequestLimitExceeded", times=5)
    with pytest.raises(TransientError) as exc:
        aws.create({}).list_managed(REGION)
    assert (exc.value.operation, exc.value.code) == ("list_managed", "RequestLimitExceeded")
    assert fake.hits["DescribeInstances"] == 3  # reads keep a few SDK attempts


# -- opt-in regions ----------------------------------------------------------------------


def test_regions_not_enabled_lists_opt_in_regions_and_is_cached(fake: Ec2ErrorProxy) -> None:
    fake.disable_region("ap-east-1")
    fake.disable_region("me-south-1")
    provider = aws.create({})
    assert provider.regions_not_enabled() == frozenset({"ap-east-1", "me-south-1"})
    assert provider.regions_not_enabled() == frozenset({"ap-east-1", "me-south-1"})
    assert fake.hits["DescribeRegions"] == 1
    assert aws.create({}).regions_not_enabled() == frozenset({"ap-east-1", "me-south-1"})


def test_regions_not_enabled_is_empty_with_a_warning_on_error(
        fake: Ec2ErrorProxy, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_monotonic = time.monotonic
    fake.disable_region("ap-east-1")
    fake.fail("DescribeRegions", "UnauthorizedOperation", times=1)
    provider = aws.create({})
    with caplog.at_level(logging.WARNING, logger="greenplace.providers.aws"):
        assert provider.regions_not_enabled() == frozenset()
    assert "ec2:DescribeRegions" in caplog.text and "lifecycle-secret" not in caplog.text
    # placement asks before every job: the failed answer is kept for a minute, not retried
    assert provider.regions_not_enabled() == frozenset()
    assert fake.hits["DescribeRegions"] == 1
    monkeypatch.setattr(aws.time, "monotonic",
                        lambda: real_monotonic() + aws.REGIONS_ERROR_CACHE_S + 1)
    assert provider.regions_not_enabled() == frozenset({"ap-east-1"})


@pytest.mark.parametrize("code", ["OptInRequired", "AuthFailure"])
def test_a_launch_in_a_region_not_enabled_is_refused_and_fails_over(
        fake: Ec2ErrorProxy, code: str) -> None:
    fake.disable_region("ap-east-1", code=code)
    provider = get_provider("aws")
    placement = dataclasses.replace(ON_DEMAND, region="ap-east-1")
    with pytest.raises(RegionRefusedError) as exc:
        provider.submit(provider.prepare(JOB, placement), idempotency_key=KEY)
    assert (exc.value.operation, exc.value.code) == ("submit", code)
    assert "not enabled" in str(exc.value) and "To fix:" in str(exc.value)


def test_auth_failure_in_an_enabled_region_stays_an_auth_error(fake: Ec2ErrorProxy) -> None:
    fake.disable_region("ap-east-1")
    fake.fail("DescribeInstances", "AuthFailure", times=5)
    with pytest.raises(AuthError):
        _launch(aws.create({}))


# -- errors with their own fix ---------------------------------------------------------


@pytest.mark.parametrize(("code", "fix"), [
    ("IdempotentParameterMismatch", "settings"),
    ("VPCIdNotSpecified", "subnet_ids.<region>"),
])
def test_request_errors_say_how_to_fix_them(fake: Ec2ErrorProxy, code: str, fix: str) -> None:
    fake.fail("RunInstances", code)
    with pytest.raises(InvalidRequestError) as exc:
        _launch(aws.create({}))
    assert exc.value.code == code
    assert fix in str(exc.value).split("To fix:", 1)[1]


# -- subnets, one per Availability Zone -------------------------------------------------


def _default_subnets(region: str) -> list[str]:
    ec2 = boto3.client("ec2", region_name=region)
    subnets = ec2.describe_subnets(
        Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    return [s["SubnetId"] for s in sorted(subnets, key=lambda s: s["AvailabilityZone"])]


def test_capacity_error_in_one_subnet_moves_to_the_next(fake: Ec2ErrorProxy) -> None:
    first, second, *_ = _default_subnets(REGION)
    provider = aws.create({f"subnet_ids.{REGION}": f"{first}, {second}"})
    request = provider.prepare(JOB, ON_DEMAND)
    assert request.payload["SubnetId"] == first
    assert request.payload["ClientToken"] == aws.launch_token(KEY, first) == f"{KEY}@{first}"
    fake.fail("RunInstances", "InsufficientInstanceCapacity")
    handle = provider.submit(request, idempotency_key=KEY)
    assert fake.hits["RunInstances"] == 2
    instance = boto3.client("ec2", region_name=REGION).describe_instances(
        InstanceIds=[handle.instance_id])["Reservations"][0]["Instances"][0]
    assert instance["SubnetId"] == second == handle.extra["subnet_id"]
    assert instance["ClientToken"] == aws.launch_token(KEY, second)
    assert provider.submit(request, idempotency_key=KEY) == handle  # a redelivery finds it
    assert fake.hits["RunInstances"] == 2


def test_other_errors_and_the_last_subnet_raise(fake: Ec2ErrorProxy) -> None:
    first, second, *_ = _default_subnets(REGION)
    provider = aws.create({f"subnet_ids.{REGION}": f"{first},{second}"})
    fake.fail("RunInstances", "VcpuLimitExceeded")
    with pytest.raises(QuotaError):
        _launch(provider)
    assert fake.hits["RunInstances"] == 1
    fake.fail("RunInstances", "InsufficientInstanceCapacity", times=2)
    with pytest.raises(CapacityError):
        _launch(provider)
    assert fake.hits["RunInstances"] == 3


def test_one_subnet_setting_is_a_one_item_list(fake: Ec2ErrorProxy) -> None:
    first = _default_subnets(REGION)[0]
    provider = aws.create({f"subnet_id.{REGION}": first})
    assert provider.subnets_for(REGION) == [first]
    fake.fail("RunInstances", "InsufficientInstanceCapacity")
    with pytest.raises(CapacityError):
        _launch(provider)
    assert fake.hits["RunInstances"] == 1


# -- what the instance gets ------------------------------------------------------------


def test_imds_hop_limit_lets_containers_reach_it(fake: Ec2ErrorProxy) -> None:
    handle = _launch(aws.create({}))
    instance = boto3.client("ec2", region_name=REGION).describe_instances(
        InstanceIds=[handle.instance_id])["Reservations"][0]["Instances"][0]
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 2
    assert instance["MetadataOptions"]["HttpTokens"] == "required"


def test_a_launch_fault_armed_for_one_region_spares_the_others(fake: Ec2ErrorProxy) -> None:
    fake.fail_launch_later(after_s=0.0, region="eu-west-1")
    provider = aws.create({})
    spared = _launch(provider)
    assert provider.status(spared).state is InstanceState.RUNNING
    placement = dataclasses.replace(ON_DEMAND, region="eu-west-1")
    hit = provider.submit(provider.prepare(JOB, placement), idempotency_key=KEY)
    assert _until(provider, hit, (InstanceState.LAUNCH_FAILED,)).error is not None
