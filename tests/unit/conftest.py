"""Fixtures shared by the flow tests (test_dispatch.py, test_lifecycle.py): a private
redis-server per module and a Context on it with the real local-sim provider."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from greenplace.scheduler.dispatch import Context
from greenplace.scheduler.settings import Settings
from greenplace.scheduler.store import JobStore
from tests.redisproc import RedisServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_ctx(server: RedisServer, tmp_path: Path) -> Callable[..., Context]:
    server.client().flushall()

    def build(**sim: Any) -> Context:
        path = tmp_path / "sim.yaml"
        path.write_text(yaml.safe_dump({"launch_latency_s": 0, "run_time_s": 60, **sim}))
        settings = Settings(redis_url=server.url, sim_config=path, cooldown_s=60, stall_s=5)
        return Context.build(settings, JobStore(server.client()))

    return build
