"""The local-sim provider against a real, private redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from greenplace.providers.base import (
    Feature,
    InstanceState,
    JobLaunch,
    Placement,
    Provider,
    idempotency_key,
)
from greenplace.providers.local_sim import LocalSim, SimConfig, create, load_sim_config
from greenplace.providers.registry import get_provider
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.exceptions import (
    CapacityError,
    ConfigError,
    InvalidRequestError,
    TransientError,
)
from tests.redisproc import REDIS_SERVER, RedisServer
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="needs the redis-server binary")


@pytest.fixture
def make_sim(server: RedisServer) -> Callable[..., LocalSim]:
    server.client().flushall()

    def build(**config: object) -> LocalSim:
        defaults: dict[str, object] = {"launch_latency_s": 0, "run_time_s": 60}
        return LocalSim(config=SimConfig.model_validate({**defaults, **config}),
                        redis_url=server.url)

    return build


def offer(index: int = 0) -> Placement:
    """A real catalog offer (local-sim only launches what the catalog sells)."""
    o = sorted(load_catalog().offers, key=lambda o: (o.cloud, o.region, o.instance_type))[index]
    return Placement(cloud=o.cloud, region=o.region, instance_type=o.instance_type,
                     accelerator=o.accelerator, accelerator_count=o.accelerator_count,
                     spot=False, price_usd_per_hour=o.price_usd_per_hour)


def launch(job_id: str = "job1", attempt: int = 1, name: str = "train") -> JobLaunch:
    return JobLaunch(job_id=job_id, name=name, run="python train.py", policy="balanced",
                     attempt=attempt)


def test_registry_builds_it_and_it_is_a_provider(server: RedisServer) -> None:
    sim = get_provider("local-sim", config={"redis_url": server.url, "run_time_s": "3"})
    assert isinstance(sim, Provider) and isinstance(sim, LocalSim)
    assert sim.features == frozenset(Feature)
    assert sim.config.run_time_s == 3
    assert "no credentials" in sim.check_credentials()


def test_prepare_is_pure_and_needs_no_redis() -> None:
    sim = LocalSim(config=SimConfig(), redis_url="redis://127.0.0.1:1/0")  # nothing listens
    request = sim.prepare(launch(), offer())
    assert request == sim.prepare(launch(), offer())
    assert request.provider == "local-sim" and request.instance_type == offer().instance_type
    assert request.tags["greenplace:job-id"] == "job1"
    assert "python train.py" in request.startup_script
    assert request.payload["JobName"] == "train"


def test_same_key_never_creates_a_second_instance(make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim()
    request = sim.prepare(launch(), offer())
    key = idempotency_key("job1", 1)
    first = sim.submit(request, idempotency_key=key)
    again = make_sim().submit(request, idempotency_key=key)  # another process, same world
    assert first == again
    other = sim.submit(sim.prepare(launch(attempt=2), offer()),
                       idempotency_key=idempotency_key("job1", 2))
    assert other.instance_id != first.instance_id
    rows = sim.instances()
    assert [r["idempotency_key"] for r in rows] == ["gp-job1-a1", "gp-job1-a2"]
    assert {r["job_id"] for r in rows} == {"job1"} and rows[0]["attempt"] == 1


def test_concurrent_submits_with_one_key_make_one_instance(
    make_sim: Callable[..., LocalSim]
) -> None:
    handles = []
    barrier = threading.Barrier(8)

    def go() -> None:
        sim = make_sim()
        request = sim.prepare(launch(), offer())
        barrier.wait()
        handles.append(sim.submit(request, idempotency_key="gp-job1-a1"))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({h.instance_id for h in handles}) == 1
    assert len(make_sim().instances()) == 1


def test_reused_key_with_another_request_is_refused(make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim()
    sim.submit(sim.prepare(launch(), offer(0)), idempotency_key="k")
    with pytest.raises(InvalidRequestError, match="IdempotentParameterMismatch"):
        sim.submit(sim.prepare(launch(), offer(1)), idempotency_key="k")


def test_instances_boot_run_and_finish(make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim(launch_latency_s=0.3, run_time_s=0.3)
    handle = sim.submit(sim.prepare(launch(), offer()), idempotency_key="k")
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = sim.status(handle).state
        if not seen or seen[-1] != state:
            seen.append(state)
        if state is InstanceState.EXITED:
            break
        time.sleep(0.05)
    assert seen[0] is InstanceState.PENDING and seen[-1] is InstanceState.EXITED
    assert InstanceState.RUNNING in seen
    assert sim.status(handle).exit_code == 0


def test_capacity_per_offer_is_enforced_and_freed(make_sim: Callable[..., LocalSim]) -> None:
    target = offer()
    key = f"{target.cloud}:{target.region}:{target.instance_type}"
    sim = make_sim(capacity={key: 1}, run_time_s=0.5)
    first = sim.submit(sim.prepare(launch("a"), target), idempotency_key="a")
    with pytest.raises(CapacityError, match="InsufficientInstanceCapacity") as info:
        sim.submit(sim.prepare(launch("b"), target), idempotency_key="b")
    assert info.value.provider == "local-sim" and info.value.operation == "submit"
    assert sim.delete(first) is True
    assert sim.status(first).state is InstanceState.TERMINATED
    second = sim.submit(sim.prepare(launch("b"), target), idempotency_key="b")
    wait_for(lambda: sim.status(second).state is InstanceState.EXITED, timeout_s=10,
             what="the second instance to finish", interval_s=0.05)  # and free its slot
    sim.submit(sim.prepare(launch("c"), target), idempotency_key="c")
    assert sim.delete(second) is True and sim.delete(second) is True
    assert sim.status(second).state is InstanceState.TERMINATED


def test_zero_capacity_by_glob_first_match_wins(make_sim: Callable[..., LocalSim]) -> None:
    target = offer()
    sim = make_sim(capacity={f"{target.cloud}:{target.region}:*": 0, "*": 5})
    with pytest.raises(CapacityError):
        sim.submit(sim.prepare(launch(), target), idempotency_key="k")
    assert sim.config.capacity_for("zz:nowhere:x") == 5


def test_unknown_offer_is_an_invalid_request(make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim()
    bogus = Placement(cloud="gcp", region="mars-1", instance_type="x", accelerator="A100",
                      accelerator_count=1, spot=False)
    with pytest.raises(InvalidRequestError, match="InvalidInstanceType"):
        sim.submit(sim.prepare(launch(), bogus), idempotency_key="k")


def test_fault_rates(make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim(capacity_error_rate=1.0)
    with pytest.raises(CapacityError):
        sim.submit(sim.prepare(launch(), offer()), idempotency_key="k")
    assert sim.instances() == []


def test_lost_answers_are_recovered_by_the_same_key(make_sim: Callable[..., LocalSim]) -> None:
    """Half the transient errors happen after the instance exists; retrying finds it."""
    sim = make_sim(transient_error_rate=1.0, seed=3)
    request = sim.prepare(launch(), offer())
    handle = None
    codes = []
    for _ in range(60):
        try:
            handle = sim.submit(request, idempotency_key="k")
            break
        except TransientError as exc:
            codes.append(exc.code)
    assert handle is not None and codes[-1] == "ResponseLost"
    assert len(sim.instances()) == 1


def test_failures_and_preemption(make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim(run_time_s=0.1, failure_rate=1.0, failure_exit_code=3)
    failed = sim.submit(sim.prepare(launch("f"), offer()), idempotency_key="f")
    spot_offer = next(o for o in load_catalog().offers if o.spot_price_usd_per_hour)
    spot = Placement(cloud=spot_offer.cloud, region=spot_offer.region,
                     instance_type=spot_offer.instance_type,
                     accelerator=spot_offer.accelerator,
                     accelerator_count=spot_offer.accelerator_count, spot=True)
    preempting = make_sim(run_time_s=0.1, preemption_rate=1.0)
    preempted = preempting.submit(preempting.prepare(launch("p"), spot), idempotency_key="p")
    live = {InstanceState.PENDING, InstanceState.RUNNING}
    wait_for(lambda: sim.status(failed).state not in live
             and sim.status(preempted).state not in live,
             timeout_s=10, what="both instances to end", interval_s=0.05)
    status = sim.status(failed)
    assert (status.state, status.exit_code) == (InstanceState.EXITED, 3)
    assert sim.status(preempted).state is InstanceState.PREEMPTED


def test_a_launch_can_be_refused_after_it_was_accepted(make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim(launch_latency_s=0.2, launch_failure_rate=1.0)
    handle = sim.submit(sim.prepare(launch(), offer()), idempotency_key="k")
    assert sim.status(handle).state is InstanceState.PENDING
    wait_for(lambda: sim.status(handle).state is not InstanceState.PENDING, timeout_s=10,
             what="the allocation to fail", interval_s=0.05)
    status = sim.status(handle)
    assert status.state is InstanceState.LAUNCH_FAILED
    assert isinstance(status.error, CapacityError)
    assert status.error.code == "InsufficientInstanceCapacity"


def test_list_managed_lists_a_region_without_exit_codes(
        make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim(run_time_s=0)
    target = offer()
    elsewhere = next(o for o in load_catalog().offers if o.region != target.region)
    a = sim.submit(sim.prepare(launch("a"), target), idempotency_key="a")
    b = sim.submit(sim.prepare(launch("b"), target), idempotency_key="b")
    sim.submit(sim.prepare(launch("c"), Placement(
        cloud=elsewhere.cloud, region=elsewhere.region, instance_type=elsewhere.instance_type,
        accelerator=elsewhere.accelerator, accelerator_count=elsewhere.accelerator_count,
        spot=False)), idempotency_key="c")
    listed = {m.handle.instance_id: m for m in sim.list_managed(target.region)}
    assert set(listed) == {a.instance_id, b.instance_id}
    assert listed[a.instance_id].handle == a
    assert listed[a.instance_id].status.state is InstanceState.EXITED
    assert listed[a.instance_id].status.exit_code is None  # a list call reads no console
    assert sim.delete(a) is True
    assert [m.handle for m in sim.list_managed(target.region)] == [b]


def test_missing_instance_is_reported_missing(make_sim: Callable[..., LocalSim]) -> None:
    sim = make_sim()
    handle = sim.submit(sim.prepare(launch(), offer()), idempotency_key="k")
    sim.client.delete(f"gpsim:instance:{handle.instance_id}")
    assert sim.status(handle).state is InstanceState.MISSING


def test_config_from_yaml_env_and_adapter_config(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("run_time_s: 5\ncapacity:\n  'gcp:*:*': 2\nfailure_rate: 0.1\n")
    env = {"GREENPLACE_SIM_CONFIG": str(path), "GREENPLACE_SIM_FAILURE_RATE": "0.2",
           "GREENPLACE_SIM_CAPACITY": "aws:us-east-1:*=0,*=9"}
    config = load_sim_config({"run_time_s": "7"}, environ=env)
    assert config.run_time_s == 7  # adapter config beats env beats YAML
    assert config.failure_rate == 0.2
    assert config.capacity == {"aws:us-east-1:*": 0, "*": 9}
    assert config.capacity_for("aws:us-east-1:p4d") == 0


@pytest.mark.parametrize(("env", "match"), [
    ({"GREENPLACE_SIM_FAILURE_RATE": "2"}, "failure_rate"),
    ({"GREENPLACE_SIM_CAPACITY": "oops"}, "PATTERN=VALUE"),
    ({"GREENPLACE_SIM_CONFIG": "/nonexistent/sim.yaml"}, "does not exist"),
])
def test_bad_config_is_a_clear_config_error(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_sim_config({}, environ=env)
    assert "To fix" in str(info.value)


def test_unknown_yaml_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("run_time: 5\n")
    with pytest.raises(ConfigError, match="unknown field"):
        create({"redis_url": "redis://127.0.0.1:1/0", "config_path": str(path)})
