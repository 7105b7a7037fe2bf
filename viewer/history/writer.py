"""The writer thread every history store has: rows queued without blocking, written in order, kept and retried
while the database refuses them, reads answered in turn.

Contracts:

- :meth:`BacklogWriter.put` queues a batch of rows and never blocks. The thread takes what is queued (about
  5,000 rows at a time) and writes the backlog in transactions of about ``_CHUNK_ROWS`` rows
  (:meth:`BacklogWriter.write`, the store's), then answers the reads queued with them: while the database
  works, a read sees every write queued before it.
- When the database refuses a write, the rows stay in the backlog, in order, and the write is retried with
  backoff (50 ms doubling to 2 s); ``failure`` says why meanwhile. When a chunk fails with one of the store's
  ``data_errors`` (a value the database cannot hold), :meth:`BacklogWriter.write_one_by_one` writes its rows
  alone and drops (counts, logs) those that still fail.
- A chunk's ``journal_end`` commits with its rows; ``journal_pos`` is then the last one committed and
  :meth:`BacklogWriter.position_committed` is told.
- Retention (:meth:`BacklogWriter.retention`) runs when the thread starts and once a minute while writes
  succeed; :meth:`BacklogWriter.retention_now` asks for it on the next turn.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from otelflow import attributes as A

from .name_stats import HOUR_NS
from .rows import Rows

__all__ = ["BacklogWriter", "rate_limited"]

log = logging.getLogger("otelflow.viewer")

_last_logged: dict[str, float] = {}


def rate_limited(emit: Callable[..., None], message: str, *args: Any) -> None:
    """Log ``message`` at most once every 10 s."""
    now = time.monotonic()
    if now - _last_logged.get(message, -1e9) >= 10.0:
        _last_logged[message] = now
        emit(message, *args)


class _Read:
    """A read to run on the writer's thread, in turn (``fn`` gets the writer's connection)."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[Any], Any], future: concurrent.futures.Future[Any]) -> None:
        self.fn = fn
        self.future = future


def _no_read(_conn: Any) -> None:
    """A read that needs no connection (:meth:`BacklogWriter.barrier`)."""


_STOP: Final = object()
_CHUNK_ROWS: Final = 20_000  # rows per transaction when a backlog is written
_RETRY_FIRST_S: Final = 0.05
_RETRY_MAX_S: Final = 2.0


class BacklogWriter:
    """The thread and its backlog (see the module docstring); a store says how to write, read and trim."""

    data_errors: tuple[type[BaseException], ...] = (OverflowError, ValueError, TypeError)
    thread_name = "otelflow-history"

    def __init__(self, *, retention_days: float | None, max_runs: int | None) -> None:
        self.retention_days = retention_days
        self.max_runs = max_runs
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Queued (loop thread) and done (writer thread: committed, or dropped as unwritable) batches, rows and
        # bytes; each counter is written by one thread only. What is queued and not done is the backlog.
        self._queued_seq = 0
        self._queued_rows = 0
        self._queued_bytes = 0
        self._done_seq = 0
        self._done_rows = 0
        self._done_bytes = 0
        self.journal_pos = 0  # committed: the store holds the input up to here
        # ended runs at the last retention, and ended runs written since (an upper bound: a run written twice
        # counts twice): retention runs as soon as their sum passes max_runs, not only once a minute
        self.runs_known = 0
        self.ended_since = 0
        self.failure: str | None = None  # why the last write failed, while the backlog waits; None when healthy
        self.failing_since: float | None = None  # time.time() of the first failure of the current outage
        self.stats: dict[str, int] = {
            "spans": 0,
            "events": 0,
            "runs": 0,
            "alerts": 0,
            "errors": 0,
            "batches": 0,
            "retries": 0,
            "dropped_rows": 0,
            "trimmed_for_size": 0,
        }

    # ------------------------------------------------------------------ what a store provides

    def connection(self) -> Any:
        """What reads queued on the thread get (the store's connection)."""
        raise NotImplementedError

    def write(self, rows: Rows) -> None:
        """Write ``rows`` in one transaction (with ``rows.journal_end`` when set); nothing left open on error."""
        raise NotImplementedError

    def write_one_by_one(self, rows: Rows) -> None:
        """Write ``rows`` alone, dropping (counting) those that cannot be written; raises when the database
        refuses."""
        raise NotImplementedError

    def retention(self) -> None:
        """Apply retention (in its own transactions)."""
        raise NotImplementedError

    def abandon(self) -> None:
        """A write failed: roll back whatever is open."""

    def after_backlog(self) -> None:
        """The backlog was written (a store may hold its size here)."""

    def position_committed(self, end: int) -> None:
        """Rows up to the input position ``end`` committed."""

    def close(self) -> None:
        """The thread stops: close the connection."""

    def trim_due(self, rows: Rows) -> tuple[int, bool]:
        """How many ended runs ``rows`` write, and whether their transaction must trim the runs to ``max_runs``:
        it could take the history past 1.05 x ``max_runs`` ended runs (5% of slack: a trim, a scan of the runs
        index, once every ``max_runs`` / 20 ended runs, not every write)."""
        ended = sum(1 for row in rows.runs.values() if row[4] != A.STATUS_RUNNING)
        over = self.max_runs is not None and self.runs_known + self.ended_since + ended > self.max_runs * 1.05
        return ended, over

    def counted(self, ended: int, remaining: int | None) -> None:
        """A write of ``ended`` ended runs committed; ``remaining``: the ended runs its trim left (``None``: none)."""
        if remaining is not None:
            self.runs_known, self.ended_since = remaining, 0
        else:
            self.ended_since += ended

    def alert_retention(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements (``?`` marks) by which resolved alerts leave after ``retention_days`` and beyond the
        newest 10,000 (open ones stay), and hourly statistics after ``retention_days``."""
        statements: list[tuple[str, tuple[Any, ...]]] = []
        if self.retention_days is not None:
            cutoff = time.time_ns() - int(self.retention_days * 86400e9)
            statements += [
                ("DELETE FROM alerts WHERE status = 'resolved' AND resolved_ns < ?", (cutoff,)),
                ("DELETE FROM name_stats WHERE hour >= 0 AND hour < ?", (cutoff // HOUR_NS,)),
                ("DELETE FROM model_stats WHERE hour >= 0 AND hour < ?", (cutoff // HOUR_NS,)),
            ]
        statements.append(
            (
                "DELETE FROM alerts WHERE status = 'resolved' AND alert_id NOT IN "
                "(SELECT alert_id FROM alerts WHERE status = 'resolved' ORDER BY fired_ns DESC LIMIT 10000)",
                (),
            )
        )
        return statements

    # ------------------------------------------------------------------ the loop's side

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the thread and close the connection."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def put(self, rows: Rows) -> None:
        """Queue rows (numbered in order); never blocks."""
        self._queued_seq += 1
        rows.seq = self._queued_seq
        self._queued_rows += len(rows)
        self._queued_bytes += rows.nbytes
        self._queue.put(rows)

    def read(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn(connection)`` on the thread, after the writes queued before it were tried."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Read(fn, future))
        return future

    def barrier(self) -> concurrent.futures.Future[Any]:
        """Done once the writes queued before it were tried (no connection needed)."""
        return self.read(_no_read)

    def retention_now(self) -> None:
        """Apply retention on the next turn."""
        self._queue.put(_Read(lambda _conn: self.retention(), concurrent.futures.Future()))

    @property
    def pending(self) -> bool:
        """Some batch queued was not yet committed (or given up)."""
        return self._queued_seq != self._done_seq

    @property
    def backlog_rows(self) -> int:
        """Rows queued and not yet committed."""
        return self._queued_rows - self._done_rows

    @property
    def backlog_bytes(self) -> int:
        """About how many bytes of text the rows queued and not yet committed hold."""
        return self._queued_bytes - self._done_bytes

    # ------------------------------------------------------------------ the thread

    def _sweep(self) -> None:
        try:
            self.retention()
        except Exception:  # noqa: BLE001 - the next sweep tries again
            self.stats["errors"] += 1
            rate_limited(log.exception, "retention failed")

    def _run(self) -> None:
        # Retention sweeps once when the store opens, then at most once a minute while writes succeed. (A first
        # sweep right after the first batch could remove what that batch just wrote, when it has old timestamps.)
        self._sweep()
        backlog: collections.deque[Rows] = collections.deque()  # taken from the queue, not yet committed
        state = {"last_retention": time.monotonic(), "retry_at": 0.0, "delay": 0.0}
        while True:
            try:
                if self._step(backlog, state):
                    return
            except Exception:  # the writer must outlive any bug; its rows stay in the backlog
                self.stats["errors"] += 1
                log.exception("history writer failed")
                self.abandon()

    def _step(self, backlog: collections.deque[Rows], state: dict[str, float]) -> bool:
        """Take what is queued (up to about 5000 rows), try to write the backlog, answer the reads taken;
        ``True`` when told to stop."""
        timeout = None if not backlog else max(0.0, state["retry_at"] - time.monotonic())
        try:
            item: Any = self._queue.get(timeout=timeout)
        except queue.Empty:
            item = None
        reads: list[_Read] = []
        stop = False
        taken = 0
        while item is not None:
            if isinstance(item, Rows):
                backlog.append(item)
                taken += len(item)
            elif isinstance(item, _Read):
                reads.append(item)
            elif item is _STOP:
                stop = True
                break
            if taken >= 5000:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        try:
            if backlog and (stop or time.monotonic() >= state["retry_at"]):
                if self._write_backlog(backlog):
                    state["delay"] = 0.0
                else:
                    state["delay"] = min(_RETRY_MAX_S, max(_RETRY_FIRST_S, state["delay"] * 2))
                    state["retry_at"] = time.monotonic() + state["delay"]
        finally:
            for op in reads:  # after the writes queued before them were tried: read-your-writes while healthy
                self._read(op)
        now = time.monotonic()
        if not backlog and now - state["last_retention"] > 60.0:
            state["last_retention"] = now
            self._sweep()
        if stop:
            if backlog:
                lost = sum(len(r) for r in backlog)
                log.error("history database unusable at shutdown (%s): %d rows not written", self.failure, lost)
            self.close()
            return True
        return False

    def _write_backlog(self, backlog: collections.deque[Rows]) -> bool:
        """Write the backlog in order, in transactions of about ``_CHUNK_ROWS`` rows; ``False`` (the rest kept)
        when the database refuses."""
        while backlog:
            chunk = Rows()
            count = 0
            while backlog and (count == 0 or count + len(backlog[0]) <= _CHUNK_ROWS):
                count += len(backlog[0])
                chunk.merge(backlog[0])
                backlog.popleft()
            try:
                try:
                    self.write(chunk)
                except self.data_errors:
                    self.abandon()
                    self.write_one_by_one(chunk)
            except Exception as exc:  # noqa: BLE001 - the database refused (locked, full, down, I/O): retry later
                backlog.appendleft(chunk)
                self._failed(exc)
                return False
            self._done(chunk)
            if chunk.journal_end:
                self.journal_pos = max(self.journal_pos, chunk.journal_end)
                self.position_committed(chunk.journal_end)
        self.after_backlog()
        if self.failure is not None:
            log.warning("history writes work again; the backlog is written")
        self.failure = None
        self.failing_since = None
        return True

    def _failed(self, exc: BaseException) -> None:
        self.abandon()
        self.stats["errors"] += 1
        self.stats["retries"] += 1
        if self.failure is None:
            self.failing_since = time.time()
            log.error("history writes fail (%s); keeping the rows and retrying", exc)
        self.failure = " ".join(str(exc).split()) or type(exc).__name__

    def _read(self, op: _Read) -> None:
        if op.future.set_running_or_notify_cancel():
            try:
                op.future.set_result(None if op.fn is _no_read else op.fn(self.connection()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                op.future.set_exception(exc)

    def _done(self, rows: Rows) -> None:
        """``rows`` (a whole number of queued batches, in order) are committed or given up."""
        self._done_seq = max(self._done_seq, rows.seq)
        self._done_rows += len(rows)
        self._done_bytes += rows.nbytes
