"""The intake: ``POST /v1/traces`` and ``POST /v1/logs`` from the body to the live side, acknowledged once the
request is safe.

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
- Log requests take the same path (their own kinds in the log); their records become events of the spans they
  name (:meth:`viewer.live.Hub.ingest_logs`). Records that name no span are counted, never logged. Records
  held for a span not known yet are in memory only: the log's position moves past them.
- Behind a broker (``broker``: viewer replicas sharing a Redis stream) the broker is the log: a request's body
  (heartbeats too) is added to the stream, and the 2xx means it is there; every replica, this one included,
  then decodes it with :meth:`Intake.entry_batches` as it reads the stream. 503 when the broker cannot be
  reached; the history's backlog does not refuse requests (the stream holds them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from .history import History, JournalError
from .live import INGEST_SLICE, Batch, Hub
from .live.backends.codec import KIND_BATCH, decode_batch
from .live.backends.redis import BrokerError, RedisBackend
from .otlp import (
    JSON,
    KIND_JSON,
    KIND_LOGS_JSON,
    KIND_LOGS_PROTOBUF,
    PROTOBUF,
    BodyError,
    Decoded,
    DecodedLogs,
    Unavailable,
    decode_body,
    decode_logs_body,
    handle_logs,
    handle_traces,
)

__all__ = ["Intake"]

_Item = TypeVar("_Item")  # a span record or a log event: what one signal's batches hold

log = logging.getLogger("otelflow.viewer")

YIELD_AFTER_S: Final = 0.005  # the longest the intake holds the event loop at a time (about: a slice may end later)


class Intake:
    """The OTLP receiver's path into the hub and the history (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        history: History,
        *,
        max_body_bytes: int,
        max_value_length: int | None,
        broker: RedisBackend | None = None,
    ) -> None:
        self.hub = hub
        self.history = history
        self.max_body_bytes = max_body_bytes
        self.max_value_length = max_value_length
        self.broker = broker
        self._one_at_a_time = asyncio.Lock()
        if broker is not None:
            broker.decode = self.entry_batches

    async def handle(self, request: Request) -> Response:
        """Serve ``POST /v1/traces``."""
        return await handle_traces(
            request, self._ingest, self.max_body_bytes, limit=self.max_value_length, admit=self._admit
        )

    async def handle_logs(self, request: Request) -> Response:
        """Serve ``POST /v1/logs``."""
        return await handle_logs(
            request, self._ingest_logs, self.max_body_bytes, limit=self.max_value_length, admit=self._admit
        )

    def _admit(self) -> None:
        if self.history.full and self.broker is None:
            raise Unavailable(f"the viewer's history is behind ({self.history.health()[1]}); retry later", 2)

    async def _ingest(self, decoded: Decoded) -> None:
        if self.broker is not None:
            await self._to_broker(decoded.kind, decoded)
            return
        self.hub.touch(decoded.workers)
        if not decoded.span_count:
            return  # a heartbeat: nothing to keep
        await self._keep(decoded.kind, decoded, decoded.batches(INGEST_SLICE), self.hub.ingest)

    async def _ingest_logs(self, decoded: DecodedLogs) -> None:
        self.hub.count_logs(without_span=decoded.without_span, rejected=len(decoded.rejected))
        if not decoded.events:
            return  # nothing joins a span: nothing to keep
        if self.broker is not None:
            await self._to_broker(decoded.kind, decoded)
            return
        await self._keep(decoded.kind, decoded, decoded.batches(INGEST_SLICE), self.hub.ingest_logs)

    async def _keep(
        self,
        kind: int,
        decoded: Decoded | DecodedLogs,
        batches: Iterator[list[_Item]],
        publish: Callable[[Sequence[_Item]], None],
    ) -> None:
        """Log the request's body, then publish its batches a slice at a time; the last one's rows carry the
        log position."""
        async with self._one_at_a_time:
            try:
                end = self.history.append(kind, decoded.body)
            except JournalError as exc:
                raise Unavailable(f"{exc}; retry later", 2) from None
            decoded.body = b""
            batch = next(batches, None)
            if batch is None:
                self.history.mark_journal(end)  # every item was rejected: only the position moves
            since = time.perf_counter()
            while batch is not None:
                following = next(batches, None)
                # the last slice's rows carry the log position: it commits with them
                with self.history.batch(journal_end=end if following is None else 0):
                    publish(batch)
                batch = following
                if batch is not None and time.perf_counter() - since >= YIELD_AFTER_S:
                    await asyncio.sleep(0)  # let streams write, and other requests read their bodies
                    since = time.perf_counter()

    async def _to_broker(self, kind: int, decoded: Decoded | DecodedLogs) -> None:
        assert self.broker is not None
        body, decoded.body = decoded.body, b""
        try:
            await self.broker.append(kind, body, time.time_ns())
        except BrokerError as exc:
            raise Unavailable(f"{exc}; retry later", 2) from None

    def entry_batches(self, kind: int, body: bytes, at_ns: int) -> list[Batch]:
        """The batches of a request's body (or of an encoded batch) that arrived at ``at_ns``: its workers first,
        then its spans or log events a slice at a time. Raises :class:`viewer.otlp.BodyError` when it cannot be
        read."""
        if kind == KIND_BATCH:
            return [decode_batch(body, self.max_value_length)]
        content_type = JSON if kind in (KIND_JSON, KIND_LOGS_JSON) else PROTOBUF
        if kind in (KIND_LOGS_JSON, KIND_LOGS_PROTOBUF):
            logs = decode_logs_body(body, content_type, self.max_value_length)
            return [Batch(at_ns=at_ns, logs=events) for events in logs.batches(INGEST_SLICE)]
        decoded = decode_body(body, content_type, self.max_value_length)
        out = [Batch((), tuple(decoded.workers), at_ns)] if decoded.workers else []
        out += [Batch(records, (), at_ns) for records in decoded.batches(INGEST_SLICE)]
        return out

    def replay(self) -> int:
        """Ingest what the intake log holds beyond the history (the viewer stopped before committing it);
        returns how many requests. Call before serving."""
        count = 0
        for end, kind, body in self.history.unconsumed():
            try:
                for batch in self.entry_batches(kind, body, self.hub.now_ns()):
                    self.hub.publish(batch)
            except BodyError:
                log.warning("the intake log holds a request that cannot be read any more; skipped")
            else:
                count += 1
            self.history.mark_journal(end)
        if count:
            log.warning("ingested %d requests from the intake log that had not reached the history", count)
        return count
