"""What one adapter brings to the contract suite: an ``AdapterCase``.

To put an adapter under the contract, add a module ``tests/contract/cases_<name>.py``
holding ``CASES: dict[str, CaseFactory]``. A case id is the registry name of the
adapter (``"gcp"``), optionally followed by ``-<variant>`` (``"libcloud-openstack"``).
A factory takes a ``CaseEnv`` and returns a context manager that yields the case
(start fakes on entry, stop them on exit). ``tests/contract/conftest.py`` finds the
modules by name; nothing else needs to change.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from greenplace.providers.base import InstanceHandle, Placement, Provider

T = TypeVar("T")

# The error kinds a case may inject, and the class each must surface as.
ERROR_KINDS = ("capacity", "quota", "transient", "auth")


class Shared:
    """Resources shared by every case of a test session (servers), started on first use."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._items: dict[str, Any] = {}

    def get(self, name: str, start: Callable[[ExitStack], T]) -> T:
        """The resource called ``name``; ``start(stack)`` builds it the first time."""
        if name not in self._items:
            self._items[name] = start(self._stack)
        item: T = self._items[name]
        return item


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseEnv:
    """What a case factory may use: per-test monkeypatch and tmp dir, session resources."""

    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path
    shared: Shared


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterCase:
    """One adapter wired to a fake cloud.

    Attributes:
        name: the adapter's registry name (``provider.name`` must equal it).
        make_provider: a new adapter object on the same (fake) account, as a
            second worker process would build it.
        placement: an on-demand placement this adapter can launch.
        spot_placement: a spot placement it can launch (None when it has no spot).
        unknown_instance_id: an id the fake cloud has never issued.
        secrets: credential values that must never appear in a request, an
            identity, an error or the output.
        count_instances: how many instances the fake account holds (None when the
            fake cannot tell); used to prove ``prepare`` creates nothing and a
            re-submit creates nothing more.
        inject_error: ``kind -> provider`` whose next submit fails with the
            cloud's own error of that kind (one of ERROR_KINDS in error_kinds).
        finish: ``(handle, exit_code)``: the fake cloud runs the instance's boot
            script to its end: the command exits with that code, the script
            prints it on the serial console and powers the machine off.
        count_resources: how many resources of any kind (VMs, disks, NICs,
            addresses) the fake account holds; ``delete`` must bring it back.
    """

    name: str
    make_provider: Callable[[], Provider]
    placement: Placement
    unknown_instance_id: str
    spot_placement: Placement | None = None
    secrets: tuple[str, ...] = ()
    count_instances: Callable[[], int] | None = None
    inject_error: Callable[[str], Provider] | None = None
    error_kinds: frozenset[str] = field(default_factory=frozenset)
    finish: Callable[[InstanceHandle, int], None] | None = None
    count_resources: Callable[[], int] | None = None


CaseFactory = Callable[[CaseEnv], AbstractContextManager[AdapterCase]]
