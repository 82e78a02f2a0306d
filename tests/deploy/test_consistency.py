"""deploy/ names only what the code has: commands, environment variables, the port.

A renamed command or setting in the code, or a typo in a manifest, would otherwise surface
only when a container starts (an unknown command) or never (an env variable nobody reads).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

from greenplace.scheduler.cli import LAZY_COMMANDS
from tests.deploy.deployfiles import (
    DEPLOY,
    OVERLAYS,
    REPO,
    Manifest,
    compose,
    find,
    greenplace_services,
    pod_spec,
    read_dockerfile,
)

KNOWN_COMMANDS = frozenset(LAZY_COMMANDS)
SOURCE_DIRS = (REPO / "scheduler", REPO / "providers")
ENV_NAME = re.compile(r"\bGREENPLACE_[A-Z0-9_]+\b")


def _env_file_names(path: Path) -> set[str]:
    """The variable names an env file (``NAME=value`` lines) sets."""
    return {line.partition("=")[0].strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")}


def _greenplace_containers(manifests: list[Manifest]) -> list[dict[str, Any]]:
    return [c for m in manifests if m["kind"] in ("Deployment", "StatefulSet")
            for c in pod_spec(m)["containers"] if "greenplace" in c["image"]]


def _image_commands(rendered: dict[str, list[Manifest]]) -> dict[str, list[str]]:
    """Every argument list the image is started with: where -> arguments after ENTRYPOINT."""
    dockerfile = read_dockerfile()
    commands = {"Dockerfile CMD": dockerfile.cmd}
    for name, service in greenplace_services().items():
        commands[f"compose {name}"] = service.get("command", dockerfile.cmd)
    for overlay, manifests in rendered.items():
        for container in _greenplace_containers(manifests):
            assert "command" not in container, "keep the image's ENTRYPOINT (greenplace)"
            commands[f"k8s {overlay} {container['name']}"] = container.get("args", dockerfile.cmd)
    return commands


def test_the_image_runs_the_greenplace_console_script() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert read_dockerfile().entrypoint == ["greenplace"]
    assert "greenplace" in pyproject["project"]["scripts"]


def test_every_command_started_exists(rendered: dict[str, list[Manifest]]) -> None:
    commands = _image_commands(rendered)
    assert {args[0] for args in commands.values()} == {"api", "worker", "beat"}
    unknown = {where: args[0] for where, args in commands.items()
               if args[0] not in KNOWN_COMMANDS}
    assert not unknown, f"not greenplace commands: {unknown}"


def test_every_command_in_the_deploy_readme_exists() -> None:
    text = (DEPLOY / "README.md").read_text()
    code = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
                     + re.findall(r"`([^`\n]+)`", text))
    # `greenplace CMD`, but not `kubectl -n greenplace create ...` (the namespace).
    used = set(re.findall(r"(?<!-n )(?<!namespace )(?<![\w/.=-])greenplace ([a-z][a-z-]*)",
                          code))
    assert {"worker", "beat", "admin"} <= used
    assert used <= KNOWN_COMMANDS, f"unknown: {sorted(used - KNOWN_COMMANDS)}"


def _source_text() -> str:
    return "\n".join(path.read_text() for folder in SOURCE_DIRS for path in folder.rglob("*.py"))


def _env_names_set(rendered: dict[str, list[Manifest]]) -> dict[str, set[str]]:
    """Where -> the GREENPLACE_* names it sets."""
    found: dict[str, set[str]] = {
        "deploy/greenplace.env.example": _env_file_names(DEPLOY / "greenplace.env.example"),
    }
    for name, service in compose()["services"].items():
        environment = service.get("environment", {})
        found[f"compose {name}"] = set(environment if isinstance(environment, dict)
                                       else (e.partition("=")[0] for e in environment))
    for overlay, manifests in rendered.items():
        names: set[str] = set()
        for manifest in manifests:
            if manifest["kind"] in ("ConfigMap", "Secret"):
                names |= set(manifest.get("data", {}))
            elif manifest["kind"] in ("Deployment", "StatefulSet"):
                names |= {e["name"] for c in pod_spec(manifest)["containers"]
                          for e in c.get("env", [])}
        found[f"k8s {overlay}"] = names
    return {where: {n for n in names if n.startswith("GREENPLACE_")}
            for where, names in found.items()}


def test_every_environment_variable_set_is_read_by_the_code(
        rendered: dict[str, list[Manifest]]) -> None:
    read = set(ENV_NAME.findall(_source_text()))
    where_set = _env_names_set(rendered)
    assert {"GREENPLACE_REDIS_URL", "GREENPLACE_REDIS_PASSWORD",
            "GREENPLACE_KEY_PREFIX"} <= set().union(*where_set.values())
    unread = {where: sorted(names - read) for where, names in where_set.items() if names - read}
    assert not unread, f"set but read nowhere under scheduler/ or providers/: {unread}"


def test_the_variable_check_would_catch_a_typo() -> None:
    read = set(ENV_NAME.findall(_source_text()))
    assert "GREENPLACE_REDIS_URL" in read
    assert "GREENPLACE_REDIS_URI" not in read


def _port_option(args: list[str]) -> int:
    return int(args[args.index("--port") + 1])


def test_one_port_everywhere(rendered: dict[str, list[Manifest]]) -> None:
    dockerfile = read_dockerfile()
    assert dockerfile.expose == [8000]
    (port,) = dockerfile.expose
    assert _port_option(dockerfile.cmd) == port
    api_service = compose()["services"]["api"]
    assert [p.rpartition(":")[2] for p in api_service["ports"]] == [str(port)]
    assert f"127.0.0.1:{port}/healthz" in " ".join(api_service["healthcheck"]["test"])
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (scrape,) = prometheus["scrape_configs"]
    assert scrape["static_configs"] == [{"targets": [f"api:{port}"]}]
    for overlay in OVERLAYS:
        manifests = rendered[overlay]
        (container,) = pod_spec(find(manifests, "Deployment", "greenplace-api"))["containers"]
        assert _port_option(container["args"]) == port
        assert [p["containerPort"] for p in container["ports"]] == [port]
        (service_port,) = find(manifests, "Service", "greenplace-api")["spec"]["ports"]
        assert service_port["port"] == port
        assert service_port["targetPort"] in (port, container["ports"][0]["name"])


def test_prometheus_reads_its_token_from_the_mounted_secret() -> None:
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (scrape,) = prometheus["scrape_configs"]
    assert scrape["metrics_path"] == "/metrics"
    authorization = scrape["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    assert "credentials" not in authorization, "the token is never written in the config"
    service = compose()["services"]["prometheus"]
    assert authorization["credentials_file"] in {f"/run/secrets/{s}" for s in service["secrets"]}
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in service["volumes"]


def test_compose_keeps_secrets_in_env_files_and_redis_appendonly() -> None:
    services = compose()["services"]
    for name, service in greenplace_services().items():
        assert service["env_file"] == "greenplace.env", name
        assert not [v for v in service.get("environment", {}) if "PASSWORD" in v], name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
    redis = services["redis"]
    assert "--appendonly yes" in " ".join(redis["command"])
    assert [v.partition(":")[0] for v in redis["volumes"]] == ["redis-data"]
    assert "redis-data" in compose()["volumes"]
    assert "ports" not in redis, "Redis is reached only on the compose network"
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert {"greenplace.env", "secrets/"} <= set(ignored)


def test_the_image_copies_every_package_folder_and_the_context_holds_them() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    copied = set(read_dockerfile().copy_sources)
    needed = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    needed |= {"pyproject.toml", pyproject["project"]["readme"], "LICENSE"}
    assert needed <= copied, f"not copied into the builder: {sorted(needed - copied)}"
    allowed = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert copied <= allowed, f"excluded by .dockerignore: {sorted(copied - allowed)}"
    assert all((REPO / source).exists() for source in copied)


def test_the_readme_creates_the_secret_that_prod_reads() -> None:
    lines = (DEPLOY / "README.md").read_text().replace("\\\n", " ").splitlines()
    creates = [shlex.split(line) for line in lines if "create secret generic" in line]
    assert creates, "deploy/README.md shows no `kubectl create secret` for prod"
    for words in creates:
        assert words[words.index("generic") + 1] == "greenplace-secrets"
        assert words[words.index("-n") + 1] == "greenplace"


def test_the_released_overlays_pin_the_project_version(
        rendered: dict[str, list[Manifest]]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = {c["image"] for c in _greenplace_containers(rendered["prod"])}
    assert {image.rpartition(":")[2] for image in images} == {version}

