"""The web dashboard in a real browser against the real service.

A private redis-server, a real worker and `greenplace api` serve the dashboard; Debian's
Chromium, driven by Playwright, logs in with a token made by `greenplace admin token create`,
watches a job submitted through POST /v1/jobs appear in the jobs table, opens it, reads its
decision, candidates and events, cancels it, and visits the regions and savings pages.
Screenshots go to $GREENPLACE_ARTIFACTS_DIR (default: test-artifacts/ at the repo root).

Design choice: Playwright drives the system Chromium (/usr/bin/chromium); `playwright
install` is never run (no download at test time). Without Chromium the test skips, unless
GREENPLACE_TESTS_REQUIRE_CHROMIUM is set (CI sets it), where a missing browser fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from greenplace.scheduler.store import JobState
from tests.integration.conftest import REPO, Proc, Service, training_job, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TEAM = "dash-team"
TIMEOUT_MS = 60_000  # generous: the suite runs on loaded 2-core machines


def _need_browser() -> None:
    """Skip (fail where CI requires Chromium) without Chromium or the playwright package."""
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        why = f"the dashboard test needs {' and '.join(missing)}"
        if os.environ.get("GREENPLACE_TESTS_REQUIRE_CHROMIUM"):
            pytest.fail(f"GREENPLACE_TESTS_REQUIRE_CHROMIUM is set but {why}", pytrace=False)
        pytest.skip(why)


def artifacts_dir() -> Path:
    path = Path(os.environ.get("GREENPLACE_ARTIFACTS_DIR") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def create_token(service: Service) -> str:
    """A member token of TEAM, read from what `greenplace admin token create` prints."""
    result = service.cli("admin", "token", "create", "--team", TEAM, "--name", "dashboard-test",
                         "--output", "json")
    assert result.returncode == 0, result.stderr
    token = json.loads(result.stdout)["token"]
    assert isinstance(token, str) and len(token) >= 20
    return token


class Api:
    """`greenplace api` on a free port, in the service's process list (stopped with it), and
    a member token of TEAM for it."""

    def __init__(self, service: Service) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.proc = Proc([sys.executable, "-m", "greenplace", "api", "--host", "127.0.0.1",
                          "--port", str(self.port)], env=service.env,
                         log=service.tmp / "api.log")
        service.procs.append(self.proc)
        wait_for(self._up, timeout_s=90, what="the API to answer /healthz")
        self.token = create_token(service)

    def _up(self) -> bool:
        if self.proc.popen.poll() is not None:
            raise AssertionError(f"greenplace api exited:\n{self.proc.output()[-3000:]}")
        try:
            return httpx.get(self.base + "healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str) -> Any:
        response = httpx.get(self.base + path, timeout=30,
                             headers={"Authorization": f"Bearer {self.token}"})
        assert response.status_code == 200, response.text
        return response.json()

    def submit(self, *jobs: dict[str, Any]) -> list[str]:
        """POST /v1/jobs with a YAML jobs file; the new job ids."""
        response = httpx.post(self.base + "v1/jobs", content=yaml.safe_dump({"jobs": list(jobs)}),
                              timeout=60, headers={"Authorization": f"Bearer {self.token}",
                                                   "Content-Type": "application/yaml"})
        assert response.status_code == 201, response.text
        return [row["job_id"] for row in response.json()["jobs"]]


@pytest.fixture
def browser() -> Iterator[Any]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_dashboard(browser: Any, api: Api) -> tuple[Any, list[str]]:
    """A page on the dashboard, signed in with the API's token, and its script errors (a list
    that grows while the page runs)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Console errors too (a Content-Security-Policy refusal shows only there), but not the
    # browser's line for each 401 the login tests provoke on purpose.
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and not
            msg.text.startswith("Failed to load resource: the server responded with a "
                                "status of 401") else None)
    page.goto(api.base)
    expect(page.get_by_test_id("login-form")).to_be_visible()
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("refused")
    page.get_by_label("API token").fill(api.token)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("nav-jobs")).to_be_visible()
    return page, errors


def test_dashboard_shows_a_submitted_job_its_decision_and_candidates(
        browser: Any, service: Service) -> None:
    from playwright.sync_api import expect

    service.start_worker(concurrency=1)
    api = Api(service)
    token = api.token
    out = artifacts_dir()

    # The dashboard and its assets are served without a token; the API is not.
    assert httpx.get(api.base).status_code == 200
    assert httpx.get(api.base + "static/app.js").status_code == 200
    assert httpx.get(api.base + "v1/jobs").status_code == 401

    page, page_errors = open_dashboard(browser, api)
    assert token not in page.url
    assert page.evaluate("() => sessionStorage.getItem('greenplace.token')") == token
    assert page.evaluate("() => localStorage.length") == 0

    # A job submitted through the API appears in the live table (polled every 3 s).
    [job_id] = api.submit(training_job("dash-finetune"))
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row).to_contain_text("dash-finetune")
    expect(row).to_contain_text(TEAM)
    # Once placed and launched (local-sim), the row shows where it runs and the savings. No
    # beat runs, so nothing moves the job past RUNNING.
    record = service.wait_states([job_id], {JobState.RUNNING})[0]
    placement = record.placement
    assert placement is not None
    expect(row).to_contain_text(f"{placement.cloud}:{placement.region}")
    expect(row).to_contain_text(placement.instance_type)
    expect(row.get_by_test_id("savings")).to_contain_text("kg")
    page.screenshot(path=str(out / "dashboard-jobs.png"), full_page=True)

    # The filters go to the API: a state that matches nothing empties the table.
    page.get_by_test_id("filter-state").select_option("FAILED")
    expect(page.get_by_test_id("jobs-empty")).to_be_visible()
    assert "state=FAILED" in page.url
    page.get_by_test_id("filter-clear").click()
    expect(row).to_be_visible()
    assert "state=" not in page.url
    page.get_by_test_id("filter-name").fill("finetune")  # a part of the name, any case
    page.get_by_test_id("filter-name").press("Enter")
    expect(row).to_be_visible()
    assert "name=finetune" in page.url

    # The job page: the decision against its baseline, the candidates, the events.
    row.get_by_test_id("job-link").click()
    expect(page.get_by_test_id("job-name")).to_have_text("dash-finetune")
    compare = page.get_by_test_id("decision-compare")
    expect(compare).to_contain_text(f"{placement.cloud}:{placement.region}")
    expect(page.get_by_test_id("decision-savings")).to_contain_text("kg CO₂e")
    candidates = page.get_by_test_id("candidate-row")
    expect(candidates.first).to_be_visible()
    details = api.get(f"v1/jobs/{job_id}")
    assert candidates.count() == len(details["candidates"]) > 0
    first = details["candidates"][0]
    expect(candidates.first).to_contain_text(f"{first['cloud']}:{first['region']}")
    expect(candidates.first).to_contain_text("chosen")
    rejected = [c for c in details["candidates"] if c["rejected_by"]]
    shown_rejected = page.locator('[data-testid="candidate-row"][data-rejected="true"]')
    assert shown_rejected.count() == len(rejected)
    if rejected:
        expect(shown_rejected.first).to_contain_text(rejected[0]["rejected_by"]["filter"])
    events = page.get_by_test_id("event")
    expect(events.first).to_contain_text("QUEUED")
    expect(page.get_by_test_id("timeline")).to_contain_text("RUNNING")
    page.screenshot(path=str(out / "dashboard-job.png"), full_page=True)

    # Cancel from the page: the state turns final and the button goes away.
    cancel = page.get_by_test_id("cancel-job")
    expect(cancel).to_be_visible()
    cancel.click()
    expect(page.locator(".page-head").get_by_test_id("state")).to_have_text("CANCELLED")
    expect(cancel).to_be_hidden()
    expect(page.get_by_test_id("notice")).to_be_visible()
    assert service.records([job_id])[0].state == JobState.CANCELLED

    # Regions: one bar and one table row per catalog region.
    page.get_by_test_id("nav-regions").click()
    expect(page.get_by_test_id("regions-chart")).to_be_visible()
    regions = api.get("v1/regions")["regions"]
    assert page.get_by_test_id("chart-bar").count() == len(regions) > 0
    assert page.get_by_test_id("region-row").count() == len(regions)
    page.screenshot(path=str(out / "dashboard-regions.png"))

    # Savings: the launched job's day, its savings and the totals.
    page.get_by_test_id("nav-savings").click()
    expect(page.get_by_test_id("savings-chart")).to_be_visible()
    levers = page.get_by_test_id("levers-chart")
    expect(levers).to_be_visible()
    expect(levers.get_by_test_id("chart-bar")).to_have_count(3)
    expect(page.get_by_test_id("total-jobs").locator(".stat-value")).to_have_text("1")
    expect(page.get_by_test_id("savings-row")).to_have_count(1)
    page.screenshot(path=str(out / "dashboard-savings.png"), full_page=True)

    # Logging out forgets the token; a token revoked or unknown sends the page back to login.
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('greenplace.token')") is None
    page.evaluate("() => sessionStorage.setItem('greenplace.token', 'stale-token')")
    page.goto(api.base + "#/jobs")
    expect(page.get_by_test_id("login-error")).to_contain_text("401")
    assert page_errors == []


def test_dashboard_explains_an_unschedulable_job_and_shows_user_text_as_text(
        browser: Any, service: Service) -> None:
    from playwright.sync_api import expect

    service.start_worker(concurrency=1)
    api = Api(service)
    markup = "<img src=x onerror=window.__injected=1>"  # no quote: the spec is shown as JSON
    # No offer carries 3 x A100: every candidate is rejected by the accelerator count filter.
    no_fit = {"resources": {"accelerators": {"A100": 3}}, "work": {"hours": 1}}
    ids = api.submit({"name": "no-fit", "run": f"python train.py --note '{markup}'", **no_fit},
                     *({"name": f"no-fit-{n}", "run": "python train.py", **no_fit} for n in (2, 3)))
    job_id = ids[0]
    service.wait_states(ids, {JobState.UNSCHEDULABLE})
    details = api.get(f"v1/jobs/{job_id}")
    assert details["candidates"] and all(c["rejected_by"] for c in details["candidates"])

    page, page_errors = open_dashboard(browser, api)
    page.goto(f"{api.base}#/jobs/{job_id}")
    expect(page.get_by_test_id("job-name")).to_have_text("no-fit")
    expect(page.locator(".page-head").get_by_test_id("state")).to_have_text("UNSCHEDULABLE")
    expect(page.get_by_test_id("cancel-job")).to_be_hidden()  # a final state
    expect(page.get_by_test_id("decision-reasons")).to_contain_text("accelerator_count")
    expect(page.get_by_test_id("decision-compare")).to_have_count(0)
    rows = page.get_by_test_id("candidate-row")
    expect(rows).to_have_count(len(details["candidates"]))
    expect(page.locator('[data-testid="candidate-row"][data-rejected="false"]')).to_have_count(0)
    expect(rows.first.get_by_test_id("rejection")).to_contain_text("asks for 3")
    # Hiding the rejected candidates leaves none visible.
    page.get_by_test_id("show-rejected").uncheck()
    expect(rows.first).to_be_hidden()

    # The job's command is shown as text: the markup in it is neither parsed nor run.
    page.get_by_test_id("job-spec").locator("summary").click()
    expect(page.get_by_test_id("job-spec")).to_contain_text(markup)
    assert page.get_by_test_id("job-spec").locator("img").count() == 0
    assert page.evaluate("() => window.__injected") is None
    page.screenshot(path=str(artifacts_dir() / "dashboard-unschedulable.png"), full_page=True)

    # Pages of two jobs, through the API's next_cursor: 2 rows, then the last 1, then back.
    page.goto(f"{api.base}#/jobs?limit=2")
    rows = page.get_by_test_id("job-row")
    expect(rows).to_have_count(2)
    first_page = {rows.nth(i).get_attribute("data-job-id") for i in range(2)}
    expect(page.get_by_test_id("page-newer")).to_be_disabled()
    page.get_by_test_id("page-older").click()
    expect(rows).to_have_count(1)
    assert first_page | {rows.first.get_attribute("data-job-id")} == set(ids)
    expect(page.get_by_test_id("page-older")).to_be_disabled()
    page.get_by_test_id("page-newer").click()
    expect(rows).to_have_count(2)
    assert page_errors == []


def test_dashboard_draws_a_measured_runs_intensity_and_the_estimate_scatter(
        browser: Any, service: Service) -> None:
    """A measured job's page draws the grid intensity of its run window against its
    estimate's intensity; the savings page puts each measured job on the estimate-against-
    measurement scatter. The store is given what the agent's report and attribution write
    (both tested in tests/unit/test_attribution.py and test_agent_api.py)."""
    import datetime as dt

    from playwright.sync_api import expect

    from greenplace.scheduler.store import RunHour

    service.start_worker(concurrency=1)
    api = Api(service)
    measured_id, unmeasured_id = api.submit(training_job("dash-measured"),
                                            training_job("dash-unmeasured"))
    service.wait_states([measured_id, unmeasured_id], {JobState.RUNNING})
    store = service.store()
    estimated_kwh = api.get(f"v1/jobs/{measured_id}")["energy_kwh_estimated"]
    first = dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC)
    start, end = first.replace(minute=30), first + dt.timedelta(hours=2, minutes=15)
    assert store.record_telemetry(
        measured_id, at=end, exit_code=0, energy_kwh=estimated_kwh * 0.5,
        measurement={"method": "nvml", "started_at": start.isoformat(),
                     "ended_at": end.isoformat()})
    assert store.record_run_intensity(
        measured_id, g_per_kwh=160.0, basis="hourly grid average over the run from "
        "electricitymaps (2 hour(s), 1 without a value left out)",
        hours=[RunHour(start=first, seconds=1800.0, g_per_kwh=100.0, source="electricitymaps"),
               RunHour(start=first + dt.timedelta(hours=1), seconds=3600.0, g_per_kwh=None,
                       source=None),
               RunHour(start=first + dt.timedelta(hours=2), seconds=900.0, g_per_kwh=280.0,
                       source="electricitymaps")])
    job = api.get(f"v1/jobs/{measured_id}")
    assert [h["g_per_kwh"] for h in job["run_intensity_series"]] == [100.0, None, 280.0]
    assert api.get(f"v1/jobs/{unmeasured_id}")["run_intensity_series"] is None

    page, page_errors = open_dashboard(browser, api)
    page.goto(f"{api.base}#/jobs/{measured_id}")
    chart = page.get_by_test_id("run-intensity-chart")
    expect(chart).to_be_visible()
    expect(chart.get_by_test_id("intensity-hour")).to_have_count(2)
    expect(chart.get_by_test_id("intensity-gap")).to_have_count(1)
    expect(chart.get_by_test_id("intensity-hour").last).to_contain_text("280 g/kWh")
    reference = chart.get_by_test_id("intensity-estimate")
    expect(reference).to_have_count(1)
    estimate = job["intensity_g_per_kwh_estimated"]
    expect(page.get_by_test_id("run-intensity")).to_contain_text(f"{estimate:,.0f} g/kWh")
    # the dashed line sits at the estimate's g/kWh on the bars' scale
    bars = chart.get_by_test_id("intensity-hour").locator("rect")
    tall_y, tall_h = (float(bars.last.get_attribute(a) or "nan") for a in ("y", "height"))
    zero_y = tall_y + tall_h
    line_y = float(reference.get_attribute("y1") or "nan")
    assert (zero_y - line_y) / tall_h == pytest.approx(estimate / 280.0, rel=0.02)
    page.screenshot(path=str(artifacts_dir() / "dashboard-job-intensity.png"), full_page=True)
    # a job without a series has no such chart
    page.goto(f"{api.base}#/jobs/{unmeasured_id}")
    expect(page.get_by_test_id("job-name")).to_have_text("dash-unmeasured")
    expect(page.get_by_test_id("decision")).to_be_visible()
    expect(page.get_by_test_id("run-intensity")).to_have_count(0)

    # The savings page: one point, for the one measured job, and the y = x line.
    page.get_by_test_id("nav-savings").click()
    scatter = page.get_by_test_id("estimate-scatter")
    expect(scatter).to_be_visible()
    points = scatter.get_by_test_id("scatter-point")
    expect(points).to_have_count(1)
    row = next(r for r in api.get("v1/report")["jobs"] if r["job_id"] == measured_id)
    expect(points.first).to_contain_text(
        f"dash-measured: estimated {row['co2e_kg_estimated']:,.3f}, measured "
        f"{row['co2e_kg_measured']:,.3f} kg")
    diagonal = scatter.get_by_test_id("scatter-diagonal")
    x1, y1, x2, y2 = (float(diagonal.get_attribute(a) or "nan")
                      for a in ("x1", "y1", "x2", "y2"))
    assert x2 - x1 > 0 and y1 - y2 == pytest.approx(x2 - x1)  # 45 degrees up-right: y = x
    # the point is where its two figures are on that shared scale
    cx, cy = (float(points.first.get_attribute(a) or "nan") for a in ("cx", "cy"))
    assert (cx - x1) / (y1 - cy) == pytest.approx(
        row["co2e_kg_estimated"] / row["co2e_kg_measured"], rel=0.02)
    page.screenshot(path=str(artifacts_dir() / "dashboard-savings-scatter.png"), full_page=True)
    assert page_errors == []
