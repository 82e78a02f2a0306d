"""A moto server with an HTTP proxy in front that answers chosen EC2 calls with real EC2 errors.

EC2 speaks the query protocol: form-encoded ``Action=...`` requests, XML
answers. Its errors look like::

    <Response><Errors><Error><Code>InsufficientInstanceCapacity</Code>
    <Message>...</Message></Error></Errors><RequestID>...</RequestID></Response>

with the HTTP status EC2 uses for that code (500 for capacity, 503 for
throttling, 400 for limits, 401/403 for auth). The proxy forwards everything
else to moto untouched and counts every call per action, so a test can prove
how many attempts the SDK made.
"""

from __future__ import annotations

import collections
import http.client
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from xml.sax.saxutils import escape

from moto.server import ThreadedMotoServer

from tests.fakes.http import Reply, Request, serve

# The HTTP status EC2 answers each error code with.
EC2_ERROR_STATUS = {
    "InsufficientInstanceCapacity": 500,
    "Unsupported": 400,
    "SpotMaxPriceTooLow": 400,
    "InstanceLimitExceeded": 400,
    "VcpuLimitExceeded": 400,
    "MaxSpotInstanceCountExceeded": 400,
    "RequestLimitExceeded": 503,
    "InternalError": 500,
    "ServiceUnavailable": 503,
    "AuthFailure": 401,
    "UnauthorizedOperation": 403,
    "InvalidParameterValue": 400,
}

EC2_ERROR_MESSAGES = {
    "InsufficientInstanceCapacity": (
        "We currently do not have sufficient p4d.24xlarge capacity in the Availability Zone "
        "you requested (us-east-1a). Our system will be working on provisioning additional "
        "capacity. You can currently get p4d.24xlarge capacity by not specifying an "
        "Availability Zone in your request or choosing us-east-1b."),
    "VcpuLimitExceeded": (
        "You have requested more vCPU capacity than your current vCPU limit of 0 allows for "
        "the instance bucket that the specified instance type belongs to. Please visit "
        "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit."),
    "RequestLimitExceeded": "Request limit exceeded.",
    "AuthFailure": "AWS was not able to validate the provided access credentials",
    "UnauthorizedOperation": "You are not authorized to perform this operation.",
}


def ec2_error_body(code: str, message: str) -> bytes:
    """An EC2 error document, as EC2 sends it."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()


@dataclass
class _Canned:
    status: int
    body: bytes
    times: int


class Ec2ErrorProxy:
    """Forwards to ``upstream`` (a moto server) unless a failure is armed for the action."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._canned: dict[str, _Canned] = {}
        self._lock = threading.Lock()
        self.hits: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        """Forget armed answers and counts, and empty moto (a fresh account)."""
        with self._lock:
            self._canned.clear()
            self.hits.clear()
        connection = http.client.HTTPConnection(self._host, self._port, timeout=10)
        try:
            connection.request("POST", "/moto-api/reset")
            connection.getresponse().read()
        finally:
            connection.close()

    def respond(self, action: str, *, status: int, body: bytes, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``action`` with this status and XML body."""
        with self._lock:
            self._canned[action] = _Canned(status=status, body=body, times=times)

    def fail(self, action: str, code: str, *, times: int = 1, status: int | None = None,
             message: str | None = None) -> None:
        """Answer the next ``times`` calls of ``action`` with EC2 error ``code``."""
        self.respond(action, status=status or EC2_ERROR_STATUS.get(code, 400), times=times,
                     body=ec2_error_body(code, message or EC2_ERROR_MESSAGES.get(
                         code, f"{code} (injected)")))

    def __call__(self, request: Request) -> Reply:
        form = request.form() if request.method == "POST" else request.query
        action = (form.get("Action") or ["?"])[0]
        with self._lock:
            self.hits[action] += 1
            canned = self._canned.get(action)
            if canned is not None:
                canned.times -= 1
                if canned.times <= 0:
                    del self._canned[action]
        if canned is not None:
            return Reply(status=canned.status, body=canned.body,
                         headers={"Content-Type": "text/xml;charset=UTF-8"})
        connection = http.client.HTTPConnection(self._host, self._port, timeout=30)
        try:
            query = urllib.parse.urlencode(request.query, doseq=True)
            connection.request(request.method, request.path + (f"?{query}" if query else ""),
                               body=request.body, headers=request.headers)
            answer = connection.getresponse()
            body = answer.read()
            headers = {k: v for k, v in answer.getheaders()
                       if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            return Reply(status=answer.status, body=body, headers=headers)
        finally:
            connection.close()


@contextmanager
def moto_server() -> Iterator[str]:
    """A ThreadedMotoServer on a free loopback port, reset on start; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def ec2_with_errors() -> Iterator[tuple[str, Ec2ErrorProxy]]:
    """A moto server behind an Ec2ErrorProxy; yields (proxy URL, proxy)."""
    with moto_server() as upstream:
        proxy = Ec2ErrorProxy(upstream)
        proxy.reset()
        with serve(proxy) as url:
            yield url, proxy
