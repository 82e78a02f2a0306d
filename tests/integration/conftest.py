"""Integration fixtures: a private redis-server and real `greenplace worker` / `beat` processes.

Every process is started in its own session (process group) and its whole group
is terminated at teardown, so a test that fails half-way leaks nothing. Waits
poll with generous deadlines (the suite must pass on a loaded 2-core machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenplace.scheduler.store import JobRecord, JobState, JobStore
from tests.redisproc import REDIS_SERVER, RedisServer, TlsFiles
from tests.waiting import wait_for

__all__ = ["REPO", "SERVICE_ENV", "Proc", "Service", "training_job", "wait_for", "write_jobs"]

REPO = Path(__file__).resolve().parents[2]

# Test timings: a short task limit keeps lock waits after a SIGKILL short; the
# visibility timeout is the smallest the settings loader accepts for it. The stall
# backstop (reconcile re-enqueues a job that made no progress) stays above the visibility
# timeout, so a dead worker's messages normally come back by redelivery first; it rescues
# a message lost outright (a worker SIGKILLed between fetching a message and recording it
# unacked) in 30 s instead of 60 s, which was the slowest case of the SIGKILL test.
SERVICE_ENV = {
    "GREENPLACE_RECONCILE_INTERVAL_S": "0.5",
    "GREENPLACE_TASK_TIME_LIMIT_S": "8",
    "GREENPLACE_VISIBILITY_TIMEOUT_S": "23",
    "GREENPLACE_STALL_S": "30",
    "GREENPLACE_COOLDOWN_S": "300",
}


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


class Proc:
    """A service process started in its own process group, output to a log file."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(list(args), cwd=REPO, env=env, stdout=self._log_file,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, marker: str, *, timeout_s: float = 90) -> None:
        wait_for(lambda: marker in self.output() or self.popen.poll() is not None,
                 timeout_s=timeout_s, what=f"{self.log.name} to say {marker!r}",
                 interval_s=0.05)
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.log.name} exited:\n{self.output()[-3000:]}")

    def children(self) -> list[int]:
        return _children(self.pid)

    def kill_children(self) -> list[int]:
        """SIGKILL every pool process (the worker's main process survives and respawns them)."""
        killed = self.children()
        for child in killed:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return killed

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """SIGKILL the whole group (teardown only).

        Design choice: no test asserts anything about a warm shutdown, and a SIGTERMed
        worker waits for its in-flight tasks (up to the task time limit); killing the
        group at once saves one to several seconds per test and leaks nothing.
        """
        self.kill_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()


class Service:
    """One private Redis plus the workers, beat and CLI calls of one test."""

    def __init__(self, tmp: Path, redis_server: RedisServer, *, tls: TlsFiles | None = None
                 ) -> None:
        self.tmp = tmp
        self.redis = redis_server
        self.procs: list[Proc] = []
        self.sim_path = tmp / "sim.yaml"
        self.write_sim()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GREENPLACE_")}
        env.update(SERVICE_ENV)
        env.update({
            "GREENPLACE_REDIS_URL": redis_server.url,
            "GREENPLACE_SIM_CONFIG": str(self.sim_path),
            "PYTHONPATH": str(REPO),
            "XDG_STATE_HOME": str(tmp / "state"),
        })
        if tls is not None:
            env["GREENPLACE_REDIS_CA_CERT"] = str(tls.ca_cert)
        self.env = env
        self._count = 0

    # configuration ----------------------------------------------------------------
    def write_sim(self, **config: Any) -> None:
        """The local-sim config read by processes started after this call."""
        data = {"launch_latency_s": 0.0, "run_time_s": 1.0, **config}
        self.sim_path.write_text(yaml.safe_dump(data))

    # processes --------------------------------------------------------------------
    def _start(self, name: str, *args: str) -> Proc:
        self._count += 1
        proc = Proc([sys.executable, "-m", "greenplace", *args], env=self.env,
                    log=self.tmp / f"{self._count:02d}-{name}.log")
        self.procs.append(proc)
        return proc

    def start_worker(self, *, concurrency: int = 2, pool: str = "prefork",
                     queues: str | None = None) -> Proc:
        args = ["worker", "--concurrency", str(concurrency), "--pool", pool,
                "--loglevel", "INFO"]
        if queues:
            args += ["--queues", queues]
        proc = self._start("worker", *args)
        proc.wait_ready(" ready.")
        return proc

    def start_beat(self) -> Proc:
        proc = self._start("beat", "beat", "--loglevel", "INFO", "--schedule",
                           str(self.tmp / "beat-schedule"))
        proc.wait_ready("beat: Starting")
        return proc

    def start_api(self) -> str:
        """`greenplace api` on a free port; returns its base URL once it answers /healthz."""
        import httpx

        from tests.redisproc import free_port

        port = free_port()
        proc = self._start("api", "api", "--port", str(port), "--log-level", "warning")
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"api exited:\n{proc.output()[-3000:]}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout_s=60, what="the API to answer /healthz", interval_s=0.1)
        return url

    def token(self, team: str, *, role: str = "member") -> str:
        """A new API token made with `greenplace admin token create`."""
        done = self.cli("admin", "token", "create", "--team", team, "--role", role)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def cli(self, *args: str, timeout_s: float = 120, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "greenplace", *args], cwd=REPO,
                              env=env or self.env, capture_output=True, text=True,
                              timeout=timeout_s)

    def cli_json(self, *args: str, timeout_s: float = 120) -> Any:
        result = self.cli(*args, "--output", "json", timeout_s=timeout_s)
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)

    def submit(self, path: Path, *extra: str) -> list[str]:
        rows = self.cli_json("submit", str(path), *extra)
        return [r["job_id"] for r in rows]

    # state --------------------------------------------------------------------------
    def store(self) -> JobStore:
        from greenplace.scheduler.store import redis_client

        ca = self.env.get("GREENPLACE_REDIS_CA_CERT")
        return JobStore(redis_client(self.redis.url, ca_cert=ca))

    def records(self, ids: Sequence[str]) -> list[JobRecord]:
        return self.store().get_many(list(ids))

    def wait_states(self, ids: Sequence[str], states: set[JobState], *,
                    timeout_s: float = 120) -> list[JobRecord]:
        def done() -> list[JobRecord] | None:
            rs = self.records(ids)
            return rs if len(rs) == len(ids) and all(r.state in states for r in rs) else None

        try:
            return wait_for(done, timeout_s=timeout_s, what=f"{len(ids)} job(s) in {states}")
        except AssertionError:
            seen = {r.job_id: str(r.state) for r in self.records(ids)}
            logs = "\n".join(p.output()[-1500:] for p in self.procs)
            raise AssertionError(f"jobs not in {states}: {seen}\n{logs}") from None

    def instances(self) -> list[dict[str, Any]]:
        from greenplace.providers.local_sim import LocalSim, load_sim_config

        sim = LocalSim(config=load_sim_config({"config_path": str(self.sim_path)}, environ={}),
                       redis_url=self.redis.url,
                       redis_ca_cert=self.env.get("GREENPLACE_REDIS_CA_CERT"))
        return sim.instances()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def service(tmp_path: Path, redis_server: RedisServer) -> Iterator[Service]:
    svc = Service(tmp_path, redis_server)
    try:
        yield svc
    finally:
        svc.stop_all()


def write_jobs(path: Path, jobs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"jobs": jobs}))
    return path


def training_job(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "run": f"python train.py --run {name}",
            "resources": {"accelerators": [{"A100": 8}, {"H100": 8}]},
            "work": {"hours": 10}, **extra}
