"""Requests and replies every service answers (health)."""

from __future__ import annotations

from typing import Literal

from agentbus.messages.common import (
    Message,
)


class GetHealth(Message, frozen=True, kw_only=True):
    """Request to a service's ``<p>.<service>.health`` endpoint (no fields)."""


class HealthReply(Message, frozen=True, kw_only=True):
    """A service's health: ``ok`` when it can do its work, else ``degraded``.

    ``details`` holds short, low-cardinality facts, e.g. ``{"nats": "connected"}``.
    """

    service: str
    status: Literal["ok", "degraded"] = "ok"
    details: dict[str, str] = {}


MESSAGES: tuple[type[Message], ...] = (
    GetHealth,
    HealthReply,
)
