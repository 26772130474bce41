"""Embed each distinct masked line of a run once, with an on-disk cache, and turn sessions into index windows.

The cache lives in `<cache_dir>/<sha256(encoder key)[:16]>/`: `key.txt` (the encoder reference, pooling and
max length the embeddings came from) and shards, each a `shard-*.safetensors` (one (n, D) float32 tensor) plus a
`shard-*.json` (its n masked lines, in row order). A shard counts only once its JSON exists, and the JSON is
written last, so an interrupted write leaves no half shard. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from model.windowing import session_windows
from train.data import Session

logger = logging.getLogger(__name__)


class Encoder(Protocol):
    """What is used of model.LineEncoder."""

    dim: int
    reference: str

    def encode(self, masked_lines: Sequence[str]) -> torch.Tensor: ...

    def prime(self, texts: Sequence[str], embeddings: torch.Tensor) -> None: ...


class EmbeddingCache:
    """Disk cache of line embeddings for one encoder key."""

    def __init__(self, root: str | Path, key: str) -> None:
        self.key = key
        self.dir = Path(root) / hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]

    def load(self) -> dict[str, torch.Tensor]:
        """Every cached masked line -> its (D,) embedding."""
        found: dict[str, torch.Tensor] = {}
        for index_file in sorted(self.dir.glob("shard-*.json")):
            texts = json.loads(index_file.read_text(encoding="utf-8"))
            tensor_file = index_file.with_suffix(".safetensors")
            if not tensor_file.is_file():
                logger.warning("embedding cache shard %s has no tensors; ignored", index_file)
                continue
            rows = load_file(str(tensor_file))["embeddings"]  # (n, D)
            if rows.shape[0] != len(texts):
                logger.warning("embedding cache shard %s holds %d rows for %d lines; ignored",
                               tensor_file, rows.shape[0], len(texts))
                continue
            found.update(zip(texts, rows))
        return found

    def add(self, texts: Sequence[str], embeddings: torch.Tensor) -> None:
        """Store new rows as one shard; the JSON index is written (atomically) last."""
        if not texts:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.txt"
        if not key_file.exists():
            key_file.write_text(self.key + "\n", encoding="utf-8")
        stem = self.dir / f"shard-{time.time_ns()}-{os.getpid()}"
        save_file({"embeddings": embeddings.detach().float().contiguous().cpu()}, str(stem) + ".safetensors")
        tmp = Path(str(stem) + ".json.tmp")
        tmp.write_text(json.dumps(list(texts), ensure_ascii=False), encoding="utf-8")
        tmp.replace(str(stem) + ".json")


def encoder_cache_key(reference: str, pooling: str, max_length: int, token_buckets: int = 0) -> str:
    """Everything that changes an embedding: which encoder, how it pools, how many tokens it reads, and the size
    of the bag of word pieces appended (left out at 0, so caches written before it stay valid)."""
    key = f"{reference}|pooling={pooling}|max_length={max_length}"
    return f"{key}|token_buckets={token_buckets}" if token_buckets else key


def embed_lines(texts: Sequence[str], encoder: Encoder, cache: EmbeddingCache | None,
                chunk_size: int = 1024) -> torch.Tensor:
    """(U, D) float32 embeddings of the distinct masked `texts`, in their order; cached rows are read, the rest
    encoded in chunks (with a progress bar) and added to the cache. The encoder's memory cache is primed too,
    so a LogScorer sharing the encoder does not encode these lines again."""
    cached = cache.load() if cache is not None else {}
    missing = [t for t in texts if t not in cached]
    logger.info("embedding %d distinct masked lines: %d cached, %d to encode", len(texts), len(texts) - len(missing),
                len(missing))
    if missing:
        new_rows = encode_in_chunks(missing, encoder, chunk_size)  # (M, D)
        if cache is not None:
            cache.add(missing, new_rows)
        cached.update(zip(missing, new_rows))
    table = torch.stack([cached[t] for t in texts]) if texts else torch.zeros(0, encoder.dim)  # (U, D)
    encoder.prime(list(texts), table)
    return table


def encode_in_chunks(texts: Sequence[str], encoder: Encoder, chunk_size: int = 1024,
                     show_progress: bool = True) -> torch.Tensor:
    """(M, D) float32 CPU embeddings of `texts`, encoded chunk_size lines at a time (with a progress bar)."""
    fresh = [torch.zeros(0, encoder.dim)]
    for start in tqdm(range(0, len(texts), chunk_size), desc="encoding lines", unit="chunk",
                      disable=not texts or not show_progress):
        fresh.append(encoder.encode(texts[start:start + chunk_size]).float().cpu())  # (c, D)
    return torch.cat(fresh)  # (M, D)


@dataclass
class WindowSet:
    """Sessions as windows of row indices into a shared embedding table, padded to the longest window."""

    index: torch.Tensor  # (W, L) int64 rows of the table, 0 after each window's end
    lengths: torch.Tensor  # (W,) int64 real lines per window
    labels: torch.Tensor  # (W,) int64, each window labelled with its session's label
    session_index: torch.Tensor  # (W,) int64, the session each window belongs to
    session_labels: torch.Tensor  # (S,) int64
    session_ids: list[str]  # (S,)
    # (U,) int64 per table row: the training sessions the model is told held that line (model.rarity), None = unused
    row_counts: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_sessions(self) -> int:
        return len(self.session_ids)

    def batch(self, table: torch.Tensor, rows: torch.Tensor) -> Batch:
        """Windows `rows` (B,) as (B, T, D) embeddings, a (B, T) bool mask of real lines, T their longest, and the
        (B, T) line counts (None without row_counts)."""
        return gather_windows(table, self.index[rows], self.lengths[rows], self.row_counts)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # embeddings (B, T, D), mask (B, T), counts (B, T)


def gather_windows(table: torch.Tensor, index: torch.Tensor, lengths: torch.Tensor,
                   row_counts: torch.Tensor | None = None) -> Batch:
    """Windows of table rows `index` (B, L) with `lengths` (B,) as (B, T, D) embeddings, a (B, T) bool mask of
    real lines, T their longest (<= L), and each line's count from `row_counts` (U,) (None without), on the
    table's device."""
    longest = int(lengths.max())
    rows = index[:, :longest].to(table.device)  # (B, T)
    mask = torch.arange(longest, device=table.device)[None, :] < lengths.to(table.device)[:, None]  # (B, T)
    counts = None if row_counts is None else row_counts.to(table.device)[rows]  # (B, T)
    return table[rows], mask, counts


def mask_sessions(sessions: Sequence[Session], mask: Callable[[str], str]) -> list[tuple[str, ...]]:
    """Each session's masked lines (a progress bar: masking a large corpus takes seconds)."""
    return [tuple(mask(line) for line in s.lines) for s in tqdm(sessions, desc="masking", unit="session",
                                                                  disable=len(sessions) < 5000)]


def build_window_set(sessions: Sequence[Session], masked: Sequence[tuple[str, ...]], row_of: dict[str, int],
                     max_window: int, hop: int, row_counts: torch.Tensor | None = None) -> WindowSet:
    """Cut each session into windows with the worker's rule (model.windowing.session_windows)."""
    windows: list[list[int]] = []
    labels: list[int] = []
    owners: list[int] = []
    for number, (session, lines) in enumerate(zip(sessions, masked)):
        for window in session_windows([row_of[line] for line in lines], max_window, hop):
            windows.append(window)
            labels.append(session.label)
            owners.append(number)
    return pack_windows(windows, labels, owners, sessions, row_counts)


def pack_windows(windows: Sequence[Sequence[int]], labels: Sequence[int], owners: Sequence[int],
                 sessions: Sequence[Session], row_counts: torch.Tensor | None = None) -> WindowSet:
    """Windows of table rows, each with its label and the index of its session in `sessions`, as a WindowSet."""
    longest = max((len(w) for w in windows), default=1)
    index = torch.zeros(len(windows), longest, dtype=torch.long)  # (W, L)
    for row, window in enumerate(windows):
        index[row, : len(window)] = torch.tensor(list(window), dtype=torch.long)
    return WindowSet(
        index=index,
        lengths=torch.tensor([len(w) for w in windows], dtype=torch.long),
        labels=torch.tensor(list(labels), dtype=torch.long),
        session_index=torch.tensor(list(owners), dtype=torch.long),
        session_labels=torch.tensor([s.label for s in sessions], dtype=torch.long),
        session_ids=[s.session_id for s in sessions],
        row_counts=row_counts,
    )


def concat_window_sets(a: WindowSet, b: WindowSet) -> WindowSet:
    """The windows of `a`, then those of `b` (both over the same sessions and row counts)."""
    if a.session_ids != b.session_ids:
        raise ValueError("window sets over different sessions cannot be joined")
    if (a.row_counts is None) != (b.row_counts is None) or (
            a.row_counts is not None and not torch.equal(a.row_counts, b.row_counts)):
        raise ValueError("window sets with different row counts cannot be joined")
    longest = max(a.index.shape[1], b.index.shape[1])
    index = torch.cat([F.pad(a.index, (0, longest - a.index.shape[1])),
                       F.pad(b.index, (0, longest - b.index.shape[1]))])  # (Wa + Wb, longest)
    return WindowSet(index=index, lengths=torch.cat([a.lengths, b.lengths]),
                     labels=torch.cat([a.labels, b.labels]), session_index=torch.cat([a.session_index, b.session_index]),
                     session_labels=a.session_labels, session_ids=a.session_ids, row_counts=a.row_counts)
