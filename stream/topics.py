"""Create the worker's topics explicitly, with the configured partitions, before the worker starts.

Brokers that auto-create topics pick their own partition count (Tansu: 4), which breaks Faust's
co-partitioning of a table with its source topic; so every topic the worker touches is created here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.config import StreamConfig
from stream.connect import reaching

log = logging.getLogger(__name__)

SESSION_TABLE = "sessions"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1


def changelog_topic(cfg: StreamConfig) -> str:
    """Faust's name for the session table's changelog."""
    return f"{cfg.app_id}-{SESSION_TABLE}-changelog"


def topic_specs(cfg: StreamConfig) -> list[TopicSpec]:
    """Every topic the worker reads or writes; the sessions topic and the changelog must agree."""
    names = [cfg.topic_logs, cfg.topic_sessions, cfg.topic_alerts, changelog_topic(cfg)]
    return [TopicSpec(n, cfg.partitions, cfg.replication_factor) for n in names]


def ensure_topics(bootstrap: Sequence[str] | str, specs: Sequence[TopicSpec], timeout: float = 30.0,
                  security: Mapping[str, Any] | None = None) -> list[str]:
    """Create the missing topics (idempotent); return the names created. An existing topic with another
    partition count is left as it is and logged (Faust refuses a changelog that disagrees with its source).
    `security`: TLS/SASL keyword arguments for the admin client (stream.security.kafka_python_kwargs).
    stream.connect.BrokerUnreachable when no broker answers."""
    with reaching(bootstrap, "create the worker's topics"):
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="logmoe-admin",
                                 request_timeout_ms=int(timeout * 1000), **(security or {}))
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
        for spec in missing:
            try:
                admin.create_topics([NewTopic(spec.name, spec.partitions, spec.replication_factor)])
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another worker created it in between
        present = [s for s in specs if s.name in existing]
        if present:
            described = {d.get("name", d.get("topic")): len(d.get("partitions", []))  # "topic" before kafka-python 3
                         for d in admin.describe_topics([s.name for s in present])}
            for spec in present:
                have = described.get(spec.name)
                if have is not None and have != spec.partitions:
                    log.warning("topic %s has %d partitions, config says %d", spec.name, have, spec.partitions)
        if created:
            log.info("created topics %s", ", ".join(created))
        return created
    finally:
        admin.close()
