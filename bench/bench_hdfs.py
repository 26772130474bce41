"""HDFS benchmark: parse-free logmoe (raw lines) vs classical baselines, on clean dev and under wording drift.

Train on train.jsonl + order_train.jsonl, evaluate on dev.jsonl + order_dev.jsonl and on each alone (order_dev
is all anomalous: its F1 is 2R/(1+R) and PR-AUC is undefined, so read its recall). Methods, side by side in one
run on the same split:
- logmoe: `train.train(cfg)` from configs/train.yaml on the raw lines, then the trained model scored through
  `model.LogScorer` over `model.windowing.session_windows` (session score = max over its windows), as the worker
  does; threshold = the one training calibrated and stored (max F1 on the eval files).
- masked-line counts + DecisionTree / LogisticRegression: each session a bag of `model.mask(line)` strings.
- event-id counts + DecisionTree: each session a bag of parsed HDFS event ids (the data's `event_ids` field;
  under drift, ids from matching the original templates, as a deployed parser would).
Every baseline's threshold is calibrated like logmoe's: `train.metrics.calibrate_threshold(..., "f1")` on
dev + order_dev; the F1 at 0.5 is shown too. Under drift every threshold stays the clean one (an upgrade brings
no new labels).
"""
from __future__ import annotations

import argparse
import logging
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from _common import (
    CountBaseline, LabelledSession, LogMoE, Method, Prepared, baseline_estimators, default_data_dir, fmt, labels_of,
    load_hdfs_jsonl, markdown_table, prepare, print_header, start_run, add_run_options, write_hdfs_jsonl, write_json,
    REPO_ROOT,
)
from drift import DRIFT_RULES, DriftRule, TemplateParser, check_rules_fire, drift_sessions, rules_for_fraction

logger = logging.getLogger("bench.hdfs")

EVAL_SETS = ("dev+order_dev", "dev", "order_dev")


# ------------------------------------------------------------------------------------------------ the run

def split_eval(data: Prepared, n_dev: int) -> dict[str, Prepared]:
    """dev+order_dev, dev and order_dev views of one prepared eval list (dev first, then order_dev)."""
    n = len(data.sessions)
    return {"dev+order_dev": data, "dev": data.subset(np.arange(n_dev)), "order_dev": data.subset(np.arange(n_dev, n))}


def evaluate_all(methods: Sequence[Method], views: dict[str, Prepared]) -> dict[str, dict[str, dict[str, Any]]]:
    """metrics[eval_set][method] at the method's threshold, plus f1 at 0.5."""
    from train.metrics import classification_metrics

    combined = views["dev+order_dev"]
    n_dev = len(views["dev"].sessions)
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in views}
    for method in methods:
        started = time.perf_counter()
        scores = method.score(combined)
        logger.info("%s scored %d sessions in %.1fs", method.name, len(scores), time.perf_counter() - started)
        parts = {"dev+order_dev": slice(None), "dev": slice(0, n_dev), "order_dev": slice(n_dev, None)}
        for name, part in parts.items():
            labels, part_scores = views[name].labels, scores[part]
            m = classification_metrics(labels, part_scores, method.threshold)
            m["f1_at_0.5"] = classification_metrics(labels, part_scores, 0.5)["f1"]
            out[name][method.name] = m
    return out


def results_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = []
    for eval_set, by_method in results.items():
        for method, m in by_method.items():
            rows.append([eval_set, method, m["n"], m["n_anomalous"], m["threshold"], m["precision"], m["recall"],
                         m["f1"], m["pr_auc"], m["f1_at_0.5"]])
    return markdown_table(["eval set", "method", "n", "anomalous", "threshold", "precision", "recall", "F1",
                           "PR-AUC", "F1 @0.5"], rows)


def drift_tables(drift: list[dict[str, Any]], methods: Sequence[str]) -> str:
    """One wide table per eval set: rows = method, columns = drift level, cells = F1 / PR-AUC."""
    out = []
    headers = ["method", *[f"{d['n_rules']} rules ({d['n_lines_changed_pct']:.0f}% lines)" for d in drift]]
    for eval_set in ("dev+order_dev", "dev", "order_dev"):
        metric = "recall" if eval_set == "order_dev" else "F1 / PR-AUC"
        rows = []
        for method in methods:
            cells = []
            for d in drift:
                m = d["results"][eval_set][method]
                cells.append(fmt(m["recall"]) if eval_set == "order_dev"
                             else f"{fmt(m['f1'])} / {fmt(m['pr_auc'])}")
            rows.append([method, *cells])
        out.append(f"**{eval_set}** ({metric}; clean thresholds)\n\n" + markdown_table(headers, rows))
    return "\n\n".join(out)


def per_rule_table(per_rule: list[dict[str, Any]], methods: Sequence[str]) -> str:
    rows = []
    for r in per_rule:
        res = r["results"]
        rows.append([r["template"], r["change"], r["description"], r["lines_changed"],
                     *[f"{fmt(res['dev+order_dev'][m]['f1'])} / {fmt(res['dev'][m]['f1'])}" for m in methods]])
    return markdown_table(["template", "change", "rewrite", "eval lines changed",
                           *[f"{m} F1 all / dev" for m in methods]], rows)


def subsample(sessions: list[LabelledSession], n: int, seed: int) -> list[LabelledSession]:
    if n >= len(sessions):
        return sessions
    rng = random.Random(seed)
    return [sessions[i] for i in sorted(rng.sample(range(len(sessions)), n))]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="the shared data folder holding hdfs/ (default ../shared/data or $LOGMOE_SHARED_DATA)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "runs" / "bench_hdfs",
                        help="where the logmoe model, subsets and drifted files go")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "train.yaml",
                        help="logmoe training config (its defaults where the file is missing)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="logmoe config override, e.g. --set training.epochs_stage1=1 (repeatable)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1,500 train + 150 order_train, 600 dev + 60 order_dev sessions, 1+1 epochs")
    parser.add_argument("--no-logmoe", action="store_true", help="baselines only (no training of logmoe)")
    parser.add_argument("--drift-levels", default="0.2,0.4,1.0",
                        help=f"fractions of the {len(DRIFT_RULES)} drift rules applied together (0: no drift table)")
    parser.add_argument("--per-rule", action="store_true", help="also one drift condition per single rule")
    add_run_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args)
    hdfs = args.data_dir / "hdfs"
    header = print_header("HDFS benchmark: logmoe vs classical baselines" + (" (--quick)" if args.quick else ""))
    started = time.perf_counter()

    train_files = [hdfs / "train.jsonl", hdfs / "order_train.jsonl"]
    eval_files = [hdfs / "dev.jsonl", hdfs / "order_dev.jsonl"]
    train_s = [s for f in train_files for s in load_hdfs_jsonl(f)]
    dev_s, order_dev_s = load_hdfs_jsonl(eval_files[0]), load_hdfs_jsonl(eval_files[1])
    overrides = list(args.overrides)
    if args.quick:
        normal_train = subsample(train_s[:-1133], 1500, args.seed) if len(train_s) > 1133 else train_s
        train_s = normal_train + subsample(train_s[-1133:], 150, args.seed)
        dev_s, order_dev_s = subsample(dev_s, 600, args.seed), subsample(order_dev_s, 60, args.seed)
        sub = args.out_dir / "subsets"
        train_files = [write_hdfs_jsonl(sub / "train.jsonl", train_s)]
        eval_files = [write_hdfs_jsonl(sub / "dev.jsonl", dev_s), write_hdfs_jsonl(sub / "order_dev.jsonl",
                                                                                  order_dev_s)]
        overrides = ["training.epochs_stage1=1", "training.epochs_stage2=1", *overrides]
    logger.info("train %d sessions (%d anomalous), dev %d (%d anomalous), order_dev %d", len(train_s),
                int(labels_of(train_s).sum()), len(dev_s), int(labels_of(dev_s).sum()), len(order_dev_s))

    parser = TemplateParser(hdfs / "HDFS_templates.csv")
    train = prepare(train_s, None)
    evaluation = prepare(dev_s + order_dev_s, None)
    agreement = check_parser(parser, evaluation)
    views = split_eval(evaluation, len(dev_s))

    estimators = baseline_estimators(args.seed)
    methods: list[Method] = [
        CountBaseline("masked-line counts + DecisionTree", "masked", estimators["DecisionTree"]),
        CountBaseline("masked-line counts + LogisticRegression", "masked", estimators["LogisticRegression"]),
        CountBaseline("event-id counts + DecisionTree", "event_ids", estimators["DecisionTree"]),
    ]
    if not args.no_logmoe:
        methods.insert(0, LogMoE(train_files, eval_files, args.out_dir / "logmoe", args.seed, args.config,
                                 overrides))
    fit_seconds = {}
    for method in methods:
        t0 = time.perf_counter()
        method.fit(train, evaluation)
        fit_seconds[method.name] = time.perf_counter() - t0
        logger.info("fitted %s in %.1fs (threshold %.4f)", method.name, fit_seconds[method.name], method.threshold)

    results = evaluate_all(methods, views)
    print("## Clean dev (train: train + order_train; thresholds calibrated for max F1 on dev + order_dev)\n")
    print(results_table(results))
    print()
    notes = [f"- event ids: the data's `event_ids` field; the template parser used under drift agrees with it on "
             f"{agreement:.4%} of clean eval lines."]
    logmoe = next((m for m in methods if isinstance(m, LogMoE)), None)
    if logmoe is not None:
        notes.append(logmoe_notes(logmoe, results))
    print("\n".join(notes) + "\n")

    drift_out: list[dict[str, Any]] = []
    per_rule_out: list[dict[str, Any]] = []
    levels = [float(x) for x in args.drift_levels.split(",") if x.strip()]
    if any(levels):
        check_rules_fire(dev_s + order_dev_s, DRIFT_RULES)
        total_lines = sum(len(s.lines) for s in dev_s + order_dev_s)
        for level in [0.0, *[x for x in levels if x > 0]]:
            rules = rules_for_fraction(level)
            drift_out.append(run_drift(methods, dev_s, order_dev_s, rules, parser, total_lines, evaluation))
        print("## Wording drift (trained on clean train; dev + order_dev lines of the first k rules' templates "
              "rewritten)\n")
        print(drift_tables(drift_out, [m.name for m in methods]))
        print()
        print("Rules, in order (each rewrites one HDFS template's lines):\n")
        print(markdown_table(["#", "template", "change", "rewrite"],
                             [[i + 1, r.template, r.change, r.description] for i, r in enumerate(DRIFT_RULES)]))
        print()
        if args.per_rule:
            for rule in DRIFT_RULES:
                d = run_drift(methods, dev_s, order_dev_s, (rule,), parser, total_lines, evaluation)
                d.update(template=rule.template, change=rule.change, description=rule.description)
                per_rule_out.append(d)
            print("## Drift, one rule at a time (F1 on dev + order_dev / on dev)\n")
            print(per_rule_table(per_rule_out, [m.name for m in methods]))
            print()
    elapsed = time.perf_counter() - started
    reference = fit_seconds[methods[-1].name]  # the event-id DecisionTree, always present
    print("- fit time relative to the event-id DecisionTree (same run): "
          + ", ".join(f"{name}: {sec / max(reference, 1e-9):.0f}x" for name, sec in fit_seconds.items())
          + f"; whole run {elapsed / 60:.1f} min.")
    write_json(args.json_out, {
        "machine": header, "quick": args.quick, "overrides": overrides, "results": results,
        "drift": [{k: v for k, v in d.items()} for d in drift_out], "per_rule": per_rule_out,
        "fit_seconds": fit_seconds, "parser_agreement": agreement,
        "logmoe_train_metrics": getattr(logmoe, "train_metrics", None) if logmoe else None,
    })
    return 0


def check_parser(parser: TemplateParser, data: Prepared) -> float:
    """Share of clean lines where the template parser gives the data's event id (expected: all)."""
    same = total = 0
    for masked, ids in zip(data.masked, data.event_ids):
        for line, eid in zip(masked, ids):
            same += parser.parse(line) == eid
            total += 1
    if same != total:
        logger.warning("template parser disagrees with event_ids on %d of %d lines", total - same, total)
    return same / max(total, 1)


def run_drift(methods: Sequence[Method], dev_s: list[LabelledSession], order_dev_s: list[LabelledSession],
              rules: Sequence[DriftRule], parser: TemplateParser, total_lines: int,
              clean: Prepared) -> dict[str, Any]:
    """Evaluate every (already fitted) method on dev + order_dev with `rules` applied; clean thresholds."""
    if rules:
        drifted = drift_sessions(dev_s + order_dev_s, rules)
        data = prepare(drifted, parser)
        changed = sum(a != b for s0, s1 in zip(dev_s + order_dev_s, drifted) for a, b in zip(s0.lines, s1.lines))
    else:
        data, changed = clean, 0
    logger.info("drift with %d rules (%s): %d of %d lines rewritten", len(rules),
                ",".join(r.template for r in rules) or "none", changed, total_lines)
    return {"n_rules": len(rules), "templates": [r.template for r in rules], "lines_changed": changed,
            "n_lines_changed_pct": 100.0 * changed / max(total_lines, 1),
            "results": evaluate_all(methods, split_eval(data, len(dev_s)))}


def logmoe_notes(logmoe: LogMoE, results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Where the logmoe model came from, and a cross-check with train.evaluate on the same files."""
    import train as train_pkg
    from train.config import EvalConfig

    cfg = logmoe.cfg
    check = train_pkg.evaluate(EvalConfig(model=str(logmoe.model_dir), data=[str(p) for p in logmoe.eval_files],
                                          device=cfg.training.device))
    mine = results["dev+order_dev"][logmoe.name]["f1"]
    agree = "agrees" if math.isclose(check["f1"], mine, abs_tol=1e-9) else "DISAGREES"
    t = cfg.training
    return (f"- logmoe: configs/train.yaml + overrides {logmoe.overrides or 'none'}; epochs {t.epochs_stage1}+"
            f"{t.epochs_stage2}, lr {t.learning_rate}, batch {t.batch_size}, seed {t.seed}, window "
            f"{cfg.model.max_window}/hop {logmoe.hop}; `train.evaluate` on dev + order_dev gives F1 "
            f"{check['f1']:.4f}, PR-AUC {fmt(check.get('pr_auc'))} ({agree} with the table).")


if __name__ == "__main__":
    raise SystemExit(main())
