"""The worker's configuration: one dataclass, loaded from configs/stream.yaml, then env, then CLI flags.

Precedence (last wins): dataclass defaults < YAML file < environment < ``key=value`` overrides (CLI flags).
Environment: ``LOGMOE_<KEY>`` for every key (e.g. ``LOGMOE_PARTITIONS=8``), plus the named aliases
``LOGMOE_BROKER``, ``LOGMOE_MODEL``, ``LOGMOE_SESSION_KEY`` and ``LOGMOE_SESSION_IDLE``.
``LOGMOE_SESSION_KEY`` holds one or more regexes separated by newlines or by ``||``.

The defaults are safe on both the embedded broker (Tansu) and Apache Kafka; on Kafka raise
``producer_max_batch_size`` to 16384 for throughput (see BROKER.md for why it is small here).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV_PREFIX = "LOGMOE_"
_STORES = ("memory://", "rocksdb://")
_GUARANTEES = ("at_least_once",)
_SCORING = ("process", "thread")
_ROUTES = ("batch", "agent")
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass
class StreamConfig:
    broker: str = "kafka://127.0.0.1:9092"
    """Kafka bootstrap server(s): ``host:port`` or ``kafka://host:port``, several separated by commas or ``;``."""
    app_id: str = "logmoe"
    """Faust app id: the consumer group and the prefix of the worker's internal topics."""
    model: str = "demo/final_moe_model"
    """Directory of the trained model (``logmoe train`` writes ``<out>/final_moe_model``)."""
    device: str = "auto"
    """Scoring device: auto (CUDA if present), cpu, cuda, cuda:N."""
    scoring: str = "process"
    """Where the model runs: process (a scoring process of its own, fed micro-batches, restarted if it dies: the
    event loop shares no interpreter with masking, the encoder and the MoE) or thread (in the worker's process)."""
    route: str = "batch"
    """How raw lines are read: batch (a consumer of the worker's own fetches up to route_batch_max lines at a time,
    committed once handed on: Faust's per-event path never sees a raw line) or agent (a Faust agent, one event per
    line)."""
    route_batch_max: int = 2048
    """Most raw lines the batch route fetches, groups by session and hands on at a time."""
    topic_logs: str = "logs"
    """Input topic: one log line per message (plain text or a JSON envelope {"line", "ts", "source"})."""
    topic_alerts: str = "alerts"
    """Output topic: one JSON alert per anomalous window, keyed by session."""
    topic_sessions: str = "logmoe-sessions"
    """Internal topic: lines re-keyed by session, so one session lives on one worker."""
    partitions: int = 4
    """Partitions of the topics this worker creates (logs if missing, sessions, alerts, table changelog)."""
    replication_factor: int = 1
    """Replication factor of the topics this worker creates (3 on a production cluster)."""
    store: str = "memory://"
    """Faust table store: memory:// (state rebuilt from the changelog at start) or rocksdb:// (local cache)."""
    processing_guarantee: str = "at_least_once"
    """Only at_least_once: alerts carry a deterministic alert_id so consumers can drop redeliveries."""
    broker_session_timeout: float = 6.0
    """Consumer group session timeout in seconds (small so joins and restarts are quick)."""
    broker_heartbeat_interval: float = 2.0
    """Consumer heartbeat interval in seconds (a third of the session timeout)."""
    producer_max_batch_size: int = 64
    """Producer batch size in bytes. 64 = one record per batch, needed on Tansu; 16384 on Apache Kafka."""
    session_key: list[str] = field(default_factory=lambda: [r"request_id=(\w+)", r"(blk_-?\d+)"])
    """Regexes tried in order on each line; the first match gives the session (group 1, or the whole match)."""
    catch_all_key: str = "-"
    """Session of lines with no regex match, no message key and no source."""
    session_idle: float | None = None
    """Seconds without a new line after which a session closes and its final window is scored. null (the default):
    the model's, the longest pause inside a normal training session plus 10% (read from the lines' timestamps at
    training; on real HDFS ~14 h, as a block is deleted hours after it was written), else 5. A shorter one cuts
    sessions at their pauses and the model scores parts it never saw; a replay, which squeezes hours into
    seconds, wants a short one (the demo uses 5)."""
    hop: int = 0
    """A session's window (the model's max_window lines) is scored every `hop` new lines; 0 = the hop the
    model was trained and evaluated with (window_hop in its config.json), for train/serve parity."""
    early_alerts: bool | None = None
    """Score open sessions early (model.early: every early_hop lines, and at once on a line never seen in a normal
    training session) and alert when a prefix reaches the model's early threshold, before the session closes.
    null (the default): on when the model has early thresholds (models trained before them have none); false: only
    closing windows are scored; true: refuses a model without early thresholds."""
    early_hop: int = 0
    """An open session shorter than the model's max_window is scored early every `early_hop` new lines (longer ones
    get regular windows every hop lines); 0 = the model's early_hop, the one its early thresholds were calibrated
    with (a smaller one scores more prefixes: more work, more false alarms than calibrated)."""
    max_open_sessions: int = 100_000
    """Open sessions per worker; beyond it the least recently seen are closed early (counted as evicted)."""
    max_session_lines: int = 1_000_000
    """Lines per session; a session reaching it is closed and starts over (counted as evicted)."""
    max_line_bytes: int = 65_536
    """Messages larger than this are skipped and counted as bad input (reason: oversized)."""
    batch_max: int = 256
    """Most session events taken into one scoring micro-batch."""
    batch_within: float = 0.1
    """Seconds a micro-batch waits to fill before it is processed anyway. A line passes two batchers (route, then
    score), so this bounds added latency; 0.1 kept p99 under 2 s at 250 lines/s where 0.5 gave 3.9 s, at no cost
    in throughput on a backlog (BENCHMARKS.md, Performance)."""
    batches_in_flight: int = 2
    """Micro-batches between being taken and being finished (alerts out, states written, offsets committable):
    with 2 the next batch is applied and windowed while the previous one is scored; 1 = one batch at a time."""
    close_scan_interval: float = 1.0
    """Seconds between scans of open sessions for idle ones."""
    alert_cooldown_lines: int = 64
    """After an alert, windows of that session ending within this many lines raise no new alert (0 = none)."""
    alert_top_lines: int = 3
    """Lines marked suspicious in an alert: the top ones by contribution to the anomaly logit."""
    metrics_interval: float = 10.0
    """Seconds between counter log lines."""
    log_level: str = "info"
    """Worker log level: debug, info, warning, error."""
    web_port: int = 0
    """Faust web port for its HTTP stats; 0 disables the web server (two workers on one host need distinct ports)."""
    metrics_port: int = 0
    """Port of the worker's own HTTP endpoint: Prometheus text on /metrics, health on /healthz (200 when the
    agents run and a model is loaded, else 503). 0 = off; two workers on one host need distinct ports."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics endpoint listens on (0.0.0.0: every interface, as a container needs)."""
    model_reload_interval: float = 10.0
    """Seconds between checks of the model folder for a new model (config.json / model.safetensors changed);
    a new one is loaded in a thread, checked, and swapped in between batches. 0 = never reload."""
    security_protocol: str = "PLAINTEXT"
    """Kafka security protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (worker and CLI tools alike)."""
    sasl_mechanism: str = "PLAIN"
    """SASL mechanism when the protocol is SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."""
    sasl_username: str = ""
    """SASL user name (LOGMOE_SASL_USERNAME)."""
    sasl_password: str = field(default="", repr=False)
    """SASL password; set it through LOGMOE_SASL_PASSWORD rather than a file. Never logged."""
    ssl_cafile: str = ""
    """PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL); empty = the system CAs."""
    ssl_certfile: str = ""
    """PEM client certificate for mutual TLS (optional)."""
    ssl_keyfile: str = ""
    """PEM private key of ssl_certfile (optional)."""
    ssl_check_hostname: bool = True
    """Check that the broker's certificate names the host connected to."""

    def __post_init__(self) -> None:
        if isinstance(self.session_key, str):
            self.session_key = split_regexes(self.session_key)
        for pattern in self.session_key:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"session_key regex {pattern!r} does not compile: {exc}") from None
        if not self.broker.strip():
            raise ValueError("broker must name at least one host:port, got an empty string")
        if not any(self.store.startswith(s) for s in _STORES):
            raise ValueError(f"store must start with one of {_STORES}, got {self.store!r}")
        if self.processing_guarantee not in _GUARANTEES:
            raise ValueError(f"processing_guarantee must be one of {_GUARANTEES}, got {self.processing_guarantee!r}"
                             " (the embedded broker has no transactions)")
        if self.route not in _ROUTES:
            raise ValueError(f"route must be one of {_ROUTES}, got {self.route!r}")
        if self.scoring not in _SCORING:
            raise ValueError(f"scoring must be one of {_SCORING}, got {self.scoring!r}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.hop < 0:
            raise ValueError(f"hop must be >= 0 (0 = the model's), got {self.hop}")
        if self.early_hop < 0:
            raise ValueError(f"early_hop must be >= 0 (0 = the model's), got {self.early_hop}")
        positive = ("partitions", "replication_factor", "max_open_sessions", "max_session_lines",
                    "max_line_bytes", "batch_max", "route_batch_max", "alert_top_lines", "batches_in_flight")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.session_idle is not None and self.session_idle <= 0:
            raise ValueError(f"session_idle must be > 0 seconds (null = the model's), got {self.session_idle}")
        for name in ("broker_session_timeout", "broker_heartbeat_interval", "batch_within", "close_scan_interval",
                     "metrics_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.alert_cooldown_lines < 0:
            raise ValueError(f"alert_cooldown_lines must be >= 0, got {self.alert_cooldown_lines}")
        if self.producer_max_batch_size < 1:
            raise ValueError(f"producer_max_batch_size must be >= 1 byte, got {self.producer_max_batch_size}")
        for name in ("web_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be in 0..65535 (0 = off), got {getattr(self, name)}")
        if self.model_reload_interval < 0:
            raise ValueError(f"model_reload_interval must be >= 0 seconds (0 = off), got {self.model_reload_interval}")
        if self.security_protocol not in _PROTOCOLS:
            raise ValueError(f"security_protocol must be one of {_PROTOCOLS}, got {self.security_protocol!r}")
        if self.sasl_mechanism not in _MECHANISMS:
            raise ValueError(f"sasl_mechanism must be one of {_MECHANISMS}, got {self.sasl_mechanism!r}")
        if self.security_protocol.startswith("SASL_") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password "
                             f"(LOGMOE_SASL_USERNAME, LOGMOE_SASL_PASSWORD); username is {self.sasl_username!r}")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ValueError(f"{name} {path!r} is not a file")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together: set both for mutual TLS or neither, got "
                             f"ssl_certfile={self.ssl_certfile!r}, ssl_keyfile={self.ssl_keyfile!r}")

    @property
    def bootstrap_servers(self) -> list[str]:
        """``host:port`` entries for kafka-python / aiokafka."""
        return [s.strip().removeprefix("kafka://") for s in re.split(r"[,;]", self.broker) if s.strip()]

    @property
    def faust_broker(self) -> str:
        """The broker list as Faust wants it: ``kafka://h1:p1;kafka://h2:p2``."""
        return ";".join(f"kafka://{s}" for s in self.bootstrap_servers)


def split_regexes(text: str) -> list[str]:
    """Regexes separated by newlines or ``||`` (as in LOGMOE_SESSION_KEY) -> list, blanks dropped."""
    return [p.strip() for line in text.splitlines() for p in line.split("||") if p.strip()]


_ALIASES = {"LOGMOE_BROKER": "broker", "LOGMOE_MODEL": "model", "LOGMOE_SESSION_KEY": "session_key",
            "LOGMOE_SESSION_IDLE": "session_idle"}


_STR_FIELDS = {f.name: f.type in ("str", str) for f in fields(StreamConfig)}


def env_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """``key=value`` overrides from LOGMOE_<KEY> variables (values parsed as YAML, like CLI overrides)."""
    environ = os.environ if environ is None else environ
    names = {f.name for f in fields(StreamConfig)}
    out: list[str] = []
    for var, value in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        key = _ALIASES.get(var, var[len(ENV_PREFIX):].lower())
        if key not in names:
            continue  # LOGMOE_TANSU, LOGMOE_SHARED_DATA, … belong to other parts
        if key == "session_key":
            out.append(override(key, split_regexes(value)))
        elif _STR_FIELDS.get(key):
            out.append(override(key, value))  # a model dir named "2024" stays a string
        else:
            out.append(f"{key}={value}")
    return out


def override(key: str, value: object) -> str:
    """A ``key=value`` override that YAML parses back to exactly ``value`` (JSON is a subset of YAML)."""
    return f"{key}={json.dumps(value)}"


def load_stream_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                       environ: Mapping[str, str] | None = None) -> StreamConfig:
    """YAML file (optional) < LOGMOE_* environment < ``key=value`` overrides."""
    from model.config_io import load_config

    env = env_overrides(environ)
    origin = " + ".join(name for name, given in (("LOGMOE_* environment", env), ("overrides", overrides)) if given)
    return load_config(StreamConfig, path, [*env, *overrides], overrides_from=origin)  # unused when both are empty
