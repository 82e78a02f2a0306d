"""Who is calling: the bearer token's principal, and what each kind of token may do.

Every route but ``/healthz``, ``/readyz`` and the dashboard's static files depends on one
of these. No token, or an unknown or revoked one, is 401; an agent token (minted per job
at dispatch) is 403 everywhere but its own job's telemetry.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from greenplace.scheduler.api.problems import Problem
from greenplace.scheduler.tokens import Principal, Role, Tokens

bearer = HTTPBearer(auto_error=False, description="An API token from `greenplace admin "
                    "token create` (a job's agent token only for its telemetry).")


def caller(request: Request,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
           ) -> Principal:
    """The principal of the request's bearer token (any role)."""
    if credentials is None:
        raise Problem(401, "This endpoint needs a token. To fix: send `Authorization: Bearer "
                      "<token>`; an admin creates one with `greenplace admin token create "
                      "--team TEAM`.")
    tokens: Tokens = request.app.state.tokens
    found = tokens.lookup(credentials.credentials)
    if found is None:
        raise Problem(401, "The token is unknown or was revoked. To fix: ask an admin for a "
                      "new one (`greenplace admin token create --team TEAM`).")
    return found


def user(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    """A member's or admin's token: agent tokens may only post their job's telemetry."""
    if principal.role is Role.AGENT:
        raise Problem(403, "An agent token may only post its own job's telemetry. To fix: "
                      "use a member or admin token.")
    return principal


def agent_of(job_id: str, principal: Annotated[Principal, Depends(caller)]) -> Principal:
    """The agent token of job ``job_id`` (any other token is refused)."""
    if principal.role is not Role.AGENT or principal.job_id != job_id:
        raise Problem(403, "Only the agent token minted for this job may post its telemetry. "
                      "To fix: use the GREENPLACE_AGENT_TOKEN the job's boot script was given.")
    return principal


Caller = Annotated[Principal, Depends(user)]
