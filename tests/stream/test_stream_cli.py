import json
import shutil
import subprocess
import sys
import time
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


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model import LogMoEConfig, LogMoEForSequenceClassification

    folder = tmp_path_factory.mktemp("model") / "final_moe_model"
    config = LogMoEConfig(input_dim=16, hidden_size=32, num_attention_heads=4, expert_intermediate_size=32,
                          max_window=8)
    LogMoEForSequenceClassification(config).save_pretrained(folder)
    return folder


def broken_copy(saved: Path, root: Path, fault: str) -> Path:
    folder = root / f"model-{fault}"
    shutil.copytree(saved, folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    if fault == "missing":
        shutil.rmtree(folder)
    elif fault == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif fault == "pickle_only":
        weights.rename(folder / "pytorch_model.bin")
    elif fault == "newer_format":
        config.write_text(json.dumps({**json.loads(config.read_text()), "logmoe_format": 7}))
    elif fault == "wrong_type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "bert"}))
    return folder


@pytest.mark.parametrize("fault, fragment", [
    ("missing", "does not exist"), ("truncated", "is truncated"), ("pickle_only", "never unpickles"),
    ("newer_format", "logmoe_format 7 is not supported"), ("wrong_type", "is not a LogMoE config"),
])
def test_worker_with_a_bad_model_fails_at_start_with_one_line_naming_it(saved_model: Path, tmp_path: Path,
                                                                        fault: str, fragment: str) -> None:
    """Before torch is imported and before any broker is contacted (port 1: nothing listens there)."""
    folder = broken_copy(saved_model, tmp_path, fault)
    started = time.monotonic()
    out = logmoe("worker", "--broker", "127.0.0.1:1", "--model", str(folder))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line, no traceback
    assert out.stderr.startswith("logmoe: error:") and str(folder) in out.stderr and fragment in out.stderr
    assert time.monotonic() - started < 60


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


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_an_unreachable_broker_is_one_error_line_naming_it_for_worker_replay_and_alerts(
        tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """Issue 18.6: kafka-python's KafkaTimeoutError ("Unable to bootstrap from [...]") ended in a traceback.
    Nothing listens on port 1; the three run side by side (each waits out the client's 30 s bootstrap timeout)."""
    from model import LogMoEConfig, LogMoEForSequenceClassification

    model = tmp_path / "final_moe_model"
    LogMoEForSequenceClassification(LogMoEConfig(
        input_dim=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_experts=2,
        expert_intermediate_size=16, max_window=8, window_hop=4, encoder_name_or_path=str(tiny_encoder_dir),
    )).save_pretrained(model)
    log = tmp_path / "in.log"
    log.write_text("INFO hello request_id=a\n", encoding="utf-8")
    commands = {"create the worker's topics": ["worker", "--broker", "127.0.0.1:1", "--model", str(model)],
                "replay in.log into logs": ["replay", str(log), "--bootstrap", "127.0.0.1:1", "--no-progress"],
                "read alerts": ["alerts", "--bootstrap", "127.0.0.1:1", "--timeout", "1"]}
    procs = {purpose: subprocess.Popen([sys.executable, "-m", "model.cli", *args], cwd=tmp_path, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for purpose, args in commands.items()}
    for purpose, proc in procs.items():
        _, err = proc.communicate(timeout=150)
        lines = err.strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("logmoe: error:")]
        assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
        assert errors == [lines[-1]] and lines[-1].startswith(
            f"logmoe: error: no Kafka broker answered at 127.0.0.1:1 to {purpose} (KafkaTimeoutError); check")
        if purpose != "create the worker's topics":
            assert lines == errors  # the tools print nothing else
