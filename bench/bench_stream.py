"""Streaming evaluation: the worker's alerts against the labels, with and without early alerts, side by side with the
offline metrics.

What it runs (everything on this machine, everything stopped on the way out, Ctrl-C and errors included):
1. the embedded Kafka-protocol broker (`stream.broker.EmbeddedBroker`, Tansu, in-memory) on a free port;
2. per mode (`--modes`: `early` = the worker with `early_alerts=true`, `closing` = `early_alerts=false`, `default` =
   the worker's own default), one after the other, `logmoe worker --broker B --model M --session-idle S` as a
   subprocess with an app id and topics of its own and `metrics_interval` small, its output in
   `<work-dir>/worker-<mode>.log`;
3. a replay of the stream into that mode's input topic, each line keyed by its session, paced at `--rate` lines/s if
   given (else as fast as the client sends);
4. waits until the worker's score agent is done (`stream.metrics.drain_status` on its `metrics {json}` log lines:
   every replayed line applied to a session or counted as bad, every session closed and its windows scored, the
   session table empty; never from end offsets, which the embedded broker gets wrong, see BROKER.md, nor from
   the route's `lines_in`, which is complete before the score agent has opened a session). Meanwhile, once the
   first worker has read everything and only the idle wait is left, `logmoe evaluate --model M --data … --json`
   runs on the same sessions;
5. reads that mode's alerts topic from the beginning until no new alert arrives for a few seconds (and at least
   the worker's `alerts_out` arrived), drops redeliveries by `alert_id`, and scores per session against the labels
   (a session is predicted anomalous when it raised at least one alert).

Inputs. Session-keyed logs (HDFS, the default): `--stream` lines keyed by `--key-regex` (the block id; the worker's
`--session-key`), `--labels` (session_id,label) and `--dev` (the same sessions as JSONL, for `logmoe evaluate`;
e.g. ../shared/data/hdfs_real/dev_stream.log, dev_labels.csv, dev.jsonl). Line-labelled logs (BGL):
`--labelled-log FILE` (label first, cut off as training cuts it: `--label-regex`, `--normal-labels`) streams the
lines in time order, each fixed run of `--chunk` lines (the model's window, 64) one session keyed by the message
key (the worker's `session_key=[]`): a BGL window is what the model was trained and calibrated on, and the unkeyed
catch-all session the README streams never closes, so "before close" and session precision need sessions that do.
The chunks are written to `<work-dir>/chunks.jsonl` for `logmoe evaluate`.

Early detection. "Alerted before close": the session's first alert is not a closing one (`window.final` false);
"before its last line": the first alert's window ends before the session's last line. The first anomalous
evidence of an anomalous session is its first line never seen in a normal training session (the model's
`normal_lines.json`), else its last line (the evidence is the whole session, e.g. a block with too few lines); for
line-labelled logs, its first alert-labelled line. Lines to the first alert: the alert window's end minus that
position; seconds: the alert record's Kafka timestamp minus the evidence line's (the producer's send time, which
the alert carries for each of its window's lines). With a fast replay the worker lags behind the producer and the
seconds measure the lag: pace it (`--rate`) below what the worker sustains.

Why `--session-idle`: the worker closes a session after that many seconds of *wall-clock* time without a new line
for it, and a session's lines are spread over the stream. If the idle time were shorter than the longest gap
between two lines of a session in replay time (fast replay: the time the worker needs to read the whole stream),
a session would be closed (and scored) before its last lines arrive, then reopened: not the session the offline
evaluation scores. The run reports `sessions reopened` (it must be 0).

`--limit-sessions N` keeps the first N sessions of a keyed stream (in order of first appearance) and writes the
filtered stream, labels and dev sessions to the work folder: a quick version (use a smaller `--session-idle`).
`--client librdkafka` replays and reads the alerts with confluent-kafka (librdkafka, what Fluent Bit, Vector and
kcat are built on) instead of kafka-python. Results (markdown) go to stdout, progress to stderr; `--json-out F`
writes everything as JSON too.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _common import (REPO_ROOT, default_data_dir, fmt, markdown_table, print_header, read_session_labels,
                     setup_logging, write_json)

from model.checkpoint import NORMAL_LINES_FILE
from stream.broker import terminate
from stream.metrics import CLOSED_COUNTERS, drain_status
from stream.records import match_key

logger = logging.getLogger("bench.stream")

KEY_REGEX = r"(blk_-?\d+)"
F1_GOAL = 0.005
MODES = {"early": "true", "closing": "false", "default": None}  # early_alerts per mode (None: the worker's default)


# --------------------------------------------------------------------------------------------- inputs

@dataclass
class StreamInput:
    """What is replayed, how the worker keys it, and what it is scored against."""

    name: str
    lines: list[bytes]  # in replay order
    keys: list[bytes | None]  # the message key of each line
    session_key: list[str]  # the worker's session_key regexes ([]: the message key is the session)
    order: list[str]  # sessions in order of first appearance
    lengths: dict[str, int]
    labels: dict[str, int]
    dev: Path  # the same sessions for `logmoe evaluate`
    evaluate_sets: list[str] = field(default_factory=list)  # its --set arguments
    evidence: dict[str, int] = field(default_factory=dict)  # anomalous session -> position of its first evidence
    evidence_kind: str = ""
    unkeyed: int = 0


def session_of(line: str, key_re: re.Pattern[str]) -> str | None:
    m = key_re.search(line)
    return match_key(m) if m else None  # the worker's rule (stream.records)


def stream_sessions(path: Path, key_re: re.Pattern[str]) -> tuple[list[str], dict[str, int], int]:
    """(session ids in order of first appearance, lines per session, lines without a session key)."""
    order: list[str] = []
    lengths: dict[str, int] = {}
    unkeyed = 0
    with path.open(encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.rstrip("\r\n")
            if not line:
                continue  # replay drops blank lines too
            key = session_of(line, key_re)
            if key is None:
                unkeyed += 1
            elif key not in lengths:
                order.append(key)
                lengths[key] = 1
            else:
                lengths[key] += 1
    return order, lengths, unkeyed


def limit_inputs(stream: Path, labels: Path, dev: Path, keep: set[str], key_re: re.Pattern[str],
                 out: Path) -> tuple[Path, Path, Path]:
    """Write the stream, labels and dev sessions restricted to the `keep` session ids into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / stream.name, out / labels.name, out / dev.name)
    with stream.open("rb") as src, paths[0].open("wb") as dst:
        for raw in src:
            if session_of(raw.decode("utf-8", "replace"), key_re) in keep:
                dst.write(raw)
    with labels.open(encoding="utf-8", newline="") as src, paths[1].open("w", encoding="utf-8", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames or ["session_id", "label"])
        writer.writeheader()
        writer.writerows(row for row in reader if row["session_id"] in keep)
    with dev.open(encoding="utf-8") as src, paths[2].open("w", encoding="utf-8") as dst:
        for text in src:
            if text.strip() and str(json.loads(text).get("session_id")) in keep:
                dst.write(text)
    return paths


def normal_lines_of(model: Path) -> frozenset[str] | None:
    path = model / NORMAL_LINES_FILE
    return frozenset(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def keyed_input(args: argparse.Namespace, work: Path) -> StreamInput:
    """A session-keyed stream (HDFS): the lines as they are, keyed by the session regex."""
    from model.masking import mask

    key_re = re.compile(args.key_regex)
    stream, labels_path, dev = Path(args.stream), Path(args.labels), Path(args.dev)
    for path in (stream, labels_path, dev):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (set --stream/--labels/--dev or $LOGMOE_SHARED_DATA)")
    if args.limit_sessions:
        order, _, _ = stream_sessions(stream, key_re)
        keep = set(order[: args.limit_sessions])
        stream, labels_path, dev = limit_inputs(stream, labels_path, dev, keep, key_re, work / "inputs")
        logger.info("limited to the first %d sessions: %s", len(keep), work / "inputs")
    order, lengths, unkeyed = stream_sessions(stream, key_re)
    labels = read_session_labels(labels_path)
    normal = normal_lines_of(Path(args.model))
    lines, keys = [], []
    seen: dict[str, int] = {}
    evidence: dict[str, int] = {}
    with stream.open("rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            text = line.decode("utf-8", "replace")
            key = session_of(text, key_re)
            lines.append(line)
            keys.append(key.encode() if key is not None else None)
            if key is None:
                continue
            seen[key] = seen.get(key, 0) + 1
            if labels.get(key) == 1 and key not in evidence and normal is not None and mask(text) not in normal:
                evidence[key] = seen[key]
    for key, label in labels.items():
        if label == 1 and key in lengths:
            evidence.setdefault(key, lengths[key])  # no never-normal line: the whole session is the evidence
    return StreamInput(stream.parent.name + "/" + stream.name, lines, keys, [args.key_regex], order, lengths, labels,
                       dev, evidence=evidence, unkeyed=unkeyed,
                       evidence_kind="first line never seen in a normal training session, else the last line"
                       if normal is not None else "the last line (the model has no normal_lines.json)")


def labelled_input(args: argparse.Namespace, work: Path) -> StreamInput:
    """A line-labelled log (BGL) in time order, the label cut off as training cuts it, every `--chunk` lines one
    session keyed by the message key; the chunks as JSONL sessions for `logmoe evaluate`."""
    from train.adapters import labelled_lines_from_log
    from train.data import Session, write_jsonl

    path = Path(args.labelled_log)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (set --labelled-log or $LOGMOE_SHARED_DATA)")
    labelled = labelled_lines_from_log(path, args.label_regex, args.normal_labels)
    lines, keys, order, lengths, labels, evidence = [], [], [], {}, {}, {}
    sessions = []
    for start in range(0, len(labelled), args.chunk):
        key = f"w{start // args.chunk:05d}"
        chunk = labelled[start:start + args.chunk]
        order.append(key)
        lengths[key] = len(chunk)
        labels[key] = int(any(flag for _, flag in chunk))
        first = next((i + 1 for i, (_, flag) in enumerate(chunk) if flag), None)
        if first is not None:
            evidence[key] = first
        for text, _ in chunk:
            lines.append(text.encode("utf-8"))
            keys.append(key.encode())
        sessions.append(Session(key, tuple(text for text, _ in chunk), labels[key]))
    work.mkdir(parents=True, exist_ok=True)
    dev = work / "chunks.jsonl"
    write_jsonl(dev, sessions)
    return StreamInput(f"{path.parent.name}/{path.name} in sessions of {args.chunk} lines", lines, keys, [], order,
                       lengths, labels, dev, evidence=evidence, evidence_kind="first alert-labelled line")


# --------------------------------------------------------------------------------------------- processes

def logmoe(*args: str) -> list[str]:
    return [sys.executable, "-m", "model.cli", *args]


def child_env(threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def start_worker(bootstrap: str, model: Path, args: argparse.Namespace, log_path: Path, mode: str,
                 session_key: list[str]) -> subprocess.Popen[bytes]:
    app = f"logmoe-bench-stream-{os.getpid()}-{mode}"
    sets = [f"app_id={app}", f"topic_logs=logs-{mode}", f"topic_sessions={app}-sessions",
            f"topic_alerts=alerts-{mode}", f"metrics_interval={args.metrics_interval}", "device=cpu",
            f"session_key={json.dumps(session_key)}", *args.worker_set]
    if MODES[mode] is not None:
        sets.append(f"early_alerts={MODES[mode]}")
    cmd = logmoe("worker", "--broker", bootstrap, "--model", str(model.resolve()), "--session-idle",
                 str(args.session_idle), *[x for item in sets for x in ("--set", item)])
    logger.info("worker: %s (log %s)", " ".join(cmd), log_path)
    with log_path.open("wb") as out:
        # Own session: a Ctrl-C in the terminal reaches only us; we stop the worker ourselves, in order.
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(args.threads), cwd=log_path.parent, start_new_session=True)


def stop_process(proc: subprocess.Popen[Any] | None, name: str, timeout: float = 30.0) -> None:
    if proc is not None and proc.poll() is None:
        logger.info("stopping %s (pid %d)", name, proc.pid)
    terminate(proc, timeout, name)


def read_log(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""


def wait_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}:\n{read_log(log_path)[-3000:]}")
        if "Worker]: Ready" in read_tail(log_path):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the worker was not ready after {timeout:.0f} s (log: {log_path})")


def read_tail(path: Path, size: int = 256 * 1024) -> str:
    """The last `size` bytes of a growing log (polled every second: never the whole file)."""
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - size))
        return fh.read().decode("utf-8", "replace")


def last_metrics(log_path: Path) -> dict[str, Any]:
    """The worker's latest complete `metrics {json}` counters (empty before the first one); a line the worker is
    still writing is skipped."""
    for line in reversed(read_tail(log_path).splitlines()):
        if " metrics {" in line:
            try:
                return json.loads(line.split(" metrics ", 1)[1])
            except json.JSONDecodeError:
                continue
    return {}


def bad_lines(m: dict[str, Any]) -> int:
    return sum(int(v) for k, v in m.items() if k.startswith("bad_"))


def lines_taken(m: dict[str, Any]) -> int:
    """Lines the route has read (kept or bad): when reading is done, not when the worker is."""
    return int(m.get("lines_in", 0)) + bad_lines(m)


def lines_in_sessions(m: dict[str, Any]) -> int:
    """Lines the score agent has added to a session, plus the bad ones (which never reach it)."""
    return int(m.get("lines_applied", 0)) + bad_lines(m)


def sessions_closed(m: dict[str, Any]) -> int:
    return sum(int(m.get(k, 0)) for k in CLOSED_COUNTERS)


def drained(m: dict[str, Any], sent: int, n_sessions: int) -> bool:
    """The score agent is done with the `sent` lines (stream.metrics.drain_status: every line in a session, every
    session closed, every window scored, the table empty) and opened at least every distinct session."""
    return drain_status(m, sent) is None and int(m.get("sessions_opened", 0)) >= n_sessions


# --------------------------------------------------------------------------------------------- scoring

def first_alerts(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per session, its alert with the smallest window end (the first one raised)."""
    first: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        s = alert["session"]
        if s not in first or alert["window"]["end"] < first[s]["window"]["end"]:
            first[s] = alert
    return first


def stream_metrics(labels: dict[str, int], alerted: set[str]) -> dict[str, Any]:
    from train.metrics import classification_metrics

    sessions = sorted(labels)
    y = [labels[s] for s in sessions]
    pred = [1.0 if s in alerted else 0.0 for s in sessions]
    m = classification_metrics(y, pred, 0.5)
    for key in ("pr_auc", "roc_auc", "threshold"):
        m.pop(key, None)  # a yes/no per session has no ranking
    return m


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    return {"n": len(a), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "max": float(a.max())}


def detection_delay(first: dict[str, dict[str, Any]], inp: StreamInput) -> dict[str, Any]:
    """For the anomalous sessions that alerted: where the first alert came (line, share of the session, before
    close, before the last line) and how many lines and seconds after the session's first anomalous evidence."""
    hits = [s for s in first if inp.labels.get(s) == 1]
    anomalous = sum(1 for s, y in inp.labels.items() if y == 1 and s in inp.lengths)
    ends = [first[s]["window"]["end"] for s in hits]
    lines_after, seconds_after, no_ts = [], [], 0
    for s in hits:
        alert, evidence = first[s], inp.evidence.get(s)
        if evidence is None:
            continue
        lines_after.append(alert["window"]["end"] - evidence)
        sent = next((ln["ts"] for ln in alert["lines"] if ln["n"] == evidence), None)
        if sent is None or "_received" not in alert:
            no_ts += 1  # the evidence line is not in the alert's window (it came before, or after, the window)
        else:
            seconds_after.append(alert["_received"] - float(sent))
    before_close = sum(1 for s in hits if not first[s]["window"].get("final"))
    before_last = sum(1 for s in hits if first[s]["window"]["end"] < inp.lengths.get(s, 0))
    return {"detected": len(hits), "anomalous": anomalous, "first_alert_line": _stats(ends),
            "median_fraction_of_session": float(np.median([first[s]["window"]["end"] / max(1, inp.lengths[s])
                                                           for s in hits])) if hits else None,
            "alerted_before_close": before_close, "alerted_before_last_line": before_last,
            "share_before_close": before_close / anomalous if anomalous else 0.0,
            "share_before_last_line": before_last / anomalous if anomalous else 0.0,
            "lines_after_evidence": _stats(lines_after), "seconds_after_evidence": _stats(seconds_after),
            "evidence_line_not_in_alert": no_ts, "early_alerts": sum(1 for s in hits if first[s]["window"].get("early"))}


# --------------------------------------------------------------------------------------------- kafka

def produce(bootstrap: str, topic: str, inp: StreamInput, rate: float | None, client: str) -> dict[str, Any]:
    """Send every line keyed by its session (one record per batch on kafka-python, BROKER.md; librdkafka batches as
    a log shipper does), paced to `rate` lines/s if given. Unkeyed lines go to partition 0, as `logmoe replay`
    sends them, so their order holds."""
    started = time.monotonic()
    if client == "librdkafka":
        import confluent_kafka

        producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
        failed: list[Any] = []
        for i, (line, key) in enumerate(zip(inp.lines, inp.keys)):
            while True:
                try:
                    kwargs = {"partition": 0} if key is None else {}
                    producer.produce(topic, value=line, key=key, **kwargs,
                                     on_delivery=lambda err, _msg: failed.append(err) if err else None)
                    break
                except BufferError:  # librdkafka's local queue is full: let it deliver, then go on
                    producer.poll(0.5)
            producer.poll(0)
            _pace(started, i + 1, rate)
        if producer.flush(120) or failed:
            raise RuntimeError(f"librdkafka could not deliver every line: {failed[:3]}")
    else:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=bootstrap, batch_size=0, linger_ms=0, acks=1, retries=3,
                                 enable_idempotence=False)
        futures = []
        try:
            for i, (line, key) in enumerate(zip(inp.lines, inp.keys)):
                futures.append(producer.send(topic, value=line, key=key, partition=0 if key is None else None))
                if len(futures) >= 1000:
                    for fut in futures:
                        fut.get(timeout=60)
                    futures.clear()
                _pace(started, i + 1, rate)
            for fut in futures:
                fut.get(timeout=60)
            producer.flush()
        finally:
            producer.close()
    return {"sent": len(inp.lines), "skipped": 0, "seconds": time.monotonic() - started, "rate": rate}


def _pace(started: float, sent: int, rate: float | None) -> None:
    if rate:
        delay = started + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def read_alerts(bootstrap: str, topic: str, quiet: float, client: str) -> list[dict[str, Any]]:
    """Every alert on `topic` from the beginning until `quiet` seconds pass without one; each gets `_received`, its
    record's Kafka timestamp in seconds (when the worker sent it)."""
    alerts: list[dict[str, Any]] = []
    last = time.monotonic()
    if client == "librdkafka":
        import confluent_kafka

        consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{os.getpid()}",
                                             "enable.auto.commit": False})
        try:
            partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                             for p in partitions])
            while time.monotonic() - last < quiet:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    raise RuntimeError(f"reading {topic}: {msg.error()}")
                alerts.append({**json.loads(msg.value()), "_received": msg.timestamp()[1] / 1000.0})
                last = time.monotonic()
        finally:
            consumer.close()
        return alerts
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None)
    try:
        while time.monotonic() - last < quiet:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    alerts.append({**json.loads(record.value), "_received": record.timestamp / 1000.0})
                    last = time.monotonic()
    finally:
        consumer.close()
    return alerts


# --------------------------------------------------------------------------------------------- the run

def run_mode(args: argparse.Namespace, broker: Any, inp: StreamInput, mode: str, work: Path,
             on_read_all: Any) -> dict[str, Any]:
    """One worker in `mode` on a fresh input topic: replay, wait until drained, read its alerts, score them."""
    from stream.topics import TopicSpec, ensure_topics

    worker_log = work / f"worker-{mode}.log"
    topic = f"logs-{mode}"
    ensure_topics(broker.bootstrap, [TopicSpec(topic, 4)])
    worker = None
    out: dict[str, Any] = {"mode": mode, "early_alerts": MODES[mode]}
    try:
        started = time.monotonic()
        worker = start_worker(broker.bootstrap, Path(args.model), args, worker_log, mode, inp.session_key)
        wait_ready(worker, worker_log, args.ready_timeout)
        out["worker_ready_s"] = time.monotonic() - started
        t0 = time.monotonic()
        out["replay"] = produce(broker.bootstrap, topic, inp, args.rate, args.client)
        sent = out["replay"]["sent"]
        logger.info("%s: replayed %d lines in %.1f s", mode, sent, out["replay"]["seconds"])
        deadline = time.monotonic() + args.drain_timeout
        read_all_at = None
        while True:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with {worker.returncode}:\n{read_log(worker_log)[-3000:]}")
            m = last_metrics(worker_log)
            if read_all_at is None and lines_taken(m) >= sent:
                read_all_at = time.monotonic()
                out["worker_read_all_s"] = read_all_at - t0
                logger.info("%s: the worker has read all %d lines %.1f s after the replay began; %d sessions open, "
                            "closing after %.0f s idle", mode, sent, read_all_at - t0, m.get("open_sessions", -1),
                            args.session_idle)
                on_read_all()
            if drained(m, sent, len(inp.order)):
                out["drained_s"] = time.monotonic() - t0
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not read every line and close every session within "
                                   f"{args.drain_timeout:.0f} s; last counters: {json.dumps(m)}")
            time.sleep(1.0)
        logger.info("%s: every session closed %.1f s after the replay began", mode, out["drained_s"])
        raw = read_alerts(broker.bootstrap, f"alerts-{mode}", args.alerts_quiet, args.client)
        out["worker_metrics"] = last_metrics(worker_log)
        if len(raw) < int(m.get("alerts_out", 0)):
            raise RuntimeError(f"read {len(raw)} alerts back, the worker sent {m['alerts_out']}; raise --alerts-quiet")
    finally:
        stop_process(worker, f"worker ({mode})")
    unique = {a["alert_id"]: a for a in raw}
    first = first_alerts(list(unique.values()))
    alerted = set(first)
    out["alerts"] = {"read": len(raw), "unique": len(unique), "redeliveries": len(raw) - len(unique),
                     "early": sum(1 for a in unique.values() if a["window"].get("early")),
                     "sessions_alerted": len(alerted), "alerted_not_labelled": sorted(alerted - set(inp.labels))}
    out["stream"] = stream_metrics(inp.labels, alerted)
    out["stream"]["false_positives"] = sorted(s for s in alerted if inp.labels.get(s) == 0)
    out["stream"]["false_negatives"] = sorted(s for s, y in inp.labels.items() if y == 1 and s not in alerted)
    out["delay"] = detection_delay(first, inp)
    out["sessions_reopened"] = int(out["worker_metrics"].get("sessions_opened", 0)) - len(inp.order)
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from stream.broker import EmbeddedBroker

    if not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"{args.model}/config.json not found (set --model)")
    inp = labelled_input(args, work) if args.labelled_log else keyed_input(args, work)
    logger.info("%s: %d lines, %d sessions (%d lines without a key); %d labelled sessions, %d anomalous",
                inp.name, len(inp.lines), len(inp.order), inp.unkeyed, len(inp.labels), sum(inp.labels.values()))
    eval_out = work / "offline_evaluate.json"
    evaluator: list[subprocess.Popen[bytes]] = []

    def start_evaluate() -> None:
        """The first worker's idle wait is a good time to run the offline evaluation."""
        if evaluator:
            return
        with eval_out.open("wb") as out, (work / "offline_evaluate.log").open("wb") as err:
            evaluator.append(subprocess.Popen(
                logmoe("evaluate", "--model", str(args.model), "--data", str(inp.dev), "--json", "--set",
                       "device=cpu", *[x for s in inp.evaluate_sets for x in ("--set", s)]),
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env(args.threads), cwd=REPO_ROOT,
                start_new_session=True))

    result: dict[str, Any] = {"client": args.client, "model": str(Path(args.model).resolve()),
                              "session_idle": args.session_idle, "rate": args.rate,
                              "inputs": {"name": inp.name, "lines": len(inp.lines), "sessions": len(inp.order),
                                         "lines_without_key": inp.unkeyed, "labelled_sessions": len(inp.labels),
                                         "anomalous": sum(inp.labels.values()), "evidence": inp.evidence_kind},
                              "modes": {}}
    ok = False
    try:
        with EmbeddedBroker() as broker:
            logger.info("embedded broker on %s (pid %s)", broker.bootstrap, broker.pid)
            for mode in args.modes:
                result["modes"][mode] = run_mode(args, broker, inp, mode, work, start_evaluate)
        ok = True
    finally:
        if not ok and evaluator:
            stop_process(evaluator[0], "offline evaluate")
    if not evaluator:
        raise RuntimeError("the offline evaluation never started")
    try:
        code = evaluator[0].wait(args.eval_timeout)
    except subprocess.TimeoutExpired:
        stop_process(evaluator[0], "offline evaluate")
        raise
    if code != 0:
        raise RuntimeError(f"logmoe evaluate exited {code}: {read_log(work / 'offline_evaluate.log')[-2000:]}")
    result["offline"] = json.loads(eval_out.read_text(encoding="utf-8"))
    for mode, r in result["modes"].items():
        r["f1_abs_diff_offline"] = abs(r["stream"]["f1"] - result["offline"]["f1"])
    return result


# --------------------------------------------------------------------------------------------- output

def print_report(r: dict[str, Any]) -> None:
    modes, o = r["modes"], r["offline"]
    rows = []
    for mode, m in modes.items():
        s = m["stream"]
        (tn, fp), (fn, tp) = s["confusion_matrix"]
        rows.append([f"streaming, {mode} (early_alerts={m['early_alerts'] or 'default'})", s["n"], s["n_anomalous"],
                     s["precision"], s["recall"], s["f1"], tn, fp, fn, tp])
    (tn, fp), (fn, tp) = o["confusion_matrix"]
    rows.append(["offline: `logmoe evaluate` (closing scores)", o["n"], o["n_anomalous"], o["precision"],
                 o["recall"], o["f1"], tn, fp, fn, tp])
    print(markdown_table(["evaluation", "sessions", "anomalous", "precision", "recall", "F1", "TN", "FP", "FN",
                          "TP"], rows))
    print(f"\nOffline threshold {fmt(o.get('threshold'))}, PR-AUC {fmt(o.get('pr_auc'))}. "
          f"First anomalous evidence: {r['inputs']['evidence']}.\n")
    rows = []
    for mode, m in modes.items():
        d = m["delay"]
        la, sa = d["lines_after_evidence"], d["seconds_after_evidence"]
        rows.append([mode, f"{d['detected']} / {d['anomalous']}",
                     f"{d['alerted_before_close']} ({d['share_before_close']:.1%})",
                     f"{d['alerted_before_last_line']} ({d['share_before_last_line']:.1%})",
                     fmt(d["first_alert_line"].get("median"), 1), fmt(la.get("median"), 1), fmt(la.get("p90"), 1),
                     fmt(sa.get("median"), 2), fmt(sa.get("p90"), 2), f"{sa['n']}"])
    print(markdown_table(["mode", "anomalous sessions alerted", "first alert before close",
                          "first alert before the session's last line", "first alert at line (median)",
                          "lines after the evidence (median)", "p90", "seconds after the evidence (median)", "p90",
                          "sessions timed"], rows))
    for mode, m in modes.items():
        w, a = m["worker_metrics"], m["alerts"]
        print(f"\n{mode}:\n")
        print(markdown_table(["run fact", "value"], [
            ["lines replayed; pace", f"{m['replay']['sent']}; "
                                     f"{(str(m['replay']['rate']) + ' lines/s') if m['replay']['rate'] else 'unpaced'}"],
            ["worker: lines_in, bad lines",
             f"{w.get('lines_in')}, {sum(v for k, v in w.items() if k.startswith('bad_'))}"],
            ["worker: sessions opened / closed idle / evicted",
             f"{w.get('sessions_opened')} / {w.get('sessions_closed_idle')} / "
             f"{w.get('sessions_evicted_overflow', 0) + w.get('sessions_evicted_too_long', 0)}"],
            ["sessions reopened (closed before their last line; must be 0)", m["sessions_reopened"]],
            ["worker: windows scored (of them early) (failed)",
             f"{w.get('windows_scored')} ({w.get('windows_early', 0)}) ({w.get('windows_failed', 0)})"],
            ["worker: alerts out (of them early) / suppressed by cooldown",
             f"{w.get('alerts_out')} ({w.get('alerts_early', 0)}) / {w.get('alerts_suppressed_cooldown', 0)}"],
            ["alerts read / unique (redeliveries dropped)", f"{a['read']} / {a['unique']}"],
            ["alerted sessions not in the labels", len(a["alerted_not_labelled"])],
            ["replay (s) / worker read every line (s) / every session closed (s)",
             f"{m['replay']['seconds']:.1f} / {m.get('worker_read_all_s', 0):.1f} / {m.get('drained_s', 0):.1f}"],
            ["worker scoring latency p50 / max (ms), mean windows per batch",
             f"{w.get('score_latency_ms_p50')} / {w.get('score_latency_ms_max')}, {w.get('batch_windows_mean')}"],
            ["|F1 streaming - F1 offline|", fmt(m["f1_abs_diff_offline"])],
        ]))
    if "early" in modes and "closing" in modes:
        e, c = modes["early"], modes["closing"]
        drop = c["stream"]["precision"] - e["stream"]["precision"]
        print(f"\n- early alerts: {e['delay']['share_before_close']:.1%} of the anomalous sessions alerted before "
              f"close ({e['delay']['share_before_last_line']:.1%} before their last line); session precision "
              f"{e['stream']['precision']:.4f} with early alerts vs {c['stream']['precision']:.4f} closing only "
              f"({drop:+.4f} below), recall {e['stream']['recall']:.4f} vs {c['stream']['recall']:.4f}")
    print(f"\n- model: `{r['model']}`; session idle {r['session_idle']:g} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    hdfs = default_data_dir() / "hdfs"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="trained model folder (…/final_moe_model)")
    p.add_argument("--stream", default=str(hdfs / "dev_stream.log"), help="session-keyed log file to replay")
    p.add_argument("--labels", default=str(hdfs / "dev_labels.csv"), help="session_id,label CSV")
    p.add_argument("--dev", default=str(hdfs / "dev.jsonl"), help="the same sessions as JSONL, for logmoe evaluate")
    p.add_argument("--key-regex", default=KEY_REGEX, help="session key regex (worker and replay)")
    p.add_argument("--labelled-log", default=None,
                   help="stream a line-labelled log instead (BGL's dev_labelled.log): the label cut off, every "
                        "--chunk lines one session")
    p.add_argument("--label-regex", default=r"^(\S+)\s", help="--labelled-log: the label's regex (one group)")
    p.add_argument("--normal-labels", nargs="+", default=["-"], help="--labelled-log: labels that mean normal")
    p.add_argument("--chunk", type=int, default=64, help="--labelled-log: lines per session (the model's window)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=["early", "closing"],
                   help="worker runs, one after the other: early_alerts true, false, or the worker's default")
    p.add_argument("--rate", type=float, default=0.0, help="replay pace in lines/s (0: as fast as the client sends)")
    p.add_argument("--worker-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra worker setting (repeatable)")
    p.add_argument("--session-idle", type=float, default=300.0,
                   help="worker session idle seconds (wall clock): must exceed the longest gap between two lines of "
                        "a session in replay time, or sessions close before their last line")
    p.add_argument("--limit-sessions", type=int, default=0, metavar="N", help="only the first N sessions (quick run)")
    p.add_argument("--metrics-interval", type=float, default=2.0, help="worker counter log interval (s)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the worker and logmoe evaluate")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for the worker to start")
    p.add_argument("--drain-timeout", type=float, default=3600.0,
                   help="seconds after the replay starts for every session to close")
    p.add_argument("--eval-timeout", type=float, default=1800.0, help="seconds to wait for logmoe evaluate")
    p.add_argument("--alerts-quiet", type=float, default=10.0, help="stop reading alerts after this many quiet seconds")
    p.add_argument("--work-dir", default=None, help="keep the worker logs and inputs here (default: a temp folder)")
    p.add_argument("--client", choices=("kafka-python", "librdkafka"), default="kafka-python",
                   help="the client that replays the stream and reads the alerts (librdkafka: confluent-kafka)")
    p.add_argument("--json-out", default=None, help="also write the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.limit_sessions < 0:
        p.error(f"--limit-sessions must be >= 0, got {args.limit_sessions}")
    if args.limit_sessions and args.labelled_log:
        p.error("--limit-sessions is for session-keyed streams, not --labelled-log")
    if args.session_idle <= 0:
        p.error(f"--session-idle must be > 0, got {args.session_idle}")
    if args.rate < 0 or args.chunk < 1:
        p.error(f"--rate must be >= 0 and --chunk >= 1, got {args.rate}, {args.chunk}")
    args.modes = list(dict.fromkeys(args.modes))
    return args


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    for name in ("kafka", "aiokafka"):
        logging.getLogger(name).setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a SIGTERM unwinds like Ctrl-C: the finally blocks run
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    logger.info("work folder (worker logs, evaluate output, inputs): %s", work)
    try:
        result = run(args, work)
    except KeyboardInterrupt:
        logger.error("interrupted; everything started was stopped; logs kept in %s", work)
        return 130
    except (FileNotFoundError, ValueError) as exc:
        logger.error("%s (logs kept in %s)", exc, work)
        return 2
    except Exception:
        logger.error("failed; everything started was stopped; logs kept in %s", work)
        raise
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)  # a temp folder: kept only when something went wrong
    info = print_header(f"Streaming evaluation: worker alerts vs offline evaluate ({result['inputs']['name']}, "
                        f"client {args.client})")
    print(f"- worker and `logmoe evaluate`: device cpu, OMP_NUM_THREADS={args.threads}; replay "
          f"{f'paced at {args.rate:g} lines/s' if args.rate else 'unpaced'}\n")
    print_report(result)
    write_json(args.json_out, {"machine": info, **result})
    invalid = [mode for mode, m in result["modes"].items() if m["sessions_reopened"] or m["alerts"]["alerted_not_labelled"]]
    if invalid:
        logger.error("not a valid run (%s): sessions reopened or alerted sessions not in the labels (raise "
                     "--session-idle)", ", ".join(invalid))
        return 1
    parity = [m["f1_abs_diff_offline"] for mode, m in result["modes"].items() if mode == "closing"]
    return 0 if all(d <= F1_GOAL for d in parity) else 1


if __name__ == "__main__":
    sys.exit(main())
