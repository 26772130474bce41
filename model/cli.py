"""The `logmoe` console script: a thin dispatcher over subcommands that packages register.

Subcommands come from the `logmoe.commands` entry points (train/ and stream/ each register theirs),
so this package never imports the training pipeline or the worker.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from model import __version__

ENTRY_POINT_GROUP = "logmoe.commands"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="logmoe",
        description="Streaming log anomaly detection with a Top-P Mixture-of-Experts classifier.",
    )
    parser.add_argument("--version", action="version", version=f"logmoe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        ep.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; bad input ends with one `logmoe: error: …` line and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ConnectionError) as exc:  # bad input, a missing file, no broker
        print(f"logmoe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("logmoe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
