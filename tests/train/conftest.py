"""Fixtures of the training tests: a small generated world, HDFS-style keyed logs with per-split label files, and
a fast CPU training config on the tiny encoder."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from model.config_io import load_config
from train.config import TrainConfig
from train.generate import write_world

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.jsonl / dev.jsonl / stream.log / stream_labels.csv of a 360-session synthetic world."""
    out = tmp_path_factory.mktemp("world")
    write_world(out, sessions=360, seed=3)
    return out


@pytest.fixture(scope="session")
def new_failure_train(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's train.jsonl where, in its last 0.3 (training.novelty_crossfit's default share), every fourth
    normal session ends with a fatal line no earlier session holds and is a failure: a category new to the later
    part of train, which eval (the world's dev.jsonl) never shows."""
    new_failure = "2026-03-14T09:00:01.000Z FATAL storage[77]: mount of volume vol-3 failed, giving up"
    records = [json.loads(line) for line in (world / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    cut = round(len(records) * 0.7)
    for n, record in enumerate(records[cut:]):
        if record["label"] == "正常" and n % 4 == 0:
            record.update(log_sequence=record["log_sequence"] + "\n" + new_failure, label="异常")
    out = tmp_path_factory.mktemp("new_failure") / "train.jsonl"
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def fast_settings(tiny_encoder_dir: Path, world: Path) -> list[str]:
    """The `key=value` settings of a fast CPU training run on the world with the tiny encoder (no output_dir)."""
    return [
        f'data.train=["{world / "train.jsonl"}"]',
        f'data.eval=["{world / "dev.jsonl"}"]',
        f"encoder.name_or_path={tiny_encoder_dir}",
        "training.device=cpu",
        "training.batch_size=32",
        "training.min_steps_per_epoch=0",  # one pass per epoch: the world is tiny and the tests must be fast
        "training.learning_rate=2.0e-3",
        "training.logging_steps=2",
        "model.hidden_size=32",
        "model.num_attention_heads=4",
        "model.expert_intermediate_size=64",
        "model.router_entropy_loss_coef=0.05",
    ]


@pytest.fixture(scope="session")
def make_config(fast_settings: list[str]) -> Callable[..., TrainConfig]:
    """TrainConfig from configs/train.yaml with the tiny encoder, CPU, and small, fast settings; extra
    `key=value` overrides last."""

    def make(output_dir: Path, *overrides: str) -> TrainConfig:
        return load_config(TrainConfig, REPO_ROOT / "configs" / "train.yaml",
                           [*fast_settings, f"output_dir={output_dir}", *overrides])

    return make


def write_keyed_split(folder: Path, split: str, blocks: int, anomalous_every: int, first_block: int) -> list[str]:
    """<split>_stream.log (the blocks' lines interleaved, as HDFS writes them) and <split>_labels.csv, the layout of
    ../shared/data/hdfs_real; every anomalous_every-th block fails with an exception. Returns the block ids."""
    ids = [f"blk_{'-' if n % 3 == 0 else ''}{7_000_000_000 + first_block + n}" for n in range(blocks)]
    steps = [
        "081109 2035{s:02d} 147 INFO dfs.DataNode$DataXceiver: Receiving block {b} src: /10.250.18.{n}:43996 "
        "dest: /10.250.18.{n}:50010",
        "081109 2035{s:02d} 27 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /user/rand/part-{n:05d}. {b}",
        "081109 2036{s:02d} 151 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block {b} terminating",
    ]
    failure = ("081109 2036{s:02d} 19 WARN dfs.DataNode$DataXceiver: writeBlock {b} received exception "
               "java.io.IOException: Connection reset by peer")
    lines = []
    for step, template in enumerate(steps):
        for n, block in enumerate(ids):
            bad = n % anomalous_every == 0
            text = failure if bad and step == len(steps) - 1 else template
            lines.append(text.format(s=(n + step) % 60, b=block, n=n))
    (folder / f"{split}_stream.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [f"{block},{int(n % anomalous_every == 0)}" for n, block in enumerate(ids)]
    (folder / f"{split}_labels.csv").write_text("session_id,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return ids


@pytest.fixture(scope="session")
def keyed_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train_stream.log + train_labels.csv (24 blocks, 6 anomalous) and dev_stream.log + dev_labels.csv (12 other
    blocks, 3 anomalous): hdfs_real's per-split layout, small."""
    out = tmp_path_factory.mktemp("keyed_split")
    write_keyed_split(out, "train", blocks=24, anomalous_every=4, first_block=0)
    write_keyed_split(out, "dev", blocks=12, anomalous_every=4, first_block=1000)
    return out
