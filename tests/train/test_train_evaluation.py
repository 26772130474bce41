"""A session's score is the maximum over its windows (README, Windows), offline (`logmoe evaluate` / `score`) and in
training's own evaluation, for sessions longer than max_window: the anomaly in the first window of a long session
must not be overwritten by the normal windows after it."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from model.windowing import session_windows
from train.data import Session
from train.embeddings import build_window_set
from train.evaluation import score_sessions
from train.loop import score_windows


@dataclass(frozen=True)
class Score:
    score: float
    experts_per_token: float


class ErrorCounter:
    """A scorer: P(anomaly) is 0.1 + 0.2 per ERROR line of the window; 1.5 experts per line."""

    max_window = 4
    window_hop = 2

    def score_detailed(self, windows: Sequence[Sequence[str]]) -> list[Score]:
        return [Score(0.1 + 0.2 * sum("ERROR" in line for line in w), 1.5) for w in windows]


def session(sid: str, lines: list[str]) -> Session:
    return Session(session_id=sid, lines=tuple(lines), label=int(any("ERROR" in ln for ln in lines)))


SESSIONS = [
    # 10 lines, windows end at 4, 6, 8, 10: two ERRORs in the first window, none in the last
    session("early", ["ERROR a", "ERROR b", "ok", "ok", "ok", "ok", "ok", "ok", "ok", "ok"]),
    # 9 lines, windows end at 4, 6, 8 and 9 (at close): one ERROR, in the middle windows only
    session("middle", ["ok", "ok", "ok", "ok", "ERROR", "ok", "ok", "ok", "ok"]),
    session("short", ["ok", "ERROR"]),  # one window, the whole session
]


def by_hand(scorer: ErrorCounter) -> list[float]:
    return [max(s.score for s in scorer.score_detailed(session_windows(list(x.lines), 4, 2))) for x in SESSIONS]


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_offline_session_score_is_the_max_over_its_windows(batch_size: int) -> None:
    scorer = ErrorCounter()
    assert [len(session_windows(list(s.lines), 4, 2)) for s in SESSIONS] == [4, 4, 1]
    result = score_sessions(scorer, SESSIONS, hop=2, batch_size=batch_size)
    assert result.scores == pytest.approx(by_hand(scorer)) and result.scores == pytest.approx([0.5, 0.3, 0.3])
    assert result.experts_per_token == pytest.approx(1.5)


class ErrorRowModel(torch.nn.Module):
    """A stand-in classifier over embedding rows: the anomaly logit is 2 per ERROR line (embedding [1]) minus 3."""

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                line_counts: torch.Tensor | None = None) -> SimpleNamespace:
        errors = (inputs_embeds[..., 0] * attention_mask).sum(dim=-1)  # (B,)
        logits = torch.stack([torch.zeros_like(errors), 2.0 * errors - 3.0], dim=-1)  # (B, 2)
        return SimpleNamespace(logits=logits, experts_per_token=torch.tensor(1.0))


def test_training_evaluation_scores_a_session_by_its_highest_window() -> None:
    rows = {"ok": 0, "ERROR": 1}
    masked = [tuple("ERROR" if "ERROR" in ln else "ok" for ln in s.lines) for s in SESSIONS]
    data = build_window_set(SESSIONS, masked, rows, max_window=4, hop=2)
    table = torch.tensor([[0.0], [1.0]])  # (R, D): row 1 is an ERROR line
    result = score_windows(ErrorRowModel(), table, data, batch_size=3)
    errors_per_window = [[sum(ln == "ERROR" for ln in w) for w in session_windows(list(m), 4, 2)] for m in masked]
    expected = [torch.sigmoid(torch.tensor(2.0 * max(e) - 3.0)).item() for e in errors_per_window]
    assert result.session_scores.tolist() == pytest.approx(expected)
    last = [torch.sigmoid(torch.tensor(2.0 * e[-1] - 3.0)).item() for e in errors_per_window]
    assert result.session_scores.tolist()[:2] != pytest.approx(last[:2])  # the last windows score lower
