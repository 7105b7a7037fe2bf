"""Fixtures for the viewer: a real uvicorn on a free loopback port, real HTTP/SSE/WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from otelflow import attributes as A
from otelflow.otlp_json import to_otlp_json
from otelflow.records import EventRecord, SpanRecord
from otelflow.viewer.app import make_server
from otelflow.viewer.live import Hub

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class Viewer:
    """A viewer app served by uvicorn in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.hub: Hub = app.state.hub
        self.port = 0
        self._ready = threading.Event()
        self.server = make_server(app, "127.0.0.1", 0, ready_callback=self._on_ready, graceful_s=5)
        self.thread = threading.Thread(target=self.server.run, name="viewer", daemon=True)

    def _on_ready(self, host: str, port: int) -> None:
        self.port = port
        self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Viewer:
        self.thread.start()
        assert self._ready.wait(10), "viewer did not start"
        return self

    def stop(self, timeout: float = 15.0) -> float:
        """Ask the server to exit; returns how long it took."""
        started = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "viewer did not stop"
        return time.monotonic() - started

    def call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run ``fn`` on the server's event loop and return its result."""
        loop = self.hub._loop
        assert loop is not None

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def post_json(self, records: list[SpanRecord], **headers: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/traces",
            content=json.dumps(to_otlp_json(records)),
            headers={"content-type": "application/json", **headers},
            timeout=10,
        )


@pytest.fixture
def viewer(make_viewer: Callable[..., Viewer]) -> Viewer:
    return make_viewer()


# ------------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------------

WORKER = "worker-test"


def trace_id() -> str:
    return secrets.token_hex(16)


def span_id() -> str:
    return secrets.token_hex(8)


def record(
    trace: str,
    span: str,
    name: str = "step",
    *,
    parent: str | None = None,
    kind: str = A.KIND_NODE,
    ended: bool = False,
    error: bool = False,
    run_id: str | None = None,
    events: tuple[EventRecord, ...] = (),
    worker: str = WORKER,
    start: int | None = None,
    duration_ns: int = 1_000_000,
    attributes: dict[str, Any] | None = None,
) -> SpanRecord:
    start_ns = start if start is not None else time.time_ns()
    attrs: dict[str, Any] = {A.KIND: kind, **(attributes or {})}
    if run_id is not None:
        attrs[A.RUN_ID] = run_id
    return SpanRecord(
        trace_id=trace,
        span_id=span,
        parent_span_id=parent,
        name=name,
        kind=kind,
        start_time_ns=start_ns,
        end_time_ns=start_ns + duration_ns if ended else None,
        status=("error" if error else "ok") if ended else "running",
        status_message="boom" if error else "",
        attributes=attrs,
        events=events,
        service="svc",
        resource={"service.name": "svc", A.WORKER_ID: worker},
        scope="test",
    )


def heartbeat(worker: str, service: str = "svc") -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": service}},
                        {"key": A.WORKER_ID, "value": {"stringValue": worker}},
                    ]
                },
                "scopeSpans": [],
            }
        ]
    }


# ------------------------------------------------------------------------------------------------
# SSE client
# ------------------------------------------------------------------------------------------------


class SseClient:
    """A blocking SSE reader over httpx; ``events`` holds every parsed event (dicts with id/event/data)."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        read_timeout: float = 20.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.own_client = client is None
        self.client = client or httpx.Client(timeout=httpx.Timeout(10.0, read=read_timeout))
        self.cm = self.client.stream("GET", url, headers=headers or {})
        self.response = self.cm.__enter__()
        self.lines = self.response.iter_lines()
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self.closed = False

    def next_event(self) -> dict[str, Any] | None:
        """The next event, or ``None`` when the stream ended."""
        current: dict[str, Any] = {}
        data: list[str] = []
        for line in self.lines:
            if line == "":
                if data or "event" in current:
                    current["data"] = json.loads("\n".join(data)) if data else None
                    self.events.append(current)
                    return current
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "retry":
                self.retry = int(value)
            else:
                current[field] = value
        self.closed = True
        return None

    def read_until(self, predicate: Callable[[dict[str, Any]], bool], limit: int = 100_000) -> dict[str, Any]:
        for _ in range(limit):
            event = self.next_event()
            if event is None:
                raise AssertionError(f"stream ended; got {[e.get('event') for e in self.events]}")
            if predicate(event):
                return event
        raise AssertionError("predicate never matched")

    def read_all(self) -> list[dict[str, Any]]:
        while self.next_event() is not None:
            pass
        return self.events

    def close(self) -> None:
        try:
            self.cm.__exit__(None, None, None)
        finally:
            if self.own_client:
                self.client.close()

    def __enter__(self) -> SseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
