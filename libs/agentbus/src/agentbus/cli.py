"""The ``agentbus`` command: submit tasks, inspect the fleet, run a stack or the demo.

Every command that talks to a stack takes ``--nats-url`` and ``--prefix`` (env
``AGENTBUS_NATS_URL``/``AGENTBUS_PREFIX``); without them it uses the running embedded
stack (``agentbus embedded``), else ``nats://127.0.0.1:4222`` and ``agentbus``.
Expected failures print one line on stderr and exit non-zero: 2 for invalid input
(``ContractError``), 1 for the rest (not found, unavailable, timeout, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import typer
from loguru import logger
from rich.console import Console
from rich.table import Table

from agentbus.cli_connect import connect_client, resolve_settings
from agentbus.client import Client
from agentbus.demo_runtime import choose_runtime
from agentbus.embedded import EmbeddedStack, ping_services, read_state, state_file_path
from agentbus.errors import AgentBusError, ContractError
from agentbus.messages import Deployment, RestartPolicy, TaskRecord, encode
from agentbus.names import check_token

T = TypeVar("T")
Runtime = Literal["auto", "docker", "process"]

app = typer.Typer(
    name="agentbus",
    help="Run fleets of AI agents over NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
demo_app = typer.Typer(help="Demonstrations on a real stack.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

NatsUrl = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="AGENTBUS_NATS_URL", help="NATS server URL(s)."),
]
Prefix = Annotated[
    str | None,
    typer.Option("--prefix", envvar="AGENTBUS_PREFIX", help="Prefix of every bus name."),
]


def _fail(message: str, code: int) -> typer.Exit:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    return typer.Exit(code)


def _token(kind: str, value: str) -> str:
    try:
        return check_token(kind, value)
    except ContractError as exc:
        raise _fail(str(exc), 2) from None


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main``; turn expected errors into a message and an exit code."""
    try:
        return asyncio.run(main)
    except ContractError as exc:
        raise _fail(str(exc), 2) from None
    except AgentBusError as exc:
        raise _fail(str(exc), 1) from None
    except OSError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}", 1) from None
    except KeyboardInterrupt:
        raise _fail("interrupted", 130) from None


async def _with_client(
    nats_url: str | None, prefix: str | None, fn: Callable[[Client], Awaitable[T]]
) -> T:
    client = await connect_client(resolve_settings(nats_url, prefix))
    try:
        return await fn(client)
    finally:
        await client.close()


def _print_json(data: bytes) -> None:
    sys.stdout.write(msgspec.json.format(data, indent=2).decode() + "\n")


def _age(when: datetime) -> str:
    return f"{(datetime.now(UTC) - when).total_seconds():.1f} s"


# ------------------------------------------------------------------------------ tasks
@app.command()
def submit(
    capability: Annotated[str, typer.Argument(help="Capability that handles the task.")],
    json_input: Annotated[
        str | None, typer.Argument(metavar="[JSON_INPUT]", help="Input as JSON ('-': stdin).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the result.")] = False,
    timeout_s: Annotated[float, typer.Option(min=0.001, help="Wait at most this long.")] = 60.0,
    priority: Annotated[int, typer.Option(min=0, max=9)] = 0,
    max_attempts: Annotated[int, typer.Option(min=1, max=100)] = 3,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Submit one task and print its record as JSON (with --wait: the final record)."""
    text = sys.stdin.read() if json_input == "-" else (json_input or "null")
    try:
        raw = msgspec.Raw(msgspec.json.encode(msgspec.json.decode(text)))
    except msgspec.DecodeError as exc:
        raise _fail(f"JSON_INPUT is not valid JSON: {exc}", 2) from None
    check = _token("capability", capability)

    async def go(client: Client) -> TaskRecord:
        record = await client.submit(check, raw, priority=priority, max_attempts=max_attempts)
        return await client.wait(record.task_id, timeout_s=timeout_s) if wait else record

    record = _run(_with_client(nats_url, prefix, go))
    _print_json(encode(record))
    if wait and record.status != "succeeded":
        raise typer.Exit(1)


@app.command()
def task(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Task id.")],
    wait_s: Annotated[
        float, typer.Option(min=0, help="Wait up to this long for a final status.")
    ] = 0.0,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Print a task's record as JSON."""

    async def go(client: Client) -> TaskRecord:
        record = await client.get(task_id)
        if wait_s > 0 and not record.terminal:
            record = await client.wait(task_id, timeout_s=wait_s)
        return record

    _print_json(encode(_run(_with_client(nats_url, prefix, go))))


# ------------------------------------------------------------------------------ fleet
@app.command()
def agents(
    capability: Annotated[str | None, typer.Option(help="Only agents with it.")] = None,
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """List live agents."""
    found = _run(_with_client(nats_url, prefix, lambda c: c.agents(capability)))
    table = Table(title=f"{len(found)} agents")
    for col in ("agent", "name", "capabilities", "node", "deployment", "status", "load", "seen"):
        table.add_column(col)
    for a in found:
        replica = f"{a.deployment}/{a.replica}" if a.deployment else "-"
        load = f"{a.in_flight}/{a.max_concurrency}"
        caps = ",".join(a.capabilities)
        table.add_row(a.agent_id, a.name, caps, a.node_id or "-", replica, a.status, load,
                      _age(a.heartbeat_at))  # fmt: skip
    console.print(table)


@app.command()
def nodes(nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """List live nodes (one supervisor each)."""
    found = _run(_with_client(nats_url, prefix, lambda c: c.nodes()))
    table = Table(title=f"{len(found)} nodes")
    for col in ("node", "runtime", "replicas", "labels", "host", "seen"):
        table.add_column(col)
    for n in found:
        labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))
        table.add_row(n.node_id, n.runtime, f"{n.replicas}/{n.capacity_replicas}", labels,
                      n.hostname, _age(n.heartbeat_at))  # fmt: skip
    console.print(table)


@app.command()
def ping(nats_url: NatsUrl = None, prefix: Prefix = None) -> None:
    """List the services that answer $SRV.PING (exit 1 if one of the five is missing)."""
    settings = resolve_settings(nats_url, prefix)
    names = _run(
        _with_client(nats_url, prefix, lambda c: ping_services(c.bus.nc, prefix=settings.prefix))
    )
    expected = {"registry", "scheduler", "supervisor", "checkpoint", "gateway"}
    for name in sorted(names | expected):
        console.print(f"{name:<12} {'ok' if name in names else '[red]missing[/red]'}")
    if not expected <= names:
        raise typer.Exit(1)


@app.command()
def deploy(
    name: Annotated[str, typer.Argument(help="Deployment name (a token).")],
    image: Annotated[str | None, typer.Option(help="Image (docker runtime).")] = None,
    command: Annotated[
        str | None, typer.Option(help="Command line (process runtime), shell-quoted.")
    ] = None,
    image_command: Annotated[
        str | None, typer.Option(help="Overrides the image's CMD (docker), shell-quoted.")
    ] = None,
    replicas: Annotated[int, typer.Option(min=0, max=1000)] = 1,
    capability: Annotated[
        list[str] | None, typer.Option("--capability", "-c", help="Repeatable.")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE.")] = None,
    max_concurrency: Annotated[int, typer.Option(min=1)] = 1,
    restart_policy: Annotated[str, typer.Option(help="always|on-failure|never")] = "always",
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Create or update a deployment and print its placements."""
    if not image and not command:
        raise _fail("give --image, --command or both", 2)
    if restart_policy not in ("always", "on-failure", "never"):
        raise _fail(f"--restart-policy {restart_policy!r}: use always, on-failure or never", 2)
    pairs = [e.partition("=") for e in env or []]
    if bad := [k for k, sep, _ in pairs if not sep or not k]:
        raise _fail(f"--env {bad[0]!r}: use KEY=VALUE", 2)
    _token("deployment name", name)
    for cap in capability or []:
        _token("capability", cap)
    spec = Deployment(
        name=name,
        replicas=replicas,
        image=image,
        command=shlex.split(command) if command else None,
        image_command=shlex.split(image_command) if image_command else None,
        capabilities=list(capability or []),
        env={k: v for k, _, v in pairs},
        restart_policy=_policy(restart_policy),
        max_concurrency=max_concurrency,
    )
    reply = _run(_with_client(nats_url, prefix, lambda c: c.deploy(spec)))
    table = Table(title=f"deployment {reply.deployment.name}: {reply.deployment.replicas} replicas")
    table.add_column("replica", justify="right")
    table.add_column("node")
    for p in reply.placements:
        table.add_row(str(p.replica), p.node_id)
    console.print(table)


def _policy(value: str) -> RestartPolicy:
    return value  # type: ignore[return-value]


@app.command()
def undeploy(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Delete a deployment; its replicas are stopped."""
    _run(_with_client(nats_url, prefix, lambda c: c.delete_deployment(name)))
    console.print(f"deleted deployment {name}")


# --------------------------------------------------------------------------- schema
@app.command()
def schema() -> None:
    """Print the JSON Schema of every wire message."""
    from agentbus.schema import render

    sys.stdout.write(render())


# ------------------------------------------------------------------------- embedded
@app.command()
def embedded(
    store_dir: Annotated[Path | None, typer.Option(help="JetStream store (default: temp).")] = None,
    port: Annotated[int | None, typer.Option(help="NATS port (default: a free one).")] = None,
    gateway_port: Annotated[int | None, typer.Option(help="Gateway HTTP port.")] = None,
    runtime: Annotated[Runtime, typer.Option(help="Where agents run.")] = "auto",
    prefix: Annotated[str, typer.Option(help="Prefix of every bus name.")] = "agentbus",
    log_level: Annotated[str, typer.Option(help="Services' log level.")] = "INFO",
) -> None:
    """Run nats-server and the five services locally until Ctrl-C."""
    if (state := read_state()) is not None:
        raise _fail(
            f"an embedded stack is already running at {state.nats_url} "
            f"(pid {state.pids.get('nats-server')}); state file {state_file_path()}",
            1,
        )
    code = _run(_embedded(store_dir, port, gateway_port, runtime, prefix, log_level))
    raise typer.Exit(code)


async def _embedded(
    store_dir: Path | None, port: int | None, gateway_port: int | None,
    runtime: Runtime, prefix: str, log_level: str,
) -> int:  # fmt: skip
    chosen, why = await choose_runtime(runtime, "agentbus/agent:dev")
    console.print(f"runtime: {chosen} ({why})")
    stack = EmbeddedStack(
        store_dir=store_dir, nats_port=port, gateway_port=gateway_port, prefix=prefix,
        runtime=chosen, log_level=log_level, write_state=True,  # type: ignore[arg-type]
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with console.status("starting nats-server and the five services"):
        await stack.start()
    code = 0
    try:
        console.print(f"NATS:    {stack.nats_url}  (prefix {prefix})")
        console.print(f"gateway: {stack.gateway_url}")
        console.print(f"logs:    {stack.log_dir}")
        console.print(f"state:   {state_file_path()}")
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


# ----------------------------------------------------------------------------- demo
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
    nats_url: NatsUrl = None,
    prefix: Prefix = None,
) -> None:
    """Review every *.py file under PATH with a fleet of reviewer agents."""
    from agentbus.demo import review

    settings = resolve_settings(nats_url, prefix)
    _run(review(path, settings=settings, replicas=replicas, runtime=runtime, image=image,
                json_path=json_file, console=console, timeout_s=timeout_s))  # fmt: skip


def main() -> None:
    """Console-script entry point."""
    logger.remove()
    logger.add(sys.stderr, level="ERROR", format="{level}: {message}")
    app()


if __name__ == "__main__":
    main()
