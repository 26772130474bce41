"""Operator tools on plain kafka-python: replay a log file into a topic, read the alerts topic.

Both take `security`: the TLS/SASL keyword arguments of stream.security.kafka_python_kwargs (empty for
PLAINTEXT), passed to the client as they are and never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError
from tqdm import tqdm

from stream.connect import reaching
from stream.records import match_key

log = logging.getLogger(__name__)


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\r\n")
            if line:
                yield line


def replay(path: str | Path, bootstrap: str | list[str], topic: str = "logs", rate: float | None = None,
           key_regex: str | None = None, progress: bool = True,
           security: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Produce `path` line by line (bytes as they are; blank lines dropped). Returns {"sent", "skipped"}.

    `rate` limits lines per second; `key_regex` sets each message's key from the line (group 1 or the
    whole match), so each key's lines share a partition and keep their order. Without it every line goes to
    partition 0: spread over partitions, a session's lines would reach the worker out of order.
    A line the broker or client refuses (too large) is reported and skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay file {str(path)!r} does not exist")
    if rate is not None and rate <= 0:
        raise ValueError(f"--rate must be > 0 lines per second, got {rate}")
    try:
        key_re = re.compile(key_regex.encode()) if key_regex else None
    except re.error as exc:
        raise ValueError(f"--key-regex {key_regex!r} does not compile: {exc}") from None
    total = sum(1 for _ in _lines(path))
    # batch_size=0: one record per batch, so the embedded broker's end offsets stay right (BROKER.md).
    # No idempotence: the embedded broker has no InitProducerId; duplicates are harmless to the worker.
    with reaching(bootstrap, f"replay {path.name} into {topic}"):
        producer = KafkaProducer(bootstrap_servers=bootstrap, batch_size=0, linger_ms=0, acks=1, retries=3,
                                 enable_idempotence=False, **(security or {}))
    sent = skipped = 0
    started = time.monotonic()
    bar = tqdm(total=total, unit="line", desc=f"replay {path.name}", disable=not progress, file=sys.stderr)
    try:
        futures = []
        for i, line in enumerate(_lines(path)):
            key, partition = None, 0
            if key_re is not None:
                partition = None  # the key decides; unkeyed lines go wherever the partitioner puts them
                if m := key_re.search(line):
                    key = match_key(m)
            try:
                futures.append((i, producer.send(topic, value=line, key=key, partition=partition)))
            except MessageSizeTooLargeError as exc:
                skipped += 1
                log.warning("line %d (%d bytes) skipped: %s", i + 1, len(line), exc)
            if len(futures) >= 1000:
                sent, skipped = _settle(futures, sent, skipped)
            bar.update(1)
            if rate is not None:
                delay = started + (i + 1) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        sent, skipped = _settle(futures, sent, skipped)
        producer.flush()
    finally:
        bar.close()
        producer.close()
    return {"sent": sent, "skipped": skipped}


def _settle(futures: list[tuple[int, Any]], sent: int, skipped: int) -> tuple[int, int]:
    for i, fut in futures:
        try:
            fut.get(timeout=60)
            sent += 1
        except KafkaError as exc:
            if not isinstance(exc, MessageSizeTooLargeError) and "TOO_LARGE" not in type(exc).__name__.upper():
                raise
            skipped += 1
            log.warning("line %d skipped: the broker refused it (%s)", i + 1, exc)
    futures.clear()
    return sent, skipped


def consume_alerts(bootstrap: str | list[str], topic: str = "alerts", from_beginning: bool = False,
                   follow: bool = False, timeout: float = 10.0,
                   stop: Callable[[], bool] | None = None,
                   security: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Yield alert documents. Without `follow`, stop after `timeout` seconds with no new alert."""
    with reaching(bootstrap, f"read {topic}"):
        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                                 auto_offset_reset="earliest" if from_beginning else "latest",
                                 enable_auto_commit=False, group_id=None,
                                 session_timeout_ms=6000, heartbeat_interval_ms=2000, **(security or {}))
    try:
        last = time.monotonic()
        while follow or time.monotonic() - last < timeout:
            if stop is not None and stop():
                return
            batches = consumer.poll(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    last = time.monotonic()
                    try:
                        yield json.loads(record.value)
                    except ValueError:
                        log.warning("alerts %d@%d is not JSON, skipped", record.partition, record.offset)
    finally:
        consumer.close()


def format_alert(alert: dict[str, Any]) -> str:
    """A few readable lines: the verdict, then the window's suspicious lines."""
    w = alert.get("window", {})
    early = f" [early: {w.get('trigger')}, open session]" if w.get("early") else ""
    head = (f"ALERT {alert.get('alert_id', '?')[:12]} session={alert.get('session')} "
            f"score={alert.get('score', 0):.3f} (threshold {alert.get('threshold', 0):.3f}) "
            f"lines {w.get('start')}..{w.get('end')}{' [session end]' if w.get('final') else ''}{early} "
            f"unseen={alert.get('unseen_lines')} at {alert.get('detected_at')}")
    marked = [ln for ln in alert.get("lines", []) if ln.get("suspicious")]
    body = [f"    ! {ln.get('contribution', 0):+.3f}  {ln.get('line', '')[:160]}" for ln in marked]
    return "\n".join([head, *body])


def print_alerts(alerts: Iterator[dict[str, Any]], as_json: bool, out: TextIO = sys.stdout) -> int:
    n = 0
    for alert in alerts:
        n += 1
        out.write((json.dumps(alert, ensure_ascii=False) if as_json else format_alert(alert)) + "\n")
        out.flush()
    return n
