"""End to end: a model trained on a generated world, `logmoe worker` on the embedded broker, the world's
stream replayed with `logmoe replay`, alerts read back with kafka-python."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from offline import offline_flags
from stream.tools import consume_alerts

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.encoder]

REPO = Path(__file__).resolve().parents[2]


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
