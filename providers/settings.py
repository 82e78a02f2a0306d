"""Where an adapter's settings come from: one rule for every cloud adapter.

In rising precedence: ``GREENPLACE_<CLOUD>_SETTINGS`` (a JSON object, the way to
give keys with dots such as ``subnet_id.eu-north-1``), then one
``GREENPLACE_<CLOUD>_<KEY>`` variable per key the adapter accepts that way, then
the ``config`` mapping handed to ``create()``. Settings never hold secrets: those
come from each SDK's own credential chain.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from greenplace.scheduler.exceptions import ConfigError


def merged_settings(
    cloud: str, config: Mapping[str, str], environ: Mapping[str, str], *,
    from_env: Callable[[str], bool],
) -> dict[str, str]:
    """Merge the three sources for ``cloud``.

    Args:
        cloud: the adapter's variable infix, e.g. ``AWS`` or ``LIBCLOUD``.
        config: the adapter config (wins).
        environ: the environment to read.
        from_env: which lower-cased keys may come from ``GREENPLACE_<CLOUD>_<KEY>``.

    Raises:
        ConfigError: ``GREENPLACE_<CLOUD>_SETTINGS`` is not a JSON object.
    """
    prefix = f"GREENPLACE_{cloud.upper()}_"
    json_name = prefix + "SETTINGS"
    merged: dict[str, str] = {}
    raw = environ.get(json_name)
    if raw:
        try:
            loaded = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"{json_name} is not JSON ({exc}). To fix: give a JSON object "
                              "of settings, e.g. {\"key\": \"value\"}.") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{json_name} must be a JSON object. To fix: wrap the settings "
                              "in {...}.")
        merged.update({str(k): str(v) for k, v in loaded.items()})
    for name, value in environ.items():
        if name.startswith(prefix) and name != json_name and value:
            key = name.removeprefix(prefix).lower()
            if from_env(key):
                merged[key] = value
    merged.update(config)
    return merged


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` (or a bare host) points at this machine; test-only credentials
    are accepted only there."""
    if not url:
        return False
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def number_setting(
    cloud: str, config: Mapping[str, str], key: str, default: float, *, minimum: float,
) -> float:
    """A numeric setting (``default`` when unset). Raises ConfigError below ``minimum``."""
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = minimum - 1
    if not value >= minimum:
        raise ConfigError(f"{cloud} {key} {raw!r} is not a number >= {minimum:g}. "
                          f"To fix: set it to a number such as {default:g}.")
    return value
