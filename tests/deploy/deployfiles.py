"""The repository's deploy/ files as the tests read them: the Dockerfile's instructions, the
compose file, and the kubectl that can render the Kubernetes overlays."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("dev", "prod")
# The overlays use kustomize v4.1+ fields (components, labels, replicas, patches with targets):
# kubectl 1.22 and later embed such a kustomize. Debian bookworm's kubernetes-client (1.20)
# embeds kustomize v2, which cannot render them.
_MIN_KUSTOMIZE = (4, 1)


def kubectl_problem() -> str | None:
    """Why ``kubectl kustomize`` cannot render the overlays here, or None when it can."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return "kubectl is not on PATH"
    out = subprocess.run([kubectl, "version", "--client", "--output=json"], capture_output=True,
                         text=True, timeout=60)
    try:
        version = json.loads(out.stdout).get("kustomizeVersion", "")
    except ValueError:
        version = ""
    found = re.match(r"v(\d+)\.(\d+)", version)
    if found is None or (int(found.group(1)), int(found.group(2))) < _MIN_KUSTOMIZE:
        return (f"{kubectl} embeds kustomize {version or 'v2 or older'}; the overlays need "
                "kustomize v4.1+ (kubectl 1.22 or later)")
    return None


Manifest = dict[str, Any]


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    """The one manifest of ``kind`` whose name is ``name`` (generated names: ``name-<hash>``)."""
    hits = [m for m in manifests if m["kind"] == kind and re.fullmatch(
        rf"{re.escape(name)}(-[a-z0-9]{{10}})?", m["metadata"]["name"])]
    assert len(hits) == 1, f"{len(hits)} {kind} named {name}"
    return hits[0]


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


@dataclass(frozen=True, slots=True, kw_only=True)
class Dockerfile:
    """The instructions of deploy/Dockerfile that the tests check, in their exec (JSON) form."""

    entrypoint: list[str]
    cmd: list[str]
    expose: list[int]
    copy_sources: list[str]  # from the build context (COPY without --from)


def read_dockerfile(path: Path = DEPLOY / "Dockerfile") -> Dockerfile:
    """Parse the instructions named in ``Dockerfile`` (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found: dict[str, list[str]] = {}
    expose: list[int] = []
    copies: list[str] = []
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction in ("ENTRYPOINT", "CMD"):
            assert instruction not in found, f"two {instruction} lines: only the last counts"
            found[instruction] = json.loads(rest)  # the exec form: a JSON array
        elif instruction == "EXPOSE":
            expose += [int(port.partition("/")[0]) for port in rest.split()]
        elif instruction == "COPY" and "--from" not in rest:
            args = json.loads(rest)
            copies += args[:-1]
    return Dockerfile(entrypoint=found["ENTRYPOINT"], cmd=found.get("CMD", []), expose=expose,
                      copy_sources=copies)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def greenplace_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the greenplace image (built from deploy/Dockerfile)."""
    return {name: service for name, service in compose()["services"].items()
            if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile"}

