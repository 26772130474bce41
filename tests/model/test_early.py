from __future__ import annotations

import pytest

from model.configuration_logmoe import LogMoEConfig
from model.decision import FLAG_NOTHING
from model.early import HOP, NOVEL, EarlyRule, EarlyThresholds, early_windows, first_early_alert, novel_flags


def test_an_open_session_is_scored_every_early_hop_lines_in_its_first_window_and_at_once_on_a_novel_line() -> None:
    rule = EarlyRule(window=8, hop=4, early_hop=3)
    novel = [False] * 20
    novel[4] = novel[13] = True  # the 5th and 14th lines never occurred in a normal session
    windows = early_windows(list(range(20)), novel, rule)
    # early_hop steps (3, 6) until the first regular window (8); then regular windows every hop lines (12, 16, 20)
    # and a novel line still at once, at any length
    assert [(w.end, w.trigger) for w in windows] == [(3, HOP), (5, NOVEL), (6, HOP), (14, NOVEL)]
    assert windows[-1].items == list(range(6, 14))  # the last max_window lines


def test_no_early_window_where_a_regular_window_is_scored_anyway() -> None:
    rule = EarlyRule(window=8, hop=4, early_hop=1)
    windows = early_windows(list(range(20)), [True] * 20, rule)  # every line novel
    assert {w.end for w in windows} == set(range(1, 21)) - {8, 12, 16, 20}


def test_an_early_window_is_the_sessions_last_lines_up_to_max_window() -> None:
    rule = EarlyRule(window=4, hop=4, early_hop=1)
    novel = [False] * 6 + [True]
    windows = {w.end: w.items for w in early_windows(list("abcdefg"), novel, rule)}
    assert windows[2] == ["a", "b"]  # the whole prefix while the session is shorter than the window
    assert windows[7] == ["d", "e", "f", "g"]  # then the last max_window lines
    assert 4 not in windows  # the first full window is a regular one


def test_a_session_alerts_early_at_most_once_per_window_of_lines() -> None:
    rule = EarlyRule(window=8, hop=8, early_hop=2)
    assert rule.may_alert(3, early_alerted_at=-1)
    assert not rule.may_alert(10, early_alerted_at=3)
    assert rule.may_alert(11, early_alerted_at=3)


@pytest.mark.parametrize("window, hop, early_hop", [(0, 1, 1), (4, 0, 1), (4, 2, 0), (4, 2, True)])
def test_bad_rule_sizes_are_refused_with_the_value(window: int, hop: int, early_hop: int) -> None:
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        EarlyRule(window, hop, early_hop)


def test_thresholds_by_length_pick_the_bucket_of_a_windows_line_count() -> None:
    t = EarlyThresholds.from_config([[2, FLAG_NOTHING], [8, 0.9], [64, 0.7]])
    assert [t.for_length(n) for n in (1, 2, 3, 8, 9, 64, 100)] == [1.0, 1.0, 0.9, 0.9, 0.7, 0.7, 0.7]
    assert not t.can_flag(2) and t.can_flag(3)
    assert not t.flags(1.0, 2)  # a threshold of 1.0 flags nothing, not even a score of 1.0
    assert t.flags(0.95, 5) and not t.flags(0.85, 5)
    assert EarlyThresholds.from_config(t.to_config()) == t


@pytest.mark.parametrize("pairs, message", [
    ([], "at least one"), ([[2, 0.5], [2, 0.6]], "increasing"), ([[4, 1.5]], r"in \[0, 1\]"),
    ([[4.5, 0.5]], "integer"), ("0.5", "list of"), ([[0, 0.5]], ">= 1"),
])
def test_bad_early_thresholds_are_refused_naming_the_value(pairs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EarlyThresholds.from_config(pairs)
    with pytest.raises(ValueError, match=message):
        LogMoEConfig(early_thresholds=pairs)


def test_the_first_early_alert_is_the_first_window_over_its_lengths_threshold() -> None:
    t = EarlyThresholds.from_config([[2, 0.99], [64, 0.5]])
    assert first_early_alert([(2, 2, 0.9), (4, 4, 0.4), (6, 6, 0.6)], t) == 6
    assert first_early_alert([(2, 2, 0.995), (6, 6, 0.6)], t) == 2
    assert first_early_alert([(2, 2, 0.9)], t) is None


def test_novel_means_never_in_a_normal_training_session() -> None:
    assert novel_flags(["a", "b", "c"], frozenset({"a", "c"})) == [False, True, False]
    assert novel_flags(["a", "b"], None) == [False, False]  # a model without normal_lines.json: no novel trigger


def test_a_config_without_early_keys_has_no_early_scoring() -> None:
    """Model folders written before early scoring: their config.json has none of the keys."""
    config = LogMoEConfig.from_dict({"model_type": "logmoe", "threshold": 0.4})
    assert config.early_hop == 0 and config.early_thresholds is None and config.early_target_fpr is None
    with pytest.raises(ValueError, match="early_hop"):
        LogMoEConfig(early_hop=-2)
    with pytest.raises(ValueError, match="early_target_fpr"):
        LogMoEConfig(early_target_fpr=1.5)
