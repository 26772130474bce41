"""Line rarity: how many training sessions held a masked line, as the model reads it.

A failure that was rarely or never labelled tends to speak in lines the training data hardly holds. With
rarity_buckets > 0 the model adds a learned vector per bucket of that count to each line's input state, so the
evidence reaches the score (and each line's share of it), not only the alert's `unseen_lines`.

Training shows each line the count of the *other* training sessions that held it (leave one session out): a line
only its own session holds reads as never seen, exactly as a new line will at scoring time, where the count is over
all training sessions (0 for a line training never held). Buckets are powers of two: 0, 1, 2-3, 4-7, ..., and the
last bucket holds every larger count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from model.checkpoint import LINE_COUNTS_FILE
from model.json_files import read_json, write_json_atomic


def rarity_bucket(counts: Tensor, buckets: int) -> Tensor:
    """counts (...) int >= 0 -> bucket (...) int64 in [0, buckets): 0 for 0, floor(log2(count)) + 1 for the rest
    (1 -> 1, 2-3 -> 2, 4-7 -> 3, ...), capped at buckets - 1."""
    counts = counts.long().clamp(min=0)
    octave = torch.floor(torch.log2(counts.clamp(min=1).double())).long() + 1  # (...) exact on powers of two
    return torch.where(counts == 0, 0, octave).clamp(max=buckets - 1)


def session_counts(sessions: Iterable[Sequence[str]]) -> dict[str, int]:
    """Masked line -> how many of the sessions hold it (once per session)."""
    counts: Counter[str] = Counter()
    for lines in sessions:
        counts.update(set(lines))
    return dict(counts)


def row_counts(rows: Sequence[str], counts: Mapping[str, int], leave_one_out: bool = False) -> Tensor:
    """(U,) int64 count of each table row's line (0 if absent); leave_one_out subtracts the window's own session,
    for windows of the sessions the counts came from."""
    found = torch.tensor([counts.get(line, 0) for line in rows], dtype=torch.long)  # (U,)
    return (found - 1).clamp(min=0) if leave_one_out else found


def save_line_counts(model_dir: str | Path, counts: Mapping[str, int]) -> None:
    """Write `counts` to model_dir/line_counts.json (sorted keys, atomically)."""
    write_json_atomic(Path(model_dir) / LINE_COUNTS_FILE, dict(sorted(counts.items())))


def load_line_counts(model_dir: str | Path) -> dict[str, int] | None:
    """model_dir/line_counts.json as a dict; None when the folder has none; ValueError naming a bad file."""
    path = Path(model_dir) / LINE_COUNTS_FILE
    counts = read_json(path)
    if counts is None:
        return None
    if not isinstance(counts, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
        raise ValueError(f"{str(path)!r} must hold a JSON object of masked line -> session count (an integer >= 0)")
    return counts
