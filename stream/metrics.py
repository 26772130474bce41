"""Worker counters, logged periodically as one structured (JSON) line."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

log = logging.getLogger("stream.metrics")


class Metrics:
    """Counts (lines in, bad lines by reason, windows, alerts, evictions) and batch/latency summaries."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.batch_sizes: list[int] = []
        self.latencies: list[float] = []

    def inc(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def observe_batch(self, windows: int, seconds: float) -> None:
        self.batch_sizes.append(windows)
        self.latencies.append(seconds)
        del self.batch_sizes[:-1000], self.latencies[:-1000]

    def snapshot(self, cache_info: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(sorted(self.counts.items()))
        if self.batch_sizes:
            out["batch_windows_mean"] = round(sum(self.batch_sizes) / len(self.batch_sizes), 2)
            out["batch_windows_max"] = max(self.batch_sizes)
            lat = sorted(self.latencies)
            out["score_latency_ms_p50"] = round(1000 * lat[len(lat) // 2], 1)
            out["score_latency_ms_max"] = round(1000 * lat[-1], 1)
        if cache_info:
            total = cache_info.get("hits", 0) + cache_info.get("misses", 0)
            out["cache_hit_rate"] = round(cache_info.get("hits", 0) / total, 4) if total else None
            out["cache_size"] = cache_info.get("size")
        return out

    def log(self, cache_info: dict[str, Any] | None = None) -> None:
        log.info("metrics %s", json.dumps(self.snapshot(cache_info), sort_keys=True))
