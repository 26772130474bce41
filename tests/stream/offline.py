"""What the offline path (model.windowing + model.LogScorer, as `logmoe evaluate` scores) says of a generated
world's dev sessions: the reference the streaming tests compare the worker's alerts with."""

from __future__ import annotations

from pathlib import Path


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
