"""The score agent's batches in flight: batch N+1 is applied and windowed while batch N is scored.

`BatchPipeline.hold` keeps a batch's events from being committed, `take` applies the batch to the session states on
the event loop (the agent's SessionProcessor.apply), then runs the rest in a task of its own: score its windows (off
the event loop), `finish` it (alerts published, states written to the changelogged table), acknowledge its events.
With `limit` batches in flight (StreamConfig.batches_in_flight, default 2) the agent applies the next batch while the
previous one is being scored, so the event loop and the scoring process stop waiting on each other; with 1 a batch
is done before the next is taken, as before.

What keeps this as safe as one batch at a time:
- Faust acknowledges a take_events batch when the agent asks for the next one, and commits what is acknowledged.
  So each event gets one reference more as soon as its batch is taken (`hold`), released once the batch
  is finished: the committed offset never passes an event whose alerts and states are not out, and a rebalance
  (Faust waits for every event in flight to be acknowledged) waits for the batches in flight.
- Batches are scored one at a time and finished in the order they were taken. A batch that fails fails the
  batches after it (none of them is finished or acknowledged), and the worker stops on its error (`on_failure`):
  after a restart their events are read again, onto the states as the table last had them.
- A batch's states reach the table only when it is finished, so a later batch finds a session in the newest batch
  in flight that holds it (`held`), and reads the table (and decodes its JSON) only for sessions none holds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from faust.types import EventT

from stream.processor import Batch, Scorer
from stream.windows import SessionState

T = TypeVar("T")


@dataclass(eq=False)
class Applied:
    """A batch applied to the session states, on its way to be scored and finished."""

    batch: Batch
    scorer: Scorer  # the model that scores it (a reload waits for every batch in flight: BatchPipeline.drain)
    now: float  # when it was applied (alerts' detected_at)
    events: Sequence[EventT]  # acknowledged once it is finished
    last_event: dict[str, EventT]  # session -> its last event in the batch (where its table write belongs)
    snapshots: dict[str, dict[str, Any] | None] = field(init=False)  # session -> its state's JSON as applied

    def __post_init__(self) -> None:
        # Taken now: a later batch may add lines to the same state objects before this one is finished, and
        # writing those lines before their windows are out would lose the windows in a crash.
        self.snapshots = {key: None if state is None else state.to_json()
                          for key, state in self.batch.states.items()}

    def writes(self) -> dict[str, dict[str, Any] | None]:
        """What to write to the table once the batch's alerts are out: each session's state as this batch left it,
        with the alert marks its windows set (None: delete the session)."""
        for key, data in self.snapshots.items():
            state = self.batch.states[key]
            if data is not None and state is not None:
                state.carry_alerts(data)
        return self.snapshots


@dataclass(eq=False)
class _Flight:
    applied: Applied
    scored: asyncio.Future[None]  # done once its windows are scored (the next batch may be scored then)
    task: asyncio.Task[None] | None = None


class BatchPipeline(Generic[T]):
    """Batches between apply and acknowledgement, scored one at a time and finished in order (module docstring).
    `score(applied)` scores a batch's windows; `finish(applied, scored)` publishes and writes what it raised;
    `on_failure(error)` is awaited once, for the first batch that fails (the worker stops on it)."""

    def __init__(self, limit: int, score: Callable[[Applied], Awaitable[T]],
                 finish: Callable[[Applied, T], Awaitable[None]],
                 on_failure: Callable[[BaseException], Awaitable[None]] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"batches in flight must be >= 1, got {limit}")
        self.limit = limit
        self._score = score
        self._finish = finish
        self._flights: deque[_Flight] = deque()  # oldest first
        self.failed: BaseException | None = None  # the first batch that failed: no batch is finished after it
        self.on_failure = on_failure

    def __len__(self) -> int:
        return len(self._flights)

    def held(self, key: str) -> tuple[bool, SessionState | None]:
        """(True, state) when a batch in flight holds session `key` (state None: that batch closes it), newest batch
        first; (False, None) when the table holds its latest state."""
        for flight in reversed(self._flights):
            states = flight.applied.batch.states
            if key in states:
                return True, states[key]
        return False, None

    def hold(self, events: Sequence[EventT]) -> None:
        """Keep `events`, a batch just taken from the stream, from being committed until the batch is finished: call
        it first thing, before anything awaits. Raises the error of a batch that failed: these events stay held too,
        so nothing at or after the failed batch is committed, and the worker, which stops on that error, reads them
        again when it restarts."""
        for event in events:
            event.message.incref()  # released in _run once the batch is finished
        if self.failed is not None:
            raise self.failed

    async def take(self, events: Sequence[EventT], apply: Callable[[], Applied]) -> None:
        """The batch of `events` (held): apply it, then score and finish it in a task of its own; returns once fewer
        than `limit` batches are in flight. Raises the error of `apply` (the worker stops on it, the events held)
        or of a batch that failed."""
        if self.failed is not None:
            raise self.failed
        try:
            applied = apply()
        except Exception as exc:
            await self._fail(exc)
            raise
        prev = self._flights[-1] if self._flights else None
        flight = _Flight(applied, asyncio.get_running_loop().create_future())
        self._flights.append(flight)
        flight.task = asyncio.create_task(self._run(flight, prev), name="logmoe-batch")
        flight.task.add_done_callback(_retrieved)  # its error reaches the agent through `failed`
        while len(self._flights) >= self.limit:
            # asyncio.wait, not await: an agent cancelled as the worker stops leaves the batch running (Faust's
            # shutdown waits for its events to be acknowledged).
            await asyncio.wait([self._flights[0].task])  # type: ignore[list-item]
        if self.failed is not None:
            raise self.failed

    async def drain(self) -> None:
        """Wait until no batch is in flight (a failed one included: its error is the agent's to raise)."""
        tasks = [f.task for f in self._flights if f.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def _run(self, flight: _Flight, prev: _Flight | None) -> None:
        try:
            if prev is not None:
                await asyncio.shield(prev.scored)  # one batch on the model at a time, in order
            scored = await self._score(flight.applied)
            flight.scored.set_result(None)
            if prev is not None:
                await asyncio.shield(prev.task)  # type: ignore[arg-type]  # its alerts and writes go first
            await self._finish(flight.applied, scored)
            for event in flight.applied.events:
                event.ack()
        except BaseException as exc:
            if not flight.scored.done():
                flight.scored.set_exception(_Failed(exc))
                flight.scored.exception()  # retrieved: the error travels through `failed`
            await self._fail(exc)
            raise
        finally:
            self._flights.remove(flight)

    async def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            if self.on_failure is not None:
                await self.on_failure(exc)


class _Failed(Exception):
    """An earlier batch failed (the error is BatchPipeline.failed)."""


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
