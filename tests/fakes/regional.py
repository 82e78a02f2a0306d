"""Region-scoped fault injection on top of the EC2 and ARM fakes, for failover tests.

The stock fakes fail "the next call"; a queue test with a real worker needs
"fail the launch in region X, let region Y succeed", whatever order the calls
come in. The GCE fake needs nothing extra: its faults are per zone already.

- ``RegionalEc2Proxy``: an ``Ec2ErrorProxy`` that reads the region from the
  request's SigV4 credential scope (``Credential=AKID/DATE/<region>/ec2/...``,
  which is how EC2 itself knows the region when every region shares one
  endpoint), answers armed ``(action, region)`` pairs with a real EC2 error, logs
  ``(action, region, status)`` per call, and can run a one-shot hook after a
  call was forwarded to moto and succeeded (to kill a worker mid-dispatch).
- ``RegionalResourceManager``: an ARM fake whose VM creation in an armed
  location is accepted and then ends in a failed long-running operation, the
  way Azure reports ``AllocationFailed``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from tests.fakes.arm_server import FakeResourceManager, Fault
from tests.fakes.ec2 import (
    EC2_ERROR_MESSAGES,
    EC2_ERROR_STATUS,
    Ec2ErrorProxy,
    ec2_error_body,
    signing_region_of,
)
from tests.fakes.http import Reply, Request
from tests.fakes.json_server import Reply as JsonReply


def signing_region(request: Request) -> str:
    """The region a SigV4-signed EC2 request is for ("" when unsigned)."""
    return signing_region_of(request.headers)


class RegionalEc2Proxy(Ec2ErrorProxy):
    """The EC2 error proxy, plus faults and hooks scoped to one region."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self._regional: dict[tuple[str, str], list[str]] = {}
        self._after: dict[str, Callable[[str], None]] = {}
        self._regional_lock = threading.Lock()
        self.calls: list[tuple[str, str, int]] = []  # (action, region, HTTP status)

    def fail_in_region(self, action: str, region: str, code: str, *, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``action`` in ``region`` with EC2 error ``code``."""
        with self._regional_lock:
            self._regional.setdefault((action, region), []).extend([code] * times)

    def after_success(self, action: str, hook: Callable[[str], None]) -> None:
        """Call ``hook(region)`` once, after the next successful ``action`` reached moto
        and before its answer goes back to the caller."""
        with self._regional_lock:
            self._after[action] = hook

    def disarm(self) -> None:
        """Drop every armed fault and hook (regional and the base proxy's own)."""
        with self._regional_lock:
            self._regional.clear()
            self._after.clear()
        super().disarm()

    def calls_of(self, action: str) -> list[tuple[str, int]]:
        """(region, status) of every call of ``action`` so far, in order."""
        with self._regional_lock:
            return [(region, status) for a, region, status in self.calls if a == action]

    def __call__(self, request: Request) -> Reply:
        form = request.form() if request.method == "POST" else request.query
        action = (form.get("Action") or ["?"])[0]
        region = signing_region(request)
        with self._regional_lock:
            codes = self._regional.get((action, region))
            code = codes.pop(0) if codes else None
        if code is not None:
            reply = Reply(status=EC2_ERROR_STATUS.get(code, 400),
                          body=ec2_error_body(code, EC2_ERROR_MESSAGES.get(
                              code, f"{code} (injected in {region})")),
                          headers={"Content-Type": "text/xml;charset=UTF-8"})
        else:
            reply = super().__call__(request)
        hook = None
        with self._regional_lock:
            self.calls.append((action, region, reply.status))
            if code is None and reply.status == 200:
                hook = self._after.pop(action, None)
        if hook is not None:
            hook(region)
        return reply


class RegionalResourceManager(FakeResourceManager):
    """The ARM fake, plus allocation failures scoped to one location."""

    def __init__(self, *, tls: Any) -> None:
        super().__init__(tls=tls)
        self.location_faults: dict[str, list[Fault]] = {}

    def fail_next_vm_in(self, location: str, fault: Fault) -> None:
        """The next new VM in ``location`` is accepted (201) and its operation then fails
        (``fault.after_s`` later, else after the fake's ``create_s``), leaving the Failed VM
        with its NIC, public IP and disk until greenplace deletes them."""
        with self.lock:
            self.location_faults.setdefault(location, []).append(fault)

    def _put_vm(self, m: re.Match[str], q: dict[str, str], body: Any) -> JsonReply:
        # Runs under self.lock (JsonServer dispatches one request at a time).
        location = body.get("location") if isinstance(body, dict) else None
        faults = self.location_faults.get(location or "")
        creates = (faults and not self.sync_faults and m.group("name") not in self.vms
                   and self._scope(m) is None
                   and self._validate_vm(m.group("rg"), m.group("name"), body) is None)
        if creates and faults:
            self.lro_faults.insert(0, faults.pop(0))
        return super()._put_vm(m, q, body)

    def disarm(self) -> None:
        """Drop every armed fault (by location and the base fake's own)."""
        with self.lock:
            self.location_faults.clear()
            self.lro_faults.clear()
            self.sync_faults.clear()
            self.call_faults.clear()

    def vms_in(self, location: str) -> list[dict[str, Any]]:
        """The VMs the fake holds in ``location`` (the fake's own records, time passed)."""
        self._tick()
        with self.lock:
            return [vm for vm in self.vms.values() if vm["location"] == location]


__all__ = ["RegionalEc2Proxy", "RegionalResourceManager", "signing_region"]
