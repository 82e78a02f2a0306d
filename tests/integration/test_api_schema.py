"""Schemathesis over the API's own OpenAPI 3.1 schema, against a real `greenplace api` process
on a private Redis: no generated request (valid or not, with a member's token) makes the
server fail (5xx), and every error it answers is problem+json."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.integration.conftest import Service
from tests.redisproc import REDIS_SERVER, RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    tmp: Path = tmp_path_factory.mktemp("schema")
    server = RedisServer(tmp / "redis").start()
    service = Service(tmp, server)
    try:
        url = service.start_api()
        yield url, service.token("fuzz")
    finally:
        service.stop_all()
        server.stop()


def problem_json_errors(ctx: Any, response: Any, case: Any) -> None:
    """Every error the API answers has the problem+json shape (RFC 9457)."""
    if response.status_code >= 400:
        assert response.headers["content-type"][0] == "application/problem+json"
        body = response.json()
        assert body["status"] == response.status_code and body["detail"]


def test_no_generated_request_makes_the_server_fail(running: tuple[str, str]) -> None:
    """Each operation gets its own Hypothesis run of generated cases.

    Design choice: schemathesis's pytest plugin (``from_fixture``) does not work with the
    pytest this suite runs, so the test walks the schema's operations itself and runs a
    Hypothesis test per operation over ``as_strategy()``, as the plugin would.
    """
    url, token = running
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    assert schema.raw_schema["openapi"].startswith("3.1")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                   checks=[not_a_server_error, problem_json_errors])

        run()
