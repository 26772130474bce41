"""Faults on the real (embedded) broker, with the fake scorer: each test injects one fault into a workload whose
windows and alerts are known in advance, and asserts the figures (windows lost, anomalies missed, duplicate
alerts), which it also records (faults.record) for RELIABILITY.md."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from faults import (DUPLICATED_LINES, Workload, alert_outcome, assignments, produce, read_alerts, read_scored, record,
                    redelivered_lines_skipped, wait_scored)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

# Until the processor drops lines the route publishes twice, a crash or a rebalance shifts later windows.
needs_redelivery_dedup = pytest.mark.xfail(not redelivered_lines_skipped(), reason=DUPLICATED_LINES, strict=False)


def fake_env(path: Path, delay: float = 0.0) -> dict[str, str]:
    return {"LOGMOE_FAKE_SCORED_LOG": str(path), "LOGMOE_FAKE_DELAY": str(delay)}


def assert_complete(outcome: dict, scored, workload: Workload) -> None:
    assert not scored.malformed, scored.malformed[:3]
    assert workload.windows() - scored.distinct == set(), "windows lost"
    assert scored.distinct - workload.windows() == set(), "windows scored that the rule never makes"
    assert outcome["missing_alert_ids"] == 0 and outcome["missed_anomalous_sessions"] == 0, outcome
    assert outcome["unexpected_alert_ids"] == 0 and outcome["false_alarm_sessions"] == 0, outcome
    assert outcome["duplicates_identical"], "a duplicate alert differs from its first copy"


@needs_redelivery_dedup
@pytest.mark.timeout(150)
def test_worker_sigkill_mid_stream_loses_no_window_and_misses_no_anomaly(kafka, start_worker, names, tmp_path):
    work = Workload(sessions=60)
    settings = dict(session_idle=4.0, hop=work.hop, alert_cooldown_lines=0, **names)
    logs = [tmp_path / "scored-0.jsonl", tmp_path / "scored-1.jsonl"]
    first = start_worker(env=fake_env(logs[0], delay=0.01), **settings)
    first.wait_ready()
    produce(kafka.bootstrap, names["topic_logs"], work.messages(range(10)))  # windows ending at 8 and 10 due
    due = {(s, e) for s, e in work.windows() if e <= 10}
    at_kill = wait_scored(logs[:1], set(list(due)[: len(due) // 3]), timeout=60, alive=first.metrics)
    first.kill()
    started = time.monotonic()
    produce(kafka.bootstrap, names["topic_logs"], work.messages(range(10, work.length)))
    second = start_worker(env=fake_env(logs[1]), **settings)
    second.wait_for(lambda m: m.get("sessions_closed_idle", 0) >= work.sessions and m.get("open_sessions") == 0, 90)
    scored = wait_scored(logs, work.windows(), timeout=5)
    alerts = read_alerts(kafka.bootstrap, names["topic_alerts"])
    (tmp_path / "alerts.json").write_text(json.dumps(alerts))  # for a post-mortem
    outcome = alert_outcome(alerts, work)
    record("worker SIGKILL", {"sessions": work.sessions, "windows_expected": len(work.windows()),
                              "windows_scored_before_kill": len(at_kill.distinct),
                              "windows_lost": len(work.windows() - scored.distinct),
                              "windows_rescored": scored.duplicates, **outcome,
                              "recovery_s": round(time.monotonic() - started, 1)})
    assert_complete(outcome, scored, work)


@needs_redelivery_dedup
@pytest.mark.timeout(180)
def test_second_worker_takes_over_partitions_and_sessions_continue_from_the_changelog(kafka, start_worker, names,
                                                                                       tmp_path):
    work = Workload(sessions=40)
    # Idle well above a rebalance (two 6 s session timeouts), so no session closes while partitions move.
    settings = dict(session_idle=12.0, hop=work.hop, alert_cooldown_lines=0, **names)
    logs = [tmp_path / "scored-0.jsonl", tmp_path / "scored-1.jsonl"]
    first = start_worker(env=fake_env(logs[0]), **settings)
    first.wait_ready()
    produce(kafka.bootstrap, names["topic_logs"], work.messages(range(6)))
    first.wait_for(lambda m: m.get("lines_in", 0) >= 6 * work.sessions, 60)
    started = time.monotonic()
    second = start_worker(env=fake_env(logs[1]), **settings)
    second.wait_ready(90)
    joined_s = time.monotonic() - started
    produce(kafka.bootstrap, names["topic_logs"], work.messages(range(6, 10)))
    wait_scored(logs, {(s, e) for s, e in work.windows() if e <= 10}, timeout=60, alive=second.metrics)
    assert first.stop() == 0
    produce(kafka.bootstrap, names["topic_logs"], work.messages(range(10, work.length)))
    second.wait_for(lambda m: m.get("sessions_closed_idle", 0) >= work.sessions and m.get("open_sessions") == 0, 90)
    scored = wait_scored(logs, work.windows(), timeout=5)
    outcome = alert_outcome(read_alerts(kafka.bootstrap, names["topic_alerts"]), work)

    by_first, by_second = read_scored(logs[0]).distinct, read_scored(logs[1]).distinct
    continued = {s for s, _ in by_first} & {s for s, _ in by_second}  # scored on both owners, in order
    topic = names["topic_sessions"]
    first_parts, second_parts = assignments(first.log_text(), topic), assignments(second.log_text(), topic)
    record("scale-out: 2nd worker joins, 1st leaves", {
        "sessions": work.sessions, "partitions": 4, "first_worker_assignments": [sorted(p) for p in first_parts],
        "second_worker_assignments": [sorted(p) for p in second_parts], "join_s": round(joined_s, 1),
        "sessions_continued_on_new_owner": len(continued), "windows_expected": len(work.windows()),
        "windows_lost": len(work.windows() - scored.distinct), "windows_rescored": scored.duplicates, **outcome})
    assert first_parts[0] == {0, 1, 2, 3} and 0 < len(first_parts[-1]) < 4  # shared after the join
    assert second_parts[-1] == {0, 1, 2, 3}  # everything after the first left
    assert continued, "no session moved between the workers"
    assert_complete(outcome, scored, work)


HOSTILE = {"invalid_utf8": 1800, "nul_bytes": 1200, "control_chars": 1200, "empty": 1000, "oversized": 20,
           "deep_json": 980, "not_envelope": 1900, "wrong_type": 1900}  # 10,000 lines


@pytest.mark.timeout(240)
def test_ten_thousand_hostile_lines_are_counted_by_reason_and_normal_sessions_score_as_before(
        kafka, start_worker, names, tmp_path):
    from hostile import MAX_LINE_BYTES, expected_counts, hostile_lines

    work = Workload(sessions=30)
    hostile = hostile_lines(HOSTILE)
    assert len(hostile) == 10_000
    expected = expected_counts(hostile)
    normal = work.messages(range(work.length))
    rng = random.Random(7)
    stream: list[tuple[bytes | None, bytes | None]] = list(normal)
    for _, value in hostile:  # hostile lines at random places, unkeyed; the normal lines keep their order
        key = b"tombstone" if value is None else None  # Kafka needs a key or a value
        stream.insert(rng.randrange(len(stream) + 1), (key, value))
    log = tmp_path / "scored.jsonl"
    worker = start_worker(env=fake_env(log), session_idle=6.0, hop=work.hop, alert_cooldown_lines=0,
                          max_line_bytes=MAX_LINE_BYTES, **names)
    worker.wait_ready()
    rss_ready = worker.rss_mb()
    started = time.monotonic()
    produce(kafka.bootstrap, names["topic_logs"], stream)
    reasons = [k for k in expected if k.startswith("bad_")]
    m = worker.wait_for(lambda m: sum(m.get(r, 0) for r in reasons) >= sum(expected[r] for r in reasons)
                        and m.get("lines_in", 0) >= len(normal) + expected["kept"]
                        and m.get("sessions_closed_idle", 0) >= work.sessions + 1 and m.get("open_sessions") == 0,
                        150)
    elapsed = time.monotonic() - started
    scored = wait_scored([log], work.windows(), timeout=5)
    outcome = alert_outcome(read_alerts(kafka.bootstrap, names["topic_alerts"]), work)
    counted = {r: m.get(r, 0) for r in reasons}
    record("10,000 hostile lines", {
        "hostile_lines": len(hostile), "by_kind": HOSTILE, "bad_expected": {r: expected[r] for r in reasons},
        "bad_counted": counted, "kept_expected": expected["kept"], "lines_in": m["lines_in"],
        "lines_utf8_replaced": m.get("lines_utf8_replaced", 0), "windows_expected": len(work.windows()),
        "windows_lost": len(work.windows() - scored.distinct), "worker_alive": worker.proc.poll() is None,
        "agent_crashes": worker.log_text().count("Crashed reason="), "rss_mb_ready": round(rss_ready),
        "rss_mb_after": round(worker.rss_mb()), "seconds": round(elapsed, 1), **outcome})
    assert worker.proc.poll() is None and "Crashed reason=" not in worker.log_text()
    assert counted == {r: expected[r] for r in reasons}
    assert m["lines_in"] == len(normal) + expected["kept"]
    assert m.get("lines_utf8_replaced", 0) == expected["lines_utf8_replaced"]
    assert_complete(outcome, scored, work)
