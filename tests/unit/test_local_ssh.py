"""The local provider on a declared SSH host, through the system ssh client and a REAL
private sshd (tests/sshdproc.py): launch, status, exit code, logs and delete over ssh,
idempotent resubmit, slots counted on the host, the agent's summary read back, and the
errors of a host that is down, refuses the login or shows an unknown host key.

The "remote" host is this machine seen through sshd, so a test may look at the remote
folder directly to check what the provider says about it. Skipped with the reason when
OpenSSH's server is missing, unless GREENPLACE_TESTS_REQUIRE_SSHD=1 (.ci/run sets it).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from greenplace.providers import local_hosts
from greenplace.providers.base import (
    AgentAccess,
    InstanceHandle,
    InstanceState,
    JobLaunch,
    Placement,
)
from greenplace.providers.local import LocalProvider, create
from greenplace.scheduler.exceptions import (
    AuthError,
    CapacityError,
    ConfigError,
    InvalidRequestError,
    TransientError,
)
from tests.redisproc import free_port
from tests.sshdproc import SshServer, started
from tests.unit.test_local_provider import deleted_days_ago, finished, pid_alive
from tests.unit.test_local_provider import launch as local_launch
from tests.waiting import wait_for

REGION = "gpu-box"
PLACEMENT = Placement(cloud="onprem", region=REGION, instance_type="server",
                      accelerator="L4", accelerator_count=1, spot=False)
HERE = Placement(cloud="onprem", region="this-machine", instance_type="server",
                 accelerator="L4", accelerator_count=1, spot=False)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = started(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def remote_root(tmp_path: Path, sshd: SshServer) -> Iterator[Path]:
    """The instance root on the SSH host; nothing a test started there outlives it."""
    root = tmp_path / "remote"
    yield root
    cleanup = ssh_provider(sshd, root, grace_s="0.2")
    for managed in cleanup.list_managed(REGION):
        cleanup.delete(managed.handle)


@pytest.fixture
def remote_agent(sshd: SshServer) -> Iterator[None]:
    """The SSH host has `greenplace` on its PATH (the venv's), so jobs run under the agent."""
    link = sshd.bin / "greenplace"
    link.symlink_to(Path(sys.executable).parent / "greenplace")  # the venv's console script
    try:
        yield
    finally:
        link.unlink()


def ssh_provider(sshd: SshServer, remote_root: Path, **config: str) -> LocalProvider:
    return create({**sshd.settings(REGION), "remote_root": str(remote_root),
                   "root": str(remote_root.parent / "here"), "slots": "2", **config})


def launch(p: LocalProvider, run: str, *, job_id: str = "job1",
           placement: Placement = PLACEMENT, agent: AgentAccess | None = None
           ) -> InstanceHandle:
    return local_launch(p, run, job_id=job_id, placement=placement, agent=agent)


def test_a_job_runs_on_the_ssh_host_with_output_exit_code_and_logs(
        sshd: SshServer, remote_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    real_run = subprocess.run

    def spy(argv: list[str], **kwargs: Any) -> Any:
        ran.append(list(argv))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(local_hosts.subprocess, "run", spy)
    monkeypatch.setenv("GREENPLACE_REDIS_URL", "redis://:service-secret@127.0.0.1:1/0")
    p = ssh_provider(sshd, remote_root)
    token = "tok'en-secret-1"
    handle = launch(p, 'echo out $GREENPLACE_JOB_ID; echo err >&2; pwd; '
                       'echo "$GREENPLACE_API_URL|$GREENPLACE_AGENT_TOKEN"; '
                       "echo redis=${GREENPLACE_REDIS_URL:-unset}; exit 3",
                    agent=AgentAccess(api_url="http://127.0.0.1:9/api", token=token))
    assert handle.extra["ssh"] == sshd.target and handle.instance_id == "job1-a1"
    folder = remote_root / "job1-a1"
    assert handle.extra["dir"] == str(folder)
    status = finished(p, handle)
    assert (status.state, status.exit_code) == (InstanceState.EXITED, 3)
    assert status.detail == ("the job's command exited 3 (run without `greenplace agent`: "
                             "nothing measured)")
    assert (folder / "stdout.log").read_text().splitlines() == [
        "out job1", str(folder / "work"), f"http://127.0.0.1:9/api|{token}", "redis=unset"]
    state = json.loads((folder / "state.json").read_text())
    assert state["agent"] is False and state["argv"] == ["bash", str(folder / "command.sh")]
    assert state["idempotency_key"] == "gp-job1-a1" and state["pid"] > 0
    assert token not in json.dumps(state)  # never written down ...
    assert ran and all(token not in " ".join(argv) for argv in ran)  # ... nor on a command line
    assert all("BatchMode=yes" in argv and "ControlMaster=auto" in argv for argv in ran)
    assert not (remote_root.parent / "here").exists()  # nothing ran on "this machine"
    answer = p.host_for(REGION).call("logs", {"instance_id": "job1-a1", "offsets": {
        "stdout.log": 4, "stderr.log": 0}}, purpose="logs")
    assert base64.b64decode(answer["chunks"]["stdout.log"]).startswith(b"job1\n")
    assert base64.b64decode(answer["chunks"]["stderr.log"]) == b"err\n"


def test_delete_over_ssh_stops_the_job_and_keeps_its_logs(sshd: SshServer,
                                                          remote_root: Path) -> None:
    p = ssh_provider(sshd, remote_root, grace_s="1")
    handle = launch(p, "echo started; sleep 60 & echo $! > child; wait")
    child_file = remote_root / "job1-a1" / "work" / "child"
    wait_for(child_file.exists, timeout_s=20, what="the child")
    child = int(wait_for(lambda: child_file.read_text().strip(), timeout_s=5, what="pid"))
    assert pid_alive(child) and p.status(handle).state is InstanceState.RUNNING
    listed = create(sshd.settings(REGION) | {"remote_root": str(remote_root)}).list_managed(
        REGION)
    assert [(m.job_id, m.attempt, m.status.state, m.handle.extra["ssh"]) for m in listed] == [
        ("job1", 1, InstanceState.RUNNING, sshd.target)]
    assert p.delete(handle) is True
    assert not pid_alive(child)
    assert p.status(handle).state is InstanceState.TERMINATED
    assert (remote_root / "job1-a1" / "stdout.log").read_text() == "started\n"
    assert p.delete(handle) is True and p.list_managed(REGION) == []


def test_a_resubmit_over_ssh_finds_the_folder_instead_of_starting_again(
        sshd: SshServer, remote_root: Path) -> None:
    p = ssh_provider(sshd, remote_root)
    first = launch(p, "sleep 30")
    pid = json.loads((remote_root / "job1-a1" / "state.json").read_text())["pid"]
    again = launch(ssh_provider(sshd, remote_root), "sleep 30")  # a redelivery elsewhere
    assert again == first
    assert json.loads((remote_root / "job1-a1" / "state.json").read_text())["pid"] == pid
    assert len(p.list_managed(REGION)) == 1
    job = JobLaunch(job_id="job1", name="t", run="sleep 30", policy="p", attempt=1)
    with pytest.raises(InvalidRequestError, match="another idempotency key"):
        p.submit(p.prepare(job, PLACEMENT), idempotency_key="some-other-key")


def test_slots_are_counted_on_the_ssh_host(sshd: SshServer, remote_root: Path) -> None:
    """The host's own slot count, under its lock: a job of this machine does not take an
    SSH host's slot, and a job another worker launched there does."""
    p = ssh_provider(sshd, remote_root, **{"slots": "1", "slots.gpu-box": "2"})
    here = launch(p, "sleep 30", job_id="h", placement=HERE)
    assert "ssh" not in here.extra
    other_worker = ssh_provider(sshd, remote_root)
    launch(other_worker, "sleep 30", job_id="a")
    launch(p, "sleep 30", job_id="b")
    with pytest.raises(CapacityError, match=f"all 2 local slot.*of {sshd.target}") as exc:
        launch(p, "true", job_id="c")
    assert (exc.value.code, exc.value.operation) == ("SlotsFull", "submit")
    assert not (remote_root / "c-a1").exists()
    assert p.delete(p.list_managed(REGION)[0].handle) is True
    assert finished(p, launch(p, "true", job_id="c")).exit_code == 0
    assert p.delete(here) is True


@pytest.mark.usefixtures("remote_agent")
def test_under_the_hosts_agent_the_summary_is_read_back(sshd: SshServer,
                                                         remote_root: Path) -> None:
    p = ssh_provider(sshd, remote_root)
    status = finished(p, launch(p, "sleep 0.3; exit 2"))
    folder = remote_root / "job1-a1"
    state = json.loads((folder / "state.json").read_text())
    assert state["agent"] is True and state["argv"][:2] == [str(sshd.bin / "greenplace"),
                                                            "agent"]
    summary = json.loads((folder / "summary.json").read_text())
    assert (status.state, status.exit_code, summary["exit_code"]) == (
        InstanceState.EXITED, 2, 2)
    assert status.measurement is not None and status.measurement["energy_j"] > 0
    assert status.measurement["method"] == summary["method"] and summary["method"]
    assert f"; measured {summary['energy_j'] / 3.6e6:.6g} kWh ({summary['method']})" in (
        status.detail)


def test_an_unreachable_host_fails_a_launch_over_and_is_transient_for_status(
        sshd: SshServer, tmp_path: Path) -> None:
    down = f"{sshd.user}@127.0.0.1:{free_port()}"  # nothing listens there
    p = create({**sshd.settings(REGION), f"host.{REGION}": down,
                "remote_root": str(tmp_path / "remote")})
    with pytest.raises(CapacityError, match="unreachable.*Connection refused.*To fix: "
                                            "greenplace fails over") as exc:
        launch(p, "true")
    assert (exc.value.code, exc.value.operation) == ("HostUnreachable", "submit")
    handle = InstanceHandle(provider="local", cloud="onprem", region=REGION,
                            instance_id="job1-a1", extra={"ssh": down})
    for call in (p.status, p.delete):
        with pytest.raises(TransientError, match="To fix: the queue retries") as transient:
            call(handle)
        assert transient.value.code == "HostUnreachable"
    with pytest.raises(TransientError):
        p.list_managed(REGION)


def test_a_refused_login_is_an_auth_error_that_says_what_to_fix(sshd: SshServer,
                                                                 tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True, capture_output=True)
    p = create({**sshd.settings(REGION, identity=stranger, control="stranger"),
                "remote_root": str(tmp_path / "remote")})
    for call in (p.check_credentials, lambda: launch(p, "true")):
        with pytest.raises(AuthError, match="refused the worker's ssh login.*Permission "
                                            "denied.*To fix: `ssh -o BatchMode=yes") as exc:
            call()
        assert exc.value.code == "SshAuthRefused"
        assert "PRIVATE KEY" not in str(exc.value)
    assert not (tmp_path / "remote").exists()


def test_an_unknown_or_changed_host_key_is_an_auth_error(sshd: SshServer,
                                                         tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    p = create({**sshd.settings(REGION, known_hosts=empty, control="empty"),
                "remote_root": str(tmp_path / "remote")})
    with pytest.raises(AuthError, match="not in the worker's known_hosts.*To fix: check the "
                                        "host's key fingerprint.*ssh-keyscan") as exc:
        launch(p, "true")
    assert exc.value.code == "SshHostKeyUnknown"
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)],
                   check=True, capture_output=True)
    wrong = tmp_path / "known_hosts_wrong"
    key = Path(f"{impostor}.pub").read_text().split()
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {key[0]} {key[1]}\n")
    p = create({**sshd.settings(REGION, known_hosts=wrong, control="wrong"),
                "remote_root": str(tmp_path / "remote")})
    with pytest.raises(AuthError, match="has changed.*ssh-keygen -R") as exc:
        p.status(InstanceHandle(provider="local", cloud="onprem", region=REGION,
                                instance_id="job1-a1", extra={"ssh": sshd.target}))
    assert exc.value.code == "SshHostKeyChanged"


def test_check_credentials_names_each_host_and_how_its_jobs_run(sshd: SshServer,
                                                                remote_root: Path) -> None:
    text = ssh_provider(sshd, remote_root, **{"slots.gpu-box": "4"}).check_credentials()
    assert f"region {REGION}" in text and f"over ssh {sshd.target} in {remote_root}" in text
    assert "4 slot(s), without the agent" in text


@pytest.mark.parametrize("bad", ["-oProxyCommand=touch /tmp/x", "user@host:99999",
                                 "a b", "user@"])
def test_a_host_setting_that_is_not_user_at_host_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=f"host.{REGION} = .* is not an SSH host.*To fix:"):
        create({f"host.{REGION}": bad})


def test_hosts_and_ssh_settings_come_from_the_settings_json(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GREENPLACE_LOCAL_SETTINGS", json.dumps({
        f"host.{REGION}": "gp@gpu-01.lab:2222", f"slots.{REGION}": "8",
        "ssh_options": "-o StrictHostKeyChecking=accept-new -J bastion"}))
    monkeypatch.setenv("GREENPLACE_LOCAL_IDENTITY_FILE", "~/.ssh/gp_ed25519")
    monkeypatch.setenv("GREENPLACE_LOCAL_CONTROL_DIR", str(tmp_path / "cm"))
    host = create({}).host_for(REGION)
    assert isinstance(host, local_hosts.SshHost) and host.label == "gp@gpu-01.lab:2222"
    with pytest.raises(ConfigError, match="too long a path for ssh's control socket"):
        host.argv("true")  # pytest's tmp path + ssh's 40-character %C
    short = Path(tempfile.mkdtemp(prefix="gp-", dir="/tmp"))
    try:
        short.chmod(0o777)
        monkeypatch.setenv("GREENPLACE_LOCAL_CONTROL_DIR", str(short))
        with pytest.raises(ConfigError, match="others may write it.*To fix:"):
            create({}).host_for(REGION).argv("true")
        short.chmod(0o700)
        check_argv(create({}), short)
    finally:
        shutil.rmtree(short)


def check_argv(p: LocalProvider, control: Path) -> None:
    host = p.host_for(REGION)
    assert isinstance(host, local_hosts.SshHost)
    argv = host.argv("python3", "-")
    # the operator's options first (ssh keeps the first value), then greenplace's defaults
    assert argv[1:6] == ["-o", "StrictHostKeyChecking=accept-new", "-J", "bastion", "-i"]
    assert argv[6] == str(Path("~/.ssh/gp_ed25519").expanduser())
    assert argv[-8:] == ["-p", "2222", "-l", "gp", "--", "gpu-01.lab", "python3", "-"]
    assert "BatchMode=yes" in argv and "ServerAliveInterval=15" in argv
    assert (p.slots, p._slots(REGION)) == (1, 8)
    assert f"ControlPath={control}/%C" in argv
    assert p.host_for("elsewhere") is p.this_machine


def _lock_waiters(lock: Path) -> int:
    """How many processes wait for a flock on ``lock`` (``->`` lines of /proc/locks)."""
    inode = os.stat(lock).st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if "->" in line and line.split()[6].endswith(f":{inode}"))


def test_a_launch_waits_for_the_hosts_lock_before_counting_slots(
        sshd: SshServer, remote_root: Path) -> None:
    """The slot count and the idempotency check happen under the root's lock on the host
    (flock there), so workers racing for its last slot cannot both take it."""
    import fcntl
    from concurrent.futures import ThreadPoolExecutor

    p = ssh_provider(sshd, remote_root, **{"slots.gpu-box": "1"})
    remote_root.mkdir(parents=True)
    with (remote_root / ".lock").open("a") as held, ThreadPoolExecutor(2) as pool:
        fcntl.flock(held, fcntl.LOCK_EX)  # another worker's submit, in its critical section
        first = pool.submit(launch, p, "sleep 30", job_id="w1")
        second = pool.submit(launch, p, "sleep 30", job_id="w2")
        wait_for(lambda: _lock_waiters(remote_root / ".lock") == 2, timeout_s=30,
                 what="both submits to wait for the host's lock")
        assert not first.done() and not second.done()
        assert not (remote_root / "w1-a1").exists() and not (remote_root / "w2-a1").exists()
        fcntl.flock(held, fcntl.LOCK_UN)
        outcomes = []
        for future in (first, second):
            try:
                outcomes.append(future.result(timeout=60).instance_id)
            except CapacityError as exc:
                outcomes.append(str(exc.code))
    assert sorted(outcomes) in (["SlotsFull", "w1-a1"], ["SlotsFull", "w2-a1"])
    assert len(p.list_managed(REGION)) == 1


def test_logs_of_a_job_read_through_the_api_find_its_host_by_region(
        sshd: SshServer, remote_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's job view names the region but not the handle's ssh target: `greenplace
    logs` then reads the folder on the host this machine's settings declare for it."""
    import io

    from greenplace.scheduler.commands.logs import JobWhere, _Tails, attempt_source
    from greenplace.scheduler.exceptions import UserInputError

    settings = {**sshd.settings(REGION), "remote_root": str(remote_root)}
    monkeypatch.setenv("GREENPLACE_LOCAL_SETTINGS", json.dumps(settings))
    p = create({})
    finished(p, launch(p, "echo one; echo two >&2"))
    job = JobWhere(job_id="job1", state="SUCCEEDED", attempt=1, provider="local",
                   folder=Path("/nowhere/job1-a1"), host=None, reason=None, region=REGION)
    host, instance_id = attempt_source(job, None)
    assert (host.ssh, instance_id) == (sshd.target, "job1-a1")
    out, err = io.BytesIO(), io.BytesIO()
    _Tails(host, instance_id, {"stdout.log": out, "stderr.log": err}).pump()
    assert (out.getvalue(), err.getvalue()) == (b"one\n", b"two\n")
    gone = JobWhere(job_id="job2", state="SUCCEEDED", attempt=1, provider="local",
                    folder=None, host="vm", reason=None, region=REGION, ssh=sshd.target)
    with pytest.raises(UserInputError, match=f"job2-a1.*is not on {sshd.target}.*To fix:"):
        attempt_source(gone, None)


def test_a_host_without_python3_says_what_to_install(tmp_path: Path) -> None:
    """The folder operations run there with python3: a host whose logins have none (PATH
    of the bare tools only) is an invalid request naming what to install."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in ("bash", "cat", "mv", "sleep"):
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(found)
    server = started(tmp_path / "sshd", path=str(tools))
    try:
        p = create({**server.settings(REGION), "remote_root": str(tmp_path / "remote")})
        with pytest.raises(InvalidRequestError, match="no python3 on the PATH.*To fix: "
                                                      "install python3") as exc:
            p.check_credentials()
        assert exc.value.code == "RemotePythonMissing"
        with pytest.raises(InvalidRequestError, match="no python3"):
            launch(p, "true")
    finally:
        server.stop()


def test_the_ssh_host_removes_its_own_expired_folders_and_logs_say_so(
        sshd: SshServer, remote_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """keep_days travels with each launch: the SSH host sets its expired folders aside
    under its own lock and removes them, judging liveness by its own processes; this
    machine's root is left alone, and `greenplace logs` of a removed job says so."""
    import datetime as dt

    from greenplace.scheduler.commands.logs import JobWhere, attempt_source
    from greenplace.scheduler.exceptions import UserInputError

    here_root = remote_root.parent / "here"
    monkeypatch.setenv("GREENPLACE_LOCAL_SETTINGS", json.dumps({
        **sshd.settings(REGION), "remote_root": str(remote_root), "root": str(here_root),
        "slots": "4", "keep_days": "2"}))
    p = create({})
    for job_id, days in (("old", 3.0), ("young", 1.0)):
        handle = launch(p, "echo out; mkdir -p big && echo data > big/file", job_id=job_id)
        finished(p, handle)
        assert p.delete(handle) is True
        deleted_days_ago(remote_root, f"{job_id}-a1", days)
    here = launch(p, "true", job_id="here", placement=HERE)
    finished(p, here)
    assert p.delete(here) is True
    deleted_days_ago(here_root, "here-a1", 30.0)
    live = launch(p, "sleep 30", job_id="live")
    live_pid = int(wait_for(lambda: (remote_root / "live-a1" / "pid").read_text().strip(),
                            timeout_s=10, what="the live job's pid"))
    deleted_days_ago(remote_root, "live-a1", 30.0)  # marked long ago, but its process runs
    finished(p, launch(p, "true", job_id="next"))  # the launch removes what expired there

    assert {f.name for f in remote_root.iterdir() if not f.name.startswith(".")} == {
        "young-a1", "live-a1", "next-a1"}
    assert list((remote_root / ".removing").iterdir()) == []  # set aside, then emptied
    assert (here_root / "here-a1" / "stdout.log").exists()  # another host's root: untouched
    assert pid_alive(live_pid)

    old = JobWhere(job_id="old", state="SUCCEEDED", attempt=1, provider="local", folder=None,
                   host="gpu-01", reason=None, region=REGION, ssh=sshd.target,
                   deleted_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    with pytest.raises(UserInputError, match=(
            f"logs of job old were removed with its folder \\(old-a1 on {sshd.target}\\).*"
            "2 day\\(s\\) after its instance is deleted.*To fix:")):
        attempt_source(old, None)  # the retention of this machine's settings
    young = dataclasses.replace(old, job_id="young")
    assert attempt_source(young, None)[1] == "young-a1"  # still there: its logs are read

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert p.remove_expired(region=REGION, now=later) == ["young-a1"]
    assert not (remote_root / "young-a1").exists() and pid_alive(live_pid)
    assert p.remove_expired(region=REGION, now=later) == []
    assert p.remove_expired(now=later) == ["here-a1"]  # this machine's, on request
    (remote_root / "live-a1" / "deleted").unlink()  # stop it; then the same rule applies
    assert p.delete(live) is True and not pid_alive(live_pid)
    deleted_days_ago(remote_root, "live-a1", 30.0)
    assert p.remove_expired(region=REGION) == ["live-a1"]
