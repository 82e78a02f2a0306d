"""The HTTP API in-process (FastAPI's TestClient) on a private redis-server: auth and tenancy,
problem+json errors, listing and paging, job pages, reports and agent telemetry.

Jobs are placed and launched by the real flow code (``place_and_dispatch``) on the real
local-sim provider; the service with real worker processes is tests/integration/test_api_service.py.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from greenplace.scheduler.api.app import create_app
from greenplace.scheduler.dispatch import (
    Context,
    agent_access,
    dispatch_job,
    place_and_dispatch,
)
from greenplace.scheduler.settings import Settings
from greenplace.scheduler.store import JobStore, utc_now
from greenplace.scheduler.tokens import Role, Tokens
from tests.redisproc import RedisServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOB = """\
name: {name}
run: python train.py
resources: {{accelerators: {{A100-80GB: 8}}}}
work: {{hours: 10}}
policy: {policy}
"""
YAML = {"Content-Type": "application/yaml"}


class Api:
    """An app on the test's Redis, and tokens of two teams and an admin."""

    def __init__(self, server: RedisServer) -> None:
        server.client().flushall()
        self.settings = Settings(redis_url=server.url, agent_api_url="https://api.example.test")
        self.app = create_app(self.settings)
        self.client = TestClient(self.app)
        self.store: JobStore = self.app.state.store
        tokens = Tokens(self.store)
        self.tokens = tokens
        self.alpha = tokens.create(team="alpha", role=Role.MEMBER, name="a")[1]
        self.beta = tokens.create(team="beta", role=Role.MEMBER, name="b")[1]
        self.admin = tokens.create(team="ops", role=Role.ADMIN, name="root")[1]

    def call(self, method: str, path: str, token: str | None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def submit(self, token: str, *names: str, policy: str = "greenest") -> list[str]:
        body = "jobs:\n" + "".join(
            "  - " + JOB.format(name=n, policy=policy).replace("\n", "\n    ").rstrip() + "\n"
            for n in names)
        response = self.call("POST", "/v1/jobs", token, content=body, headers=YAML)
        assert response.status_code == 201, response.text
        return [j["job_id"] for j in response.json()["jobs"]]

    def launch(self, job_id: str, settings: Settings | None = None) -> None:
        """Place and launch the job as the worker's tasks would, follow-ups included."""
        ctx = Context.build(settings or self.settings, self.store)
        outcome = place_and_dispatch(ctx, job_id, now=utc_now())
        while outcome.followups:
            (step,) = outcome.followups
            assert step.task == "dispatch", step
            outcome = dispatch_job(ctx, job_id, int(step.args[1]), now=utc_now())


@pytest.fixture
def api(server: RedisServer) -> Iterator[Api]:
    yield Api(server)


def _routes(api: Api) -> list[tuple[str, str]]:
    out = []
    for route in api.app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:  # "/": the login page
            for method in route.methods:
                out.append((method, route.path.replace("{job_id}", "0123456789abcdef")))
    return out


def test_every_route_but_health_needs_a_valid_token(api: Api) -> None:
    routes = _routes(api)
    assert len(routes) >= 14
    for method, path in routes:
        response = api.call(method, path, None)
        if path in ("/healthz", "/readyz"):
            assert response.status_code == 200, path
            continue
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert "needs a token" in response.json()["detail"]
        bad = api.call(method, path, "gpt_" + "x" * 43)
        assert bad.status_code == 401 and "unknown or was revoked" in bad.json()["detail"]


def test_a_revoked_token_stops_at_once(api: Api) -> None:
    info, token = api.tokens.create(team="alpha", role=Role.MEMBER)
    assert api.call("GET", "/v1/jobs", token).status_code == 200
    assert api.tokens.revoke(info.token_id)
    assert api.call("GET", "/v1/jobs", token).status_code == 401


def test_a_member_sees_and_cancels_only_its_teams_jobs(api: Api) -> None:
    (mine,) = api.submit(api.alpha, "alpha-job")
    (theirs,) = api.submit(api.beta, "beta-job")
    missing = "fedcba9876543210"
    for path in (f"/v1/jobs/{theirs}", f"/v1/jobs/{theirs}/events"):
        other = api.call("GET", path, api.alpha)
        absent = api.call("GET", path.replace(theirs, missing), api.alpha)
        assert other.status_code == absent.status_code == 404
        # Nothing tells another team's job from no job: the texts differ only by the id.
        assert other.json()["detail"].replace(theirs, "ID") == \
            absent.json()["detail"].replace(missing, "ID")
    assert api.call("POST", f"/v1/jobs/{theirs}/cancel", api.alpha).status_code == 404
    assert api.store.get(theirs).state == "QUEUED"
    listed = api.call("GET", "/v1/jobs", api.alpha).json()["jobs"]
    assert [j["job_id"] for j in listed] == [mine]
    assert api.call("GET", "/v1/jobs?team=beta", api.alpha).json()["jobs"] == []
    every = api.call("GET", "/v1/jobs", api.admin).json()["jobs"]
    assert {j["job_id"]: j["team"] for j in every} == {mine: "alpha", theirs: "beta"}
    cancelled = api.call("POST", f"/v1/jobs/{mine}/cancel", api.alpha)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    again = api.call("POST", f"/v1/jobs/{mine}/cancel", api.alpha)
    assert again.status_code == 409 and "already CANCELLED" in again.json()["detail"]


def test_a_member_cannot_submit_for_another_team_but_an_admin_can(api: Api) -> None:
    body = JOB.format(name="x", policy="greenest")
    refused = api.call("POST", "/v1/jobs?team=beta", api.alpha, content=body, headers=YAML)
    assert refused.status_code == 422 and "belongs to team 'alpha'" in refused.json()["detail"]
    done = api.call("POST", "/v1/jobs?team=beta", api.admin, content=body, headers=YAML)
    assert done.status_code == 201 and done.json()["jobs"][0]["team"] == "beta"
    assert api.store.get(done.json()["jobs"][0]["job_id"]).team == "beta"


def _cli_error(path: Path) -> str:
    env = {**os.environ, "GREENPLACE_REDIS_URL": "redis://127.0.0.1:9/0"}
    env.pop("GREENPLACE_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "greenplace", "submit", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    return done.stderr.strip().removeprefix("error: ")


@pytest.mark.parametrize("text", [
    "jobs:\n  - name: ok\n    run: x\n    resources: {accelerators: {A100-80GB: 1}}\n"
    "    work: {hours: 1}\n  - name: bad\n    run: x\n    resources: {accelerators: "
    "{A100-80GB: 1}}\n    work: {hours: -1}\n",
    "jobs: [\n",
    "name: j\nrun: x\nresources: {accelerators: {H1000: 1}}\nwork: {hours: 1}\n",
    "name: j\nrun: x\nresources: {accelerators: {A100-80GB: 1}}\nwork: {hours: 1}\ncolour: red\n",
])
def test_a_bad_jobs_file_gets_the_clis_message_and_writes_nothing(
        api: Api, tmp_path: Path, text: str) -> None:
    path = tmp_path / "request-body.yaml"
    path.write_text(text)
    response = api.call("POST", "/v1/jobs", api.alpha, content=text, headers=YAML)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["title"] == "Unprocessable content" and problem["status"] == 422
    assert problem["detail"] == _cli_error(path).replace(str(path), "request-body.yaml")
    assert api.store.job_ids() == []


def test_the_api_reads_no_policy_files(api: Api, tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    job = JOB.format(name="j", policy=str(tmp_path / "mine.yaml"))
    own = api.call("POST", "/v1/jobs", api.alpha, content=job, headers=YAML)
    assert own.status_code == 422 and "the API reads no policy files" in own.json()["detail"]
    query = api.call("POST", f"/v1/jobs?policy={tmp_path}/mine.yaml", api.alpha,
                     content=JOB.format(name="j", policy="greenest"), headers=YAML)
    assert query.status_code == 422 and "query parameter policy" in query.json()["detail"]
    assert api.store.job_ids() == []


def test_media_type_and_size_are_checked_before_parsing(api: Api,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    body = JOB.format(name="j", policy="greenest")
    wrong = api.call("POST", "/v1/jobs", api.alpha, content=body,
                     headers={"Content-Type": "application/xml"})
    assert wrong.status_code == 415 and "application/yaml" in wrong.json()["detail"]
    monkeypatch.setenv("GREENPLACE_MAX_FILE_BYTES", "64")
    big = api.call("POST", "/v1/jobs", api.alpha, content=body, headers=YAML)
    assert big.status_code == 413 and "GREENPLACE_MAX_FILE_BYTES" in big.json()["detail"]
    as_json = api.call("POST", "/v1/dry-run", api.alpha, content=b'{"jobs": [}',
                       headers={"Content-Type": "application/json"})
    assert as_json.status_code == 422 and "broken JSON" in as_json.json()["detail"]


def test_listing_pages_newest_first_and_filters(api: Api) -> None:
    first = api.submit(api.alpha, "a-1", "a-2", "b-3")
    second = api.submit(api.alpha, "a-4", "b-5", policy="cheapest")
    newest_first = list(reversed(first + second))
    seen: list[str] = []
    cursor = None
    while True:
        page = api.call("GET", "/v1/jobs", api.alpha,
                        params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["jobs"]) <= 2
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first
    by_name = api.call("GET", "/v1/jobs?name=B-", api.alpha).json()["jobs"]
    assert [j["name"] for j in by_name] == ["b-5", "b-3"]
    by_policy = api.call("GET", "/v1/jobs?policy=cheapest", api.alpha).json()["jobs"]
    assert [j["name"] for j in by_policy] == ["b-5", "a-4"]
    api.call("POST", f"/v1/jobs/{first[0]}/cancel", api.alpha)
    cancelled = api.call("GET", "/v1/jobs?state=CANCELLED", api.alpha).json()["jobs"]
    assert [j["job_id"] for j in cancelled] == [first[0]]
    assert api.call("GET", "/v1/jobs?since=2999-01-01", api.alpha).json()["jobs"] == []
    assert len(api.call("GET", "/v1/jobs?since=2000-01-01", api.alpha).json()["jobs"]) == 5
    bad = api.call("GET", "/v1/jobs?cursor=not-ours", api.alpha)
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]
    assert api.call("GET", "/v1/jobs?since=yesterday", api.alpha).status_code == 422
    assert api.call("GET", "/v1/jobs?state=LOST", api.alpha).status_code == 422


def test_a_job_page_explains_its_decision(api: Api) -> None:
    (job_id,) = api.submit(api.alpha, "explained")
    api.launch(job_id)
    job = api.call("GET", f"/v1/jobs/{job_id}", api.alpha).json()
    assert job["state"] in ("DISPATCHING", "RUNNING")
    decision, candidates = job["decision"], job["candidates"]
    chosen = candidates[0]
    assert (chosen["cloud"], chosen["region"]) == (decision["cloud"], decision["region"])
    assert chosen["rejected_by"] is None and candidates[-1]["rejected_by"] is not None
    assert {"norm_carbon", "norm_cost", "norm_time", "score", "co2e_kg"} <= set(chosen)
    assert job["co2e_kg_estimated"] == chosen["co2e_kg"] == decision["co2e_kg"]
    assert job["savings_co2e_kg"] == pytest.approx(
        decision["baseline"]["co2e_kg"] - decision["co2e_kg"], abs=1e-4)
    events = api.call("GET", f"/v1/jobs/{job_id}/events", api.alpha).json()["events"]
    assert [e["to"] for e in events][:2] == ["QUEUED", "PLACED"]


def test_after_a_failover_the_figures_are_the_fallbacks(api: Api, tmp_path: Path) -> None:
    (job_id,) = api.submit(api.alpha, "failed-over")
    probe = api.submit(api.alpha, "probe")[0]
    api.launch(probe)
    first = api.store.get(probe).placement
    assert first is not None
    sim = tmp_path / "sim.yaml"  # no capacity for the first choice: the job fails over
    sim.write_text(f"launch_latency_s: 0\ncapacity: {{'{first.cloud}:{first.region}:"
                   f"{first.instance_type}': 0}}\n")
    api.launch(job_id, dataclasses.replace(api.settings, sim_config=sim))
    job = api.call("GET", f"/v1/jobs/{job_id}", api.alpha).json()
    assert job["attempts"] == 2 and job["attempt_reasons"][0]["error"] == "CapacityError"
    fallback = next(c for c in job["candidates"]
                    if (c["cloud"], c["region"], c["instance_type"]) ==
                    (job["cloud"], job["region"], job["instance_type"]))
    assert (job["region"], job["instance_type"]) != (first.region, first.instance_type)
    assert job["co2e_kg_estimated"] == fallback["co2e_kg"] != job["decision"]["co2e_kg"]
    assert job["savings_co2e_kg"] == pytest.approx(
        job["baseline_co2e_kg"] - fallback["co2e_kg"], abs=1e-4)


def test_the_report_adds_up_launched_jobs_only(api: Api) -> None:
    launched = api.submit(api.alpha, "r-1", "r-2") + api.submit(api.beta, "r-3")
    api.submit(api.alpha, "never-launched")
    for job_id in launched:
        api.launch(job_id)
    views = {j["job_id"]: j for j in api.call("GET", "/v1/jobs", api.admin).json()["jobs"]}
    everyone = api.call("GET", "/v1/report?group_by=team", api.admin).json()
    assert everyone["totals"]["jobs"] == 3
    assert everyone["totals"]["co2e_kg_estimated"] == pytest.approx(
        sum(views[i]["co2e_kg_estimated"] for i in launched), rel=1e-6)
    assert everyone["totals"]["savings_co2e_kg"] == pytest.approx(
        sum(views[i]["baseline_co2e_kg"] - views[i]["co2e_kg_estimated"] for i in launched),
        rel=1e-6)
    assert [(g["key"], g["jobs"]) for g in everyone["groups"]] == [("alpha", 2), ("beta", 1)]
    # the savings, split into machine, map and mechanization, add up (levers exact per job)
    by_lever = everyone["totals"]["saved_kg_by_lever"]
    assert sum(by_lever.values()) == pytest.approx(everyone["totals"]["savings_co2e_kg"],
                                                   abs=1e-3)
    for row in everyone["jobs"]:
        parts = sum(v["saved_kg"] for v in row["levers"].values())
        assert parts == pytest.approx(row["savings_co2e_kg"], abs=1e-3)
    mine = api.call("GET", "/v1/report", api.alpha).json()
    assert sorted(j["job_id"] for j in mine["jobs"]) == sorted(launched[:2])
    by_day = api.call("GET", "/v1/report?group_by=day", api.admin).json()["groups"]
    assert [g["key"] for g in by_day] == [utc_now().date().isoformat()]
    assert api.call("GET", "/v1/report?group_by=week", api.admin).status_code == 422
    assert everyone["totals"]["co2e_kg_measured"] is None  # no agent reported: not zero


def test_an_agent_token_posts_only_its_jobs_telemetry(api: Api) -> None:
    job_id, other = api.submit(api.alpha, "measured", "other")
    api.launch(job_id)
    ctx = Context.build(api.settings, api.store)
    record = api.store.get(job_id)
    access = agent_access(ctx, record, attempt=record.attempt)
    assert access is not None and access.api_url == "https://api.example.test"
    # A retried launch of the attempt gets the very token the launch already handed out.
    assert agent_access(ctx, record, attempt=record.attempt) == access
    agent = access.token
    assert api.call("GET", "/v1/jobs", agent).status_code == 403
    assert api.call("GET", f"/v1/jobs/{job_id}", agent).status_code == 403
    beat = {"kind": "heartbeat"}
    assert api.call("POST", f"/v1/jobs/{other}/telemetry", agent, json=beat).status_code == 403
    assert api.call("POST", f"/v1/jobs/{job_id}/telemetry", api.alpha,
                    json=beat).status_code == 403
    for kwh in (1.0, 3.0, 2.0):  # cumulative; an old or resent report never lowers it
        sample = {"kind": "energy", "samples": [{"at": "2026-12-01T00:00:00Z",
                                                 "energy_j": kwh * 3.6e6}]}
        assert api.call("POST", f"/v1/jobs/{job_id}/telemetry", agent,
                        json=sample).status_code == 202
    assert api.call("POST", f"/v1/jobs/{job_id}/telemetry", agent,
                    json={"kind": "exit"}).status_code == 422
    done = api.call("POST", f"/v1/jobs/{job_id}/telemetry", agent,
                    json={"kind": "exit", "exit_code": 3})
    assert done.status_code == 202
    job = api.call("GET", f"/v1/jobs/{job_id}", api.alpha).json()
    assert job["energy_kwh_measured"] == 3.0 and job["agent_exit_code"] == 3
    region = ctx.catalog.region(f"{job['cloud']}:{job['region']}")
    assert job["co2e_kg_measured"] == pytest.approx(
        3.0 * region.pue * job["decision"]["intensity_g_per_kwh"] / 1000, rel=1e-6)
    events = api.call("GET", f"/v1/jobs/{job_id}/events", api.alpha).json()["events"]
    assert events[-1]["message"] == "the job's agent reported exit code 3"
    totals = api.call("GET", "/v1/report", api.alpha).json()["totals"]
    assert (totals["jobs"], totals["jobs_measured"], totals["energy_kwh_measured"]) == (1, 1, 3.0)
    # the estimate against the measurement, both as facility energy (PUE applied)
    assert job["estimate_error_pct"] == pytest.approx(
        100 * (job["energy_kwh_estimated"] - 3.0 * region.pue) / (3.0 * region.pue), abs=0.01)


def test_no_token_is_kept_or_shown_after_creation(api: Api) -> None:
    (job_id,) = api.submit(api.alpha, "secretive")
    api.launch(job_id)  # the launch mints an agent token (agent_api_url is set)
    agent = Tokens(api.store).mint_agent(job_id=job_id, attempt=2, team="alpha")
    client = api.store.client
    dump = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == "string":
            dump.append(str(client.get(key)))
        elif kind == "hash":
            dump.append(str(client.hgetall(key)))
        elif kind == "list":
            dump.append(str(client.lrange(key, 0, -1)))
    stored = "\n".join(dump)
    agents = [client.hgetall(k) for k in client.scan_iter("gp:token:*")]
    # The launch minted one for the boot script, and the test one more: both kept as hashes.
    assert [a["job_id"] for a in agents if a["role"] == "agent"] == [job_id, job_id]
    for token in (api.alpha, api.beta, api.admin, agent):
        assert token not in stored
        assert token[4:20] not in stored
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", "/v1/jobs", "/v1/report"):
        text = api.call("GET", path, api.admin).text
        assert "gpt_" not in text, path


def test_readyz_says_when_redis_is_gone(tmp_path: Path) -> None:
    dead = Settings(redis_url="redis://127.0.0.1:9/0")
    client = TestClient(create_app(dead))
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["redis"] is False


def test_regions_and_offers_are_the_clis_rows(api: Api) -> None:
    from greenplace.scheduler.catalog import load_catalog
    from greenplace.scheduler.commands.placement import region_rows

    regions = api.call("GET", "/v1/regions?sort=cfe", api.alpha).json()["regions"]
    assert regions == region_rows(load_catalog(), cloud=None, accelerator=None, sort="cfe")
    offers = api.call("GET", "/v1/offers?cloud=gcp&accelerator=H100", api.alpha).json()
    assert offers["offers"] and {o["cloud"] for o in offers["offers"]} == {"gcp"}
    unknown = api.call("GET", "/v1/offers?accelerator=H1000", api.alpha)
    assert unknown.status_code == 422 and "Did you mean" in unknown.json()["detail"]


def test_metrics_need_a_token_and_count_the_fleet(api: Api) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    ids = api.submit(api.alpha, "m-1", "m-2")
    api.launch(ids[0])
    response = api.call("GET", "/metrics", api.alpha)
    assert response.status_code == 200 and response.headers["content-type"].startswith(
        "text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text)
               for s in family.samples}
    assert samples[("greenplace_jobs", (("state", "QUEUED"),))] == 1
    launched = api.store.get(ids[0]).state
    assert samples[("greenplace_jobs", (("state", str(launched)),))] == 1
    assert samples[("greenplace_placement_duration_seconds_count", ())] == 1
    assert samples[("greenplace_jobs_placed_total", ())] == 1


def test_an_agents_gpu_summary_teaches_calibration(api: Api) -> None:
    from greenplace.scheduler import calibration

    (job_id,) = api.submit(api.alpha, "calibrating")
    api.launch(job_id)
    record = api.store.get(job_id)
    access = agent_access(Context.build(api.settings, api.store), record,
                          attempt=record.attempt)
    assert access is not None and record.placement is not None
    count = record.placement.accelerator_count
    gpus = [{"name": f"gpu{n}", "kind": "gpu", "method": "nvml-energy-counter",
             "energy_j": 400.0 * 7200} for n in range(count)]  # 400 W each for 2 h
    summary = {"job_id": job_id, "exit_code": 0, "started_at": "2026-12-01T00:00:00Z",
               "ended_at": "2026-12-01T02:00:00Z", "wall_s": 7200.0,
               "energy_j": 400.0 * 7200 * count, "method": "nvml", "devices": gpus,
               "overhead_cpu_s": 1.5}
    done = api.call("POST", f"/v1/jobs/{job_id}/telemetry", access.token,
                    json={"kind": "exit", "exit_code": 0, "summary": summary})
    assert done.status_code == 202, done.text
    assert calibration.runs(api.store) == {(record.placement.accelerator, None): [400.0]}
    job = api.call("GET", f"/v1/jobs/{job_id}", api.alpha).json()
    assert job["measurement_method"] == "nvml" and job["measurement"]["wall_s"] == 7200.0
    assert job["energy_kwh_measured"] == pytest.approx(400.0 * 2 * count / 1000)
