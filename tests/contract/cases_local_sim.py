"""The local-sim adapter on a private redis-server (skipped where either is missing)."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from greenplace.providers.base import InstanceHandle, Placement, Provider
from greenplace.providers.registry import get_provider
from tests.contract.adapter_case import AdapterCase, CaseEnv


def _start_redis(stack: ExitStack) -> str:
    from tests.redisproc import RedisServer

    server = RedisServer(stack.enter_context(_tempdir())).start()
    stack.callback(server.stop)
    return server.url


@contextmanager
def _tempdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gp-contract-redis-") as path:
        yield Path(path)


def _placement() -> Placement:
    from greenplace.scheduler.catalog import load_catalog

    offer = min((o for o in load_catalog().offers if o.spot_price_usd_per_hour is not None),
                key=lambda o: (o.cloud, o.region, o.instance_type))
    return Placement(cloud=offer.cloud, region=offer.region, instance_type=offer.instance_type,
                     accelerator=offer.accelerator, accelerator_count=offer.accelerator_count,
                     spot=False, price_usd_per_hour=offer.price_usd_per_hour)


@contextmanager
def local_sim_case(env: CaseEnv) -> Iterator[AdapterCase]:
    if importlib.util.find_spec("greenplace.providers.local_sim") is None:
        pytest.skip("providers/local_sim.py does not exist yet")
    from tests.redisproc import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("local-sim needs the redis-server binary")
    url = env.shared.get("redis", _start_redis)
    placement = _placement()
    base = {"redis_url": url, "launch_latency_s": "0", "run_time_s": "600"}
    probe = get_provider("local-sim", config=base)
    probe.client.flushall()  # type: ignore[attr-defined]
    offer = f"{placement.cloud}:{placement.region}:{placement.instance_type}"
    faults = {"capacity": {"capacity": f"{offer}=0"},
              "transient": {"transient_error_rate": "1", "seed": "7"}}

    def inject(kind: str) -> Provider:
        return get_provider("local-sim", config={**base, **faults[kind]})

    def finish(handle: InstanceHandle, exit_code: int) -> None:
        """The command ends now with ``exit_code`` (the simulator's outcome field)."""
        seconds, micros = probe.client.time()  # type: ignore[attr-defined]
        probe.client.hset(  # type: ignore[attr-defined]
            f"gpsim:instance:{handle.instance_id}",
            mapping={"ends_at": f"{seconds + micros / 1e6:.6f}", "outcome": f"exit:{exit_code}"})

    yield AdapterCase(
        name="local-sim", make_provider=lambda: get_provider("local-sim", config=base),
        placement=placement, spot_placement=dataclasses.replace(placement, spot=True),
        unknown_instance_id="sim-does-not-exist",
        count_instances=lambda: len(probe.instances()),  # type: ignore[attr-defined]
        inject_error=inject, error_kinds=frozenset(faults), finish=finish)


CASES = {"local-sim": local_sim_case}
