"""Run the worker in the foreground: load the model, create the topics, start Faust until SIGTERM/SIGINT."""

from __future__ import annotations

import logging

import faust

from stream.app import create_app, load_scorer
from stream.config import StreamConfig
from stream.processor import Scorer
from stream.topics import ensure_topics, topic_specs

log = logging.getLogger(__name__)


def run_worker(cfg: StreamConfig, scorer: Scorer | None = None) -> int:
    """Blocks until the worker stops; returns its exit code (0 after SIGTERM/SIGINT)."""
    if scorer is None:
        scorer = load_scorer(cfg)  # a bad model dir fails here, before anything connects
    ensure_topics(cfg.bootstrap_servers, topic_specs(cfg))
    app = create_app(cfg, scorer)
    worker = faust.Worker(app, loglevel=cfg.log_level.upper(), redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
