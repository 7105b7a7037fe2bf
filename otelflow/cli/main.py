"""The ``otelflow`` command's parser: one subcommand each for serve, demo, run, tail and export."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from otelflow import __version__

__all__ = ["build_parser", "main"]

DEFAULT_PORT = 8080
DEFAULT_VIEWER = f"http://127.0.0.1:{DEFAULT_PORT}"
# The viewer server's own log levels: the logging module's names, as uvicorn takes them.
_LOG_LEVELS = [
    logging.getLevelName(level).lower() for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR)
]


def _viewer_missing(exc: ImportError) -> int:
    print(
        f'otelflow: the viewer needs its extra dependencies ({exc.name} is missing).\n  pip install "otelflow[viewer]"',
        file=sys.stderr,
    )
    return 2


def _port(value: str) -> int:
    """An argparse type: a TCP port number, 0..65535 (0 picks a free port)."""
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port: use 0..65535 (0 picks a free one)")
    return port


def _host(value: str) -> str:
    """An argparse type: a host name or address without a port (``otelflow.viewer.allowed_host``)."""
    try:
        from otelflow.viewer import ViewerConfigError, allowed_host
    except ImportError:
        return value  # serve reports the missing extra
    try:
        return str(allowed_host(value))
    except ViewerConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from otelflow.viewer import HistoryError, ViewerConfigError, serve
    except ImportError as exc:
        return _viewer_missing(exc)

    def ready(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        print(f"otelflow viewer listening on http://{shown}:{port}", flush=True)
        print(f"  live stream: curl -N http://{shown}:{port}/api/stream", flush=True)

    try:
        serve(
            args.host,
            args.port,
            db=args.db,
            token=args.token,
            retention_days=args.retention_days if args.retention_days > 0 else None,
            max_runs=args.max_runs if args.max_runs > 0 else None,
            allowed_hosts=args.allowed_host or (),
            allowed_origins=args.allow_origin or (),
            ready_callback=ready,
            log_level=args.log_level,
            idle_run_s=args.idle_run_timeout,
            max_backlog_bytes=args.history_backlog_mb * 1024 * 1024,
            max_db_bytes=int(args.max_db_mb * 1024 * 1024) or None,
            alerts_path=args.alerts,
            stall_after_s=args.stall_after or None,
            prices_path=args.prices,
            broker_url=args.broker,
            broker_maxlen=args.broker_maxlen,
        )
    except (ViewerConfigError, HistoryError) as exc:
        print(f"otelflow serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from otelflow.cli.demo import main as demo_main
    except ImportError as exc:
        return _viewer_missing(exc)
    return demo_main(args)


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        from otelflow.cli.run import main as run_main
    except ImportError as exc:
        return _viewer_missing(exc)
    return run_main(args)


def _cmd_tail(args: argparse.Namespace) -> int:
    from otelflow.cli.tail import main as tail_main

    return tail_main(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from otelflow.cli.export import main as export_main

    return export_main(args)


def _non_negative_number(unit: str) -> Callable[[str], float]:
    """An argparse type: a number of ``unit``, 0 or more."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
        return value

    return parse


_megabytes = _non_negative_number("megabytes")
_non_negative = _non_negative_number("seconds")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the live viewer (OTLP receiver, SSE/WebSocket streams, history)")
    serve.add_argument("--host", default=os.environ.get("OTELFLOW_HOST", "127.0.0.1"), help="default 127.0.0.1")
    serve.add_argument(
        "--port", type=_port, default=os.environ.get("OTELFLOW_PORT", str(DEFAULT_PORT)), help="0 picks a free port"
    )
    serve.add_argument("--db", default=os.environ.get("OTELFLOW_DB") or None, help="SQLite file, or :memory:")
    serve.add_argument("--token", default=None, help="required for non-loopback hosts (or OTELFLOW_TOKEN)")
    serve.add_argument(
        "--broker",
        default=os.environ.get("OTELFLOW_BROKER") or None,
        metavar="redis://HOST:PORT/DB",
        help="share one live stream with other replicas through this Redis (default $OTELFLOW_BROKER)",
    )
    serve.add_argument(
        "--broker-maxlen",
        type=_positive_int,
        default=20_000,
        metavar="ENTRIES",
        help="requests the broker's stream keeps, about (default 20000)",
    )
    serve.add_argument("--retention-days", type=float, default=30.0, help="drop runs older than this (0: keep)")
    serve.add_argument("--max-runs", type=int, default=10_000, help="keep at most this many runs (0: no limit)")
    serve.add_argument(
        "--max-db-mb",
        type=_megabytes,
        default=0.0,
        metavar="MB",
        help="past this size in use, the oldest ended runs leave the history (0: no limit, the default)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        type=_host,
        metavar="NAME",
        help="a Host name the viewer answers to besides loopback and --host (repeatable)",
    )
    serve.add_argument("--allow-origin", action="append", help="extra Origin allowed (repeatable)")
    serve.add_argument(
        "--idle-run-timeout",
        type=_non_negative,
        default=300.0,
        metavar="SECONDS",
        help="end as abandoned a run nothing was heard of for this long, with no live worker (0: never)",
    )
    serve.add_argument(
        "--history-backlog-mb",
        type=_positive_int,
        default=128,
        metavar="MB",
        help="rows waiting for the history database beyond this: new spans get 503 (default 128)",
    )
    serve.add_argument(
        "--alerts",
        default=os.environ.get("OTELFLOW_ALERTS") or None,
        metavar="RULES.toml",
        help="alert rules and webhooks (see README, 'Stuck work and alerts'; default $OTELFLOW_ALERTS)",
    )
    serve.add_argument(
        "--stall-after",
        type=_non_negative,
        default=300.0,
        metavar="SECONDS",
        help="flag a running span stalled when nothing of it moved for this long (0: only by rules; default 300)",
    )
    serve.add_argument(
        "--prices",
        default=os.environ.get("OTELFLOW_PRICES") or None,
        metavar="FILE",
        help="a price table (JSON, USD per 1M tokens) over the shipped one (see README, 'Model calls'; "
        "default $OTELFLOW_PRICES)",
    )
    serve.add_argument("--log-level", default=logging.getLevelName(logging.WARNING).lower(), choices=_LOG_LEVELS)
    serve.set_defaults(func=_cmd_serve)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="start the viewer and keep running the example workflows")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=DEFAULT_PORT)
    demo.add_argument("--db", default=":memory:", help="SQLite file for the demo's history (default in memory)")
    demo.add_argument(
        "--interval",
        type=float,
        default=4.0,
        help="seconds between new runs; also paces the simulated work (a run lasts about 2/3 of it, at most ~2.5 s)",
    )
    demo.add_argument("--runs", type=int, default=0, help="stop after this many runs (0: until Ctrl-C)")
    demo.set_defaults(func=_cmd_demo)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run a Python script with tracing and live streaming")
    run.add_argument(
        "--viewer",
        default=os.environ.get("OTELFLOW_VIEWER_URL"),
        help="viewer URL, or several replicas separated by commas (default: embedded)",
    )
    run.add_argument("--port", type=_port, default=DEFAULT_PORT, help="port of the embedded viewer")
    after = run.add_mutually_exclusive_group()
    after.add_argument(
        "--exit",
        dest="after",
        action="store_const",
        const="exit",
        help="with an embedded viewer, exit when the script ends",
    )
    after.add_argument(
        "--keep-serving",
        dest="after",
        action="store_const",
        const="serve",
        help="with an embedded viewer, keep serving after the script ends until Ctrl-C "
        "(default: only when standard input is a terminal; OTELFLOW_RUN_EXIT)",
    )
    run.add_argument("script", help="the Python script to run")
    run.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    run.set_defaults(func=_cmd_run)


def _add_tail(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = sub.add_parser("tail", help="follow runs live in the terminal")
    tail.add_argument("run", nargs="?", help="trace id or otelflow.run.id (default: the newest running run)")
    tail.add_argument("--viewer", default=os.environ.get("OTELFLOW_VIEWER_URL", DEFAULT_VIEWER))
    tail.add_argument("--token", default=os.environ.get("OTELFLOW_TOKEN"))
    tail.add_argument("--all", action="store_true", help="follow every run")
    tail.add_argument("--kind", action="append", help="only these span kinds (repeatable)")
    tail.add_argument(
        "--running",
        action="store_true",
        help="only what runs now: running runs and their running spans, stalled ones first; ended ones drop out",
    )
    tail.add_argument("--json", action="store_true", help="print raw envelopes, one per line")
    tail.set_defaults(func=_cmd_tail)


def _add_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = sub.add_parser("export", help="export a run from the viewer")
    export.add_argument("run", help="trace id or otelflow.run.id")
    export.add_argument("--viewer", default=os.environ.get("OTELFLOW_VIEWER_URL", DEFAULT_VIEWER))
    export.add_argument("--token", default=os.environ.get("OTELFLOW_TOKEN"))
    export.add_argument("--format", choices=["otlp-json", "jsonl"], default="otlp-json")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    export.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``func``, which runs it and returns the exit status."""
    parser = argparse.ArgumentParser(prog="otelflow", description="Watch workflows of agents and nodes run live.")
    parser.add_argument("--version", action="version", version=f"otelflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_serve, _add_demo, _add_run, _add_tail, _add_export):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``otelflow`` with ``argv`` (default: the process's arguments); returns the exit status."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
