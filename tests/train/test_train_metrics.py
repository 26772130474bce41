"""Session metrics and threshold calibration."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest

from train.metrics import between, calibrate_threshold, classification_metrics


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


def test_f1_threshold_separates_at_the_geometric_midpoint() -> None:
    labels = [0, 0, 0, 1, 1]
    scores = [0.05, 0.2, 0.3, 0.4, 0.9]
    threshold = calibrate_threshold(labels, scores, "f1")
    assert threshold == pytest.approx(math.sqrt(0.3 * 0.4))  # between 0.3 (normal) and 0.4 (the lowest anomaly)
    assert classification_metrics(labels, scores, threshold)["f1"] == 1.0


def test_a_wide_gap_is_cut_in_log_score_so_a_later_anomaly_scoring_lower_is_still_caught() -> None:
    """Measured on real HDFS (bench_real --calibrate-on later-train, seed 42): calibration normals score <= 3.4e-4,
    anomalies >= 0.999; a later period's anomalies scored 0.06-0.11 and its normals <= 2.9e-4. Halfway (0.5) missed
    13 of 47 of them; the cut in log score (0.018) caught all 47 and flagged no normal."""
    labels = [0] * 50 + [1] * 5
    scores = [3.35e-4 * (i + 1) / 50 for i in range(50)] + [0.999] * 5
    threshold = calibrate_threshold(labels, scores, "f1")
    assert threshold == pytest.approx(math.sqrt(3.35e-4 * 0.999))
    later = classification_metrics([0, 0, 1, 1], [2.9e-4, 1e-4, 0.0566, 0.113], threshold)
    assert later["confusion_matrix"] == [[2, 0], [0, 2]]


def test_between_is_the_geometric_mean_halfway_from_zero_and_refuses_an_empty_gap() -> None:
    assert between(1e-4, 1.0) == pytest.approx(1e-2)
    assert between(0.0, 0.6) == pytest.approx(0.3)  # a log midpoint with 0 would be 0, flagging the 0 below it
    assert between(1e-300, 1.0) == pytest.approx(1e-150)  # no underflow of low * high
    for low, high in ((0.5, 0.5), (0.6, 0.5), (-0.1, 0.5)):
        with pytest.raises(ValueError, match=rf"^between needs 0 <= low < high \({low}, {high}\)$"):
            between(low, high)


def test_fpr_threshold_respects_the_target() -> None:
    labels = [0] * 10 + [1] * 4
    scores = [i / 100 for i in range(10)] + [0.095, 0.5, 0.6, 0.7]  # one anomaly scores below one normal (0.09)
    assert calibrate_threshold(labels, scores, "fpr", target_fpr=0.0) == pytest.approx(math.sqrt(0.095 * 0.09))
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


def test_precision_recall_and_f1_when_counts_meet_or_nothing_is_flagged() -> None:
    m = classification_metrics([0, 1, 1, 0], [0.9, 0.8, 0.1, 0.2], threshold=0.5)  # tp = fp = fn = tn = 1
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    nothing = classification_metrics([0, 1, 1], [0.1, 0.2, 0.3], threshold=0.9)  # nothing flagged
    assert (nothing["precision"], nothing["recall"], nothing["f1"], nothing["accuracy"]) == (0.0, 0.0, 0.0, 1 / 3)
    assert classification_metrics([], [], 0.5)["accuracy"] == 0.0


def test_one_anomaly_is_two_classes_and_has_aucs() -> None:
    m = classification_metrics([0, 0, 1], [0.1, 0.3, 0.2], 0.5)
    assert m["roc_auc"] == pytest.approx(0.5) and m["pr_auc"] == pytest.approx(0.5)


def test_labels_and_scores_of_different_lengths_are_refused_with_both_lengths() -> None:
    with pytest.raises(ValueError, match=r"^labels and scores differ in length \(3 vs 2\)$"):
        classification_metrics([0, 1, 0], [0.1, 0.2], 0.5)


def best_cut_by_hand(labels: list[int], scores: list[float], objective: str, target_fpr: float = 0.01) -> float:
    """The oracle: try every distinct score as the lowest anomalous one; F1 (ties: the lower cut) or, for "fpr",
    the lowest cut whose false-positive rate is within target; then the geometric mean with the next lower score
    (halfway when that score is 0)."""
    best, best_value, values = None, Fraction(-1), []
    for cut in sorted(set(scores)):
        tp = sum(1 for y, s in zip(labels, scores) if s >= cut and y == 1)
        fp = sum(1 for y, s in zip(labels, scores) if s >= cut and y == 0)
        fn = sum(1 for y, s in zip(labels, scores) if s < cut and y == 1)
        if objective == "f1":
            value = Fraction(2 * tp, 2 * tp + fp + fn)
        else:
            value = Fraction(1 if fp / labels.count(0) <= target_fpr else -1)
        values.append(value)
        if value > best_value:
            best, best_value = cut, value
    assert objective != "f1" or values.count(best_value) == 1, "a tie for the best F1 (sklearn breaks it by rounding)"
    below = [s for s in scores if s < best]
    if not below:
        return best
    return math.sqrt(best * max(below)) if max(below) > 0 else best / 2


@pytest.mark.parametrize("seed", range(1, 7))  # seeds whose best F1 is not a tie
def test_calibration_picks_the_cut_an_exhaustive_search_picks(seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = [int(x) for x in rng.random(40) < 0.3]
    scores = [round(float(s), 3) for s in np.clip(rng.normal(0.35, 0.2, 40) + 0.3 * np.array(labels), 0, 1)]
    if not 0 < sum(labels) < len(labels):
        pytest.skip("one class drawn")
    assert calibrate_threshold(labels, scores, "f1") == pytest.approx(best_cut_by_hand(labels, scores, "f1"))
    for target in (0.0, 0.1, 0.25):
        assert calibrate_threshold(labels, scores, "fpr", target_fpr=target) == \
            pytest.approx(best_cut_by_hand(labels, scores, "fpr", target)), target


def test_calibration_on_scores_that_carry_little_signal() -> None:
    """The best F1 there has precision + recall < 1, where a floor on the denominator would change the pick."""
    import numpy as np

    rng = np.random.default_rng(1)
    labels = [int(x) for x in rng.random(30) < 0.3]
    scores = [round(float(x), 3) for x in rng.random(30)]
    assert calibrate_threshold(labels, scores, "f1") == pytest.approx(best_cut_by_hand(labels, scores, "f1"))


def test_float32_scores_keep_their_side_of_a_threshold_between_two_neighbours() -> None:
    """Scores as torch hands them over (float32 arrays): the threshold halfway between two adjacent float32 values
    is not a float32 value, so the comparison must run in float64 or one of the two lands on the wrong side."""
    import numpy as np

    low = np.float32(0.5)
    high = np.nextafter(low, np.float32(1.0))
    scores = np.array([low, high], dtype=np.float32)
    threshold = calibrate_threshold([0, 1], scores, "f1")
    assert float(low) < threshold < float(high)
    assert classification_metrics([0, 1], scores, threshold)["confusion_matrix"] == [[1, 0], [0, 1]]


def test_one_anomaly_is_calibrated_and_all_anomalous_labels_have_no_auc() -> None:
    assert calibrate_threshold([0, 0, 1], [0.1, 0.2, 0.3], "f1", default=0.9) == pytest.approx(math.sqrt(0.06))
    m = classification_metrics([1, 1], [0.2, 0.9], 0.5)
    assert m["pr_auc"] is None and m["roc_auc"] is None and m["confusion_matrix"] == [[0, 0], [1, 1]]


def test_calibration_defaults_f1_target_fpr_001_and_05_for_one_class(caplog: pytest.LogCaptureFixture) -> None:
    labels = [0] * 120 + [1] * 5
    scores = [i / 1000 for i in range(120)] + [0.119, 0.5, 0.6, 0.7, 0.8]  # one anomaly under the top normal
    assert calibrate_threshold(labels, scores) == calibrate_threshold(labels, scores, "f1")
    # target_fpr 0.01 of 120 normals allows one false positive: the cut goes down to the anomaly at 0.119
    assert calibrate_threshold(labels, scores, "fpr") == pytest.approx(math.sqrt(0.119 * 0.118))
    assert calibrate_threshold(labels, scores, "fpr", target_fpr=0.0) == pytest.approx(math.sqrt(0.5 * 0.119))
    with caplog.at_level("WARNING", logger="train.metrics"):
        assert calibrate_threshold([0, 0], [0.2, 0.9]) == 0.5
    assert caplog.messages == ["threshold not calibrated: the eval labels hold one class; keeping 0.500"]
    assert calibrate_threshold([1], [0.3], default=0.25) == 0.25


def test_unknown_objective_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown threshold objective \('auc'\); expected one of f1, fpr$"):
        calibrate_threshold([0, 1], [0.1, 0.9], "auc")
