"""Trace locations become subject tokens and KV keys, reversibly."""

from __future__ import annotations

import re

import pytest

from agentbus.errors import ContractError
from agentbus.traces.locations import LOCATION_MAX_BYTES, decode_location, encode_location

LOCATIONS = [
    "src/app.py",
    "a b/c d.py",
    "ünïcödé/中文/файл.py",
    "/absolute/path/",
    "a//b",
    "/",
    "dots.in.names/v1.2.3",
    "https://example.com/a?b=c&d=e#frag",
    "=3D=",
    "*>wild cards<*",
    "tab\tand\nnewline",
    "emoji 🐍",
    "x" * LOCATION_MAX_BYTES,
]
KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


@pytest.mark.parametrize("location", LOCATIONS)
def test_round_trip_gives_safe_tokens(location: str) -> None:
    key = encode_location(location)
    assert decode_location(key) == location
    assert KV_KEY.match(key), key
    tokens = key.split(".")
    assert all(tokens), key  # no empty subject token
    assert not any(c in key for c in "*> \t\n"), key
    assert len(tokens) == location.count("/") + 1


def test_whole_segments_keep_their_prefix() -> None:
    assert encode_location("src/sub/a.py").startswith(encode_location("src/sub") + ".")
    assert encode_location("src/a.py") == "src.a=2Epy"


def test_distinct_locations_give_distinct_keys() -> None:
    keys = {encode_location(loc) for loc in LOCATIONS}
    assert len(keys) == len(LOCATIONS)
    assert encode_location("a/b") != encode_location("a.b") != encode_location("a=2Fb")


@pytest.mark.parametrize("bad", ["", "x" * (LOCATION_MAX_BYTES + 1), "é" * 513])
def test_empty_or_long_locations_are_refused(bad: str) -> None:
    with pytest.raises(ContractError):
        encode_location(bad)


@pytest.mark.parametrize("bad", ["a..b", "a b", "=4", "=4g", "=zz", "a*", "=FF"])
def test_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(ContractError):
        decode_location(bad)
