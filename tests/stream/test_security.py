"""Kafka TLS/SASL settings reach every client (Faust's aiokafka producer, the kafka-python tools and topic admin),
the password never shows in a log line, repr or error, and alerts carry only their window's own lines.

The embedded broker speaks neither TLS nor SASL, so the plumbing is checked at the client constructors."""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

import stream.tools
import stream.topics
from model.cli import main as logmoe_main
from stream.config import StreamConfig, load_stream_config
from stream.processor import SessionEvent, SessionProcessor
from stream.metrics import Metrics
from stream.security import describe, faust_credentials, kafka_python_kwargs
from stream.windows import Entry, SessionWindows
from stream_fakes import FakeScorer

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-Pa55-do-not-log"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate and its key (the CA file and the client certificate of these tests)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True, timeout=60)
    return {"ssl_cafile": str(cert), "ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def sasl_ssl(tls_files: dict[str, str], mechanism: str = "SCRAM-SHA-512") -> StreamConfig:
    return StreamConfig(security_protocol="SASL_SSL", sasl_mechanism=mechanism, sasl_username="alice",
                        sasl_password=SECRET, **tls_files)


class Refused(Exception):
    """Raised by the recording constructors, so nothing tries to connect."""


def recorder(calls: list[dict[str, Any]]) -> Any:
    def construct(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        raise Refused
    return construct


def assert_sasl_ssl(kwargs: dict[str, Any], mechanism: str = "SCRAM-SHA-512") -> None:
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("alice", SECRET)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize("protocol, mechanism, expect", [
    ("PLAINTEXT", "PLAIN", {}),
    ("SASL_PLAINTEXT", "PLAIN", {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                 "sasl_plain_username": "alice", "sasl_plain_password": SECRET}),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256", {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                                         "sasl_plain_username": "alice", "sasl_plain_password": SECRET}),
])
def test_kafka_python_kwargs_without_tls(protocol: str, mechanism: str, expect: dict[str, Any]) -> None:
    cfg = StreamConfig(security_protocol=protocol, sasl_mechanism=mechanism,
                       sasl_username="alice" if protocol != "PLAINTEXT" else "", sasl_password=SECRET)
    assert kafka_python_kwargs(cfg) == expect


def test_ssl_only_gives_a_context_with_the_ca_and_client_certificate(tls_files) -> None:
    cfg = StreamConfig(security_protocol="SSL", ssl_check_hostname=False, **tls_files)
    kwargs = kafka_python_kwargs(cfg)
    assert set(kwargs) == {"security_protocol", "ssl_context"} and kwargs["security_protocol"] == "SSL"
    assert not kwargs["ssl_context"].check_hostname
    assert kwargs["ssl_context"].cert_store_stats()["x509_ca"] == 1  # the CA file was loaded


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_faust_producer_is_built_with_the_settings(tls_files, mechanism: str) -> None:
    """The worker's own Kafka client: Faust turns broker_credentials into aiokafka settings."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from stream.app import create_app

    app = create_app(sasl_ssl(tls_files, mechanism), FakeScorer())
    assert_sasl_ssl(dict(credentials_to_aiokafka_auth(app.conf.broker_credentials)), mechanism)

    async def built() -> Any:
        producer = app.producer._new_producer()  # the AIOKafkaProducer the worker would start
        try:
            return producer.client
        finally:
            await producer.stop()

    client = asyncio.run(built())
    assert (client._security_protocol, client._sasl_mechanism) == ("SASL_SSL", mechanism)
    assert (client._sasl_plain_username, client._sasl_plain_password) == ("alice", SECRET)
    assert isinstance(client._ssl_context, ssl.SSLContext)


def test_tools_and_topic_admin_get_the_settings(tls_files, tmp_path, monkeypatch) -> None:
    calls: list[dict[str, Any]] = []
    security = kafka_python_kwargs(sasl_ssl(tls_files))
    log = tmp_path / "in.log"
    log.write_text("a line\n", encoding="utf-8")
    for module, name, call in [
        (stream.tools, "KafkaProducer", lambda: stream.tools.replay(log, "h:1", progress=False, security=security)),
        (stream.tools, "KafkaConsumer", lambda: next(stream.tools.consume_alerts("h:1", security=security))),
        (stream.topics, "KafkaAdminClient", lambda: stream.topics.ensure_topics("h:1", [], security=security)),
    ]:
        monkeypatch.setattr(module, name, recorder(calls))
        with pytest.raises(Refused):
            call()
        assert_sasl_ssl(calls[-1])
        assert calls[-1]["bootstrap_servers"] == "h:1"
    assert len(calls) == 3


def test_cli_tools_take_the_settings_from_env_and_set(tls_files, tmp_path, monkeypatch) -> None:
    """`logmoe replay` / `logmoe alerts` read the worker's config, LOGMOE_* and --set like the worker does."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(stream.tools, "KafkaProducer", recorder(calls))
    monkeypatch.setattr(stream.tools, "KafkaConsumer", recorder(calls))
    monkeypatch.setenv("LOGMOE_BROKER", "kafka://b1:9093,b2:9093")
    monkeypatch.setenv("LOGMOE_SASL_USERNAME", "alice")
    monkeypatch.setenv("LOGMOE_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("LOGMOE_SSL_CAFILE", tls_files["ssl_cafile"])
    config = tmp_path / "stream.yaml"
    config.write_text(f"security_protocol: SASL_SSL\nssl_certfile: {tls_files['ssl_certfile']}\n"
                      f"ssl_keyfile: {tls_files['ssl_keyfile']}\ntopic_alerts: prod-alerts\n", encoding="utf-8")
    log = tmp_path / "in.log"
    log.write_text("a line\n", encoding="utf-8")
    with pytest.raises(Refused):
        logmoe_main(["replay", str(log), "--no-progress", "--set", "sasl_mechanism=SCRAM-SHA-512",
                     "--config", str(config)])
    with pytest.raises(Refused):
        logmoe_main(["alerts", "--config", str(config), "--set", "sasl_mechanism=SCRAM-SHA-512",
                     "--bootstrap", "b3:9093"])
    assert len(calls) == 2  # the replay's producer, then the alerts' consumer
    assert_sasl_ssl(calls[0])
    assert_sasl_ssl(calls[1])
    assert calls[0]["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert calls[1]["bootstrap_servers"] == ["b3:9093"]  # --bootstrap wins over the environment


def test_worker_creates_its_topics_with_the_settings(tls_files, monkeypatch) -> None:
    import stream.app
    from stream.worker import run_worker

    seen: dict[str, Any] = {}

    def fake_ensure(bootstrap: Any, specs: Any, timeout: float = 30.0, security: Any = None) -> list[str]:
        seen.update(security or {})
        raise Refused

    monkeypatch.setattr(stream.topics, "ensure_topics", fake_ensure)
    monkeypatch.setattr(stream.app, "create_app", recorder([]))
    with pytest.raises(Refused):
        run_worker(sasl_ssl(tls_files), FakeScorer())
    assert_sasl_ssl(seen)


def test_the_password_is_in_no_repr_description_log_or_error(tls_files, caplog) -> None:
    from stream.app import create_app

    cfg = sasl_ssl(tls_files)
    assert SECRET not in repr(cfg) and SECRET not in describe(cfg) and "alice" in describe(cfg)
    assert SECRET not in repr(faust_credentials(cfg))
    with caplog.at_level(logging.DEBUG):
        create_app(cfg, FakeScorer())
    assert caplog.text and SECRET not in caplog.text
    with pytest.raises(ValueError) as bad:
        load_stream_config(None, ["security_protocol=SASL_SSL", "sasl_username=alice", "ssl_cafile=/nope.pem"],
                           environ={"LOGMOE_SASL_PASSWORD": SECRET})
    assert "/nope.pem" in str(bad.value) and SECRET not in str(bad.value)
    with pytest.raises(ValueError) as bad:
        load_stream_config(None, ["security_protocol=SASL_PLAINTEXT"], environ={"LOGMOE_SASL_PASSWORD": SECRET})
    assert SECRET not in str(bad.value)


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_a_failed_sasl_connection_logs_nothing_secret_even_at_debug(kafka, tmp_path, monkeypatch, caplog) -> None:
    """kafka-python at DEBUG, SASL against the embedded broker (which has no SASL): it fails, and no log line
    or error holds the password."""
    from kafka import KafkaProducer

    monkeypatch.setattr(stream.tools, "KafkaProducer", functools.partial(KafkaProducer, bootstrap_timeout_ms=3000))
    cfg = StreamConfig(broker=kafka.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_username="alice",
                       sasl_password=SECRET)
    log = tmp_path / "in.log"
    log.write_text("a line\n", encoding="utf-8")
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="kafka"), \
            pytest.raises(Exception) as failed:
        stream.tools.replay(log, cfg.bootstrap_servers, progress=False, security=kafka_python_kwargs(cfg))
    assert "SaslHandshake" in caplog.text  # it did try to authenticate, and logged every request
    assert SECRET not in caplog.text and SECRET not in str(failed.value) and SECRET not in repr(failed.value)


@pytest.mark.broker
@pytest.mark.timeout(60)
def test_the_workers_own_client_logs_nothing_secret_when_sasl_fails(kafka, caplog) -> None:
    """Faust's aiokafka producer at DEBUG, SCRAM against the embedded broker: the handshake fails, and no log
    line or error holds the password."""
    from stream.app import create_app

    cfg = StreamConfig(broker=kafka.bootstrap, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                       sasl_username="alice", sasl_password=SECRET)

    summaries: list[str] = []

    async def start() -> None:
        app = create_app(cfg, FakeScorer())
        summaries.append(app.logmoe_summary)  # what the worker logs at start
        producer = app.producer._new_producer()
        try:
            await asyncio.wait_for(producer.start(), 30)
        finally:
            await producer.stop()

    # The CLI tools quiet the client loggers (stream.cli._quiet_clients), and an earlier test may have run one.
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="aiokafka"), \
            pytest.raises(Exception) as failed:
        asyncio.run(start())
    assert "SaslHandShakeRequest" in caplog.text and "user=alice" in summaries[0]
    assert SECRET not in caplog.text and SECRET not in summaries[0] and SECRET not in repr(failed.value)


def test_an_alert_holds_only_its_own_windows_lines() -> None:
    """Interleaved sessions, sliding windows: every alert's lines are exactly positions start..end of its own
    session, nothing of another session and nothing older than the window."""
    scorer = FakeScorer(max_window=8)
    windows = SessionWindows(8, 3, 1_000_000, cooldown_lines=0)
    processor = SessionProcessor(windows, idle_seconds=5.0, metrics=Metrics())
    sessions = {f"s{i}": [] for i in range(4)}
    events, offset = [], 0
    for step in range(20):
        for sid, lines in sessions.items():
            text = f"{'ERROR' if step % 7 == int(sid[1:]) else 'INFO'} step={step} request_id={sid}"
            lines.append(text)
            events.append((offset, SessionEvent("line", sid, Entry(text, float(step), 0, offset))))
            offset += 1
    events += [(offset + i, SessionEvent("close", sid, reason="evict")) for i, sid in enumerate(sessions)]
    stored: dict[str, Any] = {}
    batch = processor.apply(events, stored.get, now=0.0)
    alerts = processor.alerts_for(batch, scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows]),
                                  scorer, top_lines=3, now=0.0)
    assert len(alerts) >= 8
    for alert in alerts:
        own = sessions[alert["session"]]
        start, end = alert["window"]["start"], alert["window"]["end"]
        assert 1 <= start <= end and end - start + 1 == len(alert["lines"]) <= 8
        assert [ln["line"] for ln in alert["lines"]] == own[start - 1:end]
        assert [ln["n"] for ln in alert["lines"]] == list(range(start, end + 1))
