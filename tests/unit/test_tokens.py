"""API tokens on a private redis-server: random, kept only as a hash, scoped by role."""

from __future__ import annotations

import hashlib

import pytest

from greenplace.scheduler.exceptions import UserInputError
from greenplace.scheduler.limits import AGENT_TOKEN_CHARS
from greenplace.scheduler.store import JobStore
from greenplace.scheduler.tokens import AGENT_TOKEN_IDLE_S, Role, Tokens
from tests.redisproc import RedisServer


@pytest.fixture
def tokens(server: RedisServer) -> Tokens:
    server.client().flushall()
    return Tokens(JobStore(server.client(), prefix="t1"))


def test_a_token_is_random_shown_once_and_kept_as_its_hash(tokens: Tokens,
                                                            server: RedisServer) -> None:
    info, token = tokens.create(team="ml", role=Role.MEMBER, name="ci")
    other = tokens.create(team="ml", role=Role.MEMBER, name="ci")[1]
    assert token != other and token.startswith("gpt_") and len(token) == AGENT_TOKEN_CHARS
    client = server.client()
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert client.hgetall(f"t1:token:{digest}")["team"] == "ml"
    for key in client.scan_iter("*"):
        values = client.hgetall(key) if client.type(key) == "hash" else {}
        assert token not in key and token not in str(values)
    found = tokens.lookup(token)
    assert found is not None and (found.team, found.role, found.name) == ("ml", "member", "ci")
    assert found.token_id == info.token_id


def test_an_admin_sees_every_team(tokens: Tokens) -> None:
    _, token = tokens.create(team="ops", role=Role.ADMIN)
    admin = tokens.lookup(token)
    assert admin is not None and admin.team is None and admin.sees_team("anyone")
    _, member = tokens.create(team="ml", role=Role.MEMBER)
    principal = tokens.lookup(member)
    assert principal is not None and principal.sees_team("ml")
    assert not principal.sees_team("vision")


def test_list_and_revoke(tokens: Tokens) -> None:
    first, token = tokens.create(team="ml", role=Role.MEMBER, name="a")
    second, _ = tokens.create(team="cv", role=Role.ADMIN, name="b")
    tokens.mint_agent(job_id="0123456789abcdef", attempt=1, team="ml")  # agents: not listed
    assert [i.token_id for i in tokens.list()] == [first.token_id, second.token_id]
    assert tokens.revoke(first.token_id) and not tokens.revoke(first.token_id)
    assert tokens.lookup(token) is None
    assert [i.token_id for i in tokens.list()] == [second.token_id]


def test_an_agent_token_names_its_job_and_expires_when_unused(tokens: Tokens,
                                                              server: RedisServer) -> None:
    token = tokens.mint_agent(job_id="0123456789abcdef", attempt=1, team="ml")
    (key,) = server.client().scan_iter("t1:token:*")
    server.client().expire(key, 5)
    agent = tokens.lookup(token)
    assert agent is not None and agent.role is Role.AGENT and agent.job_id == "0123456789abcdef"
    assert server.client().ttl(key) > AGENT_TOKEN_IDLE_S - 10  # each use extends its life


def test_an_attempts_agent_token_is_the_same_on_every_try(tokens: Tokens,
                                                          server: RedisServer) -> None:
    once = tokens.mint_agent(job_id="0123456789abcdef", attempt=1, team="ml")
    assert tokens.mint_agent(job_id="0123456789abcdef", attempt=1, team="ml") == once
    others = {tokens.mint_agent(job_id="0123456789abcdef", attempt=2, team="ml"),
              tokens.mint_agent(job_id="fedcba9876543210", attempt=1, team="ml"),
              Tokens(JobStore(server.client(), prefix="t2")).mint_agent(
                  job_id="0123456789abcdef", attempt=1, team="ml")}
    assert once not in others and len(others) == 3 and len(once) == AGENT_TOKEN_CHARS
    assert len(list(server.client().scan_iter("t1:token:*"))) == 3


@pytest.mark.parametrize("garbage", ["", "gpt_", "Bearer x", "gpt_" + "a" * 500, "sk-123"])
def test_garbage_is_no_token(tokens: Tokens, garbage: str) -> None:
    assert tokens.lookup(garbage) is None


def test_bad_requests_are_user_errors(tokens: Tokens) -> None:
    with pytest.raises(UserInputError, match="minted per job"):
        tokens.create(team="ml", role=Role.AGENT)
    with pytest.raises(UserInputError, match="not a valid team name"):
        tokens.create(team="ML team", role=Role.MEMBER)
    with pytest.raises(UserInputError, match="too long"):
        tokens.create(team="ml", role=Role.MEMBER, name="n" * 65)
