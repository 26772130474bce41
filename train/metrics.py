"""Session-level metrics and decision-threshold calibration."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from model.decision import FLAG_NOTHING, HIGHEST_FLAGGING, anomalous

logger = logging.getLogger(__name__)

THRESHOLD_OBJECTIVES = ("f1", "fpr")


def classification_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 at `threshold` (score >= threshold is anomalous; 1.0 flags nothing, see
    model.decision), PR-AUC (average precision), ROC-AUC, the confusion matrix [[tn, fp], [fn, tp]], n and
    n_anomalous. AUCs are None when the labels hold a single class (they are undefined there)."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({len(y)} vs {len(s)})")
    pred = anomalous(s, threshold)
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    two_classes = 0 < int(y.sum()) < len(y)
    return {
        "accuracy": (tp + tn) / len(y) if len(y) else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pr_auc": float(average_precision_score(y, s)) if two_classes else None,
        "roc_auc": float(roc_auc_score(y, s)) if two_classes else None,
        "threshold": float(threshold),
        "n": len(y),
        "n_anomalous": int(y.sum()),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def calibrate_threshold(labels: Sequence[int], scores: Sequence[float], objective: str = "f1",
                        target_fpr: float = 0.01, default: float = 0.5) -> float:
    """The decision threshold that maximises F1 (objective "f1") or catches the most anomalies with a false-
    positive rate <= target_fpr ("fpr"). The threshold sits between the lowest score taken as anomalous and the
    next lower score (`between`), so scores that wobble in the last float digits (another batch, another padding)
    keep their side. When even the top score breaks target_fpr the threshold is 1.0, which flags nothing
    (model.decision); a threshold meant to flag scores of exactly 1.0 is kept just below it. Single-class labels
    give `default`."""
    if objective not in THRESHOLD_OBJECTIVES:
        raise ValueError(f"unknown threshold objective ({objective!r}); expected one of "
                         f"{', '.join(THRESHOLD_OBJECTIVES)}")
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if not 0 < int(y.sum()) < len(y):
        logger.warning("threshold not calibrated: the eval labels hold one class; keeping %.3f", default)
        return default
    if objective == "f1":
        f1, cuts = f1_by_cut(y, s)
        best = cuts[int(np.argmax(f1))]
    else:
        fpr, _, cuts = roc_curve(y, s, drop_intermediate=False)
        allowed = np.flatnonzero(fpr <= target_fpr)
        best = cuts[allowed[-1]] if len(allowed) else np.inf
        if not np.isfinite(best):  # not even the top score keeps the FPR: flag nothing
            return FLAG_NOTHING
    return min(cut_under(s, float(best)), HIGHEST_FLAGGING)  # 1.0 would flag nothing, not the scores of 1.0 chosen


def f1_by_cut(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F1, cut) for every distinct score taken as the lowest flagged one (score >= cut is anomalous), cuts
    ascending."""
    precision, recall, cuts = precision_recall_curve(labels, scores)
    return 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12), cuts


def cut_under(scores: np.ndarray, lowest_flagged: float) -> float:
    """The threshold that flags `lowest_flagged` and every higher score and nothing lower: `between` it and the next
    lower score (itself when no score is lower)."""
    below = scores[scores < lowest_flagged]
    return between(float(below.max()), lowest_flagged) if len(below) else lowest_flagged


def between(low: float, high: float) -> float:
    """The cut between a score left unflagged (`low`) and the lowest flagged one (`high`), 0 <= low < high: their
    geometric mean, the midpoint in log score; halfway (high / 2) when low is 0. Where a trained model leaves a wide
    gap (normal windows at 1e-4, anomalous ones at 0.999) the arithmetic midpoint sits at 0.5, thousands of times
    above the normal side and barely under the anomalous one; windows of a later period whose anomalies score lower
    (0.06-0.11 on real HDFS, bench/bench_real.py --calibrate-on later-train) then pass under it. Every score on
    the calibration data keeps the side it had either way."""
    if not 0.0 <= low < high:
        raise ValueError(f"between needs 0 <= low < high ({low}, {high})")
    return math.sqrt(low) * math.sqrt(high) if low > 0.0 else high / 2  # no underflow of low * high


RATE_OUTLIER_SHARE = 0.05
"""The largest share of the windows `gap_outliers` sets apart: "unlabelled" logs hold a few percent of anomalies
(real HDFS 3%), and the cap bounds how far above target_rate the gap can take the alert rate. At 0.10, PCA's
scores of real HDFS dev had a gap under their top 9.6%, mostly normal blocks (bench/results/2026-12-05-rate-gap.md)."""
MIN_GAP_LOG_ODDS = 1.0
"""A gap must also be this wide in log-odds (the odds e times apart on its two sides): where the scores' bulk is very
tight a few interquartile ranges are a step inside the normal tail (real HDFS, seed 7: IQR 0.022, so 3.1 IQR was
0.07 and set 3 normal blocks apart with the 47 anomalies; the gap that parts them is 2.25 wide)."""
LOG_ODDS_FLOOR = 1e-7
"""Scores are clipped to [LOG_ODDS_FLOOR, 1 - LOG_ODDS_FLOOR] before their log-odds are taken: float32 resolves
probabilities near 1.0 only to ~6e-8, so closer to the ends a difference is rounding, not evidence."""


def rate_threshold(scores: Sequence[float], target_rate: float, gap: float = 0.0) -> float:
    """The threshold that flags the int(target_rate * n) highest of n scores (at least one), without labels: what an
    operator who can afford a given alert rate sets. It sits halfway between the lowest flagged score and the next
    lower one (`between`'s log midpoint was measured for labelled calibration only); scores tied across that cut
    are all left unflagged, so the rate is never exceeded (but for the one window always flagged).

    With gap > 0 the cut never falls inside the group of highest scores that `gap_outliers` finds set apart from
    the rest by a clear gap: where the rate would flag part of that group, the cut moves down into the gap and flags
    all of it (at `between` the gap's ends, whose log midpoint leaves room for a later period's anomalies to score
    lower); where the rate flags more windows than the group holds, nothing changes. A model that sets a few
    percent of the windows far apart from the others has found what departs from normal; a 1% rate cut inside
    such a group on real HDFS (3% of the blocks anomalous), and the next period's anomalies, scored a little lower,
    all fell under it."""
    if not 0.0 < target_rate < 1.0:
        raise ValueError(f"target_rate must be in (0, 1) ({target_rate})")
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]  # (n,) descending
    if len(s) == 0:
        raise ValueError("rate_threshold needs at least one score ([])")
    cut = _rate_cut(s, target_rate)
    apart = gap_outliers(s, gap)
    return min(cut, between(float(s[apart]), float(s[apart - 1]))) if apart else cut  # in the gap, nearer the rest


def gap_outliers(scores: Sequence[float], gap: float) -> int:
    """How many of the highest scores stand apart from the rest: above the lowest step between consecutive sorted
    log-odds, among the top RATE_OUTLIER_SHARE of the scores, that is at least `gap` times the interquartile range
    of all the log-odds and at least MIN_GAP_LOG_ODDS. 0 where there is no such step, where gap is 0, or where the
    scores are too few for the share to hold one window (under 20)."""
    if not (math.isfinite(gap) and gap >= 0.0):
        raise ValueError(f"gap must be a finite number >= 0 ({gap})")
    n = len(scores)
    top = int(RATE_OUTLIER_SHARE * n)
    if gap == 0.0 or top < 1:  # the plain rate: nothing to sort
        return 0
    p = np.clip(np.sort(np.asarray(scores, dtype=np.float64)), LOG_ODDS_FLOOR, 1.0 - LOG_ODDS_FLOOR)  # (n,) ascending
    z = np.log(p) - np.log1p(-p)  # (n,) log-odds
    q25, q75 = np.quantile(z, [0.25, 0.75])
    steps = np.diff(z[n - top - 1:])  # (top,) the steps between the top + 1 highest scores
    wide = np.flatnonzero(steps >= max(gap * (q75 - q25), MIN_GAP_LOG_ODDS))
    return int(top - wide[0]) if len(wide) else 0


def _rate_cut(s: np.ndarray, target_rate: float) -> float:
    """rate_threshold over all of `s` (n,), sorted descending."""
    k = max(1, int(target_rate * len(s)))
    if k >= len(s):
        return min(float(s[-1]), HIGHEST_FLAGGING)
    if s[k - 1] == s[k]:  # a tie straddles the cut: flag only the scores above the tied value
        above = s[s > s[k]]
        if len(above) == 0:
            return FLAG_NOTHING  # every score is tied at the cut
        return float((above[-1] + s[k]) / 2)
    return float((s[k - 1] + s[k]) / 2)
