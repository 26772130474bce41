"""End to end on a small generated world with the tiny encoder: train -> evaluate round trip, outputs, the stage
switch, resume after an interruption, and the CLI."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from model.cli import main
from model.masking import mask
from train.config import EvalConfig, TrainConfig
from train.data import load_jsonl
from train.evaluation import evaluate, load_scorer, score_sessions
from train.metrics import calibrate_threshold
from train.pipeline import data_fingerprint, novel_misses, publish_dir, rarity_rows, train


def fatal_weight(stored: dict[str, Any]) -> float:
    """The stored weight of a never-seen fatal line, like a normal line or failure-like (which one a line is depends
    on the tiny random encoder's nearest neighbours, so the tests take whichever was fitted)."""
    return max(stored["weights"]["fatal"], stored["failure_like_weights"]["fatal"])


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(make_config: Callable[..., TrainConfig], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[TrainConfig, dict[str, Any]]:
    cfg = make_config(tmp_path_factory.mktemp("run"))
    return cfg, train(cfg)


def test_evaluate_reproduces_the_training_metrics(trained: tuple[TrainConfig, dict[str, Any]]) -> None:
    cfg, result = trained
    model_dir = cfg.output_path / "final_moe_model"
    stored = json.loads((model_dir / "config.json").read_text())
    on_disk = json.loads((cfg.output_path / "metrics.json").read_text())
    assert on_disk["eval"] == result["eval"]
    assert stored["threshold"] == result["eval"]["threshold"] == result["threshold"]

    metrics = evaluate(EvalConfig(model=str(model_dir), data=cfg.data.eval, device="cpu"))
    for key in ("accuracy", "precision", "recall", "f1", "threshold", "n", "n_anomalous", "confusion_matrix"):
        assert metrics[key] == result["eval"][key], key
    for key in ("pr_auc", "roc_auc", "experts_per_token"):
        assert metrics[key] == pytest.approx(result["eval"][key], abs=1e-5), key

    # the stored threshold is the one calibration picks on the eval scores
    sessions = load_jsonl(cfg.data.eval[0])
    scores = score_sessions(load_scorer(str(model_dir), "cpu", 256), sessions, hop=cfg.training.hop).scores
    assert calibrate_threshold([s.label for s in sessions], scores, "f1") == pytest.approx(stored["threshold"],
                                                                                          abs=1e-6)
    # the tiny random encoder maps every line to nearly the same vector (cosine ~0.99), so only check that the
    # detector flags some anomalies; the real encoder's quality is measured on HDFS (BENCHMARKS.md)
    assert result["eval"]["confusion_matrix"][1][1] > 0


def test_outputs_as_the_seed_users_expect(trained: tuple[TrainConfig, dict[str, Any]]) -> None:
    cfg, result = trained
    out = cfg.output_path
    log = [json.loads(line) for line in (out / "moe_logs" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert {r["stage"] for r in steps} == {1, 2}
    assert all({"loss", "grad_norm", "learning_rate", "epoch", "stage", "step"} <= set(r) for r in steps)
    assert [r["step"] for r in steps] == sorted(r["step"] for r in steps)
    assert list((out / "moe_logs").glob("events.out.tfevents.*"))
    assert (out / "moe_results" / "checkpoint-006" / "trainer_state.json").is_file()  # 4 + 2 epochs
    for name in ("loss_curves.png", "pr_curve.png", "confusion_matrix.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    model_dir = out / "final_moe_model"
    stored = json.loads((model_dir / "config.json").read_text())
    assert stored["encoder_name_or_path"] == str(Path(cfg.encoder.name_or_path).resolve())
    fingerprint = data_fingerprint(load_jsonl(cfg.data.train[0]))
    assert stored["data_fingerprint"] == fingerprint == result["data_fingerprint"]
    assert stored["window_hop"] == cfg.training.hop
    assert json.loads((model_dir / "seen_lines.json").read_text())
    assert stored["rarity_buckets"] == cfg.model.rarity_buckets > 0  # the default reads line rarity
    assert stored["token_buckets"] == cfg.encoder.token_buckets > 0  # and the words of each line
    assert stored["input_dim"] == 32 + cfg.encoder.token_buckets  # the tiny encoder's 32, then the bag
    masked = [{mask(line) for line in s.lines} for s in load_jsonl(cfg.data.train[0])]
    counts = json.loads((model_dir / "line_counts.json").read_text())
    assert counts == {line: sum(line in m for m in masked) for line in set().union(*masked)}
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle")]
    assert (out / ".embed_cache").is_dir()
    assert sorted(p.name for p in out.iterdir() if "final_moe_model" in p.name) == ["final_moe_model"]


def test_the_early_thresholds_are_calibrated_on_the_eval_prefixes_and_stored(
        trained: tuple[TrainConfig, dict[str, Any]]) -> None:
    from model.early import EarlyRule, EarlyThresholds
    from model.masking import mask
    from train.early import calibrate_early, closing_fpr, length_bounds, score_prefixes

    cfg, result = trained
    model_dir = cfg.output_path / "final_moe_model"
    stored = json.loads((model_dir / "config.json").read_text())
    train_sessions = load_jsonl(cfg.data.train[0])
    normal = frozenset(mask(line) for s in train_sessions if not s.label for line in s.lines)
    assert frozenset(json.loads((model_dir / "normal_lines.json").read_text())) == normal
    assert stored["early_hop"] == cfg.training.early_hop
    scorer = load_scorer(str(model_dir), "cpu", 256)
    assert scorer.normal_lines == normal and scorer.early_thresholds == EarlyThresholds.from_config(
        stored["early_thresholds"])
    sessions = load_jsonl(cfg.data.eval[0])
    labels = [s.label for s in sessions]
    closing = score_sessions(scorer, sessions, hop=cfg.training.hop).scores
    assert stored["early_target_fpr"] == pytest.approx(closing_fpr(labels, closing, stored["threshold"]))
    prefixes = score_prefixes(scorer, sessions, EarlyRule(scorer.max_window, cfg.training.hop, stored["early_hop"]),
                              normal)
    again = calibrate_early([p for p, y in zip(prefixes, labels) if not y], stored["early_target_fpr"],
                            stored["threshold"], length_bounds(scorer.max_window))
    assert [b for b, _ in again.to_config()] == [b for b, _ in stored["early_thresholds"]]
    assert [v for _, v in again.to_config()] == pytest.approx([v for _, v in stored["early_thresholds"]], abs=1e-6)
    assert min(v for _, v in stored["early_thresholds"]) >= stored["threshold"]  # stricter than closing, or equal
    normal_alerted = sum(1 for p, y in zip(prefixes, labels)
                         if not y and any(scorer.early_thresholds.flags(x.score, x.n_lines) for x in p))
    assert normal_alerted <= stored["early_target_fpr"] * labels.count(0) + 1e-9
    assert result["early"]["calibration"] == "per_length"
    assert result["early"]["thresholds"] == stored["early_thresholds"]


def test_the_longest_pause_inside_normal_training_sessions_is_stored_for_the_worker(
        trained: tuple[TrainConfig, dict[str, Any]]) -> None:
    from train.pauses import measure_pauses

    cfg, result = trained
    train_sessions = load_jsonl(cfg.data.train[0])
    expected = measure_pauses([s.lines for s in train_sessions if not s.label])
    assert expected.timed == expected.sessions > 0 and expected.session_idle is not None  # the world is timestamped
    assert result["session_pauses"] == expected.to_dict()
    assert json.loads((cfg.output_path / "metrics.json").read_text())["session_pauses"] == expected.to_dict()
    stored = json.loads((cfg.output_path / "final_moe_model" / "config.json").read_text())
    assert stored["session_idle"] == expected.session_idle
    assert load_scorer(str(cfg.output_path / "final_moe_model"), "cpu", 256).session_idle == expected.session_idle


def test_training_on_prefixes_adds_one_prefix_window_per_session_it_can_label(
        make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    from model.early import EarlyRule
    from model.masking import mask
    from train.early import prefix_windows

    plain = make_config(tmp_path / "plain", "training.epochs_stage1=1", "training.epochs_stage2=1",
                        "training.train_on_prefixes=false")
    cfg = make_config(tmp_path / "prefixes", "training.epochs_stage1=1", "training.epochs_stage2=1")  # the default
    result = train(cfg)
    sessions = load_jsonl(cfg.data.train[0])
    masked = [tuple(mask(line) for line in s.lines) for s in sessions]
    normal = frozenset(line for s, lines in zip(sessions, masked) if not s.label for line in lines)
    row_of = {line: i for i, line in enumerate(dict.fromkeys(line for lines in masked for line in lines))}
    windows, labels, _ = prefix_windows(sessions, masked, row_of, normal,
                                        EarlyRule(cfg.model.max_window, cfg.training.hop, cfg.training.early_hop),
                                        cfg.training.seed)
    assert windows and result["windows"]["train"] == train(plain)["windows"]["train"] + len(windows)
    assert result["early"]["thresholds"]  # calibrated as without prefixes


def test_publish_dir_swaps_a_complete_model_in(tmp_path: Path) -> None:
    final, staging = tmp_path / "final_moe_model", tmp_path / ".final_moe_model.staging"
    final.mkdir()
    (final / "config.json").write_text("old")
    staging.mkdir()
    (staging / "config.json").write_text("new")
    publish_dir(staging, final)
    assert (final / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_moe_model"]
    staging.mkdir()  # and again over that one
    (staging / "config.json").write_text("newer")
    publish_dir(staging, final)
    assert (final / "config.json").read_text() == "newer"


def test_stage_two_routes_to_fewer_experts(trained: tuple[TrainConfig, dict[str, Any]]) -> None:
    cfg, result = trained
    log = [json.loads(line) for line in (cfg.output_path / "moe_logs" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["experts_per_token"] == 4.0 for r in log if r["stage"] == 1 and "experts_per_token" in r)
    assert result["eval"]["experts_per_token"] < 4.0
    assert json.loads((cfg.output_path / "final_moe_model" / "config.json").read_text())["routing"] == "top_p"


def test_resume_after_interruption_ends_with_the_same_weights(
        trained: tuple[TrainConfig, dict[str, Any]], make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    full_cfg, full = trained
    stopped = train(make_config(tmp_path, "training.stop_after_epochs=3"))
    assert stopped["status"] == "interrupted" and stopped["epochs_done"] == 3
    assert (tmp_path / "moe_results" / "checkpoint-003").is_dir() and not (tmp_path / "final_moe_model").exists()

    resumed = train(make_config(tmp_path, "resume=true"))
    assert resumed["status"] == "complete"
    a = load_file(str(full_cfg.output_path / "final_moe_model" / "model.safetensors"))
    b = load_file(str(tmp_path / "final_moe_model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["eval"]["f1"] == full["eval"]["f1"]
    log = [json.loads(line) for line in (tmp_path / "moe_logs" / "train_log.jsonl").read_text().splitlines()]
    full_log = (full_cfg.output_path / "moe_logs" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == len(full_log)  # one continuous history, no duplicated or lost steps


def test_resume_with_every_epoch_done_saves_the_model_with_top_p_routing(
        trained: tuple[TrainConfig, dict[str, Any]], make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    """Issue 18.2: a run stopped after its last epoch (during the final evaluation or saving) resumed into an empty
    epoch loop, which is where the routing is set, and saved the model dense."""
    full_cfg, full = trained
    shutil.copytree(full_cfg.output_path / "moe_results", tmp_path / "moe_results")  # every epoch done
    resumed = train(make_config(tmp_path, "resume=true"))
    assert resumed["status"] == "complete"
    assert json.loads((tmp_path / "final_moe_model" / "config.json").read_text())["routing"] == "top_p"
    assert resumed["eval"]["experts_per_token"] == pytest.approx(full["eval"]["experts_per_token"])
    assert resumed["eval"]["experts_per_token"] < 4.0 and resumed["eval"]["f1"] == full["eval"]["f1"]


def test_resume_refuses_other_settings(make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    train(make_config(tmp_path, "training.stop_after_epochs=1", "training.epochs_stage1=1",
                      "training.epochs_stage2=1"))
    with pytest.raises(ValueError, match="differs in: config.training.learning_rate"):
        train(make_config(tmp_path, "resume=true", "training.epochs_stage1=1", "training.epochs_stage2=1",
                          "training.learning_rate=1.0e-3"))


def test_cli_evaluate_json_and_score(trained: tuple[TrainConfig, dict[str, Any]],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg, result = trained
    model_dir = str(cfg.output_path / "final_moe_model")
    assert main(["evaluate", "--model", model_dir, "--data", cfg.data.eval[0], "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert {"accuracy", "precision", "recall", "f1", "pr_auc", "roc_auc", "threshold", "n", "n_anomalous"} <= \
        set(printed)
    assert printed["f1"] == result["eval"]["f1"]

    assert main(["score", "--model", model_dir, cfg.data.eval[0], "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sessions = load_jsonl(cfg.data.eval[0])
    assert [r["session_id"] for r in rows] == [s.session_id for s in sessions]
    assert all(r["anomalous"] == (r["score"] >= result["threshold"]) for r in rows)
    tp = sum(r["anomalous"] and s.label for r, s in zip(rows, sessions))
    assert tp == result["eval"]["confusion_matrix"][1][1]


def test_a_hop_larger_than_the_models_window_is_one_error_line(trained: tuple[TrainConfig, dict[str, Any]],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg, _ = trained
    model_dir = str(cfg.output_path / "final_moe_model")
    evaluate = ["evaluate", "--model", model_dir, "--data", cfg.data.eval[0]]
    score = ["score", "--model", model_dir, cfg.data.eval[0]]
    for command in (evaluate, score):
        assert main([*command, "--device", "cpu", "--hop", "65"]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "logmoe: error: --hop must be <= the model's max_window (65 > 64): the lines between two windows would "
            "never be scored; pass --hop 64 or less")


def test_cli_errors_are_one_line_naming_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"log_sequence": "a", "label": "正常"}\n{"log_sequence": "a", "label": "perhaps"}\n',
                   encoding="utf-8")
    assert main(["train", "--data", str(bad), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"logmoe: error: {bad}:2: unknown label ('perhaps'; expected one of 正常/异常, normal/anomalous, " \
                  "0/1, true/false)"


def test_final_model_is_the_best_stage_two_epoch_and_its_checkpoint_survives(
        make_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from train import loop

    keys = iter([[0.5, 0.0], [0.9, 0.0], [0.7, 0.0]])  # epoch 1 (stage 1), epochs 2 and 3 (stage 2): 2 is best
    monkeypatch.setattr(loop.EvalResult, "selection_key", lambda self, labels: next(keys))
    result = train(make_config(tmp_path, "training.epochs_stage1=1", "training.epochs_stage2=2",
                               "training.keep_checkpoints=1"))
    results = tmp_path / "moe_results"
    assert sorted(p.name for p in results.glob("checkpoint-*")) == ["checkpoint-002", "checkpoint-003"]
    state = json.loads((results / "checkpoint-003" / "trainer_state.json").read_text())
    assert (state["best_epoch"], state["best_key"]) == (2, [0.9, 0.0])
    final = load_file(str(tmp_path / "final_moe_model" / "model.safetensors"))
    best = load_file(str(results / "checkpoint-002" / "model.safetensors"))
    last = load_file(str(results / "checkpoint-003" / "model.safetensors"))
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], last[k]) for k in last)
    assert result["status"] == "complete"


def test_small_data_gets_min_steps_per_epoch(make_config: Callable[..., TrainConfig], world: Path,
                                             tmp_path: Path) -> None:
    cfg = make_config(tmp_path, "training.epochs_stage1=1", "training.epochs_stage2=1",
                      "training.min_steps_per_epoch=25", "training.stop_after_epochs=1")
    assert train(cfg)["status"] == "interrupted"
    state = json.loads((tmp_path / "moe_results" / "checkpoint-001" / "trainer_state.json").read_text())
    windows = len(load_jsonl(world / "train.jsonl"))  # every generated session fits one window
    assert -(-windows // cfg.training.batch_size) < 25 == state["global_step"]


@pytest.mark.parametrize(("objective", "training_counts"), [("supervised", [2, 0, 0]), ("unsupervised", [3, 1, 0])])
def test_training_windows_count_the_other_sessions_only_when_supervised(
        make_config: Callable[..., TrainConfig], tmp_path: Path, objective: str, training_counts: list[int]) -> None:
    cfg = make_config(tmp_path, f"training.objective={objective}")
    train_rows, eval_rows = rarity_rows(cfg, ["a", "b", "new"], {"a": 3, "b": 1})
    assert train_rows.tolist() == training_counts and eval_rows.tolist() == [3, 1, 0]
    assert rarity_rows(make_config(tmp_path, "model.rarity_buckets=0"), ["a"], {"a": 3}) == (None, None)


@pytest.mark.parametrize(("probability", "expect_calls"), [(1.0, True), (0.0, False)])
def test_shuffle_anomalous_reorders_the_training_batches_of_every_step(
        make_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        probability: float, expect_calls: bool) -> None:
    from train import augment

    steps: list[int] = []
    original = augment.AnomalyShuffle.__call__

    def spy(self: Any, rows: torch.Tensor, embeds: torch.Tensor, counts: Any, step: int) -> Any:
        steps.append(step)
        return original(self, rows, embeds, counts, step)

    monkeypatch.setattr(augment.AnomalyShuffle, "__call__", spy)
    cfg = make_config(tmp_path, "training.epochs_stage1=1", "training.epochs_stage2=1",
                      "training.stop_after_epochs=1", f"training.shuffle_anomalous={probability}")
    assert train(cfg)["status"] == "interrupted"
    state = json.loads((tmp_path / "moe_results" / "checkpoint-001" / "trainer_state.json").read_text())
    assert steps == (list(range(state["global_step"])) if expect_calls else [])


UNSUPERVISED = ("training.objective=unsupervised", "unsupervised.unseen_lines=16")


@pytest.mark.parametrize(("settings", "calibrate"), [
    ((), True), (("training.novelty_calibration=false",), False),
    # unsupervised: fitted when the threshold comes from eval's labels, not when it is the label-free alert rate
    ((*UNSUPERVISED, "training.threshold_objective=f1"), True), (UNSUPERVISED, False)])
def test_never_seen_fatal_lines_of_the_eval_failures_are_weighed_into_the_stored_score(
        make_config: Callable[..., TrainConfig], world: Path, tmp_path: Path, settings: tuple[str, ...],
        calibrate: bool) -> None:
    # the eval period's failures, and no normal session, end with a fatal line training never held
    new_failure = "2026-03-14T09:00:01.000Z FATAL storage[77]: mount of volume vol-3 failed, giving up"
    eval_file = tmp_path / "dev_new_failure.jsonl"
    with eval_file.open("w", encoding="utf-8") as out:
        for line in (world / "dev.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["label"] != "正常":
                record["log_sequence"] += "\n" + new_failure
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    cfg = make_config(tmp_path / "run", f'data.eval=["{eval_file}"]', "training.epochs_stage1=1",
                      "training.epochs_stage2=1", *settings)
    result = train(cfg)
    model_dir = cfg.output_path / "final_moe_model"
    stored = json.loads((model_dir / "config.json").read_text())["novelty_calibration"]
    if not calibrate:
        assert stored is None
        return
    assert fatal_weight(stored) > 0 and stored["weights"]["error"] == stored["weights"]["warn"] == 0.0
    metrics = evaluate(EvalConfig(model=str(model_dir), data=[str(eval_file)], device="cpu"))
    assert metrics["f1"] == result["eval"]["f1"] and metrics["threshold"] == result["eval"]["threshold"]
    assert metrics["pr_auc"] == pytest.approx(1.0)  # the new line now tells every failure apart


def test_the_novelty_fit_reads_what_the_classifier_says_of_the_lines_training_held(
        make_config: Callable[..., TrainConfig], world: Path, new_failure_train: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from model.novelty import SEEN_ONLY
    from train import pipeline

    new_failure = "2026-03-14T09:00:01.000Z FATAL disk[12]: controller offline, journal lost"  # train has none
    eval_file = tmp_path / "dev_new_failure.jsonl"  # eval's failures end with it
    records = [json.loads(line) for line in (world / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
    for record in records:
        if record["label"] != "正常":
            record["log_sequence"] += "\n" + new_failure
    eval_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    seen: list[tuple[Any, ...]] = []
    fit = pipeline.fit_novelty
    monkeypatch.setattr(pipeline, "fit_novelty", lambda *args: seen.append(args) or fit(*args))
    cfg = make_config(tmp_path / "run", f'data.train=["{new_failure_train}"]', f'data.eval=["{eval_file}"]',
                      "training.epochs_stage1=1", "training.epochs_stage2=1")
    train(cfg)
    (scores, flags, labels, crossfit), = seen
    scorer = load_scorer(str(cfg.output_path / "final_moe_model"), "cpu", 256)
    sessions = load_jsonl(eval_file)
    scorer.set_novelty_calibration(None)
    every_line = score_sessions(scorer, sessions, hop=cfg.training.hop)
    scorer.set_novelty_calibration(SEEN_ONLY)
    assert scores == pytest.approx(score_sessions(scorer, sessions, hop=cfg.training.hop).scores, abs=1e-6)
    new = [any(f) for f in flags]
    assert any(new) and all(abs(a - b) > 1e-6 for a, b, n in zip(scores, every_line.scores, new) if n)
    # the cross-fit's auxiliary classifier too: seen lines alone for the fit, every line for novel_misses
    assert crossfit is not None
    cross_new = [any(f) for f in crossfit.flags]
    assert any(cross_new) and all(
        (abs(a - b) > 1e-6) == n for a, b, n in zip(crossfit.scores, crossfit.classifier_scores, cross_new))


@pytest.mark.parametrize("crossfit", [0.3, 0.0])
def test_a_failure_new_in_the_later_part_of_train_teaches_the_novelty_fit_that_eval_cannot(
        make_config: Callable[..., TrainConfig], new_failure_train: Path, tmp_path: Path, crossfit: float) -> None:
    cfg = make_config(tmp_path, f'data.train=["{new_failure_train}"]', "training.epochs_stage1=1",
                      "training.epochs_stage2=1", f"training.novelty_crossfit={crossfit}")
    result = train(cfg)
    stored = json.loads((cfg.output_path / "final_moe_model" / "config.json").read_text())["novelty_calibration"]
    if not crossfit:
        assert stored is None and result["novelty_crossfit"] is None  # eval alone holds no never-seen line
        return
    assert result["novelty_crossfit"]["status"] == "trained and scored"
    assert result["novelty_crossfit"]["later_with_never_seen"] > 0
    assert fatal_weight(stored) > 0 and stored == result["novelty_calibration"]
    # eval shows no failure only novelty tells, the cross-fit sessions do: the threshold was chosen on them too
    # (measured: F1 0.88 there; 0.68 with a threshold from eval alone)
    assert result["novelty_crossfit"]["novel_misses"]["eval"] == 0 < result["novelty_crossfit"]["novel_misses"][
        "crossfit"] and result["novelty_crossfit"]["threshold_over_both"]
    assert result["novelty_crossfit"]["at_threshold"]["f1"] > 0.8
    aux = cfg.output_path / "novelty_crossfit"
    assert (aux / "metrics.json").exists() and not (aux / "final_moe_model").exists()
    assert not (aux / "moe_results").exists()


def test_novel_misses_counts_failures_with_a_never_seen_line_under_the_max_f1_cut() -> None:
    scores = [0.9, 0.8, 0.3, 0.28, 0.26, 0.24, 0.22, 0.2, 0.15, 0.1, 0.05, 0.03, 0.02]
    labels = [1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1]
    new = {0: 0, 9: 0, 11: 3, 12: 3}  # session -> the group of its never-seen line
    flags = [[1.0 if new.get(n) == g else 0.0 for g in range(4)] for n in range(len(scores))]
    assert calibrate_threshold(labels, scores) > 0.3  # the max-F1 cut takes the two top failures only
    # missed and holding a never-seen line: 0.1 and 0.02; not 0.9 (caught), 0.05 (no new line), 0.03 (normal)
    assert novel_misses(scores, flags, labels) == 2


def test_the_threshold_stays_on_eval_when_eval_shows_as_many_failures_only_novelty_tells(
        make_config: Callable[..., TrainConfig], new_failure_train: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from train import pipeline

    monkeypatch.setattr(pipeline, "novel_misses", lambda scores, flags, labels: 3)  # the same in both sets
    cfg = make_config(tmp_path, f'data.train=["{new_failure_train}"]', "training.epochs_stage1=1",
                      "training.epochs_stage2=1")
    result = train(cfg)
    crossfit = result["novelty_crossfit"]
    assert crossfit["novel_misses"] == {"eval": 3, "crossfit": 3} and not crossfit["threshold_over_both"]
    assert fatal_weight(result["novelty_calibration"]) > 0  # the weights still learn from the cross-fit
    sessions = load_jsonl(cfg.data.eval[0])  # the threshold is the one calibration picks on the eval scores alone
    scores = score_sessions(load_scorer(str(cfg.output_path / "final_moe_model"), "cpu", 256), sessions,
                            hop=cfg.training.hop).scores
    assert result["threshold"] == pytest.approx(calibrate_threshold([s.label for s in sessions], scores), abs=1e-6)


def test_the_threshold_is_said_to_be_chosen_over_the_crossfit_only_when_it_was(
        make_config: Callable[..., TrainConfig], new_failure_train: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from train import pipeline

    misses = iter([0, 5, 0, 5])  # eval, then the cross-fit sessions (these hold the failures only novelty tells)
    monkeypatch.setattr(pipeline, "novel_misses", lambda scores, flags, labels: next(misses))
    settings = [f'data.train=["{new_failure_train}"]', "training.epochs_stage1=1", "training.epochs_stage2=1"]
    # a threshold by alert rate is not chosen over anything labelled, however the cross-fit sessions look
    by_rate = train(make_config(tmp_path / "rate", *settings, "training.threshold_objective=rate"))
    assert by_rate["novelty_calibration"] is not None and by_rate["novelty_crossfit"]["threshold_over_both"] is False
    monkeypatch.setattr(pipeline, "fit_novelty", lambda *args: None)  # e.g. a fit that gave the margin scale <= 0
    cfg = make_config(tmp_path / "f1", *settings)
    result = train(cfg)
    crossfit = result["novelty_crossfit"]
    assert crossfit["novel_misses"] == {"eval": 0, "crossfit": 5} and crossfit["threshold_over_both"] is False
    assert result["novelty_calibration"] is None and "at_threshold" not in crossfit
    sessions = load_jsonl(cfg.data.eval[0])  # no calibrated cross-fit scores to choose over: eval alone
    scores = score_sessions(load_scorer(str(cfg.output_path / "final_moe_model"), "cpu", 256), sessions,
                            hop=cfg.training.hop).scores
    assert result["threshold"] == pytest.approx(calibrate_threshold([s.label for s in sessions], scores), abs=1e-6)


@pytest.mark.parametrize(("report", "world_size", "reason"), [
    ({"later_with_never_seen": 0, "earlier": {"n": 9, "n_anomalous": 2}, "later": {"n": 4, "n_anomalous": 1}}, 1,
     "the later part holds no line the earlier part does not"),
    ({"later_with_never_seen": 2, "earlier": {"n": 1, "n_anomalous": 1}, "later": {"n": 4, "n_anomalous": 1}}, 2,
     "the earlier part has fewer sessions (1) than processes (2)"),
    ({"later_with_never_seen": 2, "earlier": {"n": 9, "n_anomalous": 2}, "later": {"n": 4, "n_anomalous": 4}}, 1,
     "the later part holds one class only"),
    ({"later_with_never_seen": 2, "earlier": {"n": 9, "n_anomalous": 0}, "later": {"n": 4, "n_anomalous": 1}}, 1,
     "the earlier part holds one class only"),
    ({"later_with_never_seen": 2, "earlier": {"n": 9, "n_anomalous": 2}, "later": {"n": 4, "n_anomalous": 1}}, 2, None),
])
def test_the_crossfit_says_why_it_cannot_run(report: dict[str, Any], world_size: int, reason: str | None) -> None:
    from train.pipeline import _crossfit_skip_reason

    assert _crossfit_skip_reason(report, world_size) == reason
