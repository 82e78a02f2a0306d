"""Service settings from the environment: Redis, provider per cloud, timings.

Every variable is optional; ``load_settings()`` validates them all and reports
every problem in one ``ConfigError`` paragraph (CLI exit code 2).

Variable (default): meaning.

- ``GREENPLACE_REDIS_URL`` (``redis://127.0.0.1:6379/0``): broker and job store.
  ``redis://``, ``rediss://`` (TLS) or ``unix:///path/redis.sock?db=0`` (a local
  socket); a password may be in the URL, as user-info (``redis://:PASSWORD@host:6379/0``)
  or as query parameters (``redis://host:6379/0?password=PASSWORD&username=USER``,
  ``unix:///path/redis.sock?db=0&password=PASSWORD``). Every form works for the store
  and for Celery, and is printed and logged only redacted (``redact_url``).
- ``GREENPLACE_REDIS_PASSWORD`` (none): the password, if you keep it out of the URL.
- ``GREENPLACE_REDIS_CA_CERT`` (system CAs): the CA bundle that signed the server's
  TLS certificate, for ``rediss://``.
- ``GREENPLACE_PROVIDERS`` (every cloud -> ``local-sim``): which provider launches
  in each cloud, e.g. ``aws=aws,gcp=local-sim``; unnamed clouds stay on local-sim. A
  cloud declared in the catalog overlay is routed the same way
  (``nordic-openstack=libcloud``).
- ``GREENPLACE_SIM_CONFIG`` (built-in defaults): the local-sim YAML file.
- ``GREENPLACE_RECONCILE_INTERVAL_S`` (10): how often beat sends ``reconcile``.
- ``GREENPLACE_VISIBILITY_TIMEOUT_S`` (45): the Redis transport's visibility timeout.
- ``GREENPLACE_TASK_TIME_LIMIT_S`` (25): hard time limit of every task.
- ``GREENPLACE_EXIT_CODE_WAIT_S`` (600): how long after an instance powered off
  reconcile waits for the cloud to publish the command's exit code on its
  console before the job ends FAILED as "exit code unreadable".
- ``GREENPLACE_GC_INTERVAL_S`` (900): how often beat sends the leak sweep
  (``greenplace gc`` over the regions greenplace launched in).
- ``GREENPLACE_COOLDOWN_S`` (300): how long an exhausted offer is tried last.
- ``GREENPLACE_STALL_S`` (120): after how long without progress reconcile
  re-enqueues a job's next step (a lost message).
- ``GREENPLACE_SIGNALS`` (``static``): ``live`` places on the carbon signal chain
  (``scheduler/signals/config.py`` configures its sources; answers are cached in
  Redis) with temporal shifting; ``static`` uses the embedded catalog figures.
- ``GREENPLACE_RETENTION_DAYS`` (30): final jobs (SUCCEEDED, FAILED, CANCELLED,
  UNSCHEDULABLE) and their events are deleted this long after they ended; ``0``
  keeps them forever; fractions are allowed (``0.5`` is 12 hours).
- ``GREENPLACE_PRUNE_INTERVAL_S`` (3600): how often beat sends ``prune``, the
  retention sweep (``greenplace prune`` by hand).
- ``GREENPLACE_KEY_PREFIX`` (``gp``): the prefix of every Redis key of this
  deployment (letters, digits, ``-_.``; at most 32 characters): job store
  ``{prefix}:``, signal cache ``{prefix}:signal:``, local-sim ``{prefix}sim:``, and
  Celery's queues ``{prefix}:`` (kombu's ``global_keyprefix``; with the default
  prefix Celery's keys stay unprefixed, as before). Deployments with distinct
  prefixes share one Redis database without seeing each other's jobs.
- ``GREENPLACE_BEAT_LEASE_S`` (the reconcile interval, at least 2): how long the beat
  lease in Redis lasts. Any number of beat processes may run; the one holding the
  lease sends every tick, renews it every quarter lease and stops sending once a
  quarter lease is left unrenewed; a standby takes over within about one lease after
  the sender dies. At least 1 s and at most 10 reconcile intervals (longer would
  leave RUNNING jobs unfollowed for more than 10 passes after a failover).
- ``GREENPLACE_CATALOG_PRICES`` (the user's data folder): where refreshed prices live
  (``scheduler/catalog/refresh/store.py``): unset, ``$XDG_DATA_HOME/greenplace/catalog/
  prices.json``; a path, that file; ``redis``, the key ``{prefix}:catalog:prices`` on the
  Redis above, which every worker, beat and API process of a deployment then shares.
- ``GREENPLACE_CATALOG_REFRESH_INTERVAL_S`` (86400, daily; ``0`` = off): how often beat
  refreshes prices from the clouds whose credentials it finds (``greenplace.catalog_refresh``),
  writing where ``GREENPLACE_CATALOG_PRICES`` says (set it to ``redis`` in a deployment of
  more than one machine). At least 3600 when on: the price APIs are slow and rate-limited.
- ``GREENPLACE_PRICE_MAX_AGE_DAYS`` (30): a placement whose chosen offer's price is older
  than this many days (its ``as_of``) carries a note saying how old and to run
  ``greenplace catalog refresh``. Cloud list prices change a few times a year, spot prices
  daily; a month keeps the note for figures that are really out of date. ``0`` = never.

Limits on user input, checked when a jobs or policy file is loaded, before anything
is stored (``scheduler/limits.py``; ``load_limits()`` reads only these, for the
commands that need no other setting):

- ``GREENPLACE_MAX_FILE_BYTES`` (33554432, 32 MiB: 100,000 jobs take about 15 MiB):
  the largest jobs or policy file, checked before it is read.
- ``GREENPLACE_MAX_DEPTH`` (32, from 8 to 200): how deep lists and mappings may
  nest in a jobs or policy file (YAML or JSON); a valid jobs file nests 6 deep.
- ``GREENPLACE_MAX_JOBS`` (100000): the most jobs in one jobs file.
- ``GREENPLACE_MAX_RUN_BYTES`` (derived: 14,843 with today's boot script): the most
  bytes a job's ``run`` may take in the boot script (UTF-8, each ``'`` counts 5).
  The default is the smallest adapter user-data limit (EC2's 16 KiB) minus the boot
  script around an empty command (with room for the agent's API URL, token, package
  spec and the lines that install and start the agent), so any
  job loaded can launch on every cloud; the most it may be raised to is the same for
  the largest limit (GCE's 256 KiB).

Design choice: the timings are linked. A message delivered to a worker that
dies stays invisible for the visibility timeout; it must exceed the longest a
live worker can legitimately hold one (a task's hard limit plus the longest
retry countdown), or Redis would hand a running task to a second worker. The
loader enforces ``visibility_timeout_s >= task_time_limit_s + MAX_COUNTDOWN_S + 5``
so a misconfiguration cannot break exactly-once dispatch.

Why 25 s is enough for every task: no adapter waits on a cloud operation for
longer than ``LAUNCH_WAIT_S`` (5 s) inside one call; a launch the cloud completes
asynchronously (a GCE operation, an ARM long-running operation, an OpenStack
BUILD) comes back pending and reconcile follows it. A dispatch task makes at most
a look-up, a create and that bounded wait (about 5 s plus two round trips), and
a reconcile pass stops itself 10 s before the limit (its budget) and carries on
in the next one. The limit is not the time a launch may take: a stockout
reported two minutes after the create still fails over (reconcile sees it).
"""

from __future__ import annotations

import difflib
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from greenplace.providers.base import DEFAULT_AGENT_PACKAGE
from greenplace.scheduler.exceptions import ConfigError, shown
from greenplace.scheduler.limits import (
    AGENT_API_URL_MAX_CHARS,
    AGENT_PACKAGE_MAX_CHARS,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_JOBS,
    DEFAULT_MAX_RUN_BYTES,
    MAX_DEPTH,
    MAX_RUN_BYTES,
    MIN_DEPTH,
)

CLOUDS = ("aws", "gcp", "azure")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PROVIDER = "local-sim"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Longest countdown any task retry waits (transient backoff, lock contention).
MAX_COUNTDOWN_S = 10.0
_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_KEY_PREFIX = "gp"
_KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MIN_CATALOG_REFRESH_INTERVAL_S = 3600.0


# --- Limits on user input: GREENPLACE_MAX_* (scheduler/limits.py checks them) ---


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What a jobs or policy file may hold; build with ``load_limits()``."""

    file_bytes: int = DEFAULT_MAX_FILE_BYTES
    depth: int = DEFAULT_MAX_DEPTH
    jobs: int = DEFAULT_MAX_JOBS
    run_bytes: int = DEFAULT_MAX_RUN_BYTES


# Each limit: (field, variable, lowest, highest value allowed).
_LIMIT_VARIABLES = (
    ("file_bytes", "GREENPLACE_MAX_FILE_BYTES", 1, None),
    ("depth", "GREENPLACE_MAX_DEPTH", MIN_DEPTH, MAX_DEPTH),
    ("jobs", "GREENPLACE_MAX_JOBS", 1, None),
    ("run_bytes", "GREENPLACE_MAX_RUN_BYTES", 1, MAX_RUN_BYTES),
)


def _limits(env: Mapping[str, str], problems: list[str]) -> Limits:
    values: dict[str, int] = {}
    for name, variable, lowest, highest in _LIMIT_VARIABLES:
        raw = env.get(variable, "").strip()
        if not raw:
            continue
        try:
            value = int(raw)
        except ValueError:
            problems.append(f"{variable}={shown(raw)} is not a whole number")
            continue
        if value < lowest or (highest is not None and value > highest):
            upper = f" and at most {highest:,}" if highest is not None else ""
            problems.append(f"{variable}={shown(raw)} must be at least {lowest:,}{upper}")
            continue
        values[name] = value
    return Limits(**values)


def load_limits(environ: Mapping[str, str] | None = None) -> Limits:
    """Read and validate only the ``GREENPLACE_MAX_*`` variables (``os.environ`` by default).

    Raises:
        ConfigError: listing every unusable limit variable, then how to fix it.
    """
    problems: list[str] = []
    limits = _limits(os.environ if environ is None else environ, problems)
    if problems:
        raise ConfigError("Unusable settings: " + "; ".join(problems) + ". To fix: correct or "
                          "unset the variable(s) named above (the README's 'Limits' section "
                          "says what each one means).")
    return limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Validated service settings; build with ``load_settings()``."""

    redis_url: str  # password included when one was given; print ``redacted_redis_url``
    redis_ca_cert: Path | None = None
    providers: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(dict.fromkeys(CLOUDS, DEFAULT_PROVIDER)))
    sim_config: Path | None = None
    reconcile_interval_s: float = 10.0
    visibility_timeout_s: float = 45.0
    task_time_limit_s: float = 25.0
    cooldown_s: float = 300.0
    stall_s: float = 120.0
    exit_code_wait_s: float = 600.0
    gc_interval_s: float = 900.0
    signals: str = "static"  # "static" (catalog figures) or "live" (the signal chain)
    retention_days: float = 30.0  # final jobs older than this are pruned; 0 = never
    prune_interval_s: float = 3600.0
    key_prefix: str = DEFAULT_KEY_PREFIX
    beat_lease_s: float = 10.0  # see scheduler/worker/beat.py
    catalog_refresh_interval_s: float = 86400.0  # beat's price refresh; 0 = off
    price_max_age_days: float = 30.0  # older chosen prices get a note; 0 = never
    limits: Limits = field(default_factory=Limits)
    # The API's URL as the cloud machines reach it: when set, dispatch mints a per-job agent
    # token and hands both to the boot script (GREENPLACE_API_URL, GREENPLACE_AGENT_TOKEN).
    agent_api_url: str | None = None
    # What the boot script pip-installs to run the job under `greenplace agent`
    # (GREENPLACE_AGENT_PACKAGE): a requirement, a wheel URL or `--index-url URL NAME`.
    agent_package: str = DEFAULT_AGENT_PACKAGE

    @property
    def tls(self) -> bool:
        return self.redis_url.startswith("rediss://")

    @property
    def broker_url(self) -> str:
        """The URL for Celery. kombu spells a Unix socket ``redis+socket://PATH?virtual_host=DB``
        and takes its password as user-info (``redis+socket://:PASSWORD@/PATH``). It refuses
        query parameters it does not know (redis-py's ``socket_timeout=`` ...) with a
        TypeError: only its ``ssl_*`` ones are passed on (the app sets its own timeouts)."""
        parts = urllib.parse.urlsplit(self.redis_url)
        if parts.scheme != "unix":
            pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            kept = [(name, value) for name, value in pairs if name.startswith("ssl_")]
            if len(kept) == len(pairs):
                return self.redis_url
            return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
        query = urllib.parse.parse_qs(parts.query)
        db = query.get("db", ["0"])[0]
        password = query.get("password", [""])[0]
        auth = f":{urllib.parse.quote(password, safe='')}@" if password else ""
        return f"redis+socket://{auth}{parts.path}?virtual_host={db}"

    @property
    def redacted_redis_url(self) -> str:
        """The Redis URL with any password replaced by ``***`` (safe to print and log)."""
        return redact_url(self.redis_url)

    @property
    def dispatch_lock_ttl_s(self) -> float:
        """How long a dispatch lock outlives a worker that died holding it."""
        return self.task_time_limit_s + 5.0

    @property
    def retention_s(self) -> float | None:
        """How long a final job is kept, in seconds; None keeps it forever."""
        return self.retention_days * 86400.0 if self.retention_days > 0 else None

    @property
    def broker_key_prefix(self) -> str:
        """kombu's ``global_keyprefix``: ``{prefix}:``, empty for the default prefix.

        Design choice: the default keeps Celery's keys where earlier releases put them,
        so an upgrade strands no queued message; any other prefix isolates the queues.
        """
        return "" if self.key_prefix == DEFAULT_KEY_PREFIX else f"{self.key_prefix}:"

    def provider_for(self, cloud: str) -> str:
        """The provider name that launches instances in ``cloud``."""
        return self.providers.get(cloud, DEFAULT_PROVIDER)

    def provider_config(self, name: str) -> dict[str, str]:
        """The adapter settings handed to ``providers.registry.get_provider`` (never secrets)."""
        if name != "local-sim":
            return {}
        config = {"redis_url": self.redis_url, "key_prefix": self.key_prefix}
        if self.redis_ca_cert is not None:
            config["redis_ca_cert"] = str(self.redis_ca_cert)
        if self.sim_config is not None:
            config["config_path"] = str(self.sim_config)
        return config


# Query parameters that carry a credential in the URLs people write (redis-py reads
# ``password``; the others appear in service and proxy URLs).
SECRET_QUERY_PARAMS = frozenset({"password", "passwd", "pass", "secret", "token", "auth",
                                 "access_token", "api_key", "apikey", "key"})


def redact_url(url: str) -> str:
    """``url`` with every credential replaced by ``***``: the user-info password and the
    values of secret-named query parameters (``?password=...``). Safe to print and log."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        url = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    base, sep, rest = url.partition("?")
    query, hash_sign, fragment = rest.partition("#")
    items = [item.partition("=") for item in query.split("&")] if sep else []
    if not any(urllib.parse.unquote_plus(name).lower() in SECRET_QUERY_PARAMS
               for name, _, _ in items):
        return url
    query = "&".join(f"{name}=***" if urllib.parse.unquote_plus(name).lower()
                     in SECRET_QUERY_PARAMS else f"{name}{eq}{value}"
                     for name, eq, value in items)
    return f"{base}?{query}{hash_sign}{fragment}"


def _credentials_from_query(url: str) -> str:
    """Move ``password`` / ``username`` query parameters of a ``redis://`` or ``rediss://``
    URL into its user-info, where kombu (Celery's broker) and redis-py both read them.

    kombu passes query parameters as connection keywords beside the user-info ones, so
    ``?password=`` made it fail with a TypeError at worker start. A password already in
    the user-info wins. A ``unix://`` URL keeps them in the query (``broker_url`` moves
    the password for kombu)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.query:
        return url
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    found = {name: value for name, value in pairs if name in ("username", "password")}
    if not found:
        return url
    user = parts.username if parts.username is not None else found.get("username", "")
    password = parts.password if parts.password is not None else found.get("password")
    host = parts.netloc.rpartition("@")[2]
    auth = urllib.parse.quote(urllib.parse.unquote(user), safe="")
    if password is not None:
        if parts.password is None:
            password = urllib.parse.quote(password, safe="")
        auth += f":{password}"
    rest = urllib.parse.urlencode([(n, v) for n, v in pairs if n not in found])
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{auth}@{host}", query=rest))


def _with_password(url: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None or parts.scheme == "unix":
        return url
    host = parts.netloc.rpartition("@")[2]
    user = urllib.parse.quote(parts.username or "", safe="")
    secret = urllib.parse.quote(password, safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}"))


def _parse_providers(raw: str, problems: list[str]) -> dict[str, str]:
    from greenplace.providers.registry import REGISTRY

    mapping = dict.fromkeys(CLOUDS, DEFAULT_PROVIDER)
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        cloud, sep, name = (s.strip() for s in item.partition("="))
        if not sep or not cloud or not name:
            problems.append(f"GREENPLACE_PROVIDERS item {item!r} is not CLOUD=PROVIDER")
            continue
        if cloud not in CLOUDS and cloud not in _overlay_clouds(problems):
            problems.append(f"GREENPLACE_PROVIDERS names unknown cloud {cloud!r} "
                            f"(clouds: {', '.join(CLOUDS)}, and those GREENPLACE_CATALOG_OVERLAY "
                            "declares)")
            continue
        if name not in REGISTRY:
            close = difflib.get_close_matches(name, list(REGISTRY), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"GREENPLACE_PROVIDERS maps {cloud} to unknown provider {name!r}."
                            f"{hint} (providers: {', '.join(sorted(REGISTRY))})")
            continue
        mapping[cloud] = name
    return mapping


def _overlay_clouds(problems: list[str]) -> frozenset[str]:
    """The clouds the catalog overlay declares (loaded only when a route names one)."""
    from greenplace.scheduler.catalog.loader import load_declared_catalog
    from greenplace.scheduler.exceptions import CatalogError

    try:  # refreshed prices add no cloud (and their Redis form reads these settings)
        return frozenset(r.cloud for r in load_declared_catalog().regions) - frozenset(CLOUDS)
    except CatalogError as exc:
        problems.append(f"the catalog overlay is unusable: {exc}")
        return frozenset()


def _seconds(env: Mapping[str, str], name: str, default: float, problems: list[str],
             *, minimum: float, unit: str = "seconds") -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not a number of {unit}")
        return default
    if not value >= minimum:
        problems.append(f"{name}={raw!r} must be at least {minimum:g}")
        return default
    return value


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the ``GREENPLACE_*`` variables (``os.environ`` by default).

    Raises:
        ConfigError: listing every unusable variable, then how to fix it.
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    url = env.get("GREENPLACE_REDIS_URL", "").strip() or DEFAULT_REDIS_URL
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        problems.append(f"GREENPLACE_REDIS_URL {redact_url(url)!r} must start with redis:// "
                        "(plain), rediss:// (TLS) or unix:// (socket)")
    url = _credentials_from_query(url)
    password = env.get("GREENPLACE_REDIS_PASSWORD", "")
    if password and scheme in ("redis", "rediss"):
        url = _with_password(url, password)
    ca_raw = env.get("GREENPLACE_REDIS_CA_CERT", "").strip()
    ca_cert = Path(ca_raw) if ca_raw else None
    if ca_cert is not None and not ca_cert.is_file():
        problems.append(f"GREENPLACE_REDIS_CA_CERT {ca_raw!r} is not a file")
    providers = _parse_providers(env.get("GREENPLACE_PROVIDERS", ""), problems)
    sim_raw = env.get("GREENPLACE_SIM_CONFIG", "").strip()
    sim_config = Path(sim_raw) if sim_raw else None
    if sim_config is not None and not sim_config.is_file():
        problems.append(f"GREENPLACE_SIM_CONFIG {sim_raw!r} is not a file")
    interval = _seconds(env, "GREENPLACE_RECONCILE_INTERVAL_S", 10.0, problems, minimum=0.1)
    visibility = _seconds(env, "GREENPLACE_VISIBILITY_TIMEOUT_S", 45.0, problems, minimum=1.0)
    task_limit = _seconds(env, "GREENPLACE_TASK_TIME_LIMIT_S", 25.0, problems, minimum=2.0)
    cooldown = _seconds(env, "GREENPLACE_COOLDOWN_S", 300.0, problems, minimum=0.0)
    stall = _seconds(env, "GREENPLACE_STALL_S", 120.0, problems, minimum=1.0)
    exit_wait = _seconds(env, "GREENPLACE_EXIT_CODE_WAIT_S", 600.0, problems, minimum=0.0)
    gc_interval = _seconds(env, "GREENPLACE_GC_INTERVAL_S", 900.0, problems, minimum=1.0)
    signals = env.get("GREENPLACE_SIGNALS", "").strip() or "static"
    if signals not in ("static", "live"):
        problems.append(f"GREENPLACE_SIGNALS={signals!r} must be static or live")
    retention_days = _seconds(env, "GREENPLACE_RETENTION_DAYS", 30.0, problems, minimum=0.0,
                              unit="days")
    prune_interval = _seconds(env, "GREENPLACE_PRUNE_INTERVAL_S", 3600.0, problems,
                              minimum=1.0)
    key_prefix = env.get("GREENPLACE_KEY_PREFIX", "").strip() or DEFAULT_KEY_PREFIX
    if not _KEY_PREFIX_RE.fullmatch(key_prefix):
        problems.append(f"GREENPLACE_KEY_PREFIX={key_prefix!r} must be 1 to 32 letters, "
                        "digits, '-', '_' or '.' (it starts every Redis key)")
        key_prefix = DEFAULT_KEY_PREFIX
    beat_lease = _seconds(env, "GREENPLACE_BEAT_LEASE_S", max(interval, 2.0), problems,
                          minimum=1.0)
    if env.get("GREENPLACE_BEAT_LEASE_S", "").strip() and beat_lease > 10 * interval:
        problems.append(
            f"GREENPLACE_BEAT_LEASE_S ({beat_lease:g}) must be at most 10 reconcile intervals "
            f"({10 * interval:g} s), or a beat failover would leave RUNNING jobs unfollowed "
            "that long")
    refresh_interval = _seconds(env, "GREENPLACE_CATALOG_REFRESH_INTERVAL_S", 86400.0,
                                problems, minimum=0.0)
    if 0 < refresh_interval < MIN_CATALOG_REFRESH_INTERVAL_S:
        problems.append(f"GREENPLACE_CATALOG_REFRESH_INTERVAL_S ({refresh_interval:g}) must be 0 "
                        f"(off) or at least {MIN_CATALOG_REFRESH_INTERVAL_S:g} s (the clouds' "
                        "price APIs are slow and rate-limited)")
    price_max_age = _seconds(env, "GREENPLACE_PRICE_MAX_AGE_DAYS", 30.0, problems, minimum=0.0,
                             unit="days")
    limits = _limits(env, problems)
    agent_api_url = env.get("GREENPLACE_AGENT_API_URL", "").strip() or None
    if agent_api_url is not None and (
            not agent_api_url.startswith(("http://", "https://"))
            or len(agent_api_url) > AGENT_API_URL_MAX_CHARS or "'" in agent_api_url):
        problems.append(f"GREENPLACE_AGENT_API_URL={shown(agent_api_url, quote=False)!r} must "
                        f"be an http:// or https:// URL of at most {AGENT_API_URL_MAX_CHARS} "
                        "characters (the API as the cloud machines reach it)")
    agent_package = " ".join(env.get("GREENPLACE_AGENT_PACKAGE", "").split()) \
        or DEFAULT_AGENT_PACKAGE
    if (len(agent_package) > AGENT_PACKAGE_MAX_CHARS or "'" in agent_package
            or '"' in agent_package or _CONTROL_CHARS.search(agent_package)):
        problems.append(f"GREENPLACE_AGENT_PACKAGE={shown(agent_package, quote=False)!r} must "
                        f"be a pip requirement or wheel URL of at most "
                        f"{AGENT_PACKAGE_MAX_CHARS} characters, without quotes (what each "
                        "job's boot script installs to run the command under the agent)")
    if visibility < task_limit + MAX_COUNTDOWN_S + 5:
        problems.append(
            f"GREENPLACE_VISIBILITY_TIMEOUT_S ({visibility:g}) must be at least the task "
            f"time limit ({task_limit:g}) + {MAX_COUNTDOWN_S:g} + 5 s, or a task still "
            "running would be handed to a second worker")
    if problems:
        raise ConfigError("Unusable settings: " + "; ".join(problems) + ". To fix: correct "
                          "or unset the variable(s) named above (the README's 'Running the "
                          "service' section says what each one means).")
    return Settings(
        redis_url=url, redis_ca_cert=ca_cert, providers=MappingProxyType(providers),
        sim_config=sim_config, reconcile_interval_s=interval, visibility_timeout_s=visibility,
        task_time_limit_s=task_limit, cooldown_s=cooldown, stall_s=stall,
        exit_code_wait_s=exit_wait, gc_interval_s=gc_interval, signals=signals,
        retention_days=retention_days, prune_interval_s=prune_interval, key_prefix=key_prefix,
        beat_lease_s=beat_lease, catalog_refresh_interval_s=refresh_interval,
        price_max_age_days=price_max_age, limits=limits, agent_api_url=agent_api_url,
        agent_package=agent_package,
    )
