from __future__ import annotations

import numpy as np
import pytest

from model.decision import FLAG_NOTHING
from model.early import EarlyRule, EarlyThresholds
from train.data import Session
from train.early import (ScoredPrefix, _cut, calibrate_early, closing_fpr, early_report, length_bounds,
                         prefix_windows, session_outcomes)


def _normal(*windows: tuple[int, float]) -> list[ScoredPrefix]:
    """One normal session's early windows as (n_lines, score)."""
    return [ScoredPrefix(end=n, n_lines=n, score=s, trigger="hop") for n, s in windows]


def _alerted(normal: list[list[ScoredPrefix]], t: EarlyThresholds) -> int:
    return sum(1 for s in normal if any(t.flags(p.score, p.n_lines) for p in s))


def test_at_most_the_target_share_of_normal_sessions_alert_early_and_never_below_the_closing_threshold() -> None:
    rng = np.random.default_rng(0)
    normal = [_normal(*((n, float(rng.uniform(0, 1))) for n in (2, 4, 8))) for _ in range(200)]
    for target in (0.0, 0.01, 0.05, 0.2):
        for bounds in ((64,), length_bounds(64)):
            t = calibrate_early(normal, target, floor=0.3, bounds=bounds)
            assert _alerted(normal, t) <= int(target * 200)
            assert min(t.values) >= 0.3
    # a looser target never gives stricter thresholds
    loose, strict = (calibrate_early(normal, x, 0.3, (64,)) for x in (0.2, 0.01))
    assert loose.values[0] < strict.values[0]


def test_per_length_thresholds_keep_a_length_whose_normal_prefixes_look_anomalous_from_deciding_every_length() -> None:
    """Normal sessions cut after two lines score like truncated anomalies (0.95-0.99); longer normal prefixes score
    low. One threshold must sit above 0.99 for every length; per length, the 3-8 line bucket gets a low one."""
    normal = [_normal((2, 0.95 + 0.0004 * i), (8, 0.1 + 0.001 * i)) for i in range(100)]
    anomaly = [ScoredPrefix(2, 2, 0.97, "hop"), ScoredPrefix(8, 8, 0.6, "hop")]
    single = calibrate_early(normal, 0.0, floor=0.5, bounds=(64,))
    per_length = calibrate_early(normal, 0.0, floor=0.5, bounds=length_bounds(64))
    assert _alerted(normal, single) == _alerted(normal, per_length) == 0
    assert not any(single.flags(p.score, p.n_lines) for p in anomaly)
    assert [p.end for p in anomaly if per_length.flags(p.score, p.n_lines)] == [8]
    assert per_length.for_length(2) > 0.99 and per_length.for_length(8) == 0.5  # the closing threshold is the floor


def test_a_length_no_normal_prefix_had_takes_the_strictest_calibrated_threshold() -> None:
    normal = [_normal((2, 0.2 + 0.001 * i), (4, 0.6 + 0.001 * i)) for i in range(100)]
    t = calibrate_early(normal, 0.0, floor=0.1, bounds=length_bounds(64))
    assert t.for_length(40) == max(t.for_length(2), t.for_length(4)) == t.for_length(4)


def test_a_cut_lies_halfway_above_the_highest_score_kept_and_a_kept_score_of_one_flags_nothing() -> None:
    scores = np.array([0.9, 0.8, 0.4, 0.2])
    assert _cut(scores, 1, floor=0.0) == pytest.approx(0.85)  # flag only 0.9
    assert _cut(scores, 0, floor=0.0) == pytest.approx(0.95)  # flag none of them: halfway to 1.0
    assert _cut(scores, 4, floor=0.3) == 0.3  # flag all: the floor
    assert _cut(scores, 2, floor=0.5) == 0.5  # the floor already keeps 0.4 unflagged
    assert _cut(np.array([1.0, 0.5]), 0, floor=0.0) == FLAG_NOTHING
    with pytest.raises(ValueError, match="early_target_fpr"):
        calibrate_early([], 1.0, 0.5, (64,))


def test_the_closing_false_positive_share_is_of_normal_sessions() -> None:
    assert closing_fpr([0, 0, 0, 0, 1], [0.9, 0.1, 0.2, 0.3, 0.95], threshold=0.5) == 0.25


def test_outcomes_count_early_alerts_before_the_last_line_and_extra_false_alarms_apart() -> None:
    sessions = [Session("a", ("x",) * 6, 1), Session("b", ("x",) * 4, 1), Session("n", ("x",) * 4, 0),
                Session("m", ("x",) * 4, 0)]
    prefixes = [[ScoredPrefix(2, 2, 0.1, "hop"), ScoredPrefix(4, 4, 0.95, "novel")],  # early, before its last line
                [ScoredPrefix(4, 4, 0.95, "hop")],  # early at its last line, before the idle close
                [ScoredPrefix(2, 2, 0.95, "hop")],  # a normal session alerted early only
                []]
    t = EarlyThresholds.single(0.9, 64)
    outcomes = session_outcomes(sessions, prefixes, closing_scores=[0.2, 0.2, 0.2, 0.7], threshold=0.5, early=t)
    assert [o.early_end for o in outcomes] == [4, 4, 2, None]
    report = early_report(sessions, outcomes, [0.2, 0.2, 0.2, 0.7], 0.5)
    assert report["alerted_before_last_line"] == 1 and report["alerted_early"] == 2
    assert report["normal_alerted_early_only"] == 1
    assert report["closing"]["recall"] == 0.0 and report["with_early"]["recall"] == 1.0
    assert report["with_early"]["precision"] == pytest.approx(2 / 4)


def test_a_regular_window_of_a_long_session_over_the_closing_threshold_alerts_before_close() -> None:
    sessions = [Session("long", ("x",) * 80, 1), Session("ends", ("x",) * 64, 1)]
    windows = [[(64, 0.7), (80, 0.9)], [(64, 0.9)]]  # (end, score) of the windows the closing threshold judges
    outcomes = session_outcomes(sessions, [[], []], closing_scores=[0.9, 0.9], threshold=0.5, early=None,
                                window_scores=windows)
    assert [o.early_end for o in outcomes] == [64, None]  # the window at a session's last line is its closing one
    assert all(o.alerted for o in outcomes)


def test_prefixes_of_anomalous_sessions_train_only_once_they_hold_a_never_normal_line() -> None:
    rule = EarlyRule(window=64, hop=16, early_hop=1)
    sessions = [Session("n", ("a", "b", "a"), 0), Session("x", ("a", "b", "BOOM", "a"), 1),
                Session("y", ("a", "b"), 1)]
    masked = [s.lines for s in sessions]
    row_of = {"a": 0, "b": 1, "BOOM": 2}
    for seed in range(5):
        windows, labels, owners = prefix_windows(sessions, masked, row_of, frozenset({"a", "b"}), rule, seed)
        assert owners == [0, 1]  # y holds no never-normal line: none of its prefixes is known to be anomalous
        assert labels == [0, 1]
        assert 2 in windows[1]  # the anomalous prefix holds BOOM


def test_a_normal_prefix_holding_exactly_an_anomalous_sessions_lines_is_never_trained_as_normal() -> None:
    rule = EarlyRule(window=64, hop=16, early_hop=1)
    # y (anomalous, no never-normal line) holds the lines of n's first two, in the other order
    sessions = [Session("n", ("a", "b", "c"), 0), Session("y", ("b", "a"), 1)]
    masked = [s.lines for s in sessions]
    row_of = {"a": 0, "b": 1, "c": 2}
    drawn = {tuple(prefix_windows(sessions, masked, row_of, frozenset(row_of), rule, seed)[0][0])
             for seed in range(20)}
    assert drawn == {(0,), (0, 1, 2)}  # never (0, 1); a longer bag ("a", "b", "c") is not y's
    unlabelled = [Session(s.session_id, s.lines, 0) for s in sessions]  # nothing observed as anomalous: all drawn
    assert {tuple(prefix_windows(unlabelled, masked, row_of, frozenset(row_of), rule, seed)[0][0])
            for seed in range(20)} == {(0,), (0, 1), (0, 1, 2)}
