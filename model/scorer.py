"""Score windows of raw log lines with a trained LogMoE model: the one scoring path for training's evaluation,
the CLI and the stream worker, so they cannot drift apart.

raw lines -> mask -> masked windows (a window met before: its cached result) -> unique masked lines -> encoder
(cached) -> table (U, D) -> index (B, T) -> model -> P(anomaly)
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from model.checkpoint import (CONFIG_FILE, LINE_COUNTS_FILE, NORMAL_LINES_FILE, SEEN_LINES_FILE, WEIGHTS_FILE,
                              check_model_folder)
from model.configuration_logmoe import LogMoEConfig
from model.device import autocast_dtype, resolve_device
from model.early import EarlyThresholds
from model.encoder import LineEncoder
from model.json_files import read_json, write_json_atomic
from model.masking import mask_cached
from model.modeling_logmoe import LogMoEForSequenceClassification
from model.novelty import SEEN, NoveltyCalibration, row_features, window_flags
from model.rarity import load_line_counts, row_counts
from model.window_score import WindowScore

__all__ = ["CONFIG_FILE", "LINE_COUNTS_FILE", "NORMAL_LINES_FILE", "SEEN_LINES_FILE", "WEIGHTS_FILE", "LogScorer",
           "WindowScore"]

logger = logging.getLogger(__name__)

# Masked windows whose results a scorer keeps: ~24 MB when full of 64-line windows (tracemalloc); HDFS dev has 2,301.
WINDOW_CACHE_SIZE = 8192


class LogScorer:
    """A trained LogMoE model with its line encoder; build it with `LogScorer.from_pretrained(model_dir)`."""

    def __init__(
        self,
        model: LogMoEForSequenceClassification,
        encoder: LineEncoder,
        model_dir: str | Path,
        device: str | torch.device = "auto",
        batch_size: int = 256,
        seen_lines: frozenset[str] | None = None,
        normal_lines: frozenset[str] | None = None,
        window_cache_size: int = WINDOW_CACHE_SIZE,
        line_counts: dict[str, int] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(window_cache_size, bool) or not isinstance(window_cache_size, int) or window_cache_size < 0:
            raise ValueError(f"window_cache_size must be an integer >= 0 (0 = off), got {window_cache_size!r}")
        if encoder.dim != model.config.input_dim:
            raise ValueError(
                f"encoder {encoder.reference!r} gives {encoder.dim}-dim embeddings but the model in {model_dir} "
                f"expects input_dim={model.config.input_dim}; use the encoder the model was trained with"
            )
        if model.config.rarity_buckets and line_counts is None:
            raise ValueError(f"the model in {model_dir} reads line rarity (rarity_buckets="
                             f"{model.config.rarity_buckets}) but its folder has no {LINE_COUNTS_FILE}")
        if model.config.novelty_calibration is not None and seen_lines is None:
            raise ValueError(f"the model in {model_dir} weighs never-seen lines (novelty_calibration) but its folder "
                             f"has no {SEEN_LINES_FILE}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.line_counts = line_counts  # masked line -> training sessions that held it (model.rarity)
        self._encoder = encoder
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        self.seen_lines = seen_lines
        self.normal_lines = normal_lines
        self._lock = threading.Lock()  # callers may score from worker threads; the encoder cache is not shared-safe
        # Masked window -> its result, least recently used dropped first. The model is a pure function of the masked
        # lines, so a window met again (the same statements: a stream's sessions repeat their lifecycles, and early
        # scoring scores each open session's prefix again every few lines) skips the encoder and the MoE.
        self.window_cache_size = window_cache_size
        self._windows: OrderedDict[tuple[str, ...], WindowScore] = OrderedDict()
        self._window_hits = 0
        self._kin: tuple[Tensor, Tensor] | None = None  # model.novelty's failure-like test, built when first needed

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        device: str = "auto",
        encoder: LineEncoder | None = None,
        batch_size: int = 256,
        origin: str | Path | None = None,
        window_cache_size: int = WINDOW_CACHE_SIZE,
    ) -> LogScorer:
        """Load config.json + model.safetensors (+ seen_lines.json, normal_lines.json) from ``model_dir``; build the encoder the
        config names unless one is given. ``origin``: the folder the log names when ``model_dir`` is a copy of it
        (the worker loads a private copy). ``window_cache_size``: masked windows whose results are kept, so a
        window met again skips the encoder and the model (0 = off)."""
        path = check_model_folder(model_dir)  # missing, pickled, truncated, not LogMoE, newer format: one error
        config = _load_config(path)
        torch_device = resolve_device(device)
        try:
            model = LogMoEForSequenceClassification.from_pretrained(path, config=config, dtype=torch.float32)
        except (OSError, RuntimeError, ValueError, SafetensorError) as exc:  # truncated, corrupt, wrong shapes
            raise ValueError(f"cannot read the weights in {str(path / WEIGHTS_FILE)!r}: {exc}") from exc
        if encoder is None:
            encoder = LineEncoder.for_model(config, device=torch_device)
        seen = _load_lines(path / SEEN_LINES_FILE)
        normal = _load_lines(path / NORMAL_LINES_FILE)
        counts = load_line_counts(path)
        logger.info("loaded LogMoE model %s (threshold %.3f, encoder %s)", origin or path, config.threshold,
                    config.encoder_name_or_path)
        return cls(model, encoder, path, torch_device, batch_size, seen, normal, window_cache_size, counts)

    @property
    def config(self) -> LogMoEConfig:
        return self.model.config

    @property
    def threshold(self) -> float:
        return float(self.config.threshold)

    @property
    def fingerprint(self) -> str:
        return str(self.config.data_fingerprint)

    @property
    def name(self) -> str:
        return self.model_dir.resolve().name

    @property
    def max_window(self) -> int:
        return int(self.config.max_window)

    @property
    def window_hop(self) -> int:
        """The hop the model was trained and evaluated with; the worker windows sessions with it too."""
        return int(self.config.window_hop)

    @property
    def early_hop(self) -> int:
        """Lines between two early scorings of an open session (model.early); 0 when the model has none."""
        return int(self.config.early_hop)

    @property
    def session_idle(self) -> float | None:
        """Seconds without a line before the worker may close a session: the longest pause inside a normal
        training session, with a margin (train.pauses); None when training read no timestamps."""
        value = self.config.session_idle  # None in a model trained before it was measured (LogMoEConfig default)
        return None if value is None else float(value)

    @property
    def early_thresholds(self) -> EarlyThresholds | None:
        """The early thresholds calibrated at training time; None for a model trained without (or before) them."""
        pairs = self.config.early_thresholds
        return EarlyThresholds.from_config(pairs) if pairs else None

    @property
    def novelty_calibration(self) -> NoveltyCalibration | None:
        """What never-seen lines add to each window's margin (model.novelty); None: nothing."""
        value = self.config.novelty_calibration
        return None if value is None else NoveltyCalibration.from_config(value)

    def set_novelty_calibration(self, calibration: NoveltyCalibration | None) -> None:
        """Store `calibration` in the model's config (training fits it on eval) and forget cached results."""
        if calibration is not None and self.seen_lines is None:
            raise ValueError("novelty calibration needs the seen lines of training (seen_lines.json)")
        self.config.novelty_calibration = None if calibration is None else calibration.to_config()
        self._windows.clear()

    def novelty_flags(self, lines: Sequence[str]) -> list[float]:
        """(F,) which features of never-seen lines (model.novelty.feature: the level group, failure-like or not)
        the raw lines hold; all 0 without seen_lines.json."""
        if self.seen_lines is None:
            return window_flags((), frozenset())
        masked = [mask_cached(line) for line in lines]
        new = list(dict.fromkeys(line for line in masked if line not in self.seen_lines))
        with self._lock:  # the encoder's cache is not shared-safe
            failure_like = self._failure_like(new, self._encoder.encode(new)) if new else frozenset()
        return window_flags(masked, self.seen_lines, failure_like)

    def _failure_like(self, new_rows: Sequence[str], vectors: Tensor) -> frozenset[str]:
        """Of never-seen masked lines (vectors (N, D) their embeddings), those whose nearest seen line (cosine of the
        encoder's vectors) no normal training session held: what the line says is closest to a failure's line.
        Empty without normal_lines.json."""
        if not new_rows or self.normal_lines is None or self.seen_lines is None:
            return frozenset()
        if self._kin is None:  # the seen lines' unit vectors, and which no normal session held; once per scorer
            kin_lines = sorted(self.seen_lines)
            self._kin = (F.normalize(self._encoder.encode(kin_lines).float(), dim=1),
                         torch.tensor([line not in self.normal_lines for line in kin_lines]))
        seen_vectors, failure_only = self._kin  # (S, D), (S,)
        nearest = (F.normalize(vectors.float().cpu(), dim=1) @ seen_vectors.T).argmax(dim=1)  # (N,)
        return frozenset(line for line, j in zip(new_rows, nearest.tolist()) if failure_only[j])

    def is_novel(self, line: str) -> bool:
        """The raw line's masked form never occurred in a normal training session (False without
        normal_lines.json: a model trained before it was written has no novel trigger)."""
        return self.normal_lines is not None and mask_cached(line) not in self.normal_lines

    @property
    def encoder(self) -> LineEncoder:
        return self._encoder

    def score(self, windows: Sequence[Sequence[str]]) -> list[float]:
        """P(anomaly) for each window of raw lines, in input order."""
        return [s.score for s in self.score_detailed(windows)]

    def score_detailed(self, windows: Sequence[Sequence[str]]) -> list[WindowScore]:
        """Score each window of raw lines (mask applied here); results in input order. Thread-safe (calls are
        serialised)."""
        self._check_windows(windows)
        if not windows:
            return []
        with self._lock:
            return self._score_detailed(windows)

    def window_cache_info(self) -> dict[str, int]:
        """hits: windows answered from the window cache; size: masked windows it holds; max_size (0 = off)."""
        return {"hits": self._window_hits, "size": len(self._windows), "max_size": self.window_cache_size}

    def _score_detailed(self, windows: Sequence[Sequence[str]]) -> list[WindowScore]:
        keys = [tuple(mask_cached(line) for line in window) for window in windows]  # the masked windows
        results: dict[tuple[str, ...], WindowScore] = {}
        for key in keys:
            if key in self._windows:
                self._windows.move_to_end(key)
                results[key] = self._windows[key]
                self._window_hits += 1
        todo = list(dict.fromkeys(key for key in keys if key not in results))  # each distinct window once
        if todo:
            masked_rows, index = self._index(todo)  # U distinct masked lines, per window (n_i,) rows
            table = self._encoder.encode(masked_rows)  # (U, D)
            table = torch.cat([table, table.new_zeros(1, table.shape[1])]).to(self.device)  # (U + 1, D) last = pad
            unseen = self._unseen_rows(masked_rows)  # (U,) bool or None
            counts = None if self.line_counts is None else F.pad(row_counts(masked_rows, self.line_counts), (0, 1))
            novelty = self.novelty_calibration
            groups = None  # (U + 1,) each row's novelty feature, SEEN for seen rows and the padding row
            if novelty is not None and unseen is not None:  # unseen is None without seen_lines.json
                new = unseen.nonzero().flatten().tolist()  # the never-seen rows
                failure_like = self._failure_like([masked_rows[i] for i in new], table[new])
                groups = F.pad(row_features(masked_rows, self.seen_lines, failure_like), (0, 1), value=SEEN)
            order = sorted(range(len(todo)), key=lambda i: len(todo[i]))
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                scored = self._score_batch(table, [index[i] for i in batch], unseen, counts, novelty, groups)
                for i, result in zip(batch, scored):
                    results[todo[i]] = result
                    self._remember(todo[i], result)
        return [results[key] for key in keys]

    def _remember(self, key: tuple[str, ...], result: WindowScore) -> None:
        if self.window_cache_size == 0:
            return
        self._windows[key] = result
        if len(self._windows) > self.window_cache_size:
            self._windows.popitem(last=False)

    @staticmethod
    def save_seen_lines(model_dir: str | Path, masked_lines: Iterable[str]) -> None:
        """Write the distinct masked training lines to ``model_dir/seen_lines.json`` (sorted, atomically)."""
        _save_lines(Path(model_dir) / SEEN_LINES_FILE, masked_lines)

    @staticmethod
    def save_normal_lines(model_dir: str | Path, masked_lines: Iterable[str]) -> None:
        """Write the distinct masked lines of the normal training sessions to ``model_dir/normal_lines.json``."""
        _save_lines(Path(model_dir) / NORMAL_LINES_FILE, masked_lines)

    def _check_windows(self, windows: Sequence[Sequence[str]]) -> None:
        if isinstance(windows, str):
            raise ValueError("windows must be a list of windows (lists of lines), got a single str")
        for i, window in enumerate(windows):
            if isinstance(window, str):
                raise ValueError(f"window {i} must be a list of lines, got a str: {window[:80]!r}")
            if len(window) == 0:
                raise ValueError(f"window {i} is empty; every window needs at least one line")
            if len(window) > self.max_window:
                raise ValueError(
                    f"window {i} has {len(window)} lines, more than max_window={self.max_window}; "
                    "split sessions with model.windowing first"
                )

    @staticmethod
    def _index(windows: Sequence[Sequence[str]]) -> tuple[list[str], list[Tensor]]:
        """Masked windows -> the distinct masked lines (U) and, per window, the row of each of its lines among them
        (n_i,)."""
        row_of: dict[str, int] = {}  # masked line -> row of the table
        index = [
            torch.tensor([row_of.setdefault(line, len(row_of)) for line in window], dtype=torch.long)
            for window in windows
        ]
        return list(row_of), index

    @torch.inference_mode()
    def _score_batch(self, table: Tensor, index: list[Tensor], unseen: Tensor | None, counts: Tensor | None,
                     novelty: NoveltyCalibration | None, groups: Tensor | None) -> list[WindowScore]:
        """table (U + 1, D) with a zero padding row last; index: b windows' rows (n_i,); unseen (U,) bool; counts
        (U + 1,) training sessions per row, or None; groups (U + 1,) each row's novelty group for `novelty`."""
        pad = table.shape[0] - 1
        ids = pad_sequence(index, batch_first=True, padding_value=pad)  # (b, T)
        line_counts = None if counts is None else counts[ids].to(self.device)  # (b, T)
        ids = ids.to(self.device)
        attention_mask = ids != pad  # (b, T)
        inputs = table[ids]  # (b, T, D)
        dtype = autocast_dtype(self.device)
        amp = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with amp:
            out = self.model(inputs_embeds=inputs, attention_mask=attention_mask, line_counts=line_counts)
        logits = out.logits.float()  # (b, 2)
        probs = logits.softmax(dim=-1)[:, 1].cpu()  # (b,)
        line_scores = out.line_scores.float().cpu()  # (b, T)
        if novelty is not None and groups is not None:
            margin = (logits[:, 1] - logits[:, 0]).cpu()  # (b,)
            margin, line_scores = novelty.apply(margin, line_scores, groups[ids.cpu()])  # (b,), (b, T)
            probs = torch.sigmoid(margin)  # (b,)
        experts = out.window_experts.float().cpu()  # (b,)
        return [
            WindowScore(
                score=float(probs[j]),
                line_scores=line_scores[j, : len(rows)].tolist(),
                experts_per_token=float(experts[j]),
                unseen_fraction=None if unseen is None else float(unseen[rows].float().mean()),
            )
            for j, rows in enumerate(index)
        ]

    def _unseen_rows(self, masked_rows: list[str]) -> Tensor | None:
        if self.seen_lines is None:
            return None
        return torch.tensor([line not in self.seen_lines for line in masked_rows], dtype=torch.bool)  # (U,)


def _load_config(path: Path) -> LogMoEConfig:
    """The config of a folder check_model_folder accepted (so readable JSON of model_type logmoe)."""
    config_file = path / CONFIG_FILE
    try:
        return LogMoEConfig.from_pretrained(path)
    except (OSError, TypeError) as exc:  # ValueError from the config's own checks passes through as is
        raise ValueError(f"invalid LogMoE config {str(config_file)!r}: {exc}") from exc


def _save_lines(path: Path, masked_lines: Iterable[str]) -> None:
    """The distinct lines as a sorted JSON list, written atomically."""
    lines = sorted(set(masked_lines))
    write_json_atomic(path, lines)
    logger.info("wrote %d lines to %s", len(lines), path)


def _load_lines(path: Path) -> frozenset[str] | None:
    lines = read_json(path)
    if lines is None:
        return None
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ValueError(f"{str(path)!r} must hold a JSON list of masked lines")
    return frozenset(lines)
