"""A tiny threaded loopback HTTP server that hands each request to a Python callable.

The fakes in this package (EC2 error proxy, OpenStack, token endpoints) are
written as ``handler(request) -> Reply`` functions; this module owns sockets,
threads and clean shutdown so that each fake is only its wire format.
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(self.body.decode())


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
        return cls(status=status, body=json.dumps(data).encode(),
                   headers={"Content-Type": "application/json", **(headers or {})})


Handler = Callable[[Request], Reply]


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parsed = urllib.parse.urlsplit(self.path)
        request = Request(method=self.command, path=parsed.path,
                          query=urllib.parse.parse_qs(parsed.query),
                          headers={k.lower(): v for k, v in self.headers.items()}, body=body)
        handler: Handler = self.server.handler  # type: ignore[attr-defined]
        try:
            reply = handler(request)
        except Exception as exc:  # a bug in the fake must show up, not hang the client
            reply = Reply(status=599, body=f"fake server error: {exc!r}".encode())
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the log
        return


@contextmanager
def serve(handler: Handler) -> Iterator[str]:
    """Run ``handler`` behind http://127.0.0.1:<free port>; yields that base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RequestHandler)
    server.daemon_threads = True
    server.handler = handler  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def aws_json_error(code: str, message: str, status: int) -> Reply:
    """An error in AWS's JSON 1.1 protocol: ``__type`` in the body and ``x-amzn-ErrorType``."""
    return Reply(status=status, body=json.dumps({"__type": code, "Message": message}).encode(),
                 headers={"Content-Type": "application/x-amz-json-1.1",
                          "x-amzn-ErrorType": code, "x-amzn-RequestId": str(uuid.uuid4())})
