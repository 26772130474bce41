"""`logmoe train --nproc N`: N data-parallel training processes on this machine, started by torch.distributed's
elastic launcher (torchrun's machinery) as `torchrun --standalone --nproc_per_node N -m model.cli train ...` starts
them: a rendezvous on a free local port, RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set for each.
When a process fails, the launcher stops the others and this returns one exit code; the failed process has printed
its own `logmoe: error:` line or traceback, and a crash gets one more line naming the rank.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

logger = logging.getLogger(__name__)

# Exit code of `logmoe` after a `logmoe: error:` line (model.cli.main); a process that ended with it explained why.
USAGE_ERROR = 2


def launch_local(nproc: int, child_argv: Sequence[str], max_restarts: int = 0) -> int:
    """Run `python -m model.cli *child_argv` in `nproc` processes of one data-parallel group; 0 when all succeed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1 ({nproc})")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts,
                          monitor_interval=0.1)
    # the launcher's own INFO blocks and its failure report would bury the processes' one-line errors
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logger.info("starting %d training processes (torch.distributed elastic launcher, standalone rendezvous)", nproc)
    try:
        elastic_launch(config, sys.executable)("-m", "model.cli", *child_argv)
    except ChildFailedError as err:
        return report_failure(err)
    return 0


def report_failure(err: ChildFailedError) -> int:
    """The exit code for a failed launch; prints a line naming the rank unless that rank printed its own error."""
    rank, failure = err.get_first_failure()
    if failure.exitcode == USAGE_ERROR:
        return USAGE_ERROR
    how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    print(f"logmoe: error: training process rank {rank} failed ({how}); the other processes were stopped. "
          f"Continue the run with --resume from its last epoch checkpoint", file=sys.stderr)
    return 1
