"""Novelty calibration: what a never-seen line is worth, learned on the eval period.

A line that training never held is evidence the classifier cannot weigh from its training data alone: inside the
training period almost every line recurs, so hardly any training window holds a new one. A later period holds many,
and what they mean depends on what they say: on BGL a new FATAL line is nearly always a new failure category (73 of
82 anomalous windows of the later part of train hold one, 15 of 1,196 normal ones do), while new INFO or ERROR lines
are mostly the workload drifting. The eval data is such a later period, labelled, so training fits there

    margin' = scale * seen_margin + bias + sum_f weight_f * [the window holds a never-seen line of feature f]

by L2-regularised logistic regression on the eval sessions, each class weighed as a whole (seen_margin: the logit
of the session's score from the lines training held, the highest of its windows'; a session holds a feature when
any of its lines does), and the scorer applies it to every window; P(anomaly) = sigmoid(margin'), at odds as if both
classes were equally common (the threshold is chosen on these scores). A never-seen line's feature is its level
group and whether it is failure-like: the seen line nearest it (cosine of the encoder's vectors) is one no normal
training session held (normal_lines.json). What a line says decides more than its level: on BGL's September, with the
first 70% of train as seen, 12 of the 19 normal windows that hold a never-seen fatal line hold one nearest a normal
line ("ciod: Error loading ...: Permission denied" beside "...: No such file or directory"), and 68 of the 72
anomalous windows hold one nearest a line only failures held ("Lustre mount FAILED" nearest a fatal kernel line).

What the classifier says about a never-seen line is left out (seen_margin: its margin less those lines' shares):
trained without that line, the classifier extrapolates, and the random seed decides where to. On BGL's past ->
future protocol the shares of an all-"Lustre mount FAILED" window (a category new in the later month) summed to -1.2
to -10.7 over ten seeds, the seen part to 0.0-0.1. F1 on the later month over those ten seeds, fitted on the
calibration period (bench/results/2026-12-05-never-seen-shares.md): the shares kept 0.830 on average (0.554-0.928),
left out 0.894 (0.877-0.910), left out with failure-like lines apart 0.946 (0.932-0.965).

A never-seen line's group is the level its first level word names, as logs state their level before the message:
"fatal" (fatal, critical, crit, severe, panic, emerg, alert, failure), "error" (error, err, or a word ending in
exception), "warn" (warn, warning), "other" (info, debug, trace, notice, or no level word). So "KERNEL INFO critical
input interrupt ... warning" is "other": on BGL September's normal windows that hold a never-seen line of the fatal
group go from 29 to 19 of 211 with this rule (against any such word anywhere in the line), its anomalous ones stay
at 69 of 72. A feature no eval session holds keeps weight 0 (its column is all zero, so the penalty holds it
there). Each weight is shared out among the window's never-seen lines of its feature, which carry that share alone,
so line shares still add up to the margin (with scale applied to the classifier's shares of the seen lines). A model
calibrated before 2026-12-05 stored neither `never_seen_shares` nor `failure_like_weights`: it added one weight per
group to the whole margin, never-seen shares included ("added"), and is read and scored that way.

An eval period whose failures the final model already knows shows little of what a new line is worth. `CrossFit`
adds evidence from inside the training period (train.pipeline, training.novelty_crossfit): the later part of train,
scored by a classifier trained on the earlier part. Both sets are fitted together, the feature weights shared and
each classifier with a scale and bias of its own; their calibrated scores come back for choosing the threshold.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

GROUPS = ("fatal", "error", "warn", "other")
_LEVEL_GROUP = {
    **dict.fromkeys(("fatal", "critical", "crit", "severe", "panic", "emerg", "alert", "failure"), 0),
    **dict.fromkeys(("error", "err"), 1),
    **dict.fromkeys(("warn", "warning"), 2),
    **dict.fromkeys(("info", "debug", "trace", "notice"), 3),
}
# the first level word of a line; "exception" also ends a word (IOException), as a line of a stack trace begins
_LEVEL_WORD = re.compile(r"\b(" + "|".join(_LEVEL_GROUP) + r")\b|exception\b", re.IGNORECASE)
FEATURES = 2 * len(GROUPS)
"""A never-seen line's feature: its group, plus len(GROUPS) when it is failure-like (`feature`)."""
SEEN = -1  # the feature index of a line training held (and of padding)
REGULARISATION_C = 10.0  # inverse L2 strength of the fit (sklearn's C): weak, the weights are few
SHARES = ("replaced", "added")  # what becomes of a never-seen line's classifier share: see the module docstring


def line_group(masked_line: str) -> int:
    """The index in GROUPS of a never-seen masked line: the group of its first level word, "other" without one."""
    found = _LEVEL_WORD.search(masked_line)
    if found is None:
        return GROUPS.index("other")
    if found.group(1) is None:  # a word ending in exception
        return GROUPS.index("error")
    return _LEVEL_GROUP[found.group(1).lower()]


def feature(masked_line: str, failure_like: bool) -> int:
    """The feature index of a never-seen masked line: its group (line_group), plus len(GROUPS) where failure-like."""
    return line_group(masked_line) + len(GROUPS) * failure_like


def row_features(masked_rows: Sequence[str], seen: frozenset[str], failure_like: frozenset[str] = frozenset()
               ) -> Tensor:
    """(U,) int64: the feature of each never-seen row (failure_like: the never-seen lines that are), SEEN for rows
    training held."""
    return torch.tensor([SEEN if line in seen else feature(line, line in failure_like) for line in masked_rows],
                        dtype=torch.long)


def window_flags(lines: Iterable[str], seen: frozenset[str], failure_like: frozenset[str] = frozenset()
                 ) -> list[float]:
    """(FEATURES,) 1.0 for each feature of which the masked lines hold a never-seen line, else 0.0 (failure_like:
    the never-seen lines that are)."""
    flags = [0.0] * FEATURES
    for line in set(lines):
        if line not in seen:
            flags[feature(line, line in failure_like)] = 1.0
    return flags


@dataclass(frozen=True)
class NoveltyCalibration:
    scale: float
    bias: float
    weights: tuple[float, ...]  # (G,) in GROUPS order: never-seen lines most like a line of normal sessions
    never_seen_shares: str = "replaced"  # "added": a model calibrated before 2026-12-05
    failure_like_weights: tuple[float, ...] | None = None  # (G,) failure-like lines; None (before 2026-12-05): weights

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"novelty_calibration scale must be a finite number > 0, got {self.scale!r}")
        if not math.isfinite(self.bias):
            raise ValueError(f"novelty_calibration bias must be finite, got {self.bias!r}")
        if len(self.weights) != len(GROUPS) or not all(math.isfinite(w) for w in self.weights):
            raise ValueError(f"novelty_calibration weights must be {len(GROUPS)} finite numbers ({', '.join(GROUPS)})"
                             f", got {self.weights!r}")
        if self.failure_like_weights is not None and (len(self.failure_like_weights) != len(GROUPS) or not all(
                math.isfinite(w) for w in self.failure_like_weights)):
            raise ValueError(f"novelty_calibration failure_like_weights must be {len(GROUPS)} finite numbers "
                             f"({', '.join(GROUPS)}), got {self.failure_like_weights!r}")
        if self.never_seen_shares not in SHARES:
            raise ValueError(f"novelty_calibration never_seen_shares must be one of {', '.join(SHARES)}, got "
                             f"{self.never_seen_shares!r}")

    @classmethod
    def from_config(cls, value: Mapping[str, Any]) -> NoveltyCalibration:
        """From the config's {"scale", "bias", "weights": {group: weight}, "failure_like_weights": {group: weight},
        "never_seen_shares"} (without the last two, as calibrated before they existed: "added", and failure-like
        lines weighed as the others); ValueError naming a bad value."""
        keys = {"scale", "bias", "weights"}
        if not isinstance(value, Mapping) or not keys <= set(value) <= keys | {"failure_like_weights",
                                                                                "never_seen_shares"}:
            raise ValueError(f"novelty_calibration must map scale, bias, weights, failure_like_weights and "
                             f"never_seen_shares, got {value!r}")
        by_group = {}
        for key in ("weights", "failure_like_weights"):
            weights = value.get(key)  # None: failure_like_weights absent (weights is there, checked above)
            if key in value and (not isinstance(weights, Mapping) or set(weights) != set(GROUPS)):
                raise ValueError(f"novelty_calibration {key} must name the groups {list(GROUPS)}, got {weights!r}")
            by_group[key] = weights
        try:
            failure_like = by_group["failure_like_weights"]
            return cls(float(value["scale"]), float(value["bias"]),
                       tuple(float(by_group["weights"][g]) for g in GROUPS), value.get("never_seen_shares", "added"),
                       None if failure_like is None else tuple(float(failure_like[g]) for g in GROUPS))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"novelty_calibration: {exc}") from None

    def to_config(self) -> dict[str, Any]:
        config = {"scale": self.scale, "bias": self.bias, "weights": dict(zip(GROUPS, self.weights)),
                  "never_seen_shares": self.never_seen_shares}
        if self.failure_like_weights is not None:
            config["failure_like_weights"] = dict(zip(GROUPS, self.failure_like_weights))
        return config

    @property
    def feature_weights(self) -> tuple[float, ...]:
        """(FEATURES,) the weight of each feature (model.novelty.feature)."""
        return self.weights + (self.weights if self.failure_like_weights is None else self.failure_like_weights)

    def apply(self, margin: Tensor, line_scores: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
        """margin (b,) and line_scores (b, T) of the classifier, groups (b, T) each line's feature or SEEN ->
        the calibrated margin (b,) and line shares (b, T), which still add up to it with scale * base + bias."""
        weights = torch.tensor(self.feature_weights, dtype=margin.dtype, device=margin.device)  # (F,)
        if self.failure_like_weights is None:  # calibrated before failure-like lines had weights: one per group
            groups = torch.where(groups >= len(GROUPS), groups - len(GROUPS), groups)  # (b, T)
        new = groups != SEEN  # (b, T) never-seen lines; seen lines and padding are SEEN
        hits = F.one_hot(groups.clamp(min=0), FEATURES).to(margin.dtype) * new[..., None]  # (b, T, F)
        present = (hits.sum(dim=1) > 0).to(margin.dtype)  # (b, F)
        per_line = weights / hits.sum(dim=1).clamp(min=1)  # (b, F) a feature's weight shared by its lines
        shares = (hits * per_line[:, None, :]).sum(dim=-1)  # (b, T)
        if self.never_seen_shares == "replaced":  # what the classifier says of the seen lines only
            margin = margin - (line_scores * new).sum(dim=1)  # (b,)
            line_scores = line_scores.masked_fill(new, 0.0)  # (b, T)
        return self.scale * margin + self.bias + present @ weights, self.scale * line_scores + shares


@dataclass(frozen=True)
class CrossFit:
    """Novelty evidence from inside the training period: the later part of train, scored by an auxiliary classifier
    trained on the earlier part, with never-seen meaning not in that earlier part. scores (n,) P(anomaly) from the
    lines the earlier part held (SEEN_ONLY), flags (n, F) window_flags, labels (n,), classifier_scores (n,) its
    P(anomaly) from every line (train.pipeline.novel_misses reads these)."""

    scores: Sequence[float]
    flags: Sequence[Sequence[float]]
    labels: Sequence[int]
    classifier_scores: Sequence[float]


@dataclass(frozen=True)
class NoveltyFit:
    calibration: NoveltyCalibration  # the final (eval) classifier's: what the model stores
    crossfit_scores: tuple[float, ...] | None  # (m,) the cross-fit sessions' calibrated P(anomaly), on the same
    # scale as eval's once calibrated (each classifier's own scale and bias applied), for choosing the threshold


SEEN_ONLY = NoveltyCalibration(1.0, 0.0, (0.0,) * len(GROUPS), failure_like_weights=(0.0,) * len(GROUPS))
"""The classifier's score from the lines training held, never-seen lines adding nothing: what fit_novelty reads."""


def _margins(scores: Sequence[float]) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)  # (n,)


def fit_novelty(scores: Sequence[float], flags: Sequence[Sequence[float]], labels: Sequence[int],
                crossfit: CrossFit | None = None) -> NoveltyFit | None:
    """Fit on labelled eval sessions: scores (n,) the classifier's P(anomaly) from the lines training held (the
    scorer with SEEN_ONLY), flags (n, F) window_flags, labels (n,). With crossfit, its sessions join the fit: the
    feature weights are shared by both, while each classifier keeps a scale and bias of its own (their margins need
    not be alike); the eval classifier's are the calibration, and the cross-fit sessions' calibrated scores come
    with it.
    None when there is nothing to learn (eval holds one class, or no session a never-seen line) or the fit does
    not rank by the classifier (scale <= 0): the classifier's score is then kept as it is."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels, dtype=np.int64)
    flagged = np.asarray(flags, dtype=np.float64).reshape(len(y), FEATURES)  # (n, F)
    if not 0 < int(y.sum()) < len(y):
        return None
    margin = _margins(scores)
    if crossfit is None:
        columns = np.column_stack([margin, flagged])  # (n, 1 + F)
    else:
        y_cross = np.asarray(crossfit.labels, dtype=np.int64)
        flagged_cross = np.asarray(crossfit.flags, dtype=np.float64).reshape(len(y_cross), FEATURES)  # (m, F)
        is_eval = np.concatenate([np.ones(len(y)), np.zeros(len(y_cross))])  # (n + m,)
        both = np.concatenate([margin, _margins(crossfit.scores)])  # (n + m,)
        # eval margin, cross-fit margin, eval's bias over the cross-fit's (the intercept), then the shared groups
        columns = np.column_stack([both * is_eval, both * (1 - is_eval), is_eval,
                                   np.concatenate([flagged, flagged_cross])])  # (n + m, 3 + F)
        y, flagged = np.concatenate([y, y_cross]), columns[:, 3:]
    if not flagged.any():
        return None
    # each class weighed as a whole: the few failures, not the many normal sessions, set what a new line is worth
    fit = LogisticRegression(C=REGULARISATION_C, class_weight="balanced", max_iter=1000).fit(columns, y)
    coef = fit.coef_[0]
    scale, bias = float(coef[0]), float(fit.intercept_[0]) + (float(coef[2]) if crossfit is not None else 0.0)
    weights = tuple(float(w) for w in coef[-FEATURES:])  # (F,) normal-like groups, then failure-like ones
    if scale <= 0:
        logger.warning("novelty calibration skipped: the fit gave the classifier's margin scale %.3g", scale)
        return None
    crossfit_scores = None
    if crossfit is not None:
        crossfit_scores = tuple(float(p) for p in fit.predict_proba(columns[len(scores):])[:, 1])  # (m,)
    calibration = NoveltyCalibration(scale, bias, weights[:len(GROUPS)], failure_like_weights=weights[len(GROUPS):])
    return NoveltyFit(calibration, crossfit_scores)
