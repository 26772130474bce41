"""Hot model reload without a broker: the folder watcher, the reloader's swap/refuse logic, encoder reuse on
real (tiny) models, and trimming open sessions to a smaller window."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from stream.agents import fit_to_window
from stream.scoring import load_scorer
from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.processor import Batch
from stream.reload import (COPY_PREFIX, ModelReloader, ModelWatcher, ScorerSlot, copy_prefix, model_signature,
                           private_copy, sweep_stale_copies)
from stream.windows import Entry, SessionState, Window
from stream_fakes import FakeScorer


def write_model(folder: Path, encoder_dir: Path, *, fingerprint: str, max_window: int = 8, seed: int = 0,
                threshold: float = 0.0, token_buckets: int = 0) -> Path:
    """A small random LogMoE model over the tiny test encoder (threshold 0: every window alerts)."""
    from model.configuration_logmoe import LogMoEConfig
    from model.modeling_logmoe import LogMoEForSequenceClassification

    torch.manual_seed(seed)
    config = LogMoEConfig(input_dim=32 + token_buckets, token_buckets=token_buckets, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_experts=2,
                          expert_intermediate_size=16, max_window=max_window, window_hop=4,
                          encoder_name_or_path=str(encoder_dir), threshold=threshold, data_fingerprint=fingerprint)
    LogMoEForSequenceClassification(config).save_pretrained(folder)
    return folder


def touch(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a distinct mtime even on coarse clocks


def model_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w1")
    return folder


def test_signature_needs_both_files_and_follows_changes_and_symlinks(tmp_path: Path) -> None:
    assert model_signature(tmp_path / "missing") is None
    a = model_files(tmp_path / "a")
    (a / "model.safetensors").unlink()
    assert model_signature(a) is None
    model_files(a)
    first = model_signature(a)
    touch(a / "model.safetensors", b"w2")
    assert model_signature(a) not in (None, first)
    b = model_files(tmp_path / "b")
    link = tmp_path / "current"
    link.symlink_to(a)
    on_a = model_signature(link)
    tmp = tmp_path / "next"
    tmp.symlink_to(b)
    tmp.replace(link)  # the atomic roll-out: switch the symlink
    assert model_signature(link) != on_a and model_signature(link)[0] == str(b.resolve())


def test_watcher_waits_for_the_folder_to_settle_and_does_not_retry_a_refused_model(tmp_path: Path) -> None:
    folder = model_files(tmp_path / "m")
    watcher = ModelWatcher(folder)
    assert watcher.armed and watcher.poll() is None  # nothing new
    touch(folder / "model.safetensors", b"new weights")
    assert watcher.poll() is None  # changed since the last poll: maybe still being written
    sig = watcher.poll()
    assert sig == model_signature(folder)  # the same twice: settled
    watcher.refuse(sig)
    assert watcher.poll() is None and watcher.poll() is None  # refused: not tried again
    touch(folder / "config.json", b'{"x": 1}')
    assert watcher.poll() is None and watcher.poll() is not None  # changed again: tried again
    shutil.rmtree(folder)
    assert watcher.poll() is None  # a folder being replaced is not a model


def test_a_change_between_loading_and_watching_is_not_missed(tmp_path: Path) -> None:
    folder = model_files(tmp_path / "m")
    loaded = model_signature(folder)  # what load_scorer records as source_signature
    touch(folder / "model.safetensors", b"published meanwhile")
    watcher = ModelWatcher(folder, loaded)
    assert watcher.poll() is None and watcher.poll() == model_signature(folder)


def test_watcher_is_disarmed_when_the_folder_held_no_model_at_start(tmp_path: Path) -> None:
    watcher = ModelWatcher(tmp_path / "absent")
    model_files(tmp_path / "absent")
    assert not watcher.armed and watcher.poll() is None and watcher.poll() is None


class Harness:
    """A ModelReloader over fake scorers: `next` is what the loader returns (or raises)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.old = FakeScorer(max_window=8)
        self.slot = ScorerSlot(self.old)
        self.metrics = Metrics()
        self.next: Any = None
        self.installed: list[Any] = []
        self.reloader = ModelReloader(folder, self.slot, self.metrics, self.load, self.installed.append)

    def load(self, running: Any) -> Any:
        assert running is self.slot.scorer
        if isinstance(self.next, Exception):
            raise self.next
        return self.next

    def check_twice(self) -> list[bool]:
        """Two polls: the first sees the change, the second sees it settled and loads."""
        return [asyncio.run(self.reloader.check()) for _ in range(2)]


def test_a_new_model_is_swapped_in_and_counted(tmp_path: Path) -> None:
    h = Harness(model_files(tmp_path / "m"))
    new = FakeScorer(max_window=4)
    new.fingerprint = "1" * 64
    h.next = new
    touch(h.folder / "model.safetensors", b"v2")
    assert h.check_twice() == [False, True]
    assert h.slot.scorer is new and h.installed == [new] and new.calls == [[["logmoe model reload check: one line"]]]
    assert h.metrics.counts["model_reloads_ok"] == 1 and h.metrics.model["fingerprint"] == "1" * 64
    assert asyncio.run(h.reloader.check()) is False  # the same folder again: nothing to do


@pytest.mark.parametrize("failure", ["load", "probe", "install"])
def test_a_model_that_fails_is_refused_once_and_the_old_keeps_scoring(tmp_path: Path, failure: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(model_files(tmp_path / "m"))
    if failure == "load":
        h.next = ValueError("cannot read the weights")
    else:
        h.next = FakeScorer(max_window=4)
        if failure == "probe":
            h.next.max_window = 0  # FakeScorer raises on every window
        else:
            h.reloader.install = lambda new: (_ for _ in ()).throw(ValueError("hop must be >= 1"))
    touch(h.folder / "model.safetensors", b"broken")
    assert h.check_twice() == [False, False]
    assert asyncio.run(h.reloader.check()) is False
    assert h.slot.scorer is h.old and h.installed == []
    assert h.metrics.counts["model_reloads_refused"] == 1 and "model_reloads_ok" not in h.metrics.counts
    refusals = [r for r in caplog.records if "refused the new model" in r.getMessage()]
    assert len(refusals) == 1 and "still scoring with fake" in refusals[0].getMessage()


def test_a_folder_that_changes_while_loading_is_retried_not_refused(tmp_path: Path) -> None:
    h = Harness(model_files(tmp_path / "m"))
    new = FakeScorer(max_window=8)

    def load_while_written(running: Any) -> Any:
        touch(h.folder / "model.safetensors", b"still writing")
        return new

    h.reloader.load = load_while_written
    touch(h.folder / "model.safetensors", b"v2")
    assert h.check_twice() == [False, False]
    assert h.slot.scorer is h.old and not h.metrics.counts["model_reloads_refused"]
    h.reloader.load = lambda running: new
    assert h.check_twice() == [False, True] and h.slot.scorer is new  # settled again, then loaded


def test_the_swap_waits_for_the_batch_in_progress(tmp_path: Path) -> None:
    h = Harness(model_files(tmp_path / "m"))
    h.next = FakeScorer(max_window=8)
    touch(h.folder / "model.safetensors", b"v2")

    async def scenario() -> list[str]:
        events: list[str] = []
        assert await h.reloader.check() is False
        async with h.slot.lock:  # a batch is being scored
            reload = asyncio.create_task(h.reloader.check())
            await asyncio.sleep(0.3)
            events.append("batch done" if h.slot.scorer is h.old else "swapped mid-batch")
        assert await reload is True
        events.append("swapped")
        return events

    assert asyncio.run(scenario()) == ["batch done", "swapped"]


def test_reload_reuses_the_encoder_when_the_new_model_names_the_same_one(tiny_encoder_dir: Path,
                                                                        tmp_path: Path) -> None:
    folder = write_model(tmp_path / "final_moe_model", tiny_encoder_dir, fingerprint="a" * 64)
    cfg = StreamConfig(model=str(folder), device="cpu", scoring="thread")  # the encoder lives in this process
    running = load_scorer(cfg)
    running.score([["INFO one line"]])  # warm the cache
    write_model(folder, tiny_encoder_dir, fingerprint="b" * 64, max_window=4, seed=1)  # rewritten in place
    assert running.score([["INFO still scoring"]])  # its weights come from a private copy: no SIGBUS
    assert running.name == "final_moe_model" and running.model_dir == folder
    assert running.source_signature not in (None, model_signature(folder))  # the folder it was read from
    new = load_scorer(cfg, running)
    assert new.fingerprint == "b" * 64 and new.max_window == 4
    assert new.encoder is running.encoder and new.encoder.cache_info()["size"] == 2  # warm cache kept
    other = tmp_path / "other_encoder"
    shutil.copytree(tiny_encoder_dir, other)
    write_model(folder, other, fingerprint="c" * 64)
    assert load_scorer(cfg, running).encoder is not running.encoder
    write_model(folder, tiny_encoder_dir, fingerprint="d" * 64, token_buckets=16)  # same encoder, wider lines
    bagged = load_scorer(cfg, running)
    assert bagged.encoder is not running.encoder and bagged.encoder.dim == 32 + 16
    assert bagged.score([["INFO one line"]])
    write_model(folder, tiny_encoder_dir, fingerprint="e" * 64)
    config = json.loads((folder / "config.json").read_text())
    del config["token_buckets"]  # written before the key existed: no bag
    (folder / "config.json").write_text(json.dumps(config))
    assert load_scorer(cfg, running).encoder is running.encoder


def test_the_load_is_logged_with_the_configured_folder_not_the_private_copy(
        tiny_encoder_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = write_model(tmp_path / "final_moe_model", tiny_encoder_dir, fingerprint="a" * 64)
    with caplog.at_level(logging.INFO):
        load_scorer(StreamConfig(model=str(folder), device="cpu", scoring="thread"))  # logged in this process
    loaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded LogMoE model")]
    assert loaded == [f"loaded LogMoE model {folder} (threshold 0.000, encoder {tiny_encoder_dir})"]
    assert not [r for r in caplog.records if "logmoe-model-" in r.getMessage()]  # the temporary copy's name


def test_fit_to_window_trims_windows_and_states_after_a_smaller_model() -> None:
    entries = [Entry(f"l{i}", None, 0, i) for i in range(8)]
    state = SessionState(items=list(entries), count=8)
    batch = Batch(states={"s": state}, windows=[Window("s", 8, list(entries), True)], owners=[state])
    fit_to_window(batch, 4)
    assert [e.line for e in batch.windows[0].entries] == ["l4", "l5", "l6", "l7"]
    assert batch.windows[0].end == 8 and len(state.items) == 4
    assert batch.owners == [state]
    empty = SimpleNamespace(windows=[], states={"gone": None})
    fit_to_window(empty, 4)  # closed sessions (None) are left alone


@pytest.mark.parametrize("scoring", ["process", "thread"])
def test_a_broken_model_error_names_the_configured_folder(tmp_path: Path, scoring: str) -> None:
    folder = model_files(tmp_path / "final_moe_model")
    with pytest.raises(ValueError, match=str(folder)):
        load_scorer(StreamConfig(model=str(folder), device="cpu", scoring=scoring))
    with pytest.raises(FileNotFoundError, match="absent"):
        load_scorer(StreamConfig(model=str(tmp_path / "absent"), device="cpu", scoring=scoring))


@pytest.mark.parametrize("scoring", ["process", "thread"])
def test_a_model_of_a_newer_format_is_refused_on_reload(tiny_encoder_dir: Path, tmp_path: Path,
                                                        scoring: str) -> None:
    import json

    folder = write_model(tmp_path / "final_moe_model", tiny_encoder_dir, fingerprint="a" * 64)
    config = json.loads((folder / "config.json").read_text())
    config["logmoe_format"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=str(folder)):
        load_scorer(StreamConfig(model=str(folder), device="cpu", scoring=scoring))


@pytest.mark.parametrize("scoring", ["process", "thread"])
def test_alerts_name_the_weights_that_were_loaded_not_what_the_folder_holds_since(tiny_encoder_dir: Path,
                                                                                 tmp_path: Path, scoring: str) -> None:
    from stream.reload import model_info, weights_digest
    from stream.scoring import close_scorer

    folder = write_model(tmp_path / "final_moe_model", tiny_encoder_dir, fingerprint="a" * 64)
    loaded = weights_digest(folder)
    scorer = load_scorer(StreamConfig(model=str(folder), device="cpu", scoring=scoring))
    try:
        write_model(folder, tiny_encoder_dir, fingerprint="a" * 64, seed=1)  # same data, new weights, in place
        assert weights_digest(folder) != loaded
        assert model_info(scorer) == {"name": "final_moe_model", "fingerprint": "a" * 64, "weights": loaded}
    finally:
        close_scorer(scorer)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_sweeping_removes_the_copies_of_gone_processes_of_this_host_only(tmp_path: Path) -> None:
    host = copy_prefix()[len(COPY_PREFIX):].rsplit("-", 2)[0]
    gone = dead_pid()
    stale = tmp_path / f"{COPY_PREFIX}{host}-{gone}-a1b2c3d4"
    (stale / "final_moe_model").mkdir(parents=True)
    (stale / "final_moe_model" / "model.safetensors").write_bytes(b"w")
    kept = [tmp_path / f"{copy_prefix()}e5f6g7h8",  # this process: alive
            tmp_path / f"{COPY_PREFIX}{host}-1-i9j0k1l2",  # pid 1 is alive (or not ours to judge)
            tmp_path / f"{COPY_PREFIX}otherhost-{gone}-m3n4o5p6",  # a shared temporary folder: not our host
            tmp_path / f"{COPY_PREFIX}q7r8s9t0",  # named before copies carried their owner
            tmp_path / f"unrelated-{host}-{gone}-u1v2w3x4"]
    for folder in kept:
        folder.mkdir()
    assert sweep_stale_copies(tmp_path) == [stale]
    assert not stale.exists() and all(folder.is_dir() for folder in kept)
    assert sweep_stale_copies(tmp_path) == []
    assert sweep_stale_copies(tmp_path / "missing") == []


def test_a_private_copy_is_named_after_its_owner_so_a_sweep_can_tell_it_is_alive(tiny_encoder_dir: Path,
                                                                                tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    folder = write_model(tmp_path / "final_moe_model", tiny_encoder_dir, fingerprint="a" * 64)
    with private_copy(folder) as copy:
        assert copy.parent.name.startswith(copy_prefix()) and copy.name == "final_moe_model"
        assert sweep_stale_copies() == [] and copy.is_dir()
    assert list((tmp_path / "tmp").iterdir()) == []
