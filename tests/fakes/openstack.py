"""A small OpenStack cloud on loopback: Keystone v3, Nova v2.1 and Glance v2, in their JSON.

Enough of each API for libcloud's ``openstack`` driver to authenticate (a
project-scoped password token with a service catalog), list flavors, images
and servers, create, show and delete servers, read their console (``os-getConsoleOutput``),
and to receive the errors those services really send (``{"forbidden": {"code":
403, "message": "Quota exceeded..."}}``, a 401 from Keystone, a 429 / 413
``overLimit`` with ``Retry-After``...). Servers are BUILD for ``build_s`` seconds,
then ACTIVE, or ERROR with a ``fault`` when the test says the scheduler found no
host (OpenStack's asynchronous no-capacity signal: the create call itself
succeeded). Deletes take ``delete_s`` seconds (``task_state: deleting``).
``finish(server_id, code)`` plays the end of the boot script: the marker on the
console, then SHUTOFF. Nova lists a server as soon as its create call returns,
so there is no eventual consistency to model after create.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fakes.http import Reply, Request, serve

REGIONS = ("RegionOne", "RegionTwo")
USER, PASSWORD, PROJECT = "gp-user", "gp-Pa55word-never-printed", "ml-training"

FLAVORS = [
    {"id": "b7d8d4f6-1c1e-4d1c-9a57-3d1f2a0c8a01", "name": "gpu.a100.8", "ram": 1179648,
     "disk": 200, "vcpus": 96, "swap": "", "rxtx_factor": 1.0,
     "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
     "os-flavor-access:is_public": True},
    {"id": "2", "name": "m1.small", "ram": 2048, "disk": 20, "vcpus": 1, "swap": "",
     "rxtx_factor": 1.0, "OS-FLV-EXT-DATA:ephemeral": 0, "OS-FLV-DISABLED:disabled": False,
     "os-flavor-access:is_public": True},
]
IMAGES = [
    {"id": "0f3a7c2e-4b1d-4e8a-9c3f-6a5b4d3c2b1a", "name": "ubuntu-24.04-cuda-12.8",
     "status": "active", "visibility": "public", "min_ram": 0, "min_disk": 20,
     "created_at": "2026-05-01T10:00:00Z", "updated_at": "2026-05-01T10:05:00Z",
     "container_format": "bare", "disk_format": "qcow2", "size": 4294967296,
     "protected": False, "os_hidden": False, "tags": [], "owner": "admin",
     "self": "/v2/images/0f3a7c2e-4b1d-4e8a-9c3f-6a5b4d3c2b1a",
     "file": "/v2/images/0f3a7c2e-4b1d-4e8a-9c3f-6a5b4d3c2b1a/file",
     "schema": "/v2/schemas/image"},
]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def nova_error(status: int, kind: str, message: str) -> Reply:
    """A Nova error body: ``{"<kind>": {"code": status, "message": ...}}``."""
    return Reply.json(status, {kind: {"code": status, "message": message}})


@dataclass
class OpenStackFake:
    """The cloud's state and its request handler (pass it to ``tests.fakes.http.serve``).

    Time moves on its own: a server is BUILD for ``build_s`` seconds after its create call,
    then ACTIVE (or ERROR with a ``fault`` when the test said the build fails), and a DELETE
    keeps it listed with ``OS-EXT-STS:task_state: deleting`` for ``delete_s`` seconds, as
    Nova does while the compute host tears it down.
    """

    base_url: str = ""
    build_s: float = 0.2
    delete_s: float = 0.2
    page_size: int = 1000  # Nova's default osapi max_limit
    servers: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {r: {} for r in REGIONS})
    tokens: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _errors: list[tuple[str, str, Reply]] = field(default_factory=list)
    _stalls: list[tuple[str, str, float]] = field(default_factory=list)
    _build_faults: dict[str, tuple[int, str]] = field(default_factory=dict)
    _skipped_s: float = 0.0
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- test controls -------------------------------------------------------------

    def fail_next(self, method: str, path_suffix: str, reply: Reply) -> None:
        """Answer the next ``method`` request whose path ends with ``path_suffix``."""
        with self._lock:
            self._errors.append((method, path_suffix, reply))

    def stall_next(self, method: str, path_suffix: str, seconds: float) -> None:
        """Hold the next such request ``seconds`` before answering it (a hung endpoint)."""
        with self._lock:
            self._stalls.append((method, path_suffix, seconds))

    def throttle_next(self, method: str, path_suffix: str, *, status: int = 429,
                      retry_after_s: int = 1) -> None:
        """Rate-limit the next such request as Nova does: 429 (or the legacy 413) with an
        ``overLimit`` body and a ``Retry-After`` header."""
        self.fail_next(method, path_suffix, Reply.json(status, {"overLimit": {
            "code": status, "message": "This request was rate-limited.",
            "retryAfter": str(retry_after_s),
            "details": "Only 10 POST request(s) can be made to * every minute."}},
            headers={"Retry-After": str(retry_after_s)}))

    def fail_build(self, server_name: str, message: str, *, code: int = 500) -> None:
        """Let the create call of that name succeed, then fail its build: the server goes
        ERROR with this ``fault`` once ``build_s`` has passed."""
        self._build_faults[server_name] = (code, message)

    def no_valid_host(self, server_name: str) -> None:
        """Make the scheduler find no host for the server of that name (ERROR + fault)."""
        self.fail_build(server_name, "No valid host was found. There are not enough hosts "
                                     "available.")

    def finish(self, server_id: str, exit_code: int, *, published: bool = True) -> None:
        """Run the server's boot script to its end: the command exits with ``exit_code``,
        the script prints the marker on the console and powers off (SHUTOFF). With
        ``published=False`` the console log does not show the marker yet."""
        with self._lock:
            server = self._find(server_id)
            if published:
                server["_console"] += f"greenplace-exit-code={exit_code}\nreboot: Power down\n"
            server.update({"status": "SHUTOFF", "OS-EXT-STS:vm_state": "stopped",
                           "OS-EXT-STS:power_state": 4, "updated": _now()})

    def skip(self, seconds: float) -> None:
        """Move the fake's clock on (builds and deletes finish without the test sleeping)."""
        with self._lock:
            self._skipped_s += seconds

    def break_host(self, server_id: str, message: str, *, code: int = 500) -> None:
        """The compute host of a running server fails: ERROR with that fault."""
        with self._lock:
            self._find(server_id).update({
                "status": "ERROR", "OS-EXT-STS:vm_state": "error",
                "fault": {"code": code, "created": _now(), "message": message}})

    def _clock(self) -> float:
        return time.monotonic() + self._skipped_s

    def count_resources(self) -> int:
        """Every server the account holds, whatever its state (ERROR and deleting included):
        this fake models no separate ports or volumes."""
        with self._lock:
            for region in REGIONS:
                for server in list(self.servers[region].values()):
                    self._advance(region, server)
            return sum(len(servers) for servers in self.servers.values())

    def _find(self, server_id: str) -> dict[str, Any]:
        for servers in self.servers.values():
            if server_id in servers:
                return servers[server_id]
        raise KeyError(server_id)

    # -- time ------------------------------------------------------------------------

    def _advance(self, region: str, server: dict[str, Any]) -> None:
        """Move a server on to where its clock says it is."""
        now = self._clock()
        if server["OS-EXT-STS:task_state"] == "deleting":  # a delete wins over a build
            if now >= server["_gone_at"]:
                self.servers[region].pop(server["id"], None)
            return
        if server["status"] != "BUILD" or now < server["_ready_at"]:
            return
        server["updated"] = _now()
        fault = server["_fault"]
        if fault is not None:
            code, message = fault
            server.update({"status": "ERROR", "OS-EXT-STS:vm_state": "error",
                           "OS-EXT-STS:task_state": None,
                           "fault": {"code": code, "created": _now(), "message": message}})
            return
        server.update({
            "status": "ACTIVE", "OS-EXT-STS:vm_state": "active", "OS-EXT-STS:task_state": None,
            "OS-EXT-STS:power_state": 1, "hostId": uuid.uuid4().hex,
            "addresses": {"private": [{"addr": "10.0.0.12", "version": 4,
                                       "OS-EXT-IPS:type": "fixed"}]}})
        server["_console"] += "cloud-init: running user-data\n"

    # -- wire ------------------------------------------------------------------------

    def __call__(self, request: Request) -> Reply:
        with self._lock:
            stall = next((i for i, (method, suffix, _) in enumerate(self._stalls)
                          if method == request.method and request.path.endswith(suffix)), None)
            stall_s = self._stalls.pop(stall)[2] if stall is not None else 0.0
        time.sleep(stall_s)  # outside the lock: other requests go on meanwhile
        with self._lock:
            self.calls.append((request.method, request.path))
            for i, (method, suffix, reply) in enumerate(self._errors):
                if method == request.method and request.path.endswith(suffix):
                    del self._errors[i]
                    return reply
            return self._route(request)

    def _route(self, request: Request) -> Reply:
        parts = [p for p in request.path.split("/") if p]
        if parts[:1] == ["identity"]:
            return self._keystone(request)
        if request.headers.get("x-auth-token") not in self.tokens:
            return Reply.json(401, {"error": {"code": 401, "title": "Unauthorized",
                                              "message": "The request you have made requires "
                                                         "authentication."}})
        if parts[:1] == ["image"] and parts[1:] == ["v2", "images"]:
            return Reply.json(200, {"images": IMAGES, "first": "/v2/images",
                                    "schema": "/v2/schemas/images"})
        if parts[:1] == ["compute"] and len(parts) >= 4 and parts[1] in REGIONS:
            return self._nova(request, parts[1], parts[3:])
        return Reply.json(404, {"itemNotFound": {"code": 404, "message": "Not found"}})

    def _keystone(self, request: Request) -> Reply:
        if request.method != "POST" or not request.path.endswith("/v3/auth/tokens"):
            return Reply.json(404, {"error": {"code": 404, "message": "Not found"}})
        auth = request.json()["auth"]
        user = auth["identity"]["password"]["user"]
        if user.get("name") != USER or user.get("password") != PASSWORD:
            return Reply.json(401, {"error": {"code": 401, "title": "Unauthorized",
                                              "message": "The request you have made requires "
                                                         "authentication."}})
        token = uuid.uuid4().hex
        self.tokens.add(token)
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime(
            "%Y-%m-%dT%H:%M:%S.000000Z")
        catalog = [
            {"type": "compute", "name": "nova", "id": "c0", "endpoints": [
                {"id": f"c-{r}", "interface": "public", "region": r, "region_id": r,
                 "url": f"{self.base_url}/compute/{r}/v2.1"} for r in REGIONS]},
            {"type": "image", "name": "glance", "id": "i0", "endpoints": [
                {"id": f"i-{r}", "interface": "public", "region": r, "region_id": r,
                 "url": f"{self.base_url}/image"} for r in REGIONS]},
        ]
        body = {"token": {
            "methods": ["password"], "expires_at": expires, "issued_at": _now(),
            "user": {"id": "u-1", "name": USER, "domain": {"id": "default", "name": "Default"}},
            "project": {"id": "p-1", "name": PROJECT, "domain": {"id": "default",
                                                                 "name": "Default"}},
            "roles": [{"id": "r-1", "name": "member"}], "catalog": catalog,
        }}
        return Reply.json(201, body, headers={"X-Subject-Token": token})

    def _server_view(self, region: str, server: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in server.items() if not k.startswith("_")}
        view["links"] = [{"rel": "self",
                          "href": f"{self.base_url}/compute/{region}/v2.1/servers/{server['id']}"}]
        return view

    def _nova(self, request: Request, region: str, rest: list[str]) -> Reply:
        servers = self.servers[region]
        for each in list(servers.values()):
            self._advance(region, each)
        if rest == ["flavors", "detail"]:
            return Reply.json(200, {"flavors": FLAVORS})
        if rest == ["servers", "detail"] and request.method == "GET":
            return self._server_page(request, region)
        if rest == ["servers"] and request.method == "POST":
            return self._create(request, region)
        if len(rest) < 2 or rest[0] != "servers":
            return nova_error(404, "itemNotFound", "Not found")
        server = servers.get(rest[1])
        if server is None:
            return nova_error(404, "itemNotFound", f"Instance {rest[1]} could not be found.")
        if rest[2:] == ["action"] and request.method == "POST":
            return self._action(server, request.json())
        if len(rest) != 2:
            return nova_error(404, "itemNotFound", "Not found")
        if request.method == "DELETE":
            if server["OS-EXT-STS:task_state"] != "deleting":
                server["OS-EXT-STS:task_state"] = "deleting"
                server["_gone_at"] = self._clock() + self.delete_s
            return Reply(status=204)
        return Reply.json(200, {"server": self._server_view(region, server)})

    def _server_page(self, request: Request, region: str) -> Reply:
        """One page of ``servers/detail``: at most ``page_size`` (Nova's ``max_limit``) after
        ``marker``, with a ``servers_links`` "next" link while more follow."""
        listed = list(self.servers[region].values())
        marker = (request.query.get("marker") or [""])[-1]
        start = next((i + 1 for i, s in enumerate(listed) if s["id"] == marker), 0)
        limit = min(int((request.query.get("limit") or [str(self.page_size)])[-1]),
                    self.page_size)
        page = listed[start:start + limit]
        body: dict[str, Any] = {"servers": [self._server_view(region, s) for s in page]}
        if start + limit < len(listed):
            body["servers_links"] = [{"rel": "next", "href": (
                f"{self.base_url}/compute/{region}/v2.1/servers/detail"
                f"?limit={limit}&marker={page[-1]['id']}")}]
        return Reply.json(200, body)

    def _create(self, request: Request, region: str) -> Reply:
        spec = request.json()["server"]
        if spec.get("flavorRef") not in {f["id"] for f in FLAVORS}:
            return nova_error(400, "badRequest", "Invalid flavorRef provided.")
        server_id = str(uuid.uuid4())
        self.servers[region][server_id] = {
            "id": server_id, "name": spec["name"], "status": "BUILD",
            "tenant_id": "p-1", "user_id": "u-1", "hostId": "",
            "metadata": spec.get("metadata", {}), "addresses": {},
            "image": {"id": spec.get("imageRef")}, "flavor": {"id": spec["flavorRef"]},
            "created": _now(), "updated": _now(), "OS-EXT-AZ:availability_zone": "nova",
            "OS-EXT-STS:task_state": "scheduling", "OS-EXT-STS:vm_state": "building",
            "OS-EXT-STS:power_state": 0, "user_data": spec.get("user_data"),
            "_ready_at": self._clock() + self.build_s, "_gone_at": 0.0,
            "_fault": self._build_faults.get(spec["name"]), "_console": "",
        }
        return Reply.json(202, {"server": {
            "id": server_id, "adminPass": "generated-admin-pass",
            "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
            "links": self._server_view(region, self.servers[region][server_id])["links"]}})

    def _action(self, server: dict[str, Any], body: Any) -> Reply:
        """Server actions; only ``os-getConsoleOutput`` (409 while the instance has no
        host yet, as Nova's InstanceNotReady)."""
        if not isinstance(body, dict) or "os-getConsoleOutput" not in body:
            return nova_error(400, "badRequest", "Unsupported action in this fake.")
        if server["status"] in ("BUILD", "ERROR"):
            return nova_error(409, "conflictingRequest",
                              f"Instance {server['id']} is not ready")
        lines = server["_console"].splitlines(keepends=True)
        length = (body["os-getConsoleOutput"] or {}).get("length")
        if length is not None and int(length) >= 0:
            lines = lines[-int(length):] if int(length) else []
        return Reply.json(200, {"output": "".join(lines)})


@contextmanager
def openstack_cloud() -> Iterator[OpenStackFake]:
    """Serve a fresh OpenStackFake; its ``base_url`` is set once the port is known."""
    fake = OpenStackFake()
    with serve(fake) as url:
        fake.base_url = url
        yield fake


CLOUD = "test-openstack"
# The catalog overlay that declares this cloud to greenplace (see scheduler/catalog/overlay.py).
OVERLAY_YAML = f"""\
clouds:
  - name: {CLOUD}
    source: "test price list"
    as_of: "2026-10-01"
    regions:
      - {{name: sto-1, location: Stockholm, country: SE, grid_zone: SE, pue: 1.1}}
      - {{name: osl-1, location: Oslo, country: "NO", grid_zone: NO-NO1, pue: 1.2}}
    sizes:
      - instance_type: gpu.a100.8
        accelerator: A100-80GB
        accelerator_count: 8
        vcpus: 96
        memory_gib: 1152
        price_usd_per_hour: 24.0
"""


def write_overlay(directory: Path) -> Path:
    """Write OVERLAY_YAML into ``directory``; returns its path (for GREENPLACE_CATALOG_OVERLAY)."""
    path = directory / "overlay.yaml"
    path.write_text(OVERLAY_YAML, encoding="utf-8")
    return path


def libcloud_settings(fake: OpenStackFake) -> dict[str, str]:
    """greenplace libcloud settings for this cloud (credentials via OS_USERNAME / OS_PASSWORD)."""
    return {
        "driver": "openstack",
        "key_env": "OS_USERNAME",
        "secret_env": "OS_PASSWORD",
        "ex_force_auth_url": f"{fake.base_url}/identity",
        "ex_force_auth_version": "3.x_password",
        "ex_tenant_name": PROJECT,
        "ex_domain_name": "Default",
        "api_version": "2.0",
        "image": "ubuntu-24.04-cuda-12.8",
        "region.sto-1": "RegionOne",
        "region.osl-1": "RegionTwo",
        "check_region": "RegionOne",
    }
