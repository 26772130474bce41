"""The worker serves an unsupervised model with its default configuration: a tiny model trained without labels is
loaded by the worker's own loader and its sessions scored and alerted through the worker's processing path, which
flags exactly the sessions the offline path (`logmoe evaluate`'s) flags at the model's label-free threshold."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.app import window_hop
from stream.scoring import load_scorer
from stream.config import StreamConfig
from stream.metrics import Metrics
from stream.processor import SessionEvent, SessionProcessor
from stream.windows import Entry, SessionWindows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def unsupervised_model(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.config_io import load_config
    from train.config import TrainConfig
    from train.generate import write_world
    from train.pipeline import train

    out = tmp_path_factory.mktemp("unsupervised")
    write_world(out / "world", sessions=200, seed=5)
    for name in ("train", "dev"):  # no labels anywhere
        records = [json.loads(x) for x in (out / "world" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
        (out / f"{name}.jsonl").write_text("".join(json.dumps({"session_id": r["session_id"], "log_sequence":
                                                               r["log_sequence"]}) + "\n" for r in records))
    cfg = load_config(TrainConfig, None, [
        f'data.train=["{out / "train.jsonl"}"]', f'data.eval=["{out / "dev.jsonl"}"]', f"output_dir={out / 'run'}",
        f"encoder.name_or_path={tiny_encoder_dir}", "training.device=cpu", "training.objective=unsupervised",
        "training.target_rate=0.1", "training.min_steps_per_epoch=0", "training.batch_size=32",
        "training.epochs_stage1=2", "training.epochs_stage2=1", "model.hidden_size=32",
        "model.num_attention_heads=4", "model.expert_intermediate_size=64", "unsupervised.unseen_lines=32"])
    train(cfg)
    return out


def test_worker_alerts_what_offline_scoring_flags(unsupervised_model: Path) -> None:
    from model import session_windows

    from train.data import load_jsonl

    cfg = StreamConfig(model=str(unsupervised_model / "run" / "final_moe_model"), device="cpu")
    scorer = load_scorer(cfg)
    sessions = load_jsonl(unsupervised_model / "dev.jsonl", require_labels=False)
    offline = {s.session_id for s in sessions
               if max(scorer.score(session_windows(list(s.lines), scorer.max_window, scorer.window_hop)))
               >= scorer.threshold}
    assert offline  # the rate threshold flags 10% of the dev windows

    processor = SessionProcessor(SessionWindows(scorer.max_window, window_hop(cfg, scorer), cfg.max_session_lines,
                                                cfg.alert_cooldown_lines), cfg.session_idle, Metrics())
    events, offset = [], 0
    for session in sessions:
        for line in session.lines:
            events.append((offset, SessionEvent("line", session.session_id, Entry(line, None, 0, offset))))
            offset += 1
        events.append((offset, SessionEvent("close", session.session_id, reason="evict")))
        offset += 1
    batch = processor.apply(events, lambda key: None, now=1.0)
    scored = scorer.score_detailed([[e.line for e in w.entries] for w in batch.windows])
    alerts = processor.alerts_for(batch, scored, scorer, top_lines=cfg.alert_top_lines, now=1.0)
    assert {a["session"] for a in alerts} == offline
    for alert in alerts:  # alerts still point at lines: one contribution per line, the largest marked
        lines = alert["lines"]
        assert len(lines) == alert["window"]["n_lines"] and all(ln["contribution"] is not None for ln in lines)
        top = sorted(ln["contribution"] for ln in lines)[-1]
        assert any(ln["suspicious"] and ln["contribution"] == top for ln in lines)
