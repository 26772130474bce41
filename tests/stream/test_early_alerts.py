"""Early scoring in the worker's plain classes (stream.windows.EarlyScoring, stream.processor): which open-session
windows are scored early, which alert, and what the alerts say. No Kafka."""
from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from model.early import EarlyRule, EarlyThresholds, early_windows
from stream.metrics import Metrics
from stream.processor import SessionEvent, SessionProcessor, early_scoring
from stream.tools import format_alert
from stream.windows import EarlyScoring, Entry, SessionState, SessionWindows
from stream_fakes import FakeScore, FakeScorer


class EarlyFake(FakeScorer):
    """A window scores `error_score` when a line says ERROR, else 0.1; a line saying NEW never occurred in a normal
    training session; early thresholds as given."""

    def __init__(self, early: list[list[float]] | None, early_hop: int = 2, error_score: float = 0.9,
                 max_window: int = 8) -> None:
        super().__init__(max_window=max_window)
        self.early_thresholds = EarlyThresholds.from_config(early) if early else None
        self.early_hop = early_hop
        self.error_score = error_score

    def is_novel(self, line: str) -> bool:
        return "NEW" in line

    def score_detailed(self, windows: Sequence[Sequence[str]]) -> list[FakeScore]:
        return [FakeScore(self.error_score if any("ERROR" in ln for ln in w) else 0.1, s.line_scores, 1.0, None)
                for w, s in zip(windows, super().score_detailed(windows))]


def _processor(scorer: EarlyFake, cooldown: int = 64, enabled: bool | None = None) -> SessionProcessor:
    windows = SessionWindows(scorer.max_window, scorer.window_hop, 1000, cooldown)
    proc = SessionProcessor(windows, 5.0, Metrics(), early_scoring(scorer, scorer.window_hop, enabled))
    proc.idle_since = 1e-3  # a worker that had caught up with its input before the first line
    return proc


def _events(session: str, texts: Sequence[str], first: int = 0) -> list[tuple[int, SessionEvent]]:
    return [(first + i, SessionEvent("line", session, Entry(t, float(i), 0, first + i))) for i, t in enumerate(texts)]


def _run(proc: SessionProcessor, scorer: EarlyFake, events: list[tuple[int, SessionEvent]],
         states: dict[str, SessionState] | None = None, now: float = 1.0) -> list[dict]:
    """Apply, score and alert one batch; `states` is the table (updated)."""
    states = {} if states is None else states
    batch = proc.apply(events, lambda key: states.get(key), now=now)
    scored = scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows])
    alerts = proc.alerts_for(batch, scored, scorer, top_lines=1, now=now)
    for key, state in batch.states.items():
        if state is None:
            states.pop(key, None)
        else:
            states[key] = SessionState.from_json(state.to_json())
    return alerts


def test_an_early_alert_says_so_and_the_session_does_not_alert_again_at_close() -> None:
    scorer = EarlyFake([[8, 0.8]])
    proc, table = _processor(scorer), {}
    alerts = _run(proc, scorer, _events("a", ["ok", "ERROR disk", "ok"]), table)
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert["window"]["final"] is False and alert["window"]["early"] is True
    assert alert["window"]["prefix_lines"] == alert["window"]["end"] == 2 and alert["window"]["trigger"] == "hop"
    assert alert["threshold"] == 0.8 and alert["score"] == 0.9
    assert "(threshold 0.800) lines 1..2 [early: hop, open session]" in format_alert(alert)
    closing = _run(proc, scorer, [(9, SessionEvent("close", "a", reason="idle"))], table, now=10.0)
    assert closing == [] and proc.metrics.counts["alerts_suppressed_cooldown"] == 1
    assert proc.metrics.counts["alerts_early"] == 1 and proc.metrics.counts["windows_early"] == 1
    assert table == {}


def test_an_early_alert_of_a_session_longer_than_its_window_says_how_many_lines_came_before() -> None:
    scorer = EarlyFake([[8, 0.8]], early_hop=100, max_window=4)
    alerts = _run(_processor(scorer), scorer, _events("a", ["ok"] * 6 + ["NEW ERROR"]))
    assert [(a["window"]["prefix_lines"], a["window"]["start"], a["window"]["n_lines"], a["window"]["trigger"])
            for a in alerts] == [(7, 4, 4, "novel")]


def test_the_closing_score_still_alerts_when_no_early_window_did() -> None:
    scorer = EarlyFake([[8, 0.8]], error_score=0.7)  # over the closing threshold (0.5), under the early one
    proc, table = _processor(scorer), {}
    assert _run(proc, scorer, _events("a", ["ok", "ERROR disk", "ok"]), table) == []
    alerts = _run(proc, scorer, [(9, SessionEvent("close", "a", reason="idle"))], table, now=10.0)
    assert [(a["window"]["final"], a["window"]["early"], a["threshold"]) for a in alerts] == [(True, False, 0.5)]


def test_a_line_never_seen_in_a_normal_session_is_scored_at_once() -> None:
    scorer = EarlyFake([[8, 0.8]], early_hop=100)
    proc = _processor(scorer)
    batch = proc.apply(_events("a", ["ok", "ok", "NEW ERROR", "ok"]), lambda key: None, now=1.0)
    assert [(w.end, w.trigger, len(w.entries)) for w in batch.windows] == [(3, "novel", 3)]


def test_past_its_first_window_a_long_session_is_scored_early_only_on_a_novel_line() -> None:
    scorer = EarlyFake([[8, 0.8]], early_hop=1, max_window=4)  # regular windows every 4 lines (hop = window)
    texts = ["ok"] * 10 + ["NEW"] + ["ok"] * 5
    batch = _processor(scorer).apply(_events("a", texts), lambda key: None, now=1.0)
    assert [(w.end, w.trigger) for w in batch.windows] == [
        (1, "hop"), (2, "hop"), (3, "hop"), (4, None), (8, None), (11, "novel"), (12, None), (16, None)]


def test_a_session_alerts_early_once_even_when_several_prefixes_reach_the_threshold() -> None:
    scorer = EarlyFake([[8, 0.8]], early_hop=1)
    proc, table = _processor(scorer, cooldown=0), {}
    first = _run(proc, scorer, _events("a", ["ERROR a", "ERROR b", "ERROR c"]), table)
    assert [a["window"]["end"] for a in first] == [1]  # ends 2 and 3 reached it too, in the same batch
    # later lines make no early window until max_window lines after the early alert
    later = proc.apply(_events("a", ["ERROR d"] * 4, first=3), lambda key: table.get(key), now=2.0)
    assert later.windows == []
    # (past its first window, a session is scored early only on a novel line)
    again = proc.apply(_events("a", ["NEW ERROR e"] * 3, first=7), lambda key: table.get(key), now=3.0)
    assert [(w.end, w.early) for w in again.windows] == [(8, False), (9, True), (10, True)]  # 9: max_window after 1


def test_no_early_window_while_a_previous_alert_holds_the_cooldown() -> None:
    scorer = EarlyFake([[8, 0.8]], early_hop=1, max_window=4)
    proc, table = _processor(scorer, cooldown=6), {}
    alerts = _run(proc, scorer, _events("a", ["ok", "ok", "ok", "ERROR x"]), table)  # a regular window at 4
    assert [(a["window"]["end"], a["window"]["early"]) for a in alerts] == [(4, False)]
    batch = proc.apply(_events("a", ["NEW ok"] * 6, first=4), lambda key: table.get(key), now=2.0)
    assert [(w.end, w.early) for w in batch.windows] == [(8, False), (10, True)]  # 5-7 and 9: in the cooldown


def test_lengths_whose_early_threshold_flags_nothing_are_not_scored_early() -> None:
    scorer = EarlyFake([[2, 1.0], [8, 0.8]], early_hop=1)
    batch = _processor(scorer).apply(_events("a", ["ERROR"] * 4), lambda key: None, now=1.0)
    assert [w.end for w in batch.windows] == [3, 4]


def test_early_alert_ids_are_the_same_when_the_input_is_redelivered() -> None:
    scorer = EarlyFake([[8, 0.8]], early_hop=3)
    texts = ["ok", "ok", "NEW ERROR", "ok", "ok"]
    ids = []
    for first_sessions_offset in (0, 100):  # a worker that lost its state reads the same input records again
        proc = _processor(scorer)
        events = [(first_sessions_offset + i, e) for i, (_, e) in enumerate(_events("a", texts))]
        ids.append([a["alert_id"] for a in _run(proc, scorer, events)])
    assert len(ids[0]) == 1 and ids[0] == ids[1]


@pytest.mark.parametrize("seed", range(4))
def test_the_worker_scores_early_exactly_the_windows_of_the_offline_rule(seed: int) -> None:
    """What training calibrates on (model.early.early_windows) is what the worker scores, through the table's JSON
    after every line, as long as nothing alerts."""
    rng = random.Random(seed)
    scorer = EarlyFake([[8, 0.8]], early_hop=rng.choice([1, 2, 3, 5]), error_score=0.1, max_window=6)
    texts = [rng.choice(["ok", "ok", "ok", "NEW"]) + f" {i}" for i in range(rng.randrange(1, 30))]
    proc, table, online = _processor(scorer), {}, []
    for event in _events("a", texts):
        batch = proc.apply([event], lambda key: table.get(key), now=1.0)
        online += [(w.end, w.trigger, [e.line for e in w.entries]) for w in batch.windows if w.early]
        table["a"] = SessionState.from_json(batch.states["a"].to_json())
    rule = EarlyRule(scorer.max_window, scorer.window_hop, scorer.early_hop)
    offline = early_windows(texts, [scorer.is_novel(t) for t in texts], rule)
    assert online == [(w.end, w.trigger, w.items) for w in offline]


def test_early_scoring_is_switched_by_early_alerts_and_the_models_thresholds() -> None:
    from stream.scoring import check_early_alerts
    from stream.config import StreamConfig

    with_early, without = EarlyFake([[8, 0.8]], early_hop=4), EarlyFake(None)
    assert isinstance(early_scoring(with_early, 8, None), EarlyScoring)  # on by default when the model has them
    assert early_scoring(with_early, 8, None).rule.early_hop == 4
    assert early_scoring(with_early, 8, None, early_hop=2).rule.early_hop == 2  # the worker's early_hop
    assert early_scoring(with_early, 8, False) is None
    assert early_scoring(without, 8, None) is None and early_scoring(FakeScorer(), 8, True) is None
    check_early_alerts(StreamConfig(early_alerts=True), with_early)
    check_early_alerts(StreamConfig(), without)
    with pytest.raises(ValueError, match="early_alerts is true but the model in .* has no early thresholds"):
        check_early_alerts(StreamConfig(early_alerts=True), without)
    batch = _processor(with_early, enabled=False).apply(_events("a", ["ERROR"] * 4), lambda key: None, now=1.0)
    assert batch.windows == []


def test_a_stored_state_from_before_early_scoring_loads_with_no_early_alert() -> None:
    state = SessionState(count=3, early_alerted_at=2)
    assert SessionState.from_json(state.to_json()).early_alerted_at == 2
    old = state.to_json()
    del old["early_alerted_at"]
    assert SessionState.from_json(old).early_alerted_at == -1
