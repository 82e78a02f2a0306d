"""Whether a cloud's credentials are configured on this machine: environment variables and
local files only, no SDK import and no network call.

``aws`` is what boto3's default chain reads first; ``gcp_adc`` what Application Default
Credentials read. ``may_have(cloud, environ)`` is a quick necessary condition for every
credential check of the SDK modules (the catalog refresh's and the quota readers'
``credentials_found``): a caller that finds it False skips the cloud without importing its
SDK, which costs seconds (google-cloud-compute alone takes about 2 s to import), and asks the
module itself only when it is True.

Design choice: instance roles and managed identities that only the metadata service reveals
(an EC2 instance profile, an Azure VM's identity) need a network call, so they are not seen
here; name them in a profile (AWS ``credential_source``) or log in with them (``az login
--identity``). A GCE VM is recognised by its DMI product name, a local file.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from pathlib import Path

from greenplace.providers.settings import merged_settings

# Keys of a shared-config profile that give boto3 credentials (directly or by a role).
_PROFILE_CREDENTIAL_KEYS = frozenset({
    "aws_access_key_id", "role_arn", "credential_process", "sso_session", "sso_start_url",
    "web_identity_token_file", "credential_source",
})
GCE_PRODUCT_FILE = Path("/sys/class/dmi/id/product_name")


def aws(environ: Mapping[str, str]) -> bool:
    """Whether boto3's default chain would find credentials: the key variables, web
    identity, the container (task role) variables, or the profile in the shared files."""
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") and environ.get("AWS_ROLE_ARN"):
        return True
    if (environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            or environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")):
        return True
    profile = environ.get("AWS_PROFILE") or environ.get("AWS_DEFAULT_PROFILE") or "default"
    home = Path(environ.get("HOME") or Path.home())
    credentials_file = environ.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws" / "credentials"
    config_file = environ.get("AWS_CONFIG_FILE") or home / ".aws" / "config"
    config_section = profile if profile == "default" else f"profile {profile}"
    return (_section_has_credentials(Path(credentials_file), profile)
            or _section_has_credentials(Path(config_file), config_section))


def _section_has_credentials(path: Path, section: str) -> bool:
    parser = configparser.RawConfigParser()
    try:
        parser.read(path.expanduser(), encoding="utf-8")
    except (OSError, configparser.Error, UnicodeDecodeError):
        return False
    return parser.has_section(section) and any(
        parser.get(section, key, fallback="").strip() for key in _PROFILE_CREDENTIAL_KEYS)


def gcp_adc(environ: Mapping[str, str]) -> bool:
    """Whether Application Default Credentials exist: ``GOOGLE_APPLICATION_CREDENTIALS``,
    gcloud's ``application_default_credentials.json``, or this machine being a GCE VM."""
    key_file = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file:
        return Path(key_file).is_file()
    config_dir = environ.get("CLOUDSDK_CONFIG")
    if not config_dir and environ.get("HOME"):
        config_dir = str(Path(environ["HOME"]) / ".config" / "gcloud")
    if not config_dir and environ.get("APPDATA"):
        config_dir = str(Path(environ["APPDATA"]) / "gcloud")
    if config_dir and (Path(config_dir) / "application_default_credentials.json").is_file():
        return True
    try:
        return GCE_PRODUCT_FILE.read_text(encoding="utf-8").strip().startswith("Google")
    except OSError:
        return False


def azure_subscription(environ: Mapping[str, str]) -> str | None:
    """The Azure subscription configured (the adapter's ``subscription_id``, else
    ``AZURE_SUBSCRIPTION_ID``), or None."""
    settings = merged_settings("AZURE", {}, environ, from_env=lambda key: key == "subscription_id")
    return settings.get("subscription_id") or environ.get("AZURE_SUBSCRIPTION_ID") or None


def may_have(cloud: str, environ: Mapping[str, str]) -> bool:
    """A quick necessary condition for ``cloud``'s credentials (see the module docstring):
    False means no SDK module's check could find any."""
    if cloud == "aws":
        return aws(environ)
    if cloud == "gcp":
        anonymous = merged_settings("GCP", {}, environ, from_env=lambda key: key == "credentials")
        return anonymous.get("credentials", "").strip().lower() == "anonymous" or gcp_adc(environ)
    if cloud == "azure":
        return azure_subscription(environ) is not None
    return True  # no quick check known: the module decides


__all__ = ["GCE_PRODUCT_FILE", "aws", "azure_subscription", "gcp_adc", "may_have"]
