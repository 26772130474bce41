"""`create_app(cfg)`: the Faust app with its topics, session table and agents; no import-time globals."""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from stream.agents import AgentsHandle, register_agents
from stream.config import StreamConfig
from stream.http import StatusServer, StatusService
from stream.metrics import Metrics
from stream.processor import Scorer, session_idle
from stream.route import register_route
from stream.scoring import ProcessScorer, load_scorer
from stream.security import describe, faust_credentials
from stream.topics import SESSION_TABLE

log = logging.getLogger(__name__)


def window_hop(cfg: StreamConfig, scorer: Scorer) -> int:
    """cfg.hop, or when 0 the hop the model was trained with (LogScorer.window_hop); ValueError when it is larger
    than the model's max_window (the lines between two windows would never be scored)."""
    hop = cfg.hop or scorer.window_hop
    if hop > scorer.max_window:
        source = "hop" if cfg.hop else f"the model's window_hop (hop=0 means it, in {scorer.name})"
        raise ValueError(f"{source} must be <= the model's max_window ({hop} > {scorer.max_window}): the lines "
                         f"between two windows would never be scored; set hop to at most {scorer.max_window} "
                         f"(--set hop=N)")
    return hop


def create_app(cfg: StreamConfig, scorer: Scorer | None = None) -> faust.App:
    """Build the worker's Faust app; `scorer` defaults to the model in cfg.model."""
    metrics = Metrics()

    def count_restart() -> None:
        metrics.inc("scoring_restarts")

    if scorer is None:
        scorer = load_scorer(cfg, on_restart=count_restart)
    elif isinstance(scorer, ProcessScorer):
        scorer.on_restart = count_restart
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
    route = register_route(app, cfg, metrics, logs=LOGS, sessions=SESSIONS)
    handle = register_agents(app, cfg, scorer, hop, metrics, sessions=SESSIONS, alerts=ALERTS,
                             table=SESSION_STATES, load_model=lambda running: load_scorer(cfg, running, count_restart),
                             route=route)
    app.logmoe_metrics = metrics  # type: ignore[attr-defined]  # for tests and embedding code
    app.logmoe_handle = handle  # type: ignore[attr-defined]
    if cfg.metrics_port:
        server = StatusServer(cfg.metrics_host, cfg.metrics_port, metrics.registry,
                              lambda: health(app, handle, cfg.metrics_interval))
        app.add_dependency(StatusService(server))
    early = handle.processor.early
    summary = (f"app {cfg.app_id}: model {scorer.name} (window {scorer.max_window}, hop {hop}, threshold "
               f"{scorer.threshold:.4f}, " + (f"early scoring every {early.rule.early_hop} lines, thresholds "
                                              f"{early.thresholds.to_config()}" if early is not None else
                                              "no early scoring")
               + f"), sessions close after {describe_idle(cfg.session_idle, scorer)}, broker {cfg.faust_broker} "
               f"({describe(cfg)})")
    app.logmoe_summary = summary  # type: ignore[attr-defined]  # what the worker logs at start

    @app.task
    async def announce() -> None:
        log.info("%s", summary)  # at start: the worker sets logging up after create_app, which would drop it

    return app


def describe_idle(configured: float | None, scorer: Scorer) -> str:
    """Where the worker's session_idle comes from, for the start-up log; warns when a configured one is shorter than
    the pauses the model saw inside normal sessions (they will be cut, and their parts scored as sessions)."""
    idle = session_idle(configured, scorer)
    measured = getattr(scorer, "session_idle", None)
    if configured is None:
        return f"{idle:g} s idle (" + ("the model's: the longest pause inside a normal training session + 10%)"
                                       if measured else "the default: the model measured no pauses)")
    if measured and configured < measured:
        log.warning("session_idle %g s is shorter than the model's %g s (the longest pause inside a normal training "
                    "session + 10%%): sessions that pause longer are closed early and their parts scored as "
                    "sessions the model never saw, which raises false alarms on live logs. Fine for a replay, which "
                    "squeezes time; otherwise leave session_idle unset.", configured, measured)
    return f"{idle:g} s idle (session_idle)"


def health(app: faust.App, handle: AgentsHandle, metrics_interval: float) -> tuple[bool, dict[str, Any]]:
    """Healthy when the worker finished starting (table recovery done), every agent runs, a model is loaded and
    the event loop is not stuck (the metrics timer is overdue by less than max(2 intervals, 30 s))."""
    agents = {str(name).rsplit(".", 1)[-1]: agent.state for name, agent in app.agents.items()}
    if handle.route is not None:
        agents["route"] = handle.route.state
    ready = handle.processor.started_at > 0
    scorer = handle.slot.scorer
    stalled = handle.loop_stalled_for(time.monotonic(), metrics_interval)
    healthy = (ready and scorer is not None and all(state == "running" for state in agents.values())
               and stalled < max(2 * metrics_interval, 30.0))
    model = None if scorer is None else {"name": scorer.name, "fingerprint": scorer.fingerprint,
                                         "max_window": scorer.max_window, "threshold": scorer.threshold}
    return healthy, {"ready": ready, "caught_up": handle.processor.idle_since > 0, "agents": agents, "model": model,
                     "rebalancing": bool(app.rebalancing), "loop_stalled_s": round(stalled, 1)}
