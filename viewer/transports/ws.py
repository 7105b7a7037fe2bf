"""The WebSocket transport, ``/ws``: the same JSON objects as the SSE ``data:`` lines, one per message.

Client messages (JSON): ``{"type":"subscribe","run":..,"kind":..,"event_type":..,"name":..,"status":..,
"last_event_id":..}`` (or the filters in a ``"filters"`` object, where ``type`` is the event type),
``{"type":"unsubscribe"}``, ``{"type":"ping"}`` → ``{"type":"pong"}``. Control replies: ``subscribed`` (with
``last_event_id``, where the subscription starts; also for the subscription from the query string at connect),
``unsubscribed``, ``pong``, ``error``. Close codes: see :mod:`otelflow.wire` (``CLOSE_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Iterable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from otelflow.wire import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    dumps,
)

from ..live import Event, Filters, Hub, Subscription
from .deadline import Deadline

__all__ = ["WsSession"]


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
            self._reply({"type": "unsubscribed", "last_event_id": self.hub.broadcast.last_id})
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
            until_run_end=self.until_run_end or filters.run is not None,  # a run's stream ends with it (1000)
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
        deadline = Deadline(self.send_deadline_s)
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
