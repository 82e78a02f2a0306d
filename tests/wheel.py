"""Building greenplace's wheel for tests, offline, as a user's `pip wheel .` would."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_wheel(directory: Path) -> Path:
    """The wheel, built into ``directory`` from a copy of the repository.

    Built from a copy (setuptools writes build/ beside the sources) with the setuptools
    already installed (``--no-build-isolation``: no package index needed).
    """
    source = directory / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
        "test-artifacts"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(directory), str(source)], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = directory.glob("greenplace-*.whl")
    return wheel
