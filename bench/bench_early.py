"""Early scoring offline: which early threshold calibration works, at which early_hop, on a trained model.

For a model folder and its eval sessions, every prefix the worker could score early (every line of every session,
but the lines where a regular window is scored anyway) is scored once with `model.LogScorer`; each early_hop then
takes its subset (the lines at multiples of early_hop and the novel ones: model.early's rule). The early thresholds
are calibrated as training does (train.early.calibrate_early, target: the closing threshold's false-positive share)
both ways, one threshold for every length ("single") and one per length bucket ("per_length"), and measured on
sessions they were not calibrated on: the eval sessions are split in two halves by a hash of their id, each half
calibrates the thresholds the other half is measured with, and the two halves' counts are added. "in-sample" rows
calibrate and measure on all of them, as training does.

Reported per row: anomalous sessions alerted before their last line (early windows at or over their threshold,
or a regular window of a session longer than max_window at or over the closing one), normal sessions alerted
early that the closing score does not flag, session precision and recall closing only and with early alerts, and
early windows scored per session (the extra scoring work).

    .venv/bin/python bench/bench_early.py --model runs/hdfs_real/final_moe_model \\
        --data ../shared/data/hdfs_real/dev.jsonl --train ../shared/data/hdfs_real/train.jsonl
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import markdown_table, print_header, start_run, write_json, add_run_options

from model.early import NOVEL, EarlyRule, novel_flags
from model.masking import mask
from model.windowing import regular_window_due
from train.data import Session
from train.early import (ScoredPrefix, calibrate_early, closing_fpr, early_report, length_bounds,
                         regular_window_scores, score_in_length_order, session_outcomes)

logger = logging.getLogger("bench.early")


def load_sessions(files: Sequence[str], settings: Sequence[str], max_window: int) -> list[Session]:
    from train.config import load_eval_config
    from train.evaluation import load_eval_sessions

    cfg = load_eval_config("unused", files, settings)
    sessions, report = load_eval_sessions(cfg, max_window)
    if report.total:
        logger.warning("skipped %d invalid records", report.total)
    return sessions


def normal_lines_of(model_dir: Path, scorer: Any, train: Sequence[str], settings: Sequence[str]) -> frozenset[str]:
    """The model's normal_lines.json, else the masked lines of the normal sessions of `train`."""
    if scorer.normal_lines is not None:
        return scorer.normal_lines
    if not train:
        raise ValueError(f"{model_dir} has no normal_lines.json (trained before it was written): pass --train, the "
                         f"files it was trained on")
    sessions = load_sessions(train, settings, scorer.max_window)
    return frozenset(mask(line) for s in sessions if not s.label for line in s.lines)


def score_every_prefix(scorer: Any, sessions: Sequence[Session], hop: int,
                       batch_size: int) -> list[dict[int, float]]:
    """Per session, {end: score} of the window ending at every line where no regular window ends."""
    windows: list[list[str]] = []
    owners: list[tuple[int, int]] = []
    for index, session in enumerate(sessions):
        lines = list(session.lines)
        for end in range(1, len(lines) + 1):
            if not regular_window_due(end, scorer.max_window, hop):
                windows.append(lines[max(0, end - scorer.max_window):end])
                owners.append((index, end))
    logger.info("scoring %d prefixes of %d sessions", len(windows), len(sessions))
    scores = score_in_length_order(scorer, windows, batch_size)
    out: list[dict[int, float]] = [{} for _ in sessions]
    for (index, end), score in zip(owners, scores):
        out[index][end] = score
    return out


def prefixes_for(rule: EarlyRule, sessions: Sequence[Session], every: Sequence[dict[int, float]],
                 novel: Sequence[list[bool]]) -> list[list[ScoredPrefix]]:
    out = []
    for session, scores, flags in zip(sessions, every, novel):
        rows = []
        for end in range(1, len(session.lines) + 1):
            trigger = rule.trigger(end, flags[end - 1])
            if trigger is not None:
                rows.append(ScoredPrefix(end, min(end, rule.window), scores[end], trigger))
        out.append(rows)
    return out


def half(session: Session) -> int:
    return hashlib.sha256(session.session_id.encode()).digest()[0] % 2


def run(args: argparse.Namespace) -> dict[str, Any]:
    from model import LogScorer

    scorer = LogScorer.from_pretrained(args.model, device="cpu", batch_size=args.batch_size)
    hop = scorer.window_hop
    sessions = load_sessions(args.data, args.set, scorer.max_window)
    normal_lines = normal_lines_of(Path(args.model), scorer, args.train, args.set)
    labels = [s.label for s in sessions]
    logger.info("%d eval sessions (%d anomalous), %d normal lines", len(sessions), sum(labels), len(normal_lines))
    started = time.perf_counter()
    every = score_every_prefix(scorer, sessions, hop, args.batch_size)
    windows = regular_window_scores(scorer, sessions, hop, args.batch_size)
    closing = [max(score for _, score in w) for w in windows]
    score_s = time.perf_counter() - started
    threshold = scorer.threshold
    novel = [novel_flags([mask(line) for line in s.lines], normal_lines) for s in sessions]
    folds = [half(s) for s in sessions]
    rows = []
    for early_hop in args.early_hops:
        rule = EarlyRule(scorer.max_window, hop, early_hop)
        prefixes = prefixes_for(rule, sessions, every, novel)
        for calibration in args.calibrations:
            bounds = length_bounds(scorer.max_window) if calibration == "per_length" else (scorer.max_window,)
            for protocol in ("held-out halves", "in-sample"):
                outcomes: list[Any] = [None] * len(sessions)
                thresholds = []
                for fold in ((0, 1) if protocol == "held-out halves" else (None,)):
                    calib = [i for i in range(len(sessions)) if fold is None or folds[i] == fold]
                    measure = [i for i in range(len(sessions)) if fold is None or folds[i] != fold]
                    target = closing_fpr([labels[i] for i in calib], [closing[i] for i in calib], threshold)
                    early = calibrate_early([prefixes[i] for i in calib if not labels[i]], target, threshold, bounds)
                    thresholds.append(early.to_config())
                    sub = session_outcomes([sessions[i] for i in measure], [prefixes[i] for i in measure],
                                           [closing[i] for i in measure], threshold, early,
                                           [windows[i] for i in measure])
                    for i, o in zip(measure, sub):
                        outcomes[i] = o
                report = early_report(sessions, outcomes, closing, threshold)
                report.update({"early_hop": early_hop, "calibration": calibration, "protocol": protocol,
                               "thresholds": thresholds,
                               "early_windows_per_session": sum(len(p) for p in prefixes) / len(sessions),
                               "novel_windows_per_session": sum(1 for p in prefixes for x in p if x.trigger == NOVEL)
                               / len(sessions)})
                rows.append(report)
                logger.info("early_hop %d %s %s: %d/%d before the last line, %d extra false alarms", early_hop,
                            calibration, protocol, report["alerted_before_last_line"], report["anomalous"],
                            report["normal_alerted_early_only"])
    return {"model": str(args.model), "data": list(args.data), "sessions": len(sessions),
            "anomalous": sum(labels), "threshold": threshold, "score_seconds": score_s, "rows": rows}


def print_report(r: dict[str, Any]) -> None:
    print(f"- model `{r['model']}` (closing threshold {r['threshold']:.4f}); eval {', '.join(r['data'])}: "
          f"{r['sessions']} sessions, {r['anomalous']} anomalous\n")
    table = []
    for row in r["rows"]:
        c, e = row["closing"], row["with_early"]
        table.append([row["early_hop"], row["calibration"], row["protocol"],
                      f"{row['alerted_before_last_line']} ({row['share_before_last_line']:.1%})",
                      row["alerted_early"], row["normal_alerted_early_only"],
                      f"{c['precision']:.4f} / {c['recall']:.4f}", f"{e['precision']:.4f} / {e['recall']:.4f}",
                      f"{row['early_windows_per_session']:.2f}"])
    print(markdown_table(["early_hop", "calibration", "thresholds from", "anomalous alerted before their last line",
                          "alerted early (any)", "normal alerted early only", "precision / recall closing",
                          "precision / recall with early", "early windows per session"], table))
    print("\n- thresholds ([[up_to_lines, threshold], ...], one list per calibration half):")
    for row in r["rows"]:
        if row["protocol"] == "in-sample":
            print(f"  - early_hop {row['early_hop']}, {row['calibration']}: {row['thresholds'][0]}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model folder (…/final_moe_model)")
    p.add_argument("--data", nargs="+", required=True, help="eval files, read as `logmoe evaluate` reads them")
    p.add_argument("--train", nargs="*", default=[], help="training files (for the normal lines, when the model "
                                                          "folder has no normal_lines.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="how the files are read (data.format=..., as for logmoe evaluate)")
    p.add_argument("--early-hops", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--calibrations", nargs="+", default=["single", "per_length"], choices=["single", "per_length"])
    p.add_argument("--batch-size", type=int, default=256)
    add_run_options(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args)
    result = run(args)
    info = print_header("Early scoring offline: calibrations and early_hop")
    print_report(result)
    write_json(args.json_out, {"machine": info, **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
