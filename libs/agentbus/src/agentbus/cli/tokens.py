"""``agentbus tokens create|list|revoke``: bearer tokens of the HTTP gateway.

``create`` prints the token's full text once (it is stored only as a SHA-256);
``list`` never shows a secret or its hash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
import typer
from rich.table import Table

from agentbus.cli.common import (
    JsonFlag,
    NatsUrl,
    Prefix,
    console,
    fail,
    print_json,
    run,
    with_client,
)
from agentbus.client import Client
from agentbus.messages import ApiToken, utcnow

tokens_app = typer.Typer(
    help="Bearer tokens of the HTTP gateway: create, list, revoke.", no_args_is_help=True
)
commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""
commands.add_typer(tokens_app, name="tokens")


class TokenView(msgspec.Struct, frozen=True, kw_only=True):
    """A token as ``list``/``create --json`` show it: no secret, no hash."""

    token_id: str
    name: str
    scopes: list[str]
    state: str
    """``active``, ``revoked`` or ``expired``."""
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def token_view(token: ApiToken, now: datetime) -> TokenView:
    """``token`` without its hash, with its state at ``now``."""
    expired = token.expires_at is not None and now >= token.expires_at
    state = "revoked" if token.revoked_at else "expired" if expired else "active"
    return TokenView(
        token_id=token.token_id,
        name=token.name,
        scopes=list(token.scopes),
        state=state,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
    )


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}Z" if value is not None else "-"


@tokens_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A label: who or what uses the token.")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            "-s",
            help="A scope it grants (repeat): tasks:submit, tasks:read, tasks:cancel, "
            "events:publish, events:read, fleet:read, fleet:admin, approvals:decide, "
            "metrics:read, admin.",
        ),
    ],
    expires_s: Annotated[
        float | None, typer.Option("--expires-s", min=0.001, help="Expire after N seconds.")
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the token (for scripts).")
    ] = False,
    json_: JsonFlag = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Create a token and print it once: it cannot be shown again."""
    from agentbus.auth.tokens import create_token

    async def go(client: Client) -> tuple[ApiToken, str]:
        return await create_token(client.bus, name, scope, expires_s=expires_s)

    token, text = run(with_client(nats_url, prefix, go))
    if quiet:
        typer.echo(text)
    elif json_:
        shown = {"token": token_view(token, utcnow()), "secret": text}
        print_json(msgspec.json.encode(shown))
    else:
        console.print(
            f"token {token.token_id} ({token.name}): {', '.join(token.scopes)}, "
            f"expires {_when(token.expires_at)}",
            highlight=False,
        )
        console.print("send it as 'Authorization: Bearer <token>'; it is shown only now:")
        typer.echo(text)


@tokens_app.command("list")
def list_(json_: JsonFlag = False, nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """Every token with its scopes and state (never its secret)."""
    from agentbus.auth.tokens import list_tokens

    async def go(client: Client) -> list[ApiToken]:
        return await list_tokens(client.bus)

    now = utcnow()
    views = [token_view(t, now) for t in run(with_client(nats_url, prefix, go))]
    if json_:
        print_json(msgspec.json.encode(views))
        return
    table = Table(title="gateway tokens")
    for column in ("id", "name", "scopes", "state", "created", "expires"):
        table.add_column(column)
    for v in views:
        table.add_row(
            v.token_id,
            v.name,
            ", ".join(v.scopes),
            v.state,
            _when(v.created_at),
            _when(v.expires_at),
        )
    console.print(table)


@tokens_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token id (tokens list).")],
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Revoke a token: the gateway refuses it within about a second."""
    from agentbus.auth.tokens import revoke_token

    if len(token_id) != 12 or not all(c in "0123456789abcdef" for c in token_id):
        raise fail(f"{token_id!r} is not a token id (12 hex characters)", 2)

    async def go(client: Client) -> ApiToken:
        return await revoke_token(client.bus, token_id)

    token = run(with_client(nats_url, prefix, go))
    console.print(f"token {token.token_id} revoked at {_when(token.revoked_at)}", highlight=False)
