"""A local Azure Resource Manager (HTTPS) for the Azure adapter's tests.

It answers the calls azure-mgmt-compute / azure-mgmt-network make, in ARM's JSON
shapes: virtual machines (PUT / GET with ``$expand=instanceView`` / DELETE / paged
list of a resource group or a location / ``retrieveBootDiagnosticsData``), virtual
networks and subnets, NAT gateways, public IP addresses, network interfaces, and
the ``Azure-AsyncOperation`` status endpoints of long-running operations, and the
subscription's compute SKUs (``Microsoft.Compute/skus``, filtered by location, paged with
``nextLink``, each SKU with its capabilities and its Location / Zone restrictions; build them
with ``vm_sku``), and its compute usage and limits per location
(``Microsoft.Compute/locations/{location}/usages``, paged with ``nextLink``; build them with
``vm_usage``). A second,
plain-http loopback server plays Blob Storage for the boot diagnostics serial log
(SAS URL, no bearer token).

Time is real and short: every operation ends a configurable number of seconds
after it began (``create_s``, ``delete_s``, ``vnet_s``, ``nic_s``; tenths of seconds
in tests), whoever asks, as ARM's do. Like ARM it:
- requires ``api-version`` and a bearer token (401 InvalidAuthenticationToken);
- answers a VM PUT with 201, ``Azure-AsyncOperation`` and provisioningState
  Creating; the operation then ends Succeeded, or Failed with an allocation error
  (``fail_next_vm_lro``: after ``Fault.after_s``), leaving the VM in provisioningState
  Failed (``ProvisioningState/failed/<code>`` instance-view status) with its NIC,
  public IP and OS disk, as Azure does;
- treats a PUT with an existing name as an update (idempotent), and DELETE of a
  missing resource as 204; a VM DELETE is 202 and the VM stays in provisioningState
  Deleting for ``delete_s``, then goes with its NIC, OS disk and public IP when their
  deleteOption is Delete;
- refuses a second PUT of a virtual network whose creation is still running (409
  AnotherOperationInProgress), a NIC on a subnet not provisioned yet (409
  ReferencedResourceNotProvisioned), deleting a NIC attached to a VM (400 NicInUse) or a
  public IP attached to a NIC (400 PublicIPAddressInUse), a Standard public IP that is
  not Static;
- throttles on demand (429 TooManyRequests with Retry-After, ``throttle``);
- validates references (NIC -> subnet / public IP, VM -> NIC, subnet -> NAT
  gateway, same location), tag names, VM / computer names, customData being base64,
  Spot fields.

Test hooks: ``finish(name, exit_code)`` (the boot script ends: the serial log gets
the marker and the VM is PowerState/stopped, still allocated), ``evict``,
``set_power``, ``count_resources()`` (VMs + NICs + OS disks + public IPs of VMs).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from tests.fakes import http
from tests.fakes.json_server import JsonServer, Reply


def _b64url(data: dict[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


# A JWT-shaped bearer token (unsigned) with the claims ARM tokens carry.
TOKEN = ".".join([_b64url({"alg": "none", "typ": "JWT"}),
                  _b64url({"aud": "https://management.azure.com",
                           "appid": "11111111-2222-3333-4444-555555555555",
                           "tid": "99999999-8888-7777-6666-555555555555"}),
                  "c2lnbmF0dXJl"])
_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)"
_VM = _RG + r"/providers/Microsoft\.Compute/virtualMachines"
_NET = _RG + r"/providers/Microsoft\.Network"
_VM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}[A-Za-z0-9]?$")
_TAG_BAD = re.compile(r"[<>%&\\?/]")
SAS_SIGNATURE = "fake-sas-signature"


@dataclass(slots=True)
class Fault:
    """An ARM error: sync (the PUT itself fails) or async (the LRO ends Failed).

    ``after_s``: for an async fault, how long after the PUT the operation fails
    (default: the fake's ``create_s``).
    """

    code: str
    message: str
    status: int = 409  # for sync faults
    after_s: float | None = None


def arm_error(status: int, code: str, message: str) -> Reply:
    return status, {"error": {"code": code, "message": message}}, {}


def _not_found(kind: str, name: str, rg: str) -> Reply:
    return arm_error(404, "ResourceNotFound", f"The Resource '{kind}/{name}' under resource "
                     f"group '{rg}' was not found.")


def vm_sku(name: str, location: str, *, vcpus: int, memory_gb: float, gpus: int | None,
           family: str, zones: tuple[str, ...] = ("1", "2", "3"),
           restricted: str | None = None, restricted_zones: tuple[str, ...] = (),
           ) -> dict[str, Any]:
    """A ``virtualMachines`` entry of ``Microsoft.Compute/skus`` for one location, as ARM lists
    it with a location filter.

    ``gpus`` None leaves the GPUs capability out (as for a size without GPUs);
    ``restricted``: a reason code (``NotAvailableForSubscription``, ``QuotaId``) of a Location
    restriction; ``restricted_zones``: zones of a Zone restriction.
    """
    capabilities = [
        ("MaxResourceVolumeMB", str(vcpus * 45056)), ("OSVhdSizeMB", "1047552"),
        ("vCPUs", str(vcpus)), ("MemoryPreservingMaintenanceSupported", "True"),
        ("HyperVGenerations", "V1,V2"), ("MemoryGB", f"{memory_gb:g}"),
        ("MaxDataDiskCount", str(min(64, vcpus * 2))), ("CpuArchitectureType", "x64"),
        ("LowPriorityCapable", "True"), ("PremiumIO", "True"), ("VMDeploymentTypes", "IaaS"),
        ("vCPUsAvailable", str(vcpus)),
    ]
    if gpus is not None:
        capabilities.append(("GPUs", str(gpus)))
    capabilities += [("vCPUsPerCore", "1"), ("EphemeralOSDiskSupported", "True"),
                     ("AcceleratedNetworkingEnabled", "True"), ("RdmaEnabled", "False"),
                     ("MaxNetworkInterfaces", "8")]
    restrictions: list[dict[str, Any]] = []
    if restricted is not None:
        restrictions.append({"type": "Location", "values": [location],
                             "restrictionInfo": {"locations": [location]},
                             "reasonCode": restricted})
    if restricted_zones:
        restrictions.append({"type": "Zone", "values": [location],
                             "restrictionInfo": {"locations": [location],
                                                 "zones": list(restricted_zones)},
                             "reasonCode": "NotAvailableForSubscription"})
    return {
        "resourceType": "virtualMachines", "name": name, "tier": "Standard",
        "size": name.removeprefix("Standard_"), "family": family, "locations": [location],
        "locationInfo": [{"location": location, "zones": list(zones), "zoneDetails": []}],
        "capabilities": [{"name": k, "value": v} for k, v in capabilities],
        "restrictions": restrictions,
    }


def vm_usage(name: str, localized: str, *, current: int, limit: int) -> dict[str, Any]:
    """One entry of ``Microsoft.Compute/locations/{location}/usages`` (a vCPU count)."""
    return {"unit": "Count", "currentValue": current, "limit": limit,
            "name": {"value": name, "localizedValue": localized}}


def disk_sku(name: str, location: str) -> dict[str, Any]:
    """A ``disks`` entry of ``Microsoft.Compute/skus`` (the list mixes resource types)."""
    return {"resourceType": "disks", "name": name, "tier": name.split("_")[0], "size": "P30",
            "family": "PremiumSSD", "locations": [location],
            "locationInfo": [{"location": location, "zones": ["1", "2", "3"]}],
            "capabilities": [{"name": "MaxSizeGiB", "value": "1024"}], "restrictions": []}


class FakeResourceManager(JsonServer):
    """ARM for one subscription; serve it over TLS (``make_test_ca``)."""

    def __init__(self, *, tls: Any, subscription: str = "00000000-0000-0000-0000-00000000c0de",
                 resource_groups: tuple[str, ...] = ("greenplace",)) -> None:
        super().__init__(tls=tls)
        self.subscription = subscription
        self.tokens = {TOKEN}  # bearer tokens ARM accepts
        self.resource_groups = set(resource_groups)
        self.vms: dict[str, dict[str, Any]] = {}
        self.nics: dict[str, dict[str, Any]] = {}
        self.vnets: dict[str, dict[str, Any]] = {}
        self.public_ips: dict[str, dict[str, Any]] = {}
        self.nat_gateways: dict[str, dict[str, Any]] = {}
        self.disks: set[str] = set()
        self.operations: dict[str, dict[str, Any]] = {}
        self.sync_faults: list[Fault] = []
        self.lro_faults: list[Fault] = []
        # (method, path regex, reply, calls left or None for good, query items to match)
        self.call_faults: list[tuple[str, re.Pattern[str], Reply, list[int] | None,
                                     dict[str, str]]] = []
        self.create_s = 0.05  # how long a VM creation runs
        self.delete_s = 0.05  # how long a VM deletion runs
        self.vnet_s = 0.0  # how long a virtual network creation runs
        self.nic_s = 0.0  # how long a network interface creation runs
        self.page_size = 50  # VMs per page of a list (nextLink beyond)
        self.resource_skus: dict[str, list[dict[str, Any]]] = {}  # location -> SKUs (vm_sku)
        self.sku_page_size = 100  # SKUs per page of Microsoft.Compute/skus
        self.usages: dict[str, list[dict[str, Any]]] = {}  # location -> usages (vm_usage)
        self.usage_page_size = 100  # usages per page of Microsoft.Compute/locations/*/usages
        self.hang_operations = False  # VM operations stay InProgress (networks still finish)
        self.blob_requests: list[http.Request] = []
        self.blob_url = ""
        self._blob_server: contextlib.ExitStack | None = None
        self._ids = itertools.count(1)
        self.route("PUT", _VM + r"/(?P<name>[^/]+)", self._put_vm)
        self.route("GET", _VM + r"/(?P<name>[^/]+)", self._get_vm)
        self.route("GET", _VM, self._list_vms)
        self.route("GET", _SUB + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/"
                   r"virtualMachines", self._list_vms)
        self.route("DELETE", _VM + r"/(?P<name>[^/]+)", self._delete_vm)
        self.route("POST", _VM + r"/(?P<name>[^/]+)/retrieveBootDiagnosticsData",
                   self._boot_diagnostics)
        self.route("PUT", _NET + r"/virtualNetworks/(?P<name>[^/]+)", self._put_vnet)
        self.route("GET", _NET + r"/virtualNetworks/(?P<name>[^/]+)", self._get_vnet)
        self.route("PUT", _NET + r"/virtualNetworks/(?P<vnet>[^/]+)/subnets/(?P<name>[^/]+)",
                   self._put_subnet)
        self.route("PUT", _NET + r"/networkInterfaces/(?P<name>[^/]+)", self._put_nic)
        self.route("GET", _NET + r"/networkInterfaces/(?P<name>[^/]+)", self._get_nic)
        self.route("DELETE", _NET + r"/networkInterfaces/(?P<name>[^/]+)", self._delete_nic)
        self.route("PUT", _NET + r"/publicIPAddresses/(?P<name>[^/]+)", self._put_ip)
        self.route("GET", _NET + r"/publicIPAddresses/(?P<name>[^/]+)", self._get_ip)
        self.route("DELETE", _NET + r"/publicIPAddresses/(?P<name>[^/]+)", self._delete_ip)
        self.route("PUT", _NET + r"/natGateways/(?P<name>[^/]+)", self._put_nat)
        self.route("GET", _NET + r"/natGateways/(?P<name>[^/]+)", self._get_nat)
        self.route("GET", _SUB + r"/providers/Microsoft\.Compute/skus", self._list_skus)
        self.route("GET", _SUB + r"/providers/Microsoft\.Compute/locations/(?P<loc>[^/]+)/"
                   r"usages", self._list_usages)
        self.route("GET", _SUB + r"/providers/Microsoft\.(?:Compute|Network)/locations/"
                   r"(?P<loc>[^/]+)/operations/(?P<op>[^/]+)", self._get_op)

    def start(self) -> Self:
        super().start()
        self._blob_server = contextlib.ExitStack()
        self.blob_url = self._blob_server.enter_context(http.serve(self._serve_blob))
        return self

    def stop(self) -> None:
        if self._blob_server is not None:
            self._blob_server.close()
            self._blob_server = None
        super().stop()

    # -- test controls

    def fail_next_vm_put(self, fault: Fault) -> None:
        self.sync_faults.append(fault)

    def fail_next_vm_lro(self, fault: Fault) -> None:
        """The next new VM is accepted (201); its operation fails ``fault.after_s`` later."""
        self.lro_faults.append(fault)

    def fail_calls(self, method: str, path_regex: str, reply: Reply, *,
                   times: int | None = None, query: dict[str, str] | None = None) -> None:
        """Answer matching calls with ``reply`` (``times`` times, else for good); with
        ``query``, only calls whose query holds those items (e.g. one page's ``$skiptoken``)."""
        self.call_faults.append((method, re.compile(path_regex), reply,
                                 None if times is None else [times], dict(query or {})))

    def throttle(self, method: str, path_regex: str, *, times: int = 1,
                 retry_after_s: int = 1, query: dict[str, str] | None = None) -> None:
        """ARM throttling: 429 TooManyRequests with Retry-After on matching calls."""
        self.fail_calls(method, path_regex, (429, {"error": {
            "code": "TooManyRequests", "message": "The request is being throttled as the limit "
            "has been reached for operation type - Read_30Min."}},
            {"Retry-After": str(retry_after_s)}), times=times, query=query)

    def set_power(self, name: str, power: str) -> None:
        with self.lock:
            self.vms[name]["_power"] = power

    def finish(self, name: str, exit_code: int) -> None:
        """The VM's boot script ends: the serial log gets the marker, the VM powers off.

        Azure keeps a VM shut down from inside allocated: PowerState/stopped.
        """
        with self.lock:
            vm = self.vms[name]
            vm["_serial"] += (f"[  42.000000] cloud-init[911]: job done\n"
                              f"greenplace-exit-code={exit_code}\n"
                              "[  42.100000] reboot: Power down\n")
            vm["_power"] = "stopped"

    def evict(self, name: str) -> None:
        """Azure evicts a Spot VM: policy Delete removes it, Deallocate deallocates it."""
        with self.lock:
            vm = self.vms[name]
            if vm["properties"].get("evictionPolicy") == "Deallocate":
                vm["_power"] = "deallocated"
            else:
                self._remove_vm(name)

    def puts(self, kind: str) -> list[Any]:
        """The PUT requests on resources of ``kind`` (virtualMachines, subnets, ...)."""
        return [r for r in self.requests if r.method == "PUT" and r.path.split("/")[-2] == kind]

    def count_resources(self) -> int:
        """What a job's launch creates and its deletion must remove: VMs, NICs, OS disks,
        and public IPs other than a NAT gateway's (the region's network is shared)."""
        self._tick()
        with self.lock:
            job_ips = [n for n in self.public_ips if not n.endswith("-nat-ip")]
            return len(self.vms) + len(self.nics) + len(self.disks) + len(job_ips)

    # -- plumbing

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        self._tick()
        auth = self.current_headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in self.tokens:
            return arm_error(401, "InvalidAuthenticationToken",
                             "The access token is invalid.")
        if "api-version" not in query:
            return arm_error(400, "MissingApiVersionParameter",
                             "The api-version query parameter (?api-version=) is required for "
                             "all requests.")
        for fault_method, pattern, reply, left, items in self.call_faults:
            if (fault_method == method and pattern.search(path) and (left is None or left[0])
                    and all(query.get(k) == v for k, v in items.items())):
                if left is not None:
                    left[0] -= 1
                return reply
        return super().dispatch(method, path, query, body)

    def _scope(self, m: re.Match[str]) -> Reply | None:
        if m.group("sub") != self.subscription:
            return arm_error(404, "SubscriptionNotFound",
                             f"The subscription '{m.group('sub')}' could not be found.")
        rg = m.groupdict().get("rg")
        if rg is not None and rg not in self.resource_groups:
            return arm_error(404, "ResourceGroupNotFound",
                             f"Resource group '{rg}' could not be found.")
        return None

    def _rid(self, rg: str, kind: str, name: str) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/{kind}/{name}"

    def _new_op(self, namespace: str, location: str, *, after_s: float,
                fault: Fault | None = None, on_success: Callable[[], None] | None = None,
                on_failure: Callable[[], None] | None = None) -> tuple[str, str]:
        """A running operation that ends ``after_s`` from now; (its id, its status URL)."""
        op_id = f"{next(self._ids):08d}-aaaa-bbbb-cccc-0000000000{next(self._ids):02d}"
        self.operations[op_id] = {"ends_at": time.monotonic() + after_s, "fault": fault,
                                  "on_success": on_success, "on_failure": on_failure,
                                  "status": "InProgress", "namespace": namespace}
        return op_id, (f"{self.base_url}/subscriptions/{self.subscription}/providers/"
                       f"{namespace}/locations/{location}/operations/{op_id}"
                       "?p=fake&api-version=2026-04-01")

    def _tick(self) -> None:
        """Time passes: end every operation whose time has come, in order."""
        with self.lock:
            now = time.monotonic()
            due = sorted((op["ends_at"], op_id) for op_id, op in self.operations.items()
                         if op["status"] == "InProgress" and op["ends_at"] <= now)
            for _, op_id in due:
                op = self.operations[op_id]
                if self.hang_operations and op["namespace"] == "Microsoft.Compute":
                    continue
                failed = op["fault"] is not None
                op["status"] = "Failed" if failed else "Succeeded"
                hook = op["on_failure"] if failed else op["on_success"]
                if hook is not None:
                    hook()

    def _get_op(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        op = self.operations.get(m.group("op"))
        if op is None:
            return arm_error(404, "NotFound", "operation not found")
        reply: dict[str, Any] = {"name": m.group("op"), "status": op["status"],
                                 "startTime": "2026-11-27T12:00:00.0000000+00:00"}
        if op["status"] == "Failed":
            reply["error"] = {"code": op["fault"].code, "message": op["fault"].message}
        if op["status"] != "InProgress":
            reply["endTime"] = "2026-11-27T12:01:00.0000000+00:00"
        return 200, reply, {}

    # -- compute SKUs

    def _list_skus(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        """The subscription's compute SKUs, ``sku_page_size`` at a time with ``nextLink``.

        Like ARM, only a ``location eq '<name>'`` filter is accepted; with it, each SKU lists
        that location only. Without it, every location's SKUs come back.
        """
        if (bad := self._scope(m)) is not None:
            return bad
        wanted = q.get("$filter")
        if wanted:
            found = re.fullmatch(r"\s*location\s+eq\s+'(?P<loc>[^']+)'\s*", wanted)
            if found is None:
                return arm_error(400, "InvalidParameter", "The filter is not supported. Only "
                                 "the location filter is supported currently.")
            skus = self.resource_skus.get(found.group("loc"), [])
        else:
            skus = [sku for listed in self.resource_skus.values() for sku in listed]
        start = int(q.get("$skiptoken") or 0)
        reply: dict[str, Any] = {"value": skus[start:start + self.sku_page_size]}
        if start + self.sku_page_size < len(skus):
            rest = "&".join(f"{k}={v}" for k, v in q.items() if k != "$skiptoken")
            reply["nextLink"] = (f"{self.base_url}{m.group(0)}?{rest}"
                                 f"&$skiptoken={start + self.sku_page_size}")
        return 200, reply, {}

    def _list_usages(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        """The subscription's compute usage and limits in a location (``Usage - List``),
        ``usage_page_size`` at a time with ``nextLink``. A location ARM does not serve
        Microsoft.Compute in answers 400 ``LocationNotAvailableForResourceType``."""
        if (bad := self._scope(m)) is not None:
            return bad
        location = m.group("loc")
        if location not in self.usages:
            return arm_error(400, "LocationNotAvailableForResourceType",
                             f"The provided location '{location}' is not available for "
                             "resource type 'Microsoft.Compute/locations/usages'.")
        usages = self.usages[location]
        start = int(q.get("$skiptoken") or 0)
        reply: dict[str, Any] = {"value": usages[start:start + self.usage_page_size]}
        if start + self.usage_page_size < len(usages):
            rest = "&".join(f"{k}={v}" for k, v in q.items() if k != "$skiptoken")
            reply["nextLink"] = (f"{self.base_url}{m.group(0)}?{rest}"
                                 f"&$skiptoken={start + self.usage_page_size}")
        return 200, reply, {}

    # -- virtual machines

    def _validate_vm(self, rg: str, name: str, body: Any) -> Reply | None:
        if not isinstance(body, dict) or not body.get("location"):
            return arm_error(400, "LocationRequired", "The location property is required.")
        if not _VM_NAME.match(name):
            return arm_error(400, "InvalidResourceName", f"Resource name {name} is invalid.")
        for key in body.get("tags") or {}:
            if _TAG_BAD.search(key):
                return arm_error(400, "InvalidTagNameCharacters",
                                 f"The tag names '{key}' have reserved characters '<,>,%,&,\\,?,/'")
        props = body.get("properties") or {}
        if not (props.get("hardwareProfile") or {}).get("vmSize"):
            return arm_error(400, "InvalidParameter", "Required parameter 'vmSize' is missing.")
        os_profile = props.get("osProfile") or {}
        computer = os_profile.get("computerName", "")
        if not 1 <= len(computer) <= 64:
            return arm_error(400, "InvalidParameter", "The value of parameter "
                             "osProfile.computerName is invalid.")
        try:
            base64.b64decode(os_profile.get("customData", ""), validate=True)
        except (binascii.Error, ValueError):
            return arm_error(400, "InvalidParameter", "Custom data must be in Base64.")
        linux = os_profile.get("linuxConfiguration") or {}
        if linux.get("disablePasswordAuthentication") and not (
                (linux.get("ssh") or {}).get("publicKeys")):
            return arm_error(400, "InvalidParameter", "Required parameter 'linuxConfiguration."
                             "ssh.publicKeys' is missing (null).")
        if props.get("priority") == "Spot":
            if props.get("evictionPolicy") not in ("Delete", "Deallocate"):
                return arm_error(400, "InvalidParameter", "Eviction policy is required for "
                                 "Spot priority.")
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not nics:
            return arm_error(400, "InvalidParameter", "Required parameter "
                             "'networkProfile.networkInterfaces' is missing.")
        for ref in nics:
            nic_name = ref.get("id", "").rsplit("/", 1)[-1]
            nic = self.nics.get(nic_name)
            if nic is None or nic["id"].lower() != ref.get("id", "").lower():
                return arm_error(400, "InvalidResourceReference",
                                 f"Resource {ref.get('id')} referenced by resource "
                                 f"{self._rid(rg, 'Microsoft.Compute/virtualMachines', name)} "
                                 "was not found.")
            if nic["location"] != body["location"]:
                return arm_error(400, "NicInDifferentLocation", "The network interface must be "
                                 "in the same location as the virtual machine.")
            if nic.get("_vm") not in (None, name):
                return arm_error(400, "NicInUse", f"Network interface {nic['id']} is used by "
                                 f"existing resource {nic['_vm']}.")
        return None

    def _put_vm(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        rg, name = m.group("rg"), m.group("name")
        if (bad := self._validate_vm(rg, name, body)) is not None:
            return bad
        if self.sync_faults:
            sync = self.sync_faults.pop(0)
            return arm_error(sync.status, sync.code, sync.message)
        existing = self.vms.get(name)
        if existing is not None:  # idempotent update
            existing["tags"] = body.get("tags") or {}
            return 200, self._vm_view(existing, expand=False), {}
        props = dict(body["properties"])
        props.update(provisioningState="Creating",
                     vmId=f"6c0ffee0-0000-4000-8000-{next(self._ids):012d}",
                     timeCreated="2026-11-27T12:00:00.0000000+00:00")
        vm = {"name": name, "id": self._rid(rg, "Microsoft.Compute/virtualMachines", name),
              "type": "Microsoft.Compute/virtualMachines", "location": body["location"],
              "tags": body.get("tags") or {}, "properties": props, "_power": "starting",
              "_failure": None, "_serial": ""}
        self.vms[name] = vm
        for ref in props["networkProfile"]["networkInterfaces"]:
            self.nics[ref["id"].rsplit("/", 1)[-1]]["_vm"] = name
        self.disks.add(props["storageProfile"]["osDisk"]["name"])
        fault = self.lro_faults.pop(0) if self.lro_faults else None

        def succeed() -> None:
            if vm["properties"]["provisioningState"] != "Creating":
                return  # deleted meanwhile
            vm["properties"]["provisioningState"] = "Succeeded"
            vm["_power"] = "running"
            vm["_serial"] += "[    0.000000] Linux version 6.8.0-azure\ncloud-init: booted\n"

        def fail() -> None:  # Azure leaves the VM, its NIC and its disk behind
            if vm["properties"]["provisioningState"] != "Creating":
                return  # deleted meanwhile
            vm["properties"]["provisioningState"] = "Failed"
            vm["_power"] = ""
            vm["_failure"] = fault

        after_s = fault.after_s if fault is not None and fault.after_s is not None \
            else self.create_s
        vm["_op"], url = self._new_op("Microsoft.Compute", body["location"], after_s=after_s,
                                      fault=fault, on_success=succeed, on_failure=fail)
        return 201, self._vm_view(vm, expand=False), {"Azure-AsyncOperation": url}

    def _vm_view(self, vm: dict[str, Any], *, expand: bool) -> dict[str, Any]:
        view = {k: v for k, v in vm.items() if not k.startswith("_")}
        view["properties"] = dict(vm["properties"])
        if expand:
            state = vm["properties"]["provisioningState"]
            statuses: list[dict[str, Any]] = []
            if vm["_failure"] is not None:
                statuses.append({"code": f"ProvisioningState/failed/{vm['_failure'].code}",
                                 "level": "Error", "displayStatus": "Provisioning failed",
                                 "message": vm["_failure"].message})
            else:
                statuses.append({"code": f"ProvisioningState/{state.lower()}", "level": "Info",
                                 "displayStatus": f"Provisioning {state.lower()}"})
            if vm["_power"]:
                statuses.append({"code": f"PowerState/{vm['_power']}", "level": "Info",
                                 "displayStatus": f"VM {vm['_power']}"})
            view["properties"]["instanceView"] = {
                "computerName": vm["properties"]["osProfile"]["computerName"],
                "osName": "ubuntu", "statuses": statuses}
        return view

    def _get_vm(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        vm = self.vms.get(m.group("name"))
        if vm is None:
            return _not_found("Microsoft.Compute/virtualMachines", m.group("name"), m.group("rg"))
        return 200, self._vm_view(vm, expand=q.get("$expand") == "instanceView"), {}

    def _list_vms(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        """A resource group's VMs (``$expand=instanceView`` allowed) or a location's,
        ``page_size`` at a time with ``nextLink``."""
        if (bad := self._scope(m)) is not None:
            return bad
        location = m.groupdict().get("loc")
        if location is not None and q.get("$expand"):
            return arm_error(400, "InvalidParameter", "$expand is not supported when listing "
                             "virtual machines by location.")
        vms = [v for v in self.vms.values() if location is None or v["location"] == location]
        start = int(q.get("$skiptoken") or 0)
        page = vms[start:start + self.page_size]
        reply: dict[str, Any] = {"value": [
            self._vm_view(v, expand=q.get("$expand") == "instanceView") for v in page]}
        if start + self.page_size < len(vms):
            rest = "&".join(f"{k}={v}" for k, v in q.items() if k != "$skiptoken")
            path = m.group(0)
            reply["nextLink"] = (f"{self.base_url}{path}?{rest}"
                                 f"&$skiptoken={start + self.page_size}")
        return 200, reply, {}

    def _remove_vm(self, name: str) -> None:
        """The VM goes, and with it what carries deleteOption Delete (NIC -> its public IP)."""
        vm = self.vms.pop(name)
        props = vm["properties"]
        if props["storageProfile"]["osDisk"].get("deleteOption") == "Delete":
            self.disks.discard(props["storageProfile"]["osDisk"]["name"])
        for ref in props["networkProfile"]["networkInterfaces"]:
            nic_name = ref["id"].rsplit("/", 1)[-1]
            nic = self.nics.get(nic_name)
            if nic is None:
                continue
            nic.pop("_vm", None)
            if (ref.get("properties") or {}).get("deleteOption") == "Delete":
                self._remove_nic(nic_name, with_ips=True)

    def _remove_nic(self, name: str, *, with_ips: bool) -> None:
        nic = self.nics.pop(name)
        for config in nic["properties"].get("ipConfigurations") or []:
            ref = (config.get("properties") or {}).get("publicIPAddress")
            ip = self.public_ips.get(ref["id"].rsplit("/", 1)[-1]) if ref else None
            if ip is not None:
                ip.pop("_nic", None)
                if with_ips and ip["properties"].get("deleteOption") == "Delete":
                    self.public_ips.pop(ip["name"])

    def _delete_vm(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        name = m.group("name")
        vm = self.vms.get(name)
        if vm is None:
            return 204, None, {}
        location = vm["location"]
        if vm["properties"]["provisioningState"] != "Deleting":
            vm["properties"]["provisioningState"] = "Deleting"
            vm["_op"], vm["_delete_url"] = self._new_op(
                "Microsoft.Compute", location, after_s=self.delete_s,
                on_success=lambda: self._remove_vm(name) if name in self.vms else None)
        url = vm["_delete_url"]
        return 202, None, {"Azure-AsyncOperation": url, "Location": url}

    def _boot_diagnostics(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        """SAS URLs of the serial log and screenshot blobs (managed boot diagnostics)."""
        if (bad := self._scope(m)) is not None:
            return bad
        name = m.group("name")
        vm = self.vms.get(name)
        if vm is None:
            return _not_found("Microsoft.Compute/virtualMachines", name, m.group("rg"))
        boot = ((vm["properties"].get("diagnosticsProfile") or {}).get("bootDiagnostics")
                or {})
        if not boot.get("enabled"):
            return arm_error(409, "OperationNotAllowed", "Boot diagnostics is not enabled for "
                             f"the virtual machine '{name}'.")
        minutes = int(q.get("sasUriExpirationTimeInMinutes") or 120)
        if not 1 <= minutes <= 1440:
            return arm_error(400, "InvalidParameter", "sasUriExpirationTimeInMinutes must be "
                             "between 1 and 1440.")
        sas = f"sv=2021-08-06&sr=b&sp=r&se=2026-11-27T13%3A00%3A00Z&sig={SAS_SIGNATURE}"
        base = f"{self.blob_url}/bootdiagnostics-{vm['properties']['vmId'][:8]}/{name}"
        return 200, {"consoleScreenshotBlobUri": f"{base}.screenshot.bmp?{sas}",
                     "serialConsoleLogBlobUri": f"{base}.serialconsole.log?{sas}"}, {}

    def _serve_blob(self, request: http.Request) -> http.Reply:
        """Blob Storage for the serial logs: a SAS signature, no bearer token."""
        with self.lock:
            self.blob_requests.append(request)
            if request.query.get("sig") != [SAS_SIGNATURE]:
                return http.Reply(status=403, body=b"<Error><Code>AuthenticationFailed</Code>"
                                  b"</Error>", headers={"Content-Type": "application/xml"})
            found = re.fullmatch(r"/bootdiagnostics-[^/]+/(?P<vm>[^/]+)\.serialconsole\.log",
                                 request.path)
            vm = self.vms.get(found.group("vm")) if found else None
            if vm is None or not vm["_serial"]:
                return http.Reply(status=404, body=b"<Error><Code>BlobNotFound</Code></Error>",
                                  headers={"Content-Type": "application/xml"})
            return http.Reply(status=200, body=vm["_serial"].encode(),
                              headers={"Content-Type": "text/plain", "x-ms-blob-type": "BlockBlob"})

    # -- network

    def _put_vnet(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        rg, name = m.group("rg"), m.group("name")
        current = self.vnets.get(name)
        if current is not None and current["properties"]["provisioningState"] != "Succeeded":
            return arm_error(409, "AnotherOperationInProgress", "Another operation on this or "
                             f"dependent resource is in progress. To retrieve status of the "
                             f"operation use uri: {current['_op_url']}.")
        vnet_id = self._rid(rg, "Microsoft.Network/virtualNetworks", name)
        props = body.get("properties") or {}
        prefixes = [ipaddress.ip_network(p) for p in
                    (props.get("addressSpace") or {}).get("addressPrefixes") or []]
        subnets = []
        for subnet in props.get("subnets") or []:
            prefix = ipaddress.ip_network(subnet["properties"]["addressPrefix"])
            if not any(prefix.subnet_of(p) for p in prefixes):  # type: ignore[arg-type]
                return arm_error(400, "NetcfgSubnetRangeOutsideVnet", f"Subnet "
                                 f"'{subnet['name']}' is not valid in virtual network '{name}'.")
            if (bad := self._check_nat(subnet["properties"], body["location"])) is not None:
                return bad
            subnets.append({"name": subnet["name"], "id": f"{vnet_id}/subnets/{subnet['name']}",
                            "properties": {**subnet["properties"],
                                           "provisioningState": "Succeeded"}})
        vnet = {"name": name, "id": vnet_id, "type": "Microsoft.Network/virtualNetworks",
                "location": body["location"], "tags": body.get("tags") or {},
                "properties": {**props, "subnets": subnets, "provisioningState": "Updating"}}

        def provisioned() -> None:
            vnet["properties"]["provisioningState"] = "Succeeded"

        self.vnets[name] = vnet
        _, vnet["_op_url"] = self._new_op("Microsoft.Network", body["location"],
                                          after_s=self.vnet_s, on_success=provisioned)
        view = {k: v for k, v in vnet.items() if not k.startswith("_")}
        return (201 if current is None else 200), view, {"Azure-AsyncOperation": vnet["_op_url"]}

    def _check_nat(self, subnet_props: dict[str, Any], location: str) -> Reply | None:
        ref = subnet_props.get("natGateway")
        if not ref:
            return None
        nat = self.nat_gateways.get(ref["id"].rsplit("/", 1)[-1])
        if nat is None or nat["id"].lower() != ref["id"].lower():
            return arm_error(400, "InvalidResourceReference", f"Resource {ref['id']} "
                             "referenced by the subnet was not found.")
        if nat["location"] != location:
            return arm_error(400, "InvalidResourceReference", "The NAT gateway and the subnet "
                             "must be in the same location.")
        return None

    def _get_vnet(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        vnet = self.vnets.get(m.group("name"))
        if vnet is None:
            return _not_found("Microsoft.Network/virtualNetworks", m.group("name"), m.group("rg"))
        return 200, {k: v for k, v in vnet.items() if not k.startswith("_")}, {}

    def _put_subnet(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        vnet = self.vnets.get(m.group("vnet"))
        if vnet is None:
            return arm_error(404, "ResourceNotFound", "virtual network not found")
        if (bad := self._check_nat(body["properties"], vnet["location"])) is not None:
            return bad
        subnet = {"name": m.group("name"), "id": f"{vnet['id']}/subnets/{m.group('name')}",
                  "properties": {**body["properties"], "provisioningState": "Succeeded"}}
        subnets = vnet["properties"]["subnets"]
        subnets[:] = [s for s in subnets if s["name"] != subnet["name"]] + [subnet]
        return 201, subnet, {}

    def _put_nic(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        rg, name = m.group("rg"), m.group("name")
        ips: list[dict[str, Any]] = []
        for config in (body.get("properties") or {}).get("ipConfigurations") or []:
            subnet_id = config["properties"]["subnet"]["id"]
            parts = subnet_id.split("/")
            vnet = self.vnets.get(parts[-3]) if len(parts) > 3 else None
            subnet = next((s for s in (vnet or {}).get("properties", {}).get("subnets", [])
                           if s["id"].lower() == subnet_id.lower()), None)
            if subnet is None or vnet is None:
                return arm_error(400, "InvalidResourceReference", f"Resource {subnet_id} "
                                 f"referenced by resource {name} was not found.")
            if vnet["properties"]["provisioningState"] != "Succeeded":
                return arm_error(409, "ReferencedResourceNotProvisioned", f"Cannot proceed with "
                                 f"operation because resource {vnet['id']} used by resource "
                                 f"{name} is not in Succeeded state.")
            if vnet["location"] != body["location"]:
                return arm_error(400, "InvalidResourceReference", "Subnet and network "
                                 "interface must be in the same location.")
            ref = config["properties"].get("publicIPAddress")
            if ref:
                ip = self.public_ips.get(ref["id"].rsplit("/", 1)[-1])
                if ip is None or ip["id"].lower() != ref["id"].lower():
                    return arm_error(400, "InvalidResourceReference", f"Resource {ref['id']} "
                                     f"referenced by resource {name} was not found.")
                if ip.get("_nic") not in (None, name):
                    return arm_error(400, "PublicIPAddressInUse", f"Public IP {ip['id']} is "
                                     f"in use by {ip['_nic']}.")
                ips.append(ip)
        nic = {"name": name, "id": self._rid(rg, "Microsoft.Network/networkInterfaces", name),
               "type": "Microsoft.Network/networkInterfaces", "location": body["location"],
               "tags": body.get("tags") or {},
               "properties": {**body["properties"], "provisioningState": "Succeeded"}}
        for ip in ips:
            ip["_nic"] = name
        created = name not in self.nics
        if not created:
            nic["_vm"] = self.nics[name].get("_vm")
        self.nics[name] = nic
        if not created or not self.nic_s:
            return (201 if created else 200), self._public(nic), {}
        nic["properties"]["provisioningState"] = "Updating"

        def provisioned() -> None:
            nic["properties"]["provisioningState"] = "Succeeded"

        _, url = self._new_op("Microsoft.Network", body["location"], after_s=self.nic_s,
                              on_success=provisioned)
        return 201, self._public(nic), {"Azure-AsyncOperation": url}

    @staticmethod
    def _public(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if not k.startswith("_")}

    def _get_nic(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        nic = self.nics.get(m.group("name"))
        if nic is None:
            return _not_found("Microsoft.Network/networkInterfaces", m.group("name"),
                              m.group("rg"))
        return 200, self._public(nic), {}

    def _delete_nic(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        nic = self.nics.get(m.group("name"))
        if nic is None:
            return 204, None, {}
        if nic.get("_vm"):
            return arm_error(400, "NicInUse", f"Network Interface {nic['id']} is used by "
                             f"existing resource {nic['_vm']}. In order to delete the network "
                             "interface, it must be dissociated from the resource.")
        self._remove_nic(nic["name"], with_ips=False)
        return 200, None, {}

    def _put_ip(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        rg, name = m.group("rg"), m.group("name")
        props = body.get("properties") or {}
        if (body.get("sku") or {}).get("name") == "Standard" and (
                props.get("publicIPAllocationMethod") != "Static"):
            return arm_error(400, "StandardSkuPublicIPAddressesMustBeStatic", "Standard sku "
                             f"publicIp {name} must have AllocationMethod set to Static.")
        ip = {"name": name, "id": self._rid(rg, "Microsoft.Network/publicIPAddresses", name),
              "type": "Microsoft.Network/publicIPAddresses", "location": body["location"],
              "tags": body.get("tags") or {}, "sku": body.get("sku") or {"name": "Basic"},
              "properties": {**props, "provisioningState": "Succeeded",
                             "ipAddress": f"20.61.{len(self.public_ips) // 250}."
                                          f"{len(self.public_ips) % 250 + 1}"}}
        created = name not in self.public_ips
        if not created:
            ip["_nic"] = self.public_ips[name].get("_nic")
        self.public_ips[name] = ip
        return (201 if created else 200), self._public(ip), {}

    def _get_ip(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        ip = self.public_ips.get(m.group("name"))
        if ip is None:
            return _not_found("Microsoft.Network/publicIPAddresses", m.group("name"),
                              m.group("rg"))
        return 200, self._public(ip), {}

    def _delete_ip(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        ip = self.public_ips.get(m.group("name"))
        if ip is None:
            return 204, None, {}
        if ip.get("_nic"):
            return arm_error(400, "PublicIPAddressInUse", f"Public IP address {ip['id']} can "
                             f"not be deleted since it is still allocated to resource "
                             f"{ip['_nic']}.")
        del self.public_ips[ip["name"]]
        return 200, None, {}

    def _put_nat(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        rg, name = m.group("rg"), m.group("name")
        props = body.get("properties") or {}
        for ref in props.get("publicIpAddresses") or []:
            ip = self.public_ips.get(ref["id"].rsplit("/", 1)[-1])
            if ip is None or (ip.get("sku") or {}).get("name") != "Standard":
                return arm_error(400, "InvalidResourceReference", f"Resource {ref['id']} "
                                 "referenced by the NAT gateway was not found or is not a "
                                 "Standard public IP.")
        nat = {"name": name, "id": self._rid(rg, "Microsoft.Network/natGateways", name),
               "type": "Microsoft.Network/natGateways", "location": body["location"],
               "tags": body.get("tags") or {}, "sku": body.get("sku") or {},
               "properties": {**props, "provisioningState": "Succeeded"}}
        created = name not in self.nat_gateways
        self.nat_gateways[name] = nat
        return (201 if created else 200), nat, {}

    def _get_nat(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        nat = self.nat_gateways.get(m.group("name"))
        if nat is None:
            return _not_found("Microsoft.Network/natGateways", m.group("name"), m.group("rg"))
        return 200, nat, {}
