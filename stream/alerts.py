"""The alert document published on the alerts topic (one per anomalous window, keyed by session)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from collections.abc import Mapping
from typing import Any, Protocol

from stream.windows import Window


class ScoredWindow(Protocol):
    """What the scorer returns per window (model.WindowScore)."""

    score: float
    line_scores: list[float]
    experts_per_token: float
    unseen_fraction: float | None


def alert_id(session: str, end: int, partition: int, offset: int) -> str:
    """Deterministic id of a window: its session key, its end position in the session and the input partition and
    offset of its last line. A redelivery (the same input records scored again after a crash or a rebalance) gets
    the same id, so consumers can drop duplicates; a new incident of the same key gets a new one, although its
    end position restarts at 1 (after an idle close, a max_session_lines restart, a source-, message- or
    catch-all-keyed session that comes back), because its lines are other input records."""
    return hashlib.sha256(f"{session}\n{end}\n{partition}:{offset}".encode()).hexdigest()[:32]


def build_alert(window: Window, scored: ScoredWindow, *, threshold: float, model: Mapping[str, str],
                top_lines: int, detected_at: float) -> dict[str, Any]:
    """The alert JSON document; `model` names the model that scored it (name, fingerprint, weights), `threshold` is
    the one the score reached (an early window's early threshold). Lines are ranked by their exact additive
    contribution to the anomaly logit (`line_scores`); the `top_lines` highest are marked suspicious."""
    entries = window.entries
    contributions = list(scored.line_scores)[: len(entries)]
    ranked = sorted(range(len(contributions)), key=lambda i: -contributions[i])
    suspicious = set(ranked[:top_lines])
    start = window.end - len(entries) + 1
    partitions = sorted({e.partition for e in entries})
    return {
        "alert_id": alert_id(window.session, window.end, entries[-1].partition, entries[-1].offset),
        "session": window.session,
        "score": round(float(scored.score), 6),
        "threshold": float(threshold),
        "model": dict(model),
        "window": {
            "start": start,
            "end": window.end,
            "final": window.final,
            "early": window.early,
            "trigger": window.trigger,
            "prefix_lines": window.end,
            "first_ts": entries[0].ts,
            "last_ts": entries[-1].ts,
            "n_lines": len(entries),
            "partition": partitions[0] if len(partitions) == 1 else None,
            "first_offset": entries[0].offset,
            "last_offset": entries[-1].offset,
        },
        "lines": [
            {"n": start + i, "line": e.line, "ts": e.ts, "offset": e.offset,
             "contribution": round(float(contributions[i]), 6) if i < len(contributions) else None,
             "suspicious": i in suspicious}
            for i, e in enumerate(entries)
        ],
        "experts": {"experts_per_token": round(float(scored.experts_per_token), 4)},
        "unseen_lines": None if scored.unseen_fraction is None else round(float(scored.unseen_fraction), 4),
        "detected_at": datetime.fromtimestamp(detected_at, timezone.utc).isoformat(timespec="milliseconds"),
    }
