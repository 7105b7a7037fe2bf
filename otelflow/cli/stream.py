"""The viewer's event stream over ``http.client``: Server-Sent Events parsed, and the backoff between reconnections."""

from __future__ import annotations

import contextlib
import http.client
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from otelflow.cli.client import ViewerRequestError, ViewerUnreachable, connect, headers, problem

__all__ = ["Backoff", "SseEvent", "SseStream"]

BACKOFF_FIRST_S: Final = 0.25
BACKOFF_MAX_S: Final = 5.0
READ_TIMEOUT_S: Final = 45.0  # the viewer sends a heartbeat comment at least every 15 s


@dataclass(slots=True)
class SseEvent:
    """One SSE event: ``raw`` is the ``data`` text as sent, ``data`` its JSON."""

    id: str | None
    type: str
    raw: str
    data: dict[str, Any]


class SseStream:
    """A ``GET`` of an event stream; iterate :meth:`events` until the viewer closes it."""

    def __init__(self, viewer: str, path: str, token: str | None, last_event_id: str | None) -> None:
        self.conn, prefix = connect(viewer, READ_TIMEOUT_S)
        extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id:
            extra["Last-Event-ID"] = last_event_id
        try:
            self.conn.request("GET", prefix + path, headers=headers(token, extra))
            self.response = self.conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise ViewerUnreachable(f"cannot reach the viewer at {viewer}: {exc or type(exc).__name__}") from None
        if self.response.status != 200:
            status = self.response.status
            self.conn.close()
            raise ViewerRequestError(problem(viewer, status, b""), status)
        self.retry_ms: int | None = None

    def events(self) -> Iterator[SseEvent]:
        event_id: str | None = None
        event_type = "message"
        data: list[str] = []
        while True:
            raw = self.response.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data:
                    text = "\n".join(data)
                    with contextlib.suppress(ValueError):
                        decoded = json.loads(text)
                        if isinstance(decoded, dict):
                            yield SseEvent(event_id, event_type, text, decoded)
                elif event_id:
                    # an id without data (a stream's first frame): where to resume from, nothing to show
                    yield SseEvent(event_id, "", "", {})
                event_id, event_type, data = None, "message", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event_type = value
            elif name == "id":
                event_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class Backoff:
    """Exponential backoff with jitter: ``first``·2ⁿ capped at ``cap``, each delay scaled by 0.5–1.0."""

    def __init__(self, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        jittered: float = delay * random.uniform(0.5, 1.0)
        return jittered

    def reset(self) -> None:
        self.attempt = 0
