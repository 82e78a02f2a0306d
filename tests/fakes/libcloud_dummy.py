"""libcloud's DummyNodeDriver, keeping node names and shared per key like a real account.

The stock DummyNodeDriver names every node ``dummy-<n>`` whatever name it is
given, reuses ids after a destroy and keeps its nodes per driver object. Real
drivers keep the name (which name-based idempotency relies on), never reuse
ids, and show one account's nodes to every client of that account. This
subclass changes exactly those three things and nothing else; it registers
itself with libcloud as ``greenplace-test-dummy`` so the adapter reaches it
through ``libcloud.compute.providers.get_driver`` like any driver.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

from libcloud.compute.base import Node, NodeImage, NodeSize
from libcloud.compute.drivers.dummy import DummyNodeDriver
from libcloud.compute.providers import DRIVERS, set_driver
from libcloud.compute.types import NodeState

DRIVER_NAME = "greenplace-test-dummy"


class NamedDummyNodeDriver(DummyNodeDriver):
    accounts: ClassVar[dict[str, list[Node]]] = {}
    _ids: ClassVar[itertools.count[int]] = itertools.count(1000)

    def __init__(self, creds: Any) -> None:
        super().__init__(creds)
        self.nl = self.accounts.setdefault(str(creds), [])

    def create_node(self, name: str, size: NodeSize, image: NodeImage) -> Node:  # type: ignore[override]
        node = Node(id=str(next(self._ids)), name=name, state=NodeState.RUNNING,
                    public_ips=["127.0.0.1"], private_ips=[], driver=self, size=size,
                    image=image, extra={})
        self.nl.append(node)
        return node


def power_off(key: str, node_id: str) -> None:
    """The node's boot script ends and powers it off (STOPPED). A dummy node has no console,
    like most libcloud drivers: nothing tells its exit code."""
    node = next(n for n in NamedDummyNodeDriver.accounts[key] if n.id == node_id)
    node.state = NodeState.STOPPED


def register() -> str:
    """Make the driver reachable by name; returns that name."""
    if DRIVER_NAME not in DRIVERS:
        # libcloud imports the module by name (its type hints say module object / class)
        set_driver(DRIVER_NAME, __name__, "NamedDummyNodeDriver")  # type: ignore[arg-type]
    return DRIVER_NAME
