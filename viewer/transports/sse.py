"""Server-Sent Events: ``GET /api/stream`` and ``GET /api/runs/{run}/stream``, one lean writer per client.

``200 text/event-stream``, ``Cache-Control: no-store``, ``X-Accel-Buffering: no``, never compressed. The first
frame sets ``retry:`` and names where the stream starts (``id:``); a comment goes out after ``heartbeat_s`` of
silence; every queued frame goes out in one write. The stream ends cleanly (200, then close) on shutdown, at
the end of a run-scoped stream's run, and when the client falls behind (it resumes with ``Last-Event-ID``).
A client that stops reading is cut after ``send_deadline_s``.

The two routes are one raw ASGI endpoint served ahead of the framework: an idle stream holds only its
subscription, one coroutine, a disconnect watcher and a heartbeat timer. (sse-starlette's
``EventSourceResponse`` runs four tasks in a task group per stream: 42.5 KiB per idle connection against
12.7 KiB here, measured with ``bench/bench_memory.py``; the 16 KiB target and a thousand idle streams rule it
out.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.datastructures import Headers, QueryParams
from starlette.types import Receive, Scope, Send

from ..live import Filters, Hub, Subscription
from ..pages import HARDENING_HEADERS
from .deadline import Deadline

__all__ = ["SSE_HEADERS", "SseEndpoint", "query_filters", "sse_stream", "stream_route"]

SSE_HEADERS: Final = [
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
    (b"content-encoding", b"identity"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
    *HARDENING_HEADERS,
]
_RUNS_PREFIX: Final = "/api/runs/"
_STREAM_SUFFIX: Final = "/stream"


def query_filters(q: QueryParams, run: str | None = None) -> Filters:
    """A stream's filters from its query string; ``run`` (from the path) replaces ``?run=``."""
    return Filters.parse(
        run=run if run is not None else (q.getlist("run") or None),
        kind=q.getlist("kind") or None,
        type=q.getlist("type") or None,
        name=q.getlist("name") or None,
        status=q.getlist("status") or None,
    )


def stream_route(scope: Scope) -> tuple[bool, str | None]:
    """Whether ``scope`` asks for a stream, and for which run (``None``: every run)."""
    if scope["type"] != "http" or scope["method"] != "GET":
        return False, None
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    if path == "/api/stream":
        return True, None
    if path.startswith(_RUNS_PREFIX) and path.endswith(_STREAM_SUFFIX):
        run = path[len(_RUNS_PREFIX) : -len(_STREAM_SUFFIX)]
        if run and "/" not in run:
            return True, run
    return False, None


class SseEndpoint:
    """Both stream routes as one ASGI app. ``closed(run)`` says whether a run is only in the history, ended:
    its stream then starts with ``reset`` and closes."""

    def __init__(
        self,
        hub: Hub,
        *,
        closed: Callable[[str], Awaitable[bool]],
        heartbeat_s: float = 10.0,
        send_deadline_s: float = 10.0,
    ) -> None:
        self.hub = hub
        self.closed = closed
        self.heartbeat_s = heartbeat_s
        self.send_deadline_s = send_deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _, run = stream_route(scope)
        q = QueryParams(scope["query_string"])
        filters = query_filters(q, run)
        # where a stream resumes: the Last-Event-ID header, else ?last_event_id= (EventSource cannot set it)
        last = Headers(scope=scope).get("last-event-id") or q.get("last_event_id") or None
        closed_run = run is not None and await self.closed(run)
        del q
        await sse_stream(
            receive,
            send,
            self.hub,
            filters,
            last,
            until_run_end=run is not None,
            replay_run=run is not None,
            closed_run=closed_run,
            heartbeat_s=self.heartbeat_s,
            send_deadline_s=self.send_deadline_s,
        )


async def sse_stream(
    receive: Receive,
    send: Send,
    hub: Hub,
    filters: Filters,
    last_event_id: str | None = None,
    *,
    until_run_end: bool = False,
    replay_run: bool = False,
    closed_run: bool = False,
    heartbeat_s: float = 10.0,
    retry_ms: int = 2000,
    send_deadline_s: float = 10.0,
    headers: list[tuple[bytes, bytes]] = SSE_HEADERS,
) -> None:
    """Serve one SSE stream on a raw ASGI connection (see the module docstring); ``headers`` are sent as given.

    Kept lean on purpose: an idle stream holds only its subscription, this coroutine, one disconnect watcher
    and one heartbeat timer.
    """
    deadline = Deadline(send_deadline_s)
    if closed_run and not last_event_id:
        sub = hub.broadcast.over(filters, "run ended before the replay ring")
    else:
        sub = hub.open(filters, last_event_id, until_run_end=until_run_end, replay_run=replay_run)
    sub.on_cut(deadline.cut)
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, sub))
    try:
        await deadline.send(send, {"type": "http.response.start", "status": 200, "headers": headers})
        # The first frame names where the stream starts, so that even a client cut before its first event
        # resumes from there (EventSource keeps the id of an event-less frame as its Last-Event-ID).
        chunks = [f"retry: {retry_ms}\nid: {sub.start_id}\n: otelflow {hub.broadcast.epoch}\n\n".encode()]
        while True:
            for ev in sub.drain():
                chunks += (ev.head, ev.data, b"\n\n")
            if sub.closed == "client":
                break
            if chunks:
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks = []
                await deadline.send(send, {"type": "http.response.body", "body": body, "more_body": True})
            if sub.finished or sub.closed == "overflow":
                break
            if not await sub.wait(heartbeat_s):
                chunks.append(b": keep-alive\n\n")
        if sub.closed != "client":
            await deadline.send(send, {"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not deadline.absorb():
            raise
        # the client stopped reading: returning leaves the response open, so uvicorn closes the socket
    except OSError:
        pass  # the client went away mid-write
    finally:
        hub.release(sub)
        watcher.cancel()


async def _watch_disconnect(receive: Receive, sub: Subscription) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            sub.abort("client")
            return
