"""One micro-batch of session events -> new session states, windows to score, alerts. No Kafka here.

The agent in stream/agents.py is a thin adapter: it reads a batch from the sessions topic, calls
`apply`, has the windows scored (off the event loop), calls `alerts_for`, publishes, then writes the states.
States are written only after the alerts are sent, and events already applied to a state are skipped
by offset, so a worker that dies mid-batch re-does the batch without losing or doubling a window.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from model.decision import is_anomalous
from model.early import EarlyRule
from stream.alerts import ScoredWindow, build_alert
from stream.metrics import Metrics
from stream.windows import EarlyScoring, Entry, SessionState, SessionWindows, Window

CLOSE_REASONS = ("idle", "evict")


class Scorer(Protocol):
    """The part of model.LogScorer the worker uses."""

    threshold: float
    name: str
    fingerprint: str
    max_window: int
    window_hop: int

    def score_detailed(self, windows: list[list[str]]) -> Sequence[ScoredWindow]: ...


def early_scoring(scorer: Scorer, hop: int, enabled: bool | None, early_hop: int = 0) -> EarlyScoring | None:
    """What scores the model's open sessions early (the worker's early_alerts, early_hop: 0 = the model's), or None:
    switched off, or the model has no early thresholds (also a scorer without them, such as a test's fake one)."""
    thresholds = getattr(scorer, "early_thresholds", None)
    early_hop = early_hop or int(getattr(scorer, "early_hop", 0))
    if enabled is False or thresholds is None or early_hop < 1:
        return None
    is_novel = getattr(scorer, "is_novel", None)
    return EarlyScoring(EarlyRule(scorer.max_window, hop, early_hop), thresholds,
                        is_novel if is_novel is not None else _never_novel)


DEFAULT_SESSION_IDLE = 5.0  # seconds, for a model that measured no pauses (trained without timestamps, or before)


def session_idle(configured: float | None, scorer: Scorer) -> float:
    """The worker's session_idle when set, else the model's (the longest pause inside a normal training session,
    with a margin: train.pauses), else DEFAULT_SESSION_IDLE."""
    if configured is not None:
        return configured
    measured = getattr(scorer, "session_idle", None)
    return float(measured) if measured else DEFAULT_SESSION_IDLE


def _never_novel(line: str) -> bool:
    return False


@dataclass(frozen=True)
class SessionEvent:
    """A value on the sessions topic: lines of a session, or a request to close it.

    The route publishes one "lines" event per session per input batch (the batch's lines of that session, in
    order), so the sessions topic, the score agent and the table's changelog carry one message where they would
    carry one per line; "line" (one entry) is still read, from workers that published it.
    """

    kind: str  # "line" | "lines" | "close"
    session: str
    entry: Entry | None = None  # for "line"
    reason: str = ""  # for "close": idle | evict
    entries: tuple[Entry, ...] = ()  # for "lines", oldest first

    @property
    def line_entries(self) -> tuple[Entry, ...]:
        """The lines this event adds to its session, in order (none for "close")."""
        if self.kind == "lines":
            return self.entries
        return (self.entry,) if self.kind == "line" and self.entry is not None else ()

    def to_json(self) -> dict[str, Any]:
        if self.kind == "lines":
            return {"kind": "lines", "session": self.session, "entries": [e.to_json() for e in self.entries]}
        if self.kind == "line" and self.entry is not None:
            return {"kind": "line", "session": self.session, "entry": self.entry.to_json()}
        return {"kind": "close", "session": self.session, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionEvent:
        kind = data.get("kind")
        if kind == "lines":
            entries = tuple(Entry.from_json(e) for e in data["entries"])
            if entries:
                return cls("lines", str(data["session"]), entries=entries)
        if kind == "line":
            return cls("line", str(data["session"]), entry=Entry.from_json(data["entry"]))
        if kind == "close" and data.get("reason") in CLOSE_REASONS:
            return cls("close", str(data["session"]), reason=str(data["reason"]))
        raise ValueError(f"not a session event: {str(data)[:120]!r}")


@dataclass
class Batch:
    """The outcome of applying events: states to write (None = delete) and windows to score."""

    states: dict[str, SessionState | None] = field(default_factory=dict)
    windows: list[Window] = field(default_factory=list)
    owners: list[SessionState] = field(default_factory=list)  # the state each window came from


class SessionProcessor:
    def __init__(self, windows: SessionWindows, idle_seconds: float, metrics: Metrics,
                 early: EarlyScoring | None = None) -> None:
        self.windows = windows
        self.idle_seconds = idle_seconds
        self.metrics = metrics
        self.early = early  # None: open sessions are scored only by the window rule (early_alerts off)
        self.started_at = 0.0  # set when the worker starts (after recovering its table)
        # Idle time counts from the later of a session's last line and this: when the worker's route last caught up
        # with the input that waited for it (at start, after a rebalance), so it never counts the worker's downtime
        # or a pause in reading. 0: not caught up now, and no session is idle.
        self.idle_since = 0.0

    def apply(self, events: Sequence[tuple[int, SessionEvent]],
              load: Callable[[str], SessionState | None], now: float) -> Batch:
        """Apply (offset, event) pairs in order; `load` reads a session's stored state (None if none)."""
        batch = Batch()
        for offset, event in events:
            key = event.session
            state = batch.states[key] if key in batch.states else load(key)
            if state is not None and offset <= state.last_event_offset:
                self.metrics.inc("events_redelivered_skipped")
                continue
            if event.kind == "close":
                self._close(batch, key, state, event.reason, now)
                continue
            for entry in event.line_entries:
                if state is not None and state.seen_input(entry):
                    self.metrics.inc("lines_redelivered_skipped")
                    continue
                if state is None:
                    state = SessionState()
                    self.metrics.inc("sessions_opened")
                state.last_event_offset = offset
                state.input_offsets[entry.partition] = entry.offset
                window = self.windows.add(key, state, entry, now)
                self.metrics.inc("lines_applied")
                batch.states[key] = state
                if window is None and self.early is not None:
                    window = self.early.window(self.windows, key, state)
                    if window is not None:
                        self.metrics.inc("windows_early")
                if window is not None:
                    self._due(batch, window, state)
                if self.windows.too_long(state):
                    self.metrics.inc("sessions_evicted_too_long")
                    self._finish(batch, key, state)
                    state = None  # the session's next line starts it over
        return batch

    def _close(self, batch: Batch, key: str, state: SessionState | None, reason: str, now: float) -> None:
        if state is None:
            return  # already closed (a duplicate close request)
        if reason == "idle" and (not self.idle_since or now - max(state.last_seen, self.idle_since) < self.idle_seconds):
            batch.states[key] = state  # a line arrived after the close was requested: keep it open
            return
        self.metrics.inc("sessions_closed_idle" if reason == "idle" else "sessions_evicted_overflow")
        self._finish(batch, key, state)

    def _finish(self, batch: Batch, key: str, state: SessionState) -> None:
        window = self.windows.close(key, state)
        if window is not None:
            self._due(batch, window, state)
        batch.states[key] = None

    def _due(self, batch: Batch, window: Window, state: SessionState) -> None:
        """A window to score; counted, so a caller can tell when every window made is scored (or failed)."""
        batch.windows.append(window)
        batch.owners.append(state)
        self.metrics.inc("windows_due")

    def alerts_for(self, batch: Batch, scored: Sequence[ScoredWindow], scorer: Scorer, top_lines: int,
                   now: float, model: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Alerts for windows at or above the model's threshold (a threshold of 1.0 flags nothing: model.decision),
        early windows at or above their early threshold, honouring each session's cooldown and alerting early at
        most once per window. `model` is what alerts say about the scorer (stream.reload.model_info: name,
        fingerprint, weights); by default its name and fingerprint."""
        if model is None:
            model = {"name": scorer.name, "fingerprint": scorer.fingerprint}
        alerts = []
        for window, state, result in zip(batch.windows, batch.owners, scored, strict=True):
            if window.early:
                if self.early is None:
                    continue  # cannot happen: early windows are made and judged by the same batch's policy
                threshold = self.early.threshold(window)
                decision = self.early.alerts(self.windows, state, window, result.score)
                if decision is None:
                    continue
                if not decision:
                    self.metrics.inc("alerts_suppressed_cooldown")
                    continue
                state.early_alerted_at = window.end
                self.metrics.inc("alerts_early")
            else:
                threshold = scorer.threshold
                if not is_anomalous(result.score, threshold):
                    continue
                if not self.windows.should_alert(state, window):
                    self.metrics.inc("alerts_suppressed_cooldown")
                    continue
            state.alerted_at = window.end
            alerts.append(build_alert(window, result, threshold=threshold, model=model, top_lines=top_lines,
                                      detected_at=now))
        return alerts
