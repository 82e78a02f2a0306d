"""A local Compute Engine API (v1, REST/JSON) for the GCP adapter's tests.

It answers the calls google-cloud-compute makes over its REST transport, in the
API's own JSON shapes: instances insert / get / list / delete, zoneOperations
get / wait / list, zones list, and error bodies
``{"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}``.

Like GCE it:
- honours ``requestId``: a repeated id returns the original operation and does
  nothing else (ids are scoped to the project here, the stricter reading);
- answers insert with a RUNNING operation that turns DONE after ``op_polls``
  get / wait calls; a stockout ends DONE with ``error.errors[].code``
  ZONE_RESOURCE_POOL_EXHAUSTED and httpErrorStatusCode 503, and no instance;
- validates what GCE validates that the adapter could get wrong: the name,
  label keys / values, zonal URLs in the request's zone, GPUs needing
  onHostMaintenance TERMINATE, Spot scheduling fields, requestId being a UUID;
- logs a ``compute.instances.preempted`` operation when a Spot VM is preempted.
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass
from typing import Any

from tests.fakes.json_server import JsonServer, Reply

GCE = "https://www.googleapis.com/compute/v1"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_P = r"/compute/v1/projects/(?P<project>[^/]+)"
_Z = _P + r"/zones/(?P<zone>[^/]+)"


@dataclass(slots=True)
class InsertFault:
    """What the next insert into a zone does instead of succeeding."""

    op_error_code: str | None = None  # the operation ends DONE with this error code
    op_http_status: int = 503
    http_status: int | None = None  # or: the insert call itself fails with this status
    reason: str = ""
    message: str = ""


def http_error(status: int, reason: str, message: str, domain: str = "global") -> Reply:
    return status, {"error": {"code": status, "message": message, "errors": [
        {"message": message, "domain": domain, "reason": reason}]}}, {}


class FakeComputeEngine(JsonServer):
    """Compute Engine for one project, with a few regions and zones."""

    def __init__(self, *, project: str = "test-project",
                 zones: dict[str, list[str]] | None = None) -> None:
        super().__init__()
        self.project = project
        self.zones: dict[str, str] = {}  # zone -> region
        self.zone_status: dict[str, str] = {}
        for region, names in (zones or {
            "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c"],
            "europe-north1": ["europe-north1-a", "europe-north1-b"],
        }).items():
            for name in names:
                self.zones[name] = region
                self.zone_status[name] = "UP"
        self.instances: dict[tuple[str, str], dict[str, Any]] = {}
        self.operations: dict[tuple[str, str], dict[str, Any]] = {}
        self.request_ids: dict[str, tuple[str, str]] = {}
        self.insert_faults: dict[str, list[InsertFault]] = {}
        self.call_faults: list[tuple[str, re.Pattern[str], Reply]] = []
        self.missing_machine_types: dict[str, set[str]] = {}
        self.op_polls = 1  # non-DONE answers an operation gives before it is DONE
        self.hang_operations = False  # operations never finish (wait returns RUNNING)
        self._ids = itertools.count(7_000_000_000_000_000_001)
        self.route("GET", _P + r"/zones", self._list_zones)
        self.route("POST", _Z + r"/instances", self._insert)
        self.route("GET", _Z + r"/instances", self._list_instances)
        self.route("GET", _Z + r"/instances/(?P<name>[^/]+)", self._get_instance)
        self.route("DELETE", _Z + r"/instances/(?P<name>[^/]+)", self._delete)
        self.route("GET", _Z + r"/operations/(?P<op>[^/]+)", self._get_op)
        self.route("POST", _Z + r"/operations/(?P<op>[^/]+)/wait", self._wait_op)
        self.route("GET", _Z + r"/operations", self._list_ops)

    # -- test controls

    def fail_next_insert(self, zone: str, fault: InsertFault) -> None:
        self.insert_faults.setdefault(zone, []).append(fault)

    def fail_calls(self, method: str, path_regex: str, reply: Reply) -> None:
        """Every matching call answers ``reply`` (an HTTP error) until cleared."""
        self.call_faults.append((method, re.compile(path_regex), reply))

    def set_status(self, zone: str, name: str, status: str) -> None:
        self.instances[(zone, name)]["status"] = status

    def preempt(self, zone: str, name: str) -> None:
        """GCE preempts a Spot VM: STOP leaves it TERMINATED, DELETE removes it."""
        inst = self.instances[(zone, name)]
        action = inst.get("scheduling", {}).get("instanceTerminationAction", "STOP")
        if action == "DELETE":
            del self.instances[(zone, name)]
        else:
            inst["status"] = "TERMINATED"
        op = self._new_op(zone, "compute.instances.preempted", inst)
        op.update(status="DONE", progress=100, user="system")

    def instances_named(self, name: str) -> list[dict[str, Any]]:
        return [i for (_, n), i in self.instances.items() if n == name]

    # -- dispatch with injected call faults

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        for fault_method, pattern, reply in self.call_faults:
            if fault_method == method and pattern.search(path):
                return reply
        return super().dispatch(method, path, query, body)

    # -- helpers

    def _links(self, zone: str) -> str:
        return f"{GCE}/projects/{self.project}/zones/{zone}"

    def _check_scope(self, m: re.Match[str]) -> Reply | None:
        project = m.group("project")
        if project != self.project:
            return http_error(404, "notFound", f"The resource 'projects/{project}' was not found")
        zone = m.groupdict().get("zone")
        if zone is not None and zone not in self.zones:
            return http_error(400, "invalid", f"Invalid value for field 'zone': '{zone}'. "
                                              "Unknown zone.")
        return None

    def _new_op(self, zone: str, op_type: str, inst: dict[str, Any]) -> dict[str, Any]:
        name = f"operation-{next(self._ids)}-{uuid.uuid4().hex[:12]}"
        op = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name,
            "zone": self._links(zone), "operationType": op_type,
            "targetLink": inst["selfLink"], "targetId": inst["id"], "status": "RUNNING",
            "user": "tester@test-project.iam.gserviceaccount.com", "progress": 0,
            "insertTime": "2026-11-27T12:00:00.000-08:00",
            "startTime": "2026-11-27T12:00:00.100-08:00",
            "selfLink": f"{self._links(zone)}/operations/{name}",
            "_polls": self.op_polls,
        }
        self.operations[(zone, name)] = op
        return op

    @staticmethod
    def _public(op: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def _advance(self, op: dict[str, Any]) -> None:
        if op["status"] == "DONE" or self.hang_operations:
            return
        op["_polls"] -= 1
        if op["_polls"] > 0:
            return
        op.update(status="DONE", progress=100, endTime="2026-11-27T12:00:09.000-08:00")
        error = op.pop("_error", None)
        if error is not None:
            op["error"] = error
            op["httpErrorStatusCode"] = op.pop("_http_status")
            op["httpErrorMessage"] = "SERVICE UNAVAILABLE"
        inst_key = op.pop("_create", None)
        if inst_key is not None and inst_key in self.instances:
            self.instances[inst_key]["status"] = "STAGING"
        if op["operationType"] == "delete":
            self.instances.pop(op.pop("_delete"), None)

    # -- handlers

    def _list_zones(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        items = [{
            "kind": "compute#zone", "id": str(2000 + i), "name": zone,
            "description": zone, "status": self.zone_status[zone],
            "region": f"{GCE}/projects/{self.project}/regions/{region}",
            "selfLink": self._links(zone),
        } for i, (zone, region) in enumerate(sorted(self.zones.items()))]
        if q.get("maxResults"):
            items = items[: int(q["maxResults"])]
        return 200, {"kind": "compute#zoneList", "id": f"projects/{self.project}/zones",
                     "items": items, "selfLink": f"{GCE}/projects/{self.project}/zones"}, {}

    def _validate(self, zone: str, body: Any) -> Reply | None:
        if not isinstance(body, dict):
            return http_error(400, "parseError", "Parse Error")
        name = body.get("name", "")
        if not _NAME.match(name):
            return http_error(400, "invalid", f"Invalid value for field 'resource.name': "
                              f"'{name}'. Must be a match of regex "
                              "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        machine = body.get("machineType", "")
        mt = re.fullmatch(r"(?:.*/)?zones/(?P<z>[^/]+)/machineTypes/(?P<t>[^/]+)", machine)
        if mt is None or mt.group("z") != zone:
            return http_error(400, "invalid", f"Invalid value for field 'resource.machineType':"
                              f" '{machine}'. Machine type must be in zone '{zone}'.")
        if mt.group("t") in self.missing_machine_types.get(zone, set()):
            return http_error(400, "invalid", f"Invalid value for field 'resource.machineType':"
                              f" '{machine}'. Machine type with name '{mt.group('t')}' does "
                              f"not exist in zone '{zone}'.")
        for key, value in (body.get("labels") or {}).items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
                return http_error(400, "invalid", "Invalid value for field 'resource.labels': "
                                  f"'{key}'. Label keys and values may contain only lowercase "
                                  "letters, numeric characters, underscores, and dashes.")
        scheduling = body.get("scheduling") or {}
        accels = body.get("guestAccelerators") or []
        for accel in accels:
            at = accel.get("acceleratorType", "")
            if not re.fullmatch(rf"(?:.*/)?zones/{zone}/acceleratorTypes/[a-z0-9-]+", at):
                return http_error(400, "invalid", "Invalid value for field "
                                  f"'resource.guestAccelerators[0].acceleratorType': '{at}'.")
        if accels and scheduling.get("onHostMaintenance") != "TERMINATE":
            return http_error(400, "invalid", "Instances with guest accelerators do not support "
                              "live migration.")
        if scheduling.get("provisioningModel") == "SPOT":
            if scheduling.get("instanceTerminationAction") not in ("STOP", "DELETE"):
                return http_error(400, "invalid", "Invalid value for field "
                                  "'resource.scheduling.instanceTerminationAction'.")
            if scheduling.get("automaticRestart", True):
                return http_error(400, "invalid", "Invalid value for field "
                                  "'resource.scheduling.automaticRestart': 'true'. Spot VMs "
                                  "cannot be automatically restarted.")
        disks = body.get("disks") or []
        if not any(d.get("boot") and d.get("initializeParams", {}).get("sourceImage")
                   for d in disks):
            return http_error(400, "invalid", "Invalid value for field 'resource.disks': a "
                              "boot disk with a source image is required.")
        keys = [i.get("key") for i in (body.get("metadata") or {}).get("items", [])]
        if len(keys) != len(set(keys)):
            return http_error(400, "invalid", "Invalid value for field 'resource.metadata': "
                              "duplicate keys.")
        return None

    def _insert(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        zone = m.group("zone")
        request_id = q.get("requestId")
        if request_id is not None:
            try:
                uuid.UUID(request_id)
            except ValueError:
                return http_error(400, "invalid", "Invalid value for field 'requestId': "
                                  f"'{request_id}'. Must be a UUID.")
            if request_id in self.request_ids:
                return 200, self._public(self.operations[self.request_ids[request_id]]), {}
        if (bad := self._validate(zone, body)) is not None:
            return bad
        faults = self.insert_faults.get(zone) or []
        fault = faults.pop(0) if faults else None
        if fault is not None and fault.http_status is not None:
            return http_error(fault.http_status, fault.reason, fault.message)
        name = body["name"]
        if (zone, name) in self.instances:
            return http_error(409, "alreadyExists", f"The resource 'projects/{self.project}/"
                              f"zones/{zone}/instances/{name}' already exists")
        inst = self._instance(zone, body)
        op = self._new_op(zone, "insert", inst)
        if fault is not None and fault.op_error_code is not None:
            message = fault.message or (
                f"The zone 'projects/{self.project}/zones/{zone}' does not have enough "
                "resources available to fulfill the request.  Try a different zone, or try "
                "again later.")
            op["_error"] = {"errors": [{
                "code": fault.op_error_code, "message": message,
                "errorDetails": [{"help": {"links": [{
                    "description": "Troubleshooting documentation",
                    "url": "https://cloud.google.com/compute/docs/resource-error"}]}}],
            }]}
            op["_http_status"] = fault.op_http_status
        else:
            self.instances[(zone, name)] = inst
            op["_create"] = (zone, name)
        if request_id is not None:
            self.request_ids[request_id] = (zone, op["name"])
        return 200, self._public(op), {}

    def _instance(self, zone: str, body: dict[str, Any]) -> dict[str, Any]:
        inst = dict(body)
        links = self._links(zone)
        inst.update({
            "kind": "compute#instance", "id": str(next(self._ids)), "zone": links,
            "status": "PROVISIONING", "creationTimestamp": "2026-11-27T12:00:00.000-08:00",
            "selfLink": f"{links}/instances/{body['name']}",
            "machineType": f"{GCE}/projects/{self.project}/{body['machineType']}",
            "cpuPlatform": "Unknown CPU Platform",
            "labelFingerprint": "42WmSpB8rSM=",
        })
        if "guestAccelerators" in inst:
            inst["guestAccelerators"] = [
                {**a, "acceleratorType": f"{GCE}/projects/{self.project}/{a['acceleratorType']}"}
                for a in inst["guestAccelerators"]
            ]
        metadata = dict(inst.get("metadata") or {})
        metadata.update(kind="compute#metadata", fingerprint="fMLn5fVgDJs=")
        inst["metadata"] = metadata
        return inst

    def _get_instance(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        key = (m.group("zone"), m.group("name"))
        for op in list(self.operations.values()):
            if op.get("_delete") == key:  # time passes: a pending delete makes progress
                self._advance(op)
        inst = self.instances.get(key)
        if inst is None:
            return http_error(404, "notFound", f"The resource 'projects/{self.project}/zones/"
                              f"{m.group('zone')}/instances/{m.group('name')}' was not found")
        return 200, inst, {}

    def _list_instances(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        items = [i for (z, _), i in sorted(self.instances.items()) if z == m.group("zone")]
        flt = re.fullmatch(r'\s*name\s*=\s*"?([^"\s]+)"?\s*', q.get("filter", ""))
        if flt:
            items = [i for i in items if i["name"] == flt.group(1)]
        return 200, {"kind": "compute#instanceList", "id": "instances", "items": items,
                     "selfLink": f"{self._links(m.group('zone'))}/instances"}, {}

    def _delete(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        zone, name = m.group("zone"), m.group("name")
        request_id = q.get("requestId")
        if request_id and request_id in self.request_ids:
            return 200, self._public(self.operations[self.request_ids[request_id]]), {}
        inst = self.instances.get((zone, name))
        if inst is None:
            return http_error(404, "notFound", f"The resource 'projects/{self.project}/zones/"
                              f"{zone}/instances/{name}' was not found")
        inst["status"] = "STOPPING"
        op = self._new_op(zone, "delete", inst)
        op["_delete"] = (zone, name)
        if request_id:
            self.request_ids[request_id] = (zone, op["name"])
        return 200, self._public(op), {}

    def _op(self, m: re.Match[str]) -> dict[str, Any] | Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        op = self.operations.get((m.group("zone"), m.group("op")))
        if op is None:
            return http_error(404, "notFound", f"The resource 'projects/{self.project}/zones/"
                              f"{m.group('zone')}/operations/{m.group('op')}' was not found")
        return op

    def _get_op(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        op = self._op(m)
        if isinstance(op, tuple):
            return op
        self._advance(op)
        return 200, self._public(op), {}

    _wait_op = _get_op  # GCE's wait returns when DONE (here: after the same polls)

    def _list_ops(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        items = [self._public(op) for (z, _), op in self.operations.items()
                 if z == m.group("zone")]
        flt = re.search(r'operationType\s*=\s*"([^"]+)"', q.get("filter", ""))
        if flt:
            items = [op for op in items if op["operationType"] == flt.group(1)]
        return 200, {"kind": "compute#operationList", "id": "operations", "items": items,
                     "selfLink": f"{self._links(m.group('zone'))}/operations"}, {}
