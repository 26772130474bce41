"""The worker's own HTTP endpoint: Prometheus text on /metrics, health as JSON on /healthz.

It runs on a daemon thread with the standard library's HTTP server, so a scrape never waits on the event loop
(and still answers when the loop is busy scoring). `StatusService` starts and stops it with the Faust app.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("stream.worker")

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]  # () -> (healthy, details for the JSON body)


class StatusServer:
    """GET /metrics (the registry in Prometheus text format) and GET /healthz (200 when `health` says healthy,
    503 otherwise; JSON body either way). Port 0 binds a free port (see `port` after `start`)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: HealthCheck) -> None:
        self.host = host
        self.registry = registry
        self.health = health
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._port

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            self._server = ThreadingHTTPServer((self.host, self._port), _handler(self))
        except OSError as exc:
            raise OSError(exc.errno, f"metrics endpoint cannot listen on {self.host}:{self._port}: {exc.strerror} "
                                     "(two workers on one host need distinct metrics_port values)") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="logmoe-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz", self.host, self.port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def health_response(self) -> tuple[int, bytes]:
        try:
            healthy, details = self.health()
        except Exception as exc:  # a broken check must answer 503, not kill the server thread
            log.exception("health check failed")
            healthy, details = False, {"error": f"{type(exc).__name__}: {exc}"}
        body = {"status": "ok" if healthy else "unavailable", **details}
        return (200 if healthy else 503), json.dumps(body, sort_keys=True, default=str).encode("utf-8")


def _handler(server: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
            elif path in ("/healthz", "/health"):
                status, body = server.health_response()
                self._send(status, "application/json", body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's name)
            log.debug("metrics endpoint: " + format, *args)  # scrapes every few seconds: not worth INFO

    return Handler


class StatusService(Service):
    """Starts the StatusServer with the app (before table recovery, so /healthz says 503 while starting)."""

    def __init__(self, server: StatusServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server = server

    async def on_start(self) -> None:
        self.server.start()

    async def on_stop(self) -> None:
        self.server.stop()
