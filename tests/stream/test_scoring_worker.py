"""The scoring process in a real `logmoe worker` on the embedded broker, with a small random model over the tiny test
encoder (threshold 0: every window alerts, so alerts count windows): the scoring process killed mid-stream is
restarted, counted, and no window is lost."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from stream.tools import consume_alerts
from test_reload import write_model
from test_reload_worker import produce_sessions

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def scoring_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"scoring process (\d+) ready", log)]


@pytest.mark.timeout(300)
def test_a_killed_scoring_process_is_restarted_and_no_window_is_lost(kafka, start_worker, names,
                                                                    tiny_encoder_dir: Path, tmp_path: Path) -> None:
    folder = write_model(tmp_path / "final_moe_model", tiny_encoder_dir, fingerprint="a" * 64, max_window=8)
    worker = start_worker(folder, session_idle=3.0, alert_cooldown_lines=0, **names)
    worker.wait_ready()
    [pid] = scoring_pids(worker.log_text())
    first = [f"k1x{i}" for i in range(6)]
    produce_sessions(kafka.bootstrap, names["topic_logs"], first)
    worker.wait_for(lambda m: m.get("windows_scored", 0) >= len(first) and m.get("open_sessions") == 0, 90)

    os.kill(pid, signal.SIGKILL)  # the model's process dies between two batches
    second = [f"k2x{i}" for i in range(6)]
    produce_sessions(kafka.bootstrap, names["topic_logs"], second)
    everyone = first + second
    m = worker.wait_for(lambda m: m.get("windows_scored", 0) >= len(everyone) and m.get("open_sessions") == 0, 120)
    assert m["windows_scored"] == len(everyone) and not m.get("windows_failed")  # the batch was scored again
    assert m["scoring_restarts"] == 1
    assert len(scoring_pids(worker.log_text())) == 2 and "scoring process lost" in worker.log_text()
    alerts = list(consume_alerts(kafka.bootstrap, names["topic_alerts"], from_beginning=True, timeout=2.0))
    assert sorted(a["session"] for a in alerts) == sorted(everyone)
