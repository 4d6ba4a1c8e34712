"""agentbus gateway service: HTTP (Litestar on uvicorn) for callers outside the bus."""

from agentbus_gateway.app import create_app
from agentbus_gateway.service import serve
from agentbus_gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app", "serve"]
