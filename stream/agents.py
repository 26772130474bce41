"""The worker's score agent and timers: score (sessions -> alerts), close idle sessions, log metrics.

Data flow: the route (stream/route.py) re-publishes raw lines on the internal `sessions` topic keyed by their
session, so all of a session's lines reach one worker in order. The score agent takes micro-batches from it and
applies them to the sessions' states; each batch's due windows are then scored (stream/scoring.py: by the scoring
process, waited for in a thread), its alerts published and its states written to the session table, while the
agent applies the next batch (stream/pipeline.py). A timer scans the open sessions and asks for idle ones to be
closed by publishing a close event on the same topic, so closing follows the same ordered, changelogged path as
lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.exceptions import ConsumerNotStarted
from faust.streams import _current_event
from faust.types import EventT

from stream.alerts import ScoredWindow
from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.pipeline import Applied, BatchPipeline
from stream.processor import Batch, Scorer, SessionEvent, SessionProcessor, early_scoring, session_idle
from stream.reload import ModelReloader, ScorerSlot
from stream.route import RouteHandle
from stream.scoring import close_scorer
from stream.windows import SessionState, SessionWindows, Window, sessions_to_close

log = logging.getLogger("stream.worker")

CLOSE_RETRY_MAX = 300.0  # seconds after which a close request not yet carried out is sent again, at most


def close_retry_after(idle: float) -> float:
    """Seconds before a close request that was not carried out (lost in a rebalance) is sent again: twice the idle
    time, at least 10 s, and at most CLOSE_RETRY_MAX, so a model's session_idle of hours does not delay it as long."""
    return min(max(2 * idle, 10.0), CLOSE_RETRY_MAX)


@contextlib.contextmanager
def event_context(event: EventT) -> Iterator[None]:
    """Make `event` the current event, so a table write goes to the changelog partition of the event's
    source partition (take_events hands over a batch, where Faust's own current event is not that one)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


@dataclass
class AgentsHandle:
    """What the health check and tests need to see of the registered agents."""

    slot: ScorerSlot  # the model scoring now
    processor: SessionProcessor  # processor.started_at > 0 once the worker is running (after recovery)
    reloader: ModelReloader | None = None  # None when model_reload_interval is 0 or no loader was given
    route: RouteHandle | None = None  # the batch route (None: the route is a Faust agent)
    last_tick: float = 0.0  # time.monotonic() of the last metrics timer run: the event loop is alive

    def loop_stalled_for(self, now: float, interval: float) -> float:
        """Seconds the metrics timer is overdue (0 when on time): a busy or wedged event loop shows here."""
        if not self.last_tick:
            return 0.0
        return max(0.0, now - self.last_tick - interval)


def register_agents(app: faust.App, cfg: StreamConfig, scorer: Scorer, hop: int, metrics: Metrics, *,
                    sessions: faust.TopicT, alerts: faust.TopicT, table: faust.Table,
                    load_model: Callable[[Scorer], Scorer] | None = None,
                    route: RouteHandle | None = None) -> AgentsHandle:
    """Register the score agent and the timers. `load_model(running) -> Scorer` reads the model folder again for hot
    reload (every cfg.model_reload_interval seconds); without it the model never changes. `route`: the batch route,
    whose consumer lag the metrics report for the raw topic."""
    windows = SessionWindows(scorer.max_window, hop, cfg.max_session_lines, cfg.alert_cooldown_lines)
    processor = SessionProcessor(windows, session_idle(cfg.session_idle, scorer), metrics,
                                 early_scoring(scorer, hop, cfg.early_alerts, cfg.early_hop))
    close_requested: dict[str, float] = {}
    slot = ScorerSlot(scorer)
    handle = AgentsHandle(slot, processor, route=route)
    metrics.model = slot.info

    def install(new: Scorer) -> None:
        """Window sessions the way the new model was trained, and score them early as it was calibrated (called
        between batches, before the swap)."""
        new_hop = cfg.hop or new.window_hop
        processor.windows = SessionWindows(new.max_window, new_hop, cfg.max_session_lines, cfg.alert_cooldown_lines)
        processor.early = early_scoring(new, new_hop, cfg.early_alerts, cfg.early_hop)
        processor.idle_seconds = session_idle(cfg.session_idle, new)

    async def score_batch(applied: Applied) -> Sequence[ScoredWindow] | None:
        """Score the batch's windows off the event loop (so it keeps heartbeating); None when the model failed them
        (counted: the sessions go on, their states are still written, only these windows are lost)."""
        windows = applied.batch.windows
        if not windows:
            return []
        texts = [[e.line for e in w.entries] for w in windows]
        started = time.perf_counter()
        try:
            scored = await asyncio.to_thread(applied.scorer.score_detailed, texts)
        except (RuntimeError, ValueError) as exc:
            metrics.inc("windows_failed", len(texts))
            log.error("scoring %d windows failed, skipped: %s", len(texts), exc)
            return None
        metrics.observe_batch(len(texts), time.perf_counter() - started)
        metrics.inc("windows_scored", len(texts))
        metrics.cache_info = _cache_info(applied.scorer)
        return scored

    async def finish(applied: Applied, scored: Sequence[ScoredWindow] | None) -> None:
        """Publish the batch's alerts, then write its states (after the alerts: a crash in between re-does the
        batch, whose windows are then scored again)."""
        batch = applied.batch
        alerts_out = [] if not scored else processor.alerts_for(batch, scored, applied.scorer, cfg.alert_top_lines,
                                                                  applied.now, model=slot.info)
        for alert in alerts_out:
            await alerts.send(key=alert["session"].encode("utf-8"),
                              value=json.dumps(alert, ensure_ascii=False).encode("utf-8"))
            metrics.inc("alerts_out")
            log.info("alert %s session=%s score=%.4f window_end=%d", alert["alert_id"],
                     alert["session"], alert["score"], alert["window"]["end"])
        for key, data in applied.writes().items():
            with event_context(applied.last_event[key]):
                if data is None:
                    if key in table:
                        del table[key]
                    close_requested.pop(key, None)
                else:
                    table[key] = data

    async def stop_on_failure(exc: BaseException) -> None:
        metrics.inc("batches_failed")
        log.error("a batch failed (%s: %s); stopping the worker: its events and every later one are read again "
                  "on restart", type(exc).__name__, exc)
        await app.crash(exc)

    pipeline: BatchPipeline[Sequence[ScoredWindow] | None] = BatchPipeline(
        cfg.batches_in_flight, score_batch, finish, stop_on_failure)

    def load(key: str) -> SessionState | None:
        held, state = pipeline.held(key)  # a batch in flight holds its newest state (not in the table yet)
        if held:
            return state
        data = table.get(key)
        return SessionState.from_json(data) if data else None

    @app.agent(sessions, name="score")
    async def score(stream: faust.StreamT) -> None:
        async for events in stream.take_events(cfg.batch_max, within=cfg.batch_within):
            pipeline.hold(events)  # before anything awaits: none of them is committed until its batch is finished
            async with slot.lock:  # one model per batch; a reload swaps only when no batch is in flight
                pairs, last_event = decode(events)
                await prefetch_novelty(slot.scorer, pairs)
                await pipeline.take(events, lambda: apply(slot.scorer, events, pairs, last_event))  # noqa: B023

    def decode(events: Sequence[EventT]) -> tuple[list[tuple[int, SessionEvent]], dict[str, EventT]]:
        """(offset, session event) pairs, and each session's last event (where its table write belongs)."""
        pairs: list[tuple[int, SessionEvent]] = []
        last_event: dict[str, EventT] = {}
        for event in events:
            try:
                session_event = SessionEvent.from_json(event.value)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                metrics.inc("session_events_invalid")
                log.warning("skipped session event at offset %d: %s", event.message.offset, exc)
                continue
            pairs.append((event.message.offset, session_event))
            last_event[session_event.session] = event
        return pairs, last_event

    async def prefetch_novelty(scorer: Scorer, pairs: list[tuple[int, SessionEvent]]) -> None:
        """Have a scoring process say which of the batch's lines are novel (masking them there, not on the event
        loop), when early scoring may ask (stream.scoring.ProcessScorer.prefetch_novelty)."""
        prefetch = getattr(scorer, "prefetch_novelty", None)
        if prefetch is None or processor.early is None:
            return
        lines = [entry.line for _, event in pairs for entry in event.line_entries]
        if not lines:
            return
        try:
            await asyncio.to_thread(prefetch, lines)
        except Exception:  # is_novel masks here what it was not told: slower, not wrong
            log.exception("asking the scoring process which lines are novel failed; masking them in the worker")

    def apply(scorer: Scorer, events: Sequence[EventT], pairs: list[tuple[int, SessionEvent]],
              last_event: dict[str, EventT]) -> Applied:
        now = time.time()
        batch = processor.apply(pairs, load, now)
        fit_to_window(batch, scorer.max_window)
        return Applied(batch, scorer, now, events, last_event)

    @app.timer(cfg.close_scan_interval)
    async def close_idle_sessions() -> None:
        if not processor.started_at:
            return  # not started yet
        now = time.time()
        seen = [(k, float(v["last_seen"])) for k, v in list(table.items()) if v]
        last_seen = dict(seen)
        for key in [k for k in close_requested if k not in last_seen]:
            del close_requested[key]  # closed (here or by the worker that owns it now)
        # No session is idle while lines may wait for it in the raw topic, unread (a close request would overtake
        # them and split the session): not before the worker's start (its downtime), nor while its route is not
        # reading (starting, rebalancing) and until it has read what waited meanwhile. Idle time counts from the
        # route's last catching up. Evictions go on.
        caught_up = route.caught_up_at if route is not None else processor.started_at
        processor.idle_since = max(caught_up, processor.started_at) if caught_up else 0.0
        idle, evicted = sessions_to_close(seen, now, processor.idle_seconds, cfg.max_open_sessions,
                                          idle_since=processor.idle_since or now)
        retry_after = close_retry_after(processor.idle_seconds)
        for reason, keys in (("idle", idle), ("evict", evicted)):
            for key in keys:
                requested = close_requested.get(key)
                if requested is not None and requested > last_seen[key] and now - requested < retry_after:
                    continue  # already asked since its last line; the request is on its way
                close_requested[key] = now
                await sessions.send(key=key.encode("utf-8"), value=SessionEvent("close", key, reason=reason).to_json())

    @app.timer(cfg.metrics_interval)
    async def log_metrics() -> None:
        metrics.counts["open_sessions"] = len(table)  # a gauge, kept with the counters for one log line
        metrics.consumer_lag = consumer_lag(app, (cfg.topic_logs, cfg.topic_sessions))
        if route is not None:  # the batch route reads the raw topic with a consumer of its own
            metrics.consumer_lag[cfg.topic_logs] = route.lag()
        metrics.cache_info = _cache_info(slot.scorer)
        metrics.tick()
        metrics.log()
        handle.last_tick = time.monotonic()

    @app.task
    async def mark_start() -> None:
        processor.started_at = time.time()
        metrics.counts["open_sessions"] = len(table)  # recovered from the changelog
        metrics.log()  # the counters as the worker starts, before it reads a line

    if load_model is not None and cfg.model_reload_interval > 0:
        reloader = handle.reloader = ModelReloader(cfg.model, slot, metrics, load_model, install, close_scorer,
                                                   drain=pipeline.drain)

        @app.timer(cfg.model_reload_interval)
        async def reload_model() -> None:
            await reloader.check()

    return handle


def fit_to_window(batch: Batch, max_window: int) -> None:
    """Keep at most `max_window` lines per window and per stored state. Only matters after a reload to a model
    with a smaller window: open sessions still hold the old model's window of lines."""
    for i, window in enumerate(batch.windows):
        if len(window.entries) > max_window:
            batch.windows[i] = Window(window.session, window.end, window.entries[-max_window:], window.final)
    for state in batch.states.values():
        if state is not None and len(state.items) > max_window:
            del state.items[:-max_window]


def consumer_lag(app: faust.App, topics: Iterable[str]) -> dict[str, int]:
    """Records behind the high watermark on this worker's assigned partitions of `topics`: highwater minus
    the offset this worker last committed (else the next one it reads, else 0). The high watermark is the one
    the last fetch reported (aiokafka caches it), so the value is as fresh as the last fetch of a partition."""
    lag = {topic: 0 for topic in topics}
    try:
        consumer = app.consumer
        assigned = consumer.assignment()
    except ConsumerNotStarted:
        return lag
    committed, read = app.monitor.tp_committed_offsets, app.monitor.tp_read_offsets
    for tp in assigned:
        if tp.topic not in lag:
            continue
        try:
            high = consumer.highwater(tp)
        except AssertionError:  # aiokafka asserts the partition is assigned: it was revoked meanwhile
            continue
        if high is None:
            continue  # not fetched yet
        done = committed.get(tp)
        if done is None:
            done = read[tp] + 1 if tp in read else 0
        lag[tp.topic] += max(0, high - done)
    return lag


def _cache_info(scorer: Scorer) -> dict[str, Any] | None:
    """The encoder cache counters: a ProcessScorer's (its child's), a LogScorer's encoder's; None for others."""
    info = getattr(scorer, "cache_info", None) or getattr(getattr(scorer, "encoder", None), "cache_info", None)
    return info() if callable(info) else None
