"""Every way of writing the Redis password works for the CLI, the worker and beat, and the
password never shows in what they print."""

from __future__ import annotations

from pathlib import Path

import pytest

from greenplace.scheduler.store import JobState
from tests.integration.conftest import Service, training_job, write_jobs
from tests.redisproc import REDIS_SERVER, RedisServer

PASSWORD = "q-s3cr3t-pw"


@pytest.mark.parametrize("form", ["tcp-query", "unix-query"])
def test_a_password_given_as_a_query_parameter(tmp_path: Path, form: str) -> None:
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    socket = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "redis", password=PASSWORD,
                         extra=["--unixsocket", str(socket)]).start()
    service = Service(tmp_path, server)
    url = (f"redis://127.0.0.1:{server.port}/0?password={PASSWORD}" if form == "tcp-query"
           else f"unix://{socket}?db=0&password={PASSWORD}")
    service.env["GREENPLACE_REDIS_URL"] = url
    try:
        worker = service.start_worker()
        beat = service.start_beat()
        ids = service.submit(write_jobs(tmp_path / "jobs.yaml", [training_job("url-a")]))
        service.wait_states(ids, {JobState.SUCCEEDED}, timeout_s=120)
        status = service.cli("status")
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout
        wrong = dict(service.env, GREENPLACE_REDIS_URL=url.replace(str(server.port), "1")
                     if form == "tcp-query" else url.replace("redis.sock", "gone.sock"))
        refused = service.cli("status", env=wrong)
        assert refused.returncode == 2 and "***" in refused.stderr, refused.stderr
        for text in (worker.output(), beat.output(), status.stdout, status.stderr,
                     refused.stdout, refused.stderr):
            assert PASSWORD not in text
    finally:
        service.stop_all()
        server.stop()
