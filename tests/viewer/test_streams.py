"""SSE transport: resume exactness under random disconnects, reset, slow clients, shutdown, no leaks."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable

import httpx

from otelflow import attributes as A
from otelflow.otlp_json import to_otlp_json
from otelflow.viewer.app import create_app
from otelflow.viewer.live import Hub
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for


def _behind(viewer: Viewer, seq: int) -> int:
    """How many events the viewer published past ``seq``."""
    return _seq(viewer.hub.broadcast.last_id) - seq


def _seq(event_id: str) -> int:
    return int(event_id.rsplit(".", 1)[1])


def _raw_stream(port: int, path: str = "/api/stream", rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def _read_to_eof(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            return b"".join(chunks)
        chunks.append(data)
    raise AssertionError("the server did not close the stream")


def test_resume_is_exact_under_1000_random_disconnects(viewer: Viewer) -> None:
    rng = random.Random(7)
    stop = threading.Event()
    consumer_seq = [0]

    def produce() -> None:
        with httpx.Client(base_url=viewer.url, timeout=10) as client:
            while not stop.is_set():
                wait_for(lambda: stop.is_set() or _behind(viewer, consumer_seq[0]) < 3000, 30, "consumer")
                t = trace_id()
                root = span_id()
                batch = [record(t, root, "wf", kind="workflow")]
                batch += [
                    record(t, span_id(), "a", parent=root, kind="agent", ended=True) for _ in range(rng.randint(0, 4))
                ]
                batch.append(record(t, root, "wf", kind="workflow", ended=True))
                client.post("/v1/traces", json=to_otlp_json(batch))

    seen: list[str] = []
    with SseClient(f"{viewer.url}/api/stream") as first:
        producer = threading.Thread(target=produce)
        producer.start()
        event = first.next_event()
        assert event is not None
        seen.append(event["id"])
    shared = httpx.Client(timeout=httpx.Timeout(10.0, read=20.0))
    try:
        for cycle in range(1000):
            headers = {"Last-Event-ID": seen[-1]} if cycle % 2 else {}
            url = f"{viewer.url}/api/stream" + ("" if cycle % 2 else f"?last_event_id={seen[-1]}")
            with SseClient(url, headers=headers, client=shared) as sse:
                for _ in range(rng.randint(1, 12)):
                    event = sse.next_event()
                    assert event is not None
                    assert event["event"] != "reset", event
                    seen.append(event["id"])
                    consumer_seq[0] = _seq(event["id"])
    finally:
        stop.set()
        producer.join(30)
        shared.close()
    last = viewer.call(lambda: viewer.hub.broadcast.last_id)
    with SseClient(f"{viewer.url}/api/stream", headers={"Last-Event-ID": seen[-1]}) as sse:
        while seen[-1] != last:
            event = sse.next_event()
            assert event is not None
            seen.append(event["id"])
    seqs = [_seq(i) for i in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or duplicate"
    assert len(seqs) > 3000


def test_reset_beyond_the_ring_and_for_unknown_ids(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(hub=Hub(ring_size=50))
    t = trace_id()
    viewer.post_json([record(t, span_id(), "x", ended=True, run_id="job-old")])
    old_id = f"{viewer.hub.broadcast.epoch}.1"
    for _ in range(60):
        viewer.post_json([record(t, span_id(), "y", ended=True)])
    with SseClient(f"{viewer.url}/api/stream", headers={"Last-Event-ID": old_id}) as sse:
        reset = sse.next_event()
        assert reset is not None
        assert reset["event"] == "reset"
        assert reset["data"]["snapshot"] == "/api/runs"
        assert reset["id"] == viewer.call(lambda: viewer.hub.broadcast.last_id)
        viewer.post_json([record(t, span_id(), "z", ended=True)])
        nxt = sse.next_event()
        assert nxt is not None
        assert _seq(nxt["id"]) == _seq(reset["id"]) + 1
    for bad in ("deadbeef.3", "garbage", f"{viewer.hub.broadcast.epoch}.999999"):
        with SseClient(f"{viewer.url}/api/stream?last_event_id={bad}") as sse:
            event = sse.next_event()
            assert event is not None
            assert event["event"] == "reset"
    with SseClient(f"{viewer.url}/api/runs/job-old/stream") as sse:
        events = sse.read_all()
        assert [e["event"] for e in events] == ["reset"]
        assert events[0]["data"]["snapshot"] == "/api/runs/job-old"


def test_snapshot_then_stream_from_its_last_event_id_is_exact(viewer: Viewer) -> None:
    t, root = trace_id(), span_id()
    viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-s")])
    snapshot = httpx.get(f"{viewer.url}/api/runs/job-s", timeout=5).json()
    viewer.post_json([record(t, root, "wf", kind="workflow", run_id="job-s", ended=True)])
    with SseClient(f"{viewer.url}/api/runs/job-s/stream", headers={"Last-Event-ID": snapshot["last_event_id"]}) as sse:
        events = sse.read_all()
    assert [e["event"] for e in events] == ["span.ended", "run.ended"]
    assert _seq(events[0]["id"]) == _seq(snapshot["last_event_id"]) + 1


def test_filters(viewer: Viewer) -> None:
    t, root, agent = trace_id(), span_id(), span_id()
    with SseClient(f"{viewer.url}/api/stream?kind=agent&type=span.ended,run&status=error,ok") as sse:
        viewer.post_json([record(t, root, "wf", kind="workflow")])
        viewer.post_json([record(t, agent, "writer", parent=root, kind="agent")])
        viewer.post_json([record(t, agent, "writer", parent=root, kind="agent", ended=True, error=True)])
        viewer.post_json([record(t, span_id(), "tool", parent=root, kind="tool", ended=True)])
        viewer.post_json([record(t, root, "wf", kind="workflow", ended=True)])
        sse.read_until(lambda e: e["event"] == "run.ended")
    assert [(e["event"], (e["data"].get("span") or {}).get("name")) for e in sse.events] == [
        ("span.ended", "writer"),
        ("run.ended", None),
    ]
    with SseClient(f"{viewer.url}/api/stream?name=writer2&type=span") as sse:
        viewer.post_json([record(t, span_id(), "writer2", parent=root, kind="agent", ended=True)])
        started, ended = sse.next_event(), sse.next_event()
        assert started is not None
        assert ended is not None
        assert (started["event"], ended["event"]) == ("span.started", "span.ended")
        assert ended["data"]["span"]["name"] == "writer2"


def test_bad_characters_in_span_data_do_not_break_the_stream(viewer: Viewer) -> None:
    t = trace_id()
    weird = {"nl": "a\nb\r\nc", "sur": "\ud800", "nan": float("nan"), "ctrl": "\x00\x1b", "emoji": "🙂"}
    with SseClient(f"{viewer.url}/api/stream") as sse:
        body = (
            f'{{"resourceSpans":[{{"resource":{{}},"scopeSpans":[{{"spans":[{{"traceId":"{t}","spanId":"{span_id()}","name":"x\\ud800\\n",'
            '"startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{"key":"a","value":{"doubleValue":"NaN"}},'
            '{"key":"b","value":{"stringValue":"\\ud800\\n\\u0000"}}]}]}]}]}'
        )
        assert (
            httpx.post(
                f"{viewer.url}/v1/traces", content=body, headers={"content-type": "application/json"}, timeout=5
            ).status_code
            == 200
        )
        viewer.post_json([record(t, span_id(), "ok", ended=True, attributes=weird)])
        sse.read_until(lambda e: e["event"] == "span.ended" and e["data"]["span"]["name"] == "ok")
    names = [e["data"]["span"]["name"] for e in sse.events if e["event"] == "span.ended"]
    assert names == ["x\ufffd\n", "ok"]  # a lone surrogate becomes U+FFFD at the edge, so it always encodes


def test_stalled_client_is_cut_while_others_keep_pace(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(hub=Hub(queue_limit=200), send_deadline_s=3.0)
    stalled = _raw_stream(viewer.port, rcvbuf=4096)
    try:
        with SseClient(f"{viewer.url}/api/stream") as healthy:
            wait_for(lambda: viewer.hub.broadcast.subscriber_count == 2, what="two subscribers")
            reader = threading.Thread(
                target=healthy.read_until,
                args=(lambda e: e["event"] == "span.ended" and e["data"]["span"]["name"] == "END",),
                daemon=True,
            )
            reader.start()
            t = trace_id()
            big = {"blob": "x" * 4000}
            for _ in range(60):
                viewer.post_json([record(t, span_id(), "s", ended=True, attributes=big) for _ in range(20)])
            viewer.post_json([record(t, span_id(), "END", ended=True)])
            reader.join(30)
            assert not reader.is_alive()
            seqs = [_seq(e["id"]) for e in healthy.events]
            assert len(seqs) >= 1201
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            wait_for(lambda: viewer.hub.stats["cut"] == 1, what="the stalled client to be cut")
            assert viewer.hub.broadcast.subscriber_count == 1
        _read_to_eof(stalled, 15)  # the server gave up on its socket
    finally:
        stalled.close()


def test_connect_disconnect_cycles_leave_no_subscribers(viewer: Viewer) -> None:
    for i in range(1000):
        sock = _raw_stream(viewer.port)
        if i % 10 == 0:
            sock.recv(100)  # sometimes wait for the response to start
        sock.close()
    with SseClient(f"{viewer.url}/api/stream") as sse:
        wait_for(lambda: viewer.hub.broadcast.subscriber_count >= 1)
        viewer.post_json([record(trace_id(), span_id(), "still alive", ended=True)])
        sse.read_until(lambda e: e["event"] == "span.ended")
    wait_for(lambda: viewer.hub.broadcast.subscriber_count == 0, 15, "every subscriber to be released")


def test_shutdown_with_100_open_streams_is_bounded() -> None:
    viewer = Viewer(create_app()).start()
    socks = [_raw_stream(viewer.port) for _ in range(100)]
    wait_for(lambda: viewer.hub.broadcast.subscriber_count == 100, 15, "100 subscribers")
    took = viewer.stop(timeout=20)
    assert took < 8, f"shutdown took {took:.1f}s"
    for sock in socks:
        data = _read_to_eof(sock, 5)
        assert b"event: shutdown" in data
        sock.close()


def test_heartbeat_comment_when_idle(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(heartbeat_s=0.3)
    with SseClient(f"{viewer.url}/api/stream") as sse:
        reader = threading.Thread(target=sse.next_event, daemon=True)
        reader.start()
        wait_for(lambda: "keep-alive" in sse.comments, 5, "a heartbeat comment")
        viewer.post_json([record(trace_id(), span_id(), "wake", ended=True, kind=A.KIND_TOOL)])
        reader.join(5)
