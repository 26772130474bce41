"""Early scoring at training time: score the prefixes the worker scores early (model.early's rule) with the worker's
scorer, and calibrate the early thresholds on the eval sessions' normal prefixes.

Calibration: a normal session raises a false early alert when any of its early windows reaches the threshold for
its length. The thresholds are chosen so that at most `target_fpr` of the normal eval sessions would (by default the
share of normal eval sessions the closing threshold flags: early scoring then raises no more false alarms than
closing does), and never below the closing threshold. Per prefix length ("per_length"), the window lengths are
bucketed (1, 2, 4, 8, ... lines) and each bucket's threshold cuts off the same share of its own normal windows'
scores, that share being the largest that keeps the session-level target: a length whose normal prefixes look like
anomalies (an HDFS block cut after two lines looks like a truncated, anomalous one) gets a threshold of its own
instead of dictating one for every length ("single").
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.decision import FLAG_NOTHING, anomalous, is_anomalous
from model.early import EarlyRule, EarlyThresholds, early_windows, first_early_alert, novel_flags
from model.masking import mask
from model.windowing import session_windows
from train.data import Session

logger = logging.getLogger(__name__)

CALIBRATIONS = ("per_length", "single")


@dataclass(frozen=True)
class ScoredPrefix:
    """One early window of a session: it ends at the session's `end`-th line and holds `n_lines` lines."""

    end: int
    n_lines: int
    score: float
    trigger: str


def length_bounds(max_window: int) -> tuple[int, ...]:
    """Bucket bounds by window length: 1, 2, 4, 8, ... up to max_window."""
    bounds = [1]
    while bounds[-1] < max_window:
        bounds.append(min(2 * bounds[-1], max_window))
    return tuple(bounds)


def score_in_length_order(scorer: Any, windows: Sequence[Sequence[str]], batch_size: int) -> list[float]:
    """`scorer.score` of each window, in input order, `batch_size` windows at a time in order of length (similar
    lengths pad little), so only one chunk's detailed results are held at once."""
    scores = [0.0] * len(windows)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, score in zip(chunk, scorer.score([windows[i] for i in chunk])):
            scores[i] = score
    return scores


def score_prefixes(scorer: Any, sessions: Sequence[Session], rule: EarlyRule,
                   normal_lines: frozenset[str] | set[str] | None, batch_size: int = 256) -> list[list[ScoredPrefix]]:
    """Every early window of each session (model.early.early_windows), scored with `scorer` (a LogScorer), in
    order; shortest windows batched together."""
    windows: list[list[str]] = []
    owners: list[tuple[int, int, str]] = []  # (session, end, trigger)
    for index, session in enumerate(sessions):
        novel = novel_flags([mask(line) for line in session.lines], normal_lines)
        for window in early_windows(list(session.lines), novel, rule):
            windows.append(window.items)
            owners.append((index, window.end, window.trigger))
    scores = score_in_length_order(scorer, windows, batch_size)
    out: list[list[ScoredPrefix]] = [[] for _ in sessions]
    for (index, end, trigger), window, score in zip(owners, windows, scores):
        out[index].append(ScoredPrefix(end, len(window), score, trigger))
    return out


def _cut(sorted_desc: np.ndarray, k: int, floor: float) -> float:
    """A threshold >= floor that flags at most the k highest of the scores `sorted_desc` (descending): the floor when
    that is enough, else halfway between the highest score it must not flag (>= floor) and the next higher one (or
    1.0), so scores that wobble in the last float digits keep their side; FLAG_NOTHING when the score it must not
    flag is 1.0."""
    if k >= len(sorted_desc) or sorted_desc[k] < floor:
        return floor  # the floor alone keeps every score it must not flag below it
    keep = float(sorted_desc[k])
    higher = sorted_desc[:k][sorted_desc[:k] > keep]
    cut = (keep + (float(higher.min()) if len(higher) else FLAG_NOTHING)) / 2
    if cut <= keep:  # no float between the two: the next one up
        cut = math.nextafter(keep, 2.0)
    return min(cut, FLAG_NOTHING)


def calibrate_early(normal: Sequence[Sequence[ScoredPrefix]], target_fpr: float, floor: float,
                    bounds: tuple[int, ...]) -> EarlyThresholds:
    """Early thresholds by window length (`bounds`; one bound = a single threshold) such that at most target_fpr
    of the `normal` sessions (each: its scored early windows) reach one, each threshold >= floor (the closing
    threshold). Each bucket cuts off the same share alpha of its normal windows' scores; alpha is the largest that
    keeps the target (bisection: the share of sessions alerted only grows with alpha)."""
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"early_target_fpr must be in [0, 1), got {target_fpr}")
    by_bucket: list[list[float]] = [[] for _ in bounds]
    for session in normal:
        for p in session:
            by_bucket[min(bisect.bisect_left(bounds, p.n_lines), len(bounds) - 1)].append(p.score)
    scores = [np.sort(np.asarray(b, dtype=np.float64))[::-1] for b in by_bucket]
    allowed = math.floor(target_fpr * len(normal) + 1e-9)

    def thresholds(alpha: float) -> EarlyThresholds:
        values = [_cut(s, math.floor(alpha * len(s) + 1e-9), floor) if len(s) else None for s in scores]
        known = [v for v in values if v is not None]
        # a length no normal eval prefix had gives nothing to calibrate on: the strictest of the others
        fallback = max(known) if known else floor
        return EarlyThresholds(bounds, tuple(fallback if v is None else v for v in values))

    def false_alarms(t: EarlyThresholds) -> int:
        return sum(1 for session in normal if any(t.flags(p.score, p.n_lines) for p in session))

    low, high = 0.0, 1.0
    if false_alarms(thresholds(high)) <= allowed:
        low = high
    else:
        for _ in range(40):
            mid = (low + high) / 2
            if false_alarms(thresholds(mid)) <= allowed:
                low = mid
            else:
                high = mid
    chosen = thresholds(low)
    logger.info("early thresholds %s: %d of %d normal eval sessions alert early (target %.4f)", chosen.to_config(),
                false_alarms(chosen), len(normal), target_fpr)
    return chosen


def closing_fpr(labels: Sequence[int], scores: Sequence[float], threshold: float) -> float:
    """Share of the normal sessions the closing threshold flags (0 without normal sessions)."""
    y = np.asarray(labels)
    flagged = anomalous(np.asarray(scores, dtype=np.float64), threshold)
    normal = y == 0
    return float(flagged[normal].mean()) if normal.any() else 0.0


@dataclass(frozen=True)
class SessionOutcome:
    """What the worker would do with one session: its first alert before the session's last line (end position, or
    None), and whether it alerts at all (early or at close)."""

    early_end: int | None
    alerted: bool


def session_outcomes(sessions: Sequence[Session], prefixes: Sequence[Sequence[ScoredPrefix]],
                     closing_scores: Sequence[float], threshold: float, early: EarlyThresholds | None,
                     window_scores: Sequence[Sequence[tuple[int, float]]] | None = None) -> list[SessionOutcome]:
    """Per session, the worker's decisions offline: an early alert is the first early window at or over its early
    threshold (or a regular window of a long session, before its last line, at or over the closing threshold, from
    `window_scores` (end, score)); the session alerts when it alerts early or its closing score reaches `threshold`."""
    out = []
    for i, session in enumerate(sessions):
        ends = []
        if early is not None:
            end = first_early_alert([(p.end, p.n_lines, p.score) for p in prefixes[i]], early)
            if end is not None:
                ends.append(end)
        if window_scores is not None:
            ends += [end for end, score in window_scores[i]
                     if end < len(session.lines) and is_anomalous(score, threshold)]
        early_end = min(ends) if ends else None
        closing = is_anomalous(closing_scores[i], threshold)
        out.append(SessionOutcome(early_end, early_end is not None or closing))
    return out


def regular_window_scores(scorer: Any, sessions: Sequence[Session], hop: int,
                          batch_size: int = 256) -> list[list[tuple[int, float]]]:
    """(end, score) of every window model.windowing scores with the closing threshold, per session."""
    windows: list[list[str]] = []
    owners: list[tuple[int, int]] = []
    for index, session in enumerate(sessions):
        lines = list(session.lines)
        for number, window in enumerate(session_windows(lines, scorer.max_window, hop)):
            full = scorer.max_window + number * hop  # windows end at max_window, + hop, ..., and the last at close
            owners.append((index, min(full, len(lines))))
            windows.append(window)
    out: list[list[tuple[int, float]]] = [[] for _ in sessions]
    scores = score_in_length_order(scorer, windows, batch_size)
    for (index, end), score in zip(owners, scores):
        out[index].append((end, score))
    return out


def prefix_windows(sessions: Sequence[Session], masked: Sequence[tuple[str, ...]], row_of: dict[str, int],
                   normal_lines: frozenset[str] | set[str], rule: EarlyRule,
                   seed: int) -> tuple[list[list[int]], list[int], list[int]]:
    """Training windows from the prefixes the worker scores early (training.train_on_prefixes): per session one of
    its early windows, drawn with `seed`: any of a normal session's, labelled normal; of an anomalous session's,
    one that already holds a line never seen in a normal session, labelled anomalous (an anomalous session's
    earlier prefixes may look exactly like a normal one's, so they are left out). A normal session's prefix whose
    lines, counted in any order, are those of a whole anomalous session is left out too: that the prefix is normal
    is only assumed, the anomalous session's label was observed (synthetic HDFS train: 1,746 blocks of just
    "receiving, receiving, allocate" are anomalous, and 4,885 of 5,666 normal blocks open with those three lines in
    some order). Returns (windows of table rows, labels, session index)."""
    rng = np.random.default_rng(seed)
    anomalous_bags = {_bag(row_of[line] for line in lines)
                      for session, lines in zip(sessions, masked) if session.label}
    windows: list[list[int]] = []
    labels: list[int] = []
    owners: list[int] = []
    for number, (session, lines) in enumerate(zip(sessions, masked)):
        novel = novel_flags(lines, normal_lines)
        candidates = early_windows([row_of[line] for line in lines], novel, rule)
        if session.label:
            first_novel = next((i + 1 for i, flag in enumerate(novel) if flag), None)
            candidates = [w for w in candidates if first_novel is not None and w.end >= first_novel]
        elif anomalous_bags:
            candidates = [w for w in candidates if _bag(w.items) not in anomalous_bags]
        if candidates:
            chosen = candidates[int(rng.integers(len(candidates)))]
            windows.append(chosen.items)
            labels.append(session.label)
            owners.append(number)
    return windows, labels, owners


def _bag(rows: Iterable[int]) -> frozenset[tuple[int, int]]:
    """The lines of a window counted, order ignored: (table row, count) pairs."""
    return frozenset(Counter(rows).items())


def early_report(sessions: Sequence[Session], outcomes: Sequence[SessionOutcome],
                 closing_scores: Sequence[float], threshold: float) -> dict[str, Any]:
    """What early scoring adds on labelled sessions: anomalous sessions alerted before their last line, normal
    sessions alerted early that closing would not flag, and session precision/recall with and without early
    alerts."""
    from train.metrics import classification_metrics

    labels = [s.label for s in sessions]
    closing = [1.0 if is_anomalous(score, threshold) else 0.0 for score in closing_scores]
    with_early = [1.0 if o.alerted else 0.0 for o in outcomes]
    anomalous_n = sum(labels)
    before_last = sum(1 for s, o in zip(sessions, outcomes)
                      if s.label and o.early_end is not None and o.early_end < len(s.lines))
    early_any = sum(1 for s, o in zip(sessions, outcomes) if s.label and o.early_end is not None)
    extra_fp = sum(1 for s, o, c in zip(sessions, outcomes, closing) if not s.label and o.alerted and not c)
    m_close = classification_metrics(labels, closing, 0.5)
    m_early = classification_metrics(labels, with_early, 0.5)
    return {
        "anomalous": anomalous_n,
        "alerted_before_last_line": before_last,
        "alerted_early": early_any,
        "share_before_last_line": before_last / anomalous_n if anomalous_n else 0.0,
        "normal_alerted_early_only": extra_fp,
        "closing": {k: m_close[k] for k in ("precision", "recall", "f1", "confusion_matrix")},
        "with_early": {k: m_early[k] for k in ("precision", "recall", "f1", "confusion_matrix")},
    }
