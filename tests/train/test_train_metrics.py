"""Session metrics and threshold calibration."""
from __future__ import annotations

import pytest

from train.metrics import calibrate_threshold, classification_metrics


def test_metrics_by_hand() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.7, 0.6, 0.8, 0.3]
    m = classification_metrics(labels, scores, threshold=0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 6)
    assert m["n"] == 6 and m["n_anomalous"] == 3 and m["threshold"] == 0.5
    assert m["roc_auc"] == pytest.approx(7 / 9)  # 7 of 9 (anomaly, normal) pairs ranked right
    assert 0 < m["pr_auc"] < 1


def test_single_class_has_no_auc() -> None:
    m = classification_metrics([0, 0, 0], [0.1, 0.9, 0.2], 0.5)
    assert m["pr_auc"] is None and m["roc_auc"] is None
    assert m["confusion_matrix"] == [[2, 1], [0, 0]] and m["recall"] == 0.0


def test_f1_threshold_separates_at_a_midpoint() -> None:
    labels = [0, 0, 0, 1, 1]
    scores = [0.05, 0.2, 0.3, 0.4, 0.9]
    threshold = calibrate_threshold(labels, scores, "f1")
    assert threshold == pytest.approx(0.35)  # halfway between 0.3 (normal) and 0.4 (the lowest anomaly)
    assert classification_metrics(labels, scores, threshold)["f1"] == 1.0


def test_fpr_threshold_respects_the_target() -> None:
    labels = [0] * 10 + [1] * 4
    scores = [i / 100 for i in range(10)] + [0.095, 0.5, 0.6, 0.7]  # one anomaly scores below one normal (0.09)
    assert calibrate_threshold(labels, scores, "fpr", target_fpr=0.0) == pytest.approx((0.095 + 0.09) / 2)
    threshold = calibrate_threshold(labels, scores, "fpr", target_fpr=0.1)
    m = classification_metrics(labels, scores, threshold)
    assert m["recall"] == 1.0 and m["confusion_matrix"][0][1] <= 1


def test_single_class_keeps_the_default_threshold() -> None:
    assert calibrate_threshold([1, 1], [0.2, 0.9], "f1", default=0.5) == 0.5


def test_unknown_objective_is_named() -> None:
    with pytest.raises(ValueError, match="'auc'"):
        calibrate_threshold([0, 1], [0.1, 0.9], "auc")


def test_fpr_fallback_flags_nothing_even_when_scores_saturate_at_one() -> None:
    """Issue 18.7: float32 softmax gives exactly 1.0 often; the fallback threshold was 1.0 and `score >= 1.0`
    flagged the very normals that broke the target (FPR 0.33 against 0.01)."""
    labels = [0, 0, 0, 1, 1]
    scores = [1.0, 0.3, 0.2, 1.0, 0.4]  # a normal at 1.0: no threshold keeps the FPR at 0 and flags anything
    threshold = calibrate_threshold(labels, scores, "fpr", target_fpr=0.0)
    m = classification_metrics(labels, scores, threshold)
    assert m["confusion_matrix"] == [[3, 0], [2, 0]]  # flag nothing means nothing


def test_a_threshold_meant_to_flag_scores_of_one_stays_below_one() -> None:
    labels = [0, 1, 1]
    scores = [1.0, 1.0, 1.0]  # F1 is best when everything is flagged
    threshold = calibrate_threshold(labels, scores, "f1")
    assert threshold < 1.0 and classification_metrics(labels, scores, threshold)["confusion_matrix"] == [[0, 1], [0, 2]]


def test_the_decision_rule_is_one_for_scalars_and_arrays() -> None:
    import numpy as np

    from model.decision import anomalous, is_anomalous

    scores = np.array([0.0, 0.5, 0.99, 1.0])
    for threshold in (0.0, 0.5, 1.0):
        assert anomalous(scores, threshold).tolist() == [is_anomalous(float(x), threshold) for x in scores]
    assert not anomalous(scores, 1.0).any() and anomalous(scores, 0.0).all()
