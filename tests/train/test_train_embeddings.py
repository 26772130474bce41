"""Embedding cache (a second run encodes nothing), window sets (the worker's windows), checkpoint state."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from model.windowing import session_windows
from train.checkpoint import load_optimizer_tensors, optimizer_tensors
from train.data import Session
from train.embeddings import EmbeddingCache, build_window_set, embed_lines, encoder_cache_key


class CountingEncoder:
    """A stand-in LineEncoder: embeddings from the text's characters; counts what it encodes."""

    dim = 4
    reference = "fake"

    def __init__(self) -> None:
        self.encoded: list[str] = []
        self.primed: list[str] = []

    def encode(self, masked_lines: Sequence[str]) -> torch.Tensor:
        self.encoded.extend(masked_lines)
        return torch.tensor([[len(t), ord(t[0]), ord(t[-1]), t.count(" ")] for t in masked_lines], dtype=torch.float)

    def prime(self, texts: Sequence[str], embeddings: torch.Tensor) -> None:
        self.primed = list(texts)


def test_second_run_reads_the_disk_cache(tmp_path: Path) -> None:
    key = encoder_cache_key("fake", "mean", 64)
    first = CountingEncoder()
    table = embed_lines(["a b", "cc", "d e f"], first, EmbeddingCache(tmp_path, key))
    assert first.encoded == ["a b", "cc", "d e f"]
    second = CountingEncoder()
    again = embed_lines(["d e f", "a b", "new line"], second, EmbeddingCache(tmp_path, key))
    assert second.encoded == ["new line"]  # only the line not seen before
    assert torch.equal(again[0], table[2]) and torch.equal(again[1], table[0])
    assert second.primed == ["d e f", "a b", "new line"]  # the scorer's memory cache gets every row
    third = CountingEncoder()
    embed_lines(["a b", "new line"], third, EmbeddingCache(tmp_path, key))
    assert third.encoded == []
    other = CountingEncoder()
    embed_lines(["a b"], other, EmbeddingCache(tmp_path, encoder_cache_key("fake", "cls", 64)))
    assert other.encoded == ["a b"]  # another pooling is another cache
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pt"))


def test_half_written_shard_is_ignored(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "k")
    cache.add(["x"], torch.ones(1, 4))
    for index_file in cache.dir.glob("shard-*.json"):
        index_file.unlink()  # as if killed before the index was written
    assert cache.load() == {}


def test_window_set_uses_the_worker_windows() -> None:
    lines = [f"l{i}" for i in range(10)]
    sessions = [Session("long", tuple(lines), 1), Session("short", ("l1", "l2"), 0)]
    row_of = {line: i for i, line in enumerate(lines)}
    data = build_window_set(sessions, [tuple(s.lines) for s in sessions], row_of, max_window=4, hop=3)
    expected = session_windows(list(range(10)), 4, 3) + [[1, 2]]
    assert [data.index[i, : data.lengths[i]].tolist() for i in range(len(data))] == expected
    assert data.labels.tolist() == [1] * (len(expected) - 1) + [0]
    assert data.session_index.tolist() == [0] * (len(expected) - 1) + [1]
    table = torch.arange(40, dtype=torch.float).view(10, 4)
    embeds, mask, counts = data.batch(table, torch.tensor([len(data) - 1, 0]))
    assert counts is None  # a window set without row counts
    assert embeds.shape == (2, 4, 4) and mask.tolist() == [[True, True, False, False], [True] * 4]
    assert torch.equal(embeds[0, :2], table[[1, 2]])


def test_optimizer_state_round_trips_without_pickle() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    tensors, groups = optimizer_tensors(opt)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_optimizer_tensors(fresh, tensors, groups)
    for (a, b) in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert fresh.param_groups[0]["lr"] == 0.1
