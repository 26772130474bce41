"""configs/train.yaml holds the defaults; unknown keys and bad values are refused with the value named."""
from __future__ import annotations

from pathlib import Path

import pytest

from model.config_io import load_config
from train.config import DataSection, EvalConfig, TrainConfig

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train.yaml"


def test_yaml_equals_the_built_in_defaults() -> None:
    cfg = load_config(TrainConfig, CONFIG)
    assert cfg == TrainConfig()
    assert (cfg.training.learning_rate, cfg.training.batch_size, cfg.training.epochs_stage1,
            cfg.training.epochs_stage2, cfg.training.min_steps_per_epoch, cfg.training.class_weighting,
            cfg.model.num_experts, cfg.model.top_p) == (1e-3, 64, 4, 2, 250, "balanced", 4, 0.8)


def test_overrides_reach_nested_sections() -> None:
    cfg = load_config(TrainConfig, CONFIG, ['data.train=["a.jsonl", "b.jsonl"]', "model.top_p=0.9",
                                            "training.learning_rate=3.0e-4"])
    assert cfg.data.train == ["a.jsonl", "b.jsonl"] and cfg.model.top_p == 0.9
    assert cfg.training.learning_rate == 3e-4


@pytest.mark.parametrize(("override", "message"), [
    ("training.lr=1", "unknown key(s) 'lr'"),
    ("model.top_p=1.5", "model.top_p must be a number in (0.0, 1.0], got 1.5"),
    ("model.hidden_size=100", "model.hidden_size (100) must be divisible by num_attention_heads (8)"),
    ("data.format=csv", "data.format must be one of jsonl, keyed_log, labelled_csv, labelled_log ('csv')"),
    ("data.split=random", "data.split must be one of grouped, chronological ('random')"),
    ("training.batch_size=0", "training.batch_size must be > 0 (0)"),
    ("training.threshold_objective=auc", "training.threshold_objective must be one of f1, fpr, rate ('auc')"),
    ("training.objective=semi", "training.objective must be one of supervised, unsupervised ('semi')"),
    ("training.target_rate=0", "training.target_rate must be in (0, 1) (0.0)"),
    ("training.rate_gap=-1", "training.rate_gap must be a finite number >= 0 (-1.0)"),
    ("training.rate_gap=.nan", "training.rate_gap must be a finite number >= 0 (nan)"),
    ("unsupervised.perturbations=[swap]", "unsupervised.perturbations must be a non-empty list of shuffle, move"),
    ("unsupervised.trim_fraction=0.5", "unsupervised.trim_fraction must be in [0, 0.5) (0.5)"),
    ("unsupervised.trim_by=loss", "unsupervised.trim_by must be one of model, rarity ('loss')"),
    ("training.class_weighting=inverse", "training.class_weighting must be one of none, balanced ('inverse')"),
    ("encoder.pooling=max", "encoder.pooling must be one of mean, cls ('max')"),
    ("encoder.token_buckets=-1", "encoder.token_buckets must be an integer >= 0 (-1)"),
    ("training.backend=mpi", "training.backend must be one of auto, gloo, nccl ('mpi')"),
    ("training.dist_timeout_s=0", "training.dist_timeout_s must be > 0 (0.0)"),
    ("data.eval_label_csv=dev.csv", "unknown key(s) 'eval_label_csv' for DataSection"),
    ("data.eval_labels_csv={a: b}", "data: eval_labels_csv: {'a': 'b'} fits none of"),
    ("training.hop=65", "training.hop must be <= model.max_window (65 > 64)"),  # lines 65..80 in no window
])
def test_bad_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        load_config(TrainConfig, CONFIG, [override])
    assert message in str(err.value)


def test_labels_csv_takes_one_file_or_a_list() -> None:
    cfg = load_config(TrainConfig, CONFIG, ["data.format=keyed_log", "data.labels_csv=[train.csv, dev.csv]",
                                            "data.eval_labels_csv=dev.csv"])
    assert cfg.data.labels_csv == ["train.csv", "dev.csv"] and cfg.data.eval_labels_csv == "dev.csv"
    assert cfg.data.label_files("train") == ["train.csv", "dev.csv"] and cfg.data.label_files("eval") == ["dev.csv"]


def test_eval_config_checks() -> None:
    with pytest.raises(ValueError, match="at least one data file"):
        EvalConfig(model="m", data=[])
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\] \(2.0\)"):
        EvalConfig(model="m", data=["d"], threshold=2.0)
    with pytest.raises(ValueError, match="data.split is a training setting that evaluation does not read; it reads "
                                         "data.format, data.key_regex"):
        EvalConfig(model="m", data=["d"], source=DataSection(split="chronological"))
