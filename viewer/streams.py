"""SSE and WebSocket transports of the hub's events, one writer per client.

SSE (:class:`SseResponse`): ``200 text/event-stream``, ``Cache-Control: no-store``, ``X-Accel-Buffering: no``,
never compressed. The first frame sets ``retry:``; a comment goes out after ``heartbeat_s`` of silence; every
queued frame goes out in one write. The stream ends cleanly (200, then close) on shutdown, at the end of a
run-scoped stream's run, and when the client falls behind (it resumes with ``Last-Event-ID``). A client that
stops reading is cut after ``send_deadline_s``.

WebSocket (:class:`WsSession`, ``/ws``): each event is one text message, the same JSON object as the SSE
``data:`` line. Client messages (JSON): ``{"type":"subscribe","run":..,"kind":..,"event_type":..,"name":..,
"status":..,"last_event_id":..}`` (or the filters in a ``"filters"`` object, where ``type`` is the event type),
``{"type":"unsubscribe"}``, ``{"type":"ping"}`` → ``{"type":"pong"}``. Control replies: ``subscribed``,
``unsubscribed``, ``pong``, ``error``. Close codes: 1000 done (run ended), 1001 server going away (reconnect
later), 1003 binary data, 1008 policy (bad token/origin: do not retry), 1009 message too big, 1011 server
error, 1013 too slow (reconnect at once with ``last_event_id``).

Compat (:class:`LiveFlowSession`, ``/ws/live-flow/{job_id}``): ``connected``, ``agent_started``,
``agent_completed`` (output, duration), ``agent_failed`` (error), ``data_flow`` (from_agent, to_agent,
data_size), ``progress_update`` (progress, message), ``pong`` to a ``ping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Final

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from otelflow import attributes as A
from otelflow.records import STATUS_ERROR
from otelflow.wire import dumps

from .hub import Event, Filters, Hub, Subscription

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNSUPPORTED",
    "LiveFlowSession",
    "SseResponse",
    "WsSession",
    "sse_stream",
]

log = logging.getLogger("otelflow.viewer")

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_UNSUPPORTED: Final = 1003
CLOSE_POLICY: Final = 1008
CLOSE_TOO_BIG: Final = 1009
CLOSE_ERROR: Final = 1011
CLOSE_TRY_AGAIN: Final = 1013

SSE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",
    "Content-Encoding": "identity",
}


class _Deadline:
    """Cancels the current task when a send takes longer than allowed, or when the client is cut."""

    __slots__ = ("deadline_s", "fired", "in_send", "loop", "task")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.task = asyncio.current_task()
        self.loop = asyncio.get_running_loop()
        self.in_send = False
        self.fired = False

    def fire(self) -> None:
        if self.in_send and not self.fired and self.task is not None:
            self.fired = True
            self.task.cancel()

    def cut(self) -> None:
        """The hub dropped this client: stop a send that is stuck now; a later send will see ``closed``."""
        self.fire()

    async def send(self, send: Send, message: Message) -> None:
        self.in_send = True
        handle = self.loop.call_later(self.deadline_s, self.fire)
        try:
            await send(message)
        finally:
            handle.cancel()
            self.in_send = False

    def absorb(self) -> bool:
        """After a ``CancelledError``: ``True`` (and the cancellation undone) if this object caused it."""
        if not self.fired:
            return False
        if sys.version_info >= (3, 11) and self.task is not None:
            self.task.uncancel()
        return True


SSE_RAW_HEADERS: Final = [
    *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SSE_HEADERS.items()),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]


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
    headers: list[tuple[bytes, bytes]] = SSE_RAW_HEADERS,
) -> None:
    """Serve one SSE stream on a raw ASGI connection (see the module docstring); ``headers`` are sent as given.

    Kept lean on purpose: an idle stream holds only its subscription, this coroutine, one disconnect watcher
    and one heartbeat timer.
    """
    deadline = _Deadline(send_deadline_s)
    if closed_run and not last_event_id:
        sub = Subscription(hub, filters, 1)  # starts at the latest id: nothing of this run comes any more
        sub._put(hub.reset_event(filters, "run ended before the replay ring"))
        sub.close("run_ended")
    else:
        sub = hub.open(filters, last_event_id, until_run_end=until_run_end, replay_run=replay_run)
    sub.on_cut(deadline.cut)
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, sub))
    try:
        await deadline.send(send, {"type": "http.response.start", "status": 200, "headers": headers})
        # The first frame names where the stream starts, so that even a client cut before its first event
        # resumes from there (EventSource keeps the id of an event-less frame as its Last-Event-ID).
        chunks = [f"retry: {retry_ms}\nid: {sub.start_id}\n: otelflow {hub.epoch}\n\n".encode()]
        while True:
            chunks.extend(ev.frame for ev in sub.drain())
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


class SseResponse(Response):
    """An endless ``text/event-stream`` of one subscription (see the module docstring and :func:`sse_stream`)."""

    media_type = "text/event-stream"

    def __init__(
        self,
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
    ) -> None:
        self.hub = hub
        self.filters = filters
        self.last_event_id = last_event_id
        self.until_run_end = until_run_end
        self.replay_run = replay_run
        self.closed_run = closed_run
        self.heartbeat_s = heartbeat_s
        self.retry_ms = retry_ms
        self.send_deadline_s = send_deadline_s
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, "Content-Type": "text/event-stream; charset=utf-8"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await sse_stream(
            receive,
            send,
            self.hub,
            self.filters,
            self.last_event_id,
            until_run_end=self.until_run_end,
            replay_run=self.replay_run,
            closed_run=self.closed_run,
            heartbeat_s=self.heartbeat_s,
            retry_ms=self.retry_ms,
            send_deadline_s=self.send_deadline_s,
            headers=self.raw_headers,
        )


async def _watch_disconnect(receive: Receive, sub: Subscription) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            sub.abort("client")
            return


# --------------------------------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------------------------------


def _filters_from_message(message: dict[str, Any]) -> Filters:
    source = message.get("filters")
    if isinstance(source, dict):
        values = {k: source.get(k) for k in ("run", "kind", "type", "name", "status")}
    else:
        values = {k: message.get(k) for k in ("run", "kind", "name", "status")}
        values["type"] = message.get("event_type") or message.get("types")
    clean: dict[str, str | list[str] | None] = {}
    for key, value in values.items():
        if value is None:
            clean[key] = None
        elif isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            clean[key] = value
        else:
            raise ValueError(f"filter {key!r} must be a string or a list of strings")
    return Filters.parse(**clean)


class WsSession:
    """One ``/ws`` connection: a reader of client messages and a writer of events (see the module docstring)."""

    def __init__(
        self,
        websocket: WebSocket,
        hub: Hub,
        filters: Filters | None = None,
        last_event_id: str | None = None,
        *,
        send_deadline_s: float = 10.0,
        max_message_bytes: int = 4096,
        until_run_end: bool = False,
        replay_run: bool = False,
    ) -> None:
        self.ws = websocket
        self.hub = hub
        self.send_deadline_s = send_deadline_s
        self.max_message_bytes = max_message_bytes
        self.until_run_end = until_run_end
        self.replay_run = replay_run
        self._initial = (filters, last_event_id)
        self._kick = asyncio.Event()
        self._outbox: deque[str] = deque()
        self._sub: Subscription | None = None
        self._close: tuple[int, str] | None = None
        self._gone = False

    # -- hooks for the compat session
    def translate(self, ev: Event) -> Iterable[str]:
        return (ev.text,)

    ack_initial = True  # the compat session speaks its own protocol: no "subscribed" reply

    def on_open(self) -> None:
        filters, last_event_id = self._initial
        if filters is not None:
            self._subscribe(filters, last_event_id, ack=self.ack_initial)

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ping":
            self._reply({"type": "pong"})
        elif kind == "subscribe":
            try:
                filters = _filters_from_message(message)
            except ValueError as exc:
                self._reply({"type": "error", "message": str(exc)})
                return
            last = message.get("last_event_id")
            self._subscribe(filters, last if isinstance(last, str) else None, ack=True)
        elif kind == "unsubscribe":
            self._unsubscribe()
            self._reply({"type": "unsubscribed", "last_event_id": self.hub.last_id})
        else:
            self._reply(
                {"type": "error", "message": f"unknown message type {kind!r}; use subscribe, unsubscribe, ping"}
            )

    def handle_text(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self._reply({"type": "error", "message": "messages must be JSON objects"})
            return
        if not isinstance(message, dict):
            self._reply({"type": "error", "message": "messages must be JSON objects"})
            return
        self.handle(message)

    # -- plumbing
    def _reply(self, obj: dict[str, Any]) -> None:
        self._outbox.append(dumps(obj).decode("ascii"))
        self._kick.set()

    def _subscribe(self, filters: Filters, last_event_id: str | None, *, ack: bool) -> None:
        self._unsubscribe()
        self._sub = self.hub.open(
            filters,
            last_event_id,
            until_run_end=self.until_run_end,
            replay_run=self.replay_run and not last_event_id,
            wake=self._kick,
        )
        if ack:
            # last_event_id: where the subscription starts (events after it follow), so a resume is always possible
            reply = {"type": "subscribed", "filters": filters.to_dict(), "last_event_id": self._sub.start_id}
            self._outbox.appendleft(dumps(reply).decode("ascii"))
        self._kick.set()

    def _unsubscribe(self) -> None:
        if self._sub is not None:
            self.hub.release(self._sub)
            self._sub = None

    def _request_close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
        self._kick.set()

    async def _read(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    self._request_close(CLOSE_UNSUPPORTED, "send text messages")
                    return
                if len(text) > self.max_message_bytes:
                    self._request_close(CLOSE_TOO_BIG, f"messages are limited to {self.max_message_bytes} bytes")
                    return
                self.handle_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        self._gone = True
        self._kick.set()

    async def run(self) -> None:
        """Accept, then serve until either side closes."""
        await self.ws.accept()
        deadline = _Deadline(self.send_deadline_s)
        reader = asyncio.get_running_loop().create_task(self._read())
        self.on_open()
        try:
            while not self._gone:
                self._kick.clear()
                texts: list[str] = []
                while self._outbox:
                    texts.append(self._outbox.popleft())
                sub = self._sub
                if sub is not None:
                    for ev in sub.drain():
                        texts.extend(self.translate(ev))
                for text in texts:
                    await deadline.send(self.ws.send, {"type": "websocket.send", "text": text})
                if sub is not None and sub.finished:
                    reason = sub.closed
                    self._unsubscribe()
                    if reason == "overflow":
                        self._request_close(CLOSE_TRY_AGAIN, "too slow: reconnect with last_event_id")
                    elif reason == "shutdown":
                        self._request_close(CLOSE_GOING_AWAY, "server shutting down")
                    elif reason == "run_ended":
                        self._request_close(CLOSE_NORMAL, "run ended")
                if self._close is not None:
                    code, why = self._close
                    await deadline.send(self.ws.send, {"type": "websocket.close", "code": code, "reason": why})
                    break
                if self._gone or self._kick.is_set():
                    continue
                await self._kick.wait()
        except asyncio.CancelledError:
            if not deadline.absorb():
                raise
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            self._unsubscribe()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


# --------------------------------------------------------------------------------------------------
# Compat: /ws/live-flow/{job_id}
# --------------------------------------------------------------------------------------------------

_AGENT_KINDS: Final = (A.KIND_AGENT, A.KIND_NODE, A.KIND_TOOL)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class LiveFlowSession(WsSession):
    """``/ws/live-flow/{job_id}``: the message set of a well-known live-flow monitor, for one run."""

    ack_initial = False

    def __init__(self, websocket: WebSocket, hub: Hub, job_id: str, **kwargs: Any) -> None:
        super().__init__(websocket, hub, Filters.parse(run=job_id), replay_run=True, **kwargs)
        self.job_id = job_id

    def on_open(self) -> None:
        self._reply({"type": "connected", "job_id": self.job_id, "timestamp": _now()})
        super().on_open()

    def handle_text(self, text: str) -> None:
        if text.strip().lower() == "ping":
            self._reply({"type": "pong", "timestamp": _now()})
            return
        super().handle_text(text)

    def handle(self, message: dict[str, Any]) -> None:
        if message.get("type") == "ping":
            self._reply({"type": "pong", "timestamp": _now()})
        # everything else is ignored, as the original monitor does

    def translate(self, ev: Event) -> Iterable[str]:
        if ev.type not in ("span.started", "span.ended", "span.abandoned", "span.event"):
            return ()
        payload = ev.payload()
        base = {"job_id": self.job_id}
        out: list[dict[str, Any]] = []
        if ev.type == "span.event":
            event = payload["event"]
            attrs = event.get("attributes", {})
            if event["name"] == A.EVENT_PROGRESS:
                out.append(
                    {
                        "type": "progress_update",
                        "progress": attrs.get(A.PROGRESS_PERCENT),
                        "message": attrs.get(A.PROGRESS_MESSAGE, ""),
                        "agent": payload.get("span_name"),
                    }
                )
            elif event["name"] == A.EVENT_DATA_FLOW:
                out.append(
                    {
                        "type": "data_flow",
                        "from_agent": attrs.get(A.DATA_FLOW_FROM),
                        "to_agent": attrs.get(A.DATA_FLOW_TO),
                        "data_size": attrs.get(A.DATA_FLOW_BYTES),
                    }
                )
        elif ev.kind in _AGENT_KINDS:
            span = payload["span"]
            agent = _agent_name(span)
            common = {"agent": agent, "agent_id": span["span_id"], "kind": span["kind"]}
            if ev.type == "span.started":
                out.append({"type": "agent_started", **common})
            elif span["status"] == STATUS_ERROR or ev.type == "span.abandoned":
                error = (span.get("error") or {}).get("message") or span["status"]
                out.append({"type": "agent_failed", **common, "error": error})
            else:
                duration = span.get("duration_ms")
                out.append(
                    {
                        "type": "agent_completed",
                        **common,
                        "output": span["attributes"].get(A.OUTPUT_VALUE),
                        "duration": duration / 1000 if isinstance(duration, (int, float)) else None,
                    }
                )
        stamp = _now()
        return [dumps({**m, **base, "timestamp": stamp}).decode("ascii") for m in out]


def _agent_name(span: dict[str, Any]) -> str:
    attrs = span.get("attributes", {})
    for key in (A.GEN_AI_AGENT_NAME, A.GEN_AI_TOOL_NAME, A.NODE_ID):
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return str(span.get("name", ""))
