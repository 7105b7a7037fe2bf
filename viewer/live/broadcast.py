"""The broadcast: changes become numbered, encoded events, kept in a replay ring and offered to subscribers.

Contracts:

- Event ids are ``<epoch>.<seq>``: epoch is random per broadcast, seq starts at 1 and has no gaps. Every
  event is encoded once (its JSON and its SSE lines) and the same bytes go to every subscriber.
- Behind a shared log (a broker's stream, see :meth:`Broadcast.align`) the epoch is the log's and the events of
  its entry ``n`` are numbered from ``n << ENTRY_BITS``: every viewer reading the log gives an event the same
  id. A client may then resume on another viewer; one that knows events this viewer has not read yet gets what
  follows them. When the log lost entries (or all of its data: a new epoch) every subscriber gets ``reset``.
- The last ``ring_size`` events (at most ``ring_bytes`` of them) are kept for resume: :meth:`Broadcast.open`
  with a ``last_event_id`` inside the ring replays every later event exactly once, else the subscription
  starts with a ``reset`` event. Replay is bounded by the ring, not by the subscriber's queue.
- Each subscriber has one bounded queue; one that overflows is cut (``closed == "overflow"``) and must resume
  by id. Publishing never waits for a subscriber.
- Taps (the history) receive every event of each publish, with the batch it came from, in order; events
  that tell the stream nothing (:data:`viewer.live.state.RUN_STORED`) reach taps only.
- All methods must be called on one event loop.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from otelflow import attributes as A
from otelflow.naming import bare_name, shown_name
from otelflow.records import SpanRecord, format_time
from otelflow.wire import (
    RESET,
    RUN_ENDED,
    RUN_STARTED,
    SHUTDOWN,
    SPAN_ABANDONED,
    SPAN_ENDED,
    SPAN_EVENT,
    SPAN_STALLED,
    SPAN_UNSTALLED,
    STALLED,
    dumps,
    encode_exact,
    encode_span,
    encode_span_pair,
    event_json,
    quote,
)

from .events import Event, attributes_json, bare_event, envelope, span_event_envelope, sse_head, wrapped
from .state import RUN_STORED, Batch, Change, Entry

if TYPE_CHECKING:
    from .state import RunState

__all__ = ["ENTRY_BITS", "Broadcast", "Event", "Filters", "Subscription", "Tap"]

ENTRY_BITS: Final = 24  # events one entry of a shared log may number (2**24); ids stay below 2**53 for browsers


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
    without a dot (``span`` = every ``span.*``); ``kind`` applies to span events (run events pass); ``name`` is
    the span name or the name the pages show (``search`` for ``execute_tool search``), of span events and, unless
    a ``run`` filter names the run followed, of run events;
    ``status`` is the span's or the run's status (``stalled``: events about stalled spans and their runs).
    ``reset`` and ``shutdown`` always pass.
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
        fields = (("run", self.run), ("kind", self.kind), ("type", self.type), ("name", self.name))
        return {key: sorted(value) for key, value in (*fields, ("status", self.status)) if value}

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
        if self.name is not None and not self._name_passes(ev, is_span):
            return False
        return self.status is None or ev.status in self.status or (ev.stalled and STALLED in self.status)

    def _name_passes(self, ev: Event, is_span: bool) -> bool:
        names = self.name
        assert names is not None
        if is_span or (self.run is None and ev.type.startswith("run.")):
            return ev.name in names or _shown(ev) in names
        return True  # the followed run's own run.* events, alerts


def _shown(ev: Event) -> str:
    """The name the pages show for what an event is about (``search`` for ``execute_tool search``)."""
    rec = ev.record
    if rec is not None:
        return shown_name(rec.name, rec.attributes)
    return bare_name(ev.name or "")


class Subscription:
    """One subscriber's bounded queue of events. Read with :meth:`drain` after :meth:`wait`.

    ``closed`` is ``None`` while open, else why it closed: ``overflow`` (the client must resume by id),
    ``shutdown``, ``run_ended``, ``released``, ``client``. Events queued before a ``shutdown``/``run_ended``
    close are still delivered; an ``overflow`` close drops them. ``start_id`` is where it starts: it receives
    the (matching) events after that id.
    """

    __slots__ = (
        "_all",
        "_on_cut",
        "_queue",
        "_waiter",
        "_wake",
        "after",
        "closed",
        "filters",
        "limit",
        "start_id",
        "until_run_end",
    )

    def __init__(
        self,
        filters: Filters,
        limit: int,
        start_id: str,
        *,
        until_run_end: bool = False,
        wake: asyncio.Event | None = None,
    ) -> None:
        # Thousands of idle subscribers are normal: keep each small (a list, and a future only while waiting).
        self.filters = filters
        self._all = filters.empty  # every event passes (reset and shutdown always do)
        self.limit = limit
        self.start_id = start_id
        self.until_run_end = until_run_end
        self._queue: list[Event] = []
        self._wake = wake  # a shared event to set (WebSocket sessions), else ``_waiter`` is resolved
        self._waiter: asyncio.Future[bool] | None = None
        self._on_cut: Callable[[], None] | None = None
        self.closed: str | None = None
        self.after = 0  # events up to this seq are the client's already (it resumed from a viewer further on)

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

    def _ends_run(self, ev: Event) -> bool:
        run = self.filters.run
        return self.until_run_end and ev.type == RUN_ENDED and run is not None and (ev.run_id in run or ev.alias in run)

    def _offer_all(self, events: list[Event]) -> None:
        """Queue those of ``events`` that pass the filters and follow ``after``, in order, waking the reader once;
        closes the subscription when its queue overflows, or at its run's end when it asked for that."""
        if self.closed is not None:
            return
        queue, after, limit = self._queue, self.after, self.limit
        matches = None if self._all else self.filters.matches
        until_run_end = self.until_run_end
        added = False
        for ev in events:
            if ev.seq <= after:
                continue
            if matches is None or matches(ev):
                if len(queue) >= limit:
                    self._overflow()
                    return
                queue.append(ev)
                added = True
            if until_run_end and self._ends_run(ev):
                self._close("run_ended")  # wakes the reader
                return
        if added:
            self._signal()

    def _overflow(self) -> None:
        self._queue.clear()
        self._close("overflow")
        if self._on_cut is not None:
            self._on_cut()

    def _replay(self, ev: Event) -> None:
        """Queue an event from the replay ring: filtered, without the queue limit."""
        if self.closed is None and self.filters.matches(ev):
            self._put(ev)
        if self._ends_run(ev):
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


Tap = Callable[[list[Event], Batch], None]


_KNOWN_TYPES: Final = frozenset({SPAN_EVENT, SPAN_ENDED})


def _event_texts(record: SpanRecord) -> tuple[SpanRecord, list[str]] | None:
    """``record``'s events as :func:`otelflow.wire.event_json` writes them (with :func:`attributes_json`), for its
    ``span.event`` envelopes and its ``span.ended``; ``None`` when one needs the general path."""
    try:
        return record, [event_json(e, attributes_json) for e in record.events]
    except (TypeError, ValueError):
        return None


def _known(record: SpanRecord, run: RunState, epoch: str) -> tuple[SpanRecord, RunState, str, str] | None:
    """What the ``span.event`` and ``span.ended`` envelopes of ``record`` (of ``run``) share: ``"run_id":...``
    and the ``span.event`` fields up to ``"event":``, as :func:`viewer.live.events.wrapped` and
    :func:`viewer.live.events.span_event_envelope` write them; ``None`` when a value is not a str, or when the
    epoch would need escaping in an id (the general path then writes them)."""
    if not (epoch.isascii() and epoch.isalnum() and record.trace_id == run.trace_id):
        return None
    try:
        run_id = f'"run_id":{quote(run.trace_id)}'
        middle = (
            f'{run_id},"trace_id":{quote(record.trace_id)},"span_id":{quote(record.span_id)},'
            f'"span_name":{quote(record.name)},"span_kind":{quote(record.kind)},"event":'
        )
    except TypeError:
        return None
    return record, run, run_id, middle


class Broadcast:
    """Numbering, the replay ring and subscriptions (see the module docstring)."""

    def __init__(self, *, ring_size: int = 10_000, ring_bytes: int = 64 * 1024 * 1024, queue_limit: int = 16_384):
        self.epoch = secrets.token_hex(4)
        self.ring_size = ring_size
        self.ring_bytes = ring_bytes
        self.queue_limit = queue_limit
        self._seq = 0
        self._ended: tuple[SpanRecord, bytes] | None = None  # encoded with a made-up start, next out
        self._events: tuple[SpanRecord, list[str]] | None = None  # its events, encoded for its span.event too
        # that span, its run, and the JSON pieces its span.event and span.ended envelopes share (_known)
        self._known: tuple[SpanRecord, RunState, str, str] | None = None
        self._ring: deque[Event] = deque()
        self.ring_nbytes = 0
        self._subs: set[Subscription] = set()
        self._taps: list[Tap] = []
        self.shutting_down = False
        self.shared = False  # numbered by a shared log's entries (align): ids are the same on every viewer
        self.stats: dict[str, int] = {"events": 0, "cut": 0}

    # ------------------------------------------------------------------ publishing

    def tap(self, tap: Tap) -> None:
        """Give ``tap`` every event of each publish, with the batch it came from (the history writer)."""
        self._taps.append(tap)

    def publish(self, changes: Iterable[Change], batch: Batch) -> list[Event]:
        """Number, encode and offer the events of these changes; returns them (quiet ones included)."""
        events = [self._event(change) for change in changes]
        self._offer_all([ev for ev in events if not ev.quiet])
        for tap in self._taps:
            tap(events, batch)
        return events

    def publish_alert(self, type_: str, alert: dict[str, Any]) -> Event:
        """Number, encode and offer an ``alert.fired``/``alert.resolved`` event (its ``run_id`` is the alert's,
        also when the run has left the live state); the taps get it like any other."""
        self._seq += 1
        event_id = f"{self.epoch}.{self._seq}"
        run_id, alias = alert.get("run_id"), alert.get("otelflow_run_id")
        envelope = {"id": event_id, "type": type_, "run_id": run_id, "alert": alert}
        data = dumps(envelope)
        ev = Event(
            self._seq,
            event_id,
            type_,
            run_id if isinstance(run_id, str) else None,
            alias if isinstance(alias, str) else None,
            None,
            alert.get("rule"),
            alert.get("status"),
            data,
            sse_head(event_id, type_),
        )
        self._offer(ev)
        for tap in self._taps:
            tap([ev], Batch())
        return ev

    def _event(self, change: Change) -> Event:
        run = change.run
        type_ = change.type
        known = self._known
        if known is not None and known[0] is change.span and known[1] is run and (type_ in _KNOWN_TYPES):
            ev = self._known_event(change, known)
            if ev is not None:
                return ev
        if type_ == RUN_STORED:
            stored = run.to_dict()
            return Event(0, "", type_, run.trace_id, run.alias, None, None, None, b"", b"", summary=stored, quiet=True)
        self._seq += 1
        seq = self._seq
        event_id = f"{self.epoch}.{seq}"
        record = change.span
        # what the Event holds besides its data (positional below: cheaper than keywords, once per event)
        event_index, derived, stalled = -1, False, False
        summary: dict[str, Any] | None = None
        summary_json: str | None = None
        if change.derived:  # the start of a span that arrived ended, then (next) its end: encoded together
            assert record is not None
            try:
                events: list[str] | None = [event_json(e, attributes_json) for e in record.events]
            except (TypeError, ValueError):
                events = None
            raw, ended, _ = encode_span_pair(record, events, attributes_json)
            self._ended = (record, ended)
            self._events = (record, events) if events else None
            self._known = _known(record, run, self.epoch)
            data = wrapped(event_id, type_, run, "span", raw)
            kind, name, status = record.kind, record.name, A.STATUS_RUNNING
            derived = True
        elif type_.startswith("run."):
            summary = run.to_dict()
            raw, exact = encode_exact(summary)  # once, for the event and the stored run
            data = wrapped(event_id, type_, run, "run", raw)
            kind, name, status = A.KIND_WORKFLOW, run.name, run.status
            summary_json = raw.decode("ascii") if exact else None
            stalled = run.had_stall
            if type_ == RUN_STARTED and not run.first_seq:
                run.first_seq = seq  # where a stream of this run replays from
        elif type_ == SPAN_EVENT:
            assert record is not None
            assert change.event is not None
            fast = span_event_envelope(
                event_id, run, record, change.event, change.event_index, self._event_texts_of(record)
            )
            if fast is not None:
                data = fast
            else:
                body = {
                    "trace_id": record.trace_id,
                    "span_id": record.span_id,
                    "span_name": record.name,
                    "span_kind": record.kind,
                    "event": change.event.to_dict(),
                }
                data = envelope(event_id, type_, run, body)
            kind, name, status = record.kind, record.name, A.STATUS_RUNNING
            event_index = change.event_index
        elif type_ in (SPAN_STALLED, SPAN_UNSTALLED):
            assert record is not None
            flag: dict[str, Any] = {"span": record.to_dict()}
            if change.stall is not None:
                flag["stalled"] = change.stall.to_dict()
            if change.cleared is not None:
                flag["unstalled"] = {"reason": change.cleared[0], "at": format_time(change.cleared[1])}
            data = envelope(event_id, type_, run, flag)
            kind, name, status = record.kind, record.name, record.status
            stalled = True
        elif type_ == SPAN_ABANDONED:
            assert record is not None
            data = envelope(event_id, type_, run, {"span": record.to_dict(), "worker_id": change.worker})
            kind, name, status = record.kind, record.name, record.status
        else:  # span.started, span.updated, span.ended: the span object is encoded once
            assert record is not None
            ended_before = self._ended
            if ended_before is not None and ended_before[0] is record:
                raw = ended_before[1]
                self._ended = None
            else:
                texts = self._event_texts_of(record) if record.events else None
                raw, _ = encode_span(record, texts[1] if texts is not None else None, attributes_json)
            data = wrapped(event_id, type_, run, "span", raw)
            kind, name, status = record.kind, record.name, record.status
        head = sse_head(event_id, type_)
        ev = Event(
            seq,
            event_id,
            type_,
            run.trace_id,
            run.alias,
            kind,
            name,
            status,
            data,
            head,
            record,
            event_index,
            derived,
            stalled,
            summary,
            summary_json,
        )
        return ev  # offered by publish, with the others of its batch

    def _event_texts_of(self, record: SpanRecord) -> tuple[SpanRecord, list[str]] | None:
        """``record``'s events encoded (:func:`_event_texts`), once for its span.event envelopes and its span.ended."""
        if self._events is None or self._events[0] is not record:
            self._events = _event_texts(record)
        return self._events

    def _known_event(self, change: Change, known: tuple[SpanRecord, RunState, str, str]) -> Event | None:
        """The ``span.event`` or ``span.ended`` of the span that arrived ended whose start was the last encoded
        (:func:`_known`): the bytes of the general path, written from its pieces; ``None`` when they are not all
        at hand (the general path then writes the event)."""
        record, _run, run_id, middle = known
        type_ = change.type
        if type_ == SPAN_EVENT:
            texts = self._events
            index = change.event_index
            if texts is None or texts[0] is not record or not 0 <= index < len(texts[1]):
                return None
            self._seq += 1
            seq = self._seq
            event_id = f"{self.epoch}.{seq}"
            data = f'{{"id":"{event_id}","type":"{SPAN_EVENT}",{middle}{texts[1][index]}}}'.encode("ascii")
            status = A.STATUS_RUNNING
        else:  # span.ended
            ended = self._ended
            if ended is None or ended[0] is not record:
                return None
            self._ended = self._known = None
            self._seq += 1
            seq = self._seq
            event_id = f"{self.epoch}.{seq}"
            head = f'{{"id":"{event_id}","type":"{SPAN_ENDED}",{run_id},"span":'
            data = b"".join((head.encode("ascii"), ended[1], b"}"))
            index = -1
            status = record.status
        return Event(
            seq,
            event_id,
            type_,
            record.trace_id,
            change.run.alias,
            record.kind,
            record.name,
            status,
            data,
            sse_head(event_id, type_),
            record,
            index,
        )

    def _offer(self, ev: Event) -> None:
        self._offer_all([ev])

    def _offer_all(self, events: list[Event]) -> None:
        """Keep ``events`` in the ring and queue them for every subscriber, in order."""
        if not events:
            return
        ring = self._ring
        ring.extend(events)
        self.ring_nbytes += sum([len(ev.head) + len(ev.data) for ev in events])
        if len(ring) > self.ring_size or self.ring_nbytes > self.ring_bytes:
            while len(ring) > self.ring_size or (self.ring_nbytes > self.ring_bytes and len(ring) > 1):
                old = ring.popleft()
                self.ring_nbytes -= len(old.head) + len(old.data)
        self.stats["events"] += len(events)
        if self._subs:
            closed = []
            for sub in tuple(self._subs):
                sub._offer_all(events)
                if sub.closed is not None:
                    closed.append(sub)
            for sub in closed:
                self._subs.discard(sub)
                if sub.closed == "overflow":
                    self.stats["cut"] += 1

    def shutdown(self) -> None:
        """Publish ``shutdown`` and close every subscription once its queue is delivered. Idempotent."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self._seq += 1
        self._offer(bare_event(self._seq, f"{self.epoch}.{self._seq}", SHUTDOWN, {}))
        for sub in list(self._subs):
            sub.close("shutdown")

    # ------------------------------------------------------------------ ids and resume

    def align(self, entry: Entry) -> bool:
        """Number the events of a shared log's entry from ``entry.n << ENTRY_BITS`` (call before its first batch).
        A new epoch (the log lost its data) empties the ring; a new epoch or lost entries tell every subscriber
        to ``reset``. Returns whether the ring was emptied."""
        self.shared = True
        base = entry.n << ENTRY_BITS  # the entry's first event is numbered base, as on every viewer
        new_epoch = entry.epoch != self.epoch
        reason = None
        if new_epoch:
            reason = "the broker lost its data" if self._seq else None
            self.epoch = entry.epoch
            self._ring.clear()
            self.ring_nbytes = 0
            self._seq = base - 1
        else:
            if entry.gap:
                reason = "this viewer fell behind the broker: events were lost"
            self._seq = max(self._seq, base - 1)
        if reason is not None:
            self.stats["resets"] = self.stats.get("resets", 0) + 1
            for sub in tuple(self._subs):
                sub._put(self.reset_event(sub.filters, reason))
        return new_epoch

    @property
    def last_id(self) -> str:
        """The id of the latest event (``<epoch>.0`` before the first)."""
        return f"{self.epoch}.{self._seq}"

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def parse_id(self, event_id: str | None) -> int | None:
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
        last = self.last_id
        return bare_event(self._seq, last, RESET, {"reason": reason, "snapshot": snapshot, "last_event_id": last})

    # ------------------------------------------------------------------ subscribing

    def open(
        self,
        filters: Filters | None = None,
        last_event_id: str | None = None,
        *,
        until_run_end: bool = False,
        replay: Iterable[RunState] = (),
        limit: int | None = None,
        wake: asyncio.Event | None = None,
    ) -> Subscription:
        """Register a subscriber; pair with :meth:`release` (or use :meth:`subscribe`).

        With ``last_event_id`` the queue starts with every later event still in the ring (exactly once), or
        with a ``reset`` when that is impossible. Without it, the runs in ``replay`` are replayed from their
        first event when the ring still holds it (else ``reset``; and when they have all ended, the
        subscription closes at once); otherwise only new events follow.
        """
        filters = filters or Filters()
        sub = Subscription(filters, limit or self.queue_limit, self.last_id, until_run_end=until_run_end, wake=wake)
        if self.shutting_down:
            sub._put(bare_event(self._seq, self.last_id, SHUTDOWN, {}))
            sub.close("shutdown")
            return sub
        ring_first = self._ring[0].seq if self._ring else self._seq + 1
        start: int | None = None  # replay events with seq > start
        if last_event_id:
            seq = self.parse_id(last_event_id)
            if seq is not None and seq > self._seq and self.shared:
                sub.after = start = seq  # read by a viewer further on in the shared log: what follows it
            elif seq is None or seq > self._seq:
                sub._put(self.reset_event(filters, "unknown event id"))
            elif seq < ring_first - 1:
                sub._put(self.reset_event(filters, "event id no longer in the replay ring"))
            else:
                start = seq
        else:
            runs = list(replay)
            firsts = [r.first_seq for r in runs if r.first_seq]  # 0: restored, nothing of it published here
            if firsts and min(firsts) >= ring_first:
                start = min(firsts) - 1
            elif firsts:
                sub._put(self.reset_event(filters, "run started before the replay ring"))
                if all(r.status != A.STATUS_RUNNING for r in runs):
                    sub.close("run_ended")
        if start is not None:
            sub.start_id = f"{self.epoch}.{start}"
            for ev in self._ring:
                if ev.seq > start:
                    sub._replay(ev)
            # the replay is the ring's to bound; the queue limit is about keeping pace from here on
            sub.limit += len(sub._queue)
        if sub.closed is None:
            self._subs.add(sub)
        return sub

    def over(self, filters: Filters, reason: str) -> Subscription:
        """A subscription with nothing to follow (its run ended before the replay ring): a ``reset``, then closed.
        It is not registered."""
        sub = Subscription(filters, 1, self.last_id)
        sub._put(self.reset_event(filters, reason))
        sub.close("run_ended")
        return sub

    def release(self, sub: Subscription) -> None:
        """Unregister a subscriber. Idempotent."""
        self._subs.discard(sub)
        if sub.closed is None:
            sub.close("released")
