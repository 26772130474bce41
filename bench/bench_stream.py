"""Streaming evaluation on HDFS dev: the worker's alerts against the labels, side by side with the offline metrics.

What it runs (everything on this machine, everything stopped on the way out, Ctrl-C and errors included):
1. the embedded Kafka-protocol broker (`stream.broker.EmbeddedBroker`, Tansu, in-memory) on a free port;
2. `logmoe worker --broker B --model M --session-key '(blk_-?\\d+)' --session-idle S` as a subprocess, with a
   fresh app id and `metrics_interval` small, its output in `<work-dir>/worker.log`;
3. `stream.tools.replay` of dev_stream.log into `logs`, keyed by block id (what `logmoe replay --key-regex` does);
4. waits until the worker's score agent is done (`stream.metrics.drain_status` on its `metrics {json}` log lines:
   every replayed line applied to a session or counted as bad, every session closed and its windows scored, the
   session table empty; never from end offsets, which the embedded broker gets wrong, see BROKER.md, nor from
   the route's `lines_in`, which is complete before the score agent has opened a session). Meanwhile, once the
   route has read everything and only the idle wait is left, `logmoe evaluate --model M --data dev.jsonl --json`
   runs;
5. reads the alerts topic from the beginning (kafka-python) until no new alert arrives for a few seconds (and
   at least the worker's `alerts_out` arrived),
   drops redeliveries by `alert_id`, and scores per session against dev_labels.csv (a session is predicted
   anomalous when it raised at least one alert).

Why `--session-idle 300` by default: the worker closes a session after that many seconds of *wall-clock* time
without a new line for it, and a dev block's lines are spread over the whole file. If the idle time were shorter
than the time the worker needs to read the whole stream, a session would be closed (and scored) before its last
lines arrive, then reopened as a new session: not the session the offline evaluation scores. Measured here (2
cores shared with other jobs, load 4-6): the worker read the 99,651 lines 250 s after the replay began, so 300 s
holds but the margin is thin; on a busier machine pass 600. The price is waiting that long after the last line
(the full run takes about 10 minutes). The run reports `sessions reopened` (sessions opened minus distinct
sessions; it must be 0) and warns when reading took over 70% of the idle time.

`--client librdkafka` replays and reads the alerts with confluent-kafka (librdkafka, what Fluent Bit, Vector and
kcat are built on) instead of kafka-python: lines keyed by their session as a shipper keyed by block id sends them,
with librdkafka's own batching, and the alerts read by assigning the topic's partitions.

Any data set with a stream, its labels and the same sessions as JSONL works: `--stream`, `--labels`, `--dev`
(e.g. the real HDFS lines of ../shared/data/hdfs_real/dev_stream.log, dev_labels.csv, dev.jsonl).

Detection delay: "first alert at line" is the alert window's end position (1-based) in the session. An HDFS dev
session has at most max_window (64) lines, so by the windowing rule it is scored once, whole, when it closes:
the first alert's position is the session's length, and in time it comes `session_idle` after the last line.

`--limit-sessions N` keeps the first N block ids of the stream (in order of first appearance) and writes the
filtered stream, labels and dev sessions to the work folder: a quick version (use a smaller `--session-idle`).
Results (markdown) go to stdout, progress to stderr; `--json-out F` writes everything as JSON too.
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
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO_ROOT, default_data_dir, fmt, markdown_table, print_header, setup_logging, write_json

from stream.broker import terminate
from stream.metrics import CLOSED_COUNTERS, drain_status

logger = logging.getLogger("bench.stream")

KEY_REGEX = r"(blk_-?\d+)"
F1_GOAL = 0.005


# --------------------------------------------------------------------------------------------- inputs

def session_of(line: str, key_re: re.Pattern[str]) -> str | None:
    m = key_re.search(line)
    return (m.group(1) if key_re.groups else m.group(0)) if m else None


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


def read_labels(path: Path) -> dict[str, int]:
    with path.open(encoding="utf-8", newline="") as fh:
        return {row["session_id"]: int(row["label"]) for row in csv.DictReader(fh)}


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


# --------------------------------------------------------------------------------------------- processes

def logmoe(*args: str) -> list[str]:
    return [sys.executable, "-m", "model.cli", *args]


def child_env(threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def start_worker(bootstrap: str, model: Path, args: argparse.Namespace, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = logmoe("worker", "--broker", bootstrap, "--model", str(model.resolve()), "--session-key", args.key_regex,
                 "--session-idle", str(args.session_idle), "--set", f"app_id=logmoe-bench-stream-{os.getpid()}",
                 "--set", f"metrics_interval={args.metrics_interval}", "--set", "device=cpu")
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
    """The worker's latest `metrics {json}` counters (empty before the first one)."""
    for line in reversed(read_tail(log_path).splitlines()):
        if " metrics {" in line:
            return json.loads(line.split(" metrics ", 1)[1])
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


def detection_delay(first: dict[str, dict[str, Any]], labels: dict[str, int],
                    lengths: dict[str, int]) -> dict[str, Any]:
    """Lines into an anomalous session at its first alert (the alert window's end position)."""
    hits = [s for s in first if labels.get(s) == 1]
    ends = np.array([first[s]["window"]["end"] for s in hits], dtype=float)
    if not len(ends):
        return {"n": 0}
    frac = np.array([first[s]["window"]["end"] / max(1, lengths.get(s, 1)) for s in hits])
    before_close = sum(1 for s in hits if not first[s]["window"].get("final"))
    return {"n": len(hits), "median": float(np.median(ends)), "p90": float(np.percentile(ends, 90)),
            "max": float(ends.max()), "median_fraction_of_session": float(np.median(frac)),
            "alerted_before_close": before_close}


# --------------------------------------------------------------------------------------------- the run

def librdkafka_replay(path: Path, bootstrap: str, topic: str, key_regex: str) -> dict[str, int]:
    """Produce `path` line by line with confluent-kafka, each line keyed by its session (key_regex, group 1 or the
    whole match; unkeyed lines without a key), librdkafka batching as a log shipper does."""
    import confluent_kafka

    key_re = re.compile(key_regex.encode())
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    failed: list[Any] = []
    sent = 0
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            m = key_re.search(line)
            key = (m.group(1) if key_re.groups and m.group(1) is not None else m.group(0)) if m else None
            while True:
                try:
                    producer.produce(topic, value=line, key=key,
                                     on_delivery=lambda err, _msg: failed.append(err) if err else None)
                    break
                except BufferError:  # librdkafka's local queue is full: let it deliver, then go on
                    producer.poll(0.5)
            producer.poll(0)
            sent += 1
    if producer.flush(120) or failed:
        raise RuntimeError(f"librdkafka could not deliver every line: {failed[:3]}")
    return {"sent": sent, "skipped": 0}


def librdkafka_alerts(bootstrap: str, topic: str, quiet: float) -> list[dict[str, Any]]:
    """Every alert on `topic`, read with confluent-kafka from the beginning of each partition, until `quiet`
    seconds pass without one."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{os.getpid()}",
                                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                         for p in partitions])
        alerts: list[dict[str, Any]] = []
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                raise RuntimeError(f"reading {topic}: {msg.error()}")
            alerts.append(json.loads(msg.value()))
            last = time.monotonic()
        return alerts
    finally:
        consumer.close()


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from stream.broker import EmbeddedBroker
    from stream.tools import consume_alerts, replay

    key_re = re.compile(args.key_regex)
    stream, labels_path, dev = Path(args.stream), Path(args.labels), Path(args.dev)
    for path in (stream, labels_path, dev, Path(args.model) / "config.json"):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (set --stream/--labels/--dev/--model or $LOGMOE_SHARED_DATA)")
    if args.limit_sessions:
        order, _, _ = stream_sessions(stream, key_re)
        keep = set(order[: args.limit_sessions])
        stream, labels_path, dev = limit_inputs(stream, labels_path, dev, keep, key_re, work / "inputs")
        logger.info("limited to the first %d sessions: %s", len(keep), work / "inputs")
    order, lengths, unkeyed = stream_sessions(stream, key_re)
    labels = read_labels(labels_path)
    n_lines = sum(lengths.values()) + unkeyed
    logger.info("%s: %d lines, %d sessions (%d lines without a key); %d labelled sessions",
                stream, n_lines, len(order), unkeyed, len(labels))

    worker = evaluator = None
    worker_log, eval_out = work / "worker.log", work / "offline_evaluate.json"
    result: dict[str, Any] = {"client": args.client,
                              "inputs": {"stream": str(stream), "labels": str(labels_path), "dev": str(dev),
                                         "lines": n_lines, "sessions_in_stream": len(order),
                                         "lines_without_key": unkeyed, "labelled_sessions": len(labels)},
                              "model": str(Path(args.model).resolve()), "session_idle": args.session_idle}
    ok = False
    with EmbeddedBroker() as broker:
        try:
            logger.info("embedded broker on %s (pid %s)", broker.bootstrap, broker.pid)
            started = time.monotonic()
            worker = start_worker(broker.bootstrap, Path(args.model), args, worker_log)
            wait_ready(worker, worker_log, args.ready_timeout)
            result["worker_ready_s"] = time.monotonic() - started

            t0 = time.monotonic()
            if args.client == "librdkafka":
                sent = librdkafka_replay(stream, broker.bootstrap, "logs", args.key_regex)
            else:
                sent = replay(stream, broker.bootstrap, topic="logs", key_regex=args.key_regex,
                              progress=args.progress)
            result["replay"] = {**sent, "seconds": time.monotonic() - t0}
            logger.info("replayed %d lines in %.1f s (%d skipped)", sent["sent"], result["replay"]["seconds"],
                        sent["skipped"])

            deadline = time.monotonic() + args.drain_timeout
            read_all_at = None
            while True:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited with {worker.returncode}:\n{read_log(worker_log)[-3000:]}")
                m = last_metrics(worker_log)
                if read_all_at is None and lines_taken(m) >= sent["sent"]:
                    read_all_at = time.monotonic()
                    result["worker_read_all_s"] = read_all_at - t0
                    logger.info("the worker has read all %d lines %.1f s after the replay began; %d sessions "
                                "open, closing after %.0f s idle", sent["sent"], read_all_at - t0,
                                m.get("open_sessions", -1), args.session_idle)
                    if read_all_at - t0 > 0.7 * args.session_idle:
                        logger.warning("reading the stream took %.0f s, close to --session-idle %.0f: sessions may "
                                       "close before their last line (see 'sessions reopened'); raise it",
                                       read_all_at - t0, args.session_idle)
                    # The idle wait is a good time to run the offline evaluation.
                    with eval_out.open("wb") as out, (work / "offline_evaluate.log").open("wb") as err:
                        evaluator = subprocess.Popen(
                            logmoe("evaluate", "--model", str(args.model), "--data", str(dev), "--json",
                                   "--device", "cpu"),
                            stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=child_env(args.threads),
                            cwd=REPO_ROOT, start_new_session=True)
                if drained(m, sent["sent"], len(order)):
                    result["drained_s"] = time.monotonic() - t0
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the worker did not read every line and close every session within "
                                       f"{args.drain_timeout:.0f} s; last counters: {json.dumps(m)}")
                time.sleep(1.0)
            logger.info("every session closed %.1f s after the replay began", result["drained_s"])

            if args.client == "librdkafka":
                raw = librdkafka_alerts(broker.bootstrap, "alerts", args.alerts_quiet)
            else:
                raw = list(consume_alerts(broker.bootstrap, "alerts", from_beginning=True, timeout=args.alerts_quiet))
            result["worker_metrics"] = last_metrics(worker_log)
            if len(raw) < int(m.get("alerts_out", 0)):
                raise RuntimeError(f"read {len(raw)} alerts back, the worker sent {m['alerts_out']}; "
                                   f"raise --alerts-quiet")
            ok = True
        finally:
            stop_process(worker, "worker")
            if not ok:
                stop_process(evaluator, "offline evaluate")

    if evaluator is None:
        raise RuntimeError("the offline evaluation never started")
    try:
        code = evaluator.wait(args.eval_timeout)
    except subprocess.TimeoutExpired:
        stop_process(evaluator, "offline evaluate")
        raise
    if code != 0:
        raise RuntimeError(f"logmoe evaluate exited {code}: {read_log(work / 'offline_evaluate.log')[-2000:]}")
    result["offline"] = json.loads(eval_out.read_text(encoding="utf-8"))

    unique = {a["alert_id"]: a for a in raw}
    alerts = list(unique.values())
    first = first_alerts(alerts)
    alerted = set(first)
    result["alerts"] = {"read": len(raw), "unique": len(unique), "redeliveries": len(raw) - len(unique),
                        "sessions_alerted": len(alerted), "alerted_not_labelled": sorted(alerted - set(labels))}
    result["stream"] = stream_metrics(labels, alerted)
    result["stream"]["false_positives"] = sorted(s for s in alerted if labels.get(s) == 0)
    result["stream"]["false_negatives"] = sorted(s for s, y in labels.items() if y == 1 and s not in alerted)
    result["delay"] = detection_delay(first, labels, lengths)
    result["sessions_reopened"] = int(result["worker_metrics"].get("sessions_opened", 0)) - len(order)
    result["f1_abs_diff"] = abs(result["stream"]["f1"] - result["offline"]["f1"])
    return result


# --------------------------------------------------------------------------------------------- output

def print_report(r: dict[str, Any]) -> None:
    s, o = r["stream"], r["offline"]
    rows = []
    for name, m in (("streaming: worker alerts vs dev_labels.csv", s), ("offline: `logmoe evaluate` on dev.jsonl", o)):
        (tn, fp), (fn, tp) = m["confusion_matrix"]
        rows.append([name, m["n"], m["n_anomalous"], m["precision"], m["recall"], m["f1"], tn, fp, fn, tp])
    print(markdown_table(["evaluation", "sessions", "anomalous", "precision", "recall", "F1", "TN", "FP", "FN",
                          "TP"], rows))
    ok = r["f1_abs_diff"] <= F1_GOAL
    print(f"\n|F1 streaming - F1 offline| = {r['f1_abs_diff']:.4f} (goal <= {F1_GOAL}: {'met' if ok else 'NOT met'}); "
          f"offline threshold {fmt(o.get('threshold'))}, PR-AUC {fmt(o.get('pr_auc'))}\n")
    d = r["delay"]
    print(markdown_table(
        ["detected anomalous sessions", "first alert at line (median)", "p90", "max",
         "median share of the session", "alerted before the session closed"],
        [[d.get("n", 0), fmt(d.get("median"), 1), fmt(d.get("p90"), 1), fmt(d.get("max"), 0),
          fmt(d.get("median_fraction_of_session"), 2), d.get("alerted_before_close")]]))
    w, a, inp = r["worker_metrics"], r["alerts"], r["inputs"]
    print("\n" + markdown_table(["run fact", "value"], [
        ["lines replayed (skipped)", f"{r['replay']['sent']} ({r['replay']['skipped']})"],
        ["sessions in the stream / labelled", f"{inp['sessions_in_stream']} / {inp['labelled_sessions']}"],
        ["worker: lines_in, bad lines", f"{w.get('lines_in')}, {sum(v for k, v in w.items() if k.startswith('bad_'))}"],
        ["worker: sessions opened / closed idle / evicted",
         f"{w.get('sessions_opened')} / {w.get('sessions_closed_idle')} / "
         f"{w.get('sessions_evicted_overflow', 0) + w.get('sessions_evicted_too_long', 0)}"],
        ["sessions reopened (closed before their last line; must be 0)", r["sessions_reopened"]],
        ["worker: windows scored (failed)", f"{w.get('windows_scored')} ({w.get('windows_failed', 0)})"],
        ["worker: alerts out / suppressed by cooldown", f"{w.get('alerts_out')} / {w.get('alerts_suppressed_cooldown', 0)}"],
        ["alerts read / unique (redeliveries dropped)", f"{a['read']} / {a['unique']}"],
        ["alerted sessions not in the labels", len(a["alerted_not_labelled"])],
        ["session idle (s)", f"{r['session_idle']:g}"],
        ["replay (s) / worker read every line (s) / every session closed (s)",
         f"{r['replay']['seconds']:.1f} / {r.get('worker_read_all_s', 0):.1f} / {r.get('drained_s', 0):.1f}"],
        ["worker scoring latency p50 / max (ms), mean windows per batch",
         f"{w.get('score_latency_ms_p50')} / {w.get('score_latency_ms_max')}, {w.get('batch_windows_mean')}"],
        ["encoder cache hit rate", w.get("cache_hit_rate")],
    ]))
    print(f"\n- model: `{r['model']}`")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    hdfs = default_data_dir() / "hdfs"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="trained model folder (…/final_moe_model)")
    p.add_argument("--stream", default=str(hdfs / "dev_stream.log"), help="log file to replay")
    p.add_argument("--labels", default=str(hdfs / "dev_labels.csv"), help="session_id,label CSV")
    p.add_argument("--dev", default=str(hdfs / "dev.jsonl"), help="the same sessions as JSONL, for logmoe evaluate")
    p.add_argument("--key-regex", default=KEY_REGEX, help="session key regex (worker and replay)")
    p.add_argument("--session-idle", type=float, default=300.0,
                   help="worker session idle seconds (wall clock): must exceed the time the worker takes to read "
                        "the whole stream, or sessions close before their last line")
    p.add_argument("--limit-sessions", type=int, default=0, metavar="N", help="only the first N sessions (quick run)")
    p.add_argument("--metrics-interval", type=float, default=2.0, help="worker counter log interval (s)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the worker and logmoe evaluate")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for the worker to start")
    p.add_argument("--drain-timeout", type=float, default=3600.0,
                   help="seconds after the replay starts for every session to close")
    p.add_argument("--eval-timeout", type=float, default=1800.0, help="seconds to wait for logmoe evaluate")
    p.add_argument("--alerts-quiet", type=float, default=10.0, help="stop reading alerts after this many quiet seconds")
    p.add_argument("--work-dir", default=None, help="keep the worker log and inputs here (default: a temp folder)")
    p.add_argument("--progress", action="store_true", help="replay progress bar on stderr")
    p.add_argument("--client", choices=("kafka-python", "librdkafka"), default="kafka-python",
                   help="the client that replays the stream and reads the alerts (librdkafka: confluent-kafka)")
    p.add_argument("--json-out", default=None, help="also write the results as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.limit_sessions < 0:
        p.error(f"--limit-sessions must be >= 0, got {args.limit_sessions}")
    if args.session_idle <= 0:
        p.error(f"--session-idle must be > 0, got {args.session_idle}")
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
    logger.info("work folder (worker log, evaluate output, limited inputs): %s", work)
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
    info = print_header(f"Streaming evaluation: worker alerts vs offline evaluate ({Path(args.stream).parent.name}/"
                        f"{Path(args.stream).name}, client {args.client})")
    print(f"- worker and `logmoe evaluate`: device cpu, OMP_NUM_THREADS={args.threads}\n")
    print_report(result)
    write_json(args.json_out, {"machine": info, **result})
    if result["sessions_reopened"] or result["alerts"]["alerted_not_labelled"]:
        logger.error("not a valid parity run: %d sessions reopened, %d alerted sessions not in the labels "
                     "(raise --session-idle)", result["sessions_reopened"], len(result["alerts"]["alerted_not_labelled"]))
        return 1
    return 0 if result["f1_abs_diff"] <= F1_GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
