"""`python stream_fake_worker.py key=value …`: the real worker with the fake scorer (tests without a model)."""

import sys

from stream.config import load_stream_config
from stream.worker import run_worker
from stream_fakes import FakeScorer

if __name__ == "__main__":
    sys.exit(run_worker(load_stream_config(None, sys.argv[1:]), FakeScorer(max_window=8)))
