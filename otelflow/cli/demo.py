"""``otelflow demo``: the viewer, embedded, watching the example workflows run again and again.

Deterministic and offline: the workflows of :mod:`otelflow.engine.demo` with short simulated pauses. A new
run starts every ``--interval`` seconds, cycling through a content pipeline, parallel research agents, a flaky
agent that recovers through retries and a fallback, a support triage whose agents make simulated model calls
(the reply streams word by word), a run that fails and a run that is cancelled. The
pauses scale with the interval (``--interval 0.1`` is a fast demo). ``--runs N`` stops once N runs finished.
Each run has a readable run id, ``demo-0001``, ``demo-0002``..., printed in its run lines; the viewer finds the
run by it too (``/runs/demo-0007``, ``/api/runs/demo-0007``).
SIGINT (Ctrl-C) or SIGTERM cancels the runs in flight (their spans end as cancelled), tells the stream clients
``shutdown`` and exits with status 0 within about ten seconds; a second Ctrl-C exits at once (status 130).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from otelflow.cli.embedded import EmbeddedViewer, RunAnnouncer, ViewerStartError
from otelflow.config import configure
from otelflow.engine.demo import SCENARIOS, Scenario
from otelflow.engine.instrumentor import EngineInstrumentor
from otelflow.sinks import InProcessSink

__all__ = ["main"]

MAX_PACE_S = 0.3  # seconds per unit of simulated work at the default interval (a run lasts a few seconds)


def pace_for(interval: float) -> float:
    """Seconds per unit of simulated work: runs last about two thirds of the interval (capped)."""
    return min(MAX_PACE_S, max(interval, 0.0) / 12)


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_id_for(index: int) -> str:
    """The run id of the demo's ``index``-th run (0-based): ``demo-0001``, ``demo-0002``..."""
    return f"demo-{index + 1:04d}"


async def _run_one(scenario: Scenario, pace: float, n: int, run_id: str) -> None:
    with contextlib.suppress(Exception):  # the failing scenario fails on purpose; its trace tells the story
        await scenario.run(pace, n, run_id)


async def _schedule(runs: int, interval: float, pace: float, stop: asyncio.Event) -> int:
    """Start a run every ``interval`` s until ``stop`` (or ``runs`` started and finished); returns how many ran."""
    tasks: set[asyncio.Task[None]] = set()
    stopping = asyncio.create_task(stop.wait())
    started = 0
    try:
        while not stop.is_set() and (runs <= 0 or started < runs):
            scenario = SCENARIOS[started % len(SCENARIOS)]
            task = asyncio.create_task(_run_one(scenario, pace, started // len(SCENARIOS), run_id_for(started)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            started += 1
            if runs <= 0 or started < runs:
                await asyncio.wait({stopping}, timeout=max(interval, 0.01))
        while tasks and not stop.is_set():  # --runs: let the last ones finish
            await asyncio.wait({*tasks, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)
    return started


def _install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set ``stop``; a second SIGINT raises KeyboardInterrupt. Returns a function restoring them."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C is not polite
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def main(args: argparse.Namespace) -> int:
    """Run the demo (arguments: host, port, db, interval, runs); returns the exit status."""
    if args.interval < 0 or args.runs < 0:
        print("otelflow demo: --interval and --runs must not be negative", file=sys.stderr)
        return 2
    telemetry = configure(service_name=os.environ.get("OTEL_SERVICE_NAME") or "otelflow-demo", live=True)
    sink = telemetry.sink
    assert isinstance(sink, InProcessSink)  # live=True always gives the in-process sink
    try:
        viewer = EmbeddedViewer(args.host, args.port, db=args.db).start(sink)
    except ViewerStartError as exc:
        telemetry.shutdown()
        print(f"otelflow demo: {exc}", file=sys.stderr)
        return 2
    instrumentor = EngineInstrumentor()
    instrumentor.instrument()
    telemetry.tracer_provider.add_span_processor(RunAnnouncer(viewer.url, sys.stdout, prefix="  "))

    kinds = ", ".join(dict.fromkeys(s.name for s in SCENARIOS))
    _say(f"otelflow demo: the viewer is running at {viewer.url}")
    _say(f"  live stream:   curl -N {viewer.url}/api/stream")
    _say(f"  a new run every {args.interval:g} s ({kinds})")
    _say("  Ctrl-C to stop" if args.runs <= 0 else f"  stopping after {args.runs} runs (Ctrl-C to stop sooner)")
    _say()

    async def run() -> int:
        stop = asyncio.Event()
        restore = _install_stop_handlers(asyncio.get_running_loop(), stop)
        try:
            return await _schedule(args.runs, args.interval, pace_for(args.interval), stop)
        finally:
            restore()

    try:
        count = asyncio.run(run())
    except KeyboardInterrupt:  # the second Ctrl-C
        viewer.stop(2.0)
        return 130
    telemetry.force_flush(2_000)  # the last spans reach the viewer before it says goodbye
    stopped = viewer.stop(8.0)
    instrumentor.uninstrument()
    telemetry.shutdown()
    _say(f"otelflow demo: stopped after {count} run{'s' if count != 1 else ''}.")
    return 0 if stopped else 1
