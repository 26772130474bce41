"""`train(cfg) -> metrics`: data -> masked lines -> cached embeddings -> windows -> two stages -> calibrated model.

Outputs under cfg.output_dir (the seed's layout plus metrics and plots):
  moe_logs/          train_log.jsonl (one record per logging step and per epoch's eval) + TensorBoard events
  moe_results/       checkpoint-NNN/ after every epoch (what --resume continues from)
  final_moe_model/   config.json (threshold, encoder reference, data fingerprint, window_hop), model.safetensors,
                     seen_lines.json, normal_lines.json, line_counts.json (with model.rarity_buckets > 0)
  metrics.json       final eval metrics (computed with LogScorer, as `logmoe evaluate` does), data counts, timings
  plots/             loss_curves.png, pr_curve.png, confusion_matrix.png
  novelty_crossfit/  the auxiliary run of training.novelty_crossfit, when it runs: its metrics.json, logs, plots

Under torchrun (or `logmoe train --nproc N`) every process runs `train(cfg)`: a data-parallel run
(train/distributed.py). The ranks mask and embed their shares of the data (train/sharded_prep.py), train under
DistributedDataParallel, and rank 0 alone writes everything above and evaluates, as a single process would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from model.early import EarlyRule
from model.masking import mask
from model.novelty import GROUPS, SEEN_ONLY, CrossFit, fit_novelty
from model.rarity import row_counts, save_line_counts, session_counts
from train.checkpoint import load_latest_checkpoint
from train.config import TrainConfig, TrainingSection
from train.data import Session, label_counts
from train.distributed import (AllRanksError, DataParallel, check_batch_split, check_enough_windows, data_parallel,
                               world_from_env)
from train.early import (calibrate_early, closing_fpr, early_report, length_bounds, prefix_windows,
                         regular_window_scores, score_prefixes, session_outcomes)
from train.embeddings import (EmbeddingCache, build_window_set, concat_window_sets, encoder_cache_key,
                              pack_windows)
from train.evaluation import score_sessions, session_metrics
from train.loop import Epoch, EvalResult, schedule, score_windows, train_stages
from train.metrics import calibrate_threshold, classification_metrics, gap_outliers, rate_threshold
from train.pauses import measure_pauses
from train.plots import plot_confusion_matrix, plot_loss_curves, plot_pr_curve
from train.sharded_prep import embed_lines_across, mask_sessions_across
from train.sources import LINE_LABELLED, load_source, split_labelled_by_time
from train.split import split_sessions

logger = logging.getLogger(__name__)

FINAL_DIR = "final_moe_model"
CROSSFIT_DIR = "novelty_crossfit"  # the auxiliary run of training.novelty_crossfit, inside output_dir


def data_fingerprint(sessions: Sequence[Session]) -> str:
    """sha256 over the training sessions' labels and raw lines, in order: equal data, equal fingerprint,
    whatever file layout or label spelling it came in."""
    digest = hashlib.sha256()
    for session in sessions:
        digest.update(f"{session.label}\x1e".encode())
        digest.update("\n".join(session.lines).encode("utf-8"))
        digest.update(b"\x1d")
    return digest.hexdigest()


def run_identity(cfg: TrainConfig, fingerprint: str, eval_fingerprint: str) -> dict[str, Any]:
    """What must match for --resume to continue a run: the config minus the run-control keys, and the data."""
    config = asdict(cfg)
    for key in ("output_dir", "resume"):
        config.pop(key)
    # read after training: they change no training step of the model itself
    calibration_only = ("early_calibration", "early_target_fpr", "novelty_calibration", "novelty_crossfit")
    for key in ("stop_after_epochs", "device", "logging_steps", "eval_batch_size", "keep_checkpoints", "backend",
                "dist_timeout_s", *calibration_only):
        config["training"].pop(key)
    if not cfg.training.train_on_prefixes:  # then early_hop does not change the training windows either
        config["training"].pop("train_on_prefixes")
        config["training"].pop("early_hop")
    config["encoder"].pop("cache_dir")
    config["encoder"].pop("batch_size")
    return {"config": config, "train_data": fingerprint, "eval_data": eval_fingerprint}


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    # deterministic kernels where they exist; warn (not fail) for CUDA ops without one
    torch.use_deterministic_algorithms(True, warn_only=True)


def load_run_data(cfg: TrainConfig) -> tuple[list[Session], list[Session], dict[str, Any]]:
    """Train and eval sessions: the eval files, or a leak-free split of the training files (by time for windows
    cut from line-labelled logs, whose neighbours share lines). The unsupervised objective reads unlabelled files
    too; its training sessions all carry label 0 (the labels are ignored)."""
    supervised = cfg.training.objective == "supervised"
    if not cfg.data.eval and cfg.data.format in LINE_LABELLED:
        train_sessions, eval_sessions, report = split_labelled_by_time(cfg.data.train, cfg.data, cfg.model.max_window)
        split = f"by time, the last {cfg.data.eval_fraction} of each file's lines"
    elif cfg.data.eval:
        train_sessions, report = load_source(cfg.data.train, cfg.data, cfg.model.max_window,
                                             require_labels=supervised)
        eval_sessions, eval_report = load_source(cfg.data.eval, cfg.data, cfg.model.max_window, role="eval",
                                                 require_labels=supervised)
        report.merge(eval_report)
        split = "eval files"
    else:
        train_sessions, report = load_source(cfg.data.train, cfg.data, cfg.model.max_window,
                                             require_labels=supervised)
        train_sessions, eval_sessions = split_sessions(train_sessions, cfg.data.eval_fraction, cfg.training.seed,
                                                       cfg.data.split, mask)
        split = f"{cfg.data.split} split, eval_fraction {cfg.data.eval_fraction}"
    eval_labelled = all(s.labelled for s in eval_sessions)
    if not eval_labelled and cfg.training.threshold_objective != "rate":
        raise ValueError(f"training.threshold_objective={cfg.training.threshold_objective} needs labelled eval "
                         f"data, and {sum(not s.labelled for s in eval_sessions)} eval sessions have no label; "
                         "set training.threshold_objective=rate (training.target_rate) or label the eval files")
    for name, part in (("train", train_sessions), ("eval", eval_sessions)):
        counts = label_counts(part)
        if counts["n_anomalous"] in (0, counts["n"]) and (supervised or (name == "eval" and eval_labelled)):
            logger.warning("%s data holds one class only (%s)", name, counts)
    info = {"split": split, "train": label_counts(train_sessions), "eval": label_counts(eval_sessions),
            "eval_labelled": eval_labelled, "skipped": report.as_dict()}
    logger.info("data: %s", info)
    return train_sessions, eval_sessions, info


def build_model(cfg: TrainConfig, input_dim: int, encoder_reference: str, fingerprint: str) -> Any:
    from model.configuration_logmoe import LogMoEConfig
    from model.modeling_logmoe import LogMoEForSequenceClassification

    config = LogMoEConfig(input_dim=input_dim, **asdict(cfg.model), routing="dense",
                          encoder_name_or_path=encoder_reference, pooling=cfg.encoder.pooling,
                          line_max_length=cfg.encoder.line_max_length, token_buckets=cfg.encoder.token_buckets,
                          data_fingerprint=fingerprint,
                          window_hop=cfg.training.hop)  # evaluation and the worker window with the same hop
    torch.manual_seed(cfg.training.seed)
    return LogMoEForSequenceClassification(config)


def rarity_rows(cfg: TrainConfig, rows: Sequence[str],
                line_counts: dict[str, int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (U,) line counts the model reads for the table's rows in training windows and in eval windows (None,
    None for a model without rarity_buckets). Supervised, a training window counts the other sessions only, so a
    line unique to its session reads as never seen, as a new line will; unsupervised, the perturbations' made-up
    lines stand for the never-seen ones and the real windows keep their counts (until the rarity trim recounts
    over the kept windows: train.unsupervised.kept_session_counts)."""
    if not cfg.model.rarity_buckets:
        return None, None
    train_counts = row_counts(rows, line_counts, leave_one_out=cfg.training.objective == "supervised")
    return train_counts, row_counts(rows, line_counts)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, calibrate and save a model; returns (and writes to metrics.json) the final metrics. A run stopped by
    training.stop_after_epochs returns {"status": "interrupted", ...} and saves no final model. Started by torchrun,
    each process joins the data-parallel run; ranks other than 0 return {"status", "rank", "world_size"} only."""
    world_size = world_from_env(os.environ)[1]
    check_batch_split(cfg.training.batch_size, world_size)  # before any process waits for others
    if cfg.training.objective == "unsupervised" and world_size > 1:
        raise AllRanksError(f"training.objective=unsupervised trains in one process ({world_size} were started): "
                            "run it without torchrun or --nproc")
    with data_parallel(cfg.training.device, cfg.training.backend, cfg.training.dist_timeout_s) as dp:
        return _train(cfg, dp)


RunData = tuple[list[Session], list[Session], dict[str, Any]]  # train sessions, eval sessions, what load_run_data says


def _train(cfg: TrainConfig, dp: DataParallel, data: RunData | None = None) -> dict[str, Any]:
    """train() in one process of the run; data: the sessions to use instead of cfg.data's files."""
    from model.encoder import LineEncoder

    timings: dict[str, float] = {}
    clock = time.perf_counter()
    out = cfg.output_path
    if dp.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.training.seed)
    device = dp.device

    train_sessions, eval_sessions, data_info = data if data is not None else dp.agree(lambda: load_run_data(cfg))
    known_labels = None
    if cfg.training.objective == "unsupervised":  # labels ignored: kept aside for the trimming report only
        known_labels = [s.label if s.labelled else None for s in train_sessions]
        train_sessions = [replace(s, label=0, labelled=False) for s in train_sessions]
    fingerprint = data_fingerprint(train_sessions)
    eval_fingerprint = data_fingerprint(eval_sessions)
    dp.check_same("data fingerprint", f"train {fingerprint}, eval {eval_fingerprint}")
    timings["load_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    train_masked = mask_sessions_across(train_sessions, mask, dp)
    eval_masked = mask_sessions_across(eval_sessions, mask, dp)
    distinct = list(dict.fromkeys(line for lines in (*train_masked, *eval_masked) for line in lines))
    timings["mask_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    encoder = LineEncoder(cfg.encoder.name_or_path, pooling=cfg.encoder.pooling,
                          max_length=cfg.encoder.line_max_length, device=device, batch_size=cfg.encoder.batch_size,
                          token_buckets=cfg.encoder.token_buckets)
    cache = EmbeddingCache(cfg.embed_cache_dir, encoder_cache_key(encoder.reference, cfg.encoder.pooling,
                                                                  cfg.encoder.line_max_length,
                                                                  cfg.encoder.token_buckets))
    table = embed_lines_across(distinct, encoder, cache, dp)  # (U, D)
    timings["embed_s"] = time.perf_counter() - clock
    row_of = {line: row for row, line in enumerate(distinct)}
    normal_lines = frozenset(line for s, lines in zip(train_sessions, train_masked) if not s.label for line in lines)
    line_counts = session_counts(train_masked)  # masked line -> training sessions holding it (model.rarity)
    train_counts, eval_counts = rarity_rows(cfg, distinct, line_counts)
    train_set = build_window_set(train_sessions, train_masked, row_of, cfg.model.max_window, cfg.training.hop,
                                 train_counts)
    if cfg.training.train_on_prefixes:
        rule = EarlyRule(cfg.model.max_window, cfg.training.hop, cfg.training.early_hop)
        prefixes = prefix_windows(train_sessions, train_masked, row_of, normal_lines, rule, cfg.training.seed)
        logger.info("training on %d prefixes as well (%d anomalous)", len(prefixes[0]), sum(prefixes[1]))
        train_set = concat_window_sets(train_set, pack_windows(*prefixes, train_sessions, train_counts))
    eval_set = build_window_set(eval_sessions, eval_masked, row_of, cfg.model.max_window, cfg.training.hop,
                                eval_counts)
    logger.info("%d distinct masked lines; %d train windows, %d eval windows", len(distinct), len(train_set),
                len(eval_set))
    check_enough_windows(len(train_set), dp.world_size)

    identity = run_identity(cfg, fingerprint, eval_fingerprint)
    model = build_model(cfg, encoder.dim, encoder.reference, fingerprint).to(device)
    pauses = measure_pauses([s.lines for s in train_sessions if not s.label])
    model.config.session_idle = pauses.session_idle  # what the worker waits before it closes a session
    logger.info("pauses inside normal training sessions (%d of %d timed): median %s s, longest %s s; session_idle "
                "for the worker: %s", pauses.timed, pauses.sessions, pauses.p50_s, pauses.longest_s,
                f"{pauses.session_idle:g} s" if pauses.session_idle else "none (too few timestamps read)")
    dp.seed_rank(cfg.training.seed)
    resume_from = dp.from_main(lambda: _prepare_checkpoints(cfg, identity))  # rank 0 reads, every rank restores
    if resume_from is not None:
        model.load_state_dict(resume_from.model_state)
        resume_from.restore_rng(dp.rank)

    objective = None
    training = cfg.training
    if cfg.training.objective == "unsupervised":
        from train.unsupervised import build_objective, kept_session_counts, window_labels

        objective = build_objective(cfg.unsupervised, train_set, table, list(dict.fromkeys(
            line for lines in train_masked for line in lines)), encoder, cache, mask, cfg.training.seed,
            cfg.model.max_window, cfg.training.eval_batch_size, cfg.training.epochs_stage1,
            window_labels(train_set, known_labels))
        objective.table = table = objective.table.to(device)  # with the never-seen statements appended
        if cfg.model.rarity_buckets and cfg.unsupervised.trim_by == "rarity" and cfg.unsupervised.trim_fraction:
            # what the trimmed windows alone hold is not evidence of normal: it counts as never seen
            line_counts = kept_session_counts(train_set, objective.kept, distinct)
            train_set.row_counts = eval_set.row_counts = row_counts(distinct, line_counts)
        training = replace(cfg.training, class_weighting="none")  # batches are half real, half perturbed

    shuffle = None
    if objective is None and cfg.training.shuffle_anomalous > 0:
        from train.augment import AnomalyShuffle

        shuffle = AnomalyShuffle(train_set, cfg.training.shuffle_anomalous, cfg.training.seed)
        logger.info("%d of %d anomalous training windows hold what no normal one does: shown shuffled with "
                    "probability %g", int(shuffle.eligible.sum()), int(train_set.labels.sum()),
                    cfg.training.shuffle_anomalous)

    def eval_hook(epoch: Epoch, result: EvalResult) -> dict[str, Any]:
        at_half = classification_metrics(eval_set.session_labels.tolist(), result.session_scores.tolist(), 0.5)
        record = {"eval_f1": at_half["f1"], "eval_pr_auc": at_half["pr_auc"] or 0.0}
        if objective is not None:
            record["eval_perturbation_loss"] = objective.eval_loss(model, eval_set)
        return record

    clock = time.perf_counter()
    trainer = train_stages(model, table.to(device), train_set, eval_set, training, out, identity, resume_from,
                           eval_hook, dp, objective, objective.selection_key if objective is not None else None,
                           shuffle)
    timings["train_s"] = time.perf_counter() - clock
    total_epochs = len(schedule(cfg.training))
    crossfit, crossfit_report = None, None
    if trainer.epochs_done == total_epochs:
        crossfit, crossfit_report = _crossfit(cfg, dp, encoder, train_sessions, train_masked,
                                                   data_info["eval_labelled"])
    if not dp.is_main:  # rank 0 evaluates and writes the results
        done = trainer.epochs_done == total_epochs
        return {"status": "complete" if done else "interrupted", "rank": dp.rank, "world_size": dp.world_size}
    if trainer.epochs_done < total_epochs:
        return {"status": "interrupted", "epochs_done": trainer.epochs_done, "epochs_total": total_epochs,
                "output_dir": str(out)}

    clock = time.perf_counter()
    metrics, early, crossfit_metrics = _finalize(cfg, model, encoder, eval_sessions, train_masked, normal_lines,
                                                 line_counts, device, data_info["eval_labelled"], crossfit)
    if crossfit_metrics is not None:
        crossfit_report.update(crossfit_metrics)
    timings["final_eval_s"] = time.perf_counter() - clock
    window_check = score_windows(model, table.to(device), eval_set, cfg.training.eval_batch_size)
    result = {
        "status": "complete",
        "objective": cfg.training.objective,
        "eval": metrics,
        "data": data_info,
        "windows": {"train": len(train_set), "eval": len(eval_set), "max_window": cfg.model.max_window,
                    "hop": cfg.training.hop},
        "embedding": {"distinct_lines": len(distinct), "encoder": encoder.reference, "cache_dir": str(cache.dir)},
        "data_fingerprint": fingerprint,
        "world_size": dp.world_size,
        "threshold": metrics["threshold"],
        "early": early,
        "novelty_calibration": model.config.novelty_calibration,
        "novelty_crossfit": crossfit_report,
        "session_pauses": pauses.to_dict(),
        "final_eval_loss": window_check.loss,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "output_dir": str(out),
    }
    if objective is not None:
        result["unsupervised"] = objective.report()
    (out / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    plot_loss_curves(trainer.log_history, out / "plots" / "loss_curves.png")
    logger.info("eval: f1=%s precision=%s recall=%s pr_auc=%s threshold=%.4f alert_rate=%.4f; model in %s",
                metrics["f1"], metrics["precision"], metrics["recall"], metrics["pr_auc"], metrics["threshold"],
                metrics["alert_rate"], out / FINAL_DIR)
    return result


def _prepare_checkpoints(cfg: TrainConfig, identity: dict[str, Any]) -> Any:
    """The checkpoint to resume from (None: start fresh). A fresh run clears old checkpoints and logs."""
    results = cfg.output_path / "moe_results"
    if cfg.resume:
        found = load_latest_checkpoint(results)
        if found is None:
            logger.warning("--resume: no checkpoint in %s; starting from scratch", results)
            return None
        if found.trainer.run_identity != identity:
            differing = sorted(_diff_keys(found.trainer.run_identity, identity))
            raise ValueError(f"--resume: the checkpoint in {found.folder} was made with other settings or data "
                             f"(differs in: {', '.join(differing)}); start a fresh run or restore them")
        return found
    for stale in ("moe_results", "moe_logs"):
        if (cfg.output_path / stale).exists():
            logger.info("fresh run: clearing %s", cfg.output_path / stale)
            shutil.rmtree(cfg.output_path / stale)
    return None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) | set(b)
        return [k for key in keys for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def publish_dir(staging: Path, final_dir: Path) -> None:
    """Replace final_dir with staging by renames (each atomic on one file system); the old model is moved
    aside first and deleted last, so final_dir always holds either the old or the new complete model,
    except for the instant between the two renames."""
    previous = final_dir.with_name(f".{final_dir.name}.previous")
    if previous.exists():
        shutil.rmtree(previous)
    if final_dir.exists():
        final_dir.rename(previous)
    staging.rename(final_dir)
    if previous.exists():
        shutil.rmtree(previous)


def _crossfit_skip_reason(report: dict[str, Any], world_size: int) -> str | None:
    """Why the cross-fit cannot run on the split `report` describes (None: it can): nothing new to learn from, an
    auxiliary run too small for the processes, or a part without both classes."""
    if not report["later_with_never_seen"]:
        return "the later part holds no line the earlier part does not"
    if report["earlier"]["n"] < world_size:  # a session gives at least one window: each process needs one
        return f"the earlier part has fewer sessions ({report['earlier']['n']}) than processes ({world_size})"
    for part in ("earlier", "later"):
        if report[part]["n_anomalous"] in (0, report[part]["n"]):
            return f"the {part} part holds one class only"
    return None


def _crossfit(cfg: TrainConfig, dp: DataParallel, encoder: Any, train_sessions: list[Session],
              train_masked: list[tuple[str, ...]],
              eval_labelled: bool) -> tuple[CrossFit | None, dict[str, Any] | None]:
    """training.novelty_crossfit: train an auxiliary model on the earlier part of train (every rank takes part),
    score the later part with it (rank 0) and return that evidence for the novelty fit, with what was done (None,
    None when the setting does not apply). Its outputs go to output_dir/novelty_crossfit; its checkpoints and model
    are deleted once it has scored."""
    from model.scorer import LogScorer

    t = cfg.training
    if not (t.novelty_crossfit and t.objective == "supervised" and fits_novelty(t, eval_labelled)):
        return None, None
    cut = round(len(train_sessions) * (1 - t.novelty_crossfit))
    earlier, later = train_sessions[:cut], train_sessions[cut:]
    known = {line for lines in train_masked[:cut] for line in lines}
    report: dict[str, Any] = {
        "fraction": t.novelty_crossfit, "earlier": label_counts(earlier), "later": label_counts(later),
        "later_with_never_seen": sum(any(line not in known for line in lines) for lines in train_masked[cut:])}
    why_not = _crossfit_skip_reason(report, dp.world_size)
    if why_not is not None:
        logger.info("novelty cross-fit skipped: %s (%s)", why_not, report)
        return None, {**report, "status": f"skipped: {why_not}"}
    logger.info("novelty cross-fit: training on the earlier %d training sessions, scoring the later %d (%d hold a "
                "line the earlier ones do not)", len(earlier), len(later), report["later_with_never_seen"])
    folder = cfg.output_path / CROSSFIT_DIR
    aux_cfg = replace(cfg, output_dir=str(folder), resume=False,
                      encoder=replace(cfg.encoder, cache_dir=str(cfg.embed_cache_dir)),
                      training=replace(t, novelty_calibration=False, novelty_crossfit=0.0, early_calibration="off",
                                       stop_after_epochs=None))
    info = {"split": f"novelty cross-fit: the earlier {1 - t.novelty_crossfit:g} of train, the later "
                     f"{t.novelty_crossfit:g} as eval", "train": report["earlier"], "eval": report["later"],
            "eval_labelled": True, "skipped": {}}
    clock = time.perf_counter()
    aux = _train(aux_cfg, dp, (earlier, later, info))
    if not dp.is_main:
        return None, None
    scorer = LogScorer.from_pretrained(folder / FINAL_DIR, device=str(dp.device), encoder=encoder,
                                       batch_size=t.eval_batch_size)
    scores = score_sessions(scorer, later, t.hop, t.eval_batch_size)
    scorer.set_novelty_calibration(SEEN_ONLY)
    seen_scores = score_sessions(scorer, later, t.hop, t.eval_batch_size)
    flags = [scorer.novelty_flags(s.lines) for s in later]
    del scorer  # its weights map files in the folder
    for done in ("moe_results", FINAL_DIR):
        shutil.rmtree(folder / done)
    report.update(status="trained and scored", seconds=round(time.perf_counter() - clock, 3),
                  later_scored={k: aux["eval"][k] for k in ("f1", "precision", "recall", "pr_auc")})
    return CrossFit(seen_scores.scores, flags, [s.label for s in later], scores.scores), report


def novel_misses(scores: Sequence[float], flags: Sequence[Sequence[float]], labels: Sequence[int]) -> int:
    """Failures only a never-seen line tells: anomalous sessions (scores (n,) the classifier's from every line,
    flags (n, F) model.novelty.window_flags, labels (n,)) that hold a never-seen line and score under the max-F1
    cut of these scores. Where eval holds as many as the cross-fit sessions, its max-F1 cut already sits where such
    failures are, and the threshold is chosen on eval alone: over both sets, the cross-fit's few failures moved it
    either way on BGL's past -> future protocol (bench/results/2026-12-05-novelty-crossfit.md)."""
    cut = calibrate_threshold(labels, scores)
    return sum(1 for score, flag, label in zip(scores, flags, labels) if label and any(flag) and score < cut)


def _finalize(cfg: TrainConfig, model: Any, encoder: Any, eval_sessions: list[Session],
              train_masked: list[tuple[str, ...]], normal_lines: frozenset[str], line_counts: dict[str, int],
              device: torch.device, eval_labelled: bool = True,
              crossfit: CrossFit | None = None
              ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """Save the final model, score eval with LogScorer (the worker's scorer), fit the novelty calibration where
    fits_novelty says so (on eval, and the cross-fit sessions when given), calibrate and store the threshold (on
    eval, and the cross-fit sessions' calibrated scores too where they hold more failures only novelty tells;
    threshold_objective rate: from the eval windows' scores alone) and the early thresholds, write seen_lines.json,
    normal_lines.json, line_counts.json (a model that reads line rarity) and the eval plots;
    returns the eval metrics at the stored threshold (without labels: no precision, recall, F1) and what early
    scoring does on eval (None when early_calibration is off), and what became of the cross-fit sessions (None
    without them): the failures only novelty tells in each set, whether the threshold was chosen over both, and
    the cross-fit sessions' metrics at the stored threshold."""
    from model.scorer import LogScorer

    # Build the model in a sibling folder and move it into place once it is complete and calibrated: a worker
    # watching final_moe_model (hot reload) never sees a half-written or uncalibrated model.
    final_dir = cfg.output_path / FINAL_DIR
    staging = cfg.output_path / f".{FINAL_DIR}.staging"
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(staging)
    LogScorer.save_seen_lines(staging, dict.fromkeys(line for lines in train_masked for line in lines))
    LogScorer.save_normal_lines(staging, normal_lines)
    if model.config.rarity_buckets:
        save_line_counts(staging, line_counts)
    scorer = LogScorer.from_pretrained(staging, device=str(device), encoder=encoder,
                                       batch_size=cfg.training.eval_batch_size)
    scores = score_sessions(scorer, eval_sessions, cfg.training.hop, cfg.training.eval_batch_size)
    labels = [s.label for s in eval_sessions]
    crossfit_scores: tuple[list[int], list[float]] = ([], [])  # labels, calibrated scores
    crossfit_metrics: dict[str, Any] | None = None
    over_both = False  # the threshold chosen over eval and the cross-fit sessions
    if fits_novelty(cfg.training, eval_labelled):
        eval_flags = [scorer.novelty_flags(s.lines) for s in eval_sessions]
        seen_scores = scores.scores  # the classifier's from the lines training held
        if crossfit is not None or any(map(any, eval_flags)):
            scorer.set_novelty_calibration(SEEN_ONLY)
            seen_scores = score_sessions(scorer, eval_sessions, cfg.training.hop, cfg.training.eval_batch_size).scores
            scorer.set_novelty_calibration(None)
        if crossfit is not None:
            misses = {"eval": novel_misses(scores.scores, eval_flags, labels),
                      "crossfit": novel_misses(crossfit.classifier_scores, crossfit.flags, crossfit.labels)}
        fitted = fit_novelty(seen_scores, eval_flags, labels, crossfit)
        if fitted is not None:
            novelty = fitted.calibration
            logger.info("novelty calibration on eval%s: margin x %.3f %+.3f, never-seen lines add %s; failure-like "
                        "ones %s", " and the cross-fit" if crossfit is not None else "", novelty.scale, novelty.bias,
                        *(", ".join(f"{g} {w:+.3f}" for g, w in zip(GROUPS, weights))
                          for weights in (novelty.weights, novelty.failure_like_weights or novelty.weights)))
            scorer.set_novelty_calibration(novelty)
            model.config.novelty_calibration = novelty.to_config()
            scores = score_sessions(scorer, eval_sessions, cfg.training.hop, cfg.training.eval_batch_size)
            if fitted.crossfit_scores is not None:
                crossfit_scores = (list(crossfit.labels), list(fitted.crossfit_scores))
        if crossfit is not None:  # both only where the threshold comes from labels, over calibrated cross-fit scores
            over_both = (misses["crossfit"] > misses["eval"] and bool(crossfit_scores[0])
                         and cfg.training.threshold_objective != "rate")
            logger.info("failures only a never-seen line tells: %d in eval, %d in the cross-fit sessions; threshold "
                        "on %s", misses["eval"], misses["crossfit"], "both" if over_both else "eval alone")
            crossfit_metrics = {"novel_misses": misses, "threshold_over_both": over_both}
    extra = crossfit_scores if over_both else ([], [])  # the failures only novelty tells, where eval lacks them
    threshold, outliers = choose_threshold(cfg.training, scores.window_scores, labels + extra[0],
                                           scores.scores + extra[1])
    model.config.threshold = threshold
    early = _calibrate_early(cfg, model, scorer, eval_sessions, scores.scores, normal_lines, eval_labelled)
    model.save_pretrained(staging)
    del scorer  # its weights map files in staging/
    publish_dir(staging, final_dir)
    metrics = session_metrics(eval_sessions, scores, threshold)
    metrics["rate_outliers"] = outliers
    if not eval_labelled:  # the placeholder labels say nothing: keep only what needs none
        metrics.update(accuracy=None, precision=None, recall=None, f1=None, confusion_matrix=None, n_anomalous=None)
        labels = []
    if crossfit_metrics is not None and crossfit_scores[0]:
        at = classification_metrics(crossfit_scores[0], crossfit_scores[1], threshold)
        crossfit_metrics["at_threshold"] = {k: at[k] for k in ("precision", "recall", "f1", "pr_auc",
                                                               "confusion_matrix")}
    plot_pr_curve(labels, scores.scores, threshold, metrics["pr_auc"], cfg.output_path / "plots" / "pr_curve.png")
    if eval_labelled:
        plot_confusion_matrix(metrics["confusion_matrix"], cfg.output_path / "plots" / "confusion_matrix.png")
    return metrics, early, crossfit_metrics


def choose_threshold(t: TrainingSection, window_scores: Sequence[float], labels: Sequence[int],
                     session_scores: Sequence[float]) -> tuple[float, int | None]:
    """The threshold training stores, and for threshold_objective rate how many eval windows a gap in the scores set
    apart (None otherwise): rate reads the window scores alone (train.metrics.rate_threshold, no label), f1 and fpr
    the labelled session scores (train.metrics.calibrate_threshold)."""
    if t.threshold_objective != "rate":
        return calibrate_threshold(labels, session_scores, t.threshold_objective, t.target_fpr), None
    threshold = rate_threshold(window_scores, t.target_rate, t.rate_gap)
    outliers = gap_outliers(window_scores, t.rate_gap)
    logger.info("rate threshold %.4f (target_rate %g): %d of %d eval windows set apart by a gap in the scores",
                threshold, t.target_rate, outliers, len(window_scores))
    return threshold, outliers


def fits_novelty(t: TrainingSection, eval_labelled: bool) -> bool:
    """Whether training fits the novelty calibration: it needs labelled eval data; under the unsupervised objective
    only when the threshold comes from those labels too (threshold_objective f1 or fpr), so a model calibrated by
    alert rate stays free of labels."""
    return t.novelty_calibration and eval_labelled and (t.objective == "supervised" or t.threshold_objective != "rate")


def _calibrate_early(cfg: TrainConfig, model: Any, scorer: Any, eval_sessions: list[Session],
                     closing_scores: list[float], normal_lines: frozenset[str],
                     eval_labelled: bool = True) -> dict[str, Any] | None:
    """Score the eval sessions' early prefixes, calibrate the early thresholds (train.early) and store them with
    early_hop and early_target_fpr in the model's config; what they do on eval (train.early.early_report). Without
    eval labels every eval session counts as normal: early alerts then flag no larger share of them than the
    closing threshold does, and there is no precision or recall to report."""
    t = cfg.training
    if t.early_calibration == "off":
        return None
    threshold = float(model.config.threshold)
    rule = EarlyRule(cfg.model.max_window, t.hop, t.early_hop)
    prefixes = score_prefixes(scorer, eval_sessions, rule, normal_lines, t.eval_batch_size)
    labels = [s.label for s in eval_sessions]
    target = t.early_target_fpr if t.early_target_fpr is not None else closing_fpr(labels, closing_scores, threshold)
    bounds = length_bounds(cfg.model.max_window) if t.early_calibration == "per_length" else (cfg.model.max_window,)
    normal = [p for p, label in zip(prefixes, labels) if not label]
    early = calibrate_early(normal, target, threshold, bounds)
    model.config.early_hop = t.early_hop
    model.config.early_thresholds = early.to_config()
    model.config.early_target_fpr = target
    settings = {"early_hop": t.early_hop, "calibration": t.early_calibration, "target_fpr": target,
                "thresholds": early.to_config(), "windows_scored_early": sum(len(p) for p in prefixes)}
    if not eval_labelled:
        return settings
    windows = regular_window_scores(scorer, eval_sessions, t.hop, t.eval_batch_size)
    outcomes = session_outcomes(eval_sessions, prefixes, closing_scores, threshold, early, windows)
    report = early_report(eval_sessions, outcomes, closing_scores, threshold)
    report.update(settings)
    logger.info("early scoring on eval: %d of %d anomalous sessions alerted before their last line, %d normal "
                "sessions alerted early only; precision %.4f -> %.4f, recall %.4f -> %.4f",
                report["alerted_before_last_line"], report["anomalous"], report["normal_alerted_early_only"],
                report["closing"]["precision"], report["with_early"]["precision"], report["closing"]["recall"],
                report["with_early"]["recall"])
    return report
