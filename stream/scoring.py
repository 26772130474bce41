"""Load the worker's model, in this process or in a scoring process of its own.

`load_scorer(cfg)` is what the worker and hot reload call. With `scoring: process` (the default) it returns a
`ProcessScorer`: the model, masking and the encoder live in a child process fed with micro-batches of windows over
a pipe, so the event loop shares no interpreter (and no GIL) with them; with `scoring: thread` the model lives in
the worker's own process and is called from a thread, as before.

A ProcessScorer answers what the event loop asks of a model (threshold, window, early thresholds) from what its child
reported once loaded, and `score_detailed` hands a batch to the child and waits for it (from the agent's thread, so
the wait holds no lock). Whether a line is novel (its masked form never in a normal training session: it makes a
session's window due for early scoring) is masking too, so the child answers it, on a pipe and a thread of its own
so that it does not wait behind a batch being scored: `prefetch_novelty` asks for a batch's lines before the batch
is applied, and the lines it masks are then in the child's cache when their windows are scored.

A child that dies or stops answering is killed, logged, counted (`scoring_restarts`) and started again from the same
private copy of the model folder, and the batch is sent again: a crash loses no window. A batch that kills
`RETRIES + 1` children in a row fails like a batch the model rejects, which the agent counts as windows_failed.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from model.early import EarlyThresholds
from model.masking import mask_cached
from model.window_score import WindowScore
from stream.config import StreamConfig
from stream.processor import Scorer, early_scoring
from stream.reload import (Signature, copy_model_folder, copy_prefix, model_signature, private_copy,
                           reusable_encoder, sweep_stale_copies, weights_digest)

log = logging.getLogger("stream.worker")

RETRIES = 2  # children a batch may take down before it is given up
NOVELTY_TIMEOUT = 10.0  # seconds the child may take to answer which lines are novel before they are masked here
START_TIMEOUT = 600.0  # seconds a child may take to load the model (a cold start reads the encoder too)
BATCH_TIMEOUT = 300.0  # seconds without an answer to one batch before the child counts as hung


def check_early_alerts(cfg: StreamConfig, scorer: Scorer) -> None:
    """ValueError when early_alerts is true and the model cannot score early (no early thresholds): at start, and on
    a reload, which is then refused."""
    if cfg.early_alerts and early_scoring(scorer, scorer.window_hop, cfg.early_alerts, cfg.early_hop) is None:
        raise ValueError(f"early_alerts is true but the model in {cfg.model} has no early thresholds (trained before "
                         f"early scoring, or with training.early_calibration=off): retrain it, or set "
                         f"early_alerts=false")


def read_model(cfg: StreamConfig, folder: Path, encoder: Any | None = None) -> Any:
    """A model.LogScorer from `folder` (a private copy of cfg.model), checked against cfg and warmed up; errors
    name cfg.model, the configured folder."""
    from model import LogScorer

    try:
        scorer = LogScorer.from_pretrained(folder, device=cfg.device, encoder=encoder, origin=cfg.model)
    except (FileNotFoundError, ValueError) as exc:  # name the configured folder, not the private copy
        raise type(exc)(str(exc).replace(str(folder), str(cfg.model))) from exc
    check_early_alerts(cfg, scorer)
    if encoder is None:
        # The first call pays torch's lazy set-up (1.6-3.2 s here): pay it now, not on the first live batch.
        scorer.score_detailed([["logmoe warm-up"]])
        scorer.encoder.cache_clear()
    scorer.model_dir = Path(cfg.model)  # its name and its files, as configured (not the private copy)
    return scorer


def close_scorer(scorer: Scorer) -> None:
    """Release what a scorer holds beyond memory: a ProcessScorer's child and private copy (hot reload calls it
    on the model it retires, and on a candidate it refuses)."""
    if isinstance(scorer, ProcessScorer):
        scorer.close()


def load_scorer(cfg: StreamConfig, running: Scorer | None = None,
                on_restart: Callable[[], None] | None = None) -> Scorer:
    """The trained model named by cfg.model (FileNotFoundError / ValueError naming the folder), scored as
    cfg.scoring says. On a reload, `running` is the model in use: in thread mode its encoder, with its warm cache,
    is reused when the new model names the same one. `on_restart` is called each time a scoring process is
    restarted (the worker counts it)."""
    signature = model_signature(cfg.model)  # before copying: a change from here on is a new model
    sweep_stale_copies()  # what killed workers left: they run no cleanup
    if cfg.scoring == "process":
        return ProcessScorer(cfg, signature, on_restart)
    encoder = reusable_encoder(cfg.model, running) if running is not None else None
    with private_copy(cfg.model) as folder:  # never map the live folder's weights: a rewrite would SIGBUS
        scorer = read_model(cfg, folder, encoder)
        scorer.weights_digest = weights_digest(folder)  # of the weights it loaded, not what cfg.model holds now
    scorer.source_signature = signature  # what hot reload compares the folder with
    return scorer  # type: ignore[no-any-return]


class ScoringProcessError(RuntimeError):
    """The scoring process failed to start, or a batch took down every child it was sent to."""


class ProcessScorer:
    """The worker's Scorer when the model runs in a child process (module docstring)."""

    def __init__(self, cfg: StreamConfig, signature: Signature | None = None,
                 on_restart: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.source_signature = signature  # what hot reload compares the folder with
        self.model_dir = Path(cfg.model)
        self.restarts = 0
        self.on_restart = on_restart  # called after each restart (the worker counts them)
        self._lock = threading.Lock()  # one batch at a time on the pipe
        self._cache: dict[str, int] | None = None
        self._proc: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._novelty_lock = threading.Lock()  # one question at a time on the novelty pipe
        self._novelty_conn: Connection | None = None  # None: ask nothing, mask here (until the next child starts)
        self._novel: dict[str, bool] = {}  # raw line -> novel, for the lines of the batch being applied
        self._tmp = tempfile.mkdtemp(prefix=copy_prefix())
        try:
            self._folder = copy_model_folder(cfg.model, Path(self._tmp))  # every child loads this same copy
            self.weights_digest: str | None = weights_digest(self._folder)  # once, not at each child's start
            info = self._start()
        except BaseException:
            self.close()
            raise
        self.threshold: float = info["threshold"]
        self.name: str = info["name"]
        self.fingerprint: str = info["fingerprint"]
        self.max_window: int = info["max_window"]
        self.window_hop: int = info["window_hop"]
        self.early_hop: int = info["early_hop"]
        self.session_idle: float | None = info["session_idle"]
        pairs = info["early_thresholds"]
        self.early_thresholds = EarlyThresholds.from_config(pairs) if pairs else None
        self._normal_lines: frozenset[str] | None = info["normal_lines"]
        self.device: str = info["device"]

    def is_novel(self, line: str) -> bool:
        """The raw line's masked form never occurred in a normal training session (model.LogScorer.is_novel): as the
        child answered it for the batch being applied (prefetch_novelty), else masked here."""
        known = self._novel.get(line)
        if known is not None:
            return known
        return self._normal_lines is not None and mask_cached(line) not in self._normal_lines

    def prefetch_novelty(self, lines: Sequence[str]) -> None:
        """Have the child tell which of `lines` are novel, for `is_novel` (call it from a thread before the batch
        holding them is applied; it replaces the previous batch's answers). A child that cannot answer in
        NOVELTY_TIMEOUT is not asked again until it is restarted: the lines are masked here instead."""
        if self._normal_lines is None:
            return  # nothing is novel: is_novel answers without masking
        distinct = list(dict.fromkeys(lines))
        answer: list[bool] | None = None
        with self._novelty_lock:
            conn = self._novelty_conn
            if conn is not None and distinct:
                try:
                    conn.send(distinct)
                    if conn.poll(NOVELTY_TIMEOUT):
                        answer = conn.recv()
                    else:
                        log.warning("the scoring process did not say in %.0f s which of %d lines are novel; masking "
                                    "them in the worker until it is restarted", NOVELTY_TIMEOUT, len(distinct))
                except (EOFError, OSError, ValueError):
                    pass  # the child is gone or going; scoring restarts it
                if answer is None and self._novelty_conn is conn:
                    self._novelty_conn = None  # a late answer would be read as the next one's
        if answer is None or len(answer) != len(distinct):
            normal = self._normal_lines
            answer = [mask_cached(line) not in normal for line in distinct]
        self._novel = dict(zip(distinct, answer, strict=True))

    def cache_info(self) -> dict[str, int] | None:
        """The child's encoder cache counters as of its last answer."""
        return self._cache

    def score(self, windows: Sequence[Sequence[str]]) -> list[float]:
        """P(anomaly) for each window of raw lines, in input order."""
        return [w.score for w in self.score_detailed(windows)]

    def score_detailed(self, windows: Sequence[Sequence[str]]) -> list[WindowScore]:
        """Score windows of raw lines in the child; ValueError / RuntimeError as the model raises them there,
        ScoringProcessError when the batch took down RETRIES + 1 children."""
        if not windows:
            return []
        payload = [list(w) for w in windows]
        with self._lock:
            for attempt in range(RETRIES + 1):
                if self._proc is None:
                    self._start()
                try:
                    reply = self._ask(payload)
                except (EOFError, OSError, TimeoutError) as exc:
                    code = self._proc.exitcode if self._proc is not None else None
                    self._stop_child()
                    self.restarts += 1
                    if self.on_restart is not None:
                        self.on_restart()
                    log.error("scoring process lost (%s: %s, exit code %s) with a batch of %d windows; restarting "
                              "it and sending the batch again (attempt %d of %d)", type(exc).__name__, exc, code,
                              len(payload), attempt + 2, RETRIES + 1)
                    continue
                kind, body, cache = reply
                self._cache = cache
                if kind == "ok":
                    return body  # type: ignore[no-any-return]  # model.window_score: unpickled without torch
                raise _error(body)
        raise ScoringProcessError(f"a batch of {len(payload)} windows took down {RETRIES + 1} scoring processes in "
                                  f"a row; skipped")

    def close(self) -> None:
        """Stop the child and remove the private copy (idempotent)."""
        self._stop_child()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _ask(self, payload: list[list[str]]) -> tuple[str, Any, dict[str, int] | None]:
        assert self._conn is not None
        self._conn.send(("score", payload))
        if not self._conn.poll(BATCH_TIMEOUT):
            raise TimeoutError(f"no answer in {BATCH_TIMEOUT:.0f} s")
        return self._conn.recv()  # type: ignore[no-any-return]

    def _start(self) -> dict[str, Any]:
        """Start a child on the private copy; what it reported once loaded. The model's own errors (a bad
        folder, early_alerts without early thresholds) come back as themselves."""
        # Children fork from a server process started once, clean (a fork of the worker would copy the event loop's
        # threads and locks mid-flight), with torch and the model code already imported: a restart or a reload
        # then costs the model's load, not a fresh interpreter's imports (~10 s on a busy machine here).
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["stream.scoring", "model.scorer"])
        parent, child = ctx.Pipe()
        novelty_parent, novelty_child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(child, self.cfg, str(self._folder), novelty_child),
                           name="logmoe-scoring", daemon=True)
        started = time.monotonic()
        proc.start()
        child.close()
        novelty_child.close()
        self._proc, self._conn = proc, parent
        self._novelty_conn = novelty_parent
        try:
            if not parent.poll(START_TIMEOUT):
                raise TimeoutError(f"did not load the model in {START_TIMEOUT:.0f} s")
            kind, body, _ = parent.recv()
        except (EOFError, OSError, TimeoutError) as exc:
            self._stop_child()
            raise ScoringProcessError(f"the scoring process for {self.cfg.model} did not start: "
                                      f"{type(exc).__name__}: {exc}") from None
        if kind != "ready":
            self._stop_child()
            raise _error(body)
        log.info("scoring process %d ready in %.1f s: model %s on %s", proc.pid, time.monotonic() - started,
                 body["name"], body["device"])
        return body  # type: ignore[no-any-return]

    def _stop_child(self) -> None:
        proc, conn, self._proc, self._conn = self._proc, self._conn, None, None
        novelty, self._novelty_conn = self._novelty_conn, None
        if novelty is not None:
            novelty.close()  # a prefetch waiting on it gets OSError and masks here
        if conn is not None:
            try:
                conn.send(None)  # asks it to leave
            except (OSError, ValueError):
                pass
            conn.close()
        if proc is not None:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


_ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "FileNotFoundError": FileNotFoundError}


def _error(body: tuple[str, str]) -> Exception:
    """The child's exception, rebuilt: ValueError and FileNotFoundError as themselves, anything else as
    RuntimeError naming its type."""
    name, message = body
    cls = _ERRORS.get(name)
    return cls(message) if cls is not None else RuntimeError(f"{name} in the scoring process: {message}")


def serve(conn: Connection, cfg: StreamConfig, folder: str, novelty: Connection | None = None) -> None:
    """The child: load the model from `folder`, say "ready" with what the worker needs to know of it, then score
    each batch received until the pipe closes or None arrives. Errors of a batch are sent back, not raised. A thread
    answers on `novelty` which lines are novel (answer_novelty)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker decides when to stop
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s scoring: %(message)s")
    try:
        scorer = read_model(cfg, Path(folder))
    except Exception as exc:  # reported to the worker, which raises it at start or refuses the reload
        conn.send(("error", (type(exc).__name__, str(exc)), None))
        return
    pairs = scorer.config.early_thresholds
    conn.send(("ready", {
        "threshold": scorer.threshold, "name": scorer.name, "fingerprint": scorer.fingerprint,
        "max_window": scorer.max_window, "window_hop": scorer.window_hop, "early_hop": scorer.early_hop,
        "session_idle": scorer.session_idle,
        "early_thresholds": list(pairs) if pairs else None, "normal_lines": scorer.normal_lines,
        "device": str(scorer.device),
    }, None))
    if novelty is not None and scorer.normal_lines is not None:
        threading.Thread(target=answer_novelty, args=(novelty, scorer.normal_lines), name="logmoe-novelty",
                         daemon=True).start()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the worker is gone
        if message is None:
            return
        _, windows = message
        try:
            reply: tuple[str, Any] = ("ok", scorer.score_detailed(windows))
        except Exception as exc:  # the batch fails, the process goes on
            reply = ("error", (type(exc).__name__, str(exc)))
        conn.send((*reply, scorer.encoder.cache_info()))


def answer_novelty(conn: Connection, normal_lines: frozenset[str]) -> None:
    """The child's novelty thread: for each list of raw lines received, whether each one's masked form is not among
    `normal_lines`; until the pipe closes. The masks stay in mask_cached, where scoring finds them."""
    while True:
        try:
            lines = conn.recv()
            conn.send([mask_cached(line) not in normal_lines for line in lines])
        except (EOFError, OSError):
            return
