"""BGL benchmark: logmoe vs bag-of-masked-lines baselines on time-ordered windows of BGL_2k.

The 2,000 BGL lines (loghub_2k/BGL_2k.log_structured.csv, `Label` "-" normal, anything else an alert) are read
with train/'s own adapter (`train.adapters.labelled_lines_from_csv`: the line is every column but the label and
the parser's columns) and split in time: the first 70% of the lines train, the rest test. Each part is cut into
windows with `model.windowing.session_windows` (via `train.adapters.windows_from_labelled_lines`), a window
anomalous if any of its lines is; training windows may overlap (--train-hop), test windows do not by default.
Every method's threshold is calibrated for max F1 on the test windows (the HDFS protocol: logmoe calibrates on its
eval file) -- optimistic for all alike; PR-AUC is threshold-free and F1 at 0.5 is shown too.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from _common import (
    CountBaseline, LabelledSession, LogMoE, Method, baseline_estimators, default_data_dir, markdown_table, prepare,
    print_header, require_file, start_run, add_run_options, write_hdfs_jsonl, write_json, REPO_ROOT,
)

logger = logging.getLogger("bench.bgl")


def bgl_windows(csv_path: Path, train_fraction: float, window: int, train_hop: int,
                test_hop: int) -> tuple[list[LabelledSession], list[LabelledSession], dict[str, int]]:
    from train.adapters import labelled_lines_from_csv, windows_from_labelled_lines

    lines = labelled_lines_from_csv(require_file(csv_path))
    cut = int(train_fraction * len(lines))
    parts = {"train": (lines[:cut], train_hop), "test": (lines[cut:], test_hop)}
    out = {}
    for name, (part, hop) in parts.items():
        windows = windows_from_labelled_lines(part, window, hop, f"bgl-{name}")
        out[name] = [LabelledSession(w.session_id, w.lines, w.label, ()) for w in windows]
    info = {"lines": len(lines), "alert_lines": sum(flag for _, flag in lines), "train_lines": cut,
            "train_alert_lines": sum(flag for _, flag in lines[:cut])}
    return out["train"], out["test"], info


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="the shared data folder holding loghub_2k/ (default ../shared/data or "
                             "$LOGMOE_SHARED_DATA)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "runs" / "bench_bgl",
                        help="where the window files and the logmoe models go")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "train.yaml")
    parser.add_argument("--variant", action="append", default=None, metavar="'KEY=VALUE ...'",
                        help="one logmoe run per --variant, with these config overrides (space-separated); "
                             "default: one run with the config's defaults ('')")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--train-hop", type=int, default=5, help="hop of the training windows (overlapping)")
    parser.add_argument("--test-hop", type=int, default=20, help="hop of the test windows (= window: disjoint)")
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="smoke run: one logmoe run of 1+1 epochs")
    add_run_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args)
    header = print_header("BGL_2k benchmark: logmoe vs bag-of-masked-lines, time-ordered split"
                          + (" (--quick)" if args.quick else ""))
    from train.metrics import classification_metrics

    csv_path = args.data_dir / "loghub_2k" / "BGL_2k.log_structured.csv"
    train_s, test_s, info = bgl_windows(csv_path, args.train_fraction, args.window, args.train_hop, args.test_hop)
    files = [write_hdfs_jsonl(args.out_dir / "train.jsonl", train_s), write_hdfs_jsonl(args.out_dir / "test.jsonl",
                                                                                       test_s)]
    train, test = prepare(train_s), prepare(test_s)
    variants = [["training.epochs_stage1=1", "training.epochs_stage2=1"]] if args.quick else \
        [v.split() for v in (args.variant or [""])]
    methods: list[Method] = []
    for number, overrides in enumerate(variants):
        label = "logmoe" + (f" ({' '.join(overrides)})" if overrides else " (config defaults)")
        methods.append(LogMoE(files[:1], files[1:], args.out_dir / f"logmoe{number}", args.seed, args.config,
                              overrides, name=label))
    estimators = baseline_estimators(args.seed)
    methods += [CountBaseline("masked-line counts + DecisionTree", "masked", estimators["DecisionTree"]),
                CountBaseline("masked-line counts + LogisticRegression", "masked", estimators["LogisticRegression"])]

    rows, results = [], {}
    for method in methods:
        started = time.perf_counter()
        method.fit(train, test)
        seconds = time.perf_counter() - started
        scores = method.score(test)
        m = classification_metrics(test.labels, scores, method.threshold)
        m["f1_at_0.5"] = classification_metrics(test.labels, scores, 0.5)["f1"]
        m["fit_seconds"] = seconds
        results[method.name] = m
        rows.append([method.name, method.threshold, m["precision"], m["recall"], m["f1"], m["pr_auc"],
                     m["f1_at_0.5"]])
        logger.info("%s: f1 %.4f pr_auc %s (fit %.1fs)", method.name, m["f1"], m["pr_auc"], seconds)

    print(f"{info['lines']} lines ({info['alert_lines']} alerts); train = first {info['train_lines']} lines "
          f"({info['train_alert_lines']} alerts) -> {len(train_s)} windows of {args.window} (hop {args.train_hop}), "
          f"{int(train.labels.sum())} anomalous; test = the remaining {info['lines'] - info['train_lines']} lines "
          f"-> {len(test_s)} windows (hop {args.test_hop}), {int(test.labels.sum())} anomalous.\n")
    print(markdown_table(["method", "threshold", "precision", "recall", "F1", "PR-AUC", "F1 @0.5"], rows))
    print("\n- thresholds: max F1 on the test windows for every method (as logmoe calibrates on its eval file); "
          "PR-AUC does not depend on them.")
    for method in methods:
        if isinstance(method, LogMoE):
            t = method.cfg.training
            print(f"- {method.name}: epochs {t.epochs_stage1}+{t.epochs_stage2}, lr {t.learning_rate}, batch "
                  f"{t.batch_size}, seed {t.seed}; fit {results[method.name]['fit_seconds'] / 60:.1f} min")
    write_json(args.json_out, {"machine": header, "info": info, "windows": {"train": len(train_s),
                                                                             "test": len(test_s)},
                               "variants": variants, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
