from collections.abc import Sequence

from model.windowing import session_windows
from stream.windows import Entry, SessionState, SessionWindows, sessions_to_close


def _entries(n: int) -> list[Entry]:
    return [Entry(f"line {i}", float(i), 0, i) for i in range(n)]


def _run(windows: SessionWindows, entries: Sequence[Entry], roundtrip: bool) -> list[list[Entry]]:
    state = SessionState()
    out = []
    for entry in entries:
        if roundtrip:  # what a restarted worker sees: the state as stored in the table
            state = SessionState.from_json(state.to_json())
        w = windows.add("s", state, entry, now=0.0)
        if w is not None:
            out.append(w.entries)
    final = windows.close("s", state)
    if final is not None:
        out.append(final.entries)
    return out


def test_windows_match_the_offline_rule_even_through_serialisation() -> None:
    windows = SessionWindows(window=8, hop=3, max_session_lines=10_000, cooldown_lines=0)
    for n in (1, 5, 8, 9, 11, 14, 30):
        entries = _entries(n)
        expected = session_windows(entries, 8, 3)
        assert _run(windows, entries, roundtrip=False) == expected
        assert _run(windows, entries, roundtrip=True) == expected


def test_short_session_gives_one_final_window_with_every_line() -> None:
    windows = SessionWindows(window=8, hop=4, max_session_lines=100, cooldown_lines=0)
    state = SessionState()
    for e in _entries(5):
        assert windows.add("s", state, e, now=1.0) is None
    final = windows.close("s", state)
    assert final is not None and final.final and final.end == 5 and len(final.entries) == 5


def test_cooldown_suppresses_windows_ending_within_n_lines_of_the_last_alert() -> None:
    windows = SessionWindows(window=4, hop=1, max_session_lines=100, cooldown_lines=3)
    state = SessionState()
    emitted = [w for e in _entries(10) if (w := windows.add("s", state, e, 0.0)) is not None]
    assert [w.end for w in emitted] == [4, 5, 6, 7, 8, 9, 10]
    decisions = []
    for w in emitted:
        ok = windows.should_alert(state, w)
        if ok:
            state.alerted_at = w.end
        decisions.append(ok)
    assert decisions == [True, False, False, True, False, False, True]


def test_too_long_session_is_flagged_at_the_cap() -> None:
    windows = SessionWindows(window=4, hop=2, max_session_lines=6, cooldown_lines=0)
    state = SessionState()
    flags = []
    for e in _entries(6):
        windows.add("s", state, e, 0.0)
        flags.append(windows.too_long(state))
    assert flags == [False] * 5 + [True]


def test_sessions_to_close_idle_first_then_least_recently_seen_beyond_the_cap() -> None:
    seen = [("a", 0.0), ("b", 95.0), ("c", 96.0), ("d", 97.0), ("e", 99.0)]
    idle, evicted = sessions_to_close(seen, now=100.0, idle=10.0, max_open=2)
    assert idle == ["a"]
    assert evicted == ["b", "c"]


def test_a_restarted_worker_counts_idle_time_from_its_start_not_from_before_its_downtime() -> None:
    """The close timer of a worker started (and caught up with its input) at t=1000: sessions last seen long before
    (it was down) get `idle` seconds from then; one seen after is idle from its own last line."""
    seen = [("before", 100.0), ("after", 1001.0)]
    assert sessions_to_close(seen, now=1004.0, idle=5.0, max_open=10, idle_since=1000.0) == ([], [])
    assert sessions_to_close(seen, now=1005.0, idle=5.0, max_open=10, idle_since=1000.0) == (["before"], [])
    assert sessions_to_close(seen, now=1006.0, idle=5.0, max_open=10, idle_since=1000.0) == (["before", "after"], [])
    assert sessions_to_close(seen, now=1004.0, idle=5.0, max_open=10) == (["before"], [])  # no start: last line
    assert sessions_to_close([("early", 0.0)], now=5.5, idle=5.0, max_open=10) == (["early"], [])


def test_eviction_takes_the_least_recently_seen_and_none_within_the_cap() -> None:
    seen = [("a", 50.0), ("b", 10.0), ("c", 30.0)]
    assert sessions_to_close(seen, now=60.0, idle=100.0, max_open=3) == ([], [])
    assert sessions_to_close(seen, now=60.0, idle=100.0, max_open=1) == ([], ["b", "c"])
    assert sessions_to_close(seen, now=60.0, idle=50.0, max_open=1) == (["b"], ["c"])  # b is idle (50 s), not evicted


def test_with_a_cooldown_of_zero_or_one_line_every_window_may_alert() -> None:
    for cooldown in (0, 1):
        windows = SessionWindows(window=2, hop=1, max_session_lines=100, cooldown_lines=cooldown)
        state = SessionState()
        emitted = [w for e in _entries(5) if (w := windows.add("s", state, e, 0.0)) is not None]
        decisions = []
        for w in emitted:
            decisions.append(windows.should_alert(state, w))
            state.alerted_at = w.end
        assert decisions == [True] * 4, cooldown


def test_bad_limits_are_refused_with_the_value() -> None:
    import pytest

    assert SessionWindows(4, 2, max_session_lines=1, cooldown_lines=0).too_long(SessionState(count=1))
    with pytest.raises(ValueError, match=r"^max_session_lines must be >= 1, got 0$"):
        SessionWindows(4, 2, max_session_lines=0, cooldown_lines=0)
    with pytest.raises(ValueError, match=r"^cooldown_lines must be >= 0, got -1$"):
        SessionWindows(4, 2, max_session_lines=10, cooldown_lines=-1)
