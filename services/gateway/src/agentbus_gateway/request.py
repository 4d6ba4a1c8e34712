"""The gateway's Litestar request class: JSON nested too deep is a 400, not a 500."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ClientException

from agentbus_gateway.errors import NESTED_TOO_DEEP


class GatewayRequest(Request[Any, Any, Any]):
    """A Litestar ``Request`` whose ``json()`` refuses bodies nested too deep.

    msgspec decodes recursively and raises ``RecursionError`` at about 1,000 levels
    (Python's recursion limit less the frames already in use), which Litestar does
    not treat as a decode error.
    """

    async def json(self) -> Any:
        """The decoded JSON body.

        Raises:
            ClientException: the body is not JSON, or nested too deep (400).
        """
        try:
            return await super().json()
        except RecursionError:
            raise ClientException(NESTED_TOO_DEEP) from None
