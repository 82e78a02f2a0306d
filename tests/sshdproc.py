"""A private OpenSSH server for tests: a free loopback port, its own host key, config,
authorized key and client key, all in a temp dir; never the system's sshd or ~/.ssh.

Used by tests/unit/test_local_ssh.py (the ``local`` provider on a declared SSH host). The
server runs as the current user (root in CI: ``PermitRootLogin prohibit-password`` lets its
key in) with ``UsePAM no`` and ``StrictModes no``, so it needs no system set-up beyond
the privilege-separation folder that Debian's service would create (``/run/sshd``).
Logins get ``PATH=<dir>/bin:/usr/local/bin:/usr/bin:/bin`` and ``HOME=<dir>/home``
(sshd_config ``SetEnv``; the user's own ~/.bashrc, which bash reads for an ssh command,
would change PATH), so a test decides whether the "remote" host has ``greenplace`` by
linking it into ``<dir>/bin``.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.redisproc import free_port, stop_process

SSHD = "/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else shutil.which("sshd")
SSH_KEYGEN = shutil.which("ssh-keygen")
PRIVSEP_DIR = Path("/run/sshd")


def missing_reason() -> str | None:
    """Why no private sshd can run here, or None when it can."""
    if SSHD is None or SSH_KEYGEN is None or shutil.which("ssh") is None:
        return ("OpenSSH's server and client are not installed (no sshd, ssh-keygen or ssh); "
                "install openssh-server (`apt-get install openssh-server`)")
    if os.getuid() == 0 and not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            return f"sshd needs its privilege-separation folder {PRIVSEP_DIR} ({exc})"
    return None


def started(directory: Path, *, path: str | None = None) -> SshServer:
    """A started server in ``directory``; skips the test with the reason when none can run
    here, or fails it when GREENPLACE_TESTS_REQUIRE_SSHD=1 (.ci/run sets it)."""
    import pytest

    reason = missing_reason()
    if reason is not None:
        if os.environ.get("GREENPLACE_TESTS_REQUIRE_SSHD") == "1":
            pytest.fail(f"GREENPLACE_TESTS_REQUIRE_SSHD=1 but {reason}")
        pytest.skip(reason)
    return SshServer(directory, path=path).start()


def _keygen(path: Path) -> None:
    assert SSH_KEYGEN is not None
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "greenplace-test",
                    "-f", str(path)], check=True, capture_output=True)


class SshServer:
    """One sshd in ``directory``; ``settings()`` are the local provider's settings that
    reach it (``host.<region>``, ``ssh_options``, ``identity_file``, ``control_dir``)."""

    def __init__(self, directory: Path, *, path: str | None = None) -> None:
        self.directory = directory
        self.user = getpass.getuser()
        self.port = free_port()
        self.bin = directory / "bin"
        self.home = directory / "home"  # the logins' HOME: the user's own ~/.bashrc stays out
        self.path = path or f"{self.bin}:/usr/local/bin:/usr/bin:/bin"  # the logins' PATH
        self.host_key = directory / "host_ed25519"
        self.client_key = directory / "client_ed25519"
        self.known_hosts = directory / "known_hosts"
        self.log = directory / "sshd.log"
        # ssh's control sockets need a short path (about 104 bytes, %C adds 40).
        self.control_dir = Path(tempfile.mkdtemp(prefix="gp-ssh-", dir="/tmp"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def settings(self, region: str, *, known_hosts: Path | None = None,
                 identity: Path | None = None, control: str = "") -> dict[str, str]:
        """Settings for a region on this server; the client reads no ~/.ssh/config.

        A shared connection skips the login, whatever key or known_hosts a later call
        names: a test of a login's failure passes its own ``control`` folder name.
        """
        hosts = known_hosts or self.known_hosts
        return {f"host.{region}": self.target, "identity_file": str(identity or self.client_key),
                "ssh_options": f"-F /dev/null -o UserKnownHostsFile={hosts} "
                               "-o GlobalKnownHostsFile=/dev/null",
                "control_dir": str(self.control_dir / control), "control_persist_s": "30"}

    def _config(self) -> str:
        return "\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {self.host_key}",
            f"PidFile {self.directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            "UsePAM no", "StrictModes no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", f"AllowUsers {self.user}",
            "MaxSessions 50", "MaxStartups 50:30:100", "LogLevel VERBOSE",
            f"SetEnv PATH={self.path} HOME={self.home}", ""])

    def start(self, *, timeout_s: float = 20.0) -> SshServer:
        """Keys, config, known_hosts entry, then sshd until it sends its banner."""
        assert SSHD is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bin.mkdir(exist_ok=True)
        self.home.mkdir(exist_ok=True)
        _keygen(self.host_key)
        _keygen(self.client_key)
        (self.directory / "authorized_keys").write_text(
            Path(f"{self.client_key}.pub").read_text())
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        config = self.directory / "sshd_config"
        config.write_text(self._config())
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self._banner():
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError("sshd sent no banner in time")
            time.sleep(0.05)
        return self

    def _banner(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                return conn.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def stop(self) -> None:
        """End every shared client connection (``ssh -O exit``), then the server."""
        for sock in [p for p in self.control_dir.rglob("*") if p.is_socket()]:
            subprocess.run(["ssh", "-F", "/dev/null", "-o", f"ControlPath={sock}", "-O",
                            "exit", "127.0.0.1"], capture_output=True, timeout=10, check=False)
        shutil.rmtree(self.control_dir, ignore_errors=True)
        stop_process(self.process)
        self.process = None
