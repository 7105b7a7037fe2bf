"""The run page's transports in a real Chromium: WebSocket reconnects, and a proxy that buffers SSE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from tests.browser.conftest import BufferingProxy, Workflow, start_viewer_on
from tests.browser.test_pages import assert_exactly_the_gated_run, node, post, server_span_ids, span_rows
from tests.viewer.conftest import Viewer, record, span_id, trace_id

pytestmark = pytest.mark.browser


def test_websocket_reconnects_after_a_viewer_restart_with_exactly_the_runs_spans(
    page: Any, workflow: Callable[[str], Workflow], tmp_path: Path
) -> None:
    db = tmp_path / "viewer.db"
    first = start_viewer_on(0, db)
    port = first.port
    sse_attempts: list[str] = []

    def block_sse(route: Any) -> None:
        sse_attempts.append(route.request.url)
        route.abort()

    page.route("**/api/stream*", block_sse)
    sockets: list[Any] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    badge = page.locator("#conn")
    wf = workflow(first.url)
    assert wf.wait_node() == "Plan"
    page.goto(f"{first.url}/runs/{wf.trace_id}")
    expect(badge).to_have_attribute("data-transport", "WebSocket")
    expect(badge).to_have_attribute("data-state", "connected")
    expect(node(page, "Plan")).to_have_attribute("data-status", "running")
    wf.send("go")
    assert wf.wait_node() == "Research"
    expect(node(page, "Research")).to_have_attribute("data-status", "running")
    tried_sse = len(sse_attempts)

    first.stop()
    expect(badge).not_to_have_attribute("data-state", "connected")
    expect(badge).to_have_attribute("data-transport", "WebSocket")
    wf.send("go")  # Research ends while the viewer is down; its worker keeps the span until the viewer is back
    assert wf.wait_node() == "Write"

    second = start_viewer_on(port, db)
    try:
        expect(badge).to_have_attribute("data-state", "connected", timeout=20_000)
        expect(badge).to_have_attribute("data-transport", "WebSocket")
        expect(badge).to_contain_text("WebSocket (SSE failed)")
        expect(node(page, "Research")).to_have_attribute("data-status", "ok", timeout=20_000)
        expect(node(page, "Write")).to_have_attribute("data-status", "running", timeout=20_000)
        wf.send("go")
        assert wf.wait_node() == "Review"
        expect(node(page, "Review")).to_have_attribute("data-status", "running")  # live again, over the WebSocket
        wf.send("go")
        wf.finish()
        expect(page.locator("#run-status")).to_have_attribute("data-status", "ok", timeout=20_000)
        assert_exactly_the_gated_run(page, second, wf.trace_id)
        # the page came back over the WebSocket: a new socket, no new SSE attempt
        assert len(sse_attempts) == tried_sse
        assert len(sockets) >= 2
        assert all("/ws" in ws.url for ws in sockets)
        expect(badge).to_have_attribute("data-state", "connected")
    finally:
        second.stop()
    page.probe.assert_clean(allow=("net::ERR_FAILED", "EventSource", "WebSocket", "ERR_CONNECTION_REFUSED"))


def test_buffered_sse_switches_to_websocket(
    viewer: Viewer, page: Any, buffering_proxy: Callable[[int], BufferingProxy]
) -> None:
    proxy = buffering_proxy(viewer.port)
    trace, root, first = trace_id(), span_id(), span_id()
    post(viewer, [record(trace, root, "invoke_workflow buffered", kind=A.KIND_WORKFLOW)])
    post(viewer, [record(trace, first, "invoke_agent first", parent=root, kind=A.KIND_AGENT)])
    page.goto(f"{proxy.url}/runs/{trace}")
    badge = page.locator("#conn")
    # the stream opens through the proxy, so the page believes SSE works ...
    expect(badge).to_have_attribute("data-state", "connected")
    expect(badge).to_have_attribute("data-transport", "SSE")
    expect(node(page, "first")).to_have_attribute("data-status", "running")
    assert proxy.sse_requests == 1

    # ... but what the viewer sends stays in the proxy
    late = span_id()
    post(viewer, [record(trace, late, "invoke_agent late", parent=root, kind=A.KIND_AGENT)])
    post(viewer, [record(trace, first, "invoke_agent first", parent=root, kind=A.KIND_AGENT, ended=True)])
    # the page notices the silent stream while the server has spans it never got, and moves to the WebSocket
    expect(badge).to_have_attribute("data-transport", "WebSocket", timeout=15_000)
    assert proxy.held_bytes > 0
    expect(badge).to_have_attribute("data-state", "connected")
    expect(badge).to_contain_text("WebSocket (SSE failed)")
    expect(badge).to_have_attribute("title", "connected via WebSocket (SSE failed) (SSE stream buffered)")
    expect(node(page, "late")).to_have_attribute("data-status", "running")
    expect(node(page, "first")).to_have_attribute("data-status", "ok")
    # from now on events arrive live over the WebSocket (through the same proxy), each once
    post(viewer, [record(trace, late, "invoke_agent late", parent=root, kind=A.KIND_AGENT, ended=True)])
    expect(node(page, "late")).to_have_attribute("data-status", "ok")
    post(viewer, [record(trace, root, "invoke_workflow buffered", kind=A.KIND_WORKFLOW, ended=True)])
    expect(page.locator("#run-status")).to_have_attribute("data-status", "ok")
    expect(page.locator(".tl-row")).to_have_count(3)
    assert sorted(span_rows(page)) == server_span_ids(viewer, trace)
    assert proxy.sse_requests == 1  # no second EventSource
    page.probe.assert_clean(allow=("EventSource",))
