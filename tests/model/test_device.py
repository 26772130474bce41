from __future__ import annotations

import pytest
import torch

from model.device import autocast_dtype, resolve_device


def test_auto_picks_cuda_only_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("CPU") == torch.device("cpu")


def test_cpu_scores_in_float32() -> None:
    assert autocast_dtype(torch.device("cpu")) is None


@pytest.mark.parametrize("pref", ["gpu", "cuda:x", "tpu", ""])
def test_unknown_device_names_the_value(pref: str) -> None:
    with pytest.raises(ValueError, match=repr(pref)):
        resolve_device(pref)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
