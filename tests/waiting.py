"""Wait for a condition instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], *, timeout_s: float, what: str,
             interval_s: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what``.

    The deadline is generous on purpose (the suite runs on loaded 2-core machines): a
    passing test returns as soon as the condition holds, only a failing one waits it out.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
