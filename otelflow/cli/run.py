"""``otelflow run``: runs a Python script as ``__main__`` with engine tracing and live streaming to a viewer.

The viewer is ``--viewer`` (or ``OTELFLOW_VIEWER_URL``): one URL, or several replicas separated by commas (spans
go to one at a time, the next when it fails); without one, a viewer is embedded in this process on ``--port``.
``OTELFLOW_VIEWER_URL`` is set for the script and its child processes, so a script that calls
``otelflow.configure()`` itself, or starts workers, streams to the same viewer. Each run (trace) is announced on
standard error with its URL as it starts. The exit status is the script's (130 when Ctrl-C interrupted it).

With an embedded viewer the process keeps serving after the script ended, until Ctrl-C (or SIGTERM), when
standard input is a terminal; otherwise it exits once the script's spans are delivered. ``--exit`` (or
``OTELFLOW_RUN_EXIT=1``) always exits, ``--keep-serving`` (or ``OTELFLOW_RUN_EXIT=0``) always keeps serving.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from otelflow import config
from otelflow.cli.embedded import EmbeddedViewer, RunAnnouncer, ViewerStartError
from otelflow.engine.instrumentor import EngineInstrumentor
from otelflow.sinks import InProcessSink, LiveExporter, viewer_urls

__all__ = ["ENV_RUN_EXIT", "main"]

ENV_RUN_EXIT = "OTELFLOW_RUN_EXIT"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _say(line: str) -> None:
    sys.stderr.write(f"otelflow: {line}\n")
    sys.stderr.flush()


def _exit_code(code: object) -> int:
    """The process status ``sys.exit(code)`` gives, as Python computes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if code >= 0 else code % 256
    print(code, file=sys.stderr)
    return 1


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_script(path: str, argv: list[str]) -> int:
    """Run ``path`` as ``__main__`` as ``python path argv...`` would; returns its exit status."""
    saved_argv, saved_path0 = sys.argv, sys.path[0] if sys.path else None
    sys.argv = [path, *argv]
    directory = str(Path(path).resolve().parent)
    if sys.path:
        sys.path[0] = directory
    else:
        sys.path.insert(0, directory)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM unwinds the script like Ctrl-C
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt:
        _say(f"{path} interrupted")
        return 130
    except BaseException as exc:  # noqa: BLE001 - report it as Python would, then exit 1
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next  # hide otelflow's and runpy's frames
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        sys.argv = saved_argv
        if saved_path0 is not None:
            sys.path[0] = saved_path0
    return 0


def _keep_serving(choice: str | None = None) -> bool:
    """``--keep-serving`` / ``--exit`` when given, else ``OTELFLOW_RUN_EXIT``, else: when stdin is a terminal."""
    if choice is not None:
        return choice == "serve"
    raw = os.environ.get(ENV_RUN_EXIT, "").strip().lower()
    if raw in _TRUE:
        return False
    if raw in _FALSE:
        return True
    return sys.stdin is not None and sys.stdin.isatty()


def _wait_for_stop(viewer: EmbeddedViewer) -> None:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    while not stop.wait(0.25) and viewer.serving:
        pass


def main(args: argparse.Namespace) -> int:
    """Run ``args.script`` with ``args.args`` (viewer URL ``args.viewer``, embedded viewer port ``args.port``)."""
    path: str = args.script
    if not Path(path).is_file():
        print(f"otelflow run: no such script: {path}", file=sys.stderr)
        return 2
    service = os.environ.get("OTEL_SERVICE_NAME") or Path(path).stem
    viewer: EmbeddedViewer | None = None
    try:
        telemetry = config.configure(service_name=service, live=args.viewer or True)
    except ValueError as exc:
        print(f"otelflow run: {exc}", file=sys.stderr)
        return 2
    if args.viewer:
        urls = viewer_urls(args.viewer)  # configure() accepted them
        url: str = urls[0]  # run pages are announced on the first replica; every replica shows every run
        if len(urls) == 1:
            _say(f"streaming to the viewer at {url}")
        else:
            _say(f"streaming to the viewer replicas {', '.join(urls)} (one at a time, the next when one fails)")
    else:
        in_process = telemetry.sink
        assert isinstance(in_process, InProcessSink)  # live=True always gives the in-process sink
        try:
            viewer = EmbeddedViewer("127.0.0.1", args.port).start(in_process)
        except ViewerStartError as exc:
            telemetry.shutdown()
            print(f"otelflow run: {exc}", file=sys.stderr)
            return 2
        except ImportError as exc:
            telemetry.shutdown()
            print(
                f"otelflow run: the embedded viewer needs the viewer extra ({exc.name} is missing): "
                'pip install "otelflow[viewer]", or pass --viewer URL of a running `otelflow serve`',
                file=sys.stderr,
            )
            return 2
        url = viewer.url
        _say(f"viewer at {url}  (live stream: curl -N {url}/api/stream)")
    # the script's own configure() and its workers stream there too
    os.environ[config.ENV_VIEWER_URL] = ",".join(viewer_urls(args.viewer)) if args.viewer else url
    sink = telemetry.sink
    # with viewer replicas, a run's link names the one its spans go to when it starts
    base: str | Callable[[], str] = (lambda: sink.url) if isinstance(sink, LiveExporter) else url
    telemetry.tracer_provider.add_span_processor(RunAnnouncer(base, sys.stderr, prefix="otelflow: "))
    EngineInstrumentor().instrument()

    code = _run_script(path, list(args.args))

    for current in {id(t): t for t in (telemetry, config.current()) if t is not None}.values():
        current.force_flush(5_000)  # the script's last spans reach the viewer
    if viewer is None:
        return code
    if code != 130 and _keep_serving(getattr(args, "after", None)):
        _say(f"{path} exited with status {code}; the viewer keeps serving at {url} (Ctrl-C to stop)")
        _wait_for_stop(viewer)
    viewer.stop(8.0)
    return code
