"""``agentbus auth init|creds|leaf|agent|show|tls``: the fleet's NATS credentials and TLS files.

The key, JWT and certificate code loads only when one of these commands runs, so
``agentbus --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from agentbus.cli.common import JsonFlag, NatsUrl, Prefix, console, fail
from agentbus.embedded.state import agentbus_home
from agentbus.errors import AgentBusError, ContractError

if TYPE_CHECKING:
    from agentbus.client import Client

auth_app = typer.Typer(
    help="NATS credentials: create the fleet's keys, mint service identities, list them.",
    no_args_is_help=True,
)
commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""
commands.add_typer(auth_app, name="auth")

AUTH_DIR_NAME = "auth"
"""Default auth directory under ``$AGENTBUS_HOME``."""


def default_auth_dir() -> Path:
    """``$AGENTBUS_AUTH_DIR``, else ``$AGENTBUS_HOME/auth`` (``~/.agentbus/auth``)."""
    if path := os.environ.get("AGENTBUS_AUTH_DIR"):
        return Path(path)
    return agentbus_home() / AUTH_DIR_NAME


AuthDirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="Auth directory (default: $AGENTBUS_AUTH_DIR, else $AGENTBUS_HOME/auth)."
    ),
]
"""``--dir`` of the commands that read an existing auth directory."""
AuthDirArg = Annotated[
    Path | None,
    typer.Argument(
        help="Auth directory (default: $AGENTBUS_AUTH_DIR, else $AGENTBUS_HOME/auth).",
        show_default=False,
    ),
]


@auth_app.command("init")
def auth_init(
    directory: AuthDirArg = None,
    prefix: Annotated[
        str, typer.Option(help="Fleet prefix the service identities are for.")
    ] = "agentbus",
    force: Annotated[
        bool, typer.Option("--force", help="New keys: every earlier identity stops working.")
    ] = False,
    resolver_dir: Annotated[
        str | None,
        typer.Option(
            help="Where nats-server keeps account JWTs, as the server sees it "
            "(default: DIR/resolver); rewrites server.conf."
        ),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Create the operator, accounts, signing key, server.conf and service creds.

    Idempotent: an existing directory keeps its keys unless --force; identities missing
    a creds file, or whose creds this version would grant otherwise (after an
    upgrade), get new ones.
    """
    from agentbus.auth.authority import AuthDir, init_auth, write_server_conf
    from agentbus.errors import ContractError

    path = directory or default_auth_dir()
    existed = AuthDir(path).exists()
    reissued: list[str] = []
    try:
        auth = init_auth(path, prefix=prefix, force=force, reissued=reissued)
        if resolver_dir is not None:
            write_server_conf(auth, resolver_dir=resolver_dir)
    except ContractError as exc:
        raise fail(str(exc), 2) from None
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc}", 1) from None
    created = force or not existed
    if json_out:
        import msgspec

        out = {
            "path": str(auth.path),
            "created": created,
            "server_conf": str(auth.server_conf),
            "operator_creds": str(auth.creds("operator")),
            "creds": sorted(str(p) for p in auth.path.glob("creds/*.creds")),
            "reissued": [] if created else reissued,
        }
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(out), indent=2).decode() + "\n")
        return
    verb = "created" if created else "kept (existing keys; --force replaces them)"
    console.print(f"auth directory {auth.path}: {verb}", highlight=False)
    if reissued and not created:
        names = ", ".join(reissued)
        console.print(f"creds minted with this version's permissions: {names}", highlight=False)
    console.print(f"server config: {auth.server_conf}  (put its text in nats-server's config)")
    console.print(f"operator creds: {auth.creds('operator')}  (AGENTBUS_CREDS_FILE)")


@auth_app.command("creds")
def auth_creds(
    service: Annotated[
        str,
        typer.Argument(help="registry, scheduler, supervisor, checkpoint, gateway or archiver."),
    ],
    node: Annotated[str | None, typer.Option("--node", help="The supervisor's node id.")] = None,
    directory: AuthDirOption = None,
    prefix: Annotated[str, typer.Option(help="Fleet prefix.")] = "agentbus",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: DIR/creds/).")
    ] = None,
) -> None:
    """Mint a new identity for SERVICE (e.g. on a new host) and print its creds file path."""
    from agentbus.auth.authority import AuthDir, service_creds
    from agentbus.errors import ContractError

    auth = AuthDir(directory or default_auth_dir())
    if not auth.exists():
        raise fail(f"{auth.path} holds no keys: run `agentbus auth init {auth.path}` first", 1)
    if service == "supervisor" and node is None:
        raise fail("a supervisor's identity is per node: give --node", 2)
    try:
        path = service_creds(auth, prefix, service, node_id=node, path=out)
    except (ValueError, ContractError) as exc:
        raise fail(str(exc), 2) from None
    sys.stdout.write(f"{path}\n")


@auth_app.command("leaf")
def auth_leaf(
    site: Annotated[str, typer.Argument(help="The edge site's name (a token, e.g. its node id).")],
    directory: AuthDirOption = None,
    prefix: Annotated[str, typer.Option(help="Fleet prefix.")] = "agentbus",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: DIR/creds/leaf-SITE.creds).")
    ] = None,
) -> None:
    """Mint the leaf-link identity of edge site SITE and print its creds file path.

    The site's leaf server authenticates its link to the hub with it
    (docs/operations.md, "Edge sites (leaf nodes)").
    """
    from agentbus.auth.authority import AuthDir
    from agentbus.auth.leaf import leaf_creds

    auth = AuthDir(directory or default_auth_dir())
    if not auth.exists():
        raise fail(f"{auth.path} holds no keys: run `agentbus auth init {auth.path}` first", 1)
    try:
        path = leaf_creds(auth, prefix, site, path=out)
    except ContractError as exc:
        raise fail(str(exc), 2) from None
    sys.stdout.write(f"{path}\n")


@auth_app.command("agent")
def auth_agent(
    agent_id: Annotated[str, typer.Argument(help="The agent id it will run as (a token).")],
    deployment: Annotated[
        str | None,
        typer.Option("--deployment", "-d", help="The stored deployment it belongs to."),
    ] = None,
    capability: Annotated[
        list[str] | None,
        typer.Option(
            "--capability", "-c", help="Without --deployment: the capabilities it serves."
        ),
    ] = None,
    directory: AuthDirOption = None,
    ttl_s: Annotated[
        float, typer.Option("--ttl-s", min=1.0, help="Lifetime of the credentials, seconds.")
    ] = 3600.0,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: DIR/creds/agent-<id>.creds).")
    ] = None,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Credentials for an agent started by hand, scoped like a supervisor's replica.

    Provisions the consumers the agent reads from DEPLOYMENT (it may not create them),
    mints a user with the same permissions a supervisor gives a replica of DEPLOYMENT
    running as AGENT_ID, and prints the creds file's path: run the agent with
    ``AGENTBUS_CREDS_FILE=<path> AGENTBUS_AGENT_ID=<id>``. Without a deployment, the
    ``--capability`` values alone make the grant (no topics, no trace kinds).
    """
    from agentbus.auth.authority import AuthDir, Authority, write_secret
    from agentbus.auth.provision import mint_agent, provision_agent
    from agentbus.cli.common import run, with_client
    from agentbus.messages import Deployment
    from agentbus.names import check_token

    try:
        check_token("agent id", agent_id)
        for cap in capability or []:
            check_token("capability", cap)
    except ContractError as exc:
        raise fail(str(exc), 2) from None
    if (deployment is None) == (not capability):
        raise fail("give either --deployment or --capability", 2)
    auth = AuthDir(directory or default_auth_dir())
    if not auth.exists():
        raise fail(f"{auth.path} holds no keys: run `agentbus auth init {auth.path}` first", 1)

    async def go(client: Client) -> Path:
        if deployment is None:
            stored: Deployment | None = Deployment(name=agent_id, capabilities=capability or [])
        else:
            stored = (await client.deployments()).get(deployment)
        if stored is None:
            raise fail(f"no deployment {deployment!r}: apply it first", 1)
        await provision_agent(client.bus, stored, agent_id)
        creds = mint_agent(Authority(auth), client.bus, stored, agent_id, ttl_s=ttl_s)
        path = out or auth.creds(f"agent-{agent_id}")
        write_secret(path, creds.creds_text())
        return path

    try:
        path = run(with_client(nats_url, prefix, go))
    except AgentBusError as exc:
        raise fail(str(exc), 1) from None
    sys.stdout.write(f"{path}\n")


@auth_app.command("show")
def auth_show(directory: AuthDirArg = None, json_out: JsonFlag = False) -> None:
    """Public keys, identities and their expiry (never a seed)."""
    from agentbus.auth.authority import AuthDir
    from agentbus.auth.inventory import summarize
    from agentbus.errors import ContractError

    try:
        summary = summarize(AuthDir(directory or default_auth_dir()))
    except ContractError as exc:
        raise fail(str(exc), 1) from None
    if json_out:
        import msgspec

        sys.stdout.write(msgspec.json.format(summary.to_json(), indent=2).decode() + "\n")
        return
    console.print(f"directory:      {summary.path}", highlight=False)
    console.print(f"operator:       {summary.operator}", highlight=False)
    console.print(f"system account: {summary.system_account}", highlight=False)
    console.print(f"fleet account:  {summary.account}", highlight=False)
    console.print(f"signing key:    {summary.signing_key}", highlight=False)
    table = Table("IDENTITY", "FILE", "PUBLIC KEY", "EXPIRES")
    for ident in summary.identities:
        expires = (
            datetime.fromtimestamp(ident.expires_at_s, UTC).isoformat(timespec="seconds")
            if ident.expires_at_s is not None
            else "never"
        )
        table.add_row(ident.name, ident.file, ident.public_key, expires)
    console.print(table)
    for file, reason in summary.unreadable.items():
        console.print(f"[red]unreadable[/red] {file}: {reason}", highlight=False)


@auth_app.command("tls")
def tls(
    directory: Annotated[Path, typer.Argument(help="Where to write the PEM files.")],
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="Another DNS name or IP address of the server certificate (repeat)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Make every file again, a new CA included.")
    ] = False,
) -> None:
    """Make a local CA, a server and a client certificate in DIRECTORY (for local use).

    The server certificate names localhost, 127.0.0.1, ::1, nats and gateway, plus each
    --host. Existing files are kept unless --force. Prints the settings that use them.
    """
    from agentbus.auth.tls import make_tls_files, server_names

    try:
        files, written = make_tls_files(directory, hosts=host or (), force=force)
    except ContractError as exc:
        raise fail(str(exc), 2) from None
    except (AgentBusError, OSError, ValueError) as exc:
        raise fail(str(exc), 1) from None
    for path in (files.ca_cert, files.server_cert, files.client_cert):
        state = "written" if path in written else "kept"
        console.print(f"{state:8} {path}", highlight=False)
    console.print(f"server names: {', '.join(server_names(files.server_cert))}", highlight=False)
    console.print("nats-server: tls { cert_file, key_file, ca_file } with", highlight=False)
    console.print(f"  {files.server_cert} {files.server_key} {files.ca_cert}", highlight=False)
    console.print("clients:", highlight=False)
    console.print(f"  AGENTBUS_TLS_CA_FILE={files.ca_cert}", highlight=False)
    console.print(f"  AGENTBUS_TLS_CERT_FILE={files.client_cert}", highlight=False)
    console.print(f"  AGENTBUS_TLS_KEY_FILE={files.client_key}", highlight=False)
    console.print("gateway (HTTPS):", highlight=False)
    console.print(f"  GATEWAY_TLS_CERT_FILE={files.server_cert}", highlight=False)
    console.print(f"  GATEWAY_TLS_KEY_FILE={files.server_key}", highlight=False)
