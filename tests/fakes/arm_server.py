"""A local Azure Resource Manager (HTTPS) for the Azure adapter's tests.

It answers the calls azure-mgmt-compute / azure-mgmt-network make, in ARM's JSON
shapes: virtual machines (PUT / GET with ``$expand=instanceView`` / DELETE /
list), virtual networks and subnets, network interfaces, and the
``Azure-AsyncOperation`` status endpoints of long-running operations.

Like ARM it:
- requires ``api-version`` and a bearer token (401 InvalidAuthenticationToken);
- answers a VM PUT with 201, ``Azure-AsyncOperation`` and provisioningState
  Creating; the operation reports InProgress ``op_polls`` times, then Succeeded,
  or Failed with ``{"status": "Failed", "error": {"code": "AllocationFailed"}}``,
  leaving the VM in provisioningState Failed with a
  ``ProvisioningState/failed/<code>`` instance-view status;
- treats a PUT with an existing name as an update (idempotent), and DELETE of a
  missing resource as 204;
- validates references (NIC -> subnet, VM -> NIC, same location), tag names,
  VM / computer names, customData being base64, Spot fields;
- deletes a VM's NIC and OS disk with it when their deleteOption is Delete.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

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


@dataclass(slots=True)
class Fault:
    """An ARM error: sync (the PUT itself fails) or async (the LRO ends Failed)."""

    code: str
    message: str
    status: int = 409  # for sync faults


def arm_error(status: int, code: str, message: str) -> Reply:
    return status, {"error": {"code": code, "message": message}}, {}


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
        self.disks: set[str] = set()
        self.operations: dict[str, dict[str, Any]] = {}
        self.sync_faults: list[Fault] = []
        self.lro_faults: list[Fault] = []
        self.call_faults: list[tuple[str, re.Pattern[str], Reply]] = []
        self.op_polls = 2  # InProgress answers before the terminal status
        self.hang_operations = False  # VM operations stay InProgress (networks still finish)
        self._ids = itertools.count(1)
        self.route("PUT", _VM + r"/(?P<name>[^/]+)", self._put_vm)
        self.route("GET", _VM + r"/(?P<name>[^/]+)", self._get_vm)
        self.route("GET", _VM, self._list_vms)
        self.route("DELETE", _VM + r"/(?P<name>[^/]+)", self._delete_vm)
        self.route("PUT", _NET + r"/virtualNetworks/(?P<name>[^/]+)", self._put_vnet)
        self.route("GET", _NET + r"/virtualNetworks/(?P<name>[^/]+)", self._get_vnet)
        self.route("PUT", _NET + r"/virtualNetworks/(?P<vnet>[^/]+)/subnets/(?P<name>[^/]+)",
                   self._put_subnet)
        self.route("PUT", _NET + r"/networkInterfaces/(?P<name>[^/]+)", self._put_nic)
        self.route("GET", _NET + r"/networkInterfaces/(?P<name>[^/]+)", self._get_nic)
        self.route("DELETE", _NET + r"/networkInterfaces/(?P<name>[^/]+)", self._delete_nic)
        self.route("GET", _SUB + r"/providers/Microsoft\.(?:Compute|Network)/locations/"
                   r"(?P<loc>[^/]+)/operations/(?P<op>[^/]+)", self._get_op)

    # -- test controls

    def fail_next_vm_put(self, fault: Fault) -> None:
        self.sync_faults.append(fault)

    def fail_next_vm_lro(self, fault: Fault) -> None:
        self.lro_faults.append(fault)

    def fail_calls(self, method: str, path_regex: str, reply: Reply) -> None:
        self.call_faults.append((method, re.compile(path_regex), reply))

    def set_power(self, name: str, power: str) -> None:
        self.vms[name]["_power"] = power

    def evict(self, name: str) -> None:
        """Azure evicts a Spot VM: policy Delete removes it, Deallocate deallocates it."""
        vm = self.vms[name]
        if vm["properties"].get("evictionPolicy") == "Deallocate":
            vm["_power"] = "deallocated"
        else:
            self._remove_vm(name)

    def puts(self, kind: str) -> list[Any]:
        """The PUT requests on resources of ``kind`` (virtualMachines, subnets, ...)."""
        return [r for r in self.requests if r.method == "PUT" and r.path.split("/")[-2] == kind]

    # -- plumbing

    def dispatch(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        auth = self.current_headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in self.tokens:
            return arm_error(401, "InvalidAuthenticationToken",
                             "The access token is invalid.")
        if "api-version" not in query:
            return arm_error(400, "MissingApiVersionParameter",
                             "The api-version query parameter (?api-version=) is required for "
                             "all requests.")
        for fault_method, pattern, reply in self.call_faults:
            if fault_method == method and pattern.search(path):
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

    def _new_op(self, namespace: str, location: str, *, fault: Fault | None = None,
                on_success: Any = None, on_failure: Any = None) -> str:
        op_id = f"{next(self._ids):08d}-aaaa-bbbb-cccc-0000000000{next(self._ids):02d}"
        self.operations[op_id] = {"polls": self.op_polls, "fault": fault,
                                  "on_success": on_success, "on_failure": on_failure,
                                  "status": "InProgress", "namespace": namespace}
        return (f"{self.base_url}/subscriptions/{self.subscription}/providers/{namespace}/"
                f"locations/{location}/operations/{op_id}?p=fake&api-version=2026-04-01")

    def _advance(self, op: dict[str, Any]) -> None:
        hung = self.hang_operations and op["namespace"] == "Microsoft.Compute"
        if op["status"] == "InProgress" and not hung:
            op["polls"] -= 1
            if op["polls"] < 0:
                if op["fault"] is not None:
                    op["status"] = "Failed"
                    if op["on_failure"] is not None:
                        op["on_failure"]()
                else:
                    op["status"] = "Succeeded"
                    if op["on_success"] is not None:
                        op["on_success"]()

    def _get_op(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        op = self.operations.get(m.group("op"))
        if op is None:
            return arm_error(404, "NotFound", "operation not found")
        self._advance(op)
        reply: dict[str, Any] = {"name": m.group("op"), "status": op["status"],
                                 "startTime": "2026-11-27T12:00:00.0000000+00:00"}
        if op["status"] == "Failed":
            reply["error"] = {"code": op["fault"].code, "message": op["fault"].message}
        if op["status"] != "InProgress":
            reply["endTime"] = "2026-11-27T12:01:00.0000000+00:00"
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
              "_failure": None}
        self.vms[name] = vm
        self.disks.add(props["storageProfile"]["osDisk"]["name"])
        fault = self.lro_faults.pop(0) if self.lro_faults else None

        def succeed() -> None:
            vm["properties"]["provisioningState"] = "Succeeded"
            vm["_power"] = "running"

        def fail() -> None:
            vm["properties"]["provisioningState"] = "Failed"
            vm["_power"] = ""
            vm["_failure"] = fault

        url = self._new_op("Microsoft.Compute", body["location"], fault=fault,
                           on_success=succeed, on_failure=fail)
        vm["_op"] = url.split("/operations/")[1].split("?")[0]
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
        if vm is not None and vm.get("_op") in self.operations:  # time passes for its LRO
            self._advance(self.operations[vm["_op"]])
        if vm is None:
            return arm_error(404, "ResourceNotFound", "The Resource 'Microsoft.Compute/"
                             f"virtualMachines/{m.group('name')}' under resource group "
                             f"'{m.group('rg')}' was not found.")
        return 200, self._vm_view(vm, expand=q.get("$expand") == "instanceView"), {}

    def _list_vms(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        return 200, {"value": [self._vm_view(v, expand=False) for v in self.vms.values()]}, {}

    def _remove_vm(self, name: str) -> None:
        vm = self.vms.pop(name)
        props = vm["properties"]
        if props["storageProfile"]["osDisk"].get("deleteOption") == "Delete":
            self.disks.discard(props["storageProfile"]["osDisk"]["name"])
        for ref in props["networkProfile"]["networkInterfaces"]:
            if (ref.get("properties") or {}).get("deleteOption") == "Delete":
                self.nics.pop(ref["id"].rsplit("/", 1)[-1], None)

    def _delete_vm(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        name = m.group("name")
        if name not in self.vms:
            return 204, None, {}
        location = self.vms[name]["location"]
        self._remove_vm(name)
        url = self._new_op("Microsoft.Compute", location)
        return 202, None, {"Azure-AsyncOperation": url, "Location": url}

    # -- network

    def _put_vnet(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        rg, name = m.group("rg"), m.group("name")
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
            subnets.append({"name": subnet["name"], "id": f"{vnet_id}/subnets/{subnet['name']}",
                            "properties": {**subnet["properties"],
                                           "provisioningState": "Succeeded"}})
        vnet = {"name": name, "id": vnet_id, "type": "Microsoft.Network/virtualNetworks",
                "location": body["location"], "tags": body.get("tags") or {},
                "properties": {**props, "subnets": subnets, "provisioningState": "Succeeded"}}
        created = name not in self.vnets
        self.vnets[name] = vnet
        url = self._new_op("Microsoft.Network", body["location"])
        return (201 if created else 200), vnet, {"Azure-AsyncOperation": url}

    def _get_vnet(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        vnet = self.vnets.get(m.group("name"))
        if vnet is None:
            return arm_error(404, "ResourceNotFound", "The Resource 'Microsoft.Network/"
                             f"virtualNetworks/{m.group('name')}' under resource group "
                             f"'{m.group('rg')}' was not found.")
        return 200, vnet, {}

    def _put_subnet(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        vnet = self.vnets.get(m.group("vnet"))
        if vnet is None:
            return arm_error(404, "ResourceNotFound", "virtual network not found")
        subnet = {"name": m.group("name"), "id": f"{vnet['id']}/subnets/{m.group('name')}",
                  "properties": {**body["properties"], "provisioningState": "Succeeded"}}
        vnet["properties"]["subnets"].append(subnet)
        return 201, subnet, {}

    def _put_nic(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        rg, name = m.group("rg"), m.group("name")
        for config in (body.get("properties") or {}).get("ipConfigurations") or []:
            subnet_id = config["properties"]["subnet"]["id"]
            parts = subnet_id.split("/")
            vnet = self.vnets.get(parts[-3]) if len(parts) > 3 else None
            subnet = next((s for s in (vnet or {}).get("properties", {}).get("subnets", [])
                           if s["id"].lower() == subnet_id.lower()), None)
            if subnet is None:
                return arm_error(400, "InvalidResourceReference", f"Resource {subnet_id} "
                                 f"referenced by resource {name} was not found.")
            if vnet is not None and vnet["location"] != body["location"]:
                return arm_error(400, "InvalidResourceReference", "Subnet and network "
                                 "interface must be in the same location.")
        nic = {"name": name, "id": self._rid(rg, "Microsoft.Network/networkInterfaces", name),
               "type": "Microsoft.Network/networkInterfaces", "location": body["location"],
               "tags": body.get("tags") or {},
               "properties": {**body["properties"], "provisioningState": "Succeeded"}}
        created = name not in self.nics
        self.nics[name] = nic
        return (201 if created else 200), nic, {}

    def _get_nic(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        nic = self.nics.get(m.group("name"))
        if nic is None:
            return arm_error(404, "ResourceNotFound", "network interface not found")
        return 200, nic, {}

    def _delete_nic(self, m: re.Match[str], q: dict[str, str], body: Any) -> Reply:
        if (bad := self._scope(m)) is not None:
            return bad
        if self.nics.pop(m.group("name"), None) is None:
            return 204, None, {}
        return 200, None, {}
