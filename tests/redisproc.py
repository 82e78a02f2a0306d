"""A private redis-server for tests: a free loopback port, its own temp dir, never :6379.

Used by the store / local-sim / dispatch tests and the integration suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

REDIS_SERVER = shutil.which("redis-server")


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM ``process`` if it still runs, SIGKILL after 10 s, and reap it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost (openssl CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
        str(ca_cert), "-days", "2", "-subj", "/CN=greenplace-test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj",
        "/CN=localhost")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return TlsFiles(ca_cert=ca_cert, cert=cert, key=key)


class _PortTaken(RuntimeError):
    """redis-server could not bind its port (another process took it first)."""


class RedisServer:
    """One redis-server process with AOF (``appendfsync always``) in ``directory``."""

    def __init__(self, directory: Path, *, password: str | None = None,
                 tls: TlsFiles | None = None, extra: Sequence[str] = ()) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--logfile", str(self.directory / "redis.log"), "--protected-mode", "no"]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file",
                     str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                     "--tls-ca-cert-file", str(self.tls.ca_cert), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        return args + self.extra

    def client(self) -> redis.Redis:
        """A new client; ``stop()`` closes every client handed out.

        Design choice: a client dropped unclosed is closed by redis-py's ``__del__`` only
        when it is freed by reference count; one caught in a reference cycle is collected
        by the GC in any order, and its socket's own finalizer may run first and raise a
        ResourceWarning (an error in this suite) in whatever test happens to be running.
        """
        kwargs = {"ssl_ca_certs": str(self.tls.ca_cert)} if self.tls else {}
        client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5,
                                      **kwargs)  # type: ignore[arg-type]
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close every client ``client()`` handed out (they reconnect if used again)."""
        clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def start(self, *, timeout_s: float = 20.0) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING.

        Design choice: ``free_port`` closes its probe socket before redis-server binds, so
        under parallel tests another process can take the port in between; a first start
        that loses that race retries on a new port. A restart keeps its port (clients
        hold the URL), so it does not retry.
        """
        first_start = not self._started
        for _ in range(5 if first_start else 1):
            try:
                self._start_once(timeout_s=timeout_s)
            except _PortTaken:
                self.port = free_port()
                continue
            self._started = True
            return self
        raise RuntimeError(f"redis-server found no free port: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return (self.directory / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _start_once(self, *, timeout_s: float) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log_before = len(self._log_tail())
        self.process = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        kwargs = {"ssl_ca_certs": str(self.tls.ca_cert)} if self.tls else {}
        with redis.Redis.from_url(self.url, socket_timeout=5,
                                  **kwargs) as probe:  # type: ignore[arg-type]
            while True:
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    pass
                if self.process.poll() is not None:
                    self.process = None
                    log = self._log_tail()
                    if "already in use" in log[log_before:] and not self._started:
                        raise _PortTaken(log)
                    raise RuntimeError(f"redis-server exited: {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer PING in time")
                time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what AOF already fsynced survives."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        self.close_clients()
        stop_process(self.process)
        self.process = None
