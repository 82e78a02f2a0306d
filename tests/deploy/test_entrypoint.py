"""The image's commands start from an installed wheel, the way deploy/Dockerfile runs them.

The Dockerfile installs the wheel and starts ``ENTRYPOINT + CMD`` (or the command that
compose or Kubernetes gives). This test builds the wheel, installs it in a fresh virtual
environment and runs each of those command lines with ``--help`` appended: a command missing
from the wheel, a console script that does not resolve, or an import that works only from
the source tree fails here rather than in a container.

Design choice: the fresh environment is made with ``python -m venv --without-pip`` and the
wheel is installed with ``--no-deps`` (this interpreter's pip, pointed at the new one with
``--python``); a ``.pth`` file appends this environment's site-packages, so the dependencies
resolve without an index or network. ``--system-site-packages`` would not do: it exposes the
base interpreter's packages, not this virtual environment's. A ``.pth`` line only appends a
path (the ``.pth`` files in that folder are not run), so the editable install of greenplace
there stays inactive, and the new environment's own site-packages comes first: the code that
runs is the wheel's (checked).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.deployfiles import (
    Manifest,
    greenplace_services,
    pod_spec,
    read_dockerfile,
)
from tests.wheel import build_wheel

# Not marked integration: the whole module takes about 8 s (the wheel build), and it needs
# neither Redis nor a worker process.
pytestmark = pytest.mark.skipif(subprocess.run([sys.executable, "-m", "pip", "--version"],
                                               capture_output=True).returncode != 0,
                                reason="no pip")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the greenplace wheel installed; returns its bin/."""
    tmp = tmp_path_factory.mktemp("image")
    wheel = build_wheel(tmp)
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=120)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300,
                   capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], check=True, capture_output=True, text=True).stdout
    (Path(site.strip()) / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env_dir / "bin"


def _run(bin_dir: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the container would: the command found on PATH, outside the repo."""
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
           "HOME": str(bin_dir.parent), "LANG": "C.UTF-8"}
    executable = shutil.which(argv[0], path=env["PATH"])
    assert executable == str(bin_dir / argv[0]), f"{argv[0]} resolves to {executable}"
    return subprocess.run([executable, *argv[1:]], capture_output=True, text=True,
                          timeout=120, env=env, cwd=bin_dir.parent)


def test_the_wheel_is_what_runs(venv: Path) -> None:
    out = _run(venv, ["python", "-c", "import greenplace.scheduler.cli as c; print(c.__file__)"])
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(venv.parent), out.stdout


def _entry_commands() -> dict[str, list[str]]:
    """Where -> the full command line the image starts (ENTRYPOINT + CMD or the given one)."""
    dockerfile = read_dockerfile()
    commands = {"Dockerfile": [*dockerfile.entrypoint, *dockerfile.cmd]}
    for name, service in greenplace_services().items():
        commands[f"compose {name}"] = [*dockerfile.entrypoint,
                                       *service.get("command", dockerfile.cmd)]
    return commands


def test_the_console_script_answers(venv: Path) -> None:
    entrypoint = read_dockerfile().entrypoint
    out = _run(venv, [*entrypoint, "--help"])
    assert out.returncode == 0, out.stderr
    assert "worker" in out.stdout and "beat" in out.stdout


@pytest.mark.parametrize("where", sorted(_entry_commands()))
def test_each_entry_command_starts(venv: Path, where: str) -> None:
    argv = _entry_commands()[where]
    command = argv[1]
    out = _run(venv, [*argv, "--help"])
    assert out.returncode == 0, f"{' '.join(argv)} --help: {out.stderr}"
    assert f"Usage: greenplace {command}" in out.stdout


def test_kubernetes_starts_the_commands_run_above(rendered: dict[str, list[Manifest]]) -> None:
    # Kubernetes keeps the image's ENTRYPOINT and gives args (test_consistency checks that no
    # container sets `command:`): the same argument lists as compose and the Dockerfile.
    run_above = {tuple(argv[1:]) for argv in _entry_commands().values()}
    for overlay, manifests in rendered.items():
        started = {tuple(container["args"]) for m in manifests
                   if m["kind"] == "Deployment" for container in pod_spec(m)["containers"]}
        assert started == run_above, overlay
