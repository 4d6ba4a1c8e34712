"""One NATS connection plus the agentbus streams, buckets and typed requests.

Every service, agent and client holds one ``Bus`` per process (one connection per
process is the nats-py performance advice). ``Bus.ensure()`` creates the streams and
buckets of the contract if they are missing; it is idempotent and every service calls
it on start, so the services can start in any order.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Collection
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from agentbus.auth.creds import creds_inbox_prefix
from agentbus.bus.dial import any_server_listens, tls_context, tls_failure, wants_tls
from agentbus.bus.publisher import AckedPublisher
from agentbus.bus.requests import raw_request
from agentbus.errors import AuthenticationError, ContractError, UnavailableError
from agentbus.messages import Message, encode
from agentbus.names import Names
from agentbus.settings import BusSettings

R = TypeVar("R", bound=Message)
_DENIED = re.compile(r'permissions violation for (?:publish|subscription) to "([^"]+)"', re.I)
"""A permission denial the server reports (``-ERR``), and the subject it names."""
_EXPIRED = "authentication expired"
"""The server's ``-ERR`` when a session's user JWT expires (lower case)."""
_AGENT_INBOX = b"_INBOX_agent_"
"""Reply prefix of minted agent credentials (``agentbus.auth.permissions.inbox_prefix``)."""


class _RenewingClient(Client):
    """A nats-py client that reconnects when the server ends a session whose JWT expired.

    nats-py closes the connection for good on any ``-ERR`` but a stale connection or a
    permission denial. A replica's credentials are short-lived and renewed in their file
    (``agentbus_supervisor.credentials``): at the old JWT's expiry the server ends the
    session with ``-ERR 'User Authentication Expired'``, and reconnecting, which reads
    the creds file again, is what resumes it.
    """

    async def _process_err(self, err_msg: str) -> None:
        if _EXPIRED in err_msg.lower():
            logger.info("credentials expired: reconnecting with the creds file's")
            await self._process_op_err(nats.errors.StaleConnectionError())
            return
        await super()._process_err(err_msg)


class Bus:
    """A connected NATS client with the agentbus names and helpers.

    Attributes:
        nc: the nats-py client.
        js: its JetStream context.
        names: names derived from ``settings.prefix``.
        settings: the bus settings it was built from.
    """

    def __init__(
        self, nc: Client, settings: BusSettings, *, closed: asyncio.Event | None = None
    ) -> None:
        self.nc = nc
        self.closed = closed or asyncio.Event()
        """Set once the connection is closed, by ``close()`` or for good by the client
        (a server ``-ERR`` such as "maximum control line exceeded": nats-py does not
        reconnect after one)."""
        self.closing = False
        """Whether ``close()`` was called (a close not asked for is a lost connection)."""
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout_s)
        self.settings = settings
        self.names = Names(settings.prefix)
        self._kv: dict[str, KeyValue] = {}
        self._obs: dict[str, ObjectStore] = {}
        self._publisher: AckedPublisher | None = None
        self.denials: dict[str, float] = {}
        """Subjects the server refused this connection (monotonic time of the last)."""

    @classmethod
    async def connect(cls, settings: BusSettings | None = None, *, name: str = "agentbus") -> Bus:
        """Connect to ``settings.nats_url`` and return a ``Bus``.

        Once connected, reconnects forever after a lost connection (nats-py's own
        reconnect loop); the first connect is bounded by ``connect_timeout_s``. A
        protocol error the server reports (``-ERR``, other than a stale connection or a
        permission denial) closes the connection for good: ``closed`` is then set while
        ``closing`` is false (``agentbus.service.run_service`` exits on it).

        With ``settings.creds_file`` it authenticates as that user and takes replies
        under the reply prefix its permissions allow (``agentbus.auth.creds``).

        TLS (``settings.tls_*``, ``tls://`` URLs): see ``agentbus.bus.dial``.

        Raises:
            UnavailableError: no server accepted the first connect in time, the TLS
                handshake failed, or TLS is wanted and the server does not require it.
            AuthenticationError: the server refused the credentials (or their absence).
            ContractError: the creds file, or a ``tls_*`` file, is missing or unusable.
        """
        settings = settings or BusSettings()

        auth_error: str | None = None
        refused = asyncio.Event()

        denials: dict[str, float] = {}

        async def _on_error(exc: Exception) -> None:
            nonlocal auth_error
            if m := _DENIED.search(str(exc)):
                denials[m.group(1)] = time.monotonic()
            text = str(exc).lower()
            if "authorization" in text or "authentication" in text:
                auth_error = str(exc)
                refused.set()
            logger.warning("nats connection error: {error}", error=repr(exc))
            if isinstance(exc, ssl.SSLError):
                tls_errors.append(exc)

        closed = asyncio.Event()
        tls_errors: list[ssl.SSLError] = []

        async def _on_closed() -> None:
            closed.set()

        tls = tls_context(settings)
        need_tls = wants_tls(settings)
        if not await any_server_listens(
            settings.nats_url, settings.connect_timeout_s, need_tls=need_tls
        ):
            raise UnavailableError(f"no NATS server reachable at {settings.nats_url}")
        auth: dict[str, Any] = {"reconnect_time_wait": 0.5}  # nats-py types it int
        if settings.creds_file is not None:
            auth["user_credentials"] = str(settings.creds_file)
            if (prefix := creds_inbox_prefix(settings.creds_file)) is not None:
                auth["inbox_prefix"] = prefix
        nc = _RenewingClient()
        connecting = asyncio.ensure_future(
            nc.connect(
                settings.nats_url.split(","),
                name=name,
                tls=tls,
                **auth,
                connect_timeout=2,
                dont_randomize=settings.nats_servers_in_order,
                max_reconnect_attempts=-1,
                error_cb=_on_error,
                closed_cb=_on_closed,
                drain_timeout=5,
            )
        )
        refusal = asyncio.ensure_future(refused.wait())
        try:
            async with asyncio.timeout(settings.connect_timeout_s):
                await asyncio.wait({connecting, refusal}, return_when=asyncio.FIRST_COMPLETED)
            if not connecting.done():  # refused: credentials, not the network
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
                raise AuthenticationError(
                    "refused",
                    f"{settings.nats_url} refused the connection: {auth_error}"
                    + ("" if settings.creds_file else " (no credentials: set AGENTBUS_CREDS_FILE)"),
                )
            connecting.result()
        except (OSError, TimeoutError, nats.errors.NoServersError) as exc:
            connecting.cancel()
            if failed := [exc] if isinstance(exc, ssl.SSLError) else tls_errors:
                raise UnavailableError(tls_failure(settings.nats_url, failed[-1])) from exc
            raise UnavailableError(
                f"no NATS server reachable at {settings.nats_url} within "
                f"{settings.connect_timeout_s:.1f} s"
            ) from exc
        finally:
            refusal.cancel()
        bus = cls(nc, settings, closed=closed)
        bus.denials = denials
        return bus

    def denied(self, subject: str | None = None, *, within_s: float = 30.0) -> str | None:
        """A subject the server refused this connection within ``within_s`` seconds.

        ``subject``: that one only; None: the most recent of any. A refused request is
        a timeout on the client (the refusal comes as an asynchronous ``-ERR``): callers
        use this to say "permission denied" instead.
        """
        since = time.monotonic() - within_s
        recent = {s: t for s, t in self.denials.items() if t >= since}
        if subject is not None:
            return subject if subject in recent else None
        return max(recent, key=recent.__getitem__) if recent else None

    @property
    def provisioned(self) -> bool:
        """Whether this connection holds an agent's minted credentials.

        Such an agent may not create streams or consumers: its supervisor provisioned
        them (``agentbus.bus.consumers``).
        """
        return bytes(self.nc._inbox_prefix).startswith(_AGENT_INBOX)

    @property
    def agent_id(self) -> str | None:
        """The agent id a provisioned connection's credentials were minted for, else None."""
        prefix = bytes(self.nc._inbox_prefix)
        return prefix[len(_AGENT_INBOX) :].decode() if prefix.startswith(_AGENT_INBOX) else None

    @property
    def lost(self) -> bool:
        """Whether the connection was closed for good without ``close()`` being called."""
        return self.closed.is_set() and not self.closing

    async def close(self) -> None:
        """Flush and close the connection (pending subscriptions are drained).

        With the server out of reach (nats-py reconnecting) there is nothing to drain
        to: the connection is closed at once, and messages buffered while reconnecting
        are dropped, so a process can still stop cleanly.
        """
        self.closing = True
        if self._publisher is not None:
            await self._publisher.close()
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (nats.errors.ConnectionClosedError, asyncio.CancelledError):
                pass
            except nats.errors.ConnectionReconnectingError:
                try:
                    await self.nc.close()
                except OSError as exc:
                    # nats-py flushes what it buffered while reconnecting to the old,
                    # dead socket; the client is closed all the same, but its closed
                    # callback never runs.
                    logger.debug("bus closed with its buffered messages lost: {!r}", exc)
                    self.closed.set()

    # -- provisioning ---------------------------------------------------------------
    async def ensure(self, parts: Collection[str] | None = None) -> None:
        """Create the streams, buckets and object stores of the contract if missing.

        ``parts``: only these parts of ``agentbus.bus.contract.PARTS`` (a service with
        its own credentials may create only what it owns); None: every part.
        Idempotent; existing streams get their limits brought to the settings.
        """
        from agentbus.bus.contract import ensure_contract

        await ensure_contract(self, parts)

    async def kv(self, bucket: str) -> KeyValue:
        """The KV bucket ``bucket`` (cached per connection).

        Raises:
            UnavailableError: the bucket does not exist (nobody ran ``ensure()``).
        """
        if (kv := self._kv.get(bucket)) is None:
            try:
                kv = self._kv[bucket] = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError as exc:
                raise UnavailableError(f"KV bucket {bucket!r} does not exist yet") from exc
        return kv

    async def object_store(self, bucket: str | None = None) -> ObjectStore:
        """The Object Store ``bucket`` (default: the blobs bucket), cached per connection.

        Raises:
            UnavailableError: the bucket does not exist (nobody ran ``ensure()``).
        """
        bucket = bucket or self.names.blobs_bucket
        if (obs := self._obs.get(bucket)) is None:
            try:
                obs = self._obs[bucket] = await self.js.object_store(bucket)
            except nats.js.errors.NotFoundError as exc:
                raise UnavailableError(f"Object Store {bucket!r} does not exist") from exc
        return obs

    # -- messaging ------------------------------------------------------------------
    async def publisher(self) -> AckedPublisher:
        """This connection's ``AckedPublisher`` (acked publishes, many in flight)."""
        if self._publisher is None:
            self._publisher = AckedPublisher(self.nc, timeout_s=self.settings.request_timeout_s)
        await self._publisher.start()
        return self._publisher

    async def request(
        self, subject: str, payload: Message, reply: type[R], *, timeout_s: float | None = None
    ) -> R:
        """Send ``payload`` to a service endpoint and decode the reply as ``reply``.

        Raises:
            UnavailableError: no service is subscribed to ``subject``.
            RequestTimeoutError: no reply within ``timeout_s`` (default from settings).
            ContractError: the reply did not decode as ``reply``, or the service
                rejected the request as invalid.
            AgentBusError: the error the service reported (mapped by its code).
        """
        msg = await raw_request(self, subject, encode(payload), timeout_s=timeout_s)
        try:
            return msgspec.json.decode(msg.data, type=reply)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ContractError(f"reply on {subject!r} is not a {reply.__name__}: {exc}") from exc

    async def publish_event(self, entity: str, kind: str, event: Message) -> None:
        """Append ``event`` to the events stream on ``<p>.events.<entity>.<kind>``."""
        await self.js.publish(self.names.event_subject(entity, kind), encode(event))
