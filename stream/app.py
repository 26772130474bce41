"""`create_app(cfg)`: the Faust app with its topics, session table and agents; no import-time globals."""

from __future__ import annotations

import logging

import faust

from stream.agents import register_agents
from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.processor import Scorer
from stream.route import register_route
from stream.security import describe, faust_credentials
from stream.topics import SESSION_TABLE

log = logging.getLogger(__name__)


def load_scorer(cfg: StreamConfig) -> Scorer:
    """The trained model named by cfg.model (FileNotFoundError / ValueError naming the folder)."""
    from model import LogScorer

    return LogScorer.from_pretrained(cfg.model, device=cfg.device)


def window_hop(cfg: StreamConfig, scorer: Scorer) -> int:
    """cfg.hop, or when 0 the hop the model was trained with (LogScorer.window_hop)."""
    return cfg.hop or scorer.window_hop


def create_app(cfg: StreamConfig, scorer: Scorer | None = None) -> faust.App:
    """Build the worker's Faust app; `scorer` defaults to the model in cfg.model."""
    if scorer is None:
        scorer = load_scorer(cfg)
    app = faust.App(
        cfg.app_id,
        broker=cfg.faust_broker,
        broker_credentials=faust_credentials(cfg),
        store=cfg.store,
        processing_guarantee=cfg.processing_guarantee,
        topic_partitions=cfg.partitions,
        topic_replication_factor=cfg.replication_factor,
        topic_disable_leader=True,
        broker_session_timeout=cfg.broker_session_timeout,
        broker_heartbeat_interval=cfg.broker_heartbeat_interval,
        producer_max_batch_size=cfg.producer_max_batch_size,
        consumer_auto_offset_reset="earliest",
        web_enabled=cfg.web_port > 0,
        web_port=cfg.web_port or 6066,
        autodiscover=False,
    )
    LOGS = app.topic(cfg.topic_logs, key_serializer="raw", value_serializer="raw")
    SESSIONS = app.topic(cfg.topic_sessions, key_serializer="raw", value_serializer="json",
                         partitions=cfg.partitions)
    ALERTS = app.topic(cfg.topic_alerts, key_serializer="raw", value_serializer="raw",
                       partitions=cfg.partitions)
    SESSION_STATES = app.Table(SESSION_TABLE, default=None, partitions=cfg.partitions,
                               key_type=str)  # values: plain JSON mappings (SessionState.to_json)
    hop = window_hop(cfg, scorer)
    metrics = Metrics()
    register_route(app, cfg, metrics, logs=LOGS, sessions=SESSIONS)
    register_agents(app, cfg, scorer, hop, metrics, sessions=SESSIONS, alerts=ALERTS, table=SESSION_STATES)
    log.info("app %s: model %s (window %d, hop %d, threshold %.4f), broker %s (%s)", cfg.app_id, scorer.name,
             scorer.max_window, hop, scorer.threshold, cfg.faust_broker, describe(cfg))
    return app
