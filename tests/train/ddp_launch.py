"""Starting training processes from the data-parallel tests: torchrun's command line, and a subprocess run that can
never outlive its timeout (the launcher and every rank are killed, and the test fails)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def torchrun(*args: str) -> list[str]:
    """`torchrun ARGS` with this Python (the installed torchrun script runs the same module)."""
    return [sys.executable, "-m", "torch.distributed.run", *args]


def run_bounded(argv: list[str], timeout_s: float, env: dict[str, str] | None = None,
                cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run argv in a session of its own, with this checkout first on PYTHONPATH and one torch thread per process;
    on timeout kill the whole process group (launcher and ranks) and fail the test."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                   "OMP_NUM_THREADS": "1", **(env or {})}
    with subprocess.Popen(argv, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(argv[:6])} ... still running after {timeout_s} s; stderr tail:\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
