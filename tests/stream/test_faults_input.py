"""Hostile input at the parser, property-based (no broker): every kind of hostile line gets the outcome the worker
promises, and no bytes at all make the parser raise anything but BadInput. The same generators feed the
10,000-line broker test in test_faults.py."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import KINDS, MAX_LINE_BYTES
from stream.records import BAD_REASONS, BadInput, parse_message


def outcome(value: bytes | None) -> str:
    try:
        parsed = parse_message(value, MAX_LINE_BYTES)
    except BadInput as exc:
        return exc.reason
    return "replaced" if parsed.replaced_bytes else "kept"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_hostile_kind_gets_its_outcome(kind: str) -> None:
    strategy, expected = KINDS[kind]

    @settings(max_examples=60 if kind == "oversized" else 150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def check(value: bytes | None) -> None:
        assert outcome(value) == expected

    check()


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_any_bytes_are_a_line_or_a_counted_bad_input(value: bytes) -> None:
    assert outcome(value) in (*BAD_REASONS, "kept", "replaced")


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_json_nested_past_the_recursion_limit_is_bad_input_not_a_crash(opener: str) -> None:
    """Found by the 10,000-line test: RecursionError used to escape and crash the route agent with its batch."""
    value = (opener * 12_000).encode()[:MAX_LINE_BYTES]
    assert outcome(value) == "not_envelope"
