"""A small OpenStack cloud on loopback: Keystone v3, Nova v2.1 and Glance v2, in their JSON.

Enough of each API for libcloud's ``openstack`` driver to authenticate (a
project-scoped password token with a service catalog), list flavors, images
and servers, create, show and delete servers, and to receive the errors those
services really send (``{"forbidden": {"code": 403, "message": "Quota
exceeded..."}}``, a 401 from Keystone, ...). Servers are BUILD when created
and ACTIVE from their third read (libcloud's create_node reads once), or ERROR
with a ``fault`` when the test says the scheduler found no host (OpenStack's
no-capacity signal).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    """The cloud's state and its request handler (pass it to ``tests.fakes.http.serve``)."""

    base_url: str = ""
    servers: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {r: {} for r in REGIONS})
    tokens: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _errors: list[tuple[str, str, Reply]] = field(default_factory=list)
    _no_host_for: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- test controls -------------------------------------------------------------

    def fail_next(self, method: str, path_suffix: str, reply: Reply) -> None:
        """Answer the next ``method`` request whose path ends with ``path_suffix``."""
        with self._lock:
            self._errors.append((method, path_suffix, reply))

    def no_valid_host(self, server_name: str) -> None:
        """Make the scheduler fail the server of that name (ERROR + fault)."""
        self._no_host_for.add(server_name)

    # -- wire ------------------------------------------------------------------------

    def __call__(self, request: Request) -> Reply:
        with self._lock:
            self.calls.append((request.method, request.path))
            for i, (method, suffix, reply) in enumerate(self._errors):
                if method == request.method and request.path.endswith(suffix):
                    del self._errors[i]
                    return reply
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
        view = dict(server)
        view["links"] = [{"rel": "self",
                          "href": f"{self.base_url}/compute/{region}/v2.1/servers/{server['id']}"}]
        return view

    def _nova(self, request: Request, region: str, rest: list[str]) -> Reply:
        servers = self.servers[region]
        if rest == ["flavors", "detail"]:
            return Reply.json(200, {"flavors": FLAVORS})
        if rest == ["servers", "detail"] and request.method == "GET":
            return Reply.json(200, {"servers": [self._server_view(region, s)
                                                for s in servers.values()]})
        if rest == ["servers"] and request.method == "POST":
            spec = request.json()["server"]
            if spec.get("flavorRef") not in {f["id"] for f in FLAVORS}:
                return nova_error(400, "badRequest", "Invalid flavorRef provided.")
            server_id = str(uuid.uuid4())
            failed = spec["name"] in self._no_host_for
            servers[server_id] = {
                "id": server_id, "name": spec["name"], "status": "BUILD",
                "tenant_id": "p-1", "user_id": "u-1", "hostId": "",
                "metadata": spec.get("metadata", {}), "addresses": {},
                "image": {"id": spec.get("imageRef")}, "flavor": {"id": spec["flavorRef"]},
                "created": _now(), "updated": _now(), "OS-EXT-AZ:availability_zone": "nova",
                "user_data": spec.get("user_data"), "_reads": 0, "_fail": failed,
            }
            return Reply.json(202, {"server": {
                "id": server_id, "adminPass": "generated-admin-pass",
                "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
                "links": self._server_view(region, servers[server_id])["links"]}})
        if len(rest) == 2 and rest[0] == "servers":
            server = servers.get(rest[1])
            if server is None:
                return nova_error(404, "itemNotFound", f"Instance {rest[1]} could not be found.")
            if request.method == "DELETE":
                del servers[rest[1]]
                return Reply(status=204)
            server["_reads"] += 1
            if server["_reads"] > 2 and server["status"] == "BUILD":
                if server["_fail"]:
                    server["status"] = "ERROR"
                    server["fault"] = {"code": 500, "created": _now(), "message":
                                       "No valid host was found. There are not enough hosts "
                                       "available."}
                else:
                    server["status"] = "ACTIVE"
                    server["addresses"] = {"private": [
                        {"addr": "10.0.0.12", "version": 4, "OS-EXT-IPS:type": "fixed"}]}
            return Reply.json(200, {"server": self._server_view(region, server)})
        return nova_error(404, "itemNotFound", "Not found")


@contextmanager
def openstack_cloud() -> Iterator[OpenStackFake]:
    """Serve a fresh OpenStackFake; its ``base_url`` is set once the port is known."""
    fake = OpenStackFake()
    with serve(fake) as url:
        fake.base_url = url
        yield fake


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
        "size.p4d.24xlarge": "gpu.a100.8",
        "region.eu-north-1": "RegionOne",
        "region.us-east-1": "RegionTwo",
        "check_region": "RegionOne",
    }
