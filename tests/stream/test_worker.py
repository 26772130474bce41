"""The worker against the embedded broker, with the fake scorer (no model needed): input handling,
idle closing, alert publishing, restart. The end-to-end test with a trained model is in test_e2e.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from stream.broker import EmbeddedBroker
from stream.tools import consume_alerts

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def produce(bootstrap: str, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, batch_size=0, linger_ms=0, acks=1,
                             max_request_size=4 * 1024 * 1024)
    try:
        for value in values:
            producer.send(topic, value=value, key=key).get(timeout=30)
    finally:
        producer.close()


def sessions_text(ids: list[str], anomalous: set[str], length: int = 6, error_step: int | None = None) -> list[bytes]:
    """Interleaved sessions; an anomalous one has an ERROR line at error_step (default: the middle)."""
    error_step = length // 2 if error_step is None else error_step
    out = []
    for step in range(length):
        for sid in ids:
            text = f"INFO svc step={step} request_id={sid}"
            if sid in anomalous and step == error_step:
                text = f"ERROR svc failed request_id={sid}"
            out.append(text.encode())
    return out


def changelog_counts(bootstrap: str, topic: str) -> dict[str, int]:
    """Each open session's line count as the session table's changelog has it (the latest record of each key)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    latest: dict[str, Any] = {}
    try:
        for record in consumer:
            key = record.key.decode("utf-8")
            key = json.loads(key) if key.startswith('"') else key  # raw or JSON keys, as the serializer is set
            latest[key] = None if record.value is None else json.loads(record.value)
    finally:
        consumer.close()
    return {key: state["count"] for key, state in latest.items() if state}


def alerts_of(kafka: EmbeddedBroker, topic: str, expect: Callable[[list[dict[str, Any]]], bool],
              timeout: float = 40.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for alert in consume_alerts(kafka.bootstrap, topic, from_beginning=True, follow=True,
                                stop=lambda: time.monotonic() > deadline or expect(got)):
        got.append(alert)
    return got


@pytest.mark.timeout(240)
def test_bad_input_is_counted_and_skipped_and_the_worker_keeps_going(kafka, start_worker, names) -> None:
    # Idle well above the gaps between a session's lines (a 1 MB line and a second producer come between them on
    # a loaded machine): a session closed early would be opened and closed twice.
    worker = start_worker(session_idle=4.0, max_line_bytes=65536, **names)
    worker.wait_ready()
    good = sessions_text(["g1", "g2", "b1"], anomalous={"b1"})
    bad = [
        b"INFO svc \xff\xfe bytes request_id=g3",  # invalid UTF-8: replaced, kept
        b"x" * (1024 * 1024),  # a 1 MB line
        b"", b"   ",
        b'{"not": "an envelope"}',
        b'{"line": 42}',
    ]
    # Lone surrogate escapes: valid JSON, no valid UTF-8 (issue 18.3: they crashed the route agent mid-batch).
    crafted = [json.dumps(doc).encode() for doc in ({"line": "GET /x \ud800 request_id=g1"},
                                                    {"line": "INFO svc step=9 request_id=g2", "ts": "t\udfff"},
                                                    {"line": "INFO from a source", "source": "web-\ud800"})]
    produce(kafka.bootstrap, names["topic_logs"], bad[:3] + good[:9] + crafted + bad[3:] + good[9:])
    after = sessions_text(["g4", "b2"], anomalous={"b2"})
    produce(kafka.bootstrap, names["topic_logs"], after)
    m = worker.wait_drained(len(bad) + len(good) + len(crafted) + len(after), 120)
    assert m["sessions_closed_idle"] == 7  # g1-g4, b1, b2 and "web-\ufffd"
    assert m["bad_oversized"] == 1 and m["bad_empty"] == 2 and m["bad_not_envelope"] == 1 and m["bad_wrong_type"] == 1
    assert m["lines_in"] == len(good) + len(after) + 1 + len(crafted) and m["lines_utf8_replaced"] == 1 + 3
    assert "Crashed reason=" not in worker.log_text()
    alerts = alerts_of(kafka, names["topic_alerts"], lambda got: {"b1", "b2"} <= {a["session"] for a in got})
    assert {a["session"] for a in alerts} == {"b1", "b2"}
    assert worker.proc.poll() is None


@pytest.mark.timeout(240)
def test_without_session_idle_the_worker_waits_the_models_longest_normal_pause(kafka, start_worker, names) -> None:
    """session_idle unset: a session closes after the model's session_idle (train.pauses), not the built-in 5 s."""
    worker = start_worker(env={"LOGMOE_FAKE_SESSION_IDLE": "12"}, **names)
    worker.wait_ready()
    lines = sessions_text(["s1"], anomalous=set())
    produce(kafka.bootstrap, names["topic_logs"], lines)
    worker.wait_for(lambda m: m.get("sessions_opened") == 1, 60)
    time.sleep(7.0)  # past the built-in 5 s and a close scan
    m = worker.metrics()
    assert m.get("sessions_closed_idle", 0) == 0 and m["open_sessions"] == 1
    assert worker.wait_drained(len(lines), 60)["sessions_closed_idle"] == 1
    assert "sessions close after 12 s idle (the model's" in worker.log_text()


@pytest.mark.timeout(300)
def test_restart_mid_stream_loses_no_session_window(kafka, start_worker, names) -> None:
    ids = [f"s{i}" for i in range(12)]
    anomalous = {"s1", "s4", "s7", "s10"}
    # Window 8, hop 2: windows end at lines 8, 10, 12. The ERROR is line 3, before the restart, so only a
    # worker that recovered the first half of each session can still see it.
    lines = sessions_text(ids, anomalous, length=12, error_step=2)
    first = start_worker(session_idle=8.0, hop=2, **names)
    first.wait_ready()
    half = len(lines) // 2
    produce(kafka.bootstrap, names["topic_logs"], lines[:half])
    first.wait_for(lambda m: m.get("lines_applied", 0) >= half and m.get("open_sessions") == len(ids), 120)
    # The table writes of the last batch follow its metrics: wait until the changelog holds every session's first
    # half, which is what the second worker must recover.
    halves = {sid: half // len(ids) for sid in ids}
    changelog = f"{names['app_id']}-sessions-changelog"
    deadline = time.monotonic() + 60
    while (counts := changelog_counts(kafka.bootstrap, changelog)) != halves and time.monotonic() < deadline:
        time.sleep(0.5)
    assert counts == halves
    assert first.stop() == 0
    second = start_worker(session_idle=8.0, hop=2, **names)
    produce(kafka.bootstrap, names["topic_logs"], lines[half:])
    m = second.wait_for(lambda m: m.get("sessions_closed_idle", 0) >= len(ids), 180)
    # The second worker recovered every open session from the changelog: none was reopened from scratch.
    assert m.get("sessions_opened", 0) == 0, m
    alerts = alerts_of(kafka, names["topic_alerts"], lambda got: anomalous <= {a["session"] for a in got})
    assert {a["session"] for a in alerts} == anomalous
    ends = {(a["session"], a["window"]["end"]) for a in alerts}
    assert len({a["alert_id"] for a in alerts}) == len(ends)  # duplicates (redeliveries) share their id


@pytest.mark.timeout(240)
def test_open_sessions_beyond_the_cap_are_closed_early_and_counted(kafka, start_worker, names) -> None:
    worker = start_worker(session_idle=60.0, max_open_sessions=3, **names)
    worker.wait_ready()
    ids = [f"e{i}" for i in range(7)]
    produce(kafka.bootstrap, names["topic_logs"], sessions_text(ids, anomalous={"e0"}, length=3))
    m = worker.wait_for(lambda m: m.get("sessions_evicted_overflow", 0) >= 4 and m.get("open_sessions") == 3, 90)
    assert m["windows_scored"] == m["sessions_evicted_overflow"]  # each evicted session's window was scored
    assert m.get("sessions_closed_idle", 0) == 0
