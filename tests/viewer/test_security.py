"""Token on every endpoint (header or ?token=), Host and Origin checks on HTTP and WebSocket upgrades."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id
from viewer.app import is_loopback

TOKEN = "s3cret-token"


def test_token_is_required_everywhere(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(token=TOKEN)
    for path in ("/healthz", "/api/runs", "/api/stream", "/api/stats"):
        r = httpx.get(viewer.url + path, timeout=5)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert "token" in r.json()["error"]
    assert httpx.get(viewer.url + "/api/runs", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    assert (
        httpx.get(viewer.url + "/api/runs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 200
    )
    assert httpx.get(viewer.url + f"/api/runs?token={TOKEN}", timeout=5).status_code == 200
    assert viewer.post_json([record(trace_id(), span_id(), "x", ended=True)]).status_code == 401
    assert (
        viewer.post_json([record(trace_id(), span_id(), "x", ended=True)], authorization=f"Bearer {TOKEN}").status_code
        == 200
    )
    with SseClient(f"{viewer.url}/api/stream?token={TOKEN}") as sse:
        assert sse.response.status_code == 200
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{viewer.port}/ws", open_timeout=5)
    assert info.value.response.status_code == 403
    with connect(f"ws://127.0.0.1:{viewer.port}/ws?token={TOKEN}", open_timeout=5) as ws:
        assert '"subscribed"' in str(ws.recv(timeout=5))
        ws.send('{"type":"ping"}')
        assert "pong" in str(ws.recv(timeout=5))


def test_host_and_origin_checks(viewer: Viewer) -> None:
    url = viewer.url + "/api/runs"
    r = httpx.get(url, headers={"Host": "evil.example"}, timeout=5)
    assert r.status_code == 400
    assert "Host" in r.json()["error"]
    assert httpx.get(url, headers={"Host": f"localhost:{viewer.port}"}, timeout=5).status_code == 200
    r = httpx.get(url, headers={"Origin": "http://evil.example"}, timeout=5)
    assert r.status_code == 403
    assert httpx.get(url, headers={"Origin": f"http://127.0.0.1:{viewer.port}"}, timeout=5).status_code == 200
    assert httpx.get(url, headers={"Origin": "null"}, timeout=5).status_code == 403
    r = httpx.post(
        viewer.url + "/v1/traces",
        content=b"{}",
        headers={"Origin": "http://evil.example", "content-type": "application/json"},
        timeout=5,
    )
    assert r.status_code == 403
    with pytest.raises(InvalidStatus):
        connect(f"ws://127.0.0.1:{viewer.port}/ws", origin="http://evil.example", open_timeout=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidStatus):
        connect(f"ws://127.0.0.1:{viewer.port}/ws", additional_headers={"Host": "evil.example"}, open_timeout=5)
    with connect(f"ws://127.0.0.1:{viewer.port}/ws", origin=f"http://127.0.0.1:{viewer.port}", open_timeout=5) as ws:  # type: ignore[arg-type]
        assert '"subscribed"' in str(ws.recv(timeout=5))
        ws.send('{"type":"ping"}')
        assert "pong" in str(ws.recv(timeout=5))


def test_allowed_origins_and_any_host_with_token(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(token=TOKEN, allowed_hosts=None, allowed_origins=["https://dash.example"])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.get(viewer.url + "/healthz", headers={**auth, "Host": "viewer.internal"}, timeout=5).status_code == 200
    assert (
        httpx.get(viewer.url + "/healthz", headers={**auth, "Origin": "https://dash.example"}, timeout=5).status_code
        == 200
    )
    assert (
        httpx.get(viewer.url + "/healthz", headers={**auth, "Origin": "https://other.example"}, timeout=5).status_code
        == 403
    )


def test_is_loopback() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.org"))
