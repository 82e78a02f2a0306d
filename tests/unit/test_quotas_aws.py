"""AWS account quotas as capacity pools, read through boto3's Service Quotas client.

moto has no ec2 Service Quotas (nor ListServiceQuotas), so the calls go to a local fake in the
API's JSON 1.1 wire format (tests/fakes/service_quotas.py), one endpoint for every region
(the region is the SigV4 scope's, as AWS routes it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenplace.scheduler.catalog.loader import load_embedded_catalog
from greenplace.scheduler.catalog.model import Offer
from greenplace.scheduler.exceptions import AuthError, TransientError
from greenplace.scheduler.planning.capacity import CapacityPool, Unit
from greenplace.scheduler.planning.quotas import QuotaAnswer
from greenplace.scheduler.planning.quotas import aws as quotas_aws
from tests.fakes.service_quotas import ServiceQuotasApi, ec2_quota, service_quotas_server

REGIONS = ("us-east-1", "eu-north-1")
SECRET = "gpQuotaSecretValue0123456789NEVERPRINT"
# (code, name, value per region) as an account with raised P and G quotas might hold them.
ACCELERATOR_QUOTAS = (
    ("L-417A185B", "Running On-Demand P instances", {"us-east-1": 384.0, "eu-north-1": 192.0}),
    ("L-7212CCBC", "All P Spot Instance Requests", {"us-east-1": 96.0, "eu-north-1": 0.0}),
    ("L-DB2E81BA", "Running On-Demand G and VT instances",
     {"us-east-1": 512.0, "eu-north-1": 64.0}),
    ("L-3819A6DF", "All G and VT Spot Instance Requests",
     {"us-east-1": 368.0, "eu-north-1": 32.0}),
    ("L-2C3B7624", "Running On-Demand Trn instances", {"us-east-1": 256.0, "eu-north-1": 0.0}),
    ("L-6B0D517C", "All Trn Spot Instance Requests", {"us-east-1": 128.0, "eu-north-1": 0.0}),
    ("L-1945791B", "Running On-Demand Inf instances", {"us-east-1": 128.0, "eu-north-1": 64.0}),
    ("L-B5D1601B", "All Inf Spot Instance Requests", {"us-east-1": 64.0, "eu-north-1": 64.0}),
)
OTHER_QUOTAS = (  # listed by ListServiceQuotas too
    ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", 1152.0),
    ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests", 1152.0),
    ("L-0263D0A3", "EC2-VPC Elastic IPs", 5.0),
    ("L-74FC7D96", "Running On-Demand F instances", 128.0),
)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials only from the environment; no shared files, no instance metadata."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "GREENPLACE_AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAGREENPLACEQUOTAS")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fake(aws_env: None) -> Iterator[tuple[dict[str, str], ServiceQuotasApi]]:
    """The fake seeded with every region's quotas, three quotas to a page."""
    with service_quotas_server() as (url, api):
        for region in REGIONS:
            api.quotas[region] = [
                *(ec2_quota(region, code, name, values[region])
                  for code, name, values in ACCELERATOR_QUOTAS),
                *(ec2_quota(region, code, name, value) for code, name, value in OTHER_QUOTAS)]
        api.page_limit = 3
        yield {"AWS_ENDPOINT_URL_SERVICE_QUOTAS": url}, api


def pools_by_key(answer: QuotaAnswer) -> dict[tuple[str, str], CapacityPool]:
    return {(p.region, p.source.split()[3]): p for p in answer.pools}


def offer(instance_type: str, region: str = "us-east-1") -> Offer:
    catalog = load_embedded_catalog()
    found = [o for o in catalog.offers if o.cloud == "aws" and o.instance_type == instance_type]
    assert found, instance_type
    return dataclasses.replace(found[0], region=region)


def test_reads_every_accelerator_quota_of_several_regions_page_after_page(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = fake
    answer = quotas_aws.read_quotas(REGIONS, environ)
    pools = pools_by_key(answer)
    assert len(pools) == len(ACCELERATOR_QUOTAS) * len(REGIONS)
    for code, name, values in ACCELERATOR_QUOTAS:
        for region in REGIONS:
            pool = pools[(region, code)]
            assert pool.cloud == "aws" and pool.unit is Unit.VCPUS
            assert pool.limit == int(values[region])
            assert pool.spot is ("Spot" in name)
            assert name in pool.source and "usage not subtracted" in pool.source
    assert pools[("us-east-1", "L-DB2E81BA")].instance_types == ("g*", "vt*")
    # 12 quotas per region at 3 a page: 4 pages each, and nothing asked one by one.
    assert api.calls("ListServiceQuotas", "us-east-1") == 4
    assert api.calls("ListServiceQuotas", "eu-north-1") == 4
    assert api.calls("GetServiceQuota") == 0
    assert answer.source == quotas_aws.SOURCE


def test_family_quotas_without_an_accelerator_are_skipped_with_the_reason(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, _ = fake
    answer = quotas_aws.read_quotas(("us-east-1",), environ)
    skipped = {s.quota: s.reason for s in answer.skipped}
    assert set(skipped) == {"L-1216C47A", "L-34B43A08", "L-74FC7D96"}  # not the Elastic IPs
    assert "without an accelerator greenplace places" in skipped["L-74FC7D96"]
    assert not any(p.source.split()[3] in skipped for p in answer.pools)


def test_the_p_pool_matches_p5_and_counts_its_192_vcpus(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, _ = fake
    pools = pools_by_key(quotas_aws.read_quotas(REGIONS, environ))
    p5 = offer("p5.48xlarge")
    on_demand, spot = pools[("us-east-1", "L-417A185B")], pools[("us-east-1", "L-7212CCBC")]
    assert on_demand.units_per_instance(p5, spot=False) == 192
    assert not on_demand.matches(p5, spot=True)
    assert spot.units_per_instance(p5, spot=True) == 192
    # Two p5.48xlarge fit the 384-vCPU on-demand quota, a third does not.
    assert 2 * 192 <= on_demand.limit < 3 * 192
    g6, trn = offer("g6.24xlarge"), offer("trn1.32xlarge")
    assert not on_demand.matches(g6, spot=False)
    assert pools[("us-east-1", "L-DB2E81BA")].units_per_instance(g6, spot=False) == 96
    assert pools[("us-east-1", "L-2C3B7624")].units_per_instance(trn, spot=False) == 128
    assert not pools[("eu-north-1", "L-417A185B")].matches(p5, spot=False)  # other region
    every = [p for p in pools.values() if p.matches(p5, spot=False)]
    assert [p.source.split()[3] for p in every] == ["L-417A185B"]


def test_a_quota_the_list_leaves_out_is_asked_for_or_skipped(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = fake
    api.unlisted = {("us-east-1", "L-417A185B")}  # no applied value: GetServiceQuota has it
    api.quotas["us-east-1"] = [q for q in api.quotas["us-east-1"]
                               if q["QuotaCode"] != "L-B5D1601B"]  # the account has none
    answer = quotas_aws.read_quotas(("us-east-1",), environ)
    pools = pools_by_key(answer)
    assert pools[("us-east-1", "L-417A185B")].limit == 384
    assert ("us-east-1", "L-B5D1601B") not in pools
    reasons = [s.reason for s in answer.skipped if s.quota == "L-B5D1601B"]
    assert reasons and "NoSuchResourceException" in reasons[0]
    assert api.calls("GetServiceQuota") == 2


def test_a_quota_without_a_usable_value_is_skipped_never_guessed(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = fake
    api.quotas["us-east-1"] = [
        ec2_quota("us-east-1", "L-417A185B", "Running On-Demand P instances", None,
                  ErrorReason={"ErrorCode": "DEPENDENCY_THROTTLING_ERROR",
                               "ErrorMessage": "EC2 did not answer in time"}),
        ec2_quota("us-east-1", "L-DB2E81BA", "Running On-Demand G and VT instances", -1.0),
        ec2_quota("us-east-1", "L-2C3B7624", "Running On-Demand Trn instances", 255.9),
    ]
    answer = quotas_aws.read_quotas(("us-east-1",), environ)
    pools = pools_by_key(answer)
    reasons = {s.quota: s.reason for s in answer.skipped}
    assert "DEPENDENCY_THROTTLING_ERROR" in reasons["L-417A185B"]
    assert "-1.0" in reasons["L-DB2E81BA"]
    assert pools[("us-east-1", "L-2C3B7624")].limit == 255  # a fraction of a vCPU is no vCPU
    assert set(pools) == {("us-east-1", "L-2C3B7624")}


def test_throttling_that_passes_is_retried(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = fake
    api.fail("ListServiceQuotas", "TooManyRequestsException", times=2)
    answer = quotas_aws.read_quotas(("us-east-1",), environ)
    assert len(answer.pools) == len(ACCELERATOR_QUOTAS)
    assert api.calls("ListServiceQuotas") == 2 + 4


def test_throttling_that_never_stops_is_a_bounded_clear_error(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = fake
    api.fail("ListServiceQuotas", "TooManyRequestsException", times=10**6)
    with pytest.raises(TransientError) as caught:
        quotas_aws.read_quotas(REGIONS, environ)
    message = str(caught.value)
    assert caught.value.code == "TooManyRequestsException"
    assert "ListServiceQuotas in us-east-1" in message and "3 attempts" in message
    assert "To fix:" in message
    assert api.calls("ListServiceQuotas") == quotas_aws.refresh_aws.MAX_ATTEMPTS


def test_a_page_failing_midway_fails_the_read(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = fake
    api.fail("ListServiceQuotas", "ServiceException", times=10**6, continuation_only=True)
    with pytest.raises(TransientError, match="ListServiceQuotas in us-east-1"):
        quotas_aws.read_quotas(REGIONS, environ)
    assert api.calls("ListServiceQuotas", "eu-north-1") == 0  # stopped at the first region


def test_refused_credentials_are_an_auth_error_naming_the_permissions(
        fake: tuple[dict[str, str], ServiceQuotasApi],
        capsys: pytest.CaptureFixture[str]) -> None:
    environ, api = fake
    api.known_keys = {"AKIASOMEONEELSE"}
    with pytest.raises(AuthError) as caught:
        quotas_aws.read_quotas(REGIONS, environ)
    assert "servicequotas:ListServiceQuotas" in str(caught.value)
    api.known_keys = None
    api.fail("ListServiceQuotas", "AccessDeniedException")
    with pytest.raises(AuthError, match="servicequotas:GetServiceQuota"):
        quotas_aws.read_quotas(REGIONS, environ)
    assert SECRET not in str(caught.value) + capsys.readouterr().err


def test_an_opt_in_region_the_account_has_not_enabled_is_skipped(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = fake
    api.disabled_regions = {"me-central-1"}
    answer = quotas_aws.read_quotas(("me-central-1", "us-east-1"), environ)
    assert {p.region for p in answer.pools} == {"us-east-1"}
    reasons = [s.reason for s in answer.skipped if s.region == "me-central-1"]
    assert len(reasons) == 1 and "UnrecognizedClientException" in reasons[0]
    with pytest.raises(AuthError, match="UnrecognizedClientException|security token"):
        quotas_aws.read_quotas(("me-central-1",), environ)  # refused everywhere asked


def test_no_credentials_at_all_is_an_auth_error(
        fake: tuple[dict[str, str], ServiceQuotasApi], monkeypatch: pytest.MonkeyPatch) -> None:
    environ, api = fake
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert not quotas_aws.credentials_found({**os.environ})
    with pytest.raises(AuthError, match="no usable AWS credentials"):
        quotas_aws.read_quotas(REGIONS, environ)
    assert api.calls("ListServiceQuotas") == 0


def test_other_partitions_are_skipped_not_read(
        fake: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = fake
    answer = quotas_aws.read_quotas(("cn-north-1", "us-gov-west-1"), environ)
    assert answer.pools == ()
    assert {s.region for s in answer.skipped} == {"cn-north-1", "us-gov-west-1"}
    assert api.calls("ListServiceQuotas") == 0


def test_credentials_found_reads_only_the_environment_and_files(tmp_path: Path) -> None:
    assert quotas_aws.credentials_found({"HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": "AKIA1",
                                         "AWS_SECRET_ACCESS_KEY": "x"})
    assert not quotas_aws.credentials_found({"HOME": str(tmp_path)})


def test_greenplace_plan_binds_the_account_quota_it_reads(
        fake: tuple[dict[str, str], ServiceQuotasApi], tmp_path: Path) -> None:
    """The CLI as a user runs it: with AWS credentials found, `greenplace plan` reads the
    Service Quotas of the regions its jobs may run in, and the P-family vCPU quota binds."""
    env, _ = fake
    policy = tmp_path / "aws-p5.yaml"
    policy.write_text("name: aws-p5\nweights: {carbon: 1, cost: 0}\n"
                      "constraints: {clouds: [aws], regions: {include: ['aws:us-east-1', "
                      "'aws:eu-north-1']}, spot: forbid}\n")
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs:\n" + "".join(
        f"  - {{name: train-{i}, run: 'true', resources: {{accelerators: {{H100: 8}}}}, "
        f"work: {{hours: 10}}, policy: aws-p5.yaml}}\n" for i in range(4)))
    command = [str(Path(sys.executable).parent / "greenplace"), "plan", str(jobs),
               "--horizon-hours", "4", "-o", "json"]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 1, done.stderr  # one job cannot start within 4 hours
    result = json.loads(done.stdout)
    p_pools = {p["pool"]: p for p in result["pools"] if "L-417A185B" in p["source"]}
    # 384 vCPUs in us-east-1 hold two p5.48xlarge (192 each), 192 in eu-north-1 one.
    assert {name.split()[0]: max(p["used"]) for name, p in p_pools.items()} == {
        "aws:us-east-1": 384, "aws:eu-north-1": 192}
    assert all(max(p["limit"]) in (384, 192) for p in p_pools.values())
    assert result["summary"]["placed"] == 3
    (left,) = [r for r in result["jobs"] if r.get("region") in (None, "")]
    assert "L-417A185B" in json.dumps(left)
    assert any(n.startswith("account quotas of aws:") for n in result["summary"]["notes"])
    assert SECRET not in done.stdout + done.stderr

    without = subprocess.run([*command, "--no-quotas"], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=120, check=False)
    assert without.returncode == 0, without.stderr
    assert json.loads(without.stdout)["summary"]["placed"] == 4
