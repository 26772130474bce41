"""LogMoE config validation and the classifier's contract: padding/batch invariance, exact line scores, routing
stages, gradients and the safetensors round trip."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import FORMAT_VERSION
from model.configuration_logmoe import LogMoEConfig
from model.modeling_logmoe import LogMoEForSequenceClassification, LogMoEOutput

D = 16  # input (encoder) dim of the tiny model


def tiny_config(**overrides: object) -> LogMoEConfig:
    values = dict(input_dim=D, hidden_size=32, num_hidden_layers=2, num_attention_heads=8, num_experts=4,
                  expert_intermediate_size=32, max_window=8)
    values.update(overrides)
    return LogMoEConfig(**values)


def tiny_model(routing: str = "top_p", sharp_router: bool = False,
               window_pooling: str = "mean") -> LogMoEForSequenceClassification:
    torch.manual_seed(0)
    model = LogMoEForSequenceClassification(tiny_config(routing=routing, window_pooling=window_pooling)).eval()
    if sharp_router:  # a confident router, as after training, so top-p drops experts
        with torch.no_grad():
            for block in model.blocks:
                block.moe.router.weight.mul_(100.0)
    return model


def window(T: int = 5, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(1, T, D)  # (1, T, D)


def pad(x: torch.Tensor, T: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a (1, n, D) window with garbage to T lines; returns embeddings (1, T, D) and mask (1, T)."""
    n = x.shape[1]
    filler = torch.full((1, T - n, D), 7.0)
    mask = torch.zeros(1, T, dtype=torch.long)
    if left:
        mask[:, T - n:] = 1
        return torch.cat([filler, x], dim=1), mask
    mask[:, :n] = 1
    return torch.cat([x, filler], dim=1), mask


# ---- config ---------------------------------------------------------------------------------------------------

def test_config_defaults_follow_contract() -> None:
    c = LogMoEConfig()
    assert (c.model_type, c.input_dim, c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (
        "logmoe", 384, 128, 2, 8)
    assert (c.num_experts, c.expert_intermediate_size, c.top_p, c.max_window) == (4, 256, 0.8, 64)
    assert (c.routing, c.renormalize) == ("top_p", True)
    assert (c.router_aux_loss_coef, c.router_entropy_loss_coef) == (0.01, 0.0)
    assert (c.encoder_name_or_path, c.pooling, c.line_max_length, c.threshold, c.data_fingerprint) == (
        "default", "mean", 64, 0.5, "")
    assert (c.hidden_dropout, c.attention_dropout, c.num_labels) == (0.1, 0.1, 2)


@pytest.mark.parametrize(
    ("key", "value", "fragments"),
    [
        ("routing", "sparse", ["sparse", "dense", "top_p"]),
        ("pooling", "max", ["max", "mean", "cls"]),
        ("top_p", 0.0, ["0.0", "top_p"]),
        ("top_p", 1.5, ["1.5"]),
        ("threshold", -0.1, ["-0.1"]),
        ("threshold", 1.2, ["1.2"]),
        ("max_window", 0, ["max_window", "0"]),
        ("num_experts", 0, ["num_experts", "0"]),
        ("hidden_size", 30, ["30", "8"]),  # not divisible by the 8 heads
        ("hidden_dropout", 1.0, ["hidden_dropout", "1.0"]),
        ("num_hidden_layers", 2.5, ["2.5"]),
        ("renormalize", "yes", ["yes"]),
        ("num_labels", 3, ["num_labels", "3"]),
        ("session_idle", 0.0, ["session_idle", "0.0"]),  # a model folder edited by hand: a worker would never wait
        ("session_idle", "14h", ["session_idle", "'14h'"]),
    ],
)
def test_config_rejects_bad_values(key: str, value: object, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        tiny_config(**{key: value})
    assert all(f in str(info.value) for f in fragments), str(info.value)


# ---- forward contract -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("window_pooling", ["mean", "mean_sum"])
@pytest.mark.parametrize("routing", ["dense", "top_p"])
def test_padding_invariance(routing: str, window_pooling: str) -> None:
    model = tiny_model(routing, window_pooling=window_pooling)
    x = window(5)
    with torch.no_grad():
        ref = model(x)
        for T, left in ((6, False), (8, False), (8, True)):
            padded, mask = pad(x, T, left)
            out = model(padded, mask)
            torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)
            torch.testing.assert_close(out.line_scores[mask.bool()], ref.line_scores[0], atol=1e-5, rtol=0)


def test_batch_invariance() -> None:
    model = tiny_model()
    a, b = window(5, seed=1), window(8, seed=2)
    xa, ma = pad(a, 8)
    with torch.no_grad():
        batch = model(torch.cat([xa, b]), torch.cat([ma, torch.ones(1, 8, dtype=torch.long)]))
        alone_a, alone_b = model(a), model(b)
    torch.testing.assert_close(batch.logits[0], alone_a.logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.logits[1], alone_b.logits[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("window_pooling", ["mean", "mean_sum"])
def test_line_scores_add_up_to_the_logit_margin(window_pooling: str) -> None:
    model = tiny_model(window_pooling=window_pooling)
    x, mask = pad(window(5), 8)
    x2, mask2 = pad(window(3, seed=3), 8)
    with torch.no_grad():
        out = model(torch.cat([x, x2]), torch.cat([mask, mask2]))
    margin = out.logits[:, 1] - out.logits[:, 0]  # (B,)
    torch.testing.assert_close(out.line_scores.sum(dim=1) + out.base, margin, atol=1e-5, rtol=0)
    head = model.classifier
    bias = head.bias[1] - head.bias[0]
    if window_pooling == "mean":
        torch.testing.assert_close(out.base, bias.expand(2))
    else:  # the line-count term: a window of 5 lines and one of 3 have different bases
        assert not torch.allclose(out.base[0], out.base[1])
    assert out.line_scores.shape == (2, 8)
    assert (out.line_scores[0, 5:] == 0).all() and (out.line_scores[1, 3:] == 0).all()


def test_mean_sum_pooling_sees_how_many_lines_mean_pooling_does_not() -> None:
    """The same line 2 or 6 times, positions zeroed so every line has the same state: mean pooling cannot tell the
    windows apart, mean_sum can (real HDFS anomalies are a block with too few or too many of a line)."""
    x = window(1)  # (1, 1, D)
    for pooling, same in (("mean", True), ("mean_sum", False)):
        model = tiny_model(window_pooling=pooling)
        with torch.no_grad():
            model.position.weight.zero_()
            two, six = (model(x.repeat(1, n, 1), torch.ones(1, n)).logits for n in (2, 6))
        assert torch.allclose(two, six, atol=1e-5) == same, pooling


def test_loss_is_cross_entropy_plus_aux() -> None:
    model = tiny_model()
    x = torch.randn(3, 6, D)
    labels = torch.tensor([0, 1, 1])
    out = model(x, torch.ones(3, 6), labels=labels)
    assert isinstance(out, LogMoEOutput)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels) + out.aux_loss)
    assert out.aux_loss > 0
    assert model(x, torch.ones(3, 6)).loss is None


def test_set_routing_switches_stage() -> None:
    model = tiny_model("dense", sharp_router=True)
    x = torch.randn(2, 8, D)
    with torch.no_grad():
        dense = model(x)
        model.set_routing("top_p")
        sparse = model(x)
    assert model.config.routing == "top_p"
    assert all(block.moe.routing == "top_p" for block in model.blocks)
    assert dense.experts_per_token.item() == 4.0 and dense.expert_load.tolist() == [1.0] * 4
    assert dense.aux_loss.item() == 0.0
    assert 1.0 <= sparse.experts_per_token.item() < 4.0
    assert sparse.expert_load.shape == (4,) and (sparse.expert_load <= 1).all()
    assert sparse.aux_loss.item() > 0
    assert not torch.allclose(dense.logits, sparse.logits)
    with pytest.raises(ValueError, match="sparse"):
        model.set_routing("sparse")


@pytest.mark.parametrize(("routing", "router_trained"), [("top_p", True), ("dense", False)])
def test_gradients_reach_router_only_in_top_p(routing: str, router_trained: bool) -> None:
    model = tiny_model(routing).train()
    out = model(torch.randn(4, 6, D), torch.ones(4, 6), labels=torch.tensor([0, 1, 0, 1]))
    out.loss.backward()
    for block in model.blocks:
        grad = block.moe.router.weight.grad
        assert (grad is not None and grad.abs().sum().item() > 0) == router_trained
        assert block.moe.w_in.grad.abs().sum() > 0


def test_window_longer_than_max_window_raises() -> None:
    model = tiny_model()
    with pytest.raises(ValueError) as info:
        model(torch.randn(1, 9, D))
    assert "9" in str(info.value) and "8" in str(info.value)


def test_window_without_real_line_raises() -> None:
    model = tiny_model()
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"\[1\]"):
        model(torch.randn(2, 3, D), mask)


def test_wrong_input_dim_raises() -> None:
    with pytest.raises(ValueError, match=str(D)):
        tiny_model()(torch.randn(1, 3, D + 1))


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = tiny_model("dense")
    model.set_routing("top_p")
    model.config.threshold = 0.37
    model.config.data_fingerprint = "abc123"
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded, info = LogMoEForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    loaded.eval()
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert loaded.config.routing == "top_p" and loaded.blocks[0].moe.routing == "top_p"
    assert (loaded.config.threshold, loaded.config.data_fingerprint) == (0.37, "abc123")
    x, mask = pad(window(5), 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, mask).logits, model(x, mask).logits)


def test_window_experts_is_per_window_and_averages_to_the_batch_figure() -> None:
    torch.manual_seed(3)
    config = LogMoEConfig(input_dim=16, hidden_size=32, num_hidden_layers=2, expert_intermediate_size=32, top_p=0.6)
    model = LogMoEForSequenceClassification(config).eval()
    x = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out = model(inputs_embeds=x, attention_mask=mask)
    assert out.window_experts.shape == (3,)
    lines = mask.sum(dim=1).float()
    assert torch.allclose((out.window_experts * lines).sum() / lines.sum(), out.experts_per_token, atol=1e-6)
    alone = model(inputs_embeds=x[1:2, :2], attention_mask=mask[1:2, :2])
    assert torch.allclose(alone.window_experts, out.window_experts[1:2], atol=1e-6)
    model.set_routing("dense")
    assert torch.equal(model(inputs_embeds=x, attention_mask=mask).window_experts, torch.full((3,), 4.0))


def test_position_embeddings_start_on_the_scale_of_the_inputs() -> None:
    torch.manual_seed(0)
    model = LogMoEForSequenceClassification(LogMoEConfig(input_dim=16, hidden_size=32, max_window=512))
    assert 0.9 < model.position.weight.std().item() < 1.1
    small = LogMoEForSequenceClassification(LogMoEConfig(input_dim=16, hidden_size=32, position_init_std=0.02))
    assert small.position.weight.std().item() < 0.05
    with pytest.raises(ValueError, match="position_init_std.*-1"):
        LogMoEConfig(position_init_std=-1)
    with pytest.raises(ValueError, match="window_hop.*0"):
        LogMoEConfig(window_hop=0)


# ---- bad model folders: one clear error naming the folder, and nothing is ever unpickled ------------------------

class _Tripwire:
    """Unpickling this touches a file: proof that a loader ran pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (Path.touch, (Path(self.path),))


def bad_folder(root: Path, fault: str) -> Path:
    """A saved tiny model with one fault injected."""
    import pickle

    folder = root / f"model-{fault}"
    tiny_model().save_pretrained(folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    if fault == "missing":
        return root / "no-such-model"
    if fault == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif fault == "empty_weights":
        weights.write_bytes(b"")
    elif fault == "no_config":
        config.unlink()
    elif fault in ("wrong_type", "newer_format", "bad_json"):
        raw = json.loads(config.read_text())
        raw.update({"wrong_type": {"model_type": "bert"}, "newer_format": {"logmoe_format": 99}}.get(fault, {}))
        config.write_text("{not json" if fault == "bad_json" else json.dumps(raw))
    elif fault == "pickle_only":
        weights.unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(str(root / "UNPICKLED"))))
    return folder


FAULTS = {  # fault -> (error type, fragment of the message)
    "missing": (FileNotFoundError, "does not exist"),
    "no_config": (FileNotFoundError, "has no config.json"),
    "truncated": (ValueError, "truncated"),
    "empty_weights": (ValueError, "truncated"),
    "wrong_type": (ValueError, "model_type 'bert'"),
    "newer_format": (ValueError, "logmoe_format 99 is not supported"),
    "bad_json": (ValueError, "cannot read"),
    "pickle_only": (ValueError, "never unpickles"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_bad_model_folder_is_one_clear_error_naming_it(tmp_path: Path, fault: str) -> None:
    folder = bad_folder(tmp_path, fault)
    error, fragment = FAULTS[fault]
    with pytest.raises(error, match=fragment) as raised:
        LogMoEForSequenceClassification.from_pretrained(folder)
    assert folder.name in str(raised.value)
    assert not (tmp_path / "UNPICKLED").exists()


def test_pickled_weights_beside_safetensors_are_never_loaded(tmp_path: Path) -> None:
    import pickle

    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(pickle.dumps(_Tripwire(str(tmp_path / "UNPICKLED"))))
    loaded = LogMoEForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    x, mask = pad(window(4), 8)
    with torch.no_grad():
        assert torch.equal(loaded(x, mask).logits, model(x, mask).logits)
    assert not (tmp_path / "UNPICKLED").exists()


def test_saved_config_records_its_format(tmp_path: Path) -> None:
    tiny_config().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["logmoe_format"] == FORMAT_VERSION
    with pytest.raises(ValueError, match=f"logmoe_format {FORMAT_VERSION + 1}"):
        tiny_config(logmoe_format=FORMAT_VERSION + 1)


# ---- line rarity ----------------------------------------------------------------------------------------------

def rarity_model() -> LogMoEForSequenceClassification:
    torch.manual_seed(0)
    model = LogMoEForSequenceClassification(tiny_config(rarity_buckets=4, window_pooling="mean_sum")).eval()
    with torch.no_grad():
        model.rarity.weight[0].normal_()  # as if training had taught the never-seen bucket something
    return model


def test_line_rarity_reaches_the_score_and_each_lines_share() -> None:
    model = rarity_model()
    x = window(4)
    seen, fresh = torch.tensor([[9, 9, 9, 9]]), torch.tensor([[9, 9, 0, 9]])  # line 2 never held by training
    with torch.no_grad():
        a, b = model(x, line_counts=seen), model(x, line_counts=fresh)
    assert not torch.allclose(a.logits, b.logits)
    assert not torch.allclose(a.line_scores[0, 2], b.line_scores[0, 2])
    margin = b.logits[:, 1] - b.logits[:, 0]
    assert torch.allclose(b.line_scores.sum(dim=1) + b.base, margin, atol=1e-5)  # shares stay exact
    with torch.no_grad():  # counts in the same bucket (2-3) are the same input
        assert torch.equal(model(x, line_counts=torch.tensor([[9, 9, 2, 9]])).logits,
                           model(x, line_counts=torch.tensor([[9, 9, 3, 9]])).logits)


def test_rarity_buckets_start_at_zero_and_padding_counts_do_not_matter() -> None:
    torch.manual_seed(0)
    fresh = LogMoEForSequenceClassification(tiny_config(rarity_buckets=4)).eval()
    assert torch.count_nonzero(fresh.rarity.weight) == 0  # a bucket training never fills adds nothing
    model = rarity_model()
    x, mask = pad(window(3), 6)
    counts = torch.tensor([[0, 5, 1, 0, 0, 0]])
    other_padding = torch.tensor([[0, 5, 1, 7, 100, 3]])
    with torch.no_grad():
        assert torch.allclose(model(x, mask, line_counts=counts).logits,
                              model(x, mask, line_counts=other_padding).logits, atol=1e-6)


def test_a_rarity_model_needs_line_counts_of_the_windows_shape() -> None:
    model = rarity_model()
    with pytest.raises(ValueError, match="pass line_counts"):
        model(window(3))
    with pytest.raises(ValueError, match=r"line_counts must have shape \(1, 3\)"):
        model(window(3), line_counts=torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="rarity_buckets must be an integer >= 0"):
        tiny_config(rarity_buckets=-1)


def test_a_model_without_rarity_ignores_line_counts() -> None:
    model = tiny_model()
    x = window(3)
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x, line_counts=torch.zeros(1, 3, dtype=torch.long)).logits)
