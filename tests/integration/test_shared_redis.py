"""Two deployments with different GREENPLACE_KEY_PREFIX on one redis-server.

Real worker processes (each with its embedded beat): jobs submitted to one deployment
are invisible to the other's store and status, run only on its own worker, and its
retention sweep (the beat-sent ``greenplace.prune`` task) deletes only its own jobs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from greenplace.providers.local_sim import LocalSim, load_sim_config
from greenplace.scheduler.settings import load_settings
from greenplace.scheduler.store import JobState, JobStore, redis_client
from greenplace.scheduler.worker.app import create_app
from tests.integration.conftest import Proc, Service, training_job, wait_for, write_jobs
from tests.redisproc import RedisServer

NO_WORKER = "no greenplace worker has ever been seen"


class PrefixedService(Service):
    """A Service whose processes, store and simulator use ``GREENPLACE_KEY_PREFIX``."""

    def __init__(self, tmp: Path, redis_server: RedisServer, *, prefix: str,
                 env: dict[str, str]) -> None:
        tmp.mkdir()
        super().__init__(tmp, redis_server)
        self.prefix = prefix
        self.env.update({"GREENPLACE_KEY_PREFIX": prefix, **env})

    def store(self) -> JobStore:
        return JobStore(redis_client(self.redis.url), prefix=self.prefix)

    def instances(self) -> list[dict[str, Any]]:
        sim = LocalSim(config=load_sim_config({"config_path": str(self.sim_path)}, environ={}),
                       redis_url=self.redis.url, key_prefix=self.prefix)
        rows = sim.instances()
        sim.client.close()
        return rows

    def start_worker_with_beat(self) -> Proc:
        proc = self._start("worker", "worker", "--beat", "--concurrency", "2",
                           "--loglevel", "INFO")
        proc.wait_ready(" ready.")
        return proc


def test_two_prefixes_share_one_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    # blue keeps final jobs 13 s (beat sweeps every second); gp is the default deployment
    blue = PrefixedService(tmp_path / "blue", redis_server, prefix="blue",
                           env={"GREENPLACE_RETENTION_DAYS": "0.00015",
                                "GREENPLACE_PRUNE_INTERVAL_S": "1"})
    green = PrefixedService(tmp_path / "gp", redis_server, prefix="gp", env={})
    try:
        blue_worker = blue.start_worker_with_beat()
        # control.ping goes through the prefixed pidbox: blue's worker answers blue only
        apps = [create_app(load_settings(svc.env)) for svc in (blue, green)]
        try:
            blue_app, green_app = apps
            # Celery's control messages (pidbox) are under the prefix too
            assert blue_app.control.ping(timeout=10, limit=1)
            assert not green_app.control.ping(timeout=1, limit=1)
        finally:
            for a in apps:
                a.close()
        green_ids = green.submit(write_jobs(tmp_path / "g.yaml", [training_job("g1"),
                                                                  training_job("g2")]))
        blue_ids = blue.submit(write_jobs(tmp_path / "b.yaml", [training_job("b1"),
                                                                training_job("b2")]))

        # the default deployment's status shows its own jobs only, and blue's worker's
        # heartbeat is not seen by it
        seen_by_green = green.cli("status", "--output", "json")
        assert NO_WORKER in seen_by_green.stderr
        assert sorted(r["job_id"] for r in json.loads(seen_by_green.stdout)) == sorted(green_ids)
        assert blue.store().job_ids() == blue_ids and green.store().job_ids() == green_ids

        blue.wait_states(blue_ids, {JobState.SUCCEEDED}, timeout_s=90)
        # blue's worker never took the other deployment's messages
        assert {r.state for r in green.records(green_ids)} == {JobState.QUEUED}

        green_worker = green.start_worker_with_beat()
        green.wait_states(green_ids, {JobState.SUCCEEDED}, timeout_s=90)

        # blue's beat sends prune: its final jobs go once retention passes; gp's stay
        wait_for(lambda: blue.store().job_ids() == [], timeout_s=60,
                 what="blue's retention sweep")
        client = redis_server.client()
        assert client.keys("blue:job:*") == []
        assert [r.job_id for r in green.records(green_ids)] == green_ids

        # each worker ran its own jobs only, in its own simulated world
        assert sorted(r["job_id"] for r in blue.instances()) == sorted(blue_ids)
        assert sorted(r["job_id"] for r in green.instances()) == sorted(green_ids)
        for own, other, worker in ((blue_ids, green_ids, blue_worker),
                                   (green_ids, blue_ids, green_worker)):
            log = worker.output()
            assert all(i in log for i in own) and not any(i in log for i in other)

        # Celery's keys follow the prefix: blue's bindings mirror the default's unprefixed ones
        keys = {str(k) for k in client.keys("*")}
        bindings = {k for k in keys if k.startswith("_kombu.binding")}
        assert bindings and {f"blue:{k}" for k in bindings} <= keys
        assert all(k.startswith(("blue:", "bluesim:", "gp:", "gpsim:", "_kombu.", "greenplace.",
                                 "unacked")) for k in keys), sorted(keys)
    finally:
        blue.stop_all()
        green.stop_all()
