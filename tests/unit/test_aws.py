"""The AWS adapter through the real boto3 SDK: moto in-process, and a moto server over HTTP.

The server tests put a proxy in front of moto that answers chosen EC2 actions
with real EC2 error documents and statuses, and counts every call, so error
mapping and "one attempt only on create" are checked at the wire.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from greenplace.providers import aws
from greenplace.providers.base import (
    InstanceHandle,
    InstanceState,
    JobLaunch,
    Placement,
    idempotency_key,
    startup_script,
)
from greenplace.providers.registry import get_provider
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
from tests.fakes.ec2 import Ec2ErrorProxy, ec2_with_errors

REPO = Path(__file__).resolve().parents[2]
SECRET = "gpTestSecretValue0123456789abcdefNEVERPRINT"
ACCESS_KEY = "AKIAGREENPLACETEST01"

JOB = JobLaunch(job_id="job-7f3a", name="resnet50", run="python train.py --epochs 3 --name 'a b'",
                policy="greenest", attempt=1)
ON_DEMAND = Placement(cloud="aws", region="eu-north-1", instance_type="p4d.24xlarge",
                      accelerator="A100", accelerator_count=8, spot=False,
                      price_usd_per_hour=21.96)
SPOT = dataclasses.replace(ON_DEMAND, spot=True)
KEY = idempotency_key(JOB.job_id, JOB.attempt)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials only from env, no shared files, no instance metadata, no endpoint."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "GREENPLACE_AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def mocked(aws_env: None) -> Iterator[None]:
    """moto in-process, keeping our own env credentials (so secrecy checks mean something)."""
    with mock_aws(config={"core": {"mock_credentials": False}}):
        yield


@pytest.fixture(scope="module")
def ec2_server() -> Iterator[tuple[str, Ec2ErrorProxy]]:
    with ec2_with_errors() as pair:
        yield pair


@pytest.fixture
def server(aws_env: None, monkeypatch: pytest.MonkeyPatch,
           ec2_server: tuple[str, Ec2ErrorProxy]) -> Ec2ErrorProxy:
    """A fresh moto account behind an error-injecting proxy, reached via AWS_ENDPOINT_URL."""
    url, proxy = ec2_server
    proxy.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    return proxy


def _describe(region: str, instance_id: str) -> dict:
    ec2 = boto3.client("ec2", region_name=region)
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def _tagged(region: str, key: str) -> list[dict]:
    ec2 = boto3.client("ec2", region_name=region)
    answer = ec2.describe_instances(Filters=[{"Name": f"tag:{aws.KEY_TAG}", "Values": [key]}])
    return [i for r in answer["Reservations"] for i in r["Instances"]]


# -- prepare: pure, exact ----------------------------------------------------------------


def test_prepare_builds_the_exact_run_instances_request_without_network(
        aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    request = aws.create({}).prepare(JOB, ON_DEMAND)
    payload = request.payload
    assert payload["ImageId"] == f"resolve:ssm:{aws.DLAMI_PARAMETER_X86_64}"
    assert payload["InstanceType"] == "p4d.24xlarge"
    assert (payload["MinCount"], payload["MaxCount"]) == (1, 1)
    assert payload["ClientToken"] == KEY == "gp-job-7f3a-a1"
    assert payload["UserData"] == startup_script(JOB) == request.startup_script
    assert payload["InstanceInitiatedShutdownBehavior"] == "stop"
    assert payload["MetadataOptions"] == {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                          "HttpPutResponseHopLimit": 2}
    assert "InstanceMarketOptions" not in payload
    assert [s["ResourceType"] for s in payload["TagSpecifications"]] == ["instance", "volume"]
    tags = {t["Key"]: t["Value"] for t in payload["TagSpecifications"][0]["Tags"]}
    assert tags == {
        "greenplace:job-id": "job-7f3a", "greenplace:attempt": "1",
        "greenplace:policy": "greenest", "greenplace:managed": "true",
        "Name": "greenplace-resnet50", aws.KEY_TAG: KEY,
    } == request.tags
    assert (request.provider, request.cloud, request.region) == ("aws", "aws", "eu-north-1")
    text = json.dumps(dataclasses.asdict(request))
    assert SECRET not in text and ACCESS_KEY not in text
    assert aws.create({}).prepare(JOB, ON_DEMAND) == request  # deterministic


def test_prepare_spot_uses_one_time_spot_market_options(aws_env: None) -> None:
    payload = aws.create({}).prepare(JOB, SPOT).payload
    assert payload["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "one-time",
                        "InstanceInterruptionBehavior": "terminate"},
    }
    # EC2 refuses "stop" for a one-time spot instance: it terminates on power-off.
    assert payload["InstanceInitiatedShutdownBehavior"] == "terminate"


@pytest.mark.parametrize(("instance_type", "parameter"), [
    ("p5.48xlarge", aws.DLAMI_PARAMETER_X86_64),
    ("g6.2xlarge", aws.DLAMI_PARAMETER_X86_64),
    ("g5g.xlarge", aws.DLAMI_PARAMETER_ARM64),
    ("trn1.32xlarge", aws.DLAMI_PARAMETER_NEURON),
    ("inf2.xlarge", aws.DLAMI_PARAMETER_NEURON),
    ("p3.2xlarge", aws.DLAMI_PARAMETER_PROPRIETARY),
    ("p3dn.24xlarge", aws.DLAMI_PARAMETER_PROPRIETARY),
])
def test_default_image_is_the_deep_learning_ami_of_the_architecture(
        aws_env: None, instance_type: str, parameter: str) -> None:
    placement = dataclasses.replace(ON_DEMAND, instance_type=instance_type)
    assert aws.create({}).prepare(JOB, placement).payload["ImageId"] == f"resolve:ssm:{parameter}"


def test_image_settings_override_the_default(aws_env: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENPLACE_AWS_AMI_PARAMETER", "/my/golden/ami")
    assert aws.create({}).prepare(JOB, ON_DEMAND).payload["ImageId"] == "resolve:ssm:/my/golden/ami"
    provider = aws.create({"image_id": "ami-0aaaaaaaaaaaaaaaa",
                           "image_id.eu-north-1": "ami-0bbbbbbbbbbbbbbbb",
                           "key_name": "ops", "instance_profile": "greenplace-job",
                           "subnet_id.eu-north-1": "subnet-1",
                           "security_group_ids.eu-north-1": "sg-1, sg-2"})
    payload = provider.prepare(JOB, ON_DEMAND).payload
    assert payload["ImageId"] == "ami-0bbbbbbbbbbbbbbbb"
    assert payload["KeyName"] == "ops"
    assert payload["IamInstanceProfile"] == {"Name": "greenplace-job"}
    assert payload["SubnetId"] == "subnet-1"
    assert payload["SecurityGroupIds"] == ["sg-1", "sg-2"]
    other = dataclasses.replace(ON_DEMAND, region="us-east-1")
    assert provider.prepare(JOB, other).payload["ImageId"] == "ami-0aaaaaaaaaaaaaaaa"


def test_settings_json_from_the_environment(aws_env: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENPLACE_AWS_SETTINGS", json.dumps(
        {"subnet_id.eu-north-1": "subnet-9", "key_name": "from-json"}))
    monkeypatch.setenv("GREENPLACE_AWS_KEY_NAME", "from-env")
    payload = aws.create({}).prepare(JOB, ON_DEMAND).payload
    assert (payload["SubnetId"], payload["KeyName"]) == ("subnet-9", "from-env")
    assert aws.create({"key_name": "from-config"}).prepare(JOB, ON_DEMAND).payload[
        "KeyName"] == "from-config"
    monkeypatch.setenv("GREENPLACE_AWS_SETTINGS", "{not json")
    with pytest.raises(ConfigError, match="To fix:"):
        aws.create({})


def test_unknown_setting_is_named_with_a_suggestion(aws_env: None) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'key_name'"):
        aws.create({"keyname": "ops"})


def test_prepare_rejects_a_placement_of_another_cloud_and_oversized_user_data(
        aws_env: None) -> None:
    provider = aws.create({})
    with pytest.raises(InvalidRequestError, match="To fix:") as exc:
        provider.prepare(JOB, dataclasses.replace(ON_DEMAND, cloud="gcp"))
    assert exc.value.code == "WrongCloud"
    huge = dataclasses.replace(JOB, run="echo " + "x" * 20_000)
    with pytest.raises(InvalidRequestError) as exc:
        provider.prepare(huge, ON_DEMAND)
    assert exc.value.code == "UserDataTooLarge"


def test_client_token_fits_ec2_limits_and_is_stable() -> None:
    assert aws.client_token("gp-job-1-a1") == "gp-job-1-a1"
    long_key = "gp-" + "j" * 100 + "-a2"
    token = aws.client_token(long_key)
    assert len(token) <= 64 and token.isascii() and token == aws.client_token(long_key)
    assert token != aws.client_token(long_key.replace("a2", "a3"))
    assert aws.client_token("gp-jöb-a1").isascii()


# -- moto in-process: launch, idempotency, status, delete ------------------------------


def test_submit_launches_tagged_instance_with_user_data_in_the_placed_region(
        mocked: None) -> None:
    provider = get_provider("aws")
    request = provider.prepare(JOB, ON_DEMAND)
    handle = provider.submit(request, idempotency_key=KEY)
    assert (handle.provider, handle.cloud, handle.region) == ("aws", "aws", "eu-north-1")
    assert handle.zone and handle.zone.startswith("eu-north-1")
    instance = _describe("eu-north-1", handle.instance_id)
    assert instance["InstanceType"] == "p4d.24xlarge"
    assert instance["ImageId"] == request.payload["ImageId"]
    assert instance["ClientToken"] == KEY
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert "InstanceLifecycle" not in instance
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["greenplace:job-id"] == "job-7f3a"
    assert tags["greenplace:attempt"] == "1"
    assert tags["greenplace:policy"] == "greenest"
    assert tags[aws.KEY_TAG] == KEY
    ec2 = boto3.client("ec2", region_name="eu-north-1")
    user_data = ec2.describe_instance_attribute(InstanceId=handle.instance_id,
                                                Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(user_data).decode() == startup_script(JOB)
    volumes = ec2.describe_volumes(Filters=[{"Name": "tag:greenplace:job-id",
                                             "Values": ["job-7f3a"]}])["Volumes"]
    assert len(volumes) == 1
    assert _tagged("us-east-1", KEY) == []  # nothing in another region


def test_same_key_returns_the_same_instance_from_any_adapter_object(mocked: None) -> None:
    first = get_provider("aws")
    request = first.prepare(JOB, ON_DEMAND)
    handle = first.submit(request, idempotency_key=KEY)
    assert first.submit(request, idempotency_key=KEY) == handle
    second = get_provider("aws")  # e.g. another worker after a redelivery
    assert second.submit(second.prepare(JOB, ON_DEMAND), idempotency_key=KEY) == handle
    assert len(_tagged("eu-north-1", KEY)) == 1


def test_next_attempt_launches_a_new_instance(mocked: None) -> None:
    provider = get_provider("aws")
    first = provider.submit(provider.prepare(JOB, ON_DEMAND), idempotency_key=KEY)
    retry = dataclasses.replace(JOB, attempt=2)
    key2 = idempotency_key(retry.job_id, retry.attempt)
    second = provider.submit(provider.prepare(retry, ON_DEMAND), idempotency_key=key2)
    assert second.instance_id != first.instance_id
    assert _describe("eu-north-1", second.instance_id)["ClientToken"] == key2


def test_submit_uses_the_key_it_is_given(mocked: None) -> None:
    provider = get_provider("aws")
    handle = provider.submit(provider.prepare(JOB, ON_DEMAND), idempotency_key="gp-custom-a9")
    instance = _describe("eu-north-1", handle.instance_id)
    assert instance["ClientToken"] == "gp-custom-a9"
    assert {t["Key"]: t["Value"] for t in instance["Tags"]}[aws.KEY_TAG] == "gp-custom-a9"


def test_spot_placement_launches_a_spot_instance(mocked: None) -> None:
    provider = get_provider("aws")
    handle = provider.submit(provider.prepare(JOB, SPOT), idempotency_key=KEY)
    assert handle.extra["spot"] == "true"
    assert _describe("eu-north-1", handle.instance_id)["InstanceLifecycle"] == "spot"


def test_status_and_delete_follow_the_instance(mocked: None) -> None:
    provider = get_provider("aws")
    handle = provider.submit(provider.prepare(JOB, ON_DEMAND), idempotency_key=KEY)
    assert provider.status(handle).state in (InstanceState.PENDING, InstanceState.RUNNING)
    assert provider.delete(handle) is False  # TerminateInstances sent, not confirmed yet
    status = provider.status(handle)
    assert status.state is InstanceState.TERMINATED
    assert "Client.UserInitiatedShutdown" in status.detail
    assert provider.delete(handle) is True  # terminated, and its root volume went with it
    assert provider.delete(handle) is True  # idempotent
    unknown = dataclasses.replace(handle, instance_id="i-0123456789abcdef0")
    assert provider.status(unknown).state is InstanceState.MISSING
    assert provider.delete(unknown) is True


def test_check_credentials_names_the_identity_and_never_the_secret(
        mocked: None, capsys: pytest.CaptureFixture[str]) -> None:
    identity = get_provider("aws").check_credentials()
    assert "arn:aws:" in identity and "123456789012" in identity and "env" in identity
    assert SECRET not in identity and ACCESS_KEY not in identity
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err


def test_check_credentials_without_credentials_is_an_auth_error(
        aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(AuthError, match="To fix:") as exc:
        get_provider("aws").check_credentials()
    assert (exc.value.provider, exc.value.operation) == ("aws", "check_credentials")
    assert exc.value.code == "NoCredentialsError"


@pytest.mark.parametrize(("state", "reason", "lifecycle", "expected"), [
    ("pending", "", None, InstanceState.PENDING),
    ("running", "", "spot", InstanceState.RUNNING),
    ("terminated", "Server.SpotInstanceTermination", "spot", InstanceState.PREEMPTED),
    ("stopped", "Server.SpotInstanceShutdown", "spot", InstanceState.PREEMPTED),
    ("shutting-down", "Client.InstanceInitiatedShutdown", None, InstanceState.EXITED),
    ("stopped", "Client.InstanceInitiatedShutdown", None, InstanceState.EXITED),
    ("terminated", "Server.InsufficientInstanceCapacity", None, InstanceState.LAUNCH_FAILED),
    ("terminated", "Server.InternalError", None, InstanceState.LAUNCH_FAILED),
    ("terminated", "Client.VolumeLimitExceeded", None, InstanceState.LAUNCH_FAILED),
    ("stopped", "Server.ScheduledStop", None, InstanceState.FAILED),
    ("stopped", "Client.UserInitiatedShutdown", None, InstanceState.TERMINATED),
    ("terminated", "Client.UserInitiatedShutdown", None, InstanceState.TERMINATED),
])
def test_instance_status_maps_state_and_reason(state: str, reason: str, lifecycle: str | None,
                                               expected: InstanceState) -> None:
    instance: dict[str, Any] = {"State": {"Name": state}, "StateReason": {"Code": reason}}
    if lifecycle:
        instance["InstanceLifecycle"] = lifecycle
    assert aws.instance_status(instance, region="eu-north-1").state is expected


# -- a moto server over HTTP, errors injected at the wire -------------------------------


def test_round_trip_over_http(server: Ec2ErrorProxy) -> None:
    provider = get_provider("aws")
    handle = provider.submit(provider.prepare(JOB, ON_DEMAND), idempotency_key=KEY)
    assert provider.submit(provider.prepare(JOB, ON_DEMAND), idempotency_key=KEY) == handle
    assert provider.status(handle).state in (InstanceState.PENDING, InstanceState.RUNNING)
    assert provider.delete(handle) is False
    assert provider.status(handle).state is InstanceState.TERMINATED
    assert provider.delete(handle) is True
    assert server.hits["RunInstances"] == 1
    assert server.hits["TerminateInstances"] == 1
    assert server.hits["DescribeInstances"] >= 4


@pytest.mark.parametrize(("code", "expected"), [
    ("InsufficientInstanceCapacity", CapacityError),
    ("Unsupported", CapacityError),
    ("SpotMaxPriceTooLow", CapacityError),
    ("InstanceLimitExceeded", QuotaError),
    ("VcpuLimitExceeded", QuotaError),
    ("MaxSpotInstanceCountExceeded", QuotaError),
    ("RequestLimitExceeded", TransientError),
    ("InternalError", TransientError),
    ("ServiceUnavailable", TransientError),
    ("AuthFailure", AuthError),
    ("UnauthorizedOperation", AuthError),
    ("InvalidParameterValue", InvalidRequestError),
])
def test_run_instances_errors_map_to_classes_after_one_attempt(
        server: Ec2ErrorProxy, code: str, expected: type[ProviderError]) -> None:
    provider = get_provider("aws")
    request = provider.prepare(JOB, SPOT)
    server.fail("RunInstances", code, times=5)
    with pytest.raises(expected) as exc:
        provider.submit(request, idempotency_key=KEY)
    assert type(exc.value) is expected
    assert (exc.value.provider, exc.value.operation, exc.value.code) == ("aws", "submit", code)
    assert "RunInstances in eu-north-1" in str(exc.value) and "To fix:" in str(exc.value)
    assert server.hits["RunInstances"] == 1  # retries are off for create calls
    assert SECRET not in str(exc.value)


def test_capacity_error_then_success_in_the_next_region(server: Ec2ErrorProxy) -> None:
    provider = get_provider("aws")
    server.fail("RunInstances", "InsufficientInstanceCapacity")
    with pytest.raises(CapacityError):
        provider.submit(provider.prepare(JOB, ON_DEMAND), idempotency_key=KEY)
    fallback = dataclasses.replace(ON_DEMAND, region="us-east-1")
    handle = provider.submit(provider.prepare(JOB, fallback), idempotency_key=KEY)
    assert handle.region == "us-east-1"
    assert _tagged("eu-north-1", KEY) == []


def test_reads_are_retried_but_creates_are_not(server: Ec2ErrorProxy) -> None:
    provider = get_provider("aws")
    handle = provider.submit(provider.prepare(JOB, ON_DEMAND), idempotency_key=KEY)
    before = server.hits["DescribeInstances"]
    server.fail("DescribeInstances", "RequestLimitExceeded")
    assert provider.status(handle).state in (InstanceState.PENDING, InstanceState.RUNNING)
    assert server.hits["DescribeInstances"] == before + 2


@pytest.mark.parametrize(("action", "operation"), [("DescribeInstances", "status"),
                                                   ("TerminateInstances", "delete"),
                                                   ("DescribeInstances", "list_managed")])
def test_status_and_cancel_errors_carry_their_operation(
        server: Ec2ErrorProxy, action: str, operation: str) -> None:
    provider = get_provider("aws")
    handle = provider.submit(provider.prepare(JOB, ON_DEMAND), idempotency_key=KEY)
    server.fail(action, "UnauthorizedOperation", times=5)
    with pytest.raises(AuthError) as exc:
        if operation == "list_managed":
            provider.list_managed(handle.region)
        else:
            getattr(provider, operation)(handle)
    assert (exc.value.operation, exc.value.code) == (operation, "UnauthorizedOperation")


SPOT_INTERRUPTED = """<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8f7724cf-496f-496e-8fe3-example</requestId>
  <reservationSet><item>
    <reservationId>r-1234567890abcdef0</reservationId><ownerId>123456789012</ownerId>
    <groupSet/>
    <instancesSet><item>
      <instanceId>{instance_id}</instanceId><imageId>ami-0abcdef1234567890</imageId>
      <instanceState><code>48</code><name>terminated</name></instanceState>
      <instanceType>p4d.24xlarge</instanceType>
      <instanceLifecycle>spot</instanceLifecycle>
      <spotInstanceRequestId>sir-0abc1234</spotInstanceRequestId>
      <stateReason><code>Server.SpotInstanceTermination</code>
        <message>Server.SpotInstanceTermination: Spot instance termination</message></stateReason>
      <placement><availabilityZone>eu-north-1a</availabilityZone><tenancy>default</tenancy></placement>
      <clientToken>gp-job-7f3a-a1</clientToken>
    </item></instancesSet>
  </item></reservationSet>
</DescribeInstancesResponse>"""


def test_spot_interruption_reads_as_preempted(server: Ec2ErrorProxy) -> None:
    provider = get_provider("aws")
    handle = InstanceHandle(provider="aws", cloud="aws", region="eu-north-1",
                            instance_id="i-0aaaabbbbccccdddd")
    server.respond("DescribeInstances", status=200,
                   body=SPOT_INTERRUPTED.format(instance_id=handle.instance_id).encode())
    status = provider.status(handle)
    assert status.state is InstanceState.PREEMPTED
    assert "Server.SpotInstanceTermination" in status.detail


WORKER = """
import json, sys
from greenplace.providers.base import JobLaunch, Placement, idempotency_key
from greenplace.providers.registry import get_provider
job = JobLaunch(job_id="job-proc", name="p", run="true", policy="balanced", attempt=1)
placement = Placement(cloud="aws", region="eu-west-1", instance_type="g6.2xlarge",
                      accelerator="L4", accelerator_count=1, spot=False)
provider = get_provider("aws")
request = provider.prepare(job, placement)
handle = provider.submit(request, idempotency_key=idempotency_key("job-proc", 1))
print(json.dumps({"instance_id": handle.instance_id}))
"""


def test_two_processes_with_the_same_key_launch_one_instance(server: Ec2ErrorProxy) -> None:
    """A redelivered dispatch in another worker process finds the first launch."""
    env = dict(os.environ)
    env["AWS_ENDPOINT_URL_EC2"] = env.pop("AWS_ENDPOINT_URL")  # the EC2-only variable
    env["PYTHONPATH"] = str(REPO)
    ids = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", WORKER], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=60, check=True)
        assert SECRET not in out.stdout + out.stderr
        ids.append(json.loads(out.stdout)["instance_id"])
    assert ids[0] == ids[1]
    assert server.hits["RunInstances"] == 1
