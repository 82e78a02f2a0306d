"""Two real `greenplace beat` processes and a worker: one sends, the other takes over.

Timings: reconcile every 4 s and a 2 s lease, so a standby takes over 1.5 to 2.5 s
after the leader dies (its last renewal was at most half a second before): well
inside one interval even on a loaded two-core machine. The jobs run 3 s and are
RUNNING when the leader is killed, so they finish after it died: without the
takeover they would stay RUNNING.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import time
from pathlib import Path

import pytest

from greenplace.scheduler.store import JobState
from tests.integration.conftest import Proc, Service, training_job, wait_for, write_jobs

pytestmark = pytest.mark.integration
INTERVAL_S = 4.0
LEASE_S = 2.0
RUN_TIME_S = 3.0
_SENT = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                   r"Scheduler: Sending due task greenplace-reconcile")
_TOOK = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                   r"beat: \S+ took the beat lease")


def _times(pattern: re.Pattern[str], proc: Proc) -> list[float]:
    """When ``proc`` logged ``pattern`` (epoch seconds; beat logs local time)."""
    return [dt.datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for m in pattern.findall(proc.output())]


def _at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_a_standby_beat_takes_over_when_the_sender_is_killed(service: Service,
                                                            tmp_path: Path) -> None:
    service.env.update({"GREENPLACE_RECONCILE_INTERVAL_S": str(INTERVAL_S),
                        "GREENPLACE_BEAT_LEASE_S": str(LEASE_S)})
    service.write_sim(run_time_s=RUN_TIME_S)
    beats = [service._start("beat", "beat", "--loglevel", "INFO") for _ in range(2)]
    service.start_worker()
    wait_for(lambda: sum(bool(_times(_TOOK, b)) for b in beats) == 1, timeout_s=20,
             what="one beat to take the lease")
    leader, standby = beats if _times(_TOOK, beats[0]) else beats[::-1]
    wait_for(lambda: bool(_times(_SENT, leader)), timeout_s=20, what="the leader to send")

    ids = service.submit(write_jobs(tmp_path / "jobs.yaml",
                                    [training_job(f"job-{i}") for i in range(6)]))
    service.wait_states(ids, {JobState.RUNNING}, timeout_s=30)
    killed_at = time.time()
    leader.kill_group(signal.SIGKILL)
    service.wait_states(ids, {JobState.SUCCEEDED}, timeout_s=30)
    done_at = time.time()

    took = _times(_TOOK, standby)
    assert len(took) == 1 and 0 < took[0] - killed_at <= INTERVAL_S, (took, killed_at)
    store = service.store()
    for job_id in ids:
        moves = {e.state_to: _at(e.at) for e in store.events(job_id) if e.kind == "transition"}
        finished_at = moves[JobState.RUNNING] + RUN_TIME_S
        assert finished_at > killed_at  # it finished after the leader died ...
        assert moves[JobState.SUCCEEDED] - finished_at <= 2 * INTERVAL_S  # ... and was seen

    # The two beats never both sent a tick: every send is about one interval from the
    # one before, whichever beat sent it, and there was no gap beyond the takeover.
    sends = sorted([(t, "leader") for t in _times(_SENT, leader)]
                   + [(t, "standby") for t in _times(_SENT, standby)])
    assert {who for _, who in sends} == {"leader", "standby"}
    assert [who for _, who in sends] == sorted(who for _, who in sends)  # leader first, once
    gaps = [b - a for (a, _), (b, _) in zip(sends, sends[1:], strict=False)]
    assert min(gaps) >= INTERVAL_S * 0.75, gaps
    started_at = sends[0][0]
    assert len(sends) <= (done_at - started_at) / INTERVAL_S + 2
