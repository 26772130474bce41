"""logmoe's model: line masking, the frozen line encoder, the Top-P MoE classifier and the scorer.

Names are imported lazily so that `import model` (and the CLI's `--help`) stays cheap: torch and
transformers load only when a model name is first used.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "mask": "model.masking",
    "LineEncoder": "model.encoder",
    "top_p_select": "model.moe",
    "LogMoEConfig": "model.configuration_logmoe",
    "LogMoEForSequenceClassification": "model.modeling_logmoe",
    "LogMoEOutput": "model.modeling_logmoe",
    "LogScorer": "model.scorer",
    "WindowScore": "model.window_score",
    "Windower": "model.windowing",
    "WindowState": "model.windowing",
    "session_windows": "model.windowing",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from model.configuration_logmoe import LogMoEConfig
    from model.encoder import LineEncoder
    from model.masking import mask
    from model.modeling_logmoe import LogMoEForSequenceClassification, LogMoEOutput
    from model.moe import top_p_select
    from model.scorer import LogScorer
    from model.window_score import WindowScore
    from model.windowing import Windower, WindowState, session_windows


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
