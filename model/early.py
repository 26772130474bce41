"""Early scoring: which prefixes of an open session are scored before it closes, and the thresholds they are judged
by. One rule for training's calibration, offline evaluation and the worker, as model.windowing is for the windows
scored with the closing threshold.

While a session is shorter than max_window lines (before its first regular window), its prefix is scored early
every `early_hop` lines. At any length, its current window (its last <= max_window lines) is scored at once when a
line arrives whose masked form never occurred in a normal training session ("novel"), unless a regular window is
scored at that line anyway. Past the first window, regular windows score the session every `hop` lines, so early
scoring every `early_hop` lines there would only repeat them, each over a full window: with hop 16 and early_hop
3, 6x the model's work on long sessions (5 early windows per regular one), for an alert at most hop - early_hop
lines sooner. An early window alerts when its score reaches the early threshold for its length (stricter than the
closing one). A session alerts early at most once per max_window lines (once, for a session that fits one window),
and is not scored early while an earlier alert's cooldown holds, since it could not alert.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from model.decision import FLAG_NOTHING, is_anomalous
from model.windowing import regular_window_due

T = TypeVar("T")

HOP = "hop"  # scored because early_hop more lines arrived
NOVEL = "novel"  # scored because the line never occurred in a normal training session


@dataclass(frozen=True)
class EarlyRule:
    """When an open session's current window is scored early (no Kafka, no clock, no model)."""

    window: int  # the model's max_window
    hop: int  # the regular windows' hop (model.windowing)
    early_hop: int  # lines between two early scorings of a session

    def __post_init__(self) -> None:
        for name in ("window", "hop", "early_hop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def trigger(self, count: int, novel: bool) -> str | None:
        """Why the session's window ending at its `count`-th line is scored early (HOP or NOVEL), or None when it is
        not: neither trigger, or a regular window ends at that line and is scored with the closing threshold. HOP
        only before the first regular window (count < window); NOVEL at any count."""
        if regular_window_due(count, self.window, self.hop):
            return None
        if novel:
            return NOVEL
        return HOP if count < self.window and count % self.early_hop == 0 else None

    def may_alert(self, count: int, early_alerted_at: int) -> bool:
        """A session may alert early again at its `count`-th line: never before, or max_window lines ago."""
        return early_alerted_at < 0 or count - early_alerted_at >= self.window


@dataclass(frozen=True)
class EarlyWindow(Generic[T]):
    """An early window of a complete session: it ends at the session's `end`-th item."""

    end: int
    items: list[T]
    trigger: str


def early_windows(items: Sequence[T], novel: Sequence[bool], rule: EarlyRule) -> list[EarlyWindow[T]]:
    """Every window the worker scores early while the session is open, in order, as if none of them alerted (an
    alert only stops later ones, see EarlyRule.may_alert). `novel[i]`: item i never occurred in a normal session."""
    if len(novel) != len(items):
        raise ValueError(f"novel flags and items differ in length ({len(novel)} vs {len(items)})")
    out: list[EarlyWindow[T]] = []
    for count in range(1, len(items) + 1):
        trigger = rule.trigger(count, novel[count - 1])
        if trigger is not None:
            out.append(EarlyWindow(count, list(items[max(0, count - rule.window):count]), trigger))
    return out


@dataclass(frozen=True)
class EarlyThresholds:
    """Early thresholds by window length: `values[i]` applies to windows of up to `bounds[i]` lines (and the last
    one to any longer window). A single threshold is one bound."""

    bounds: tuple[int, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.bounds or len(self.bounds) != len(self.values):
            raise ValueError(f"early thresholds need as many bounds as values, at least one "
                             f"(bounds {list(self.bounds)}, values {list(self.values)})")
        if any(b < 1 for b in self.bounds) or list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"early threshold bounds must be increasing line counts >= 1, got {list(self.bounds)}")
        for value in self.values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= FLAG_NOTHING:
                raise ValueError(f"early thresholds must be numbers in [0, 1], got {value!r}")

    @classmethod
    def single(cls, value: float, bound: int) -> EarlyThresholds:
        return cls((bound,), (float(value),))

    def for_length(self, n_lines: int) -> float:
        """The threshold a window of `n_lines` lines is judged by."""
        return self.values[min(bisect.bisect_left(self.bounds, n_lines), len(self.values) - 1)]

    def can_flag(self, n_lines: int) -> bool:
        """False when no score could reach the threshold for this length (1.0 flags nothing): no need to score."""
        return self.for_length(n_lines) < FLAG_NOTHING

    def flags(self, score: float, n_lines: int) -> bool:
        return is_anomalous(score, self.for_length(n_lines))

    def to_config(self) -> list[list[float]]:
        """[[up_to_lines, threshold], ...], as config.json stores them."""
        return [[int(b), float(v)] for b, v in zip(self.bounds, self.values)]

    @classmethod
    def from_config(cls, pairs: Any) -> EarlyThresholds:
        """From [[up_to_lines, threshold], ...]; ValueError naming the value when it is not that."""
        if not isinstance(pairs, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                                            for p in pairs):
            raise ValueError(f"early_thresholds must be a list of [up_to_lines, threshold] pairs, got {pairs!r}")
        for bound, _ in pairs:
            if isinstance(bound, bool) or not isinstance(bound, int):
                raise ValueError(f"early_thresholds: a bound must be an integer line count, got {bound!r}")
        return cls(tuple(int(p[0]) for p in pairs), tuple(p[1] for p in pairs))


def novel_flags(masked: Sequence[str], normal_lines: frozenset[str] | set[str] | None) -> list[bool]:
    """For each masked line: it never occurred in a normal training session (all False without normal lines)."""
    if normal_lines is None:
        return [False] * len(masked)
    return [line not in normal_lines for line in masked]


def first_early_alert(windows: Sequence[tuple[int, int, float]], thresholds: EarlyThresholds) -> int | None:
    """The end of a session's first early alert, from its early windows as (end, n_lines, score) in order; None
    when no window reaches its threshold."""
    for end, n_lines, score in windows:
        if thresholds.flags(score, n_lines):
            return end
    return None
