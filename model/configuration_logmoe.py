"""LogMoE configuration: sizes of the Top-P MoE classifier plus what the scorer needs to rebuild its line pipeline."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from model.checkpoint import FORMAT_VERSION, check_format
from model.early import EarlyThresholds
from model.novelty import NoveltyCalibration

ROUTING_MODES = ("dense", "top_p")  # "dense" = stage 1 (all experts averaged, no gate), "top_p" = stage 2
POOLING_MODES = ("mean", "cls")  # how the line encoder pools its token states into one line embedding
# How the classifier pools its line states into the window vector the head reads: "mean" (the mix of lines only) or
# "mean_sum" (the mean, the sum scaled by 1/max_window and the log of the line count: how many of each line, too)
WINDOW_POOLING_MODES = ("mean", "mean_sum")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(
    name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


class LogMoEConfig(PretrainedConfig):
    """Configuration of `LogMoEForSequenceClassification`; invalid values raise ValueError naming the value."""

    model_type = "logmoe"

    def __init__(
        self,
        input_dim: int = 384,  # line embedding size produced by the encoder
        hidden_size: int = 128,  # width of the classifier blocks
        num_hidden_layers: int = 2,  # number of (attention + Top-P MoE) blocks
        num_attention_heads: int = 8,
        num_experts: int = 4,
        expert_intermediate_size: int = 256,  # hidden width inside each expert MLP
        top_p: float = 0.8,  # keep the smallest set of experts whose router probability reaches top_p
        max_window: int = 64,  # most lines per window (learned position embeddings)
        window_hop: int = 16,  # lines between two windows of a longer session (model.windowing), offline and online
        position_init_std: float = 1.0,  # init std of the position embeddings, on the scale of the normed inputs
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        routing: str = "top_p",  # "dense" (stage 1) or "top_p" (stage 2), see ROUTING_MODES
        window_pooling: str = "mean",  # line states -> window vector, see WINDOW_POOLING_MODES
        rarity_buckets: int = 0,  # > 0: each line's state also reads how rare it was in training (model.rarity)
        renormalize: bool = True,  # renormalise the kept experts' weights to sum to 1
        router_aux_loss_coef: float = 0.01,  # weight of the load-balancing loss (top_p routing only)
        router_entropy_loss_coef: float = 0.0,  # weight of the router-entropy loss (top_p routing only)
        encoder_name_or_path: str = "default",  # line encoder to rebuild at scoring time
        pooling: str = "mean",  # line encoder pooling, see POOLING_MODES
        line_max_length: int = 64,  # encoder tokens per line
        token_buckets: int = 0,  # > 0: the encoder appends a hashed bag of the line's word pieces (model.encoder)
        threshold: float = 0.5,  # decision threshold on P(anomaly), calibrated by training; 1.0 flags nothing
        early_hop: int = 0,  # open sessions are scored early every early_hop lines (model.early); 0 = never
        early_thresholds: list[list[float]] | None = None,  # [[up_to_lines, threshold], ...] for early windows
        early_target_fpr: float | None = None,  # share of normal eval sessions the early thresholds may alert
        session_idle: float | None = None,  # seconds the worker waits before closing a session (train.pauses)
        novelty_calibration: dict[str, Any] | None = None,  # what never-seen lines add to the margin (model.novelty)
        data_fingerprint: str = "",  # sha256 of the training data
        logmoe_format: int = FORMAT_VERSION,  # layout version of the saved folder, see FORMAT_VERSION
        **kwargs: Any,
    ) -> None:
        self.input_dim = input_dim
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_experts = num_experts
        self.expert_intermediate_size = expert_intermediate_size
        self.top_p = top_p
        self.max_window = max_window
        self.window_hop = window_hop
        self.position_init_std = position_init_std
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.routing = routing
        self.window_pooling = window_pooling
        self.rarity_buckets = rarity_buckets
        self.renormalize = renormalize
        self.router_aux_loss_coef = router_aux_loss_coef
        self.router_entropy_loss_coef = router_entropy_loss_coef
        self.encoder_name_or_path = encoder_name_or_path
        self.pooling = pooling
        self.line_max_length = line_max_length
        self.token_buckets = token_buckets
        self.threshold = threshold
        self.early_hop = early_hop
        self.early_thresholds = early_thresholds
        self.early_target_fpr = early_target_fpr
        self.session_idle = session_idle
        self.novelty_calibration = novelty_calibration
        self.data_fingerprint = data_fingerprint
        self.logmoe_format = logmoe_format
        kwargs.setdefault("num_labels", 2)
        super().__init__(**kwargs)
        self._check_values()

    def _check_values(self) -> None:
        check_format(self.logmoe_format, "LogMoEConfig")
        for name in ("input_dim", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_experts",
                     "expert_intermediate_size", "max_window", "window_hop", "line_max_length"):
            _check_int(name, getattr(self, name), 1)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        _check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _check_float("threshold", self.threshold, 0.0, 1.0)
        _check_int("early_hop", self.early_hop, 0)
        _check_int("rarity_buckets", self.rarity_buckets, 0)
        _check_int("token_buckets", self.token_buckets, 0)
        if self.early_thresholds is not None:
            EarlyThresholds.from_config(self.early_thresholds)  # ValueError naming the bad value
        if self.early_target_fpr is not None:
            _check_float("early_target_fpr", self.early_target_fpr, 0.0, 1.0)
        if self.novelty_calibration is not None:
            NoveltyCalibration.from_config(self.novelty_calibration)  # ValueError naming the bad value
        if self.session_idle is not None:
            _check_float("session_idle", self.session_idle, 0.0, float("inf"), low_open=True)
        _check_float("position_init_std", self.position_init_std, 0.0, float("inf"), low_open=True)
        _check_float("hidden_dropout", self.hidden_dropout, 0.0, 1.0, high_open=True)
        _check_float("attention_dropout", self.attention_dropout, 0.0, 1.0, high_open=True)
        _check_float("router_aux_loss_coef", self.router_aux_loss_coef, 0.0, float("inf"))
        _check_float("router_entropy_loss_coef", self.router_entropy_loss_coef, 0.0, float("inf"))
        _check_choice("routing", self.routing, ROUTING_MODES)
        _check_choice("window_pooling", self.window_pooling, WINDOW_POOLING_MODES)
        _check_choice("pooling", self.pooling, POOLING_MODES)
        if not isinstance(self.renormalize, bool):
            raise ValueError(f"renormalize must be true or false, got {self.renormalize!r}")
        if not isinstance(self.encoder_name_or_path, str) or not self.encoder_name_or_path:
            raise ValueError(f"encoder_name_or_path must be a non-empty string, got {self.encoder_name_or_path!r}")
        if not isinstance(self.data_fingerprint, str):
            raise ValueError(f"data_fingerprint must be a string, got {self.data_fingerprint!r}")
        if self.num_labels != 2:
            raise ValueError(f"num_labels must be 2 (normal, anomalous), got {self.num_labels!r}")

    def to_diff_dict(self) -> dict[str, Any]:
        """What save_pretrained writes; always with logmoe_format, even at its default, so a later version can
        tell the folder's format."""
        return {**super().to_diff_dict(), "logmoe_format": self.logmoe_format}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """Read a local folder's config.json; a bad value is a ValueError that names the folder."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except ValueError as exc:
            raise ValueError(f"model config in {str(pretrained_model_name_or_path)!r}: {exc}") from exc
