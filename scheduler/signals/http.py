"""HTTP and wire-format helpers shared by the live signal sources.

One client factory with explicit timeouts, one GET that maps every failure onto the
``SignalError`` tree (never with a key or password in the message), and the pydantic base
and validator for the sources' answers.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import pydantic

from greenplace.scheduler.exceptions import (
    NoSignalDataError,
    SignalAuthError,
    SignalPayloadError,
    SignalTimeoutError,
    SignalUnavailableError,
)
from greenplace.scheduler.signals.base import NotInPlanError, RateLimitedError, iso, utc_now


def validate(model: type[pydantic.BaseModel], data: Any, *, source: str,
             operation: str) -> Any:
    """Validate decoded JSON against ``model``; SignalPayloadError when it does not fit."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SignalPayloadError(
            f"{source} {operation}: malformed answer ({exc.error_count()} problem(s), first at "
            f"{where}: {first['msg']}).") from exc


class Payload(pydantic.BaseModel):
    """Base of every wire model: unknown fields (APIs add them) are ignored."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


def new_client(*, timeout_s: float, base_url: str = "") -> httpx.Client:
    """An HTTP client with an explicit timeout on connect, read, write and pool."""
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(connect=timeout_s, read=timeout_s, write=timeout_s,
                              pool=timeout_s),
        follow_redirects=False,
        headers={"user-agent": "greenplace (carbon-aware scheduler)"},
    )


def get_json(
    client: httpx.Client, path: str, *, source: str, operation: str,
    params: Mapping[str, str | list[str]] | None = None,
    headers: Mapping[str, str] | None = None, auth: httpx.Auth | None = None,
    secrets: tuple[str, ...] = (), forbidden_is_not_in_plan: bool = False,
    clock: Callable[[], dt.datetime] = utc_now,
) -> Any:
    """GET ``path`` and decode JSON, mapping every failure onto the SignalError tree.

    Messages name the source, the operation and the HTTP status, never a header,
    key or password: ``secrets`` are also cut out of any text the service echoes.

    Raises:
        SignalTimeoutError: no answer within the client's timeout.
        SignalUnavailableError: connection refused or 5xx.
        RateLimitedError: 429, with the wait its ``Retry-After`` asks (seconds or an HTTP
            date, read against ``clock``).
        SignalAuthError: 401 or 403.
        NotInPlanError: 403 when ``forbidden_is_not_in_plan`` (an API that answers 403 for a
            zone or endpoint outside the account's plan, such as a free key's second zone).
        NoSignalDataError: 404, 204 or another 4xx (the zone or time is not covered).
        SignalPayloadError: the body is not JSON.
    """
    try:
        response = client.get(path, params=params, headers=headers, auth=auth)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:
        raise SignalTimeoutError(
            f"{source} {operation}: no answer within {_timeout_s(client)} s "
            f"({type(exc).__name__}).") from exc
    except httpx.HTTPError as exc:
        raise SignalUnavailableError(
            f"{source} {operation}: cannot reach the service ({type(exc).__name__}).") from exc
    status = response.status_code
    if status == 403 and forbidden_is_not_in_plan:
        raise NotInPlanError(
            f"{source} {operation}: HTTP 403, the account's plan does not cover this zone or "
            f"endpoint; greenplace skips it and keeps using {source} for the others. "
            f"{_error_hint(response, secrets)} To fix: extend the plan, or accept the fallback "
            "for this zone.", endpoint=operation)
    if status in (401, 403):
        raise SignalAuthError(
            f"{source} {operation}: HTTP {status}, the credentials were refused. "
            f"{_error_hint(response, secrets)}")
    if status == 429:
        wait_s = retry_after_s(response.headers.get("retry-after"), now=clock())
        until = (f"asks to wait {wait_s:.0f} s, until "
                 f"{iso(clock() + dt.timedelta(seconds=wait_s))} (Retry-After)"
                 if wait_s is not None else "gives no Retry-After")
        raise RateLimitedError(
            f"{source} {operation}: HTTP 429, rate limited; the service {until}. "
            f"{_error_hint(response, secrets)}", retry_after_s=wait_s)
    if status >= 500:
        raise SignalUnavailableError(
            f"{source} {operation}: HTTP {status}. {_error_hint(response, secrets)}")
    if status == 204 or 400 <= status < 500:
        raise NoSignalDataError(
            f"{source} {operation}: HTTP {status}. {_error_hint(response, secrets)}")
    try:
        return response.json()
    except ValueError as exc:
        raise SignalPayloadError(f"{source} {operation}: the answer is not JSON.") from exc


def retry_after_s(value: str | None, *, now: dt.datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    None when the header is absent or unreadable; never negative.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now).total_seconds())


def _timeout_s(client: httpx.Client) -> float | None:
    return client.timeout.read


def _error_hint(response: httpx.Response, secrets: tuple[str, ...]) -> str:
    """A short, secret-free excerpt of an error body (the API's own message)."""
    if response.status_code == 204:
        return "No content."
    try:
        body = response.json()
    except ValueError:
        return ""
    message = None
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "title"):
            if isinstance(body.get(key), str):
                message = body[key]
                break
    if not message:
        return ""
    return f"The service says: {redact(message[:200], secrets)!r}."


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
