"""The unsupervised objective: perturbations change what they say they change, batches are half perturbed and
never draw trimmed windows, the rate threshold flags the share it is asked to, label-free files are read, trimming
leaves out planted anomalies, and train -> evaluate round-trips without labels."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from train.config import DataSection, TrainConfig, TrainingSection, UnsupervisedSection
from train.data import Session, load_jsonl
from train.embeddings import WindowSet
from train.metrics import gap_outliers, rate_threshold
from train.sources import load_source
from train.unsupervised import (PerturbationObjective, Perturber, kept_session_counts, pack, rarity_trim_mask,
                                trim_mask, unseen_statements)

VOCAB = torch.arange(0, 20)  # rows of training lines
UNSEEN = torch.arange(100, 110)  # rows of never-seen statements
WINDOW = [0, 1, 2, 3, 4, 5, 6, 7]  # distinct rows, so every kind can be checked exactly


def perturber(*kinds: str, max_window: int = 10) -> Perturber:
    return Perturber(list(kinds), VOCAB, UNSEEN, max_window, max_changed=0.25)


def is_subsequence(short: list[int], long: list[int]) -> bool:
    rest = iter(long)
    return all(any(x == y for y in rest) for x in short)


@pytest.mark.parametrize("seed", range(25))
def test_each_perturbation_changes_the_window_as_named(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    most = max(1, int(0.25 * len(WINDOW)))  # lines one perturbation may change
    out, kind = perturber("shuffle").perturb(WINDOW, g)
    assert kind == "shuffle" and out != WINDOW and sorted(out) == WINDOW

    out, kind = perturber("move").perturb(WINDOW, g)
    assert kind == "move" and out != WINDOW and sorted(out) == WINDOW
    moved = [i for i in range(len(WINDOW)) if out.index(WINDOW[i]) != i]
    assert moved  # a block keeps its inner order: each line's successor in the block is still its successor
    assert sum(out[j + 1] != out[j] + 1 for j in range(len(out) - 1)) <= 3

    out, kind = perturber("drop").perturb(WINDOW, g)
    assert kind == "drop" and is_subsequence(out, WINDOW) and 1 <= len(WINDOW) - len(out) <= most

    out, kind = perturber("duplicate").perturb(WINDOW, g)
    assert kind == "duplicate" and is_subsequence(WINDOW, out) and 1 <= len(out) - len(WINDOW) <= most
    assert set(out) == set(WINDOW)  # the extra lines are the window's own

    for name, pool in (("replace", VOCAB), ("unseen", UNSEEN)):
        out, kind = perturber(name).perturb(WINDOW, g)
        changed = [i for i in range(len(WINDOW)) if out[i] != WINDOW[i]]
        assert kind == name and len(out) == len(WINDOW) and 1 <= len(changed) <= most
        assert all(int(out[i]) in pool.tolist() for i in changed)


@pytest.mark.parametrize("seed", range(25))
def test_a_burst_overwrites_one_run_of_lines_with_one_training_line(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    out, kind = perturber("burst").perturb(WINDOW, g)
    changed = [i for i in range(len(WINDOW)) if out[i] != WINDOW[i]]
    assert kind == "burst" and len(out) == len(WINDOW) and changed
    start, stop = changed[0], changed[-1] + 1
    row = out[start]
    assert row in VOCAB.tolist() and out[start:stop] == [row] * (stop - start)  # one line over one run
    assert out[:start] + out[stop:] == WINDOW[:start] + WINDOW[stop:]


def test_bursts_reach_the_whole_window() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = {sum(a != b for a, b in zip(perturber("burst").perturb(WINDOW, g)[0], WINDOW)) for _ in range(300)}
    assert len(WINDOW) in sizes and 1 in sizes  # beyond max_changed: a burst may fill the window


@pytest.mark.parametrize("seed", range(25))
def test_a_substitution_swaps_every_occurrence_of_one_line(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    window = [8, 8, 9, 8, 9, 9, 8]  # rows outside VOCAB, so every swapped-in row is told apart
    out, kind = perturber("substitute").perturb(window, g)
    assert kind == "substitute" and len(out) == len(window)
    (old,) = {a for a, b in zip(window, out) if a != b}
    (new,) = {b for a, b in zip(window, out) if a != b}
    assert new in VOCAB.tolist()
    assert out == [new if row == old else row for row in window]  # all of them: the window's mix of lines is kept


def test_duplicating_a_full_window_keeps_max_window_lines() -> None:
    g = torch.Generator().manual_seed(0)
    full = list(range(10))
    for _ in range(20):
        out, kind = perturber("duplicate", max_window=10).perturb(full, g)
        assert len(out) <= 10 and (kind is None or out != full)


def test_a_window_no_kind_can_change_stays_real() -> None:
    g = torch.Generator().manual_seed(0)
    assert perturber("shuffle", "move").perturb([3, 3, 3], g) == ([3, 3, 3], None)  # reordering identical lines
    assert perturber("drop", "shuffle").perturb([5], g) == ([5], None)  # one line: nothing to drop or reorder
    assert Perturber(["unseen"], VOCAB, torch.zeros(0, dtype=torch.long), 10, 0.25).perturb(WINDOW, g) == (WINDOW,
                                                                                                            None)


def window_set(windows: list[list[int]]) -> WindowSet:
    index, lengths = pack(windows)
    n = len(windows)
    return WindowSet(index=index, lengths=lengths, labels=torch.zeros(n, dtype=torch.long),
                     session_index=torch.arange(n), session_labels=torch.zeros(n, dtype=torch.long),
                     session_ids=[str(i) for i in range(n)])


def objective(windows: list[list[int]], table: torch.Tensor, kinds: list[str], stage1_epochs: int = 1,
              **cfg: float | str) -> PerturbationObjective:
    """The objective over these index windows; table rows the windows do not use are the never-seen ones."""
    data = window_set(windows)
    vocab = torch.unique(torch.tensor([row for w in windows for row in w]))
    unseen = torch.arange(len(vocab), table.shape[0])
    return PerturbationObjective(data, table, Perturber(kinds, vocab, unseen, 16, 0.25),
                                 UnsupervisedSection(perturbations=kinds, **cfg), seed=1, eval_batch_size=64,
                                 stage1_epochs=stage1_epochs)


def test_batches_are_half_perturbed_and_labelled_by_what_changed() -> None:
    windows = [[i % 4, (i + 1) % 4, (i + 2) % 4] for i in range(40)]
    table = torch.randn(8, 5)  # rows 0-3 training lines, 4-7 never seen
    source = objective(windows, table, ["shuffle", "drop", "duplicate", "replace", "unseen"], trim_fraction=0.0)
    rows = torch.arange(32)
    embeds, mask, counts, labels = source.batch(rows, step=3)
    assert counts is None  # the objective's windows carry no row counts here
    assert embeds.shape == (32, int(mask.sum(dim=1).max()), 5) and labels.sum() == 16
    lengths = mask.sum(dim=1)
    for b in range(32):
        seen = [int(torch.nonzero((table == embeds[b, t]).all(dim=1))[0]) for t in range(int(lengths[b]))]
        assert (seen != windows[b]) == bool(labels[b])  # 1 exactly for the copies that differ from the real window
    again = source.batch(rows, step=3)
    # (seed, step) fixes a batch
    assert all(torch.equal(a, b) for a, b in zip((embeds, mask, labels), (again[0], again[1], again[3])))


def test_trim_mask_leaves_out_the_highest_scores() -> None:
    assert trim_mask(torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3]), 0.4).tolist() == [True, False, True, False, True]
    assert trim_mask(torch.tensor([0.5, 0.6]), 0.0).all()


def test_rarity_trimming_leaves_out_the_windows_of_the_rarest_lines() -> None:
    common = [[0, 0, 1, 0], [1, 1, 1], [0, 1], [2, 2, 0]] * 5  # line 2 in 5 of 20 windows, 0 and 1 in more
    windows = common[:7] + [[0, 7, 7, 1]] + common[7:14] + [[9], [0, 8]] + common[14:]  # 7, 8, 9: in one each
    windows.append([6] * 12)  # a burst: 12 lines, yet in one window only, so rarer than line 2
    index, lengths = pack(windows)
    kept = rarity_trim_mask(index, lengths, 4 / len(windows))
    assert [i for i, k in enumerate(kept.tolist()) if not k] == [7, 15, 16, len(windows) - 1]
    with_two = [i for i, w in enumerate(windows) if 2 in w]  # then the 5 windows of line 2, the next rarest
    kept = rarity_trim_mask(index, lengths, 9 / len(windows))
    assert sorted(i for i, k in enumerate(kept.tolist()) if not k) == sorted([7, 15, 16, 23] + with_two)
    # ties on the rarest line go to the rarer lines beside it: [9] and [6] (mean log 0) before [0, 8], [0, 7, 7, 1]
    kept = rarity_trim_mask(index, lengths, 2 / len(windows))
    assert [i for i, k in enumerate(kept.tolist()) if not k] == [15, 23]
    assert rarity_trim_mask(index, lengths, 0.0).all()


def test_rarity_trimming_happens_once_before_training() -> None:
    windows = [[0, 1]] * 19 + [[0, 5]]  # line 5 is in one window only
    source = objective(windows, torch.eye(8), ["substitute"], trim_fraction=0.05, trim_by="rarity")
    assert source.kept.tolist() == [True] * 19 + [False] and [t.epoch for t in source.trims] == [0]
    epoch = type("Epoch", (), {"index_in_stage": 3, "stage": 1})()
    source.start_epoch(torch.nn.Linear(1, 1), epoch)  # the model is never asked: no epoch trims again
    assert source.kept.tolist() == [True] * 19 + [False] and len(source.trims) == 1
    assert source.report()["trim_by"] == "rarity" and source.report()["trims"][0]["trimmed"] == 1


def test_perturbed_lines_carry_their_counts_and_never_seen_ones_zero() -> None:
    windows = [[0, 1, 2, 3] for _ in range(16)]
    table = torch.eye(8)  # rows 0-3 training lines, 4-7 never seen
    source = objective(windows, table, ["unseen"], trim_fraction=0.0)
    source.train_set.row_counts = torch.tensor([5, 6, 7, 8])  # (U,) over the training rows only
    embeds, mask, counts, labels = source.batch(torch.arange(16), step=0)
    rows = embeds.argmax(dim=-1)  # (B, T) the table row of each line
    assert labels.sum() == 8
    assert torch.equal(counts[mask], torch.tensor([5, 6, 7, 8, 0, 0, 0, 0])[rows[mask]])


def test_lines_only_trimmed_windows_hold_count_as_never_seen() -> None:
    data = window_set([[0, 1, 0], [0, 2], [3, 3], [1]])
    data.session_index = torch.tensor([0, 1, 1, 2])  # windows 1 and 2 are one session's
    kept = torch.tensor([True, True, False, True])
    counts = kept_session_counts(data, kept, ["a", "b", "c", "d"])
    assert counts == {"a": 2, "b": 2, "c": 1}  # "d" only in the trimmed window; a session counts a line once


def test_trimmed_rows_are_replaced_by_kept_ones() -> None:
    windows = [[i] for i in range(10)]  # window i is line i
    source = objective(windows, torch.eye(10), ["unseen"])  # unseen pool empty: nothing is perturbed
    source.kept = torch.tensor([i >= 5 for i in range(10)])
    embeds, _, _, labels = source.batch(torch.arange(10), step=4)
    assert labels.sum() == 0
    lines = embeds[:, 0].argmax(dim=-1).tolist()  # (B,) the row of each drawn window
    assert all(line >= 5 for line in lines) and lines[5:] == [5, 6, 7, 8, 9]


def test_rate_threshold_flags_the_share_asked_for_and_never_more() -> None:
    scores = [i / 100 for i in range(100)]  # 0.00 .. 0.99
    assert sum(s >= rate_threshold(scores, 0.03) for s in scores) == 3
    assert sum(s >= rate_threshold(scores, 0.001) for s in scores) == 1  # at least one window
    tied = [0.1] * 90 + [0.5] * 8 + [0.9] * 2  # the 5% cut falls inside the 0.5 tie: only the 0.9s are flagged
    assert sum(s >= rate_threshold(tied, 0.05) for s in tied) == 2
    with pytest.raises(ValueError, match=r"target_rate must be in \(0, 1\) \(1.5\)"):
        rate_threshold(scores, 1.5)


def scores_at(log_odds: list[float]) -> list[float]:
    return [1.0 / (1.0 + math.exp(-z)) for z in log_odds]


def flagged(scores: list[float], threshold: float) -> int:
    return sum(s >= threshold for s in scores)


def test_a_rate_threshold_never_cuts_inside_a_group_a_gap_sets_apart() -> None:
    bulk = [-4.0 + 2.0 * i / 969 for i in range(970)]  # log-odds evenly over [-4, -2]: interquartile range ~1
    apart = scores_at(bulk + [3.0 + i / 29 for i in range(30)])  # 30 windows 5 IQR above the rest
    assert gap_outliers(apart, 3.0) == 30
    assert flagged(apart, rate_threshold(apart, 0.01, gap=3.0)) == 30  # the rate's cut moved down into the gap
    assert flagged(apart, rate_threshold(apart, 0.01)) == 10  # gap 0: 1% of all windows, inside the 30
    assert flagged(apart, rate_threshold(apart, 0.05, gap=3.0)) == 50  # a rate that flags more: unchanged
    near = scores_at(bulk + [i / 29 for i in range(30)])  # a step of 2 IQR is no gap at 3
    assert gap_outliers(near, 3.0) == 0 and gap_outliers(near, 1.5) == 30
    # two groups above the bulk: the lowest gap ends it, so both are flagged
    two = scores_at(bulk + [3.0 + i / 19 for i in range(20)] + [12.0 + i / 9 for i in range(10)])  # steps: 5, 8 IQR
    assert gap_outliers(two, 3.0) == 30
    # a group of more than 5% of the windows is not a group set apart: the rate alone
    many = scores_at(bulk[:800] + [3.0 + i / 199 for i in range(200)])
    assert gap_outliers(many, 3.0) == 0 and flagged(many, rate_threshold(many, 0.01, gap=3.0)) == 10
    # a bulk so tight that a step of 0.5 in log-odds is 50 of its interquartile ranges: no gap, too narrow
    tight = scores_at([-3.0 + 0.04 * i / 969 for i in range(970)] + [-2.5 + i / 290 for i in range(30)])
    assert gap_outliers(tight, 3.0) == 0
    assert gap_outliers(scores_at([-3.0 + 0.04 * i / 969 for i in range(970)] + [-1.5 + i / 290 for i in range(30)]),
                        3.0) == 30  # 1.5 wide
    # a tied bulk (no interquartile range): a step at least MIN_GAP_LOG_ODDS wide above it is a gap
    tied = [0.01] * 95 + [0.6, 0.7, 0.8, 0.9, 0.95]
    assert gap_outliers(tied, 3.0) == 5 and flagged(tied, rate_threshold(tied, 0.01, gap=3.0)) == 5
    assert gap_outliers(tied[:19], 3.0) == 0  # too few scores for a share of 5% to hold one
    with pytest.raises(ValueError, match=r"gap must be a finite number >= 0 \(-1.0\)"):
        gap_outliers(tied, -1.0)


def test_training_stores_the_rate_threshold_with_its_gap_rule_and_says_what_the_gap_set_apart() -> None:
    from train.metrics import calibrate_threshold
    from train.pipeline import choose_threshold

    windows = scores_at([-4.0 + 2.0 * i / 969 for i in range(970)] + [3.0 + i / 29 for i in range(30)])
    rate = TrainingSection(objective="unsupervised", target_rate=0.01)  # threshold_objective rate, rate_gap 3
    threshold, apart = choose_threshold(rate, windows, [], [])
    assert (flagged(windows, threshold), apart) == (30, 30)
    threshold, apart = choose_threshold(TrainingSection(objective="unsupervised", rate_gap=0.0), windows, [], [])
    assert (flagged(windows, threshold), apart) == (10, 0)
    labels, sessions = [0, 0, 1, 1], [0.1, 0.3, 0.2, 0.9]  # f1 reads the labelled session scores, not the windows
    assert choose_threshold(TrainingSection(), windows, labels, sessions) == (calibrate_threshold(labels, sessions),
                                                                              None)


def test_unseen_statements_are_new_and_made_of_the_lines_words() -> None:
    lines = ["PacketResponder <NUM> for block <BLK> terminating", "Receiving block <BLK> src: <IP> dest: <IP>",
             "Deleting block <BLK> file <PATH>"]
    made = unseen_statements(lines, 50, seed=0)
    words = {w for line in lines for w in line.split()}
    assert len(made) == 50 == len(set(made)) and not set(made) & set(lines)
    assert all(set(m.split()) <= words for m in made)
    assert unseen_statements(["one"], 5, seed=0) == []  # a single word cannot be recombined


def test_label_free_files_are_read_only_by_the_unsupervised_objective(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"log_sequence": "a 1\nb 2"}) + "\n"
                    + json.dumps({"log_sequence": "c", "label": "异常"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing field 'label'"):
        load_jsonl(path)
    sessions = load_jsonl(path, require_labels=False)
    assert [(s.label, s.labelled) for s in sessions] == [(0, False), (1, True)]

    log = tmp_path / "k.log"
    log.write_text("x blk_1 a\ny blk_2 b\nz blk_1 c\n", encoding="utf-8")
    keyed = DataSection(format="keyed_log")  # no labels_csv at all
    with pytest.raises(ValueError, match="data.labels_csv is required"):
        load_source([str(log)], keyed, max_window=64)
    sessions, _ = load_source([str(log)], keyed, max_window=64, require_labels=False)
    assert [(s.session_id, s.lines, s.labelled) for s in sessions] == [
        ("blk_1", ("x blk_1 a", "z blk_1 c"), False), ("blk_2", ("y blk_2 b",), False)]
    with pytest.raises(ValueError, match="data.labels_csv is required"):
        TrainConfig(data=keyed)
    assert TrainConfig(data=keyed, training=TrainingSection(objective="unsupervised")).training.threshold_objective \
        == "rate"


def test_unlabelled_eval_data_needs_the_rate_threshold(make_config: Callable[..., TrainConfig],
                                                         tmp_path: Path) -> None:
    from train.pipeline import load_run_data

    cfg = make_config(tmp_path, "training.objective=unsupervised", "training.threshold_objective=f1")
    cfg.data.eval = [str(strip_labels(Path(cfg.data.eval[0]), tmp_path / "dev.jsonl"))]
    with pytest.raises(ValueError, match="training.threshold_objective=f1 needs labelled eval data"):
        load_run_data(cfg)


def strip_labels(source: Path, target: Path) -> Path:
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    target.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in records),
                      encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def unlabelled_run(make_config: Callable[..., TrainConfig], world: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[TrainConfig, dict]:
    """A tiny unsupervised model trained on the generated world with every label removed from train and dev."""
    from train.pipeline import train

    out = tmp_path_factory.mktemp("unlabelled")
    train_file, dev_file = strip_labels(world / "train.jsonl", out / "train.jsonl"), strip_labels(
        world / "dev.jsonl", out / "dev.jsonl")
    cfg = make_config(out / "run", f'data.train=["{train_file}"]', f'data.eval=["{dev_file}"]',
                      "training.objective=unsupervised", "training.target_rate=0.1", "unsupervised.unseen_lines=64")
    return cfg, train(cfg)


@pytest.mark.slow
def test_unlabelled_train_then_evaluate_round_trip(unlabelled_run: tuple[TrainConfig, dict], world: Path) -> None:
    from train.config import EvalConfig
    from train.evaluation import evaluate, load_scorer, score_sessions

    cfg, result = unlabelled_run
    model_dir = cfg.output_path / "final_moe_model"
    stored = json.loads((model_dir / "config.json").read_text())
    assert result["objective"] == "unsupervised" and stored["threshold"] == result["threshold"]
    assert result["eval"]["f1"] is None and result["eval"]["n_anomalous"] is None  # no labels, no F1
    # the stored threshold flags int(10%) of the eval windows, scored as the worker scores them, or more: every
    # window of a larger group a gap in the scores sets apart (train.pipeline.choose_threshold)
    sessions = load_jsonl(cfg.data.eval[0], require_labels=False)
    scores = score_sessions(load_scorer(str(model_dir), "cpu", 256), sessions, hop=cfg.training.hop)
    flagged = sum(s >= stored["threshold"] for s in scores.window_scores)
    ranked = sorted(scores.window_scores, reverse=True)
    k = int(0.1 * len(ranked))  # scores tied across the cut are all left unflagged (train.metrics.rate_threshold)
    by_rate = k if ranked[k - 1] != ranked[k] else sum(s > ranked[k] for s in ranked)
    apart = gap_outliers(scores.window_scores, cfg.training.rate_gap)
    assert result["eval"]["rate_outliers"] == apart and flagged == max(apart, by_rate)
    assert result["eval"]["alert_rate"] == pytest.approx(flagged / len(scores.window_scores))
    # the same model on the labelled dev file: evaluate scores at the stored threshold, flagging the same windows
    metrics = evaluate(EvalConfig(model=str(model_dir), data=[str(world / "dev.jsonl")], device="cpu"))
    assert metrics["threshold"] == stored["threshold"] and metrics["alert_rate"] == result["eval"]["alert_rate"]
    assert metrics["pr_auc"] == pytest.approx(result["eval"]["pr_auc"] or metrics["pr_auc"])
    log = [json.loads(line) for line in (cfg.output_path / "moe_logs" / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in log if "eval_perturbation_loss" in r]
    assert len(evals) == 6  # every epoch logs its label-free selection loss


def anomalous_windows(cfg: TrainConfig, sessions: list[Session]) -> int:
    """Training windows of the labelled-anomalous sessions: their windows, plus the prefix window each one gets
    (train_on_prefixes; without labels every line counts as normal, so every session can give one)."""
    from dataclasses import replace

    from model.early import EarlyRule
    from model.masking import mask
    from model.windowing import session_windows
    from train.early import prefix_windows

    masked = [tuple(mask(line) for line in s.lines) for s in sessions]
    row_of = {line: i for i, line in enumerate(dict.fromkeys(line for lines in masked for line in lines))}
    rule = EarlyRule(cfg.model.max_window, cfg.training.hop, cfg.training.early_hop)
    _, _, owners = prefix_windows([replace(s, label=0) for s in sessions], masked, row_of, frozenset(row_of), rule,
                                  cfg.training.seed)
    windows = sum(len(session_windows(list(s.lines), cfg.model.max_window, cfg.training.hop)) for s in sessions
                  if s.label)
    return windows + sum(sessions[owner].label for owner in owners)


@pytest.mark.slow
def test_labels_in_the_training_file_are_ignored(unlabelled_run: tuple[TrainConfig, dict], world: Path,
                                                 make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from train.pipeline import train

    cfg, result = unlabelled_run
    labelled = make_config(tmp_path, f'data.eval=["{cfg.data.eval[0]}"]', "training.objective=unsupervised",
                           "training.target_rate=0.1", "unsupervised.unseen_lines=64")  # train.jsonl with labels
    again = train(labelled)
    assert again["data_fingerprint"] == result["data_fingerprint"]
    first = load_file(str(cfg.output_path / "final_moe_model" / "model.safetensors"))
    second = load_file(str(tmp_path / "final_moe_model" / "model.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)
    # the labels it carried only report what trimming left out
    trims = again["unsupervised"]["trims"]
    assert trims and trims[-1]["anomalous"] == anomalous_windows(labelled, load_jsonl(world / "train.jsonl"))
    assert all("anomalous" not in t or t["anomalous"] is None for t in result["unsupervised"]["trims"])


@pytest.mark.slow
def test_cli_trains_unsupervised_from_label_free_files(unlabelled_run: tuple[TrainConfig, dict], tiny_encoder_dir: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from model.cli import main

    cfg, _ = unlabelled_run
    code = main(["train", "--objective", "unsupervised", "--data", cfg.data.train[0], "--eval-data", cfg.data.eval[0],
                 "--output-dir", str(tmp_path), "--device", "cpu", "--set", f"encoder.name_or_path={tiny_encoder_dir}",
                 "--set", "training.epochs_stage1=1", "--set", "training.epochs_stage2=1",
                 "--set", "training.min_steps_per_epoch=0", "--set", "model.hidden_size=32",
                 "--set", "model.num_attention_heads=4", "--set", "unsupervised.unseen_lines=16"])
    out = capsys.readouterr().out
    assert code == 0 and "(unlabelled)" in out and "alert rate   0.0" in out and "confusion" not in out
    assert json.loads((tmp_path / "metrics.json").read_text())["objective"] == "unsupervised"


@pytest.mark.slow
def test_model_trimming_leaves_out_the_planted_anomalies(make_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    """Real windows are one of three orders of lines 0-4; six planted anomalies hold the rare line 5. Trimming the
    5% most anomalous real windows (10 of 206) must leave out all six; the labels serve the check only."""
    from dataclasses import replace

    from train.loop import train_stages
    from train.pipeline import build_model

    gen = torch.Generator().manual_seed(0)
    table = torch.nn.functional.normalize(torch.randn(10, 32, generator=gen), dim=-1) * 4  # 0-5 lines, 6-9 unseen
    orders = [[0, 1, 2, 3, 4], [0, 2, 1, 3, 4], [0, 1, 2, 4, 3]]
    windows = [list(orders[i % 3]) for i in range(200)]
    planted = [[0, 1, 5, 3, 4], [0, 5, 2, 3, 4], [0, 1, 2, 3, 5], [5, 1, 2, 3, 4], [0, 2, 5, 3, 4], [0, 1, 2, 5, 3]]
    windows[10::33] = planted  # positions 10, 43, 76, 109, 142, 175
    known = torch.zeros(200, dtype=torch.long)
    known[10::33] = 1
    cfg = make_config(tmp_path, "training.objective=unsupervised", "training.epochs_stage1=3",
                      "training.epochs_stage2=1", "training.min_steps_per_epoch=40", "unsupervised.trim_fraction=0.05",
                      "unsupervised.trim_after_epochs=2", "unsupervised.trim_by=model",
                      "model.rarity_buckets=0")  # constructed windows: no line counts
    source = objective(windows, table, list(cfg.unsupervised.perturbations), stage1_epochs=3, trim_fraction=0.05,
                       trim_after_epochs=2, trim_by="model")
    source.known_labels = known
    model = build_model(cfg, 32, "constructed", "")
    data = window_set(windows)
    train_stages(model, table, data, data, replace(cfg.training, class_weighting="none"), tmp_path, {}, None,
                 lambda epoch, result: {"eval_perturbation_loss": source.eval_loss(model, data)},
                 batches=source, selection_key=source.selection_key)
    assert [t.epoch for t in source.trims] == [3, 4]  # epochs 3 and 4 start after two untrimmed ones
    assert source.trims[-1].trimmed == 10 and source.trims[-1].trimmed_anomalous == 6
    assert not source.kept[known == 1].any()


@pytest.mark.slow
def test_an_earlier_best_epoch_by_the_objectives_key_becomes_the_final_model(
        make_config: Callable[..., TrainConfig], world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The objective's selection key is one number, not (PR-AUC, -loss): choosing an epoch before the last by it must
    finish the run (it once failed in the log line that names the choice) and keep that epoch's weights."""
    from safetensors.torch import load_file

    from train.pipeline import train

    keys = iter([[0.1], [0.9], [0.5]])  # epoch 1 (stage 1), epochs 2 and 3 (stage 2): 2 is best
    monkeypatch.setattr(PerturbationObjective, "selection_key", lambda self, result, record: next(keys))
    cfg = make_config(tmp_path, "training.objective=unsupervised", "training.target_rate=0.1",
                      "unsupervised.unseen_lines=16", "training.epochs_stage1=1", "training.epochs_stage2=2")
    assert train(cfg)["status"] == "complete"
    results = tmp_path / "moe_results"
    state = json.loads((results / "checkpoint-003" / "trainer_state.json").read_text())
    assert (state["best_epoch"], state["best_key"]) == (2, [0.9])
    final = load_file(str(tmp_path / "final_moe_model" / "model.safetensors"))
    best = load_file(str(results / "checkpoint-002" / "model.safetensors"))
    assert all(torch.equal(final[k], best[k]) for k in best)


def test_the_unsupervised_objective_is_refused_in_a_data_parallel_run(
        make_config: Callable[..., TrainConfig], world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Its perturbed batches are not sharded over ranks: under torchrun, and with --nproc, one line says so before
    any process waits for another."""
    from model.cli import main
    from train.distributed import AllRanksError
    from train.pipeline import train

    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AllRanksError, match="training.objective=unsupervised trains in one process"):
        train(make_config(tmp_path, "training.objective=unsupervised", "training.dist_timeout_s=5"))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name)
    code = main(["train", "--nproc", "2", "--objective", "unsupervised", "--data", str(world / "train.jsonl"),
                 "--output-dir", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 2 and "--nproc 2: training.objective=unsupervised trains in one process" in err
    assert not (tmp_path / "cli").exists()
