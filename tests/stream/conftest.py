"""Broker fixtures: one embedded Tansu per test session, and worker processes that are always stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.broker import EmbeddedBroker

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="session")
def kafka() -> Iterator[EmbeddedBroker]:
    """Tansu on 127.0.0.1 on a free port, for the whole test session."""
    broker = EmbeddedBroker(host="127.0.0.1")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class WorkerProcess:
    """A `logmoe worker` (or the fake-scorer worker) in a subprocess, its log in a file."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # Run in the log's folder: Faust writes its data folder (<app_id>-data) into the working directory.
        self.proc = subprocess.Popen(cmd, cwd=log_path.parent, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def metrics(self) -> dict[str, Any]:
        """The worker's latest metrics line (empty before the first)."""
        lines = [ln for ln in self.log_text().splitlines() if " metrics {" in ln]
        return json.loads(lines[-1].split(" metrics ", 1)[1]) if lines else {}

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            m = self.metrics()
            if predicate(m):
                return m
            time.sleep(0.5)
        raise AssertionError(f"worker metrics never satisfied the condition; last {self.metrics()}\n"
                             f"{self.log_text()[-3000:]}")

    def wait_drained(self, sent: int, timeout: float,
                     also: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Until the worker's score agent is done with `sent` input messages (stream.metrics.drain_status: every
        line in a session or counted as bad, every session closed and scored, the table empty) and `also` holds;
        the metrics then. Never from the route's lines_in, which is complete before a session is opened."""
        from stream.metrics import drain_status

        return self.wait_for(lambda m: drain_status(m, sent) is None and (also is None or also(m)), timeout)

    def wait_ready(self, timeout: float = 180.0) -> None:  # a start takes 5 s here, a minute or more under load
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            if "Worker]: Ready" in self.log_text():
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout} s:\n{self.log_text()[-3000:]}")

    def kill(self) -> int:
        """SIGKILL: no shutdown, no flush, no commit (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()

    def rss_mb(self) -> float:
        """Resident memory of the worker process (Linux /proc), 0 once it has exited."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return 0.0
        kb = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:"))
        return kb / 1024

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture()
def start_worker(kafka: EmbeddedBroker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """start_worker(model_dir=None, **overrides): a worker on the session broker; a fake scorer when
    model_dir is None. Every worker started is stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(model_dir: Path | None = None, env: dict[str, str] | None = None, **overrides: Any) -> WorkerProcess:
        settings = {"broker": kafka.bootstrap, "metrics_interval": 1.0, "batch_within": 0.2,
                    "close_scan_interval": 0.5, **overrides}
        sets = [f"{k}={json.dumps(v)}" for k, v in settings.items()]
        if model_dir is None:
            cmd = [sys.executable, str(HERE / "stream_fake_worker.py"), *sets]
        else:
            cmd = [sys.executable, "-m", "model.cli", "worker", "--model", str(model_dir)]
            cmd += [arg for s in sets for arg in ("--set", s)]
        worker = WorkerProcess(cmd, tmp_path / f"worker-{len(started)}.log", env)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture()
def names() -> dict[str, str]:
    """Topic names and an app id of their own, so tests sharing the broker do not see each other."""
    tag = uuid.uuid4().hex[:8]
    return {"app_id": f"t{tag}", "topic_logs": f"logs-{tag}", "topic_alerts": f"alerts-{tag}",
            "topic_sessions": f"sessions-{tag}"}


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A generated world and a model trained on it with the real default encoder, the default config but for a
    shorter budget (6 epochs of 40 steps, about 20 s on CPU; the world is separable long before that). The tiny
    random test encoder maps every line to nearly the same vector (cosine ~0.95), so a model on it cannot separate
    the world and the test could not tell a worker bug from a weak model."""
    from model.config_io import load_config
    from train import TrainConfig, train
    from train.generate import write_world

    root = tmp_path_factory.mktemp("world")
    write_world(root / "world", sessions=240, seed=7, dev_fraction=0.3, anomaly_rate=0.2)
    overrides = [
        f"data.train={json.dumps([str(root / 'world' / 'train.jsonl')])}",
        f"data.eval={json.dumps([str(root / 'world' / 'dev.jsonl')])}",
        f"output_dir={json.dumps(str(root / 'run'))}",
        "training.device=cpu", "training.min_steps_per_epoch=40",
    ]
    metrics = train(load_config(TrainConfig, None, overrides))
    return {"world": root / "world", "model": root / "run" / "final_moe_model", "metrics": metrics}
