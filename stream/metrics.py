"""Worker metrics: counters logged periodically as one structured (JSON) line, and the same numbers (plus
histograms and gauges) in a Prometheus registry of the worker's own, served by stream/http.py.

Each `Metrics` has its own `CollectorRegistry`, never prometheus_client's global one, so two apps in one
process (tests, benchmarks) do not collide. Counters live in `counts` (a plain Counter the agents bump with
`inc`) and are turned into Prometheus samples at scrape time by `_CountsCollector`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("stream.metrics")

PREFIX = "logmoe"
# Counters kept in `counts` that are gauges, not counters.
GAUGES_IN_COUNTS = {"open_sessions": "Open sessions in this worker's session table."}
# Counters exported under one name with a label, as Prometheus wants (bad_<reason> -> bad_lines{reason}).
_LABELLED = (("bad_", "bad_lines", "reason", "Input messages skipped, by reason."),
             ("model_reloads_", "model_reloads", "outcome", "Model reloads, by outcome (ok, refused)."))
_HELP = {
    "lines_in": "Log lines read from the input topic.",
    "lines_utf8_replaced": "Lines whose undecodable bytes were replaced.",
    "lines_applied": "Lines the score agent added to a session (redeliveries skipped are not counted).",
    "lines_redelivered_skipped": "Lines skipped because their session already holds them (input redelivered).",
    "windows_due": "Windows the window rule made due for scoring (windows_scored + windows_failed once caught up).",
    "windows_early": "Windows of open sessions made due for early scoring (also counted in windows_due).",
    "windows_scored": "Windows scored by the model.",
    "windows_failed": "Windows whose scoring failed (skipped).",
    "alerts_out": "Alerts published.",
    "alerts_early": "Alerts published for an open session's early window (also counted in alerts_out).",
    "alerts_suppressed_cooldown": "Alerts not published because the session was in its cooldown.",
    "sessions_opened": "Sessions opened.",
    "sessions_closed_idle": "Sessions closed after session_idle seconds without a line.",
    "sessions_evicted_overflow": "Sessions closed early because max_open_sessions was reached.",
    "sessions_evicted_too_long": "Sessions closed because they reached max_session_lines.",
    "events_redelivered_skipped": "Session events skipped as redeliveries (already applied).",
    "session_events_invalid": "Unreadable events on the internal sessions topic.",
    "scoring_restarts": "Scoring processes restarted after one died or stopped answering (its batch sent again).",
    "route_restarts": "Times the batch route stopped on an unexpected error and started again from its commits.",
    "batches_failed": "Score agent batches that failed unexpectedly: the worker stops, their events uncommitted.",
}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Counts (lines in, bad lines by reason, windows, alerts, evictions), batch/latency summaries, and gauges
    (open sessions, lines/s, consumer lag, encoder cache, the model in use)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.batch_sizes: list[int] = []
        self.latencies: list[float] = []
        self.consumer_lag: dict[str, int] = {}  # topic -> records behind (highwater - committed)
        self.cache_info: dict[str, Any] | None = None
        self.model: dict[str, str] = {}  # name, fingerprint, weights of the model scoring now
        self.lines_per_second = 0.0
        self._rate_mark: tuple[float, int] | None = None  # (monotonic time, lines_in) at the last tick
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._latency = Histogram(f"{PREFIX}_score_latency_seconds", "Seconds to score one micro-batch of windows.",
                                  buckets=LATENCY_BUCKETS, registry=self.registry)
        self._batch = Histogram(f"{PREFIX}_batch_windows", "Windows per scored micro-batch.",
                                buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(_CountsCollector(self))

    def inc(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def observe_batch(self, windows: int, seconds: float) -> None:
        self.batch_sizes.append(windows)
        self.latencies.append(seconds)
        del self.batch_sizes[:-1000], self.latencies[:-1000]
        self._latency.observe(seconds)
        self._batch.observe(windows)

    def tick(self, now: float | None = None) -> None:
        """Update lines_per_second over the time since the previous tick (called every metrics_interval)."""
        now = time.monotonic() if now is None else now
        lines = self.counts["lines_in"]
        if self._rate_mark is not None and now > self._rate_mark[0]:
            self.lines_per_second = (lines - self._rate_mark[1]) / (now - self._rate_mark[0])
        self._rate_mark = (now, lines)

    def snapshot(self, cache_info: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(sorted(self.counts.items()))
        if self.batch_sizes:
            out["batch_windows_mean"] = round(sum(self.batch_sizes) / len(self.batch_sizes), 2)
            out["batch_windows_max"] = max(self.batch_sizes)
            lat = sorted(self.latencies)
            out["score_latency_ms_p50"] = round(1000 * lat[len(lat) // 2], 1)
            out["score_latency_ms_max"] = round(1000 * lat[-1], 1)
        cache_info = cache_info if cache_info is not None else self.cache_info
        if cache_info:
            out["cache_hit_rate"] = _hit_rate(cache_info)
            out["cache_size"] = cache_info.get("size")
        if self._rate_mark is not None:
            out["lines_per_second"] = round(self.lines_per_second, 1)
        if self.consumer_lag:
            out["consumer_lag"] = dict(sorted(self.consumer_lag.items()))
        return out

    def log(self, cache_info: dict[str, Any] | None = None) -> None:
        log.info("metrics %s", json.dumps(self.snapshot(cache_info), sort_keys=True))


CLOSED_COUNTERS = ("sessions_closed_idle", "sessions_evicted_overflow", "sessions_evicted_too_long")


def drain_status(m: Mapping[str, Any], lines_sent: int) -> str | None:
    """None when a worker whose counters are `m` (a `metrics {json}` snapshot) has finished with `lines_sent`
    input lines; else what it is still waiting for.

    Decided from what the score agent did, never from the route's `lines_in`: the route can have read every line
    while the score agent has not opened a single session yet (no session open, nothing scored). Finished means
    every line was added to a session or counted as bad input, every session opened was closed, every window made
    was scored (or failed), and no session is left in the table: the score agent deletes a closed session only
    after its alerts were sent, so by then every alert of the input is on its way (`alerts_out` is final)."""
    bad = sum(int(v) for k, v in m.items() if k.startswith("bad_"))
    applied = int(m.get("lines_applied", 0))
    opened = int(m.get("sessions_opened", 0))
    closed = sum(int(m.get(k, 0)) for k in CLOSED_COUNTERS)
    due = int(m.get("windows_due", 0))
    done = int(m.get("windows_scored", 0)) + int(m.get("windows_failed", 0))
    if applied + bad < lines_sent:
        return f"{applied + bad} of {lines_sent} lines applied to sessions or counted as bad"
    if closed < opened:
        return f"{opened - closed} of {opened} sessions still open"
    if done < due:
        return f"{due - done} of {due} windows not scored yet"
    if int(m.get("open_sessions", 1)) != 0:
        return f"{m.get('open_sessions', 'an unknown number of')} sessions left in the session table"
    return None


def _hit_rate(cache_info: Mapping[str, Any]) -> float | None:
    total = cache_info.get("hits", 0) + cache_info.get("misses", 0)
    return round(cache_info.get("hits", 0) / total, 4) if total else None


def metric_name(name: str) -> str:
    """A counter name as a Prometheus metric name: logmoe_<name>, characters outside [a-zA-Z0-9_] -> _."""
    return f"{PREFIX}_{re.sub(r'[^a-zA-Z0-9_]', '_', name)}"


class _CountsCollector(Collector):
    """Reads `Metrics` at scrape time (from the HTTP thread: dict copies only, no iteration over live dicts)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        counts = dict(m.counts)  # one atomic copy; the event loop keeps counting meanwhile
        labelled = {family: CounterMetricFamily(metric_name(family), help_, labels=[label])
                    for _, family, label, help_ in _LABELLED}
        for name, value in sorted(counts.items()):
            if name in GAUGES_IN_COUNTS:
                yield GaugeMetricFamily(metric_name(name), GAUGES_IN_COUNTS[name], value=value)
                continue
            for prefix, family, _, _ in _LABELLED:
                if name.startswith(prefix):
                    labelled[family].add_metric([name[len(prefix):]], value)
                    break
            else:
                yield CounterMetricFamily(metric_name(name), _HELP.get(name, name.replace("_", " ")), value=value)
        yield from labelled.values()
        yield GaugeMetricFamily(f"{PREFIX}_lines_per_second",
                                "Lines read per second over the last metrics interval.", value=m.lines_per_second)
        lag = GaugeMetricFamily(f"{PREFIX}_consumer_lag",
                                "Records behind the high watermark on this worker's assigned partitions, by topic "
                                "(updated every metrics_interval).", labels=["topic"])
        for topic, value in sorted(dict(m.consumer_lag).items()):
            lag.add_metric([topic], value)
        yield lag
        info = m.cache_info
        if info:
            yield CounterMetricFamily(f"{PREFIX}_encoder_cache_hits", "Lines embedded from the encoder cache.",
                                      value=info.get("hits", 0))
            yield CounterMetricFamily(f"{PREFIX}_encoder_cache_misses", "Distinct lines run through the encoder.",
                                      value=info.get("misses", 0))
            yield GaugeMetricFamily(f"{PREFIX}_encoder_cache_size", "Embeddings held in the encoder cache.",
                                    value=info.get("size", 0))
            rate = _hit_rate(info)
            yield GaugeMetricFamily(f"{PREFIX}_encoder_cache_hit_ratio", "Encoder cache hits / lookups.",
                                    value=rate if rate is not None else float("nan"))
        model = dict(m.model)
        if model:
            keys = sorted(model)
            family = GaugeMetricFamily(f"{PREFIX}_model_info", "The model scoring now (value 1).", labels=keys)
            family.add_metric([model[k] for k in keys], 1)
            yield family
