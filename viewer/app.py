"""The viewer's web application, wired: the intake, the live side, the history, the transports, the REST API and
the pages behind the security checks; and :func:`serve` to run it.

Routes: ``POST /v1/traces`` and ``POST /v1/logs`` (:mod:`viewer.intake`), ``GET /api/stream`` and
``GET /api/runs/{run}/stream`` (:mod:`viewer.transports.sse`), ``/ws`` and ``/ws/live-flow/{job_id}``
(WebSocket), the REST API (:mod:`viewer.api`) and the pages (:mod:`viewer.pages`), all behind :mod:`viewer.security`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import inspect
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from otelflow import attributes as A
from otelflow.genai import Prices, use_prices
from otelflow.scrub import DEFAULT_VALUE_LIMIT

from .alerts import AlertConfig, AlertConfigError, AlertEngine, Delivery, load_rules
from .api import ApiResponse, api_router, run_has_ended
from .history import History, PostgresHistory, Recorder, SqliteHistory, default_db_path, history_for, is_postgres_url
from .history.standby import SharedHistory
from .intake import Intake
from .live import Hub
from .live.backends.redis import DEFAULT_MAXLEN, BrokerError, RedisBackend, check_broker
from .live.stall import DEFAULT_QUIET_S, StallPolicy
from .otlp import DEFAULT_MAX_BYTES
from .pages import install_pages, jaeger_url_from_env
from .prices import PriceError, load_prices
from .security import LOOPBACK_HOSTS, SecurityMiddleware, ViewerConfigError, allowed_host, is_loopback
from .transports import SSE_HEADERS, LiveFlowSession, SseEndpoint, WsSession, query_filters, stream_route

__all__ = ["ViewerApp", "bind_socket", "create_app", "make_server", "serve"]

log = logging.getLogger("otelflow.viewer")


class ViewerApp(FastAPI):
    """FastAPI, but the two SSE routes are served by :class:`viewer.transports.SseEndpoint` ahead of the
    framework once the security checks pass: an idle stream then holds no routing, exception-wrapper or request
    objects. A stream request the checks refuse goes through FastAPI, whose security middleware answers it."""

    sse: SseEndpoint | None = None
    security: SecurityMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sse, security = self.sse, self.security
        if sse is not None and security is not None and stream_route(scope)[0] and security.problem(scope) is None:
            await sse(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    *,
    db: str | os.PathLike[str] | History = ":memory:",
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
    alerts: AlertConfig | None = None,
    stall_after_s: float | None = DEFAULT_QUIET_S,
    durations_every_s: float = 60.0,
    prices: Prices | None = None,
    broker: RedisBackend | None = None,
) -> FastAPI:
    """The viewer as an ASGI app. ``app.state.hub`` and ``app.state.history`` are its hub and history.

    ``db`` is a path, ``":memory:"``, a ``postgresql://`` (or ``postgres://``) URL of a :class:`PostgresHistory`,
    or a :class:`SqliteHistory` or :class:`PostgresHistory`. The lifespan opens the history (unless open),
    restores the runs that were live, ingests what the intake log holds beyond the history, starts the hub, and
    on shutdown publishes ``shutdown``, closes streams and flushes the history. ``jaeger_url`` (default
    ``$OTELFLOW_JAEGER_URL``) adds "Open in Jaeger" links to run pages. Attribute values longer than
    ``max_value_length`` characters are cut (marked). Runs nothing was heard of for ``idle_run_s`` with no live
    worker end as abandoned (0: never; applies when ``hub`` is not given). A running span quiet for
    ``stall_after_s`` (``None``: never) is flagged stalled, and for less when a ``stalled`` rule of ``alerts`` says
    so; ``alerts`` (see :mod:`viewer.alerts`) fire on the stream, in ``/api/alerts`` and at their webhooks.
    What "slow" means (p95 durations per name) is read from the history every ``durations_every_s``.
    ``prices`` (default: the shipped table with ``$OTELFLOW_PRICES`` over it) estimates the cost of model calls.
    ``broker`` (a :class:`viewer.live.backends.RedisBackend`) makes this viewer one of the replicas that share its
    stream (``hub`` must then not be given).
    """
    use_prices(prices if prices is not None else load_prices())
    history = (
        db
        if isinstance(db, (SqliteHistory, PostgresHistory))
        else history_for(db, retention_days=retention_days, max_runs=max_runs)
    )
    if broker is not None and hub is not None:
        raise ValueError("give create_app a broker or a hub, not both")
    hub = hub or Hub(idle_run_s=idle_run_s, backend=broker)
    config = alerts or AlertConfig()
    hub.state.stall = StallPolicy(config.stall_rules(), default_quiet_s=stall_after_s)
    recorder = Recorder(history)
    hub.tap(recorder)
    engine = AlertEngine(config, hub, history, Delivery(config.actions))
    hub.tap(engine)
    intake = Intake(hub, history, max_body_bytes=max_body_bytes, max_value_length=max_value_length, broker=broker)
    shared = (
        SharedHistory(hub, broker, history, recorder)
        if broker is not None and isinstance(history, PostgresHistory)
        else None
    )

    app = ViewerApp(
        title="otelflow viewer",
        lifespan=_lifespan(hub, history, intake, engine, durations_every_s, shared),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        default_response_class=ApiResponse,
        **_no_self_tracing(),
    )
    app.state.hub = hub
    app.state.history = history
    app.state.alerts = engine
    app.add_middleware(SecurityMiddleware, token=token, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)

    @app.post("/v1/traces")
    async def traces(request: Request) -> Response:
        return await intake.handle(request)

    @app.post("/v1/logs")
    async def logs(request: Request) -> Response:
        return await intake.handle_logs(request)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        q: QueryParams = websocket.query_params
        last = q.get("last_event_id") or None
        await WsSession(websocket, hub, query_filters(q), last, send_deadline_s=send_deadline_s).run()

    @app.websocket("/ws/live-flow/{job_id}")
    async def live_flow(websocket: WebSocket, job_id: str) -> None:
        await LiveFlowSession(websocket, hub, job_id, send_deadline_s=send_deadline_s).run()

    app.include_router(api_router(hub, history, engine))
    install_pages(app, jaeger_url=jaeger_url if jaeger_url is not None else jaeger_url_from_env())

    async def closed(run: str) -> bool:
        return await run_has_ended(hub, history, run)

    app.sse = _stream_routes(
        app, SseEndpoint(hub, closed=closed, heartbeat_s=heartbeat_s, send_deadline_s=send_deadline_s)
    )
    app.security = SecurityMiddleware(app, token=token, allowed_hosts=allowed_hosts, allowed_origins=allowed_origins)
    return app


def _lifespan(
    hub: Hub,
    history: History,
    intake: Intake,
    alerts: AlertEngine,
    durations_every_s: float,
    shared: SharedHistory | None = None,
) -> Callable[[FastAPI], Any]:
    """Open the history (unless open), restore the runs that were live and the open alerts, ingest what the
    intake log holds beyond the history, start the hub and the alerts; on the way out, tell the streams, stop
    the hub and the alerts and flush the history."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not history.opened:
            history.open()
        runs, spans = await history.load_live()
        hub.restore(runs, spans)
        alerts.restore(await history.alerts("open", 10_000))
        intake.replay()
        if shared is not None:
            await shared.start()
        await hub.start()
        await alerts.delivery.start()
        tasks = [
            asyncio.create_task(_every(1.0, alerts.tick), name="otelflow-alerts"),
            asyncio.create_task(_durations(hub, history, durations_every_s), name="otelflow-durations"),
        ]
        if shared is not None:
            tasks.append(asyncio.create_task(shared.watch(), name="otelflow-shared-history"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            hub.shutdown()
            await hub.stop()
            await alerts.delivery.stop()
            history.close()

    return lifespan


async def _every(interval_s: float, fn: Callable[[], None]) -> None:
    """Call ``fn`` every ``interval_s`` for ever; an exception is logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            fn()
        except Exception:
            log.exception("periodic %s failed", getattr(fn, "__qualname__", fn))


async def _durations(hub: Hub, history: History, interval_s: float) -> None:
    """Give the stall policy the p95 durations per (kind, name) the history knows, now and every minute."""
    while True:
        try:
            hub.state.stall.set_durations(await history.stats_by_name(A.KINDS))
        except Exception:
            log.exception("could not read span durations for the stall check")
        await asyncio.sleep(interval_s)


def _no_self_tracing() -> dict[str, Any]:
    """FastAPI >= 0.165 traces its own requests through the global tracer provider. In a process that also
    streams to this viewer (otelflow run, otelflow demo) every POST /v1/traces would make a span that is posted
    again, for ever; and stream connections would show up as runs. Turn that off where it exists."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    return {}


def _stream_routes(app: FastAPI, sse: SseEndpoint) -> SseEndpoint:
    """The stream routes as the framework knows them: other methods get 405, HEAD the headers alone, and a GET
    that reaches the framework (ViewerApp serves them ahead of it) is served the same way."""

    async def stream(request: Request) -> Response:
        return _Asgi(sse)

    for path in ("/api/stream", "/api/runs/{run}/stream"):
        app.add_api_route(path, stream, methods=["GET", "HEAD"], include_in_schema=False)
    return sse


class _Asgi(Response):
    """A response that hands the request to an ASGI app (HEAD: the stream's headers, no body)."""

    def __init__(self, asgi: SseEndpoint) -> None:
        super().__init__(status_code=200)
        self.asgi = asgi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            await send({"type": "http.response.start", "status": 200, "headers": list(SSE_HEADERS)})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await self.asgi(scope, receive, send)


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
        while self.hub.broadcast.subscriber_count and loop.time() < deadline:  # noqa: ASYNC110 - bounded poll of a count
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
    max_db_bytes: int | None = None,
    alerts_path: str | os.PathLike[str] | None = None,
    stall_after_s: float | None = DEFAULT_QUIET_S,
    prices_path: str | os.PathLike[str] | None = None,
    broker_url: str | None = None,
    broker_maxlen: int = DEFAULT_MAXLEN,
) -> None:
    """Run the viewer until SIGINT/SIGTERM (what ``otelflow serve`` calls).

    ``db`` defaults to :func:`viewer.history.default_db_path`, whose folders are created; the folder of a ``db``
    given must exist. ``token`` defaults to ``$OTELFLOW_TOKEN``.
    Raises :class:`ViewerConfigError` for a non-loopback ``host`` without a token, a token of only whitespace,
    a port outside 0..65535 or one that cannot be bound (in use), an alert rules file (``alerts_path``) or a
    price table (``prices_path``, default ``$OTELFLOW_PRICES``) that cannot be used, and
    :class:`viewer.history.HistoryError` for an unusable database, all before serving anything.
    ``broker_url`` (``redis://...``) makes this viewer a replica sharing that Redis stream with others; a broker
    that does not answer raises :class:`ViewerConfigError` before serving.
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
    try:
        alerts = load_rules(alerts_path) if alerts_path is not None else None
    except AlertConfigError as exc:
        raise ViewerConfigError(str(exc)) from None
    try:
        prices = load_prices(prices_path)
    except PriceError as exc:
        raise ViewerConfigError(f"prices: {exc}") from None
    broker = None
    if broker_url:
        try:
            broker = RedisBackend(broker_url, maxlen=broker_maxlen)
            asyncio.run(check_broker(broker_url))
        except BrokerError as exc:
            raise ViewerConfigError(str(exc)) from None
    extra = {allowed_host(h) for h in allowed_hosts or ()}
    hosts: frozenset[str] | None
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - only names what a wildcard bind means
        hosts = LOOPBACK_HOSTS | extra if extra else None  # without names, any name may reach it
    else:
        hosts = LOOPBACK_HOSTS | extra | {host.lower().strip("[]")}
    if db is not None and is_postgres_url(db) and max_db_bytes is not None:
        raise ViewerConfigError("--max-db-mb is for a SQLite history; PostgreSQL keeps runs by count and age")
    history = history_for(
        db if db is not None else default_db_path(),
        retention_days=retention_days,
        max_runs=max_runs,
        max_backlog_bytes=max_backlog_bytes,
        max_db_bytes=max_db_bytes,
        create_folder=db is None,
    )
    history.open()
    try:
        # bound here, not by uvicorn, so that a busy port is one line saying what to do, not uvicorn's log
        sock = bind_socket(host, port)
    except ViewerConfigError:
        history.close()
        raise
    # This process is the viewer alone. Ingestion makes several short-lived dicts per span; CPython's default
    # young generation (700 objects) makes the collector run every few spans, about 15% of the loop's time.
    gc.set_threshold(20_000, 20, 20)
    app = create_app(
        db=history,
        token=token,
        allowed_hosts=hosts,
        allowed_origins=allowed_origins,
        idle_run_s=idle_run_s,
        alerts=alerts,
        stall_after_s=stall_after_s,
        prices=prices,
        broker=broker,
    )
    server = make_server(app, host, port, ready_callback=ready_callback, log_level=log_level)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        history.close()
