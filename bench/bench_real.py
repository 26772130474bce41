"""Detection on real and synthetic logs: logmoe with its default config beside count baselines, one run.

Data sets (../shared/data, see its README), each trained on its train split and measured on its dev split:
- hdfs_real: real HDFS_v1 lines split by time (train: the first hours, dev: the hours after);
- bgl: real Blue Gene/L lines cut into windows of 20 lines (train: June-August 2005, dev: September);
- hdfs: synthetic HDFS sessions (train + order_train -> dev + order_dev), also scored on order_dev alone and with
  30% of the wording-drift rules of bench/drift.py applied to dev + order_dev ("reworded statements").

Methods, fitted on the same train split: logmoe (`train.train` with configs/train.yaml and no override, scored
through `model.LogScorer` over `model.windowing.session_windows`, the worker's path), a DecisionTree and a
LogisticRegression on masked-line counts, and "novelty-baseline": never-seen lines alone (which level groups of lines
train never held a session holds, weighed on the labelled dev split; no classifier). Every threshold is chosen the
same way: max F1 on the data set's dev split (`train.metrics.calibrate_threshold`, which logmoe's training runs on
its eval file); the drifted views keep the clean threshold. PR-AUC needs no threshold. Training time is each
method's own fit, in the same run.

`--calibrate-on later-train` measures what a dev threshold is worth on a later period, with data this machine has:
each method fits the earlier part of a time-ordered train split (hdfs_real, bgl), logmoe selects its epoch and every
threshold is chosen on the rest of that train split (the last --later-fraction, in time order), and dev is scored at
those thresholds as the future. That is the held-out protocol one period earlier. Every view also shows the
optimistic "max F1" at that view's own best threshold, so ranking and threshold transfer can be told apart.

Unsupervised methods fit the same train split without its labels: logmoe with `training.objective=unsupervised`
(and any --set-unsupervised overrides), and PCA (SPE of tf-idf counts) and an isolation forest on masked-line counts,
as loglizer does. Each is shown at two kinds of threshold: label-free, flagging a share of the dev sessions
(`train.metrics.rate_threshold`, --rates; every session here is one window, so it is the worker's alert rate), never
cutting inside a group of top sessions a gap in the scores sets apart (--rate-gaps, default `training.rate_gap`'s;
0 is the plain rate), and max F1 on the labelled dev split, as for the supervised methods. logmoe trains with
`training.threshold_objective=f1` on that labelled split, so training also fits the novelty calibration there
(`training.novelty_calibration`); the label-free and max-F1 rows read its scores without it, and one more row
("+ novelty calibration") with it, at the threshold training stored.

    .venv/bin/python bench/bench_real.py [--sets hdfs_real,bgl,hdfs] [--methods ...] [--quick] [--json-out F]
"""
from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from _common import (
    REPO_ROOT, CountAnomalyBaseline, CountBaseline, LabelledSession, LogMoE, Method, NoveltyRuleBaseline,
    add_run_options, baseline_estimators, default_data_dir, load_hdfs_jsonl, markdown_table, prepare, print_header,
    start_run, write_hdfs_jsonl, write_json,
)
from drift import DRIFT_RULES, drift_sessions, rules_for_fraction

logger = logging.getLogger("bench.real")

SETS = ("hdfs_real", "bgl", "hdfs")
METHODS = ("logmoe", "logmoe-unsupervised", "supervised-baselines", "unsupervised-baselines", "novelty-baseline")
REWORDED_FRACTION = 0.3  # share of the drift rules applied for the "reworded statements" view


@dataclass
class DataSet:
    """One benchmark data set: train and eval files (what logmoe reads) and the views scored at the end."""

    name: str
    train_files: list[Path]
    eval_files: list[Path]
    train: list[LabelledSession]
    views: dict[str, list[LabelledSession]]  # the first view is the eval split every threshold is chosen on


def subsample(sessions: list[LabelledSession], n: int, seed: int) -> list[LabelledSession]:
    """n sessions in their original order (all anomalies kept where they fit), for --quick."""
    if n >= len(sessions):
        return sessions
    anomalous = [i for i, s in enumerate(sessions) if s.label]
    normal = [i for i, s in enumerate(sessions) if not s.label]
    rng = random.Random(seed)
    keep_a = rng.sample(anomalous, min(len(anomalous), n // 4))
    keep_n = rng.sample(normal, n - len(keep_a))
    return [sessions[i] for i in sorted(keep_a + keep_n)]


def later_split(data: DataSet, fraction: float, out_dir: Path) -> DataSet:
    """The same set with the last `fraction` of its (time-ordered) train sessions as the calibration view, dev after
    it as the future: the held-out protocol one period earlier."""
    cut = round(len(data.train) * (1 - fraction))
    earlier, later = data.train[:cut], data.train[cut:]
    if not any(s.label for s in later) or not any(not s.label for s in later):
        raise ValueError(f"{data.name}: the last {fraction:g} of train holds one class only; choose another "
                         f"--later-fraction ({fraction})")
    sub = out_dir / "subsets" / f"{data.name}-later"
    train_files = [write_hdfs_jsonl(sub / "train.jsonl", earlier)]
    eval_files = [write_hdfs_jsonl(sub / "calibration.jsonl", later)]
    views = {"later train (calibration)": later, **{f"{k} (future)": v for k, v in data.views.items()}}
    logger.info("%s: earlier train %d sessions (%d anomalous), later train %d (%d anomalous)", data.name,
                len(earlier), sum(s.label for s in earlier), len(later), sum(s.label for s in later))
    return DataSet(data.name, train_files, eval_files, earlier, views)


def load_set(name: str, data_dir: Path, out_dir: Path, quick: bool, seed: int) -> DataSet:
    folder = data_dir / name
    if name == "hdfs":
        train_files = [folder / "train.jsonl", folder / "order_train.jsonl"]
        dev, order_dev = load_hdfs_jsonl(folder / "dev.jsonl"), load_hdfs_jsonl(folder / "order_dev.jsonl")
    else:
        train_files = [folder / "train.jsonl"]
        dev, order_dev = load_hdfs_jsonl(folder / "dev.jsonl"), []
    train = [s for f in train_files for s in load_hdfs_jsonl(f)]
    if quick:
        train, dev, order_dev = subsample(train, 1200, seed), subsample(dev, 400, seed), order_dev[:40]
        sub = out_dir / "subsets" / name
        train_files = [write_hdfs_jsonl(sub / "train.jsonl", train)]
        eval_files = [write_hdfs_jsonl(sub / "dev.jsonl", dev + order_dev)]
    else:
        eval_files = [folder / "dev.jsonl"] + ([folder / "order_dev.jsonl"] if order_dev else [])
    views = {"dev": dev + order_dev}
    if order_dev:
        views["dev (no order)"] = dev
        views["order_dev"] = order_dev
        rules = rules_for_fraction(REWORDED_FRACTION)
        views[f"dev reworded ({len(rules)}/{len(DRIFT_RULES)} rules)"] = drift_sessions(dev + order_dev, rules)
    logger.info("%s: train %d sessions (%d anomalous), %s", name, len(train), sum(s.label for s in train),
                ", ".join(f"{k} {len(v)} ({sum(s.label for s in v)} anomalous)" for k, v in views.items()))
    return DataSet(name, train_files, eval_files, train, views)


def run_set(data: DataSet, args: argparse.Namespace) -> dict[str, Any]:
    from train.metrics import calibrate_threshold, classification_metrics, rate_threshold

    estimators = baseline_estimators(args.seed)
    wanted = set(args.methods.split(","))
    supervised: list[Method] = []
    unsupervised: list[Method] = []
    if "logmoe" in wanted:
        supervised.append(LogMoE(data.train_files, data.eval_files, args.out_dir / data.name / "logmoe", args.seed,
                                 args.config, args.overrides, name="logmoe (default config)"))
    if "supervised-baselines" in wanted:
        supervised += [CountBaseline("masked-line counts + DecisionTree", "masked", estimators["DecisionTree"]),
                       CountBaseline("masked-line counts + LogisticRegression", "masked",
                                     estimators["LogisticRegression"])]
    if "novelty-baseline" in wanted:
        supervised.append(NoveltyRuleBaseline("never-seen line levels + LogisticRegression (calibration labels only)"))
    if "logmoe-unsupervised" in wanted:
        unsupervised.append(LogMoE(data.train_files, data.eval_files, args.out_dir / data.name / "logmoe_unsupervised",
                                   args.seed, args.config,
                                   ["training.objective=unsupervised", "training.threshold_objective=f1",
                                    *args.overrides, *args.unsupervised_overrides],
                                   name="logmoe unsupervised"))
    if "unsupervised-baselines" in wanted:
        unsupervised += [CountAnomalyBaseline("masked-line counts + PCA (unsupervised)", "pca", args.seed),
                         CountAnomalyBaseline("masked-line counts + IsolationForest (unsupervised)", "iforest",
                                              args.seed)]
    train = prepare(data.train)
    views = {name: prepare(sessions) for name, sessions in data.views.items()}
    calibration = next(iter(views.values()))
    fit_seconds: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {name: {} for name in views}
    saved: dict[str, dict[str, list[float]]] = {}  # method -> view -> session scores (for offline threshold rules)
    extra: dict[str, Any] = {}
    for method in supervised + unsupervised:
        started = time.perf_counter()
        method.fit(train, calibration)
        seconds = time.perf_counter() - started
        scores = {name: method.score(view) for name, view in views.items()}
        rules: dict[str, tuple[float, dict[str, Any]]]  # row suffix -> threshold, the scores it applies to
        free = scores  # the scores without a novelty calibration fitted on labels
        if method in supervised:
            rules = {"": (method.threshold, scores)}
        else:  # label-free rates of the calibration sessions, then max F1 on the labelled calibration split
            first = next(iter(views))
            where = "calibration" if args.calibrate_on == "later-train" else "dev"
            calibrated = isinstance(method, LogMoE) and method.novelty_calibrated
            free = {name: method.score(view, novelty=False) for name, view in views.items()} if calibrated else scores
            rules = {f", rate {rate:g} of {where}{gap_label(gap)}": (rate_threshold(free[first], rate, gap), free)
                     for rate in args.rates for gap in args.rate_gaps}
            rules[f", max F1 on {where}"] = (calibrate_threshold(calibration.labels, free[first], "f1"), free)
            if calibrated:  # the novelty calibration was fitted on those labels too
                rules[f", max F1 on {where} + novelty calibration"] = (method.threshold, scores)
        if isinstance(method, LogMoE):
            extra[method.name] = {"stored_threshold": method.threshold,
                                  **{k: method.train_metrics.get(k)
                                     for k in ("unsupervised", "timings", "novelty_calibration")}}
        for rule, (threshold, by_view) in rules.items():
            fit_seconds[method.name + rule] = seconds
            logger.info("%s: %s%s fitted in %.1f s (threshold %.4f)", data.name, method.name, rule, seconds, threshold)
            for name, view in views.items():  # max F1: each view's F1 at its own best cut, whatever the rule
                own_best = calibrate_threshold(view.labels, by_view[name], "f1")
                results[name][method.name + rule] = {**classification_metrics(view.labels, by_view[name], threshold),
                                                     "max_f1": classification_metrics(view.labels, by_view[name],
                                                                                      own_best)["f1"]}
        saved[method.name] = as_lists(scores)
        if free is not scores:
            saved[method.name + " (without novelty calibration)"] = as_lists(free)
    labels = {name: [int(x) for x in view.labels] for name, view in views.items()}
    return {"results": results, "fit_seconds": fit_seconds, "logmoe": extra,
            "scores": {"labels": labels, "by_method": saved}}


def gap_label(gap: float) -> str:
    """The row suffix of a rate threshold with `gap` (nothing for the default of `training.rate_gap`)."""
    from train.config import TrainingSection

    return "" if gap == TrainingSection().rate_gap else f", gap {gap:g}"


def as_lists(scores: dict[str, Any]) -> dict[str, list[float]]:
    """view -> session scores, as JSON lists."""
    return {name: [float(x) for x in values] for name, values in scores.items()}


def table(name: str, out: dict[str, Any]) -> str:
    rows = []
    for view, by_method in out["results"].items():
        for method, m in by_method.items():
            rows.append([view, method, m["n"], m["n_anomalous"], m["threshold"], m["precision"], m["recall"], m["f1"],
                         m["max_f1"], m["pr_auc"], f"{out['fit_seconds'][method]:.1f}"])
    return f"## {name}\n\n" + markdown_table(
        ["eval", "method", "n", "anomalous", "threshold", "precision", "recall", "F1", "max F1 (own best threshold)",
         "PR-AUC", "train s"], rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="the shared data folder (default ../shared/data or $LOGMOE_SHARED_DATA)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "runs" / "bench_real",
                        help="where the logmoe models go")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "train.yaml",
                        help="logmoe training config (default: configs/train.yaml, the defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="logmoe config override (repeatable); none for the benchmark of record")
    parser.add_argument("--set-unsupervised", dest="unsupervised_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override for the unsupervised logmoe only (repeatable)")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--rates", type=lambda text: [float(x) for x in text.split(",")], default=[0.01, 0.03],
                        help="alert rates of the label-free thresholds (default 0.01,0.03)")
    parser.add_argument("--rate-gaps", type=lambda text: [float(x) for x in text.split(",")], default=None,
                        help="rate_gap of the label-free thresholds, one row each (default: training.rate_gap's "
                             "default; 0: the plain rate)")
    parser.add_argument("--calibrate-on", choices=("dev", "later-train"), default="dev",
                        help="dev (default): fit on train, thresholds on dev; later-train: fit on the earlier train, "
                             "thresholds on the rest of train, dev scored as the future (hdfs_real, bgl)")
    parser.add_argument("--later-fraction", type=float, default=0.3,
                        help="with --calibrate-on later-train: the share of train, last in time, to calibrate on")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run on 1,200 train / 400 dev sessions per set (not a benchmark)")
    add_run_options(parser)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sets.split(",")) - set(SETS))
    if unknown:
        parser.error(f"--sets: unknown data set(s) {unknown}; choose from {', '.join(SETS)}")
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not 0.0 < args.later_fraction < 1.0:
        parser.error(f"--later-fraction must be in (0, 1) ({args.later_fraction})")
    if args.rate_gaps is None:
        from train.config import TrainingSection

        args.rate_gaps = [TrainingSection().rate_gap]
    bad = [g for g in args.rate_gaps if not g >= 0.0]
    if bad:
        parser.error(f"--rate-gaps must be >= 0 ({bad})")
    if args.calibrate_on == "later-train" and "hdfs" in args.sets.split(","):
        parser.error("--calibrate-on later-train needs a train split in time order: hdfs_real or bgl, not the "
                     "synthetic hdfs (split by event sequence)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args)
    header = print_header("Detection on real and synthetic logs: logmoe (default config) vs count baselines"
                          + (" (--quick)" if args.quick else ""))
    if args.calibrate_on == "later-train":
        print(f"Past -> future: fitted on the earlier {1 - args.later_fraction:g} of each train split; thresholds (and "
              f"logmoe's epoch) chosen on the later {args.later_fraction:g}, the same way for every method; dev is "
              "the future, scored at those thresholds.\n")
    else:
        print("Thresholds: max F1 on each set's dev split, the same way for every method; unsupervised methods also "
              "at label-free rates of the dev sessions; drifted views keep them.\n")
    payload: dict[str, Any] = {"machine": header, "sets": {}}
    for name in args.sets.split(","):
        data = load_set(name, args.data_dir, args.out_dir, args.quick, args.seed)
        if args.calibrate_on == "later-train":
            data = later_split(data, args.later_fraction, args.out_dir)
        out = run_set(data, args)
        payload["sets"][name] = out
        print(table(name, out) + "\n", flush=True)
    write_json(args.json_out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
