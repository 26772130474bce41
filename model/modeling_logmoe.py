"""LogMoE window classifier: line embeddings (+ with rarity_buckets > 0, a learned vector for how many training
sessions held each line: model.rarity) -> pre-norm (self-attention + Top-P MoE) blocks -> masked pooling (the
mean of the line states; with window_pooling "mean_sum" also their sum and the log of the line count, so the head
sees how many of each line a window holds, not only their mix) -> linear 2-class head. The pooled vector is linear
in the line states, so each line's share of the logit margin is exact.

Shapes: B windows, T lines per window (<= max_window), D input (encoder) dim, H hidden size, E experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from model.checkpoint import check_model_folder
from model.configuration_logmoe import ROUTING_MODES, LogMoEConfig
from model.moe import RoutingStats, TopPMoE, load_balancing_loss, router_entropy_loss
from model.rarity import rarity_bucket

try:  # transformers >= 5: init helpers that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4.x
    init = nn.init


@dataclass
class LogMoEOutput(ModelOutput):
    """loss = cross-entropy + aux_loss (only when labels are given); aux_loss is the coefficient-weighted sum of the
    router losses (0 in dense routing); line_scores[b, t] is line t's exact additive share of the anomaly margin
    logits[b, 1] - logits[b, 0] (0 at padding); base[b] is the rest of the margin (the head's bias difference and
    the line-count term), so line_scores[b].sum() + base[b] == margin."""

    loss: Tensor | None = None  # ()
    logits: Tensor | None = None  # (B, 2)
    aux_loss: Tensor | None = None  # ()
    line_scores: Tensor | None = None  # (B, T)
    base: Tensor | None = None  # (B,)
    experts_per_token: Tensor | None = None  # () mean over real tokens and layers
    expert_load: Tensor | None = None  # (E,) fraction of real tokens routed to each expert, mean over layers
    window_experts: Tensor | None = None  # (B,) mean experts per real line of each window, mean over layers


class SelfAttention(nn.Module):
    def __init__(self, config: LogMoEConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.dropout = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """x (B, T, H), key_mask (B, T) bool, True = real line; padded keys get no attention."""
        B, T, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=-1)  # 3 x (B, T, H)
        head_dim = H // self.num_heads
        q, k, v = (t.view(B, T, self.num_heads, head_dim).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, T)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)  # (B, nh, T, hd)
        return self.proj(y.transpose(1, 2).reshape(B, T, H))  # (B, T, H)


class LogMoEBlock(nn.Module):
    def __init__(self, config: LogMoEConfig) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden_size)
        self.attn = SelfAttention(config)
        self.moe_norm = nn.LayerNorm(config.hidden_size)
        self.moe = TopPMoE(
            config.hidden_size,
            config.expert_intermediate_size,
            config.num_experts,
            config.top_p,
            routing=config.routing,
            renormalize=config.renormalize,
        )
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, RoutingStats]:
        """x (B, T, H), mask (B, T) bool -> (B, T, H) and the MoE routing stats."""
        x = x + self.dropout(self.attn(self.attn_norm(x), mask))  # (B, T, H)
        moe_out, _, stats = self.moe(self.moe_norm(x), mask)  # (B, T, H)
        return x + self.dropout(moe_out), stats


class LogMoEPreTrainedModel(PreTrainedModel):
    config_class = LogMoEConfig
    base_model_prefix = "logmoe"
    main_input_name = "inputs_embeds"
    _no_split_modules = ["LogMoEBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear, Embedding, LayerNorm
        if isinstance(module, nn.Embedding) and module is getattr(self, "rarity", None):
            # Zero: a rarity bucket that no training line fell in (e.g. never-seen lines where every training
            # line recurs) keeps adding nothing, rather than a random vector, at scoring time.
            init.zeros_(module.weight)
        elif isinstance(module, nn.Embedding):
            # The positions are added to layer-normed line embeddings (unit scale); at the usual 0.02 they are
            # drowned out and order is learned too slowly: on the synthetic world, 30 of 37 out-of-order dev
            # sessions went undetected (F1 0.88) where std 1.0 caught all of them (F1 1.000).
            init.normal_(module.weight, mean=0.0, std=self.config.position_init_std)
        if isinstance(module, TopPMoE):
            init.normal_(module.w_in, mean=0.0, std=0.02)
            init.normal_(module.w_out, mean=0.0, std=0.02)
            init.zeros_(module.b_in)
            init.zeros_(module.b_out)


class LogMoEForSequenceClassification(LogMoEPreTrainedModel):
    def __init__(self, config: LogMoEConfig) -> None:
        super().__init__(config)
        self.input_proj = nn.Linear(config.input_dim, config.hidden_size)
        self.input_norm = nn.LayerNorm(config.hidden_size)
        self.position = nn.Embedding(config.max_window, config.hidden_size)
        self.rarity = nn.Embedding(config.rarity_buckets, config.hidden_size) if config.rarity_buckets else None
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.blocks = nn.ModuleList(LogMoEBlock(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size)
        pooled = config.hidden_size if config.window_pooling == "mean" else 2 * config.hidden_size + 1
        self.classifier = nn.Linear(pooled, 2)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args: Any, **kwargs: Any) -> Any:
        """Load a local folder saved with save_pretrained. Weights come from model.safetensors only: a pickled
        checkpoint is refused, never unpickled. A missing, truncated or wrong-version folder is one
        FileNotFoundError / ValueError naming it (model.checkpoint.check_model_folder)."""
        path = check_model_folder(pretrained_model_name_or_path)
        kwargs["use_safetensors"] = True
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(path, *model_args, **kwargs)

    def set_routing(self, mode: str) -> None:
        """Switch every MoE layer between "dense" (stage 1) and "top_p" (stage 2); recorded in the config."""
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {list(ROUTING_MODES)}, got {mode!r}")
        self.config.routing = mode
        for block in self.blocks:
            block.moe.set_routing(mode)

    def _check_inputs(self, inputs_embeds: Tensor, attention_mask: Tensor) -> None:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"inputs_embeds must have shape (B, T, {self.config.input_dim}), got {tuple(inputs_embeds.shape)}"
            )
        T = inputs_embeds.shape[1]
        if T > self.config.max_window:
            raise ValueError(f"window of T={T} lines exceeds max_window={self.config.max_window}; window it first")
        if attention_mask.shape != inputs_embeds.shape[:2]:
            raise ValueError(
                f"attention_mask must have shape {tuple(inputs_embeds.shape[:2])}, got {tuple(attention_mask.shape)}"
            )
        empty = (~attention_mask.bool()).all(dim=1).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"rows {empty} of attention_mask have no real line; every window needs at least one")

    @staticmethod
    def _check_counts(line_counts: Tensor | None, mask: Tensor) -> Tensor:
        if line_counts is None:
            raise ValueError("this model reads line rarity (rarity_buckets > 0): pass line_counts (B, T), the "
                             "training sessions that held each line")
        if line_counts.shape != mask.shape:
            raise ValueError(f"line_counts must have shape {tuple(mask.shape)}, got {tuple(line_counts.shape)}")
        return line_counts

    def forward(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        line_counts: Tensor | None = None,
    ) -> LogMoEOutput:
        """inputs_embeds (B, T, D) line embeddings, attention_mask (B, T) 1 = real line (None = all real),
        labels (B,) in {0, 1}, line_counts (B, T) how many training sessions other than the window's own held each
        line (model.rarity; required when config.rarity_buckets > 0, ignored otherwise)."""
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        self._check_inputs(inputs_embeds, attention_mask)
        mask = attention_mask.bool()  # (B, T)
        # positions count real lines only, so where the padding sits cannot change the result
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        x = self.input_norm(self.input_proj(inputs_embeds)) + self.position(positions)  # (B, T, H)
        if self.rarity is not None:
            x = x + self.rarity(rarity_bucket(self._check_counts(line_counts, mask), self.config.rarity_buckets))
        x = self.dropout(x)
        layer_stats = []
        for block in self.blocks:
            x, stats = block(x, mask)  # (B, T, H)
            layer_stats.append(stats)
        h = self.final_norm(x) * mask[..., None]  # (B, T, H) zero at padding
        logits, line_scores, base = self._head(h, mask)  # (B, 2), (B, T), (B,)

        aux_loss = self._aux_loss(layer_stats, logits)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.long()) + aux_loss
        return LogMoEOutput(
            loss=loss,
            logits=logits,
            aux_loss=aux_loss,
            line_scores=line_scores,
            base=base,
            experts_per_token=torch.stack([s.experts_per_token for s in layer_stats]).mean(),
            expert_load=torch.stack([s.expert_load for s in layer_stats]).mean(dim=0),
            window_experts=self._window_experts(layer_stats, mask),
        )

    def _head(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h (B, T, H) line states, zero at padding -> logits (B, 2), each line's share of the margin (B, T) and the
        rest of it (B,). Every pooled feature is linear in the line states but the log line count, which goes to
        the base with the bias."""
        H = h.shape[-1]
        counts = mask.sum(dim=1, keepdim=True).to(h.dtype)  # (B, 1)
        weight = self.classifier.weight.to(h.dtype)  # (2, P)
        direction = weight[1] - weight[0]  # (P,) the margin's weights
        bias = (self.classifier.bias[1] - self.classifier.bias[0]).to(h.dtype)  # ()
        if self.config.window_pooling == "mean":
            pooled = h.sum(dim=1) / counts  # (B, H)
            per_line = direction / counts  # (B, H) the weight of one line's state in the margin
            base = bias.expand(h.shape[0])  # (B,)
        else:
            max_window = float(self.config.max_window)
            length = counts.log() / math.log(max_window + 1)  # (B, 1) in [0, 1)
            pooled = torch.cat([h.sum(dim=1) / counts, h.sum(dim=1) / max_window, length], dim=-1)  # (B, 2H + 1)
            per_line = direction[:H] / counts + direction[H:2 * H] / max_window  # (B, H)
            base = bias + direction[2 * H] * length.squeeze(-1)  # (B,)
        logits = self.classifier(pooled)  # (B, 2)
        line_scores = (h * per_line[:, None, :]).sum(dim=-1)  # (B, T) zero at padding
        return logits, line_scores, base

    @staticmethod
    def _window_experts(layer_stats: list[RoutingStats], mask: Tensor) -> Tensor:
        """Mean number of experts that ran per real line of each window, averaged over layers -> (B,)."""
        per_line = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # (B, T)
        for stats in layer_stats:
            per_line[mask] += stats.expert_mask.float().sum(dim=-1)  # real tokens in (B, T) row-major order
        return per_line.sum(dim=1) / (mask.sum(dim=1) * len(layer_stats))  # (B,)

    def _aux_loss(self, layer_stats: list[RoutingStats], logits: Tensor) -> Tensor:
        """Coefficient-weighted router losses, averaged over layers; exactly 0 (no graph) in dense routing."""
        gated = [s for s in layer_stats if s.router_probs is not None]
        if not gated:
            return logits.new_zeros((), dtype=torch.float32)
        balance = torch.stack([load_balancing_loss(s.router_probs, s.expert_mask) for s in gated]).mean()
        entropy = torch.stack([router_entropy_loss(s.router_probs) for s in gated]).mean()
        return self.config.router_aux_loss_coef * balance + self.config.router_entropy_loss_coef * entropy
