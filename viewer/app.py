"""The viewer's web application: routes, security middleware, lifespan; and :func:`serve` to run it.

Routes: ``POST /v1/traces`` (OTLP/HTTP), ``GET /api/stream`` and ``GET /api/runs/{run}/stream`` (SSE),
``/ws`` and ``/ws/live-flow/{job_id}`` (WebSocket), ``GET /api/runs``, ``GET /api/runs/{run}``,
``GET /api/runs/{run}/events``, ``GET /api/runs/{run}/export``, ``GET /api/stats``, ``GET /healthz``, and
the pages of :mod:`viewer.pages`. ``{run}`` is a trace id or an ``otelflow.run.id``.

Security: with a token, every request needs ``Authorization: Bearer <token>``, ``?token=<token>`` or the
session cookie that a page requested with the token sets (401 otherwise; WebSocket upgrades are refused). The
``Host`` header must be a host name or address with an optional port, naming an allowed host (400), and an
``Origin`` header, when present, must be the same origin or an allowed one (403) — on HTTP and on WebSocket
upgrades alike, so a web page elsewhere cannot read or feed the viewer (DNS rebinding, CSRF).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hashlib
import hmac
import html
import inspect
import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Final
from urllib.parse import parse_qs, quote, unquote_plus

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otelflow import attributes as A
from otelflow.records import STATUS_RUNNING, SpanRecord, to_otlp_json
from otelflow.scrub import DEFAULT_VALUE_LIMIT, fix_surrogates
from otelflow.wire import finite

from .hub import INGEST_SLICE, Filters, Hub
from .journal import JournalError
from .otlp import (
    DEFAULT_MAX_BYTES,
    JSON,
    KIND_JSON,
    PROTOBUF,
    BodyError,
    Decoded,
    Unavailable,
    decode_body,
    handle_traces,
)
from .pages import PageHeaders, install_pages, jaeger_url_from_env
from .store import Store, StoreError, default_db_path
from .streams import CLOSE_POLICY, SSE_RAW_HEADERS, LiveFlowSession, SseResponse, WsSession, sse_stream

__all__ = [
    "LOOPBACK_HOSTS",
    "SESSION_COOKIE",
    "SecurityMiddleware",
    "StoreError",
    "ViewerConfigError",
    "allowed_host",
    "bind_socket",
    "create_app",
    "host_name",
    "is_loopback",
    "make_server",
    "serve",
    "session_value",
]

log = logging.getLogger("otelflow.viewer")

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_KINDS: Final = (A.KIND_WORKFLOW, A.KIND_AGENT, A.KIND_NODE, A.KIND_TOOL)


class ViewerConfigError(ValueError):
    """A viewer setting that cannot work; the message says what to change."""


# --------------------------------------------------------------------------------------------------
# Security
# --------------------------------------------------------------------------------------------------


SESSION_COOKIE: Final = "otelflow_session"
_SESSION_MESSAGE: Final = b"otelflow-session-v1"
# A Host header is a name (letters, digits, '-', '_', dots), an IPv4 address or a bracketed IPv6 address, then
# an optional port; anything else ('127.0.0.1:80@evil.example', 'a, b', spaces) is refused rather than guessed at.
_HOST_RE: Final = re.compile(
    r"(?:(?P<name>[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_.])?)|\[(?P<ipv6>[0-9a-f:.]+)\])(?::[0-9]{1,5})?"
)
_PAGE_RE: Final = re.compile(r"/(?:stats|runs/[^/]+)?")


def session_value(token: str) -> str:
    """The session cookie's value for ``token``: HMAC-SHA256 keyed by the token, hex.

    Derived, so the cookie never carries the token itself; deterministic, so it stays valid across restarts
    and across viewer replicas that share one token.
    """
    return hmac.new(token.encode(), _SESSION_MESSAGE, hashlib.sha256).hexdigest()


def host_name(host: str) -> str | None:
    """The name in a ``Host`` header, lower case without port or brackets (``[::1]:8080`` → ``::1``);
    ``None`` when the header is not exactly a host name or address with an optional port."""
    match = _HOST_RE.fullmatch(host.strip().lower())
    if match is None:
        return None
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return None
        return match["ipv6"]
    return match["name"]


class SecurityMiddleware:
    """Token, Host and Origin checks for HTTP requests and WebSocket upgrades (see the module docstring).

    ``allowed_hosts`` ``None`` accepts any well-formed Host (use only with a token); ``allowed_origins`` are
    full origins such as ``https://example.org``, accepted besides the same origin.

    With a token, a page (``GET /``, ``/runs/{run}``, ``/stats``) requested with the token also gets the
    session cookie (:data:`SESSION_COOKIE`, :func:`session_value`; ``HttpOnly; SameSite=Strict; Path=/``,
    ``Secure`` over https), which every later request may send instead of the token: the page's scripts,
    styles, API calls and streams cannot carry a token themselves. A page requested with ``?token=`` is
    answered with a 303 to the same page without it, so the token leaves the address bar and the history
    (followed from another site's link, with a page that refreshes to it: see :meth:`__call__`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        allowed_hosts: Iterable[str] | None,
        allowed_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.session = session_value(token).encode() if token else None
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts) if allowed_hosts is not None else None
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    def _credential(self, scope: Scope, headers: Headers) -> str | None:
        """How the request proves it knows the token: ``"bearer"``, ``"query"``, ``"cookie"``, or ``None``."""
        if self.token is None or self.session is None:
            return None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return "bearer" if hmac.compare_digest(auth[7:].strip().encode(), self.token) else None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if query:
            return "query" if hmac.compare_digest(query[0].encode(), self.token) else None
        cookie = _cookie(headers, SESSION_COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.session):
            return "cookie"
        return None

    def _problem(self, scope: Scope) -> tuple[int, str] | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        name = host_name(host) if host else ""
        if name is None:
            return 400, f"Host {host!r} is not a host name with an optional port"
        if self.allowed_hosts is not None and name not in self.allowed_hosts:
            return 400, (
                f"Host {host!r} is not allowed; use one of {sorted(self.allowed_hosts)}, "
                "or start the viewer with --allowed-host NAME"
            )
        origin = headers.get("origin")
        if origin is not None:
            origin = origin.rstrip("/").lower()
            same = origin in (f"http://{host.lower()}", f"https://{host.lower()}")
            if not same and origin not in self.allowed_origins:
                return 403, f"Origin {origin!r} is not allowed"
        if self.token is not None and self._credential(scope, headers) is None:
            return 401, "a token is required: send Authorization: Bearer <token> or ?token=<token>"
        return None

    def _page_login(self, scope: Scope) -> tuple[str | None, list[tuple[bytes, bytes]]] | None:
        """For a page requested with the token: where to redirect (``None``: serve it) and the cookie header."""
        if self.token is None or scope["type"] != "http" or scope["method"] != "GET":
            return None
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if _PAGE_RE.fullmatch(path) is None:
            return None
        how = self._credential(scope, Headers(scope=scope))
        if how not in ("bearer", "query"):
            return None
        cookie = f"{SESSION_COOKIE}={(self.session or b'').decode()}; HttpOnly; SameSite=Strict; Path=/"
        if scope.get("scheme") == "https":
            cookie += "; Secure"
        headers = [(b"set-cookie", cookie.encode("latin-1"))]
        if how == "bearer":
            return None, headers  # the same URL again would be a loop for clients that resend the header
        raw_query: str = scope.get("query_string", b"").decode("latin-1")
        kept = [p for p in raw_query.split("&") if p and unquote_plus(p.partition("=")[0]) != "token"]
        # relative to the page itself, so that it also holds behind a proxy that serves the viewer under a prefix
        raw_path: bytes = scope.get("raw_path") or quote(scope["path"]).encode()
        target = "./" + raw_path.decode("latin-1").rsplit("/", 1)[-1]
        if kept:
            target += "?" + "&".join(kept)
        return target, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is not None:
            status, message = problem
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": message[:120]})
                return
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            await JSONResponse({"error": message}, status, headers=headers)(scope, receive, send)
            return
        login = self._page_login(scope)
        if login is None:
            await self.app(scope, receive, send)
            return
        target, cookie = login
        if target is not None:
            if Headers(scope=scope).get("sec-fetch-site") == "cross-site":
                # A link followed from another site: the browser would not send a SameSite=Strict cookie on
                # a redirect of that navigation, but it does on one that this page starts itself (and a
                # refresh replaces the history entry, so the token still leaves it).
                url = html.escape(target)
                body = f'<!doctype html><meta http-equiv="refresh" content="0; url={url}"><a href="{url}">otelflow</a>'
                moved: Response = HTMLResponse(body, headers={"Cache-Control": "no-store"})
            else:
                moved = Response(status_code=303, headers={"Location": target, "Cache-Control": "no-store"})
            moved.raw_headers.extend(cookie)
            await moved(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cookie]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _cookie(headers: Headers, name: str) -> str | None:
    """The value of cookie ``name`` among the request's ``Cookie`` headers (the first, if sent twice)."""
    for line in headers.getlist("cookie"):
        for part in line.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value.strip()
    return None


# --------------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------------


_RUNS_PREFIX: Final = "/api/runs/"
_STREAM_SUFFIX: Final = "/stream"


class ViewerApp(FastAPI):
    """FastAPI, but the SSE stream routes (``GET /api/stream``, ``GET /api/runs/{run}/stream``) that pass the
    security checks are served as raw ASGI ahead of the framework: an idle stream then holds no routing,
    exception-wrapper or request objects, which is most of what a thousand open streams would cost.
    Everything else, including a stream request the checks refuse, goes through FastAPI as usual (the same
    routes exist there, so behaviour is one and the same)."""

    sse_handler: Callable[[Scope, Receive, Send], Awaitable[bool]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.sse_handler
        if handler is not None and scope["type"] == "http" and await handler(scope, receive, send):
            return
        await super().__call__(scope, receive, send)


def _query_filters(q: QueryParams, run: str | None = None) -> Filters:
    """A stream's filters from its query string; ``run`` (from the path) replaces ``?run=``."""
    return Filters.parse(
        run=run if run is not None else (q.getlist("run") or None),
        kind=q.getlist("kind") or None,
        type=q.getlist("type") or None,
        name=q.getlist("name") or None,
        status=q.getlist("status") or None,
    )


def _last_event_id(headers: Headers, q: QueryParams) -> str | None:
    """Where a stream resumes: the ``Last-Event-ID`` header, else ``?last_event_id=`` (EventSource cannot set it)."""
    return headers.get("last-event-id") or q.get("last_event_id") or None


def _headers_after(middleware: Callable[[ASGIApp], ASGIApp], headers: list[tuple[bytes, bytes]]) -> Any:
    """The response headers ``middleware`` turns ``headers`` into, found by running it once on a response that
    needs no I/O; ``None`` if it did not finish at once (then it must wrap each stream instead)."""
    sent: list[Message] = []

    async def inner(_scope: Scope, _receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})

    async def record(message: Message) -> None:
        sent.append(message)

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    coro = middleware(inner)({"type": "http", "headers": []}, nothing, record)
    try:
        coro.send(None)  # type: ignore[attr-defined]
    except StopIteration:
        return list(sent[0]["headers"]) if sent else None
    coro.close()  # type: ignore[attr-defined]
    return None


def _span_tree(spans: list[SpanRecord]) -> list[dict[str, Any]]:
    """Nested ``{"span_id", "children"}`` nodes; spans whose parent is unknown are roots."""
    nodes: dict[str, dict[str, Any]] = {s.span_id: {"span_id": s.span_id, "children": []} for s in spans}
    roots: list[dict[str, Any]] = []
    for s in spans:
        parent = nodes.get(s.parent_span_id) if s.parent_span_id else None
        if parent is not None and s.parent_span_id != s.span_id:
            parent["children"].append(nodes[s.span_id])
        else:
            roots.append(nodes[s.span_id])
    return roots


class ApiResponse(JSONResponse):
    """JSON that always renders: text stored before it was cleaned (lone surrogates) becomes U+FFFD and
    non-finite numbers strings, rather than the whole answer failing."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (UnicodeEncodeError, ValueError):
            text = json.dumps(finite(content), ensure_ascii=False, separators=(",", ":"), default=str)
            return fix_surrogates(text).encode("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return ApiResponse({"error": message}, status)


def create_app(
    *,
    db: str | os.PathLike[str] | Store = ":memory:",
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = LOOPBACK_HOSTS,
    allowed_origins: Iterable[str] = (),
    retention_days: float | None = 30.0,
    max_runs: int | None = 10_000,
    max_body_bytes: int = DEFAULT_MAX_BYTES,
    heartbeat_s: float = 10.0,
    send_deadline_s: float = 10.0,
    hub: Hub | None = None,
    jaeger_url: str | None = None,
    max_value_length: int | None = DEFAULT_VALUE_LIMIT,
    idle_run_s: float = 300.0,
) -> FastAPI:
    """The viewer as an ASGI app. ``app.state.hub`` and ``app.state.store`` are its hub and store.

    Pages (``/``, ``/runs/{run}``, ``/stats``) come from :mod:`viewer.pages`; ``jaeger_url`` (default
    ``$OTELFLOW_JAEGER_URL``) adds "Open in Jaeger" links to run pages.

    ``db`` is a path, ``":memory:"``, or an opened :class:`Store`. The lifespan opens the store (unless open),
    starts the hub, and on shutdown publishes ``shutdown``, closes streams and flushes the store.

    ``POST /v1/traces`` answers 2xx once the request is in the store's intake log (it then reaches the history,
    also after a crash: the lifespan ingests what the log holds beyond the history before serving); when the
    log cannot be written, or the store's backlog is full, it answers 503 with ``Retry-After``. Attribute
    values longer than ``max_value_length`` characters are cut (marked). Runs nothing was heard of for
    ``idle_run_s`` and no live worker runs end as abandoned (0: never).
    """
    store = db if isinstance(db, Store) else Store(db, retention_days=retention_days, max_runs=max_runs)
    hub = hub or Hub(store=store, idle_run_s=idle_run_s)
    hub.store = store

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if store._thread is None:
            store.open()
        await hub.start()
        replay()
        try:
            yield
        finally:
            hub.shutdown()
            await hub.stop()
            store.close()

    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI >= 0.165 traces its own requests through the global tracer provider. In a process that
        # also streams to this viewer (otelflow run, otelflow demo) every POST /v1/traces would make a span
        # that is posted again, for ever; and stream connections would show up as runs.
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    app = ViewerApp(
        title="otelflow viewer",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=ApiResponse,
        **extra,
    )
    app.state.hub = hub
    app.state.store = store
    app.add_middleware(SecurityMiddleware, token=token, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)

    def admit() -> None:
        if store.full:
            raise Unavailable(f"the viewer's history is behind ({store.health()[1]}); retry later", 2)

    # One request at a time: its rows reach the store in the order of the intake log, so committing the log's
    # position after a request's rows means every request before it is in the history too.
    one_at_a_time = asyncio.Lock()

    async def ingest(decoded: Decoded) -> None:
        hub.touch(decoded.workers)
        if not decoded.span_count:
            return  # a heartbeat: nothing to keep
        async with one_at_a_time:
            try:
                end = store.append(decoded.kind, decoded.body)
            except JournalError as exc:
                raise Unavailable(f"{exc}; retry later", 2) from None
            decoded.body = b""
            batches = decoded.batches(INGEST_SLICE)
            batch = next(batches, None)
            if batch is None:
                store.mark_journal(end)  # every span was rejected: only the position moves
            while batch is not None:
                following = next(batches, None)
                # the last slice's rows carry the log position: it commits with them
                with store.batch(journal_end=end if following is None else 0):
                    hub.ingest(batch)
                batch = following
                if batch is not None:
                    await asyncio.sleep(0)  # let streams write, and other requests read their bodies

    def replay() -> None:
        """Ingest what the intake log holds beyond the history (the viewer stopped before committing it)."""
        count = 0
        for end, kind, body in store.unconsumed():
            try:
                decoded = decode_body(body, JSON if kind == KIND_JSON else PROTOBUF, max_value_length)
            except BodyError:
                log.warning("the intake log holds a request that cannot be read any more; skipped")
            else:
                hub.touch(decoded.workers)
                for batch in decoded.batches(INGEST_SLICE):
                    hub.ingest(batch)
                count += 1
            store.mark_journal(end)
        if count:
            log.warning("ingested %d requests from the intake log that had not reached the history", count)

    @app.post("/v1/traces")
    async def traces(request: Request) -> Response:
        return await handle_traces(request, ingest, max_body_bytes, limit=max_value_length, admit=admit)

    async def run_has_ended(run: str) -> bool:
        """Whether ``run`` is only in the history, ended: its stream then replays what is stored and closes."""
        if hub.resolve(run) is not None:
            return False
        trace = await store.resolve(run)
        if trace is None:
            return False
        summary, _ = await store.get_run(trace)
        return summary is not None and summary["status"] != STATUS_RUNNING

    @app.get("/api/stream")
    async def stream(request: Request) -> Response:
        q = request.query_params
        return SseResponse(
            hub,
            _query_filters(q),
            _last_event_id(request.headers, q),
            heartbeat_s=heartbeat_s,
            send_deadline_s=send_deadline_s,
        )

    @app.get("/api/runs/{run}/stream")
    async def run_stream(request: Request, run: str) -> Response:
        q = request.query_params
        return SseResponse(
            hub,
            _query_filters(q, run),
            _last_event_id(request.headers, q),
            until_run_end=True,
            replay_run=True,
            closed_run=await run_has_ended(run),
            heartbeat_s=heartbeat_s,
            send_deadline_s=send_deadline_s,
        )

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        q = websocket.query_params
        filters = _query_filters(q)
        await WsSession(websocket, hub, filters, q.get("last_event_id") or None, send_deadline_s=send_deadline_s).run()

    @app.websocket("/ws/live-flow/{job_id}")
    async def live_flow(websocket: WebSocket, job_id: str) -> None:
        await LiveFlowSession(websocket, hub, job_id, send_deadline_s=send_deadline_s).run()

    async def resolve(run: str) -> str | None:
        return hub.resolve(run) or hub.resolve(run.lower()) or await store.resolve(run)

    @app.get("/api/runs")
    async def runs(
        status: str | None = None,
        name: str | None = None,
        service: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Response:
        if not 1 <= limit <= 500 or offset < 0:
            return _error(400, "limit must be 1..500 and offset ≥ 0")
        statuses = [s.strip() for s in status.split(",") if s.strip()] if status else []
        items, total = await store.list_runs(status=statuses, name=name, service=service, limit=limit, offset=offset)
        for i, item in enumerate(items):
            live = hub.run(item["trace_id"])
            if live is not None:
                items[i] = live.to_dict()
        return ApiResponse({"runs": items, "total": total, "limit": limit, "offset": offset})

    @app.get("/api/runs/{run}")
    async def run_detail(run: str) -> Response:
        live = hub.run(run)
        if live is not None:
            spans = sorted(live.spans.values(), key=lambda s: (s.start_time_ns, s.span_id))
            summary: dict[str, Any] | None = live.to_dict()
            last = hub.last_id
        else:
            trace = await store.resolve(run)
            if trace is None:
                return _error(404, f"no run {run!r}: give a trace id or an otelflow.run.id")
            last = hub.last_id
            summary, spans = await store.get_run(trace)
            if summary is None:
                return _error(404, f"no run {run!r}")
        return ApiResponse(
            {
                "run": summary,
                "spans": [s.to_dict() for s in spans],
                "tree": _span_tree(spans),
                "progress": summary.get("progress") if summary else None,
                "last_event_id": last,
            }
        )

    @app.get("/api/runs/{run}/events")
    async def run_events(run: str, after: str | None = None, limit: int = 10_000) -> Response:
        trace = await resolve(run)
        if trace is None:
            return _error(404, f"no run {run!r}")
        events = await store.events(trace, after, max(1, min(limit, 10_000)))
        if events is None:
            return _error(404, f"event {after!r} is not in the history; fetch /api/runs/{run} instead")
        return ApiResponse({"run_id": trace, "events": events})

    @app.get("/api/runs/{run}/export")
    async def run_export(run: str) -> Response:
        trace = await resolve(run)
        if trace is None:
            return _error(404, f"no run {run!r}")
        live = hub.run(trace)
        spans = list(live.spans.values()) if live is not None else (await store.get_run(trace))[1]
        headers = {"Content-Disposition": f'attachment; filename="{trace}.otlp.json"'}
        return ApiResponse(to_otlp_json(spans), headers=headers)

    @app.get("/api/stats")
    async def stats(kind: str | None = None) -> Response:
        kinds = [k.strip() for k in kind.split(",") if k.strip()] if kind else list(_DEFAULT_KINDS)
        return ApiResponse({"stats": await store.stats_by_name(kinds)})

    @app.get("/healthz")
    async def healthz() -> Response:
        status, reason = store.health()
        return ApiResponse(
            {
                "status": "shutting_down" if hub.shutting_down else status,
                "reason": reason,
                "epoch": hub.epoch,
                "last_event_id": hub.last_id,
                "subscribers": hub.subscriber_count,
                "live_runs": sum(1 for r in hub.runs() if r.status == STATUS_RUNNING),
                "hub": {**hub.stats, "ring_bytes": hub.ring_nbytes, "live_bytes": hub.live_nbytes},
                "store": {**store.stats, "backlog_rows": store.backlog_rows, "backlog_bytes": store.backlog_bytes},
            }
        )

    install_pages(app, jaeger_url=jaeger_url if jaeger_url is not None else jaeger_url_from_env())

    # The raw SSE routes (see ViewerApp): the same checks, filters, resume and headers as the routes above.
    security = SecurityMiddleware(app, token=token, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)
    sse_headers: list[tuple[bytes, bytes]] = SSE_RAW_HEADERS
    wrap: Callable[[ASGIApp], ASGIApp] | None = None
    if any(getattr(m, "cls", None) is PageHeaders for m in app.user_middleware):
        found = _headers_after(PageHeaders, SSE_RAW_HEADERS)
        if found is not None:
            sse_headers = found
        else:
            wrap = PageHeaders

    async def sse_handler(scope: Scope, receive: Receive, send: Send) -> bool:
        if scope["method"] != "GET":
            return False
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        run: str | None = None
        if path != "/api/stream":
            if not (path.startswith(_RUNS_PREFIX) and path.endswith(_STREAM_SUFFIX)):
                return False
            run = path[len(_RUNS_PREFIX) : -len(_STREAM_SUFFIX)]
            if not run or "/" in run:
                return False
        if security._problem(scope) is not None:
            return False  # FastAPI answers it, exactly as for any other route
        q = QueryParams(scope["query_string"])
        filters = _query_filters(q, run)
        last = _last_event_id(Headers(scope=scope), q)
        closed_run = run is not None and await run_has_ended(run)
        del q

        async def stream(_scope: Scope, receive: Receive, send: Send) -> None:
            await sse_stream(
                receive,
                send,
                hub,
                filters,
                last,
                until_run_end=run is not None,
                replay_run=run is not None,
                closed_run=closed_run,
                heartbeat_s=heartbeat_s,
                send_deadline_s=send_deadline_s,
                headers=sse_headers,
            )

        await (wrap(stream) if wrap is not None else stream)(scope, receive, send)
        return True

    app.sse_handler = sse_handler
    return app


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn, but open streams are told to end before uvicorn waits for connections to close."""

    def __init__(self, config: uvicorn.Config, hub: Hub, ready: Callable[[str, int], None] | None) -> None:
        super().__init__(config)
        self.hub = hub
        self.ready = ready

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.ready is not None and self.started:
            port = self.servers[0].sockets[0].getsockname()[1] if self.servers else self.config.port
            self.ready(self.config.host, int(port))

    async def shutdown(self, sockets: Any = None) -> None:
        # Streams get their `shutdown` event and end on their own (bounded) before uvicorn closes sockets.
        self.hub.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(2.0, float(self.config.timeout_graceful_shutdown or 2))
        while self.hub.subscriber_count and loop.time() < deadline:  # noqa: ASYNC110 - bounded poll of a count
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)


def make_server(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    ready_callback: Callable[[str, int], None] | None = None,
    graceful_s: float = 5.0,
    log_level: str = "warning",
) -> uvicorn.Server:
    """A uvicorn server for ``app`` that ends streams first on shutdown (bounded by ``graceful_s``)."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ws_max_size=64 * 1024,
        timeout_graceful_shutdown=max(1, round(graceful_s)),
        lifespan="on",
        access_log=False,
    )
    hub: Hub = app.state.hub
    return _Server(config, hub, ready_callback)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_host(value: str) -> str:
    """A host name or address as :func:`serve` and ``--allowed-host`` take it: lower case, IPv6 without
    brackets; raises :class:`ViewerConfigError` when it is not one (a port, a URL, a list)."""
    name = value.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name or host_name(f"[{name}]" if ":" in name else name) != name:
        raise ViewerConfigError(f"{value!r} is not a host name or address: give one such as viewer.example.org")
    return name


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (``0`` picks a free port), as uvicorn would bind it; raises
    :class:`ViewerConfigError` saying what to do when it cannot (a port in use, an address not on this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto named: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and without it every
    # small write (a response, an SSE event) waits for the peer's delayed ACK, up to 40 ms
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ViewerConfigError(
                f"port {port} on {host} is in use; choose another with --port (0 picks a free one)"
            ) from None
        raise ViewerConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    db: str | os.PathLike[str] | None = None,
    token: str | None = None,
    retention_days: float | None = 30.0,
    max_runs: int | None = 10_000,
    allowed_hosts: Iterable[str] | None = None,
    allowed_origins: Iterable[str] = (),
    ready_callback: Callable[[str, int], None] | None = None,
    log_level: str = "info",
    idle_run_s: float = 300.0,
    max_backlog_bytes: int = 128 * 1024 * 1024,
) -> None:
    """Run the viewer until SIGINT/SIGTERM (what ``otelflow serve`` calls).

    ``db`` defaults to :func:`viewer.store.default_db_path`, whose folders are created; the folder of a ``db``
    given must exist. ``token`` defaults to ``$OTELFLOW_TOKEN``.
    Raises :class:`ViewerConfigError` for a non-loopback ``host`` without a token, a token of only whitespace,
    a port outside 0..65535 or one that cannot be bound (in use), and :class:`viewer.store.StoreError` for an
    unusable database, all before serving anything.
    ``ready_callback(host, port)`` is called once the socket listens (``port=0`` picks a free port).
    The loopback names are accepted as Host, plus ``host`` itself when it is not a wildcard, plus
    ``allowed_hosts``; a wildcard bind without ``allowed_hosts`` accepts any Host (the token protects it).
    """
    if not token:
        token = os.environ.get("OTELFLOW_TOKEN") or None
    if token is not None and not token.strip():
        raise ViewerConfigError(
            "the token is only whitespace: pass a real secret with --token (or OTELFLOW_TOKEN), "
            "e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`"
        )
    if not is_loopback(host) and not token:
        raise ViewerConfigError(
            f"refusing to listen on {host}: without a token anyone who can reach it could read your spans. "
            "Pass --token (or set OTELFLOW_TOKEN), or bind 127.0.0.1."
        )
    if not 0 <= port <= 65535:
        raise ViewerConfigError(f"port {port} is out of range: use 0..65535 (0 picks a free port)")
    extra = {allowed_host(h) for h in allowed_hosts or ()}
    hosts: frozenset[str] | None
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - only names what a wildcard bind means
        hosts = LOOPBACK_HOSTS | extra if extra else None  # without names, any name may reach it
    else:
        hosts = LOOPBACK_HOSTS | extra | {host.lower().strip("[]")}
    store = Store(
        db if db is not None else default_db_path(),
        retention_days=retention_days,
        max_runs=max_runs,
        max_backlog_bytes=max_backlog_bytes,
        create_folder=db is None,
    )
    store.open()
    try:
        # bound here, not by uvicorn, so that a busy port is one line saying what to do, not uvicorn's log
        sock = bind_socket(host, port)
    except ViewerConfigError:
        store.close()
        raise
    # This process is the viewer alone. Ingestion makes several short-lived dicts per span; CPython's default
    # young generation (700 objects) makes the collector run every few spans, about 15% of the loop's time.
    gc.set_threshold(20_000, 20, 20)
    app = create_app(db=store, token=token, allowed_hosts=hosts, allowed_origins=allowed_origins, idle_run_s=idle_run_s)
    server = make_server(app, host, port, ready_callback=ready_callback, log_level=log_level)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        store.close()
