import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def logmoe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_stream_subcommands_are_registered() -> None:
    out = logmoe("--help")
    assert out.returncode == 0
    for name in ("worker", "replay", "alerts", "broker", "demo"):
        assert name in out.stdout


@pytest.mark.slow  # imports torch and transformers before it can say the folder is missing
def test_worker_with_a_missing_model_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_model_here"
    out = logmoe("worker", "--broker", "127.0.0.1:1", "--model", str(missing))
    assert out.returncode == 2
    assert "logmoe: error:" in out.stderr and "no_model_here" in out.stderr


def test_worker_with_a_bad_session_regex_fails_naming_it() -> None:
    out = logmoe("worker", "--session-key", "(unclosed", "--model", "x")
    assert out.returncode == 2 and "(unclosed" in out.stderr


def test_replay_of_a_missing_file_names_it(tmp_path: Path) -> None:
    out = logmoe("replay", str(tmp_path / "nope.log"), "--bootstrap", "127.0.0.1:1")
    assert out.returncode == 2 and "nope.log" in out.stderr


def test_demo_summary_counts_against_the_labels() -> None:
    from stream.demo import summarize

    labels = {"a": 1, "b": 1, "c": 0, "d": 0}
    assert summarize(labels, {"a", "c"}) == {"sessions": 4, "anomalies_injected": 2, "alerted": 2, "detected": 1,
                                             "missed": 1, "false_alarms": 1}
