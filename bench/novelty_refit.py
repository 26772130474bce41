"""What the novelty calibration makes of a saved model, fitted several ways: does it read the classifier's margin from
every line or from the lines training held only (a never-seen line's share replaced by its group's weight,
model.novelty), does the fit weigh each session alike or each class as a whole, and is a never-seen line weighed by
its level group alone or also by whether it is failure-like (its nearest seen line only failures held)? Reads the
--json-out files of `bench/bench_real.py --sets bgl --calibrate-on later-train` and the model each run saved under
its --out-dir, so no model is retrained. Each way is fitted on the calibration view alone (the later part of train; the cross-fit
sessions training also fits on are not saved), the threshold is its max-F1 cut there, and F1 / PR-AUC are on the
future (dev) at that cut.

    .venv/bin/python bench/novelty_refit.py 'GLOB' [--data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import glob
import json
import shlex
import statistics
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from _common import markdown_table
from model.novelty import GROUPS, REGULARISATION_C, SEEN_ONLY
from model.scorer import LogScorer
from train.data import load_jsonl
from train.evaluation import score_sessions
from train.metrics import calibrate_threshold, classification_metrics

WAYS = {  # name -> (margin from the seen lines only, each class weighed as a whole, failure-like lines apart)
    "every line, by session, levels (before 2026-12-05)": (False, False, False),
    "every line, by class, levels": (False, True, False),
    "seen lines, by session, levels": (True, False, False),
    "seen lines, by class, levels (603f4dc)": (True, True, False),
    "seen lines, by session, levels and failure-like": (True, False, True),
    "seen lines, by class, levels and failure-like (now)": (True, True, True),
}


def _logit(p: list[float]) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(q) - np.log1p(-q)  # (n,)


def _views(path: str, data_dir: str | None) -> dict[str, dict[str, np.ndarray]]:
    """The run's model scored on its calibration view and on dev: labels, margins from every line and from the
    seen lines, never-seen group flags."""
    command = shlex.split(json.loads(Path(path).read_text())["machine"]["command"])
    out_dir = Path(command[command.index("--out-dir") + 1])
    data = Path(data_dir or command[command.index("--data-dir") + 1])
    scorer = LogScorer.from_pretrained(out_dir / "bgl" / "logmoe" / "final_moe_model", device="cpu")
    views = {}
    for view, file in (("calibration", out_dir / "subsets" / "bgl-later" / "calibration.jsonl"),
                       ("future", data / "bgl" / "dev.jsonl")):
        sessions = load_jsonl(file)
        scorer.set_novelty_calibration(None)
        every = score_sessions(scorer, sessions, hop=scorer.window_hop).scores
        scorer.set_novelty_calibration(SEEN_ONLY)
        seen = score_sessions(scorer, sessions, hop=scorer.window_hop).scores
        views[view] = {"labels": np.asarray([s.label for s in sessions]), "every": _logit(every),
                       "seen": _logit(seen), "flags": np.asarray([scorer.novelty_flags(s.lines) for s in sessions])}
    return views


def _fit_way(views: dict[str, dict[str, np.ndarray]], seen_only: bool, by_class: bool, failure_like: bool
             ) -> dict[str, float]:
    """Fit one way (WAYS) on the calibration view; F1 at its max-F1 cut and PR-AUC on the future."""
    columns = {}
    for v in views:
        flags = views[v]["flags"]  # (n, F): the level groups like a normal line, then the failure-like ones
        if not failure_like:
            flags = np.maximum(flags[:, :len(GROUPS)], flags[:, len(GROUPS):])  # (n, G)
        columns[v] = np.column_stack([views[v]["seen" if seen_only else "every"], flags])  # (n, 1 + F or G)
    fit = LogisticRegression(C=REGULARISATION_C, class_weight="balanced" if by_class else None,
                             max_iter=2000).fit(columns["calibration"], views["calibration"]["labels"])
    cal, fut = (fit.predict_proba(columns[v])[:, 1] for v in ("calibration", "future"))
    cut = calibrate_threshold(views["calibration"]["labels"], cal)
    at = classification_metrics(views["future"]["labels"], fut, cut)
    return {"f1": at["f1"], "pr_auc": float(average_precision_score(views["future"]["labels"], fut))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", help="glob of bench_real.py --json-out files (BGL, --calibrate-on later-train)")
    parser.add_argument("--data-dir", default=None, help="where bgl/dev.jsonl is (default: the run's --data-dir)")
    args = parser.parse_args()
    paths = sorted(glob.glob(args.runs))
    if not paths:
        raise SystemExit(f"no run matches {args.runs!r}")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in WAYS}
    for path in paths:
        views = _views(path, args.data_dir)
        for name, way in WAYS.items():
            results[name].append(_fit_way(views, *way))
    names = [Path(p).stem for p in paths]
    rows = [[name, *(f"{r['f1']:.4f}" for r in runs), f"{statistics.mean(r['f1'] for r in runs):.3f}",
             f"{min(r['f1'] for r in runs):.3f}-{max(r['f1'] for r in runs):.3f}",
             f"{statistics.mean(r['pr_auc'] for r in runs):.3f}"] for name, runs in results.items()]
    print(markdown_table(["fitted on the calibration view", *names, "future F1 mean", "min-max", "PR-AUC mean"],
                         rows))


if __name__ == "__main__":
    main()
