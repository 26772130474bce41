"""Labelled log sessions: the seed's JSONL format, label parsing, and the skip report for bad records."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

NORMAL, ANOMALOUS = 0, 1

# Every spelling accepted for a label, lower-cased; booleans and ints are handled before the lookup.
_LABEL_WORDS: dict[str, int] = {
    "正常": NORMAL,
    "异常": ANOMALOUS,
    "normal": NORMAL,
    "anomalous": ANOMALOUS,
    "0": NORMAL,
    "1": ANOMALOUS,
    "false": NORMAL,
    "true": ANOMALOUS,
}
ACCEPTED_LABELS = "正常/异常, normal/anomalous, 0/1, true/false"


@dataclass(frozen=True)
class Session:
    """One session: its raw lines in order and its label (0 normal, 1 anomalous). An unlabelled session (read for
    the unsupervised objective from a record without a label) has label 0 and labelled False."""

    session_id: str
    lines: tuple[str, ...]
    label: int
    source: str = ""  # "FILE:LINE" the session came from, for messages
    labelled: bool = True


@dataclass
class SkipReport:
    """Invalid records skipped under skip_invalid, counted by reason; never dropped silently."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first few full messages

    max_examples = 5

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(message)

    def merge(self, other: SkipReport) -> None:
        self.counts.update(other.counts)
        for message in other.examples:
            if len(self.examples) < self.max_examples:
                self.examples.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(sorted(self.counts.items())), "examples": list(self.examples)}

    def log(self, what: str) -> None:
        if self.total:
            logger.warning("skipped %d invalid records in %s: %s (first: %s)",
                           self.total, what, dict(self.counts), self.examples[0])


class InvalidRecord(ValueError):
    """A bad input record; `reason` is the short category used for counting."""

    def __init__(self, location: str, reason: str, detail: str) -> None:
        super().__init__(f"{location}: {reason} ({detail})")
        self.reason = reason


def parse_label(value: object) -> int:
    """Map any accepted label spelling to 0 (normal) or 1 (anomalous); ValueError naming the bad value."""
    if isinstance(value, bool):
        return ANOMALOUS if value else NORMAL
    if isinstance(value, int):
        if value in (NORMAL, ANOMALOUS):
            return value
    elif isinstance(value, str):
        found = _LABEL_WORDS.get(value.strip().lower())
        if found is not None:
            return found
    raise ValueError(f"unknown label ({value!r}); expected one of {ACCEPTED_LABELS}")


def split_lines(text: str) -> tuple[str, ...]:
    """A log_sequence's lines: split on newlines, trailing '\\r' removed, blank lines dropped."""
    return tuple(line.rstrip("\r") for line in text.split("\n") if line.strip())


def parse_record(text: str, location: str, default_id: str, require_label: bool = True) -> Session:
    """One JSONL line -> Session; InvalidRecord naming location, what is wrong and the bad value. Without
    require_label a record may lack its label (the session is unlabelled); a label that is there must be valid."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidRecord(location, "bad JSON", f"{err.msg} at char {err.pos}: {_clip(text)!r}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(location, "not a JSON object", _clip(text))
    for name in ("log_sequence", "label") if require_label else ("log_sequence",):
        if name not in obj:
            raise InvalidRecord(location, f"missing field '{name}'", f"fields: {', '.join(sorted(obj)) or 'none'}")
    sequence = obj["log_sequence"]
    if not isinstance(sequence, str):
        raise InvalidRecord(location, "log_sequence is not a string", _clip(repr(sequence)))
    try:
        label = parse_label(obj["label"]) if "label" in obj else NORMAL
    except ValueError:
        raise InvalidRecord(location, "unknown label",
                            f"{obj['label']!r}; expected one of {ACCEPTED_LABELS}") from None
    lines = split_lines(sequence)
    if not lines:
        raise InvalidRecord(location, "empty log_sequence", repr(sequence[:80]))
    session_id = obj.get("session_id")
    session_id = default_id if session_id is None or session_id == "" else str(session_id)
    return Session(session_id=session_id, lines=lines, label=label, source=location, labelled="label" in obj)


def require_file(path: str | Path) -> Path:
    """`path` as a Path; FileNotFoundError naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


def load_jsonl(path: str | Path, skip_invalid: bool = False, report: SkipReport | None = None,
               require_labels: bool = True) -> list[Session]:
    """Read a sessions JSONL file. Blank lines are not records. Invalid records raise ValueError
    ("FILE:LINE: what (bad value)") unless skip_invalid, in which case they are counted in `report`. Without
    require_labels, records without a label are read as unlabelled sessions."""
    path = require_file(path)
    report = report if report is not None else SkipReport()
    sessions: list[Session] = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            location = f"{path}:{number}"
            try:
                sessions.append(parse_record(text.rstrip("\r\n"), location, default_id=f"{path.stem}:{number}",
                                             require_label=require_labels))
            except InvalidRecord as err:
                if not skip_invalid:
                    raise
                report.add(err.reason, str(err))
    return sessions


def load_sessions(paths: Sequence[str | Path], skip_invalid: bool = False,
                  require_labels: bool = True) -> tuple[list[Session], SkipReport]:
    """Read and concatenate several JSONL files; an empty result is a ValueError."""
    report = SkipReport()
    sessions: list[Session] = []
    for path in paths:
        sessions.extend(load_jsonl(path, skip_invalid=skip_invalid, report=report, require_labels=require_labels))
    report.log(", ".join(str(p) for p in paths))
    if not sessions:
        raise ValueError(f"no valid sessions in {', '.join(str(p) for p in paths) or '(no files)'}")
    return sessions, report


def write_jsonl(path: str | Path, sessions: Iterable[Session], extra: dict[str, Any] | None = None) -> None:
    """Write sessions in the seed's format (label as 正常/异常) plus session_id and any extra fields."""
    with Path(path).open("w", encoding="utf-8") as handle:
        for session in sessions:
            record = {"session_id": session.session_id, "label": "异常" if session.label else "正常",
                      "log_sequence": "\n".join(session.lines), **(extra or {})}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def label_counts(sessions: Sequence[Session]) -> dict[str, int]:
    anomalous = sum(s.label for s in sessions)
    return {"n": len(sessions), "n_anomalous": anomalous, "n_normal": len(sessions) - anomalous}


def _clip(text: str, limit: int = 80) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
