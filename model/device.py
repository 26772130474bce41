"""Device choice: CUDA (with bf16 autocast) when present, else CPU."""
from __future__ import annotations

import torch


def resolve_device(pref: str | torch.device = "auto") -> torch.device:
    """Turn a device preference ("auto", "cpu", "cuda", "cuda:N") into a torch.device."""
    if isinstance(pref, torch.device):
        return pref
    choice = str(pref).strip().lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or (choice.startswith("cuda:") and choice[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device {pref!r} asked for, but CUDA is not available here; use 'auto' or 'cpu'")
        return torch.device(choice)
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {pref!r}")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype to score with: bf16 on CUDA devices that support it, otherwise none (float32)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None
