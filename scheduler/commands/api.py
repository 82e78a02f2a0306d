"""The `api` command: serve the HTTP API and the dashboard with uvicorn."""

from __future__ import annotations

import click


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0 in a container)")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="uvicorn worker processes (each serves every route; state is in Redis)")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def api_cmd(host: str, port: int, workers: int, log_level: str) -> None:
    """Serve the HTTP API (/v1), the dashboard (/) and /metrics; tokens from `admin token`.

    Every route but /healthz and /readyz needs `Authorization: Bearer TOKEN`. The
    settings are the worker's (GREENPLACE_REDIS_URL, GREENPLACE_KEY_PREFIX, ...).
    """
    import uvicorn

    from greenplace.scheduler.settings import load_settings
    from greenplace.scheduler.store import open_store, reachable

    settings = load_settings()
    with reachable(settings.redacted_redis_url):  # a wrong URL fails here, in one paragraph
        open_store(settings).client.ping()
    # access_log off: uvicorn's access log prints query strings, and the token is in a
    # header it never prints; request lines carry no secret, but they are noise at scale.
    uvicorn.run("greenplace.scheduler.api.app:create_app", factory=True, host=host, port=port,
                workers=workers, log_level=log_level, access_log=log_level == "debug",
                proxy_headers=True)
