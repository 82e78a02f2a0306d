"""The local provider with real processes: launch, idempotency, slots, exit codes, stop,
and finding its jobs again from a new provider object (a worker restart)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from greenplace.providers import local
from greenplace.providers.base import (
    AgentAccess,
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    Placement,
    idempotency_key,
    startup_script,
)
from greenplace.providers.local import LocalProvider, create
from greenplace.scheduler.exceptions import CapacityError, ConfigError, InvalidRequestError
from tests.waiting import wait_for

PLACEMENT = Placement(cloud="local", region="this-machine", instance_type="workstation",
                      accelerator="L4", accelerator_count=1, spot=False)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "local"
    yield path
    cleanup = create({"root": str(path), "grace_s": "0.2"})
    for managed in cleanup.list_managed(PLACEMENT.region):  # nothing outlives a test
        cleanup.delete(managed.handle)


@pytest.fixture(params=["bare", "agent"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with the command bare, and under `greenplace agent` where it exists."""
    from greenplace.scheduler import cli

    if request.param == "agent" and not local.agent_available():
        pytest.skip("this greenplace has no `agent` command yet")
    if request.param == "bare":
        monkeypatch.delitem(cli.LAZY_COMMANDS, "agent", raising=False)
    return str(request.param)


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command runs bare (no agent), for what the agent would change on purpose."""
    from greenplace.scheduler import cli

    monkeypatch.delitem(cli.LAZY_COMMANDS, "agent", raising=False)


def provider(root: Path, **config: str) -> LocalProvider:
    return create({"root": str(root), "slots": "2", **config})


def launch(p: LocalProvider, run: str, *, job_id: str = "job1", attempt: int = 1,
           agent: AgentAccess | None = None, placement: Placement = PLACEMENT
           ) -> InstanceHandle:
    job = JobLaunch(job_id=job_id, name="t", run=run, policy="balanced", attempt=attempt,
                    agent=agent)
    return p.submit(p.prepare(job, placement), idempotency_key=idempotency_key(job_id, attempt))


def finished(p: LocalProvider, handle: InstanceHandle) -> InstanceStatus:
    def done() -> InstanceStatus | None:
        status = p.status(handle)
        return None if status.state in (InstanceState.PENDING, InstanceState.RUNNING) else status

    return wait_for(done, timeout_s=20, what=f"{handle.instance_id} to end", interval_s=0.05)


def pid_alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rpartition(")")[2].split()[0] not in "ZX"


@pytest.mark.usefixtures("bare")
def test_a_short_command_runs_in_its_folder_with_its_output_and_exit_code(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GREENPLACE_REDIS_URL", "redis://:service-secret@127.0.0.1:1/0")
    p = provider(root)
    handle = launch(p, "echo out $GREENPLACE_JOB_ID; echo err >&2; pwd; "
                       "echo redis=${GREENPLACE_REDIS_URL:-unset}; sleep 0.3",
                    agent=AgentAccess(api_url="http://127.0.0.1:9/", token="tok'en-1"))
    assert handle.instance_id == "job1-a1" and handle.provider == "local"
    assert p.status(handle).state in (InstanceState.PENDING, InstanceState.RUNNING)
    status = finished(p, handle)
    assert (status.state, status.exit_code) == (InstanceState.EXITED, 0)
    folder = root / "job1-a1"
    assert Path(handle.extra["dir"]) == folder
    out = (folder / "stdout.log").read_text().splitlines()
    # the command runs in work/, and the service's settings stay out of its environment
    assert out == ["out job1", str(folder / "work"), "redis=unset"]
    assert (folder / "stderr.log").read_text() == "err\n"
    assert (folder / "exit_code").read_text() == "0\n"
    state = json.loads((folder / "state.json").read_text())
    assert state["idempotency_key"] == "gp-job1-a1" and state["pid"] > 0
    assert "tok'en-1" not in json.dumps(state)  # the agent token is never written down


@pytest.mark.usefixtures("bare")
def test_the_job_gets_the_agent_api_and_its_token_from_the_boot_script(root: Path) -> None:
    agent = AgentAccess(api_url="http://127.0.0.1:9/api", token="gpt_a'b\"c")
    handle = launch(provider(root), 'echo "$GREENPLACE_API_URL|$GREENPLACE_AGENT_TOKEN"',
                    agent=agent)
    finished(provider(root), handle)
    assert (root / "job1-a1" / "stdout.log").read_text() == "http://127.0.0.1:9/api|gpt_a'b\"c\n"
    job = JobLaunch(job_id="j", name="n", run="x", policy="p", attempt=1, agent=agent)
    assert local.agent_token_in(startup_script(job)) == agent.token
    assert local.agent_token_in(startup_script(JobLaunch(
        job_id="j", name="n", run="x", policy="p", attempt=1))) is None


@pytest.mark.parametrize(("run", "code"), [("exit 3", 3), ("true", 0), ("kill -9 $$", 137)])
def test_exit_codes_are_read_from_the_exit_code_file(root: Path, run: str, code: int,
                                                     mode: str) -> None:
    p = provider(root)
    status = finished(p, launch(p, run))
    assert (status.state, status.exit_code) == (InstanceState.EXITED, code)
    exit_file = root / "job1-a1" / "exit_code"  # under the agent: once the agent is done
    wait_for(exit_file.exists, timeout_s=20, what="the wrapper to record the exit code")
    assert exit_file.read_text() == f"{code}\n"


@pytest.mark.usefixtures("bare")
def test_resubmitting_the_same_key_returns_the_same_instance(root: Path) -> None:
    p = provider(root)
    first = launch(p, "sleep 30")
    pid = json.loads((root / "job1-a1" / "state.json").read_text())["pid"]
    again = launch(provider(root), "sleep 30")  # a redelivery to another worker
    assert again == first
    assert json.loads((root / "job1-a1" / "state.json").read_text())["pid"] == pid
    assert len(p.list_managed(PLACEMENT.region)) == 1
    second = launch(p, "sleep 30", attempt=2)
    assert second.instance_id == "job1-a2"
    job = JobLaunch(job_id="job1", name="t", run="sleep 30", policy="p", attempt=1)
    with pytest.raises(InvalidRequestError, match="another idempotency key"):
        p.submit(p.prepare(job, PLACEMENT), idempotency_key="some-other-key")


@pytest.mark.usefixtures("bare")
def test_a_full_machine_refuses_with_capacity_error_until_a_slot_frees(root: Path) -> None:
    p = provider(root, slots="1")
    running = launch(p, "sleep 30", job_id="a")
    with pytest.raises(CapacityError, match="all 1 local slot") as exc:
        launch(p, "true", job_id="b")
    assert (exc.value.provider, exc.value.operation, exc.value.code) == (
        "local", "submit", "SlotsFull")
    assert "To fix:" in str(exc.value)
    assert not (root / "b-a1").exists()
    assert p.delete(running) is True
    finished(p, launch(p, "true", job_id="b"))
    with pytest.raises(CapacityError):
        launch(provider(root, slots="0"), "true", job_id="c")


def test_delete_stops_the_whole_process_group_and_keeps_the_logs(root: Path, mode: str) -> None:
    p = provider(root, grace_s="2")
    handle = launch(p, "echo started; sleep 60 & echo $! > child; wait")
    work = root / "job1-a1" / "work"
    wait_for(lambda: (work / "child").exists(), timeout_s=20, what="the child")
    # the file exists before the shell has written the pid into it
    child = int(wait_for(lambda: (work / "child").read_text().strip(), timeout_s=5,
                         what="the child's pid"))
    assert pid_alive(child) and p.status(handle).state is InstanceState.RUNNING
    assert p.delete(handle) is True
    assert not pid_alive(child)
    assert p.status(handle).state is InstanceState.TERMINATED
    assert (root / "job1-a1" / "stdout.log").read_text().endswith("started\n")
    assert p.delete(handle) is True
    assert p.list_managed(PLACEMENT.region) == []


def test_delete_escalates_to_sigkill_after_the_grace(root: Path, mode: str) -> None:
    p = provider(root, grace_s="0.3")
    handle = launch(p, "trap '' TERM; echo $$ > inner; while :; do sleep 0.05; done")
    inner = root / "job1-a1" / "work" / "inner"
    wait_for(lambda: inner.exists() and inner.read_text().endswith("\n"), timeout_s=20,
             what="the job to trap SIGTERM")
    pids = [int((root / "job1-a1" / "pid").read_text()), int(inner.read_text())]
    assert all(pid_alive(pid) for pid in pids)
    started = time.monotonic()
    assert p.delete(handle) is True
    assert 0.3 <= time.monotonic() - started < 4
    assert not any(pid_alive(pid) for pid in pids)


def test_a_job_survives_its_launching_process_and_a_new_provider_finds_it(root: Path,
                                                                         mode: str) -> None:
    """A worker that launches and exits (its task ends, it restarts) leaves the job running;
    a new provider object on the same root follows, lists and stops it."""
    bare_line = "LAZY_COMMANDS.pop('agent', None)" if mode == "bare" else ""
    code = (f"from greenplace.providers.local import create\n"
            f"from greenplace.scheduler.cli import LAZY_COMMANDS\n"
            f"from tests.unit.test_local_provider import launch\n"
            f"{bare_line}\n"
            f"print(launch(create({{'root': {str(root)!r}}}), 'sleep 30').instance_id)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2], check=True)
    assert done.stdout.strip() == "job1-a1"
    fresh = provider(root)
    listed = fresh.list_managed(PLACEMENT.region)
    assert [(m.job_id, m.attempt, m.status.state) for m in listed] == [
        ("job1", 1, InstanceState.RUNNING)]
    pid = int((root / "job1-a1" / "pid").read_text())
    assert pid_alive(pid) and os.getpgid(pid) != os.getpgid(0)
    assert fresh.delete(listed[0].handle) is True and not pid_alive(pid)


@pytest.mark.usefixtures("bare")
def test_a_process_killed_with_its_wrapper_is_a_failed_machine(root: Path) -> None:
    p = provider(root)
    handle = launch(p, "sleep 30")
    pgid = json.loads((root / "job1-a1" / "state.json").read_text())["pgid"]
    os.killpg(pgid, signal.SIGKILL)
    status = finished(p, handle)
    assert status.state is InstanceState.FAILED and "without recording an exit code" in (
        status.detail)


@pytest.mark.usefixtures("bare")
def test_status_of_an_unknown_or_removed_folder_is_missing(root: Path) -> None:
    import shutil

    p = provider(root)
    handle = launch(p, "true")
    finished(p, handle)
    shutil.rmtree(root / "job1-a1")
    assert p.status(handle).state is InstanceState.MISSING
    assert p.delete(handle) is True
    with pytest.raises(InvalidRequestError):
        p.status(InstanceHandle(provider="local", cloud="local", region="r",
                                instance_id="../etc"))


@pytest.mark.usefixtures("bare")
def test_the_agents_summary_gives_the_exit_code_and_measured_energy(root: Path) -> None:
    """The agent writes its summary as soon as the command ends, then may spend minutes
    delivering its report to an API that is down: the summary already ends the job."""
    p = provider(root)
    summary = {"exit_code": 4, "energy_j": 7200.0, "method": "rapl"}
    handle = launch(p, f"echo '{json.dumps(summary)}' > ../summary.json; sleep 30")
    status = finished(p, handle)
    assert status.exit_code == 4
    assert status.detail == "the job's command exited 4; measured 0.002 kWh (rapl)"
    assert not (root / "job1-a1" / "exit_code").exists()  # the wrapper still runs
    assert p.delete(handle) is True  # leaves the reporting wrapper to finish on its own
    assert p.status(handle).state is InstanceState.TERMINATED
    pgid = json.loads((root / "job1-a1" / "state.json").read_text())["pgid"]
    os.killpg(pgid, signal.SIGKILL)  # here the stand-in for the agent is the command itself


def test_under_the_agent_the_summary_measures_the_run(root: Path) -> None:
    if not local.agent_available():
        pytest.skip("this greenplace has no `agent` command yet")
    p = provider(root)
    status = finished(p, launch(p, "sleep 0.3; exit 2"))
    summary = json.loads((root / "job1-a1" / "summary.json").read_text())
    assert (status.exit_code, summary["exit_code"]) == (2, 2)
    assert summary["energy_j"] > 0 and "; measured " in status.detail


def test_jobs_run_under_the_agent_when_greenplace_has_it(monkeypatch: pytest.MonkeyPatch,
                                                         root: Path) -> None:
    from greenplace.scheduler import cli

    job = JobLaunch(job_id="j", name="n", run="true", policy="p", attempt=1)
    monkeypatch.delitem(cli.LAZY_COMMANDS, "agent", raising=False)
    command = str(root / "j-a1" / "command.sh")
    assert provider(root).prepare(job, PLACEMENT).payload["Argv"] == ["bash", command]
    monkeypatch.setitem(cli.LAZY_COMMANDS, "agent", ("agent", "agent_cmd", "-"))
    assert provider(root).prepare(job, PLACEMENT).payload["Argv"] == [
        sys.executable, "-m", "greenplace", "agent", "--summary-file",
        str(root / "j-a1" / "summary.json"), "--", "bash", command]


def test_prepare_refuses_cloud_regions_and_spot(root: Path) -> None:

    job = JobLaunch(job_id="j", name="n", run="true", policy="p", attempt=1)
    p = provider(root)
    with pytest.raises(InvalidRequestError, match="To fix:") as exc:
        p.prepare(job, dataclasses.replace(PLACEMENT, cloud="aws", region="us-east-1"))
    assert exc.value.code == "BorrowedRegion"
    with pytest.raises(InvalidRequestError, match="no spot market"):
        p.prepare(job, dataclasses.replace(PLACEMENT, spot=True))
    with pytest.raises(InvalidRequestError, match="cannot name a folder"):
        p.prepare(dataclasses.replace(job, job_id="../x"), PLACEMENT)


def test_settings_come_from_the_environment_and_are_checked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("GREENPLACE_LOCAL_ROOT", "GREENPLACE_LOCAL_SETTINGS", "GREENPLACE_LOCAL_SLOTS"):
        monkeypatch.delenv(name, raising=False)
    default = create({})
    assert (default.root, default.slots) == (tmp_path / "state" / "greenplace" / "local", 1)
    monkeypatch.setenv("GREENPLACE_LOCAL_SLOTS", "4")
    monkeypatch.setenv("GREENPLACE_LOCAL_ROOT", str(tmp_path / "jobs"))
    assert (create({}).root, create({}).slots) == (tmp_path / "jobs", 4)
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="To fix:"):
            create({"slots": bad})


@pytest.mark.usefixtures("bare")
def test_a_launch_that_never_started_fails_over_and_a_resubmit_starts_it(root: Path) -> None:
    """A submit that died between writing the state and starting the process leaves a
    folder with no pid: reported LAUNCH_FAILED after a while, started by a redelivery."""
    from greenplace.scheduler.exceptions import TransientError

    p = provider(root)
    handle = launch(p, "echo ran")
    finished(p, handle)
    folder = root / "job1-a1"
    for name in ("pid", "exit_code", "stdout.log"):
        (folder / name).unlink()
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**state, "pid": None, "pgid": None}))
    assert p.status(handle).state is InstanceState.PENDING
    (folder / "state.json").write_text(json.dumps(
        {**state, "pid": None, "pgid": None, "created_at": "2020-01-01T00:00:00Z"}))
    status = p.status(handle)
    assert status.state is InstanceState.LAUNCH_FAILED
    assert isinstance(status.error, TransientError) and status.error.code == "NeverStarted"
    assert launch(p, "echo ran") == handle  # the redelivered submit starts it
    assert finished(p, handle).exit_code == 0
    assert (folder / "stdout.log").read_text() == "ran\n"


@pytest.mark.usefixtures("bare")
def test_an_instance_of_another_host_is_never_reported_missing(root: Path) -> None:
    """A worker on another machine must not fail a job that runs fine where it was launched."""
    from greenplace.scheduler.exceptions import TransientError

    p = provider(root)
    handle = dataclasses.replace(launch(p, "sleep 30"), extra={"host": "another-machine"})
    for call in (p.status, p.delete):
        with pytest.raises(TransientError, match="runs on host another-machine") as exc:
            call(handle)
        assert exc.value.code == "OtherHost"


@pytest.mark.usefixtures("bare")
def test_delete_never_signals_a_group_that_is_not_the_jobs(root: Path) -> None:
    """A recorded group number whose processes ended may name another program's group."""
    p = provider(root)
    handle = launch(p, "true")
    finished(p, handle)
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        state = json.loads((root / "job1-a1" / "state.json").read_text())
        (root / "job1-a1" / "state.json").write_text(json.dumps({**state, "pgid": other.pid}))
        assert p.delete(handle) is True
        assert other.poll() is None and pid_alive(other.pid)
    finally:
        other.kill()
        other.wait()


def deleted_days_ago(root: Path, instance_id: str, days: float) -> None:
    """Date the folder's deletion marker back (what delete() wrote, ``days`` earlier)."""
    at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    (root / instance_id / "deleted").write_text(at.isoformat().replace("+00:00", "Z") + "\n")


@pytest.mark.usefixtures("bare")
def test_folders_of_deleted_instances_are_removed_after_keep_days_never_a_live_one(
        root: Path) -> None:
    p = provider(root, slots="4", keep_days="2")
    for job_id in ("old", "young", "undeleted"):
        finished(p, launch(p, "echo out; mkdir -p big && echo data > big/file", job_id=job_id))
    for job_id, days in (("old", 3.0), ("young", 1.0)):
        assert p.delete(launch(p, "true", job_id=job_id)) is True  # the same key: its handle
        deleted_days_ago(root, f"{job_id}-a1", days)
    live = launch(p, "sleep 30", job_id="live")
    # a folder marked deleted long ago whose process still runs (an agent delivering its
    # report, a marker written by hand) is never removed
    deleted_days_ago(root, "live-a1", 30.0)
    finished(p, launch(p, "true", job_id="next"))  # each submit removes what expired

    assert not (root / "old-a1").exists()
    assert {f.name for f in root.iterdir() if not f.name.startswith(".")} == {
        "young-a1", "undeleted-a1", "live-a1", "next-a1"}
    assert list((root / ".removing").iterdir()) == []  # set aside, then emptied
    assert (root / "young-a1" / "stdout.log").read_text() == "out\n"
    live_pid = int((root / "live-a1" / "pid").read_text())
    assert pid_alive(live_pid)

    # two days on, the young one has expired too; the live job's and the undeleted ones stay
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert p.remove_expired(now=later) == ["young-a1"]
    assert not (root / "young-a1").exists()
    assert (root / "live-a1" / "state.json").exists() and (root / "undeleted-a1").exists()
    assert p.remove_expired(now=later) == []
    # once the live job is stopped its folder follows the same rule
    (root / "live-a1" / "deleted").unlink()
    assert p.delete(live) is True and not pid_alive(live_pid)
    deleted_days_ago(root, "live-a1", 30.0)
    assert p.remove_expired(now=later) == ["live-a1"]


@pytest.mark.usefixtures("bare")
def test_keep_days_zero_removes_a_deleted_folder_at_the_next_submit_but_never_the_submitted(
        root: Path) -> None:
    p = provider(root, keep_days="0")
    done = launch(p, "true", job_id="done")
    finished(p, done)
    assert p.delete(done) is True
    # a repeated submit of the deleted instance's own key keeps answering with its handle
    assert launch(p, "true", job_id="done") == done
    assert (root / "done-a1").exists()
    finished(p, launch(p, "true", job_id="other"))
    assert not (root / "done-a1").exists()


def test_keep_days_comes_from_the_environment_and_is_checked(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GREENPLACE_LOCAL_SETTINGS", raising=False)
    monkeypatch.delenv("GREENPLACE_LOCAL_KEEP_DAYS", raising=False)
    assert create({"root": str(tmp_path)}).keep_days == 7.0
    monkeypatch.setenv("GREENPLACE_LOCAL_KEEP_DAYS", "0.5")
    assert create({"root": str(tmp_path)}).keep_days == 0.5
    for bad in ("-1", "a week"):
        monkeypatch.setenv("GREENPLACE_LOCAL_KEEP_DAYS", bad)
        with pytest.raises(ConfigError, match="keep_days .* To fix:"):
            create({"root": str(tmp_path)})
