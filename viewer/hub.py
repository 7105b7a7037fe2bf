"""Live state and fan-out: merges span snapshots into runs, numbers events, and hands them to subscribers.

Contracts:

- A run is a trace (``run_id`` = 32-hex trace id); it is also found by its ``otelflow.run.id``. A run is
  ``running`` until its root span (the span with no parent) ends, then ``ok`` or ``error``; it is
  ``abandoned`` when every running span it had belonged to workers that stopped sending heartbeats, or when
  nothing was heard of it for ``idle_run_s`` while no live worker holds a running span of it (a trace whose
  root never arrives, from senders without heartbeats).
- Spans are merged by (trace id, span id): a later snapshot replaces an earlier one; an ended span never goes
  back to running. A span arriving already ended gets ``span.ended`` only (no ``span.started``).
- Event ids are ``<epoch>.<seq>``: epoch is random per hub, seq starts at 1 and has no gaps. Every event is
  encoded once (JSON and SSE frame) and the same bytes go to every subscriber.
- The last ``ring_size`` events (at most ``ring_bytes`` of them) are kept for resume: :meth:`Hub.subscribe`
  with a ``last_event_id`` inside the ring replays every later event exactly once, else the subscription
  starts with a ``reset`` event. Ended runs stay in memory while there are at most ``max_ended_runs`` of them
  and the live state holds at most ``max_live_bytes``; older ones are served from the store.
- Each subscriber has one bounded queue; one that overflows is cut (``closed == "overflow"``) and must resume
  by id. Publishing never waits for a subscriber.
- All methods except :meth:`Hub.ingest_threadsafe` must be called on the hub's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from otelflow import attributes as A
from otelflow.records import (
    STATUS_ABANDONED,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_RUNNING,
    EventRecord,
    SpanRecord,
    format_time,
)
from otelflow.wire import (
    EVENT_TYPES,
    RESET,
    RUN_ENDED,
    RUN_STARTED,
    RUN_UPDATED,
    SHUTDOWN,
    SPAN_ABANDONED,
    SPAN_ENDED,
    SPAN_EVENT,
    SPAN_STARTED,
    SPAN_UPDATED,
    dumps,
    encode_exact,
    encode_span,
    finite,
    quote,
)

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "EVENT_TYPES",
    "Event",
    "Filters",
    "Hub",
    "RunState",
    "Subscription",
    "dumps",
    "encode_exact",
    "encode_span",
    "finite",
]

log = logging.getLogger("otelflow.viewer")


_ENDED: Final = (STATUS_OK, STATUS_ERROR)
INGEST_SLICE: Final = 512  # records published between two yields to the event loop


@dataclass(slots=True, eq=False)
class Event:
    """One numbered event, encoded once. ``frame`` is the SSE frame, ``data`` the JSON object (WebSocket)."""

    seq: int
    id: str
    type: str
    run_id: str | None
    alias: str | None
    kind: str | None
    name: str | None
    status: str | None
    data: bytes
    frame: bytes

    @property
    def text(self) -> str:
        return self.data.decode("ascii")

    def payload(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.data)
        return decoded


def _make_event(
    seq: int,
    event_id: str,
    type_: str,
    run: RunState | None,
    body: dict[str, Any] | None,
    raw: bytes | None = None,
    raw_key: str = "span",
    **meta: str | None,
) -> Event:
    """``raw`` (already encoded by :func:`dumps`) stands for a body of just ``{raw_key: ...}``: same bytes."""
    if raw is not None:
        run_id = quote(run.trace_id) if run else "null"
        head = f'{{"id":{quote(event_id)},"type":{quote(type_)},"run_id":{run_id},"{raw_key}":'
        data = b"".join((head.encode("ascii"), raw, b"}"))
    else:
        envelope: dict[str, Any] = {"id": event_id, "type": type_, "run_id": run.trace_id if run else None}
        if body:
            envelope.update(body)
        data = dumps(envelope)
    frame = b"".join((b"id: ", event_id.encode(), b"\nevent: ", type_.encode(), b"\ndata: ", data, b"\n\n"))
    return Event(
        seq=seq,
        id=event_id,
        type=type_,
        run_id=run.trace_id if run else None,
        alias=run.alias if run else None,
        kind=meta.get("kind"),
        name=meta.get("name"),
        status=meta.get("status"),
        data=data,
        frame=frame,
    )


def _split(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    out = frozenset(p.strip() for item in items for p in item.split(",") if p.strip())
    return out or None


@dataclass(frozen=True, slots=True)
class Filters:
    """Which events a subscriber wants; each field is a set of accepted values (comma lists), ``None`` = all.

    ``run`` matches the trace id or ``otelflow.run.id``; ``type`` matches an event type exactly, or a prefix
    without a dot (``span`` = every ``span.*``); ``kind`` and ``name`` apply to span events (run events pass);
    ``status`` is the span's or the run's status. ``reset`` and ``shutdown`` always pass.
    """

    run: frozenset[str] | None = None
    kind: frozenset[str] | None = None
    type: frozenset[str] | None = None
    name: frozenset[str] | None = None
    status: frozenset[str] | None = None

    @classmethod
    def parse(
        cls,
        run: str | Iterable[str] | None = None,
        kind: str | Iterable[str] | None = None,
        type: str | Iterable[str] | None = None,
        name: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
    ) -> Filters:
        return cls(_split(run), _split(kind), _split(type), _split(name), _split(status))

    @property
    def empty(self) -> bool:
        return not (self.run or self.kind or self.type or self.name or self.status)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            key: sorted(value)
            for key, value in (
                ("run", self.run),
                ("kind", self.kind),
                ("type", self.type),
                ("name", self.name),
                ("status", self.status),
            )
            if value
        }

    def matches(self, ev: Event) -> bool:
        if ev.type in (RESET, SHUTDOWN):
            return True
        if self.run is not None and ev.run_id not in self.run and ev.alias not in self.run:
            return False
        if self.type is not None and ev.type not in self.type and ev.type.split(".", 1)[0] not in self.type:
            return False
        is_span = ev.type.startswith("span.")
        if self.kind is not None and is_span and ev.kind not in self.kind:
            return False
        if self.name is not None and is_span and ev.name not in self.name:
            return False
        return self.status is None or ev.status in self.status


class Subscription:
    """One subscriber's bounded queue of events. Read with :meth:`drain` after :meth:`wait`.

    ``closed`` is ``None`` while open, else why it closed: ``overflow`` (the client must resume by id),
    ``shutdown``, ``run_ended``, ``released``. Events queued before a ``shutdown``/``run_ended`` close are
    still delivered; an ``overflow`` close drops them.
    """

    __slots__ = (
        "_hub",
        "_on_cut",
        "_queue",
        "_waiter",
        "_wake",
        "closed",
        "filters",
        "limit",
        "start_id",
        "until_run_end",
    )

    def __init__(
        self,
        hub: Hub,
        filters: Filters,
        limit: int,
        *,
        until_run_end: bool = False,
        wake: asyncio.Event | None = None,
    ) -> None:
        # Thousands of idle subscribers are normal: keep each small (a list, and a future only while waiting).
        self._hub = hub
        self.filters = filters
        self.limit = limit
        self.until_run_end = until_run_end
        self._queue: list[Event] = []
        self._wake = wake  # a shared event to set (WebSocket sessions), else ``_waiter`` is resolved
        self._waiter: asyncio.Future[bool] | None = None
        self._on_cut: Callable[[], None] | None = None
        self.closed: str | None = None
        # Where this subscription starts: it receives the (matching) events after this id. A stream says it
        # first, so that a client cut before its first event can still resume.
        self.start_id: str = hub.last_id

    def on_cut(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (on the loop) when this subscriber is cut for falling behind."""
        self._on_cut = callback

    def _signal(self) -> None:
        if self._wake is not None:
            self._wake.set()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _offer(self, ev: Event) -> None:
        if self.closed is not None:
            return
        if self.filters.matches(ev):
            if len(self._queue) >= self.limit:
                self._queue.clear()
                self._close("overflow")
                if self._on_cut is not None:
                    self._on_cut()
                return
            self._queue.append(ev)
            self._signal()
        run = self.filters.run
        if self.until_run_end and ev.type == RUN_ENDED and run is not None and (ev.run_id in run or ev.alias in run):
            self._close("run_ended")

    def _replay(self, ev: Event) -> None:
        """Queue an event from the replay ring: filtered, without the queue limit."""
        if self.closed is None and self.filters.matches(ev):
            self._put(ev)
        run = self.filters.run
        if self.until_run_end and ev.type == RUN_ENDED and run is not None and (ev.run_id in run or ev.alias in run):
            self._close("run_ended")

    def _put(self, ev: Event) -> None:
        """Queue without filtering or limits (replay and per-client reset)."""
        self._queue.append(ev)
        self._signal()

    def _close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self._signal()

    def close(self, reason: str = "released") -> None:
        """Stop receiving; queued events stay readable."""
        self._close(reason)

    def abort(self, reason: str) -> None:
        """Stop receiving and drop what is queued (the client is gone)."""
        self._queue.clear()
        self._close(reason)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def drain(self) -> list[Event]:
        """Every queued event, oldest first; empties the queue."""
        events = self._queue
        if not events:
            return []
        self._queue = []
        return events

    @property
    def finished(self) -> bool:
        """Closed and nothing left to deliver."""
        return self.closed is not None and not self._queue

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until events are queued or the subscription closes; ``False`` if ``timeout`` passed first."""
        wake = self._wake
        if wake is not None:
            wake.clear()
        if self._queue or self.closed is not None:
            return True
        loop = asyncio.get_running_loop()
        handle = None
        if wake is not None:
            if timeout is not None:
                handle = loop.call_later(timeout, wake.set)
            try:
                await wake.wait()
            finally:
                if handle is not None:
                    handle.cancel()
        else:
            waiter: asyncio.Future[bool] = loop.create_future()
            self._waiter = waiter
            if timeout is not None:
                handle = loop.call_later(timeout, _time_up, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if handle is not None:
                    handle.cancel()
        return bool(self._queue) or self.closed is not None


def _time_up(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


@dataclass(slots=True)
class RunState:
    """A run (trace) as the hub knows it."""

    trace_id: str
    first_seq: int
    alias: str | None = None
    name: str = ""
    service: str = ""
    status: str = STATUS_RUNNING
    start_ns: int = 0
    end_ns: int | None = None
    root_span_id: str | None = None
    progress: dict[str, Any] | None = None
    progress_time_ns: int = -1
    progress_level: int = -1  # 2: the root span's, 1: a workflow span's, 0: any other span's
    spans: dict[str, SpanRecord] = field(default_factory=dict)
    error_count: int = 0
    agent_count: int = 0
    announced: bool = False
    sizes: dict[str, int] = field(default_factory=dict)  # span id -> bytes of its latest span object
    nbytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The ``run`` object of run events and of the REST API."""
        return {
            "run_id": self.trace_id,
            "trace_id": self.trace_id,
            "otelflow_run_id": self.alias,
            "name": self.name,
            "service": self.service,
            "status": self.status,
            "start_time": format_time(self.start_ns) if self.start_ns else None,
            "end_time": format_time(self.end_ns) if self.end_ns is not None else None,
            "start_time_ns": self.start_ns,
            "end_time_ns": self.end_ns,
            "duration_ms": (self.end_ns - self.start_ns) / 1e6 if self.end_ns is not None else None,
            "progress": self.progress,
            "span_count": len(self.spans),
            "agent_count": self.agent_count,
            "error_count": self.error_count,
        }


def _progress_of(event: EventRecord, span: SpanRecord) -> dict[str, Any]:
    a = event.attributes
    return {
        "percent": a.get(A.PROGRESS_PERCENT),
        "message": a.get(A.PROGRESS_MESSAGE),
        "completed": a.get(A.PROGRESS_COMPLETED),
        "total": a.get(A.PROGRESS_TOTAL),
        "span_id": span.span_id,
        "time": format_time(event.time_ns),
    }


class Hub:
    """The viewer's live state and its publish/subscribe fan-out (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store | None = None,
        ring_size: int = 10_000,
        ring_bytes: int = 64 * 1024 * 1024,
        queue_limit: int = 16_384,
        abandon_after_s: float = A.ABANDON_AFTER_S,
        idle_run_s: float = 300.0,
        check_interval_s: float = 1.0,
        max_ended_runs: int = 500,
        max_live_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.epoch = secrets.token_hex(4)
        self.store = store
        self.ring_size = ring_size
        self.ring_bytes = ring_bytes
        self.queue_limit = queue_limit
        self.abandon_after_s = abandon_after_s
        self.idle_run_s = idle_run_s
        self.check_interval_s = check_interval_s
        self.max_ended_runs = max_ended_runs
        self.max_live_bytes = max_live_bytes
        self._clock = clock
        self._seq = 0
        self._ring: deque[Event] = deque()
        self._ring_nbytes = 0
        self._live_nbytes = 0
        self._activity: OrderedDict[str, float] = OrderedDict()  # running runs, least recently heard from first
        self._subs: set[Subscription] = set()
        self._runs: dict[str, RunState] = {}
        self._aliases: dict[str, str] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._workers: dict[str, float] = {}
        self._local_workers: set[str] = set()
        self._running_by_worker: dict[str, set[tuple[str, str]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: list[list[SpanRecord]] = []
        self._early_lock = threading.Lock()
        self._inbox: deque[list[SpanRecord]] = deque()  # batches from other threads, for the loop to ingest
        self._inbox_scheduled = False
        self._task: asyncio.Task[None] | None = None
        self.shutting_down = False
        self.stats: dict[str, int] = {"spans": 0, "events": 0, "cut": 0, "errors": 0, "dropped_early": 0, "checks": 0}
        self._last_error_log = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind to the running loop, restore live runs from the store, start the heartbeat checker."""
        self._loop = asyncio.get_running_loop()
        if self.store is not None:
            runs, spans = await self.store.load_live()
            self._restore(runs, spans)
        with self._early_lock:
            early, self._early = self._early, []
        for batch in early:
            self.ingest(batch, local=True)
        self._task = asyncio.create_task(self._check_loop(), name="otelflow-hub-heartbeats")

    async def stop(self) -> None:
        """Stop the heartbeat checker (call :meth:`shutdown` first to close subscribers)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def shutdown(self) -> None:
        """Publish ``shutdown`` and close every subscription once its queue is delivered. Idempotent."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self._publish(SHUTDOWN, None, {})
        for sub in list(self._subs):
            sub.close("shutdown")

    # ------------------------------------------------------------------ ids and resume

    @property
    def last_id(self) -> str:
        """The id of the latest event (``<epoch>.0`` before the first)."""
        return f"{self.epoch}.{self._seq}"

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @property
    def ring_nbytes(self) -> int:
        """About how many bytes the replay ring holds (bounded by ``ring_bytes``)."""
        return self._ring_nbytes

    @property
    def live_nbytes(self) -> int:
        """About how many bytes the spans of the runs in memory take (ended runs leave past ``max_live_bytes``)."""
        return self._live_nbytes

    def _parse_id(self, event_id: str | None) -> int | None:
        """The seq of an id of this epoch, or ``None`` (another epoch or unreadable)."""
        if not event_id:
            return None
        epoch, _, seq = event_id.strip().partition(".")
        if epoch != self.epoch or not seq.isdigit():
            return None
        return int(seq)

    def reset_event(self, filters: Filters, reason: str) -> Event:
        """A per-client ``reset`` (not numbered: its id is the latest event's) pointing at a snapshot URL."""
        run = next(iter(filters.run)) if filters.run and len(filters.run) == 1 else None
        snapshot = f"/api/runs/{run}" if run else "/api/runs"
        body = {"reason": reason, "snapshot": snapshot, "last_event_id": self.last_id}
        return _make_event(self._seq, self.last_id, RESET, None, body)

    # ------------------------------------------------------------------ subscribe

    def open(
        self,
        filters: Filters | None = None,
        last_event_id: str | None = None,
        *,
        until_run_end: bool = False,
        replay_run: bool = False,
        limit: int | None = None,
        wake: asyncio.Event | None = None,
    ) -> Subscription:
        """Register a subscriber; pair with :meth:`release` (or use :meth:`subscribe`).

        With ``last_event_id`` the queue starts with every later event still in the ring (exactly once), or
        with a ``reset`` event when that is impossible. Without it, ``replay_run`` replays the named run from
        its first event when the ring still holds it (else ``reset``); otherwise only new events follow.
        """
        filters = filters or Filters()
        sub = Subscription(self, filters, limit or self.queue_limit, until_run_end=until_run_end, wake=wake)
        if self.shutting_down:
            sub._put(_make_event(self._seq, self.last_id, SHUTDOWN, None, {}))
            sub.close("shutdown")
            return sub
        ring_first = self._ring[0].seq if self._ring else self._seq + 1
        start: int | None = None  # replay events with seq > start
        if last_event_id:
            seq = self._parse_id(last_event_id)
            if seq is None or seq > self._seq:
                sub._put(self.reset_event(filters, "unknown event id"))
            elif seq < ring_first - 1:
                sub._put(self.reset_event(filters, "event id no longer in the replay ring"))
            else:
                start = seq
        elif replay_run and filters.run:
            runs = [self._runs[t] for t in self._resolve_all(filters.run)]
            if runs:
                first = min(r.first_seq for r in runs)
                if first >= ring_first:
                    start = first - 1
                else:
                    sub._put(self.reset_event(filters, "run started before the replay ring"))
                    if all(r.status != STATUS_RUNNING for r in runs):
                        sub.close("run_ended")
        if start is not None:
            sub.start_id = f"{self.epoch}.{start}"
        if start is not None and start < self._seq:
            for ev in self._ring:
                if ev.seq > start:
                    sub._replay(ev)
            # the replay is the ring's to bound; the queue limit is about keeping pace from here on
            sub.limit += len(sub._queue)
        if sub.closed is None:
            self._subs.add(sub)
        return sub

    def release(self, sub: Subscription) -> None:
        """Unregister a subscriber. Idempotent."""
        self._subs.discard(sub)
        if sub.closed is None:
            sub.close("released")

    @contextlib.asynccontextmanager
    async def subscribe(
        self,
        filters: Filters | None = None,
        last_event_id: str | None = None,
        *,
        until_run_end: bool = False,
        replay_run: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[Subscription]:
        """``async with hub.subscribe(filters, last_event_id) as sub``: see :meth:`open`."""
        sub = self.open(filters, last_event_id, until_run_end=until_run_end, replay_run=replay_run, limit=limit)
        try:
            yield sub
        finally:
            self.release(sub)

    # ------------------------------------------------------------------ runs

    def _resolve_all(self, keys: Iterable[str]) -> list[str]:
        out = []
        for key in keys:
            trace = key if key in self._runs else self._aliases.get(key)
            if trace is not None and trace in self._runs:
                out.append(trace)
        return out

    def resolve(self, key: str) -> str | None:
        """The trace id of a run the hub holds, named by trace id or ``otelflow.run.id``."""
        found = self._resolve_all([key])
        return found[0] if found else None

    def run(self, key: str) -> RunState | None:
        trace = self.resolve(key)
        return self._runs[trace] if trace else None

    def runs(self) -> list[RunState]:
        return list(self._runs.values())

    # ------------------------------------------------------------------ ingestion

    def touch(self, workers: Iterable[str]) -> None:
        """Record a sign of life (request or heartbeat) from these worker ids."""
        now = self._clock()
        for worker in workers:
            self._workers[worker] = now

    def ingest_threadsafe(self, records: Sequence[SpanRecord]) -> None:
        """Ingest from any thread (the in-process sink's callback). Never blocks, never raises.

        Records ingested this way come from the viewer's own process, so their worker never goes silent.
        Before :meth:`start` they are buffered (at most 10,000 batches).
        """
        try:
            batch = list(records)
            loop = self._loop
            if loop is None:
                with self._early_lock:
                    if len(self._early) < 10_000:
                        self._early.append(batch)
                    else:
                        self.stats["dropped_early"] += len(batch)
                return
            # Coalesce wake-ups: the in-process sink may call this once per span, and each
            # call_soon_threadsafe writes to the loop's self-pipe. One scheduled drain takes every batch
            # that arrived in the meantime.
            self._inbox.append(batch)
            if not self._inbox_scheduled:
                self._inbox_scheduled = True
                loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:  # loop closed: the viewer is gone, the workflow must not notice
            self.stats["dropped_early"] += len(records)
        except Exception:  # noqa: BLE001 - never raise into the instrumented program
            self._log_error("ingest_threadsafe failed")

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False  # first: a batch appended from now on schedules another drain
        inbox = self._inbox
        records: list[SpanRecord] = []
        while inbox and len(records) < INGEST_SLICE:
            batch = inbox[0]
            room = INGEST_SLICE - len(records)
            if len(batch) <= room:
                records += inbox.popleft()
            else:
                records += batch[:room]
                inbox[0] = batch[room:]
        if inbox and not self._inbox_scheduled and self._loop is not None:
            # a burst: ingest it a slice at a time, letting the streams write in between
            self._inbox_scheduled = True
            self._loop.call_soon(self._drain_inbox)
        if records:
            self.ingest(records, local=True)

    def ingest(self, records: Iterable[SpanRecord], workers: Iterable[str] = (), *, local: bool = False) -> None:
        """Merge snapshots into the live state, publish the resulting events, queue them for the store.

        Publishing is synchronous: give it at most :data:`INGEST_SLICE` records at a time and yield to the loop
        in between, so that streams write while a large request is ingested. ``local`` records come from this
        process: their rows are dropped (and counted) rather than queued when the store's backlog is full.
        """
        self.touch(workers)
        with self.store.batch(droppable=local) if self.store is not None else contextlib.nullcontext():
            self._ingest_all(records, local)

    def _ingest_all(self, records: Iterable[SpanRecord], local: bool) -> None:
        for record in records:
            try:
                self._ingest_one(record, local)
            except Exception:  # noqa: BLE001 - one bad record must not stop the others
                self.stats["errors"] += 1
                self._log_error("could not ingest span %s/%s", record.trace_id, record.span_id)

    def _log_error(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10.0:
            self._last_error_log = now
            log.exception(message, *args)

    def _ingest_one(self, rec: SpanRecord, local: bool) -> None:
        self.stats["spans"] += 1
        run = self._runs.get(rec.trace_id)
        new_run = run is None
        if run is None:
            run = RunState(trace_id=rec.trace_id, first_seq=self._seq + 1, start_ns=rec.start_time_ns)
            self._runs[rec.trace_id] = run
        prev = run.spans.get(rec.span_id)
        if prev is not None and prev.status in _ENDED:
            return  # ended spans are final: duplicates and late running snapshots change nothing
        activity = self._activity
        activity[rec.trace_id] = self._clock()
        activity.move_to_end(rec.trace_id)
        worker = rec.resource.get(A.WORKER_ID)
        worker = worker if isinstance(worker, str) else None
        if worker is not None:
            if local:
                self._local_workers.add(worker)
            self._workers.setdefault(worker, self._clock())
        run.spans[rec.span_id] = rec
        if rec.status == STATUS_ERROR and (prev is None or prev.status != STATUS_ERROR):
            run.error_count += 1
        if prev is None and rec.kind == A.KIND_AGENT:
            run.agent_count += 1
        if worker is not None:
            running = self._running_by_worker.setdefault(worker, set())
            if rec.ended:
                running.discard((rec.trace_id, rec.span_id))
            else:
                running.add((rec.trace_id, rec.span_id))

        run_changed = self._update_run(run, rec, prev)
        if new_run or not run.announced:
            run.announced = True
            run_changed = False
            self._publish_run(RUN_STARTED, run)

        # The span object is encoded once: the event carries it, and the store keeps it only there.
        span_event: str | None = None  # id of the event whose span object is exactly this record's
        if prev is None and not rec.ended:
            span_event = self._publish_span(SPAN_STARTED, run, rec)
        elif (
            prev is not None
            and not rec.ended
            and (prev.attributes != rec.attributes or prev.name != rec.name or prev.status != rec.status)
        ):
            span_event = self._publish_span(SPAN_UPDATED, run, rec)
        events = rec.events
        seen = {(e.name, e.time_ns) for e in prev.events} if events and prev is not None else ()
        for event in events:
            if (event.name, event.time_ns) in seen:
                continue
            body = {
                "trace_id": rec.trace_id,
                "span_id": rec.span_id,
                "span_name": rec.name,
                "span_kind": rec.kind,
                "event": event.to_dict(),
            }
            self._publish(SPAN_EVENT, run, body, status=STATUS_RUNNING, kind=rec.kind, name=rec.name)
        if rec.ended:
            span_event = self._publish_span(SPAN_ENDED, run, rec)
        if self.store is not None:
            self.store.put_span(rec, span_event)
        # A root that ends after its run was declared abandoned (its worker was only cut off, e.g. while
        # a restarted viewer waited for it) settles the run with its real status.
        if rec.ended and rec.span_id == run.root_span_id and run.status in (STATUS_RUNNING, STATUS_ABANDONED):
            run.status = rec.status
            run.end_ns = rec.end_time_ns
            self._publish_run(RUN_ENDED, run)
            self._run_ended(run)
        elif run_changed and run.status == STATUS_RUNNING:
            self._publish_run(RUN_UPDATED, run)
        elif run_changed and self.store is not None:
            self.store.put_run(run.to_dict())

    def _publish_span(self, type_: str, run: RunState, rec: SpanRecord) -> str | None:
        """Publish a ``span.*`` event of ``rec``; its id when its span object is exact (see :func:`encode_span`)."""
        span_json, exact = encode_span(rec)
        ev = self._publish(type_, run, None, span_json, status=rec.status, kind=rec.kind, name=rec.name)
        self._sized(run, rec.span_id, len(span_json))
        return ev.id if exact else None

    def _sized(self, run: RunState, span_id: str, nbytes: int) -> None:
        """Account the live state's memory: ``span_id``'s latest snapshot takes about ``nbytes``."""
        delta = nbytes - run.sizes.get(span_id, 0)
        run.sizes[span_id] = nbytes
        run.nbytes += delta
        if run.trace_id in self._runs:
            self._live_nbytes += delta

    def _update_run(self, run: RunState, rec: SpanRecord, prev: SpanRecord | None) -> bool:
        """Fold one snapshot into its run's summary; ``True`` when status, name, alias or progress changed."""
        changed = False
        if rec.start_time_ns and (not run.start_ns or rec.start_time_ns < run.start_ns):
            run.start_ns = rec.start_time_ns
        alias = rec.run_id
        if alias and run.alias is None:
            run.alias = alias
            self._aliases[alias] = run.trace_id
            changed = True
        if rec.parent_span_id is None and run.root_span_id != rec.span_id:
            run.root_span_id = rec.span_id
            run.name = rec.name
            run.service = rec.service
            changed = True
        elif not run.name:
            run.name = rec.name
            run.service = rec.service
        if run.status == STATUS_ABANDONED and not rec.ended:
            run.status = STATUS_RUNNING  # its worker spoke again
            run.end_ns = None
            self._ended.pop(run.trace_id, None)
            changed = True
        # The run's progress is the newest progress event of the most run-like span that reports any:
        # the root span, else a workflow span, else any span (a node's own per-item progress does not
        # move the run's bar once the workflow reports progress of its own).
        level = 2 if rec.parent_span_id is None else 1 if rec.kind == A.KIND_WORKFLOW else 0
        if level >= run.progress_level:
            for event in rec.events:
                if event.name != A.EVENT_PROGRESS:
                    continue
                if level == run.progress_level and event.time_ns < run.progress_time_ns:
                    continue
                if prev is not None and event in prev.events and level == run.progress_level:
                    continue
                run.progress = _progress_of(event, rec)
                run.progress_time_ns = event.time_ns
                run.progress_level = level
                changed = True
        return changed

    def _publish_run(self, type_: str, run: RunState) -> None:
        summary = run.to_dict()
        raw, exact = encode_exact(summary)  # once, for the event and the store row
        self._publish(type_, run, None, raw, raw_key="run", status=run.status, name=run.name, kind=A.KIND_WORKFLOW)
        if self.store is not None:
            self.store.put_run(summary, raw.decode("ascii") if exact else None)

    def _run_ended(self, run: RunState) -> None:
        self._activity.pop(run.trace_id, None)
        self._ended[run.trace_id] = None
        self._ended.move_to_end(run.trace_id)
        self._evict()

    def _evict(self) -> None:
        """Forget the oldest ended runs beyond ``max_ended_runs``, or while the live state is over
        ``max_live_bytes`` (the store serves them from then on)."""
        while self._ended and (len(self._ended) > self.max_ended_runs or self._live_nbytes > self.max_live_bytes):
            trace, _ = self._ended.popitem(last=False)
            old = self._runs.pop(trace, None)
            if old is not None:
                self._live_nbytes -= old.nbytes
                if old.alias and self._aliases.get(old.alias) == trace:
                    del self._aliases[old.alias]

    def _publish(
        self,
        type_: str,
        run: RunState | None,
        body: dict[str, Any] | None,
        raw: bytes | None = None,
        raw_key: str = "span",
        **meta: str | None,
    ) -> Event:
        self._seq += 1
        ev = _make_event(self._seq, f"{self.epoch}.{self._seq}", type_, run, body, raw, raw_key, **meta)
        ring = self._ring
        ring.append(ev)
        self._ring_nbytes += len(ev.frame) + len(ev.data)
        while len(ring) > self.ring_size or (self._ring_nbytes > self.ring_bytes and len(ring) > 1):
            old = ring.popleft()
            self._ring_nbytes -= len(old.frame) + len(old.data)
        self.stats["events"] += 1
        for sub in tuple(self._subs):
            sub._offer(ev)
            if sub.closed is not None:
                self._subs.discard(sub)
                if sub.closed == "overflow":
                    self.stats["cut"] += 1
        if self.store is not None:
            self.store.put_event(ev)
        return ev

    # ------------------------------------------------------------------ heartbeats

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                with self.store.batch() if self.store is not None else contextlib.nullcontext():
                    self.check_workers()
                    self.check_idle_runs()
            except Exception:  # noqa: BLE001 - the checker must outlive any bug
                self._log_error("heartbeat check failed")

    def check_workers(self) -> None:
        """Mark the running spans of workers silent for longer than ``abandon_after_s`` as abandoned."""
        self.stats["checks"] += 1
        now = self._clock()
        silent = [
            w for w, seen in self._workers.items() if now - seen > self.abandon_after_s and w not in self._local_workers
        ]
        for worker in silent:
            # The worker was last heard from at this wall-clock time: its spans ran at least until then,
            # so that is where their bars (and the run's duration) stop.
            last_heard_ns = time.time_ns() - int((now - self._workers[worker]) * 1e9)
            del self._workers[worker]
            keys = self._running_by_worker.pop(worker, set())
            touched: dict[str, RunState] = {}
            for trace, span_id in sorted(keys):
                run = self._runs.get(trace)
                rec = run.spans.get(span_id) if run is not None else None
                if run is None or rec is None or rec.status != STATUS_RUNNING:
                    continue
                self._abandon_span(run, rec, last_heard_ns, worker)
                touched[trace] = run
            for run in touched.values():
                if run.status == STATUS_RUNNING and not any(s.status == STATUS_RUNNING for s in run.spans.values()):
                    self._abandon_run(run)

    def check_idle_runs(self) -> None:
        """End as ``abandoned`` the running runs nothing was heard of for ``idle_run_s`` and of which no live
        worker holds a running span: traces whose root never arrives, from senders without heartbeats."""
        if self.idle_run_s <= 0:
            return
        now = self._clock()
        activity = self._activity
        while activity:
            trace, seen = next(iter(activity.items()))
            if now - seen <= self.idle_run_s:
                break
            run = self._runs.get(trace)
            if run is None or run.status != STATUS_RUNNING:
                del activity[trace]
                continue
            running = [r for r in run.spans.values() if r.status == STATUS_RUNNING]
            if any(self._worker_alive(r) for r in running):
                activity[trace] = now  # a live worker still runs it: look again after another quiet spell
                activity.move_to_end(trace)
                continue
            last_heard_ns = time.time_ns() - int((now - seen) * 1e9)
            for rec in running:
                self._abandon_span(run, rec, last_heard_ns, None)
            self._abandon_run(run)

    def _worker_alive(self, rec: SpanRecord) -> bool:
        worker = rec.resource.get(A.WORKER_ID)
        return isinstance(worker, str) and (worker in self._workers or worker in self._local_workers)

    def _abandon_span(self, run: RunState, rec: SpanRecord, last_heard_ns: int, worker: str | None) -> None:
        abandoned = replace(rec, status=STATUS_ABANDONED, end_time_ns=max(rec.start_time_ns, last_heard_ns))
        run.spans[rec.span_id] = abandoned
        body: dict[str, Any] = {"span": abandoned.to_dict(), "worker_id": worker}
        self._publish(SPAN_ABANDONED, run, body, status=STATUS_ABANDONED, kind=rec.kind, name=rec.name)
        if self.store is not None:
            self.store.put_span(abandoned)

    def _abandon_run(self, run: RunState) -> None:
        run.status = STATUS_ABANDONED
        run.end_ns = max((s.end_time_ns or s.start_time_ns for s in run.spans.values()), default=run.start_ns)
        self._publish_run(RUN_ENDED, run)
        self._run_ended(run)

    def _restore(self, runs: Iterable[Mapping[str, Any]], spans: Iterable[SpanRecord]) -> None:
        """Load runs that were live when the viewer stopped; their workers get ``abandon_after_s`` to speak."""
        now = self._clock()
        for summary in runs:
            trace = str(summary["trace_id"])
            run = RunState(
                trace_id=trace,
                first_seq=self._seq + 1,
                alias=summary.get("otelflow_run_id"),
                name=str(summary.get("name") or ""),
                service=str(summary.get("service") or ""),
                status=STATUS_RUNNING,
                start_ns=int(summary.get("start_time_ns") or 0),
                progress=summary.get("progress"),
                announced=True,
            )
            self._runs[trace] = run
            self._activity[trace] = now
            if run.alias:
                self._aliases[run.alias] = trace
        for rec in spans:
            owner = self._runs.get(rec.trace_id)
            if owner is None:
                continue
            owner.spans[rec.span_id] = rec
            if rec.parent_span_id is None:
                owner.root_span_id = rec.span_id
            if rec.status == STATUS_ERROR:
                owner.error_count += 1
            if rec.kind == A.KIND_AGENT:
                owner.agent_count += 1
            worker = rec.resource.get(A.WORKER_ID)
            if rec.status == STATUS_RUNNING and isinstance(worker, str):
                self._workers.setdefault(worker, now)
                self._running_by_worker.setdefault(worker, set()).add((rec.trace_id, rec.span_id))
