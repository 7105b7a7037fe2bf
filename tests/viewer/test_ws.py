"""WebSocket /ws (same envelope, subscribe/unsubscribe/ping, limits, close codes) and the live-flow compat set."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from otelflow import attributes as A
from otelflow.records import EventRecord
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for


def _ws(viewer: Viewer, path: str = "/ws") -> ClientConnection:
    return connect(f"ws://127.0.0.1:{viewer.port}{path}", open_timeout=5, close_timeout=5)


def _recv(ws: ClientConnection) -> dict[str, Any]:
    message: Any = json.loads(ws.recv(timeout=10))
    assert isinstance(message, dict)
    return message


def _recv_until(ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    seen = []
    while True:
        message = _recv(ws)
        seen.append(message)
        if predicate(message):
            return seen


def _read_forever(ws: ClientConnection, into: list[dict[str, Any]]) -> None:
    while True:
        into.append(_recv(ws))


def test_ws_sends_the_same_envelope_as_sse(viewer: Viewer) -> None:
    t, root = trace_id(), span_id()
    with _ws(viewer) as ws, SseClient(f"{viewer.url}/api/stream") as sse:
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 2)
        viewer.post_json([record(t, root, "wf", kind="workflow")])
        viewer.post_json([record(t, root, "wf", kind="workflow", ended=True)])
        over_ws = _recv_until(ws, lambda m: m["type"] == "run.ended")
        sse.read_until(lambda e: e["event"] == "run.ended")
    assert over_ws[0]["type"] == "subscribed"  # where the subscription starts: the id to resume from
    assert over_ws[1:] == [e["data"] for e in sse.events]


def test_ws_ping_subscribe_resume_unsubscribe(viewer: Viewer) -> None:
    t, root = trace_id(), span_id()
    viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-ws")])
    first_id = viewer.call(lambda: viewer.hub.broadcast.last_id)
    viewer.post_json([record(t, span_id(), "agent", parent=root, kind="agent", ended=True)])
    viewer.post_json([record(trace_id(), span_id(), "other", kind="agent", ended=True)])
    with _ws(viewer) as ws:
        assert _recv(ws)["type"] == "subscribed"
        ws.send(json.dumps({"type": "ping"}))
        assert _recv(ws) == {"type": "pong"}
        ws.send(json.dumps({"type": "subscribe", "run": "job-ws", "kind": "agent", "last_event_id": first_id}))
        ack = _recv(ws)
        assert ack["type"] == "subscribed"
        assert ack["filters"] == {"run": ["job-ws"], "kind": ["agent"]}
        started, replayed = _recv(ws), _recv(ws)
        assert (started["type"], started["span"]["status"]) == ("span.started", "running")
        assert replayed["type"] == "span.ended"
        assert replayed["span"]["name"] == "agent"
        ws.send(json.dumps({"type": "subscribe", "filters": {"type": "run"}}))
        assert _recv(ws)["type"] == "subscribed"
        viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-ws", ended=True)])
        assert _recv(ws)["type"] == "run.ended"
        ws.send(json.dumps({"type": "unsubscribe"}))
        assert _recv(ws)["type"] == "unsubscribed"
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 0)
        ws.send("not json")
        assert _recv(ws)["type"] == "error"
        ws.send(json.dumps({"type": "dance"}))
        assert "unknown message type" in _recv(ws)["message"]
        ws.send(json.dumps({"type": "subscribe", "kind": 3}))
        assert _recv(ws)["type"] == "error"


def test_ws_limits_and_close_codes(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer()
    with _ws(viewer) as ws:
        assert _recv(ws)["type"] == "subscribed"
        ws.send("x" * 5000)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009
    with _ws(viewer) as ws:
        assert _recv(ws)["type"] == "subscribed"
        ws.send(b"\x00\x01")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1003
    with _ws(viewer) as ws:
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 1)
        viewer.stop()
        messages: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as info:
            _read_forever(ws, messages)
    assert messages[-1]["type"] == "shutdown"
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1001


def test_live_flow_compat_messages(viewer: Viewer) -> None:
    t, root, agent, failing = trace_id(), span_id(), span_id(), span_id()
    progress = EventRecord(A.EVENT_PROGRESS, 10, {A.PROGRESS_PERCENT: 40.0, A.PROGRESS_MESSAGE: "going"})
    flow = EventRecord(
        A.EVENT_DATA_FLOW, 11, {A.DATA_FLOW_FROM: "planner", A.DATA_FLOW_TO: "writer", A.DATA_FLOW_BYTES: 42}
    )
    with _ws(viewer, "/ws/live-flow/job-7") as ws:
        hello = _recv(ws)
        assert hello["type"] == "connected"
        assert hello["job_id"] == "job-7"
        ws.send("ping")
        assert _recv(ws)["type"] == "pong"
        ws.send(json.dumps({"type": "ping"}))
        assert _recv(ws)["type"] == "pong"
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 1)
        viewer.post_json([record(t, root, "invoke_workflow w", kind="workflow", run_id="job-7")])
        agent_attrs = {A.GEN_AI_AGENT_NAME: "writer"}
        viewer.post_json([record(t, agent, "invoke_agent writer", parent=root, kind="agent", attributes=agent_attrs)])
        viewer.post_json(
            [
                record(
                    t,
                    agent,
                    "invoke_agent writer",
                    parent=root,
                    kind="agent",
                    events=(progress, flow),
                    attributes={**agent_attrs, A.OUTPUT_VALUE: "done!"},
                    ended=True,
                    duration_ns=2_000_000_000,
                )
            ]
        )
        viewer.post_json([record(t, failing, "checker", parent=root, kind="node", ended=True, error=True)])
        messages = _recv_until(ws, lambda m: m["type"] == "agent_failed")
    by_type = {m["type"]: m for m in messages}
    assert [m["type"] for m in messages] == [
        "agent_started",
        "progress_update",
        "data_flow",
        "agent_completed",
        "agent_started",  # a node that arrives already failed still starts first
        "agent_failed",
    ]
    assert [m["agent"] for m in messages if m["type"] == "agent_started"] == ["writer", "checker"]
    assert by_type["progress_update"]["progress"] == 40.0
    assert by_type["progress_update"]["message"] == "going"
    assert (
        by_type["data_flow"]["from_agent"],
        by_type["data_flow"]["to_agent"],
        by_type["data_flow"]["data_size"],
    ) == ("planner", "writer", 42)
    assert by_type["agent_completed"]["output"] == "done!"
    assert by_type["agent_completed"]["duration"] == 2.0
    assert by_type["agent_failed"]["error"] == "boom"
    assert by_type["agent_failed"]["agent"] == "checker"


def test_ws_following_one_run_closes_with_1000_after_its_end(viewer: Viewer) -> None:
    t, root = trace_id(), span_id()
    viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-close")])
    with _ws(viewer, "/ws?run=job-close") as ws:
        assert _recv(ws)["type"] == "subscribed"
        viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-close", ended=True)])
        told = _recv_until(ws, lambda m: m["type"] == "run.ended")
        assert [m["type"] for m in told] == ["span.ended", "run.ended"]
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1000, "run ended")


def test_live_flow_ends_with_run_ended_and_tells_a_cancelled_agent(viewer: Viewer) -> None:
    t, root, agent = trace_id(), span_id(), span_id()
    with _ws(viewer, "/ws/live-flow/job-8") as ws:
        assert _recv(ws)["type"] == "connected"
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 1)
        viewer.post_json([record(t, root, "invoke_workflow w", kind="workflow", run_id="job-8")])
        cancelled = record(t, agent, "invoke_agent a", parent=root, kind="agent", ended=True, error=True)
        cancelled = replace(cancelled, status=A.STATUS_CANCELLED, status_message=A.STATUS_CANCELLED)
        viewer.post_json([cancelled])
        viewer.post_json([record(t, root, "invoke_workflow w", kind="workflow", run_id="job-8", ended=True)])
        messages = _recv_until(ws, lambda m: m["type"] == "run_ended")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1000
    assert [m["type"] for m in messages] == ["agent_started", "agent_failed", "run_ended"]
    assert messages[1]["cancelled"] is True
    assert messages[-1]["status"] == A.STATUS_OK
    assert messages[-1]["job_id"] == "job-8"
