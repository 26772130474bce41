"""`logmoe worker | replay | alerts | broker | demo`: thin argparse layer over the stream package."""

from __future__ import annotations

import argparse
import logging

from stream.config import StreamConfig, load_stream_config, override

_TOOL_DESCRIPTION = ("The broker and its TLS/SASL settings come from the same config as the worker's: --config FILE, "
                "LOGMOE_<KEY> variables (LOGMOE_BROKER, LOGMOE_SECURITY_PROTOCOL, LOGMOE_SASL_PASSWORD, ...) and "
                "--set key=value, so the tools reach any cluster the worker reaches.")


def _tool_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=None,
                   help="Kafka bootstrap host:port[,host:port] (default: the config's broker, env LOGMOE_BROKER)")
    p.add_argument("--config", help="YAML config of the worker (broker, topics, security settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config key (e.g. security_protocol=SASL_SSL), repeatable")


def tool_config(args: argparse.Namespace) -> StreamConfig:
    """The tools' config: YAML < LOGMOE_* environment < --set < --bootstrap."""
    flags = [override("broker", args.bootstrap)] if args.bootstrap else []
    return load_stream_config(args.config, [*args.overrides, *flags])


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the streaming subcommands to logmoe's CLI."""
    p = subparsers.add_parser("worker", help="run the streaming detector (Faust worker) in the foreground",
                              description="Every config key can also be set with LOGMOE_<KEY> or --set key=value.")
    p.add_argument("--config", help="YAML config (default: built-in defaults, see configs/stream.yaml)")
    p.add_argument("--broker", help="Kafka bootstrap host:port[,host:port] (env LOGMOE_BROKER)")
    p.add_argument("--model", help="trained model folder (env LOGMOE_MODEL)")
    p.add_argument("--session-key", action="append", metavar="REGEX",
                   help="session key regex, repeatable, first match wins (env LOGMOE_SESSION_KEY, '||'-separated)")
    p.add_argument("--session-idle", type=float, metavar="SECONDS",
                   help="close a session after SECONDS without a line (env LOGMOE_SESSION_IDLE; default: the "
                        "model's, the longest pause inside a normal training session + 10%%, else 5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override any config key, repeatable")
    p.set_defaults(func=cmd_worker)

    p = subparsers.add_parser("replay", help="produce a log file into a topic, line by line",
                              description=_TOOL_DESCRIPTION)
    p.add_argument("file")
    p.add_argument("--topic", default=None, help="topic (default: the config's topic_logs, 'logs')")
    _tool_connection_args(p)
    p.add_argument("--rate", type=float, default=None, help="lines per second (default: as fast as possible)")
    p.add_argument("--key-regex", default=None, metavar="R", help="message key from the line (group 1 or whole match); default: no key, every line to partition 0 in file order")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = subparsers.add_parser("alerts", help="print alerts from the alerts topic", description=_TOOL_DESCRIPTION)
    _tool_connection_args(p)
    p.add_argument("--topic", default=None, help="topic (default: the config's topic_alerts, 'alerts')")
    p.add_argument("--from-beginning", action="store_true")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--follow", action="store_true", help="keep waiting for alerts until Ctrl-C")
    group.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="exit after SECONDS without a new alert (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p.set_defaults(func=cmd_alerts)

    p = subparsers.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) in the foreground")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--data-dir", default=None, help="working folder of the broker (storage stays in memory)")
    p.set_defaults(func=cmd_broker)

    p = subparsers.add_parser("demo", help="generate, train, stream and alert end to end on this machine")
    p.add_argument("--dir", default="demo", help="demo folder (default ./demo)")
    p.add_argument("--retrain", action="store_true", help="train a new demo model even if one exists")
    p.set_defaults(func=cmd_demo)


def _quiet_clients() -> None:
    """Kafka clients log every connection at INFO; the tools' own output is what matters (-v keeps it all)."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # its warnings are about its own event loop
    # kafka-python logs every failed connection attempt at ERROR; the tools report a failure themselves, in one
    # line (stream.connect.BrokerUnreachable when no broker answers)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    logging.getLogger("stream.broker").setLevel(logging.WARNING)


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.worker import run_worker

    flags = []
    if args.broker:
        flags.append(override("broker", args.broker))
    if args.model:
        flags.append(override("model", args.model))
    if args.session_key:
        flags.append(override("session_key", args.session_key))
    if args.session_idle is not None:
        flags.append(override("session_idle", args.session_idle))
    cfg = load_stream_config(args.config, [*flags, *args.overrides])
    return run_worker(cfg)


def cmd_replay(args: argparse.Namespace) -> int:
    from stream.security import kafka_python_kwargs
    from stream.tools import replay

    _quiet_clients()
    cfg = tool_config(args)
    topic = args.topic or cfg.topic_logs
    result = replay(args.file, cfg.bootstrap_servers, topic=topic, rate=args.rate, key_regex=args.key_regex,
                    progress=not args.no_progress, security=kafka_python_kwargs(cfg))
    print(f"replayed {result['sent']} lines to {topic} on {','.join(cfg.bootstrap_servers)}"
          + (f", {result['skipped']} skipped (too large)" if result["skipped"] else ""))
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from stream.security import kafka_python_kwargs
    from stream.tools import consume_alerts, print_alerts

    _quiet_clients()
    cfg = tool_config(args)
    alerts = consume_alerts(cfg.bootstrap_servers, topic=args.topic or cfg.topic_alerts,
                            from_beginning=args.from_beginning, follow=args.follow, timeout=args.timeout,
                            security=kafka_python_kwargs(cfg))
    try:
        print_alerts(alerts, as_json=args.json)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from stream.broker import run_foreground

    _quiet_clients()
    return run_foreground(port=args.port, data_dir=args.data_dir)


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.demo import run_demo

    _quiet_clients()
    return run_demo(args.dir, retrain=args.retrain)
