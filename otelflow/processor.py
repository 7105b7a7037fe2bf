"""LiveSpanProcessor: hands every span's start, mid-span updates and end to a live sink, in real time."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otelflow._log import problems
from otelflow.records import PHASE_END, PHASE_START, PHASE_UPDATE, SpanRecord, record_from_span, started_copy

if TYPE_CHECKING:
    from opentelemetry.trace import Span as ApiSpan

__all__ = ["LiveSpanProcessor", "Sink", "notify_update"]


class Sink(Protocol):
    """Where the processor's worker thread delivers records, in order, in batches.

    A sink may also have a boolean ``active`` attribute: while it is false (nobody listens), the processor
    skips spans entirely, so an idle in-process sink costs next to nothing.
    """

    def export(self, records: Sequence[SpanRecord]) -> None: ...

    def force_flush(self, timeout_s: float) -> bool: ...

    def shutdown(self, timeout_s: float) -> None: ...


class _Update:
    """A mid-span update in the queue (starts and ends are queued as the bare span objects)."""

    __slots__ = ("span",)

    def __init__(self, span: ReadableSpan) -> None:
        self.span = span


class _Flush:
    """A marker in the queue; set once everything queued before it has been delivered."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = True


_STOP = object()
_SPAN_ITEMS: Final = (ReadableSpan, _Update)  # queue items that become records (the rest are markers)
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

    Contract: the hooks run in O(1) on the caller's thread, never block and never raise. Work is handed to
    one worker thread through a bounded queue; when it is full the record is dropped and counted
    (:attr:`dropped`). Only sampled spans are streamed. Records of one span are delivered in order:
    start, then updates, then end. :meth:`shutdown` and :meth:`force_flush` are idempotent and bounded by
    their timeouts. After ``fork()`` the child starts with an empty queue and its own worker.
    """

    def __init__(
        self, sink: Sink, *, max_queue_size: int = 65_536, max_batch_size: int = 512, linger_s: float = 0.001
    ) -> None:
        if max_queue_size < 1 or max_batch_size < 1:
            raise ValueError("max_queue_size and max_batch_size must be at least 1")
        self.sink = sink
        self._gate = sink if hasattr(sink, "active") else None
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
        self._active: dict[int, Span] = {}
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

    def active_spans(self) -> list[Span]:
        """Spans that started and have not ended yet (for re-sending pending snapshots)."""
        return list(self._active.values())

    # --- hooks (caller's thread) ------------------------------------------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            ctx = span.context
            gate = self._gate
            if self._shutdown or not ctx.trace_flags.sampled or (gate is not None and not gate.active):
                return
            self._active[ctx.span_id] = span
            self._put(span)  # a live Span object in the queue means "started"
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
            ctx = span.context
            if ctx is None or not ctx.trace_flags.sampled:
                return
            self._active.pop(ctx.span_id, None)
            gate = self._gate
            if not self._shutdown and (gate is None or gate.active):
                self._put(span)  # the SDK hands on_end a ReadableSpan, never a Span: "ended"
        except Exception:  # noqa: BLE001
            problems.warning("on_end", "otelflow: live processor failed on span end", exc_info=True)

    def _put(self, item: object) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue:
            self._dropped += 1
            problems.warning(
                "queue-full",
                "otelflow: live queue full (%d); dropping span records (%d dropped so far)",
                self._max_queue,
                self._dropped,
            )
            return
        queue.append(item)
        if self._idle:
            self._wake.set()

    # --- worker thread ----------------------------------------------------------------------------
    def _take(self) -> Iterator[object]:
        queue = self._queue
        for _ in range(self._max_batch):
            try:
                yield queue.popleft()
            except IndexError:
                return

    def _run(self) -> None:
        queue = self._queue
        wake = self._wake
        stopped = self._stopped
        ended: dict[int, SpanRecord] = {}
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
                batch: list[SpanRecord] = []
                for item in self._take():
                    if isinstance(item, _SPAN_ITEMS):
                        try:
                            if isinstance(item, _Update):
                                batch.append(record_from_span(item.span, PHASE_UPDATE))
                            elif isinstance(item, Span):  # a live span object: queued by on_start
                                if item.end_time is None:
                                    batch.append(record_from_span(item, PHASE_START))
                                else:
                                    # Already ended (a short span in a burst): snapshot its end once and
                                    # derive the start from it; the end item that follows reuses it.
                                    end = record_from_span(item, PHASE_END)
                                    if len(ended) > 65_536:
                                        ended.clear()  # ends that were dropped from a full queue
                                    ended[item.context.span_id] = end
                                    batch.append(started_copy(end))
                            else:
                                ctx = item.context
                                known = ended.pop(ctx.span_id) if ctx is not None and ctx.span_id in ended else None
                                batch.append(known if known is not None else record_from_span(item, PHASE_END))
                        except Exception:  # noqa: BLE001 - one odd span must not stop the stream
                            problems.warning("record", "otelflow: could not snapshot a span", exc_info=True)
                        continue
                    self._deliver(batch)
                    batch = []
                    if isinstance(item, _Flush):
                        self._flush_sink(item)
                    elif item is _STOP:
                        return
                self._deliver(batch)
        finally:
            stopped.set()

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
