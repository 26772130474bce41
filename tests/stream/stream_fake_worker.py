"""`python stream_fake_worker.py key=value …`: the real worker with the fake scorer (tests without a model).
LOGMOE_FAKE_DELAY / LOGMOE_FAKE_SCORED_LOG configure the scorer (stream_fakes.from_env)."""

import sys

from stream.config import load_stream_config
from stream.worker import run_worker
from stream_fakes import from_env

if __name__ == "__main__":
    sys.exit(run_worker(load_stream_config(None, sys.argv[1:]), from_env()))
