"""`logmoe generate | train | evaluate | score`: thin argparse layers over train.generate, train.train and
train.evaluate. Results go to stdout (human text, or JSON where asked); logging goes to stderr.

Config keys are set with `--set key=value` (repeatable) on train, evaluate and score, as on the stream commands;
train also keeps its positional KEY=VALUE form. A multi-file option (`--data F…`) never takes a `key=value`
argument that is not an existing file: train moves it to the settings, evaluate and score refuse it in one line
that says how to write it."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train.config import EvalConfig

logger = logging.getLogger(__name__)

# `key=value` with a (dotted) config key before the `=`: what a swallowed setting looks like, unlike a path.
_SETTING = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=")
_SET_HELP = "set a config key, repeatable; dotted for sections: --set model.top_p=0.9 --set data.format=keyed_log"


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
    tr.add_argument("--objective", choices=("supervised", "unsupervised"),
                    help="supervised (default): learn the labels; unsupervised: ignore them, learn normal windows "
                         "against perturbed copies (training.objective)")
    tr.add_argument("--json", action="store_true", help="print the final metrics as one JSON object")
    tr.add_argument("--nproc", type=int, metavar="N",
                    help="train data-parallel in N processes on this machine (torchrun's launcher; for several "
                         "machines run torchrun ... \"$(which logmoe)\" train ...)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings", help=_SET_HELP)
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="config keys set as with --set (training.learning_rate=3e-4 model.top_p=0.9)")
    tr.set_defaults(func=run_train)

    eval_keys = ("Settings (--set key=value): threshold, hop, batch_size, device, skip_invalid, and data.KEY for "
                 "how the files are read, as in the training config: data.format, data.key_regex, data.labels_csv "
                 "(or data.eval_labels_csv), data.label_regex, data.window, data.window_hop, ... (train/config.py).")
    ev = subparsers.add_parser("evaluate", help="metrics of a trained model on labelled sessions",
                               description="Score sessions (max over windows) at the model's stored threshold. "
                                           + eval_keys)
    _add_model_args(ev)
    ev.add_argument("--data", nargs="+", required=True, metavar="FILE",
                    help="labelled file(s): JSONL sessions, or raw logs with --set data.format=...")
    ev.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object")
    ev.set_defaults(func=run_evaluate)

    sc = subparsers.add_parser("score", help="score each session of a file",
                               description="Print one JSON line per session: session_id, score, anomalous. "
                                           + eval_keys)
    _add_model_args(sc)
    sc.add_argument("--threshold", type=float, help="threshold for `anomalous` (default: the model's)")
    sc.add_argument("data", nargs="+", metavar="FILE", help="file(s) of sessions (as evaluate reads them)")
    sc.set_defaults(func=run_score)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="trained model folder (…/final_moe_model)")
    parser.add_argument("--hop", type=int, help="window hop for sessions longer than max_window "
                                                "(default: the model's window_hop)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--batch-size", type=int, help="windows per scoring batch (default 256)")
    parser.add_argument("--skip-invalid", action="store_true", help="count and report invalid records")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                        help="set a key, repeatable: --set threshold=0.3 --set data.format=keyed_log")


def split_settings(values: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The files of a multi-file option, and the `key=value` settings it swallowed: arguments that are not an
    existing file and whose text before `=` is a (dotted) config key."""
    files: list[str] = []
    settings: list[str] = []
    for value in values or ():
        is_setting = _SETTING.match(value) is not None and not Path(value).exists()
        (settings if is_setting else files).append(value)
    return files, settings


def refuse_swallowed(option: str, values: Sequence[str] | None) -> list[str]:
    """The files of `option`; a ValueError saying how to write it when a setting was given among them."""
    files, settings = split_settings(values)
    if settings:
        spelled = " ".join(f"--set {setting}" for setting in settings)
        what = "is not a file" if len(settings) == 1 else "are not files"
        raise ValueError(f"{option} takes files, and {', '.join(map(repr, settings))} {what}: write settings as "
                         f"{spelled}")
    return files


def train_overrides(args: argparse.Namespace) -> list[str]:
    """CLI flags as config overrides (JSON is YAML, so lists and strings survive), then the KEY=VALUE arguments,
    any that --data or --eval-data swallowed, and the --set ones: the last setting of a key wins."""
    data, swallowed = split_settings(args.data)
    eval_data, swallowed_by_eval = split_settings(args.eval_data)
    flags: list[str] = []
    if data:
        flags.append(f"data.train={json.dumps(data)}")
    if eval_data:
        flags.append(f"data.eval={json.dumps(eval_data)}")
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
    if args.objective:
        flags.append(f"training.objective={args.objective}")
    return [*flags, *args.overrides, *swallowed, *swallowed_by_eval, *args.settings]


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
    from train.distributed import AllRanksError, LostRankError, is_main_process, world_from_env

    overrides = train_overrides(args)
    cfg = load_config(TrainConfig, args.config, overrides)
    world_size = world_from_env(os.environ)[1]
    if args.nproc is not None:
        if world_size > 1:
            raise ValueError(f"--nproc {args.nproc} under a launcher that already started {world_size} processes: "
                             "leave --nproc out (torchrun's --nproc_per_node sets the count)")
        if args.nproc < 1:
            raise ValueError(f"--nproc must be >= 1 ({args.nproc})")
        if args.nproc > 1:
            if cfg.training.objective == "unsupervised":
                raise ValueError(f"--nproc {args.nproc}: training.objective=unsupervised trains in one process; "
                                 "leave --nproc out")
            from train.launch import launch_local

            return launch_local(args.nproc, nproc_child_argv(args, overrides))
    main_rank = is_main_process()
    if not main_rank:  # rank 0 logs for the run
        logging.getLogger().setLevel(logging.WARNING)
    from train.pipeline import train

    try:
        result = train(cfg)
    except AllRanksError:
        if main_rank:
            raise
        return 2  # rank 0 reports it, once
    except LostRankError as err:
        print(f"logmoe: error: {err}", file=sys.stderr)
        return 2
    if not main_rank:
        return 0
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif result["status"] != "complete":
        print(f"stopped after {result['epochs_done']}/{result['epochs_total']} epochs; "
              f"continue with --resume --output-dir {result['output_dir']}")
    else:
        print(format_metrics(result["eval"], title=f"eval ({result['data']['split']})"))
        print(f"model: {result['output_dir']}/final_moe_model")
    return 0


def nproc_child_argv(args: argparse.Namespace, overrides: Sequence[str]) -> list[str]:
    """The `logmoe` arguments of each process --nproc starts: this train command, its settings as --set."""
    argv = ["-v"] if getattr(args, "verbose", False) else []
    argv.append("train")
    if args.config:
        argv += ["--config", args.config]
    if args.json:
        argv.append("--json")
    for setting in overrides:
        argv += ["--set", setting]
    return argv


def eval_config(args: argparse.Namespace, files: Sequence[str]) -> EvalConfig:
    """The EvalConfig of evaluate and score: the named flags, then --set (the last setting of a key wins)."""
    from train.config import load_eval_config

    flags = {"hop": args.hop, "device": args.device, "batch_size": args.batch_size, "threshold": args.threshold}
    settings = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    if args.skip_invalid:
        settings.append("skip_invalid=true")
    return load_eval_config(args.model, files, [*settings, *args.settings])


def run_evaluate(args: argparse.Namespace) -> int:
    from train.evaluation import evaluate

    cfg = eval_config(args, refuse_swallowed("--data", args.data))
    metrics = evaluate(cfg)
    if args.json:
        print(json.dumps(metrics, ensure_ascii=False))
    else:
        print(format_metrics(metrics, title=f"{', '.join(cfg.data)} with {cfg.model}"))
    return 0


def run_score(args: argparse.Namespace) -> int:
    from model.decision import is_anomalous
    from train.evaluation import load_eval_sessions, load_scorer, require_files, score_sessions, scoring_hop

    cfg = eval_config(args, refuse_swallowed("score", args.data))
    require_files(cfg.data)
    scorer = load_scorer(cfg.model, cfg.device, cfg.batch_size)
    sessions, _ = load_eval_sessions(cfg, scorer.max_window)
    hop = scoring_hop(cfg.hop, scorer)
    result = score_sessions(scorer, sessions, hop, cfg.batch_size)
    threshold = cfg.threshold if cfg.threshold is not None else float(scorer.threshold)
    out = sys.stdout
    for session, score in zip(sessions, result.scores):
        out.write(json.dumps({"session_id": session.session_id, "score": score,
                              "anomalous": is_anomalous(score, threshold)}, ensure_ascii=False) + "\n")
    return 0


def format_metrics(m: dict[str, Any], title: str) -> str:
    """A readable block: headline metrics, experts per line, the confusion matrix (the alert rate where the data
    carries no labels)."""

    def num(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    anomalous = "unlabelled" if m["n_anomalous"] is None else f"{m['n_anomalous']} anomalous"
    lines = [
        title,
        f"  sessions     {m['n']} ({anomalous})",
        f"  threshold    {m['threshold']:.4f}",
        f"  accuracy     {num(m['accuracy'])}",
        f"  precision    {num(m['precision'])}",
        f"  recall       {num(m['recall'])}",
        f"  f1           {num(m['f1'])}",
        f"  pr_auc       {num(m['pr_auc'])}",
        f"  roc_auc      {num(m['roc_auc'])}",
        f"  experts/line {num(m.get('experts_per_token'))}",
    ]
    if m["confusion_matrix"] is None:  # unlabelled eval data: what share of its windows the threshold flags
        apart = m.get("rate_outliers")
        lines.append(f"  alert rate   {num(m.get('alert_rate'))}"
                     + (f" ({apart} windows set apart by a gap in the scores)" if apart else ""))
    else:
        (tn, fp), (fn, tp) = m["confusion_matrix"]
        lines += ["  confusion    predicted normal  predicted anomalous",
                  f"    normal     {tn:>16}  {fp:>19}",
                  f"    anomalous  {fn:>16}  {tp:>19}"]
    skipped = m.get("skipped", {}).get("total")
    if skipped:
        lines.append(f"  skipped      {skipped} invalid records: {m['skipped']['by_reason']}")
    return "\n".join(lines)
