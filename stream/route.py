"""The route agent: raw lines on `logs` -> session events on the internal `sessions` topic.

Each message is parsed (bad input is counted by reason and skipped) and keyed by session. The lines of one
input batch are grouped by session and published as one "lines" event per session, keyed by that session, so
all of a session's lines reach one worker, in order, and the sessions topic, the score agent and the table's
changelog handle one message per session per batch instead of one per line (BENCHMARKS.md: Faust's per-message
cost, not the model, bounds the worker). The event is serialised here, once, with the standard json module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from faust.types import EventT

from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.records import BadInput, SessionKeyer, parse_message
from stream.security import kafka_python_kwargs
from stream.windows import Entry

log = logging.getLogger("stream.worker")


def group_lines(events: Iterable[EventT], keyer: SessionKeyer, max_line_bytes: int,
                metrics: Metrics) -> dict[str, list[Entry]]:
    """Parse a batch of raw-line Faust events; their entries by session, each session's in input order."""
    return group_messages(((e.message, e.value, e.message.timestamp) for e in events), keyer, max_line_bytes, metrics)


def group_records(records: Iterable[ConsumerRecord], keyer: SessionKeyer, max_line_bytes: int,
                  metrics: Metrics) -> dict[str, list[Entry]]:
    """group_lines for records an aiokafka consumer fetched (their timestamps are in milliseconds)."""
    return group_messages(((r, r.value, r.timestamp / 1000.0) for r in records), keyer, max_line_bytes, metrics)


def group_messages(messages: Iterable[tuple[Any, bytes, float]], keyer: SessionKeyer, max_line_bytes: int,
                   metrics: Metrics) -> dict[str, list[Entry]]:
    """(message, value, Kafka timestamp in seconds) triples -> entries by session, each session's in input order;
    a message has topic, partition, offset and key. Bad input is counted by reason and skipped."""
    groups: dict[str, list[Entry]] = {}
    for message, value, timestamp in messages:
        try:
            parsed = parse_message(value, max_line_bytes)
        except BadInput as exc:
            metrics.inc(f"bad_{exc.reason}")
            log.warning("skipped %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
            continue
        if parsed.replaced_bytes:
            metrics.inc("lines_utf8_replaced")
        session = keyer.key_for(parsed.line, message.key, parsed.source)
        ts = parsed.ts if parsed.ts is not None else timestamp
        groups.setdefault(session, []).append(Entry(parsed.line, ts, message.partition, message.offset))
    return groups


# A "lines" event stays well under Kafka's default 1 MB message limit (message.max.bytes): a batch of long lines
# of one session is split into several events, sent in order on the session's partition.
MAX_EVENT_BYTES = 512 * 1024


def chunk_entries(entries: list[Entry], max_bytes: int = MAX_EVENT_BYTES) -> Iterator[list[Entry]]:
    """Consecutive runs of `entries` whose lines add up to at most `max_bytes` (a longer line goes alone)."""
    chunk: list[Entry] = []
    size = 0
    for entry in entries:
        cost = len(entry.line.encode("utf-8", "surrogatepass")) + 64  # the line plus its JSON framing
        if chunk and size + cost > max_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += cost
    if chunk:
        yield chunk


def lines_event(session: str, entries: list[Entry]) -> bytes:
    """The sessions-topic value of a "lines" event (stream.processor.SessionEvent), as JSON bytes."""
    doc = {"kind": "lines", "session": session, "entries": [e.to_json() for e in entries]}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


async def publish(sessions: faust.TopicT, groups: dict[str, list[Entry]], metrics: Metrics) -> list[Any]:
    """Send each session's lines as "lines" events (chunked under MAX_EVENT_BYTES), keyed by session; the
    delivery futures."""
    sent = []
    for session, entries in groups.items():
        for chunk in chunk_entries(entries):
            # Already JSON: sent as is; the score agent reads it through the topic's json serializer.
            sent.append(await sessions.send(key=session.encode("utf-8"), value=lines_event(session, chunk),
                                            value_serializer="raw"))
        metrics.inc("lines_in", len(entries))
    return sent


def register_route(app: faust.App, cfg: StreamConfig, metrics: Metrics, *, logs: faust.TopicT,
                   sessions: faust.TopicT) -> RouteHandle | None:
    """The route as cfg.route says: "batch", a task reading the raw topic in fetched batches with a consumer of its
    own (group `<app_id>-route`, the handle it returns says its lag), or "agent", a Faust agent (None)."""
    keyer = SessionKeyer(cfg.session_key, cfg.catch_all_key)
    if cfg.route == "batch":
        handle = RouteHandle(cfg)

        @app.task
        async def route_batches() -> None:
            await handle.run(keyer, sessions, metrics)

        return handle

    @app.agent(logs, name="route")
    async def route(stream: faust.StreamT) -> None:
        async for events in stream.take_events(cfg.batch_max, within=cfg.batch_within):
            await publish(sessions, group_lines(events, keyer, cfg.max_line_bytes, metrics), metrics)

    return None


class RouteHandle:
    """The batch route: an aiokafka consumer in group `<app_id>-route` fetches up to `route_batch_max` raw lines at a
    time, they are grouped by session and sent on the sessions topic, and the batch's offsets are committed once
    every send is acknowledged (a crash before that re-reads the batch; the score agent drops lines a session
    already holds). Faust's per-event path never sees a raw line.

    A route group with no committed offset for a partition starts where the worker's own group (the Faust agent's
    route, `route: agent`) committed it (seed_route_offsets), else at the earliest record: switching the route over
    neither re-reads nor skips the topic."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self.group = f"{cfg.app_id}-route"
        self.consumer: AIOKafkaConsumer | None = None
        self.committed: dict[TopicPartition, int] = {}
        # While the route is not reading (starting, rebalancing, restarting) and until it has read what waited for
        # it meanwhile, a session's next lines may still be in the raw topic: idle closes wait for caught_up_at.
        # What waited: each assigned partition up to the high watermark of its first fetch since the assignment
        # (None until that fetch is answered). Not ListOffsets' end offsets, which the embedded broker reports
        # too low when a producer batches records (BROKER.md).
        self.backlog_ends: dict[TopicPartition, int | None] | None = None  # None: no partitions assigned
        self.caught_up_at = 0.0  # time.time() when it had read that backlog; 0: not since its last assignment

    def lag(self) -> int:
        """Raw-topic records behind the high watermark on this worker's partitions (as of the last fetch), counted
        from the last commit."""
        consumer = self.consumer
        if consumer is None:
            return 0
        total = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                total += max(0, high - self.committed.get(tp, 0))
        return total

    @property
    def state(self) -> str:
        """"running" while its consumer is started (what the health check wants of every agent), else "stopped"."""
        return "running" if self.consumer is not None else "stopped"

    async def run(self, keyer: SessionKeyer, sessions: faust.TopicT, metrics: Metrics) -> None:
        """Route until cancelled; an unexpected error is logged, counted (route_restarts) and the route started
        again a second later from the last committed offsets."""
        while True:
            try:
                await self._route(keyer, sessions, metrics)
            except Exception as exc:  # noqa: BLE001  # the worker must not stop reading over one bad fetch
                metrics.inc("route_restarts")
                log.error("route stopped by %s: %s; starting it again from the last committed offsets",
                          type(exc).__name__, exc)
                await asyncio.sleep(1.0)

    async def _route(self, keyer: SessionKeyer, sessions: faust.TopicT, metrics: Metrics) -> None:
        cfg = self.cfg
        consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers, group_id=self.group, enable_auto_commit=False,
            auto_offset_reset="earliest", session_timeout_ms=int(cfg.broker_session_timeout * 1000),
            heartbeat_interval_ms=int(cfg.broker_heartbeat_interval * 1000), max_poll_records=cfg.route_batch_max,
            **kafka_python_kwargs(cfg))
        await seed_route_offsets(cfg, self.group)
        consumer.subscribe([cfg.topic_logs], listener=_TrackCommits(self, consumer))
        await consumer.start()
        self.consumer = consumer
        try:
            while True:
                fetched = await consumer.getmany(timeout_ms=int(cfg.batch_within * 1000),
                                                 max_records=cfg.route_batch_max)
                if not fetched:
                    await self.check_caught_up(consumer)
                    continue
                records = [r for batch in fetched.values() for r in batch]
                groups = group_records(records, keyer, cfg.max_line_bytes, metrics)
                await asyncio.gather(*await publish(sessions, groups, metrics))  # acknowledged
                offsets = {tp: batch[-1].offset + 1 for tp, batch in fetched.items()}
                try:
                    await consumer.commit(offsets)
                except KafkaError as exc:  # revoked meanwhile: the next owner reads the batch again
                    log.warning("route: commit of %d records failed (%s); they will be read again", len(records),
                                exc)
                    continue
                self.committed.update(offsets)
                await self.check_caught_up(consumer)
        finally:
            self.note_revoked()
            await consumer.stop()
            self.consumer = None

    def note_revoked(self) -> None:
        """The route stops reading (a rebalance, or its consumer stops): it is not caught up until reassigned and
        read up to the ends then."""
        self.backlog_ends = None
        self.caught_up_at = 0.0

    def note_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """The route's assignment (the whole of it: aiokafka revokes everything before a rebalance): each partition's
        backlog end is set by its first fetch from now on."""
        self.backlog_ends = dict.fromkeys(assigned)

    async def check_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        """Set caught_up_at once every partition the route owns has been read (and handed on) up to its backlog end;
        one it no longer owns is its next owner's to read."""
        if self.caught_up_at or self.backlog_ends is None:
            return
        owned = consumer.assignment()
        for tp, end in self.backlog_ends.items():
            if tp not in owned:
                continue
            if end is None:  # the first fetch since the assignment: its high watermark is at least the end then
                end = self.backlog_ends[tp] = consumer.highwater(tp)
                if end is None:
                    return  # not answered yet
            if await consumer.position(tp) < end:
                return
        self.caught_up_at = time.time()
        log.info("route: read %s up to where it stood when assigned %s; sessions may close idle from now",
                 self.cfg.topic_logs, {tp.partition: end for tp, end in sorted(self.backlog_ends.items())})


class _TrackCommits(ConsumerRebalanceListener):
    """Keeps RouteHandle.committed (for the lag) to the partitions the route owns, and tells it what it is assigned."""

    def __init__(self, route: RouteHandle, consumer: AIOKafkaConsumer) -> None:
        self.route = route
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.route.note_revoked()
        for tp in revoked:
            self.route.committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.route.note_assigned(assigned)  # first: it must run even if a lookup below fails
        for tp in assigned:
            offset = await self.consumer.committed(tp)
            if offset is not None:
                self.route.committed[tp] = offset


async def seed_route_offsets(cfg: StreamConfig, group: str) -> dict[int, int]:
    """Before the route's consumer joins `group`: for each partition of the raw topic that `group` never committed
    but the worker's Faust group (cfg.app_id, the agent route's) did, commit the Faust group's offset to `group`, so
    the route starts where the agent stopped instead of at the earliest record. The partitions seeded and their
    offsets. A commit the broker refuses (the group already has live members, which committed their own) is left
    to them."""
    security = kafka_python_kwargs(cfg)
    route = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, group_id=group, enable_auto_commit=False,
                             **security)
    agent = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, group_id=cfg.app_id, enable_auto_commit=False,
                             **security)
    await route.start()
    await agent.start()
    seeded: dict[int, int] = {}
    try:
        await route.topics()  # fetches the metadata
        partitions = route.partitions_for_topic(cfg.topic_logs) or set()
        tps = [TopicPartition(cfg.topic_logs, p) for p in sorted(partitions)]
        route.assign(tps)
        for tp in tps:
            if await route.committed(tp) is not None:
                continue
            offset = await agent.committed(tp)
            if offset is not None:
                seeded[tp.partition] = offset
        if seeded:
            try:
                await route.commit({TopicPartition(cfg.topic_logs, p): o for p, o in seeded.items()})
            except KafkaError as exc:
                log.info("route: %s has members that commit for themselves (%s); not seeded", group, exc)
                return {}
            for partition, offset in seeded.items():
                log.info("route: %s[%d] starts at offset %d, where the agent route stopped", cfg.topic_logs,
                         partition, offset)
    finally:
        await route.stop()
        await agent.stop()
    return seeded
