"""The two-stage training loop over precomputed line embeddings.

Stage 1 trains with every expert averaged and no gate (`set_routing("dense")`); stage 2 switches the Top-P gate on
(`set_routing("top_p")`) and continues from stage 1's weights with a fresh AdamW (the router is new to the loss
in stage 2, so stage 1's moments would only mislead it). Each stage has its own linear warm-up and linear decay.
A checkpoint is written after every epoch; resuming reloads weights, optimizer and RNG state, so an interrupted
run ends with the weights an uninterrupted one would have.

An epoch is one pass over the training windows, or `min_steps_per_epoch` steps of reshuffled windows where the
data is smaller. The final model is the final stage's epoch with the best eval PR-AUC (`select_best`), whose
checkpoint is kept for that.

Data-parallel (`dp`, train/distributed.py): every rank draws the same epoch order and trains on its strided share of
each global batch under DistributedDataParallel; rank 0 alone evaluates, logs and writes checkpoints. With a single
process `dp` changes nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from train.augment import AnomalyShuffle
from train.checkpoint import (LoadedCheckpoint, TrainerState, load_checkpoint_weights, load_optimizer_tensors,
                              save_checkpoint)
from train.config import TrainingSection
from train.distributed import SINGLE, DataParallel
from train.embeddings import WindowSet

logger = logging.getLogger(__name__)

STAGES = (("stage1", "dense"), ("stage2", "top_p"))


@dataclass(frozen=True)
class Epoch:
    """One epoch of the schedule: its stage and position."""

    stage: int  # 1 or 2
    routing: str
    index_in_stage: int
    epochs_in_stage: int
    global_index: int


def schedule(cfg: TrainingSection) -> list[Epoch]:
    epochs: list[Epoch] = []
    for stage, ((_, routing), count) in enumerate(zip(STAGES, (cfg.epochs_stage1, cfg.epochs_stage2)), start=1):
        epochs.extend(Epoch(stage, routing, i, count, len(epochs) + i) for i in range(count))
    return epochs


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up over `warmup` steps, then linear decay to zero at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


def make_optimizer(model: torch.nn.Module, cfg: TrainingSection) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms and 1-d parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)


def class_weights(labels: torch.Tensor, mode: str) -> torch.Tensor | None:
    """None, or inverse-frequency weights (W / (2 n_c)) so both classes carry equal total weight."""
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=2).clamp(min=1).float()  # (2,)
    return labels.numel() / (2.0 * counts)


def steps_per_epoch(num_windows: int, cfg: TrainingSection) -> int:
    """One pass over the windows, or cfg.min_steps_per_epoch steps where that is more."""
    return max(math.ceil(num_windows / cfg.batch_size), cfg.min_steps_per_epoch)


def epoch_order(num_windows: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """(steps * batch_size,) window indices: reshuffled passes over the windows, as many as the steps need. The
    order depends only on `seed`, so a resumed run draws the same batches."""
    generator = torch.Generator().manual_seed(seed)
    passes = math.ceil(steps * batch_size / max(1, num_windows))
    return torch.cat([torch.randperm(num_windows, generator=generator) for _ in range(passes)])


@dataclass
class EvalResult:
    session_scores: torch.Tensor  # (S,) max window probability per session
    loss: float  # mean window cross-entropy
    experts_per_token: float

    def selection_key(self, session_labels: torch.Tensor) -> list[float]:
        """What select_best maximises: (PR-AUC of the sessions, -loss); PR-AUC is 0 with one class only."""
        labels = session_labels.numpy()
        pr_auc = 0.0
        if 0 < labels.sum() < len(labels):
            from sklearn.metrics import average_precision_score

            pr_auc = float(average_precision_score(labels, self.session_scores.numpy()))
        return [round(pr_auc, 6), -self.loss]


@torch.no_grad()
def score_windows(model: torch.nn.Module, table: torch.Tensor, data: WindowSet, batch_size: int) -> EvalResult:
    """Eval-mode anomaly probability of every window, reduced to sessions by max (as the worker does)."""
    model.eval()
    order = torch.argsort(data.lengths, stable=True)  # similar lengths together: less padding
    probs = torch.zeros(len(data))  # (W,)
    loss_sum, expert_sum, token_sum = 0.0, 0.0, 0
    for start in range(0, len(data), batch_size):
        rows = order[start:start + batch_size]
        embeds, mask, counts = data.batch(table, rows)  # (B, T, D), (B, T), (B, T) or None
        out = model(inputs_embeds=embeds, attention_mask=mask, line_counts=counts)
        logits = out.logits.float().cpu()  # (B, 2)
        probs[rows] = logits.softmax(dim=-1)[:, 1]
        loss_sum += F.cross_entropy(logits, data.labels[rows], reduction="sum").item()
        tokens = int(mask.sum())
        expert_sum += float(out.experts_per_token) * tokens
        token_sum += tokens
    sessions = torch.full((data.num_sessions,), -1.0).scatter_reduce(0, data.session_index, probs, "amax")  # (S,)
    return EvalResult(sessions, loss_sum / max(1, len(data)), expert_sum / max(1, token_sum))


class RunLogger:
    """Writes each logging step to moe_logs/train_log.jsonl and TensorBoard, and keeps the history; with
    write=False (data-parallel ranks other than 0) it only keeps the history."""

    def __init__(self, log_dir: Path, history: list[dict[str, Any]], write: bool = True) -> None:
        self.history = history
        self.writer: SummaryWriter | None = None
        if not write:
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        self.path = log_dir / "train_log.jsonl"
        # rewrite the JSONL from the (checkpointed) history, so a resumed run has no lines from lost steps
        self.path.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.writer is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        step = record["step"]
        for key, value in record.items():
            if key not in ("step", "stage", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"stage{record['stage']}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


EvalHook = Callable[[Epoch, EvalResult], dict[str, Any]]
# what select_best maximises, from the epoch's eval result and its logged record (default: EvalResult.selection_key)
SelectionKey = Callable[[EvalResult, dict[str, Any]], list[float]]


class BatchSource(Protocol):
    """Training batches of an objective other than the labels' (train/unsupervised.py); None: the labelled
    windows as they are."""

    def start_epoch(self, model: torch.nn.Module, epoch: Epoch) -> None: ...

    def batch(self, rows: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                            torch.Tensor]:
        """Windows `rows` (B,) at global step `step` -> embeddings (B, T, D), mask (B, T), line counts (B, T) or
        None, labels (B,)."""
        ...


def train_stages(model: torch.nn.Module, table: torch.Tensor, train_set: WindowSet, eval_set: WindowSet,
                 cfg: TrainingSection, output_dir: Path, run_identity: dict[str, Any],
                 resume_from: LoadedCheckpoint | None, eval_hook: EvalHook, dp: DataParallel = SINGLE,
                 batches: BatchSource | None = None, selection_key: SelectionKey | None = None,
                 shuffle: AnomalyShuffle | None = None) -> TrainerState:
    """Run (or continue) both stages; returns the final trainer state (its log_history holds every record; on
    data-parallel ranks other than 0 only the training steps, which they log nowhere). `batches` replaces the
    labelled training windows with another objective's batches (one process only); `selection_key` replaces eval
    PR-AUC as what select_best maximises; `shuffle` reorders the lines of some anomalous labelled windows
    (train/augment.py)."""
    epochs = schedule(cfg)
    trainer = resume_from.trainer if resume_from else TrainerState(run_identity=run_identity)
    steps = steps_per_epoch(len(train_set), cfg)
    results_dir = output_dir / "moe_results"
    weights = class_weights(train_set.labels, cfg.class_weighting)
    weights = weights.to(table.device) if weights is not None else None
    run_log = RunLogger(output_dir / "moe_logs", trainer.log_history, write=dp.is_main)
    net = dp.wrap(model)  # what the steps call: DDP over the model, or the model itself
    optimizer: torch.optim.AdamW | None = None
    try:
        for epoch in epochs[trainer.epochs_done:]:
            if cfg.stop_after_epochs is not None and trainer.epochs_done >= cfg.stop_after_epochs:
                logger.warning("stopping after %d epochs (training.stop_after_epochs); continue with --resume",
                               trainer.epochs_done)
                break
            model.set_routing(epoch.routing)
            if optimizer is None or epoch.index_in_stage == 0:
                optimizer = make_optimizer(model, cfg)
                if resume_from is not None and epoch.index_in_stage > 0:
                    load_optimizer_tensors(optimizer, resume_from.optimizer_tensors, resume_from.optimizer_param_groups)
            if batches is not None:
                batches.start_epoch(model, epoch)
            _run_epoch(net, table, train_set, optimizer, epoch, steps, weights, cfg, trainer, run_log, dp, batches,
                       shuffle)
            trainer.epochs_done += 1
            rank_rng = dp.rank_rng_states()
            if not dp.is_main:
                continue
            result = score_windows(model, table, eval_set, cfg.eval_batch_size)
            record = {"stage": epoch.stage, "epoch": float(epoch.index_in_stage + 1), "step": trainer.global_step,
                      "eval_loss": result.loss, "eval_experts_per_token": result.experts_per_token,
                      **eval_hook(epoch, result)}
            key = selection_key(result, record) if selection_key else result.selection_key(eval_set.session_labels)
            run_log.log(record)
            logger.info("stage %d epoch %d/%d: %s", epoch.stage, epoch.index_in_stage + 1, epoch.epochs_in_stage,
                        ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k.startswith("eval_")))
            if epoch.stage == epochs[-1].stage and key > trainer.best_key:  # the final stage's best epoch
                trainer.best_epoch, trainer.best_key = trainer.epochs_done, key
            save_checkpoint(results_dir, model, optimizer, trainer, cfg.keep_checkpoints, rank_rng)
    finally:
        run_log.close()
    if trainer.epochs_done == len(epochs):
        # also when a resumed run had every epoch done already (stopped in the final evaluation or while saving): the
        # loop ran no epoch, which is where routing is set, and the model would be saved as built, dense
        model.set_routing(epochs[-1].routing)
        if dp.is_main and cfg.select_best and trainer.best_epoch and trainer.best_epoch != trainer.epochs_done:
            logger.info("final model: epoch %d of %d, the final stage's best by %s (%s)", trainer.best_epoch,
                        len(epochs), "the objective's selection key" if selection_key else "eval PR-AUC, then loss",
                        ", ".join(f"{v:.4f}" for v in trainer.best_key))
            model.load_state_dict(load_checkpoint_weights(results_dir, trainer.best_epoch))
    return trainer


def _run_epoch(model: torch.nn.Module, table: torch.Tensor, data: WindowSet, optimizer: torch.optim.AdamW,
               epoch: Epoch, steps: int, weights: torch.Tensor | None, cfg: TrainingSection,
               trainer: TrainerState, run_log: RunLogger, dp: DataParallel = SINGLE,
               batches: BatchSource | None = None, shuffle: AnomalyShuffle | None = None) -> None:
    model.train()
    total = steps * epoch.epochs_in_stage
    warmup = max(1, int(cfg.warmup_ratio * total))
    # the order depends only on (seed, epoch), so a resumed run shuffles identically
    order = epoch_order(len(data), steps, cfg.batch_size, cfg.seed * 1000 + epoch.global_index)
    window_loss, window_norm, window_experts, seen = 0.0, 0.0, 0.0, 0
    bar = tqdm(range(steps), desc=f"stage {epoch.stage} epoch {epoch.index_in_stage + 1}", unit="step",
               leave=False, disable=not dp.is_main)
    for step_in_epoch in bar:
        stage_step = epoch.index_in_stage * steps + step_in_epoch
        lr = lr_at(stage_step, total, warmup, cfg.learning_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = order[step_in_epoch * cfg.batch_size:(step_in_epoch + 1) * cfg.batch_size]
        rows = dp.local_rows(batch)  # this process's share of the batch: all of it in a single process
        if batches is None:
            embeds, mask, counts = data.batch(table, rows)  # (B, T, D), (B, T), (B, T); B = batch_size / processes
            if shuffle is not None:
                embeds, counts = shuffle(rows, embeds, counts, trainer.global_step)
            labels = data.labels[rows].to(table.device)  # (B,)
            batch_labels = data.labels[batch]  # (batch_size,)
        else:  # one process only (the pipeline refuses the unsupervised objective under torchrun)
            embeds, mask, counts, labels = batches.batch(rows, trainer.global_step)
            batch_labels = labels.cpu()
        out = model(inputs_embeds=embeds, attention_mask=mask, line_counts=counts)
        loss = dp.cross_entropy(out.logits.float(), labels, weights, batch_labels) + out.aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        trainer.global_step += 1
        window_loss += loss.item()
        window_norm += float(grad_norm)
        window_experts += float(out.experts_per_token)
        seen += 1
        if trainer.global_step % cfg.logging_steps == 0 or step_in_epoch == steps - 1:
            window_loss, window_experts = dp.mean_over_ranks(window_loss, window_experts)
            progress = epoch.index_in_stage + (step_in_epoch + 1) / steps
            record = {"stage": epoch.stage, "epoch": round(progress, 4),
                      "step": trainer.global_step, "loss": window_loss / seen, "grad_norm": window_norm / seen,
                      "learning_rate": lr, "experts_per_token": window_experts / seen}
            run_log.log(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            window_loss, window_norm, window_experts, seen = 0.0, 0.0, 0.0, 0
