"""The vertical slice: OTLP in (JSON and protobuf from the real OTel exporter) → hub → SSE out, and REST."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from otelflow import attributes as A
from otelflow.records import EventRecord
from otelflow.viewer.decode import from_otlp_json
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for

ENVELOPE_SPAN_KEYS = {
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "status",
    "start_time",
    "end_time",
    "duration_ms",
    "service",
    "attributes",
    "events",
    "error",
}


def test_sse_sees_a_run_from_start_to_end(viewer: Viewer) -> None:
    trace, root, child = trace_id(), span_id(), span_id()
    with SseClient(f"{viewer.url}/api/stream") as sse:
        assert sse.response.status_code == 200
        assert sse.response.headers["content-type"].startswith("text/event-stream")
        assert sse.response.headers["cache-control"] == "no-store"
        assert sse.response.headers["x-accel-buffering"] == "no"
        assert "gzip" not in sse.response.headers.get("content-encoding", "")
        progress = EventRecord(A.EVENT_PROGRESS, 5, {A.PROGRESS_PERCENT: 50.0, A.PROGRESS_MESSAGE: "half"})
        assert (
            viewer.post_json([record(trace, root, "invoke_workflow demo", kind="workflow", run_id="job-1")]).status_code
            == 200
        )
        assert viewer.post_json([record(trace, child, "fetch", parent=root, events=(progress,))]).status_code == 200
        viewer.post_json([record(trace, child, "fetch", parent=root, events=(progress,), ended=True)])
        viewer.post_json([record(trace, root, "invoke_workflow demo", kind="workflow", run_id="job-1", ended=True)])
        sse.read_until(lambda e: e["event"] == "run.ended")
        assert sse.retry == 2000
        types = [e["event"] for e in sse.events]
        assert types == [
            "run.started",
            "span.started",
            "span.started",
            "span.event",
            "run.updated",  # progress
            "span.ended",
            "span.ended",
            "run.ended",
        ], types
        for e in sse.events:
            assert e["id"] == e["data"]["id"]
            assert e["event"] == e["data"]["type"]
            assert e["data"]["run_id"] == trace
        seqs = [int(e["id"].split(".")[1]) for e in sse.events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        started = next(e for e in sse.events if e["event"] == "span.started")["data"]["span"]
        assert set(started) == ENVELOPE_SPAN_KEYS
        assert started["status"] == "running"
        assert started["end_time"] is None
        ended = [e["data"]["span"] for e in sse.events if e["event"] == "span.ended"]
        assert {s["span_id"] for s in ended} == {root, child}
        assert all(s["status"] == "ok" and s["end_time"].endswith("Z") for s in ended)
        run_end = sse.events[-1]["data"]["run"]
        assert run_end["status"] == "ok"
        assert run_end["otelflow_run_id"] == "job-1"
        assert run_end["progress"]["percent"] == 50.0


def _sdk_provider(url: str, service: str) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    return provider


def test_protobuf_from_the_real_otlp_exporter_and_rest(viewer: Viewer) -> None:
    provider = _sdk_provider(viewer.url, "pb-service")
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("invoke_workflow wf", attributes={A.RUN_ID: "job-pb", A.KIND: "workflow"}):
        with tracer.start_as_current_span("execute_tool search", attributes={"gen_ai.operation.name": "execute_tool"}):
            pass
        with tracer.start_as_current_span("invoke_agent writer", attributes={A.OPENINFERENCE_SPAN_KIND: "AGENT"}) as s:
            s.set_status(Status(StatusCode.ERROR, "bad"))
    provider.shutdown()
    runs = httpx.get(f"{viewer.url}/api/runs", timeout=5).json()
    assert runs["total"] == 1
    run = runs["runs"][0]
    assert run["status"] == "ok"
    assert run["otelflow_run_id"] == "job-pb"
    assert run["service"] == "pb-service"
    detail = httpx.get(f"{viewer.url}/api/runs/job-pb", timeout=5).json()
    assert detail["run"]["trace_id"] == run["trace_id"]
    kinds = {s["name"]: (s["kind"], s["status"]) for s in detail["spans"]}
    assert kinds == {
        "invoke_workflow wf": ("workflow", "ok"),
        "execute_tool search": ("tool", "ok"),
        "invoke_agent writer": ("agent", "error"),
    }
    (root,) = detail["tree"]
    assert len(root["children"]) == 2
    same = httpx.get(f"{viewer.url}/api/runs/{run['trace_id']}", timeout=5).json()
    assert same["run"]["trace_id"] == run["trace_id"]
    assert httpx.get(f"{viewer.url}/api/runs/nope", timeout=5).status_code == 404
    stats = httpx.get(f"{viewer.url}/api/stats", timeout=5).json()["stats"]
    writer = next(s for s in stats if s["name"] == "invoke_agent writer")
    assert writer["count"] == 1
    assert writer["error_rate"] == 1.0
    assert writer["p95_ms"] >= 0


def test_runs_list_filters_and_pagination(make_viewer: Callable[..., Viewer], new_db: Callable[[], str]) -> None:
    viewer = make_viewer(db=new_db())
    for i in range(7):
        t = trace_id()
        viewer.post_json(
            [
                record(
                    t,
                    span_id(),
                    f"wf{i % 2}",
                    kind="workflow",
                    run_id=f"job-{i}",
                    ended=True,
                    error=i == 3,
                    start=1_000_000_000 * (i + 1),
                )
            ]
        )
    page = httpx.get(f"{viewer.url}/api/runs", params={"limit": 3}, timeout=5).json()
    assert page["total"] == 7
    assert [r["otelflow_run_id"] for r in page["runs"]] == ["job-6", "job-5", "job-4"]
    page2 = httpx.get(f"{viewer.url}/api/runs", params={"limit": 3, "offset": 3}, timeout=5).json()
    assert [r["otelflow_run_id"] for r in page2["runs"]] == ["job-3", "job-2", "job-1"]
    errors = httpx.get(f"{viewer.url}/api/runs", params={"status": "error"}, timeout=5).json()
    assert [r["otelflow_run_id"] for r in errors["runs"]] == ["job-3"]
    named = httpx.get(f"{viewer.url}/api/runs", params={"name": "wf1"}, timeout=5).json()
    assert named["total"] == 3
    assert httpx.get(f"{viewer.url}/api/runs", params={"limit": 0}, timeout=5).status_code == 400
    assert httpx.get(f"{viewer.url}/api/runs", params={"service": "other"}, timeout=5).json()["total"] == 0


def test_runs_page_by_cursor_through_every_run_once_in_order(
    make_viewer: Callable[..., Viewer], new_db: Callable[[], str]
) -> None:
    viewer = make_viewer(db=new_db())
    for i in range(9):  # three runs start at each of three instants: ties are ordered by trace id
        start = 5_000_000_000 + (i // 3) * 1_000_000_000
        viewer.post_json(
            [record(trace_id(), span_id(), "wf", kind="workflow", run_id=f"job-{i}", ended=True, start=start)]
        )

    def runs(**params: Any) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{viewer.url}/api/runs", params=params, timeout=5).json()
        return answer

    wait_for(lambda: runs()["total"] == 9, what="nine stored runs")
    everything = [r["trace_id"] for r in runs(limit=100)["runs"]]
    seen: list[str] = []
    page = runs(limit=2)
    while True:
        seen += [r["trace_id"] for r in page["runs"]]
        if page["next"] is None:
            break
        page = runs(limit=2, after=page["next"])
    assert seen == everything
    assert runs(after="nonsense")["error"].startswith("after must be")


def test_export_round_trips_and_events_replay(make_viewer: Callable[..., Viewer], new_db: Callable[[], str]) -> None:
    viewer = make_viewer(db=new_db())
    t, root, child = trace_id(), span_id(), span_id()
    viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-x")])
    viewer.post_json([record(t, child, "a", parent=root, kind="agent", ended=True)])
    viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-x", ended=True)])
    exported = httpx.get(f"{viewer.url}/api/runs/job-x/export", timeout=5).json()
    records, rejected = from_otlp_json(exported)
    assert not rejected
    assert {r.span_id for r in records} == {root, child}
    other = make_viewer(db=new_db())
    response = httpx.post(
        f"{other.url}/v1/traces", content=json.dumps(exported), headers={"content-type": "application/json"}, timeout=5
    )
    assert response.status_code == 200
    assert response.json() == {}
    again = httpx.get(f"{other.url}/api/runs/job-x", timeout=5).json()
    assert {s["span_id"] for s in again["spans"]} == {root, child}
    assert again["run"]["status"] == "ok"
    events = httpx.get(f"{viewer.url}/api/runs/job-x/events", timeout=5).json()["events"]
    assert next(e["type"] for e in events) == "run.started"
    assert events[-1]["type"] == "run.ended"
    after = httpx.get(f"{viewer.url}/api/runs/job-x/events", params={"after": events[1]["id"]}, timeout=5).json()
    assert after["events"] == events[2:]
    assert httpx.get(f"{viewer.url}/api/runs/job-x/events", params={"after": "zz.1"}, timeout=5).status_code == 404


def test_run_stream_replays_the_run_and_closes_when_it_ends(viewer: Viewer) -> None:
    t, root = trace_id(), span_id()
    viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-r")])
    viewer.post_json([record(trace_id(), span_id(), "noise", kind="workflow")])
    done = threading.Event()

    def finish() -> None:
        viewer.post_json([record(t, span_id(), "agent", parent=root, kind="agent", ended=True)])
        viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-r", ended=True)])
        done.set()

    with SseClient(f"{viewer.url}/api/runs/job-r/stream?kind=agent") as sse:
        first = sse.next_event()
        assert first is not None
        assert first["event"] == "run.started"
        threading.Thread(target=finish).start()
        events = sse.read_all()  # ends by itself after run.ended
    assert done.wait(5)
    assert [e["event"] for e in events] == ["run.started", "span.started", "span.ended", "run.ended"]
    assert all(e["data"]["run_id"] == t for e in events)
    # the run is over: a new run stream says so and closes
    with SseClient(f"{viewer.url}/api/runs/job-r/stream") as sse:
        assert [e["event"] for e in sse.read_all()] == [
            "run.started",
            "span.started",  # the root
            "span.started",  # the agent, which arrived already ended
            "span.ended",
            "span.ended",
            "run.ended",
        ]


def test_healthz(viewer: Viewer) -> None:
    body = httpx.get(f"{viewer.url}/healthz", timeout=5).json()
    assert body["status"] == "ok"
    assert body["last_event_id"] == f"{viewer.hub.broadcast.epoch}.0"
    wait_for(lambda: True)


def test_sockets_the_viewer_binds_itself_send_small_writes_at_once() -> None:
    """`otelflow serve` and the embedded viewer bind their own sockets; asyncio turns Nagle's algorithm off
    (TCP_NODELAY) only on sockets it knows are TCP, and without that every response and SSE event on a
    kept-alive connection waits for the client's delayed ACK (40 ms on Linux)."""
    import asyncio
    import socket

    from otelflow.cli.embedded import EmbeddedViewer
    from otelflow.viewer.app import bind_socket

    async def nodelay_of_accepted(sock: socket.socket) -> int:
        accepted: asyncio.Future[asyncio.BaseTransport] = asyncio.get_running_loop().create_future()

        class Grab(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.set_result(transport)

        server = await asyncio.get_running_loop().create_server(Grab, sock=sock)
        client = socket.create_connection(sock.getsockname()[:2])
        try:
            transport = await asyncio.wait_for(accepted, 5)
            value = int(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()
            return value
        finally:
            client.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(nodelay_of_accepted(bind_socket("127.0.0.1", 0))) == 1
    embedded = EmbeddedViewer(port=0)
    assert asyncio.run(nodelay_of_accepted(embedded._bind())) == 1
