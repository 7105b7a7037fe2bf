"""The live side wired: records are published through a backend, folded into the live state, and broadcast.

Contracts:

- :meth:`Hub.ingest` publishes one batch (call it on the hub's loop with at most :data:`INGEST_SLICE` records,
  yielding to the loop in between: publishing is synchronous with the in-memory backend).
  :meth:`Hub.ingest_threadsafe` takes records from any thread (the in-process sink): it never blocks or
  raises, wakes the loop once per batch of arrivals (not per call), and ingests them a slice at a time,
  letting the streams write in between. While records keep arriving, the hub yields to their producer:
  after a slice it waits nine times as long as the slice took before the next, so that it takes about a tenth
  of the interpreter at most while a burst lasts (the application's thread shares it), and it catches up at
  full speed once arrivals pause, once a record has waited :data:`MAX_LAG_S`, or once more than
  :data:`YIELD_BELOW` records wait (:func:`drain_wait`). The live view may thus trail a busy script by up to
  that long, not slow it down by as much as the viewer's own work.
- Every ``check_interval_s`` the hub asks the live state which decisions are due (silent workers, idle runs)
  and publishes them as a batch, so that they reach every live state sharing the backend; with a shared
  backend only the viewer that leads (:attr:`viewer.live.backends.Backend.leading`) decides.
- Queries (:meth:`Hub.run`, :meth:`Hub.resolve`, ...) and subscriptions delegate to the state and the
  broadcast; all of it runs on one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from otelflow import attributes as A
from otelflow.records import EventRecord, SpanRecord, lighten

from .backends import Backend, MemoryBackend
from .broadcast import Broadcast, Filters, Subscription, Tap
from .state import Batch, LiveState, RunState

__all__ = ["INGEST_SLICE", "MAX_LAG_S", "YIELD_BELOW", "Hub", "drain_wait"]

log = logging.getLogger("otelflow.viewer")

INGEST_SLICE: Final = 128  # records published at most in one batch (about 5 ms of work)
YIELD_BELOW: Final = 50_000  # records from this process waiting (under 1 KB each, lightened): beyond, no yielding
MAX_LAG_S: Final = 2.0  # no record from this process waits longer than this for its slice (seconds)
_YIELD_FACTOR: Final = 9.0  # the pause after a slice while records keep arriving, in multiples of its time


def drain_wait(pause_left: float, waiting: int, oldest_waited: float) -> float:
    """Seconds before the next slice of records from this process: what is left of the pause after the last
    slice (``pause_left``, negative when over), cut so that the oldest record waiting (for ``oldest_waited``
    seconds) is taken by :data:`MAX_LAG_S`; none once :data:`YIELD_BELOW` records wait."""
    if waiting >= YIELD_BELOW:
        return 0.0
    return max(0.0, min(pause_left, MAX_LAG_S - oldest_waited))


class Hub:
    """A backend, the live state and the broadcast, wired (see the module docstring)."""

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        ring_size: int = 10_000,
        ring_bytes: int = 64 * 1024 * 1024,
        queue_limit: int = 16_384,
        abandon_after_s: float = A.ABANDON_AFTER_S,
        idle_run_s: float = 300.0,
        check_interval_s: float = 1.0,
        max_ended_runs: int = 500,
        max_live_bytes: int = 256 * 1024 * 1024,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.state = LiveState(
            abandon_after_s=abandon_after_s,
            idle_run_s=idle_run_s,
            max_ended_runs=max_ended_runs,
            max_live_bytes=max_live_bytes,
        )
        self.broadcast = Broadcast(ring_size=ring_size, ring_bytes=ring_bytes, queue_limit=queue_limit)
        self.backend: Backend = backend or MemoryBackend()
        self.backend.bind(self._deliver)
        self.check_interval_s = check_interval_s
        self._clock_ns = clock_ns
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: list[list[SpanRecord]] = []
        self._early_lock = threading.Lock()
        # batches from other threads, for the loop to ingest, with when each arrived (time.monotonic)
        self._inbox: deque[tuple[float, list[SpanRecord]]] = deque()
        self._inbox_scheduled = False
        # Counters with one writer each (the sink calls ingest_threadsafe on one thread at a time): records
        # handed over and records taken; batches handed over, and as many as the last drain had seen.
        self._records_in = 0
        self._records_out = 0
        self._arrivals = 0
        self._arrivals_seen = 0
        self._next_drain = 0.0  # loop time before which no drain starts while records keep arriving
        self._task: asyncio.Task[None] | None = None
        self._stats: dict[str, int] = {"dropped_early": 0, "checks": 0, "logs_without_span": 0, "logs_rejected": 0}
        self._last_error_log = 0.0

    # ------------------------------------------------------------------ lifecycle

    def restore(self, runs: Iterable[Mapping[str, Any]], spans: Iterable[SpanRecord]) -> None:
        """Load runs that were live when the viewer last stopped (from the history), before :meth:`start`."""
        self.state.restore(runs, spans, self._clock_ns())

    async def start(self) -> None:
        """Bind to the running loop, start the backend and the checker, ingest what came in before."""
        self._loop = asyncio.get_running_loop()
        await self.backend.start()
        with self._early_lock:
            early, self._early = self._early, []
        for records in early:
            self.ingest(records, local=True)
        self._task = asyncio.create_task(self._check_loop(), name="otelflow-hub-checks")

    async def stop(self) -> None:
        """Stop the checker and the backend (call :meth:`shutdown` first to close subscribers)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.backend.stop()

    def shutdown(self) -> None:
        """Publish the records from this process that still wait for their slice (:func:`drain_wait`), then
        ``shutdown``, and close every subscription once its queue is delivered. Call it on the loop. Idempotent."""
        while self._inbox:  # the script's last spans (a Ctrl-C's cancelled ends) reach the streams and the history
            self.ingest(self._take_slice(), local=True)
        self.broadcast.shutdown()

    # ------------------------------------------------------------------ ingesting

    def now_ns(self) -> int:
        """The hub's clock (wall, ns): what batches say about when they arrived."""
        return self._clock_ns()

    def publish(self, batch: Batch) -> None:
        """Publish a batch as it is."""
        self.backend.publish(batch)

    def ingest(self, records: Sequence[SpanRecord], workers: Iterable[str] = (), *, local: bool = False) -> None:
        """Publish a batch of records (and the worker ids heard from with them)."""
        self.backend.publish(Batch(records, tuple(workers), self._clock_ns(), local))

    def ingest_logs(self, events: Sequence[tuple[str, str, EventRecord]]) -> None:
        """Publish events from log records, each for the span it names (trace id, span id); at most
        :data:`INGEST_SLICE` at a time, as :meth:`ingest`."""
        self.backend.publish(Batch(at_ns=self._clock_ns(), logs=events))

    def count_logs(self, *, without_span: int = 0, rejected: int = 0) -> None:
        """Count log records that join no span (no trace or span id) and records that could not be read."""
        self._stats["logs_without_span"] += without_span
        self._stats["logs_rejected"] += rejected

    def touch(self, workers: Iterable[str]) -> None:
        """A sign of life (a heartbeat) from these workers, with no records."""
        workers = tuple(workers)
        if workers:
            self.backend.publish(Batch((), workers, self._clock_ns()))

    def _deliver(self, batch: Batch) -> None:
        try:
            entry = batch.entry
            if entry is not None and entry.first and self.broadcast.align(entry):
                for run in self.state.runs():
                    run.first_seq = 0  # the ring started again: a run's replay must not point into the old one
            changes = self.state.apply(batch)
            self.broadcast.publish(changes, batch)
        except Exception:  # noqa: BLE001 - a bug here must not take the receiver down with it
            self._log_error("could not apply a batch")

    def ingest_threadsafe(self, records: Sequence[SpanRecord]) -> None:
        """Ingest from any thread (the in-process sink's callback). Never blocks, never raises.

        Records ingested this way come from the viewer's own process, so their worker never goes silent.
        Before :meth:`start` they are kept (at most 10,000 batches).
        """
        try:
            batch = records if type(records) is list else list(records)  # a list is never changed here
            lighten(batch)  # they may wait a while for their slice (see drain_wait)
            loop = self._loop
            if loop is None:
                with self._early_lock:
                    if len(self._early) < 10_000:
                        self._early.append(batch)
                    else:
                        self._stats["dropped_early"] += len(batch)
                return
            # Coalesce wake-ups: the in-process sink may call this once per span, and each call_soon_threadsafe
            # writes to the loop's self-pipe. One scheduled drain takes every batch that arrived meanwhile.
            self._inbox.append((time.monotonic(), batch))
            self._records_in += len(batch)
            self._arrivals += 1
            if not self._inbox_scheduled:
                self._inbox_scheduled = True
                loop.call_soon_threadsafe(self._schedule_drain)
        except RuntimeError:  # loop closed: the viewer is gone, the workflow must not notice
            self._stats["dropped_early"] += len(records)
        except Exception:  # noqa: BLE001 - never raise into the instrumented program
            self._log_error("ingest_threadsafe failed")

    def _schedule_drain(self) -> None:
        """On the loop: drain now, or once the pause after the last slice is over."""
        assert self._loop is not None
        inbox = self._inbox
        oldest_waited = time.monotonic() - inbox[0][0] if inbox else 0.0
        wait = drain_wait(self._next_drain - self._loop.time(), self._records_in - self._records_out, oldest_waited)
        if wait > 0:
            self._loop.call_later(wait, self._drain_inbox)
        else:
            self._drain_inbox()

    def _take_slice(self) -> list[SpanRecord]:
        """The inbox's next records, at most :data:`INGEST_SLICE`, in order (counted as taken)."""
        inbox = self._inbox
        records: list[SpanRecord] = []
        while inbox and len(records) < INGEST_SLICE:
            arrived, batch = inbox[0]
            room = INGEST_SLICE - len(records)
            if len(batch) <= room:
                records += batch
                inbox.popleft()
            else:
                records += batch[:room]
                inbox[0] = (arrived, batch[room:])
        self._records_out += len(records)
        return records

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False  # first: a batch appended from now on schedules another drain
        inbox = self._inbox
        records = self._take_slice()
        loop = self._loop
        began = loop.time() if loop is not None else 0.0
        try:
            if records:
                self.ingest(records, local=True)
        finally:
            if loop is not None:
                arrivals = self._arrivals
                if arrivals != self._arrivals_seen:  # records arrived since the last slice: a producer is busy
                    self._next_drain = loop.time() + (loop.time() - began) * _YIELD_FACTOR
                self._arrivals_seen = arrivals
                if inbox and not self._inbox_scheduled:
                    # a burst: ingest it a slice at a time, letting the streams write in between
                    self._inbox_scheduled = True
                    loop.call_soon(self._schedule_drain)

    # ------------------------------------------------------------------ time-based decisions

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the checker must outlive any bug
                self._log_error("the heartbeat check failed")

    def check(self) -> None:
        """Publish the decisions that are due now (workers gone silent, runs gone quiet); behind a shared backend,
        only the viewer that leads takes them (they reach every viewer through the backend)."""
        if not self.backend.leading:
            return
        self._stats["checks"] += 1
        batch = self.state.due(self._clock_ns())
        if batch is not None:
            self.backend.publish(batch)

    def _log_error(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10.0:
            self._last_error_log = now
            log.exception(message, *args)

    # ------------------------------------------------------------------ the state and the broadcast

    def tap(self, tap: Tap) -> None:
        """Give ``tap`` every event with its batch (the history writer)."""
        self.broadcast.tap(tap)

    def resolve(self, key: str) -> str | None:
        return self.state.resolve(key)

    def run(self, key: str) -> RunState | None:
        return self.state.run(key)

    def runs(self) -> list[RunState]:
        return self.state.runs()

    @property
    def stats(self) -> dict[str, int]:
        return {**self.state.stats, **self.broadcast.stats, **self._stats}

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
        """Subscribe (see :meth:`viewer.live.broadcast.Broadcast.open`); ``replay_run`` replays the runs the
        filters name from their first event."""
        replay: list[RunState] = []
        if replay_run and filters is not None and filters.run:
            replay = [run for key in filters.run if (run := self.state.run(key)) is not None]
        return self.broadcast.open(
            filters, last_event_id, until_run_end=until_run_end, replay=replay, limit=limit, wake=wake
        )

    def release(self, sub: Subscription) -> None:
        self.broadcast.release(sub)
