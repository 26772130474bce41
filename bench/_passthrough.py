"""A bare Faust pass-through worker: every message of the input topic is forwarded, as is, to an output topic.

The ceiling of bench_perf.py: what any Faust worker can reach on this broker and machine. Same Faust settings
as the logmoe worker (stream/app.py: session timeouts, producer batch size, partitions, at_least_once), one
plain agent, one event at a time. It logs `metrics {"lines_in": N}` every --metrics-interval seconds, the line
format the logmoe worker uses, so bench_perf.py reads both the same way.

    python bench/_passthrough.py --broker HOST:PORT --app-id ID --source logs --sink out
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import faust

log = logging.getLogger("bench.passthrough")


def create_app(args: argparse.Namespace) -> faust.App:
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.broker}",
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=args.partitions,
        topic_disable_leader=True,
        broker_session_timeout=6,
        broker_heartbeat_interval=2,
        producer_max_batch_size=args.producer_max_batch_size,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        autodiscover=False,
    )
    source = app.topic(args.source, key_serializer="raw", value_serializer="raw")
    sink = app.topic(args.sink, key_serializer="raw", value_serializer="raw", partitions=args.partitions)
    count = {"lines_in": 0}

    @app.agent(source, name="passthrough")
    async def passthrough(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await sink.send(key=event.message.key, value=event.value)
            count["lines_in"] += 1

    @app.task
    async def log_start() -> None:  # counters at zero as it starts: bench_perf times from the last such line
        log.info("metrics %s", json.dumps(count))

    @app.timer(args.metrics_interval)
    async def log_metrics() -> None:
        log.info("metrics %s", json.dumps(count))

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--broker", required=True, help="host:port")
    p.add_argument("--app-id", required=True)
    p.add_argument("--source", default="logs")
    p.add_argument("--sink", default="passthrough-out")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--producer-max-batch-size", type=int, default=64, help="as the worker's default (BROKER.md)")
    p.add_argument("--metrics-interval", type=float, default=0.5)
    args = p.parse_args(argv)
    app = create_app(args)
    worker = faust.Worker(app, loglevel="INFO", redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
