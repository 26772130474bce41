"""`logmoe` for the data-parallel tests: torchrun runs this file in place of the logmoe script. Test-only
environment switches make one rank record what it trained on, or stop answering:

  LOGMOE_TEST_ROWS_DIR=D       every rank appends the window rows of each training batch to D/rows-<rank>.jsonl
  LOGMOE_TEST_HANG_RANK=r      rank r sleeps instead of running its epoch after LOGMOE_TEST_HANG_AFTER (default 1)
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import train.loop
from model.cli import main
from train.embeddings import WindowSet


def record_training_rows(folder: Path) -> None:
    """Log the rows of every batch built with gradients on (training steps; evaluation runs under no_grad)."""
    path = folder / f"rows-{os.environ['RANK']}.jsonl"
    batch = WindowSet.batch

    def recording(self: WindowSet, table: torch.Tensor, rows: torch.Tensor) -> Any:
        if torch.is_grad_enabled():
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(rows.tolist()) + "\n")
        return batch(self, table, rows)

    WindowSet.batch = recording  # type: ignore[method-assign]


def hang_after_epochs(rank: int, epochs: int) -> None:
    run_epoch = train.loop._run_epoch
    started = [0]

    def maybe_hang(*args: Any, **kwargs: Any) -> None:
        if int(os.environ["RANK"]) == rank and started[0] == epochs:
            time.sleep(3600)  # alive but silent: the others must give up, not wait forever
        started[0] += 1
        run_epoch(*args, **kwargs)

    train.loop._run_epoch = maybe_hang


if __name__ == "__main__":
    if os.environ.get("LOGMOE_TEST_ROWS_DIR"):
        record_training_rows(Path(os.environ["LOGMOE_TEST_ROWS_DIR"]))
    if os.environ.get("LOGMOE_TEST_HANG_RANK"):
        hang_after_epochs(int(os.environ["LOGMOE_TEST_HANG_RANK"]), int(os.environ.get("LOGMOE_TEST_HANG_AFTER", "1")))
    sys.exit(main())
