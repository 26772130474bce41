"""Many seeds of one config, on saved scores: does combining or choosing among seeds carry a threshold into the
future better than one run? Reads the --json-out files of `bench/bench_real.py --calibrate-on later-train` (the
calibration view is the later part of train, dev is the future), one group of files per config, so no model is
retrained.

For each group: every run alone (the max-F1 cut on the calibration view, `train.metrics.calibrate_threshold`, and F1
/ PR-AUC on the future at it; also F1 at the threshold the model stored, which is that cut unless training's novelty
cross-fit chose it over more sessions); ensembles of k runs (the mean of their probabilities, and the mean of their
logits), over every k-subset; and choosing among k runs the one with the best calibration F1 (ties: PR-AUC), which
is what training k seeds and keeping the best on the eval set would do. With --bgl-log (BGL's dev_labelled.log, cut
into the same windows of --bgl-window lines as dev.jsonl) also each run's recall per alert category of the future,
and F1 with the windows of the --leave-out categories removed.

    .venv/bin/python bench/seed_runs.py --group NAME 'GLOB' [--group NAME 'GLOB' ...] [--ks 3,5] [--set bgl]
        [--bgl-log ../shared/data/bgl/dev_labelled.log --leave-out KERNMNTF]
"""
from __future__ import annotations

import argparse
import glob
import itertools
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from _common import markdown_table

METHOD = "logmoe (default config)"


@dataclass
class Run:
    name: str
    seed: int | None
    cal_labels: np.ndarray  # (n_cal,)
    cal_scores: np.ndarray  # (n_cal,)
    labels: np.ndarray  # (n_future,)
    scores: np.ndarray  # (n_future,)
    stored: float | None  # the threshold the model stored (differs from the calibration's cut with a cross-fit)


def load_run(path: Path, set_name: str) -> Run:
    payload = json.loads(path.read_text(encoding="utf-8"))
    try:
        result = payload["sets"][set_name]
    except KeyError:
        raise ValueError(f"{path}: no set {set_name!r} (it has {sorted(payload.get('sets', {}))})") from None
    views = list(result["scores"]["labels"])
    if len(views) != 2:
        raise ValueError(f"{path}: expected two views (calibration, future), got {views}; run bench_real.py with "
                         "--calibrate-on later-train")
    cal, future = views
    by_view = result["scores"]["by_method"][METHOD]
    seed = payload["machine"].get("command", "").split("--seed ")
    stored = result.get("logmoe", {}).get(METHOD, {}).get("stored_threshold")
    return Run(path.name, int(seed[1].split()[0]) if len(seed) > 1 else None,
               np.asarray(result["scores"]["labels"][cal]), np.asarray(by_view[cal], dtype=np.float64),
               np.asarray(result["scores"]["labels"][future]), np.asarray(by_view[future], dtype=np.float64),
               None if stored is None else float(stored))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def combine(runs: Sequence[Run], how: str) -> tuple[np.ndarray, np.ndarray]:
    """(calibration scores, future scores) of an ensemble: the mean probability, or the sigmoid of the mean logit."""
    if how == "mean probability":
        return np.mean([r.cal_scores for r in runs], 0), np.mean([r.scores for r in runs], 0)
    cal = np.mean([logit(r.cal_scores) for r in runs], 0)
    future = np.mean([logit(r.scores) for r in runs], 0)
    return 1 / (1 + np.exp(-cal)), 1 / (1 + np.exp(-future))


def carried(cal_labels: np.ndarray, cal_scores: np.ndarray, labels: np.ndarray,
            scores: np.ndarray) -> tuple[float, float, float]:
    """(calibration F1, future F1 at the calibration's cut, future PR-AUC)."""
    from train.metrics import calibrate_threshold, classification_metrics

    cut = calibrate_threshold(cal_labels, cal_scores)
    future = classification_metrics(labels, scores, cut)
    return classification_metrics(cal_labels, cal_scores, cut)["f1"], future["f1"], future["pr_auc"]


def summary(values: Sequence[float], goal: float) -> list[object]:
    return [len(values), f"{statistics.mean(values):.3f}", f"{min(values):.3f}-{max(values):.3f}",
            f"{sum(v >= goal for v in values)}/{len(values)}"]


def group_tables(name: str, runs: list[Run], ks: Sequence[int], goal: float) -> list[str]:
    from train.metrics import classification_metrics

    alone = [carried(r.cal_labels, r.cal_scores, r.labels, r.scores) for r in runs]
    at_stored = ["-" if r.stored is None else f"{classification_metrics(r.labels, r.scores, r.stored)['f1']:.4f}"
                 for r in runs]
    per_run = markdown_table(
        ["group", "run", "seed", "calibration F1", "future F1", "future PR-AUC", "future F1 at the stored threshold"],
        [[name, r.name, r.seed, f"{c:.4f}", f"{f:.4f}", f"{p:.4f}", stored]
         for r, (c, f, p), stored in zip(runs, alone, at_stored)])
    rows: list[list[object]] = [[name, "one run", 1, *summary([f for _, f, _ in alone], goal)]]
    for k in ks:
        subsets = list(itertools.combinations(range(len(runs)), k))
        if not subsets:
            continue
        for how in ("mean probability", "mean logit"):
            f1s = []
            for subset in subsets:
                members = [runs[i] for i in subset]
                cal_scores, scores = combine(members, how)
                f1s.append(carried(members[0].cal_labels, cal_scores, members[0].labels, scores)[1])
            rows.append([name, f"ensemble, {how}", k, *summary(f1s, goal)])
        best = [max(subset, key=lambda i: (alone[i][0], alone[i][2])) for subset in subsets]
        rows.append([name, "best of k by calibration F1", k, *summary([alone[i][1] for i in best], goal)])
    combos = markdown_table(["group", "way", "k", "subsets", "future F1 mean", "min-max", f">= {goal}"], rows)
    return [per_run, combos]


def window_categories(log: Path, window: int, n: int) -> list[set[str]]:
    """The alert categories (first column, '-' = normal) of each of the first n windows of `window` lines."""
    lines = [line.split(" ", 1)[0] for line in log.read_text(encoding="utf-8").splitlines()]
    if len(lines) < n * window:
        raise ValueError(f"{log} has {len(lines)} lines, fewer than {n} windows of {window}")
    return [set(lines[i * window:(i + 1) * window]) - {"-"} for i in range(n)]


def category_table(name: str, runs: list[Run], categories: list[set[str]], leave_out: set[str]) -> str:
    from train.metrics import calibrate_threshold, classification_metrics

    names = sorted({c for window in categories for c in window}, key=lambda c: -sum(c in w for w in categories))
    keep = np.array([not (window & leave_out) for window in categories])
    rows = []
    for r in runs:
        if len(categories) != len(r.labels):
            raise ValueError(f"{r.name}: {len(r.labels)} future windows, the log gives {len(categories)}")
        anomalous = np.array([bool(w) for w in categories])
        if not np.array_equal(anomalous, r.labels.astype(bool)):
            raise ValueError(f"{r.name}: the log's windows are not the run's future windows (labels differ)")
        cut = calibrate_threshold(r.cal_labels, r.cal_scores)
        flagged = r.scores >= cut
        recall = [f"{sum(flagged[i] for i, w in enumerate(categories) if c in w)}/{sum(c in w for w in categories)}"
                  for c in names]
        rest = classification_metrics(r.labels[keep], r.scores[keep], cut)["f1"]
        rows.append([name, r.name, *recall, int((flagged & ~anomalous).sum()), f"{rest:.4f}"])
    left = ", ".join(sorted(leave_out)) or "nothing"
    return markdown_table(["group", "run", *(f"{c} caught" for c in names), "false alarms",
                           f"F1 without {left}"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", nargs=2, action="append", metavar=("NAME", "GLOB"), required=True,
                        help="a config's runs: a name and a glob of bench_real.py --json-out files")
    parser.add_argument("--set", default="bgl", help="the data set in the files (default bgl)")
    parser.add_argument("--ks", default="3,5", help="ensemble / choice sizes (default 3,5)")
    parser.add_argument("--goal", type=float, default=0.90, help="F1 counted as reached (default 0.90)")
    parser.add_argument("--bgl-log", type=Path, help="BGL dev_labelled.log, for recall per alert category")
    parser.add_argument("--bgl-window", type=int, default=20, help="lines per window of dev.jsonl (default 20)")
    parser.add_argument("--leave-out", default="", help="comma-separated categories whose windows F1 leaves out")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",") if k]
    groups = {}
    for name, pattern in args.group:
        paths = sorted(glob.glob(pattern))
        if not paths:
            parser.error(f"--group {name}: no file matches {pattern!r}")
        groups[name] = [load_run(Path(p), args.set) for p in paths]
    for name, runs in groups.items():
        for table in group_tables(name, runs, ks, args.goal):
            print(table + "\n")
    if args.bgl_log:
        n = len(next(iter(groups.values()))[0].labels)
        categories = window_categories(args.bgl_log, args.bgl_window, n)
        leave_out = {c for c in args.leave_out.split(",") if c}
        for name, runs in groups.items():
            print(category_table(name, runs, categories, leave_out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
