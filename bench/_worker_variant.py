"""`python bench/_worker_variant.py VARIANT worker ARGS…`: `logmoe worker` with one part as it was before a change, so
bench_perf.py can measure the worker before and after a change side by side in one run.

VARIANT:
- `per-line`: the route as it was before commit "route: one sessions event per session per batch": one
  "line" event per raw line, serialised by Faust's json codec.
- `novelty-in-worker`: novel lines told apart in the worker's own process, by masking them on the event loop, as
  before the scoring process answered it (ProcessScorer.prefetch_novelty).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import faust

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from model.cli import main  # noqa: E402
from stream.config import StreamConfig  # noqa: E402
from stream.metrics import Metrics  # noqa: E402
from stream.processor import SessionEvent  # noqa: E402
from stream.records import BadInput, SessionKeyer, parse_message  # noqa: E402
from stream.windows import Entry  # noqa: E402

log = logging.getLogger("stream.worker")


def register_route_per_line(app: faust.App, cfg: StreamConfig, metrics: Metrics, *, logs: faust.TopicT,
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
                    continue
                metrics.inc("lines_in")
                if parsed.replaced_bytes:
                    metrics.inc("lines_utf8_replaced")
                session = keyer.key_for(parsed.line, message.key, parsed.source)
                ts = parsed.ts if parsed.ts is not None else message.timestamp
                entry = Entry(parsed.line, ts, message.partition, message.offset)
                await sessions.send(key=session.encode("utf-8"), value=SessionEvent("line", session, entry).to_json())


def per_line() -> None:
    import stream.app

    stream.app.register_route = register_route_per_line


def novelty_in_worker() -> None:
    from stream.scoring import ProcessScorer

    ProcessScorer.prefetch_novelty = None  # type: ignore[assignment,method-assign]  # the agent then skips it


VARIANTS = {"per-line": per_line, "novelty-in-worker": novelty_in_worker}

if __name__ == "__main__":
    variant = sys.argv[1]
    if variant not in VARIANTS:
        sys.exit(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    VARIANTS[variant]()
    sys.exit(main(sys.argv[2:]))
