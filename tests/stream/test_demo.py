"""`logmoe demo`'s decision that the worker is done, against worker logs written step by step (no broker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stream import demo

SENT = 1016  # the demo world's stream, 125 sessions

# What the worker logged in the run of issue 11, then what it logs on the way to done: the route had read every
# line (lines_in) while the score agent had not opened a session yet, so no session was open and nothing scored.
RACE = [
    {"lines_in": SENT, "open_sessions": 0},
    {"lines_in": SENT, "lines_applied": 400, "sessions_opened": 60, "open_sessions": 60},
    {"lines_in": SENT, "lines_applied": SENT, "sessions_opened": 125, "open_sessions": 125},
    # the idle close: every session closed, its window made and being scored
    {"lines_in": SENT, "lines_applied": SENT, "sessions_opened": 125, "sessions_closed_idle": 125,
     "windows_due": 125, "windows_scored": 0, "open_sessions": 125},
    # scored, alerts on their way, the closed sessions not yet deleted from the table
    {"lines_in": SENT, "lines_applied": SENT, "sessions_opened": 125, "sessions_closed_idle": 125,
     "windows_due": 125, "windows_scored": 125, "alerts_out": 25, "open_sessions": 125},
    {"lines_in": SENT, "lines_applied": SENT, "sessions_opened": 125, "sessions_closed_idle": 125,
     "windows_due": 125, "windows_scored": 125, "alerts_out": 25, "open_sessions": 0},
]


class ScriptedWorker:
    """A worker process stand-in: each poll() appends its next metrics line to the log (the last one repeats)."""

    def __init__(self, log_path: Path, snapshots: list[dict[str, Any]], exit_after: int | None = None) -> None:
        self.log_path = log_path
        self.snapshots = snapshots
        self.polls = 0
        self.exit_after = exit_after
        self.returncode: int | None = None
        log_path.write_text("[2024-01-01 00:00:00] [1] [INFO] [^Worker]: Ready\n", encoding="utf-8")

    def poll(self) -> int | None:
        if self.exit_after is not None and self.polls >= self.exit_after:
            self.returncode = 1
            return 1
        snapshot = self.snapshots[min(self.polls, len(self.snapshots) - 1)]
        self.polls += 1
        with self.log_path.open("a", encoding="utf-8") as out:
            out.write(f"2024-01-01 00:00:{self.polls:02d} INFO stream.metrics: metrics {json.dumps(snapshot)}\n")
        return None


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.time, "sleep", lambda seconds: None)


def test_done_is_decided_by_the_score_agent_not_by_the_routes_line_count(tmp_path: Path) -> None:
    worker = ScriptedWorker(tmp_path / "worker.log", RACE)
    final = demo._wait_drained(worker, worker.log_path, SENT)
    assert worker.polls == len(RACE), f"took the worker for done after {worker.polls} of {len(RACE)} metrics lines"
    assert final == RACE[-1]


def test_waits_until_the_alert_reader_has_every_alert_the_worker_sent(tmp_path: Path) -> None:
    worker = ScriptedWorker(tmp_path / "worker.log", RACE)
    reads = iter([0, 10, 24, 25])  # what the reader has received at each check once the worker is done
    final = demo._wait_drained(worker, worker.log_path, SENT, received=lambda: next(reads))
    assert final == RACE[-1] and worker.polls == len(RACE) + 3


def test_gives_up_with_one_line_saying_what_it_waited_for(tmp_path: Path) -> None:
    worker = ScriptedWorker(tmp_path / "worker.log", RACE[:3])  # sessions never close
    with pytest.raises(demo.DemoFailed, match=r"^gave up after 0 s waiting for the worker: 125 of 125 sessions "
                                              r"still open$"):
        demo._wait_drained(worker, worker.log_path, SENT, limit=0.2)


def test_a_worker_that_exits_fails_the_demo(tmp_path: Path) -> None:
    worker = ScriptedWorker(tmp_path / "worker.log", RACE, exit_after=2)
    with pytest.raises(demo.DemoFailed, match="the worker exited with 1"):
        demo._wait_drained(worker, worker.log_path, SENT)


def test_a_run_that_scored_no_window_fails(tmp_path: Path) -> None:
    demo.check_scored(RACE[-1])
    nothing = {"lines_in": SENT, "bad_empty": SENT, "open_sessions": 0}  # every line refused: done, nothing scored
    worker = ScriptedWorker(tmp_path / "worker.log", [nothing])
    final = demo._wait_drained(worker, worker.log_path, SENT)
    with pytest.raises(demo.DemoFailed, match="the worker scored no window"):
        demo.check_scored(final)


def test_run_demo_exits_1_with_one_line_and_no_summary_when_it_gives_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    world = tmp_path / "world"
    world.mkdir()
    (world / "stream_labels.csv").write_text("session_id,label\na,1\n", encoding="utf-8")
    (tmp_path / "summary.json").write_text("{}", encoding="utf-8")  # from an earlier run

    class Broker:
        bootstrap = "127.0.0.1:1"

        def __enter__(self) -> Broker:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    worker = ScriptedWorker(tmp_path / "worker.log", RACE[:1])
    monkeypatch.setattr(demo, "prepare", lambda demo_dir, retrain: (world, tmp_path / "model"))
    monkeypatch.setattr(demo, "EmbeddedBroker", Broker)
    monkeypatch.setattr(demo, "_start_worker", lambda bootstrap, model, log_path: worker)
    monkeypatch.setattr(demo, "AlertReader", lambda bootstrap: type("R", (), {"start": lambda self: None,
                                                                             "stop": lambda self: None,
                                                                             "received": 0, "alerts": []})())
    monkeypatch.setattr(demo, "replay", lambda *args, **kwargs: {"sent": SENT, "skipped": 0})
    monkeypatch.setattr(demo, "_stop", lambda proc: None)
    real_wait = demo._wait_drained
    monkeypatch.setattr(demo, "_wait_drained", lambda *args, **kwargs: real_wait(*args, **kwargs, limit=0.1))

    assert demo.run_demo(tmp_path) == 1
    out = capsys.readouterr()
    assert "summary" not in out.out and not (tmp_path / "summary.json").exists()
    assert out.err.strip().splitlines() == [
        f"[demo] failed: gave up after 0 s waiting for the worker: 0 of {SENT} lines applied to sessions or counted "
        f"as bad (worker log: {tmp_path / 'worker.log'})"]
