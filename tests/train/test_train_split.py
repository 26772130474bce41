"""The leak-free split: an identical masked sequence never sits on both sides."""
from __future__ import annotations

import json

import pytest

from model.masking import mask
from train.data import Session
from train.split import sequence_key, split_sessions


def _sessions() -> list[Session]:
    out = []
    for i in range(200):
        shape = i % 13  # 13 distinct sequences, each duplicated many times with different ids
        lines = tuple(f"step {k} of request req_{i} took {i * 7 + k} ms" for k in range(shape + 1))
        out.append(Session(session_id=f"s{i}", lines=lines, label=int(shape == 5)))
    return out


@pytest.mark.parametrize("mode", ["grouped", "chronological"])
def test_no_sequence_on_both_sides(mode: str) -> None:
    sessions = _sessions()
    train, eval_ = split_sessions(sessions, 0.25, seed=1, mode=mode, mask=mask)
    train_keys = {sequence_key(s, mask) for s in train}
    eval_keys = {sequence_key(s, mask) for s in eval_}
    assert train_keys and eval_keys
    assert not train_keys & eval_keys
    assert len(train) + len(eval_) == len(sessions)
    assert 0.15 <= len(eval_) / len(sessions) <= 0.4


def test_chronological_takes_the_latest_groups() -> None:
    sessions = [Session(f"s{i}", (f"event {chr(97 + i // 10)}",), 0) for i in range(100)]  # 10 groups in order
    train, eval_ = split_sessions(sessions, 0.2, seed=0, mode="chronological", mask=mask)
    assert {s.lines[0] for s in eval_} == {"event i", "event j"}
    assert [s.session_id for s in train] == [f"s{i}" for i in range(80)]


def test_grouped_split_depends_on_seed_only() -> None:
    a = split_sessions(_sessions(), 0.25, seed=7, mode="grouped", mask=mask)
    b = split_sessions(_sessions(), 0.25, seed=7, mode="grouped", mask=mask)
    assert a == b


def test_single_sequence_cannot_be_split() -> None:
    sessions = [Session(f"s{i}", ("same line",), i % 2) for i in range(10)]
    with pytest.raises(ValueError, match="share one line sequence"):
        split_sessions(sessions, 0.2, seed=0, mode="grouped", mask=mask)


def test_bad_mode_and_fraction_are_named() -> None:
    with pytest.raises(ValueError, match="'random'"):
        split_sessions(_sessions(), 0.2, seed=0, mode="random", mask=mask)
    with pytest.raises(ValueError, match=r"\(1.5\)"):
        split_sessions(_sessions(), 1.5, seed=0, mode="grouped", mask=mask)


@pytest.mark.parametrize("fmt", ["labelled_log", "labelled_csv"])
def test_overlapping_labelled_windows_are_split_by_time_with_no_line_on_both_sides(tmp_path, fmt: str) -> None:
    """Issue 18: with window_hop < window, a split over windows put near-copies of eval windows in train (12 of 13
    eval windows shared 12 of 16 lines with a train window)."""
    import random

    from model.config_io import load_config
    from train.config import TrainConfig
    from train.pipeline import load_run_data

    rng = random.Random(0)
    words = ["open", "read", "write", "close", "flush", "sync", "retry", "commit", "evict", "spill", "merge"]
    lines = [("FATAL" if rng.random() < 0.05 else "-", f"node{rng.randrange(9)} {rng.choice(words)} "
              f"{rng.choice(words)} seq={i}") for i in range(400)]
    path = tmp_path / ("BGL.log" if fmt == "labelled_log" else "BGL.csv")
    if fmt == "labelled_log":
        path.write_text("".join(f"{label} {text}\n" for label, text in lines), encoding="utf-8")
    else:
        path.write_text("Label,Content\n" + "".join(f"{label},{text}\n" for label, text in lines), encoding="utf-8")
    cfg = load_config(TrainConfig, None, [f"data.train={json.dumps([str(path)])}", f"data.format={fmt}",
                                          "data.window=16", "data.window_hop=4", "model.max_window=16"])
    train, eval_, info = load_run_data(cfg)

    def seqs(session) -> set[int]:  # the input lines a window holds
        return {int(line.rsplit("seq=", 1)[1]) for line in session.lines}

    train_lines = set().union(*(seqs(s) for s in train))
    eval_lines = set().union(*(seqs(s) for s in eval_))
    assert not train_lines & eval_lines
    assert min(eval_lines) == 320 and max(train_lines) == 319  # the last 20% of the lines, in time order
    assert info["split"].startswith("by time") and len(eval_) >= 15
    assert len({s.session_id for s in train + eval_}) == len(train) + len(eval_)
