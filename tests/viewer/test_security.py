"""Token on every endpoint (header or ?token=), Host and Origin checks on HTTP and WebSocket upgrades."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from otelflow.viewer.security import SESSION_COOKIE, is_loopback, session_value
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id

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


def test_a_page_opened_with_the_token_gives_a_session_cookie(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(token=TOKEN)
    r = httpx.get(f"{viewer.url}/runs/job-1?kind=agent&token={TOKEN}&status=ok", timeout=5)
    assert r.status_code == 303
    assert r.headers["location"] == "./job-1?kind=agent&status=ok"
    cookie = r.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    value = rest.split(";")[0]
    assert name == SESSION_COOKIE
    assert value == session_value(TOKEN)
    assert TOKEN not in cookie
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
    assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would never come back
    root = httpx.get(f"{viewer.url}/?token={TOKEN}", timeout=5)
    assert root.status_code == 303
    assert root.headers["location"] == "./"
    # a link followed from another site gets a page that refreshes to the same place (see test_token.py)
    linked = httpx.get(f"{viewer.url}/runs/job-1?a=1&token={TOKEN}&b=2", headers={"Sec-Fetch-Site": "cross-site"})
    assert linked.status_code == 200
    assert '<meta http-equiv="refresh" content="0; url=./job-1?a=1&amp;b=2">' in linked.text
    assert linked.headers["set-cookie"] == cookie
    # the page itself with a Bearer header is served (a redirect would loop) and sets the cookie too
    bearer = httpx.get(f"{viewer.url}/stats", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert bearer.status_code == 200
    assert bearer.headers["set-cookie"].startswith(f"{SESSION_COOKIE}={value};")
    # an API call with the token is answered as before, without a cookie
    assert "set-cookie" not in httpx.get(f"{viewer.url}/api/runs?token={TOKEN}", timeout=5).headers

    # the cookie alone then opens everything a page uses: pages, static files, REST, both streams, WebSocket
    good = {"Cookie": f"other=1; {SESSION_COOKIE}={value}"}
    for path in ("/runs/job-1", "/static/style.css", "/static/common.js", "/api/runs", "/healthz"):
        assert httpx.get(viewer.url + path, headers=good, timeout=5).status_code == 200, path
    trace = trace_id()
    assert viewer.post_json([record(trace, span_id(), "x", ended=True)], cookie=good["Cookie"]).status_code == 200
    with SseClient(f"{viewer.url}/api/stream", headers=good) as sse:
        assert sse.response.status_code == 200
    with SseClient(f"{viewer.url}/api/runs/{trace}/stream", headers=good) as sse:
        assert sse.response.status_code == 200
        assert sse.read_until(lambda e: e.get("event") == "span.ended")["data"]["run_id"] == trace
    with connect(f"ws://127.0.0.1:{viewer.port}/ws", additional_headers=good, open_timeout=5) as ws:
        assert '"subscribed"' in str(ws.recv(timeout=5))
        ws.send('{"type":"ping"}')
        assert "pong" in str(ws.recv(timeout=5))

    # a wrong cookie, or the raw token as the cookie, opens nothing
    for bad_value in ("0" * 64, TOKEN, value[:-1], ""):
        bad = {"Cookie": f"{SESSION_COOKIE}={bad_value}"}
        for path in ("/", "/static/style.css", "/api/runs", "/api/stream"):
            assert httpx.get(viewer.url + path, headers=bad, timeout=5).status_code == 401, (bad_value, path)
        with pytest.raises(InvalidStatus):
            connect(f"ws://127.0.0.1:{viewer.port}/ws", additional_headers=bad, open_timeout=5)


def test_the_session_cookie_outlives_a_restart_and_is_secure_over_https(make_viewer: Callable[..., Viewer]) -> None:
    first = make_viewer(token=TOKEN)
    cookie = httpx.get(f"{first.url}/?token={TOKEN}", timeout=5).headers["set-cookie"].split(";")[0]
    first.stop()
    second = make_viewer(token=TOKEN)  # a restart, or another replica sharing the token
    assert httpx.get(f"{second.url}/api/runs", headers={"Cookie": cookie}, timeout=5).status_code == 200
    other = make_viewer(token="another-token")
    assert httpx.get(f"{other.url}/api/runs", headers={"Cookie": cookie}, timeout=5).status_code == 401
    # behind a TLS-terminating proxy uvicorn reports the scheme; the cookie is then Secure
    secure = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "127.0.0.1"}
    r = httpx.get(f"{second.url}/?token={TOKEN}", headers=secure, timeout=5)
    assert "Secure" in {p.strip() for p in r.headers["set-cookie"].split(";")}


def test_host_header_is_parsed_strictly(make_viewer: Callable[..., Viewer]) -> None:
    loopback = make_viewer()
    anyhost = make_viewer(token=TOKEN, allowed_hosts=None)
    for viewer in (loopback, anyhost):
        port = viewer.port
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for host in (
            f"127.0.0.1:{port}@evil.example",
            f"127.0.0.1:{port}, evil.example",
            f"127.0.0.1:{port} evil.example",
            f"evil.example#127.0.0.1:{port}",
            f"127.0.0.1:{port}/x",
            "127.0.0.1:",
            "127.0.0.1:http",
            "[::1",
            "[::1]x",
            "[not:an:address::::]",
            "::1",
        ):
            r = httpx.get(viewer.url + "/api/runs", headers={**auth, "Host": host}, timeout=5)
            assert r.status_code == 400, host
            assert "Host" in r.json()["error"]
            with pytest.raises(InvalidStatus):
                connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}", additional_headers={"Host": host}, open_timeout=5)
        for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", f"[::1]:{port}", "[::1]"):
            assert httpx.get(viewer.url + "/api/runs", headers={**auth, "Host": host}, timeout=5).status_code == 200
    r = httpx.get(loopback.url + "/api/runs", headers={"Host": "viewer.example"}, timeout=5)
    assert "--allowed-host" in r.json()["error"]
