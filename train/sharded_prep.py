"""The expensive data step split over the ranks of a data-parallel run: each rank masks its shard of the sessions
and encodes its shard of the lines missing from the embedding cache; the results are exchanged with collectives,
so every rank ends with all of them without a shared folder, and rank 0 alone reads and writes the cache (a later
run, of any size, finds every row there). In a single process these are `mask_sessions` and `embed_lines`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from train.data import Session
from train.distributed import DataParallel
from train.embeddings import EmbeddingCache, Encoder, embed_lines, encode_in_chunks, mask_sessions

logger = logging.getLogger(__name__)


def mask_sessions_across(sessions: Sequence[Session], mask: Callable[[str], str],
                         dp: DataParallel) -> list[tuple[str, ...]]:
    """Each session's masked lines, in order; every rank masks every world_size-th session."""
    if not dp.distributed:
        return mask_sessions(sessions, mask)
    return dp.gather_shards(mask_sessions(sessions[dp.rank::dp.world_size], mask))


def embed_lines_across(texts: Sequence[str], encoder: Encoder, cache: EmbeddingCache | None,
                       dp: DataParallel, chunk_size: int = 1024) -> torch.Tensor:
    """(U, D) float32 embeddings of the distinct masked `texts` (the same list on every rank), as embed_lines
    returns them: rank 0 reads the cache, the ranks encode the missing lines in strided shards, gather them, and
    rank 0 adds them to the cache as one shard."""
    if not dp.distributed:
        return embed_lines(texts, encoder, cache, chunk_size)

    held: list[torch.Tensor] = []

    def read_cache() -> list[int]:  # on rank 0 only: the one rank that may see the cache folder
        cached = cache.load() if cache is not None else {}
        found = [cached[text] for text in texts if text in cached]
        held.append(torch.stack(found) if found else torch.zeros(0, encoder.dim))  # (U - M, D)
        return [row for row, text in enumerate(texts) if text not in cached]

    missing = dp.from_main(read_cache)
    cached_rows = dp.broadcast_rows(held[0] if held else None, (len(texts) - len(missing), encoder.dim))
    mine = [texts[row] for row in missing[dp.rank::dp.world_size]]
    logger.info("embedding %d distinct masked lines: %d cached, %d to encode over %d processes (%d here)",
                len(texts), len(texts) - len(missing), len(missing), dp.world_size, len(mine))
    fresh = encode_in_chunks(mine, encoder, chunk_size, show_progress=dp.is_main)  # (m_r, D)
    new_rows = torch.empty(len(missing), encoder.dim)  # (M, D) in `missing` order
    for rank, rows in enumerate(dp.gather_rows(fresh)):
        new_rows[rank::dp.world_size] = rows  # rank r encoded every W-th missing line from the r-th on
    is_missing = torch.zeros(len(texts), dtype=torch.bool)
    is_missing[missing] = True
    table = torch.empty(len(texts), encoder.dim)  # (U, D)
    table[~is_missing] = cached_rows
    table[is_missing] = new_rows
    if dp.is_main and cache is not None and missing:
        cache.add([texts[row] for row in missing], new_rows)
    encoder.prime(list(texts), table)
    return table
