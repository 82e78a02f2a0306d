"""Mapping a cloud's own error codes onto greenplace's ProviderError classes.

Every adapter declares one ``ErrorCodeTable`` (which of its cloud's codes mean
capacity, quota, transient or auth) and builds its errors with
``ErrorCodeTable.error(...)``; the class decides what the queue does next
(fail over, retry with backoff, or fail the job), so the mapping lives in data,
in one place per cloud, and is tested code by code.

Nothing here imports a cloud SDK: adapters pull the code, the HTTP status and
the message out of their SDK's exception and hand over plain values.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from greenplace.scheduler.exceptions import (
    AuthError,
    CapacityError,
    InvalidRequestError,
    ProviderError,
    QuotaError,
    TransientError,
)

# Longest cloud message kept in an error (AWS UnauthorizedOperation carries a
# multi-kilobyte encoded blob); the code and operation are always kept whole.
MAX_MESSAGE_CHARS = 600

DEFAULT_FIX: dict[type[ProviderError], str] = {
    CapacityError: (
        "nothing in the job is wrong: the cloud has no capacity for this offer here right "
        "now, so greenplace fails over to the next candidate of the placement; retry later "
        "to use this one"
    ),
    QuotaError: (
        "ask the cloud for a higher quota for this instance family in this region (service "
        "quotas / quota page of its console); meanwhile greenplace fails over to the next "
        "candidate"
    ),
    TransientError: (
        "retry with backoff (the queue does this); if it persists, check the cloud's "
        "status page and the endpoint settings"
    ),
    AuthError: (
        "check which credentials the SDK finds (`greenplace providers check`) and that "
        "they hold the permissions listed in the README for this cloud"
    ),
    InvalidRequestError: (
        "check the adapter settings (image, instance type, network) named in the message"
    ),
}


def _matches(code: str, patterns: frozenset[str]) -> bool:
    return code in patterns or any(
        "*" in p and fnmatch.fnmatchcase(code, p) for p in patterns
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorCodeTable:
    """Which of one cloud's error codes mean which greenplace error class.

    Codes are compared exactly; an entry holding ``*`` is a glob
    (``"Overconstrained*"``). Codes win over HTTP statuses: EC2 answers
    InsufficientInstanceCapacity with HTTP 500, which is capacity, not transient.

    Design choice: an unknown code falls back to the HTTP status (5xx and 429
    transient, 401/403 auth) and then to InvalidRequestError, the class that
    fails the job: retrying or failing over on an error nobody classified would
    hide a broken request behind attempts in every region.
    """

    capacity: frozenset[str] = frozenset()
    quota: frozenset[str] = frozenset()
    transient: frozenset[str] = frozenset()
    auth: frozenset[str] = frozenset()
    transient_http_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    auth_http_statuses: frozenset[int] = frozenset({401, 403})

    def classify(self, code: str | None, *, http_status: int | None = None
                 ) -> type[ProviderError]:
        """The error class for a cloud code and/or HTTP status."""
        if code:
            for patterns, cls in (
                (self.capacity, CapacityError), (self.quota, QuotaError),
                (self.transient, TransientError), (self.auth, AuthError),
            ):
                if _matches(code, patterns):
                    return cls
        if http_status is not None:
            if http_status in self.transient_http_statuses:
                return TransientError
            if http_status in self.auth_http_statuses:
                return AuthError
        return InvalidRequestError

    def error(
        self, message: str, *, provider: str, operation: str, code: str | None,
        http_status: int | None = None, fix: str | None = None,
    ) -> ProviderError:
        """Build the classified error (the caller raises it ``from`` the SDK's)."""
        cls = self.classify(code, http_status=http_status)
        return provider_error(cls, message, provider=provider, operation=operation,
                              code=code, fix=fix)


def provider_error(
    cls: type[ProviderError], message: str, *, provider: str, operation: str,
    code: str | None, fix: str | None = None,
) -> ProviderError:
    """An error of class ``cls``: the cloud's message (trimmed), then ``To fix: ...``."""
    text = " ".join(message.split()) or "no message from the cloud"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    hint = fix or DEFAULT_FIX.get(cls, DEFAULT_FIX[InvalidRequestError])
    if not text.endswith("."):
        text += "."
    return cls(f"{text} To fix: {hint}.", provider=provider, operation=operation, code=code)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-trivial secret value replaced by ``***``.

    A belt-and-braces filter for anything printed or stored that came from an
    SDK (messages can echo request parts); values shorter than 4 characters are
    left alone so that a one-letter "secret" cannot shred a message.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


__all__ = ["DEFAULT_FIX", "MAX_MESSAGE_CHARS", "ErrorCodeTable", "provider_error", "redact"]
