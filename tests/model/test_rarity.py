"""model.rarity: how many training sessions held a line, the buckets the model reads, the file it is kept in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.rarity import LINE_COUNTS_FILE, load_line_counts, rarity_bucket, row_counts, save_line_counts, session_counts


def test_buckets_are_zero_then_powers_of_two_capped() -> None:
    counts = torch.tensor([0, 1, 2, 3, 4, 7, 8, 1023, 1024, 10**6])
    assert rarity_bucket(counts, 12).tolist() == [0, 1, 2, 2, 3, 3, 4, 10, 11, 11]
    assert rarity_bucket(counts, 3).tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 2, 2]


def test_a_session_counts_a_line_once() -> None:
    assert session_counts([("a", "a", "b"), ("a",), ("c", "c")]) == {"a": 2, "b": 1, "c": 1}


def test_training_rows_leave_their_own_session_out() -> None:
    counts = {"a": 3, "b": 1}
    assert row_counts(["a", "b", "new"], counts).tolist() == [3, 1, 0]
    # a line only its own session holds reads as never seen, as a new line will at scoring time
    assert row_counts(["a", "b", "new"], counts, leave_one_out=True).tolist() == [2, 0, 0]


def test_line_counts_round_trip_and_absent_file(tmp_path: Path) -> None:
    assert load_line_counts(tmp_path) is None
    save_line_counts(tmp_path, {"b": 2, "a": 1})
    assert load_line_counts(tmp_path) == {"a": 1, "b": 2}
    assert list(tmp_path.iterdir()) == [tmp_path / LINE_COUNTS_FILE]  # no temporary file left


@pytest.mark.parametrize("content", ['["a"]', '{"a": -1}', '{"a": "3"}', '{"a": true}', "{not json"])
def test_a_bad_line_counts_file_is_named(tmp_path: Path, content: str) -> None:
    (tmp_path / LINE_COUNTS_FILE).write_text(content)
    with pytest.raises(ValueError, match=LINE_COUNTS_FILE):
        load_line_counts(tmp_path)


def test_counts_file_is_plain_json(tmp_path: Path) -> None:
    save_line_counts(tmp_path, {"x <*>": 4})
    assert json.loads((tmp_path / LINE_COUNTS_FILE).read_text()) == {"x <*>": 4}
