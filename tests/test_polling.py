"""``eventually`` polls sync and async predicates until truthy, and says what timed out."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tests._harness.polling import eventually


async def test_a_sync_predicate_is_polled_until_truthy_and_its_value_returned() -> None:
    calls: list[int] = []

    def third_call() -> list[int] | None:
        calls.append(len(calls) + 1)
        return calls[:] if len(calls) >= 3 else None

    assert await eventually(third_call, every_s=0.001) == [1, 2, 3]


async def test_a_boolean_lambda_is_a_predicate() -> None:
    count = itertools.count(1)
    assert await eventually(lambda: next(count) == 2, every_s=0.001) is True
    assert next(count) == 3  # polled twice


async def test_an_async_predicate_is_awaited() -> None:
    calls: list[int] = []

    async def second_call() -> str:
        calls.append(1)
        return "ready" if len(calls) == 2 else ""

    assert await eventually(second_call, every_s=0.001) == "ready"


@pytest.mark.parametrize("sync", [True, False])
async def test_the_timeout_names_the_condition_and_the_last_value(sync: bool) -> None:
    def empty() -> list[str]:
        return []

    async def empty_async() -> list[str]:
        return []

    probe: Callable[[], object] = empty if sync else empty_async
    with pytest.raises(
        AssertionError, match=r"^queue drained not met within 0.05 s \(last: \[\]\)$"
    ):
        await eventually(probe, timeout_s=0.05, every_s=0.01, what="queue drained")
