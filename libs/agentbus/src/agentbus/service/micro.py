"""Scaffolding shared by the five services.

Typed ``nats.micro`` endpoints, bad-input handling, metrics and the process entry point.

A service is a ``nats.micro`` service (``nats micro ls`` lists it) whose endpoints
decode requests into ``agentbus.messages`` Structs, call a typed handler and encode
the reply. Errors travel back in the ``Nats-Service-Error-Code`` and
``Nats-Service-Error`` headers, and are counted in ``agentbus_service_requests_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec
from loguru import logger
from pydantic_settings import BaseSettings
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from agentbus import __version__
from agentbus.bus import Bus
from agentbus.bus.contract import owned_parts
from agentbus.errors import AgentBusError, ForbiddenError, UnavailableError
from agentbus.log import configure_logging
from agentbus.messages import ErrorEvent, Message, encode, utcnow
from agentbus.names import escape_token
from agentbus.settings import BusSettings

if TYPE_CHECKING:  # imported where used: an agent's start-up needs neither (recovery path)
    from nats.micro.request import Request
    from nats.micro.service import Service
    from prometheus_client import CollectorRegistry, Counter

Req = TypeVar("Req", bound=Message)


class ServiceMetrics:
    """Metrics every service exports, on its own ``CollectorRegistry``."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.service = service
        self.registry = registry
        self.requests = Counter(
            "agentbus_service_requests_total",
            "Service requests handled, by endpoint and outcome (ok or an error code).",
            ["service", "endpoint", "outcome"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "agentbus_service_request_duration_seconds",
            "Time to handle one service request.",
            ["service", "endpoint"],
            registry=registry,
        )
        self.bad_messages = bad_messages_counter(registry)


def bad_messages_counter(registry: CollectorRegistry) -> Counter:
    """``agentbus_bad_messages_total{service, source}``, shared by services and agents."""
    from prometheus_client import Counter

    return Counter(
        "agentbus_bad_messages_total",
        "Messages that did not decode or validate, by where they came from.",
        ["service", "source"],
        registry=registry,
    )


async def publish_bad_message(
    bus: Bus,
    counter: Counter,
    *,
    service: str,
    entity: str,
    source: str,
    subject: str,
    reason: str,
    event_kind: str | None = None,
) -> None:
    """Log, count and publish an ``ErrorEvent`` for a message that could not be used.

    Counted as ``counter{service=entity, source}``; the event (``service`` field =
    ``service``) goes to ``<p>.events.error.<event_kind>`` (``event_kind`` defaults
    to ``entity``; an agent's is ``agent.<agent_id>``), best effort: a bus outage
    must not turn one bad message into a crash.
    """
    counter.labels(entity, source).inc()
    logger.warning("bad message", source=source, subject=subject, reason=reason)
    event = ErrorEvent(service=service, subject=subject, reason=reason, at=utcnow())
    try:
        await bus.publish_event("error", event_kind or entity, event)
    except Exception as exc:
        logger.warning("could not publish error event", error=repr(exc))


async def report_bad_message(
    bus: Bus, metrics: ServiceMetrics, *, source: str, subject: str, reason: str
) -> None:
    """Log, count and publish an ``ErrorEvent`` for a message a service could not use.

    ``source`` is a low-cardinality label (an endpoint or stream name); ``subject`` is
    the message's subject. See ``publish_bad_message``.
    """
    await publish_bad_message(
        bus,
        metrics.bad_messages,
        service=metrics.service,
        entity=metrics.service,
        source=source,
        subject=subject,
        reason=reason,
    )


class MicroService:
    """A ``nats.micro`` service whose endpoints take and return typed messages."""

    def __init__(self, bus: Bus, name: str, metrics: ServiceMetrics, *, description: str = ""):
        self.bus = bus
        self.name = name
        self.metrics = metrics
        self.description = description
        self._svc: Service | None = None

    async def start(self) -> None:
        """Register the service; ``$SRV.PING``/``INFO``/``STATS`` answer from now on."""
        from nats.micro import add_service

        self._svc = await add_service(
            self.bus.nc,
            name=self.name,
            version=__version__,
            description=self.description or f"agentbus {self.name}",
            # agentbus.service.health finds this process's instance by host (and a test by pid)
            metadata={
                "prefix": self.bus.names.prefix,
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
            },
        )

    async def stop(self) -> None:
        """Unsubscribe every endpoint."""
        if self._svc is not None:
            await self._svc.stop()

    async def endpoint(
        self,
        verb: str,
        request_type: type[Req],
        handler: Callable[[Req], Awaitable[Message]],
        *,
        subject: str | None = None,
        owner: Callable[[Req], str] | None = None,
    ) -> None:
        """Serve ``handler`` on ``<prefix>.<service>.<verb>`` (or ``subject``).

        With ``owner`` (the owner a request is for, e.g. its ``agent_id``), serve
        ``<prefix>.<service>.<verb>.*`` instead (``Names.owner_endpoint``): a request
        whose last subject token is not ``escape_token(owner(request))`` gets error
        code 403 (``ForbiddenError``), is counted and reported like a bad message.

        A request that does not decode as ``request_type`` gets error code 400 and is
        counted; an ``AgentBusError`` is returned with its code; any other exception
        is logged with its traceback and returned as code 500.
        """
        assert self._svc is not None, "call start() first"
        decoder = msgspec.json.Decoder(request_type)
        service, metrics = self.name, self.metrics
        if owner is not None:
            subject = f"{self.bus.names.endpoint(self.name, verb)}.*"
        subject = subject or self.bus.names.endpoint(self.name, verb)

        async def _handle(req: Request) -> None:
            started = time.perf_counter()
            try:
                payload = decoder.decode(req.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                reason = f"request is not a valid {request_type.__name__}: {exc}"
                await report_bad_message(
                    self.bus, metrics, source=verb, subject=req.subject, reason=reason
                )
                metrics.requests.labels(service, verb, "400").inc()
                await req.respond_error("400", reason)
                return
            if owner is not None and (
                (token := req.subject.rsplit(".", 1)[-1]) != escape_token(owner(payload))
            ):
                refused = ForbiddenError(
                    f"request for owner {owner(payload)!r} on the subject of owner {token!r}"
                )
                await report_bad_message(
                    self.bus, metrics, source=verb, subject=req.subject, reason=str(refused)
                )
                metrics.requests.labels(service, verb, refused.code).inc()
                await req.respond_error(refused.code, str(refused))
                return
            try:
                reply = await handler(payload)
            except AgentBusError as exc:
                metrics.requests.labels(service, verb, exc.code).inc()
                logger.info("request refused", endpoint=verb, code=exc.code, error=str(exc))
                await req.respond_error(exc.code, str(exc))
                return
            except Exception as exc:
                metrics.requests.labels(service, verb, "500").inc()
                logger.exception("request failed", endpoint=verb)
                await req.respond_error("500", f"{type(exc).__name__}: {exc}")
                return
            await req.respond(encode(reply))
            metrics.requests.labels(service, verb, "ok").inc()
            metrics.request_duration.labels(service, verb).observe(time.perf_counter() - started)

        await self._svc.add_endpoint(name=verb, subject=subject, handler=_handle)


async def connect_with_retry(
    settings: BusSettings, *, name: str, owner: str, timeout_s: float = 60.0
) -> Bus:
    """Connect and provision the bus, retrying with exponential backoff for ``timeout_s``.

    Services started by compose may come up before nats-server accepts connections.
    ``owner`` (a service name, or ``agent``) decides which parts of the contract it
    creates (``agentbus.bus.contract.owned_parts``).

    Raises:
        UnavailableError: NATS did not answer within ``timeout_s`` seconds.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(UnavailableError),
        wait=wait_exponential(multiplier=0.2, max=5.0),
        stop=stop_after_delay(timeout_s),
        reraise=True,
    ):
        with attempt:
            bus = await Bus.connect(settings, name=name)
    parts = owned_parts(settings, owner)
    if parts != ():
        await bus.ensure(parts)
    return bus


EXIT_CONNECTION_LOST = 3
"""Exit status of a service whose NATS connection was closed for good."""
STOP_AFTER_LOSS_S = 10.0
"""How long ``serve`` may clean up after the connection was lost before it is cancelled."""

S = TypeVar("S", bound=BaseSettings)
Serve = Callable[[Bus, asyncio.Event, S, "CollectorRegistry"], Awaitable[None]]
"""A service's ``serve(bus, stop, settings, registry)``: runs until ``stop`` is set."""


def run_service(
    name: str, serve: Serve[S], settings: S, *, bus_settings: BusSettings | None = None
) -> None:
    """Entry point of a service process: logging, metrics, bus, signals, ``serve``.

    ``serve(bus, stop, settings, registry)`` runs until ``stop`` is set (SIGTERM or
    SIGINT) and must then return after cleaning up. Metrics go to a fresh
    ``CollectorRegistry``, served over HTTP when ``settings.metrics_port`` is set.

    A connection the NATS client closed for good (a server ``-ERR`` such as "maximum
    control line exceeded"; nats-py does not reconnect after one) is logged as an
    error, ``stop`` is set, and the process exits with ``EXIT_CONNECTION_LOST`` so
    that whatever runs it (compose ``restart:``, systemd) starts it again.

    Raises:
        SystemExit: with ``EXIT_CONNECTION_LOST`` after a lost connection.
    """
    from prometheus_client import CollectorRegistry, start_http_server

    bus_settings = bus_settings or BusSettings()
    configure_logging(name, level=bus_settings.log_level, json=bus_settings.log_json)
    registry = CollectorRegistry()
    if metrics_port := getattr(settings, "metrics_port", None):
        start_http_server(metrics_port, registry=registry)

    async def _main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        bus = await connect_with_retry(bus_settings, name=f"agentbus-{name}", owner=name)
        logger.info("service started", nats_url=bus_settings.nats_url, prefix=bus_settings.prefix)
        try:
            return await _serve_until_lost(bus, stop, serve(bus, stop, settings, registry))
        finally:
            await bus.close()
            logger.info("service stopped")

    if code := asyncio.run(_main()):
        raise SystemExit(code)


async def _serve_until_lost(bus: Bus, stop: asyncio.Event, serving: Awaitable[None]) -> int:
    """Run ``serving`` until it returns (0) or the connection is lost for good.

    After a loss, ``stop`` is set and ``serving`` gets ``STOP_AFTER_LOSS_S`` seconds to
    clean up; returns ``EXIT_CONNECTION_LOST``. Exceptions of ``serving`` propagate.
    """
    task = asyncio.ensure_future(serving)
    closed = asyncio.create_task(bus.closed.wait(), name="bus closed")
    try:
        await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if task.done():
        task.result()
        return 0
    logger.error(
        "NATS connection closed for good; exiting so that the service is restarted",
        error=str(bus.nc.last_error or "closed"),
        exit_status=EXIT_CONNECTION_LOST,
    )
    stop.set()
    done, _ = await asyncio.wait({task}, timeout=STOP_AFTER_LOSS_S)
    if not done:
        task.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task
    return EXIT_CONNECTION_LOST
