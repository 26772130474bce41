"""logmoe's streaming detector: a Faust worker that windows log sessions, scores them and publishes alerts.

`create_app(cfg)` builds the Faust app; `StreamConfig` / `load_stream_config` configure it. Submodules load
lazily, so `import stream` stays cheap for the CLI.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app", "StreamConfig", "load_stream_config"]

if TYPE_CHECKING:
    from stream.app import create_app
    from stream.config import StreamConfig, load_stream_config


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from stream.app import create_app

        return create_app
    if name in ("StreamConfig", "load_stream_config"):
        from stream import config

        return getattr(config, name)
    raise AttributeError(f"module 'stream' has no attribute {name!r}")
