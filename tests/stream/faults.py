"""Shared pieces of the fault tests: a workload whose windows and alerts are known in advance, the producer,
readers of what the workers did (windows scored, alerts), and the record of measured figures.

The workload: N interleaved sessions `request_id=s<i>`, each `length` lines `... step=<k> request_id=s<i>`;
the anomalous ones say ERROR at `error_step`. The fake scorer flags a window holding an ERROR line, so with
the windowing rule of model.windowing the expected windows and alerts are computed, not guessed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from model.windowing import session_windows
from stream.tools import consume_alerts

WINDOW = 8  # the fake scorer's max_window
_STEP = re.compile(rb"step=(\d+) request_id=(\w+)")


@dataclass(frozen=True)
class Workload:
    sessions: int
    length: int = 13
    hop: int = 2
    anomaly_every: int = 4  # sessions 0, 4, 8, ... are anomalous
    error_step: int = 2
    pad: int = 0  # extra bytes per line (memory tests)

    @property
    def ids(self) -> list[str]:
        return [f"s{i}" for i in range(self.sessions)]

    @property
    def anomalous(self) -> set[str]:
        return {f"s{i}" for i in range(0, self.sessions, self.anomaly_every)}

    def line(self, sid: str, step: int) -> bytes:
        kind = "ERROR svc failed" if sid in self.anomalous and step == self.error_step else "INFO svc ok"
        return f"{kind} {'x' * self.pad}step={step} request_id={sid}".encode()

    def messages(self, steps: Iterable[int]) -> list[tuple[bytes, bytes]]:
        """(key, value) pairs, sessions interleaved step by step; keyed by session, as README asks."""
        return [(sid.encode(), self.line(sid, step)) for step in steps for sid in self.ids]

    def windows(self) -> set[tuple[str, int]]:
        """(session, end line) of every window the rule scores, the final one at close included."""
        ends = [w[-1] for w in session_windows(list(range(1, self.length + 1)), WINDOW, self.hop)]
        return {(sid, end) for sid in self.ids for end in ends}

    def alerts(self, placed: Placed) -> dict[str, tuple[str, int]]:
        """alert_id -> (session, end) for every window holding an ERROR line (alert_cooldown_lines=0). The id
        names the input partition and offset of the window's last line: `placed` (from `produce`) says where each
        line went, so a redelivered window must come back with the id its first copy had."""
        error_line = self.error_step + 1
        return {readme_alert_id(sid, end, *placed[(sid, end - 1)]): (sid, end) for sid, end in self.windows()
                if sid in self.anomalous and end - WINDOW < error_line <= end}

    def placed(self, messages: list[tuple[bytes | None, bytes | None]], where: list[tuple[int, int]]) -> Placed:
        """(session, step) -> (partition, offset) of this workload's lines among produced `messages`."""
        out: Placed = {}
        for (_, value), position in zip(messages, where, strict=True):
            found = _STEP.search(value or b"")
            if found is None:
                continue
            sid, step = found.group(2).decode(), int(found.group(1))
            if sid in self.ids and value == self.line(sid, step):
                out[(sid, step)] = position
        return out


Placed = dict[tuple[str, int], tuple[int, int]]  # (session, step) -> (input partition, offset)


def readme_alert_id(session: str, end: int, partition: int, offset: int) -> str:
    """README's alert_id, written out here rather than taken from stream.alerts, so a changed formula (which would
    break consumers' dropping of redeliveries across worker versions) fails these tests too."""
    return hashlib.sha256(f"{session}\n{end}\n{partition}:{offset}".encode()).hexdigest()[:32]


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]],
            retries: int = 3) -> list[tuple[int, int]]:
    """One record per batch (the embedded broker's end offsets stay right), every send confirmed; the
    (partition, offset) each message got."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, batch_size=0, linger_ms=0, acks=1, retries=retries,
                             max_request_size=4 * 1024 * 1024, enable_idempotence=False)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in messages]
        return [(meta.partition, meta.offset) for meta in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close()


@dataclass
class Scored:
    """Windows the fake scorer scored, read from its log(s): each (session, end) with how often."""

    counts: Counter[tuple[str, int]] = field(default_factory=Counter)
    malformed: list[list[str]] = field(default_factory=list)  # not consecutive lines of one session
    other: int = 0  # windows of sessions outside the workload (the catch-all session of hostile lines)

    @property
    def distinct(self) -> set[tuple[str, int]]:
        return set(self.counts)

    @property
    def duplicates(self) -> int:
        return sum(self.counts.values()) - len(self.counts)


def read_scored(*paths: Path) -> Scored:
    out = Scored()
    for path in paths:
        if not path.exists():
            continue
        for raw in path.read_bytes().splitlines():
            try:
                lines = json.loads(raw)
            except ValueError:
                continue  # a write cut short by SIGKILL; the batch is scored again after redelivery
            keys = [_STEP.search(ln.encode("utf-8", "surrogateescape")) for ln in lines]
            if not any(keys):
                out.other += 1
                continue
            if not all(keys):
                out.malformed.append(lines)
                continue
            sids = {k.group(2).decode() for k in keys}
            steps = [int(k.group(1)) for k in keys]
            end = steps[-1] + 1
            if len(sids) != 1 or steps != list(range(end - len(steps), end)) or len(steps) != min(end, WINDOW):
                out.malformed.append(lines)
                continue
            out.counts[(sids.pop(), end)] += 1
    return out


def wait_scored(paths: list[Path], expected: set[tuple[str, int]], timeout: float, alive: Any = None) -> Scored:
    """Until every expected window was scored (or timeout); `alive()` may raise if a worker died."""
    deadline = time.monotonic() + timeout
    while True:
        scored = read_scored(*paths)
        if expected <= scored.distinct or time.monotonic() > deadline:
            return scored
        if alive is not None:
            alive()
        time.sleep(0.3)


def read_alerts(bootstrap: str, topic: str, expect: set[str] | None = None, quiet_for: float = 3.0,
                timeout: float = 60.0, count: int = 0) -> list[dict[str, Any]]:
    """Every alert on the topic: read until the `expect`ed alert ids have all arrived (on a loaded machine the first
    fetch alone can take seconds) and at least `count` alerts, and then no new alert for `quiet_for` seconds (so
    extra or duplicate alerts are read too), or until `timeout`."""
    got: list[dict[str, Any]] = []
    started = time.monotonic()
    last = [started, 0]  # when the number of alerts read last changed, and that number

    def done() -> bool:
        now = time.monotonic()
        if len(got) != last[1]:
            last[:] = [now, len(got)]
        arrived = len(got) >= count and (expect is None or expect <= {a["alert_id"] for a in got})
        return now - started > timeout or (arrived and now - last[0] >= quiet_for)

    for alert in consume_alerts(bootstrap, topic, from_beginning=True, follow=True, stop=done):
        got.append(alert)
    return got


def alert_outcome(alerts: list[dict[str, Any]], workload: Workload, placed: Placed) -> dict[str, Any]:
    """Missed anomalies, false alerts, and duplicates (copies of an alert_id) with whether they are identical."""
    expected = workload.alerts(placed)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for a in alerts:
        by_id.setdefault(a["alert_id"], []).append(a)
    same = all(len({json.dumps({k: v for k, v in a.items() if k != "detected_at"}, sort_keys=True)
                    for a in copies}) == 1 for copies in by_id.values())
    alerted = {a["session"] for a in alerts}
    foreign = [a for a in alerts if not own_lines_only(a)]
    wrong = [a for a in alerts if not fields_match_input(a, workload, placed)]
    return {"alerts_with_foreign_lines": len(foreign), "alerts_with_wrong_fields": len(wrong),
            "alerts": len(alerts), "alert_ids": len(by_id),
            "expected_alert_ids": len(expected), "missing_alert_ids": len(set(expected) - set(by_id)),
            "unexpected_alert_ids": len(set(by_id) - set(expected)),
            "missed_anomalous_sessions": len(workload.anomalous - alerted),
            "false_alarm_sessions": len(alerted - workload.anomalous),
            "duplicate_alerts": len(alerts) - len(by_id), "duplicates_identical": same}


def own_lines_only(alert: dict[str, Any]) -> bool:
    """The alert carries exactly its window: lines start..end, all of its own session, at most WINDOW."""
    w, lines = alert["window"], alert["lines"]
    tag = f"request_id={alert['session']}"
    return (len(lines) == w["end"] - w["start"] + 1 == w["n_lines"] <= WINDOW
            and [ln["n"] for ln in lines] == list(range(w["start"], w["end"] + 1))
            and all(ln["line"].endswith(tag) and f"step={ln['n'] - 1} " in ln["line"] for ln in lines))


def fields_match_input(alert: dict[str, Any], workload: Workload, placed: Placed) -> bool:
    """The alert's window and lines name the input records they came from (`placed`: where `produce` put each
    line), carry those records' Kafka timestamps, and only the session's last window is `final`."""
    w, lines, sid = alert["window"], alert["lines"], alert["session"]
    where = [placed.get((sid, ln["n"] - 1)) for ln in lines]
    if None in where:
        return False
    partitions = {p for p, _ in where}
    stamps = [ln["ts"] for ln in lines]
    return ([ln["offset"] for ln in lines] == [o for _, o in where]
            and w["partition"] == (partitions.pop() if len(partitions) == 1 else None)
            and (w["first_offset"], w["last_offset"]) == (where[0][1], where[-1][1])
            and (w["first_ts"], w["last_ts"]) == (stamps[0], stamps[-1])
            and all(isinstance(t, (int, float)) and t > 1e9 for t in stamps)  # Kafka timestamps, in seconds
            and w["final"] == (w["end"] == workload.length))


def record(fault: str, figures: dict[str, Any]) -> None:
    """Print the measured figures (pytest -s shows them) and append them to $LOGMOE_RELIABILITY_JSON if set
    (how RELIABILITY.md's table was filled)."""
    line = json.dumps({"fault": fault, **figures}, sort_keys=True)
    print(f"\nRELIABILITY {line}")
    target = os.environ.get("LOGMOE_RELIABILITY_JSON")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


_ASSIGNED = re.compile(r"^\|\s*(\S+)\s*\|\s*\{([^}]*)\}\s*\|", re.M)


def assignments(log_text: str, topic: str) -> list[set[int]]:
    """The partitions of `topic` in each "newly assigned partitions" table of the Faust group in a worker log, in
    order (the batch route's group, `<app_id>-route`, reads another topic and is left out)."""
    out = []
    for block in log_text.split("Setting newly assigned partitions")[1:]:
        block, _, group = block.partition("for group")
        if group.split(None, 1)[0].endswith("-route"):
            continue
        parts: set[int] = set()
        for name, spec in _ASSIGNED.findall(block):
            if name != topic:
                continue
            for piece in spec.split(","):
                lo, _, hi = piece.strip().partition("-")
                if lo:
                    parts.update(range(int(lo), int(hi or lo) + 1))
        out.append(parts)
    return out
