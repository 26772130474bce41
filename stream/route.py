"""The route agent: raw lines on `logs` -> session events on the internal `sessions` topic.

Each message is parsed (bad input is counted by reason and skipped), keyed by session, and re-published keyed
by that session, so all of a session's lines reach one worker, in order.
"""

from __future__ import annotations

import logging

import faust

from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.processor import SessionEvent
from stream.records import BadInput, SessionKeyer, parse_message
from stream.windows import Entry

log = logging.getLogger("stream.worker")


def register_route(app: faust.App, cfg: StreamConfig, metrics: Metrics, *, logs: faust.TopicT,
                   sessions: faust.TopicT) -> None:
    keyer = SessionKeyer(cfg.session_key, cfg.catch_all_key)

    @app.agent(logs, name="route")
    async def route(stream: faust.StreamT) -> None:
        async for events in stream.take_events(cfg.batch_max, within=cfg.batch_within):
            for event in events:
                message = event.message
                try:
                    parsed = parse_message(event.value, cfg.max_line_bytes)
                except BadInput as exc:
                    metrics.inc(f"bad_{exc.reason}")
                    log.warning("skipped %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc)
                    continue
                metrics.inc("lines_in")
                if parsed.replaced_bytes:
                    metrics.inc("lines_utf8_replaced")
                session = keyer.key_for(parsed.line, message.key, parsed.source)
                ts = parsed.ts if parsed.ts is not None else message.timestamp
                entry = Entry(parsed.line, ts, message.partition, message.offset)
                await sessions.send(key=session.encode("utf-8"), value=SessionEvent("line", session, entry).to_json())
