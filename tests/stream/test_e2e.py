"""End to end: a model trained on a generated world, `logmoe worker` on the embedded broker, the world's
stream replayed with `logmoe replay`, alerts read back with kafka-python."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from faults import read_alerts
from offline import offline_flags, offline_windows

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.encoder]

REPO = Path(__file__).resolve().parents[2]


def replay(bootstrap: str, path: Path, topic: str) -> None:
    cmd = [sys.executable, "-m", "model.cli", "replay", str(path), "--topic", topic, "--bootstrap", bootstrap,
           "--key-regex", r"request_id=(\w+)", "--no-progress"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith("replayed ")


@pytest.mark.timeout(600)  # with training the shared model: 20 s here, 4+ min under load
def test_worker_alerts_exactly_the_sessions_offline_scoring_flags(kafka, start_worker, names, trained_world):
    world, model_dir = trained_world["world"], trained_world["model"]
    labels = {r["session_id"]: int(r["label"]) for r in csv.DictReader((world / "stream_labels.csv").open())}
    # Idle above any stall of the replay on a loaded machine: each session must be closed exactly once. Closing
    # windows only: early alerts score prefixes the offline path has no window for (test_early_alerts checks them).
    worker = start_worker(model_dir, session_idle=6.0, early_alerts=False, **names)
    worker.wait_ready()
    lines = sum(1 for line in (world / "stream.log").read_text(encoding="utf-8").splitlines() if line.strip())
    started = time.time()
    replay(kafka.bootstrap, world / "stream.log", names["topic_logs"])
    m = worker.wait_drained(lines, 240)
    assert m["sessions_closed_idle"] == len(labels) and m["windows_scored"] >= len(labels)
    flags = offline_flags(model_dir, world)
    first = read_alerts(kafka.bootstrap, names["topic_alerts"], count=sum(flags.values()))
    alerted = {a["session"] for a in first}

    # The generated world is separable: every anomalous session alerted, no normal one.
    anomalous = {s for s, y in labels.items() if y}
    assert anomalous and alerted == anomalous, trained_world["metrics"].get("eval")
    # Train/serve parity: the worker alerts exactly the sessions the offline path flags with the same model, and
    # each alert is the offline path's window: the same lines, score, line contributions and experts.
    assert alerted == {s for s, flagged in flags.items() if flagged}
    assert_alerts_are_the_offline_windows(first, model_dir, world, started)

    # The same lines produced again are new input records, so a new incident: the same windows alert again, each
    # under a new alert_id (a consumer that drops redeliveries by id keeps them; test_faults checks that a
    # redelivery of the same records keeps its id).
    replay(kafka.bootstrap, world / "stream.log", names["topic_logs"])
    worker.wait_drained(2 * lines, 240)
    both = read_alerts(kafka.bootstrap, names["topic_alerts"], count=2 * len(first))
    second = [a for a in both if a["alert_id"] not in {f["alert_id"] for f in first}]
    windows = Counter((a["session"], a["window"]["end"]) for a in first)
    assert Counter((a["session"], a["window"]["end"]) for a in second) == windows
    assert len({a["alert_id"] for a in both}) == len(both) == 2 * len(first)
    scores = {(a["session"], a["window"]["end"]): a["score"] for a in first}
    assert all(a["score"] == pytest.approx(scores[(a["session"], a["window"]["end"])], abs=1e-4) for a in second)
    assert all(a["window"]["first_offset"] > f["window"]["last_offset"]  # the second replay's own records
               for a in second for f in first if f["session"] == a["session"] and f["window"]["partition"] ==
               a["window"]["partition"])


def readme_alert_id(session: str, end: int, partition: int, offset: int) -> str:
    return hashlib.sha256(f"{session}\n{end}\n{partition}:{offset}".encode()).hexdigest()[:32]


def assert_alerts_are_the_offline_windows(alerts: list[dict[str, Any]], model_dir: Path, world: Path,
                                          started: float) -> None:
    """Each alert, field by field, against the offline path's window of the same session and end (README, Alerts)."""
    scorer, offline = offline_windows(model_dir, world)
    weights = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    for a in alerts:
        w, lines = a["window"], a["lines"]
        [ref] = [o for o in offline[a["session"]] if o.end == w["end"]]
        assert [ln["line"] for ln in lines] == ref.lines and w["final"] == ref.final
        assert (w["start"], w["n_lines"]) == (w["end"] - len(ref.lines) + 1, len(ref.lines))
        assert [ln["n"] for ln in lines] == list(range(w["start"], w["end"] + 1))
        assert a["score"] == pytest.approx(ref.scored.score, abs=1e-4) and a["score"] >= a["threshold"]
        assert a["threshold"] == pytest.approx(scorer.threshold)
        assert [ln["contribution"] for ln in lines] == pytest.approx(ref.scored.line_scores, abs=1e-3)
        top = sorted(ref.scored.line_scores, reverse=True)[:3]  # alert_top_lines, default 3
        assert sorted(ln["contribution"] for ln in lines if ln["suspicious"]) == pytest.approx(sorted(top), abs=1e-3)
        assert a["experts"]["experts_per_token"] == pytest.approx(ref.scored.experts_per_token, abs=1e-3)
        assert a["unseen_lines"] == pytest.approx(ref.scored.unseen_fraction, abs=1e-4)
        assert a["model"] == {"name": scorer.name, "fingerprint": scorer.fingerprint, "weights": weights}
        # Where the lines came from: `logmoe replay` keys by session, so one partition, offsets rising.
        offsets = [ln["offset"] for ln in lines]
        assert isinstance(w["partition"], int) and offsets == sorted(set(offsets))
        assert (w["first_offset"], w["last_offset"]) == (offsets[0], offsets[-1])
        assert (w["first_ts"], w["last_ts"]) == (lines[0]["ts"], lines[-1]["ts"])
        assert started - 60 <= lines[0]["ts"] <= lines[-1]["ts"] <= time.time()  # Kafka timestamps, in seconds
        assert a["alert_id"] == readme_alert_id(a["session"], w["end"], w["partition"], w["last_offset"])
        detected = datetime.fromisoformat(a["detected_at"]).timestamp()  # in ms, cut (not rounded)
        assert a["detected_at"].endswith("+00:00") and lines[-1]["ts"] - 0.001 <= detected <= time.time()
