"""What a live worker's idle close does to detection: sessions cut at their pauses, side by side with uncut ones.

The worker closes a session after `session_idle` seconds without a line and scores what it holds; lines that come
later open a new session under the same key. On real HDFS a block is written in seconds and deleted hours later, so
any idle shorter than that cuts every block in two. A replay squeezes those hours into seconds and never shows it;
this script does, offline: it reads a stream file (one raw line a line, in time order), cuts each session wherever
two of its lines are more than IDLE seconds apart (by the lines' own timestamps, train.pauses), scores every part as
the worker scores a closing session (the model's scorer, windows and threshold; early alerts left out), and counts a
session as alerted when any of its parts is. One row per idle, the uncut sessions first, and the model's own
session_idle (what the worker uses when session_idle is unset).

    python bench/bench_idle.py --model runs/hdfs_real/final_moe_model \\
        --stream ../shared/data/hdfs_real/dev_stream.log --labels ../shared/data/hdfs_real/dev_labels.csv \\
        --idles 300 3600 model
"""
from __future__ import annotations

import argparse
import logging
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from _common import (add_run_options, default_data_dir, fmt, markdown_table, print_header, read_session_labels,
                     require_file, start_run, write_json)

from model.decision import is_anomalous
from stream.records import match_key
from train.data import Session
from train.metrics import classification_metrics
from train.pauses import gaps, line_time

logger = logging.getLogger("bench")


def read_stream(path: Path, key_regex: str) -> dict[str, list[tuple[float | None, str]]]:
    """Session key (the worker's rule, stream.records.match_key) -> its (time, line) pairs in file order; lines
    without a key are left out and counted in the log."""
    pattern = re.compile(key_regex)
    sessions: dict[str, list[tuple[float | None, str]]] = defaultdict(list)
    unkeyed = 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            found = pattern.search(line)
            if found is None:
                unkeyed += bool(line)  # blank lines are dropped by replay too
                continue
            sessions[match_key(found)].append((line_time(line), line))
    if unkeyed:
        logger.warning("%d lines of %s match no session key %r: left out", unkeyed, path, key_regex)
    return sessions


def cut(lines: list[tuple[float | None, str]], idle: float | None) -> list[list[str]]:
    """The parts a worker with `idle` seconds makes of one session (None: never cut)."""
    parts: list[list[str]] = [[]]
    for (_, line), gap in zip(lines, gaps([stamp for stamp, _ in lines])):
        if idle is not None and gap is not None and gap > idle:
            parts.append([])
        parts[-1].append(line)
    return parts


def measure(scorer: Any, sessions: dict[str, list[tuple[float | None, str]]], labels: dict[str, int],
            idle: float | None, batch_size: int) -> dict[str, Any]:
    from train.evaluation import score_sessions

    parts: list[Session] = []
    owners: list[str] = []
    for key, lines in sessions.items():
        for number, part in enumerate(cut(lines, idle)):
            parts.append(Session(f"{key}#{number}", tuple(part), labels[key]))
            owners.append(key)
    started = time.perf_counter()
    scores = score_sessions(scorer, parts, scorer.window_hop, batch_size)
    alerted = {key for key, score in zip(owners, scores.scores) if is_anomalous(score, scorer.threshold)}
    m = classification_metrics([labels[key] for key in sessions], [float(key in alerted) for key in sessions], 0.5)
    (_, fp), (fn, _) = m["confusion_matrix"]
    parts_of = Counter(owners)
    return {"idle_s": idle, "parts": len(parts), "sessions_cut": sum(1 for n in parts_of.values() if n > 1),
            "precision": m["precision"], "recall": m["recall"], "f1": m["f1"], "false_alarms": fp, "missed": fn,
            "score_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    data = default_data_dir()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="trained model folder (…/final_moe_model)")
    p.add_argument("--stream", type=Path, default=data / "hdfs_real" / "dev_stream.log")
    p.add_argument("--labels", type=Path, default=data / "hdfs_real" / "dev_labels.csv")
    p.add_argument("--key-regex", default=r"(blk_-?\d+)", help="the worker's session_key")
    p.add_argument("--idles", nargs="+", default=["300", "3600", "model"],
                   help="idle seconds to cut at; 'model' = the model's session_idle")
    p.add_argument("--batch-size", type=int, default=256)
    add_run_options(p)
    args = p.parse_args()
    start_run(args)
    from train.evaluation import load_scorer

    scorer = load_scorer(str(args.model), "cpu", args.batch_size)
    idles: list[float | None] = [None]
    for text in args.idles:
        if text == "model":
            if scorer.session_idle is None:
                p.error(f"{args.model} stores no session_idle (trained without timestamps, or before it was measured)")
            idles.append(scorer.session_idle)
        else:
            try:
                idles.append(float(text))
            except ValueError:
                p.error(f"--idles: {text!r} is neither a number of seconds nor 'model'")
    sessions = read_stream(require_file(args.stream), args.key_regex)
    labels = read_session_labels(require_file(args.labels))
    unknown = sorted(set(sessions) - set(labels))
    if unknown:
        p.error(f"{len(unknown)} sessions of {args.stream} have no label in {args.labels}, e.g. {unknown[0]!r}")
    meta = print_header("Sessions cut by the worker's idle close")
    stored = "none stored" if scorer.session_idle is None else f"{scorer.session_idle:g} s"
    print(f"- model: `{args.model}`; its session_idle: {stored}; threshold "
          f"{scorer.threshold:.4f}; stream `{args.stream}` ({len(sessions)} sessions)\n")
    rows = [measure(scorer, sessions, labels, idle, args.batch_size) for idle in idles]
    print(markdown_table(["session_idle", "sessions cut", "parts scored", "precision", "recall", "F1",
                          "false alarms", "missed", "F1 / uncut"],
                         [["uncut (replay)" if r["idle_s"] is None else f"{r['idle_s']:g} s", r["sessions_cut"],
                           r["parts"], fmt(r["precision"]), fmt(r["recall"]), fmt(r["f1"]), r["false_alarms"],
                           r["missed"], fmt(r["f1"] / rows[0]["f1"] if rows[0]["f1"] else 0.0)] for r in rows]))
    write_json(args.json_out, {**meta, "model": str(args.model), "session_idle": scorer.session_idle, "rows": rows})


if __name__ == "__main__":
    main()
