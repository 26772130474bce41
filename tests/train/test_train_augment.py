"""Shuffling the lines of order-free anomalous windows (train/augment.py)."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from train.augment import AnomalyShuffle, order_free_anomalies
from train.data import Session
from train.embeddings import WindowSet, pack_windows

# rows: 1 allocate, 2 receive, 3 respond, 4 delete
WINDOWS = [
    [1, 2, 2, 2, 3],  # normal
    [2, 2, 1],  # anomalous: a replica missing, no normal window holds {1, 2, 2}
    [3, 2, 2, 1, 2],  # anomalous by its order: the normal window's lines, rotated
    [1, 2, 2, 2, 3, 4, 4, 4],  # normal
    [4, 4, 4, 1, 2, 2, 2, 3],  # anomalous by its order
    [1, 3, 3, 3, 3, 3, 2],  # anomalous: an exception repeated
]
LABELS = [0, 1, 1, 0, 1, 1]


def window_set() -> WindowSet:
    sessions = [Session(session_id=str(i), lines=["x"], label=label) for i, label in enumerate(LABELS)]
    return pack_windows(WINDOWS, LABELS, list(range(len(WINDOWS))), sessions)


def test_only_anomalies_holding_what_no_normal_window_holds_are_order_free() -> None:
    assert order_free_anomalies(window_set()).tolist() == [False, True, False, False, False, True]


def batch_of(data: WindowSet, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 1) embeddings equal to each line's row, and (B, T) counts = 10 x the row, for checking moves."""
    index = data.index[rows]  # (B, L)
    return index[:, :, None].float().clone(), index.clone() * 10


def test_shuffles_the_chosen_windows_real_lines_only_and_keeps_what_they_hold() -> None:
    data = window_set()
    shuffle = AnomalyShuffle(data, probability=1.0, seed=3)
    rows = torch.arange(len(WINDOWS))
    moved: set[int] = set()
    for step in range(20):
        embeds, counts = batch_of(data, rows)
        embeds, counts = shuffle(rows, embeds, counts, step)
        for b, window in enumerate(WINDOWS):
            got = embeds[b, :, 0].long().tolist()
            assert counts[b].tolist() == [10 * r for r in got]  # counts move with their lines
            assert got[len(window):] == [0] * (len(got) - len(window))  # padding stays last
            if b in (1, 5):
                assert Counter(got[:len(window)]) == Counter(window)
                if got[:len(window)] != window:
                    moved.add(b)
            else:
                assert got[:len(window)] == window  # normal and order anomalies keep their order
    assert moved == {1, 5}


def test_draws_depend_on_seed_and_step_only_and_probability_zero_changes_nothing() -> None:
    data = window_set()
    rows = torch.tensor([5, 1, 5])
    first = AnomalyShuffle(data, 0.5, seed=1)(rows, *batch_of(data, rows), step=4)
    again = AnomalyShuffle(data, 0.5, seed=1)(rows, *batch_of(data, rows), step=4)
    assert torch.equal(first[0], again[0])
    embeds, counts = batch_of(data, rows)
    unchanged = AnomalyShuffle(data, 0.0, seed=1)(rows, embeds.clone(), counts.clone(), step=4)
    assert torch.equal(unchanged[0], embeds) and torch.equal(unchanged[1], counts)
    assert AnomalyShuffle(data, 1.0, seed=1)(rows, embeds.clone(), None, step=4)[1] is None


def test_a_batch_split_between_processes_is_shuffled_as_one_process_shuffles_it() -> None:
    data = window_set()
    rows = torch.tensor([1, 5, 0, 1, 5, 2])
    shuffle = AnomalyShuffle(data, 0.5, seed=7)
    for step in range(12):
        whole = shuffle(rows, *batch_of(data, rows), step=step)[0]  # (6, T, 1)
        halves = [shuffle(part, *batch_of(data, part), step=step)[0] for part in (rows[:3], rows[3:])]
        assert torch.equal(torch.cat(halves), whole), step  # what data-parallel ranks do with their shares
        assert torch.equal(whole[0], whole[3]) and torch.equal(whole[1], whole[4])  # a window's draw is its own


def test_a_bad_probability_is_named() -> None:
    with pytest.raises(ValueError, match=r"shuffle probability must be in \[0, 1\] \(1.5\)"):
        AnomalyShuffle(window_set(), 1.5, seed=0)
