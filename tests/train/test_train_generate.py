"""The synthetic world: deterministic, labelled, split without shared sequences, streamable."""
from __future__ import annotations

import csv
import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from model.masking import mask
from train.data import load_jsonl
from train.generate import INCIDENT_KINDS, NORMAL_KINDS, generate_sessions, write_world

REQUEST_ID = re.compile(r"request_id=(\S+)")


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_same_world_other_seed_other_world(tmp_path: Path) -> None:
    write_world(tmp_path / "a", sessions=200, seed=5)
    write_world(tmp_path / "b", sessions=200, seed=5)
    write_world(tmp_path / "c", sessions=200, seed=6)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a")["train.jsonl"] != _files(tmp_path / "c")["train.jsonl"]


def test_counts_labels_and_stream(tmp_path: Path) -> None:
    counts = write_world(tmp_path, sessions=500, seed=1)
    train, dev = load_jsonl(tmp_path / "train.jsonl"), load_jsonl(tmp_path / "dev.jsonl")
    assert len(train) + len(dev) == 500
    assert counts["train"] == len(train) and counts["dev"] == len(dev)
    assert counts["train_anomalous"] == sum(s.label for s in train)
    assert 0.2 <= len(dev) / 500 <= 0.4
    assert 0.1 <= sum(s.label for s in train + dev) / 500 <= 0.3

    kinds = Counter(json.loads(line)["kind"] for line in (tmp_path / "dev.jsonl").open(encoding="utf-8"))
    assert set(kinds) == set(NORMAL_KINDS) | set(INCIDENT_KINDS)  # every flow and incident reaches dev

    stream = (tmp_path / "stream.log").read_text(encoding="utf-8").splitlines()
    assert len(stream) == counts["stream_lines"] == sum(len(s.lines) for s in dev)
    with (tmp_path / "stream_labels.csv").open(encoding="utf-8") as handle:
        labels = {row["session_id"]: int(row["label"]) for row in csv.DictReader(handle)}
    assert labels == {s.session_id: s.label for s in dev}
    # each line carries its request id; per session, the stream keeps the session's own line order
    by_session: dict[str, list[str]] = {}
    for line in stream:
        by_session.setdefault(REQUEST_ID.search(line).group(1), []).append(line)
    assert {k: tuple(v) for k, v in by_session.items()} == {s.session_id: s.lines for s in dev}
    assert stream == sorted(stream, key=lambda line: line[:24])  # time-ordered (ISO timestamps sort as text)
    assert sum(1 for a, b in zip(stream, stream[1:]) if REQUEST_ID.search(a)[1] != REQUEST_ID.search(b)[1]) > \
        len(dev)  # sessions really interleave


def test_dev_holds_unseen_sequences_of_known_lines(tmp_path: Path) -> None:
    write_world(tmp_path, sessions=600, seed=2)
    train, dev = load_jsonl(tmp_path / "train.jsonl"), load_jsonl(tmp_path / "dev.jsonl")
    train_lines = {mask(line) for s in train for line in s.lines}
    train_seqs = {tuple(mask(line) for line in s.lines) for s in train}
    dev_seqs = [tuple(mask(line) for line in s.lines) for s in dev]
    assert 0.02 < sum(seq not in train_seqs for seq in dev_seqs) / len(dev) < 0.5
    # sessions differ in their ids, timestamps and numbers, yet mask to a small vocabulary of lines
    assert len({line for s in dev for line in s.lines}) == sum(len(s.lines) for s in dev)
    assert len(train_lines) < 120
    assert sum(line not in train_lines for seq in dev_seqs for line in seq) / sum(map(len, dev_seqs)) < 0.02


def test_out_of_order_sessions_are_normal_lines_in_a_wrong_order() -> None:
    world = generate_sessions(400, seed=4)
    normal_lines = {mask(line) for g in world if g.kind in NORMAL_KINDS for line in g.session.lines}
    shuffled = [g for g in world if g.kind == "out_of_order"]
    assert shuffled and all(g.session.label == 1 for g in shuffled)
    for g in shuffled:
        assert {mask(line) for line in g.session.lines} <= normal_lines
        assert not g.structure[0].startswith("gw.recv")
        assert list(g.timestamps) == sorted(g.timestamps)


def test_thousand_sessions_in_under_two_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    write_world(tmp_path, sessions=1000, seed=0)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("fraction", [1.5, 1.0, 0.0, -0.2])
def test_dev_fraction_outside_zero_one_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fraction: float) -> None:
    from model.cli import main

    with pytest.raises(ValueError, match=rf"dev_fraction must be in \(0, 1\) \({fraction}\)"):
        write_world(tmp_path / "w", sessions=20, dev_fraction=fraction)
    assert not (tmp_path / "w").exists()
    assert main(["generate", "--out", str(tmp_path / "w"), "--dev-fraction", str(fraction)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"logmoe: error: dev_fraction must be in (0, 1) ({fraction})"
