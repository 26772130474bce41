"""Run by torchrun (2 processes, gloo) from tests/train/test_distributed.py: each rank joins the group with
train.distributed.data_parallel, exercises the collectives the pipeline uses, and writes what it saw to
OUT/rank<r>.json (numbers and lists) and OUT/rank<r>.safetensors (tensors); the tests assert on those files.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/train/ddp_checks.py OUT WORLD ENCODER

WORLD holds the generated train.jsonl and dev.jsonl, ENCODER is the tiny test encoder: the pipeline's own set-up
checks run on them (more processes than training windows).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from train.data import Session
from train.distributed import AllRanksError, DataParallel, data_parallel, shard
from train.embeddings import EmbeddingCache, embed_lines, mask_sessions
from train.sharded_prep import embed_lines_across, mask_sessions_across


class RecordingEncoder:
    """Deterministic embeddings from the characters of a line; remembers which lines it was asked to encode."""

    dim = 4
    reference = "recording"

    def __init__(self) -> None:
        self.encoded: list[str] = []
        self.primed = 0

    def encode(self, masked_lines: Sequence[str]) -> torch.Tensor:
        self.encoded.extend(masked_lines)
        return torch.tensor([[len(t), ord(t[0]), ord(t[-1]), t.count(" ")] for t in masked_lines], dtype=torch.float)

    def prime(self, texts: Sequence[str], embeddings: torch.Tensor) -> None:
        self.primed = len(texts)


def error_of(fn: Callable[[], Any]) -> str | None:
    try:
        fn()
    except AllRanksError as err:
        return str(err)
    return None


def collectives(dp: DataParallel, results: dict[str, Any]) -> None:
    items = list(range(11))
    results["gather_shards"] = dp.gather_shards(shard(items, dp.rank, dp.world_size))
    rows = torch.arange(6.0).view(3, 2) if dp.rank == 0 else torch.zeros(0, 2)
    results["gather_rows"] = [part.tolist() for part in dp.gather_rows(rows)]
    results["mean_over_ranks"] = list(dp.mean_over_ranks(float(dp.rank + 1), 10.0))

    def fails_on_rank_1() -> str:
        if dp.rank == 1:
            raise FileNotFoundError("data file not found: b.jsonl")
        return "loaded"

    results["agree_error"] = error_of(lambda: dp.agree(fails_on_rank_1))
    results["agree_ok"] = dp.agree(lambda: f"rank {dp.rank} loaded")
    results["check_same_error"] = error_of(lambda: dp.check_same("data fingerprint", f"train {'ab' * 32}"
                                                                  if dp.rank == 0 else f"train {'cd' * 32}"))
    results["check_same_equal"] = error_of(lambda: dp.check_same("data fingerprint", "same"))

    def only_rank_0_may_read() -> dict[str, int]:
        if dp.rank != 0:
            raise RuntimeError("from_main ran fn on a rank other than 0")
        return {"checkpoint": 3}

    results["from_main"] = dp.from_main(only_rank_0_may_read)

    def refused() -> None:
        raise ValueError("--resume: the checkpoint was made with other settings")

    results["from_main_error"] = error_of(lambda: dp.from_main(refused))


def data_step(dp: DataParallel, cache_root: Path, results: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    sessions = [Session(f"s{n}", tuple(f"user {n} line {k} at 10.0.0.{k}" for k in range(n % 3 + 1)), n % 2)
                for n in range(7)]
    results["masked_equal"] = mask_sessions_across(sessions, str.upper, dp) == mask_sessions(sessions, str.upper)

    texts = ["a b", "cc", "d e f", "g", "hh ii"]
    cache = EmbeddingCache(cache_root, "recording|pooling=mean|max_length=64")
    runs = {"cold": texts, "one_new": [*texts, "new line"], "warm": ["new line", *texts]}
    for name, lines in runs.items():
        encoder = RecordingEncoder()
        table = embed_lines_across(lines, encoder, cache, dp)  # (U, D)
        tensors[f"table_{name}"] = table
        tensors[f"single_{name}"] = embed_lines(lines, RecordingEncoder(), None)  # what one process computes
        results[f"encoded_{name}"] = encoder.encoded
        results[f"primed_{name}"] = encoder.primed
        dp.all_gather_objects(None)  # rank 0's cache write is done before the next run reads it
    results["cache_shards"] = len(list(cache.dir.glob("shard-*.json")))
    results["cache_lines"] = sorted(cache.load())


def ddp_gradients(dp: DataParallel, tensors: dict[str, torch.Tensor]) -> None:
    """Gradients of one global batch of 8 windows: DDP over this rank's 4 (dp.local_rows, dp.cross_entropy), and
    one process over all 8 (F.cross_entropy), from the same weights; dense routing (stage 1), no dropout."""
    from model.configuration_logmoe import LogMoEConfig
    from model.modeling_logmoe import LogMoEForSequenceClassification

    config = LogMoEConfig(input_dim=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_experts=2,
                          expert_intermediate_size=16, max_window=6, hidden_dropout=0.0, attention_dropout=0.0,
                          routing="dense")
    generator = torch.Generator().manual_seed(5)
    embeds = torch.randn(8, 6, 8, generator=generator)  # (B, T, D)
    lengths = torch.tensor([6, 2, 5, 1, 3, 6, 4, 2])  # (B,)
    mask = torch.arange(6)[None, :] < lengths[:, None]  # (B, T)
    labels = torch.tensor([0, 1, 0, 0, 0, 1, 0, 0])  # (B,)
    weight = torch.tensor([0.6, 2.0])  # class weights: rank 0's rows weigh 2.4 in all, rank 1's 5.2

    for name, class_weight in (("weighted", weight), ("unweighted", None)):
        torch.manual_seed(0)
        single = LogMoEForSequenceClassification(config)
        torch.manual_seed(0)
        model = LogMoEForSequenceClassification(config)
        loss = F.cross_entropy(single(inputs_embeds=embeds, attention_mask=mask).logits, labels, weight=class_weight)
        loss.backward()
        net = dp.wrap(model)
        rows = dp.local_rows(torch.arange(8))  # (4,)
        out = net(inputs_embeds=embeds[rows], attention_mask=mask[rows])
        (dp.cross_entropy(out.logits.float(), labels[rows], class_weight, labels) + out.aux_loss).backward()
        for key, param in model.named_parameters():
            if param.grad is None:
                continue
            tensors[f"{name}.ddp.{key}"] = param.grad
            tensors[f"{name}.single.{key}"] = single.get_parameter(key).grad
        tensors[f"{name}.rows"] = rows


def pipeline_refusals(dp: DataParallel, out: Path, world: Path, encoder: Path, results: dict[str, Any]) -> None:
    """The training pipeline in this group on one training session (one window) for two processes."""
    from model.config_io import load_config
    from train.config import TrainConfig
    from train.pipeline import _train

    one_session = out / "one_session.jsonl"
    if dp.is_main:
        one_session.write_text((world / "train.jsonl").read_text().splitlines()[0] + "\n")
    dp.all_gather_objects(None)  # written before either rank reads it
    cfg = load_config(TrainConfig, None, [f'data.train=["{one_session}"]', f'data.eval=["{world / "dev.jsonl"}"]',
                                          f"encoder.name_or_path={encoder}", f"output_dir={out / 'run'}",
                                          "training.device=cpu", "training.min_steps_per_epoch=0",
                                          "training.epochs_stage1=1", "training.epochs_stage2=1",
                                          "training.train_on_prefixes=false"])  # one window; short if it runs
    results["too_few_windows"] = error_of(lambda: _train(cfg, dp))


def main(out: Path, world: Path, encoder: Path) -> None:
    results: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    with data_parallel("cpu", "gloo", timeout_s=60) as dp:
        results["world"] = [dp.rank, dp.world_size, dp.local_rank, dp.backend]
        collectives(dp, results)
        data_step(dp, out / "cache", results, tensors)
        ddp_gradients(dp, tensors)
        pipeline_refusals(dp, out, world, encoder, results)
        dp.seed_rank(42)
        tensors["rng_own"] = torch.get_rng_state()
        tensors.update({f"gathered.{key}": state for key, state in dp.rank_rng_states().items()})
    (out / f"rank{dp.rank}.json").write_text(json.dumps(results), encoding="utf-8")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(out / f"rank{dp.rank}.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
