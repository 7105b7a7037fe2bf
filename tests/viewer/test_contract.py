"""The stream contract under a busy, uneven workload: every span starts exactly once before it ends, on SSE, on
the WebSocket, on the live-flow compat session and in a run's stored events, also when its start and end reach
the viewer together."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import otelflow
from otelflow.wire import RUN_ENDED, SPAN_ENDED, SPAN_STARTED
from tests.viewer.conftest import SseClient, Viewer, wait_for


def _order(events: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Event types per span id, in stream order (span.* events only)."""
    per_span: dict[str, list[str]] = defaultdict(list)
    for type_, span in events:
        per_span[span].append(type_)
    return per_span


def _assert_started_once_before_the_rest(per_span: dict[str, list[str]], ended_type: str) -> None:
    started = SPAN_STARTED if ended_type == SPAN_ENDED else "agent_started"
    for span, types in per_span.items():
        assert types[0] == started, (span, types)
        assert types.count(started) == 1, (span, types)
        assert types[-1] in (ended_type, "agent_failed"), (span, types)
        assert types.count(types[-1]) == 1, (span, types)


def _workload(viewer: Viewer, seed: int) -> tuple[str, str]:
    """A run traced by otelflow (live, through the live exporter) whose steps start and end at uneven paces,
    and a run from another SDK whose spans all arrive ended. Returns both trace ids."""
    rng = random.Random(seed)
    provider = TracerProvider(resource=Resource.create({"service.name": "contract"}))
    telemetry = otelflow.configure(tracer_provider=provider, live=viewer.url, otlp=False)
    builders = (otelflow.agent, otelflow.tool, otelflow.node)
    with otelflow.workflow("contract", run_id="job-contract") as run:
        for i in range(200):
            with rng.choice(builders)(f"step{i % 17}") as step:
                if rng.random() < 0.3:
                    step.progress(completed=i, total=200)
                if rng.random() < 0.2:
                    with otelflow.tool(f"inner{i % 5}"):
                        pass
                if rng.random() < 0.05:
                    time.sleep(0.003)  # now and then a step long enough to be seen running
    assert telemetry.force_flush(10_000)
    telemetry.shutdown()
    foreign = TracerProvider(resource=Resource.create({"service.name": "other-sdk"}))
    foreign.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{viewer.url}/v1/traces")))
    tracer = foreign.get_tracer("other")
    with tracer.start_as_current_span("invoke_workflow other") as root:
        other = format(root.get_span_context().trace_id, "032x")
        for i in range(50):
            with tracer.start_as_current_span(f"child{i}", attributes={"otelflow.kind": "agent"}):
                pass
    foreign.shutdown()
    return run.trace_id, other


def _read(conn: Any, into: list[dict[str, Any]]) -> None:
    """Every message until the connection closes."""
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            into.append(json.loads(conn.recv(timeout=60)))


def test_every_span_starts_once_before_it_ends_on_every_stream(
    make_viewer: Callable[..., Viewer], new_db: Callable[[], str]
) -> None:
    viewer = make_viewer(db=new_db())
    ws_messages: list[dict[str, Any]] = []
    compat_messages: list[dict[str, Any]] = []

    def compat_done() -> bool:
        types = [m["type"] for m in compat_messages]
        ends = types.count("agent_completed") + types.count("agent_failed")
        return ends >= 200 and ends == types.count("agent_started")

    with contextlib.ExitStack() as stack:
        sse = stack.enter_context(SseClient(f"{viewer.url}/api/stream"))
        ws = stack.enter_context(connect(f"ws://127.0.0.1:{viewer.port}/ws", open_timeout=5))
        url = f"ws://127.0.0.1:{viewer.port}/ws/live-flow/job-contract"
        compat = stack.enter_context(connect(url, open_timeout=5))
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 3, what="three subscribers")
        for conn, into in ((ws, ws_messages), (compat, compat_messages)):
            reader = threading.Thread(target=_read, args=(conn, into), daemon=True)
            reader.start()
            stack.callback(reader.join, 10)
            stack.callback(conn.close)  # runs first: the reader then sees the connection closed
        ours, other = _workload(viewer, seed=11)
        sse.read_until(lambda e: e["event"] == RUN_ENDED and e["data"]["run_id"] == other)
        wait_for(lambda: any(m.get("type") == RUN_ENDED and m["run_id"] == other for m in ws_messages), what="ws")
        wait_for(compat_done, what="every agent, node and tool of the run on the compat session")

    def span_of(message: dict[str, Any]) -> str:
        return str(message["span"]["span_id"] if "span" in message else message["span_id"])

    on_sse = [(e["event"], span_of(e["data"])) for e in sse.events if e["event"].startswith("span.")]
    on_ws = [(m["type"], span_of(m)) for m in ws_messages if m["type"].startswith("span.")]
    assert on_sse == on_ws  # the same events, in the same order, on both transports
    per_span = _order(on_sse)
    assert len(per_span) >= 252  # our run's root and 200 steps (and their inner tools), the other run's 51 spans
    assert {types[-1] for types in per_span.values()} == {SPAN_ENDED}
    _assert_started_once_before_the_rest(per_span, SPAN_ENDED)  # span.event comes between the two
    compat = _order([(m["type"], m["agent_id"]) for m in compat_messages if m["type"].startswith("agent_")])
    assert len(compat) >= 200
    _assert_started_once_before_the_rest(compat, "agent_completed")
    assert ours != other

    # the history replays the same events, ids included (the browser's replay and `?after=` read them): also the
    # starts the viewer made up for spans that arrived ended, which it stores as the span's id alone
    for trace in (ours, other):
        live = [e["data"] for e in sse.events if e["data"].get("run_id") == trace]
        count = len(live)
        wait_for(lambda t=trace, n=count: len(_stored(viewer, t)) == n, what="the history to hold every event")
        assert _stored(viewer, trace) == live
    made_up = [e for e in _stored(viewer, other) if e["type"] == SPAN_STARTED]
    assert len(made_up) == 51
    assert {e["span"]["status"] for e in made_up} == {"running"}


def _stored(viewer: Viewer, run: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = httpx.get(f"{viewer.url}/api/runs/{run}/events", timeout=10).json()["events"]
    return events
