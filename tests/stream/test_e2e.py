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
    replay(kafka.bootstrap, world / "stream.log", names["topic_logs"])
    worker.wait_for(lambda m: m.get("sessions_closed_idle", 0) >= len(labels) and m.get("open_sessions") == 0, 120)
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

    # The same input again gives the same alert ids (consumers drop redeliveries by id).
    replay(kafka.bootstrap, world / "stream.log", names["topic_logs"])
    worker.wait_for(lambda m: m.get("sessions_closed_idle", 0) >= 2 * len(labels) and m.get("open_sessions") == 0,
                    120)
    both = Counter(a["alert_id"] for a in collect(kafka.bootstrap, names["topic_alerts"], quiet_for=3.0))
    assert both == {a["alert_id"]: 2 for a in first}
