"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error the API returns has the same shape: ``type``, ``title``, ``status``,
``detail``. A user's mistake keeps the one-paragraph message the CLI prints, so a jobs
file rejected over HTTP reads exactly as it does in a terminal.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenplace.scheduler.exceptions import (
    AccessError,
    ConfigError,
    GreenplaceError,
    JobNotFoundError,
    UserInputError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 413: "Content too large",
           415: "Unsupported media type", 422: "Unprocessable content",
           500: "Internal server error", 503: "Service unavailable"}


class Problem(Exception):
    """Raise in a route to answer with this status and detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def problem(status: int, detail: str) -> JSONResponse:
    """The problem+json response for ``status`` with ``detail``."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    title = _TITLES.get(status, "Error")
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_of(exc: GreenplaceError) -> int:
    """The HTTP status of one of greenplace's own errors."""
    if isinstance(exc, JobNotFoundError):
        return 404
    if isinstance(exc, AccessError):
        return 401
    if isinstance(exc, UserInputError):
        return 422
    if isinstance(exc, ConfigError):
        return 500
    return 500


def install(app: FastAPI) -> None:
    """Answer every error with problem+json; an unexpected one is logged, not shown."""
    import redis

    @app.exception_handler(Problem)
    def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.detail)

    @app.exception_handler(GreenplaceError)
    def _greenplace(request: Request, exc: GreenplaceError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return problem(status, str(exc))

    @app.exception_handler(redis.RedisError)
    def _redis(request: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("%s %s: Redis: %s", request.method, request.url.path, type(exc).__name__)
        return problem(503, "The job store (Redis) did not answer. To fix: try again; if it "
                       "persists, check that Redis is up and GREENPLACE_REDIS_URL points at it.")

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return problem(422, "Invalid request: " + "; ".join(parts) + ".")

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return problem(500, "The server failed on this request; it is logged. To fix: report "
                       "it with the time of the request.")
