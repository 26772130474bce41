"""A stand-in scorer for worker tests that need no trained model: a window is anomalous when a line says ERROR."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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

    def __init__(self, max_window: int = 8, window_hop: int = 16) -> None:
        self.max_window = max_window
        self.window_hop = window_hop
        self.calls: list[list[list[str]]] = []

    def score_detailed(self, windows: Sequence[Sequence[str]]) -> list[FakeScore]:
        self.calls.append([list(w) for w in windows])
        out = []
        for window in windows:
            if not window or len(window) > self.max_window:
                raise ValueError(f"bad window length {len(window)}")
            contrib = [1.0 if "ERROR" in line else -0.1 for line in window]
            out.append(FakeScore(0.9 if any(c > 0 for c in contrib) else 0.1, contrib, 1.5, 0.0))
        return out
