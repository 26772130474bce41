"""`logmoe generate | train | evaluate | score`: thin argparse layers over train.generate, train.train and
train.evaluate. Results go to stdout (human text, or JSON where asked); logging goes to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the `logmoe` parser (entry point group logmoe.commands)."""
    gen = subparsers.add_parser("generate", help="write a synthetic multi-service log world (train/dev/stream)",
                                description="Write train.jsonl, dev.jsonl, stream.log and stream_labels.csv.")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--sessions", type=int, default=1000, help="number of sessions (requests), default 1000")
    gen.add_argument("--seed", type=int, default=0, help="random seed, default 0")
    gen.add_argument("--dev-fraction", type=float, default=0.3, help="share of sessions in dev, default 0.3")
    gen.add_argument("--anomaly-rate", type=float, default=0.2, help="share of incidents, default 0.2")
    gen.set_defaults(func=run_generate)

    tr = subparsers.add_parser("train", help="train a model (two stages) and calibrate its threshold",
                               description="Train on labelled sessions; see configs/train.yaml for every key.")
    tr.add_argument("--config", default=None, help="YAML config (default: built-in defaults = configs/train.yaml)")
    tr.add_argument("--data", nargs="+", metavar="FILE", help="training file(s) (data.train)")
    tr.add_argument("--eval-data", nargs="+", metavar="FILE", help="eval file(s) (data.eval); default: a split")
    tr.add_argument("--output-dir", help="output folder (output_dir)")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    tr.add_argument("--skip-invalid", action="store_true", help="count and report invalid records, do not fail")
    tr.add_argument("--seed", type=int, help="random seed (training.seed)")
    tr.add_argument("--device", help="auto, cpu, cuda or cuda:N (training.device)")
    tr.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="config overrides, dotted for sections: training.learning_rate=3e-4 model.top_p=0.9")
    tr.set_defaults(func=run_train)

    ev = subparsers.add_parser("evaluate", help="metrics of a trained model on labelled sessions",
                               description="Score sessions (max over windows) at the model's stored threshold.")
    _add_model_args(ev)
    ev.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labelled JSONL file(s)")
    ev.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ev.set_defaults(func=run_evaluate)

    sc = subparsers.add_parser("score", help="score each session of a JSONL file",
                               description="Print one JSON line per session: session_id, score, anomalous.")
    _add_model_args(sc)
    sc.add_argument("data", nargs="+", metavar="FILE", help="JSONL file(s) of sessions")
    sc.set_defaults(func=run_score)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="trained model folder (…/final_moe_model)")
    parser.add_argument("--hop", type=int, help="window hop for sessions longer than max_window "
                                                "(default: the model's window_hop)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per scoring batch")
    parser.add_argument("--skip-invalid", action="store_true", help="count and report invalid records")


def train_overrides(args: argparse.Namespace) -> list[str]:
    """CLI flags as config overrides (JSON is YAML, so lists and strings survive), then the free overrides."""
    flags: list[str] = []
    if args.data:
        flags.append(f"data.train={json.dumps(args.data)}")
    if args.eval_data:
        flags.append(f"data.eval={json.dumps(args.eval_data)}")
    if args.output_dir:
        flags.append(f"output_dir={json.dumps(args.output_dir)}")
    if args.resume:
        flags.append("resume=true")
    if args.skip_invalid:
        flags.append("data.skip_invalid=true")
    if args.seed is not None:
        flags.append(f"training.seed={args.seed}")
    if args.device:
        flags.append(f"training.device={json.dumps(args.device)}")
    return flags + list(args.overrides)


def run_generate(args: argparse.Namespace) -> int:
    from train.generate import write_world

    counts = write_world(args.out, sessions=args.sessions, seed=args.seed, dev_fraction=args.dev_fraction,
                         anomaly_rate=args.anomaly_rate)
    print(f"wrote {args.out}: train {counts['train']} sessions ({counts['train_anomalous']} anomalous), "
          f"dev {counts['dev']} ({counts['dev_anomalous']} anomalous), stream.log {counts['stream_lines']} lines")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from model.config_io import load_config
    from train.config import TrainConfig
    from train.pipeline import train

    cfg = load_config(TrainConfig, args.config, train_overrides(args))
    result = train(cfg)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif result["status"] != "complete":
        print(f"stopped after {result['epochs_done']}/{result['epochs_total']} epochs; "
              f"continue with --resume --output-dir {result['output_dir']}")
    else:
        print(format_metrics(result["eval"], title=f"eval ({result['data']['split']})"))
        print(f"model: {result['output_dir']}/final_moe_model")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from train.config import EvalConfig
    from train.evaluation import evaluate

    metrics = evaluate(EvalConfig(model=args.model, data=list(args.data), skip_invalid=args.skip_invalid,
                                  hop=args.hop, device=args.device, batch_size=args.batch_size,
                                  threshold=args.threshold))
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False))
    else:
        print(format_metrics(metrics, title=f"{', '.join(args.data)} with {args.model}"))
    return 0


def run_score(args: argparse.Namespace) -> int:
    from model.decision import is_anomalous
    from train.data import load_sessions
    from train.evaluation import load_scorer, score_sessions, scoring_hop

    sessions, _ = load_sessions(args.data, skip_invalid=args.skip_invalid)
    scorer = load_scorer(args.model, args.device, args.batch_size)
    hop = scoring_hop(args.hop, scorer)
    result = score_sessions(scorer, sessions, hop, args.batch_size)
    threshold = float(scorer.threshold)
    out = sys.stdout
    for session, score in zip(sessions, result.scores):
        out.write(json.dumps({"session_id": session.session_id, "score": score,
                              "anomalous": is_anomalous(score, threshold)}, ensure_ascii=False) + "\n")
    return 0


def format_metrics(m: dict[str, Any], title: str) -> str:
    """A readable block: headline metrics, the confusion matrix, experts per token."""
    (tn, fp), (fn, tp) = m["confusion_matrix"]

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [
        title,
        f"  sessions     {m['n']} ({m['n_anomalous']} anomalous)",
        f"  threshold    {m['threshold']:.4f}",
        f"  accuracy     {num(m['accuracy'])}",
        f"  precision    {num(m['precision'])}",
        f"  recall       {num(m['recall'])}",
        f"  f1           {num(m['f1'])}",
        f"  pr_auc       {num(m['pr_auc'])}",
        f"  roc_auc      {num(m['roc_auc'])}",
        f"  experts/line {num(m.get('experts_per_token'))}",
        "  confusion    predicted normal  predicted anomalous",
        f"    normal     {tn:>16}  {fp:>19}",
        f"    anomalous  {fn:>16}  {tp:>19}",
    ]
    skipped = m.get("skipped", {}).get("total")
    if skipped:
        lines.append(f"  skipped      {skipped} invalid records: {m['skipped']['by_reason']}")
    return "\n".join(lines)
