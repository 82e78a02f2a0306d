"""The local adapter with real processes: on this machine (``local``), and on a declared
SSH host (``local-ssh``: a private sshd of tests/sshdproc.py, shared by the session's cases).

The contract's job runs ``python train.py --epochs 1``; here ``python`` on the job's PATH is
a stand-in program that waits until ``finish`` drops the exit code it should end with into
the instance folder, so the job stays RUNNING as long as the contract needs. Every process
a test leaves behind is stopped when its case ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path

from greenplace.providers.base import InstanceHandle, InstanceState, Placement, Provider
from greenplace.providers.registry import get_provider
from tests.contract.adapter_case import AdapterCase, CaseEnv
from tests.sshdproc import SshServer, started
from tests.waiting import wait_for

PLACEMENT = Placement(cloud="local", region="this-machine", instance_type="workstation",
                      accelerator="L4", accelerator_count=1, spot=False)
OVERLAY = Path(__file__).resolve().parents[2] / "examples" / "local-overlay.yaml"
FINISH_FILE = "contract-exit-code"
_STAND_IN = f"""#!/bin/sh
while [ ! -f {FINISH_FILE} ]; do sleep 0.02; done
exit "$(cat {FINISH_FILE})"
"""


SSH_PLACEMENT = Placement(cloud="local", region="lab-gpu-01", instance_type="gpu-server",
                          accelerator="L4", accelerator_count=1, spot=False)
SSH_OVERLAY = OVERLAY.with_name("ssh-overlay.yaml")


def _clear_settings(env: CaseEnv) -> None:
    for name in list(os.environ):
        if name.startswith("GREENPLACE_LOCAL_"):
            env.monkeypatch.delenv(name)


@contextmanager
def _case(name: str, placement: Placement, root: Path, base: Mapping[str, str],
          errors: Mapping[str, Mapping[str, str]]) -> Iterator[AdapterCase]:
    """The case over the instance ``root`` (on this machine or on the SSH host) that
    providers built from ``base`` settings use; ``errors``: per error kind, the settings
    whose provider fails its next submit with that kind."""

    def make() -> Provider:
        return get_provider("local", config=dict(base))

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
            name="local", make_provider=make, placement=placement,
            unknown_instance_id="never-launched-a1", count_instances=count,
            inject_error=lambda kind: get_provider("local", config={**base, **errors[kind]}),
            error_kinds=frozenset(errors), finish=finish)
    finally:
        provider = make()
        for managed in provider.list_managed(placement.region):
            provider.delete(managed.handle)


@contextmanager
def local_case(env: CaseEnv) -> Iterator[AdapterCase]:
    _clear_settings(env)
    env.monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(OVERLAY))
    bin_dir = env.tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(_STAND_IN)
    (bin_dir / "python").chmod(0o755)
    env.monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = env.tmp_path / "local"
    base = {"root": str(root), "slots": "8", "grace_s": "1"}
    with _case("local", PLACEMENT, root, base, {"capacity": {"slots": "0"}}) as case:
        yield case


def _sshd(stack: ExitStack) -> SshServer:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="gp-contract-sshd-"))
    stack.callback(shutil.rmtree, directory, ignore_errors=True)
    server = started(directory)
    stack.callback(server.stop)
    (server.bin / "python").write_text(_STAND_IN)  # on the PATH of the host's logins
    (server.bin / "python").chmod(0o755)
    return server


@contextmanager
def local_ssh_case(env: CaseEnv) -> Iterator[AdapterCase]:
    _clear_settings(env)
    env.monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(SSH_OVERLAY))
    sshd = env.shared.get("sshd", _sshd)
    root = env.tmp_path / "remote"
    base = {**sshd.settings(SSH_PLACEMENT.region), "remote_root": str(root),
            "root": str(env.tmp_path / "here"), "slots": "8", "grace_s": "1"}
    stranger = env.tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, capture_output=True)
    refused = sshd.settings(SSH_PLACEMENT.region, identity=stranger, control="stranger")
    with _case("local-ssh", SSH_PLACEMENT, root, base,
               {"capacity": {"slots": "0"}, "auth": refused}) as case:
        yield case


CASES = {"local": local_case, "local-ssh": local_ssh_case}
