"""End to end: a model trained on a generated world, `logmoe worker` on the embedded broker, the world's
stream replayed with `logmoe replay`, alerts read back with kafka-python."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stream.tools import consume_alerts

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.encoder]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A generated world and a model of the default size trained on it with the real default encoder (about
    20 s on CPU). The tiny random test encoder maps every line to nearly the same vector (cosine ~0.95), so a
    model on it cannot separate the world and the test could not tell a worker bug from a weak model."""
    from model.config_io import load_config
    from train import TrainConfig, train
    from train.generate import write_world

    root = tmp_path_factory.mktemp("world")
    write_world(root / "world", sessions=240, seed=7, dev_fraction=0.3, anomaly_rate=0.2)
    overrides = [
        f"data.train={json.dumps([str(root / 'world' / 'train.jsonl')])}",
        f"data.eval={json.dumps([str(root / 'world' / 'dev.jsonl')])}",
        f"output_dir={json.dumps(str(root / 'run'))}",
        "training.epochs_stage1=10", "training.epochs_stage2=10", "training.device=cpu",
    ]
    metrics = train(load_config(TrainConfig, None, overrides))
    return {"world": root / "world", "model": root / "run" / "final_moe_model", "metrics": metrics}


def offline_flags(model_dir: Path, world: Path) -> dict[str, bool]:
    """Per dev session: does the offline path (session_windows + LogScorer, max over windows) flag it?"""
    from model import LogScorer, session_windows
    from model.decision import is_anomalous

    from train.data import load_jsonl

    scorer = LogScorer.from_pretrained(model_dir, device="cpu")
    flags = {}
    for session in load_jsonl(world / "dev.jsonl"):
        windows = session_windows(list(session.lines), scorer.max_window, scorer.window_hop)
        flags[session.session_id] = is_anomalous(max(scorer.score(windows)), scorer.threshold)
    return flags


def replay(bootstrap: str, path: Path, topic: str) -> None:
    cmd = [sys.executable, "-m", "model.cli", "replay", str(path), "--topic", topic, "--bootstrap", bootstrap,
           "--key-regex", r"request_id=(\w+)", "--no-progress"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith("replayed ")


def collect(bootstrap: str, topic: str, quiet_for: float) -> list[dict[str, Any]]:
    return list(consume_alerts(bootstrap, topic, from_beginning=True, timeout=quiet_for))


@pytest.mark.timeout(240)
def test_worker_alerts_exactly_the_sessions_offline_scoring_flags(kafka, start_worker, names, trained_world):
    world, model_dir = trained_world["world"], trained_world["model"]
    labels = {r["session_id"]: int(r["label"]) for r in csv.DictReader((world / "stream_labels.csv").open())}
    worker = start_worker(model_dir, session_idle=4.0, **names)
    worker.wait_ready(90)
    lines = sum(1 for line in (world / "stream.log").read_text(encoding="utf-8").splitlines() if line.strip())
    replay(kafka.bootstrap, world / "stream.log", names["topic_logs"])
    m = worker.wait_drained(lines, 120)
    assert m["sessions_closed_idle"] == len(labels) and m["windows_scored"] >= len(labels)
    first = collect(kafka.bootstrap, names["topic_alerts"], quiet_for=3.0)
    alerted = {a["session"] for a in first}

    # The generated world is separable: every anomalous session alerted, no normal one.
    anomalous = {s for s, y in labels.items() if y}
    assert anomalous and alerted == anomalous, trained_world["metrics"].get("eval")
    # Train/serve parity: the worker alerts exactly the sessions the offline path flags with the same model.
    flags = offline_flags(model_dir, world)
    assert alerted == {s for s, flagged in flags.items() if flagged}
    alert = first[0]
    assert alert["threshold"] > 0 and alert["score"] >= alert["threshold"]
    assert sum(ln["suspicious"] for ln in alert["lines"]) >= 1 and alert["model"]["fingerprint"]

    # The same lines produced again are new input records, so a new incident: the same windows alert again, each
    # under a new alert_id (a consumer that drops redeliveries by id keeps them; test_faults checks that a
    # redelivery of the same records keeps its id).
    replay(kafka.bootstrap, world / "stream.log", names["topic_logs"])
    worker.wait_drained(2 * lines, 120)
    both = collect(kafka.bootstrap, names["topic_alerts"], quiet_for=3.0)
    second = [a for a in both if a["alert_id"] not in {f["alert_id"] for f in first}]
    windows = Counter((a["session"], a["window"]["end"]) for a in first)
    assert Counter((a["session"], a["window"]["end"]) for a in second) == windows
    assert len({a["alert_id"] for a in both}) == len(both) == 2 * len(first)
