"""The scoring process (stream/scoring.py): the same scores as the model in the worker's own process, the model's
errors as themselves, a dead child restarted with its batch sent again, and children stopped when a scorer is
retired."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stream import scoring
from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.reload import ModelReloader, ScorerSlot
from stream.scoring import ProcessScorer, ScoringProcessError, close_scorer, load_scorer
from test_reload import write_model

WINDOWS = [["INFO a line 1", "WARN another line 22"], ["INFO a line 3"], ["ERROR x", "ERROR y", "INFO z"]]


@pytest.fixture()
def folder(tiny_encoder_dir: Path, tmp_path: Path) -> Path:
    return write_model(tmp_path / "final_moe_model", tiny_encoder_dir, fingerprint="a" * 64, threshold=0.4)


@pytest.fixture()
def process_scorer(folder: Path) -> Any:
    scorer = load_scorer(StreamConfig(model=str(folder), device="cpu"))
    yield scorer
    scorer.close()


def test_the_process_scores_what_the_thread_scores(folder: Path, process_scorer: ProcessScorer) -> None:
    thread = load_scorer(StreamConfig(model=str(folder), device="cpu", scoring="thread"))
    assert isinstance(process_scorer, ProcessScorer)
    for key in ("threshold", "name", "fingerprint", "max_window", "window_hop", "early_hop"):
        assert getattr(process_scorer, key) == getattr(thread, key), key
    assert process_scorer.model_dir == thread.model_dir == folder
    ours, theirs = process_scorer.score_detailed(WINDOWS), thread.score_detailed(WINDOWS)
    assert [w.score for w in ours] == [w.score for w in theirs]
    assert [w.line_scores for w in ours] == [w.line_scores for w in theirs]
    assert process_scorer.cache_info()["misses"] > 0  # the child's encoder cache, reported with each answer


def test_a_model_error_comes_back_as_itself_and_the_child_stays(process_scorer: ProcessScorer) -> None:
    pid = process_scorer._proc.pid
    with pytest.raises(ValueError, match="more than max_window=8"):
        process_scorer.score_detailed([["l"] * 9])
    assert process_scorer.score_detailed(WINDOWS) and process_scorer._proc.pid == pid
    assert process_scorer.restarts == 0


def test_a_killed_child_is_restarted_and_the_batch_scored(process_scorer: ProcessScorer) -> None:
    before = process_scorer.score_detailed(WINDOWS)
    counted: list[int] = []
    process_scorer.on_restart = lambda: counted.append(1)
    pid = process_scorer._proc.pid
    os.kill(pid, signal.SIGKILL)
    after = process_scorer.score_detailed(WINDOWS)
    assert [w.score for w in after] == [w.score for w in before]  # scored by the restarted child, same copy
    assert process_scorer._proc.pid != pid and process_scorer.restarts == 1 and counted == [1]


def test_a_batch_that_takes_down_every_child_fails_after_the_retries(process_scorer: ProcessScorer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def dies(payload: list[list[str]]) -> Any:
        asked.append(len(payload))
        raise EOFError  # the child died with this batch

    monkeypatch.setattr(process_scorer, "_ask", dies)
    monkeypatch.setattr(process_scorer, "_start", lambda: None)  # no child to start: each attempt dies as sent
    with pytest.raises(ScoringProcessError, match="took down 3 scoring processes"):
        process_scorer.score_detailed(WINDOWS)
    assert asked == [3] * (scoring.RETRIES + 1) and process_scorer.restarts == scoring.RETRIES + 1


def test_a_scorer_removes_the_copy_a_killed_worker_left_and_names_its_own_after_its_process(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.reload import copy_prefix

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stale = tmp_path / "tmp" / f"{copy_prefix().replace(f'-{os.getpid()}-', f'-{killed.pid}-')}z9y8x7w6"
    (stale / "final_moe_model").mkdir(parents=True)
    killed.kill()
    killed.wait()
    scorer = load_scorer(StreamConfig(model=str(folder), device="cpu"))
    try:
        assert not stale.exists()
        assert [p.name[:len(copy_prefix())] for p in (tmp_path / "tmp").iterdir()] == [copy_prefix()]
    finally:
        scorer.close()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_close_stops_the_child_and_removes_the_copy(process_scorer: ProcessScorer) -> None:
    proc, tmp = process_scorer._proc, Path(process_scorer._tmp)
    assert proc.is_alive() and tmp.is_dir()
    close_scorer(process_scorer)
    assert not proc.is_alive() and not tmp.exists()


def test_hot_reload_stops_the_retired_child(folder: Path, tiny_encoder_dir: Path, process_scorer: ProcessScorer,
                                            tmp_path: Path) -> None:
    cfg = StreamConfig(model=str(folder), device="cpu")
    slot = ScorerSlot(process_scorer)
    metrics = Metrics()
    reloader = ModelReloader(folder, slot, metrics, lambda running: load_scorer(cfg, running), lambda s: None,
                             close_scorer)
    old_child = process_scorer._proc
    write_model(folder, tiny_encoder_dir, fingerprint="b" * 64, seed=1)

    async def poll_twice() -> bool:
        await reloader.check()  # sees the change
        return await reloader.check()  # unchanged since: loads it

    assert asyncio.run(poll_twice())
    assert slot.scorer.fingerprint == "b" * 64 and not old_child.is_alive()
    close_scorer(slot.scorer)


def test_a_refused_candidate_leaves_no_child(folder: Path, process_scorer: ProcessScorer) -> None:
    cfg = StreamConfig(model=str(folder), device="cpu")
    made: list[ProcessScorer] = []

    def load(running: Any) -> ProcessScorer:
        made.append(load_scorer(cfg, running))  # type: ignore[arg-type]
        return made[-1]

    def install(new: Any) -> None:
        raise ValueError("refused by install")

    reloader = ModelReloader(folder, ScorerSlot(process_scorer), Metrics(), load, install, close_scorer)
    (folder / "config.json").touch()
    os.utime(folder / "config.json", ns=(1, 2))

    async def poll_twice() -> bool:
        await reloader.check()
        return await reloader.check()

    assert not asyncio.run(poll_twice())
    assert len(made) == 1 and made[0]._proc is None and not Path(made[0]._tmp).exists()
    assert process_scorer._proc.is_alive()  # the running one goes on


def test_novelty_is_answered_by_the_child_and_matches_masking_here(folder: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    from model.scorer import LogScorer

    LogScorer.save_normal_lines(folder, ["INFO a line <NUM>", "WARN another line <NUM>"])
    scorer = load_scorer(StreamConfig(model=str(folder), device="cpu"))
    try:
        lines = ["INFO a line 7", "ERROR never seen 3", "WARN another line 9", "INFO a line 7"]
        expected = [False, True, False, False]
        assert [scorer.is_novel(line) for line in lines] == expected  # masked here

        def no_masking_here(line: str) -> str:
            raise AssertionError(f"masked in the worker: {line!r}")

        monkeypatch.setattr(scoring, "mask_cached", no_masking_here)
        scorer.prefetch_novelty(lines)
        assert [scorer.is_novel(line) for line in lines] == expected  # as the child said
        monkeypatch.undo()
        os.kill(scorer._proc.pid, signal.SIGKILL)
        scorer.prefetch_novelty(["ERROR also new 1", "INFO a line 2"])  # the child is gone: masked here
        assert [scorer.is_novel(line) for line in ("ERROR also new 1", "INFO a line 2")] == [True, False]
        assert scorer.score_detailed(WINDOWS)  # restarted by scoring, which answers novelty again
        monkeypatch.setattr(scoring, "mask_cached", no_masking_here)
        scorer.prefetch_novelty(["INFO a line 5"])
        assert scorer.is_novel("INFO a line 5") is False
    finally:
        monkeypatch.undo()
        scorer.close()
