"""Score sessions with model.LogScorer, the scorer the streaming worker uses: each session is cut into windows
with model.windowing.session_windows and scored as the MAX over its windows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm.auto import tqdm

from model.windowing import session_windows
from train.config import EvalConfig
from train.data import Session, SkipReport, require_file
from train.sources import load_source
from train.metrics import classification_metrics

logger = logging.getLogger(__name__)


@dataclass
class SessionScores:
    scores: list[float]  # (S,) max window probability
    experts_per_token: float  # mean over real lines of all windows
    window_scores: list[float] = field(default_factory=list)  # (W,) every window's probability, what alerts read


def score_sessions(scorer: Any, sessions: Sequence[Session], hop: int, batch_size: int = 256) -> SessionScores:
    """Session scores (max over windows) with a LogScorer; windows are scored shortest first to pad less."""
    windows: list[list[str]] = []
    owners: list[int] = []
    for index, session in enumerate(sessions):
        for window in session_windows(list(session.lines), scorer.max_window, hop):
            windows.append(window)
            owners.append(index)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    scores = [0.0] * len(sessions)
    window_scores = [0.0] * len(windows)
    seen = [False] * len(sessions)
    expert_sum, line_sum = 0.0, 0
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch",
                      disable=len(order) <= batch_size):
        chunk = order[start:start + batch_size]
        for i, result in zip(chunk, scorer.score_detailed([windows[i] for i in chunk])):
            owner = owners[i]
            window_scores[i] = result.score
            scores[owner] = result.score if not seen[owner] else max(scores[owner], result.score)
            seen[owner] = True
            expert_sum += result.experts_per_token * len(windows[i])
            line_sum += len(windows[i])
    return SessionScores(scores, expert_sum / max(1, line_sum), window_scores)


def scoring_hop(hop: int | None, scorer: Any) -> int:
    """`hop`, or when None the hop the model was trained with; ValueError when it is larger than the model's
    max_window (the lines between two windows would never be scored)."""
    chosen = hop if hop is not None else int(scorer.window_hop)
    if chosen > scorer.max_window:
        source = "--hop" if hop is not None else "the model's window_hop"
        raise ValueError(f"{source} must be <= the model's max_window ({chosen} > {scorer.max_window}): the lines "
                         f"between two windows would never be scored; pass --hop {scorer.max_window} or less")
    return chosen


def session_metrics(sessions: Sequence[Session], result: SessionScores, threshold: float) -> dict[str, Any]:
    metrics = classification_metrics([s.label for s in sessions], result.scores, threshold)
    metrics["experts_per_token"] = result.experts_per_token
    flagged = sum(score >= threshold for score in result.window_scores)
    metrics["alert_rate"] = flagged / len(result.window_scores) if result.window_scores else None  # of windows
    return metrics


def require_files(paths: Sequence[str]) -> None:
    """FileNotFoundError naming the first of `paths` that is not a file: checked before a model loads (seconds)."""
    for path in paths:
        require_file(path)


def load_scorer(model_dir: str, device: str, batch_size: int) -> Any:
    from model.scorer import LogScorer

    return LogScorer.from_pretrained(model_dir, device=device, batch_size=batch_size)


def load_eval_sessions(cfg: EvalConfig, max_window: int) -> tuple[list[Session], SkipReport]:
    """cfg.data in cfg.source's format, read as training reads its eval files (keyed logs: eval_labels_csv, else
    labels_csv; line-labelled logs: windows of data.window lines, default max_window)."""
    return load_source(cfg.data, replace(cfg.source, skip_invalid=cfg.skip_invalid), max_window, role="eval")


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Metrics of a trained model on labelled sessions, at its stored threshold (or cfg.threshold)."""
    require_files(cfg.data)
    scorer = load_scorer(cfg.model, cfg.device, cfg.batch_size)
    sessions, report = load_eval_sessions(cfg, scorer.max_window)
    hop = scoring_hop(cfg.hop, scorer)
    result = score_sessions(scorer, sessions, hop, cfg.batch_size)
    threshold = cfg.threshold if cfg.threshold is not None else float(scorer.threshold)
    metrics = session_metrics(sessions, result, threshold)
    metrics.update({"model": str(cfg.model), "data": list(cfg.data), "hop": hop, "skipped": report.as_dict()})
    return metrics
