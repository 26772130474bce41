"""The decision rule, in one place for training's metrics and calibration, `logmoe score` and the worker's alerts.

A score (P(anomaly) of a window, or of a session: the max over its windows) is anomalous when it is >= the
threshold, except that a threshold of 1.0 flags nothing. Calibration (threshold_objective=fpr) stores 1.0 when no
threshold keeps the false-positive rate within target, and float32 softmax often gives exactly 1.0, so `score >=
1.0` would flag precisely the saturated scores that broke the target. A probability never exceeds 1, so 1.0 is
free to mean "flag nothing" and the threshold stays within [0, 1] (LogMoEConfig's check).
"""

from __future__ import annotations

import numpy as np

FLAG_NOTHING = 1.0  # the threshold that flags no score at all
HIGHEST_FLAGGING = float(np.nextafter(FLAG_NOTHING, 0.0))  # the highest threshold that still flags a score of 1.0


def is_anomalous(score: float, threshold: float) -> bool:
    """score >= threshold, and nothing at the threshold FLAG_NOTHING (1.0)."""
    return threshold < FLAG_NOTHING and score >= threshold


def anomalous(scores: np.ndarray, threshold: float) -> np.ndarray:
    """`is_anomalous` for an array of scores: a bool array of the same shape."""
    return (scores >= threshold) & (threshold < FLAG_NOTHING)
