"""A stand-in scorer for worker tests that need no trained model: a window is anomalous when a line says ERROR.

For the fault tests it can also slow down (`delay` seconds per window, to build a backlog) and append every
window it scores to a file (`scored_log`: one JSON list of the window's lines per line), so a test can count
the windows scored by every worker that ran, across kills and restarts. With `break_once` (a path) the first batch
holding an ERROR line gets one score too few, once across workers (the file marks it done): the worker cannot
match scores to windows, which no model error handling catches.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FakeScore:
    score: float
    line_scores: list[float]
    experts_per_token: float
    unseen_fraction: float | None


class FakeScorer:
    threshold = 0.5
    name = "fake"
    fingerprint = "0" * 64

    def __init__(self, max_window: int = 8, window_hop: int | None = None, delay: float = 0.0,
                 scored_log: str | Path | None = None, break_once: str | Path | None = None) -> None:
        self.max_window = max_window
        self.window_hop = max_window if window_hop is None else window_hop  # a hop over the window is refused
        self.delay = delay
        self.scored_log = Path(scored_log) if scored_log else None
        self.break_once = Path(break_once) if break_once else None
        self.calls: list[list[list[str]]] = []

    def score_detailed(self, windows: Sequence[Sequence[str]]) -> list[FakeScore]:
        self.calls.append([list(w) for w in windows])
        out = []
        for window in windows:
            if not window or len(window) > self.max_window:
                raise ValueError(f"bad window length {len(window)}")
            contrib = [1.0 if "ERROR" in line else -0.1 for line in window]
            out.append(FakeScore(0.9 if any(c > 0 for c in contrib) else 0.1, contrib, 1.5, 0.0))
        if self.delay:
            time.sleep(self.delay * len(windows))
        if self.scored_log is not None:
            # One write per batch, appended: several workers may share the file, and a SIGKILL loses at most
            # the batch being written (which is then scored again from its redelivery).
            text = "".join(json.dumps(list(w), ensure_ascii=False) + "\n" for w in windows)
            fd = os.open(self.scored_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, text.encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        if self.break_once is not None and not self.break_once.exists() and any(s.score > 0.5 for s in out):
            self.break_once.write_text("broken once\n")
            return out[:-1]
        return out


def from_env() -> FakeScorer:
    """The fake worker's scorer: LOGMOE_FAKE_DELAY (seconds per window), LOGMOE_FAKE_SCORED_LOG and
    LOGMOE_FAKE_BREAK_ONCE (paths), LOGMOE_FAKE_SESSION_IDLE (the model's session_idle, seconds)."""
    scorer = FakeScorer(max_window=8, delay=float(os.environ.get("LOGMOE_FAKE_DELAY", "0")),
                        scored_log=os.environ.get("LOGMOE_FAKE_SCORED_LOG") or None,
                        break_once=os.environ.get("LOGMOE_FAKE_BREAK_ONCE") or None)
    if os.environ.get("LOGMOE_FAKE_SESSION_IDLE"):
        scorer.session_idle = float(os.environ["LOGMOE_FAKE_SESSION_IDLE"])  # type: ignore[attr-defined]
    return scorer
