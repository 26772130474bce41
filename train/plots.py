"""PNG plots of a training run: loss curves of both stages, the eval PR curve, the eval confusion matrix."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

from model.decision import is_anomalous  # noqa: E402

logger = logging.getLogger(__name__)


def plot_loss_curves(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Training loss (and learning rate) per logging step, one panel per stage, as the seed's figures."""
    stages = sorted({r["stage"] for r in history if "loss" in r})
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(6 * max(1, len(stages)), 4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = [r for r in history if r["stage"] == stage and "loss" in r]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", color="tab:blue")
        evals = [r for r in history if r["stage"] == stage and "eval_loss" in r]
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o--", label="eval loss",
                color="tab:orange")
        ax.set_title(f"stage {stage} ({'dense' if stage == 1 else 'top-p'} routing)")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(loc="upper right")
        lr_ax = ax.twinx()
        lr_ax.plot([r["step"] for r in rows], [r["learning_rate"] for r in rows], color="tab:gray", alpha=0.4)
        lr_ax.set_ylabel("learning rate", color="tab:gray")
    _save(fig, path)


def plot_pr_curve(labels: Sequence[int], scores: Sequence[float], threshold: float, pr_auc: float | None,
                  path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    if 0 < sum(labels) < len(labels):
        precision, recall, cuts = precision_recall_curve(labels, scores)
        ax.plot(recall, precision, label=f"PR-AUC {pr_auc:.4f}" if pr_auc is not None else "PR")
        at = [i for i, c in enumerate(cuts) if is_anomalous(c, threshold)]
        if at:
            ax.plot(recall[at[0]], precision[at[0]], "ro", label=f"threshold {threshold:.3f}")
        ax.legend(loc="lower left")
    else:
        ax.text(0.5, 0.5, "single-class eval set: no PR curve", ha="center")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("eval sessions")
    _save(fig, path)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], ["normal", "anomalous"])
    ax.set_yticks([0, 1], ["normal", "anomalous"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("eval confusion matrix")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    logger.info("wrote %s", path)
