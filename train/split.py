"""Leak-free train/eval split: sessions with the same masked line sequence always land on the same side."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence

from train.data import Session

logger = logging.getLogger(__name__)

SPLIT_MODES = ("grouped", "chronological")


def sequence_key(session: Session, mask: Callable[[str], str]) -> tuple[str, ...]:
    """The identity used for grouping: the session's masked lines in order."""
    return tuple(mask(line) for line in session.lines)


def split_sessions(sessions: Sequence[Session], eval_fraction: float, seed: int, mode: str,
                   mask: Callable[[str], str]) -> tuple[list[Session], list[Session]]:
    """Split into (train, eval) so no masked sequence occurs on both sides.

    grouped: whole groups are shuffled with `seed` and taken into eval until it holds ~eval_fraction of the
    sessions. chronological: groups are ordered by their first session's position in the input (the input is
    assumed time-ordered) and the last groups form eval. Either way the split is over groups, never over sessions.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"unknown split mode ({mode!r}); expected one of {', '.join(SPLIT_MODES)}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1) ({eval_fraction})")
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, session in enumerate(sessions):
        groups.setdefault(sequence_key(session, mask), []).append(index)
    if len(groups) < 2:
        raise ValueError(f"cannot split: all {len(sessions)} sessions share one line sequence; give an eval file")
    ordered = list(groups.values())  # dicts keep first-seen order, i.e. chronological by first session
    if mode == "grouped":
        random.Random(seed).shuffle(ordered)
    target = eval_fraction * len(sessions)
    eval_idx: list[int] = []
    while ordered and len(eval_idx) < target and len(ordered) > 1:
        eval_idx.extend(ordered.pop())  # from the end: the latest groups when chronological
    train_idx = sorted(i for group in ordered for i in group)
    eval_idx.sort()
    logger.info("split %d sessions (%d distinct sequences) %s: %d train, %d eval",
                len(sessions), len(groups), mode, len(train_idx), len(eval_idx))
    return [sessions[i] for i in train_idx], [sessions[i] for i in eval_idx]
