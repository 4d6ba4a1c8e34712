"""``agentbus auth``: the trust material of a stack (``auth tls``: local certificates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentbus.cli.common import app, console, fail
from agentbus.errors import AgentBusError, ContractError

auth_app = typer.Typer(help="Certificates and credentials of a stack.", no_args_is_help=True)
app.add_typer(auth_app, name="auth")


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
