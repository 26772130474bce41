"""What the offline path (model.windowing + model.LogScorer, as `logmoe evaluate` scores) says of a generated
world's dev sessions: the reference the streaming tests compare the worker's alerts with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OfflineWindow:
    end: int  # 1-based position of the window's last line in its session
    final: bool  # made when the session closed, not while its lines arrived
    lines: list[str]
    scored: Any  # model.WindowScore: score, line_scores, experts_per_token, unseen_fraction


def offline_windows(model_dir: Path, world: Path) -> tuple[Any, dict[str, list[OfflineWindow]]]:
    """(the scorer, each dev session's windows as the worker's rule cuts them, each scored by the offline path)."""
    from model import LogScorer
    from model.windowing import Windower, WindowState

    from train.data import load_jsonl

    scorer = LogScorer.from_pretrained(model_dir, device="cpu")
    out: dict[str, list[OfflineWindow]] = {}
    for session in load_jsonl(world / "dev.jsonl"):
        windower: Windower[str] = Windower(scorer.max_window, scorer.window_hop)
        state: WindowState[str] = WindowState()
        cut = [(state.count, False, w) for line in session.lines if (w := windower.push(state, line)) is not None]
        if (last := windower.close(state)) is not None:
            cut.append((state.count, True, last))
        scored = scorer.score_detailed([w for _, _, w in cut])
        out[session.session_id] = [OfflineWindow(end, final, w, s) for (end, final, w), s in zip(cut, scored)]
    return scorer, out


def offline_flags(model_dir: Path, world: Path) -> dict[str, bool]:
    """Per dev session: does the offline path (session_windows + LogScorer, max over windows) flag it?"""
    from model import LogScorer, session_windows
    from model.decision import is_anomalous

    from train.data import load_jsonl

    scorer = LogScorer.from_pretrained(model_dir, device="cpu")
    flags = {}
    for session in load_jsonl(world / "dev.jsonl"):
        windows = session_windows(list(session.lines), scorer.max_window, scorer.window_hop)
        flags[session.session_id] = is_anomalous(max(scorer.score(windows)), scorer.threshold)
    return flags
