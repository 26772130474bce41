"""Fixtures of the training tests: a small generated world and a fast CPU training config on the tiny encoder."""
from __future__ import annotations

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
def make_config(tiny_encoder_dir: Path, world: Path) -> Callable[..., TrainConfig]:
    """TrainConfig from configs/train.yaml with the tiny encoder, CPU, and small, fast settings; extra
    `key=value` overrides last."""

    def make(output_dir: Path, *overrides: str) -> TrainConfig:
        return load_config(TrainConfig, REPO_ROOT / "configs" / "train.yaml", [
            f'data.train=["{world / "train.jsonl"}"]',
            f'data.eval=["{world / "dev.jsonl"}"]',
            f"output_dir={output_dir}",
            f"encoder.name_or_path={tiny_encoder_dir}",
            "training.device=cpu",
            "training.batch_size=32",
            "training.learning_rate=2.0e-3",
            "training.logging_steps=2",
            "model.hidden_size=32",
            "model.num_attention_heads=4",
            "model.expert_intermediate_size=64",
            "model.router_entropy_loss_coef=0.05",
            *overrides,
        ])

    return make
