"""The intake: ``POST /v1/traces`` from the body to the live side, acknowledged once the request is safe.

Contracts:

- A request is decoded (:mod:`viewer.otlp`), appended to the history's intake log, and published to the hub a
  slice at a time; the loop is free in between as soon as :data:`YIELD_AFTER_S` passed since it last was, so
  that a request of any size holds it for about that long at a time. The 2xx then means the spans reach the
  history even if the viewer is killed right after: :meth:`Intake.replay` ingests, before serving, what the
  log holds beyond it.
- Requests are taken one at a time, so that the log and the history agree on their order: the log's position
  commits with the rows of the request's last slice.
- 503 with ``Retry-After: 2`` when the log cannot be written or the history's backlog is full; nothing of
  such a request was kept, so the sender's retry loses nothing. Heartbeats (no spans) are not logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from starlette.requests import Request
from starlette.responses import Response

from .history import JournalError, SqliteHistory
from .live import INGEST_SLICE, Hub
from .otlp import JSON, KIND_JSON, PROTOBUF, BodyError, Decoded, Unavailable, decode_body, handle_traces

if TYPE_CHECKING:
    pass

__all__ = ["Intake"]

log = logging.getLogger("otelflow.viewer")

YIELD_AFTER_S: Final = 0.005  # the longest the intake holds the event loop at a time (about: a slice may end later)


class Intake:
    """The OTLP receiver's path into the hub and the history (see the module docstring)."""

    def __init__(self, hub: Hub, history: SqliteHistory, *, max_body_bytes: int, max_value_length: int | None) -> None:
        self.hub = hub
        self.history = history
        self.max_body_bytes = max_body_bytes
        self.max_value_length = max_value_length
        self._one_at_a_time = asyncio.Lock()

    async def handle(self, request: Request) -> Response:
        """Serve ``POST /v1/traces``."""
        return await handle_traces(
            request, self._ingest, self.max_body_bytes, limit=self.max_value_length, admit=self._admit
        )

    def _admit(self) -> None:
        if self.history.full:
            raise Unavailable(f"the viewer's history is behind ({self.history.health()[1]}); retry later", 2)

    async def _ingest(self, decoded: Decoded) -> None:
        self.hub.touch(decoded.workers)
        if not decoded.span_count:
            return  # a heartbeat: nothing to keep
        async with self._one_at_a_time:
            try:
                end = self.history.append(decoded.kind, decoded.body)
            except JournalError as exc:
                raise Unavailable(f"{exc}; retry later", 2) from None
            decoded.body = b""
            batches = decoded.batches(INGEST_SLICE)
            batch = next(batches, None)
            if batch is None:
                self.history.mark_journal(end)  # every span was rejected: only the position moves
            since = time.perf_counter()
            while batch is not None:
                following = next(batches, None)
                # the last slice's rows carry the log position: it commits with them
                with self.history.batch(journal_end=end if following is None else 0):
                    self.hub.ingest(batch)
                batch = following
                if batch is not None and time.perf_counter() - since >= YIELD_AFTER_S:
                    await asyncio.sleep(0)  # let streams write, and other requests read their bodies
                    since = time.perf_counter()

    def replay(self) -> int:
        """Ingest what the intake log holds beyond the history (the viewer stopped before committing it);
        returns how many requests. Call before serving."""
        count = 0
        for end, kind, body in self.history.unconsumed():
            try:
                decoded = decode_body(body, JSON if kind == KIND_JSON else PROTOBUF, self.max_value_length)
            except BodyError:
                log.warning("the intake log holds a request that cannot be read any more; skipped")
            else:
                self.hub.touch(decoded.workers)
                for batch in decoded.batches(INGEST_SLICE):
                    self.hub.ingest(batch)
                count += 1
            self.history.mark_journal(end)
        if count:
            log.warning("ingested %d requests from the intake log that had not reached the history", count)
        return count
