"""LiveExporter against a real loopback HTTP server: batching, heartbeats, backoff, resync, bounded memory."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

import otelflow
from otelflow import attributes as A
from otelflow.viewer.decode import from_otlp_json
from tests.conftest import wait_for


class JsonViewer:
    """Accepts ``POST /v1/traces`` (OTLP/JSON, maybe gzip) and keeps every request body."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with store.lock:
                    store.bodies.append(json.loads(body))
                    store.headers.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def records(self) -> list[otelflow.SpanRecord]:
        with self.lock:
            bodies = list(self.bodies)
        out: list[otelflow.SpanRecord] = []
        for body in bodies:
            out.extend(from_otlp_json(body)[0])
        return out

    def heartbeats(self) -> list[dict[str, Any]]:
        with self.lock:
            return [b for b in self.bodies if all(not rs.get("scopeSpans") for rs in b["resourceSpans"])]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def viewer() -> Iterator[JsonViewer]:
    v = JsonViewer()
    yield v
    v.close()


def test_records_are_posted_with_the_worker_id_and_token(viewer: JsonViewer) -> None:
    exporter = otelflow.LiveExporter(viewer.url, token="tkn", heartbeat_s=60)
    provider = TracerProvider()
    telemetry = otelflow.configure(tracer_provider=provider, otlp=False, live=exporter)
    with otelflow.workflow("wf", run_id="job-1"), otelflow.tool("t"):
        pass
    assert telemetry.force_flush(5000)
    wait_for(lambda: len([r for r in viewer.records() if r.ended]) == 2, what="both ended spans")
    assert all(h["Authorization"] == "Bearer tkn" for h in viewer.headers)
    worker_ids = {r.resource[A.WORKER_ID] for r in viewer.records()}
    assert worker_ids == {exporter.worker_id}
    telemetry.shutdown()


def test_idle_worker_sends_heartbeats(viewer: JsonViewer) -> None:
    exporter = otelflow.LiveExporter(viewer.url, heartbeat_s=0.05)
    try:
        wait_for(lambda: len(viewer.heartbeats()) >= 3, what="three heartbeats")
        beat = viewer.heartbeats()[0]["resourceSpans"][0]["resource"]["attributes"]
        assert {"key": A.WORKER_ID, "value": {"stringValue": exporter.worker_id}} in beat
    finally:
        exporter.shutdown(2)


def test_viewer_down_then_up_resends_running_spans() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    exporter = otelflow.LiveExporter(f"http://127.0.0.1:{port}", heartbeat_s=0.05, max_backoff_s=0.2)
    telemetry = otelflow.configure(tracer_provider=TracerProvider(), otlp=False, live=exporter)
    try:
        with otelflow.workflow("long", run_id="job-down") as run:
            telemetry.force_flush(5000)  # hands the start to the exporter, which cannot post it yet
            wait_for(lambda: exporter.failures >= 2, what="failed posts while the viewer is down")
            assert exporter.connected is False
            viewer = JsonViewer(port)  # the viewer comes up on the same port
            try:
                wait_for(lambda: exporter.connected, what="reconnect")
                wait_for(
                    lambda: any(r.span_id == run.span_id and not r.ended for r in viewer.records()),
                    what="the running workflow's snapshot re-sent",
                )
            finally:
                pass
        assert telemetry.force_flush(5000)
        wait_for(lambda: any(r.span_id == run.span_id and r.ended for r in viewer.records()), what="its end")
        viewer.close()
    finally:
        telemetry.shutdown()


def test_buffer_is_bounded_and_counts_drops() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    exporter = otelflow.LiveExporter(f"http://127.0.0.1:{port}", max_spans=50, heartbeat_s=0.05, max_backoff_s=5)
    telemetry = otelflow.configure(tracer_provider=TracerProvider(), otlp=False, live=exporter)
    try:
        for i in range(200):
            with otelflow.node(f"n{i}"):
                pass
        assert telemetry.force_flush(5000) is False  # delivered to the exporter, which cannot post
        wait_for(lambda: exporter.dropped >= 150, what="drops counted")
        assert exporter.dropped <= 200 * 2
    finally:
        telemetry.shutdown()


def test_bad_viewer_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="viewer URL must look like"):
        otelflow.LiveExporter("127.0.0.1:8080")


def test_a_down_viewer_is_not_hammered_while_spans_keep_coming() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    exporter = otelflow.LiveExporter(f"http://127.0.0.1:{port}", heartbeat_s=60, max_backoff_s=5)
    telemetry = otelflow.configure(tracer_provider=TracerProvider(), otlp=False, live=exporter)
    try:
        wait_for(lambda: exporter.failures >= 1, what="the first failed post")
        assert telemetry.force_flush(5000) is False  # at once: the viewer is known to be down
        started = time.monotonic()
        spans = 0
        while time.monotonic() - started < 0.5:  # spans keep coming; every batch wakes the exporter
            with otelflow.node("busy"):
                spans += 1
        # the backoff starts at 0.1 s and doubles: half a second of traffic allows a handful of attempts,
        # not one per batch
        assert spans > 100
        assert exporter.failures <= 6
    finally:
        telemetry.shutdown()
