"""The SSE routes are served as raw ASGI ahead of FastAPI: the same security checks, headers and behaviour."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id

TOKEN = "raw-s3cret"
PAGE_HEADERS = (
    "content-security-policy",
    "x-content-type-options",
    "referrer-policy",
    "x-frame-options",
    "cross-origin-opener-policy",
)


def test_stream_routes_keep_token_host_and_origin_checks(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(token=TOKEN)
    run = trace_id()
    for path in ("/api/stream", f"/api/runs/{run}/stream"):
        r = httpx.get(viewer.url + path, timeout=5)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        for key in PAGE_HEADERS:
            assert key in r.headers, (path, key)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.get(viewer.url + path, headers={**auth, "Host": "evil.example"}, timeout=5)
        assert r.status_code == 400, path
        r = httpx.get(viewer.url + path, headers={**auth, "Origin": "http://evil.example"}, timeout=5)
        assert r.status_code == 403, path
        assert httpx.post(viewer.url + path, headers=auth, timeout=5).status_code == 405
    with SseClient(f"{viewer.url}/api/stream", headers={"Authorization": f"Bearer {TOKEN}"}) as sse:
        assert sse.response.status_code == 200
        headers = sse.response.headers
        assert headers["content-type"] == "text/event-stream; charset=utf-8"
        assert headers["cache-control"] == "no-store"
        assert headers["x-accel-buffering"] == "no"
        assert headers["content-encoding"] == "identity"
        for key in PAGE_HEADERS:
            assert key in headers, key


def test_run_stream_replays_its_run_and_ends_with_it(viewer: Viewer) -> None:
    trace, root = trace_id(), span_id()
    viewer.post_json([record(trace, root, "wf", kind="workflow", run_id="job-raw")])
    viewer.post_json([record(trace, span_id(), "a", parent=root, kind="agent", ended=True)])
    with SseClient(f"{viewer.url}/api/runs/job-raw/stream?kind=agent") as sse:
        viewer.post_json([record(trace, root, "wf", kind="workflow", run_id="job-raw", ended=True)])
        events = sse.read_all()
    types = [e["event"] for e in events]
    assert types[0] == "run.started"
    assert "span.ended" in types
    assert types[-1] == "run.ended"
    assert all(e["data"]["run_id"] == trace for e in events)
    assert sse.retry == 2000
