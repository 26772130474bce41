"""Threshold rules side by side on saved scores: how each rule, applied to the calibration view, does on the views
after it. Reads the --json-out files of `bench/bench_real.py` (best with `--calibrate-on later-train`, where the
calibration view is the later part of train and dev is the future), so no model is retrained.

Rules: max F1 with the cut halfway between the two scores it falls between (the rule before 2026-12-04), max F1
with the cut at their geometric mean (`train.metrics.calibrate_threshold` now), the fpr objective at each
--fprs target (the most anomalies caught with at most that share of calibration normals flagged), and two rules
that lean towards recall, for a future whose anomalies score lower: the lowest cut whose calibration F1 is within
each --near-max margin of the best, and the lower of the max-F1 cut and the fpr cut at each --odds-shares share
of the calibration's anomaly odds (n_anomalous / n_normal: a false-positive budget that grows with how common
anomalies are).

    .venv/bin/python bench/threshold_rules.py RUN.json [RUN.json ...] [--fprs 0.01,0.02] [--near-max 0.02]
        [--odds-shares 0.3]
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import markdown_table


def halfway_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """The max-F1 cut of `calibrate_threshold`, put halfway between the two scores it falls between instead."""
    from model.decision import HIGHEST_FLAGGING
    from train.metrics import calibrate_threshold

    cut = calibrate_threshold(labels, scores, "f1")
    below, taken = scores[scores < cut], scores[scores >= cut]
    if not len(below) or not len(taken):
        return cut
    return min(float((below.max() + taken.min()) / 2), HIGHEST_FLAGGING)


def near_max_f1(labels: np.ndarray, scores: np.ndarray, margin: float) -> float:
    """The lowest cut whose F1 on (labels, scores) is at least the best F1 - margin, placed as
    `calibrate_threshold` places its cut (between the two scores it falls between)."""
    from train.metrics import cut_under, f1_by_cut

    f1, cuts = f1_by_cut(labels, scores)
    return cut_under(scores, float(cuts[f1 >= f1.max() - margin].min()))


def odds_fpr(labels: np.ndarray, scores: np.ndarray, share: float) -> float:
    """The lower of the max-F1 cut and the fpr cut at share * n_anomalous / n_normal."""
    from train.metrics import calibrate_threshold

    anomalous = int(labels.sum())
    target = share * anomalous / max(1, len(labels) - anomalous)
    return min(calibrate_threshold(labels, scores, "f1"), calibrate_threshold(labels, scores, "fpr", target_fpr=target))


def rules(fprs: Sequence[float], margins: Sequence[float] = (),
          shares: Sequence[float] = ()) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    from train.metrics import calibrate_threshold

    out: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "max F1, halfway": halfway_f1,
        "max F1, geometric mean": lambda y, s: calibrate_threshold(y, s, "f1"),
    }
    for fpr in fprs:
        out[f"fpr <= {fpr:g}"] = lambda y, s, fpr=fpr: calibrate_threshold(y, s, "fpr", target_fpr=fpr)
    for margin in margins:
        out[f"lowest within {margin:g} of max F1"] = lambda y, s, margin=margin: near_max_f1(y, s, margin)
    for share in shares:
        out[f"min(max F1, fpr <= {share:g} x odds)"] = lambda y, s, share=share: odds_fpr(y, s, share)
    return out


def tables(name: str, payload: dict[str, Any], fprs: Sequence[float], margins: Sequence[float] = (),
           shares: Sequence[float] = ()) -> list[str]:
    """One table per data set of a bench_real.py payload: each rule's threshold on the calibration (first) view and
    F1 on every view at it."""
    from train.metrics import classification_metrics

    out = []
    for set_name, result in payload["sets"].items():
        labels = {view: np.asarray(y, dtype=int) for view, y in result["scores"]["labels"].items()}
        calibration = next(iter(labels))
        rows: list[list[object]] = []
        for method, by_view in result["scores"]["by_method"].items():
            scores = {view: np.asarray(s, dtype=np.float64) for view, s in by_view.items()}
            for rule, pick in rules(fprs, margins, shares).items():
                threshold = pick(labels[calibration], scores[calibration])
                f1s = [classification_metrics(labels[v], scores[v], threshold)["f1"] for v in labels]
                rows.append([name, set_name, method, rule, f"{threshold:.3g}", *f1s])
        out.append(markdown_table(["run", "set", "method", "rule", "threshold", *(f"F1 {v}" for v in labels)], rows))
    return out


def floats(text: str) -> list[float]:
    """A comma-separated list of numbers; argparse reports a bad one."""
    return [float(x) for x in text.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="bench_real.py --json-out files")
    parser.add_argument("--fprs", type=floats, default=[0.01, 0.02],
                        help="fpr targets to show (default 0.01,0.02)")
    parser.add_argument("--near-max", type=floats, default=[],
                        help="F1 margins: the lowest cut within each of the best calibration F1 (e.g. 0.02,0.05)")
    parser.add_argument("--odds-shares", type=floats, default=[],
                        help="shares of the calibration's anomaly odds as the fpr budget under the max-F1 cut")
    args = parser.parse_args(argv)
    for path in args.runs:
        payload = json.loads(path.read_text(encoding="utf-8"))
        for table in tables(path.name, payload, args.fprs, args.near_max, args.odds_shares):
            print(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
