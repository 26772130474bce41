"""Typed configs of the training pipeline (configs/train.yaml) and of evaluation/scoring.

Loaded with `model.config_io.load_config(TrainConfig, path, overrides)`: unknown keys and wrong types are
refused there; the value checks (ranges, choices) live in each section's __post_init__.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from model.config_io import config_from_dict, parse_override

DATA_FORMATS = ("jsonl", "keyed_log", "labelled_csv", "labelled_log")
SPLIT_MODES = ("grouped", "chronological")
POOLING_MODES = ("mean", "cls")
CLASS_WEIGHTING = ("none", "balanced")
THRESHOLD_OBJECTIVES = ("f1", "fpr", "rate")
EARLY_CALIBRATIONS = ("per_length", "single", "off")
BACKENDS = ("auto", "gloo", "nccl")
OBJECTIVES = ("supervised", "unsupervised")
TRIM_BY = ("model", "rarity")
PERTURBATIONS = ("shuffle", "move", "drop", "duplicate", "replace", "unseen", "burst", "substitute")
# The data keys that say how files are read (not which files, nor how they are split): what evaluation takes.
EVAL_DATA_KEYS = ("format", "key_regex", "labels_csv", "eval_labels_csv", "label_column", "text_columns",
                  "label_regex", "normal_labels", "window", "window_hop")


@dataclass
class ModelSection:
    """Sizes of the classifier; mapped one to one onto LogMoEConfig keyword arguments."""

    hidden_size: int = 128
    """Width of the classifier blocks."""
    num_hidden_layers: int = 2
    """Number of (self-attention + Top-P MoE) blocks."""
    num_attention_heads: int = 8
    """Attention heads per block (hidden_size must divide by it)."""
    num_experts: int = 4
    """Experts per MoE layer (the seed: 4)."""
    expert_intermediate_size: int = 256
    """Hidden width inside each expert MLP."""
    top_p: float = 0.8
    """Stage 2 keeps the fewest experts whose router probability reaches top_p (the seed: 0.8)."""
    max_window: int = 64
    """Most lines per window; longer sessions are cut into windows of this size."""
    window_pooling: str = "mean_sum"
    """How the line states become the window vector the head reads: mean (the mix of lines) or mean_sum (the mean,
    the sum over max_window and the log line count: how many of each line too). Real HDFS anomalies are blocks with
    too few or too many of a normal line (replicas received, acknowledgements), which a mean cannot see."""
    rarity_buckets: int = 12
    """> 0: each line's state also reads how many training sessions held it, in that many power-of-two buckets (0,
    1, 2-3, ..., 1024+ at 12; model.rarity): failures rarely or never labelled speak in lines training hardly holds,
    and that evidence then reaches the score. 0: the model reads the lines' embeddings only."""
    hidden_dropout: float = 0.1
    """Dropout on the residual branches."""
    attention_dropout: float = 0.1
    """Dropout on attention weights."""
    renormalize: bool = True
    """Renormalise the kept experts' weights to sum to one."""
    router_aux_loss_coef: float = 0.01
    """Weight of the load-balancing loss (stage 2)."""
    router_entropy_loss_coef: float = 0.01
    """Weight of the router-entropy loss (stage 2); > 0 sharpens routing so fewer experts reach top_p."""

    def __post_init__(self) -> None:
        # LogMoEConfig validates every value; build one here so a bad value fails at config load time.
        from model.configuration_logmoe import LogMoEConfig

        try:
            LogMoEConfig(**asdict(self))
        except ValueError as err:
            raise ValueError(f"model.{err}") from None


@dataclass
class EncoderSection:
    """The frozen line encoder and the on-disk embedding cache."""

    name_or_path: str = "default"
    """"default" (all-MiniLM-L6-v2 from its package), a local model dir, or a cached Hugging Face name."""
    pooling: str = "mean"
    """Token pooling into one line embedding: mean or cls."""
    line_max_length: int = 64
    """Encoder tokens per (masked) line."""
    batch_size: int = 128
    """Lines per encoder batch."""
    token_buckets: int = 1024
    """> 0: each line embedding also carries a bag of the line's word pieces hashed into this many buckets
    (model.encoder), so a never-seen line is read by its words too, not only by the sentence it resembles.
    Measured (bench/results/2026-12-05-token-buckets.md): on BGL trained on June to mid-July and scored on
    September at the threshold of the weeks between, September's new failure (never in training) was caught in 4 of
    16 runs with it and in none of 10 without, though the seed decides more than the setting; real HDFS unchanged
    (1.0000). Costs 1.13x the classifier's forward time and 1,024 floats more per cached line. 0: off."""
    cache_dir: str | None = None
    """Embedding cache folder; None: <output_dir>/.embed_cache. Share one across runs to skip re-encoding."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"encoder.pooling must be one of {', '.join(POOLING_MODES)} ({self.pooling!r})")
        if self.line_max_length < 1 or self.batch_size < 1:
            raise ValueError(f"encoder.line_max_length and batch_size must be >= 1 "
                             f"({self.line_max_length}, {self.batch_size})")
        if isinstance(self.token_buckets, bool) or not isinstance(self.token_buckets, int) or self.token_buckets < 0:
            raise ValueError(f"encoder.token_buckets must be an integer >= 0 ({self.token_buckets!r})")


@dataclass
class DataSection:
    """Where the labelled sessions come from and how eval is chosen."""

    train: list[str] = field(default_factory=list)
    """Training files (all read and concatenated)."""
    eval: list[str] = field(default_factory=list)
    """Eval files; empty: a leak-free split of the training files (eval_fraction, split)."""
    format: str = "jsonl"
    """jsonl (the seed's format), keyed_log (raw lines + key_regex + labels_csv), labelled_csv (a structured CSV
    with label_column, BGL style) or labelled_log (raw lines whose label label_regex captures)."""
    skip_invalid: bool = False
    """Count and report invalid records instead of failing on the first one."""
    eval_fraction: float = 0.2
    """Share of sessions (of each file's lines, for line-labelled logs) split off for eval when no eval file is
    given."""
    split: str = "grouped"
    """grouped (random over groups of identical masked sequences) or chronological (the last groups in file
    order); either way an identical sequence never sits on both sides. Windows cut from line-labelled logs
    (labelled_csv, labelled_log) are always split by time: the last eval_fraction of each file's lines is eval,
    windowed apart, since overlapping neighbours share lines."""
    key_regex: str = r"(blk_-?\d+)"
    """keyed_log: regex whose one group is the session key."""
    labels_csv: str | list[str] | None = None
    """keyed_log: CSV with session_id,label labelling the training files, and the eval files too unless
    eval_labels_csv is set; a list of CSVs is read as one (a key labelled differently in two of them is refused)."""
    eval_labels_csv: str | list[str] | None = None
    """keyed_log: CSV(s) labelling the eval files (--eval-data, and the files `logmoe evaluate` and `score` read),
    for per-split label files such as train_labels.csv + dev_labels.csv; None: labels_csv."""
    label_column: str = "Label"
    """labelled_csv: the label column."""
    text_columns: list[str] = field(default_factory=list)
    """labelled_csv: columns joined into the line; empty: all but the label and parser columns."""
    label_regex: str = r"^(\S+)\s"
    """labelled_log: regex whose one group captures each line's label; the match is cut from the line."""
    normal_labels: list[str] = field(default_factory=lambda: ["-"])
    """labelled_csv/labelled_log: label values that mean normal; any other is an anomaly."""
    window: int | None = None
    """labelled_csv/labelled_log: lines per window; None: model.max_window."""
    window_hop: int | None = None
    """labelled_csv/labelled_log: lines between window starts; None: window (non-overlapping windows)."""

    def __post_init__(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ValueError(f"data.format must be one of {', '.join(DATA_FORMATS)} ({self.format!r})")
        if self.split not in SPLIT_MODES:
            raise ValueError(f"data.split must be one of {', '.join(SPLIT_MODES)} ({self.split!r})")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"data.eval_fraction must be in (0, 1) ({self.eval_fraction})")
        for name in ("labels_csv", "eval_labels_csv"):
            value = getattr(self, name)
            if isinstance(value, list) and not all(isinstance(item, str) and item for item in value):
                raise ValueError(f"data.{name} must be a file or a list of files ({value!r})")
        for name in ("window", "window_hop"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"data.{name} must be >= 1 ({value})")

    def require_labels_csv(self) -> None:
        """keyed_log data is labelled by labels_csv; ValueError when it is missing (not asked of unsupervised
        training, which reads unlabelled keyed logs)."""
        if self.format == "keyed_log" and not self.labels_csv:
            raise ValueError(f"data.labels_csv is required with data.format=keyed_log ({self.labels_csv!r})")

    def label_files(self, role: str) -> list[str]:
        """keyed_log: the labels CSV(s) of the "train" or the "eval" files (eval: eval_labels_csv, else
        labels_csv)."""
        if role not in ("train", "eval"):
            raise ValueError(f"role must be train or eval ({role!r})")
        chosen = self.eval_labels_csv if role == "eval" and self.eval_labels_csv else self.labels_csv
        if not chosen:
            return []
        return [chosen] if isinstance(chosen, str) else list(chosen)


@dataclass
class TrainingSection:
    """The two-stage optimisation."""

    objective: str = "supervised"
    """supervised: learn the labels of the training sessions; unsupervised: ignore them (a file may have none) and
    learn normal behaviour by telling the real training windows from perturbed copies (train/unsupervised.py, the
    `unsupervised` section); the score is P(perturbed), read by the scorer and the worker as P(anomaly)."""
    learning_rate: float = 1e-3
    """Peak AdamW learning rate of each stage. The seed used 1e-4; measured on HDFS (train+order_train ->
    dev+order_dev, 2+2 epochs) 1e-4 gives F1 0.889 (order recall 0.632) and 1e-3 gives F1 0.995 (order
    recall 1.000), so 1e-3 is the default."""
    batch_size: int = 64
    """Windows per step (the seed: 64)."""
    epochs_stage1: int = 4
    """Epochs of stage 1: all experts averaged, no gate (the seed: 2)."""
    epochs_stage2: int = 2
    """Epochs of stage 2: Top-P gate on, continuing from stage 1's weights (the seed: 2)."""
    min_steps_per_epoch: int = 250
    """An epoch is one pass over the training windows, or this many steps where the data is smaller (the windows
    are reshuffled and drawn again), so the budget is sized in steps on small data and in passes on large data.
    With the seed's fixed 2 + 2 passes, 4,024 real HDFS sessions got ~250 steps in all and the model stayed
    near the majority class (dev F1 0.55)."""
    select_best: bool = True
    """Keep the stage-2 epoch with the best eval PR-AUC (ties: the lower eval loss) as the final model instead of
    the last one (the unsupervised objective: the lowest label-free eval perturbation loss); false: the last epoch."""
    warmup_ratio: float = 0.1
    """Share of each stage's steps with a linear warm-up; then linear decay to zero."""
    weight_decay: float = 0.01
    """AdamW weight decay (not on biases and norms)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    class_weighting: str = "balanced"
    """balanced: cross-entropy weighted by inverse class frequency of the training windows, so a few percent of
    anomalies (real HDFS: 4%) weigh as much as the normal windows; none: unweighted. Not read by the unsupervised
    objective, whose batches are half real, half perturbed."""
    seed: int = 42
    """Seeds initialisation, dropout and shuffling: equal seeds give equal models."""
    logging_steps: int = 10
    """Log loss, grad_norm, learning_rate, epoch every this many steps."""
    device: str = "auto"
    """auto (CUDA if present), cpu, cuda or cuda:N."""
    hop: int = 16
    """Lines between windows of sessions longer than max_window (the worker must use the same hop)."""
    eval_batch_size: int = 256
    """Windows per scoring batch."""
    threshold_objective: str | None = None
    """f1: the threshold maximising F1 on eval; fpr: the lowest threshold whose false-positive rate <= target_fpr
    (1.0, which flags nothing, when even the top score breaks it; see model.decision); both need labelled eval data;
    rate: the threshold that flags target_rate of the eval windows (never cutting inside a group rate_gap finds set
    apart), no labels needed. None: f1 for the supervised objective, rate for the unsupervised one."""
    target_fpr: float = 0.01
    """Target false-positive rate for threshold_objective=fpr."""
    target_rate: float = 0.01
    """threshold_objective=rate: the share of eval windows the threshold flags (the alert rate you can afford; set it
    near the share of anomalies you expect, e.g. ~0.03 for HDFS blocks), or more where rate_gap finds a larger group
    of windows the model sets apart."""
    rate_gap: float = 3.0
    """threshold_objective=rate: the cut never falls inside a group of the highest eval scores set apart from the rest
    by a gap (in log-odds, within the top 5% of windows) at least rate_gap times the interquartile range of all the
    scores: where target_rate would flag part of that group, the whole group is flagged (train.metrics.rate_threshold).
    0: target_rate alone. On real HDFS (3% of blocks anomalous, set apart by 19-100 IQR) a plain 1% rate cut inside
    the group and missed every anomaly of the next period; on BGL no step over 0.15 IQR appeared: nothing changes.
    A gap must also be 1.0 wide in log-odds (train.metrics.MIN_GAP_LOG_ODDS)."""
    early_hop: int = 3
    """The worker scores an open session's prefix every early_hop lines until it is max_window lines long (and at
    once on a line never seen in a normal training session, model.early); stored in the model, and the early
    thresholds are calibrated for it."""
    early_calibration: str = "per_length"
    """How the early thresholds are calibrated on the eval sessions' prefixes: per_length (a threshold per window
    length bucket: 1, 2, 4, ... lines), single (one for every length) or off (no early thresholds: the worker scores
    closing windows only)."""
    early_target_fpr: float | None = None
    """Share of the normal eval sessions the early thresholds may alert before they close; None: the share the
    closing threshold flags, so early scoring raises no more false alarms than closing does. Stored in the model."""
    train_on_prefixes: bool = True
    """Also train on the prefixes the worker scores early (early_hop, novel lines): those of normal sessions as
    normal (unless a prefix's lines, in any order, are those of a whole anomalous session), those of anomalous
    sessions that already hold a line never seen in a normal session as anomalous. A session still open when the
    data ends (a block written but not yet deleted) is then no surprise: without them, one of two seeds flagged the
    10 such normal blocks of hdfs_real dev (F1 0.904), with them neither did (1.000)."""
    shuffle_anomalous: float = 0.5
    """Probability, per step, that an anomalous training window whose lines (as a multiset) no normal training window
    holds is shown in a random order (train/augment.py): its anomaly is in what it holds, so any order of it is
    anomalous too, and the model should not tie the failure to the order it was seen in. Supervised only; 0: off.
    Measured (bench/results/2026-12-04-shuffle-anomalous.md, 2026-12-05-token-buckets.md): without it, synthetic
    HDFS's dev anomalies "allocateBlock, receiving, receiving" scored like normal blocks in some runs (seed 42, 1
    torch thread: dev F1 without the order anomalies 0.9839, and 0.8376 once token buckets were on); with 0.5 every
    run scored 0.9928-0.9982. It ranks BGL's later month worse after training on its past (PR-AUC 0.893 -> 0.837 on
    average with token buckets, over 9 and 7 runs; down in three seeds of three without them), but F1 at the
    threshold carried over stays where it was (0.626 over 7 runs, 0.607 with neither option)."""
    novelty_calibration: bool = True
    """After training, fit on the labelled eval sessions what a line training never held adds to a window's score, by
    the level it states (model.novelty: fatal / error / warn / other, from its first level word) and whether the
    seen line nearest it is one only failures held, in place of what the classifier says of it, with a scale on the
    classifier's margin from the seen lines, and store it in the model; the threshold is then calibrated on the
    calibrated scores. Nothing is fitted (scores stay the classifier's) when the eval sessions hold one class only,
    when neither they nor the cross-fit sessions (novelty_crossfit) hold a never-seen line, or under the unsupervised
    objective with threshold_objective rate (its default), so a model calibrated by alert rate reads no label; with
    f1 or fpr the unsupervised model is calibrated on eval's labels as a supervised one is (without the cross-fit,
    which needs training labels). Measured on BGL trained on its past, threshold carried to the next month
    (bench/results/2026-12-05-novelty-calibration.md): F1 0.612 -> 0.840 on average over 13 seeds (median 0.574 ->
    0.878), with about as many false alarms; the classifier's shares of never-seen lines replaced and failure-like
    lines weighed apart (bench/results/2026-12-05-never-seen-shares.md): 0.841 -> 0.943 over 10 seeds (0.569-0.927
    -> 0.932-0.958); an unsupervised model the same way (threshold_objective f1;
    bench/results/2026-12-05-unsupervised-novelty.md): 0.236 -> 0.840 over 7 seeds, where never-seen lines weighed
    alone give 0.872. Real and synthetic HDFS eval data hold no never-seen line, so nothing changes there."""
    novelty_crossfit: float = 0.3
    """With novelty_calibration: the share of train, last in the order its files hold it (time, for logs), on which
    the fit also learns what never-seen lines are worth. An auxiliary classifier is trained on the rest of train
    (the same settings; its epoch chosen on that share) and scores that share; the calibration is fitted over those
    sessions and the eval sessions together (the group weights shared, a scale and bias per classifier, the final
    model's stored), and where they hold more failures only a never-seen line tells than eval does
    (train.pipeline.novel_misses), the threshold is chosen on both sets of calibrated scores. It runs only when that
    share holds a line the rest of train does not and both parts hold both classes (not on real or synthetic HDFS,
    whose lines all recur); it then costs about one more training run (BGL: x1.9, since small data trains
    min_steps_per_epoch steps either way). Why: the final model is chosen and calibrated on eval, and when eval's
    failures are all known to it, the fit learns little of what a new line is worth; inside the training period,
    failures new to the earlier part show it (bench/results/2026-12-05-novelty-crossfit.md). 0: off."""
    keep_checkpoints: int = 2
    """Epoch checkpoints kept in moe_results/ (older ones are deleted)."""
    stop_after_epochs: int | None = None
    """Stop, as if interrupted, after this many epochs in total (for testing --resume); None: run to the end."""
    backend: str = "auto"
    """Collectives of a data-parallel run (torchrun, --nproc): auto (NCCL when every process has a GPU of its
    own, else gloo), gloo or nccl. batch_size stays the global batch: each process takes batch_size / processes."""
    dist_timeout_s: float = 1800.0
    """Seconds a process of a data-parallel run waits in a collective for the others before it gives up with an
    error (a rank that died or hangs); it must outlast rank 0's per-epoch evaluation and checkpoint."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"training.objective must be one of {', '.join(OBJECTIVES)} ({self.objective!r})")
        if self.threshold_objective is None:
            self.threshold_objective = "f1" if self.objective == "supervised" else "rate"
        positive = ("learning_rate", "batch_size", "logging_steps", "hop", "eval_batch_size", "keep_checkpoints")
        if self.min_steps_per_epoch < 0:
            raise ValueError(f"training.min_steps_per_epoch must be >= 0 ({self.min_steps_per_epoch})")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"training.{name} must be > 0 ({getattr(self, name)})")
        for name in ("epochs_stage1", "epochs_stage2", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise ValueError(f"training.{name} must be >= 0 ({getattr(self, name)})")
        if self.epochs_stage1 + self.epochs_stage2 == 0:
            raise ValueError("training.epochs_stage1 + epochs_stage2 must be > 0 (0)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"training.warmup_ratio must be in [0, 1) ({self.warmup_ratio})")
        if self.class_weighting not in CLASS_WEIGHTING:
            raise ValueError(f"training.class_weighting must be one of {', '.join(CLASS_WEIGHTING)} "
                             f"({self.class_weighting!r})")
        if self.threshold_objective not in THRESHOLD_OBJECTIVES:
            raise ValueError(f"training.threshold_objective must be one of {', '.join(THRESHOLD_OBJECTIVES)} "
                             f"({self.threshold_objective!r})")
        if not 0.0 <= self.target_fpr < 1.0:
            raise ValueError(f"training.target_fpr must be in [0, 1) ({self.target_fpr})")
        if self.early_hop < 1:
            raise ValueError(f"training.early_hop must be >= 1 ({self.early_hop})")
        if self.early_calibration not in EARLY_CALIBRATIONS:
            raise ValueError(f"training.early_calibration must be one of {', '.join(EARLY_CALIBRATIONS)} "
                             f"({self.early_calibration!r})")
        if self.early_target_fpr is not None and not 0.0 <= self.early_target_fpr < 1.0:
            raise ValueError(f"training.early_target_fpr must be in [0, 1) or null ({self.early_target_fpr})")
        if self.backend not in BACKENDS:
            raise ValueError(f"training.backend must be one of {', '.join(BACKENDS)} ({self.backend!r})")
        if self.dist_timeout_s <= 0:
            raise ValueError(f"training.dist_timeout_s must be > 0 ({self.dist_timeout_s})")
        if not 0.0 < self.target_rate < 1.0:
            raise ValueError(f"training.target_rate must be in (0, 1) ({self.target_rate})")
        if not (math.isfinite(self.rate_gap) and self.rate_gap >= 0.0):
            raise ValueError(f"training.rate_gap must be a finite number >= 0 ({self.rate_gap})")
        if not 0.0 <= self.shuffle_anomalous <= 1.0:
            raise ValueError(f"training.shuffle_anomalous must be in [0, 1] ({self.shuffle_anomalous})")
        if not 0.0 <= self.novelty_crossfit < 1.0:
            raise ValueError(f"training.novelty_crossfit must be in [0, 1) ({self.novelty_crossfit})")
        if self.stop_after_epochs is not None and self.stop_after_epochs < 1:
            raise ValueError(f"training.stop_after_epochs must be >= 1 or null ({self.stop_after_epochs})")


@dataclass
class UnsupervisedSection:
    """The unsupervised objective (training.objective=unsupervised, train/unsupervised.py): real windows (0) against
    perturbed copies (1), with the windows most likely to be anomalies trimmed from the real ones."""

    perturbations: list[str] = field(default_factory=lambda: list(PERTURBATIONS))
    """What a perturbed copy may have undergone, one drawn per copy: shuffle (lines in random order), move (a block
    of lines moved elsewhere), drop (lines removed), duplicate (lines repeated), replace (lines swapped for other
    training lines, drawn uniformly over the distinct lines, so a rare line reads as a sign of perturbation),
    unseen (lines swapped for statements never seen in training), burst (a run of lines, up to the whole window,
    overwritten by one training line drawn the same way) and substitute (every occurrence of one of the window's
    lines swapped for one such line). The last two change what a window says without adding distinct lines to it,
    so the model cannot learn "many distinct lines = perturbed" (on BGL, where a window of the logs mostly repeats
    one line, the other kinds taught exactly that, and September's more varied normal windows were flagged)."""
    max_changed: float = 0.25
    """Largest share of a window's lines one perturbation changes (at least one line)."""
    unseen_lines: int = 512
    """How many never-seen statements to make for the unseen perturbation: the words of two training lines spliced
    or one word swapped, encoded by the run's encoder."""
    foreign_lines: list[str] = field(default_factory=list)
    """Raw log files of other systems whose (masked) lines join the never-seen statements; only ever negatives."""
    trim_fraction: float = 0.10
    """Share of the real training windows left out (trim_by says which and when), so the few percent of anomalies
    in unlabelled data are not learned as normal; 0: none. Measured with trim_by rarity (BGL train holds 10%
    anomalous windows, hdfs_real 4%): 0.10 lifted BGL dev max F1 in each of 3 seeds (mean 0.708 -> 0.757) and left
    hdfs_real at 0.9895 in each; in seed 42, 0.02 (0.720) and 0.20 (0.604) did worse than 0.10 (0.798)."""
    trim_after_epochs: int = 1
    """Epochs trained on every window before trimming starts (the model must first tell windows apart); trim_by
    model only."""
    trim_by: str = "rarity"
    """Which windows trimming leaves out. model: each epoch from trim_after_epochs on, those the current model scores
    most anomalous. rarity: once, before training, those whose rarest line occurs in the fewest training windows,
    so a failure's lines that unlabelled data holds only in its few anomalous windows are never taught as normal."""

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.perturbations if kind not in PERTURBATIONS]
        if unknown or not self.perturbations:
            raise ValueError(f"unsupervised.perturbations must be a non-empty list of {', '.join(PERTURBATIONS)} "
                             f"({self.perturbations!r})")
        if not 0.0 < self.max_changed <= 1.0:
            raise ValueError(f"unsupervised.max_changed must be in (0, 1] ({self.max_changed})")
        if self.unseen_lines < 0:
            raise ValueError(f"unsupervised.unseen_lines must be >= 0 ({self.unseen_lines})")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError(f"unsupervised.trim_fraction must be in [0, 0.5) ({self.trim_fraction})")
        if self.trim_by not in TRIM_BY:
            raise ValueError(f"unsupervised.trim_by must be one of {', '.join(TRIM_BY)} ({self.trim_by!r})")
        if self.trim_after_epochs < 0:
            raise ValueError(f"unsupervised.trim_after_epochs must be >= 0 ({self.trim_after_epochs})")


@dataclass
class TrainConfig:
    """Everything `train.train` needs; configs/train.yaml holds the defaults."""

    model: ModelSection = field(default_factory=ModelSection)
    """Classifier sizes (LogMoEConfig)."""
    encoder: EncoderSection = field(default_factory=EncoderSection)
    """Line encoder and embedding cache."""
    data: DataSection = field(default_factory=DataSection)
    """Input files and split."""
    training: TrainingSection = field(default_factory=TrainingSection)
    """Optimisation."""
    unsupervised: UnsupervisedSection = field(default_factory=UnsupervisedSection)
    """The unsupervised objective's perturbations and trimming (read only with training.objective=unsupervised)."""
    output_dir: str = "runs/train"
    """Where moe_logs/, moe_results/, final_moe_model/, metrics.json and the plots go."""
    resume: bool = False
    """Continue from the last checkpoint in output_dir/moe_results."""

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)

    @property
    def embed_cache_dir(self) -> Path:
        return Path(self.encoder.cache_dir) if self.encoder.cache_dir else self.output_path / ".embed_cache"

    def __post_init__(self) -> None:
        if self.training.hop > self.model.max_window:
            raise ValueError(f"training.hop must be <= model.max_window ({self.training.hop} > "
                             f"{self.model.max_window}): the lines between two windows would never be scored")
        if self.training.objective == "supervised":  # the unsupervised objective reads unlabelled keyed logs
            self.data.require_labels_csv()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalConfig:
    """What `train.evaluate` needs: a trained model dir and labelled sessions to score, in any data format."""

    model: str
    """A final_moe_model/ folder (or any LogScorer model dir)."""
    data: list[str]
    """Files of labelled sessions, read as training reads its eval files (--eval-data), in source.format."""
    skip_invalid: bool = False
    """Count and report invalid records instead of failing."""
    hop: int | None = None
    """Lines between windows of sessions longer than the model's max_window; None: the hop the model was trained
    with (window_hop in its config.json)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    batch_size: int = 256
    """Windows per scoring batch."""
    threshold: float | None = None
    """Decision threshold (score >= threshold is anomalous; 1.0 flags nothing); None: the one stored with the
    model."""
    source: DataSection = field(default_factory=DataSection)
    """How the data files are read: the training config's data keys that describe files (EVAL_DATA_KEYS: format,
    key_regex, labels_csv / eval_labels_csv, label_regex, window, ...), `--set data.KEY=VALUE` on the CLI. Windows
    of line-labelled logs default to the model's max_window, as in training."""

    def __post_init__(self) -> None:
        unused = sorted(key for key in ("train", "eval", "eval_fraction", "split", "skip_invalid")
                        if getattr(self.source, key) != getattr(DataSection(), key))
        if unused:
            raise ValueError(f"data.{unused[0]} is a training setting that evaluation does not read; it reads "
                             f"{', '.join('data.' + key for key in EVAL_DATA_KEYS)}")
        if not self.data:
            raise ValueError("evaluate needs at least one data file ([])")
        self.source.require_labels_csv()
        if (self.hop is not None and self.hop < 1) or self.batch_size < 1:
            raise ValueError(f"hop and batch_size must be >= 1 ({self.hop}, {self.batch_size})")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1] ({self.threshold})")


def load_eval_config(model: str, data: Sequence[str], settings: Sequence[str] = ()) -> EvalConfig:
    """EvalConfig from a model folder, data files and `key=value` settings: EvalConfig's own keys (threshold=0.3,
    hop=8, batch_size, device, skip_invalid) and data.KEY for how the files are read, spelled as in the training
    config (data.format=keyed_log, data.labels_csv=dev_labels.csv). Later settings win."""
    values: dict[str, Any] = {"model": model, "data": list(data)}
    source: dict[str, Any] = {}
    own = sorted(f.name for f in fields(EvalConfig) if f.name not in ("model", "data", "source"))
    for text in settings:
        key, value = parse_override(text)
        if key.startswith("data."):
            if key[5:] not in EVAL_DATA_KEYS:
                raise ValueError(f"unknown setting {key!r} for evaluation; data keys: "
                                 f"{', '.join('data.' + name for name in EVAL_DATA_KEYS)}")
            source[key[5:]] = value
        elif key in own:
            values[key] = value
        else:
            hint = {"model": " (the model folder is --model)", "data": " (the files are --data)"}.get(key, "")
            raise ValueError(f"unknown setting {key!r} for evaluation{hint}; allowed: {', '.join(own)}, "
                             f"data.KEY ({', '.join(EVAL_DATA_KEYS)})")
    values["source"] = source
    return config_from_dict(EvalConfig, values, "settings")
