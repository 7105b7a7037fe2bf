"""LiveSpanProcessor: hands every span's start, mid-span updates and end to a live sink, in real time."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanContext

from otelflow._log import problems
from otelflow.records import (
    PHASE_END,
    PHASE_START,
    PHASE_UPDATE,
    SpanRecord,
    capture,
    deferred_pair,
    deferred_record,
    record_from_span,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span as ApiSpan

__all__ = ["LiveSpanProcessor", "Sink", "notify_update"]


class Sink(Protocol):
    """Where the processor delivers records, in order, in batches (from its worker thread unless ``inline``).

    A sink may also have a boolean ``active`` attribute: while it is false (nobody listens), the processor
    skips spans entirely, so an idle in-process sink costs next to nothing. A sink whose ``inline``
    attribute is true promises that ``export`` is quick and never blocks, so the processor may call it
    from ``on_end`` on the application's thread (one call at a time, in order).
    """

    def export(self, records: Sequence[SpanRecord]) -> None: ...

    def force_flush(self, timeout_s: float) -> bool: ...

    def shutdown(self, timeout_s: float) -> None: ...


class _Update:
    """A mid-span update in the queue (a start is queued as the span id, an end as the span's capture)."""

    __slots__ = ("span",)

    def __init__(self, span: ReadableSpan) -> None:
        self.span = span


class _Flush:
    """A marker in the queue; set once everything queued before it has been delivered."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = True


class _Gate(Protocol):
    active: bool


class _Fixed:
    """A gate that never changes: for a sink with no ``active`` attribute (open), and after shutdown (closed)."""

    __slots__ = ("active",)

    def __init__(self, active: bool) -> None:
        self.active = active


_OPEN: Final = _Fixed(True)
_CLOSED: Final = _Fixed(False)
_STOP = object()
# (span_id, trace_flags) of a SpanContext in one C call: the API's SpanContext is a tuple (trace_id, span_id,
# is_remote, trace_flags, ...) whose properties each cost a Python call.
_ids: Callable[[SpanContext], tuple[int, int]] = (
    itemgetter(1, 3) if issubclass(SpanContext, tuple) else attrgetter("span_id", "trace_flags")
)
_SAMPLED: Final = 0x01  # the W3C sampled flag; TraceFlags is an int, and its .sampled property costs a call
# Inline delivery is turned off for good once this many deliveries from on_end, within one watch, each used
# more than this much of the delivering thread's CPU time (see LiveSpanProcessor, "Who delivers").
_INLINE_SLOW_S: Final = 0.02
_INLINE_STRIKES: Final = 3
_INLINE_WATCH_S: Final = 10.0  # how long after a delivery slow by the clock the CPU time of deliveries is read
_live_processors: weakref.WeakSet[LiveSpanProcessor] = weakref.WeakSet()


def notify_update(span: ApiSpan) -> None:
    """Tell every live processor that ``span`` changed mid-flight (a new event or attribute).

    Called by otelflow's own helpers (progress, data_flow, log …) after they change a span. O(1) per
    processor, never raises.
    """
    for processor in tuple(_live_processors):
        processor.update(span)


class LiveSpanProcessor(SpanProcessor):
    """A span processor that streams span starts, updates and ends to a sink while the spans run.

    Contract: the hooks run in O(1) on the caller's thread, never block (inline delivery, below, relies on
    the sink's promise that ``export`` is quick) and never raise. Records go to the
    sink in order through a bounded queue; when it is full the record is dropped and counted
    (:attr:`dropped`). Only sampled spans are streamed. Records of one span are delivered in order:
    start, then updates, then end. :meth:`shutdown` and :meth:`force_flush` are idempotent and bounded by
    their timeouts. After ``fork()`` the child starts with an empty queue and its own worker.

    Who delivers: one worker thread, always; and, for a sink whose ``inline`` attribute is true (the
    in-process sink), ``on_end`` too, when it can take the delivery lock without waiting and the queue
    holds at most ``inline_limit`` items. Delivering where the span ended keeps spans from piling up
    between threads, which is what makes a hand-over to a worker thread expensive in Python (see
    :func:`otelflow.records.capture`). A span that starts and ends with nothing queued in between is
    delivered by its ``on_end`` at once, start and end together, as deferred records.

    A subscriber that is slow on the application's thread loses inline delivery, for good: after a delivery
    from ``on_end`` takes more than 20 ms by the clock, the deliveries of the next 10 s are also timed by the
    delivering thread's own CPU time (:func:`time.thread_time`, read only then, as it costs a system call),
    and three of them that each use more than 20 ms of CPU within one such watch move delivery to the worker
    thread. Only CPU time counts, so a busy machine, where the thread waits for a core or for the
    interpreter lock, never turns inline delivery off. The price: a subscriber that blocks (sleeps, waits for
    I/O or a lock) uses no CPU and is not caught, as its wait cannot be told apart from that one; the sink
    contract forbids blocking.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        max_queue_size: int = 65_536,
        max_batch_size: int = 512,
        linger_s: float = 0.001,
        inline_limit: int = 16,
    ) -> None:
        if max_queue_size < 1 or max_batch_size < 1 or inline_limit < 0:
            raise ValueError("max_queue_size and max_batch_size must be at least 1, inline_limit at least 0")
        self.sink = sink
        self._gate: _Gate = sink if hasattr(sink, "active") else _OPEN  # type: ignore[assignment]
        # most items the queue may hold for on_end to deliver them itself; -1: never (one comparison in on_end)
        self._inline = inline_limit if inline_limit and getattr(sink, "inline", False) else -1
        self._strikes = 0
        self._watching = False  # inline deliveries are timed by CPU too, until _watch_until (perf_counter)
        self._watch_until = 0.0
        self._max_queue = max_queue_size
        self._max_batch = max_batch_size
        self._linger = linger_s
        self._dropped = 0
        self._delivered = 0
        self._shutdown = False
        self._init_worker()
        _live_processors.add(self)
        weak_self = weakref.ref(self)

        def _after_fork() -> None:
            proc = weak_self()
            if proc is not None:
                proc._init_worker()

        os.register_at_fork(after_in_child=_after_fork)

    def _init_worker(self) -> None:
        self._queue: deque[object] = deque()
        self._active: dict[int, Span] = {}  # started, not ended
        self._pending: dict[int, Span] = {}  # started, start not yet taken by a delivery nor by on_end
        self._captures: dict[int, tuple[object, ...]] = {}  # ended before a delivery took the start
        self._ended: dict[int, SpanRecord] = {}  # end records made early, waiting for their end item
        self._delivering = threading.Lock()  # held while taking items from the queue and exporting them
        self._wake = threading.Event()
        self._idle = True
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otelflow-live", daemon=True)
        self._thread.start()

    # --- counters -------------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full (or the processor was shut down)."""
        return self._dropped

    @property
    def delivered(self) -> int:
        """Records handed to the sink so far."""
        return self._delivered

    @property
    def inline_delivery(self) -> bool:
        """Whether ``on_end`` delivers to the sink itself when it can (see "Who delivers"): false for a sink that
        is not ``inline``, with ``inline_limit=0``, and for good once the subscribers were found slow."""
        return self._inline > 0

    def active_spans(self) -> list[Span]:
        """Spans that started and have not ended yet (for re-sending pending snapshots)."""
        return list(self._active.values())

    # --- hooks (caller's thread) ------------------------------------------------------------------
    # How a span travels: on_start queues its span id (a plain int, which the garbage collector ignores)
    # and notes the span in _pending. Whichever comes first then takes the span out of _pending: a delivery,
    # which captures the running span as its (deferred) start record, or on_end, which leaves the span's
    # capture in _captures for the delivery to derive the start record from. on_end also queues the capture
    # for the end record. No SDK span object is held in the queue once it has ended. When on_end delivers
    # itself, the records it hands over refer to the ended span (a ReadableSpan, which can no longer change),
    # and its parent's start, if still queued, goes out in the same batch.
    # The hooks run for every span: they read the SDK's fields and the span context's items directly (see
    # _ids), take few Python calls, and leave the formatting to whoever reads a record.
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            ctx = span._context
            if ctx is None:
                return
            span_id, flags = _ids(ctx)
            if not flags & _SAMPLED or not self._gate.active:
                return
            self._active[span_id] = span
            queue = self._queue
            if len(queue) >= self._max_queue:
                self._count_drop()
                return
            self._pending[span_id] = span
            queue.append(span_id)
            if self._idle:
                self._wake_worker()
        except Exception:  # noqa: BLE001 - a hook must never raise into user code
            problems.warning("on_start", "otelflow: live processor failed on span start", exc_info=True)

    def update(self, span: ApiSpan) -> None:
        """Stream a snapshot of a running span after its events or attributes changed."""
        try:
            ctx = span.get_span_context()
            if not self._shutdown and ctx.span_id in self._active and isinstance(span, Span):
                self._put(_Update(span))
        except Exception:  # noqa: BLE001
            problems.warning("update", "otelflow: live processor failed on span update", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            ctx = span._context
            if ctx is None:
                return
            span_id, flags = _ids(ctx)
            if not flags & _SAMPLED:
                return
            self._active.pop(span_id, None)
            if not self._gate.active:
                self._pending.pop(span_id, None)
                return
            queue = self._queue
            if len(queue) > self._inline or not self._delivering.acquire(False):
                self._queue_end(span_id, capture(span, PHASE_END))
                return
            # Delivered at once, the records refer to the ended span itself: it can no longer change, and the
            # subscriber reads it soon (a queued end holds a capture instead, see _queue_end).
            watching = self._watching
            if watching:
                cpu = time.thread_time()
            began = time.perf_counter()
            try:
                if self._pending.pop(span_id, None) is not None:  # its start is still queued
                    if len(queue) == 1 and queue[0] == span_id:
                        # The common case in a burst: this span's start is all there is. Deliver both now.
                        queue.popleft()
                        try:
                            self.sink.export(deferred_pair(span))
                            self._delivered += 2
                        except Exception:  # noqa: BLE001 - as in _deliver
                            problems.warning("sink", "otelflow: live sink failed to export 2 records", exc_info=True)
                    else:
                        # What is queued before it (its parent's start, typically) goes first, and its
                        # end closes the same batch if that takes the whole queue.
                        self._captures[span_id] = cap = capture(span, PHASE_END)
                        if not self._take(self._inline, markers=False, ending=span_id):
                            self._append(cap)  # its start or an update is still queued: the end follows them
                        self._wake_if_queued()
                elif queue:
                    if self._append(capture(span, PHASE_END)):
                        self._take(self._inline, markers=False)
                    self._wake_if_queued()
                else:  # its start went out already (a parent whose children ended before it)
                    self._deliver([deferred_record(span, PHASE_END)])
            finally:
                self._delivering.release()
            now = time.perf_counter()
            if now - began > _INLINE_SLOW_S:
                self._slow_delivery(now, time.thread_time() - cpu if watching else None)
            elif watching and now > self._watch_until:
                self._watching = False
        except Exception:  # noqa: BLE001
            problems.warning("on_end", "otelflow: live processor failed on span end", exc_info=True)

    def _slow_delivery(self, now: float, cpu_s: float | None) -> None:
        """A delivery from on_end took longer than _INLINE_SLOW_S by the clock; ``cpu_s`` is the CPU time
        this thread spent in it, if it was being watched."""
        if not self._watching or now >= self._watch_until:
            self._strikes = 0  # a new watch: strikes count within one
        self._watching = True
        self._watch_until = now + _INLINE_WATCH_S
        if cpu_s is None or cpu_s <= _INLINE_SLOW_S:
            return  # waiting for a CPU or for the interpreter lock is not the subscriber's doing
        self._strikes += 1
        if self._strikes >= _INLINE_STRIKES:
            # The sink breaks its promise to be quick: stop making the application wait for it.
            self._inline = -1
            problems.warning(
                "inline-slow",
                "otelflow: live subscribers used up to %.0f ms of CPU per delivery; delivering from the worker "
                "thread from now on",
                cpu_s * 1000,
            )

    def _queue_end(self, span_id: int, cap: tuple[object, ...]) -> None:
        captures = self._captures
        captures[span_id] = cap  # before taking the start from _pending, so a delivery finds one or the other
        if self._pending.pop(span_id, None) is None:  # a delivery took the start already (or never got it)
            captures.pop(span_id, None)
        self._put(cap)

    def _append(self, item: object) -> bool:
        """Queue ``item`` unless the queue is full (then count it as dropped); does not wake the worker."""
        queue = self._queue
        if len(queue) >= self._max_queue:
            self._count_drop()
            return False
        queue.append(item)
        return True

    def _count_drop(self) -> None:
        self._dropped += 1
        problems.warning(
            "queue-full",
            "otelflow: live queue full (%d); dropping span records (%d dropped so far)",
            self._max_queue,
            self._dropped,
        )

    def _put(self, item: object) -> bool:
        if not self._append(item):
            return False
        if self._idle:
            self._wake_worker()
        return True

    def _wake_if_queued(self) -> None:
        """After an inline delivery that left items queued (behind a marker, or queued meanwhile)."""
        if self._queue and self._idle:
            self._wake_worker()

    def _wake_worker(self) -> None:
        # Claim the wake-up, so the hooks that run before the worker gets the interpreter lock do not
        # each set the event again (Event.set takes a lock and notifies every time).
        self._idle = False
        self._wake.set()

    # --- delivery (the worker, or on_end inline; always under self._delivering) ---------------------
    def _take(self, limit: int, *, markers: bool, ending: int = 0) -> bool:
        """Turn up to ``limit`` queued items into records and deliver them; True once the stop marker is met.

        With ``markers`` false (inline), stops before a flush or stop marker and leaves it to the worker.
        ``ending``: a span ending on this thread, its capture in ``_captures`` and no end item queued; if this
        takes its start and leaves the queue empty, its end record closes the batch and True is returned.
        """
        queue = self._queue
        pending = self._pending
        captures = self._captures
        ended = self._ended
        batch: list[SpanRecord] = []
        for _ in range(limit):
            try:
                item = queue[0]
            except IndexError:
                break
            if not markers and (item is _STOP or isinstance(item, _Flush)):
                break
            queue.popleft()
            try:
                if isinstance(item, int):  # a start
                    span = pending.pop(item, None)
                    if span is not None:  # still running (or only just ended): snapshot it now, format later
                        batch.append(deferred_record(capture(span, PHASE_START), PHASE_START))
                        continue
                    cap = captures.pop(item, None)
                    if cap is not None:  # ended: derive the start from the end (shared, deferred)
                        start, end = deferred_pair(cap)
                        batch.append(start)
                        if len(ended) > 65_536:
                            ended.clear()  # ends that were dropped from a full queue
                        ended[item] = end  # its end item, queued after this start, reuses it
                    continue  # neither: withdrawn (shut down, or nobody listens any more)
                if isinstance(item, tuple):  # an end capture
                    known = ended.pop(item[0].span_id, None)
                    batch.append(known if known is not None else deferred_record(item, PHASE_END))
                    continue
                if isinstance(item, _Update):
                    batch.append(record_from_span(item.span, PHASE_UPDATE))
                    continue
            except Exception:  # noqa: BLE001 - one odd span must not stop the stream
                problems.warning("record", "otelflow: could not snapshot a span", exc_info=True)
                continue
            self._deliver(batch)
            batch = []
            if isinstance(item, _Flush):
                self._flush_sink(item)
            elif item is _STOP:
                return True
        if ending and not queue:
            last = ended.pop(ending, None)
            if last is not None:
                batch.append(last)  # after every update of it, all of them taken
                self._deliver(batch)
                return True
        self._deliver(batch)
        return False

    def _run(self) -> None:
        queue = self._queue
        wake = self._wake
        try:
            while True:
                if not queue:
                    self._idle = True
                    if not queue:  # re-check: a producer may have appended before seeing _idle
                        wake.wait(1.0)
                    wake.clear()
                    self._idle = False
                    if len(queue) < self._max_batch:
                        # Linger a moment so a burst is taken in one batch instead of waking per span
                        # (each wake-up costs the producing thread a GIL hand-over).
                        time.sleep(self._linger)
                    continue
                with self._delivering:
                    if self._take(self._max_batch, markers=True):
                        return
        finally:
            self._stopped.set()

    def _deliver(self, batch: list[SpanRecord]) -> None:
        if not batch:
            return
        try:
            self.sink.export(batch)
            self._delivered += len(batch)
        except Exception:  # noqa: BLE001 - a failing sink is logged, never fatal
            problems.warning("sink", "otelflow: live sink failed to export %d records", len(batch), exc_info=True)

    def _flush_sink(self, marker: _Flush) -> None:
        try:
            marker.ok = bool(self.sink.force_flush(1.0))
        except Exception:  # noqa: BLE001
            marker.ok = False
            problems.warning("sink-flush", "otelflow: live sink failed to flush", exc_info=True)
        marker.done.set()

    # --- lifecycle ----------------------------------------------------------------------------------
    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until everything queued so far has been handed to the sink and the sink has flushed.

        False on timeout, or when the sink could not flush (e.g. its viewer is down).
        """
        if self._shutdown or self._stopped.is_set():
            # after shutdown the worker only finishes what was queued before it
            return self._stopped.wait(timeout_millis / 1000)
        marker = _Flush()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout_millis / 1000) and marker.ok

    def shutdown(self, timeout_millis: int = 5_000) -> None:
        """Deliver what is queued (bounded by the timeout), stop the worker and shut the sink down."""
        if self._shutdown:
            return
        self._shutdown = True
        self._gate = _CLOSED
        _live_processors.discard(self)
        timeout_s = timeout_millis / 1000
        if not self._stopped.is_set():
            self._queue.append(_STOP)
            self._wake.set()
            self._thread.join(timeout_s)
        try:
            self.sink.shutdown(timeout_s)
        except Exception:  # noqa: BLE001
            problems.warning("sink-shutdown", "otelflow: live sink failed to shut down", exc_info=True)
