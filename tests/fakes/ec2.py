"""A moto server with an HTTP proxy in front that makes it behave like EC2 where moto does not.

EC2 speaks the query protocol: form-encoded ``Action=...`` requests, XML
answers. Its errors look like::

    <Response><Errors><Error><Code>InsufficientInstanceCapacity</Code>
    <Message>...</Message></Error></Errors><RequestID>...</RequestID></Response>

with the HTTP status EC2 uses for that code (500 for capacity, 503 for
throttling, 400 for limits, 401/403 for auth). The proxy forwards everything
else to moto and counts every call per action, so a test can prove how many
attempts the SDK made.

Where moto differs from EC2, the proxy corrects it (each documented by EC2):

- Boot and termination take time: an instance is ``pending`` for ``boot_s``
  after RunInstances and ``shutting-down`` for ``terminate_s`` after
  TerminateInstances (moto flips both at once).
- Eventual consistency ("Eventual consistency in the Amazon EC2 API"): for
  ``not_visible_s`` after RunInstances, DescribeInstances, TerminateInstances and
  GetConsoleOutput naming the new id answer ``InvalidInstanceID.NotFound``.
  DescribeInstances by filter leaves such an instance out of its answer.
- ClientToken idempotency (moto ignores the token): a RunInstances repeating a
  token answers the first launch when its parameters are the same, and
  ``IdempotentParameterMismatch`` when they differ.
- An accepted launch that EC2 abandons (``fail_launch_later``): the instance is
  ``pending`` and then ``terminated`` with StateReason
  ``Server.InsufficientInstanceCapacity`` (moto never fails a launch).
- The primary network interface a launch creates goes with its instance (moto
  keeps it after termination).
- Opt-in regions (``disable_region``): DescribeRegions reports them
  ``not-opted-in`` (and omits them unless ``AllRegions=true``), and every call
  signed for such a region is refused (``OptInRequired`` by default).
- The serial console: GetConsoleOutput serves per-instance text (moto serves one
  fixed Xen boot log); ``finish`` runs an instance's boot script to its end: the
  console gets the ``greenplace-exit-code=`` line and the instance stops or
  terminates as its InstanceInitiatedShutdownBehavior says, with StateReason
  ``Client.InstanceInitiatedShutdown``. ``Latest=true`` is refused on Xen
  families (p3), as EC2 offers it on Nitro instances only.

Throttling is ``fail(action, "RequestLimitExceeded")`` (HTTP 503, as EC2 sends it).
State changes reach into moto's in-process backend (ThreadedMotoServer runs in
this process); they are applied lazily, on the next request through the proxy.
"""

from __future__ import annotations

import base64
import collections
import http.client
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import StateReason
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
    "InvalidInstanceID.NotFound": 400,
    "IdempotentParameterMismatch": 400,
    "VPCIdNotSpecified": 400,
    "UnsupportedOperation": 400,
    "IncorrectInstanceState": 400,
    "OptInRequired": 401,
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
    "OptInRequired": (
        "You are not subscribed to this service. Please go to http://aws.amazon.com to "
        "subscribe."),
    "VPCIdNotSpecified": "No default VPC for this user",
    "IdempotentParameterMismatch": (
        "Arguments on this idempotent request are inconsistent with arguments used in "
        "previous request(s)."),
}

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/(?P<region>[^/,\s]+)/ec2/")
_INSTANCE_ID = re.compile(r"<instanceId>(i-[0-9a-f]+)</instanceId>")
# Instance families on the Xen hypervisor: no Latest=true console output.
XEN_FAMILIES = frozenset({"p2", "p3", "g3", "c4", "m4", "r4", "t2", "x1"})
LAUNCH_FAILURE_MESSAGES = {
    "Server.InsufficientInstanceCapacity": "Server.InsufficientInstanceCapacity: Insufficient "
                                           "capacity.",
    "Server.InternalError": "Server.InternalError: Internal error on launch",
}


def signing_region_of(headers: dict[str, str]) -> str:
    """The region a SigV4-signed EC2 request is for ("" when unsigned): EC2 itself knows
    the region from the credential scope when every region shares one endpoint."""
    found = _SCOPE.search(headers.get("authorization", ""))
    return found.group("region") if found else ""


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


@dataclass
class _Change:
    """A state change of one instance, due at ``due`` (time.monotonic())."""

    due: float
    region: str
    instance_id: str
    state: str  # running | terminated
    reason: str = ""


@dataclass
class _LaunchFault:
    region: str | None
    reason: str
    after_s: float


_STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48,
                "stopping": 64, "stopped": 80}


def _moto_instance(region: str, instance_id: str) -> Any:
    """moto's own record of an instance (the server runs in this process)."""
    return ec2_backends[DEFAULT_ACCOUNT_ID][region].get_instance(instance_id)


def _set_state(instance: Any, state: str, reason: str = "", message: str = "") -> None:
    instance._state.name = state
    instance._state.code = _STATE_CODES[state]
    if reason:
        instance.state_reason = StateReason(message or reason, reason)
        instance._reason = message or reason


def _xml_reply(status: int, body: str) -> Reply:
    return Reply(status=status, body=body.encode(),
                 headers={"Content-Type": "text/xml;charset=UTF-8"})


def _error_reply(code: str, message: str | None = None, *, status: int | None = None) -> Reply:
    return Reply(status=status or EC2_ERROR_STATUS.get(code, 400),
                 body=ec2_error_body(code, message or EC2_ERROR_MESSAGES.get(
                     code, f"{code} (injected)")),
                 headers={"Content-Type": "text/xml;charset=UTF-8"})


class Ec2ErrorProxy:
    """Forwards to ``upstream`` (a moto server) unless a failure is armed for the action,
    correcting moto where EC2 behaves otherwise (see the module docstring)."""

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self._canned: dict[str, _Canned] = {}
        self._lock = threading.Lock()
        self.hits: collections.Counter[str] = collections.Counter()
        self.boot_s = 0.0
        self.terminate_s = 0.0
        self.not_visible_s = 0.0
        self._launch_faults: list[_LaunchFault] = []
        self._changes: list[_Change] = []
        self._hidden_until: dict[str, float] = {}
        self._consoles: dict[str, str] = {}
        self._disabled: dict[str, str] = {}
        self._tokens: dict[tuple[str, str], tuple[str, Reply]] = {}  # -> (params, answer)

    def reset(self) -> None:
        """Forget armed answers, timings and counts, and empty moto (a fresh account)."""
        with self._lock:
            self._canned.clear()
            self.hits.clear()
            self.boot_s = self.terminate_s = self.not_visible_s = 0.0
            self._launch_faults.clear()
            self._changes.clear()
            self._hidden_until.clear()
            self._consoles.clear()
            self._disabled.clear()
            self._tokens.clear()
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

    def disarm(self) -> None:
        """Drop every armed failure (canned answers, launch faults, disabled regions)."""
        with self._lock:
            self._canned.clear()
            self._launch_faults.clear()
            self._disabled.clear()

    # -- hooks for tests -------------------------------------------------------------

    def fail_launch_later(self, reason: str = "Server.InsufficientInstanceCapacity", *,
                          after_s: float = 0.2, region: str | None = None) -> None:
        """The next RunInstances (in ``region``, when given) succeeds; its instance stays
        ``pending`` and ``after_s`` later is ``terminated`` with StateReason ``reason``."""
        with self._lock:
            self._launch_faults.append(_LaunchFault(region=region, reason=reason,
                                                    after_s=after_s))

    def disable_region(self, region: str, *, code: str = "OptInRequired") -> None:
        """Make ``region`` an opt-in region this account has not enabled."""
        with self._lock:
            self._disabled[region] = code

    def finish(self, region: str, instance_id: str, exit_code: int) -> None:
        """Run the instance's boot script to its end: the command exits with
        ``exit_code``, the script prints the marker on the serial console and powers
        off; EC2 then stops or terminates it as its shutdown behaviour says."""
        instance = _moto_instance(region, instance_id)
        with self._lock:
            self._consoles[instance_id] = (
                self._consoles.get(instance_id, "")
                + "[    0.000000] Linux version 6.8.0-1021-aws (buildd@lcy02-amd64-021)\n"
                + "cloud-init[1201]: Cloud-init v. 24.1 running 'modules:final'\n"
                + f"greenplace-exit-code={exit_code}\n"
                + "[  OK  ] Reached target poweroff.target - System Power Off.\n")
            if instance.instance_initiated_shutdown_behavior == "terminate":
                instance.terminate()
                state = "terminated"
            else:
                instance.stop()
                state = "stopped"
            _set_state(instance, state, "Client.InstanceInitiatedShutdown",
                       "Client.InstanceInitiatedShutdown: Instance initiated shutdown")

    def set_console(self, instance_id: str, text: str) -> None:
        """What GetConsoleOutput answers for ``instance_id`` from now on."""
        with self._lock:
            self._consoles[instance_id] = text

    def count_instances(self, region: str) -> int:
        """Every instance moto holds in ``region``, terminated ones included (what the
        account really holds, whether or not DescribeInstances shows it yet)."""
        return len(list(ec2_backends[DEFAULT_ACCOUNT_ID][region].all_instances()))

    def count_resources(self, region: str) -> int:
        """Live instances, volumes and network interfaces moto holds in ``region``."""
        backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
        instances = [i for i in backend.all_instances() if i.state != "terminated"]
        return (len(instances) + len(backend.describe_volumes())
                + len(backend.describe_network_interfaces()))

    # -- the proxy -------------------------------------------------------------------

    def _advance(self) -> None:
        """Apply every state change that has come due."""
        now = time.monotonic()
        with self._lock:
            due = [c for c in self._changes if c.due <= now]
            self._changes = [c for c in self._changes if c.due > now]
        for change in due:
            instance = _moto_instance(change.region, change.instance_id)
            if change.state == "terminated" and change.reason:
                instance.terminate()
                _set_state(instance, "terminated", change.reason,
                           LAUNCH_FAILURE_MESSAGES.get(change.reason, change.reason))
            elif change.state == "terminated":
                _set_state(instance, "terminated")
            elif instance.state == "pending":
                _set_state(instance, change.state)

    def _after_launch(self, region: str, body: bytes) -> None:
        ids = _INSTANCE_ID.findall(body.decode(errors="replace"))
        now = time.monotonic()
        with self._lock:
            fault = next((f for f in self._launch_faults
                          if f.region in (None, region)), None)
            if fault is not None:
                self._launch_faults.remove(fault)
            for instance_id in ids:
                # EC2 deletes the primary network interface RunInstances created with the
                # instance (its attachment says DeleteOnTermination=true); moto keeps it.
                for nic in _moto_instance(region, instance_id).nics.values():
                    nic.delete_on_termination = True
                if self.not_visible_s:
                    self._hidden_until[instance_id] = now + self.not_visible_s
                if fault is not None:
                    self._changes.append(_Change(due=now + fault.after_s, region=region,
                                                 instance_id=instance_id, state="terminated",
                                                 reason=fault.reason))
                elif self.boot_s:
                    self._changes.append(_Change(due=now + self.boot_s, region=region,
                                                 instance_id=instance_id, state="running"))
                else:
                    continue
                _set_state(_moto_instance(region, instance_id), "pending")

    def _after_terminate(self, region: str, ids: list[str]) -> None:
        if not self.terminate_s:
            return
        now = time.monotonic()
        for instance_id in ids:
            instance = _moto_instance(region, instance_id)
            with self._lock:
                if any(c.instance_id == instance_id and c.state == "terminated"
                       for c in self._changes):
                    continue
                self._changes = [c for c in self._changes if c.instance_id != instance_id]
                self._changes.append(_Change(due=now + self.terminate_s, region=region,
                                             instance_id=instance_id, state="terminated"))
            _set_state(instance, "shutting-down")

    def _hidden(self, ids: list[str]) -> str | None:
        now = time.monotonic()
        with self._lock:
            return next((i for i in ids if self._hidden_until.get(i, 0.0) > now), None)

    def _without_hidden(self, reply: Reply) -> Reply:
        """A DescribeInstances answer without the instances not visible yet."""
        now = time.monotonic()
        with self._lock:
            hidden = {i for i, until in self._hidden_until.items() if until > now}
        if not hidden:
            return reply
        root = ElementTree.fromstring(reply.body)
        namespace = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
        ElementTree.register_namespace("", namespace.strip("{}"))
        reservations = root.find(f"{namespace}reservationSet")
        for reservation in list(reservations if reservations is not None else []):
            instances = reservation.find(f"{namespace}instancesSet")
            for item in list(instances if instances is not None else []):
                if item.findtext(f"{namespace}instanceId") in hidden:
                    instances.remove(item)  # type: ignore[union-attr]
            if instances is None or len(instances) == 0:
                reservations.remove(reservation)  # type: ignore[union-attr]
        return dataclasses_replace(reply, body=ElementTree.tostring(
            root, encoding="utf-8", xml_declaration=True))

    def _regions(self, form: dict[str, list[str]]) -> Reply:
        everything = (form.get("AllRegions") or ["false"])[0].lower() == "true"
        items = []
        for name in boto3.session.Session().get_available_regions("ec2"):
            disabled = name in self._disabled
            if disabled and not everything:
                continue  # EC2 lists disabled regions only with AllRegions=true
            status = "not-opted-in" if disabled else "opt-in-not-required"
            items.append(f"<item><regionName>{name}</regionName><regionEndpoint>"
                         f"ec2.{name}.amazonaws.com</regionEndpoint><optInStatus>{status}"
                         "</optInStatus></item>")
        return _xml_reply(200, f'<?xml version="1.0" encoding="UTF-8"?>\n'
                               f'<DescribeRegionsResponse xmlns="{EC2_NS}"><requestId>'
                               f"{uuid.uuid4()}</requestId><regionInfo>{''.join(items)}"
                               "</regionInfo></DescribeRegionsResponse>")

    def _console(self, region: str, form: dict[str, list[str]]) -> Reply | None:
        instance_id = (form.get("InstanceId") or [""])[0]
        latest = (form.get("Latest") or ["false"])[0].lower() == "true"
        instance = _moto_instance(region, instance_id) if instance_id.startswith("i-") else None
        if instance is not None and latest and (
                instance.instance_type.split(".")[0] in XEN_FAMILIES):
            return _error_reply("UnsupportedOperation",
                                "The instance type does not support retrieving the latest "
                                "console output.")
        with self._lock:
            text = self._consoles.get(instance_id)
        if text is None:
            return None  # moto's own sample output
        output = base64.b64encode(text.encode()).decode()
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return _xml_reply(200, f'<?xml version="1.0" encoding="UTF-8"?>\n'
                               f'<GetConsoleOutputResponse xmlns="{EC2_NS}"><requestId>'
                               f"{uuid.uuid4()}</requestId><instanceId>{instance_id}"
                               f"</instanceId><timestamp>{stamp}</timestamp><output>{output}"
                               "</output></GetConsoleOutputResponse>")

    def __call__(self, request: Request) -> Reply:
        form = request.form() if request.method == "POST" else request.query
        action = (form.get("Action") or ["?"])[0]
        region = signing_region_of(request.headers)
        self._advance()
        with self._lock:
            self.hits[action] += 1
            canned = self._canned.get(action)
            if canned is not None:
                canned.times -= 1
                if canned.times <= 0:
                    del self._canned[action]
            refused = self._disabled.get(region)
        if canned is not None:
            return Reply(status=canned.status, body=canned.body,
                         headers={"Content-Type": "text/xml;charset=UTF-8"})
        if refused is not None:
            return _error_reply(refused)
        if action == "DescribeRegions":
            return self._regions(form)
        ids = [v[0] for k, v in form.items() if re.fullmatch(r"InstanceIds?(\.\d+)?", k)]
        if action in ("DescribeInstances", "TerminateInstances", "GetConsoleOutput"):
            hidden = self._hidden(ids)
            if hidden is not None:
                return _error_reply("InvalidInstanceID.NotFound",
                                    f"The instance ID '{hidden}' does not exist")
        if action == "GetConsoleOutput":
            console = self._console(region, form)
            if console is not None:
                return console
        token = (form.get("ClientToken") or [""])[0]
        params = "&".join(f"{k}={v}" for k, v in sorted(form.items()) if k != "ClientToken")
        if action == "RunInstances" and token:
            with self._lock:
                earlier = self._tokens.get((region, token))
            if earlier is not None:
                return earlier[1] if earlier[0] == params else _error_reply(
                    "IdempotentParameterMismatch")
        reply = self._forward(request)
        if reply.status == 200 and action == "DescribeInstances" and not ids:
            reply = self._without_hidden(reply)
        if reply.status == 200 and action == "RunInstances":
            if token:
                with self._lock:
                    self._tokens[(region, token)] = (params, reply)
            self._after_launch(region, reply.body)
        elif reply.status == 200 and action == "TerminateInstances":
            self._after_terminate(region, ids)
        return reply

    def _forward(self, request: Request) -> Reply:
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
