"""Pauses inside sessions, read from the timestamps that lead their lines: how long the worker must wait before it
may close a session.

The worker closes a session after `session_idle` seconds without a line and scores what it holds. A pause inside a
session longer than that cuts it in two, and the model scores parts it never saw in training. On real HDFS a block
is written in seconds and deleted hours later: cut at 300 s, the deletions alone read as a new session, and the
model flags them (measured in BENCHMARKS.md). So training measures the longest pause inside a normal training
session and stores a `session_idle` the worker uses unless told otherwise (LogMoEConfig.session_idle).

Timestamps are read from the first characters of a line, in the formats of common logs (loghub's systems among
them); a line without one is skipped. Only differences matter, so time zones are ignored, and formats without a
year (syslog, Android logcat) take one fixed year.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

MARGIN = 1.1  # session_idle = the longest normal pause, plus 10% for delivery jitter
MIN_IDLE = 5.0  # never below the worker's built-in default: a pause of 0 s still needs time for delivery
HEAD = 64  # characters of a line searched for its timestamp
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                       "dec"), start=1)}
_NO_YEAR = 2000  # syslog, logcat and Proxifier lines carry no year; a leap year, so "Feb 29" parses


def _stamp(year: str | int, month: str | int, day: str | int, hh: str, mm: str, ss: str, frac: str | None) -> float:
    y = int(year)
    y = y + 2000 if y < 100 else y
    moment = datetime(y, int(month), int(day), int(hh), int(mm), int(ss), tzinfo=timezone.utc)
    return moment.timestamp() + (float(f"0.{frac}") if frac else 0.0)


def _month(name: str) -> int:
    return _MONTHS[name[:3].lower()]


# (pattern, match -> seconds); tried in order, the first that matches in the line's first HEAD characters wins
_FORMATS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], float]]] = [
    # epoch seconds leading the line (BGL, Thunderbird without their label column)
    (re.compile(r"^(\d{10})(?:\.(\d+))?\b"), lambda m: float(m[1]) + (float(f"0.{m[2]}") if m[2] else 0.0)),
    # ISO 8601 and kin: 2015-10-18 18:01:47,978 / 2016-09-28T04:30:30Z / 2005-06-03-15.42.50.675872
    (re.compile(r"\b(\d{4})-(\d{2})-(\d{2})[T -](\d{2})[:.](\d{2})[:.](\d{2})(?:[.,](\d+))?"),
     lambda m: _stamp(m[1], m[2], m[3], m[4], m[5], m[6], m[7])),
    # HDFS: 081109 203530
    (re.compile(r"^(\d{2})(\d{2})(\d{2}) (\d{2})(\d{2})(\d{2})\b"),
     lambda m: _stamp(m[1], m[2], m[3], m[4], m[5], m[6], None)),
    # Spark: 17/06/09 20:10:40
    (re.compile(r"^(\d{2})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})\b"),
     lambda m: _stamp(m[1], m[2], m[3], m[4], m[5], m[6], None)),
    # Apache: [Sun Dec 04 04:47:44 2005]
    (re.compile(r"^\[\w{3} (\w{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) (\d{4})\]"),
     lambda m: _stamp(m[6], _month(m[1]), m[2], m[3], m[4], m[5], None)),
    # HealthApp: 20171223-22:15:29:606
    (re.compile(r"^(\d{4})(\d{2})(\d{2})-(\d{2}):(\d{2}):(\d{2})(?::(\d+))?"),
     lambda m: _stamp(m[1], m[2], m[3], m[4], m[5], m[6], m[7])),
    # Android logcat: 03-17 16:13:38.811 (no year)
    (re.compile(r"^(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"),
     lambda m: _stamp(_NO_YEAR, m[1], m[2], m[3], m[4], m[5], m[6])),
    # Proxifier: [10.30 16:49:06] (no year)
    (re.compile(r"^\[(\d{2})\.(\d{2}) (\d{2}):(\d{2}):(\d{2})\]"),
     lambda m: _stamp(_NO_YEAR, m[1], m[2], m[3], m[4], m[5], None)),
    # syslog: Jun 14 15:16:01 (no year)
    (re.compile(r"^(?i:(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec))\w* +(\d{1,2}) (\d{2}):(\d{2}):(\d{2})\b"),
     lambda m: _stamp(_NO_YEAR, _month(m[1]), m[2], m[3], m[4], m[5], None)),
]


def line_time(line: str) -> float | None:
    """Seconds (of an arbitrary epoch) of the timestamp leading `line`, or None when it has none we read."""
    head = line[:HEAD]
    for pattern, convert in _FORMATS:
        found = pattern.search(head)
        if found is not None:
            try:
                return convert(found)
            except (ValueError, KeyError):  # looked like a timestamp but is not a date (month 13, ...)
                return None
    return None


def gaps(times: Sequence[float | None]) -> list[float | None]:
    """Per line of a session (by its `times`, None where untimed): the seconds since the timestamped line before it
    (negative when out of order); None for an untimed line and for the first timed one. Lines without a timestamp
    are passed over, so a pause is measured between the timed lines around them."""
    out: list[float | None] = []
    last: float | None = None
    for t in times:
        out.append(None if t is None or last is None else t - last)
        last = t if t is not None else last
    return out


def longest_pause(lines: Sequence[str]) -> float | None:
    """The longest time between two consecutive timestamped lines of one session (lines out of order count 0);
    None when fewer than two of its lines carry a timestamp."""
    measured = [g for g in gaps([line_time(line) for line in lines]) if g is not None]
    return max(max(0.0, g) for g in measured) if measured else None


@dataclass(frozen=True)
class PauseReport:
    """What training measured of the pauses inside its normal sessions (metrics.json "session_pauses")."""

    sessions: int  # normal training sessions of two lines or more
    timed: int  # those with two timestamped lines or more
    p50_s: float | None  # median of the sessions' longest pauses
    p99_s: float | None
    longest_s: float | None
    session_idle: float | None  # what the model stores for the worker; None: too few sessions timed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_pauses(sessions: Sequence[Sequence[str]]) -> PauseReport:
    """Pauses inside `sessions` (the normal training sessions' raw lines). A session_idle is suggested when at
    least half of the sessions of two lines or more carry timestamps: the longest pause times MARGIN, rounded up
    to whole seconds, and at least MIN_IDLE."""
    multi = [lines for lines in sessions if len(lines) >= 2]
    pauses = sorted(p for p in (longest_pause(lines) for lines in multi) if p is not None)
    if not pauses:
        return PauseReport(len(multi), 0, None, None, None, None)
    idle = max(MIN_IDLE, float(math.ceil(round(pauses[-1] * MARGIN, 6)))) if 2 * len(pauses) >= len(multi) else None
    return PauseReport(len(multi), len(pauses), pauses[len(pauses) // 2],
                       pauses[min(len(pauses) - 1, math.ceil(0.99 * len(pauses)) - 1)], pauses[-1], idle)
