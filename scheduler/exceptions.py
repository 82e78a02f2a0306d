"""The one exception tree of greenplace.

::

    GreenplaceError                   root; every error greenplace raises on purpose
    ├── UserInputError                the user's input is wrong (CLI exit code 2)
    │   ├── SpecError                 a jobs or policy file is broken, names file/job/field
    │   └── UnknownNameError          unknown accelerator, region, preset... ("Did you mean")
    ├── CatalogError                  the embedded catalog failed schema validation
    ├── ConfigError                   settings / environment are unusable (exit 2)
    ├── AccessError                   no token, a bad or revoked one, or one not for this (exit 2)
    ├── RemoteError                   the API (GREENPLACE_API_URL) answered with an error
    ├── StoreError                    job store problems
    │   ├── JobNotFoundError
    │   └── IllegalTransitionError    a state change the job's life cycle forbids
    ├── SignalError                   a carbon signal source could not answer
    │   ├── SignalUnavailableError    down, 5xx, rate-limited or unreachable: skip the source
    │   │   └── SignalTimeoutError    no answer within the client timeout
    │   ├── SignalAuthError           key or credentials missing or refused: skip the source
    │   ├── SignalPayloadError        the answer does not have the documented format
    │   └── NoSignalDataError         the source has no value for this zone, time or type
    └── ProviderError                 a cloud call failed; carries provider, operation, code
        ├── CapacityError             no capacity here now: fail over to the next candidate
        ├── QuotaError                account quota reached here: fail over
        ├── AccountLimitError         an account-wide limit (GCP GPUS_ALL_REGIONS): fail the job
        ├── RegionRefusedError        the region is not enabled for the account: fail over
        ├── TransientError            retry the same call with backoff
        ├── AuthError                 credentials missing or refused: fail the job
        ├── InvalidRequestError       the request itself is wrong: fail the job
        └── MissingSDKError           the cloud's SDK is not installed

Messages say what happened, then ``To fix: ...``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# How many characters of a user's value an error message quotes (see ``shown``).
SHOWN_CHARS = 48
SHOWN_PATH_CHARS = 256  # a file path: real ones are long, a job's `policy:` may be any length


def shown(value: object, *, max_chars: int = SHOWN_CHARS, quote: bool = True) -> str:
    """A user's value for an error message (``repr`` unless ``quote=False``), cut to its
    first ``max_chars`` characters.

    Design choice: every message that echoes what the user wrote (a name, a field, a
    path) goes through this one helper, so a 1 MB name gives a one-line error, not
    1 MB of stderr; the cut value says how long the whole one was.
    """
    text = value if isinstance(value, str) else str(value)
    cut = text[:max_chars]
    head = repr(cut) if quote else cut
    return head if len(text) <= max_chars else f"{head}... ({len(text):,} characters)"


class GreenplaceError(Exception):
    """Root of every error greenplace raises on purpose."""

    exit_code = 1


class UserInputError(GreenplaceError):
    """The user's input (file, flag, name) is wrong; the CLI exits with code 2."""

    exit_code = 2


class SpecError(UserInputError):
    """A jobs or policy file failed to parse or validate."""


class UnknownNameError(UserInputError):
    """A name (accelerator, region, preset) is not in the catalog."""

    def __init__(self, kind: str, name: str, known: Iterable[str], *, hint: str = "") -> None:
        self.kind = kind
        self.name = name
        known_list = sorted(set(known))
        # A name this long is close to nothing, and difflib's time grows with its length.
        close: list[str] = []
        if len(name) <= 4 * SHOWN_CHARS:
            close = difflib.get_close_matches(name, known_list, n=3, cutoff=0.5)
        if not close and len(name) <= 4 * SHOWN_CHARS:
            folded = {k.lower().replace("-", ""): k for k in known_list}
            close = [
                folded[k]
                for k in difflib.get_close_matches(name.lower().replace("-", ""), folded, n=3)
            ]
        msg = f"Unknown {kind} {shown(name)}."
        if close:
            msg += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
        msg += " " + (hint or f"To fix: use one of the known {kind}s (see `greenplace regions`).")
        super().__init__(msg)


class CatalogError(GreenplaceError):
    """The embedded catalog (or a replacement file) failed schema validation."""


class ConfigError(GreenplaceError):
    """Settings or environment variables are unusable."""

    exit_code = 2


class AccessError(GreenplaceError):
    """An API token is missing, unknown, revoked, or not allowed to do this."""

    exit_code = 2


class RemoteError(GreenplaceError):
    """The greenplace API answered a client call with an error (its message is kept)."""

    def __init__(self, message: str, *, status: int, exit_code: int = 1) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = exit_code


class StoreError(GreenplaceError):
    """The job store could not complete an operation."""


class JobNotFoundError(StoreError):
    """No job has that id."""

    exit_code = 2


class IllegalTransitionError(StoreError):
    """A state change that the job life cycle forbids."""


class SignalError(GreenplaceError):
    """A carbon signal source could not answer."""


class SignalUnavailableError(SignalError):
    """The source is down, rate-limited, answered 5xx or could not be reached."""


class SignalTimeoutError(SignalUnavailableError):
    """The source did not answer within the client timeout."""


class SignalAuthError(SignalError):
    """The source's API key or credentials are missing or were refused."""


class NoSignalDataError(SignalError):
    """The source has no value for this zone, time or signal type."""


class SignalPayloadError(SignalError):
    """The source answered, but not in its documented format."""


class ProviderError(GreenplaceError):
    """A cloud call failed. Carries the provider, the operation and the cloud's own code."""

    def __init__(
        self, message: str, *, provider: str, operation: str, code: str | None = None
    ) -> None:
        self.provider = provider
        self.operation = operation
        self.code = code
        detail = f"{provider} {operation}" + (f" [{code}]" if code else "")
        super().__init__(f"{detail}: {message}")


class CapacityError(ProviderError):
    """The cloud has no capacity for this offer here now; fail over."""


class QuotaError(ProviderError):
    """The account's quota is exhausted for this offer here; fail over."""


class AccountLimitError(ProviderError):
    """An account-wide limit no other region lifts (a global GPU quota of 0): fail the job
    fast instead of failing over through every candidate."""


class RegionRefusedError(ProviderError):
    """The account may not use this region (an opt-in region not enabled); fail over."""


class TransientError(ProviderError):
    """A passing fault (throttling, 5xx); retry the same call with backoff."""


class AuthError(ProviderError):
    """Credentials are missing or refused; fail the job with a clear reason."""


class InvalidRequestError(ProviderError):
    """The request itself is invalid; fail the job."""


class MissingSDKError(ProviderError):
    """The cloud's SDK is not installed (a set-up problem: CLI exit code 2)."""

    exit_code = 2
