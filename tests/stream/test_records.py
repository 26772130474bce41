import json
from types import SimpleNamespace

import pytest

from stream.metrics import Metrics
from stream.records import BadInput, LogLine, SessionKeyer, parse_message
from stream.route import group_lines, lines_event


def test_plain_text_keeps_the_line_without_its_newline() -> None:
    assert parse_message(b"INFO started request_id=ab12\n", 1000) == LogLine("INFO started request_id=ab12")


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    parsed = parse_message(b"bad \xff\xfe bytes", 1000)
    assert parsed.line == "bad \ufffd\ufffd bytes"
    assert parsed.replaced_bytes


def test_envelope_gives_line_ts_and_source() -> None:
    doc = {"line": "ERROR disk full", "ts": 1700000000.5, "source": "host-1"}
    assert parse_message(json.dumps(doc).encode(), 1000) == LogLine("ERROR disk full", 1700000000.5, "host-1")


def test_line_starting_with_a_bracket_that_is_not_json_is_plain_text() -> None:
    assert parse_message(b"[INFO] {not json", 1000).line == "[INFO] {not json"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (None, "empty"),
        (b"x" * 101, "oversized"),
        (b'{"msg": "no line field"}', "not_envelope"),
        (b"[1, 2, 3]", "not_envelope"),
        (b'{"line": "x", "extra": 1}', "not_envelope"),
        (b'{"line": 42}', "wrong_type"),
        (b'{"line": "x", "ts": [1]}', "wrong_type"),
        (b'{"line": "x", "source": 7}', "wrong_type"),
        (b'{"line": "  "}', "empty"),
    ],
)
def test_bad_input_is_refused_with_its_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_message(value, 100)
    assert info.value.reason == reason


def test_session_key_first_matching_regex_group_one_or_whole_match() -> None:
    keyer = SessionKeyer([r"request_id=(\w+)", r"blk_-?\d+"], catch_all="-")
    assert keyer.key_for("a request_id=r42 blk_-7") == "r42"
    assert keyer.key_for("Receiving blk_-1608999687919862906 src") == "blk_-1608999687919862906"


def test_session_key_is_the_whole_match_when_group_one_takes_no_part_in_it() -> None:
    """Issue 18.4: group 1 of an alternation that matched on its other side is None; the route then crashed on
    `session.encode`. The docs say group 1, else the whole match."""
    keyer = SessionKeyer([r"request_id=(\w+)|trace_id=[0-9a-f]+"], catch_all="-")
    assert keyer.key_for("GET /x trace_id=abc123 200") == "trace_id=abc123"
    assert keyer.key_for("GET /x request_id=r7 200") == "r7"
    message = SimpleNamespace(topic="logs", partition=0, offset=0, key=None, timestamp=1.0)
    groups = group_lines([SimpleNamespace(message=message, value=b"GET /x trace_id=abc123 200")], keyer, 1000,
                         Metrics())
    assert list(groups) == ["trace_id=abc123"]
    assert lines_event("trace_id=abc123", groups["trace_id=abc123"])


def test_session_key_falls_back_to_message_key_then_source_then_catch_all() -> None:
    keyer = SessionKeyer([r"request_id=(\w+)"], catch_all="-")
    assert keyer.key_for("no id here", b"k1", "src") == "k1"
    assert keyer.key_for("no id here", None, "src") == "src"
    assert keyer.key_for("no id here") == "-"


def test_bad_session_regex_names_the_pattern() -> None:
    with pytest.raises(ValueError, match=r"\(unclosed"):
        SessionKeyer(["(unclosed"])
