"""logmoe's offline training pipeline: `train(cfg) -> metrics`, `evaluate(cfg) -> metrics`, and the data tools
(JSONL sessions, raw-log adapters, the synthetic log world). Builds on model/; never imports stream/.

Names load lazily, so registering the CLI subcommands does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TrainConfig": "train.config",
    "EvalConfig": "train.config",
    "train": "train.pipeline",
    "evaluate": "train.evaluation",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from train.config import EvalConfig, TrainConfig
    from train.evaluation import evaluate
    from train.pipeline import train


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
