"""Run the worker in the foreground: check and load the model, create the topics, start Faust until SIGTERM/SIGINT.

Faust, torch and the model load inside `run_worker`, after the cheap checks, so a bad model folder or config
fails in a fraction of a second and before anything connects to a broker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from model.checkpoint import check_model_folder
from stream.config import StreamConfig

if TYPE_CHECKING:
    from stream.processor import Scorer

log = logging.getLogger(__name__)


def run_worker(cfg: StreamConfig, scorer: Scorer | None = None) -> int:
    """Blocks until the worker stops; returns its exit code (0 after SIGTERM/SIGINT)."""
    if scorer is None:
        check_model_folder(cfg.model)  # missing, pickled, truncated, wrong type or version: fail before torch
        from stream.scoring import close_scorer, load_scorer

        scorer = load_scorer(cfg)
        try:
            return _run(cfg, scorer)
        finally:
            close_scorer(scorer)  # its scoring process, on every way out (a broker that never answered too)
    return _run(cfg, scorer)


def _run(cfg: StreamConfig, scorer: Scorer) -> int:
    import faust

    from stream.app import create_app
    from stream.security import kafka_python_kwargs
    from stream.topics import ensure_topics, topic_specs

    ensure_topics(cfg.bootstrap_servers, topic_specs(cfg), security=kafka_python_kwargs(cfg))
    app = create_app(cfg, scorer)
    worker = faust.Worker(app, loglevel=cfg.log_level.upper(), redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0
