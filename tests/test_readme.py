"""README's "Train on your own logs": every block marked `<!-- own-logs: NAME -->` is run as written on slices of
the real data (the first lines of each file under ../shared/data, in a folder laid out like the repository's
neighbourhood), with tiny model sizes added through --set. A wrong flag, key or path in a README command fails
here; so does printed output whose shape no longer matches what the command prints.

The stream blocks run without a broker: the broker, the worker's Faust loop, replay and alerts are stood in for
at the point where they would connect, after argument parsing and configuration, so what is checked is that the
commands parse, that the worker's config loads the trained model and keys the replayed lines into the sessions
training used, and that worker, replay and alerts meet on one broker and on the same topics.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.checkpoint import check_model_folder
from model.cli import build_parser, main
from model.config_io import load_config
from stream.records import SessionKeyer
from train.adapters import labelled_lines_from_log
from train.cli import train_overrides
from train.config import TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- own-logs: (?P<name>[\w-]+)(?P<printed> printed)? -->\n```\w*\n(?P<body>.*?)```", re.S)
DATA_PREFIX = "../shared/data/"
SLICE_LINES = {"train": 3000, "other": 2000}  # first lines of each log file; label CSVs are copied whole


def readme_blocks() -> tuple[dict[str, str], dict[str, str]]:
    """(commands, printed output) by block name."""
    commands: dict[str, str] = {}
    printed: dict[str, str] = {}
    for found in BLOCK.finditer(README.read_text(encoding="utf-8")):
        (printed if found["printed"] else commands)[found["name"]] = found["body"]
    return commands, printed


def command_lines(body: str) -> list[str]:
    """One shell command a line: continuations joined, blank and comment-only lines dropped."""
    return [line for line in body.replace("\\\n", " ").splitlines() if shlex.split(line, comments=True)]


def shape(text: str) -> list[str]:
    """Printed text with every number as # and runs of blanks as one: what stays when the data changes."""
    return [" ".join(re.sub(r"\d[\d,]*(\.\d+)?", "#", line).split()) for line in text.strip().splitlines()]


TINY = ["model.hidden_size=32", "model.num_attention_heads=4", "model.expert_intermediate_size=64",
        "model.num_hidden_layers=1", "training.epochs_stage1=1", "training.epochs_stage2=1",
        "training.min_steps_per_epoch=0", "training.device=cpu"]


@pytest.fixture()
def neighbourhood(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/repo (the working directory) beside tmp/shared/data, which gets slices of the files a block names."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    return repo


def make_slices(body: str, repo: Path, shared_data: Path) -> None:
    for name in sorted(set(re.findall(re.escape(DATA_PREFIX) + r"[\w./-]+", body))):
        source = shared_data / name[len(DATA_PREFIX):]
        target = repo / name
        if target.exists():
            continue
        assert source.is_file(), f"README names {name}, which is not in {shared_data}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".csv":
            shutil.copyfile(source, target)
            continue
        count = SLICE_LINES["train" if "train" in source.name else "other"]
        with source.open(encoding="utf-8") as handle, target.open("w", encoding="utf-8") as out:
            for _, line in zip(range(count), handle):
                out.write(line)


class StandIns:
    """What the stream commands would hand to a broker, recorded instead of sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.broker_ports: list[int] = []
        self.workers: list[Any] = []
        self.replays: list[dict[str, Any]] = []
        self.alert_reads: list[dict[str, Any]] = []
        monkeypatch.setattr("stream.broker.run_foreground", self._broker)
        monkeypatch.setattr("stream.worker.run_worker", self._worker)
        monkeypatch.setattr("stream.tools.replay", self._replay)
        monkeypatch.setattr("stream.tools.consume_alerts", self._alerts)

    def _broker(self, port: int = 0, data_dir: Any = None, host: str = "127.0.0.1") -> int:
        self.broker_ports.append(port)
        return 0

    def _worker(self, cfg: Any, scorer: Any = None) -> int:
        check_model_folder(cfg.model)  # what the worker checks before it loads the model
        self.workers.append(cfg)
        return 0

    def _replay(self, path: str, bootstrap: Any, **kwargs: Any) -> dict[str, int]:
        self.replays.append({"path": Path(path), "bootstrap": list(bootstrap), **kwargs})
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return {"sent": len(lines), "skipped": 0}

    def _alerts(self, bootstrap: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.alert_reads.append({"bootstrap": list(bootstrap), **kwargs})
        return iter(())


def run_block(body: str, repo: Path, tiny_encoder_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run each command of a block as written (logmoe in-process, anything else in bash); train gets tiny sizes
    through --set. Returns what the logmoe commands printed."""
    printed = []
    for line in command_lines(body.replace("/tmp/", f"{repo.parent}/")):
        argv = shlex.split(line, comments=True)
        if argv[0] != "logmoe":
            subprocess.run(["bash", "-c", line], cwd=repo, check=True, timeout=60)
            continue
        if argv[1] == "train":
            tiny = [f"encoder.name_or_path={tiny_encoder_dir}", *TINY]
            argv += [arg for setting in tiny for arg in ("--set", setting)]
        code = main(argv[1:])
        out = capsys.readouterr().out
        assert code == 0, f"{line}\n{out}"
        printed.append(out)
    return "".join(printed)


def train_config_of(body: str) -> TrainConfig:
    """The TrainConfig a block's `logmoe train` command builds."""
    argv = shlex.split(next(line for line in command_lines(body) if line.startswith("logmoe train")), comments=True)
    return load_config(TrainConfig, None, train_overrides(build_parser().parse_args(argv[1:])))


def test_readme_has_the_own_logs_blocks() -> None:
    commands, printed = readme_blocks()
    assert sorted(commands) == ["bgl-evaluate", "bgl-stream", "bgl-train", "hdfs-evaluate", "hdfs-stream",
                                "hdfs-train"]
    assert sorted(printed) == ["bgl-evaluate", "bgl-train", "hdfs-evaluate", "hdfs-train"]
    for name in ("hdfs-train", "bgl-train"):
        assert train_config_of(commands[name]).data.format == ("keyed_log" if name == "hdfs-train" else "labelled_log")


def check_stream(stand_ins: StandIns, trained: TrainConfig, repo: Path) -> None:
    """The worker loads the model training wrote and keys the replayed lines as training did; worker, replay and
    alerts meet on one broker and the same topics."""
    (worker,), (replay,), (alerts,) = stand_ins.workers, stand_ins.replays, stand_ins.alert_reads
    assert Path(worker.model).resolve() == (repo / trained.output_dir / "final_moe_model").resolve()
    assert replay["bootstrap"] == alerts["bootstrap"] == worker.bootstrap_servers
    assert replay["topic"] == worker.topic_logs and alerts["topic"] == worker.topic_alerts
    keyer = SessionKeyer(worker.session_key, worker.catch_all_key)
    lines = replay["path"].read_text(encoding="utf-8").splitlines()
    if trained.data.format == "keyed_log":
        pattern = re.compile(trained.data.key_regex)
        assert replay["path"].resolve() == (repo / trained.data.eval[0]).resolve()
        assert [keyer.key_for(line) for line in lines] == [pattern.search(line).group(1) for line in lines]
        assert replay["key_regex"] and all(re.search(replay["key_regex"], line) for line in lines)
    else:  # one unkeyed stream, the eval file's lines with the label cut out, as training read them
        assert {keyer.key_for(line) for line in lines} == {worker.catch_all_key}
        expected = labelled_lines_from_log(repo / trained.data.eval[0], trained.data.label_regex)
        assert lines == [text for text, _ in expected]


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["hdfs", "bgl"])
def test_readme_own_logs_commands_run_on_slices(name: str, neighbourhood: Path, shared_data: Path,
                                                tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    commands, printed = readme_blocks()
    repo = neighbourhood
    for step in ("train", "evaluate", "stream"):
        make_slices(commands[f"{name}-{step}"], repo, shared_data)
    trained = train_config_of(commands[f"{name}-train"])

    for step in ("train", "evaluate"):
        out = run_block(commands[f"{name}-{step}"], repo, tiny_encoder_dir, capsys)
        assert shape(out) == shape(printed[f"{name}-{step}"]), f"{name}-{step} prints differently now:\n{out}"

    stand_ins = StandIns(monkeypatch)
    run_block(commands[f"{name}-stream"], repo, tiny_encoder_dir, capsys)
    check_stream(stand_ins, trained, repo)


def test_the_two_stream_blocks_share_a_broker_but_no_topic_or_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """The HDFS and BGL workers run side by side: one broker, their own app id, input, sessions and alerts topics."""
    commands, _ = readme_blocks()
    configs = []
    for name in ("hdfs-stream", "bgl-stream"):
        worker = next(line for line in command_lines(commands[name]) if line.startswith("logmoe worker"))
        monkeypatch.setattr("stream.worker.run_worker", lambda cfg, scorer=None: configs.append(cfg) or 0)
        assert main(shlex.split(worker, comments=True)[1:]) == 0
    hdfs, bgl = configs
    assert hdfs.bootstrap_servers == bgl.bootstrap_servers
    for key in ("app_id", "topic_logs", "topic_sessions", "topic_alerts"):
        assert getattr(hdfs, key) != getattr(bgl, key), key
