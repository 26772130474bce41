"""`logmoe demo`: the whole product on one machine with no Kafka and no data.

Generates a synthetic log world and trains a demo model (both as `logmoe` subprocesses: stream/ never
imports train/) unless ./demo already has them, starts the embedded broker and a worker, replays the
world's stream, prints alerts as they arrive, and ends with a summary against the world's labels.
Everything it started is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from stream.broker import EmbeddedBroker
from stream.metrics import drain_status
from stream.tools import consume_alerts, format_alert, replay

SESSION_REGEX = r"request_id=(\w+)"
DEMO_SESSIONS = 400
# 4 + 2 epochs of 30 steps: the demo world is separable long before; the default budget (at least 250 steps per
# epoch, sized for real logs) would make a newcomer's first `make demo` train for minutes instead of seconds.
TRAIN_OVERRIDES: tuple[str, ...] = ("--set", "training.min_steps_per_epoch=30")
SESSION_IDLE = 5.0


class DemoFailed(RuntimeError):
    """The demo could not show a clean run (the worker scored nothing, or it gave up waiting); one line says why."""


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
                          "--output-dir", str(run), "--device", "cpu", *TRAIN_OVERRIDES),
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
            raise DemoFailed(f"the worker exited with {proc.returncode} before it was ready")
        if "Worker]: Ready" in log_path.read_text(encoding="utf-8", errors="replace"):
            return
        time.sleep(0.3)
    raise DemoFailed(f"gave up after {timeout:.0f} s waiting for the worker to be ready")


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


class AlertReader:
    """Reads the alerts topic in a thread: every copy is counted (to know when it has caught up with the worker's
    `alerts_out`), each alert_id is kept and printed once (a redelivery is dropped)."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.alerts: list[dict[str, Any]] = []
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        seen: set[str] = set()
        for alert in consume_alerts(self.bootstrap, "alerts", from_beginning=True, follow=True,
                                    stop=self._stop.is_set):
            self.received += 1
            if alert.get("alert_id") in seen:
                continue  # a redelivery
            seen.add(alert.get("alert_id", ""))
            self.alerts.append(alert)
            print(format_alert(alert), flush=True)


def run_demo(demo_dir: str | Path = "demo", retrain: bool = False) -> int:
    """0 after a clean run with its summary; 1 with one `[demo] failed: …` line when the worker scored no window
    or the demo gave up waiting for it; 130 on Ctrl-C."""
    demo_dir = Path(demo_dir)
    world, model = prepare(demo_dir, retrain)
    labels = {row["session_id"]: int(row["label"])
              for row in csv.DictReader((world / "stream_labels.csv").open(encoding="utf-8"))}
    (demo_dir / "summary.json").unlink(missing_ok=True)  # a failed run must not leave an older run's summary
    worker: subprocess.Popen[bytes] | None = None
    reader: AlertReader | None = None
    worker_log = demo_dir / "worker.log"
    with EmbeddedBroker() as broker:
        try:
            print(f"[demo] embedded Kafka-protocol broker (Tansu) on {broker.bootstrap}", flush=True)
            worker = _start_worker(broker.bootstrap, model, worker_log)
            _wait_worker_ready(worker, worker_log)
            print(f"[demo] worker ready (log: {worker_log}); replaying {world / 'stream.log'}", flush=True)
            reader = AlertReader(broker.bootstrap)
            reader.start()
            sent = replay(world / "stream.log", broker.bootstrap, key_regex=SESSION_REGEX, progress=True)
            print(f"[demo] replayed {sent['sent']} lines; waiting for the last sessions to close", flush=True)
            final = _wait_drained(worker, worker_log, sent["sent"], received=lambda: reader.received)
            check_scored(final)
        except DemoFailed as exc:
            print(f"[demo] failed: {exc} (worker log: {worker_log})", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            print("\n[demo] interrupted, stopping", flush=True)
            return 130
        finally:
            if reader is not None:
                reader.stop()
            _stop(worker)
    counts = summarize(labels, {a["session"] for a in reader.alerts})
    print("\n[demo] summary\n" + "\n".join(f"  {k.replace('_', ' '):<20}{v}" for k, v in counts.items()), flush=True)
    (demo_dir / "summary.json").write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    return 0


def _worker_metrics(log_path: Path) -> dict[str, Any]:
    lines = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if " metrics {" in ln]
    return json.loads(lines[-1].split(" metrics ", 1)[1]) if lines else {}


def _wait_drained(worker: subprocess.Popen[bytes], log_path: Path, sent: int,
                  received: Callable[[], int] | None = None, limit: float = 300.0,
                  poll: float = 0.5) -> dict[str, Any]:
    """Until the worker has applied every line sent to a session, closed and scored every session and the alert
    reader has received every alert it sent (`received()`, copies included; None: no reader to wait for); its last
    counters. DemoFailed when the worker exits or `limit` seconds pass first."""
    deadline = time.monotonic() + limit
    waiting_for = "no worker metrics yet"
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise DemoFailed(f"the worker exited with {worker.returncode} before it had scored every session")
        m = _worker_metrics(log_path)
        if m:
            waiting_for = drain_status(m, sent) or ""
            got = received() if received is not None and not waiting_for else None
            if got is not None and got < int(m.get("alerts_out", 0)):
                waiting_for = f"{got} of {m['alerts_out']} alerts read back"
            if not waiting_for:
                return m
        time.sleep(poll)
    raise DemoFailed(f"gave up after {limit:.0f} s waiting for the worker: {waiting_for}")


def check_scored(m: Mapping[str, Any]) -> None:
    """DemoFailed unless the worker scored at least one window (a run that scored nothing is no demo)."""
    if int(m.get("windows_scored", 0)) == 0:
        raise DemoFailed(f"the worker scored no window ({int(m.get('windows_failed', 0))} failed, "
                         f"{int(m.get('sessions_opened', 0))} sessions opened)")
