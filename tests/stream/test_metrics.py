"""Metrics as Prometheus samples and the /metrics + /healthz endpoint, without a broker."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.http import StatusServer
from stream.metrics import Metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def exposition(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    return samples(generate_latest(metrics.registry).decode())


def test_counters_gauges_and_histograms_as_prometheus_samples() -> None:
    m = Metrics()
    m.inc("lines_in", 10)
    m.inc("bad_oversized")
    m.inc("bad_empty", 2)
    m.inc("windows_scored", 7)
    m.inc("alerts_out", 3)
    m.inc("model_reloads_refused")
    m.counts["open_sessions"] = 4
    m.observe_batch(5, 0.02)
    m.observe_batch(2, 0.004)
    m.cache_info = {"hits": 30, "misses": 10, "size": 10}
    m.consumer_lag = {"logs": 12, "sessions": 0}
    m.model = {"name": "final_moe_model", "fingerprint": "ab" * 32}
    got = exposition(m)
    assert got[("logmoe_lines_in_total", ())] == 10
    assert got[("logmoe_bad_lines_total", (("reason", "oversized"),))] == 1
    assert got[("logmoe_bad_lines_total", (("reason", "empty"),))] == 2
    assert got[("logmoe_windows_scored_total", ())] == 7
    assert got[("logmoe_alerts_out_total", ())] == 3
    assert got[("logmoe_model_reloads_total", (("outcome", "refused"),))] == 1
    assert got[("logmoe_open_sessions", ())] == 4
    assert got[("logmoe_score_latency_seconds_count", ())] == 2
    assert got[("logmoe_score_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("logmoe_batch_windows_sum", ())] == 7
    assert got[("logmoe_encoder_cache_hit_ratio", ())] == 0.75
    assert got[("logmoe_consumer_lag", (("topic", "logs"),))] == 12
    assert got[("logmoe_model_info", (("fingerprint", "ab" * 32), ("name", "final_moe_model")))] == 1


def test_lines_per_second_over_the_last_tick() -> None:
    m = Metrics()
    m.tick(now=100.0)
    m.inc("lines_in", 50)
    m.tick(now=110.0)
    assert m.lines_per_second == 5.0
    assert exposition(m)[("logmoe_lines_per_second", ())] == 5.0
    assert m.snapshot()["lines_per_second"] == 5.0


def test_two_metrics_have_their_own_registries() -> None:
    a, b = Metrics(), Metrics()  # two apps in one process: no "Duplicated timeseries" error
    a.inc("lines_in", 2)
    b.inc("lines_in", 5)
    assert exposition(a)[("logmoe_lines_in_total", ())] == 2
    assert exposition(b)[("logmoe_lines_in_total", ())] == 5


def test_the_log_line_keeps_the_counters(caplog: pytest.LogCaptureFixture) -> None:
    m = Metrics()
    m.inc("lines_in", 3)
    m.observe_batch(4, 0.01)
    with caplog.at_level(logging.INFO, logger="stream.metrics"):
        m.log({"hits": 1, "misses": 3, "size": 3})
    line = json.loads(caplog.records[-1].getMessage().split("metrics ", 1)[1])
    assert line["lines_in"] == 3 and line["batch_windows_max"] == 4 and line["cache_hit_rate"] == 0.25


@pytest.fixture()
def server() -> Any:
    state: dict[str, Any] = {"healthy": False}

    def health() -> tuple[bool, dict[str, Any]]:
        if state.get("raise"):
            raise RuntimeError("boom")
        return state["healthy"], {"model": {"fingerprint": "f"}}

    metrics = Metrics()
    metrics.inc("lines_in", 42)
    srv = StatusServer("127.0.0.1", 0, metrics.registry, health)
    srv.start()
    try:
        yield srv, state, metrics
    finally:
        srv.stop()


def test_endpoint_serves_metrics_and_health(server: Any) -> None:
    srv, state, metrics = server
    base = f"http://127.0.0.1:{srv.port}"
    status, text = get(f"{base}/metrics")
    assert status == 200 and samples(text)[("logmoe_lines_in_total", ())] == 42
    metrics.inc("lines_in")
    assert samples(get(f"{base}/metrics")[1])[("logmoe_lines_in_total", ())] == 43  # read at scrape time
    status, body = get(f"{base}/healthz")
    assert status == 503 and json.loads(body)["status"] == "unavailable"
    state["healthy"] = True
    status, body = get(f"{base}/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok", "model": {"fingerprint": "f"}}
    state["raise"] = True
    status, body = get(f"{base}/healthz")
    assert status == 503 and "boom" in json.loads(body)["error"]
    assert get(f"{base}/nope")[0] == 404


def test_a_taken_port_is_one_clear_error(server: Any) -> None:
    srv, _, metrics = server
    other = StatusServer("127.0.0.1", srv.port, metrics.registry, lambda: (True, {}))
    with pytest.raises(OSError, match="distinct metrics_port"):
        other.start()


def test_health_needs_ready_running_agents_a_model_and_a_live_loop() -> None:
    import time
    from types import SimpleNamespace

    from stream.agents import AgentsHandle
    from stream.app import health
    from stream.reload import ScorerSlot
    from stream_fakes import FakeScorer

    agents = {"stream.route.route": SimpleNamespace(state="running"),
              "stream.agents.score": SimpleNamespace(state="running")}
    app = SimpleNamespace(agents=agents, rebalancing=False)
    handle = AgentsHandle(ScorerSlot(FakeScorer()), SimpleNamespace(started_at=0.0, idle_since=0.0))
    ok, body = health(app, handle, 10.0)
    assert not ok and body["ready"] is False  # still starting (table recovery)
    handle.processor.started_at = time.time()
    handle.last_tick = time.monotonic()
    ok, body = health(app, handle, 10.0)
    assert ok and body["agents"] == {"route": "running", "score": "running"} and body["model"]["name"] == "fake"
    assert body["caught_up"] is False  # healthy while it reads the lines that waited for it; no idle close yet
    handle.processor.idle_since = time.time()
    assert health(app, handle, 10.0)[1]["caught_up"] is True
    handle.last_tick = time.monotonic() - 45.0  # the metrics timer is 35 s overdue: the loop is stuck
    assert health(app, handle, 10.0)[0] is False
    handle.last_tick = time.monotonic()
    agents["stream.agents.score"].state = "crashed"
    ok, body = health(app, handle, 10.0)
    assert not ok and body["agents"]["score"] == "crashed"


def test_two_apps_in_one_process_keep_separate_metrics() -> None:
    from stream.app import create_app
    from stream.config import StreamConfig
    from stream_fakes import FakeScorer

    apps = [create_app(StreamConfig(app_id=f"twin{i}", metrics_port=9100 + i, model_reload_interval=0),
                       FakeScorer()) for i in range(2)]
    first, second = (app.logmoe_metrics for app in apps)
    assert first.registry is not second.registry
    first.inc("lines_in", 3)
    assert exposition(first)[("logmoe_lines_in_total", ())] == 3
    assert ("logmoe_lines_in_total", ()) not in exposition(second)
    assert all(app.logmoe_handle.reloader is None for app in apps)  # model_reload_interval 0: no watcher


DONE = {"lines_in": 10, "bad_empty": 2, "lines_applied": 8, "sessions_opened": 3, "sessions_closed_idle": 2,
        "sessions_evicted_too_long": 1, "windows_due": 4, "windows_scored": 3, "windows_failed": 1, "open_sessions": 0}


@pytest.mark.parametrize(("change", "waiting_for"), [
    ({"lines_applied": 0, "sessions_opened": 0, "sessions_closed_idle": 0, "sessions_evicted_too_long": 0,
      "windows_due": 0, "windows_scored": 0, "windows_failed": 0},
     "2 of 10 lines applied to sessions or counted as bad"),  # the route has read it all, the score agent nothing
    ({"lines_applied": 7}, "9 of 10 lines applied to sessions or counted as bad"),
    ({"sessions_closed_idle": 1}, "1 of 3 sessions still open"),
    ({"windows_scored": 1}, "2 of 4 windows not scored yet"),
    ({"open_sessions": 2}, "2 sessions left in the session table"),
])
def test_drain_status_says_what_the_score_agent_has_yet_to_do(change: dict[str, int], waiting_for: str) -> None:
    from stream.metrics import drain_status

    assert drain_status(DONE, 10) is None
    assert drain_status({**DONE, **change}, 10) == waiting_for
