"""The FastAPI app: /v1 routes over ``scheduler.service``, health, metrics and the dashboard.

Routes are thin: each reads its input, calls the service layer (the same functions the
CLI calls) and serialises the result. Blocking work (Redis, the placement pipeline) runs
in plain ``def`` routes, which FastAPI runs in its thread pool.

Design choice: the app holds one job store (one Redis connection pool), one token table
and one Celery app (to send tasks), built by ``create_app`` from the settings given or
the environment's, so a test can build an app against its own Redis and any number of
apps can run side by side.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from greenplace.scheduler.api import problems
from greenplace.scheduler.api.auth import Caller, agent_of
from greenplace.scheduler.api.problems import Problem
from greenplace.scheduler.catalog import load_catalog
from greenplace.scheduler.exceptions import UserInputError
from greenplace.scheduler.jobs import jobs_file_schema
from greenplace.scheduler.measurement import MeasurementSummary
from greenplace.scheduler.report import ReportQuery, report
from greenplace.scheduler.service import (
    MAX_PAGE,
    JobFilter,
    job_view,
    learn_power,
    list_jobs,
    parse_since,
    pue_lookup,
    team_of_submission,
    visible_job,
    visible_plan,
)
from greenplace.scheduler.settings import Settings, load_limits, load_settings
from greenplace.scheduler.store import JobState, open_store, utc_now
from greenplace.scheduler.submission import Loaded, load_submission
from greenplace.scheduler.tokens import Principal, Tokens

API_VERSION = "v1"
# What a jobs file may be sent as; JSON bodies are read as JSON, the rest as YAML (or JSON
# lines, which the reader recognises by content).
JOBS_MEDIA_TYPES = {"application/json": ".json", "application/yaml": ".yaml",
                    "application/x-yaml": ".yaml", "text/yaml": ".yaml",
                    "application/x-ndjson": ".jsonl", "text/plain": ".yaml"}
_JOBS_BODY = {
    "required": True,
    "description": "A jobs file: `jobs:` with a list of jobs, or one job (as "
                   "`greenplace schema jobs-file` prints), as JSON or YAML.",
    "content": {"application/json": {"schema": jobs_file_schema()},
                "application/yaml": {"schema": {"type": "string"}}},
}
STATIC_DIR = Path(str(resources.files("greenplace.scheduler.api") / "static"))


class EnergySample(BaseModel):
    """Energy the job's machine used since its command started (cumulative), at ``at``."""

    model_config = ConfigDict(extra="forbid")
    at: dt.datetime
    energy_j: float = Field(ge=0, le=1e15)


class Telemetry(BaseModel):
    """One report of a job's agent: a heartbeat, the command's exit code, energy samples,
    and with the exit report the summary of what was measured."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["heartbeat", "exit", "energy"]
    exit_code: int | None = Field(None, ge=0, le=255)
    samples: list[EnergySample] = Field(default_factory=list, max_length=10_000)
    summary: MeasurementSummary | None = None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API for ``settings`` (default: from the environment)."""
    settings = settings or load_settings()
    app = FastAPI(title="greenplace", version="0.1.0",
                  description="Carbon-aware placement of ML training jobs across clouds.",
                  docs_url="/docs", redoc_url=None)
    app.state.settings = settings
    app.state.store = store = open_store(settings)
    app.state.tokens = Tokens(store)
    from greenplace.scheduler.worker.app import create_app as create_celery_app

    app.state.celery = create_celery_app(settings)  # connects on first send only
    problems.install(app)
    _health_routes(app)
    _job_routes(app)
    _catalog_routes(app)
    _dashboard_routes(app)
    return app


def _health_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up (liveness): no dependency is asked."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready"}})
    def readyz() -> JSONResponse:
        """Ready for traffic: Redis answers; also says how many workers were seen lately."""
        import redis

        from greenplace.scheduler.worker.heartbeat import SEEN_WITHIN_S, workers_seen

        try:
            app.state.store.client.ping()
            seen = len(workers_seen(app.state.store, SEEN_WITHIN_S))
        except redis.RedisError:
            return JSONResponse({"status": "not ready", "redis": False, "workers_seen": 0},
                                status_code=503)
        return JSONResponse({"status": "ready", "redis": True, "workers_seen": seen})

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics(principal: Caller) -> Response:
        """Prometheus metrics of the whole fleet (counters kept in Redis by every worker)."""
        from greenplace.scheduler.metrics import render_metrics

        body, content_type = render_metrics(app.state.store)  # RedisError: the 503 handler
        return Response(body, media_type=content_type)


async def _jobs_body(request: Request) -> tuple[bytes, Path]:
    """The request's jobs file and the name errors give it (its suffix picks the parser)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JOBS_MEDIA_TYPES:
        raise Problem(415, f"A jobs file is sent as {', '.join(sorted(JOBS_MEDIA_TYPES))}; "
                      f"this request says {media_type or 'nothing'!r}. To fix: set "
                      "Content-Type to application/yaml or application/json.")
    limit = load_limits().file_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"The jobs file is {int(declared):,} bytes; at most {limit:,} are "
                      "accepted (GREENPLACE_MAX_FILE_BYTES). To fix: split it.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Problem(413, f"The jobs file is over {limit:,} bytes "
                          "(GREENPLACE_MAX_FILE_BYTES). To fix: split it.")
    return bytes(body), Path("request-body" + JOBS_MEDIA_TYPES[media_type])


def _load_body(content: bytes, source: Path, policy: str | None, override_policy: bool, *,
               now: dt.datetime) -> Loaded:
    """A request's jobs file with its policy options, as the CLI reads a file, except that
    the API reads no policy files of its server."""
    return load_submission(source, load_catalog(), policy=policy,
                           override_policy=override_policy, now=now, content=content,
                           policy_label="query parameter policy", policy_files=False)


def _job_routes(app: FastAPI) -> None:
    def store() -> Any:
        return app.state.store

    def views(records: list[Any]) -> list[dict[str, Any]]:
        pue_of = pue_lookup(load_catalog())
        return [job_view(r, pue_of=pue_of) for r in records]

    @app.post("/v1/jobs", status_code=201, tags=["jobs"],
              openapi_extra={"requestBody": _JOBS_BODY})
    async def submit(request: Request, principal: Caller,
                     policy: Annotated[str | None, Query(max_length=256)] = None,
                     override_policy: bool = False,
                     team: Annotated[str | None, Query(max_length=63)] = None
                     ) -> dict[str, Any]:
        """Queue every job of the jobs file (all or none) for the caller's team."""
        content, source = await _jobs_body(request)
        return await run_in_threadpool(_submit, content, source, principal, policy,
                                       override_policy, team)

    def _submit(content: bytes, source: Path, principal: Principal, policy: str | None,
                override_policy: bool, team: str | None) -> dict[str, Any]:
        from greenplace.scheduler.service import submit as submit_jobs

        owner = team_of_submission(principal, team)
        loaded = _load_body(content, source, policy, override_policy, now=utc_now())
        ids = submit_jobs(store(), app.state.celery, loaded.jobs, team=owner)
        return {"jobs": [{"job_id": i, "name": j.name, "state": str(JobState.QUEUED),
                          "team": owner, **({"replaced_policy": j.replaced_policy}
                                            if j.replaced_policy else {})}
                         for i, j in zip(ids, loaded.jobs, strict=True)],
                "notes": loaded.notes}

    @app.post("/v1/dry-run", tags=["jobs"], openapi_extra={"requestBody": _JOBS_BODY})
    async def dry_run(request: Request, principal: Caller,
                      policy: Annotated[str | None, Query(max_length=256)] = None,
                      override_policy: bool = False) -> dict[str, Any]:
        """Where each job would run and why, with its exact launch request; nothing is written."""
        content, source = await _jobs_body(request)

        def run() -> dict[str, Any]:
            from greenplace.scheduler.service import dry_run_rows

            now = utc_now()
            loaded = _load_body(content, source, policy, override_policy, now=now)
            return {"jobs": dry_run_rows(loaded.jobs, app.state.settings, now=now),
                    "notes": loaded.notes}

        return await run_in_threadpool(run)

    @app.get("/v1/jobs", tags=["jobs"])
    def jobs(principal: Caller, state: JobState | None = None,
             name: Annotated[str | None, Query(max_length=64)] = None,
             policy: Annotated[str | None, Query(max_length=64)] = None,
             team: Annotated[str | None, Query(max_length=63)] = None,
             since: Annotated[str | None, Query(max_length=40)] = None,
             limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
             cursor: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
        """The jobs the caller may see, newest first, one page at a time."""
        where = JobFilter(state=state, name=name, policy=policy, team=team,
                          since=parse_since(since))
        page = list_jobs(store(), principal, where=where, limit=limit, cursor=cursor)
        return {"jobs": views(page.records), "next_cursor": page.next_cursor}

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    def job(job_id: str, principal: Caller) -> dict[str, Any]:
        """One job: its summary, the decision explained and its candidate table."""
        record = visible_job(store(), principal, job_id)
        candidates = store().explain(job_id)
        return {**job_view(record, pue_of=pue_lookup(load_catalog()), candidates=candidates),
                "decision": record.decision, "candidates": candidates, "spec": record.spec}

    @app.get("/v1/plans/{plan_id}", tags=["jobs"])
    def batch_plan(plan_id: str, principal: Caller) -> dict[str, Any]:
        """A batch plan stored by `submit --plan`: its solver, status, objective, bound and
        gap; per job its planned offer and start (or why it was left out); the pools'
        per-hour use against their limits."""
        return visible_plan(store(), principal, plan_id)

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"])
    def events(job_id: str, principal: Caller) -> dict[str, Any]:
        """The job's event history, oldest first."""
        visible_job(store(), principal, job_id)
        return {"events": [e.as_json() for e in store().events(job_id)]}

    @app.post("/v1/jobs/{job_id}/cancel", tags=["jobs"], responses={409: {}})
    def cancel(job_id: str, principal: Caller) -> dict[str, Any]:
        """Cancel the job; an instance it launched is deleted."""
        from greenplace.scheduler.service import cancel as cancel_job
        from greenplace.scheduler.worker.tasks import enqueue

        try:
            outcome = cancel_job(store(), principal, job_id, now=utc_now(),
                                 send=lambda o: enqueue(app.state.celery, o.followups))
        except UserInputError as exc:
            raise Problem(409, str(exc)) from exc
        return {"job_id": job_id, "state": str(store().get(job_id).state),
                "message": outcome.message,
                "instance_deletion_queued": bool(outcome.followups)}

    @app.post("/v1/jobs/{job_id}/telemetry", tags=["agent"], status_code=202)
    def telemetry(job_id: str, body: Telemetry,
                  agent: Annotated[Principal, Depends(agent_of)]) -> dict[str, Any]:
        """A job's agent reports: heartbeat, exit code, cumulative energy samples."""
        if body.kind == "exit" and body.exit_code is None:
            raise Problem(422, "An exit report needs exit_code. To fix: send the command's "
                          "exit code (0-255).")
        summary = body.summary
        if summary is not None and (summary.exit_code != body.exit_code
                                    or summary.job_id not in (None, job_id)):
            raise Problem(422, "The summary's job_id and exit_code must match the report's. "
                          "To fix: send the summary the agent wrote for this job.")
        energy_kwh = (max(s.energy_j for s in body.samples) / 3.6e6 if body.samples else None)
        if summary is not None:
            energy_kwh = summary.energy_j / 3.6e6
        measurement = None if summary is None else summary.model_dump(mode="json")
        if not store().record_telemetry(job_id, at=utc_now(), exit_code=body.exit_code,
                                        energy_kwh=energy_kwh, measurement=measurement):
            raise Problem(404, f"Job {job_id} no longer exists (pruned after retention). "
                          "To fix: stop the agent.")
        if body.kind == "exit":
            store().note(job_id, f"the job's agent reported exit code {body.exit_code}",
                         data={"exit_code": body.exit_code})
        if measurement is not None:
            learn_power(store(), job_id, measurement)
            # the run's own hours' intensity needs signal calls: a worker looks them up
            app.state.celery.send_task("greenplace.attribute", args=[job_id])
        return {"job_id": job_id, "accepted": body.kind}

    @app.get("/v1/report", tags=["report"])
    def report_route(principal: Caller,
                     team: Annotated[str | None, Query(max_length=63)] = None,
                     policy: Annotated[str | None, Query(max_length=64)] = None,
                     since: Annotated[str | None, Query(max_length=40)] = None,
                     until: Annotated[str | None, Query(max_length=40)] = None,
                     group_by: Literal["team", "policy", "day"] | None = None
                     ) -> dict[str, Any]:
        """Energy, CO2e, cost and savings vs baseline of launched jobs, totals and groups."""
        query = ReportQuery(where=JobFilter(team=team, policy=policy, since=parse_since(since)),
                            until=parse_since(until), group_by=group_by)
        return report(store(), principal, load_catalog(), query=query)


def _catalog_routes(app: FastAPI) -> None:
    @app.get("/v1/regions", tags=["catalog"])
    def regions(principal: Caller, cloud: Literal["aws", "gcp", "azure"] | None = None,
                accelerator: Annotated[str | None, Query(max_length=64)] = None,
                sort: Literal["cfe", "intensity", "price"] = "intensity") -> dict[str, Any]:
        """Catalog regions: grid intensity, CFE, PUE and the cheapest accelerator-hour."""
        from greenplace.scheduler.commands.placement import region_rows

        return {"regions": region_rows(load_catalog(), cloud=cloud, accelerator=accelerator,
                                       sort=sort)}

    @app.get("/v1/offers", tags=["catalog"])
    def offers(principal: Caller, cloud: Literal["aws", "gcp", "azure"] | None = None,
               region: Annotated[str | None, Query(max_length=64)] = None,
               accelerator: Annotated[str | None, Query(max_length=64)] = None
               ) -> dict[str, Any]:
        """Every instance offer: hardware, TDP, prices and their source."""
        from greenplace.scheduler.commands.offers import offer_rows

        return {"offers": offer_rows(load_catalog(), cloud=cloud, region=region,
                                     accelerator=accelerator)}

    @app.get("/v1/signals", tags=["catalog"])
    def signals(principal: Caller) -> dict[str, Any]:
        """The carbon signal each region's fallback chain uses now, and what it passed over."""
        from greenplace.scheduler.commands.signals import all_region_signals, signal_chain

        catalog = load_catalog()
        with signal_chain(catalog) as chain:
            from greenplace.policies.model import CarbonSignal

            rows = all_region_signals(chain, catalog, list(CarbonSignal), chain.now())
            notes = chain.basis_notes(list(CarbonSignal))
        return {"signals": rows, "notes": notes}


def _dashboard_routes(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        """The dashboard (it logs in with a token and reads /v1 like any client)."""
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise Problem(404, "The dashboard's files are not installed.")
        return FileResponse(page, media_type="text/html",
                            headers={"Cache-Control": "no-cache",
                                     "Content-Security-Policy": _CSP})


# The dashboard loads nothing from elsewhere and runs no inline script.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
