"""``greenplace providers check`` end to end, in a subprocess with a controlled environment.

Each cloud's SDK runs its real default chain against loopback stand-ins: a moto
server for STS, a Google OAuth token endpoint named by a service-account key
file, an App Service managed-identity endpoint for Azure, and the OpenStack
fake for libcloud. The output must name identities and never a secret.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fakes.ec2 import moto_server
from tests.fakes.http import Reply, Request, serve
from tests.fakes.openstack import PASSWORD, USER, libcloud_settings, openstack_cloud

REPO = Path(__file__).resolve().parents[2]
AWS_SECRET = "gpAwsSecretValue0123456789NEVERPRINTED"
GCP_ACCESS_TOKEN = "ya29.gp-access-token-NEVERPRINTED"
SA_EMAIL = "runner@gp-test.iam.gserviceaccount.com"
AZURE_IDENTITY_HEADER = "gp-identity-header-NEVERPRINTED"


def _jwt(claims: dict[str, str]) -> str:
    def part(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


AZURE_TOKEN = _jwt({"oid": "11111111-2222-3333-4444-555555555555",
                    "tid": "99999999-8888-7777-6666-555555555555",
                    "appid": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                    "app_displayname": "greenplace-runner"})


def _base_env(home: Path) -> dict[str, str]:
    """A clean environment: no real credentials, no non-loopback metadata endpoints."""
    keep = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update({
        "HOME": str(home), "PYTHONPATH": str(REPO), "COLUMNS": "250",
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1",
        "CLOUDSDK_CONFIG": str(home / "gcloud"), "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "AZURE_TOKEN_CREDENTIALS": "dev",  # developer tools only: no IMDS probe
    })
    return env


def _check(env: dict[str, str], *args: str) -> tuple[int, list[dict], str]:
    out = subprocess.run([sys.executable, "-m", "greenplace", "providers", "check",
                          "--output", "json", "--timeout-s", "40", *args],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    return out.returncode, json.loads(out.stdout), out.stdout + out.stderr


def test_nothing_configured_reports_each_cloud_and_exits_1(tmp_path: Path) -> None:
    code, rows, _ = _check(_base_env(tmp_path))
    assert code == 1
    status = {r["cloud"]: r["status"] for r in rows}
    assert status == {"aws": "no-credentials", "gcp": "no-credentials",
                      "azure": "no-credentials", "libcloud": "not-configured"}
    for row in rows:
        assert row["identity"] is None and "To fix:" in row["detail"]


@pytest.fixture
def gcp_token_endpoint() -> Iterator[tuple[str, list[dict]]]:
    grants: list[dict] = []

    def handler(request: Request) -> Reply:
        grants.append(request.form())
        return Reply.json(200, {"access_token": GCP_ACCESS_TOKEN, "expires_in": 3599,
                                "token_type": "Bearer"})
    with serve(handler) as url:
        yield f"{url}/token", grants


@pytest.fixture
def azure_identity_endpoint() -> Iterator[str]:
    def handler(request: Request) -> Reply:
        if request.headers.get("x-identity-header") != AZURE_IDENTITY_HEADER:
            return Reply.json(401, {"error": "unauthorized"})
        return Reply.json(200, {"access_token": AZURE_TOKEN, "token_type": "Bearer",
                                "expires_on": str(int(time.time()) + 3600),
                                "resource": request.query["resource"][0],
                                "client_id": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"})
    with serve(handler) as url:
        yield f"{url}/msi/token"


def test_every_cloud_usable_names_identities_and_never_secrets(
        tmp_path: Path, gcp_token_endpoint: tuple[str, list[dict]],
        azure_identity_endpoint: str) -> None:
    token_uri, grants = gcp_token_endpoint
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "project_id": "gp-test", "private_key_id": "k1",
        "private_key": pem, "client_email": SA_EMAIL, "client_id": "1234567890",
        "token_uri": token_uri}))
    env = _base_env(tmp_path)
    with moto_server() as aws_url, openstack_cloud() as cloud:
        env.update({
            "AWS_ENDPOINT_URL": aws_url, "AWS_ACCESS_KEY_ID": "AKIAGREENPLACETEST02",
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
            "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential",
            "IDENTITY_ENDPOINT": azure_identity_endpoint,
            "IDENTITY_HEADER": AZURE_IDENTITY_HEADER,
            "AZURE_SUBSCRIPTION_ID": "00000000-1111-2222-3333-444444444444",
            "OS_USERNAME": USER, "OS_PASSWORD": PASSWORD,
        })
        env.update({f"GREENPLACE_LIBCLOUD_{k.upper()}": v
                    for k, v in libcloud_settings(cloud).items() if "." not in k})
        code, rows, text = _check(env)
    by_cloud = {r["cloud"]: r for r in rows}
    assert code == 0, text
    assert {c: r["status"] for c, r in by_cloud.items()} == dict.fromkeys(
        ("aws", "gcp", "azure", "libcloud"), "ok"), text
    assert "arn:aws:" in by_cloud["aws"]["identity"]
    assert by_cloud["gcp"]["identity"] == f"service account {SA_EMAIL}, project gp-test"
    assert by_cloud["azure"]["identity"] == (
        "application greenplace-runner, object id 11111111-2222-3333-4444-555555555555, "
        "tenant 99999999-8888-7777-6666-555555555555, "
        "subscription 00000000-1111-2222-3333-444444444444")
    assert "$OS_USERNAME" in by_cloud["libcloud"]["identity"]
    assert grants and grants[0]["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    for secret in (AWS_SECRET, GCP_ACCESS_TOKEN, AZURE_TOKEN, AZURE_IDENTITY_HEADER, PASSWORD,
                   "PRIVATE KEY", pem.splitlines()[1]):
        assert secret not in text


def test_one_cloud_asked_for_decides_the_exit_code(tmp_path: Path) -> None:
    code, rows, _ = _check(_base_env(tmp_path), "--cloud", "libcloud")
    assert code == 1 and [r["cloud"] for r in rows] == ["libcloud"]


def test_missing_sdk_is_reported_with_the_pip_extra(tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(REFUSE_BOTO3)
    env["PYTHONPATH"] = f"{blocker}{os.pathsep}{REPO}"
    code, rows, _ = _check(env, "--cloud", "aws")
    assert code == 1
    assert rows[0]["status"] == "sdk-missing"
    assert "pip install 'greenplace[aws]'" in rows[0]["detail"]


REFUSE_BOTO3 = '''
import importlib.abc, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("boto3", "botocore"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Refuse())
'''
