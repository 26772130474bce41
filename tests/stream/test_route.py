import asyncio
import json
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from aiokafka import TopicPartition
from hypothesis import strategies as st

from hostile import KINDS, MAX_LINE_BYTES
from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.processor import SessionEvent
from stream.records import SessionKeyer
from stream.route import RouteHandle, chunk_entries, group_lines, lines_event


def _event(value: bytes, offset: int, key: bytes | None = None, partition: int = 0) -> SimpleNamespace:
    message = SimpleNamespace(topic="logs", partition=partition, offset=offset, key=key, timestamp=1000.0 + offset)
    return SimpleNamespace(message=message, value=value)


def test_a_batch_is_grouped_by_session_keeping_each_sessions_order_and_counting_bad_lines() -> None:
    metrics = Metrics()
    events = [_event(b"open blk_1", 0), _event(b"open blk_2", 1), _event(b"", 2), _event(b"write blk_1", 3),
              _event(json.dumps({"line": "close blk_2", "ts": 5.5}).encode(), 4), _event(b"no key", 5, key=b"k9")]
    groups = group_lines(events, SessionKeyer([r"(blk_\d+)"]), 1000, metrics)
    assert {s: [(e.line, e.offset) for e in es] for s, es in groups.items()} == {
        "blk_1": [("open blk_1", 0), ("write blk_1", 3)],
        "blk_2": [("open blk_2", 1), ("close blk_2", 4)],
        "k9": [("no key", 5)],
    }
    assert groups["blk_2"][1].ts == 5.5 and groups["blk_1"][0].ts == 1000.0  # envelope ts, else Kafka's
    assert metrics.counts["bad_empty"] == 1


def test_the_published_value_is_a_lines_session_event() -> None:
    groups = group_lines([_event(b"a blk_1", 7), _event(b"b blk_1", 8)], SessionKeyer([r"(blk_\d+)"]), 1000,
                         Metrics())
    event = SessionEvent.from_json(json.loads(lines_event("blk_1", groups["blk_1"])))
    assert event.kind == "lines" and event.session == "blk_1"
    assert [(e.line, e.offset) for e in event.line_entries] == [("a blk_1", 7), ("b blk_1", 8)]


def test_long_lines_of_one_session_are_split_into_events_under_the_size_limit_in_order() -> None:
    lines = [("x" * 300_000 + f" blk_1 #{i}").encode() for i in range(5)] + [b"short blk_1"]
    groups = group_lines([_event(v, i) for i, v in enumerate(lines)], SessionKeyer([r"(blk_\d+)"]), 10**6,
                         Metrics())
    chunks = list(chunk_entries(groups["blk_1"]))
    assert [len(c) for c in chunks] == [1, 1, 1, 1, 2]  # two 300 kB lines never share an event
    assert [e.offset for c in chunks for e in c] == list(range(6))
    assert all(len(lines_event("blk_1", c)) < 1024 * 1024 for c in chunks)
    assert list(chunk_entries(groups["blk_1"][:1], max_bytes=10)) == [groups["blk_1"][:1]]  # too long: alone


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_hostile_message_is_counted_and_what_is_kept_can_be_published(kind: str) -> None:
    """Issue 18.3: an envelope with a lone surrogate escape passed the parser, then lines_event's UTF-8 encode
    raised in the route agent, which lost the rest of its batch."""
    strategy, expected = KINDS[kind]

    @settings(max_examples=40 if kind == "oversized" else 100, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(strategy, min_size=1, max_size=5))
    def check(values: list[bytes | None]) -> None:
        metrics = Metrics()
        groups = group_lines([_event(v, i) for i, v in enumerate(values)], SessionKeyer([r"request_id=(\w+)"]),
                             MAX_LINE_BYTES, metrics)
        kept = sum(len(entries) for entries in groups.values())
        assert kept + sum(v for k, v in metrics.counts.items() if k.startswith("bad_")) == len(values)
        assert kept == (len(values) if expected in ("kept", "replaced") else 0)
        for session, entries in groups.items():
            session.encode("utf-8")  # the sessions-topic key
            for chunk in chunk_entries(entries):
                event = SessionEvent.from_json(json.loads(lines_event(session, chunk)))
                assert [e.line for e in event.line_entries] == [e.line for e in chunk]

    check()


class _Consumer:
    """What RouteHandle's catch-up bookkeeping asks of its consumer: assignment, high watermarks, positions."""

    def __init__(self, highwaters: dict[TopicPartition, int | None], positions: dict[TopicPartition, int]) -> None:
        self.highwaters, self.positions = highwaters, positions

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


P0, P1 = TopicPartition("logs", 0), TopicPartition("logs", 1)


def test_the_route_is_caught_up_once_each_partition_is_read_to_its_first_high_watermark_since_assignment() -> None:
    route = RouteHandle(StreamConfig())
    consumer = _Consumer({P0: None, P1: 3}, {P0: 0, P1: 2})

    async def steps() -> list[bool]:
        seen = []

        async def check() -> None:
            await route.check_caught_up(consumer)
            seen.append(bool(route.caught_up_at))

        await check()  # no assignment yet: nothing is known to be read
        route.note_assigned([P0, P1])
        await check()  # partition 0's first fetch not answered yet
        consumer.highwaters[P0] = 5
        await check()  # partition 1 is one record short
        consumer.positions[P1] = 3
        consumer.highwaters[P0] = 9  # lines arrived after the first fetch: not what waited
        await check()  # partition 0 is still at 0
        consumer.positions[P0] = 5
        await check()
        route.note_revoked()  # a rebalance: nothing is read until the route is assigned again
        await check()
        route.note_assigned([P0])
        del consumer.positions[P1]  # assigned elsewhere: its next owner reads it
        await check()  # partition 0: its first high watermark since this assignment is 9
        consumer.positions[P0] = 9
        await check()
        return seen

    assert asyncio.run(steps()) == [False, False, False, False, True, False, False, True]
