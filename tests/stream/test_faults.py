"""Faults on the real (embedded) broker, with the fake scorer: each test injects one fault into a workload whose
windows and alerts are known in advance, and asserts the figures (windows lost, anomalies missed, duplicate
alerts), which it also records (faults.record) for RELIABILITY.md."""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from faults import Workload, alert_outcome, assignments, produce, read_alerts, read_scored, record, wait_scored

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def fake_env(path: Path, delay: float = 0.0) -> dict[str, str]:
    return {"LOGMOE_FAKE_SCORED_LOG": str(path), "LOGMOE_FAKE_DELAY": str(delay)}


def assert_complete(outcome: dict, scored, workload: Workload) -> None:
    assert not scored.malformed, scored.malformed[:3]
    assert workload.windows() - scored.distinct == set(), "windows lost"
    assert scored.distinct - workload.windows() == set(), "windows scored that the rule never makes"
    assert outcome["missing_alert_ids"] == 0 and outcome["missed_anomalous_sessions"] == 0, outcome
    assert outcome["unexpected_alert_ids"] == 0 and outcome["false_alarm_sessions"] == 0, outcome
    assert outcome["duplicates_identical"], "a duplicate alert differs from its first copy"
    assert outcome["alerts_with_foreign_lines"] == 0, "an alert carries lines outside its own window"
    assert outcome["alerts_with_wrong_fields"] == 0, "an alert's offsets, timestamps or final flag are not its lines'"


def closed_and_complete(fault: str, worker, logs: list[Path], kafka, names: dict[str, str], work: Workload,
                        placed: dict) -> None:
    """Once `worker` has closed every session: record the fault's figures, and assert no window was lost or wrong
    and every alert went out as expected."""
    worker.wait_for(lambda m: m.get("sessions_closed_idle", 0) >= work.sessions and m.get("open_sessions") == 0, 180)
    scored = wait_scored(logs, work.windows(), timeout=5)
    outcome = alert_outcome(read_alerts(kafka.bootstrap, names["topic_alerts"], expect=set(work.alerts(placed))),
                            work, placed)
    record(fault, {"sessions": work.sessions, "windows_expected": len(work.windows()),
                   "windows_lost": len(work.windows() - scored.distinct), "windows_rescored": scored.duplicates,
                   **outcome})
    assert_complete(outcome, scored, work)


@pytest.mark.timeout(300)
def test_worker_sigkill_mid_stream_loses_no_window_and_misses_no_anomaly(kafka, start_worker, names, tmp_path):
    work = Workload(sessions=60)
    settings = dict(session_idle=4.0, hop=work.hop, alert_cooldown_lines=0, **names)
    logs = [tmp_path / "scored-0.jsonl", tmp_path / "scored-1.jsonl"]
    # 20 ms a window: the 120 windows due before the kill take >= 2.4 s, so the kill lands mid-scoring.
    first = start_worker(env=fake_env(logs[0], delay=0.02), **settings)
    first.wait_ready()
    early = work.messages(range(10))  # windows ending at 8 and 10 due
    placed = work.placed(early, produce(kafka.bootstrap, names["topic_logs"], early))
    due = {(s, e) for s, e in work.windows() if e <= 10}
    deadline = time.monotonic() + 60
    while len(read_scored(logs[0]).distinct) < len(due) // 3 and time.monotonic() < deadline:
        first.metrics() if first.proc.poll() is None else pytest.fail(first.log_text()[-3000:])
        time.sleep(0.05)
    first.kill()
    at_kill = read_scored(logs[0])
    started = time.monotonic()
    late = work.messages(range(10, work.length))
    placed |= work.placed(late, produce(kafka.bootstrap, names["topic_logs"], late))
    second = start_worker(env=fake_env(logs[1]), **settings)
    second.wait_for(lambda m: m.get("sessions_closed_idle", 0) >= work.sessions and m.get("open_sessions") == 0, 180)
    scored = wait_scored(logs, work.windows(), timeout=5)
    alerts = read_alerts(kafka.bootstrap, names["topic_alerts"], expect=set(work.alerts(placed)))
    (tmp_path / "alerts.json").write_text(json.dumps(alerts))  # for a post-mortem
    outcome = alert_outcome(alerts, work, placed)
    record("worker SIGKILL", {"sessions": work.sessions, "windows_expected": len(work.windows()),
                              "windows_scored_before_kill": len(at_kill.distinct),
                              "windows_lost": len(work.windows() - scored.distinct),
                              "windows_rescored": scored.duplicates, **outcome,
                              "recovery_s": round(time.monotonic() - started, 1)})
    assert_complete(outcome, scored, work)


@pytest.mark.timeout(300)
def test_a_restarted_worker_closes_no_session_before_it_has_routed_the_input_that_waited(kafka, start_worker, names,
                                                                                          tmp_path):
    """Sessions left open by a stopped worker get more lines while it is down. The new worker's idle clock must not
    run before its route has read that backlog: here session_idle (1 s) is shorter than the route's group join, so
    a close request sent from the worker's start would reach every session ahead of its later lines and split it."""
    work = Workload(sessions=24)
    settings = dict(hop=work.hop, alert_cooldown_lines=0, **names)
    logs = [tmp_path / "scored-0.jsonl", tmp_path / "scored-1.jsonl"]
    first = start_worker(env=fake_env(logs[0]), session_idle=120.0, **settings)
    first.wait_ready()
    early = work.messages(range(10))
    placed = work.placed(early, produce(kafka.bootstrap, names["topic_logs"], early))
    first.wait_for(lambda m: m.get("lines_applied", 0) >= len(early), 120)
    assert first.stop() == 0
    late = work.messages(range(10, work.length))
    placed |= work.placed(late, produce(kafka.bootstrap, names["topic_logs"], late))
    second = start_worker(env=fake_env(logs[1]), session_idle=1.0, **settings)
    closed_and_complete("worker restarted with a backlog and a short session_idle", second, logs, kafka, names, work,
                        placed)


@pytest.mark.timeout(300)
def test_a_batch_that_fails_stops_the_worker_and_a_restart_reads_it_again(kafka, start_worker, names, tmp_path):
    work = Workload(sessions=24)
    settings = dict(session_idle=4.0, hop=work.hop, alert_cooldown_lines=0, **names)
    logs = [tmp_path / "scored-0.jsonl", tmp_path / "scored-1.jsonl"]
    broken = tmp_path / "broken-once"
    first = start_worker(env={**fake_env(logs[0]), "LOGMOE_FAKE_BREAK_ONCE": str(broken)}, **settings)
    first.wait_ready()
    placed = work.placed(work.messages(range(work.length)),
                         produce(kafka.bootstrap, names["topic_logs"], work.messages(range(work.length))))
    try:
        code = first.proc.wait(120)  # the batch with the first alert fails: the worker stops on it
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not stop on a failed batch:\n{first.log_text()[-3000:]}")
    assert broken.exists() and code != 0
    assert "a batch failed (ValueError" in first.log_text()
    second = start_worker(env=fake_env(logs[1]), **settings)
    closed_and_complete("score agent batch failure, worker restarted", second, logs, kafka, names, work, placed)


@pytest.mark.timeout(400)
def test_second_worker_takes_over_partitions_and_sessions_continue_from_the_changelog(kafka, start_worker, names,
                                                                                       tmp_path):
    work = Workload(sessions=40)
    # Idle well above a rebalance (two 6 s session timeouts; the join took 17.7 s on a 2-core machine under a load
    # of 14), so no session closes while partitions move.
    settings = dict(session_idle=30.0, hop=work.hop, alert_cooldown_lines=0, **names)
    logs = [tmp_path / "scored-0.jsonl", tmp_path / "scored-1.jsonl"]
    first = start_worker(env=fake_env(logs[0]), **settings)
    first.wait_ready()
    part = work.messages(range(6))
    placed = work.placed(part, produce(kafka.bootstrap, names["topic_logs"], part))
    first.wait_for(lambda m: m.get("lines_applied", 0) >= 6 * work.sessions, 120)
    started = time.monotonic()
    second = start_worker(env=fake_env(logs[1]), **settings)
    second.wait_ready()
    joined_s = time.monotonic() - started
    part = work.messages(range(6, 10))
    placed |= work.placed(part, produce(kafka.bootstrap, names["topic_logs"], part))
    wait_scored(logs, {(s, e) for s, e in work.windows() if e <= 10}, timeout=120, alive=second.metrics)
    assert first.stop() == 0
    part = work.messages(range(10, work.length))
    placed |= work.placed(part, produce(kafka.bootstrap, names["topic_logs"], part))
    second.wait_for(lambda m: m.get("sessions_closed_idle", 0) >= work.sessions and m.get("open_sessions") == 0, 180)
    scored = wait_scored(logs, work.windows(), timeout=5)
    outcome = alert_outcome(read_alerts(kafka.bootstrap, names["topic_alerts"], expect=set(work.alerts(placed))),
                            work, placed)

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


@pytest.mark.timeout(400)
def test_no_session_closes_while_a_rebalance_holds_its_lines_in_the_raw_topic(kafka, start_worker, names, tmp_path):
    """Lines keep coming while a second worker joins. During the rebalance no route reads them (~3 s here, 17 s
    under load), longer than the 2 s session_idle: a close request sent meanwhile would reach each session ahead of
    the lines produced during the pause and split it."""
    work = Workload(sessions=20, length=40)
    settings = dict(session_idle=2.0, hop=work.hop, alert_cooldown_lines=0, **names)
    logs = [tmp_path / "scored-0.jsonl", tmp_path / "scored-1.jsonl"]
    first = start_worker(env=fake_env(logs[0]), **settings)
    first.wait_ready()
    placed: dict = {}
    done = threading.Event()

    def paced() -> None:  # a step of every session each 0.4 s: no session is ever idle for 2 s on its own
        try:
            for step in range(work.length):
                part = work.messages([step])
                placed.update(work.placed(part, produce(kafka.bootstrap, names["topic_logs"], part)))
                time.sleep(0.4)
        finally:
            done.set()

    producer = threading.Thread(target=paced, daemon=True)
    producer.start()
    first.wait_for(lambda m: m.get("lines_applied", 0) >= 3 * work.sessions, 120)
    second = start_worker(env=fake_env(logs[1]), **settings)
    second.wait_ready()
    assert not done.is_set(), "the input ended before the second worker joined: the test did not test a rebalance"
    producer.join(120)
    scored = wait_scored(logs, work.windows(), timeout=120, alive=second.metrics)
    outcome = alert_outcome(read_alerts(kafka.bootstrap, names["topic_alerts"], expect=set(work.alerts(placed))),
                            work, placed)
    record("2nd worker joins while lines keep coming, session_idle 2 s", {
        "sessions": work.sessions, "windows_expected": len(work.windows()),
        "windows_lost": len(work.windows() - scored.distinct), "windows_malformed": len(scored.malformed),
        **outcome})
    assert_complete(outcome, scored, work)


HOSTILE = {"invalid_utf8": 1800, "nul_bytes": 1200, "control_chars": 1200, "empty": 1000, "oversized": 20,
           "deep_json": 980, "not_envelope": 1600, "surrogates": 300, "wrong_type": 1900}  # 10,000 lines


@pytest.mark.timeout(480)
def test_ten_thousand_hostile_lines_are_counted_by_reason_and_normal_sessions_score_as_before(
        kafka, start_worker, names, tmp_path):
    from hostile import MAX_LINE_BYTES, expected_counts, hostile_lines

    work = Workload(sessions=30)
    generating = time.monotonic()
    hostile = hostile_lines(HOSTILE)
    generate_s = time.monotonic() - generating
    assert len(hostile) == 10_000
    expected = expected_counts(hostile)
    normal = work.messages(range(work.length))
    rng = random.Random(7)
    stream: list[tuple[bytes | None, bytes | None]] = list(normal)
    for _, value in hostile:  # hostile lines at random places, unkeyed; the normal lines keep their order
        key = b"tombstone" if value is None else None  # Kafka needs a key or a value
        stream.insert(rng.randrange(len(stream) + 1), (key, value))
    log = tmp_path / "scored.jsonl"
    # Idle well above the gaps between a session's lines in this slow, mixed stream (1 MB lines among them).
    worker = start_worker(env=fake_env(log), session_idle=20.0, hop=work.hop, alert_cooldown_lines=0,
                          max_line_bytes=MAX_LINE_BYTES, **names)
    worker.wait_ready()
    rss_ready = worker.rss_mb()
    started = time.monotonic()
    placed = work.placed(stream, produce(kafka.bootstrap, names["topic_logs"], stream))
    reasons = [k for k in expected if k.startswith("bad_")]
    m = worker.wait_drained(len(stream), 300)
    elapsed = time.monotonic() - started
    scored = wait_scored([log], work.windows(), timeout=5)
    outcome = alert_outcome(read_alerts(kafka.bootstrap, names["topic_alerts"], expect=set(work.alerts(placed))),
                            work, placed)
    counted = {r: m.get(r, 0) for r in reasons}
    record("10,000 hostile lines", {
        "hostile_lines": len(hostile), "distinct_hostile_lines": len({v for _, v in hostile}), "by_kind": HOSTILE,
        "generate_s": round(generate_s, 1), "bad_expected": {r: expected[r] for r in reasons},
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


@pytest.mark.timeout(400)
def test_input_faster_than_scoring_builds_lag_that_drains_with_bounded_memory(kafka, start_worker, names, tmp_path):
    # 6,000 lines of ~1 KB, 2,850 windows; LOGMOE_BACKPRESSURE_SCALE=3 triples the sessions (RELIABILITY.md
    # compares the two: memory follows the worker's buffers, not the backlog).
    scale = int(os.environ.get("LOGMOE_BACKPRESSURE_SCALE", "1"))
    work = Workload(sessions=50 * scale, length=120, pad=1000)
    delay = 0.004  # seconds per window: scoring (~250 windows/s) is slower than the input
    log = tmp_path / "scored.jsonl"
    worker = start_worker(env=fake_env(log, delay=delay), session_idle=8.0, hop=work.hop, **names)
    worker.wait_ready()
    rss_ready = worker.rss_mb()
    messages = work.messages(range(work.length))
    input_mb = sum(len(v) for _, v in messages) / 2**20
    samples: list[tuple[float, int, int, float]] = []  # (seconds, lines behind, windows behind, rss MB)
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(0.5):
            m = worker.metrics()
            samples.append((time.monotonic() - t0, lines_behind(m, names["topic_logs"]), windows_behind(m),
                            worker.rss_mb()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        started = time.monotonic()
        produce(kafka.bootstrap, names["topic_logs"], messages)
        produced_s = time.monotonic() - started
        m = worker.wait_drained(len(messages), 300, also=lambda m: sum(m.get("consumer_lag", {1: 1}).values()) == 0)
        drained_s = time.monotonic() - started
    finally:
        done.set()
        sampler.join()
    scored = wait_scored([log], work.windows(), timeout=5)
    peak_lag = max(lag for _, lag, _, _ in samples)  # lines
    peak_windows = max(w for _, _, w, _ in samples)
    peak_rss = max(rss for _, _, _, rss in samples)
    record("backpressure", {
        "lines": len(messages), "input_mb": round(input_mb, 1), "windows_expected": len(work.windows()),
        "score_delay_ms_per_window": delay * 1000, "produce_s": round(produced_s, 1), "drained_s": round(drained_s, 1),
        "peak_backlog_lines": peak_lag, "peak_backlog_windows": peak_windows, "final_lag": sum(m.get("consumer_lag", {}).values()),
        "rss_mb_ready": round(rss_ready), "rss_mb_peak": round(peak_rss), "lines_in": m.get("lines_in"),
        "windows_scored": m.get("windows_scored"), "windows_failed": m.get("windows_failed", 0),
        "windows_lost": len(work.windows() - scored.distinct)})
    # A backlog built up, then drained; nothing was dropped on the way. Where it waits depends on the route: lines
    # in Kafka (the raw topic, or many lines a record on the sessions topic), or windows applied in one large batch
    # and waiting for the slow scorer.
    assert peak_lag >= len(messages) // 10 or peak_windows >= len(work.windows()) // 10, (peak_lag, peak_windows)
    assert sum(m["consumer_lag"].values()) == 0
    assert lines_behind(m, names["topic_logs"]) == 0 and windows_behind(m) == 0
    assert m["lines_in"] == len(messages) and m.get("windows_failed", 0) == 0
    assert workload_windows_complete(scored, work)
    # A generous bound that still catches a worker keeping what it read (the measured growth is ~5x input here
    # because of Python's and Faust's per-record overhead; RELIABILITY.md shows it does not grow with the backlog).
    assert peak_rss - rss_ready < 10 * input_mb + 64


def lines_behind(m: dict, topic_logs: str) -> int:
    """Lines the worker has still to apply: the raw topic's lag (records = lines) and the lines its route handed on
    to the sessions topic, where the batch route puts many lines in one record, that the score agent has not
    applied yet."""
    handed_on = int(m.get("lines_in", 0)) - int(m.get("lines_applied", 0)) - int(m.get("lines_redelivered_skipped", 0))
    return int(m.get("consumer_lag", {}).get(topic_logs, 0)) + max(0, handed_on)


def windows_behind(m: dict) -> int:
    """Windows made due and not scored (nor failed) yet."""
    return int(m.get("windows_due", 0)) - int(m.get("windows_scored", 0)) - int(m.get("windows_failed", 0))


def workload_windows_complete(scored, work: Workload) -> bool:
    return not scored.malformed and scored.distinct == work.windows()


@pytest.fixture()
def durable_broker(tmp_path: Path):
    """A broker of its own on s3:// storage (a local weed mini server), so its topics survive a kill."""
    from stream.broker import EmbeddedBroker, LocalS3, weed_binary

    try:
        weed_binary()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    s3 = LocalS3(tmp_path / "s3")
    broker = EmbeddedBroker(storage=s3.storage, storage_env=s3.env)
    try:
        s3.start()
        broker.start()
        yield broker
    finally:
        broker.stop()
        s3.stop()
    assert any(s3.scratch.iterdir())  # weed's temporary files went to its own folder, not the machine's /tmp


@pytest.mark.timeout(500)
def test_broker_killed_and_restarted_mid_stream_worker_reconnects_and_alerts_every_anomaly(
        durable_broker, start_worker, names, tmp_path):
    work = Workload(sessions=20)
    log = tmp_path / "scored.jsonl"
    # Idle above the outage plus the reconnection (12 s and more under load), so no session closes for want of lines
    # while the broker is down.
    worker = start_worker(env=fake_env(log), broker=durable_broker.bootstrap, session_idle=30.0, hop=work.hop,
                          alert_cooldown_lines=0, **names)
    worker.wait_ready()
    part = work.messages(range(7))
    placed = work.placed(part, produce(durable_broker.bootstrap, names["topic_logs"], part))
    before = worker.wait_for(lambda m: m.get("lines_applied", 0) >= 7 * work.sessions, 180)
    durable_broker.kill()
    killed = time.monotonic()
    time.sleep(3.0)
    durable_broker.start()
    restarted = time.monotonic()
    part = work.messages(range(7, work.length))
    placed |= work.placed(part, produce(durable_broker.bootstrap, names["topic_logs"], part, retries=10))
    worker.wait_for(lambda m: m.get("lines_in", 0) > before["lines_in"], 240)
    resumed = time.monotonic()
    m = worker.wait_drained(work.sessions * work.length, 300)
    scored = wait_scored([log], work.windows(), timeout=5)
    outcome = alert_outcome(read_alerts(durable_broker.bootstrap, names["topic_alerts"],
                                        expect=set(work.alerts(placed))), work, placed)
    record("broker SIGKILL + restart (s3:// storage)", {
        "sessions": work.sessions, "outage_s": round(restarted - killed, 1),
        "resumed_after_restart_s": round(resumed - restarted, 1), "worker_restarts": 0,
        "windows_expected": len(work.windows()), "windows_lost": len(work.windows() - scored.distinct),
        "windows_rescored": scored.duplicates, "lines_in": m.get("lines_in"), **outcome})
    assert worker.proc.poll() is None  # it reconnected by itself
    assert_complete(outcome, scored, work)
