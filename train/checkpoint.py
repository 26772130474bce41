"""Epoch checkpoints in moe_results/: weights, optimizer state and RNG state as safetensors, the rest as JSON.

checkpoint-<NNN>/ (NNN = epochs done, both stages counted):
  model.safetensors       the classifier's state dict
  optimizer.safetensors   AdamW moments and step per parameter ("state.<param>.<name>"), and the torch RNG state
                          ("rng.torch"; in a data-parallel run each other rank's as "rng.torch.rank<r>")
  trainer_state.json      epochs done, global step, optimizer param groups, the log history, the run's identity
The JSON is written last; a folder without it is an interrupted save and is ignored. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where a run is, enough to continue it exactly."""

    epochs_done: int = 0  # over both stages
    global_step: int = 0
    best_epoch: int = 0  # epochs_done after the best final-stage epoch so far (0: none yet); its checkpoint is kept
    best_key: list[float] = field(default_factory=list)  # (eval PR-AUC, -eval loss) of that epoch
    run_identity: dict[str, Any] = field(default_factory=dict)  # config + data fingerprint; resume must match
    log_history: list[dict[str, Any]] = field(default_factory=list)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Flatten an optimizer state dict into named tensors plus JSON-able param groups."""
    state = optimizer.state_dict()
    tensors = {}
    for param_id, slots in state["state"].items():
        for name, value in slots.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{param_id}.{name}"] = tensor.detach().cpu().contiguous()
    return tensors, state["param_groups"]


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           param_groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def checkpoint_folder(results_dir: Path, epochs_done: int) -> Path:
    return results_dir / f"checkpoint-{epochs_done:03d}"


def rng_key(rank: int) -> str:
    """The optimizer.safetensors tensor holding the RNG state of data-parallel rank `rank` (0: the only one of a
    single process)."""
    return "rng.torch" if rank == 0 else f"rng.torch.rank{rank}"


def save_checkpoint(results_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    trainer: TrainerState, keep: int, rank_rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint-<epochs_done>/ and delete all but the newest `keep` checkpoints and the best epoch's;
    `rank_rng` holds the other data-parallel ranks' RNG states (rng_key(r) -> state)."""
    folder = checkpoint_folder(results_dir, trainer.epochs_done)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    extra: dict[str, torch.Tensor] = {rng_key(0): torch.get_rng_state(), **(rank_rng or {})}
    groups: list[dict[str, Any]] = []
    if optimizer is not None:
        tensors, groups = optimizer_tensors(optimizer)
        extra.update(tensors)
    save_file(extra, str(folder / "optimizer.safetensors"))
    payload = {"epochs_done": trainer.epochs_done, "global_step": trainer.global_step,
               "best_epoch": trainer.best_epoch, "best_key": trainer.best_key,
               "run_identity": trainer.run_identity, "optimizer_param_groups": groups,
               "log_history": trainer.log_history}
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    tmp.replace(folder / STATE_FILE)
    best = checkpoint_folder(results_dir, trainer.best_epoch) if trainer.best_epoch else None
    for old in list_checkpoints(results_dir)[:-keep]:
        if old != best:
            shutil.rmtree(old)
    return folder


def load_checkpoint_weights(results_dir: Path, epochs_done: int) -> dict[str, torch.Tensor]:
    """The model weights of checkpoint-<epochs_done>/ (the best epoch's, which rotation never deletes)."""
    path = checkpoint_folder(results_dir, epochs_done) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"the best epoch's checkpoint {path} is missing; train again without --resume")
    return load_file(str(path))


def list_checkpoints(results_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not results_dir.is_dir():
        return []
    return sorted(p for p in results_dir.glob("checkpoint-*") if (p / STATE_FILE).is_file())


@dataclass
class LoadedCheckpoint:
    folder: Path
    trainer: TrainerState
    model_state: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_param_groups: list[dict[str, Any]]

    def restore_rng(self, rank: int = 0) -> None:
        """Restore this (data-parallel) rank's RNG state; a rank the saving run did not have keeps its own seed."""
        state = self.optimizer_tensors.get(rng_key(rank))
        if state is None:
            logger.warning("%s holds no RNG state for rank %d (saved by a run with fewer processes); its dropout "
                           "draws start from its own seed", self.folder, rank)
            return
        torch.set_rng_state(state)


def load_latest_checkpoint(results_dir: Path) -> LoadedCheckpoint | None:
    found = list_checkpoints(results_dir)
    if not found:
        return None
    folder = found[-1]
    payload = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    trainer = TrainerState(epochs_done=payload["epochs_done"], global_step=payload["global_step"],
                           best_epoch=payload.get("best_epoch", 0), best_key=payload.get("best_key", []),
                           run_identity=payload["run_identity"], log_history=payload["log_history"])
    logger.info("resuming from %s (%d epochs done, step %d)", folder, trainer.epochs_done, trainer.global_step)
    return LoadedCheckpoint(folder, trainer, load_file(str(folder / "model.safetensors")),
                            load_file(str(folder / "optimizer.safetensors")), payload["optimizer_param_groups"])
