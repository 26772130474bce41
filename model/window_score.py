"""A scored window: what LogScorer returns per window. Kept apart from model.scorer, which imports torch, so that a
process that only receives results (the stream worker, from its scoring process) reads them without importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowScore:
    """score: P(anomaly) of the window. line_scores: each real line's exact additive share of the anomaly logit
    margin (positive pushes towards anomalous), one per line; with the model's base (bias and line-count term) they
    add up to the margin (with a novelty calibration, model.novelty: to the calibrated margin, each never-seen line
    carrying its share of its group's weight). experts_per_token: mean experts that ran per line of
    this window, averaged over the layers. unseen_fraction: share of the window's masked lines not
    seen in training (None when the model folder has no seen_lines.json)."""

    score: float
    line_scores: list[float]
    experts_per_token: float
    unseen_fraction: float | None
