from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from model.config_io import config_from_dict, load_config, parse_override


@dataclass
class Inner:
    top_p: float = 0.8
    experts: int = 4


@dataclass
class Outer:
    name: str = "x"
    device: Literal["auto", "cpu"] = "auto"
    keys: list[str] = field(default_factory=list)
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  experts: 8\nkeys: ['blk_-?\\d+']\n")
    cfg = load_config(Outer, path, ["inner.top_p=0.9", "limit=5", "device=cpu"])
    assert cfg == Outer(name="run", device="cpu", keys=["blk_-?\\d+"], limit=5, inner=Inner(0.9, 8))


def test_exponent_without_a_dot_is_a_number(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  top_p: 5e-1\n")  # YAML 1.1 reads this as the string '5e-1'
    assert load_config(Outer, path).inner.top_p == 0.5
    assert load_config(Outer, None, ["inner.top_p=3e-4"]).inner.top_p == 3e-4
    with pytest.raises(ValueError, match="expected a number, got 'high'"):
        load_config(Outer, None, ["inner.top_p=high"])


def test_errors_name_where_the_settings_came_from_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: run\n")
    with pytest.raises(ValueError, match=r"c\.yaml \+ overrides: unknown key\(s\) 'nmae'") as caught:
        load_config(Outer, path, ["limit=5", "device=cpu", "nmae=x"])
    assert str(caught.value).count("overrides") == 1, str(caught.value)


def test_defaults_without_a_file() -> None:
    assert load_config(Outer) == Outer()


def test_unknown_key_names_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"'nmae'.*allowed: device, inner, keys, limit, name"):
        config_from_dict(Outer, {"nmae": "x"})
    with pytest.raises(ValueError, match=r"inner: unknown key\(s\) 'p'"):
        config_from_dict(Outer, {"inner": {"p": 1}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"inner": {"experts": "four"}}, "expected an integer, got 'four'"),
        ({"inner": {"experts": True}}, "expected an integer, got True"),
        ({"device": "gpu"}, "'gpu' is not one of 'auto', 'cpu'"),
        ({"keys": "blk"}, "expected a list, got 'blk'"),
        ({"limit": 1.5}, "limit"),
    ],
)
def test_wrong_types_name_key_and_value(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict(Outer, data, "f.yaml")


def test_bad_override_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="key=value, got 'oops'"):
        parse_override("oops")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_non_mapping_yaml_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(Outer, path)
