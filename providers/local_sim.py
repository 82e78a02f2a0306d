"""local-sim: a first-party simulated multi-cloud, the service's embedded default provider.

Its clouds, regions and instance types are the catalog's. Its state lives in
Redis (``{prefix}sim:`` keys, ``gpsim:`` with the default ``GREENPLACE_KEY_PREFIX``), so
every worker process of a deployment shares one simulated world, and
its clock is the Redis server's (``TIME``), so every process agrees on it.

An instance it launches is PENDING for ``launch_latency_s``, RUNNING for its run
time, then EXITED with exit code 0 (or ``failure_exit_code``, or PREEMPTED, or
refused asynchronously after the launch latency: LAUNCH_FAILED, at the configured
rates). It behaves like a real cloud where the service's guarantees are at stake:

- **Idempotency**: ``submit`` with a key it has seen returns the instance that
  key created, never a second one (EC2 ClientToken semantics); the same key with
  different parameters is refused (``IdempotentParameterMismatch``).
- **Capacity**: at most N live (pending or running) instances per (cloud, region,
  instance type) when configured; beyond that ``CapacityError``.
- **Faults**: random capacity errors, synchronous or reported only after the
  launch was accepted (a stockout while allocating), and transient errors of both
  kinds: the request never arrived, or the instance was created and the answer
  was lost.
- **Clean-up**: ``delete`` removes an instance from its region's list at once;
  ``list_managed`` lists a region's instances in one pipeline.

Configuration (YAML file at ``GREENPLACE_SIM_CONFIG``, then ``GREENPLACE_SIM_*``
variables, then the adapter config, each overriding the one before)::

    launch_latency_s: 2          # pending -> running
    run_time_s: 10               # running -> finished
    run_time_s_by_name:          # per job name (glob), first match wins
      "long-*": 600
    api_latency_s: 0             # how long submit() takes to answer
    capacity:                    # cloud:region:instance_type glob -> live instances
      "gcp:europe-north1:*": 0   #   first match wins; unmatched offers are unlimited
    capacity_error_rate: 0.0     # share of launches refused for capacity
    transient_error_rate: 0.0    # share of launches that fail transiently
    failure_rate: 0.0            # share of jobs whose command exits non-zero
    failure_exit_code: 1         # ... with this exit code
    launch_failure_rate: 0.0     # share of accepted launches refused after launch_latency_s
    preemption_rate: 0.0         # share of spot instances reclaimed mid-run
    seed: null                   # an int makes the fault dice reproducible

As variables: ``GREENPLACE_SIM_RUN_TIME_S=2``,
``GREENPLACE_SIM_CAPACITY="gcp:europe-north1:*=0,aws:*=4"``, and so on.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import os
import random
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydantic
import redis
from pydantic import BaseModel, ConfigDict, Field

from greenplace.providers.base import (
    Feature,
    InstanceHandle,
    InstanceState,
    InstanceStatus,
    JobLaunch,
    LaunchRequest,
    ManagedInstance,
    Placement,
    job_tags,
    startup_script,
)
from greenplace.scheduler.exceptions import (
    CapacityError,
    ConfigError,
    InvalidRequestError,
    TransientError,
)

NAME = "local-sim"
_FIX_REDIS = "To fix: start Redis or point GREENPLACE_REDIS_URL at it"
_FIX_CAPACITY = ("To fix: nothing; greenplace fails over to the next candidate (raise the "
                 "capacity in the local-sim config to avoid it)")
_FIX_RETRY = ("To fix: nothing; retry the same call with the same idempotency key "
              "(lower transient_error_rate in the local-sim config to see fewer)")
DEFAULT_KEY_PREFIX = "gp"
_ENV_PREFIX = "GREENPLACE_SIM_"

# ARGV[9]: a fault the caller rolled for a *new* launch ('capacity', 'transient' or '');
# a key seen before always returns its instance, as a cloud's idempotency does.
# KEYS[2] (an offer's live instances, scored by when they end) is pruned only when a
# capacity applies, the only time it is counted.
_SUBMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local existing = redis.call('GET', KEYS[1])
if existing then
  local digest = redis.call('HGET', ARGV[8] .. existing, 'digest')
  if digest ~= ARGV[2] then return {'mismatch', existing} end
  return {'existing', existing}
end
if ARGV[9] ~= '' then return {ARGV[9], ''} end
local cap = tonumber(ARGV[3])
if cap >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= cap then return {'capacity', ''} end
end
local id = ARGV[1]
local running_at = now + tonumber(ARGV[4])
local ends_at = running_at + tonumber(ARGV[5])
redis.call('HSET', ARGV[8] .. id, 'instance_id', id, 'digest', ARGV[2],
  'launched_at', string.format('%.6f', now), 'running_at', string.format('%.6f', running_at),
  'ends_at', string.format('%.6f', ends_at), 'outcome', ARGV[6], 'request', ARGV[7])
redis.call('SET', KEYS[1], id)
redis.call('ZADD', KEYS[2], ends_at, id)
redis.call('ZADD', KEYS[3], now, id)
redis.call('ZADD', KEYS[4], now, id)
return {'created', id}
"""

# KEYS: instance hash, its offer's live zset, its region index. The hash stays (for
# `greenplace sim instances`), marked deleted.
_DELETE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
if redis.call('HGET', KEYS[1], 'terminated_at') then return 'already' end
redis.call('HSET', KEYS[1], 'terminated_at', string.format('%.6f', now))
redis.call('ZREM', KEYS[2], ARGV[1])
return 'deleted'
"""


class SimConfig(BaseModel):
    """The simulator's behaviour (a trust boundary: YAML and environment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    launch_latency_s: float = Field(2.0, ge=0, le=86_400)
    run_time_s: float = Field(10.0, ge=0, le=30 * 86_400)
    run_time_s_by_name: dict[str, float] = Field(default_factory=dict)
    api_latency_s: float = Field(0.0, ge=0, le=60)
    capacity: dict[str, int] = Field(default_factory=dict)
    capacity_error_rate: float = Field(0.0, ge=0, le=1)
    transient_error_rate: float = Field(0.0, ge=0, le=1)
    failure_rate: float = Field(0.0, ge=0, le=1)
    failure_exit_code: int = Field(1, ge=1, le=255)
    launch_failure_rate: float = Field(0.0, ge=0, le=1)
    preemption_rate: float = Field(0.0, ge=0, le=1)
    seed: int | None = None  # fixes the fault dice of each process, for reproducible runs

    @pydantic.field_validator("capacity")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"capacities must be >= 0, got {bad}")
        return value

    def capacity_for(self, offer: str) -> int | None:
        """Max live instances of ``cloud:region:instance_type``; None = unlimited."""
        for pattern, limit in self.capacity.items():
            if fnmatch.fnmatchcase(offer, pattern):
                return limit
        return None

    def run_time_for(self, job_name: str) -> float:
        for pattern, seconds in self.run_time_s_by_name.items():
            if fnmatch.fnmatchcase(job_name, pattern):
                return seconds
        return self.run_time_s


def _pairs(raw: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        key, sep, value = item.rpartition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} item {item!r} is not PATTERN=VALUE. To fix: write e.g. "
                              f"{what}='gcp:europe-north1:*=0,aws:*=4'.")
        out[key.strip()] = value.strip()
    return out


def load_sim_config(
    config: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None,
) -> SimConfig:
    """Merge defaults, the YAML file, ``GREENPLACE_SIM_*`` and ``config``; validate.

    Raises:
        ConfigError: a missing or invalid file or value, naming it.
    """
    from greenplace.scheduler.exceptions import SpecError
    from greenplace.scheduler.yamlfile import read_yaml, validation_message

    env = os.environ if environ is None else environ
    config = config or {}
    data: dict[str, Any] = {}
    path_text = config.get("config_path") or env.get("GREENPLACE_SIM_CONFIG", "")
    where = "local-sim settings"
    if path_text:
        where = path_text
        try:
            loaded = read_yaml(Path(path_text), what="local-sim config")
        except SpecError as exc:
            raise ConfigError(str(exc)) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path_text}: the local-sim config must be a YAML mapping. "
                              "To fix: write a mapping of its fields "
                              f"({', '.join(SimConfig.model_fields)}).")
        data.update(loaded or {})
    overrides: dict[str, str] = {}
    for name in SimConfig.model_fields:
        env_value = env.get(_ENV_PREFIX + name.upper())
        if env_value is not None and env_value.strip():
            overrides[name] = env_value
        if name in config:
            overrides[name] = config[name]
    for name, raw in overrides.items():
        data[name] = _pairs(raw, _ENV_PREFIX + name.upper()) if name in (
            "capacity", "run_time_s_by_name") else raw
    try:
        return SimConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(validation_message(exc, where=where)) from exc


class LocalSim:
    """The simulated cloud. Build it with ``create(config)``."""

    name = NAME
    features = frozenset(Feature)

    def __init__(self, *, config: SimConfig, redis_url: str, redis_ca_cert: str | None = None,
                 key_prefix: str = DEFAULT_KEY_PREFIX) -> None:
        self.config = config
        self._keys = f"{key_prefix}sim"  # the deployment's prefix: "gp" -> "gpsim:..."
        self._redis_url = redis_url
        self._redis_ca_cert = redis_ca_cert
        self._client: redis.Redis | None = None
        self._submit_script: Any = None
        self._offers: dict[str, Any] | None = None
        self._random = random.Random(config.seed)

    # plumbing -----------------------------------------------------------------------
    @property
    def client(self) -> redis.Redis:
        """The Redis client, created on first use (the dry run never needs one)."""
        if self._client is None:
            from greenplace.scheduler.store import redis_client

            self._client = redis_client(self._redis_url, ca_cert=self._redis_ca_cert)
        return self._client

    def _offer(self, offer_key: str) -> Any:
        if self._offers is None:
            from greenplace.scheduler.catalog import load_catalog

            self._offers = {f"{o.cloud}:{o.region}:{o.instance_type}": o
                            for o in load_catalog().offers}
        return self._offers.get(offer_key)

    def _server_time(self) -> float:
        seconds, micros = self.client.time()
        return float(seconds) + micros / 1_000_000

    # the Provider protocol ----------------------------------------------------------
    def check_credentials(self) -> str:
        from greenplace.scheduler.settings import redact_url

        self.client.ping()
        return f"local-sim (no credentials needed; state in Redis at {redact_url(self._redis_url)})"

    def prepare(self, job: JobLaunch, placement: Placement) -> LaunchRequest:
        """The launch request, the way a cloud would receive it. Pure."""
        tags = job_tags(job)
        return LaunchRequest(
            provider=NAME, cloud=placement.cloud, region=placement.region,
            instance_type=placement.instance_type, spot=placement.spot, tags=tags,
            startup_script=startup_script(job),
            payload={
                "Cloud": placement.cloud, "Region": placement.region,
                "InstanceType": placement.instance_type,
                "Accelerators": f"{placement.accelerator_count}x {placement.accelerator}",
                "Market": "spot" if placement.spot else "on-demand",
                "JobName": job.name, "Tags": tags,
            },
        )

    def submit(self, request: LaunchRequest, *, idempotency_key: str) -> InstanceHandle:
        """Launch, or return the instance an earlier call with this key launched."""
        offer_key = f"{request.cloud}:{request.region}:{request.instance_type}"
        digest = hashlib.blake2b(json.dumps(
            [request.cloud, request.region, request.instance_type, request.spot,
             request.tags, request.startup_script], sort_keys=True).encode(),
            digest_size=16).hexdigest()
        self._check_request(request, offer_key)
        roll = self._random.random()
        rate_c, rate_t = self.config.capacity_error_rate, self.config.transient_error_rate
        fault = ("capacity" if roll < rate_c else
                 "transient" if roll < rate_c + rate_t / 2 else "")
        lose_answer = rate_c + rate_t / 2 <= roll < rate_c + rate_t
        try:
            status, instance_id = self._create(request, idempotency_key, offer_key, digest,
                                               fault=fault)
        except redis.RedisError as exc:
            raise _unreachable(exc, "submit") from exc
        if status == "capacity" and fault:
            raise CapacityError(
                f"simulated: no {request.instance_type} capacity in "
                f"{request.cloud}:{request.region} right now. {_FIX_CAPACITY}",
                provider=NAME, operation="submit", code="InsufficientInstanceCapacity")
        if status == "transient":
            raise TransientError(f"simulated: request throttled before it arrived. {_FIX_RETRY}",
                                 provider=NAME, operation="submit", code="RequestLimitExceeded")
        if status == "capacity":
            limit = self.config.capacity_for(offer_key)
            raise CapacityError(
                f"simulated: {offer_key} is full ({limit} live instance(s) allowed). "
                f"{_FIX_CAPACITY}",
                provider=NAME, operation="submit", code="InsufficientInstanceCapacity")
        if status == "mismatch":
            raise InvalidRequestError(
                f"idempotency key {idempotency_key!r} was used for a different request "
                f"(instance {instance_id}). To fix: derive one key per launch attempt.",
                provider=NAME, operation="submit", code="IdempotentParameterMismatch")
        if self.config.api_latency_s:
            time.sleep(self.config.api_latency_s)
        if lose_answer and status == "created":
            raise TransientError(
                f"simulated: the instance was created but the answer was lost. {_FIX_RETRY}",
                provider=NAME, operation="submit", code="ResponseLost")
        return InstanceHandle(provider=NAME, cloud=request.cloud, region=request.region,
                              instance_id=instance_id, zone=f"{request.region}-sim-a")

    def _check_request(self, request: LaunchRequest, offer_key: str) -> None:
        offer = self._offer(offer_key)
        if offer is None:
            raise InvalidRequestError(
                f"instance type {request.instance_type} is not offered in "
                f"{request.cloud}:{request.region}. To fix: use an offer from the catalog.",
                provider=NAME, operation="submit", code="InvalidInstanceType")
        if request.spot and offer.spot_price_usd_per_hour is None:
            raise InvalidRequestError(
                f"{offer_key} has no spot market. To fix: launch it on demand.",
                provider=NAME, operation="submit", code="SpotNotOffered")

    def _create(self, request: LaunchRequest, idempotency_key: str, offer_key: str,
                digest: str, *, fault: str) -> tuple[str, str]:
        limit = self.config.capacity_for(offer_key)
        job_name = str(request.payload.get("JobName", ""))
        run_time = self.config.run_time_for(job_name)
        outcome, roll = "exit:0", self._random.random()
        if self._random.random() < self.config.launch_failure_rate:
            outcome = "launch_failed"
        elif request.spot and roll < self.config.preemption_rate:
            outcome, run_time = "preempted", run_time / 2
        elif self._random.random() < self.config.failure_rate:
            outcome = f"exit:{self.config.failure_exit_code}"
        record = json.dumps({
            "job_id": request.tags.get("greenplace:job-id", ""),
            "attempt": request.tags.get("greenplace:attempt", ""),
            "job_name": job_name, "idempotency_key": idempotency_key,
            "cloud": request.cloud, "region": request.region,
            "instance_type": request.instance_type, "spot": request.spot,
        })
        if self._submit_script is None:
            self._submit_script = self.client.register_script(_SUBMIT_LUA)
        status, instance_id = self._submit_script(
            keys=[f"{self._keys}:idem:{idempotency_key}", f"{self._keys}:live:{offer_key}",
                  f"{self._keys}:instances", f"{self._keys}:region:{request.region}"],
            args=[f"sim-{secrets.token_hex(8)}", digest, -1 if limit is None else limit,
                  repr(self.config.launch_latency_s), repr(run_time), outcome, record,
                  f"{self._keys}:instance:", fault])
        return str(status), str(instance_id)

    def status(self, handle: InstanceHandle) -> InstanceStatus:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.time()
            pipe.hgetall(f"{self._keys}:instance:{handle.instance_id}")
            (seconds, micros), fields = pipe.execute()
        except redis.RedisError as exc:
            raise _unreachable(exc, "status") from exc
        if not fields:
            return InstanceStatus(state=InstanceState.MISSING,
                                  detail=f"no instance {handle.instance_id}")
        return _status_of(fields, float(seconds) + micros / 1_000_000)

    def delete(self, handle: InstanceHandle) -> bool:
        """Delete at once (the simulator has no slow deletions); True, also when unknown."""
        offer_key = None
        try:
            raw = self.client.hget(f"{self._keys}:instance:{handle.instance_id}", "request")
            if raw:
                r = json.loads(raw)
                offer_key = f"{r['cloud']}:{r['region']}:{r['instance_type']}"
            self.client.eval(_DELETE_LUA, 3, f"{self._keys}:instance:{handle.instance_id}",
                             f"{self._keys}:live:{offer_key}",
                             f"{self._keys}:region:{handle.region}",
                             handle.instance_id)
        except redis.RedisError as exc:
            raise _unreachable(exc, "delete") from exc
        return True

    def _read_index(self, index: str) -> tuple[float, list[dict[str, str]]]:
        """(server time, every instance hash the zset ``index`` names), in one pipeline."""
        ids = [str(i) for i in self.client.zrange(index, 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for instance_id in ids:
            pipe.hgetall(f"{self._keys}:instance:{instance_id}")
        (seconds, micros), *rows = pipe.execute()
        return float(seconds) + micros / 1_000_000, rows

    def list_managed(self, region: str) -> list[ManagedInstance]:
        """Every instance in ``region`` not deleted yet, read in one pipeline."""
        try:
            now, rows = self._read_index(f"{self._keys}:region:{region}")
        except redis.RedisError as exc:
            raise _unreachable(exc, "list_managed") from exc
        out = []
        for fields in rows:
            if not fields or fields.get("terminated_at"):
                continue
            request = json.loads(fields["request"])
            handle = InstanceHandle(provider=NAME, cloud=request["cloud"],
                                    region=request["region"],
                                    instance_id=fields["instance_id"],
                                    zone=f"{request['region']}-sim-a")
            attempt = str(request.get("attempt") or "")
            out.append(ManagedInstance(
                handle=handle, job_id=request.get("job_id") or None,
                attempt=int(attempt) if attempt.isdigit() else None,
                status=_status_of(fields, now, read_exit_code=False)))
        return out

    # beyond the protocol: what `greenplace sim instances` shows -----------------------
    def instances(self) -> list[dict[str, Any]]:
        """Every instance launched so far, oldest first, with its current state."""
        now, rows = self._read_index(f"{self._keys}:instances")
        out = []
        for fields in rows:
            if not fields:
                continue
            request = json.loads(fields["request"])
            out.append({
                "instance_id": fields["instance_id"], "job_id": request["job_id"],
                "job_name": request["job_name"], "attempt": int(request["attempt"] or 0),
                "idempotency_key": request["idempotency_key"], "cloud": request["cloud"],
                "region": request["region"], "instance_type": request["instance_type"],
                "spot": request["spot"], "state": str(_status_of(fields, now).state),
                "launched_at": dt.datetime.fromtimestamp(float(fields["launched_at"]), dt.UTC)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            })
        return out


def _unreachable(exc: Exception, operation: str) -> TransientError:
    return TransientError(f"simulator state unreachable: {exc}. {_FIX_REDIS}", provider=NAME,
                          operation=operation, code="StateUnavailable")


def _status_of(fields: Mapping[str, str], now: float, *,
               read_exit_code: bool = True) -> InstanceStatus:
    """The simulated state at ``now``; list calls do not read exit codes (like a cloud's)."""
    if fields.get("terminated_at"):
        return InstanceStatus(state=InstanceState.TERMINATED, detail="deleted on request")
    outcome = fields["outcome"]
    if now < float(fields["running_at"]):
        return InstanceStatus(state=InstanceState.PENDING, detail="booting")
    if outcome == "launch_failed":
        request = json.loads(fields["request"])
        return InstanceStatus(
            state=InstanceState.LAUNCH_FAILED, detail="allocation failed after the launch",
            error=CapacityError(
                f"simulated: {request['instance_type']} in {request['cloud']}:"
                f"{request['region']} could not be allocated after the launch was accepted. "
                f"{_FIX_CAPACITY}", provider=NAME, operation="status",
                code="InsufficientInstanceCapacity"))
    if now < float(fields["ends_at"]):
        return InstanceStatus(state=InstanceState.RUNNING)
    if outcome == "preempted":
        return InstanceStatus(state=InstanceState.PREEMPTED, detail="spot capacity reclaimed")
    if not read_exit_code:
        return InstanceStatus(state=InstanceState.EXITED, detail="powered off")
    code = int(outcome.removeprefix("exit:"))  # "exit:<code>", what the command will return
    return InstanceStatus(state=InstanceState.EXITED, exit_code=code,
                          detail=f"the job's command exited {code}")


def create(config: Mapping[str, str]) -> LocalSim:
    """The registry factory. ``config``: ``redis_url``, ``redis_ca_cert``, ``key_prefix``,
    ``config_path`` and any SimConfig field (as text); missing ones come from the environment.

    Raises:
        ConfigError: an unusable simulator configuration or Redis URL.
    """
    redis_url = config.get("redis_url")
    ca_cert = config.get("redis_ca_cert")
    key_prefix = config.get("key_prefix") or DEFAULT_KEY_PREFIX
    if not redis_url:
        from greenplace.scheduler.settings import load_settings

        settings = load_settings()
        redis_url = settings.redis_url
        ca_cert = str(settings.redis_ca_cert) if settings.redis_ca_cert else None
        key_prefix = settings.key_prefix
    return LocalSim(config=load_sim_config(config), redis_url=redis_url, redis_ca_cert=ca_cert,
                    key_prefix=key_prefix)
