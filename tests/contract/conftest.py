"""Collects the contract cases and parametrises ``adapter_case`` over them.

Cases come from every ``tests/contract/cases_*.py`` module (``CASES`` dict, see
``adapter_case.py``). A registered provider with no case still appears, as a
skipped parameter that says what to add, so a missing adapter is visible in
every run instead of silently untested.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from greenplace.providers.registry import REGISTRY
from tests.contract.adapter_case import AdapterCase, CaseEnv, CaseFactory, Shared

CASES: dict[str, CaseFactory] = {}
for _info in pkgutil.iter_modules([str(Path(__file__).parent)]):
    if _info.name.startswith("cases_"):
        CASES.update(importlib.import_module(f"tests.contract.{_info.name}").CASES)


def _covers(case_id: str, name: str) -> bool:
    return case_id == name or case_id.startswith(f"{name}-")


def _params() -> list[object]:
    params: list[object] = [pytest.param(case_id, id=case_id) for case_id in sorted(CASES)]
    for name in sorted(REGISTRY):
        if not any(_covers(case_id, name) for case_id in CASES):
            params.append(pytest.param(name, id=name, marks=pytest.mark.skip(
                reason=f"no contract case for {name!r} yet: add tests/contract/"
                       f"cases_{name.replace('-', '_')}.py with CASES = {{{name!r}: factory}}")))
    return params


@pytest.fixture(scope="session")
def contract_shared() -> Iterator[Shared]:
    with ExitStack() as stack:
        yield Shared(stack)


@pytest.fixture(params=_params())
def adapter_case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                 tmp_path: Path, contract_shared: Shared) -> Iterator[AdapterCase]:
    factory = CASES[request.param]
    env = CaseEnv(monkeypatch=monkeypatch, tmp_path=tmp_path, shared=contract_shared)
    with factory(env) as case:
        yield case
