"""Requests to ``nats.micro``-style endpoints, their errors mapped to ``agentbus.errors``.

A responder reports an error in the ``Nats-Service-Error-Code`` and
``Nats-Service-Error`` headers; ``raw_request`` raises the error of that code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg

from agentbus.errors import (
    PermissionDeniedError,
    RequestTimeoutError,
    UnavailableError,
    error_from_code,
)

if TYPE_CHECKING:
    from agentbus.bus.connection import Bus

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"
_NO_RESPONDERS = "503"


async def raw_request(
    bus: Bus,
    subject: str,
    data: bytes,
    *,
    timeout_s: float | None = None,
    headers: dict[str, str] | None = None,
    nobody: str = "no service answers",
) -> Msg:
    """Send ``data`` to the endpoint on ``subject``; the reply message.

    Raises:
        UnavailableError: nobody is subscribed to ``subject`` (``nobody`` says who).
        RequestTimeoutError: no reply within ``timeout_s`` (default from the settings).
        PermissionDeniedError: the server refused this connection ``subject``.
        AgentBusError: the error the responder reported (mapped by its code).
    """
    timeout = timeout_s or bus.settings.request_timeout_s
    try:
        if timeout == bus.settings.request_timeout_s:  # the publisher's timeout
            publisher = await bus.publisher()
            msg = await (await publisher.request(subject, data, headers))
        else:
            msg = await bus.nc.request(subject, data, timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError as exc:
        raise UnavailableError(f"{nobody} on {subject!r}") from exc
    except TimeoutError as exc:  # nats.errors.TimeoutError is one too
        if bus.denied(subject):
            raise PermissionDeniedError(
                subject, f"these credentials may not publish to {subject!r}"
            ) from exc
        raise RequestTimeoutError(subject, timeout) from exc
    if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS and not msg.data:
        raise UnavailableError(f"{nobody} on {subject!r}")
    if msg.headers and (code := msg.headers.get(ERROR_CODE_HEADER)):
        raise error_from_code(code, msg.headers.get(ERROR_HEADER, ""))
    return msg
