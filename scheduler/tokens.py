"""API tokens: who is calling (team and role), kept in Redis only as a hash of the token.

Three roles: ``admin`` sees and acts on every team's jobs; ``member`` only its team's
(another team's job is "not found", so ids of other teams cannot be probed); ``agent``
is minted per job at dispatch and may only post that job's telemetry.

Keys (under the store's prefix): ``{prefix}:token:{sha256 hex}`` is a hash holding the
token's id, team, role, name, job id (agents) and creation time; ``{prefix}:tokens`` maps
each user token's id to that sha256, for ``list`` and ``revoke``. Agent tokens are not
listed: each expires ``AGENT_TOKEN_IDLE_S`` after its last use. ``{prefix}:agent-key``
holds the random key agent tokens are derived from.

Design choice: a token is 32 random bytes (``secrets.token_urlsafe``) behind a ``gpt_``
prefix that secret scanners can match. It is shown once, at creation. Redis holds its
SHA-256, not the token: with 256 random bits a fast hash is enough (there is nothing to
guess from), so a look-up is one HGETALL, and a copy of Redis grants nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from greenplace.scheduler.exceptions import UserInputError, shown
from greenplace.scheduler.store import JobStore, checked_team, iso, utc_now

TOKEN_PREFIX = "gpt_"
TOKEN_BYTES = 32
AGENT_TOKEN_IDLE_S = 2 * 24 * 3600  # an agent token unused this long expires


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    AGENT = "agent"


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who a request acts as. ``team`` None: every team (an admin, or the local CLI)."""

    token_id: str
    team: str | None
    role: Role
    name: str
    job_id: str | None = None  # agents: the one job they may report on

    def sees_team(self, team: str) -> bool:
        return self.team is None or self.team == team


# The CLI with direct Redis access: whoever can reach Redis can do everything anyway.
LOCAL = Principal(token_id="local", team=None, role=Role.ADMIN, name="local CLI")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInfo:
    """What ``list`` shows of a token (never the token itself)."""

    token_id: str
    team: str
    role: Role
    name: str
    created_at: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """Create, look up, list and revoke API tokens in the job store's Redis."""

    def __init__(self, store: JobStore) -> None:
        self._client = store.client
        self._prefix = store.prefix

    def _key(self, digest: str) -> str:
        return f"{self._prefix}:token:{digest}"

    @property
    def _index(self) -> str:
        return f"{self._prefix}:tokens"

    def create(self, *, team: str, role: Role, name: str = "",
               now: dt.datetime | None = None) -> tuple[TokenInfo, str]:
        """A new user token: its info, and the token (shown once, then only its hash is kept)."""
        if role is Role.AGENT:
            raise UserInputError("agent tokens are minted per job at dispatch. To fix: "
                                 "create an admin or member token.")
        if len(name) > 64:
            raise UserInputError(f"token name {shown(name)} is too long. To fix: use at most "
                                 "64 characters.")
        info = TokenInfo(token_id=secrets.token_hex(6), team=checked_team(team), role=role,
                         name=name, created_at=iso(now or utc_now()))
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        digest = _digest(token)
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(self._key(digest), mapping={
            "token_id": info.token_id, "team": info.team, "role": str(role), "name": name,
            "created_at": info.created_at})
        pipe.hset(self._index, info.token_id, digest)
        pipe.execute()
        return info, token

    def mint_agent(self, *, job_id: str, attempt: int, team: str) -> str:
        """The token that may only post telemetry for ``job_id``; expires when unused.

        Design choice: the token of one launch attempt is always the same (an HMAC of
        ``job_id/attempt`` under a random key kept in Redis), because a launch is retried
        with the same idempotency key and the clouds refuse a retry whose request differs
        (EC2's IdempotentParameterMismatch): the boot script must not change between
        tries. Whoever reads the key can derive agent tokens, but whoever reaches Redis
        already administers the service (``greenplace admin``), and an agent token only
        reports on its own job.
        """
        digest = hmac.new(self._agent_key(), f"{job_id}/{attempt}".encode(), hashlib.sha256)
        token = TOKEN_PREFIX + base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")
        key = self._key(_digest(token))
        pipe = self._client.pipeline(transaction=True)
        pipe.hset(key, mapping={"token_id": f"agent-{job_id}", "team": team,
                                "role": str(Role.AGENT), "name": f"agent of {job_id}",
                                "job_id": job_id, "created_at": iso(utc_now())})
        pipe.expire(key, AGENT_TOKEN_IDLE_S)
        pipe.execute()
        return token

    def _agent_key(self) -> bytes:
        """The deployment's key for agent tokens, made on first use (one writer wins)."""
        name = f"{self._prefix}:agent-key"
        self._client.set(name, secrets.token_hex(TOKEN_BYTES), nx=True)
        return str(self._client.get(name)).encode()

    def lookup(self, token: str) -> Principal | None:
        """The principal of ``token``, or None for an unknown, revoked or expired one."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 128:
            return None
        key = self._key(_digest(token))
        fields = cast(dict[str, str], self._client.hgetall(key))
        if not fields:
            return None
        role = Role(fields["role"])
        if role is Role.AGENT:
            self._client.expire(key, AGENT_TOKEN_IDLE_S)
        return Principal(token_id=fields["token_id"],
                         team=None if role is Role.ADMIN else fields["team"], role=role,
                         name=fields.get("name", ""), job_id=fields.get("job_id") or None)

    def list(self) -> list[TokenInfo]:
        """Every user token (not agents'), oldest first."""
        digests = cast(dict[str, str], self._client.hgetall(self._index))
        pipe = self._client.pipeline(transaction=False)
        for digest in digests.values():
            pipe.hgetall(self._key(digest))
        infos = [TokenInfo(token_id=f["token_id"], team=f["team"], role=Role(f["role"]),
                           name=f.get("name", ""), created_at=f["created_at"])
                 for f in pipe.execute() if f]
        return sorted(infos, key=lambda i: (i.created_at, i.token_id))

    def revoke(self, token_id: str) -> bool:
        """Revoke the token with id ``token_id``; False when there is none."""
        digest = self._client.hget(self._index, token_id)
        if digest is None:
            return False
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(self._key(str(digest)))
        pipe.hdel(self._index, token_id)
        pipe.execute()
        return True
