"""The embedded broker command, topic creation and the replay/alerts tools against the broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient

from stream.broker import EmbeddedBroker
from stream.config import StreamConfig
from stream.tools import consume_alerts, format_alert, replay
from stream.topics import ensure_topics, topic_specs

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.broker


@pytest.mark.timeout(60)
def test_broker_command_prints_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "model.cli", "broker", "--data-dir", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("ready 127.0.0.1:"), line + proc.stderr.read() if proc.poll() is not None else line
        admin = KafkaAdminClient(bootstrap_servers=line.split()[1])
        admin.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_ensure_topics_creates_each_once_with_the_configured_partitions(kafka: EmbeddedBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    cfg = StreamConfig(app_id=f"t{tag}", topic_logs=f"logs-{tag}", topic_alerts=f"alerts-{tag}",
                       topic_sessions=f"sessions-{tag}", partitions=3)
    created = ensure_topics([kafka.bootstrap], topic_specs(cfg))
    assert sorted(created) == sorted(s.name for s in topic_specs(cfg))
    assert ensure_topics([kafka.bootstrap], topic_specs(cfg)) == []
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        for d in admin.describe_topics([s.name for s in topic_specs(cfg)]):
            assert len(d["partitions"]) == 3
    finally:
        admin.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_replay_skips_a_too_large_line_and_sends_the_rest_in_order(kafka: EmbeddedBroker, tmp_path: Path) -> None:
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "in.log"
    big = "x" * (2 * 1024 * 1024)
    log.write_text("first request_id=a\n\nsecond request_id=b\n" + big + "\nthird request_id=a\n", encoding="utf-8")
    result = replay(log, kafka.bootstrap, topic=topic, progress=False)
    assert result == {"sent": 3, "skipped": 1}
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    try:
        got = [(r.partition, r.value.decode()) for r in consumer]
    finally:
        consumer.close()
    assert got == [(0, "first request_id=a"), (0, "second request_id=b"), (0, "third request_id=a")]


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_alerts_command_prints_json_lines_and_exits_after_its_timeout(kafka: EmbeddedBroker) -> None:
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    alert = {"alert_id": "abc", "session": "s1", "score": 0.9, "threshold": 0.5, "window": {"start": 1, "end": 3},
             "lines": [{"line": "ERROR x", "contribution": 1.2, "suspicious": True}], "detected_at": "now"}
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, batch_size=0)
    producer.send(topic, key=b"s1", value=json.dumps(alert).encode()).get(timeout=30)
    producer.close()
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "model.cli", "alerts", "--bootstrap", kafka.bootstrap, "--topic", topic,
                          "--from-beginning", "--timeout", "3", "--json"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert [json.loads(ln) for ln in out.stdout.splitlines()] == [alert]
    assert time.monotonic() - started < 30
    assert list(consume_alerts(kafka.bootstrap, topic, from_beginning=True, timeout=2)) == [alert]
    assert "ERROR x" in format_alert(alert) and "s1" in format_alert(alert)
