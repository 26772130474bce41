"""Data-parallel training: `logmoe train` in 1 process vs N processes (`--nproc N`) on this machine, in one run.

Every run is the CLI as a user runs it (`python -m model.cli train --nproc N --json`, N = 1: a plain single
process), in a subprocess, on the same data, config and seed, with a fresh output folder and a fresh embedding
cache, so the sharded data step (masking, encoding) is measured as well as training. Runs alternate (1, N, 1, N, ...)
so that the shared machine's load falls on both alike; the median of the repeats is reported. Per run:

- end to end: wall seconds from starting the command to its exit (Python and torch start-up, the launcher and its
  rendezvous, loading, masking, encoding, training, rank 0's final evaluation and plots);
- the pipeline's own timings from metrics.json (mask_s, embed_s, train_s, final_eval_s; rank 0's clock);
- training samples/s: windows trained per second of train_s (global steps x global batch / train_s), and per
  process (divided by N). train_s holds rank 0's per-epoch evaluation, which the other ranks wait for;
- CPU seconds: user + system time of the command and every process it started (the ranks included), so that the
  cost of data parallelism (more CPU for the same work) is told apart from a machine with no idle core (the same
  CPU, no shorter wall time).

On a CUDA machine `--gpu` trains on the GPUs instead: 1 process on one GPU vs N processes, one per GPU with NCCL
where there are N GPUs, else N processes sharing the GPU(s) with gloo (training.backend=auto decides; the backend
each run used is printed). Without CUDA the GPU section says so and is skipped. The default data is a synthetic world
(`logmoe generate`) so that the script needs nothing else; --data/--eval-data take any training files.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, add_run_options, markdown_table, print_header, start_run, write_json

logger = logging.getLogger("bench.ddp")


def train_command(nproc: int, data: list[Path], eval_data: list[Path], out: Path, settings: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "model.cli", "train", "--json", "--config", str(REPO_ROOT / "configs" / "train.yaml"),
            "--data", *map(str, data), "--eval-data", *map(str, eval_data), "--output-dir", str(out)]
    if nproc > 1:
        argv += ["--nproc", str(nproc)]
    return argv + [arg for setting in settings for arg in ("--set", setting)]


def run_once(nproc: int, threads: int, data: list[Path], eval_data: list[Path], work: Path,
             settings: list[str]) -> dict[str, Any]:
    """One training run in a fresh folder (fresh embedding cache); its wall time, timings and throughput."""
    out = Path(tempfile.mkdtemp(prefix=f"n{nproc}-", dir=work))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    started, cpu_before = time.perf_counter(), _children_cpu_s()
    done = subprocess.run(train_command(nproc, data, eval_data, out, settings), cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, _children_cpu_s() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"--nproc {nproc} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    states = sorted((out / "moe_results").glob("checkpoint-*/trainer_state.json"))
    steps = json.loads(states[-1].read_text())["global_step"]
    batch = json.loads((out / "final_moe_model" / "config.json").read_text()).get("batch_size")
    global_batch = int(batch) if batch else _setting(settings, "training.batch_size", 64)
    timings = result["timings"]
    backend = re.search(r"backend (\w+)", done.stderr)
    samples_per_s = steps * global_batch / timings["train_s"]
    return {"nproc": nproc, "threads": threads, "wall_s": wall, "cpu_s": cpu, "world_size": result["world_size"],
            "backend": backend.group(1) if backend else "none (one process)", "steps": steps,
            "global_batch": global_batch, "samples_per_s": samples_per_s, "samples_per_s_per_process":
            samples_per_s / nproc, "f1": result["eval"]["f1"], "pr_auc": result["eval"]["pr_auc"],
            "threshold": result["threshold"], **timings}


def _children_cpu_s() -> float:
    """User + system seconds of every finished child process (and the descendants they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _setting(settings: list[str], key: str, default: int) -> int:
    for setting in reversed(settings):
        if setting.startswith(key + "="):
            return int(setting.split("=", 1)[1])
    return default


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    numeric = {k: statistics.median(r[k] for r in runs) for k, v in runs[0].items()
               if isinstance(v, float) and k not in ("f1", "pr_auc", "threshold")}
    return {**runs[0], **numeric, "repeats": len(runs)}


def compare(variants: list[tuple[int, int]], repeats: int, data: list[Path], eval_data: list[Path], work: Path,
            settings: list[str]) -> list[dict[str, Any]]:
    """Each (nproc, threads) variant `repeats` times, interleaved; the median of each."""
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(repeats):
        for nproc, threads in variants:
            logger.info("repeat %d/%d: %d process(es) x %d thread(s)", repeat + 1, repeats, nproc, threads)
            runs[(nproc, threads)].append(run_once(nproc, threads, data, eval_data, work, settings))
    return [median_run(runs[v]) for v in variants]


def table(results: list[dict[str, Any]]) -> str:
    base = results[0]
    rows = []
    for r in results:
        rows.append([f"{r['nproc']} x {r['threads']}", r["backend"], r["steps"], f"{r['wall_s']:.1f}",
                     f"{base['wall_s'] / r['wall_s']:.2f}x", f"{r['cpu_s']:.0f}", f"{r['mask_s']:.2f}",
                     f"{r['embed_s']:.2f}",
                     f"{r['train_s']:.1f}", f"{r['samples_per_s']:.0f}", f"{r['samples_per_s_per_process']:.0f}",
                     f"{r['samples_per_s'] / base['samples_per_s']:.2f}x",
                     f"{r['samples_per_s_per_process'] / base['samples_per_s_per_process']:.2f}",
                     f"{r['f1']:.4f}", f"{(r['pr_auc'] or 0):.4f}"])
    return markdown_table(["processes x threads", "backend", "steps", "end to end s", "speed-up (end to end)",
                           "CPU s (all processes)", "mask s", "embed s", "train s", "samples/s", "samples/s per process",
                           "speed-up (samples/s)", "per-process efficiency", "eval F1", "eval PR-AUC"], rows)


def synthetic_world(work: Path, sessions: int, seed: int) -> tuple[list[Path], list[Path]]:
    from train.generate import write_world

    folder = work / "world"
    write_world(folder, sessions=sessions, seed=seed)
    return [folder / "train.jsonl"], [folder / "dev.jsonl"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes to compare with one (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved; median reported")
    parser.add_argument("--also-threads", action="store_true",
                        help="add 1 process with --nproc torch threads: data parallelism vs intra-op threads")
    parser.add_argument("--data", type=Path, nargs="+", help="training files (default: a synthetic world)")
    parser.add_argument("--eval-data", type=Path, nargs="+", help="eval files (with --data)")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions of the synthetic world (default 2000)")
    parser.add_argument("--gpu", action="store_true", help="train on CUDA: 1 process vs --nproc (or one per GPU)")
    parser.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE",
                        help="training settings for every run (default: 1 + 1 epochs of 250 steps)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where runs go (default: a temporary folder)")
    add_run_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start_run(args)
    info = print_header("Data-parallel training: 1 process vs --nproc processes (`bench/bench_ddp.py`)")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_ddp-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.data:
        data, eval_data = args.data, args.eval_data or []
        what = f"{', '.join(map(str, data))} (eval: {', '.join(map(str, eval_data)) or 'a split'})"
    else:
        data, eval_data = synthetic_world(work, args.sessions, seed=7)
        what = f"a synthetic world of {args.sessions} sessions (`logmoe generate --sessions {args.sessions} --seed 7`)"
    settings = ["training.epochs_stage1=1", "training.epochs_stage2=1", "training.seed=42", *args.settings]
    threads = max(1, args.threads)
    payload: dict[str, Any] = {"machine": info, "data": what, "settings": settings,
                               "load_before": round(os.getloadavg()[0], 1)}

    import torch

    if args.gpu:
        if not torch.cuda.is_available():
            print("GPU section skipped: torch sees no CUDA device on this machine.\n")
            write_json(args.json_out, {**payload, "gpu": "skipped: no CUDA device"})
            return 0
        gpus = torch.cuda.device_count()
        nproc = args.nproc if args.nproc > 1 else max(2, gpus)
        print(f"Ran on {gpus} x {torch.cuda.get_device_name(0)}: 1 process on one GPU vs {nproc} processes "
              f"({'one per GPU, NCCL' if gpus >= nproc else f'sharing {gpus} GPU(s), gloo'}).\n")
        settings = [*settings, "training.device=cuda"]
        variants = [(1, threads), (nproc, threads)]
    else:
        print(f"Ran on CPU: 1 process vs {args.nproc} processes, {threads} torch thread(s) each "
              f"(`OMP_NUM_THREADS={threads}`); the machine has {info['nproc']} CPUs, shared with other jobs.\n")
        settings = [*settings, "training.device=cpu"]
        variants = [(1, threads), (args.nproc, threads)]
        if args.also_threads:
            variants.append((1, args.nproc * threads))
    print(f"Data: {what}; config: configs/train.yaml with {' '.join('--set ' + s for s in settings)}; "
          f"{args.repeats} interleaved repeat(s), median shown; a fresh output folder and embedding cache per run.\n")
    results = compare(variants, args.repeats, data, eval_data, work, settings)
    print(table(results) + "\n")
    base, other = results[0], results[1]
    print(f"- {other['nproc']} processes vs 1: end to end {base['wall_s'] / other['wall_s']:.2f}x as fast, training "
          f"{other['samples_per_s'] / base['samples_per_s']:.2f}x the samples/s "
          f"({other['samples_per_s_per_process'] / base['samples_per_s_per_process']:.2f} of one process's rate per "
          f"process), {other['cpu_s'] / base['cpu_s']:.2f}x the CPU seconds; load average before the runs "
          f"{payload['load_before']}, after {os.getloadavg()[0]:.1f}; eval F1 {base['f1']:.4f} vs {other['f1']:.4f}, PR-AUC {(base['pr_auc'] or 0):.4f} vs "
          f"{(other['pr_auc'] or 0):.4f} (same seed; dropout draws differ per rank, and the router losses are "
          f"per rank).")
    write_json(args.json_out, {**payload, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
