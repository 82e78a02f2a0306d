"""Service settings from the environment, and the Celery app they configure (no Redis)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from greenplace.scheduler.exceptions import ConfigError
from greenplace.scheduler.settings import DEFAULT_REDIS_URL, load_settings, redact_url


def test_defaults_map_every_cloud_to_local_sim() -> None:
    s = load_settings({})
    assert s.redis_url == DEFAULT_REDIS_URL and not s.tls
    assert dict(s.providers) == {"aws": "local-sim", "gcp": "local-sim", "azure": "local-sim"}
    assert s.provider_for("gcp") == "local-sim"
    assert s.provider_config("local-sim") == {"redis_url": DEFAULT_REDIS_URL, "key_prefix": "gp"}
    assert s.provider_config("aws") == {}
    assert s.visibility_timeout_s >= s.task_time_limit_s + 10 + 5


def test_password_is_injected_and_never_shown(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = load_settings({"GREENPLACE_REDIS_URL": "rediss://redis.internal:6380/2",
                       "GREENPLACE_REDIS_PASSWORD": "p@ss:word", "GREENPLACE_REDIS_CA_CERT":
                       str(ca)})
    assert s.tls and s.redis_url == "rediss://:p%40ss%3Aword@redis.internal:6380/2"
    assert s.redacted_redis_url == "rediss://:***@redis.internal:6380/2"
    assert "word" not in s.redacted_redis_url
    assert s.provider_config("local-sim")["redis_ca_cert"] == str(ca)
    assert redact_url("redis://user:secret@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    explicit = load_settings({"GREENPLACE_REDIS_URL": "redis://:inurl@h:1/0",
                              "GREENPLACE_REDIS_PASSWORD": "other"})
    assert explicit.redis_url == "redis://:inurl@h:1/0"


def test_unix_socket_url_for_the_store_and_the_broker() -> None:
    s = load_settings({"GREENPLACE_REDIS_URL": "unix:///run/redis/redis.sock?db=3"})
    assert s.redis_url == "unix:///run/redis/redis.sock?db=3"
    assert s.broker_url == "redis+socket:///run/redis/redis.sock?virtual_host=3"
    assert load_settings({}).broker_url == DEFAULT_REDIS_URL


def test_providers_mapping() -> None:
    s = load_settings({"GREENPLACE_PROVIDERS": "aws=aws, gcp=local-sim"})
    assert s.provider_for("aws") == "aws" and s.provider_for("azure") == "local-sim"


def test_a_cloud_of_the_catalog_overlay_can_be_routed(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "catalog-overlay.yaml"
    monkeypatch.setenv("GREENPLACE_CATALOG_OVERLAY", str(example))
    s = load_settings({"GREENPLACE_PROVIDERS": "nordic-openstack=libcloud"})
    assert s.provider_for("nordic-openstack") == "libcloud"
    monkeypatch.delenv("GREENPLACE_CATALOG_OVERLAY")
    with pytest.raises(ConfigError, match="unknown cloud 'nordic-openstack'"):
        load_settings({"GREENPLACE_PROVIDERS": "nordic-openstack=libcloud"})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({
            "GREENPLACE_REDIS_URL": "http://:topsecret@h/0",
            "GREENPLACE_PROVIDERS": "aws=aws,moon=local-sim,gcp=local_sim,azure",
            "GREENPLACE_RECONCILE_INTERVAL_S": "soon",
            "GREENPLACE_SIM_CONFIG": "/nonexistent.yaml",
        })
    message = str(info.value)
    for part in ("must start with redis://", "unknown cloud 'moon'", "Did you mean 'local-sim'",
                 "'azure' is not CLOUD=PROVIDER", "'soon' is not a number",
                 "GREENPLACE_SIM_CONFIG", "To fix"):
        assert part in message
    assert "topsecret" not in message
    assert info.value.exit_code == 2


def test_visibility_timeout_must_cover_the_longest_hold() -> None:
    with pytest.raises(ConfigError, match="handed to a second worker"):
        load_settings({"GREENPLACE_VISIBILITY_TIMEOUT_S": "20",
                       "GREENPLACE_TASK_TIME_LIMIT_S": "10"})
    ok = load_settings({"GREENPLACE_VISIBILITY_TIMEOUT_S": "20",
                        "GREENPLACE_TASK_TIME_LIMIT_S": "5"})
    assert ok.dispatch_lock_ttl_s == 10


def test_celery_app_is_configured_and_connects_to_nothing(tmp_path: Path) -> None:
    from greenplace.scheduler.worker.app import TASK_QUEUES, create_app

    app = create_app(load_settings({"GREENPLACE_REDIS_URL": "redis://127.0.0.1:1/0"}))
    c = app.conf
    assert c.task_serializer == "json" and list(c.accept_content) == ["json"]
    assert c.task_acks_late and c.task_reject_on_worker_lost
    assert c.worker_prefetch_multiplier == 1
    assert c.task_time_limit == 25 and c.task_soft_time_limit == 22
    options = c.broker_transport_options
    assert options["visibility_timeout"] == 45 and options["unacked_restore_throttle"] == 1
    assert c.beat_schedule["greenplace-reconcile"]["task"] == "greenplace.reconcile"
    assert c.broker_use_ssl is None
    assert {r["queue"] for r in c.task_routes.values()} == set(TASK_QUEUES.values())
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    tls = create_app(load_settings({"GREENPLACE_REDIS_URL": "rediss://h:6380/0",
                                    "GREENPLACE_REDIS_CA_CERT": str(ca)}))
    assert tls.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                       "ssl_ca_certs": str(ca)}


def test_tasks_are_named_and_registered() -> None:
    from greenplace.scheduler.worker.app import CONTROL_QUEUE, create_app

    app = create_app(load_settings({}))
    app.loader.import_default_modules()
    names = {n for n in app.tasks if n.startswith("greenplace.")}
    assert names == {"greenplace.place", "greenplace.dispatch", "greenplace.reconcile",
                     "greenplace.terminate", "greenplace.gc", "greenplace.noop",
                     "greenplace.prune", "greenplace.attribute", "greenplace.catalog_refresh"}
    schedule = app.conf.beat_schedule
    assert {e["task"] for e in schedule.values()} == {"greenplace.reconcile", "greenplace.gc",
                                                      "greenplace.prune",
                                                      "greenplace.catalog_refresh"}
    assert schedule["greenplace-catalog-refresh"]["schedule"] == 86400.0
    assert app.conf.task_routes["greenplace.catalog_refresh"] == {"queue": CONTROL_QUEUE}
    off = create_app(load_settings({"GREENPLACE_CATALOG_REFRESH_INTERVAL_S": "0"}))
    assert "greenplace-catalog-refresh" not in off.conf.beat_schedule
    task = app.tasks["greenplace.catalog_refresh"]
    # It may run for minutes: acknowledged at start (no redelivery while it runs).
    assert task.acks_late is False
    assert task.time_limit > app.conf.broker_transport_options["visibility_timeout"]


@pytest.mark.parametrize(("given", "stored", "shown"), [
    ("redis://h:1/0?password=s3cret", "redis://:s3cret@h:1/0", "redis://:***@h:1/0"),
    ("redis://h:1/0?username=bob&password=p%40ss&socket_timeout=3",
     "redis://bob:p%40ss@h:1/0?socket_timeout=3", "redis://bob:***@h:1/0?socket_timeout=3"),
    ("redis://:inurl@h:1/0?password=other", "redis://:inurl@h:1/0", "redis://:***@h:1/0"),
    ("unix:///run/r.sock?db=2&password=s3cret", "unix:///run/r.sock?db=2&password=s3cret",
     "unix:///run/r.sock?db=2&password=***"),
])
def test_a_password_in_any_url_form_is_accepted_and_redacted(given: str, stored: str,
                                                             shown: str) -> None:
    s = load_settings({"GREENPLACE_REDIS_URL": given})
    assert s.redis_url == stored and s.redacted_redis_url == shown
    assert "s3cret" not in s.redacted_redis_url and "p%40ss" not in s.redacted_redis_url
    from kombu import Connection  # the broker parses the URL it is given (it used to crash)

    assert Connection(s.broker_url).as_uri().count("***") <= 1
    if given.startswith("unix"):
        assert s.broker_url == "redis+socket://:s3cret@/run/r.sock?virtual_host=2"


def test_secret_query_parameters_of_any_url_are_redacted() -> None:
    assert redact_url("https://u:p@api.example/v1?token=abc&zone=DE#x") == \
        "https://u:***@api.example/v1?token=***&zone=DE#x"
    assert redact_url("https://api.example/v1?API_KEY=abc") == "https://api.example/v1?API_KEY=***"
    assert redact_url("https://api.example/v1?zone=DE") == "https://api.example/v1?zone=DE"
