"""Hot model reload: notice a new model in the configured folder, load it off the event loop, check it, and
swap it in between two batches of the score agent. A model that fails any step is refused with one log line,
counted, and the running model keeps scoring.

`logmoe train` writes `final_moe_model/` in place, so the folder is read only once its files have stopped
changing (the same sizes and mtimes on two consecutive checks) and again after loading (a load that raced a
writer is dropped and retried, not refused). Rolling out by switching a symlink is atomic and also works.

Models are loaded from a private copy of the folder (`private_copy`): the weights are memory-mapped, and a
file rewritten in place under a live mapping kills the process with SIGBUS (seen here when a new model was
written over the running one's folder); a copy made with plain reads cannot be truncated under the worker.
A copy's temporary folder is named after the host and the process that made it (`copy_prefix`), so a worker that
was killed (SIGKILL, the OOM killer: no cleanup runs) leaves one the next worker on the host removes
(`sweep_stale_copies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from model.checkpoint import CONFIG_FILE, SIDECAR_FILES, WEIGHTS_FILE, check_model_folder
from stream.metrics import Metrics
from stream.processor import Scorer

log = logging.getLogger("stream.worker")

REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
PROBE = [["logmoe model reload check: one line"]]  # scored once by a new model before it goes live
# the config keys that decide how lines are embedded, and what a config without the key means
_ENCODER_KEYS = {"encoder_name_or_path": None, "pooling": None, "line_max_length": None, "token_buckets": 0}

Signature = tuple[str, tuple[tuple[str, int, int], ...]]  # (resolved folder, ((file, mtime_ns, size), ...))


def model_signature(path: str | Path) -> Signature | None:
    """What identifies the model in a folder without reading it: the folder's resolved path (so a switched
    symlink counts) and the mtime and size of its files. None when the folder or a required file is missing."""
    try:
        folder = Path(path).expanduser().resolve(strict=True)
    except OSError:
        return None
    files = []
    for name in (*REQUIRED_FILES, *SIDECAR_FILES):
        try:
            st = (folder / name).stat()
        except OSError:
            if name in REQUIRED_FILES:
                return None
            continue
        files.append((name, st.st_mtime_ns, st.st_size))
    return str(folder), tuple(files)


class ModelWatcher:
    """Decides when the folder holds a model to try: its signature differs from the running model's and did
    not change since the previous poll. A refused signature is not tried again until the folder changes.
    Disarmed when the folder held no model at start (the scorer then came from elsewhere, e.g. a test fake)."""

    def __init__(self, path: str | Path, running: Signature | None = None) -> None:
        self.path = path
        self.running = running if running is not None else model_signature(path)
        self.refused: Signature | None = None
        self._seen: Signature | None = None

    @property
    def armed(self) -> bool:
        return self.running is not None

    def poll(self) -> Signature | None:
        if not self.armed:
            return None
        sig = model_signature(self.path)
        previous, self._seen = self._seen, sig
        if sig is None or sig == self.running or sig == self.refused:
            return None
        return sig if sig == previous else None  # changed since the last poll: let the writer finish

    def unchanged(self, sig: Signature) -> bool:
        """True when the folder still has signature `sig` (checked after loading it)."""
        return model_signature(self.path) == sig

    def accept(self, sig: Signature) -> None:
        self.running, self.refused = sig, None

    def refuse(self, sig: Signature) -> None:
        self.refused = sig


COPY_PREFIX = "logmoe-model-"
# <COPY_PREFIX><host>-<pid>-<mkdtemp's 8 characters, which hold no "-">
_COPY_NAME = re.compile(rf"{re.escape(COPY_PREFIX)}(?P<host>.+)-(?P<pid>[0-9]+)-[^-]+")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def copy_prefix() -> str:
    """The temporary-folder prefix of this process's model copies: the host and the pid that owns them."""
    return f"{COPY_PREFIX}{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_stale_copies(root: str | Path | None = None) -> list[Path]:
    """Remove the model copies in `root` (default: the temporary folder) made on this host by processes that are
    gone; the folders removed. Copies of live processes, of other hosts (a shared temporary folder) and folders
    of other names are left alone, as is anything this user may not remove."""
    root = Path(root if root is not None else tempfile.gettempdir())
    host = _host()
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        found = _COPY_NAME.fullmatch(entry.name)
        if found is None or found["host"] != host or _alive(int(found["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            removed.append(entry)
    if removed:
        log.info("removed %d model copies left in %s by workers that are gone: %s", len(removed), root,
                 ", ".join(p.name for p in removed))
    return removed


@contextlib.contextmanager
def private_copy(model_dir: str | Path) -> Iterator[Path]:
    """A copy of the model folder's files in a fresh temporary folder of the same name (so the model's name,
    the folder name, is kept), removed on exit. A model loaded from it keeps its memory-mapped weights valid
    after the removal (Linux keeps an unlinked file's pages), and nobody else ever writes that file."""
    with tempfile.TemporaryDirectory(prefix=copy_prefix()) as tmp:
        yield copy_model_folder(model_dir, Path(tmp))


def copy_model_folder(model_dir: str | Path, parent: Path) -> Path:
    """Copy the model folder's files into `parent`/<the folder's name> with plain reads; the copy."""
    source = check_model_folder(model_dir)  # a missing or unloadable folder is not copied at all
    copy = parent / source.resolve().name
    copy.mkdir()
    for item in source.iterdir():
        if item.is_file():
            shutil.copyfile(item, copy / item.name)
    return copy


def weights_digest(folder: str | Path) -> str | None:
    """The first 16 hex digits of the sha256 of the folder's weights file; None without one."""
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def model_info(scorer: Scorer) -> dict[str, str]:
    """name, fingerprint (sha256 of the training data) and the digest of the weights the scorer loaded (the
    private copy's, taken when it was loaded: the configured folder may hold a newer model by now), so two models
    trained on the same data differ there. A scorer without one (a test's fake) has no "weights"."""
    info = {"name": str(scorer.name), "fingerprint": str(scorer.fingerprint)}
    digest = getattr(scorer, "weights_digest", None)
    if digest:
        info["weights"] = str(digest)
    return info


def reusable_encoder(model_dir: str | Path, running: Scorer) -> Any | None:
    """The running scorer's encoder (and its warm cache) when the new model names the same encoder, pooling
    and line length; None to build a new one."""
    config = getattr(running, "config", None)
    encoder = getattr(running, "encoder", None)
    if config is None or encoder is None:
        return None
    try:
        new = json.loads((Path(model_dir) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # the load itself will report it
    if not isinstance(new, dict):
        return None
    same = all(new.get(key, absent) == getattr(config, key, absent) for key, absent in _ENCODER_KEYS.items())
    return encoder if same else None


class ScorerSlot:
    """The scorer in use. The score agent holds `lock` while it takes a batch, the reloader to swap, after the
    batches in flight are finished: a batch is scored and alerted by one model, and a swap happens only between
    batches."""

    def __init__(self, scorer: Scorer, info: dict[str, str] | None = None) -> None:
        self.scorer = scorer
        self.info = model_info(scorer) if info is None else info  # what alerts and metrics say about it
        self.lock = asyncio.Lock()


class ModelReloader:
    """Polled by a timer: watch `path`, load (`load(running) -> Scorer`, in a thread), then under the slot's lock
    `drain` the batches in flight, probe, `install` (rebuild what depends on the model; may raise ValueError) and
    swap."""

    def __init__(self, path: str | Path, slot: ScorerSlot, metrics: Metrics, load: Callable[[Scorer], Scorer],
                 install: Callable[[Scorer], None], retire: Callable[[Scorer], None] = lambda scorer: None,
                 drain: Callable[[], Awaitable[None]] | None = None) -> None:
        # The folder as it was when the running model was read from it (load_scorer records it), else as now.
        self.watcher = ModelWatcher(path, getattr(slot.scorer, "source_signature", None))
        self.slot = slot
        self.metrics = metrics
        self.load = load
        self.install = install
        self.retire = retire  # releases a model no longer used: the one swapped out, or a refused candidate
        self.drain = drain  # waits until no batch taken with the running model is still being scored or finished
        if not self.watcher.armed:
            log.warning("model reload off: %s holds no model (no %s)", path, " / ".join(REQUIRED_FILES))

    async def check(self) -> bool:
        """One poll; True when a new model was swapped in."""
        sig = self.watcher.poll()
        if sig is None:
            return False
        old = self.slot.scorer
        candidate: Scorer | None = None
        try:
            candidate = await asyncio.to_thread(self.load, old)
            if not self.watcher.unchanged(sig):
                log.info("model folder %s changed while loading; trying again when it settles", self.watcher.path)
                await asyncio.to_thread(self.retire, candidate)
                return False
            info = model_info(candidate)  # the weights digest was taken when the model was loaded
            async with self.slot.lock:  # between two batches of the score agent
                if self.drain is not None:
                    await self.drain()
                await asyncio.to_thread(candidate.score_detailed, PROBE)
                self.install(candidate)
                self.slot.scorer, self.slot.info = candidate, info
        except Exception as exc:  # any failure (unreadable, wrong shapes, a probe that raises): keep the old model
            if candidate is not None:
                await asyncio.to_thread(self.retire, candidate)
            self.watcher.refuse(sig)
            self.metrics.inc("model_reloads_refused")
            log.error("refused the new model in %s, still scoring with %s (fingerprint %s): %s: %s",
                      self.watcher.path, old.name, str(old.fingerprint)[:12], type(exc).__name__, exc)
            return False
        self.watcher.accept(sig)
        await asyncio.to_thread(self.retire, old)
        self.metrics.inc("model_reloads_ok")
        self.metrics.model = info
        log.info("switched to the new model in %s: fingerprint %s, weights %s, window %d, threshold %.4f "
                 "(was fingerprint %s)", self.watcher.path, str(candidate.fingerprint)[:12], info.get("weights", "-"),
                 candidate.max_window, candidate.threshold, str(old.fingerprint)[:12])
        return True
