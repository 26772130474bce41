"""Top-P mixture of experts: the routing rule, the MoE feed-forward block and its auxiliary losses.

Shapes: N real (non-padding) tokens, H hidden size, I expert intermediate size, E experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.configuration_logmoe import ROUTING_MODES


def top_p_select(probs: Tensor, p: float) -> Tensor:
    """Mask over the last dim of `probs`, in the original expert order, keeping per row the smallest set of
    experts, taken in descending probability, whose cumulative probability reaches `p` (the expert that crosses
    `p` is kept; at least one expert is always kept; zero-probability experts only when nothing else is left).
    Ties are broken towards the lower expert index."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p!r}")
    if probs.dtype in (torch.float16, torch.bfloat16):
        probs = probs.float()  # routing decisions in float32
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # (..., E), (..., E)
    mass_before = F.pad(sorted_probs.cumsum(dim=-1)[..., :-1], (1, 0))  # (..., E) mass of the experts ranked above
    keep_sorted = (mass_before < p) & (sorted_probs > 0)  # (..., E) rounding at p=1 must not pull in zeros
    keep_sorted[..., 0] = True  # the top expert always runs
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # (..., E) back to expert order


def load_balancing_loss(router_probs: Tensor, expert_mask: Tensor) -> Tensor:
    """Switch-style balance loss adapted to top-p: E * sum_e (fraction of tokens whose kept set includes e) *
    (mean router probability of e). router_probs (N, E) float, expert_mask (N, E) bool; N real tokens only."""
    num_experts = router_probs.shape[-1]
    fraction_routed = expert_mask.float().mean(dim=0)  # (E,)
    mean_prob = router_probs.float().mean(dim=0)  # (E,)
    return num_experts * (fraction_routed * mean_prob).sum()


def router_entropy_loss(router_probs: Tensor) -> Tensor:
    """Mean entropy (nats) of the router distribution over N real tokens; minimising it sharpens the router, so
    top-p keeps fewer experts (a uniform router at p=0.8 with 4 experts keeps all 4). router_probs (N, E)."""
    probs = router_probs.float()  # (N, E)
    return -torch.xlogy(probs, probs).sum(dim=-1).mean()


@dataclass
class RoutingStats:
    """What the router decided for the N real tokens of one MoE layer."""

    expert_mask: Tensor  # (N, E) bool, True where the expert ran for the token
    router_probs: Tensor | None  # (N, E) float32 softmax of the router; None in dense routing (no gate)

    @property
    def experts_per_token(self) -> Tensor:
        return self.expert_mask.float().sum(dim=-1).mean()  # ()

    @property
    def expert_load(self) -> Tensor:
        return self.expert_mask.float().mean(dim=0)  # (E,) fraction of real tokens routed to each expert


class TopPMoE(nn.Module):
    """Feed-forward block of E GELU MLP experts. routing="dense" averages all experts (stage 1, no gate);
    routing="top_p" weights the experts kept by `top_p_select` on the router softmax (stage 2), running each
    expert only on the tokens routed to it."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_experts: int,
        top_p: float,
        routing: str = "top_p",
        renormalize: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.num_experts = num_experts
        self.top_p = top_p
        self.renormalize = renormalize
        self.set_routing(routing)
        self.router = nn.Linear(hidden_size, num_experts)
        self.w_in = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))  # (E, H, I)
        self.b_in = nn.Parameter(torch.zeros(num_experts, intermediate_size))  # (E, I)
        self.w_out = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))  # (E, I, H)
        self.b_out = nn.Parameter(torch.zeros(num_experts, hidden_size))  # (E, H)
        nn.init.normal_(self.w_in, std=0.02)
        nn.init.normal_(self.w_out, std=0.02)

    def set_routing(self, mode: str) -> None:
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {list(ROUTING_MODES)}, got {mode!r}")
        self.routing = mode

    def expert(self, x: Tensor, e: int) -> Tensor:
        """Run expert e on x (n, H) -> (n, H)."""
        h = F.gelu(x @ self.w_in[e] + self.b_in[e])  # (n, I)
        return h @ self.w_out[e] + self.b_out[e]  # (n, H)

    def forward(self, hidden: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor | None, RoutingStats]:
        """hidden (B, T, H), token_mask (B, T) bool (True = real token). Returns the output (B, T, H), zero at
        padding; the router logits of the real tokens (N, E), None in dense routing; and the routing stats."""
        token_mask = token_mask.bool()
        x = hidden[token_mask]  # (N, H) real tokens only: padding never reaches the router or the statistics
        if self.routing == "dense":
            y, router_logits, stats = self._dense(x)  # (N, H)
        else:
            y, router_logits, stats = self._top_p(x)  # (N, H)
        out = hidden.new_zeros(hidden.shape)  # (B, T, H)
        out[token_mask] = y.to(out.dtype)
        return out, router_logits, stats

    def _dense(self, x: Tensor) -> tuple[Tensor, None, RoutingStats]:
        h = F.gelu(torch.einsum("nh,ehi->eni", x, self.w_in) + self.b_in[:, None, :])  # (E, N, I)
        y = torch.einsum("eni,eih->enh", h, self.w_out) + self.b_out[:, None, :]  # (E, N, H)
        expert_mask = torch.ones(x.shape[0], self.num_experts, dtype=torch.bool, device=x.device)  # (N, E)
        return y.mean(dim=0), None, RoutingStats(expert_mask=expert_mask, router_probs=None)  # (N, H)

    def _top_p(self, x: Tensor) -> tuple[Tensor, Tensor, RoutingStats]:
        router_logits = self.router(x)  # (N, E)
        probs = router_logits.float().softmax(dim=-1)  # (N, E) float32 routing
        expert_mask = top_p_select(probs, self.top_p)  # (N, E)
        weights = probs * expert_mask  # (N, E)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)  # (N, E) kept experts sum to 1
        y = torch.zeros_like(x)  # (N, H)
        for e in expert_mask.any(dim=0).nonzero().flatten().tolist():  # only experts that received tokens
            idx = expert_mask[:, e].nonzero().flatten()  # (n_e,)
            out_e = self.expert(x.index_select(0, idx), e)  # (n_e, H)
            y.index_add_(0, idx, (out_e * weights[idx, e, None]).to(y.dtype))  # (N, H)
        return y, router_logits, RoutingStats(expert_mask=expert_mask, router_probs=probs)
