"""`logmoe demo`: the whole product on one machine with no Kafka and no data.

Generates a synthetic log world and trains a demo model (both as `logmoe` subprocesses: stream/ never
imports train/) unless ./demo already has them, starts the embedded broker and a worker, replays the
world's stream, prints alerts as they arrive, and ends with a summary against the world's labels.
Everything it started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from stream.broker import EmbeddedBroker
from stream.tools import consume_alerts, format_alert, replay

log = logging.getLogger(__name__)

SESSION_REGEX = r"request_id=(\w+)"
DEMO_SESSIONS = 400
SESSION_IDLE = 5.0


def _logmoe(*args: str) -> list[str]:
    return [sys.executable, "-m", "model.cli", *args]


def _run_step(title: str, cmd: list[str], log_path: Path) -> None:
    print(f"[demo] {title} (log: {log_path})", flush=True)
    started = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"{title} failed (exit {proc.returncode}); last output:\n{tail}")
    print(f"[demo] {title}: done in {time.monotonic() - started:.0f} s", flush=True)


def prepare(demo_dir: Path, retrain: bool) -> tuple[Path, Path]:
    """(world folder, model folder), generating and training only what is missing."""
    world, run = demo_dir / "world", demo_dir / "run"
    model = run / "final_moe_model"
    demo_dir.mkdir(parents=True, exist_ok=True)
    if not (world / "stream.log").is_file() or not (world / "stream_labels.csv").is_file():
        _run_step("generating a synthetic log world",
                  _logmoe("generate", "--out", str(world), "--sessions", str(DEMO_SESSIONS)),
                  demo_dir / "generate.log")
        retrain = True
    if retrain or not (model / "config.json").is_file():
        _run_step("training the demo model on CPU (a few minutes at most)",
                  _logmoe("train", "--data", str(world / "train.jsonl"), "--eval-data", str(world / "dev.jsonl"),
                          "--output-dir", str(run), "--device", "cpu"),
                  demo_dir / "train.log")
    else:
        print(f"[demo] using the existing model {model} (--retrain to train a new one)", flush=True)
    return world, model


def _start_worker(bootstrap: str, model: Path, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = _logmoe("worker", "--broker", bootstrap, "--model", str(model), "--session-key", SESSION_REGEX,
                  "--session-idle", str(SESSION_IDLE), "--set", "app_id=logmoe-demo", "--set", "metrics_interval=1")
    out = log_path.open("wb")
    try:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    finally:
        out.close()  # the child holds its own descriptor


def _wait_worker_ready(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"the worker exited with {proc.returncode}:\n{tail}")
        if "Worker]: Ready" in log_path.read_text(encoding="utf-8", errors="replace"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"the worker was not ready after {timeout:.0f} s (log: {log_path})")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summarize(labels: dict[str, int], alerted: set[str]) -> dict[str, int]:
    anomalous = {s for s, y in labels.items() if y}
    return {"sessions": len(labels), "anomalies_injected": len(anomalous), "alerted": len(alerted),
            "detected": len(alerted & anomalous), "missed": len(anomalous - alerted),
            "false_alarms": len(alerted - anomalous)}


def run_demo(demo_dir: str | Path = "demo", retrain: bool = False) -> int:
    demo_dir = Path(demo_dir)
    world, model = prepare(demo_dir, retrain)
    labels = {row["session_id"]: int(row["label"])
              for row in csv.DictReader((world / "stream_labels.csv").open(encoding="utf-8"))}
    worker: subprocess.Popen[bytes] | None = None
    stop_reading = threading.Event()
    alerts: list[dict[str, Any]] = []
    with EmbeddedBroker() as broker:
        try:
            print(f"[demo] embedded Kafka-protocol broker (Tansu) on {broker.bootstrap}", flush=True)
            worker_log = demo_dir / "worker.log"
            worker = _start_worker(broker.bootstrap, model, worker_log)
            _wait_worker_ready(worker, worker_log)
            print(f"[demo] worker ready (log: {worker_log}); replaying {world / 'stream.log'}", flush=True)
            reader = threading.Thread(target=_read_alerts, args=(broker.bootstrap, alerts, stop_reading),
                                      daemon=True)
            reader.start()
            sent = replay(world / "stream.log", broker.bootstrap, key_regex=SESSION_REGEX, progress=True)
            print(f"[demo] replayed {sent['sent']} lines; waiting for the last sessions to close", flush=True)
            _wait_drained(worker, worker_log, sent["sent"])
        except KeyboardInterrupt:
            print("\n[demo] interrupted, stopping", flush=True)
            return 130
        finally:
            stop_reading.set()
            _stop(worker)
    counts = summarize(labels, {a["session"] for a in alerts})
    print("\n[demo] summary\n" + "\n".join(f"  {k.replace('_', ' '):<20}{v}" for k, v in counts.items()), flush=True)
    (demo_dir / "summary.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    return 0


def _read_alerts(bootstrap: str, sink: list[dict[str, Any]], stop: threading.Event) -> None:
    seen: set[str] = set()
    for alert in consume_alerts(bootstrap, "alerts", from_beginning=True, follow=True, stop=stop.is_set):
        if alert.get("alert_id") in seen:
            continue  # a redelivery
        seen.add(alert.get("alert_id", ""))
        sink.append(alert)
        print(format_alert(alert), flush=True)


def _worker_metrics(log_path: Path) -> dict[str, Any]:
    lines = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if " metrics {" in ln]
    return json.loads(lines[-1].split(" metrics ", 1)[1]) if lines else {}


def _wait_drained(worker: subprocess.Popen[bytes], log_path: Path, sent: int, limit: float = 300.0) -> None:
    """Until the worker has taken every line and closed every session (its metrics log says so)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and worker.poll() is None:
        m = _worker_metrics(log_path)
        taken = m.get("lines_in", 0) + sum(v for k, v in m.items() if k.startswith("bad_"))
        if taken >= sent and m.get("open_sessions", 1) == 0:
            time.sleep(2.0)  # let the alert reader catch the last ones
            return
        time.sleep(0.5)
    log.warning("the worker did not drain within %.0f s; summarising what arrived", limit)
