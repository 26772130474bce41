"""Input parsing and session keys: one Kafka message in, one LogLine (or a BadInput with its reason) out."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, AnyStr

# Reasons a message is skipped; each is a counter name in the worker's metrics.
BAD_REASONS = ("empty", "oversized", "not_envelope", "wrong_type")


class BadInput(ValueError):
    """A message the worker skips (and counts under `reason`)."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in BAD_REASONS:
            raise ValueError(f"unknown bad-input reason {reason!r}; allowed: {BAD_REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class LogLine:
    """One parsed log line; ts and source come from a JSON envelope when there is one."""

    line: str
    ts: float | str | None = None
    source: str | None = None
    replaced_bytes: bool = False  # undecodable UTF-8 was replaced with U+FFFD


def parse_message(value: bytes | str | None, max_bytes: int) -> LogLine:
    """Plain UTF-8 text, or a JSON envelope ``{"line": str, "ts": number|str, "source": str}``."""
    if value is None:
        raise BadInput("empty", "message has no value")
    raw = _to_bytes(value) if isinstance(value, str) else bytes(value)
    if len(raw) > max_bytes:
        raise BadInput("oversized", f"{len(raw)} bytes > max_line_bytes={max_bytes}")
    text = raw.decode("utf-8", "replace")
    replaced = "\ufffd" in text and b"\xef\xbf\xbd" not in raw
    stripped = text.strip()
    if not stripped:
        raise BadInput("empty", "message is blank")
    if stripped[0] in "{[":
        try:
            doc = json.loads(stripped)
        except ValueError:
            doc = None  # a plain line that happens to start with a bracket
        except RecursionError:
            raise BadInput("not_envelope", "JSON nested too deeply to parse") from None
        if isinstance(doc, (dict, list)):
            return _from_envelope(doc, replaced)
    return LogLine(line=text.rstrip("\r\n"), replaced_bytes=replaced)


def _from_envelope(doc: dict[str, Any] | list[Any], replaced: bool) -> LogLine:
    if not isinstance(doc, dict) or "line" not in doc:
        raise BadInput("not_envelope", f"JSON without a 'line' field: {str(doc)[:80]!r}")
    unknown = set(doc) - {"line", "ts", "source"}
    if unknown:
        raise BadInput("not_envelope", f"envelope has unknown field(s) {sorted(unknown)}")
    line, ts, source = doc["line"], doc.get("ts"), doc.get("source")
    if not isinstance(line, str):
        raise BadInput("wrong_type", f"envelope 'line' must be a string, got {type(line).__name__}")
    if not line.strip():
        raise BadInput("empty", "envelope 'line' is blank")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float, str))):
        raise BadInput("wrong_type", f"envelope 'ts' must be a number or a string, got {ts!r}")
    if source is not None and not isinstance(source, str):
        raise BadInput("wrong_type", f"envelope 'source' must be a string, got {source!r}")
    # JSON may escape lone surrogates ("\ud800"), which no UTF-8 can carry: every later encode (the session key,
    # the sessions topic, the alert) would raise. They are replaced like undecodable bytes, and counted alike.
    line, fixed_line = _replace_surrogates(line)
    source, fixed_source = _replace_surrogates(source) if source is not None else (None, False)
    ts, fixed_ts = _replace_surrogates(ts) if isinstance(ts, str) else (ts, False)
    replaced = replaced or fixed_line or fixed_source or fixed_ts
    return LogLine(line=line.rstrip("\r\n"), ts=ts, source=source, replaced_bytes=replaced)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_surrogates(text: str) -> tuple[str, bool]:
    """`text` with every lone surrogate replaced by U+FFFD; whether there was one."""
    fixed, count = _SURROGATE.subn("\ufffd", text)
    return fixed, count > 0


def _to_bytes(value: str) -> bytes:
    """A str message as bytes: surrogate escapes (from a surrogateescape decode) back to their bytes, any other
    lone surrogate as the invalid UTF-8 it would be on the wire (then replaced, like other undecodable bytes)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def match_key(match: re.Match[AnyStr]) -> AnyStr:
    """The key a regex match gives: group 1, else (no group, or group 1 took no part in the match, as in
    `request_id=(\\w+)|trace_id=[0-9a-f]+`) the whole match."""
    if match.re.groups:
        group = match.group(1)
        if group is not None:
            return group
    return match.group(0)


class SessionKeyer:
    """Session key of a line: the first regex that matches (group 1, else the whole match), else the
    message key, else the envelope source, else the catch-all key."""

    def __init__(self, patterns: Sequence[str], catch_all: str = "-") -> None:
        self.patterns = []
        for pattern in patterns:
            try:
                self.patterns.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"session key regex {pattern!r} does not compile: {exc}") from None
        self.catch_all = catch_all

    def key_for(self, line: str, message_key: bytes | str | None = None, source: str | None = None) -> str:
        for pattern in self.patterns:
            match = pattern.search(line)
            if match:
                return match_key(match)
        if message_key:
            return message_key.decode("utf-8", "replace") if isinstance(message_key, bytes) else message_key
        if source:
            return source
        return self.catch_all
