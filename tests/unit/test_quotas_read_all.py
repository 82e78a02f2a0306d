"""``read_all``: every cloud with credentials read through its SDK against the local fakes, each
reported ok / failed / without credentials / without a reader; one cloud's failure keeps the
others' pools. The SDK checks run in a fresh interpreter (this process has them loaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenplace.scheduler.planning.quotas import QuotaStatus, read_all
from tests.fakes.gce_server import FakeComputeEngine, http_error
from tests.fakes.service_quotas import ServiceQuotasApi, ec2_quota, service_quotas_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> Iterator[tuple[dict[str, str], ServiceQuotasApi]]:
    for name in list(os.environ):
        if name.startswith(("AWS_", "GREENPLACE_AWS_", "AZURE_", "GREENPLACE_AZURE_")):
            monkeypatch.delenv(name)
    credentials = {"AWS_ACCESS_KEY_ID": "AKIAGREENPLACEREADALL",
                   "AWS_SECRET_ACCESS_KEY": "gpReadAllSecret", "HOME": str(tmp_path),
                   "AWS_CONFIG_FILE": str(tmp_path / "none"),
                   "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    with service_quotas_server() as (url, api):
        api.quotas["us-east-1"] = [
            ec2_quota("us-east-1", "L-417A185B", "Running On-Demand P instances", 384.0)]
        yield {**credentials, "AWS_ENDPOINT_URL_SERVICE_QUOTAS": url}, api


def test_one_cloud_failing_keeps_the_others_pools(
        aws: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    aws_environ, _ = aws
    with FakeComputeEngine(zones={"us-central1": ["us-central1-a"]}) as gce:
        gce.fail_calls("GET", r"/regions/", http_error(
            403, "forbidden", "Required 'compute.regions.get' permission for "
            "'projects/test-project/regions/us-central1'"))
        environ = {**aws_environ, "GREENPLACE_GCP_PROJECT": gce.project,
                   "GREENPLACE_GCP_API_ENDPOINT": gce.base_url,
                   "GREENPLACE_GCP_CREDENTIALS": "anonymous"}
        reading = read_all(["aws", "gcp", "azure", "local", "aws"],
                           {"aws": ["us-east-1"], "gcp": ["us-central1"], "azure": ["eastus"]},
                           environ)
    status = {c.cloud: c.status for c in reading.clouds}
    assert status == {"aws": QuotaStatus.OK, "gcp": QuotaStatus.FAILED,
                      "azure": QuotaStatus.NO_CREDENTIALS, "local": QuotaStatus.NO_READER}
    assert [c.cloud for c in reading.clouds] == ["aws", "gcp", "azure", "local"]
    assert [(p.cloud, p.region, p.limit) for p in reading.pools] == [("aws", "us-east-1", 384)]
    (failed,) = reading.failed
    assert failed.answer is None and "\n" not in failed.error
    assert "compute.regions.get" in failed.error and "To fix:" in failed.error


def test_a_cloud_without_regions_is_ok_without_a_call(
        aws: tuple[dict[str, str], ServiceQuotasApi]) -> None:
    environ, api = aws
    reading = read_all(["aws"], {}, environ)
    assert reading.clouds[0].status is QuotaStatus.OK and reading.pools == ()
    assert api.calls("ListServiceQuotas") == 0


MISSING_SDK = """
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "boto3" or name.startswith("boto3."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
import greenplace.scheduler.planning.quotas as quotas
sdks = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "azure")
              or m.startswith("google.cloud"))
reading = quotas.read_all(["aws"], {"aws": ["us-east-1"]},
                          {"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "x"})
print(json.dumps({"sdks_at_import": sdks, "status": reading.clouds[0].status.value,
                  "error": reading.clouds[0].error}))
"""


def test_importing_loads_no_sdk_and_a_missing_sdk_names_its_extra() -> None:
    out = subprocess.run([sys.executable, "-c", MISSING_SDK], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    answer = json.loads(out.stdout)
    assert answer["sdks_at_import"] == []
    assert answer["status"] == "failed"
    assert "pip install 'greenplace[aws]'" in answer["error"]


NO_ACCOUNT = """
import json, sys
from greenplace.scheduler.planning.quotas import read_all
reading = read_all(["aws", "gcp", "azure"], {"aws": ["us-east-1"], "gcp": ["us-central1"],
                   "azure": ["eastus"]}, {"HOME": sys.argv[1]})
sdks = sorted(m for m in ("boto3", "botocore", "google.cloud.compute_v1", "azure.mgmt.compute")
              if m in sys.modules)
print(json.dumps({"statuses": [c.status.value for c in reading.clouds], "sdks": sdks}))
"""


def test_clouds_without_credentials_cost_no_sdk_import(tmp_path: Path) -> None:
    # `greenplace plan` reads quotas by default: on a machine with no cloud account it must
    # not pay seconds of SDK imports to find none.
    if Path("/sys/class/dmi/id/product_name").is_file() and Path(
            "/sys/class/dmi/id/product_name").read_text().startswith("Google"):
        pytest.skip("this machine is a GCE VM: its own credentials count for GCP")
    out = subprocess.run([sys.executable, "-c", NO_ACCOUNT, str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True,
                         env={"PATH": os.environ["PATH"]})
    answer = json.loads(out.stdout)
    assert answer == {"statuses": ["no credentials"] * 3, "sdks": []}
