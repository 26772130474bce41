from __future__ import annotations

import pytest

from model.windowing import Windower, WindowState, session_windows


def test_short_session_yields_exactly_the_whole_session() -> None:
    assert session_windows(["a", "b", "c"], window=5, hop=2) == [["a", "b", "c"]]


def test_session_of_exactly_window_items_is_emitted_once() -> None:
    assert session_windows(list("abcd"), window=4, hop=2) == [list("abcd")]


def test_long_session_slides_by_hop_and_closes_with_the_tail() -> None:
    windows = session_windows(list(range(10)), window=4, hop=3)
    # full windows end at items 4, 7, 10; the close adds nothing because one ended at item 10
    assert windows == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    windows = session_windows(list(range(9)), window=4, hop=3)
    assert windows == [[0, 1, 2, 3], [3, 4, 5, 6], [5, 6, 7, 8]]


def test_fixed_windows_when_hop_equals_window() -> None:
    assert session_windows(list(range(7)), window=3, hop=3) == [[0, 1, 2], [3, 4, 5], [4, 5, 6]]


def test_streaming_push_matches_offline_windows() -> None:
    items = list(range(23))
    windower: Windower[int] = Windower(window=6, hop=4)
    state: WindowState[int] = WindowState()
    online = [w for i in items if (w := windower.push(state, i)) is not None]
    final = windower.close(state)
    online += [final] if final is not None else []
    assert online == session_windows(items, window=6, hop=4)
    assert len(state.items) == 6 and state.count == 23


def test_close_of_empty_or_already_emitted_session_is_none() -> None:
    windower: Windower[str] = Windower(window=2, hop=1)
    state: WindowState[str] = WindowState()
    assert windower.close(state) is None
    windower.push(state, "x")
    assert windower.close(state) == ["x"]
    assert windower.close(state) is None


@pytest.mark.parametrize("window, hop", [(0, 1), (3, 0), (-1, 2), (2.5, 1)])
def test_bad_sizes_are_refused_with_the_value(window: object, hop: object) -> None:
    with pytest.raises(ValueError, match=repr(window) if window in (0, -1, 2.5) else repr(hop)):
        Windower(window, hop)  # type: ignore[arg-type]


def test_a_hop_larger_than_the_window_is_refused() -> None:
    """Issue 18: with hop 5 over windows of 4 the 5th line of every 5 would never be in a window, nor scored."""
    with pytest.raises(ValueError, match=r"hop must be <= window \(5 > 4\)"):
        Windower(4, 5)
    assert session_windows(list(range(6)), 4, 4) == [[0, 1, 2, 3], [2, 3, 4, 5]]  # hop == window still works


def test_a_window_of_one_line_scores_every_line_alone() -> None:
    assert session_windows(list("abc"), window=1, hop=1) == [["a"], ["b"], ["c"]]
