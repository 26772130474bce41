"""Hot model reload in a real `logmoe worker` on the embedded broker, with small random models over the tiny
test encoder (threshold 0, so every window alerts and alerts count windows): a broken model is refused while
the old one keeps scoring; a new model written in place, as `logmoe train` does, is swapped in while lines keep
arriving, no window is dropped, and alerts after the swap carry the new fingerprint."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from stream.tools import consume_alerts
from test_metrics import get
from test_metrics_worker import free_port
from test_reload import write_model
from test_worker import sessions_text

pytestmark = [pytest.mark.broker, pytest.mark.slow]

A, B = "a" * 64, "b" * 64


def produce_sessions(bootstrap: str, topic: str, ids: list[str], pause: float = 0.0,
                     under_way: threading.Event | None = None) -> None:
    """Each session's 4 lines, sessions interleaved; `under_way` is set once a quarter of the lines are sent."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, batch_size=0, linger_ms=0, acks=1)
    lines = sessions_text(ids, anomalous=set(), length=4)
    try:
        for n, line in enumerate(lines, start=1):
            producer.send(topic, value=line).get(timeout=30)
            if under_way is not None and n == len(lines) // 4:
                under_way.set()
            time.sleep(pause)
    finally:
        producer.close()


@pytest.mark.timeout(400)
def test_reload_swaps_between_batches_refuses_a_broken_model_and_drops_no_window(
        kafka, start_worker, names, tiny_encoder_dir: Path, tmp_path: Path) -> None:
    folder = write_model(tmp_path / "final_moe_model", tiny_encoder_dir, fingerprint=A, max_window=8)
    port = free_port()
    # Every session must make exactly one window (one alert each): a session closed between two of its lines would
    # make two. Its lines come ~10 sends apart, about 0.5 s with the pause below and seconds on a loaded machine,
    # so the idle close waits 6 s.
    worker = start_worker(folder, model_reload_interval=0.3, session_idle=6.0, alert_cooldown_lines=0,
                          metrics_port=port, metrics_host="127.0.0.1", **names)
    worker.wait_ready()
    topic = names["topic_logs"]
    scored = lambda n: lambda m: m.get("windows_scored", 0) >= n and m.get("open_sessions") == 0  # noqa: E731

    (folder / "model.safetensors").write_bytes(b"not a safetensors file")  # a broken model
    worker.wait_for(lambda m: m.get("model_reloads_refused", 0) >= 1, 60)
    first = [f"p1x{i}" for i in range(8)]
    produce_sessions(kafka.bootstrap, topic, first)
    worker.wait_for(scored(len(first)), 90)
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and A in body  # the old model still runs

    # A new model (smaller window) written in place while a stream of sessions keeps arriving.
    third = [f"p3x{i}" for i in range(10)]
    under_way = threading.Event()
    producer = threading.Thread(target=produce_sessions, args=(kafka.bootstrap, topic, third, 0.05, under_way))
    producer.start()
    assert under_way.wait(30)
    write_model(folder, tiny_encoder_dir, fingerprint=B, max_window=6, seed=1)
    producer.join(60)
    worker.wait_for(lambda m: m.get("model_reloads_ok", 0) == 1, 90)
    fourth = [f"p4x{i}" for i in range(4)]
    produce_sessions(kafka.bootstrap, topic, fourth)
    everyone = first + third + fourth
    m = worker.wait_for(scored(len(everyone)), 120)
    assert m["windows_scored"] == len(everyone) and not m.get("windows_failed")  # not one window dropped

    alerts = list(consume_alerts(kafka.bootstrap, names["topic_alerts"], from_beginning=True, timeout=2.0))
    by_session = {a["session"]: a for a in alerts}
    assert len(alerts) == len(by_session) == len(everyone) and set(by_session) == set(everyone)
    assert {by_session[s]["model"]["fingerprint"] for s in first} == {A}
    assert {by_session[s]["model"]["fingerprint"] for s in fourth} == {B}
    weights_before = {by_session[s]["model"]["weights"] for s in first}
    weights_after = {by_session[s]["model"]["weights"] for s in fourth}
    assert len(weights_before) == len(weights_after) == 1 and weights_before != weights_after
    # One clean switch: once an alert carries B, no later one carries A.
    ordered = sorted(alerts, key=lambda a: a["detected_at"])
    switch = next(i for i, a in enumerate(ordered) if a["model"]["fingerprint"] == B)
    assert {a["model"]["fingerprint"] for a in ordered[switch:]} == {B}
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200 and B in body
    log = worker.log_text()
    assert "refused the new model" in log and log.count("switched to the new model") == 1
