"""Model sizes on HDFS: accuracy vs speed of a few (blocks, hidden size, expert width, max window) choices.

Why (issue 2): the defaults num_hidden_layers=2, hidden_size=128, expert_intermediate_size=256, max_window=64
should be chosen by measurement. Every size is trained by `train.train(cfg)` (configs/train.yaml + overrides) on
the same fixed subset of the shared HDFS data, with one embedding cache shared by all runs (the lines are encoded
once), and reports:
- F1 (at the threshold train calibrates on eval) and PR-AUC on dev + order_dev, recall on the order_dev part;
- parameters of the classifier (the frozen encoder is the same for all and not counted);
- training time (train's two-stage loop, `timings.train_s`);
- scoring speed: windows/s of `model.LogScorer.score` on the same eval windows for every size, one shared, warm
  encoder (so the line-encoding cost is out and what differs is the classifier), the sizes timed in turn in
  the same process over several rounds (median), and as a ratio to the default size.
The speed windows are eval sessions cut with model.windowing.session_windows(lines, 32, hop): at most 32 lines,
so the same windows are valid for every max_window measured (HDFS dev sessions have at most 46 lines; 1% have
more than 32).

Run from the repository root (torch on one thread; the results table goes to stdout):
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_sizes.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    LabelledSession, default_data_dir, load_hdfs_jsonl, markdown_table, print_header, start_run, add_run_options,
    write_hdfs_jsonl, write_json, REPO_ROOT,
)

logger = logging.getLogger("bench.sizes")


@dataclass(frozen=True)
class Size:
    """One model size: the overrides of configs/train.yaml that make it."""

    name: str
    num_hidden_layers: int
    hidden_size: int
    expert_intermediate_size: int
    max_window: int = 64

    def overrides(self) -> list[str]:
        return [f"model.num_hidden_layers={self.num_hidden_layers}", f"model.hidden_size={self.hidden_size}",
                f"model.expert_intermediate_size={self.expert_intermediate_size}",
                f"model.max_window={self.max_window}"]


DEFAULT = Size("default", 2, 128, 256, 64)
SIZES = (
    DEFAULT,
    Size("small", 1, 64, 128, 64),
    Size("deep", 4, 128, 256, 64),
    Size("wide", 2, 256, 512, 64),
    Size("default-w32", 2, 128, 256, 32),
)
SPEED_WINDOW = 32  # speed windows fit every max_window in SIZES


def subsample(sessions: list[LabelledSession], n: int, seed: int) -> list[LabelledSession]:
    """n sessions drawn with `seed`, kept in file order (all of them where n >= len)."""
    if n >= len(sessions):
        return sessions
    rng = random.Random(seed)
    return [sessions[i] for i in sorted(rng.sample(range(len(sessions)), n))]


def write_subsets(hdfs: Path, work: Path, counts: dict[str, int], seed: int) -> dict[str, Path]:
    """train (train + order_train), dev and order_dev subsets as JSONL files under work/subsets."""
    drawn = {name: subsample(load_hdfs_jsonl(hdfs / f"{name}.jsonl"), n, seed) for name, n in counts.items()}
    for name, part in drawn.items():
        logger.info("%s: %d sessions (%d anomalous)", name, len(part), sum(s.label for s in part))
    sub = work / "subsets"
    return {
        "train": write_hdfs_jsonl(sub / "train.jsonl", drawn["train"] + drawn["order_train"]),
        "dev": write_hdfs_jsonl(sub / "dev.jsonl", drawn["dev"]),
        "order_dev": write_hdfs_jsonl(sub / "order_dev.jsonl", drawn["order_dev"]),
    }


def train_size(size: Size, files: dict[str, Path], work: Path, cache_dir: Path, config: Path,
               extra: Sequence[str], reuse: bool) -> dict[str, Any]:
    """train.train on the subset; the metrics dict train writes (reused from metrics.json with --reuse)."""
    import train as train_pkg
    from model.config_io import load_config
    from train.config import TrainConfig

    out = work / size.name
    if reuse and (out / "metrics.json").is_file():
        logger.info("%s: reusing %s", size.name, out / "metrics.json")
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    overrides = [*size.overrides(), "training.learning_rate=1.0e-3", "training.device=cpu", *extra,
                 f"output_dir={out}", f"encoder.cache_dir={cache_dir}",
                 f"data.train=[{files['train']}]", f"data.eval=[{files['dev']}, {files['order_dev']}]"]
    cfg = load_config(TrainConfig, config if config.is_file() else None, overrides)
    started = time.perf_counter()
    result = train_pkg.train(cfg)
    logger.info("%s: trained in %.0fs (f1 %.4f)", size.name, time.perf_counter() - started, result["eval"]["f1"])
    return result


def accuracy(scorer: Any, files: dict[str, Path], hop: int) -> dict[str, Any]:
    """F1/PR-AUC on dev + order_dev and recall on order_dev, at the model's stored threshold."""
    from train.data import load_sessions
    from train.evaluation import score_sessions
    from train.metrics import classification_metrics

    dev, _ = load_sessions([files["dev"]])
    order, _ = load_sessions([files["order_dev"]])
    result = score_sessions(scorer, dev + order, hop)
    labels = [s.label for s in dev + order]
    combined = classification_metrics(labels, result.scores, scorer.threshold)
    order_part = classification_metrics(labels[len(dev):], result.scores[len(dev):], scorer.threshold)
    return {"f1": combined["f1"], "pr_auc": combined["pr_auc"], "precision": combined["precision"],
            "recall": combined["recall"], "order_recall": order_part["recall"], "threshold": scorer.threshold,
            "experts_per_token": result.experts_per_token}


def speed_windows(files: dict[str, Path], n: int, hop: int, seed: int) -> list[list[str]]:
    """n windows (<= SPEED_WINDOW lines) of the eval sessions, drawn with `seed`."""
    from model.windowing import session_windows
    from train.data import load_sessions

    sessions, _ = load_sessions([files["dev"], files["order_dev"]])
    windows = [w for s in sessions for w in session_windows(list(s.lines), SPEED_WINDOW, hop)]
    rng = random.Random(seed)
    return [windows[i] for i in sorted(rng.sample(range(len(windows)), min(n, len(windows))))]


def measure_speed(scorers: dict[str, Any], windows: list[list[str]], rounds: int) -> dict[str, float]:
    """windows/s of each scorer.score, the scorers timed in turn each round (median over rounds)."""
    for scorer in scorers.values():  # warm-up: fills the shared encoder's cache, first-call allocations
        scorer.score(windows)
    seconds: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(rounds):
        for name, scorer in scorers.items():
            started = time.perf_counter()
            scorer.score(windows)
            seconds[name].append(time.perf_counter() - started)
    return {name: len(windows) / statistics.median(times) for name, times in seconds.items()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="the shared data folder holding hdfs/ (default ../shared/data or $LOGMOE_SHARED_DATA)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="subsets, models and the shared embedding cache (default: a fresh temp dir)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache shared by all runs (default: WORK_DIR/embed_cache)")
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "train.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for every size (repeatable)")
    parser.add_argument("--sizes", default=",".join(s.name for s in SIZES),
                        help=f"comma-separated subset of: {', '.join(s.name for s in SIZES)}")
    parser.add_argument("--train", type=int, default=3000, help="sessions drawn from train.jsonl")
    parser.add_argument("--order-train", type=int, default=300, help="sessions drawn from order_train.jsonl")
    parser.add_argument("--dev", type=int, default=1500, help="sessions drawn from dev.jsonl")
    parser.add_argument("--order-dev", type=int, default=150, help="sessions drawn from order_dev.jsonl")
    parser.add_argument("--speed-windows", type=int, default=1000, help="eval windows scored for the speed column")
    parser.add_argument("--rounds", type=int, default=5, help="timed scoring rounds per size (median)")
    parser.add_argument("--seed", type=int, default=42, help="seeds the subsets and the speed windows")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 300+30 train, 150+15 eval sessions, 1+1 epochs, 200 speed windows")
    parser.add_argument("--reuse", action="store_true", help="reuse WORK_DIR/<size>/metrics.json where present")
    add_run_options(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args)
    import torch  # after start_run: the thread count is set before torch does any work

    chosen = [s for s in SIZES if s.name in args.sizes.split(",")]
    if DEFAULT not in chosen:
        raise ValueError(f"--sizes must include {DEFAULT.name!r} (the speed ratio's reference): {args.sizes!r}")
    counts = {"train": args.train, "order_train": args.order_train, "dev": args.dev, "order_dev": args.order_dev}
    extra = list(args.overrides)
    if args.quick:
        counts = {"train": 300, "order_train": 30, "dev": 150, "order_dev": 15}
        extra = ["training.epochs_stage1=1", "training.epochs_stage2=1", *extra]
        args.speed_windows, args.rounds = min(args.speed_windows, 200), min(args.rounds, 2)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_sizes_"))
    cache_dir = args.cache_dir or work / "embed_cache"
    header = print_header("Model sizes on HDFS: accuracy vs speed" + (" (--quick)" if args.quick else ""))
    print(f"- load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    started = time.perf_counter()

    files = write_subsets(args.data_dir / "hdfs", work, counts, args.seed)
    trained = {s.name: train_size(s, files, work, cache_dir, args.config, extra, args.reuse) for s in chosen}

    from model.encoder import LineEncoder
    from model.scorer import LogScorer

    first = LogScorer.from_pretrained(Path(trained[DEFAULT.name]["output_dir"]) / "final_moe_model", device="cpu")
    encoder: LineEncoder = first.encoder  # one encoder for every scorer: its warm cache takes encoding out
    scorers = {name: LogScorer.from_pretrained(Path(r["output_dir"]) / "final_moe_model", device="cpu",
                                               encoder=encoder) for name, r in trained.items()}
    hop = int(first.window_hop)
    acc = {name: accuracy(scorer, files, hop) for name, scorer in scorers.items()}
    windows = speed_windows(files, args.speed_windows, hop, args.seed)
    speed = measure_speed(scorers, windows, args.rounds)

    rows, records = [], []
    for size in chosen:
        a, r = acc[size.name], trained[size.name]
        params = sum(p.numel() for p in scorers[size.name].model.parameters())
        ratio = speed[size.name] / speed[DEFAULT.name]
        rows.append([size.name, size.num_hidden_layers, size.hidden_size, size.expert_intermediate_size,
                     size.max_window, f"{params:,}", a["f1"], a["pr_auc"], a["order_recall"],
                     f"{r['timings']['train_s']:.0f}", f"{speed[size.name]:.0f}", f"{ratio:.2f}x"])
        records.append({"size": size.__dict__, "params": params, "accuracy": a, "train_metrics": r["eval"],
                        "timings": r["timings"], "windows_per_s": speed[size.name], "speed_ratio": ratio})
        if abs(a["f1"] - r["eval"]["f1"]) > 1e-6:
            logger.warning("%s: F1 rescored here %.6f differs from train's %.6f", size.name, a["f1"],
                           r["eval"]["f1"])
    any_run = trained[DEFAULT.name]
    t = any_run["data"]
    print(f"- data: seed {args.seed}: {counts['train']} train.jsonl + {counts['order_train']} order_train.jsonl "
          f"sessions -> eval {counts['dev']} dev.jsonl + {counts['order_dev']} order_dev.jsonl "
          f"(train {t['train']}, eval {t['eval']}); subsets in {work / 'subsets'}")
    print(f"- training: configs/train.yaml + training.learning_rate=1.0e-3 + the size's overrides"
          f"{' + ' + ', '.join(extra) if extra else ''}; hop {hop}; torch threads {torch.get_num_threads()}")
    print(f"- speed: `LogScorer.score` on {len(windows)} eval windows (<= {SPEED_WINDOW} lines, hop {hop}), "
          f"warm shared encoder cache, median of {args.rounds} interleaved rounds; the ratio is to `default`\n")
    print(markdown_table(["size", "blocks", "hidden", "expert width", "max_window", "params", "F1", "PR-AUC",
                          "order recall", "train s", "windows/s", "speed vs default"], rows))
    print(f"\n- whole run {(time.perf_counter() - started) / 60:.1f} min")
    write_json(args.json_out, {"machine": header, "counts": counts, "overrides": extra, "work_dir": str(work),
                               "results": records})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
