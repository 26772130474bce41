from pathlib import Path

import pytest

from stream.config import StreamConfig, env_overrides, load_stream_config, split_regexes

REPO = Path(__file__).resolve().parents[2]


def test_shipped_yaml_equals_the_defaults() -> None:
    assert load_stream_config(REPO / "configs" / "stream.yaml", environ={}) == StreamConfig()


def test_env_then_flags_override_the_file() -> None:
    env = {"LOGMOE_BROKER": "kafka://k1:9092,k2:9092", "LOGMOE_MODEL": "2024", "LOGMOE_SESSION_IDLE": "2.5",
           "LOGMOE_SESSION_KEY": r"user=(\w+)||(blk_-?\d+)", "LOGMOE_PARTITIONS": "8", "LOGMOE_TANSU": "/x"}
    cfg = load_stream_config(REPO / "configs" / "stream.yaml", ["partitions=2"], environ=env)
    assert cfg.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert cfg.model == "2024" and cfg.session_idle == 2.5 and cfg.partitions == 2
    assert cfg.session_key == [r"user=(\w+)", r"(blk_-?\d+)"]


def test_session_key_env_accepts_newlines_too() -> None:
    assert split_regexes("a=(\\w+)\n\n b ") == ["a=(\\w+)", "b"]
    assert env_overrides({"LOGMOE_UNRELATED_THING": "1"}) == []


@pytest.mark.parametrize(
    ("override", "needle"),
    [("store=redis://x", "redis://x"), ("session_idle=0", "session_idle"), ("session_key=['(bad']", "(bad"),
     ("partitions=0", "partitions"), ("processing_guarantee=exactly_once", "exactly_once"), ("nope=1", "nope"),
     ("metrics_port=70000", "metrics_port"), ("model_reload_interval=-1", "model_reload_interval"),
     ("batches_in_flight=0", "batches_in_flight must be >= 1, got 0")],
)
def test_bad_values_name_the_key_or_value(override: str, needle: str) -> None:
    with pytest.raises(ValueError, match=__import__("re").escape(needle)):
        load_stream_config(None, [override], environ={})


@pytest.mark.parametrize(("environ", "flags", "origin"), [
    ({"LOGMOE_BATCH_WITHIN": "abc"}, [], "defaults + LOGMOE_* environment: batch_within"),
    ({}, ["batch_within=abc"], "defaults + overrides: batch_within"),
    ({"LOGMOE_PARTITIONS": "2"}, ["batch_within=abc"], "defaults + LOGMOE_* environment + overrides: batch_within"),
])
def test_a_bad_value_says_whether_it_came_from_the_environment(environ: dict[str, str], flags: list[str],
                                                              origin: str) -> None:
    with pytest.raises(ValueError, match=__import__("re").escape(f"{origin}: expected a number, got 'abc'")):
        load_stream_config(None, flags, environ=environ)
