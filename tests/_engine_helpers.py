"""What the engine, instrumentor and example tests share: a guarded event loop, small async nodes, traced runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otelflow
from otelflow.engine import AsyncFlow, AsyncNode
from otelflow.engine.instrumentor import EngineInstrumentor

T = TypeVar("T")
GUARD_S = 5.0  # upper bound for waits that must succeed quickly; only reached when a test fails


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh event loop, failing instead of hanging if it never finishes."""

    async def guarded() -> T:
        return await asyncio.wait_for(coro, GUARD_S)

    return asyncio.run(guarded())


async def cancel_once_started(flow: AsyncFlow, started: list[asyncio.Event]) -> None:
    """Run ``flow`` in a task, cancel it once every ``started`` event is set, and check that it ends cancelled."""
    task = asyncio.create_task(flow.run_async({}))
    for event in started:
        await event.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def opentelemetry_instrument(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``opentelemetry-instrument python script`` with console span export, plus ``env``; must exit with 0.

    ``OTELFLOW_VIEWER_URL`` comes only from ``env``, never from the test's own environment.
    """
    full_env = {
        **{key: value for key, value in os.environ.items() if key != "OTELFLOW_VIEWER_URL"},
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        **env,
    }
    result = subprocess.run(
        [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


@contextlib.contextmanager
def memory_exporter() -> Iterator[InMemorySpanExporter]:
    """A real SDK provider with an in-memory exporter, set up through otelflow.configure; not instrumented."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    telemetry = otelflow.configure(tracer_provider=provider, live=False, otlp=False)
    try:
        yield memory
    finally:
        telemetry.shutdown()
        provider.shutdown()


@contextlib.contextmanager
def engine_instrumented() -> Iterator[None]:
    """The engine traced by EngineInstrumentor while the block runs."""
    instrumentor = EngineInstrumentor()
    instrumentor.instrument()
    try:
        yield
    finally:
        instrumentor.uninstrument()


class Meet(AsyncNode):
    """Sets its own event, then waits for the partner's: completes only if both run at the same time."""

    def __init__(self, name: str, events: dict[str, asyncio.Event], partner: str) -> None:
        super().__init__(name=name)
        self.events = events
        self.partner = partner

    async def exec_async(self, prep_result: Any) -> Any:
        self.events[self.name].set()
        await self.events[self.partner].wait()
        return self.name

    async def post_async(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared[exec_result] = True
        return None


class Hang(AsyncNode):
    """Signals that it started, then waits until cancelled; records its cancellation and cleanup in ``log``."""

    def __init__(self, name: str, started: asyncio.Event, log: list[str] | None = None) -> None:
        super().__init__(name=name)
        self.started = started
        self.log = [] if log is None else log

    async def exec_async(self, prep_result: Any) -> Any:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.log.append(f"{self.name} cancelled")
            raise
        finally:
            self.log.append(f"{self.name} cleanup")
