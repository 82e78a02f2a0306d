"""A local Compute Engine API (v1, REST/JSON) for the GCP adapter's tests.

It answers the calls google-cloud-compute makes over its REST transport, in the
API's own JSON shapes: instances insert / get / list / aggregatedList / delete /
getSerialPortOutput, zoneOperations get / wait / list, zones list, regions get (with
the project's quotas in the region, ``set_quota``), and error
bodies ``{"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}``.

Like GCE (https://cloud.google.com/compute/docs/reference/rest/v1) it:
- honours ``requestId``: a repeated id returns the original operation and does
  nothing else (ids are scoped to the project here, the stricter reading);
- answers insert and delete with a RUNNING operation that turns DONE after
  ``op_seconds`` / ``delete_seconds`` of wall time (tests use tenths of a
  second); ``zoneOperations.wait`` blocks until DONE for at most ``wait_max_s``
  and may return earlier, as the API documents ("best effort");
- fails an insert asynchronously: the operation ends DONE with
  ``error.errors[].code`` ZONE_RESOURCE_POOL_EXHAUSTED (httpErrorStatusCode 503)
  after ``InsertFault.after_s``, and either removes the instance it had started
  or leaves its record TERMINATED with its boot disk (``leaves_record``), as GCE
  sometimes does;
- is eventually consistent: a new instance answers 404 to get and is absent
  from lists for ``visible_after_s`` after the insert returned;
- throttles: ``throttle()`` makes the next N matching calls answer 429
  RESOURCE_EXHAUSTED / reason rateLimitExceeded (or 403 userRateLimitExceeded);
- lists across zones with ``aggregated/instances`` (filter on ``labels.KEY``,
  ``name``, ``status``; ``maxResults`` / ``pageToken`` pages; a scope with no
  result on the page carries warning NO_RESULTS_ON_PAGE, an unreachable zone
  warning UNREACHABLE), and likewise ``aggregated/machineTypes`` and
  ``aggregated/acceleratorTypes`` over what ``offer_machine_type`` /
  ``offer_accelerator_type`` put in a zone; a filter ``name eq "RE2"`` (one
  unparenthesised term) keeps the names the whole expression matches;
- keeps serial port 1 output (``getSerialPortOutput`` with ``start`` / ``next``,
  a 1 MiB ring buffer, pages of ``serial_page_bytes``);
- validates what GCE validates that the adapter could get wrong: the name,
  label keys / values, zonal URLs in the request's zone, GPUs needing
  onHostMaintenance TERMINATE, Spot scheduling fields, gVNIC on the machine
  families that require it, Hyperdisk boot disks on the families that accept
  nothing else, requestId being a UUID;
- logs system operations: ``compute.instances.preempted`` (Spot preemption),
  ``compute.instances.hostError`` (host failure), ``compute.instances.guestTerminate``
  (the guest powered itself off).

Test hooks: ``offer_machine_type``, ``offer_accelerator_type``, ``set_quota``,
``finish(zone, name, exit_code)`` (the boot script ends: the marker
goes to serial port 1, the guest powers off, the VM is TERMINATED),
``host_error``, ``preempt``, ``fail_next_insert``, ``throttle``, ``fail_calls``,
``resource_count()`` (instances + disks, hidden ones included); knobs
``op_seconds``, ``delete_seconds``, ``boot_seconds``, ``visible_after_s``,
``wait_max_s``, ``serial_page_bytes``, ``page_size``, ``unreachable_zones``,
``hang_operations``. Time passes on every request (``_tick``), so a test waits by
polling the fake, never by asserting on durations.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from greenplace.providers.base import EXIT_MARKER
from tests.fakes.json_server import JsonServer, Reply

GCE = "https://www.googleapis.com/compute/v1"
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_P = r"/compute/v1/projects/(?P<project>[^/]+)"
_Z = _P + r"/zones/(?P<zone>[^/]+)"
_TERM = re.compile(r'^\s*(?P<field>[A-Za-z][\w.-]*)\s*(?P<op>!=|=|(?<=\s)(?:eq|ne)(?=\s))\s*'
                   r'(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"()]+))\s*$')
# Machine families that take only gVNIC / only Hyperdisk boot disks (see providers/gcp.py).
GVNIC_ONLY = ("a3-", "a4-", "a4x-", "g4-")
HYPERDISK_ONLY = ("a3-ultragpu-", "a4-", "a4x-", "g4-")
SERIAL_BUFFER_BYTES = 1024 * 1024


@dataclass(slots=True)
class InsertFault:
    """What the next insert into a zone does instead of succeeding."""

    op_error_code: str | None = None  # the operation ends DONE with this error code
    op_http_status: int = 503
    http_status: int | None = None  # or: the insert call itself fails with this status
    reason: str = ""
    message: str = ""
    after_s: float | None = None  # the failing operation stays RUNNING this long
    leaves_record: bool = False  # the failed insert leaves a TERMINATED VM and its disk
    quota_info: dict[str, Any] | None = None  # errorDetails[].quotaInfo of the error


def http_error(status: int, reason: str, message: str, domain: str = "global",
               *, rpc_status: str | None = None) -> Reply:
    error: dict[str, Any] = {"code": status, "message": message, "errors": [
        {"message": message, "domain": domain, "reason": reason}]}
    if rpc_status:
        error["status"] = rpc_status
    return status, {"error": error}, {}


def rate_limited(status: int = 429) -> Reply:
    """GCE's answer to a throttled call (API rate quota)."""
    if status == 429:
        return http_error(429, "rateLimitExceeded", "Quota exceeded for quota metric "
                          "'Queries' and limit 'Queries per minute' of service "
                          "'compute.googleapis.com' for consumer 'project_number:1'.",
                          domain="usageLimits", rpc_status="RESOURCE_EXHAUSTED")
    return http_error(status, "userRateLimitExceeded", "User Rate Limit Exceeded",
                      domain="usageLimits")


def _int64(value: int) -> str:
    return str(value)  # proto3 JSON writes int64 as a string


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
        self.disks: dict[tuple[str, str], dict[str, Any]] = {}
        self.operations: dict[tuple[str, str], dict[str, Any]] = {}
        self.request_ids: dict[str, tuple[str, str]] = {}
        self.insert_faults: dict[str, list[InsertFault]] = {}
        self.call_faults: list[tuple[str, re.Pattern[str], Reply]] = []
        self.throttles: list[list[Any]] = []  # [method, pattern, remaining, reply]
        self.missing_machine_types: dict[str, set[str]] = {}
        self.machine_types: dict[str, list[dict[str, Any]]] = {}  # zone -> machineType JSON
        self.accelerator_types: dict[str, list[dict[str, Any]]] = {}  # zone -> acceleratorType
        self.unreachable_zones: set[str] = set()
        # region -> its quotas entries ({metric, limit, usage}) as regions.get answers them
        self.region_quotas: dict[str, list[dict[str, Any]]] = {}
        self.op_seconds = 0.0  # how long an insert operation stays RUNNING
        self.delete_seconds = 0.0  # how long a delete operation stays RUNNING
        self.boot_seconds = 0.0  # STAGING -> RUNNING after the insert is DONE
        self.visible_after_s = 0.0  # instances.get 404s this long after insert
        self.wait_max_s = 0.5  # zoneOperations.wait returns after this at most
        self.serial_page_bytes = 64 * 1024  # getSerialPortOutput returns this much a call
        self.page_size = 500  # the most items a list page holds, whatever maxResults says
        self.hang_operations = False  # operations never finish
        self._ids = itertools.count(7_000_000_000_000_000_001)
        self.route("GET", _P + r"/zones", self._list_zones)
        self.route("GET", _P + r"/regions/(?P<region>[^/]+)", self._get_region)
        self.route("GET", _P + r"/aggregated/instances", self._aggregated_instances)
        self.route("GET", _P + r"/aggregated/machineTypes", self._aggregated_machine_types)
        self.route("GET", _P + r"/aggregated/acceleratorTypes",
                   self._aggregated_accelerator_types)
        self.route("POST", _Z + r"/instances", self._insert)
        self.route("GET", _Z + r"/instances", self._list_instances)
        self.route("GET", _Z + r"/instances/(?P<name>[^/]+)", self._get_instance)
        self.route("GET", _Z + r"/instances/(?P<name>[^/]+)/serialPort", self._serial_port)
        self.route("DELETE", _Z + r"/instances/(?P<name>[^/]+)", self._delete)
        self.route("GET", _Z + r"/operations/(?P<op>[^/]+)", self._get_op)
        self.route("POST", _Z + r"/operations/(?P<op>[^/]+)/wait", self._wait_op)
        self.route("GET", _Z + r"/operations", self._list_ops)

    def start(self) -> FakeComputeEngine:
        super().start()
        assert self._server is not None
        report = self._server.handle_error

        def handle_error(request: Any, client_address: Any) -> None:
            # A client that stopped waiting (a read timeout on zoneOperations.wait, as the
            # adapter uses against GCE's two-minute wait) is normal, not a fake failure.
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                report(request, client_address)

        self._server.handle_error = handle_error  # type: ignore[method-assign]
        return self

    # -- test controls

    def fail_next_insert(self, zone: str, fault: InsertFault) -> None:
        self.insert_faults.setdefault(zone, []).append(fault)

    def fail_calls(self, method: str, path_regex: str, reply: Reply) -> None:
        """Every matching call answers ``reply`` (an HTTP error) until cleared."""
        self.call_faults.append((method, re.compile(path_regex), reply))

    def throttle(self, method: str, path_regex: str, *, times: int = 1,
                 status: int = 429) -> None:
        """The next ``times`` matching calls are rate-limited (429, or 403 user limit)."""
        self.throttles.append([method, re.compile(path_regex), times, rate_limited(status)])

    def offer_machine_type(self, zone: str, name: str, *, vcpus: int, memory_mb: int,
                           gpus: tuple[str, int] | None = None) -> None:
        """``zone`` offers machine type ``name`` (``gpus``: the acceleratorType and count the
        type carries, as A2 / A3 / G2 types do)."""
        machine: dict[str, Any] = {
            "kind": "compute#machineType", "id": str(next(self._ids)),
            "creationTimestamp": "2020-01-01T00:00:00.000-08:00", "name": name,
            "description": f"{vcpus} vCPUs, {memory_mb / 1024:g} GB RAM", "guestCpus": vcpus,
            "memoryMb": memory_mb, "imageSpaceGb": 0, "maximumPersistentDisks": 128,
            "maximumPersistentDisksSizeGb": "263168", "zone": zone,
            "selfLink": f"{self._links(zone)}/machineTypes/{name}", "isSharedCpu": False,
            "architecture": "X86_64"}
        if gpus is not None:
            machine["accelerators"] = [{"guestAcceleratorType": gpus[0],
                                        "guestAcceleratorCount": gpus[1]}]
        self.machine_types.setdefault(zone, []).append(machine)

    def offer_accelerator_type(self, zone: str, name: str, *, max_cards: int) -> None:
        """``zone`` offers GPU ``name`` to attach to N1 VMs (at most ``max_cards`` a VM)."""
        self.accelerator_types.setdefault(zone, []).append({
            "kind": "compute#acceleratorType", "id": str(next(self._ids)),
            "creationTimestamp": "2020-01-01T00:00:00.000-08:00", "name": name,
            "description": name.upper(), "zone": self._links(zone),
            "selfLink": f"{self._links(zone)}/acceleratorTypes/{name}",
            "maximumCardsPerInstance": max_cards})

    def set_quota(self, region: str, metric: str, *, limit: float, usage: float = 0.0) -> None:
        """The project's ``metric`` quota in ``region`` (replacing one already set)."""
        quotas = self.region_quotas.setdefault(region, [])
        quotas[:] = [q for q in quotas if q["metric"] != metric]
        quotas.append({"metric": metric, "limit": float(limit), "usage": float(usage)})

    def set_status(self, zone: str, name: str, status: str) -> None:
        self.instances[(zone, name)]["status"] = status

    def finish(self, zone: str, name: str, exit_code: int) -> None:
        """The boot script ends: it prints the marker on ttyS0 and powers the VM off."""
        with self.lock:
            inst = self.instances[(zone, name)]
            self._serial_write(inst, f"startup-script: {EXIT_MARKER}{exit_code}\n"
                               f"{EXIT_MARKER}{exit_code}\n"
                               "[  OK  ] Reached target System Power Off.\n"
                               "reboot: Power down\n")
            inst["status"] = "TERMINATED"
            self._system_op(zone, "compute.instances.guestTerminate", inst)

    def host_error(self, zone: str, name: str) -> None:
        """The host fails; with automaticRestart false the VM stays TERMINATED."""
        with self.lock:
            inst = self.instances[(zone, name)]
            inst["status"] = "TERMINATED"
            self._system_op(zone, "compute.instances.hostError", inst)

    def preempt(self, zone: str, name: str) -> None:
        """GCE preempts a Spot VM: STOP leaves it TERMINATED, DELETE removes it."""
        with self.lock:
            inst = self.instances[(zone, name)]
            action = inst.get("scheduling", {}).get("instanceTerminationAction", "STOP")
            if action == "DELETE":
                self._remove(zone, name)
            else:
                inst["status"] = "TERMINATED"
            self._system_op(zone, "compute.instances.preempted", inst)

    def instances_named(self, name: str) -> list[dict[str, Any]]:
        return [i for (_, n), i in self.instances.items() if n == name]

    def resource_count(self) -> int:
        """Every instance and disk the project holds (hidden ones too)."""
        return len(self.instances) + len(self.disks)

    # -- dispatch: time passes, then injected faults, then the routes

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        self._tick()
        for fault_method, pattern, reply in self.call_faults:
            if fault_method == method and pattern.search(path):
                return reply
        for throttle in self.throttles:
            if throttle[0] == method and throttle[1].search(path) and throttle[2] > 0:
                throttle[2] -= 1
                limited: Reply = throttle[3]
                return limited
        return super().dispatch(method, path, query, body)

    def _tick(self) -> None:
        now = time.monotonic()
        for op in list(self.operations.values()):
            if op["status"] != "DONE" and not self.hang_operations and op["_done_at"] <= now:
                self._finish_op(op)
        for inst in self.instances.values():
            if inst["status"] == "STAGING" and inst.get("_running_at", now + 1) <= now:
                inst["status"] = "RUNNING"
                self._serial_write(inst, "SeaBIOS (version 1.8.2-google)\n"
                                         "Booting from Hard Disk 0...\n"
                                         "google_metadata_script_runner: starting scripts\n")

    # -- helpers

    def _links(self, zone: str) -> str:
        return f"{GCE}/projects/{self.project}/zones/{zone}"

    def _not_found(self, what: str) -> Reply:
        return http_error(404, "notFound", f"The resource 'projects/{self.project}/{what}' "
                                           "was not found")

    def _check_scope(self, m: re.Match[str]) -> Reply | None:
        project = m.group("project")
        if project != self.project:
            return http_error(404, "notFound", f"The resource 'projects/{project}' was not found")
        zone = m.groupdict().get("zone")
        if zone is not None and zone not in self.zones:
            return http_error(400, "invalid", f"Invalid value for field 'zone': '{zone}'. "
                                              "Unknown zone.")
        return None

    def _new_op(self, zone: str, op_type: str, inst: dict[str, Any], *,
                seconds: float = 0.0) -> dict[str, Any]:
        name = f"operation-{next(self._ids)}-{uuid.uuid4().hex[:12]}"
        op = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name,
            "zone": self._links(zone), "operationType": op_type,
            "targetLink": inst["selfLink"], "targetId": inst["id"], "status": "RUNNING",
            "user": "tester@test-project.iam.gserviceaccount.com", "progress": 0,
            "insertTime": "2026-11-27T12:00:00.000-08:00",
            "startTime": "2026-11-27T12:00:00.100-08:00",
            "selfLink": f"{self._links(zone)}/operations/{name}",
            "_done_at": time.monotonic() + seconds,
        }
        self.operations[(zone, name)] = op
        return op

    def _system_op(self, zone: str, op_type: str, inst: dict[str, Any]) -> None:
        op = self._new_op(zone, op_type, inst)
        op.update(status="DONE", progress=100, user="system",
                  endTime="2026-11-27T12:00:00.200-08:00")

    @staticmethod
    def _public(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if not k.startswith("_")}

    def _visible(self, key: tuple[str, str]) -> dict[str, Any] | None:
        inst = self.instances.get(key)
        if inst is None or inst["_visible_at"] > time.monotonic():
            return None
        return inst

    def _remove(self, zone: str, name: str) -> None:
        """The instance goes, with every disk whose autoDelete is true."""
        inst = self.instances.pop((zone, name), None)
        if inst is None:
            return
        for disk in inst.get("disks") or []:
            if disk.get("autoDelete"):
                self.disks.pop((zone, disk["deviceName"]), None)

    def _finish_op(self, op: dict[str, Any]) -> None:
        op.update(status="DONE", progress=100,
                  endTime=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"))
        key = op.pop("_target")
        error = op.pop("_error", None)
        if op["operationType"] == "delete":
            self._remove(*key)
            return
        inst = self.instances.get(key)
        if error is not None:
            op["error"] = error
            op["httpErrorStatusCode"] = op.pop("_http_status")
            op["httpErrorMessage"] = "SERVICE UNAVAILABLE"
            if op.pop("_leaves_record", False) and inst is not None:
                inst["status"] = "TERMINATED"
            else:
                self._remove(*key)
        elif inst is not None:
            inst["status"] = "STAGING"
            inst["_running_at"] = time.monotonic() + self.boot_seconds

    def _serial_write(self, inst: dict[str, Any], text: str) -> None:
        inst["_serial"] += text
        overflow = len(inst["_serial"]) - SERIAL_BUFFER_BYTES
        if overflow > 0:  # a ring buffer: the oldest output is discarded
            inst["_serial"] = inst["_serial"][overflow:]
            inst["_serial_first"] += overflow

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

    def _get_region(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        """regions.get: the region with its zones and the project's quotas there (each
        ``{metric, limit, usage}``, numbers as JSON doubles; GCE lists CPUS, DISKS_TOTAL_GB,
        ... and the GPU metrics the project has a limit for, in no documented order)."""
        if (bad := self._check_scope(m)) is not None:
            return bad
        region = m.group("region")
        zones = sorted(z for z, r in self.zones.items() if r == region)
        if not zones:
            return self._not_found(f"regions/{region}")
        link = f"{GCE}/projects/{self.project}/regions/{region}"
        return 200, {
            "kind": "compute#region", "id": str(1000 + sorted(set(self.zones.values()))
                                                .index(region)),
            "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": region,
            "description": region, "status": "UP", "selfLink": link,
            "zones": [f"{GCE}/projects/{self.project}/zones/{z}" for z in zones],
            "quotas": [dict(q) for q in self.region_quotas.get(region, [])],
            "supportsPzs": False,
        }, {}

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
        machine_type = mt.group("t")
        if machine_type in self.missing_machine_types.get(zone, set()):
            return http_error(400, "invalid", f"Invalid value for field 'resource.machineType':"
                              f" '{machine}'. Machine type with name '{machine_type}' does "
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
        gpu_family = accels or machine_type.startswith(("a2-", "a3-", "a4", "g2-", "g4-"))
        if gpu_family and scheduling.get("onHostMaintenance") != "TERMINATE":
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
        nics = body.get("networkInterfaces") or []
        if machine_type.startswith(GVNIC_ONLY) and any(
                n.get("nicType") != "GVNIC" for n in nics):
            return http_error(400, "invalid", "Invalid value for field "
                              "'resource.networkInterfaces[0].nicType': ''. Machine type "
                              f"{machine_type} requires nicType GVNIC.")
        disks = body.get("disks") or []
        boot = next((d for d in disks if d.get("boot")), None)
        if boot is None or not boot.get("initializeParams", {}).get("sourceImage"):
            return http_error(400, "invalid", "Invalid value for field 'resource.disks': a "
                              "boot disk with a source image is required.")
        disk_type = str(boot["initializeParams"].get("diskType", "pd-standard"))
        if machine_type.startswith(HYPERDISK_ONLY) and "/hyperdisk-" not in f"/{disk_type}":
            return http_error(400, "invalid", f"[{disk_type}] disk type cannot be used by "
                              f"[{machine_type}] machine type.")
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
        self.instances[(zone, name)] = inst
        self._boot_disk(zone, inst)
        failing = fault is not None and fault.op_error_code is not None
        seconds = self.op_seconds
        if failing and fault is not None and fault.after_s is not None:
            seconds = fault.after_s
        op = self._new_op(zone, "insert", inst, seconds=seconds)
        op["_target"] = (zone, name)
        if failing and fault is not None:
            message = fault.message or (
                f"The zone 'projects/{self.project}/zones/{zone}' does not have enough "
                "resources available to fulfill the request.  Try a different zone, or try "
                "again later.")
            details: list[dict[str, Any]] = [{"help": {"links": [{
                "description": "Troubleshooting documentation",
                "url": "https://cloud.google.com/compute/docs/resource-error"}]}}]
            if fault.quota_info is not None:
                details.insert(0, {"quotaInfo": fault.quota_info})
            op["_error"] = {"errors": [{"code": fault.op_error_code, "message": message,
                                        "errorDetails": details}]}
            op["_http_status"] = fault.op_http_status
            op["_leaves_record"] = fault.leaves_record
        if request_id is not None:
            self.request_ids[request_id] = (zone, op["name"])
        if op["_done_at"] <= time.monotonic() and not self.hang_operations:
            self._finish_op(op)  # a zero-length operation is DONE in the insert's answer
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
            "_visible_at": time.monotonic() + self.visible_after_s,
            "_serial": "", "_serial_first": 0,
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

    def _boot_disk(self, zone: str, inst: dict[str, Any]) -> None:
        """GCE creates the boot disk from initializeParams, named after the instance."""
        disks = []
        for index, spec in enumerate(inst.get("disks") or []):
            params = spec.get("initializeParams") or {}
            name = params.get("diskName") or inst["name"]
            link = f"{self._links(zone)}/disks/{name}"
            self.disks[(zone, name)] = {
                "kind": "compute#disk", "id": str(next(self._ids)), "name": name,
                "sizeGb": str(params.get("diskSizeGb", "10")), "zone": self._links(zone),
                "type": f"{self._links(zone)}/diskTypes/"
                        f"{str(params.get('diskType', 'pd-standard')).rsplit('/', 1)[-1]}",
                "sourceImage": params.get("sourceImage", ""), "status": "READY",
                "users": [inst["selfLink"]], "selfLink": link,
            }
            disks.append({"kind": "compute#attachedDisk", "index": index, "type": "PERSISTENT",
                          "mode": "READ_WRITE", "source": link, "deviceName": name,
                          "boot": bool(spec.get("boot")),
                          "autoDelete": bool(spec.get("autoDelete", False)),
                          "interface": "SCSI", "diskSizeGb": str(params.get("diskSizeGb", "10"))})
        inst["disks"] = disks

    def _get_instance(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        zone, name = m.group("zone"), m.group("name")
        inst = self._visible((zone, name))
        if inst is None:
            return self._not_found(f"zones/{zone}/instances/{name}")
        return 200, self._public(inst), {}

    def _listed(self, zone: str | None, flt: str) -> list[dict[str, Any]] | Reply:
        terms = _filter_terms(flt)
        if terms is None:
            return http_error(400, "invalid", f"Invalid value for field 'filter': '{flt}'. "
                                              "Invalid list filter expression.")
        items = []
        for (z, _), inst in sorted(self.instances.items()):
            if (zone is None or z == zone) and self._visible((z, inst["name"])) is not None \
                    and all(_term_holds(inst, *t) for t in terms):
                items.append(self._public(inst))
        return items

    def _list_instances(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        items = self._listed(m.group("zone"), q.get("filter", ""))
        if isinstance(items, tuple):
            return items
        return 200, {"kind": "compute#instanceList", "id": "instances", "items": items,
                     "selfLink": f"{self._links(m.group('zone'))}/instances"}, {}

    def _aggregated_instances(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        items = self._listed(None, q.get("filter", ""))
        if isinstance(items, tuple):
            return items
        return self._aggregated("instances", "instance",
                                [(i["zone"].rsplit("/", 1)[-1], i) for i in items], q)

    def _aggregated_machine_types(self, m: re.Match[str], q: dict[str, str],
                                  body: Any) -> Reply:
        return self._aggregated_offers(m, q, "machineTypes", "machineType", self.machine_types)

    def _aggregated_accelerator_types(self, m: re.Match[str], q: dict[str, str],
                                      body: Any) -> Reply:
        return self._aggregated_offers(m, q, "acceleratorTypes", "acceleratorType",
                                       self.accelerator_types)

    def _aggregated_offers(self, m: re.Match[str], q: dict[str, str], key: str, kind: str,
                           by_zone: dict[str, list[dict[str, Any]]]) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        terms = _filter_terms(q.get("filter", ""))
        if terms is None:
            return http_error(400, "invalid", "Invalid value for field 'filter'.")
        items = [(zone, item) for zone in sorted(by_zone) for item in by_zone[zone]
                 if all(_term_holds(item, *t) for t in terms)]
        return self._aggregated(key, kind, items, q)

    def _aggregated(self, key: str, kind: str, items: list[tuple[str, dict[str, Any]]],
                    q: dict[str, str]) -> Reply:
        """One page of an aggregatedList: ``items`` are (zone, resource) in list order."""
        items = [(zone, i) for zone, i in items if zone not in self.unreachable_zones]
        try:
            offset = int(q.get("pageToken") or 0)
        except ValueError:
            return http_error(400, "invalid", "Invalid value for field 'pageToken'.")
        size = min(int(q.get("maxResults") or 500), 500, self.page_size)
        page = items[offset:offset + size]
        scopes: dict[str, Any] = {}
        for zone in sorted(self.zones):
            scope = f"zones/{zone}"
            found = [i for z, i in page if z == zone]
            if found:
                scopes[scope] = {key: found}
            elif zone in self.unreachable_zones:
                scopes[scope] = {"warning": {
                    "code": "UNREACHABLE", "message": f"Scope '{scope}' is unreachable.",
                    "data": [{"key": "scope", "value": scope}]}}
            else:
                scopes[scope] = {"warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": f"There are no results for scope '{scope}' on this page.",
                    "data": [{"key": "scope", "value": scope}]}}
        reply: dict[str, Any] = {
            "kind": f"compute#{kind}AggregatedList",
            "id": f"projects/{self.project}/aggregated/{key}", "items": scopes,
            "selfLink": f"{GCE}/projects/{self.project}/aggregated/{key}"}
        if offset + size < len(items):
            reply["nextPageToken"] = str(offset + size)
        if self.unreachable_zones:
            reply["unreachables"] = [f"zones/{z}" for z in sorted(self.unreachable_zones)]
        return 200, reply, {}

    def _serial_port(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        zone, name = m.group("zone"), m.group("name")
        port = int(q.get("port") or 1)
        if not 1 <= port <= 4:
            return http_error(400, "invalid", f"Invalid value for field 'port': '{port}'. "
                                              "Must be between 1 and 4.")
        inst = self._visible((zone, name))
        if inst is None:
            return self._not_found(f"zones/{zone}/instances/{name}")
        text = inst["_serial"] if port == 1 else ""
        first = inst["_serial_first"] if port == 1 else 0
        start = max(int(q.get("start") or 0), first)  # discarded output: oldest kept byte
        contents = text[start - first: start - first + self.serial_page_bytes]
        return 200, {"kind": "compute#serialPortOutput", "contents": contents,
                     "start": _int64(start), "next": _int64(start + len(contents)),
                     "selfLink": f"{self._links(zone)}/instances/{name}/serialPort?port={port}"
                     }, {}

    def _delete(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        zone, name = m.group("zone"), m.group("name")
        request_id = q.get("requestId")
        if request_id and request_id in self.request_ids:
            return 200, self._public(self.operations[self.request_ids[request_id]]), {}
        inst = self._visible((zone, name))
        if inst is None:
            return self._not_found(f"zones/{zone}/instances/{name}")
        busy = any(op["status"] != "DONE" and op.get("_target") == (zone, name)
                   for op in self.operations.values())
        if busy:  # an insert or delete of it is still running
            return http_error(400, "resourceNotReady", f"The resource 'projects/{self.project}/"
                              f"zones/{zone}/instances/{name}' is not ready")
        inst["status"] = "STOPPING"
        op = self._new_op(zone, "delete", inst, seconds=self.delete_seconds)
        op["_target"] = (zone, name)
        if request_id:
            self.request_ids[request_id] = (zone, op["name"])
        if op["_done_at"] <= time.monotonic() and not self.hang_operations:
            self._finish_op(op)
        return 200, self._public(op), {}

    def _op(self, m: re.Match[str]) -> dict[str, Any] | Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        op = self.operations.get((m.group("zone"), m.group("op")))
        if op is None:
            return self._not_found(f"zones/{m.group('zone')}/operations/{m.group('op')}")
        return op

    def _get_op(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        op = self._op(m)
        if isinstance(op, tuple):
            return op
        return 200, self._public(op), {}

    def _wait_op(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        """Block until DONE or ``wait_max_s`` (other requests go on meanwhile)."""
        op = self._op(m)
        if isinstance(op, tuple):
            return op
        until = time.monotonic() + self.wait_max_s
        while op["status"] != "DONE" and time.monotonic() < until:
            self.lock.release()  # held once by the server thread around dispatch
            try:
                time.sleep(0.01)
            finally:
                self.lock.acquire()
            self._tick()
        return 200, self._public(op), {}

    def _list_ops(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._check_scope(m)) is not None:
            return bad
        terms = _filter_terms(q.get("filter", ""))
        if terms is None:
            return http_error(400, "invalid", "Invalid value for field 'filter'.")
        items = [self._public(op) for (z, _), op in self.operations.items()
                 if z == m.group("zone") and all(_term_holds(op, *t) for t in terms)]
        return 200, {"kind": "compute#operationList", "id": "operations", "items": items,
                     "selfLink": f"{self._links(m.group('zone'))}/operations"}, {}


def _filter_terms(expression: str) -> list[tuple[str, str, str]] | None:
    """The ``field op value`` terms of a list filter, or None when it does not parse.

    GCE's list filter: ``field = "value"`` (or ``!=``), several of them each in
    parentheses, joined by spaces or ``AND``; or one ``field eq "RE2"`` (``ne``) term
    without parentheses, which matches when the regular expression matches the whole value.
    """
    text = expression.strip()
    if not text:
        return []
    parts = re.findall(r"\(([^()]*)\)", text) if text.startswith("(") else [text]
    rest = re.sub(r"\([^()]*\)", "", text) if text.startswith("(") else ""
    if rest.replace("AND", "").strip():
        return None
    terms = []
    for part in parts:
        term = _TERM.match(part)
        if term is None:
            return None
        value = term.group("quoted") if term.group("quoted") is not None else term.group("bare")
        terms.append((term.group("field"), term.group("op"), value))
    return terms


def _term_holds(resource: dict[str, Any], field: str, op: str, value: str) -> bool:
    if field.startswith("labels."):
        actual = (resource.get("labels") or {}).get(field.removeprefix("labels."))
    else:
        actual = resource.get(field)
    if op in ("eq", "ne"):
        equal = actual is not None and re.fullmatch(value, str(actual)) is not None
    else:
        equal = actual is not None and str(actual) == value
    return equal if op in ("=", "eq") else not equal
