"""Checks of a saved model folder that need neither torch nor transformers, so `logmoe worker` can refuse a bad
folder in a fraction of a second, before it imports the model or connects to a broker.

A folder holds config.json (model_type "logmoe", logmoe_format <= FORMAT_VERSION) and model.safetensors. Weights
are read from safetensors only: a pickled checkpoint (pytorch_model.bin, *.pt) is refused, never unpickled.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Optional files beside the weights, all JSON (what hot reload watches besides the two above):
SEEN_LINES_FILE = "seen_lines.json"  # the masked lines seen in training
NORMAL_LINES_FILE = "normal_lines.json"  # the masked lines of normal training sessions (early scoring's "novel")
LINE_COUNTS_FILE = "line_counts.json"  # {masked line: training sessions that held it} (model.rarity)
SIDECAR_FILES = (SEEN_LINES_FILE, NORMAL_LINES_FILE, LINE_COUNTS_FILE)
MODEL_TYPE = "logmoe"
# Version of the saved folder's layout and config meaning. Raise it when a change makes old folders score
# differently; a folder written by a newer version is refused rather than silently misread.
# 2: line rarity (config rarity_buckets, line_counts.json), which a version 1 reader would ignore.
# 3: token buckets (config token_buckets: the encoder appends a bag of word pieces), which a version 2 reader would
#    ignore and then find the encoder's size wrong.
# 4: novelty calibration (config novelty_calibration: what never-seen lines add to the margin), which a version 3
#    reader would ignore, scoring those windows lower than the stored threshold was chosen for.
FORMAT_VERSION = 4
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header


def check_model_folder(model_dir: str | Path) -> Path:
    """The folder as a Path if it looks loadable; else FileNotFoundError / ValueError naming it and the fault."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist; train one (logmoe train) or give "
                                f"the folder that holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"model folder {str(path)!r} has no {CONFIG_FILE}; is it a trained LogMoE model?")
    check_config(config_file)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        pickled = sorted(p.name for pattern in PICKLE_PATTERNS for p in path.glob(pattern))
        if pickled:
            raise ValueError(f"model folder {str(path)!r} holds pickled weights ({', '.join(pickled)}) but no "
                             f"{WEIGHTS_FILE}; logmoe never unpickles model files: re-save the model with "
                             "save_pretrained (safetensors)")
        raise FileNotFoundError(f"model folder {str(path)!r} has no {WEIGHTS_FILE}; is it a trained LogMoE model?")
    check_safetensors(weights)
    return path


def check_config(config_file: Path) -> dict[str, object]:
    """config.json parsed, if it is a LogMoE config of a format this version reads."""
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {str(config_file)!r}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("model_type") != MODEL_TYPE:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{str(config_file)!r} is not a LogMoE config (model_type {found!r}, expected "
                         f"{MODEL_TYPE!r})")
    check_format(raw.get("logmoe_format", 1), str(config_file))
    return raw


def check_format(version: object, where: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"{where}: logmoe_format {version!r} is not supported; this logmoe reads model folders "
                         f"of format 1..{FORMAT_VERSION} (upgrade logmoe or retrain the model)")


def check_safetensors(weights: Path) -> None:
    """The file's header parses and the file is as long as the header says (catches a truncated copy)."""
    size = weights.stat().st_size
    try:
        with weights.open("rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_HEADER_LIMIT, size - 8):
                raise ValueError(f"header of {header_len} bytes does not fit in {size} bytes")
            header = json.loads(fh.read(header_len))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        expected = 8 + header_len + max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
                                        default=0)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{str(weights)!r} is not a readable safetensors file: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{str(weights)!r} is truncated or not a safetensors file: {exc}") from exc
    if size < expected:
        raise ValueError(f"{str(weights)!r} is truncated: {size} bytes, its header describes {expected}")
