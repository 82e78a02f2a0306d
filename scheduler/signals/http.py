"""HTTP and wire-format helpers shared by the live signal sources.

One client factory with explicit timeouts, one GET that maps every failure onto the
``SignalError`` tree (never with a key or password in the message), and the pydantic base
and validator for the sources' answers.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    secrets: tuple[str, ...] = (), forbidden_is_no_data: bool = False,
) -> Any:
    """GET ``path`` and decode JSON, mapping every failure onto the SignalError tree.

    Messages name the source, the operation and the HTTP status, never a header,
    key or password: ``secrets`` are also cut out of any text the service echoes.

    Raises:
        SignalTimeoutError: no answer within the client's timeout.
        SignalUnavailableError: connection refused, 429 or 5xx.
        SignalAuthError: 401 or 403 (403 is NoSignalDataError when ``forbidden_is_no_data``:
            an API that answers 403 for a zone outside the account's plan).
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
    if status == 403 and forbidden_is_no_data:
        raise NoSignalDataError(
            f"{source} {operation}: HTTP 403, the account has no access to this zone or signal. "
            f"{_error_hint(response, secrets)}")
    if status in (401, 403):
        raise SignalAuthError(
            f"{source} {operation}: HTTP {status}, the credentials were refused. "
            f"{_error_hint(response, secrets)}")
    if status == 429 or status >= 500:
        raise SignalUnavailableError(
            f"{source} {operation}: HTTP {status}. {_error_hint(response, secrets)}")
    if status == 204 or 400 <= status < 500:
        raise NoSignalDataError(
            f"{source} {operation}: HTTP {status}. {_error_hint(response, secrets)}")
    try:
        return response.json()
    except ValueError as exc:
        raise SignalPayloadError(f"{source} {operation}: the answer is not JSON.") from exc


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
