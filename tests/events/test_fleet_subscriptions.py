"""Subscriptions declared in fleet files: parsed, checked, round-tripped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agentbus.fleet.spec import SpecError, dump_fleet, parse_fleet
from agentbus.messages import Subscription

FLEET = """
deployments:
  reviewers:
    command: python -m agentbus.agents.reviewer
    subscriptions:
      - {pattern: "review.>", name: on_review}
      - pattern: build.*.done
        mode: each
        start: 2026-01-01T00:00:00Z
      - {pattern: audit.log, start: 1200}
"""


def test_subscriptions_are_read_from_the_fleet_file_and_round_trip() -> None:
    (d,) = parse_fleet(FLEET).deployments
    assert d.subscriptions == [
        Subscription(pattern="review.>", mode="shared", name="on_review"),
        Subscription(
            pattern="build.*.done",
            mode="each",
            start=datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        ),
        Subscription(pattern="audit.log", start="1200"),
    ]
    assert parse_fleet(dump_fleet([d])).deployments == [d]


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ('{pattern: "review..x"}', "subscriptions[0].pattern: topic pattern"),
        ('{pattern: "a.>.b"}', "token '>' is not"),
        ('{pattern: "Review"}', "token 'Review'"),
        ("{pattern: a, mode: sometimes}", "subscriptions[0].mode: expected one of"),
        ("{pattern: a, start: yesterday}", "subscriptions[0].start"),
        ("{pattern: a, name: Bad Name}", "subscriptions[0].name"),
        ("{pattern: a, colour: red}", "subscriptions[0].colour: unknown field"),
    ],
)
def test_bad_subscriptions_name_the_field(entry: str, error: str) -> None:
    text = f"deployments:\n  d:\n    command: x\n    subscriptions:\n      - {entry}\n"
    with pytest.raises(SpecError) as info:
        parse_fleet(text, source="fleet.yaml")
    assert error in str(info.value), str(info.value)


def test_the_same_subscription_twice_is_refused() -> None:
    text = (
        "deployments:\n  d:\n    command: x\n    subscriptions:\n"
        "      - {pattern: a.b, name: n}\n      - {pattern: a.b, name: n}\n"
    )
    with pytest.raises(SpecError, match=r"subscriptions\[1\]: 'a.b' is declared twice"):
        parse_fleet(text)
