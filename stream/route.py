"""The route agent: raw lines on `logs` -> session events on the internal `sessions` topic.

Each message is parsed (bad input is counted by reason and skipped) and keyed by session. The lines of one
input batch are grouped by session and published as one "lines" event per session, keyed by that session, so
all of a session's lines reach one worker, in order, and the sessions topic, the score agent and the table's
changelog handle one message per session per batch instead of one per line (BENCHMARKS.md: Faust's per-message
cost, not the model, bounds the worker). The event is serialised here, once, with the standard json module.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator

import faust
from faust.types import EventT

from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.records import BadInput, SessionKeyer, parse_message
from stream.windows import Entry

log = logging.getLogger("stream.worker")


def group_lines(events: Iterable[EventT], keyer: SessionKeyer, max_line_bytes: int,
                metrics: Metrics) -> dict[str, list[Entry]]:
    """Parse a batch of raw-line events; their entries by session, each session's in input order."""
    groups: dict[str, list[Entry]] = {}
    for event in events:
        message = event.message
        try:
            parsed = parse_message(event.value, max_line_bytes)
        except BadInput as exc:
            metrics.inc(f"bad_{exc.reason}")
            log.warning("skipped %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
            continue
        if parsed.replaced_bytes:
            metrics.inc("lines_utf8_replaced")
        session = keyer.key_for(parsed.line, message.key, parsed.source)
        ts = parsed.ts if parsed.ts is not None else message.timestamp
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


def register_route(app: faust.App, cfg: StreamConfig, metrics: Metrics, *, logs: faust.TopicT,
                   sessions: faust.TopicT) -> None:
    keyer = SessionKeyer(cfg.session_key, cfg.catch_all_key)

    @app.agent(logs, name="route")
    async def route(stream: faust.StreamT) -> None:
        async for events in stream.take_events(cfg.batch_max, within=cfg.batch_within):
            groups = group_lines(events, keyer, cfg.max_line_bytes, metrics)
            for session, entries in groups.items():
                for chunk in chunk_entries(entries):
                    # Already JSON: sent as is; the score agent reads it through the topic's json serializer.
                    await sessions.send(key=session.encode("utf-8"), value=lines_event(session, chunk),
                                        value_serializer="raw")
                metrics.inc("lines_in", len(entries))
