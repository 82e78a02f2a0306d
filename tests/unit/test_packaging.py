"""The distribution installs one top-level package, ``greenplace``, and nothing generic.

The repository keeps ``scheduler/``, ``providers/`` and ``policies/`` at its root; pyproject maps
them beneath ``greenplace``. These tests catch a new sub-package that was not listed (it would be
missing from the wheel) and a wheel that would put anything beside ``greenplace/`` in
site-packages.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.wheel import build_wheel

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, package in SETUPTOOLS["package-dir"].items():
        root = REPO / package
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found.add(".".join((folder, *relative)))
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    # data-only folders (the dashboard's files) are packages too, declared with their data
    data_only = {name for name in SETUPTOOLS["package-data"] if name not in _packages_on_disk()}
    assert data_only == {"greenplace.scheduler.api.static"}
    assert set(SETUPTOOLS["packages"]) == _packages_on_disk() | data_only


def test_the_console_script_and_python_m_use_the_namespace() -> None:
    assert PYPROJECT["project"]["scripts"]["greenplace"] == "greenplace.scheduler.cli:main"
    out = subprocess.run([sys.executable, "-m", "greenplace", "--help"], capture_output=True,
                         text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "dry-run" in out.stdout


@pytest.mark.skipif(subprocess.run([sys.executable, "-m", "pip", "--version"],
                                   capture_output=True).returncode != 0, reason="no pip")
def test_the_wheel_holds_only_greenplace(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"greenplace"}
    for data_file in ("greenplace/scheduler/catalog/data/offers.csv",
                      "greenplace/policies/balanced.yaml",
                      "greenplace/scheduler/signals/traces/eia_ba_hourly_2022-06-06_to_12_4bas.csv",
                      "greenplace/__main__.py"):
        assert data_file in names
    dashboard = {p.name for p in (REPO / "scheduler" / "api" / "static").iterdir()}
    assert {n.rsplit("/", 1)[1] for n in names
            if n.startswith("greenplace/scheduler/api/static/")} == dashboard
    dist_info = next(t for t in top_level if t.endswith(".dist-info"))
    assert f"{dist_info}/licenses/LICENSE" in names
