"""The training CLI's settings: `--set key=value` on train, evaluate and score, train's positional KEY=VALUE, and
multi-file options that never swallow a setting (issue 17)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.cli import build_parser, main
from model.config_io import load_config
from train.cli import eval_config, split_settings, train_overrides
from train.config import DataSection, TrainConfig, load_eval_config


def train_config_of(argv: list[str]) -> TrainConfig:
    return load_config(TrainConfig, None, train_overrides(build_parser().parse_args(argv)))


def test_the_issue_command_takes_the_override_not_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`logmoe train --data x.jsonl model.top_p=0.9` failed with `data file not found: model.top_p=0.9`."""
    monkeypatch.chdir(tmp_path)
    Path("x.jsonl").write_text('{"log_sequence": "a", "label": 0}\n')
    cfg = train_config_of(["train", "--data", "x.jsonl", "model.top_p=0.9"])
    assert cfg.data.train == ["x.jsonl"] and cfg.model.top_p == 0.9
    cfg = train_config_of(["train", "--data", "x.jsonl", "y.jsonl", "--eval-data", "d.jsonl",
                           "data.split=chronological", "training.seed=7"])
    assert (cfg.data.train, cfg.data.eval, cfg.data.split, cfg.training.seed) == (
        ["x.jsonl", "y.jsonl"], ["d.jsonl"], "chronological", 7)


def test_set_positional_and_swallowed_spellings_agree() -> None:
    spellings = [
        ["train", "--data", "a.jsonl", "--set", "model.top_p=0.9", "--set", "training.epochs_stage1=1"],
        ["train", "--data", "a.jsonl", "--", "model.top_p=0.9", "training.epochs_stage1=1"],
        ["train", "model.top_p=0.9", "training.epochs_stage1=1", "--data", "a.jsonl"],
        ["train", "--data", "a.jsonl", "model.top_p=0.9", "--set", "training.epochs_stage1=1"],
    ]
    configs = [train_config_of(argv) for argv in spellings]
    assert all(cfg == configs[0] for cfg in configs)
    assert configs[0].model.top_p == 0.9 and configs[0].training.epochs_stage1 == 1
    # the last setting of a key wins: named flags, then KEY=VALUE, then --set
    cfg = train_config_of(["train", "--data", "a.jsonl", "--seed", "1", "training.seed=2", "--set", "training.seed=3"])
    assert cfg.training.seed == 3
    assert train_config_of(["train", "--seed", "1", "training.seed=2"]).training.seed == 2


def test_only_settings_leave_a_file_list(tmp_path: Path) -> None:
    existing = tmp_path / "run=3.jsonl"
    existing.write_text("")
    values = [str(existing), "model.top_p=0.9", "logs/day=1/x.jsonl", "a==b", "x.jsonl", "data.labels_csv=[a, b]"]
    assert split_settings(values) == ([str(existing), "logs/day=1/x.jsonl", "x.jsonl"],
                                      ["model.top_p=0.9", "a==b", "data.labels_csv=[a, b]"])
    assert split_settings(None) == ([], [])


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--model", "m", "--data", "dev.jsonl", "threshold=0.3"],
     "--data takes files, and 'threshold=0.3' is not a file: write settings as --set threshold=0.3"),
    (["score", "--model", "m", "dev.jsonl", "hop=4", "data.format=keyed_log"],
     "score takes files, and 'hop=4', 'data.format=keyed_log' are not files: write settings as --set hop=4 "
     "--set data.format=keyed_log"),
])
def test_evaluate_and_score_refuse_a_swallowed_setting_in_one_line(argv: list[str], message: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before the model (which does not exist here) is read."""
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"logmoe: error: {message}"]


@pytest.mark.parametrize("command", [["evaluate", "--model", "m", "--data"], ["score", "--model", "m"]])
def test_a_missing_data_file_is_named_before_the_model_loads(command: list[str], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The model folder `m` does not exist either: the data file is checked first, so a typo costs no model load."""
    present = tmp_path / "dev.jsonl"
    present.write_text('{"log_sequence": "a", "label": 0}\n')
    assert main([*command, str(present), str(tmp_path / "dve.jsonl")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"logmoe: error: data file not found: {tmp_path}/dve.jsonl"]


def test_eval_settings_and_their_precedence() -> None:
    cfg = load_eval_config("m", ["dev.log"], ["threshold=0.3", "hop=8", "batch_size=16", "data.format=keyed_log",
                                              "data.labels_csv=dev_labels.csv", "data.key_regex=(req=\\w+)"])
    assert (cfg.threshold, cfg.hop, cfg.batch_size, cfg.data) == (0.3, 8, 16, ["dev.log"])
    assert cfg.source == DataSection(format="keyed_log", labels_csv="dev_labels.csv", key_regex=r"(req=\w+)")
    args = build_parser().parse_args(["evaluate", "--model", "m", "--data", "d.jsonl", "--threshold", "0.5",
                                      "--device", "cpu", "--set", "threshold=0.25"])
    cfg = eval_config(args, args.data)
    assert (cfg.threshold, cfg.device, cfg.batch_size, cfg.hop) == (0.25, "cpu", 256, None)


@pytest.mark.parametrize("setting, message", [
    ("top_p=0.9", "unknown setting 'top_p' for evaluation; allowed: batch_size, device, hop, skip_invalid, "
                  "threshold, data.KEY (format, key_regex, labels_csv, eval_labels_csv"),
    ("model=other", "unknown setting 'model' for evaluation (the model folder is --model)"),
    ("data.split=chronological", "unknown setting 'data.split' for evaluation; data keys: data.format, "),
    ("data.format=csv", "data.format must be one of jsonl, keyed_log, labelled_csv, labelled_log ('csv')"),
    ("threshold=2", "threshold must be in [0, 1] (2.0)"),
    ("hop=many", "settings: hop: expected an integer, got 'many'"),
])
def test_bad_eval_settings_are_named(setting: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        load_eval_config("m", ["d.jsonl"], [setting])
    assert message in str(err.value)


@pytest.mark.slow
def test_keyed_logs_with_per_split_labels_train_evaluate_and_score(keyed_split: Path, tiny_encoder_dir: Path,
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Per-split label files through the CLI, every setting as --set; evaluate reads the dev log as training did."""
    out = tmp_path / "run"
    keyed = ["--set", "data.format=keyed_log", "--set", f"data.labels_csv={keyed_split / 'train_labels.csv'}",
             "--set", f"data.eval_labels_csv={keyed_split / 'dev_labels.csv'}"]
    tiny = [f"encoder.name_or_path={tiny_encoder_dir}", "model.hidden_size=32", "model.num_attention_heads=4",
            "model.expert_intermediate_size=64", "training.epochs_stage1=1", "training.epochs_stage2=1"]
    assert main(["train", "--data", str(keyed_split / "train_stream.log"), "--eval-data",
                 str(keyed_split / "dev_stream.log"), *keyed, "--output-dir", str(out), "--device", "cpu", "--json",
                 *[arg for setting in tiny for arg in ("--set", setting)]]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert (trained["data"]["train"]["n"], trained["data"]["eval"]["n"], trained["eval"]["n_anomalous"]) == (24, 12, 3)
    model = str(out / "final_moe_model")

    assert main(["evaluate", "--model", model, "--data", str(keyed_split / "dev_stream.log"), *keyed, "--json",
                 "--set", "device=cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("n", "n_anomalous", "threshold", "confusion_matrix", "f1"):
        assert metrics[key] == trained["eval"][key], key

    for threshold, expected in ((0.0, True), (1.0, False)):
        assert main(["score", "--model", model, str(keyed_split / "dev_stream.log"), *keyed,
                     "--set", f"threshold={threshold}", "--device", "cpu"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(rows) == 12 and all(row["anomalous"] is expected for row in rows)


@pytest.mark.slow
@pytest.mark.encoder
def test_the_issue_command_trains(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The command of the issue, run for real (default config and encoder) in a folder holding x.jsonl, with one
    more positional setting that keeps it short: the default budget of 250 steps per epoch took 4 minutes here."""
    monkeypatch.chdir(tmp_path)
    lines = (world / "train.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    Path("x.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["train", "--data", "x.jsonl", "model.top_p=0.9", "training.min_steps_per_epoch=0"]) == 0
    assert "model: runs/train/final_moe_model" in capsys.readouterr().out
    stored = json.loads((tmp_path / "runs" / "train" / "final_moe_model" / "config.json").read_text())
    assert stored["top_p"] == 0.9


def test_unlabelled_metrics_print_the_alert_rate_and_what_a_gap_set_apart() -> None:
    from train.cli import format_metrics

    unlabelled = {"n": 200, "n_anomalous": None, "threshold": 0.3, "accuracy": None, "precision": None, "recall": None,
                  "f1": None, "pr_auc": None, "roc_auc": None, "confusion_matrix": None, "alert_rate": 0.035}
    assert "  alert rate   0.0350\n" in format_metrics(unlabelled, "eval") + "\n"
    text = format_metrics({**unlabelled, "rate_outliers": 7}, "eval")
    assert "  alert rate   0.0350 (7 windows set apart by a gap in the scores)" in text and "confusion" not in text
