"""The Redis job store: job records, atomic state transitions, event history, coordination.

Owns every Redis key the service writes under its prefix (``GREENPLACE_KEY_PREFIX``,
default ``gp``; the local-sim provider keeps its own ``{prefix}sim:`` keys, the signal
cache ``{prefix}:signal:``). With the default prefix:

=============================  ======================================================
key                            holds
=============================  ======================================================
``gp:job:{id}``                hash: the job record (spec, policy, frozen decision,
                               attempts, provider handle, timestamps, reasons, the
                               agent's figures, the run's hourly intensity series)
``gp:job:{id}:events``         list: the append-only event history (JSON per event)
``gp:jobs``                    zset: every job id, scored by submission time
``gp:team:{team}``             zset: the team's job ids, scored by submission time
``gp:job:{id}:explain``        string: the frozen decision's candidate table (the 12
                               best and 12 rejected; zlib'd JSON columns and rows, base64)
``gp:token:{sha256}``          hash: an API token's team, role, name (never the token)
``gp:tokens``                  hash: token id -> its sha256 (``scheduler/tokens.py``)
``gp:agent-key``               string: the random key agent tokens are derived from
``gp:state:{STATE}``           zset: the ids in that state, scored by when they
                               entered it; DEFERRED ones by their not-before time
``gp:terminate``               set: final jobs whose instance must still be deleted
``gp:orphans``                 hash: ``{job id}/{attempt}`` -> handle of a superseded
                               attempt's instance (launch failed, preempted) to delete
``gp:regions``                 set: ``provider/region`` pairs greenplace launched in
                               (what the leak sweep lists)
``gp:lock:{name}``             dispatch / reconcile locks and the beat lease (SET NX
                               PX, owner token)
``gp:beat:sent``               hash: each beat entry -> when it was last sent (the leader's)
``gp:workers``                 zset: worker hostname -> last heartbeat (epoch seconds;
                               ``scheduler/worker/heartbeat.py``)
``gp:cooldowns``               zset: exhausted (cloud, region, instance type) -> until
``gp:nudge:{id}``              reconcile re-enqueued this stalled job recently
``gp:metrics:placement_s``     hash: the placement latency histogram (these
                               ``metrics`` keys: see ``scheduler/metrics.py``)
``gp:metrics:dispatches``      hash: ``{cloud}|{outcome}`` -> launch attempts
``gp:metrics:failovers``       hash: ``{cloud}|{reason}`` -> failovers
``gp:metrics:co2e``            hash: placed jobs, their estimated CO2e and savings
``gp:metrics:signal_errors``   hash: ``{source}|{reason}`` -> failed signal calls
``gp:metrics:signal_at``       zset: live signal source -> newest observed_at
=============================  ======================================================

Retention: ``prune`` deletes final jobs (record, events, candidate table, index entries,
nudge key) some time after they ended, one Lua script per job, and never a job whose
instance deletion is still pending (in ``gp:terminate`` or with an entry in
``gp:orphans``).

Every state change runs in one Lua script that checks the current state (and
optionally the attempt number) and writes the new state, the indexes and the
event together, so two workers can never both move a job, and an illegal move
is refused with ``IllegalTransitionError``.

Durability: jobs survive a Redis restart when Redis persists them. Run Redis
with ``appendonly yes``; ``appendfsync always`` loses nothing that was
acknowledged, ``everysec`` (the default fsync policy) at most the last second. The Celery
broker's queues live in the same Redis and are persisted the same way.
Design choice: the store targets one Redis server (or a primary with replicas),
not Redis Cluster: the scripts touch index keys that are not declared up front.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import functools
import json
import re
import secrets
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from greenplace.policies.model import Policy
from greenplace.providers.base import InstanceHandle, Placement
from greenplace.scheduler.exceptions import (
    ConfigError,
    IllegalTransitionError,
    JobNotFoundError,
    UserInputError,
    shown,
)
from greenplace.scheduler.jobs import Job
from greenplace.scheduler.settings import Settings


class JobState(StrEnum):
    """The life cycle of one job (see ``TRANSITIONS``)."""

    QUEUED = "QUEUED"  # submitted; waiting for `place`
    PLACED = "PLACED"  # ranked decision frozen; waiting for `dispatch`
    DEFERRED = "DEFERRED"  # placed for a greener window; reconcile releases it
    DISPATCHING = "DISPATCHING"  # a launch attempt is in flight
    RUNNING = "RUNNING"  # the provider accepted the launch; reconcile follows it
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNSCHEDULABLE = "UNSCHEDULABLE"  # no feasible candidate, or every attempt refused


S = JobState
FINAL_STATES = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.UNSCHEDULABLE})
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.PLACED, S.DEFERRED, S.UNSCHEDULABLE, S.FAILED, S.CANCELLED}),
    S.PLACED: frozenset({S.DISPATCHING, S.UNSCHEDULABLE, S.FAILED, S.CANCELLED}),
    # -> DEFERRED: its batch plan was revised (``planning/replan.py``): a new planned start.
    S.DEFERRED: frozenset({S.PLACED, S.DEFERRED, S.UNSCHEDULABLE, S.FAILED, S.CANCELLED}),
    # -> PLACED: the attempt was refused (capacity / quota); the next candidate is tried.
    # -> DEFERRED: a planned job's refusal re-planned its batch, and it starts later.
    S.DISPATCHING: frozenset({S.RUNNING, S.PLACED, S.DEFERRED, S.UNSCHEDULABLE, S.FAILED,
                              S.CANCELLED}),
    # -> PLACED: a spot instance was preempted, or the cloud refused the launch after
    # accepting it (an asynchronous stockout); the job is launched again.
    # -> UNSCHEDULABLE: that refusal came on the last candidate.
    # -> DEFERRED: that refusal re-planned the job's batch, and it starts later.
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PLACED, S.DEFERRED,
                          S.UNSCHEDULABLE}),
    **{final: frozenset() for final in FINAL_STATES},
}

# One or more state changes of one job, in order, stopping at the first refused one.
# KEYS: job hash, events list[, lock]. ARGV: state-index prefix, job id, set to SADD the
# id to ('' = none), lock token, number of moves; then per move: allowed from-states,
# to-state ('' = keep), attempt guard, event JSON, index score, number of field/value
# items, the items; last, the candidate table to keep at '{job hash}:explain' ('' = none).
# Returns per move {status, state it was in}; 'skipped' after a refusal. The lock (if
# given) is released at the end, whatever happened, when the token still owns it.
# The moves are checked one after the other against the record as the earlier ones
# left it, then written together: one HSET, one index move (first state -> last state),
# one RPUSH of their events. Nothing outside the script sees the states in between.
_MOVES_LUA = """
local read = redis.call('HMGET', KEYS[1], 'state', 'attempt')
local first, cur, attempt = read[1], read[1], read[2]
local results, writes, events = {}, {}, {}
local score
local i = 6
local go = true
for m = 1, tonumber(ARGV[5]) do
  local n = tonumber(ARGV[i + 5])
  local status, was = 'skipped', ''
  if go then
    if not cur then
      status = 'missing'
    elseif not string.find(',' .. ARGV[i] .. ',', ',' .. cur .. ',', 1, true) then
      status, was = 'illegal', cur
    elseif ARGV[i + 2] ~= '' and attempt ~= ARGV[i + 2] then
      status, was = 'stale', cur
    else
      status, was = 'ok', cur
      for k = i + 6, i + 5 + n, 2 do
        writes[#writes + 1] = ARGV[k]
        writes[#writes + 1] = ARGV[k + 1]
        if ARGV[k] == 'attempt' then attempt = ARGV[k + 1] end
      end
      if ARGV[i + 1] ~= '' then
        cur, score = ARGV[i + 1], ARGV[i + 4]
        writes[#writes + 1] = 'state'
        writes[#writes + 1] = cur
      end
      events[#events + 1] = '{"from":"' .. was .. '",' .. string.sub(ARGV[i + 3], 2)
    end
    go = status == 'ok'
  end
  results[#results + 1] = status
  results[#results + 1] = was
  i = i + 6 + n
end
if #events > 0 then
  redis.call('HSET', KEYS[1], unpack(writes))
  if score then
    redis.call('ZREM', ARGV[1] .. first, ARGV[2])
    redis.call('ZADD', ARGV[1] .. cur, score, ARGV[2])
  end
  redis.call('RPUSH', KEYS[2], unpack(events))
  if ARGV[3] ~= '' then redis.call('SADD', ARGV[3], ARGV[2]) end
  if ARGV[i] ~= '' then redis.call('SET', KEYS[1] .. ':explain', ARGV[i]) end
end
if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
return results
"""

# KEYS: lock, job hash, cool-downs zset. ARGV: token, ttl ms, now (epoch s).
_LOCK_AND_READ_LUA = """
local taken = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
local fields = redis.call('HGETALL', KEYS[2])
if taken and #fields == 0 then redis.call('DEL', KEYS[1]) end
return {taken and 1 or 0, fields, redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[3], '+inf')}
"""

# Delete one final job that ended at or before a cutoff, with everything that names it.
# ARGV: key prefix ('gp:'), job id, cutoff (state-index score), comma-separated final
# states, the state index the id was read from, '1' for a dry run. Returns {status, state,
# score, name}: 'pruned' (or 'prunable' on a dry run), or why the job is kept: 'active' (not
# final), 'young' (ended after the cutoff), 'deleting' (its instance, or a superseded
# attempt's, is not yet confirmed deleted). A record already gone counts as pruned: its
# leftover index entry and events are removed.
_PRUNE_LUA = """
local p, id, cutoff = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job, events = p .. 'job:' .. id, p .. 'job:' .. id .. ':events'
local read = redis.call('HMGET', job, 'state', 'attempt', 'name', 'team')
local state, attempt, name = read[1], tonumber(read[2]) or 0, read[3] or ''
local team = read[4]
local status, score = 'pruned', ''
if not state then
  state = ARGV[5]
elseif not string.find(',' .. ARGV[4] .. ',', ',' .. state .. ',', 1, true) then
  return {'active', state, '', name}
else
  score = redis.call('ZSCORE', p .. 'state:' .. state, id)
  if not score or tonumber(score) > cutoff then return {'young', state, score or '', name} end
  if redis.call('SISMEMBER', p .. 'terminate', id) == 1 then
    return {'deleting', state, score, name}
  end
  for a = 0, attempt do
    if redis.call('HEXISTS', p .. 'orphans', id .. '/' .. a) == 1 then
      return {'deleting', state, score, name}
    end
  end
end
if ARGV[6] == '1' then return {'prunable', state, score, name} end
redis.call('DEL', job, events, job .. ':explain', p .. 'nudge:' .. id)
redis.call('ZREM', p .. 'jobs', id)
if team then redis.call('ZREM', p .. 'team:' .. team, id) end
redis.call('ZREM', p .. 'state:' .. state, id)
return {status, state, score, name}
"""

# An agent's report, on a job that still exists (a pruned job's late report must not
# recreate a partial record). KEYS: job hash. ARGV: the energy measured since the command
# started, in kWh ('' = none; kept only when above the stored one, so a resent report
# counts once), then field/value pairs.
_TELEMETRY_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then
  local was = tonumber(redis.call('HGET', KEYS[1], 'measured_energy_kwh') or '-1')
  if tonumber(ARGV[1]) > was then redis.call('HSET', KEYS[1], 'measured_energy_kwh', ARGV[1]) end
end
for k = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[k], ARGV[k + 1]) end
return 1
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class TransitionRefused(IllegalTransitionError):
    """A transition refused because the job is in another state (``current``) or attempt."""

    def __init__(self, message: str, *, current: JobState) -> None:
        super().__init__(message)
        self.current = current


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def new_job_id() -> str:
    """A short random job id (64 bits: collisions are not a practical concern)."""
    return secrets.token_hex(8)


JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def checked_job_id(job_id: str) -> str:
    """``job_id`` if it can be a job id, else JobNotFoundError.

    Ids become parts of Redis keys: an id such as ``ID:events`` would address another
    key (the events list, a WRONGTYPE error), so an id outside the pattern is refused
    before it reaches Redis, with the same message as an unknown one.
    """
    if JOB_ID_PATTERN.fullmatch(job_id) is None:
        raise job_not_found(job_id)
    return job_id


DEFAULT_TEAM = "default"
_TEAM = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def checked_team(team: str) -> str:
    """``team`` when it is a valid team name (it becomes part of Redis keys), else an error."""
    if not _TEAM.fullmatch(team):
        raise UserInputError(
            f"team {shown(team)} is not a valid team name. To fix: use 1 to 63 lower-case "
            "letters, digits and '-', starting with a letter or digit.")
    return team


def job_not_found(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"No job has id {shown(job_id)} (final jobs are deleted GREENPLACE_RETENTION_DAYS after "
        "they end). To fix: use an id printed by `greenplace submit` or listed by "
        "`greenplace status`.")


def offer_key(placement: Placement) -> str:
    """``cloud:region:instance_type``: the unit capacity errors and cool-downs apply to."""
    return f"{placement.cloud}:{placement.region}:{placement.instance_type}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One entry of a job's event history."""

    at: str
    kind: str  # "transition" or "note"
    state_from: str
    state_to: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "from": self.state_from,
                "to": self.state_to, "message": self.message, "data": self.data}


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptReason:
    """Why one launch attempt did not produce a running instance."""

    attempt: int
    cloud: str
    region: str
    instance_type: str
    error: str  # the ProviderError class name
    code: str | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunHour:
    """One hour of a measured run's window, as attribution charged it."""

    start: dt.datetime  # the hour's start (UTC, on the hour)
    seconds: float  # the run's seconds in that hour
    g_per_kwh: float | None  # the grid average then (None: no live source answered)
    source: str | None  # which source answered

    def as_json(self) -> dict[str, Any]:
        return {"start": iso(self.start), "seconds": self.seconds,
                "g_per_kwh": self.g_per_kwh, "source": self.source}


def pack_run_hours(hours: Sequence[RunHour]) -> str:
    """A run's hourly series as the job hash keeps it (``run_intensity_series``).

    Design choice: it sits in the job hash beside the average (so ``prune`` removes it with
    the record) and is stored small: the first hour once, then per hour its offset in
    hours, the run's whole seconds in it, the intensity to 0.1 g/kWh and an index into the
    list of sources, about 20 bytes an hour: a few hundred bytes for a run of some hours,
    1.5 KB at attribution's 72-hour cap.
    """
    if not hours:
        return ""
    first = hours[0].start
    sources = sorted({h.source for h in hours if h.source})
    rows = [[round((h.start - first).total_seconds() / 3600), round(h.seconds),
             None if h.g_per_kwh is None else round(h.g_per_kwh, 1),
             None if h.source is None else sources.index(h.source)] for h in hours]
    return _dumps({"from": iso(first), "sources": sources, "hours": rows})


def unpack_run_hours(text: str) -> tuple[RunHour, ...]:
    """The series ``pack_run_hours`` wrote (() for none)."""
    if not text:
        return ()
    packed = json.loads(text)
    first, sources = parse_iso(packed["from"]), packed["sources"]
    return tuple(RunHour(start=first + dt.timedelta(hours=offset_h), seconds=float(seconds),
                         g_per_kwh=None if g is None else float(g),
                         source=None if source is None else str(sources[source]))
                 for offset_h, seconds, g, source in packed["hours"])


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A job as the store holds it. Built only by ``JobStore``."""

    job_id: str
    name: str
    team: str
    state: JobState
    spec: dict[str, Any]  # JobSpec.model_dump(mode="json")
    policy_text: str  # Policy.model_dump_json(): the policy as submitted
    decision: dict[str, Any] | None  # PlacementDecision.summary(explain=False)
    placements_text: str  # the frozen ranking (the failover order), as stored
    attempt: int  # launch attempts started so far (the current one's number)
    target: int | None  # index into placements of the current / last attempt
    exhausted: tuple[int, ...]  # placements refused with capacity / quota errors
    attempt_reasons: tuple[AttemptReason, ...]
    handle: InstanceHandle | None
    not_before: str | None
    reason: str
    preemptions: int
    cancelled_from: str
    terminated_at: str  # when the job's instance was confirmed deleted
    exit_code: int | None  # the command's exit code, read back from the console
    exited_at: str  # when the instance was first seen powered off without a readable code
    agent_seen_at: str  # the job's agent's last telemetry call ('' = never)
    agent_exit_code: int | None  # the exit code the agent reported
    measured_energy_kwh: float | None  # the sum of the agent's energy samples
    run_intensity_g_per_kwh: float | None  # the grid over the run's hours (attribution)
    run_intensity_basis: str
    run_intensity_series: tuple[RunHour, ...]  # the hours behind the average (attribution)
    measurement: dict[str, Any] | None  # the agent's final summary (devices, methods)
    # The job's part of the batch plan it was submitted with (``submit --plan``): plan id,
    # planned offer and start, the plan's solver and gap; None for a job placed on its own.
    plan: dict[str, Any] | None
    created_at: str
    updated_at: str

    @property
    def placements(self) -> tuple[Placement, ...]:
        """The frozen ranking: feasible candidates, best first (the failover order)."""
        return _placements_from_text(self.placements_text)

    @property
    def placement(self) -> Placement | None:
        """The placement of the current / last launch attempt."""
        return None if self.target is None else self.placements[self.target]

    @property
    def policy(self) -> Policy:
        """The job's Policy (validated once per distinct policy per process)."""
        return _policy_from_text(self.policy_text)

    @property
    def policy_name(self) -> str:
        return self.policy.name

    def summary(self) -> dict[str, Any]:
        """The record's own part of a job view (``service.job_view`` adds its figures)."""
        p = self.placement
        if p is None and self.placements:
            p = self.placements[0]
        return {
            "job_id": self.job_id,
            "name": self.name,
            "team": self.team,
            "state": str(self.state),
            "cloud": p.cloud if p else None,
            "region": p.region if p else None,
            "instance_type": p.instance_type if p else None,
            "attempts": self.attempt,
            "policy": self.policy_name,
            "provider": self.handle.provider if self.handle else None,
            "instance_id": self.handle.instance_id if self.handle else None,
            "not_before": self.not_before,
            "reason": self.reason or None,
            "exit_code": self.exit_code,
            "instance_deleted_at": self.terminated_at or None,
            "attempt_reasons": [asdict(r) for r in self.attempt_reasons],
            "plan": self.plan,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


@functools.lru_cache(maxsize=1024)
def _placements_from_text(text: str) -> tuple[Placement, ...]:
    """Parsed on first use only: reconcile reads many records and never their rankings."""
    if not text:
        return ()
    return tuple(Placement(cloud=p[0], region=p[1], instance_type=p[2], accelerator=p[3],
                           accelerator_count=p[4], spot=p[5], price_usd_per_hour=p[6])
                 for p in json.loads(text))


def pack_explain(candidates: Sequence[Mapping[str, Any]]) -> str:
    """A decision's candidate table as ``job:{id}:explain`` keeps it (``JobStore.explain``).

    Design choice: this is the largest thing a job keeps, so it is stored small: column
    names once plus rows of values (the names are most of a candidate's JSON),
    zlib-compressed and base64-encoded (the client decodes replies as text): about 1.9 KB
    for 24 candidates instead of 5.8 KB of plain JSON or 22 KB as a list of objects
    (benchmarks/README.md, Redis memory per job).
    """
    columns = list(candidates[0]) if candidates else []
    table = {"columns": columns, "rows": [[c.get(k) for k in columns] for c in candidates]}
    return base64.b64encode(zlib.compress(_dumps(table).encode(), 6)).decode()


def _record(fields: Mapping[str, str]) -> JobRecord:
    def loads(name: str, default: Any) -> Any:
        raw = fields.get(name, "")
        return json.loads(raw) if raw else default

    handle = loads("handle", None)
    target = int(fields.get("target") or -1)
    return JobRecord(
        job_id=fields["job_id"],
        name=fields["name"],
        team=fields.get("team") or DEFAULT_TEAM,
        state=JobState(fields["state"]),
        spec=loads("spec", {}),
        policy_text=fields.get("policy", "{}"),
        decision=loads("decision", None),
        placements_text=fields.get("placements", ""),
        attempt=int(fields.get("attempt") or 0),
        target=None if target < 0 else target,
        exhausted=tuple(loads("exhausted", [])),
        attempt_reasons=tuple(AttemptReason(**r) for r in loads("attempt_reasons", [])),
        handle=InstanceHandle(**handle) if handle else None,
        not_before=fields.get("not_before") or None,
        reason=fields.get("reason", ""),
        preemptions=int(fields.get("preemptions") or 0),
        cancelled_from=fields.get("cancelled_from", ""),
        terminated_at=fields.get("terminated_at", ""),
        exit_code=int(fields["exit_code"]) if fields.get("exit_code") else None,
        exited_at=fields.get("exited_at", ""),
        agent_seen_at=fields.get("agent_seen_at", ""),
        agent_exit_code=(int(fields["agent_exit_code"]) if fields.get("agent_exit_code")
                         else None),
        measured_energy_kwh=(float(fields["measured_energy_kwh"])
                             if fields.get("measured_energy_kwh") else None),
        run_intensity_g_per_kwh=(float(fields["run_intensity_g_per_kwh"])
                                 if fields.get("run_intensity_g_per_kwh") else None),
        run_intensity_basis=fields.get("run_intensity_basis", ""),
        run_intensity_series=unpack_run_hours(fields.get("run_intensity_series", "")),
        measurement=loads("measurement", None),
        plan=loads("plan", None),
        created_at=fields.get("created_at", ""),
        updated_at=fields.get("updated_at", ""),
    )


def encode_fields(
    *, decision: Mapping[str, Any] | None = None,
    placements: Sequence[Placement] | None = None,
    attempt: int | None = None, target: int | None = None,
    exhausted: Sequence[int] | None = None,
    attempt_reasons: Sequence[AttemptReason] | None = None,
    handle: InstanceHandle | None = None, not_before: str | None = None,
    reason: str | None = None, preemptions: int | None = None,
    cancelled_from: str | None = None, terminated_at: str | None = None,
    exit_code: int | None = None, exited_at: str | None = None,
    plan: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Record fields to write with a transition, encoded as the hash stores them."""
    out: dict[str, str] = {}
    if decision is not None:
        out["decision"] = _dumps(decision)
    if placements is not None:
        out["placements"] = _dumps([[p.cloud, p.region, p.instance_type, p.accelerator,
                                     p.accelerator_count, p.spot, p.price_usd_per_hour]
                                    for p in placements])
    if attempt is not None:
        out["attempt"] = str(attempt)
    if target is not None:
        out["target"] = str(target)
    if exhausted is not None:
        out["exhausted"] = _dumps(list(exhausted))
    if attempt_reasons is not None:
        out["attempt_reasons"] = _dumps([asdict(r) for r in attempt_reasons])
    if handle is not None:
        out["handle"] = _dumps(asdict(handle))
    if not_before is not None:
        out["not_before"] = not_before
    if reason is not None:
        out["reason"] = reason
    if preemptions is not None:
        out["preemptions"] = str(preemptions)
    if cancelled_from is not None:
        out["cancelled_from"] = cancelled_from
    if terminated_at is not None:
        out["terminated_at"] = terminated_at
    if exit_code is not None:
        out["exit_code"] = str(exit_code)
    if plan is not None:
        out["plan"] = _dumps(plan)
    if exited_at is not None:
        out["exited_at"] = exited_at
    return out


def redis_client(url: str, *, ca_cert: Path | str | None = None) -> redis.Redis:
    """A Redis client for ``url``; connects on first command, rides over a restart.

    Design choice: every command is bounded, well inside a task's soft time limit
    (22 s by default). A connect gives up after 2 s and a reply after 5 s, and a
    failed command is tried twice more, 0.1 and 0.2 s later: enough for a restart
    (each pooled connection's first command after it fails once, then reconnects),
    not enough to wait out an outage. In an outage a command fails within about
    0.3 s when the port refuses connections and within 6 s when the host is gone;
    the task then ends and redelivery or reconcile runs it again later (see
    ``worker.tasks``). The former 5 retries (and 5 s connect, 10 s read timeouts)
    could hold one command for a minute, so tasks blocked in an outage ran into
    their hard time limit and were killed (a root cause of the workers that
    stopped after a 30 s outage).
    """
    kwargs: dict[str, Any] = {}
    if url.startswith("rediss://") and ca_cert is not None:
        kwargs["ssl_ca_certs"] = str(ca_cert)
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2,
        health_check_interval=30, retry=Retry(ExponentialBackoff(cap=0.25, base=0.05), 2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError], **kwargs,
    )


def open_store(settings: Settings) -> JobStore:
    """The job store of a deployment: its Redis and its key prefix (connects on first use)."""
    return JobStore(redis_client(settings.redis_url, ca_cert=settings.redis_ca_cert),
                    prefix=settings.key_prefix)


@contextlib.contextmanager
def reachable(redacted_url: str) -> Iterator[None]:
    """Turn "Redis is down / refuses us" into a one-paragraph ConfigError (CLI exit 2)."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise ConfigError(
            f"Redis at {redacted_url} refused the credentials ({exc}). To fix: put the right "
            "password in GREENPLACE_REDIS_URL or GREENPLACE_REDIS_PASSWORD.") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConfigError(
            f"Cannot reach Redis at {redacted_url} ({exc}). To fix: start redis-server "
            "(e.g. `redis-server --appendonly yes`) or point GREENPLACE_REDIS_URL at it."
        ) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Move:
    """One state change for ``JobStore.transitions`` (the arguments of ``transition``)."""

    to: JobState
    message: str
    expect: JobState | frozenset[JobState] | None = None
    attempt: int | None = None
    data: Mapping[str, Any] | None = None
    fields: Mapping[str, str] | None = None


@dataclass(slots=True, kw_only=True)
class Lock:
    """A lock this process holds; ``released`` once a transition let it go."""

    name: str
    token: str
    released: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalJob:
    """A final job ``JobStore.prune`` removed, would remove (dry run) or kept."""

    job_id: str
    name: str
    state: JobState
    ended_at: str  # when it entered its final state ('' for a leftover without a record)


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    """What one ``JobStore.prune`` call did."""

    pruned: tuple[FinalJob, ...]  # removed, or what a dry run would remove
    kept_deleting: tuple[FinalJob, ...]  # old enough, but an instance deletion is pending
    more: bool  # stopped at ``limit`` or ``budget_s``: older final jobs may remain


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A validated job about to be submitted."""

    job_id: str
    job: Job
    team: str = DEFAULT_TEAM
    plan: Mapping[str, Any] | None = None  # its part of the batch plan (``JobRecord.plan``)


class JobStore:
    """Job records, transitions and events in one Redis database."""

    def __init__(self, client: redis.Redis, *, prefix: str = "gp") -> None:
        self.client = client
        self.prefix = prefix
        self._moves = client.register_script(_MOVES_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._lock_and_read = client.register_script(_LOCK_AND_READ_LUA)
        self._prune = client.register_script(_PRUNE_LUA)
        self._telemetry = client.register_script(_TELEMETRY_LUA)
        self._regions_recorded: set[str] = set()  # what launched_in wrote already

    # keys ---------------------------------------------------------------------------
    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{checked_job_id(job_id)}"

    def _events_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{checked_job_id(job_id)}:events"

    def _plan_key(self, plan_id: str) -> str:
        return f"{self.prefix}:plan:{plan_id}"

    def _state_key(self, state: JobState) -> str:
        return f"{self.prefix}:state:{state}"

    def _team_key(self, team: str) -> str:
        return f"{self.prefix}:team:{checked_team(team)}"

    @property
    def _terminate_key(self) -> str:
        return f"{self.prefix}:terminate"

    # records ------------------------------------------------------------------------
    def create(self, jobs: Sequence[NewJob], *, now: dt.datetime | None = None,
               plan: Mapping[str, Any] | None = None) -> list[str]:
        """Write QUEUED records for ``jobs`` in one MULTI/EXEC: all of them or none; with
        ``plan`` (a batch plan with its ``plan_id``), the plan too, in the same MULTI."""
        moment = now or utc_now()
        stamp = iso(moment)
        pipe = self.client.pipeline(transaction=True)
        if plan is not None:
            pipe.set(self._plan_key(str(plan["plan_id"])), _dumps(plan))
        for index, new in enumerate(jobs):
            job = new.job
            score = moment.timestamp() + index * 1e-6  # keeps the file's order
            pipe.hset(self._job_key(new.job_id), mapping={
                "job_id": new.job_id, "name": job.name, "team": new.team,
                "state": str(S.QUEUED),
                "spec": _dumps(job.spec.model_dump(mode="json")),
                "policy": policy_text(job.policy),
                "attempt": "0", "target": "-1", "created_at": stamp, "updated_at": stamp,
                **({"plan": _dumps(new.plan)} if new.plan is not None else {}),
            })
            pipe.zadd(f"{self.prefix}:jobs", {new.job_id: score})
            pipe.zadd(self._team_key(new.team), {new.job_id: score})
            pipe.zadd(self._state_key(S.QUEUED), {new.job_id: score})
            pipe.rpush(self._events_key(new.job_id), _dumps({
                "from": "", "at": stamp, "kind": "transition", "to": str(S.QUEUED),
                "message": f"submitted with policy {job.policy.name!r}", "data": {}}))
        pipe.execute()
        return [new.job_id for new in jobs]

    def plan(self, plan_id: str) -> dict[str, Any] | None:
        """A stored batch plan (``create(plan=...)``), or None when there is none by that id
        (an id that cannot be one, ids having the job ids' form, is never looked up)."""
        if JOB_ID_PATTERN.fullmatch(plan_id) is None:
            return None
        raw = self.client.get(self._plan_key(plan_id))
        return None if raw is None else cast(dict[str, Any], json.loads(raw))

    def save_plan(self, document: Mapping[str, Any]) -> None:
        """Write a revised batch plan over the stored one (``planning/replan.py``; the
        caller holds the plan's re-plan lock)."""
        self.client.set(self._plan_key(str(document["plan_id"])), _dumps(document))

    def get(self, job_id: str) -> JobRecord:
        """The job's record. Raises JobNotFoundError."""
        fields = cast(dict[str, str], self.client.hgetall(self._job_key(job_id)))
        if not fields:
            raise job_not_found(job_id)
        return _record(fields)

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """Records of the ids that exist, in the order given."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self._job_key(job_id))
        return [_record(f) for f in pipe.execute() if f]

    def newest_ids(self, *, team: str | None, before: tuple[float, str] | None = None,
                   count: int = 100, min_score: float | None = None) -> list[tuple[str, float]]:
        """Up to ``count`` (id, submission score), newest first, of one team or of all.

        ``before``: the (score, id) of the last row of the previous page; the page starts
        just after it (ties on the score are broken by id, as Redis orders them).
        ``min_score``: the oldest submission time (epoch seconds) to include.
        """
        key = f"{self.prefix}:jobs" if team is None else self._team_key(team)
        top: float | str = "+inf" if before is None else before[0]
        rows = cast(list[tuple[str, float]], self.client.zrevrangebyscore(
            key, top, "-inf" if min_score is None else min_score, start=0,
            num=count + (0 if before is None else count), withscores=True))
        out = [(str(i), float(s)) for i, s in rows]
        if before is not None:
            score, last = before
            out = [(i, s) for i, s in out if s < score or (s == score and i < last)]
        return out[:count]

    def explain(self, job_id: str) -> list[dict[str, Any]]:
        """The candidate table saved when the job was placed ([] before that)."""
        text = self.client.get(f"{self._job_key(job_id)}:explain")
        if not text:
            return []
        table = json.loads(zlib.decompress(base64.b64decode(text)))
        return [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]]

    def record_telemetry(self, job_id: str, *, at: dt.datetime, exit_code: int | None = None,
                         energy_kwh: float | None = None,
                         measurement: Mapping[str, Any] | None = None) -> bool:
        """Note an agent's report in the record; False when the job no longer exists.

        ``energy_kwh``: the energy measured since the job's command started (cumulative:
        the largest value reported is kept, so a report sent twice counts once).
        ``measurement``: the agent's final summary (JSON-able, nothing secret), kept as the
        record's ``measurement``.
        """
        fields = {"agent_seen_at": iso(at)}
        if exit_code is not None:
            fields["agent_exit_code"] = str(exit_code)
        if measurement is not None:
            fields["measurement"] = _dumps(measurement)
        pairs = [item for pair in fields.items() for item in pair]
        done = self._telemetry(keys=[self._job_key(job_id)],
                               args=["" if energy_kwh is None else repr(float(energy_kwh)),
                                     *pairs])
        return bool(done)

    def record_run_intensity(self, job_id: str, *, g_per_kwh: float, basis: str,
                             hours: Sequence[RunHour] = ()) -> bool:
        """Keep the grid intensity of the run's own hours (``scheduler/attribution.py``)
        and the hourly series behind it; False when the job no longer exists."""
        return bool(self._telemetry(keys=[self._job_key(job_id)], args=[
            "", "run_intensity_g_per_kwh", repr(float(g_per_kwh)),
            "run_intensity_basis", basis, "run_intensity_series", pack_run_hours(hours)]))

    def job_ids(self) -> list[str]:
        """Every job id, oldest submission first."""
        return [str(i) for i in self.client.zrange(f"{self.prefix}:jobs", 0, -1)]

    def ids_in_state(self, state: JobState, *, max_score: float | None = None,
                     limit: int | None = None) -> list[str]:
        """Ids in ``state``, lowest index score (oldest / due first) first."""
        top = "+inf" if max_score is None else max_score
        if limit is None:
            ids = self.client.zrangebyscore(self._state_key(state), "-inf", top)
        else:
            ids = self.client.zrangebyscore(self._state_key(state), "-inf", top, start=0,
                                            num=limit)
        return [str(i) for i in ids]

    def count(self, state: JobState) -> int:
        return int(self.client.zcard(self._state_key(state)))

    def counts(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        for state in S:
            pipe.zcard(self._state_key(state))
        return {str(s): int(n) for s, n in zip(S, pipe.execute(), strict=True)}

    # transitions ----------------------------------------------------------------------
    def transition(
        self, job_id: str, *, to: JobState, expect: JobState | frozenset[JobState] | None = None,
        attempt: int | None = None, message: str, data: Mapping[str, Any] | None = None,
        fields: Mapping[str, str] | None = None, score: float | None = None,
        terminate: bool = False, now: dt.datetime | None = None, release: Lock | None = None,
        explain: str = "",
    ) -> JobState:
        """Move the job to ``to`` atomically; returns the state it left.

        Args:
            to: the new state.
            expect: the state(s) the caller believes the job is in (default: every
                state from which ``to`` is legal). Intersected with the legal ones.
            attempt: refuse unless the record's attempt number equals it.
            message, data: the event recorded with the change.
            fields: record fields to write in the same step (see ``encode_fields``).
            score: the new state-index score (default now; DEFERRED: the not-before time).
            terminate: also queue the job's instance for deletion.
            release: a lock to release in the same step, whatever the outcome.
            explain: a candidate table (``pack_explain``) to keep with the move, when it
                is made.

        Raises:
            JobNotFoundError; IllegalTransitionError when the job is in another state
            (or another attempt), or the life cycle forbids the move.
        """
        legal = frozenset(s for s, targets in TRANSITIONS.items() if to in targets)
        if expect is not None:
            legal &= {expect} if isinstance(expect, JobState) else expect
        return self._run(job_id, to=str(to), allowed=legal, attempt=attempt, kind="transition",
                         message=message, data=data, fields=fields, score=score,
                         terminate=terminate, now=now, release=release, explain=explain)

    def update(self, job_id: str, *, expect: JobState | frozenset[JobState],
               message: str, data: Mapping[str, Any] | None = None,
               fields: Mapping[str, str] | None = None, attempt: int | None = None,
               now: dt.datetime | None = None) -> JobState:
        """Write fields and a note without changing state, if the job is in ``expect``."""
        allowed = frozenset({expect}) if isinstance(expect, JobState) else expect
        return self._run(job_id, to="", allowed=allowed, attempt=attempt, kind="note",
                         message=message, data=data, fields=fields, score=None,
                         terminate=False, now=now)

    @staticmethod
    def _move_args(*, to: str, allowed: frozenset[JobState], attempt: int | None, kind: str,
                   message: str, data: Mapping[str, Any] | None,
                   fields: Mapping[str, str] | None, score: float | None,
                   now: dt.datetime) -> list[str]:
        stamp = iso(now)
        event = _dumps({"at": stamp, "kind": kind, "to": to, "message": message,
                        "data": dict(data or {})})
        pairs: list[str] = ["updated_at", stamp]
        for key, value in (fields or {}).items():
            pairs += [key, value]
        return [",".join(sorted(allowed)) or "-", to, "" if attempt is None else str(attempt),
                event, repr(now.timestamp() if score is None else score), str(len(pairs)),
                *pairs]

    def _call_moves(self, job_id: str, moves: list[list[str]], *, terminate: bool,
                    release: Lock | None, explain: str = "") -> list[tuple[str, str]]:
        keys = [self._job_key(job_id), self._events_key(job_id)]
        if release is not None:
            keys.append(self._lock_key(release.name))
        args = [f"{self.prefix}:state:", job_id, self._terminate_key if terminate else "",
                release.token if release is not None else "", str(len(moves))]
        for move in moves:
            args += move
        flat = self._moves(keys=keys, args=[*args, explain])
        if release is not None:
            release.released = True
        return [(str(flat[k]), str(flat[k + 1])) for k in range(0, len(flat), 2)]

    def _outcome(self, job_id: str, to: str, attempt: int | None, reply: tuple[str, str]
                 ) -> JobState | TransitionRefused:
        status, current = reply
        if status == "missing":
            self.get(job_id)  # raises JobNotFoundError
        if status == "ok":
            return JobState(current)
        if status == "skipped":
            return TransitionRefused(
                f"job {job_id}: the move to {to} was not tried (an earlier one was refused).",
                current=JobState(self.get(job_id).state))
        why = f"its attempt is no longer {attempt}" if status == "stale" else f"it is {current}"
        return TransitionRefused(
            f"job {job_id} cannot move to {to or current}: {why}. To fix: check "
            f"`greenplace status {job_id}`; a job only moves along its life cycle.",
            current=JobState(current))

    def _run(self, job_id: str, *, to: str, allowed: frozenset[JobState], attempt: int | None,
             kind: str, message: str, data: Mapping[str, Any] | None,
             fields: Mapping[str, str] | None, score: float | None, terminate: bool,
             now: dt.datetime | None, release: Lock | None = None,
             explain: str = "") -> JobState:
        args = self._move_args(to=to, allowed=allowed, attempt=attempt, kind=kind,
                               message=message, data=data, fields=fields, score=score,
                               now=now or utc_now())
        (reply,) = self._call_moves(job_id, [args], terminate=terminate, release=release,
                                    explain=explain)
        outcome = self._outcome(job_id, to, attempt, reply)
        if isinstance(outcome, TransitionRefused):
            raise outcome
        return outcome

    def transitions(self, job_id: str, moves: Sequence[Move], *,
                    now: dt.datetime | None = None,
                    explain: str = "") -> list[JobState | TransitionRefused]:
        """Apply ``moves`` in order, atomically, in one round trip; stop at the first refusal.

        A refused move changes nothing and the moves after it are not tried, so a
        later move can rely on the earlier ones. Returns, per move, the state it
        left or the refusal (not raised). ``explain``: as for ``transition``, kept when
        a move is made.
        """
        moment = now or utc_now()
        calls = []
        for m in moves:
            legal = frozenset(s for s, targets in TRANSITIONS.items() if m.to in targets)
            if m.expect is not None:
                legal &= {m.expect} if isinstance(m.expect, JobState) else m.expect
            calls.append(self._move_args(
                to=str(m.to), allowed=legal, attempt=m.attempt, kind="transition",
                message=m.message, data=m.data, fields=m.fields, score=None, now=moment))
        replies = self._call_moves(job_id, calls, terminate=False, release=None,
                                   explain=explain)
        return [self._outcome(job_id, str(m.to), m.attempt, reply)
                for m, reply in zip(moves, replies, strict=True)]

    def note(self, job_id: str, message: str, *, data: Mapping[str, Any] | None = None,
             now: dt.datetime | None = None) -> None:
        """Append an event without changing anything else."""
        self.client.rpush(self._events_key(job_id), _dumps({
            "from": "", "at": iso(now or utc_now()), "kind": "note", "to": "",
            "message": message, "data": dict(data or {})}))

    def events(self, job_id: str) -> list[Event]:
        """The job's event history, oldest first. Raises JobNotFoundError."""
        raw = self.client.lrange(self._events_key(job_id), 0, -1)
        if not raw:
            self.get(job_id)
        out = []
        for text in raw:
            e = json.loads(text)
            out.append(Event(at=e["at"], kind=e["kind"], state_from=e.get("from", ""),
                             state_to=e.get("to", ""), message=e["message"],
                             data=e.get("data", {})))
        return out

    # deletion queues ------------------------------------------------------------------
    def to_terminate(self) -> list[str]:
        """Final jobs whose instance must still be deleted."""
        return sorted(str(i) for i in self.client.smembers(self._terminate_key))

    def terminated(self, job_id: str, *, message: str, now: dt.datetime | None = None) -> None:
        """Record that the job's instance is gone and drop it from the deletion queue."""
        moment = now or utc_now()
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self._job_key(job_id), "terminated_at", iso(moment))
        pipe.srem(self._terminate_key, job_id)
        pipe.rpush(self._events_key(job_id), _dumps({
            "from": "", "at": iso(moment), "kind": "note", "to": "", "message": message,
            "data": {}}))
        pipe.execute()

    def forget_termination(self, job_id: str) -> None:
        self.client.srem(self._terminate_key, job_id)

    @property
    def _orphans_key(self) -> str:
        return f"{self.prefix}:orphans"

    def orphan(self, job_id: str, attempt: int, handle: InstanceHandle) -> None:
        """Queue the instance of a superseded attempt for deletion (before moving on)."""
        self.client.hset(self._orphans_key, f"{job_id}/{attempt}", _dumps(asdict(handle)))

    def orphans(self) -> list[tuple[str, int, InstanceHandle]]:
        """(job id, attempt, handle) of every superseded instance not yet confirmed deleted."""
        out = []
        for key, raw in sorted(self.client.hgetall(self._orphans_key).items()):
            job_id, _, attempt = str(key).rpartition("/")
            out.append((job_id, int(attempt), InstanceHandle(**json.loads(raw))))
        return out

    def orphan_deleted(self, job_id: str, attempt: int, *, message: str,
                       now: dt.datetime | None = None) -> None:
        """Drop a confirmed-deleted orphan and say so in its job's history."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self._orphans_key, f"{job_id}/{attempt}")
        pipe.rpush(self._events_key(job_id), _dumps({
            "from": "", "at": iso(now or utc_now()), "kind": "note", "to": "",
            "message": message, "data": {"attempt": attempt}}))
        pipe.execute()

    @property
    def _regions_key(self) -> str:
        return f"{self.prefix}:regions"

    def launched_in(self, provider: str, region: str) -> None:
        """Remember that greenplace launched through ``provider`` in ``region``.

        Written once per pair and process: the set only grows, so the launch path
        pays no round trip for a region this process already recorded.
        """
        pair = f"{provider}/{region}"
        if pair not in self._regions_recorded:
            self.client.sadd(self._regions_key, pair)
            self._regions_recorded.add(pair)

    def regions_used(self) -> list[tuple[str, str]]:
        """Every (provider, region) greenplace launched in: what the leak sweep lists."""
        pairs = (str(m).partition("/") for m in self.client.smembers(self._regions_key))
        return sorted((p, r) for p, _, r in pairs)

    # retention ----------------------------------------------------------------------
    def prune(self, *, older_than_s: float, now: dt.datetime | None = None,
              limit: int = 1000, budget_s: float | None = None,
              dry_run: bool = False) -> PruneResult:
        """Delete final jobs that ended at least ``older_than_s`` ago, oldest first per state.

        Each job goes in one Lua script (record, events, candidate table, ``jobs``, team and
        state index entries, nudge key), so a reader sees it whole or not at all; a job
        whose instance deletion is pending is kept (reported in ``kept_deleting``) and
        looked at again next time. Stops after ``limit`` jobs or ``budget_s`` seconds
        (``more`` is then True) so a sweep fits inside a task's time limit; call again to
        go on.

        A batch plan (``submit --plan``) is deleted with the last of its jobs.

        Design choice: candidates come from the final states' indexes, scored by when the
        job entered the state, so a sweep reads only what is due, in pages, and never
        scans the keyspace. The lock keys of a pruned job are left to expire (they have
        a TTL, and deleting a lock this process does not hold would be wrong).
        """
        moment = now or utc_now()
        cutoff = moment.timestamp() - older_than_s
        started = time.monotonic()
        finals = ",".join(sorted(FINAL_STATES))
        pruned: list[FinalJob] = []
        kept: list[FinalJob] = []
        ended_plans: set[str] = set()  # plans one of whose jobs this sweep removed
        more = False
        for state in sorted(FINAL_STATES):
            offset = 0  # ids kept in this index so far (removed ones leave it)
            while True:
                if len(pruned) >= limit or (budget_s is not None
                                            and time.monotonic() - started > budget_s):
                    more = True
                    break
                page = min(limit - len(pruned), 500)
                ids = [str(i) for i in self.client.zrangebyscore(
                    self._state_key(state), "-inf", cutoff, start=offset, num=page)]
                if not ids:
                    break
                plans = {} if dry_run else self._plan_ids_of(ids)
                pipe = self.client.pipeline(transaction=False)
                for job_id in ids:
                    self._prune(keys=[], args=[f"{self.prefix}:", job_id, repr(cutoff), finals,
                                               str(state), "1" if dry_run else ""],
                                client=pipe)
                removed = 0
                for job_id, (status, was, score, name) in zip(ids, pipe.execute(),
                                                              strict=True):
                    ended = iso(dt.datetime.fromtimestamp(float(score), dt.UTC)) if score else ""
                    job = FinalJob(job_id=job_id, name=str(name), state=JobState(was),
                                   ended_at=ended)
                    if status in ("pruned", "prunable"):
                        removed += 1
                        pruned.append(job)
                        if job_id in plans:
                            ended_plans.add(plans[job_id])
                    elif status == "deleting":
                        kept.append(job)
                offset += len(ids) if dry_run else len(ids) - removed
            if more:
                break
        for plan_id in sorted(ended_plans):
            self._drop_plan_if_done(plan_id)
        return PruneResult(pruned=tuple(pruned), kept_deleting=tuple(kept), more=more)

    def _plan_ids_of(self, job_ids: Sequence[str]) -> dict[str, str]:
        """job id -> the id of the batch plan it belongs to, for the planned ones."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self._job_key(job_id), "plan")
        out = {}
        for job_id, raw in zip(job_ids, pipe.execute(), strict=True):
            if raw:
                out[job_id] = str(json.loads(raw)["plan_id"])
        return out

    def _drop_plan_if_done(self, plan_id: str) -> None:
        """Delete a batch plan once none of its jobs is left (a plan and its jobs are written
        in one MULTI, so none can appear later)."""
        document = self.plan(plan_id)
        if document is None:
            return
        keys = [self._job_key(str(row["job_id"])) for row in document.get("jobs", ())
                if row.get("job_id")]
        if not keys or not self.client.exists(*keys):
            self.client.delete(self._plan_key(plan_id))

    # coordination -------------------------------------------------------------------
    def _lock_key(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    @property
    def _cooldowns_key(self) -> str:
        return f"{self.prefix}:cooldowns"

    def acquire_lock(self, name: str, *, ttl_s: float) -> str | None:
        """Take ``name`` (SET NX PX); returns the owner token, or None when it is held."""
        token = uuid.uuid4().hex
        taken = self.client.set(self._lock_key(name), token, nx=True,
                                px=max(1, int(ttl_s * 1000)))
        return token if taken else None

    def lock_and_read(self, job_id: str, *, lock: str, ttl_s: float
                      ) -> tuple[Lock | None, JobRecord, set[str]]:
        """One round trip: try to take ``lock``, read the job, read the cooling offers.

        Raises:
            JobNotFoundError (after releasing the lock it took).
        """
        token = uuid.uuid4().hex
        taken, flat, cooling = self._lock_and_read(
            keys=[self._lock_key(lock), self._job_key(job_id), self._cooldowns_key],
            args=[token, max(1, int(ttl_s * 1000)), repr(time.time())])
        if not flat:
            self.get(job_id)  # raises JobNotFoundError (the script dropped the lock)
        fields = {str(flat[k]): str(flat[k + 1]) for k in range(0, len(flat), 2)}
        held = Lock(name=lock, token=token) if taken else None
        return held, _record(fields), {str(c) for c in cooling}

    def release_lock(self, name: str, token: str) -> None:
        """Release ``name`` if ``token`` still owns it (a lock that expired is not touched)."""
        self._release(keys=[self._lock_key(name)], args=[token])

    def lock_ttl_s(self, name: str) -> float:
        """Seconds until ``name`` expires; 0 when it is free."""
        ms = int(self.client.pttl(self._lock_key(name)))
        return max(ms, 0) / 1000.0

    def cool_down(self, placement: Placement, *, seconds: float, reason: str) -> None:
        """Try this (cloud, region, instance type) last, for every job, for ``seconds``.

        Design choice: one sorted set of offer -> expiry (wall clock) rather than a
        key per offer, so a dispatch reads every cooling offer in the same round trip
        as its lock and record.
        """
        if seconds <= 0:
            return
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self._cooldowns_key, {offer_key(placement): now + seconds})
        pipe.zremrangebyscore(self._cooldowns_key, "-inf", now)
        pipe.execute()

    def cooling_offers(self) -> set[str]:
        """Every ``cloud:region:instance_type`` cooling down now."""
        return {str(k) for k in self.client.zrangebyscore(self._cooldowns_key, time.time(),
                                                           "+inf")}

    def cooling(self, placements: Sequence[Placement]) -> set[str]:
        """The offer keys among ``placements`` that are cooling down now."""
        return {offer_key(p) for p in placements} & self.cooling_offers()

    def claim_nudge(self, job_id: str, *, ttl_s: float) -> bool:
        """True at most once per ``ttl_s`` per job (reconcile's re-enqueue throttle)."""
        return bool(self.client.set(f"{self.prefix}:nudge:{job_id}", "1", nx=True,
                                    px=max(1, int(ttl_s * 1000))))


def policy_of(record: JobRecord) -> Policy:
    """The record's Policy (validated again: the record crossed a trust boundary)."""
    return record.policy


@functools.lru_cache(maxsize=256)
def _policy_from_text(text: str) -> Policy:
    """One Policy object per distinct policy text.

    Design choice: jobs that share a policy get the same (immutable) object, so the
    placement pipeline's per-policy caches hit instead of growing with every job.
    """
    return Policy.model_validate_json(text)


_POLICY_TEXT: dict[int, tuple[Policy, str]] = {}


def policy_text(policy: Policy) -> str:
    """``policy`` as stored (JSON), computed once per policy object of a submission."""
    cached = _POLICY_TEXT.get(id(policy))
    if cached is None or cached[0] is not policy:
        if len(_POLICY_TEXT) > 256:
            _POLICY_TEXT.clear()
        cached = _POLICY_TEXT[id(policy)] = (policy, policy.model_dump_json())
    return cached[1]
