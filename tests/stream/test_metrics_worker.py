"""The metrics endpoint of real workers (fake scorer) on the embedded broker: two workers of one app on one
host, each with its own metrics port, scraped with Prometheus' own parser; plus the lag arithmetic."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from stream.agents import consumer_lag
from test_metrics import get, samples
from test_worker import produce, sessions_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached in {timeout} s; last {last!r}")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return samples(text)


def total(scrapes: list[dict], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return sum(s.get(key, 0.0) for s in scrapes)


@pytest.mark.broker
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_on_one_host_serve_metrics_and_health(kafka, start_worker, names) -> None:
    ports = [free_port(), free_port()]
    workers = [start_worker(metrics_port=port, metrics_host="127.0.0.1", session_idle=3.0, **names)
               for port in ports]

    def healthy(port: int) -> dict | None:
        try:
            status, body = get(f"http://127.0.0.1:{port}/healthz")
        except OSError:
            return None  # not listening yet
        return json.loads(body) if status == 200 else None

    for worker, port in zip(workers, ports):
        worker.wait_ready()
        body = wait_until(lambda: healthy(port), 60, f"/healthz 200 on {port}")
        assert body["ready"] and set(body["agents"].values()) == {"running"}
        assert body["model"]["fingerprint"] == "0" * 64
    for port in ports:  # nothing waited for them: each route catches up once it has its partitions
        wait_until(lambda: (healthy(port) or {}).get("caught_up"), 60, f"caught_up on {port}")  # noqa: B023

    ids = [f"m{i}" for i in range(8)]
    lines = sessions_text(ids, anomalous={"m2", "m5"}, length=4)
    # Keyed by session, so the lines spread over the partitions and both workers get a share.
    for sid in ids:
        produce(kafka.bootstrap, names["topic_logs"], [ln for ln in lines if ln.endswith(sid.encode())],
                key=sid.encode())
    produce(kafka.bootstrap, names["topic_logs"], [b""])

    def settled() -> list[dict] | None:
        scrapes = [scrape(p) for p in ports]
        done = total(scrapes, "logmoe_windows_scored_total") == len(ids)
        return scrapes if done and total(scrapes, "logmoe_consumer_lag", topic=names["topic_logs"]) == 0 else None

    scrapes = wait_until(settled, 120, "every session scored and no lag")
    assert total(scrapes, "logmoe_lines_in_total") == len(lines)
    assert total(scrapes, "logmoe_bad_lines_total", reason="empty") == 1
    assert total(scrapes, "logmoe_alerts_out_total") == 2
    assert total(scrapes, "logmoe_score_latency_seconds_count") == total(scrapes, "logmoe_batch_windows_count") >= 2
    assert total(scrapes, "logmoe_batch_windows_sum") == len(ids)
    assert all(s[("logmoe_model_info", (("fingerprint", "0" * 64), ("name", "fake")))] == 1 for s in scrapes)
    assert all(("logmoe_consumer_lag", (("topic", names["topic_sessions"]),)) in s for s in scrapes)
    assert all(("logmoe_open_sessions", ()) in s for s in scrapes)
    # The JSON log line is still there, with the same counts (logged every metrics_interval).
    wait_until(lambda: sum(w.metrics().get("windows_scored", 0) for w in workers) == len(ids), 30, "the log line")


def test_consumer_lag_is_highwater_minus_committed_or_read() -> None:
    logs0, logs1, sess0, other = TP("logs", 0), TP("logs", 1), TP("sess", 0), TP("x", 0)
    highwater = {logs0: 100, logs1: 10, sess0: 7, other: 99}
    consumer = SimpleNamespace(assignment=lambda: set(highwater), highwater=highwater.get)
    monitor = SimpleNamespace(tp_committed_offsets={logs0: 90}, tp_read_offsets={logs1: 4})
    app = SimpleNamespace(consumer=consumer, monitor=monitor)
    # logs: 100-90 + 10-(4+1); sess: nothing committed or read yet: 7 - 0
    assert consumer_lag(app, ["logs", "sess"]) == {"logs": 15, "sess": 7}
