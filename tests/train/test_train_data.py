"""Session JSONL reading: label spellings, the exact error messages (file:line), skip_invalid counting."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.data import load_jsonl, load_sessions, parse_label


@pytest.mark.parametrize(("value", "expected"), [
    ("正常", 0), ("异常", 1), ("normal", 0), ("anomalous", 1), ("Normal", 0), ("ANOMALOUS", 1), (" normal ", 0),
    (0, 0), (1, 1), ("0", 0), ("1", 1), (False, 0), (True, 1), ("true", 1), ("False", 0),
])
def test_parse_label_accepts_every_spelling(value: object, expected: int) -> None:
    assert parse_label(value) == expected


@pytest.mark.parametrize("value", ["anomaly", "2", 2, -1, 1.0, None, "", "异 常", [1]])
def test_parse_label_rejects_others_naming_the_value(value: object) -> None:
    with pytest.raises(ValueError, match="unknown label") as err:
        parse_label(value)
    assert repr(value) in str(err.value)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"log_sequence": "a 1\nb 2", "label": "正常", "session_id": "s1", "event_ids": ["E1", "E2"]},
                  ensure_ascii=False)


def test_load_reads_sessions_and_ignores_extra_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [
        GOOD,
        "",  # a blank line is not a record
        json.dumps({"log_sequence": "x\r\n\ny\n", "label": True}),
    ])
    sessions = load_jsonl(path)
    assert [s.session_id for s in sessions] == ["s1", "d:3"]  # no session_id: file stem and line number
    assert sessions[0].lines == ("a 1", "b 2") and sessions[0].label == 0
    assert sessions[1].lines == ("x", "y") and sessions[1].label == 1
    assert not hasattr(sessions[0], "event_ids")


@pytest.mark.parametrize(("line", "message"), [
    ('{"log_sequence": "a", "label": ', "d.jsonl:2: bad JSON (Expecting value at char 31: "
                                        "'{\"log_sequence\": \"a\", \"label\":')"),
    ('["a", 1]', "d.jsonl:2: not a JSON object ([\"a\", 1])"),
    ('{"label": "正常"}', "d.jsonl:2: missing field 'log_sequence' (fields: label)"),
    ('{"log_sequence": "a"}', "d.jsonl:2: missing field 'label' (fields: log_sequence)"),
    ('{"log_sequence": "a", "label": "maybe"}',
     "d.jsonl:2: unknown label ('maybe'; expected one of 正常/异常, normal/anomalous, 0/1, true/false)"),
    ('{"log_sequence": " \\n \\n", "label": 0}', "d.jsonl:2: empty log_sequence (' \\n \\n')"),
    ('{"log_sequence": 5, "label": 0}', "d.jsonl:2: log_sequence is not a string (5)"),
])
def test_invalid_record_fails_with_file_line_and_value(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "d.jsonl", [GOOD, line])
    with pytest.raises(ValueError) as err:
        load_jsonl(path)
    assert str(err.value) == f"{tmp_path}/{message}"


def test_skip_invalid_counts_by_reason_and_keeps_the_rest(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [
        GOOD, "{not json", '{"log_sequence": "a", "label": "x"}', '{"log_sequence": "a", "label": "y"}',
        '{"label": 1}', GOOD,
    ])
    sessions, report = load_sessions([path], skip_invalid=True)
    assert len(sessions) == 2
    assert report.as_dict()["by_reason"] == {"bad JSON": 1, "missing field 'log_sequence'": 1, "unknown label": 2}
    assert report.total == 4
    assert report.examples[0].startswith(f"{path}:2: bad JSON")


def test_all_invalid_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", ["{bad"])
    with pytest.raises(ValueError, match="no valid sessions"):
        load_sessions([path], skip_invalid=True)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")
