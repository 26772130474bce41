import dataclasses
import hashlib
import logging

import numpy as np
import pytest

from stream.metrics import Metrics
from stream.processor import SessionEvent, SessionProcessor
from stream.windows import Entry, SessionState, SessionWindows
from stream_fakes import FakeScorer


def _processor(idle: float = 5.0, cooldown: int = 0) -> SessionProcessor:
    proc = SessionProcessor(SessionWindows(4, 2, 1000, cooldown), idle, Metrics())
    proc.idle_since = 1e-3  # a worker that had caught up with its input before the first line
    return proc


def _line(session: str, text: str, offset: int) -> SessionEvent:
    return SessionEvent("line", session, Entry(text, None, 0, offset))


class Store:
    """The table as the processor sees it: JSON in, JSON out."""

    def __init__(self) -> None:
        self.data: dict[str, dict] = {}

    def load(self, key: str) -> SessionState | None:
        return SessionState.from_json(self.data[key]) if key in self.data else None

    def write(self, states: dict[str, SessionState | None]) -> None:
        for key, state in states.items():
            if state is None:
                self.data.pop(key, None)
            else:
                self.data[key] = state.to_json()


def test_events_round_trip_through_json() -> None:
    for event in (_line("s", "x", 3), SessionEvent("close", "s", reason="idle")):
        assert SessionEvent.from_json(event.to_json()) == event


def test_idle_close_scores_the_whole_short_session_and_deletes_it() -> None:
    proc, store = _processor(), Store()
    batch = proc.apply([(i, _line("a", f"l{i}", i)) for i in range(3)], store.load, now=100.0)
    assert batch.windows == []
    store.write(batch.states)
    batch = proc.apply([(3, SessionEvent("close", "a", reason="idle"))], store.load, now=106.0)
    assert [len(w.entries) for w in batch.windows] == [3] and batch.windows[0].final
    store.write(batch.states)
    assert store.data == {}


def test_close_request_overtaken_by_a_new_line_keeps_the_session_open() -> None:
    proc, store = _processor(idle=5.0), Store()
    store.write(proc.apply([(0, _line("a", "l0", 0))], store.load, now=100.0).states)
    batch = proc.apply([(1, _line("a", "l1", 1)), (2, SessionEvent("close", "a", reason="idle"))],
                       store.load, now=106.0)
    assert batch.windows == [] and batch.states["a"] is not None


def test_redelivered_events_are_skipped_so_no_line_counts_twice() -> None:
    proc, store = _processor(), Store()
    events = [(i, _line("a", f"l{i}", i)) for i in range(4)]
    first = proc.apply(events, store.load, now=1.0)
    store.write(first.states)
    again = proc.apply(events, store.load, now=2.0)  # the worker died after writing state, before committing
    assert again.windows == [] and store.load("a").count == 4
    assert proc.metrics.counts["events_redelivered_skipped"] == 4


def test_alerts_only_at_threshold_with_marked_lines_and_stable_ids() -> None:
    proc, store, scorer = _processor(), Store(), FakeScorer(max_window=4)
    lines = ["ok", "ok", "ERROR boom", "ok", "ok", "ok"]
    batch = proc.apply([(i, _line("a", t, i)) for i, t in enumerate(lines)]
                       + [(6, _line("b", "ok", 6)), (7, SessionEvent("close", "b", reason="evict"))],
                       store.load, now=1.0)
    scored = scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows])
    alerts = proc.alerts_for(batch, scored, scorer, top_lines=1, now=1.0)
    assert [(a["session"], a["window"]["end"]) for a in alerts] == [("a", 4), ("a", 6)]
    first = alerts[0]
    assert [ln["line"] for ln in first["lines"] if ln["suspicious"]] == ["ERROR boom"]
    assert first["window"]["n_lines"] == 4 and first["window"]["first_offset"] == 0
    assert first["model"] == {"name": "fake", "fingerprint": scorer.fingerprint}
    # A redelivery (the same input records on a worker that lost its state) alerts with the same ids.
    redelivery = _processor()
    batch2 = redelivery.apply([(100 + i, _line("a", t, i)) for i, t in enumerate(lines)], Store().load, now=9.0)
    scored2 = scorer.score_detailed([[e.line for e in w.entries] for w in batch2.windows])
    ids2 = [a["alert_id"] for a in redelivery.alerts_for(batch2, scored2, scorer, 1, now=9.0)]
    assert ids2 == [a["alert_id"] for a in alerts]


def test_a_new_incident_of_a_session_key_gets_new_alert_ids() -> None:
    """Issue 18.1: session web-1, 3 lines and a close, an hour later 3 other lines and a close: both windows end
    at position 3 of a session web-1, and used to share their alert_id, so consumers dropped the second."""
    proc, store, scorer = _processor(), Store(), FakeScorer(max_window=4)
    ids = []
    for hour, first_offset in ((0, 10), (1, 500)):
        now = 3600.0 * hour
        lines = [_line("web-1", f"ERROR incident {hour} step {i}", first_offset + i) for i in range(3)]
        store.write(proc.apply(list(zip(range(first_offset, first_offset + 3), lines)), store.load, now).states)
        batch = proc.apply([(first_offset + 3, SessionEvent("close", "web-1", reason="idle"))], store.load,
                           now + 10.0)
        store.write(batch.states)
        scored = scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows])
        alerts = proc.alerts_for(batch, scored, scorer, top_lines=1, now=now + 10.0)
        assert [(a["session"], a["window"]["end"]) for a in alerts] == [("web-1", 3)]
        ids.append(alerts[0]["alert_id"])
    assert ids[0] != ids[1]


def _alerts(proc: SessionProcessor, store: Store, events: list, now: float = 1.0,
            scorer: FakeScorer | None = None) -> list[dict]:
    """Apply, score with the fake scorer (a window with an ERROR line scores 0.9, threshold 0.5), alert, store."""
    scorer = scorer or FakeScorer(max_window=4)
    batch = proc.apply(events, store.load, now=now)
    scored = scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows])
    alerts = proc.alerts_for(batch, scored, scorer, top_lines=1, now=now)
    store.write(batch.states)
    return alerts


def test_cooldown_holds_back_repeat_alerts_of_one_session() -> None:
    # Window 4, hop 2: windows end at 4 (ERROR at 4), 6 (still holds it), 8 (ERROR at 8). With a cooldown of 4
    # lines, 6 is held back (6 - 4 < 4) and 8 alerts (8 - 4 = 4: the cooldown is over at exactly 4 lines).
    proc = _processor(cooldown=4)
    lines = ["ok", "ok", "ok", "ERROR a", "ok", "ok", "ok", "ERROR b"]
    alerts = _alerts(proc, Store(), [(i, _line("a", t, i)) for i, t in enumerate(lines)])
    assert [a["window"]["end"] for a in alerts] == [4, 8]
    assert proc.metrics.counts["alerts_suppressed_cooldown"] == 1


def test_the_cooldown_outlives_the_batch_through_the_stored_state() -> None:
    """The alert of one batch holds back the next batch's window: the worker writes `alerted_at` to the table."""
    proc, store = _processor(cooldown=4), Store()
    assert [a["window"]["end"] for a in _alerts(proc, store, [(i, _line("a", "ERROR x", i)) for i in range(4)])] \
        == [4]
    assert store.load("a").alerted_at == 4
    again = _alerts(proc, store, [(i, _line("a", "ERROR y", i)) for i in range(4, 8)])
    assert [a["window"]["end"] for a in again] == [8]  # 6 is held back, 8 is 4 lines on
    assert proc.metrics.counts["alerts_suppressed_cooldown"] == 1 and store.load("a").alerted_at == 8


def test_without_a_cooldown_every_anomalous_window_alerts() -> None:
    proc = _processor(cooldown=0)
    alerts = _alerts(proc, Store(), [(i, _line("a", "ERROR", i)) for i in range(8)])
    assert [a["window"]["end"] for a in alerts] == [4, 6, 8]
    assert proc.metrics.counts["alerts_suppressed_cooldown"] == 0


def test_a_score_exactly_at_the_threshold_alerts_and_one_just_below_does_not() -> None:
    """README: an alert means score >= threshold."""

    class AtThreshold(FakeScorer):
        threshold = 0.9  # the fake scorer's score for a window with an ERROR line

    proc = _processor()
    scorer = AtThreshold(max_window=4)
    batch = proc.apply([(i, _line("a", "ERROR", i)) for i in range(4)], Store().load, now=1.0)
    scored = scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows])
    assert [s.score for s in scored] == [scorer.threshold]
    assert [a["score"] for a in proc.alerts_for(batch, scored, scorer, top_lines=1, now=1.0)] == [0.9]
    scorer.threshold = float(np.nextafter(0.9, 1.0))
    assert proc.alerts_for(batch, scored, scorer, top_lines=1, now=1.0) == []


def test_windows_made_while_lines_arrive_are_not_final_and_the_closing_one_is() -> None:
    proc, store = _processor(), Store()  # window 4, hop 2
    alerts = _alerts(proc, store, [(i, _line("a", "ERROR", i)) for i in range(5)])
    assert [(a["window"]["end"], a["window"]["final"]) for a in alerts] == [(4, False)]
    closing = _alerts(proc, store, [(5, SessionEvent("close", "a", reason="idle"))], now=100.0)
    assert [(a["window"]["end"], a["window"]["final"]) for a in closing] == [(5, True)]


def test_the_alert_names_the_input_record_of_the_windows_last_line() -> None:
    proc = _processor()
    events = [(i, SessionEvent("line", "a", Entry("ERROR" if i == 2 else "ok", 50.0 + i, 3, 700 + i)))
              for i in range(4)]
    [alert] = _alerts(proc, Store(), events)
    w = alert["window"]
    assert (w["partition"], w["first_offset"], w["last_offset"], w["first_ts"], w["last_ts"]) == \
        (3, 700, 703, 50.0, 53.0)
    assert [(ln["ts"], ln["offset"]) for ln in alert["lines"]] == [(50.0 + i, 700 + i) for i in range(4)]
    assert alert["alert_id"] == hashlib.sha256(b"a\n4\n3:703").hexdigest()[:32]  # README's formula


def test_a_restarted_worker_does_not_close_sessions_for_its_own_downtime() -> None:
    """A close request that reaches a worker which started after the session's last line (it was down, or the
    request is a redelivery from before a crash) counts idle time from when the worker had caught up with its
    input, not the last line; before then it closes nothing."""
    proc, store = _processor(idle=5.0), Store()
    store.write(proc.apply([(0, _line("a", "l0", 0))], store.load, now=100.0).states)  # last line at t=100
    proc.started_at, proc.idle_since = 1000.0, 0.0  # the worker came back 900 s later, still routing its backlog
    early = proc.apply([(1, SessionEvent("close", "a", reason="idle"))], store.load, now=1500.0)
    assert early.windows == [] and early.states["a"] is not None
    store.write(early.states)
    proc.idle_since = 1000.0  # caught up
    kept = proc.apply([(2, SessionEvent("close", "a", reason="idle"))], store.load, now=1003.0)
    assert kept.windows == [] and kept.states["a"] is not None
    assert proc.metrics.counts.get("sessions_closed_idle", 0) == 0
    store.write(kept.states)
    closed = proc.apply([(3, SessionEvent("close", "a", reason="idle"))], store.load, now=1005.0)
    assert [w.final for w in closed.windows] == [True] and closed.states["a"] is None
    assert proc.metrics.counts["sessions_closed_idle"] == 1


def test_an_eviction_closes_a_session_however_recently_it_was_seen() -> None:
    proc, store = _processor(idle=5.0), Store()
    store.write(proc.apply([(0, _line("a", "l0", 0))], store.load, now=100.0).states)
    batch = proc.apply([(1, SessionEvent("close", "a", reason="evict"))], store.load, now=100.5)
    assert len(batch.windows) == 1 and batch.states["a"] is None
    assert proc.metrics.counts["sessions_evicted_overflow"] == 1


def test_hop_zero_means_the_models_own_hop() -> None:
    from stream.app import window_hop
    from stream.config import StreamConfig

    scorer = FakeScorer(max_window=16, window_hop=16)
    assert window_hop(StreamConfig(hop=0), scorer) == 16
    scorer.window_hop = 5
    assert window_hop(StreamConfig(hop=0), scorer) == 5
    assert window_hop(StreamConfig(hop=3), scorer) == 3


def test_session_idle_unset_means_the_models_longest_normal_pause_else_the_default(
        caplog: pytest.LogCaptureFixture) -> None:
    from stream.app import create_app, describe_idle
    from stream.config import StreamConfig
    from stream.processor import DEFAULT_SESSION_IDLE, session_idle

    scorer = FakeScorer()
    assert session_idle(None, scorer) == DEFAULT_SESSION_IDLE  # a model that measured no pauses
    scorer.session_idle = 51000.0  # type: ignore[attr-defined]  # real HDFS: blocks are deleted hours later
    assert session_idle(None, scorer) == 51000.0
    assert session_idle(300.0, scorer) == 300.0  # the worker's setting wins
    handle = create_app(StreamConfig(), scorer).logmoe_handle
    assert handle.processor.idle_seconds == 51000.0
    handle.reloader.install(FakeScorer())  # a hot-reloaded model brings its own
    assert handle.processor.idle_seconds == DEFAULT_SESSION_IDLE
    assert create_app(StreamConfig(session_idle=2.0), scorer).logmoe_handle.processor.idle_seconds == 2.0
    assert "session_idle 2 s is shorter than the model's 51000 s" in caplog.text  # create_app said so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stream.app"):
        assert describe_idle(60000.0, scorer) == "60000 s idle (session_idle)"
        assert describe_idle(None, scorer).startswith("51000 s idle (the model's")
        assert not caplog.records
        assert describe_idle(300.0, scorer) == "300 s idle (session_idle)"
    assert "session_idle 300 s is shorter than the model's 51000 s" in caplog.text


def test_a_lost_close_request_is_sent_again_within_minutes_however_long_the_idle() -> None:
    from stream.agents import CLOSE_RETRY_MAX, close_retry_after

    assert close_retry_after(1.0) == 10.0 and close_retry_after(30.0) == 60.0
    assert close_retry_after(50962.0) == CLOSE_RETRY_MAX == 300.0  # real HDFS: not 28 hours


def test_a_hop_larger_than_the_models_window_is_refused_at_start() -> None:
    """Issue 18: hop 20 over windows of 16 would leave lines 17..20 of every 20 out of every window."""
    from stream.app import create_app, window_hop
    from stream.config import StreamConfig

    with pytest.raises(ValueError, match=r"^hop must be <= the model's max_window \(20 > 16\)"):
        window_hop(StreamConfig(hop=20), FakeScorer(max_window=16))
    with pytest.raises(ValueError, match=r"^the model's window_hop \(hop=0 means it, in fake\) must be <= the "
                                         r"model's max_window \(32 > 16\)"):
        create_app(StreamConfig(hop=0), FakeScorer(max_window=16, window_hop=32))


def _lines(session: str, texts: list[str], first_offset: int) -> SessionEvent:
    entries = tuple(Entry(t, None, 0, first_offset + i) for i, t in enumerate(texts))
    return SessionEvent("lines", session, entries=entries)


def test_lines_event_round_trips_and_an_empty_one_is_refused() -> None:
    event = _lines("s", ["x", "y"], 3)
    assert SessionEvent.from_json(event.to_json()) == event
    assert event.line_entries == event.entries
    with pytest.raises(ValueError, match="not a session event"):
        SessionEvent.from_json({"kind": "lines", "session": "s", "entries": []})


def test_a_lines_event_windows_exactly_as_its_lines_sent_one_by_one() -> None:
    texts = [f"l{i}" for i in range(7)]
    one_by_one = _processor().apply([(i, _line("a", t, i)) for i, t in enumerate(texts)], Store().load, now=1.0)
    grouped = _processor().apply([(0, _lines("a", texts[:3], 0)), (1, _lines("a", texts[3:], 3))],
                                 Store().load, now=1.0)
    assert [(w.end, [e.line for e in w.entries]) for w in grouped.windows] == \
        [(w.end, [e.line for e in w.entries]) for w in one_by_one.windows]
    assert grouped.states["a"].count == one_by_one.states["a"].count == 7


def test_a_redelivered_lines_event_is_skipped_whole() -> None:
    proc, store = _processor(), Store()
    store.write(proc.apply([(5, _lines("a", ["x", "y", "z"], 0))], store.load, now=1.0).states)
    again = proc.apply([(5, _lines("a", ["x", "y", "z"], 0))], store.load, now=2.0)
    assert again.windows == [] and store.load("a").count == 3
    assert proc.metrics.counts["events_redelivered_skipped"] == 1


def test_a_session_too_long_inside_one_lines_event_starts_over_with_its_next_line() -> None:
    proc = SessionProcessor(SessionWindows(4, 2, 3, 0), 5.0, Metrics())
    batch = proc.apply([(0, _lines("a", ["a", "b", "c", "d", "e"], 0))], Store().load, now=1.0)
    assert [[e.line for e in w.entries] for w in batch.windows] == [["a", "b", "c"]]
    assert [(w.session, w.end, w.final) for w in batch.windows] == [("a", 3, True)]
    assert set(batch.states) == {"a"} and batch.states["a"] is not None and batch.states["a"].count == 2
    assert proc.metrics.counts["sessions_evicted_too_long"] == 1
    assert proc.metrics.counts["sessions_opened"] == 2


def test_input_lines_published_again_in_a_new_event_are_skipped_by_input_offset() -> None:
    # After a crash the route re-reads input lines whose offsets were not committed and publishes them again:
    # a later sessions-topic offset, the same input partition and offset.
    proc, store = _processor(), Store()
    store.write(proc.apply([(0, _lines("a", ["x", "y"], 10))], store.load, now=1.0).states)
    again = proc.apply([(1, _lines("a", ["y", "z"], 11))], store.load, now=2.0)
    store.write(again.states)
    state = store.load("a")
    assert state.count == 3 and [e.line for e in state.items] == ["x", "y", "z"]
    assert proc.metrics.counts["lines_redelivered_skipped"] == 1
    other_partition = proc.apply([(2, SessionEvent("line", "a", Entry("w", None, 1, 5)))], store.load, now=3.0)
    assert other_partition.states["a"].count == 4  # offsets are per input partition


def test_counters_tell_when_every_line_is_in_a_session_and_every_window_was_made_due() -> None:
    from stream.metrics import drain_status

    proc, store = _processor(), Store()  # window 4, hop 2
    batch = proc.apply([(0, _lines("a", [f"a{i}" for i in range(6)], 0)), (1, _lines("b", ["b0"], 6))],
                       store.load, now=1.0)
    store.write(batch.states)
    counts = proc.metrics.counts
    assert counts["lines_applied"] == 7 and counts["windows_due"] == len(batch.windows) == 2  # a: ends 4, 6
    store.write(proc.apply([(2, _lines("a", ["a5"], 5))], store.load, now=1.5).states)  # input sent again
    assert counts["lines_applied"] == 7 and counts["lines_redelivered_skipped"] == 1
    assert drain_status({**counts, "windows_scored": 2, "open_sessions": 2}, 7) == "2 of 2 sessions still open"
    closes = proc.apply([(3, SessionEvent("close", "a", reason="idle")),
                         (4, SessionEvent("close", "b", reason="idle"))], store.load, now=10.0)
    store.write(closes.states)
    assert counts["windows_due"] == 3 and len(closes.windows) == 1  # b's whole session; a ended on a window
    assert drain_status({**counts, "windows_scored": 2, "open_sessions": 0}, 7) == "1 of 3 windows not scored yet"
    assert drain_status({**counts, "windows_scored": 2, "windows_failed": 1, "open_sessions": len(store.data)}, 7) \
        is None


def test_a_threshold_of_one_alerts_on_nothing_not_even_a_saturated_score() -> None:
    """Issue 18.7: calibration stores 1.0 when no threshold meets target_fpr ("flag nothing"), and float32 softmax
    gives exactly 1.0 often."""

    class Saturated(FakeScorer):
        threshold = 1.0

        def score_detailed(self, windows):  # type: ignore[no-untyped-def]
            return [dataclasses.replace(s, score=1.0) for s in super().score_detailed(windows)]

    proc, scorer = _processor(), Saturated(max_window=4)
    batch = proc.apply([(i, _line("a", "ERROR boom", i)) for i in range(4)], Store().load, now=1.0)
    scored = scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows])
    assert [s.score for s in scored] == [1.0]
    assert proc.alerts_for(batch, scored, scorer, top_lines=1, now=1.0) == []
    scorer.threshold = 0.99
    assert len(proc.alerts_for(batch, scored, scorer, top_lines=1, now=1.0)) == 1


def test_a_normal_window_does_not_stop_the_alerts_after_it_in_the_batch() -> None:
    proc = _processor()
    events = [(i, _line("calm", "ok", i)) for i in range(4)] + [(4 + i, _line("a", "ERROR", 4 + i)) for i in range(4)]
    alerts = _alerts(proc, Store(), events)
    assert [(a["session"], a["window"]["end"]) for a in alerts] == [("a", 4)]


def test_scores_that_do_not_match_the_windows_one_to_one_are_an_error() -> None:
    """A scorer that returned fewer results than windows must not silently drop the windows left over."""
    proc, scorer = _processor(), FakeScorer(max_window=4)
    batch = proc.apply([(i, _line("a", "ERROR", i)) for i in range(6)], Store().load, now=1.0)
    scored = scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows])
    assert len(scored) == 2
    with pytest.raises(ValueError):
        proc.alerts_for(batch, scored[:1], scorer, top_lines=1, now=1.0)


def test_a_new_processor_has_not_started() -> None:
    """The close timer and /healthz read started_at: 0 until the worker has recovered its table and started."""
    assert not _processor().started_at
