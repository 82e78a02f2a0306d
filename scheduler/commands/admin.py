"""The `admin` commands: API tokens (create, list, revoke), run against Redis directly."""

from __future__ import annotations

import click

from greenplace.scheduler.output import print_json, print_table
from greenplace.scheduler.settings import load_settings
from greenplace.scheduler.store import open_store, reachable
from greenplace.scheduler.tokens import Role, Tokens

_output = click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
                       show_default=True, help="table for people, json for machines")


@click.group("admin")
def admin_group() -> None:
    """Administer the service: API tokens of teams (needs direct Redis access)."""


@admin_group.group("token")
def token_group() -> None:
    """Create, list and revoke API tokens (a token is shown once, then only its hash is kept)."""


def _tokens() -> tuple[Tokens, str]:
    settings = load_settings()
    return Tokens(open_store(settings)), settings.redacted_redis_url


@token_group.command("create")
@click.option("--team", required=True, help="the team whose jobs the token sees and submits")
@click.option("--role", type=click.Choice([Role.MEMBER.value, Role.ADMIN.value]),
              default=Role.MEMBER.value, show_default=True,
              help="member: its team's jobs only; admin: every team's")
@click.option("--name", default="", help="who or what holds it (shown by `list`)")
@_output
def create_cmd(team: str, role: str, name: str, output: str) -> None:
    """Create a token and print it once: store it now, it cannot be shown again."""
    tokens, url = _tokens()
    with reachable(url):
        info, token = tokens.create(team=team, role=Role(role), name=name)
    if output == "json":
        print_json({"token_id": info.token_id, "team": info.team, "role": str(info.role),
                    "name": info.name, "token": token})
        return
    click.echo(token)
    click.echo(f"token {info.token_id} for team {info.team} ({info.role}); it is shown only "
               "now. Use it as GREENPLACE_TOKEN or `Authorization: Bearer`.", err=True)


@token_group.command("list")
@_output
def list_cmd(output: str) -> None:
    """List tokens: id, team, role, name, created (never the tokens themselves)."""
    tokens, url = _tokens()
    with reachable(url):
        infos = tokens.list()
    if output == "json":
        print_json([{"token_id": i.token_id, "team": i.team, "role": str(i.role),
                     "name": i.name, "created_at": i.created_at} for i in infos])
        return
    print_table(f"{len(infos)} token(s)", [("id", "left"), ("team", "left"), ("role", "left"),
                                           ("name", "left"), ("created", "left")],
                [[i.token_id, i.team, str(i.role), i.name or "-", i.created_at] for i in infos])


@token_group.command("revoke")
@click.argument("token_id")
def revoke_cmd(token_id: str) -> None:
    """Revoke the token with id TOKEN_ID (from `list`); it stops working at once."""
    from greenplace.scheduler.exceptions import UserInputError, shown

    tokens, url = _tokens()
    with reachable(url):
        found = tokens.revoke(token_id)
    if not found:
        raise UserInputError(f"No token has id {shown(token_id)}. To fix: use an id listed by "
                             "`greenplace admin token list`.")
    click.echo(f"token {token_id} revoked")
