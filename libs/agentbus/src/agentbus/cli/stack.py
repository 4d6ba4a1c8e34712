"""``agentbus schema|embedded|demo``: the contract, a local stack, the demo."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from agentbus.cli.common import (
    NatsUrl,
    Prefix,
    Runtime,
    console,
    err_console,
    fail,
    run,
)
from agentbus.cli.connect import resolve_settings
from agentbus.demo.runtime import choose_runtime
from agentbus.embedded import EmbeddedStack
from agentbus.embedded.state import claim_state, state_file_path

commands = typer.Typer()
"""The root commands this module defines (``agentbus.cli._lazy`` loads them)."""
demo_app = typer.Typer(help="Demonstrations on a real stack.", no_args_is_help=True)
commands.add_typer(demo_app, name="demo")


@commands.command()
def schema() -> None:
    """Print the JSON Schema of every wire message."""
    from agentbus.schema import render

    sys.stdout.write(render())


@commands.command()
def embedded(
    store_dir: Annotated[Path | None, typer.Option(help="JetStream store (default: temp).")] = None,
    port: Annotated[int | None, typer.Option(help="NATS port (default: a free one).")] = None,
    gateway_port: Annotated[int | None, typer.Option(help="Gateway HTTP port.")] = None,
    runtime: Annotated[Runtime, typer.Option(help="Where agents run.")] = "auto",
    prefix: Annotated[str, typer.Option(help="Prefix of every bus name.")] = "agentbus",
    log_level: Annotated[str, typer.Option(help="Services' log level.")] = "INFO",
    state_file: Annotated[
        Path | None,
        typer.Option(
            envvar="AGENTBUS_STATE_FILE",
            help="State file of this stack (default: $AGENTBUS_HOME/embedded.json); one "
            "live stack per file.",
        ),
    ] = None,
    tls: Annotated[
        Path | None,
        typer.Option(
            help="TLS on NATS and the gateway with the files in this directory "
            "(made by `agentbus auth tls` if missing).",
        ),
    ] = None,
    tls_verify: Annotated[
        bool, typer.Option(help="With --tls: require client certificates (mutual TLS).")
    ] = False,
    auth: Annotated[
        bool,
        typer.Option(
            "--auth/--no-auth",
            envvar="AGENTBUS_EMBEDDED_AUTH",
            help="Require credentials (each service its own; the CLI the operator's).",
        ),
    ] = True,
    auth_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="AGENTBUS_AUTH_DIR",
            help="The fleet's keys (default: $AGENTBUS_HOME/auth, made on first use).",
        ),
    ] = None,
    cluster: Annotated[
        int,
        typer.Option(
            min=1,
            max=5,
            help="nats-servers: 1, or a cluster of 3 (or 5) on loopback ports whose "
            "streams and buckets are R3.",
        ),
    ] = 1,
    audit_database_url: Annotated[
        str | None,
        typer.Option(
            envvar="AGENTBUS_AUDIT_DATABASE_URL",
            help="Also run the archiver: the events stream into this PostgreSQL "
            "(the audit trail, `agentbus audit`).",
        ),
    ] = None,
) -> None:
    """Run nats-server and the five services (and the archiver, if given a database) until Ctrl-C.

    Authentication is on unless --no-auth: the keys come from the auth directory,
    created by `agentbus auth init` on first use; an incomplete one is refused (exit 1).
    Refuses (exit 1) while another live stack owns the state file.
    """
    path = state_file or state_file_path()
    keys: Path | None = None
    if auth:
        from agentbus.cli.auth import default_auth_dir

        keys = auth_dir or default_auth_dir()
    stack = EmbeddedStack(
        store_dir=store_dir,
        nats_port=port,
        gateway_port=gateway_port,
        prefix=prefix,
        log_level=log_level,
        write_state=True,
        state_file=path,
        auth=auth,
        auth_dir=keys,
        tls_dir=tls,
        verify_clients=tls_verify,
        cluster=cluster,
        audit_database_url=audit_database_url,
    )
    code = run(_embedded(stack, runtime))
    raise typer.Exit(code)


def _make_keys(stack: EmbeddedStack) -> None:
    """Create the fleet's keys on first use.

    Called once the state file is ours: two stacks started together would otherwise
    write the same key files at once.
    """
    keys = stack.auth_dir
    if stack.auth and keys is not None and not keys.exists():
        from agentbus.auth.authority import init_auth

        init_auth(keys, prefix=stack.prefix)
        console.print(f"auth:    created the fleet's keys in {keys}", highlight=False)


async def _embedded(stack: EmbeddedStack, runtime: Runtime) -> int:
    try:
        claim_state(stack.state_file)  # before anything starts: StackRunningError, exit 1
        _make_keys(stack)
        chosen, why = await choose_runtime(runtime, "agentbus/agent:dev")
    except BaseException:
        await stack.stop()  # releases the claim if it is ours; removes the temp dir
        raise
    console.print(f"runtime: {chosen} ({why})")
    stack.runtime = chosen  # type: ignore[assignment]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    servers = "nats-server" if stack.cluster == 1 else f"{stack.cluster} clustered nats-servers"
    with console.status(f"starting {servers} and the five services"):
        await stack.start()
    code = 0
    try:
        console.print(f"NATS:    {stack.nats_url}  (prefix {stack.prefix})")
        if stack.credentials is not None:
            creds = stack.credentials.operator_creds
            console.print(f"auth:    on; operator creds {creds} (AGENTBUS_CREDS_FILE)")
        else:
            console.print("auth:    off (--no-auth): anyone who reaches the port has full access")
        console.print(
            f"gateway: {stack.gateway_url}  (token: agentbus tokens create NAME -s SCOPE)"
        )
        console.print(f"logs:    {stack.log_dir}")
        console.print(f"state:   {stack.state_file}")
        console.print("ready; Ctrl-C stops the stack")
        while not stop.is_set():
            if failed := stack.failed():
                name, rc = next(iter(failed.items()))
                err_console.print(
                    f"[red]{name} exited with code {rc}[/red]\n{stack.log_tail(name)}"
                )
                code = 1
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        with console.status("stopping"):
            await stack.stop()
    console.print("stopped")
    return code


@demo_app.command("review")
def demo_review(
    path: Annotated[Path | None, typer.Argument(help="Tree to review (default: stdlib).")] = None,
    replicas: Annotated[int, typer.Option(min=1, max=1000)] = 4,
    runtime: Annotated[Runtime, typer.Option(help="Runtime of an embedded stack.")] = "auto",
    json_file: Annotated[Path | None, typer.Option("--json", help="Write the report.")] = None,
    image: Annotated[
        str, typer.Option(help="Agent image (docker runtime).")
    ] = "agentbus/agent:dev",
    timeout_s: Annotated[float, typer.Option(min=1, help="Wait this long for results.")] = 3600.0,
    stigmergy: Annotated[
        bool, typer.Option("--stigmergy", help="No task list: agents walk PATH, leave traces.")
    ] = False,
    no_traces: Annotated[
        bool, typer.Option("--no-traces", help="With --stigmergy: walkers ignore traces.")
    ] = False,
    compare: Annotated[
        bool, typer.Option("--compare", help="Run queue, stigmergy and no-traces in turn.")
    ] = False,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Review every *.py file under PATH with a fleet of reviewer agents."""
    from agentbus.demo.review import Mode, review

    if no_traces and not stigmergy:
        raise fail("--no-traces needs --stigmergy", 2)
    mode: Mode = ("no-traces" if no_traces else "stigmergy") if stigmergy else "queue"
    settings = resolve_settings(nats_url, prefix)
    run(
        review(
            path,
            settings=settings,
            replicas=replicas,
            runtime=runtime,
            image=image,
            json_path=json_file,
            console=console,
            timeout_s=timeout_s,
            mode=mode,
            compare=compare,
        )
    )
