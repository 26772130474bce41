"""Would scoring an open session once it goes quiet alert sooner, and at what cost? Offline, on labelled sessions.

The worker alerts on a session early (its open window every early_hop lines and at once on a never-normal line,
judged by the early thresholds) or when it closes, `session_idle` seconds after its last line: on real HDFS that is
about 14 hours. This script asks what one more trigger would do: score an open session's current window when no
line came for QUIET seconds (by the lines' own timestamps, train.pauses; after the last line there is always such a
pause), judged by the model's early thresholds as they are calibrated today (on the early_hop grid, without quiet
windows). Per QUIET it counts:

- anomalous sessions the worker alerts only at close (no early window reaches its threshold) that a quiet window
  catches, so their alert comes QUIET seconds after a line instead of session_idle after the last one;
- normal sessions a quiet window flags that the worker does not flag today (early or at close): new false alarms.

Nothing here changes the worker; the numbers say whether the trigger pays and whether its windows need thresholds
calibrated on them.

    python bench/bench_quiet.py --model runs/hdfs_real/final_moe_model \\
        --data ../shared/data/hdfs_real/dev.jsonl --quiet 60 300 3600
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (add_run_options, default_data_dir, markdown_table, print_header, require_file, start_run,
                     write_json)

from model.decision import is_anomalous
from model.early import EarlyRule, EarlyThresholds
from train.data import Session, load_jsonl
from train.early import score_in_length_order, score_prefixes
from train.pauses import gaps, line_time

logger = logging.getLogger("bench")


def quiet_ends(session_gaps: Sequence[float | None], quiet: float) -> list[int]:
    """Line counts (1-based) after which a session (its train.pauses.gaps) is silent for >= `quiet` seconds: where
    the next timed line is that much later, and the last line."""
    ends = [k for k, gap in enumerate(session_gaps) if gap is not None and gap >= quiet]  # gaps[0] is None
    return [*ends, len(session_gaps)]


def first_quiet_alerts(scorer: Any, sessions: Sequence[Session], session_gaps: Sequence[Sequence[float | None]],
                       quiet: float, early: EarlyThresholds, batch_size: int) -> dict[int, int]:
    """Session index -> the line count of its first quiet window that reaches its early threshold."""
    windows: list[list[str]] = []
    owners: list[tuple[int, int]] = []
    for index, session in enumerate(sessions):
        for end in quiet_ends(session_gaps[index], quiet):
            windows.append(list(session.lines[max(0, end - scorer.max_window):end]))
            owners.append((index, end))
    first: dict[int, int] = {}
    for (index, end), window, score in zip(owners, windows, score_in_length_order(scorer, windows, batch_size)):
        if index not in first and early.flags(score, len(window)):
            first[index] = end
    return first


def main() -> None:
    data = default_data_dir()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="trained model folder (…/final_moe_model)")
    p.add_argument("--data", type=Path, default=data / "hdfs_real" / "dev.jsonl",
                   help="labelled sessions (JSONL) whose lines carry timestamps")
    p.add_argument("--quiet", type=float, nargs="+", default=[60.0, 300.0, 3600.0],
                   help="seconds without a line after which the open session would be scored")
    p.add_argument("--batch-size", type=int, default=256)
    add_run_options(p)
    args = p.parse_args()
    start_run(args)
    from train.evaluation import load_scorer, score_sessions

    scorer = load_scorer(str(args.model), "cpu", args.batch_size)
    early = scorer.early_thresholds
    if early is None or not scorer.early_hop:
        p.error(f"{args.model} has no early thresholds (trained with early_calibration=off, or before them)")
    if any(q <= 0 for q in args.quiet):
        p.error(f"--quiet: seconds must be > 0, got {args.quiet}")
    sessions = load_jsonl(require_file(args.data))
    rule = EarlyRule(scorer.max_window, scorer.window_hop, scorer.early_hop)
    prefixes = score_prefixes(scorer, sessions, rule, scorer.normal_lines, args.batch_size)
    early_alert = [any(early.flags(w.score, w.n_lines) for w in scored) for scored in prefixes]
    closing = score_sessions(scorer, sessions, scorer.window_hop, args.batch_size).scores
    alerted_now = [e or is_anomalous(c, scorer.threshold) for e, c in zip(early_alert, closing)]
    anomalous = [i for i, s in enumerate(sessions) if s.label]
    late = [i for i in anomalous if alerted_now[i] and not early_alert[i]]  # alert only at close, session_idle late
    meta = print_header("Scoring open sessions once they go quiet")
    print(f"- model: `{args.model}`; threshold {scorer.threshold:.4f}; early thresholds {early.to_config()}; "
          f"session_idle {scorer.session_idle} s; data `{args.data}` ({len(sessions)} sessions, "
          f"{len(anomalous)} anomalous)")
    print(f"- today: {sum(alerted_now[i] for i in anomalous)} anomalous sessions alerted, {len(late)} of them only at "
          f"close; {sum(1 for i, s in enumerate(sessions) if not s.label and alerted_now[i])} normal sessions "
          f"alerted\n")
    session_gaps = [gaps([line_time(line) for line in s.lines]) for s in sessions]  # timestamps read once
    rows = []
    for quiet in args.quiet:
        first = first_quiet_alerts(scorer, sessions, session_gaps, quiet, early, args.batch_size)
        caught = [i for i in late if i in first]
        rows.append({
            "quiet_s": quiet,
            "late_caught": len(caught),
            "late_caught_before_last_line": sum(1 for i in caught if first[i] < len(sessions[i].lines)),
            "anomalous_new": sum(1 for i in anomalous if i in first and not alerted_now[i]),
            "normal_new_alarms": sum(1 for i, s in enumerate(sessions)
                                     if not s.label and i in first and not alerted_now[i]),
            "normal_sessions_with_a_pause": sum(1 for s, g in zip(sessions, session_gaps)
                                                if not s.label and len(quiet_ends(g, quiet)) > 1),
        })
    headers = ["quiet", "late anomalies caught", "of them before the last line", "missed today, caught",
               "new false alarms", "normal sessions with such a pause"]
    print(markdown_table(headers,
                         [[f"{r['quiet_s']:g} s", f"{r['late_caught']} of {len(late)}",
                           r["late_caught_before_last_line"], r["anomalous_new"], r["normal_new_alarms"],
                           r["normal_sessions_with_a_pause"]] for r in rows]))
    write_json(args.json_out, {**meta, "model": str(args.model), "data": str(args.data), "late": len(late),
                               "threshold": scorer.threshold, "early_thresholds": early.to_config(),
                               "rows": rows})


if __name__ == "__main__":
    main()
