"""``greenplace agent``: run a job's command on its machine, measure it, report it.

The agent starts the command in its own process group, forwards SIGTERM, SIGINT and SIGHUP
to that group, samples the energy meters (``scheduler/meters.py``) every ``interval_s`` in a
thread, and exits with the command's exit code (128 + N when it died of signal N). With an
API configured (``GREENPLACE_API_URL``, ``GREENPLACE_JOB_ID`` and the job's agent token in
``GREENPLACE_AGENT_TOKEN``) it posts a heartbeat about every 10 s and a final ``exit``
report with the summary to ``POST /v1/jobs/{id}/telemetry``; the summary is also written to
``summary_file`` when given, and always (``./greenplace-summary.json`` by default) when no
API is configured.

Design choice: every report is first written to the spool folder (a temporary file renamed
into place, so a crash leaves a whole report or none) and a sender thread delivers the spool
oldest first, deleting each file once the API accepted it and retrying with exponential
backoff while the API is unreachable. One path for every report means that a report is never
lost when the API is down: at exit the agent waits up to ``flush_timeout_s`` for its final
report, then leaves it spooled for ``greenplace agent --flush`` or the next agent run. A
report the API refuses for good (404: the job was pruned; 422: malformed) is moved to
``rejected/`` beside the spool, never silently dropped. The token is read from the
environment only, sent only in the Authorization header, never written to the spool,
printed or logged.

Design choice: only the standard library is imported on the command's path; httpx is
imported when there is an API to talk to, pynvml when NVML is tried. ``overhead_cpu_s`` is
the agent process's own CPU time (interpreter start and imports included).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from greenplace.scheduler.meters import Meters, open_meters

TOKEN_ENV = "GREENPLACE_AGENT_TOKEN"
DEFAULT_SUMMARY_FILE = Path("greenplace-summary.json")
HEARTBEAT_S = 10.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 60.0
REQUEST_TIMEOUT_S = 10.0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_REJECTED = "rejected"


def default_spool_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME/greenplace/spool``, else ``~/.local/state/greenplace/spool``."""
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "greenplace" / "spool"


def utc_iso(at: float | None = None) -> str:
    moment = dt.datetime.now(dt.UTC) if at is None else dt.datetime.fromtimestamp(at, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    """Where the agent reports and how often it samples (``token`` is hidden from repr)."""

    job_id: str | None = None
    api_url: str | None = None
    token: str | None = field(default=None, repr=False)
    spool_dir: Path = field(default_factory=default_spool_dir)
    summary_file: Path | None = None
    interval_s: float = 1.0
    heartbeat_s: float = HEARTBEAT_S
    flush_timeout_s: float = 600.0

    @property
    def reports(self) -> bool:
        """Whether there is an API to report to (URL, job id and token all set)."""
        return bool(self.api_url and self.job_id and self.token)


# ----------------------------------------------------------------------------- spool


def spool_report(spool_dir: Path, *, job_id: str, api_url: str, body: dict[str, Any]) -> Path:
    """Write one report to the spool atomically (tmp + rename); the token is not in it."""
    spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = f"{time.time_ns():020d}-{os.getpid()}-{job_id}-{body['kind']}.json"
    tmp = spool_dir / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"job_id": job_id, "api_url": api_url, "body": body}, out)
        out.flush()
        os.fsync(out.fileno())
    path = spool_dir / name
    os.replace(tmp, path)
    return path


def spooled(spool_dir: Path, job_id: str | None = None) -> list[Path]:
    """The spooled reports, oldest first (of ``job_id`` only when given)."""
    if not spool_dir.is_dir():
        return []
    found = sorted(p for p in spool_dir.glob("*.json") if not p.name.startswith("."))
    return [p for p in found if job_id is None or p.name.split("-", 2)[2].startswith(
        f"{job_id}-")]


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened to one spooled report: sent, kept for a retry, or rejected for good."""

    path: Path
    outcome: str  # "sent" | "retry" | "rejected"
    detail: str = ""


def deliver(path: Path, *, token: str, client: Any, api_url: str | None = None) -> Delivery:
    """Post one spooled report; delete it when accepted, move it to rejected/ when refused
    for good (404, 422), keep it otherwise (network error, 401/403, 408, 429, 5xx)."""
    import httpx

    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return _reject(path, f"unreadable spool file ({exc})")
    url = f"{(api_url or report['api_url']).rstrip('/')}/v1/jobs/{report['job_id']}/telemetry"
    try:
        response = client.post(url, json=report["body"],
                               headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return Delivery(path, "retry", f"{type(exc).__name__}")
    if response.status_code < 300:
        path.unlink(missing_ok=True)
        return Delivery(path, "sent")
    if response.status_code in (404, 410, 422):
        return _reject(path, f"HTTP {response.status_code}: {response.text[:300]}")
    return Delivery(path, "retry", f"HTTP {response.status_code}")


def _reject(path: Path, detail: str) -> Delivery:
    rejected = path.parent / _REJECTED
    rejected.mkdir(exist_ok=True, mode=0o700)
    os.replace(path, rejected / path.name)
    return Delivery(path, "rejected", detail)


def flush(spool_dir: Path, *, token: str, job_id: str | None = None, api_url: str | None = None,
          timeout_s: float = 60.0, log: Callable[[str], None] | None = None) -> list[Path]:
    """Send the spooled reports (of ``job_id`` when given) until none is left or
    ``timeout_s`` passed, with backoff between failed rounds; returns what is left."""
    import httpx

    log = log or _stderr
    deadline = time.monotonic() + timeout_s
    backoff_s = BACKOFF_MIN_S
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        while True:
            retry = False
            for path in spooled(spool_dir, job_id):
                done = deliver(path, token=token, client=client, api_url=api_url)
                if done.outcome == "rejected":
                    log(f"greenplace agent: the API refused {path.name} for good "
                        f"({done.detail}); kept in {spool_dir / _REJECTED}")
                elif done.outcome == "retry":
                    retry = True
                    break  # keep the order: nothing newer goes before it
            left = spooled(spool_dir, job_id)
            if not retry or not left or time.monotonic() + backoff_s > deadline:
                return left
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Sender(threading.Thread):
    """Delivers the job's spool in the background, with backoff, until told to stop."""

    def __init__(self, config: AgentConfig, log: Callable[[str], None]) -> None:
        super().__init__(name="greenplace-sender", daemon=True)
        self.config, self.log = config, log
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.warned = False

    def run(self) -> None:
        import httpx

        backoff_s = BACKOFF_MIN_S
        token = self.config.token or ""
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            while not self.stopping.is_set():
                failed = False
                for path in spooled(self.config.spool_dir, self.config.job_id):
                    done = deliver(path, token=token, client=client,
                                   api_url=self.config.api_url)
                    if done.outcome == "retry":
                        failed = True
                        if not self.warned:
                            self.log(f"greenplace agent: the API is unreachable ({done.detail});"
                                     " reports are kept in the spool and retried")
                            self.warned = True
                        break
                    if done.outcome == "rejected":
                        self.log(f"greenplace agent: the API refused a report for good "
                                 f"({done.detail})")
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S) if failed else BACKOFF_MIN_S
                self.wake.wait(backoff_s if failed else None)
                self.wake.clear()

    def idle(self) -> bool:
        return not spooled(self.config.spool_dir, self.config.job_id)


# ----------------------------------------------------------------------------- run


def exit_status(returncode: int) -> int:
    """The shell's convention: 128 + N for a command killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Sampler(threading.Thread):
    """Samples the meters every ``interval_s`` and hands out heartbeats every ``heartbeat_s``."""

    def __init__(self, meters: Meters, config: AgentConfig,
                 on_heartbeat: Callable[[list[dict[str, Any]]], None] | None) -> None:
        super().__init__(name="greenplace-sampler", daemon=True)
        self.meters, self.config, self.on_heartbeat = meters, config, on_heartbeat
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.samples: list[dict[str, Any]] = []

    def sample(self) -> None:
        with self.lock:
            self.meters.sample(time.monotonic())
            self.samples.append({"at": utc_iso(), "energy_j": round(self.meters.energy_j(), 3)})
            if self.on_heartbeat is None:
                del self.samples[:-1]  # nobody collects them: keep the last one only

    def run(self) -> None:
        next_beat = time.monotonic() + self.config.heartbeat_s
        while not self.stopping.wait(self.config.interval_s):
            self.sample()
            if self.on_heartbeat is not None and time.monotonic() >= next_beat:
                with self.lock:
                    samples, self.samples = self.samples, []
                self.on_heartbeat(samples)
                next_beat = time.monotonic() + self.config.heartbeat_s


def run_agent(command: Sequence[str], config: AgentConfig, *, meters: Meters | None = None,
              log: Callable[[str], None] | None = None) -> int:
    """Run ``command`` measured and reported; returns its exit status (128 + N on signal N).

    Raises:
        FileNotFoundError, PermissionError: the command could not be started.
    """
    log = log or _stderr
    meters = meters or open_meters()
    for note in meters.notes:
        log(f"greenplace agent: {note}")
    sender = Sender(config, log) if config.reports else None
    if sender is not None:
        sender.start()  # also delivers what an earlier run left in the spool

    def heartbeat(samples: list[dict[str, Any]]) -> None:
        report({"kind": "heartbeat", "samples": samples[-600:]})

    def report(body: dict[str, Any]) -> None:
        assert sender is not None and config.job_id and config.api_url
        spool_report(config.spool_dir, job_id=config.job_id, api_url=config.api_url, body=body)
        sender.wake.set()

    started_at, started_s = utc_iso(), time.monotonic()
    sampler = Sampler(meters, config, heartbeat if sender is not None else None)
    sampler.sample()
    try:
        proc = subprocess.Popen(list(command), start_new_session=True)
    except OSError:
        meters.close()
        raise

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    sampler.start()
    try:
        returncode = proc.wait()
    finally:
        sampler.stopping.set()
        sampler.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sampler.sample()
    meters.close()
    status = exit_status(returncode)
    summary = build_summary(config, meters, exit_code=status, started_at=started_at,
                            wall_s=time.monotonic() - started_s)
    summary_file = config.summary_file or (None if sender else DEFAULT_SUMMARY_FILE)
    if summary_file is not None:
        write_json(summary_file, summary)
    if sender is not None:
        report({"kind": "exit", "exit_code": status, "summary": summary,
                "samples": sampler.samples[-1:]})
        deadline = time.monotonic() + config.flush_timeout_s
        while not sender.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        sender.stopping.set()
        sender.wake.set()
        if not sender.idle():
            log(f"greenplace agent: the final report is kept in {config.spool_dir}; "
                "`greenplace agent --flush` (or the next agent run) sends it")
    return status


def build_summary(config: AgentConfig, meters: Meters, *, exit_code: int, started_at: str,
                  wall_s: float) -> dict[str, Any]:
    """The summary JSON (the final report's ``summary``; see the issue 12 contract)."""
    readings = meters.readings()
    return {
        "job_id": config.job_id,
        "exit_code": exit_code,
        "started_at": started_at,
        "ended_at": utc_iso(),
        "wall_s": round(wall_s, 3),
        "energy_j": round(sum(r.energy_j for r in readings), 3),
        "method": meters.method,
        "devices": [r.as_json() for r in readings],
        "notes": [note[:500] for note in meters.notes[:16]],
        "overhead_cpu_s": round(time.process_time(), 4),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
