"""How far can an order-aware model go on HDFS dev? Dev sessions whose label the training data contradicts.

The event-id DecisionTree reaches F1 0.998 on dev because it reads counts only. A model that also reads order (as
logmoe must: order_dev) learns from train + order_train what a normal session looks like; a dev session that
contradicts that evidence is one such a model will get wrong however well it is trained. Two kinds are counted:

- "event never normal in train": the session holds an event that occurs in train only in anomalous sessions
  (e.g. E20: in every one of its 4,071 train sessions, anomalous).
- "opening never normal in train": the session starts with an event that starts no normal train session but does
  start anomalous ones (order_train's out-of-order sessions open with their moved tail, e.g. E26).

Counting those as errors gives an upper bound on dev F1 for a model faithful to its training data and sensitive
to order. With `--scores` (JSON lines from `logmoe score --model M dev.jsonl`) the script also sorts that model's
errors into those kinds and the rest. Event ids are read for this analysis only; no model here reads them.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from _common import default_data_dir, fmt, markdown_table, print_header, require_file

ANOMALOUS_LABELS = ("异常", "anomalous", "1", 1, True)


def load(path: Path) -> list[tuple[str, list[str], bool]]:
    """(session_id, event ids, anomalous) per line of an HDFS JSONL file."""
    out = []
    with require_file(path).open(encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            out.append((doc["session_id"], doc["event_ids"], doc["label"] in ANOMALOUS_LABELS))
    return out


def contradictions(train: Sequence[tuple[str, list[str], bool]],
                   dev: Sequence[tuple[str, list[str], bool]]) -> dict[str, str]:
    """session_id -> kind, for dev sessions whose label the training evidence contradicts."""
    normal_events = {e for _, events, anomalous in train if not anomalous for e in events}
    anomalous_events = {e for _, events, anomalous in train if anomalous for e in events}
    normal_openings = Counter(events[0] for _, events, anomalous in train if not anomalous)
    anomalous_openings = Counter(events[0] for _, events, anomalous in train if anomalous)
    kinds = {}
    for session_id, events, anomalous in dev:
        if anomalous:
            continue  # every dev anomaly here is explained by its events or its order; see the error table
        only_anomalous = sorted(set(events) & (anomalous_events - normal_events))
        if only_anomalous:
            kinds[session_id] = f"event never normal in train ({', '.join(only_anomalous)})"
        elif normal_openings[events[0]] == 0 and anomalous_openings[events[0]] > 0:
            kinds[session_id] = f"opening never normal in train ({events[0]} first)"
    return kinds


def f1_with(errors: int, positives: int) -> float:
    """F1 with `positives` true anomalies all found and `errors` false positives."""
    return 2 * positives / (2 * positives + errors)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--scores", type=Path, default=None,
                        help="JSON lines {session_id, score, anomalous} from `logmoe score` on dev.jsonl")
    args = parser.parse_args(argv)
    hdfs = args.data_dir / "hdfs"
    train = load(hdfs / "train.jsonl") + load(hdfs / "order_train.jsonl")
    dev = load(hdfs / "dev.jsonl")
    kinds = contradictions(train, dev)
    positives = sum(anomalous for _, _, anomalous in dev)

    print_header("HDFS dev: sessions the training data contradicts")
    events = {sid: events for sid, events, _ in dev}
    rows = [[sid, kind, " ".join(events[sid])] for sid, kind in sorted(kinds.items(), key=lambda kv: kv[1])]
    print(markdown_table(["dev session (normal)", "what train + order_train say", "events"], rows))
    print(f"\n- {len(kinds)} normal dev sessions of {len(dev)} contradict train + order_train; a model that follows "
          f"that evidence and finds all {positives} dev anomalies scores at most F1 "
          f"{fmt(f1_with(len(kinds), positives))} on dev (2·TP / (2·TP + FP)).")
    only_events = sum(k.startswith("event") for k in kinds.values())
    print(f"- a counts-only model can get the {len(kinds) - only_events} opening cases right (it does not see "
          f"order) but then misses the out-of-order sessions of order_dev that open the same way.")

    if args.scores is not None:
        predicted = {}
        with require_file(args.scores).open(encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)
                predicted[doc["session_id"]] = bool(doc["anomalous"])
        tally: Counter[str] = Counter()
        for sid, _, anomalous in dev:
            if sid not in predicted or predicted[sid] == anomalous:
                continue
            kind = "false negative" if anomalous else kinds.get(sid, "false positive, not contradicted")
            tally[kind.split(" (")[0]] += 1
        print(f"\n### Errors of {args.scores.name}\n")
        print(markdown_table(["kind", "sessions"], sorted(tally.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
