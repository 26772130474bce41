"""The alert document, field by field against README's Alerts table, with values worked out by hand."""

from __future__ import annotations

import hashlib

from stream.alerts import alert_id, build_alert
from stream.windows import Entry, Window
from stream_fakes import FakeScore

MODEL = {"name": "m", "fingerprint": "f" * 64, "weights": "w" * 16}


def readme_id(session: str, end: int, partition: int, offset: int) -> str:
    """README: sha256(session, window end position, input partition and offset of the window's last line)[:32],
    written out here, not taken from stream.alerts: consumers keep ids across worker versions to drop
    redeliveries, so the formula must not drift."""
    return hashlib.sha256(f"{session}\n{end}\n{partition}:{offset}".encode()).hexdigest()[:32]


def test_alert_id_is_readmes_formula() -> None:
    assert alert_id("web-1", 12, 3, 4711) == readme_id("web-1", 12, 3, 4711)
    assert len(alert_id("web-1", 12, 3, 4711)) == 32
    others = {alert_id("web-2", 12, 3, 4711), alert_id("web-1", 13, 3, 4711), alert_id("web-1", 12, 2, 4711),
              alert_id("web-1", 12, 3, 4712)}
    assert len(others) == 4 and alert_id("web-1", 12, 3, 4711) not in others


def window(final: bool, partitions: tuple[int, ...] = (2, 2, 2, 2)) -> Window:
    """Positions 7..10 of session s (the session's 10th line is the last), each line with its own ts and offset."""
    entries = [Entry(f"line {i}", 1000.0 + i * 1.5, p, 40 + 3 * i) for i, p in enumerate(partitions)]
    return Window("s", 10, entries, final=final)


def test_every_field_of_an_alert() -> None:
    scored = FakeScore(score=0.8765432, line_scores=[0.5, -0.25, 2.0, 1.0000004], experts_per_token=1.62345,
                       unseen_fraction=0.25)
    alert = build_alert(window(final=True), scored, threshold=0.7, model=MODEL, top_lines=2,
                        detected_at=1_700_000_000.25)
    assert alert["alert_id"] == readme_id("s", 10, 2, 49)  # the last line: partition 2, offset 40 + 3*3
    assert alert["session"] == "s" and alert["score"] == 0.876543 and alert["threshold"] == 0.7
    assert alert["model"] == MODEL
    assert alert["window"] == {"start": 7, "end": 10, "final": True, "early": False, "trigger": None,
                               "prefix_lines": 10, "first_ts": 1000.0, "last_ts": 1004.5, "n_lines": 4,
                               "partition": 2, "first_offset": 40, "last_offset": 49}
    assert alert["lines"] == [
        {"n": 7, "line": "line 0", "ts": 1000.0, "offset": 40, "contribution": 0.5, "suspicious": False},
        {"n": 8, "line": "line 1", "ts": 1001.5, "offset": 43, "contribution": -0.25, "suspicious": False},
        {"n": 9, "line": "line 2", "ts": 1003.0, "offset": 46, "contribution": 2.0, "suspicious": True},
        {"n": 10, "line": "line 3", "ts": 1004.5, "offset": 49, "contribution": 1.0, "suspicious": True},
    ]
    assert alert["experts"] == {"experts_per_token": 1.6235}
    assert alert["unseen_lines"] == 0.25
    assert alert["detected_at"] == "2023-11-14T22:13:20.250+00:00"


def test_a_window_mixing_partitions_has_no_partition_and_a_hop_window_is_not_final() -> None:
    scored = FakeScore(0.9, [0.0, 0.0, 0.0, 0.0], 1.0, None)
    alert = build_alert(window(final=False, partitions=(1, 0, 0, 1)), scored, threshold=0.5, model=MODEL,
                        top_lines=1, detected_at=0.0)
    assert alert["window"]["final"] is False and alert["window"]["partition"] is None
    assert alert["alert_id"] == readme_id("s", 10, 1, 49)  # the last line's partition, not another's
    assert alert["unseen_lines"] is None  # a model without seen_lines.json
    assert [ln["suspicious"] for ln in alert["lines"]] == [True, False, False, False]  # ties: the earliest line
    assert alert["detected_at"] == "1970-01-01T00:00:00.000+00:00"


def test_lines_without_a_contribution_say_none_and_shares_are_rounded_to_four_places() -> None:
    scored = FakeScore(0.9, [1.5, -0.5], 1.0, 1 / 3)  # two contributions for four lines
    alert = build_alert(window(final=True), scored, threshold=0.5, model=MODEL, top_lines=1, detected_at=0.0)
    assert [ln["contribution"] for ln in alert["lines"]] == [1.5, -0.5, None, None]
    assert [ln["suspicious"] for ln in alert["lines"]] == [True, False, False, False]
    assert alert["unseen_lines"] == 0.3333
