"""Top-P routing rule, the MoE block's two routing modes and the router losses, against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from model.moe import TopPMoE, load_balancing_loss, router_entropy_loss, top_p_select

T, F_ = True, False


def select(probs: list[float], p: float) -> list[bool]:
    return top_p_select(torch.tensor(probs), p).tolist()


@pytest.mark.parametrize(
    ("probs", "p", "expected"),
    [
        ([0.1, 0.6, 0.05, 0.25], 0.8, [F_, T, F_, T]),  # unsorted: 0.6 then 0.25 crosses 0.8
        ([0.1, 0.6, 0.05, 0.25], 0.6, [F_, T, F_, F_]),  # 0.6 alone reaches 0.6 exactly
        ([0.1, 0.6, 0.05, 0.25], 0.86, [T, T, F_, T]),
        ([0.1, 0.6, 0.05, 0.25], 0.1, [F_, T, F_, F_]),  # always the top expert
        ([0.25, 0.25, 0.25, 0.25], 0.8, [T, T, T, T]),  # a uniform router at p=0.8 keeps all 4
        ([0.25, 0.25, 0.25, 0.25], 0.5, [T, T, F_, F_]),  # ties: lower index first
        ([0.4, 0.2, 0.4], 0.4, [T, F_, F_]),
        ([0.4, 0.2, 0.4], 0.5, [T, F_, T]),
        ([0.5, 0.0, 0.3, 0.2], 1.0, [T, F_, T, T]),  # p=1 keeps every nonzero expert, no zero one
        ([0.0, 0.0, 1.0, 0.0], 1.0, [F_, F_, T, F_]),  # one-hot keeps one
        ([0.5, 0.4999, 0.0], 1.0, [T, T, F_]),  # a row summing just under 1 (rounding) still keeps no zero
        ([0.0, 0.0, 1.0, 0.0], 0.3, [F_, F_, T, F_]),
    ],
)
def test_top_p_select_hand_cases(probs: list[float], p: float, expected: list[bool]) -> None:
    assert select(probs, p) == expected


def test_top_p_select_p_one_keeps_all_nonzero_after_softmax() -> None:
    probs = torch.randn(64, 6).softmax(dim=-1)  # (N, E) float32, sums only approximately 1
    assert top_p_select(probs, 1.0).all()


def test_top_p_select_breaks_ties_towards_the_lower_index_among_many_experts() -> None:
    """64 equal experts at p=0.5: the first 32 (torch's unstable sort would keep others on CPU from 64 on)."""
    mask = top_p_select(torch.full((2, 64), 1 / 64), 0.5)  # (B, E)
    assert mask[0].nonzero().flatten().tolist() == list(range(32)) and torch.equal(mask[0], mask[1])


def test_top_p_select_batched_matches_rows() -> None:
    torch.manual_seed(0)
    probs = torch.randn(3, 5, 4).softmax(dim=-1)  # (B, T, E)
    mask = top_p_select(probs, 0.7)
    assert mask.shape == (3, 5, 4) and mask.dtype == torch.bool
    for b in range(3):
        for t in range(5):
            assert torch.equal(mask[b, t], top_p_select(probs[b, t], 0.7))


@pytest.mark.parametrize("p", [0.0, -0.2, 1.01, float("nan")])
def test_top_p_select_rejects_bad_p(p: float) -> None:
    with pytest.raises(ValueError, match=str(p)):
        top_p_select(torch.tensor([0.5, 0.5]), p)


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8).filter(lambda w: sum(w) > 1e-3),
    p=st.floats(0.01, 1.0),
)
def test_top_p_select_is_minimal_and_reaches_p(weights: list[float], p: float) -> None:
    probs = torch.tensor(weights, dtype=torch.float64)
    probs = probs / probs.sum()  # (E,)
    mask = top_p_select(probs, p)  # (E,)
    kept, dropped = probs[mask], probs[~mask]
    assert mask.sum() >= 1
    if dropped.numel():
        assert kept.min() >= dropped.max()  # taken in descending probability
    mass = kept.sum().item()
    assert mass >= p - 1e-9 or not (dropped > 0).any()  # reaches p, or nothing with mass was left out
    if mask.sum() > 1:
        assert mass - kept.min().item() < p + 1e-9  # without its smallest member the set would not reach p


def make_moe(routing: str, renormalize: bool = True, top_p: float = 0.8) -> TopPMoE:
    torch.manual_seed(0)
    moe = TopPMoE(hidden_size=8, intermediate_size=16, num_experts=4, top_p=top_p, routing=routing,
                  renormalize=renormalize)
    with torch.no_grad():  # nonzero biases and a sharp-ish router so the kept sets differ between tokens
        moe.b_in.normal_()
        moe.b_out.normal_()
        moe.router.weight.mul_(20.0)
    return moe


def all_experts(moe: TopPMoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, written out by hand: x (N, H) -> (E, N, H)."""
    outs = []
    for e in range(moe.num_experts):
        h = F.gelu(x @ moe.w_in[e] + moe.b_in[e])  # (N, I)
        outs.append(h @ moe.w_out[e] + moe.b_out[e])  # (N, H)
    return torch.stack(outs)  # (E, N, H)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    hidden = torch.randn(2, 5, 8)  # (B, T, H)
    mask = torch.ones(2, 5, dtype=torch.bool)  # (B, T)
    mask[1, 3:] = False
    return hidden, mask


def test_dense_is_plain_average_of_experts() -> None:
    moe = make_moe("dense")
    hidden, mask = inputs()
    out, router_logits, stats = moe(hidden, mask)
    expected = all_experts(moe, hidden[mask]).mean(dim=0)  # (N, H)
    torch.testing.assert_close(out[mask], expected)
    assert (out[~mask] == 0).all()
    assert router_logits is None and stats.router_probs is None
    assert stats.expert_mask.shape == (8, 4) and stats.expert_mask.dtype == torch.bool and stats.expert_mask.all()
    assert stats.experts_per_token.item() == 4.0


@pytest.mark.parametrize("renormalize", [True, False])
def test_top_p_is_weighted_sum_of_kept_experts(renormalize: bool) -> None:
    moe = make_moe("top_p", renormalize=renormalize)
    hidden, mask = inputs()
    out, router_logits, stats = moe(hidden, mask)
    x = hidden[mask]  # (N, H)
    probs = moe.router(x).softmax(dim=-1)  # (N, E)
    keep = top_p_select(probs, 0.8)  # (N, E)
    weights = probs * keep  # (N, E)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    expected = torch.einsum("ne,enh->nh", weights, all_experts(moe, x))  # (N, H)
    torch.testing.assert_close(out[mask], expected)
    assert (out[~mask] == 0).all()
    assert router_logits.shape == (8, 4)
    assert torch.equal(stats.expert_mask, keep)
    assert 1 <= stats.experts_per_token.item() < 4  # the sharp router makes some tokens skip experts


def test_experts_without_tokens_are_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    moe = make_moe("top_p")
    with torch.no_grad():  # the router sends every token to expert 2 alone
        moe.router.weight.zero_()
        moe.router.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))
    calls: list[tuple[int, int]] = []
    run_expert = moe.expert

    def counting_expert(x: torch.Tensor, e: int) -> torch.Tensor:
        calls.append((e, x.shape[0]))
        return run_expert(x, e)

    monkeypatch.setattr(moe, "expert", counting_expert)
    hidden, mask = inputs()
    out, _, stats = moe(hidden, mask)
    assert calls == [(2, 8)]  # one expert, the 8 real tokens, padding never dispatched
    expected = all_experts(moe, hidden[mask])[2]  # (N, H)
    torch.testing.assert_close(out[mask], expected)
    assert stats.expert_load.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_padding_does_not_reach_router() -> None:
    moe = make_moe("top_p")
    hidden, mask = inputs()
    out, logits, stats = moe(hidden, mask)
    noisy = hidden.clone()
    noisy[~mask] = 1e3
    out2, logits2, stats2 = moe(noisy, mask)
    assert torch.equal(out, out2) and torch.equal(logits, logits2)
    assert torch.equal(stats.expert_mask, stats2.expert_mask)


def test_router_gets_gradient_only_in_top_p() -> None:
    hidden, mask = inputs()
    for routing, expect_grad in (("top_p", True), ("dense", False)):
        moe = make_moe(routing)
        out, _, _ = moe(hidden, mask)
        out.pow(2).sum().backward()
        grad = moe.router.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == expect_grad
        assert moe.w_in.grad.abs().sum() > 0


def test_bad_routing_mode_raises() -> None:
    with pytest.raises(ValueError, match="sparse"):
        TopPMoE(8, 16, 4, 0.8, routing="sparse")
    with pytest.raises(ValueError, match="1.5"):
        TopPMoE(8, 16, 4, 1.5)


def test_load_balancing_loss_by_hand() -> None:
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]])  # (N, E)
    keep = torch.tensor([[True, False], [True, True]])
    # fraction routed [1.0, 0.5], mean prob [0.55, 0.45] -> 2 * (0.55 + 0.225)
    assert load_balancing_loss(probs, keep).item() == pytest.approx(1.55)
    uniform = torch.full((5, 4), 0.25)
    assert load_balancing_loss(uniform, torch.ones(5, 4, dtype=torch.bool)).item() == pytest.approx(4.0)


def test_router_entropy_loss_by_hand() -> None:
    assert router_entropy_loss(torch.full((3, 4), 0.25)).item() == pytest.approx(math.log(4))
    assert router_entropy_loss(torch.eye(4)).item() == pytest.approx(0.0)
    mixed = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert router_entropy_loss(mixed).item() == pytest.approx(math.log(2) / 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_probabilities_are_routed_in_float32(dtype: torch.dtype) -> None:
    """A bf16/fp16 router (CUDA autocast) is routed as float32 would route the same probabilities: in half
    precision p = 0.42 itself rounds to 0.419921875, and the cumulative sums round, which would drop experts."""
    probs = torch.tensor([0.419921875, 0.30078125, 0.279296875], dtype=dtype)  # exact in both half types
    mask = top_p_select(probs, 0.42)
    assert mask.dtype == torch.bool and mask.tolist() == [T, T, F_]  # 0.419921875 < 0.42: the second is needed
    torch.manual_seed(3)
    batch = torch.randn(64, 8).mul(1.5).softmax(dim=-1).to(dtype)  # (N, E)
    for p in (0.3, 0.42, 0.6, 0.86, 0.98):
        assert torch.equal(top_p_select(batch, p), top_p_select(batch.float(), p)), p


def test_defaults_and_bounds_of_the_block() -> None:
    moe = TopPMoE(hidden_size=64, intermediate_size=128, num_experts=4, top_p=1.0)  # p = 1 is allowed
    assert moe.routing == "top_p" and moe.renormalize is True
    # Small normal weights (std 0.02, as BERT-family models start), zero biases.
    for weights in (moe.w_in, moe.w_out):
        assert weights.std().item() == pytest.approx(0.02, rel=0.05) and abs(weights.mean().item()) < 1e-3
    assert not moe.b_in.any() and not moe.b_out.any()
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 0.0"):
        TopPMoE(8, 16, 4, 0.0)


def test_the_block_runs_in_bfloat16_and_matches_float32() -> None:
    """The CUDA path runs the model in bf16: the experts' weighted outputs are added back in the hidden dtype."""
    hidden, mask = inputs()
    for routing in ("top_p", "dense"):
        moe = make_moe(routing)
        expected, _, _ = moe(hidden, mask)
        out, _, _ = moe.to(torch.bfloat16)(hidden.to(torch.bfloat16), mask)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.05)
