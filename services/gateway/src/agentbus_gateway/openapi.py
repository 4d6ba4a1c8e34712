"""The OpenAPI document says what the server does: request bodies as msgspec checks them.

Litestar's generator loses what msgspec enforces on request bodies: it does not say
that unknown fields are refused (``forbid_unknown_fields``) and drops constraints
inside optional fields (``timeout_s`` > 0, the ``parent_id`` pattern). So the
components of the request bodies are replaced by msgspec's own JSON Schema of the
same Structs (OpenAPI 3.1 uses JSON Schema 2020-12), which is what decodes them.
``tests/gateway/test_openapi_contract.py`` checks the server against the result.

Litestar's ``ResponseSpec`` cannot declare response headers either: the 401s get
their ``WWW-Authenticate`` and the 429s their ``Retry-After`` here.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import Components, OpenAPIHeader, OpenAPIResponse, Schema
from litestar.openapi.spec.enums import OpenAPIType

from agentbus_gateway.fleet_models import ScaleBody
from agentbus_gateway.models import CreateTask, ResubmitBody, WaitBody
from agentbus_gateway.state_models import ForkBody

REQUEST_BODIES: tuple[type[msgspec.Struct], ...] = (
    CreateTask,
    ResubmitBody,
    WaitBody,
    ScaleBody,
    ForkBody,
)
_REF_TEMPLATE = "#/components/schemas/{name}"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
RESPONSE_HEADERS: dict[str, tuple[str, OpenAPIHeader]] = {
    "401": (
        "WWW-Authenticate",
        OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING),
            required=True,
            description='The challenge: Bearer realm="agentbus" (RFC 6750).',
        ),
    ),
    "429": (
        "Retry-After",
        OpenAPIHeader(
            schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
            required=True,
            description="Seconds until the token may send again.",
        ),
    ),
}
"""Headers every response of a status carries, by status."""


def body_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema components msgspec makes of every request body (and what they use).

    A tagged Struct inside a body (``Backoff``) decodes without its ``type`` field
    (msgspec needs the tag only to tell union members apart), so ``type`` is made
    optional there.
    """
    _, components = msgspec.json.schema_components(REQUEST_BODIES, ref_template=_REF_TEMPLATE)
    for schema in components.values():
        tag = schema.get("properties", {}).get("type", {})
        if "enum" in tag and "type" in schema.get("required", []):
            schema["required"] = [f for f in schema["required"] if f != "type"]
            tag["description"] = "Optional on input; always present on output."
    return components


def refine_openapi(app: Litestar) -> None:
    """Replace the request-body components of ``app``'s OpenAPI document (in place).

    Also adds the ``RESPONSE_HEADERS`` to the responses of their status.

    Both ``/openapi.json`` and Litestar's ``/schema/openapi.json`` render that one
    document (a plain dict is a valid component: it is serialized as it is).
    """
    document = app.openapi_schema
    if document.components is None:
        document.components = Components()
    schemas: dict[str, Any] = document.components.schemas
    schemas.update(body_schemas())
    for item in (document.paths or {}).values():
        for method in _METHODS:
            operation = getattr(item, method, None)
            for status, response in (operation.responses or {} if operation else {}).items():
                if status in RESPONSE_HEADERS and isinstance(response, OpenAPIResponse):
                    name, header = RESPONSE_HEADERS[status]
                    response.headers = {**(response.headers or {}), name: header}
