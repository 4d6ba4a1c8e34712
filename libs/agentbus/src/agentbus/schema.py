"""The JSON Schema of every wire message, generated from ``agentbus.messages``.

``python -m agentbus.schema`` prints it; ``libs/agentbus/schema/messages.json`` is
the committed copy (``just schema`` rewrites it, a test fails when it is stale). The
document lists every message under ``$defs`` (``msgspec.json.schema_components``)
and accepts any one of them at the top level (``anyOf``).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

import msgspec
import msgspec._json_schema

from agentbus.messages import ALL_MESSAGES


@contextlib.contextmanager
def _raw_defaults() -> Iterator[None]:
    """Let the generator write ``msgspec.Raw`` field defaults (e.g. ``null``).

    msgspec 0.22 renders a field default with ``to_builtins``, which rejects ``Raw``
    (the type of ``input``/``output``); this decodes such a default as the JSON it is.
    """
    module: Any = msgspec._json_schema
    original = module.to_builtins

    def to_builtins(obj: Any, **kwargs: Any) -> Any:
        if isinstance(obj, msgspec.Raw):
            return msgspec.json.decode(obj)
        return original(obj, **kwargs)

    module.to_builtins = to_builtins
    try:
        yield
    finally:
        module.to_builtins = original


def message_schema() -> dict[str, Any]:
    """The JSON Schema document (draft 2020-12) of every message in ``ALL_MESSAGES``."""
    with _raw_defaults():
        schemas, components = msgspec.json.schema_components(ALL_MESSAGES)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "agentbus wire messages",
        "description": (
            "Every payload on the agentbus bus: JSON objects tagged by their 'type' member. "
            "Generated from agentbus.messages by `python -m agentbus.schema`; do not edit."
        ),
        "anyOf": list(schemas),
        "$defs": components,
    }


def render() -> str:
    """The schema as stable, pretty-printed JSON text ending in a newline."""
    return json.dumps(message_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    """Print the schema on stdout."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
