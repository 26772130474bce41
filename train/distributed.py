"""Data-parallel plumbing of `logmoe train`: the process group from torchrun's environment, where this process
stands (`DataParallel`), how a global batch is split over the ranks, and the collectives the pipeline and the loop
exchange data with.

torchrun (or `logmoe train --nproc N`) starts one process per rank and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `data_parallel()` joins the group they describe (gloo on CPU, NCCL on CUDA). A process
started without them (or with WORLD_SIZE=1) is a single process: `SINGLE`, no process group, and every helper
returns its input unchanged, so a single-process run takes exactly the code path it took before.

Every collective has a timeout (training.dist_timeout_s), so a rank that stops answering ends the others with an
error instead of a hung job. Errors every rank raises alike are `AllRanksError`: rank 0 reports them, the others
exit quietly, and the user reads one `logmoe: error:` line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from model.device import resolve_device
from train.checkpoint import rng_key
from train.config import BACKENDS

logger = logging.getLogger(__name__)

T = TypeVar("T")
# What is caught, and re-raised on every rank, when one rank's set-up step fails.
SETUP_ERRORS = (ValueError, FileNotFoundError)


class AllRanksError(ValueError):
    """A bad set-up raised alike on every rank (rank 0 reports it; the other ranks exit without repeating it)."""


class LostRankError(RuntimeError):
    """A collective failed: another rank died, or stopped answering for longer than the timeout."""


# How torch's backends word a collective that lost its peers (gloo raises plain RuntimeErrors).
_LOST_PEER_WORDS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe", "nccl")


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run: rank r of world_size, on `device`. With world_size 1 nothing
    is communicated and every method returns its input."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (a single process)
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes logs, checkpoints, the final model, metrics.json and plots."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must be to take part in a collective: the rank's GPU with NCCL, else the CPU."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------------------------------- batches

    def local_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch `rows` (B,): every world_size-th row from its rank on (B / W,)."""
        return shard(rows, self.rank, self.world_size)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: DistributedDataParallel over `model` (gradients averaged over the ranks), or
        `model` itself in a single process. Unused parameters are expected: stage 1 never calls the router, and in
        stage 2 an expert that no line of a rank's share was routed to gets no gradient there."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
                      batch_labels: torch.Tensor) -> torch.Tensor:
        """The (class-weighted) cross-entropy of the global batch, as this rank's share of it: after DDP averages
        the gradients over the ranks they are the gradients of F.cross_entropy over the whole batch, whose weighted
        mean divides by the weight of the whole batch (batch_labels, which every rank knows), not of one rank's
        share. logits (b, 2) and labels (b,) of this rank's rows; batch_labels (B,) of the global batch."""
        if not self.distributed:
            return F.cross_entropy(logits, labels, weight=weight)
        summed = F.cross_entropy(logits, labels, weight=weight, reduction="sum")  # ()
        batch_weight = (weight.cpu()[batch_labels].sum() if weight is not None
                        else torch.tensor(float(batch_labels.numel())))  # ()
        return summed * (self.world_size / float(batch_weight))

    # ------------------------------------------------------------------------------------------- collectives

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the ranks of `tensor` (a new tensor on the input's device)."""
        if not self.distributed:
            return tensor
        buffer = tensor.detach().clone().to(self.comm_device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.to(tensor.device)

    def mean_over_ranks(self, *values: float) -> tuple[float, ...]:
        """Each value averaged over the ranks (what a logged per-rank mean is over the global batch)."""
        if not self.distributed:
            return values
        summed = self.all_reduce_sum(torch.tensor(values, dtype=torch.float64))
        return tuple(float(v) / self.world_size for v in summed)

    def all_gather_objects(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order (picklable objects, exchanged between the ranks only)."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def gather_shards(self, mine: Sequence[T]) -> list[T]:
        """The full list whose strided shards (`shard(items, r, W)`) the ranks hold: their items interleaved back
        into the original order."""
        if not self.distributed:
            return list(mine)
        parts = self.all_gather_objects(list(mine))
        return unshard(parts)

    def gather_rows(self, mine: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's (n_r, D) float tensor, in rank order, on the CPU; the n_r may differ (even be 0)."""
        if not self.distributed:
            return [mine]
        counts = self.all_gather_objects(int(mine.shape[0]))
        longest = max(counts)
        padded = torch.zeros(longest, *mine.shape[1:], dtype=mine.dtype, device=self.comm_device)  # (max n, D)
        padded[: mine.shape[0]] = mine.to(self.comm_device)
        buffers = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(buffers, padded)
        return [buffer[:count].cpu() for buffer, count in zip(buffers, counts)]

    def broadcast_rows(self, tensor: torch.Tensor | None, shape: Sequence[int]) -> torch.Tensor:
        """Rank 0's float `tensor` of `shape` on every rank (on the CPU); other ranks pass None."""
        if not self.distributed or self.is_main:
            if tensor is None:
                raise ValueError("broadcast_rows: rank 0 must pass the tensor it sends (None)")
        if not self.distributed:
            return tensor
        buffer = (tensor.float().to(self.comm_device).contiguous() if self.is_main
                  else torch.empty(*shape, dtype=torch.float32, device=self.comm_device))
        dist.broadcast(buffer, src=0)
        return buffer.cpu()

    def from_main(self, fn: Callable[[], T]) -> T:
        """fn() run on rank 0 only, its result (or its set-up error, as AllRanksError) handed to every rank: for
        what only rank 0 may read, such as the output folder's checkpoints."""
        if not self.distributed:
            return fn()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except SETUP_ERRORS as err:
                payload[0] = ("error", str(err))
        dist.broadcast_object_list(payload, src=0)
        status, value = payload[0]
        if status == "error":
            raise AllRanksError(value)
        return value

    def agree(self, fn: Callable[[], T]) -> T:
        """fn() on every rank; when it fails on any rank with a set-up error, every rank raises that error (the
        lowest failing rank's, naming it), so no rank is left waiting in a collective for one that gave up."""
        if not self.distributed:
            return fn()
        try:
            result, error = fn(), None
        except SETUP_ERRORS as err:
            result, error = None, str(err)
        errors = self.all_gather_objects(error)
        failed = [(rank, message) for rank, message in enumerate(errors) if message is not None]
        if failed:
            rank, message = failed[0]
            raise AllRanksError(message if len(failed) == self.world_size else f"rank {rank}: {message}")
        return result  # type: ignore[return-value]

    def check_same(self, what: str, value: object) -> None:
        """AllRanksError on every rank when the ranks hold different `value`s (e.g. data fingerprints)."""
        values = self.all_gather_objects(value)
        differing = [rank for rank, other in enumerate(values) if other != values[0]]
        if differing:
            raise AllRanksError(f"the ranks disagree on the {what}: rank 0 has {_short(values[0])}, rank "
                                f"{differing[0]} {_short(values[differing[0]])}; every rank must read the same "
                                f"files with the same settings")

    # ------------------------------------------------------------------------------------------- RNG

    def seed_rank(self, seed: int) -> None:
        """Give ranks above 0 a dropout RNG stream of their own (rank 0 keeps the single process's stream)."""
        if self.rank > 0:
            torch.manual_seed(seed * 1000 + self.rank)

    def rank_rng_states(self) -> dict[str, torch.Tensor]:
        """The CPU RNG states of ranks 1..W-1 as checkpoint tensors `rng.torch.rank<r>` (rank 0's is saved as
        `rng.torch` already), so a resumed run draws the dropout masks an uninterrupted one would."""
        if not self.distributed:
            return {}
        states = self.all_gather_objects(torch.get_rng_state())
        return {rng_key(rank): state for rank, state in enumerate(states) if rank > 0}


SINGLE = DataParallel()


def shard(items: Sequence[T] | torch.Tensor, rank: int, world_size: int) -> Any:
    """Every world_size-th item from `rank` on: the ranks' shards are disjoint, cover `items`, and differ in size by
    at most one (DistributedSampler's split)."""
    return items[rank::world_size]


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """The inverse of `shard` over all ranks: parts[r] = shard(items, r, len(parts)) -> items."""
    total = sum(len(part) for part in parts)
    items: list[Any] = [None] * total
    for rank, part in enumerate(parts):
        items[rank::len(parts)] = part
    return items


def world_from_env(env: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) where WORLD_SIZE is unset."""

    def number(name: str, default: int | None) -> int:
        text = env.get(name)
        if text is None or text == "":
            if default is None:
                raise ValueError(f"WORLD_SIZE is {env.get('WORLD_SIZE')} but {name} is not set: start logmoe "
                                 "train with torchrun (or logmoe train --nproc N), which sets RANK, LOCAL_RANK, "
                                 "MASTER_ADDR and MASTER_PORT")
            return default
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name} must be an integer ({text!r})") from None

    world_size = number("WORLD_SIZE", 1)
    if world_size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1 ({world_size})")
    if world_size == 1:
        return 0, 1, 0
    rank = number("RANK", None)
    local_rank = number("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, {world_size}) for WORLD_SIZE {world_size} ({rank})")
    return rank, world_size, local_rank


def is_main_process(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is rank 0 (or alone), from the environment; usable before any group exists."""
    return world_from_env(os.environ if env is None else env)[0] == 0


def rank_device(preference: str, local_rank: int, world_size: int) -> torch.device:
    """The device of a rank: with "auto" or "cuda" on a CUDA machine, GPU local_rank (ranks share GPUs round robin
    when there are fewer GPUs than ranks on the node); an explicit cuda:N or cpu as given."""
    device = resolve_device(preference)
    if device.type == "cuda" and world_size > 1 and preference.strip().lower() in ("auto", "cuda"):
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def choose_backend(requested: str, device: torch.device, local_world_size: int) -> str:
    """The collective backend: "auto" is NCCL when every rank of the node has a GPU of its own, else gloo (CPU, or
    several ranks sharing a GPU, which NCCL refuses); a requested backend must be available here."""
    if requested not in BACKENDS:
        raise AllRanksError(f"training.backend must be one of {', '.join(BACKENDS)} ({requested!r})")
    if not dist.is_available():
        raise AllRanksError("this torch build has no torch.distributed; install a build with it to train on "
                            "several processes")
    if requested == "auto":
        own_gpus = device.type == "cuda" and torch.cuda.device_count() >= local_world_size
        requested = "nccl" if own_gpus and dist.is_nccl_available() else "gloo"
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available() and device.type == "cuda"}
    if not available[requested]:
        hint = ("NCCL needs CUDA devices and a CUDA build of torch; on CPU use gloo" if requested == "nccl"
                else "this torch build was made without gloo; use nccl on CUDA")
        raise AllRanksError(f"backend {requested!r} is not available here (device {device}): {hint} "
                            f"(training.backend=auto picks one that is)")
    return requested


def check_batch_split(batch_size: int, world_size: int) -> int:
    """Windows per rank and step: training.batch_size is the global batch, split evenly over the ranks."""
    if batch_size % world_size:
        raise AllRanksError(f"training.batch_size {batch_size} does not split evenly over {world_size} processes "
                            f"(it is the global batch; each process takes batch_size / {world_size}): use a "
                            f"multiple of {world_size}")
    return batch_size // world_size


def check_enough_windows(num_windows: int, world_size: int) -> None:
    if num_windows < world_size:
        raise AllRanksError(f"fewer training windows ({num_windows}) than processes ({world_size}): every process "
                            f"needs at least one window of each batch; start at most {num_windows}")


@contextmanager
def data_parallel(device_preference: str, backend: str = "auto", timeout_s: float = 1800.0,
                  env: Mapping[str, str] | None = None) -> Iterator[DataParallel]:
    """Join the process group torchrun's environment describes (and leave it on exit); SINGLE without one."""
    env = os.environ if env is None else env
    rank, world_size, local_rank = world_from_env(env)
    if world_size == 1:
        yield DataParallel(device=resolve_device(device_preference))
        return
    device = rank_device(device_preference, local_rank, world_size)
    local_world_size = int(env.get("LOCAL_WORLD_SIZE") or 1)  # torchrun sets it; a PyTorchJob runs 1 per pod
    chosen = choose_backend(backend, device, local_world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(chosen, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
    logger.info("rank %d of %d (local rank %d) on %s, backend %s", rank, world_size, local_rank, device, chosen)
    try:
        yield DataParallel(rank=rank, world_size=world_size, local_rank=local_rank, backend=chosen, device=device)
    except RuntimeError as err:
        if isinstance(err, dist.DistError) or any(word in str(err).lower() for word in _LOST_PEER_WORDS):
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LostRankError(f"rank {rank} of {world_size} lost the other training processes ({first_line}): one "
                                f"of them died or did not answer within training.dist_timeout_s ({timeout_s:g} s); "
                                "the run stopped: continue it with --resume") from err
        raise
    finally:
        dist.destroy_process_group()


def _short(value: object) -> str:
    """A value for a message: long hex digests cut to 12 digits, the whole to 100 characters."""
    text = re.sub(r"[0-9a-f]{16,}", lambda digest: digest.group()[:12] + "…", str(value))
    return text if len(text) <= 100 else text[:97] + "..."
