"""Kafka TLS/SASL settings from StreamConfig, in the two shapes the clients want: Faust credentials for the
worker, keyword arguments for the kafka-python tools (replay, alerts, topic admin).

Secrets stay inside the returned objects: nothing here logs, and `describe` shows the settings without them.
"""

from __future__ import annotations

import ssl
from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from stream.config import StreamConfig


def ssl_context(cfg: StreamConfig) -> ssl.SSLContext | None:
    """A client TLS context (CA file or system CAs, optional client certificate), or None without TLS."""
    if cfg.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ssl_cafile or None)
    context.check_hostname = cfg.ssl_check_hostname
    if cfg.ssl_certfile:
        context.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile or None)
    return context


def faust_credentials(cfg: StreamConfig) -> CredentialsT | None:
    """`broker_credentials` for faust.App: None for PLAINTEXT."""
    context = ssl_context(cfg)
    if cfg.security_protocol.startswith("SASL_"):
        return SASLCredentials(username=cfg.sasl_username, password=cfg.sasl_password,
                               mechanism=cfg.sasl_mechanism, ssl_context=context)
    if context is not None:
        return SSLCredentials(context)
    return None


def kafka_python_kwargs(cfg: StreamConfig) -> dict[str, Any]:
    """Security keyword arguments for KafkaProducer / KafkaConsumer / KafkaAdminClient ({} for PLAINTEXT)."""
    if cfg.security_protocol == "PLAINTEXT":
        return {}
    kwargs: dict[str, Any] = {"security_protocol": cfg.security_protocol}
    context = ssl_context(cfg)
    if context is not None:
        kwargs["ssl_context"] = context
    if cfg.security_protocol.startswith("SASL_"):
        kwargs.update(sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username,
                      sasl_plain_password=cfg.sasl_password)
    return kwargs


def describe(cfg: StreamConfig) -> str:
    """The security settings for a log line, without the password."""
    if cfg.security_protocol == "PLAINTEXT":
        return "PLAINTEXT"
    parts = [cfg.security_protocol]
    if cfg.security_protocol.startswith("SASL_"):
        parts.append(f"{cfg.sasl_mechanism} user={cfg.sasl_username}")
    if cfg.ssl_cafile:
        parts.append(f"ca={cfg.ssl_cafile}")
    if cfg.ssl_certfile:
        parts.append(f"cert={cfg.ssl_certfile}")
    return " ".join(parts)
