"""The score agent's batches in flight (stream/pipeline.py), with Faust's own message reference counting and a fake
consumer that records which offsets became committable."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faust.types.tuples import TP, ConsumerMessage

from stream.metrics import Metrics
from stream.pipeline import Applied, BatchPipeline
from stream.processor import Batch, SessionEvent, SessionProcessor
from stream.windows import Entry, SessionState, SessionWindows
from stream_fakes import FakeScorer
from test_reload import Harness, model_files, touch


@dataclass
class Consumer:
    """What Faust's consumer does with an acknowledged message: its offset may now be committed."""

    committable: list[int] = field(default_factory=list)

    def ack(self, message: ConsumerMessage) -> bool:
        self.committable.append(message.offset)
        return True


@dataclass
class Event:
    message: ConsumerMessage
    consumer: Consumer
    value: Any = None

    def ack(self) -> bool:
        return self.message.ack(self.consumer)  # type: ignore[arg-type]


def take_events(consumer: Consumer, first: int, n: int = 2) -> list[Event]:
    """Events as the conductor hands them to one stream: one reference each."""
    events = []
    for offset in range(first, first + n):
        message = ConsumerMessage("sessions", 0, offset, 0.0, 0, None, None, b"{}", None, tp=TP("sessions", 0))
        message.incref(1)
        events.append(Event(message, consumer))
    return events


async def take(pipeline: BatchPipeline[int], events: list[Event], apply: Callable[[], Applied]) -> None:
    """What the agent does with a batch taken: hold its events, then apply and start it."""
    pipeline.hold(events)
    await pipeline.take(events, apply)


def released_by_take_events(events: list[Event]) -> None:
    """What take_events does when the agent asks for the next batch: it acknowledges the last one."""
    for event in events:
        event.ack()


def applied(tag: int, events: list[Event], batch: Batch | None = None) -> Applied:
    return Applied(batch or Batch(), FakeScorer(), float(tag), events, {})  # type: ignore[arg-type]


class Recorder:
    """score/finish that log what happens to each batch (by its `now`); batch n's scoring waits for gate n."""

    def __init__(self, fail_finish: int = 0) -> None:
        self.log: list[tuple[str, int]] = []
        self.gates: dict[int, asyncio.Event] = {}
        self.fail_finish = fail_finish
        self.failures: list[BaseException] = []

    def gate(self, tag: int) -> asyncio.Event:
        return self.gates.setdefault(tag, asyncio.Event())

    async def score(self, a: Applied) -> int:
        tag = int(a.now)
        self.log.append(("score", tag))
        await self.gate(tag).wait()
        self.log.append(("scored", tag))
        return tag

    async def finish(self, a: Applied, scored: int) -> None:
        if scored == self.fail_finish:
            raise RuntimeError(f"publishing batch {scored} failed")
        self.log.append(("finish", scored))

    async def on_failure(self, exc: BaseException) -> None:
        self.failures.append(exc)

    def pipeline(self, limit: int) -> BatchPipeline[int]:
        return BatchPipeline(limit, self.score, self.finish, self.on_failure)


def before(log: list[tuple[str, int]], first: tuple[str, int], then: tuple[str, int]) -> bool:
    return log.index(first) < log.index(then)


def apply_logged(rec: Recorder, tag: int, events: list[Event]) -> Callable[[], Applied]:
    def apply() -> Applied:
        rec.log.append(("apply", tag))
        return applied(tag, events)
    return apply


def test_the_next_batch_is_applied_while_the_previous_one_is_scored_and_nothing_is_committable_before_it_is_done(
        ) -> None:
    consumer, rec = Consumer(), Recorder()

    async def scenario() -> None:
        pipeline = rec.pipeline(2)
        first = take_events(consumer, 0)
        await take(pipeline, first, apply_logged(rec, 1, first))  # returns at once: one batch in flight
        released_by_take_events(first)
        second = take_events(consumer, 2)
        taking = asyncio.create_task(take(pipeline, second, apply_logged(rec, 2, second)))
        await asyncio.sleep(0.05)
        assert rec.log == [("apply", 1), ("score", 1), ("apply", 2)]  # applied while batch 1 is scored
        assert consumer.committable == [] and not taking.done()  # take_events let go of batch 1: still held
        rec.gate(1).set()
        await taking  # batch 1 finished: room for the next
        assert before(rec.log, ("scored", 1), ("score", 2)) and ("finish", 1) in rec.log
        assert consumer.committable == [0, 1]
        released_by_take_events(second)
        rec.gate(2).set()
        await pipeline.drain()
        assert consumer.committable == [0, 1, 2, 3] and len(pipeline) == 0

    asyncio.run(scenario())


def test_batches_finish_in_the_order_they_were_taken() -> None:
    consumer, rec = Consumer(), Recorder()

    async def scenario() -> None:
        pipeline = rec.pipeline(3)
        for tag in (1, 2):
            events = take_events(consumer, 2 * tag)
            await take(pipeline, events, apply_logged(rec, tag, events))
            released_by_take_events(events)
        rec.gate(2).set()  # batch 2 would be done at once, but it is scored after batch 1 and finished after it
        await asyncio.sleep(0.05)
        assert ("finish", 2) not in rec.log and consumer.committable == []
        rec.gate(1).set()
        await pipeline.drain()

    asyncio.run(scenario())
    assert before(rec.log, ("scored", 1), ("score", 2)) and before(rec.log, ("finish", 1), ("finish", 2))
    assert consumer.committable == [2, 3, 4, 5]


def test_with_one_batch_in_flight_each_batch_is_finished_before_the_next_is_taken() -> None:
    consumer, rec = Consumer(), Recorder()

    async def scenario() -> None:
        pipeline = rec.pipeline(1)
        events = take_events(consumer, 0)
        taking = asyncio.create_task(take(pipeline, events, apply_logged(rec, 1, events)))
        await asyncio.sleep(0.05)
        assert not taking.done()
        rec.gate(1).set()
        await taking
        assert rec.log[-1] == ("finish", 1)

    asyncio.run(scenario())


def test_a_failed_batch_stops_the_ones_after_it_and_nothing_from_it_on_becomes_committable() -> None:
    consumer, rec = Consumer(), Recorder(fail_finish=1)

    async def scenario() -> None:
        pipeline = rec.pipeline(2)
        first = take_events(consumer, 0)
        await take(pipeline, first, apply_logged(rec, 1, first))
        released_by_take_events(first)
        second = take_events(consumer, 2)
        rec.gate(1).set()
        rec.gate(2).set()
        with pytest.raises(RuntimeError, match="publishing batch 1 failed"):
            await take(pipeline, second, apply_logged(rec, 2, second))
        released_by_take_events(second)
        await pipeline.drain()
        third = take_events(consumer, 4)
        with pytest.raises(RuntimeError, match="publishing batch 1 failed"):
            await take(pipeline, third, apply_logged(rec, 3, third))
        released_by_take_events(third)

    asyncio.run(scenario())
    assert ("finish", 2) not in rec.log and ("apply", 3) not in rec.log  # batch 2 scored, never finished
    assert consumer.committable == []  # every event from the failed batch on is read again after a restart
    assert [str(e) for e in rec.failures] == ["publishing batch 1 failed"]  # the worker is stopped once


def test_an_apply_that_raises_stops_the_worker_with_its_events_held() -> None:
    consumer, rec = Consumer(), Recorder()

    def broken() -> Applied:
        raise KeyError("a bug")

    async def scenario() -> None:
        pipeline = rec.pipeline(2)
        events = take_events(consumer, 0)
        with pytest.raises(KeyError):
            await take(pipeline, events, broken)
        released_by_take_events(events)

    asyncio.run(scenario())
    assert consumer.committable == [] and len(rec.failures) == 1


def test_a_later_batch_reads_a_session_from_the_newest_batch_in_flight_that_holds_it() -> None:
    consumer, rec = Consumer(), Recorder()
    older, newer = SessionState(count=1), SessionState(count=2)

    async def scenario() -> list[tuple[bool, SessionState | None]]:
        pipeline = rec.pipeline(3)
        for tag, states in ((1, {"a": older, "b": older}), (2, {"a": newer, "b": None})):
            events = take_events(consumer, 2 * tag)
            await take(pipeline, events, lambda t=tag, s=states, e=events: applied(t, e, Batch(states=s)))
        held = [pipeline.held(key) for key in ("a", "b", "c")]
        rec.gate(1).set()
        rec.gate(2).set()
        await pipeline.drain()
        return [*held, pipeline.held("a")]

    assert asyncio.run(scenario()) == [(True, newer), (True, None), (False, None), (False, None)]


def test_the_states_written_are_as_the_batch_left_them_with_the_alerts_it_raised() -> None:
    proc = SessionProcessor(SessionWindows(4, 4, 1000, 0), 5.0, Metrics())
    scorer = FakeScorer(max_window=4)
    lines = ["ERROR a", "b", "c", "d", "e", "f"]
    entries = [Entry(text, None, 0, i) for i, text in enumerate(lines)]
    first = proc.apply([(0, SessionEvent("lines", "s", entries=tuple(entries[:4])))], lambda key: None, 1.0)
    batch1 = Applied(first, scorer, 1.0, [], {})
    # The next batch is applied to the same state object before batch 1 is scored.
    proc.apply([(1, SessionEvent("lines", "s", entries=tuple(entries[4:])))], first.states.get, 2.0)
    assert first.states["s"] is not None and first.states["s"].count == 6
    scored = scorer.score_detailed([[e.line for e in w.entries] for w in first.windows])
    assert len(proc.alerts_for(first, scored, scorer, 3, 1.0)) == 1
    written = batch1.writes()["s"]
    assert written is not None
    assert (written["count"], [item[0] for item in written["items"]]) == (4, lines[:4])  # not batch 2's lines
    assert written["alerted_at"] == 4  # the cooldown its alert started survives a restart


def test_a_reload_waits_for_the_batches_in_flight(tmp_path: Path) -> None:
    h = Harness(model_files(tmp_path / "m"))
    h.next = FakeScorer(max_window=8)
    rec = Recorder()
    pipeline = rec.pipeline(2)
    h.reloader.drain = pipeline.drain
    touch(h.folder / "model.safetensors", b"v2")

    async def scenario() -> None:
        assert await h.reloader.check() is False  # sees the change; loads on the next poll
        events = take_events(Consumer(), 0)
        await take(pipeline, events, apply_logged(rec, 1, events))
        reload = asyncio.create_task(h.reloader.check())
        await asyncio.sleep(0.3)
        assert h.slot.scorer is h.old  # batch 1, taken with the old model, is still being scored
        rec.gate(1).set()
        assert await reload is True
        assert rec.log[-1] == ("finish", 1)

    asyncio.run(scenario())
    assert h.slot.scorer is h.next
