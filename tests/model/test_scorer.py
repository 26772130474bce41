"""LogScorer over a small random LogMoE model and the tiny random BERT encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.configuration_logmoe import LogMoEConfig
from model.encoder import LineEncoder
from model.masking import mask
from model.modeling_logmoe import LogMoEForSequenceClassification
from model.novelty import NoveltyCalibration
from model.rarity import save_line_counts
from model.scorer import LogScorer, WindowScore

SESSION = [
    "081109 202001 1353 INFO dfs.DataNode$DataXceiver: Receiving block blk_-9251277714010060167 src: "
    "/10.250.201.145:39188 dest: /10.250.201.145:50010",
    "081109 202004 8501 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /user/root/rand/_temporary/"
    "_task_200811092030_0001_m_000583_0/part-00583. blk_-9251277714010060167",
    "081109 202005 4444 INFO dfs.DataNode$PacketResponder: PacketResponder 2 for block blk_-9251277714010060167 "
    "terminating",
    "081109 202006 4349 INFO dfs.DataNode$PacketResponder: Received block blk_-9251277714010060167 of size 53844418 "
    "from /10.250.201.145",
    "081109 202006 4761 INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: "
    "10.250.201.145:50010 is added to blk_-9251277714010060167 size 67108864",
    "081109 202011 526 WARN dfs.DataNode$DataXceiver: 10.250.99.214:50010:Got exception while serving "
    "blk_-9251277714010060167 to /10.251.72.63:",
]
MAX_WINDOW = 8


@pytest.fixture(scope="module")
def model_dir(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LogMoEConfig(
        input_dim=32, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_experts=4,
        expert_intermediate_size=32, max_window=MAX_WINDOW, encoder_name_or_path=str(tiny_encoder_dir),
        threshold=0.42, data_fingerprint="abc123",
    )
    out = tmp_path_factory.mktemp("logmoe") / "final_moe_model"
    LogMoEForSequenceClassification(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def scorer(model_dir: Path) -> LogScorer:
    return LogScorer.from_pretrained(model_dir, device="cpu", batch_size=4)


def test_scores_are_probabilities_in_input_order(scorer: LogScorer) -> None:
    windows = [SESSION[:k] for k in (6, 1, 3, 2, 5, 4)]
    scores = scorer.score(windows)
    assert len(scores) == len(windows) and all(0.0 <= s <= 1.0 for s in scores)
    one_by_one = [scorer.score([w])[0] for w in windows]
    assert scores == pytest.approx(one_by_one, abs=1e-5)


def test_detailed_scores(scorer: LogScorer) -> None:
    (result,) = scorer.score_detailed([SESSION[:4]])
    assert isinstance(result, WindowScore)
    assert len(result.line_scores) == 4 and all(isinstance(x, float) for x in result.line_scores)
    assert 1.0 <= result.experts_per_token <= 4.0
    assert result.unseen_fraction is None  # no seen_lines.json
    assert result.score == pytest.approx(scorer.score([SESSION[:4]])[0])


def test_a_window_scores_the_same_alone_and_among_longer_windows(scorer: LogScorer) -> None:
    short = SESSION[:2]
    alone = scorer.score([short])[0]
    among = scorer.score([SESSION, short, SESSION[:5], SESSION[1:], short[::-1]])[1]
    assert among == pytest.approx(alone, abs=1e-5)


def test_properties(scorer: LogScorer, model_dir: Path, tiny_encoder_dir: Path) -> None:
    assert scorer.threshold == pytest.approx(0.42)
    assert scorer.fingerprint == "abc123"
    assert scorer.name == "final_moe_model"
    assert scorer.max_window == MAX_WINDOW
    assert scorer.encoder.reference == str(tiny_encoder_dir.resolve())


def test_encoder_cache_is_used_across_calls(model_dir: Path) -> None:
    fresh = LogScorer.from_pretrained(model_dir, device="cpu")
    fresh.score([SESSION])
    misses = fresh.encoder.cache_info()["misses"]
    assert misses == len({mask(line) for line in SESSION})
    fresh.score([SESSION[::-1], SESSION[:3]])
    assert fresh.encoder.cache_info()["misses"] == misses


def test_round_trip_gives_identical_scores(scorer: LogScorer, tmp_path: Path) -> None:
    scorer.model.save_pretrained(tmp_path / "copy")
    again = LogScorer.from_pretrained(tmp_path / "copy", device="cpu", encoder=scorer.encoder)
    windows = [SESSION, SESSION[:3]]
    assert again.score(windows) == scorer.score(windows)


def test_given_encoder_must_match_input_dim(model_dir: Path) -> None:
    wrong = LineEncoder.__new__(LineEncoder)  # a stand-in with the wrong width; no weights needed
    wrong.dim, wrong.name_or_path, wrong._path = 48, "x", "x"
    with pytest.raises(ValueError, match="input_dim=32"):
        LogScorer.from_pretrained(model_dir, device="cpu", encoder=wrong)


def test_unseen_fraction_from_seen_lines(scorer: LogScorer, model_dir: Path, tmp_path: Path) -> None:
    seen_dir = tmp_path / "with_seen"
    scorer.model.save_pretrained(seen_dir)
    LogScorer.save_seen_lines(seen_dir, (mask(line) for line in SESSION[:3] + SESSION[:2]))
    assert json.loads((seen_dir / "seen_lines.json").read_text()) == sorted({mask(x) for x in SESSION[:3]})
    with_seen = LogScorer.from_pretrained(seen_dir, device="cpu", encoder=scorer.encoder)
    results = with_seen.score_detailed([SESSION[:3], SESSION[2:6], SESSION[4:]])
    assert [r.unseen_fraction for r in results] == pytest.approx([0.0, 0.75, 1.0])


def test_line_counts_reach_a_model_that_reads_rarity(tiny_encoder_dir: Path, scorer: LogScorer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = LogMoEConfig(
        input_dim=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_experts=4,
        expert_intermediate_size=32, max_window=MAX_WINDOW, encoder_name_or_path=str(tiny_encoder_dir),
        rarity_buckets=4)
    model = LogMoEForSequenceClassification(config)
    with torch.no_grad():
        model.rarity.weight.normal_()  # every bucket means something
    folder = tmp_path / "rarity"
    model.save_pretrained(folder)
    with pytest.raises(ValueError, match="reads line rarity .* has no line_counts.json"):
        LogScorer.from_pretrained(folder, device="cpu", encoder=scorer.encoder)
    held = {mask(line): 9 for line in SESSION}

    def score_with(counts: dict[str, int]) -> list[float]:
        save_line_counts(folder, counts)
        return LogScorer.from_pretrained(folder, device="cpu", encoder=scorer.encoder).score([SESSION[:4], SESSION])

    base = score_with(held)
    assert score_with({**held, mask(SESSION[5]): 15}) == pytest.approx(base)  # the same bucket (8-15)
    rare_last = score_with({k: v for k, v in held.items() if k != mask(SESSION[5])})  # line 5 never held
    assert rare_last[0] == pytest.approx(base[0]) and rare_last[1] != pytest.approx(base[1], abs=1e-6)


def test_early_scoring_settings_and_novel_lines_come_from_the_model_folder(scorer: LogScorer, tmp_path: Path) -> None:
    assert scorer.early_hop == 0 and scorer.early_thresholds is None  # a folder from before early scoring
    assert scorer.normal_lines is None and not scorer.is_novel(SESSION[5])  # no normal_lines.json: no novel trigger
    folder = tmp_path / "with_early"
    scorer.model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(early_hop=3, early_thresholds=[[4, 1.0], [8, 0.9]], early_target_fpr=0.01)
    (folder / "config.json").write_text(json.dumps(config))
    LogScorer.save_normal_lines(folder, (mask(line) for line in SESSION[:5]))
    early = LogScorer.from_pretrained(folder, device="cpu", encoder=scorer.encoder)
    assert early.early_hop == 3 and early.early_thresholds.to_config() == [[4, 1.0], [8, 0.9]]
    assert [early.is_novel(line) for line in SESSION] == [False] * 5 + [True]
    assert not early.is_novel(SESSION[0].replace("202001", "213344"))  # another time stamp, the same masked line
    config["early_thresholds"] = [[4, 2.0]]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="early thresholds must be numbers in"):
        LogScorer.from_pretrained(folder, device="cpu", encoder=scorer.encoder)


@pytest.mark.parametrize("windows", [[[]], [SESSION, []]])
def test_empty_window_is_rejected(scorer: LogScorer, windows: list[list[str]]) -> None:
    with pytest.raises(ValueError, match="empty"):
        scorer.score(windows)


def test_overlong_window_is_rejected(scorer: LogScorer) -> None:
    with pytest.raises(ValueError, match=f"max_window={MAX_WINDOW}"):
        scorer.score([SESSION[:1], SESSION + SESSION])


def test_no_windows_no_scores(scorer: LogScorer) -> None:
    assert scorer.score([]) == []


def test_a_bare_string_is_rejected(scorer: LogScorer) -> None:
    with pytest.raises(ValueError, match="list of lines"):
        scorer.score([SESSION[0]])  # type: ignore[list-item]


def test_missing_dir_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        LogScorer.from_pretrained(missing)


@pytest.mark.parametrize("removed", ["config.json", "model.safetensors"])
def test_missing_files_are_named(scorer: LogScorer, tmp_path: Path, removed: str) -> None:
    scorer.model.save_pretrained(tmp_path)
    (tmp_path / removed).unlink()
    with pytest.raises(FileNotFoundError, match=removed):
        LogScorer.from_pretrained(tmp_path, encoder=scorer.encoder)


def test_unreadable_files_are_named(scorer: LogScorer, tmp_path: Path) -> None:
    scorer.model.save_pretrained(tmp_path / "bad_weights")
    (tmp_path / "bad_weights" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors"):
        LogScorer.from_pretrained(tmp_path / "bad_weights", encoder=scorer.encoder)
    scorer.model.save_pretrained(tmp_path / "bad_config")
    (tmp_path / "bad_config" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        LogScorer.from_pretrained(tmp_path / "bad_config", encoder=scorer.encoder)
    (tmp_path / "bad_config" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a LogMoE config"):
        LogScorer.from_pretrained(tmp_path / "bad_config", encoder=scorer.encoder)


def test_concurrent_calls_from_threads_agree_with_serial(model_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fresh = LogScorer.from_pretrained(model_dir, device="cpu")  # empty cache: threads race to fill it
    windows = [[SESSION[k % len(SESSION)] for k in range(i, i + 3)] for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda w: fresh.score([w])[0], windows))
    assert concurrent == pytest.approx(fresh.score(windows), abs=1e-5)


def _count_forwards(scorer: LogScorer) -> list[int]:
    """Counts the model's forward calls (one per batch of windows that reached the model)."""
    calls: list[int] = []
    forward = scorer.model.forward

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return forward(*args, **kwargs)

    scorer.model.forward = counted  # type: ignore[method-assign]
    return calls


def test_a_window_met_again_skips_the_model_and_scores_the_same(model_dir: Path) -> None:
    fresh = LogScorer.from_pretrained(model_dir, device="cpu")
    calls = _count_forwards(fresh)
    first = fresh.score_detailed([SESSION, SESSION[:3], SESSION[:3]])  # the same window twice: computed once
    assert len(calls) == 1 and fresh.window_cache_info() == {"hits": 0, "size": 2, "max_size": 8192}
    other_block = [line.replace("9251277714010060167", "1111") for line in SESSION[:3]]  # masks the same
    again = fresh.score_detailed([other_block, SESSION])
    assert len(calls) == 1 and fresh.window_cache_info()["hits"] == 2
    assert again == [first[1], first[0]]
    uncached = LogScorer.from_pretrained(model_dir, device="cpu", encoder=fresh.encoder, window_cache_size=0)
    assert [w.score for w in uncached.score_detailed([SESSION, SESSION[:3]])] == pytest.approx(
        [first[0].score, first[1].score], abs=1e-6)


def test_the_window_cache_keeps_the_most_recently_used_and_can_be_off(model_dir: Path) -> None:
    small = LogScorer.from_pretrained(model_dir, device="cpu", window_cache_size=2)
    calls = _count_forwards(small)
    small.score([SESSION[:1]])
    small.score([SESSION[:2]])
    small.score([SESSION[:1]])  # a hit: now the most recently used
    small.score([SESSION[:3]])  # drops SESSION[:2], the least recently used
    assert len(calls) == 3 and small.window_cache_info()["size"] == 2
    small.score([SESSION[:1], SESSION[:3]])
    assert len(calls) == 3
    small.score([SESSION[:2]])
    assert len(calls) == 4
    off = LogScorer.from_pretrained(model_dir, device="cpu", window_cache_size=0)
    off_calls = _count_forwards(off)
    off.score([SESSION[:2]])
    off.score([SESSION[:2]])
    assert len(off_calls) == 2 and off.window_cache_info()["size"] == 0
    with pytest.raises(ValueError, match="window_cache_size must be an integer >= 0"):
        LogScorer.from_pretrained(model_dir, device="cpu", window_cache_size=-1)


def test_novelty_calibration_puts_what_never_seen_lines_say_in_place_of_their_classifier_share(scorer: LogScorer, tmp_path: Path) -> None:
    folder = tmp_path / "novelty"
    scorer.model.save_pretrained(folder)
    windows = [SESSION[:5], SESSION]  # SESSION[5] (WARN ... exception) is the only line training never held
    plain = LogScorer.from_pretrained(folder, device="cpu", encoder=scorer.encoder).score_detailed(windows)
    calibration = NoveltyCalibration(scale=0.5, bias=-0.25, weights=(0.0, 1.0, 3.0, 0.0))  # warn group: "WARN ..."
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "novelty_calibration": calibration.to_config()}))
    with pytest.raises(ValueError, match="weighs never-seen lines .* has no seen_lines.json"):
        LogScorer.from_pretrained(folder, device="cpu", encoder=scorer.encoder)
    LogScorer.save_seen_lines(folder, (mask(line) for line in SESSION[:5]))
    calibrated = LogScorer.from_pretrained(folder, device="cpu", encoder=scorer.encoder)
    assert calibrated.novelty_flags(SESSION) == [0.0, 0.0, 1.0, 0.0] + [0.0] * 4
    results = calibrated.score_detailed(windows)

    def logit(p: float) -> float:
        return float(torch.logit(torch.tensor(p, dtype=torch.float64)))

    for result, before, added, left_out in zip(results, plain, (0.0, 3.0), (0.0, plain[1].line_scores[5])):
        expected = 0.5 * (logit(before.score) - left_out) - 0.25 + added  # the classifier's share of line 5 is out
        assert logit(result.score) == pytest.approx(expected, abs=1e-4)
        assert result.line_scores[:5] == pytest.approx([0.5 * s for s in before.line_scores[:5]], abs=1e-6)
    assert abs(plain[1].line_scores[5]) > 1e-3  # so the test sees it left out
    assert results[1].line_scores[5] == pytest.approx(3.0, abs=1e-6)
    calibrated.set_novelty_calibration(None)  # the cached results are dropped with it
    assert calibrated.score(windows) == pytest.approx([r.score for r in plain], abs=1e-6)


class _Vectors:
    """A line encoder that gives each masked line the vector of a table (so which seen line is nearest is known)."""

    reference = "vectors"
    dim = 32

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = {line: torch.tensor(v + [0.0] * (self.dim - len(v))) for line, v in table.items()}

    def encode(self, masked_lines: list[str]) -> torch.Tensor:
        return torch.stack([self.table[line] for line in masked_lines])  # (N, D)


def test_a_never_seen_line_nearest_a_line_only_failures_held_is_failure_like(model_dir: Path) -> None:
    normal, failure = "kernel INFO cache flushed", "kernel FATAL link lost"  # seen: in a normal session, in failures
    like_normal, like_failure = "kernel FATAL cache flush slow", "kernel FATAL link lost again"  # never seen
    encoder = _Vectors({normal: [1.0, 0.0], failure: [0.0, 1.0], like_normal: [0.9, 0.2], like_failure: [0.3, 0.8]})
    model = LogMoEForSequenceClassification.from_pretrained(model_dir)
    scorer = LogScorer(model, encoder, model_dir, device="cpu", seen_lines=frozenset({normal, failure}),
                       normal_lines=frozenset({normal}))
    assert scorer.novelty_flags([normal, like_normal]) == [1.0, 0, 0, 0, 0, 0, 0, 0]  # fatal, like a normal line
    assert scorer.novelty_flags([normal, like_failure]) == [0, 0, 0, 0, 1.0, 0, 0, 0]  # fatal, failure-like
    scorer.set_novelty_calibration(NoveltyCalibration(1.0, 0.0, (1.0, 0.0, 0.0, 0.0),
                                                      failure_like_weights=(5.0, 0.0, 0.0, 0.0)))
    first, second = scorer.score_detailed([[normal, like_normal], [normal, like_failure]])
    assert first.line_scores[1] == pytest.approx(1.0) and second.line_scores[1] == pytest.approx(5.0)
    without = LogScorer(model, encoder, model_dir, device="cpu", seen_lines=frozenset({normal, failure}))
    assert without.novelty_flags([like_failure]) == [1.0, 0, 0, 0, 0, 0, 0, 0]  # no normal_lines.json: no kin
