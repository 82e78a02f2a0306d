"""The threaded fake HTTP server every signal fake is built on."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encoded unless ``raw`` is given
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Retry-After


@dataclass
class FakeApi:
    """Routing plus failure knobs shared by every fake.

    Knobs (apply to every route except the ones a subclass exempts):
        fail_status: answer this HTTP status with ``fail_body`` and ``fail_headers``.
        delay_s: sleep this long before answering (a slow service).
        malformed: answer JSON of the wrong shape.
        not_json: answer a body that is not JSON.
    """

    fail_status: int | None = None
    fail_body: Any = None
    fail_headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    malformed: bool = False
    not_json: bool = False
    requests: list[Request] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def route(self, request: Request) -> Reply:  # overridden by each fake
        return Reply(status=404, body={"error": "no such route"})

    def malformed_body(self, request: Request) -> Any:
        return {"unexpected": "shape"}

    def exempt(self, request: Request) -> bool:
        """Routes the failure knobs leave alone (e.g. a login)."""
        return False

    def handle(self, request: Request) -> Reply:
        self.requests.append(request)
        if not self.exempt(request):
            if self.delay_s:
                self._stop.wait(self.delay_s)
            if self.fail_status is not None:
                return Reply(status=self.fail_status, body=self.fail_body,
                             headers=dict(self.fail_headers))
            if self.not_json:
                return Reply(raw=b"<html>upstream error</html>")
            if self.malformed:
                return Reply(body=self.malformed_body(request))
        return self.route(request)

    def calls(self, path_part: str) -> list[Request]:
        return [r for r in self.requests if path_part in r.path]


class FakeServer:
    """Serves a FakeApi on 127.0.0.1 at a free port until ``close``."""

    def __init__(self, api: FakeApi) -> None:
        self.api = api
        handler = _handler_for(api)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.api._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler_for(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            parts = urlsplit(self.path)
            request = Request(
                method="GET", path=parts.path, query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()})
            reply = api.handle(request)
            if reply.raw is not None:
                data, kind = reply.raw, "text/html"
            elif reply.body is None or reply.status == 204:
                data, kind = b"", "application/json"
            else:
                data, kind = json.dumps(reply.body).encode(), "application/json"
            try:
                self.send_response(reply.status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if data:
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


def closed_port_url() -> str:
    """A loopback URL nothing listens on (connection refused at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    time.sleep(0)
    return f"http://127.0.0.1:{port}"
