"""Per-session state and the decisions made on it, as plain classes with no Kafka and no clock.

The window rule itself is `model.windowing.Windower` (shared with training and evaluation), and so is the early
scoring rule, `model.early.EarlyRule`; this module adds what a long-running worker needs around them: serialisable
state (it lives in a Faust table), idle and overflow closing, a hard cap on session length, the alert cooldown,
and which open-session windows are scored early and may alert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from model.decision import is_anomalous
from model.early import EarlyRule, EarlyThresholds
from model.windowing import Windower, WindowState


class Entry(NamedTuple):
    """One line of a session with where it came from (the input topic's partition and offset).

    A named tuple, not a dataclass: the score agent rebuilds every open session's entries from the table for each
    batch, and a tuple is built ~4x faster than a frozen dataclass."""

    line: str
    ts: float | str | None
    partition: int
    offset: int

    def to_json(self) -> list[Any]:
        return [self.line, self.ts, self.partition, self.offset]

    @classmethod
    def from_json(cls, data: list[Any]) -> Entry:
        return cls(data[0], data[1], int(data[2]), int(data[3]))


@dataclass
class SessionState:
    """One open session, as stored (JSON) in the worker's changelog-backed table."""

    items: list[Entry] = field(default_factory=list)  # the last <= window lines
    count: int = 0  # lines seen in this session
    emitted_at: int = 0  # `count` at the last emitted window
    last_seen: float = 0.0  # wall-clock time of the last line (drives the idle close)
    last_event_offset: int = -1  # offset of the last applied session event: redeliveries are skipped
    alerted_at: int = -1  # `count` at the end of the last alerted window (drives the cooldown)
    early_alerted_at: int = -1  # `count` at the last early alert (a session alerts early once per window)
    # Input partition -> offset of the last input line applied: a line the route publishes again (its input
    # offset was not committed before a crash or a rebalance) arrives in a new event and is skipped by this.
    input_offsets: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"items": [e.to_json() for e in self.items], "count": self.count, "emitted_at": self.emitted_at,
                "last_seen": self.last_seen, "last_event_offset": self.last_event_offset,
                "alerted_at": self.alerted_at, "early_alerted_at": self.early_alerted_at,
                "input_offsets": {str(p): o for p, o in self.input_offsets.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionState:
        return cls(items=[Entry.from_json(e) for e in data["items"]], count=int(data["count"]),
                   emitted_at=int(data["emitted_at"]), last_seen=float(data["last_seen"]),
                   last_event_offset=int(data.get("last_event_offset", -1)),
                   alerted_at=int(data.get("alerted_at", -1)),
                   early_alerted_at=int(data.get("early_alerted_at", -1)),
                   input_offsets={int(p): int(o) for p, o in data.get("input_offsets", {}).items()})

    def carry_alerts(self, data: dict[str, Any]) -> None:
        """Copy this state's alert marks into `data`, its JSON taken before its windows were scored and alerted."""
        data["alerted_at"] = self.alerted_at
        data["early_alerted_at"] = self.early_alerted_at

    def seen_input(self, entry: Entry) -> bool:
        """True when this input line (by partition and offset) is already in the session."""
        return entry.offset <= self.input_offsets.get(entry.partition, -1)


@dataclass(frozen=True)
class Window:
    """Lines to score: positions end-len(entries)+1 .. end of the session (1-based)."""

    session: str
    end: int
    entries: list[Entry]
    final: bool  # emitted when the session closed
    trigger: str | None = None  # an early window (judged by the early threshold): why it is scored (model.early)

    @property
    def early(self) -> bool:
        return self.trigger is not None


class SessionWindows:
    """Feeds lines through the shared Windower and decides closes and alert cooldowns."""

    def __init__(self, window: int, hop: int, max_session_lines: int, cooldown_lines: int) -> None:
        self.windower: Windower[Entry] = Windower(window, hop)
        if max_session_lines < 1:
            raise ValueError(f"max_session_lines must be >= 1, got {max_session_lines}")
        if cooldown_lines < 0:
            raise ValueError(f"cooldown_lines must be >= 0, got {cooldown_lines}")
        self.max_session_lines = max_session_lines
        self.cooldown_lines = cooldown_lines

    def add(self, session: str, state: SessionState, entry: Entry, now: float) -> Window | None:
        """Append a line; return the window due now, if any."""
        ws = WindowState(items=state.items, count=state.count, emitted_at=state.emitted_at)
        items = self.windower.push(ws, entry)
        state.items, state.count, state.emitted_at = ws.items, ws.count, ws.emitted_at
        state.last_seen = now
        return Window(session, state.count, items, final=False) if items is not None else None

    def close(self, session: str, state: SessionState) -> Window | None:
        """End a session: its final window, unless a window already ended at its last line."""
        ws = WindowState(items=state.items, count=state.count, emitted_at=state.emitted_at)
        items = self.windower.close(ws)
        state.emitted_at = ws.emitted_at
        return Window(session, state.count, items, final=True) if items is not None else None

    def too_long(self, state: SessionState) -> bool:
        """The session reached max_session_lines and must be closed (it starts over with its next line)."""
        return state.count >= self.max_session_lines

    def should_alert(self, state: SessionState, window: Window) -> bool:
        """False while a previous alert of this session is within the cooldown (counted in lines)."""
        return self.cooled_down(state, window.end)

    def cooled_down(self, state: SessionState, end: int) -> bool:
        """A window ending at the session's `end`-th line is past the cooldown of the session's last alert."""
        return state.alerted_at < 0 or end - state.alerted_at >= max(self.cooldown_lines, 1)


class EarlyScoring:
    """Which lines of an open session make its current window due for early scoring, and whether a scored early
    window alerts (model.early: every early_hop lines, at once on a line never seen in a normal training session,
    judged by the early thresholds, once per max_window lines, never within the cooldown)."""

    def __init__(self, rule: EarlyRule, thresholds: EarlyThresholds, is_novel: Callable[[str], bool]) -> None:
        self.rule = rule
        self.thresholds = thresholds
        self.is_novel = is_novel

    def window(self, windows: SessionWindows, session: str, state: SessionState) -> Window | None:
        """The early window due at the session's latest line, if any (call it when no regular window is due)."""
        count = state.count
        if not self.rule.may_alert(count, state.early_alerted_at) or not windows.cooled_down(state, count):
            return None  # it could not alert: not worth scoring
        if not self.thresholds.can_flag(len(state.items)):
            return None  # no score reaches the early threshold at this length
        trigger = self.rule.trigger(count, self.is_novel(state.items[-1].line))
        return Window(session, count, list(state.items), final=False, trigger=trigger) if trigger else None

    def threshold(self, window: Window) -> float:
        return self.thresholds.for_length(len(window.entries))

    def alerts(self, windows: SessionWindows, state: SessionState, window: Window, score: float) -> bool | None:
        """True: the early window alerts; False: it reached its threshold but the session may not alert now
        (already alerted early within max_window lines, or in its cooldown); None: below the threshold."""
        if not is_anomalous(score, self.threshold(window)):
            return None
        return self.rule.may_alert(window.end, state.early_alerted_at) and windows.cooled_down(state, window.end)


def sessions_to_close(last_seen: Iterable[tuple[str, float]], now: float, idle: float,
                      max_open: int, idle_since: float = 0.0) -> tuple[list[str], list[str]]:
    """(idle sessions, evicted sessions): those idle for >= `idle` seconds, then the least recently seen
    beyond `max_open` among the rest. Idle time counts from the later of a session's last line and `idle_since`
    (when this worker had started and caught up with its input), so a worker that was down never closes sessions
    for its own downtime."""
    idle_keys: list[str] = []
    active: list[tuple[float, str]] = []
    for key, seen in last_seen:
        seen = max(seen, idle_since)
        if now - seen >= idle:
            idle_keys.append(key)
        else:
            active.append((seen, key))
    overflow = len(active) - max_open
    evicted = [key for _, key in sorted(active)[:overflow]] if overflow > 0 else []
    return idle_keys, evicted
