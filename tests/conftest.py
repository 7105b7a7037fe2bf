"""Shared fixtures: a real SDK TracerProvider wired through otelflow.configure()."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otelflow
from otelflow.records import SpanRecord
from tests.pg_server import PgServer
from tests.pg_server import missing as pg_missing
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from tests.viewer.conftest import Viewer


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


@dataclass
class Traced:
    """A configured otelflow: finished spans from a real InMemorySpanExporter, live records from the sink."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    telemetry: otelflow.Telemetry
    records: list[SpanRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [s for s in self.spans() if s.name == name]
        assert len(found) == 1, f"expected one span {name!r}, got {[s.name for s in self.spans()]}"
        return found[0]

    def live(self) -> list[SpanRecord]:
        assert self.telemetry.live_processor is not None
        assert self.telemetry.live_processor.force_flush(5000)
        with self.lock:
            return list(self.records)


@pytest.fixture
def traced() -> Iterator[Traced]:
    provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = otelflow.configure(tracer_provider=provider, otlp=False, live=True)
    result = Traced(provider, exporter, telemetry)
    sink = telemetry.sink
    assert isinstance(sink, otelflow.InProcessSink)

    def collect(batch: Sequence[SpanRecord]) -> None:
        with result.lock:
            result.records.extend(batch)

    sink.subscribe(collect)
    yield result
    telemetry.shutdown()
    provider.shutdown()


@pytest.fixture
def make_viewer() -> Iterator[Callable[..., Viewer]]:
    """Start viewers (``create_app(**kwargs)``, real uvicorn on a free loopback port); stopped at the end."""
    from otelflow.viewer.app import create_app
    from tests.viewer.conftest import Viewer

    started: list[Viewer] = []

    def make(**kwargs: Any) -> Viewer:
        viewer = Viewer(create_app(**kwargs)).start()
        started.append(viewer)
        return viewer

    yield make
    for viewer in started:
        if viewer.thread.is_alive():
            viewer.stop()


# ------------------------------------------------------------------------------------------------
# History stores: a throwaway PostgreSQL (tests/pg_server.py), and fixtures that run a test once per store
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session. Without its programs the test skips, except under CI (``$CI``
    set), where it fails: CI must run it."""
    reason = pg_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests must run in CI: {reason}")
        pytest.skip(reason)
    server = PgServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a new, empty database of the session's server."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgres"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Runs the test once per history store: each call gives a new, empty place for a history, a SQLite file or
    (``postgres``) the URL of a new PostgreSQL database. Pass it as ``create_app(db=...)`` or to
    :func:`otelflow.viewer.history.history_for`."""
    if request.param == "sqlite":
        count = iter(range(1_000_000))
        return lambda: str(tmp_path / f"history-{next(count)}.db")
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway ``redis-server`` on a free loopback port (skips without it, fails under CI)."""
    server = RedisServer().start()
    yield server
    server.close()
