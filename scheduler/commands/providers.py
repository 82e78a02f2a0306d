"""``greenplace providers check``: which clouds this machine can launch on, and as whom.

Each cloud is asked through its own SDK's default credential chain, exactly the
chain its adapter uses at launch time:

- aws: boto3's session chain, verified with ``sts:GetCallerIdentity``;
- gcp: ``google.auth.default()``, verified by refreshing an access token;
- azure: ``DefaultAzureCredential``, verified by getting an ARM token;
- libcloud: the driver and the credential variables named by the
  ``GREENPLACE_LIBCLOUD_*`` settings, verified by listing the driver's sizes.

Only identity descriptions are printed (ARN, service-account e-mail, tenant and
object ids, variable names); tokens, keys and passwords never are, and every
line is passed through ``greenplace.providers.errors.redact`` with the secret values found
in the environment as a second guard. SDKs are imported inside the checks, so
``import greenplace.scheduler.cli`` stays free of them.

Exit codes: 0 when every cloud asked for with ``--cloud`` is usable (or, with
no ``--cloud``, when at least one is); 1 otherwise; 2 for bad usage.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import click

from greenplace.providers.errors import provider_error, redact
from greenplace.scheduler.exceptions import (
    AuthError,
    ConfigError,
    GreenplaceError,
    MissingSDKError,
    TransientError,
    UserInputError,
)
from greenplace.scheduler.output import FORMATS, print_rows

CLOUDS = ("aws", "gcp", "azure", "libcloud")
SDK_DISTRIBUTIONS = {"aws": "boto3", "gcp": "google-auth", "azure": "azure-identity",
                     "libcloud": "apache-libcloud"}
GCP_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
AZURE_SCOPE = "https://management.azure.com/.default"
# Environment variables whose values are secrets wherever they appear.
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_CLIENT_SECRET",
                    "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_PASSWORD")
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD")


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """One cloud's answer. ``status``: ok, no-credentials, not-configured, sdk-missing, error."""

    cloud: str
    status: str
    identity: str | None
    sdk: str
    detail: str

    @property
    def usable(self) -> bool:
        return self.status == "ok"


def _sdk_version(cloud: str) -> str:
    name = SDK_DISTRIBUTIONS[cloud]
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{name} not installed"


def _missing_sdk(cloud: str, exc: ModuleNotFoundError) -> MissingSDKError:
    return MissingSDKError(
        f"the {cloud} check needs {exc.name!r}, which is not installed. "
        f"To fix: pip install 'greenplace[{cloud}]'", provider=cloud, operation="import")


def check_aws() -> str:
    """boto3's default chain, verified with sts:GetCallerIdentity (through the adapter)."""
    from greenplace.providers.registry import get_provider

    return get_provider("aws").check_credentials()


def check_libcloud() -> str:
    """The configured libcloud driver and credential variables (through the adapter)."""
    if not (os.environ.get("GREENPLACE_LIBCLOUD_DRIVER")
            or os.environ.get("GREENPLACE_LIBCLOUD_SETTINGS")):
        raise ConfigError("no libcloud driver is configured. To fix: set "
                          "GREENPLACE_LIBCLOUD_DRIVER, GREENPLACE_LIBCLOUD_KEY_ENV and "
                          "GREENPLACE_LIBCLOUD_IMAGE (see the README) to use one.")
    from greenplace.providers.registry import get_provider

    return get_provider("libcloud").check_credentials()


def _gcp_identity(credentials: Any) -> str:
    email = getattr(credentials, "service_account_email", None)
    kind = type(credentials).__module__.rsplit(".", 1)[-1]
    if email and email != "default":
        return f"service account {email}"
    account = getattr(credentials, "account", None)
    if kind == "credentials" and account:
        return f"user {account}"
    return {"credentials": "user credentials (gcloud application-default login)",
            "external_account": "workload identity federation",
            "impersonated_credentials": "impersonated service account"}.get(
        kind, f"{type(credentials).__name__} credentials")


def check_gcp() -> str:
    """google.auth.default(), verified by refreshing an access token."""
    try:
        import google.auth
        import google.auth.exceptions
        import google.auth.transport.requests
    except ModuleNotFoundError as exc:
        raise _missing_sdk("gcp", exc) from exc
    try:
        credentials, project = google.auth.default(scopes=[GCP_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise provider_error(
            AuthError, f"google.auth.default found no credentials: {exc}", provider="gcp",
            operation="check_credentials", code="DefaultCredentialsError",
            fix="run `gcloud auth application-default login`, or point "
                "GOOGLE_APPLICATION_CREDENTIALS at a service-account key file, or run on "
                "GCP with an attached service account") from exc
    try:
        credentials.refresh(google.auth.transport.requests.Request())
    except google.auth.exceptions.RefreshError as exc:
        raise provider_error(AuthError, f"the credentials were refused: {exc}", provider="gcp",
                             operation="check_credentials", code="RefreshError") from exc
    except google.auth.exceptions.TransportError as exc:
        raise provider_error(TransientError, f"the token endpoint did not answer: {exc}",
                             provider="gcp", operation="check_credentials",
                             code="TransportError") from exc
    return f"{_gcp_identity(credentials)}, project {project or '(none: set one in settings)'}"


def _jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, for display only (not verified: the token is not trusted here)."""
    try:
        body = token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return claims
    except (IndexError, ValueError):
        return {}


def check_azure() -> str:
    """DefaultAzureCredential, verified by getting an Azure Resource Manager token."""
    try:
        from azure.core.exceptions import ClientAuthenticationError
        from azure.identity import DefaultAzureCredential
    except ModuleNotFoundError as exc:
        raise _missing_sdk("azure", exc) from exc
    # azure-identity logs every failed credential of its chain as a warning; the
    # check reports the outcome itself, as one paragraph.
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    credential = DefaultAzureCredential()
    try:
        token = credential.get_token(AZURE_SCOPE)
    except ClientAuthenticationError as exc:
        raise provider_error(
            AuthError, f"DefaultAzureCredential found no usable credential: {exc.message}",
            provider="azure", operation="check_credentials", code=type(exc).__name__,
            fix="run `az login`, or set AZURE_CLIENT_ID / AZURE_TENANT_ID with a secret, "
                "certificate or federated token, or run with a managed identity") from exc
    finally:
        credential.close()
    claims = _jwt_claims(token.token)
    who = claims.get("upn") or claims.get("unique_name") or claims.get("email")
    name = f"user {who}" if who else (
        f"application {claims.get('app_displayname') or claims.get('appid') or '?'}")
    parts = [name, f"object id {claims.get('oid', '?')}", f"tenant {claims.get('tid', '?')}"]
    subscription = os.environ.get("AZURE_SUBSCRIPTION_ID")
    parts.append(f"subscription {subscription}" if subscription
                 else "no AZURE_SUBSCRIPTION_ID set")
    return ", ".join(parts)


CHECKS: dict[str, Callable[[], str]] = {
    "aws": check_aws, "gcp": check_gcp, "azure": check_azure, "libcloud": check_libcloud,
}


def _secrets() -> list[str]:
    values = [os.environ.get(name, "") for name in SECRET_VARIABLES]
    values += [v for k, v in os.environ.items()
               if any(w in k.upper() for w in SECRET_WORDS) and not k.upper().endswith("_ENV")]
    for setting in ("GREENPLACE_LIBCLOUD_KEY_ENV", "GREENPLACE_LIBCLOUD_SECRET_ENV"):
        variable = os.environ.get(setting)
        if variable:
            values.append(os.environ.get(variable, ""))
    return [v for v in values if len(v) >= 8]


def run_check(cloud: str, *, timeout_s: float) -> CheckResult:
    """Run one cloud's check in a daemon thread, bounded by ``timeout_s``.

    Design choice: a daemon thread rather than a pool: an SDK stuck on an
    unreachable metadata endpoint must not hold the command (or its exit) hostage.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["identity"] = CHECKS[cloud]()
        except BaseException as exc:  # noqa: BLE001 - reported as this cloud's status
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"check-{cloud}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    secrets = _secrets()
    sdk = _sdk_version(cloud)
    if thread.is_alive():
        return CheckResult(cloud=cloud, status="error", identity=None, sdk=sdk,
                           detail=f"no answer within {timeout_s:g} s. To fix: check network "
                                  "access to the cloud's endpoints, or raise --timeout-s.")
    error = outcome.get("error")
    if error is None:
        return CheckResult(cloud=cloud, status="ok", sdk=sdk,
                           identity=redact(str(outcome["identity"]), secrets), detail="")
    if isinstance(error, MissingSDKError):
        status = "sdk-missing"
    elif isinstance(error, AuthError):
        status = "no-credentials"
    elif isinstance(error, (ConfigError, UserInputError)):
        status = "not-configured"
    elif isinstance(error, GreenplaceError):
        status = "error"
    else:
        status = "error"
        error = f"{type(error).__name__}: {error}. To fix: see the message; run with the " \
                "cloud's own CLI to compare."
    return CheckResult(cloud=cloud, status=status, identity=None, sdk=sdk,
                       detail=redact(" ".join(str(error).split()), secrets))


@click.group("providers")
def providers_group() -> None:
    """Cloud adapters: credentials and set-up."""


@providers_group.command("check")
@click.option("--cloud", "clouds", multiple=True, type=click.Choice(CLOUDS),
              help="check only this cloud (repeatable); default: all")
@click.option("--timeout-s", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="give up on a cloud after this long")
@click.option("--output", "-o", type=click.Choice(FORMATS), default="table",
              show_default=True, help="table for people, json or csv for machines")
def check_cmd(clouds: tuple[str, ...], timeout_s: float, output: str) -> None:
    """Which clouds have usable credentials, found through each SDK's default chain.

    Prints who each cloud sees (never a secret). Exit 0 when every --cloud given
    is usable (with no --cloud: when at least one is), else 1.
    """
    wanted = list(dict.fromkeys(clouds)) or list(CLOUDS)
    results: list[CheckResult] = [CheckResult(cloud="", status="", identity=None, sdk="",
                                              detail="")] * len(wanted)
    threads = []
    for i, cloud in enumerate(wanted):
        def work(i: int = i, cloud: str = cloud) -> None:
            results[i] = run_check(cloud, timeout_s=timeout_s)
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    rows = [asdict(r) for r in results]
    print_rows(output, rows, title="greenplace providers check",
               columns=[("cloud", "left"), ("status", "left"), ("identity", "left"),
                        ("sdk", "left"), ("detail", "left")],
               cells=[[r.cloud, r.status, r.identity or "-", r.sdk, r.detail or ""]
                      for r in results])
    usable = [r.usable for r in results]
    if not (all(usable) if clouds else any(usable)):
        raise click.exceptions.Exit(1)
