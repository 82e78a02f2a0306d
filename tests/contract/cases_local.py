"""The local adapter on this machine, with real processes.

The contract's job runs ``python train.py --epochs 1``; here ``python`` on the job's PATH is
a stand-in program that waits until ``finish`` drops the exit code it should end with into
the instance folder, so the job stays RUNNING as long as the contract needs. Every process
a test leaves behind is stopped when its case ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from greenplace.providers.base import InstanceHandle, InstanceState, Placement, Provider
from greenplace.providers.registry import get_provider
from tests.contract.adapter_case import AdapterCase, CaseEnv
from tests.waiting import wait_for

PLACEMENT = Placement(cloud="local", region="this-machine", instance_type="workstation",
                      accelerator="L4", accelerator_count=1, spot=False)
OVERLAY = Path(__file__).resolve().parents[2] / "examples" / "local-overlay.yaml"
FINISH_FILE = "contract-exit-code"
_STAND_IN = f"""#!/bin/sh
while [ ! -f {FINISH_FILE} ]; do sleep 0.02; done
exit "$(cat {FINISH_FILE})"
"""


@contextmanager
def local_case(env: CaseEnv) -> Iterator[AdapterCase]:
    for name in list(os.environ):
        if name.startswith("GREENPLACE_LOCAL_"):
            env.monkeypatch.delenv(name)
    env.monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(OVERLAY))
    bin_dir = env.tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(_STAND_IN)
    (bin_dir / "python").chmod(0o755)
    env.monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = env.tmp_path / "local"
    base = {"root": str(root), "slots": "8", "grace_s": "1"}

    def make() -> Provider:
        return get_provider("local", config=base)

    def count() -> int:
        return sum(1 for p in root.iterdir() if (p / "state.json").exists()) if root.is_dir() \
            else 0

    def finish(handle: InstanceHandle, exit_code: int) -> None:
        """The command ends now with ``exit_code``; returns once it has."""
        (root / handle.instance_id / "work" / FINISH_FILE).write_text(f"{exit_code}\n")
        wait_for(lambda: make().status(handle).state is InstanceState.EXITED, timeout_s=10,
                 what=f"{handle.instance_id} to exit", interval_s=0.02)

    try:
        yield AdapterCase(
            name="local", make_provider=make, placement=PLACEMENT,
            unknown_instance_id="never-launched-a1", count_instances=count,
            inject_error=lambda kind: get_provider("local", config={**base, "slots": "0"}),
            error_kinds=frozenset({"capacity"}), finish=finish)
    finally:
        provider = make()
        for managed in provider.list_managed(PLACEMENT.region):
            provider.delete(managed.handle)


CASES = {"local": local_case}
