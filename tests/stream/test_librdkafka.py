"""The client most log shippers are built on (librdkafka: Fluent Bit, Vector, kcat), through confluent-kafka: lines
produced keyed by their session, as a shipper keyed by block or request id sends them, with librdkafka's own
batching; the alerts read back with a librdkafka consumer. The worker runs with no session regex, so the message
key alone makes the session."""

from __future__ import annotations

import csv
import json
import re
import time
import uuid
from typing import Any

import pytest
from offline import offline_flags

confluent_kafka = pytest.importorskip("confluent_kafka", reason="confluent-kafka is a test extra (pip install "
                                                                 "'logmoe[test]')")

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.encoder]

SESSION = re.compile(rb"request_id=(\w+)")


def produce_keyed(bootstrap: str, topic: str, lines: list[bytes]) -> int:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    errors: list[Any] = []
    for line in lines:
        key = SESSION.search(line)
        producer.produce(topic, value=line, key=key.group(1) if key else None,
                         on_delivery=lambda err, msg: errors.append(err) if err else None)
        producer.poll(0)
    assert producer.flush(30) == 0 and not errors, errors
    return len(lines)


def consume_alerts(bootstrap: str, topic: str, expect: int, quiet_for: float = 3.0,
                   timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every alert on the topic, read by assigning its partitions from the beginning (no group join to wait for),
    until `expect` alerts have arrived and `quiet_for` seconds pass without another (or `timeout`)."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"alerts-{uuid.uuid4().hex}",
                                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in partitions])
    alerts: list[dict[str, Any]] = []
    started = last = time.monotonic()
    try:
        while time.monotonic() - started < timeout and (len(alerts) < expect or time.monotonic() - last < quiet_for):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            alerts.append(json.loads(msg.value()))
            last = time.monotonic()
    finally:
        consumer.close()
    return alerts


@pytest.mark.timeout(600)  # with training the shared model: 20 s here, 4+ min under load
def test_librdkafka_producer_keyed_by_session_and_consumer(kafka, start_worker, names, trained_world) -> None:
    world, model_dir = trained_world["world"], trained_world["model"]
    labels = {r["session_id"]: int(r["label"]) for r in csv.DictReader((world / "stream_labels.csv").open())}
    worker = start_worker(model_dir, session_key=[], session_idle=6.0, **names)  # idle above a stall under load
    worker.wait_ready()
    lines = [line for line in (world / "stream.log").read_bytes().splitlines() if line.strip()]
    produce_keyed(kafka.bootstrap, names["topic_logs"], lines)
    worker.wait_for(lambda m: m.get("lines_in", 0) >= len(lines) and m.get("open_sessions") == 0
                    and m.get("sessions_closed_idle", 0) >= len(labels), 300)

    flags = offline_flags(model_dir, world)
    alerts = consume_alerts(kafka.bootstrap, names["topic_alerts"], expect=sum(flags.values()))
    alerted = {a["session"] for a in alerts}
    assert alerted == {s for s, flagged in flags.items() if flagged}
    assert alerted == {s for s, y in labels.items() if y}  # the generated world is separable
