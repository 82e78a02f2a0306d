"""Maps provider names to adapter modules, imported on first use.

``import greenplace`` (any of its packages) imports no cloud SDK; an adapter's
SDK is imported only when that adapter is asked for, and a missing SDK says
which extra to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType

from greenplace.providers.base import Provider
from greenplace.scheduler.exceptions import MissingSDKError, UnknownNameError

# provider name -> (module path, factory name, pip extra)
REGISTRY: dict[str, tuple[str, str, str | None]] = {
    "local-sim": ("greenplace.providers.local_sim", "create", None),
    "local": ("greenplace.providers.local", "create", None),
    "aws": ("greenplace.providers.aws", "create", "aws"),
    "gcp": ("greenplace.providers.gcp", "create", "gcp"),
    "azure": ("greenplace.providers.azure", "create", "azure"),
    "libcloud": ("greenplace.providers.libcloud", "create", "libcloud"),
}


def get_provider(name: str, *, config: Mapping[str, str] | None = None) -> Provider:
    """Import and build the adapter named ``name``.

    Each adapter module has ``create(config) -> Provider``; ``config`` holds the
    adapter's own settings (never secrets: those come from each SDK's own chain).

    Raises:
        UnknownNameError: no such provider.
        MissingSDKError: the adapter's SDK is not installed (names the pip extra).
    """
    module = import_adapter(name)
    provider: Provider = getattr(module, REGISTRY[name][1])(dict(config or {}))
    return provider


def import_adapter(name: str) -> ModuleType:
    """Import the adapter module of provider ``name`` (and so its cloud SDK).

    A worker calls this for its routed providers before it forks its pool: an SDK
    import can take seconds on a cold or loaded machine (google-cloud-compute took
    3-15 s here), which inside a task would eat its time limit.

    Raises:
        UnknownNameError: no such provider.
        MissingSDKError: the adapter's SDK is not installed (names the pip extra).
    """
    if name not in REGISTRY:
        raise UnknownNameError("provider", name, REGISTRY,
                               hint=f"To fix: use one of {sorted(REGISTRY)}.")
    module_path, _, extra = REGISTRY[name]
    try:
        return importlib.import_module(module_path)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("greenplace"):
            raise
        raise MissingSDKError(
            f"the {name} adapter needs {exc.name!r}, which is not installed. "
            f"To fix: pip install 'greenplace[{extra}]'",
            provider=name, operation="import",
        ) from exc
