"""The one windowing rule shared by training, evaluation and the streaming worker.

A session's items arrive one by one. A window (the last `window` items) is emitted each time the session
has at least `window` items and `hop` more have arrived since the first full window; when the session
closes, its last `min(count, window)` items are emitted unless a window already ended at that item. A
session no longer than `window` therefore yields exactly one window, the whole session, as in training.
A session's score is the maximum over its windows' scores, offline and online alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class WindowState(Generic[T]):
    """What is kept per open session: the last `window` items and two counters."""

    items: list[T] = field(default_factory=list)  # the last <= window items, oldest first
    count: int = 0  # items seen in this session
    emitted_at: int = 0  # `count` when the last window was emitted (0: none yet)


def regular_window_due(count: int, window: int, hop: int) -> bool:
    """A window ends at a session's `count`-th item: it holds at least `window` items and `hop` more arrived since
    the first full window."""
    return count >= window and (count - window) % hop == 0


class Windower(Generic[T]):
    """Sliding session windows as a plain class: no Kafka, no clock."""

    def __init__(self, window: int, hop: int) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if not isinstance(hop, int) or hop < 1:
            raise ValueError(f"hop must be an integer >= 1, got {hop!r}")
        if hop > window:
            raise ValueError(f"hop must be <= window ({hop} > {window}): the lines between two windows would "
                             f"never be scored")
        self.window = window
        self.hop = hop

    def push(self, state: WindowState[T], item: T) -> list[T] | None:
        """Add one item to a session; return the window that is due now, if any."""
        state.items.append(item)
        if len(state.items) > self.window:
            del state.items[0]
        state.count += 1
        if regular_window_due(state.count, self.window, self.hop):
            state.emitted_at = state.count
            return list(state.items)
        return None

    def close(self, state: WindowState[T]) -> list[T] | None:
        """End a session; return its final window unless one was already emitted at its last item."""
        if state.count == 0 or state.emitted_at == state.count:
            return None
        state.emitted_at = state.count
        return list(state.items)


def session_windows(items: Sequence[T], window: int, hop: int) -> list[list[T]]:
    """Every window the worker scores for a complete session, in order."""
    windower: Windower[T] = Windower(window, hop)
    state: WindowState[T] = WindowState()
    windows = [w for item in items if (w := windower.push(state, item)) is not None]
    final = windower.close(state)
    if final is not None:
        windows.append(final)
    return windows
