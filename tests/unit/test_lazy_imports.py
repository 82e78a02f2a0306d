"""``import greenplace`` (and the CLI, providers, policies) pulls in no cloud SDK; a missing
SDK is reported with the pip extra that installs it.

Both run in a fresh interpreter: this test process has the SDKs loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLOUD_SDKS = ("boto3", "botocore", "libcloud", "google.cloud", "google.auth",
              "google.api_core", "googleapiclient", "azure", "moto")

IMPORTS = """
import json, sys
import greenplace.scheduler.cli, greenplace.providers.registry, greenplace.providers.base
import greenplace.providers.errors
import greenplace.policies.model
sdks = {sdks!r}
print(json.dumps(sorted(m for m in sys.modules if any(m == s or m.startswith(s + ".")
                                                      for s in sdks))))
"""

REFUSE = """
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {sdk!r} or name.startswith({sdk!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
from greenplace.providers.registry import get_provider
from greenplace.scheduler.exceptions import MissingSDKError
try:
    get_provider({provider!r}, config={config!r})
except MissingSDKError as exc:
    print(json.dumps({{"message": str(exc), "provider": exc.provider,
                      "operation": exc.operation, "exit_code": exc.exit_code}}))
"""


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout


def test_core_imports_load_no_cloud_sdk() -> None:
    assert json.loads(_python(IMPORTS.format(sdks=CLOUD_SDKS))) == []


@pytest.mark.parametrize(("provider", "sdk", "config"), [
    ("aws", "boto3", {}),
    ("libcloud", "libcloud", {"driver": "dummy", "key_env": "K", "image": "1"}),
])
def test_missing_sdk_names_the_pip_extra(provider: str, sdk: str,
                                         config: dict[str, str]) -> None:
    error = json.loads(_python(REFUSE.format(sdk=sdk, provider=provider, config=config)))
    assert f"pip install 'greenplace[{provider}]'" in error["message"]
    assert repr(sdk) in error["message"]
    assert (error["provider"], error["operation"]) == (provider, "import")
