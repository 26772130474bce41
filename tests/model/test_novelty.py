"""Novelty calibration: groups of never-seen lines, the calibrated margin and its line shares, the fit on eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.novelty import (FEATURES, GROUPS, SEEN, CrossFit, NoveltyCalibration, fit_novelty, line_group,
                           row_features, window_flags)

FATAL, ERROR, WARN, OTHER = range(len(GROUPS))


@pytest.mark.parametrize(("line", "group"), [
    ("<NUM> <TS> <ID> RAS KERNEL FATAL Lustre mount FAILED : <ID> : point <PATH>", FATAL),
    ("<TS> RAS KERNEL FAILURE machine check", FATAL),
    ("kernel: critical temperature reached", FATAL),
    ("<TS> ERROR dfs.DataNode: writeBlock received exception java.io.IOException", ERROR),
    ("java.io.IOException: Connection reset by peer", ERROR),  # a stack trace line: no level, an exception
    ("<TS> WARN dfs.DataNode: slow flush, error count <NUM>", WARN),
    ("<TS> RAS KERNEL INFO critical input interrupt (unit=<HEX>): warning for torus z+ wire", OTHER),
    ("<TS> INFO org.apache.Client: got java.io.IOException: Connection reset", OTHER),
    ("<TS> INFO dfs.DataNode: Receiving block <ID>", OTHER),
    ("errors=0 terror alerted", OTHER),  # words inside other words do not count
])
def test_a_never_seen_line_is_grouped_by_its_first_level_word(line: str, group: int) -> None:
    assert line_group(line) == group


def test_rows_and_windows_flag_only_lines_training_never_held() -> None:
    seen = frozenset({"INFO a", "FATAL known"})
    rows = ["INFO a", "FATAL new", "WARN new", "FATAL known", "INFO new"]
    assert row_features(rows, seen).tolist() == [SEEN, FATAL, WARN, SEEN, OTHER]
    assert window_flags(["INFO a", "FATAL known"], seen) == [0.0] * 8
    assert window_flags(["INFO a", "FATAL new", "FATAL other new"], seen) == [1.0, 0.0, 0.0, 0.0] + [0.0] * 4
    assert window_flags(["INFO new", "WARN new"], seen) == [0.0, 0.0, 1.0, 1.0] + [0.0] * 4
    # a failure-like never-seen line (its nearest seen line only failures held) has a feature of its own
    failure_like = frozenset({"FATAL new"})
    assert row_features(rows, seen, failure_like).tolist() == [SEEN, FATAL + 4, WARN, SEEN, OTHER]
    assert window_flags(["FATAL new", "FATAL other new"], seen, failure_like) == [1.0, 0, 0, 0, 1.0, 0, 0, 0]


def test_a_never_seen_line_carries_its_groups_weight_in_place_of_what_the_classifier_said() -> None:
    calibration = NoveltyCalibration(scale=0.5, bias=-1.0, weights=(4.0, 0.0, 2.0, -1.0),
                                     failure_like_weights=(6.0, 0.0, 0.0, 0.0))
    margin = torch.tensor([2.0, -6.0])  # (b,)
    line_scores = torch.tensor([[1.0, 0.5, 0.5, 0.0], [-2.0, -2.0, -1.0, -1.0]])  # (b, T), window 0 padded at 3
    base = margin - line_scores.sum(dim=1)
    # window 0: a fatal line like a normal one, and a failure-like fatal line (feature FATAL + 4)
    groups = torch.tensor([[SEEN, FATAL, FATAL + 4, SEEN], [OTHER, SEEN, WARN, SEEN]])
    calibrated, shares = calibration.apply(margin, line_scores, groups)
    # the seen lines' margin (2 - 0.5 - 0.5; -6 + 2 + 1), scaled, plus each present feature's weight once
    assert calibrated.tolist() == pytest.approx([0.5 * 1 - 1 + 4 + 6, 0.5 * -3 - 1 + 2 - 1])
    assert shares[0].tolist() == pytest.approx([0.5, 4, 6, 0.0])
    assert shares[1].tolist() == pytest.approx([-1, -1, 2, -0.5])
    assert (shares.sum(dim=1) + 0.5 * base - 1.0).tolist() == pytest.approx(calibrated.tolist())
    two = torch.tensor([[SEEN, FATAL, FATAL, SEEN], [OTHER, SEEN, WARN, SEEN]])  # two lines of one feature
    calibrated, shares = calibration.apply(margin, line_scores, two)
    assert calibrated[0] == pytest.approx(0.5 * 1 - 1 + 4) and shares[0].tolist() == pytest.approx([0.5, 2, 2, 0])


def test_a_model_calibrated_before_never_seen_shares_existed_adds_the_weights_to_the_whole_margin() -> None:
    stored = {"scale": 0.5, "bias": -1.0, "weights": {"fatal": 4.0, "error": 0.0, "warn": 2.0, "other": -1.0}}
    calibration = NoveltyCalibration.from_config(stored)  # as written before 2026-12-05
    assert calibration.never_seen_shares == "added" and calibration.failure_like_weights is None
    margin = torch.tensor([2.0, -6.0])  # (b,)
    line_scores = torch.tensor([[1.0, 0.5, 0.5, 0.0], [-2.0, -2.0, -1.0, -1.0]])  # (b, T)
    # failure-like or not, a never-seen line weighs as its group did: one weight per group
    groups = torch.tensor([[SEEN, FATAL, FATAL + 4, SEEN], [OTHER, SEEN, WARN, SEEN]])
    calibrated, shares = calibration.apply(margin, line_scores, groups)
    assert calibrated.tolist() == pytest.approx([0.5 * 2 - 1 + 4, 0.5 * -6 - 1 + 2 - 1])
    assert shares[0].tolist() == pytest.approx([0.5, 0.25 + 2, 0.25 + 2, 0.0])
    assert shares[1].tolist() == pytest.approx([-1 - 1, -1, -0.5 + 2, -0.5])


def test_config_round_trip_and_bad_values_are_named() -> None:
    calibration = NoveltyCalibration(1.5, -0.5, (3.0, 0.0, 0.0, -1.0), failure_like_weights=(5.0, 0.0, 0.0, 1.0))
    assert NoveltyCalibration.from_config(calibration.to_config()) == calibration
    with pytest.raises(ValueError, match="weights must name the groups .* got None"):
        NoveltyCalibration.from_config({**calibration.to_config(), "weights": None})
    with pytest.raises(ValueError, match="failure_like_weights must name the groups"):
        NoveltyCalibration.from_config({**calibration.to_config(), "failure_like_weights": {"fatal": 1}})
    with pytest.raises(ValueError, match="failure_like_weights must be 4 finite numbers"):
        NoveltyCalibration(1.0, 0.0, (0.0,) * 4, failure_like_weights=(1.0, float("inf"), 0.0, 0.0))
    with pytest.raises(ValueError, match="scale must be a finite number > 0, got 0.0"):
        NoveltyCalibration.from_config({**calibration.to_config(), "scale": 0})
    with pytest.raises(ValueError, match="must name the groups .* got \\{'fatal': 1\\}"):
        NoveltyCalibration.from_config({**calibration.to_config(), "weights": {"fatal": 1}})
    with pytest.raises(ValueError, match="must map scale, bias, weights, failure_like_weights and never_seen_shares"):
        NoveltyCalibration.from_config({"scale": 1})
    with pytest.raises(ValueError, match="never_seen_shares must be one of replaced, added, got 'dropped'"):
        NoveltyCalibration.from_config({**calibration.to_config(), "never_seen_shares": "dropped"})
    with pytest.raises(ValueError, match="4 finite numbers"):
        NoveltyCalibration(1.0, 0.0, (float("nan"), 0.0, 0.0, 0.0))


def _eval_period(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """400 sessions: the classifier ranks the known failures; a new failure category (a never-seen fatal line)
    scores like normal sessions, and new plain lines come with normal drift."""
    n = 400
    labels = np.zeros(n, dtype=int)
    labels[:40] = 1
    scores = rng.uniform(1e-4, 1e-2, n)
    scores[:20] = rng.uniform(0.9, 0.999, 20)  # known failures, ranked
    flags = np.zeros((n, FEATURES))
    flags[20:40, FATAL] = 1.0  # the new category: never-seen fatal lines, low classifier scores
    flags[40:60, FATAL] = rng.uniform(size=20) < 0.1  # a few normal sessions hold one too
    flags[60:160, OTHER] = 1.0  # drift: new plain lines in normal sessions
    return scores, flags, labels


def test_the_fit_raises_what_a_new_fatal_line_says_and_leaves_absent_groups_at_zero() -> None:
    scores, flags, labels = _eval_period(np.random.default_rng(0))
    fitted = fit_novelty(scores, flags, labels)
    assert fitted is not None and fitted.crossfit_scores is None
    calibration = fitted.calibration
    assert calibration.scale > 0
    fatal, error, warn, other = calibration.weights
    assert fatal > 3.0 and other < fatal and error == 0.0 and warn == 0.0
    margin = torch.tensor(np.log(scores) - np.log1p(-scores), dtype=torch.float32)
    groups = torch.full((len(scores), 1), SEEN)
    groups[flags[:, FATAL] > 0, 0] = FATAL
    calibrated, _ = calibration.apply(margin, torch.zeros(len(scores), 1), groups)
    new_category = calibrated[20:40].min()
    assert new_category > torch.quantile(calibrated[60:], 0.9)  # now above nearly all normal sessions
    assert calibrated[:20].min() > calibrated[160:].max()  # the known failures keep their rank


def test_nothing_is_fitted_without_never_seen_lines_or_without_both_classes() -> None:
    scores, flags, labels = _eval_period(np.random.default_rng(1))
    assert fit_novelty(scores, np.zeros_like(flags), labels) is None
    assert fit_novelty(scores, flags, np.zeros_like(labels)) is None


def _scored_part(rng: np.random.Generator, n: int, inflate: float, new_category: bool) -> CrossFit:
    """n sessions labelled from a latent risk z, scored sigmoid(inflate * z); with new_category, 8% more failures
    that only a never-seen fatal line shows (the classifier scores them as it scores anything)."""
    z = rng.normal(-3.0, 2.5, n)
    labels = (rng.uniform(size=n) < 1 / (1 + np.exp(-z))).astype(int)
    flags = np.zeros((n, FEATURES))
    if new_category:
        new = rng.uniform(size=n) < 0.08
        labels[new], flags[new, FATAL] = 1, 1.0
    scores = 1 / (1 + np.exp(-inflate * z))
    return CrossFit(scores, flags, labels, scores)


def test_the_crossfit_teaches_what_eval_cannot_and_eval_keeps_its_own_scale() -> None:
    rng = np.random.default_rng(0)
    evaluated = _scored_part(rng, 600, 8.0, new_category=False)  # an overconfident final model, no new lines
    crossfit = _scored_part(rng, 1200, 1.0, new_category=True)
    assert fit_novelty(evaluated.scores, evaluated.flags, evaluated.labels) is None  # eval alone: nothing to learn
    fitted = fit_novelty(evaluated.scores, evaluated.flags, evaluated.labels, crossfit)
    assert fitted is not None and fitted.crossfit_scores is not None
    calibration = fitted.calibration
    assert calibration.weights[FATAL] > 5.0 and calibration.weights[OTHER] == 0.0
    # the eval margins are 8x the true log-odds: the eval scale undoes that, whatever the cross-fit's margins
    assert 0.1 < calibration.scale < 0.2
    # the cross-fit sessions come back calibrated: the new category now above nearly all of its normal sessions
    calibrated, labels = np.asarray(fitted.crossfit_scores), np.asarray(crossfit.labels)
    new = np.asarray(crossfit.flags)[:, FATAL] > 0
    assert calibrated.shape == labels.shape and calibrated[new].min() > np.quantile(calibrated[labels == 0], 0.9)


def test_the_fit_weighs_each_class_as_a_whole_not_each_session() -> None:
    # 2% failures: fitted session by session, the many normal sessions would set what a new line is worth
    rng = np.random.default_rng(4)
    labels = (rng.uniform(size=2000) < 0.02).astype(int)
    z = np.where(labels == 1, rng.normal(1.0, 1.5, labels.size), rng.normal(-3.0, 1.5, labels.size))
    scores = 1 / (1 + np.exp(-z))
    flags = np.zeros((labels.size, FEATURES))
    flags[:, FATAL] = np.where(labels == 1, rng.uniform(size=labels.size) < 0.6, rng.uniform(size=labels.size) < 0.03)
    fitted = fit_novelty(scores, flags, labels)
    assert fitted is not None
    c = fitted.calibration
    p = 1 / (1 + np.exp(-(c.scale * np.log(scores / (1 - scores)) + c.bias + flags @ np.asarray(c.feature_weights))))
    # balanced: the failures' mean shortfall equals the normal sessions' mean score (by session: 2% on average)
    assert np.mean(1 - p[labels == 1]) == pytest.approx(np.mean(p[labels == 0]), abs=0.02)
    assert np.mean(p) > 0.1
