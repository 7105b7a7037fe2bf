"""The SQLite history's writer thread: one connection, rows written in order, failures retried, reads in turn.

Contracts:

- :meth:`SqliteWriter.put` queues a batch of rows and never blocks. The thread takes what is queued (about
  5,000 rows at a time), writes it in one transaction, then answers the reads queued with it: while the
  database works, a read sees every write queued before it.
- When the database refuses a write (locked, full, read-only, I/O error), the rows stay in a backlog, in
  order, and the write is retried with backoff (50 ms doubling to 2 s); ``failure`` says why meanwhile. A row
  that can never be written (a value SQLite cannot hold) is dropped alone, counted and logged. No
  transaction is left open after any error.
- The intake log's position rides with the rows (``Rows.journal_end``) and is committed with them; committed
  segments of the log are then released.
- Retention runs when the writer starts and once a minute while writes succeed: runs that ended more than
  ``retention_days`` ago, and the oldest ended runs beyond ``max_runs``, leave with their spans and events
  (running runs never). A write that could take the history past 1.05 x ``max_runs`` ended runs trims it
  back to ``max_runs`` in its own transaction, so no commit holds more. After each write, when the pages in
  use pass ``max_db_bytes``, the oldest ended runs leave until they are back under 90% of it. Resources no
  span refers to leave with the retention that runs once a minute.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from otelflow import attributes as A

from .journal import Journal
from .model_stats import add_calls
from .name_stats import HOUR_NS, add_spans
from .rows import ALERT_WIDTH, EVENT_WIDTH, RUN_WIDTH, SEQ_BITS, SPAN_WIDTH, TYPE_CODES, Rows

__all__ = ["SqliteWriter", "resource_id"]

log = logging.getLogger("otelflow.viewer")

_last_logged: dict[str, float] = {}


def _rate_limited(emit: Callable[..., None], message: str, *args: Any) -> None:
    """Log ``message`` at most once every 10 s."""
    now = time.monotonic()
    if now - _last_logged.get(message, -1e9) >= 10.0:
        _last_logged[message] = now
        emit(message, *args)


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, width: int, rows: int) -> str:
    """``head VALUES (?, ...), (?, ...)``: ``rows`` rows of ``width`` parameters in one statement."""
    one = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([one] * rows)}"


def _delete_runs(conn: sqlite3.Connection, traces: list[tuple[str]]) -> None:
    """Delete these runs (``(trace_id,)`` rows) with their spans and events, inside the caller's transaction."""
    for table in ("runs", "spans", "events"):
        conn.executemany(f"DELETE FROM {table} WHERE trace_id = ?", traces)  # noqa: S608


def resource_id(conn: sqlite3.Connection, data: str) -> int:
    """The id of the row of ``resources`` holding this resource JSON, inserted if new (in the caller's
    transaction)."""
    conn.execute("INSERT OR IGNORE INTO resources (data) VALUES (?)", (data,))
    return int(conn.execute("SELECT id FROM resources WHERE data = ?", (data,)).fetchone()[0])


def _insert_many(conn: sqlite3.Connection, head: str, values: list[Any], width: int, max_vars: int) -> None:
    """Insert rows of ``width`` values, given flat, with multi-row ``VALUES`` statements (not ``executemany``).

    Each SQLite step releases the GIL and must take it back; row by row, a busy event loop thread makes the
    writer wait for the GIL once per row. Chunk sizes are powers of two (besides the full chunk) so that few
    distinct statements exist and the statement cache keeps them prepared.
    """
    rows = len(values) // width
    full = max(1, max_vars // width)
    i = 0
    while i < rows:
        left = rows - i
        n = full if left >= full else 1 << (left.bit_length() - 1)
        conn.execute(_values_sql(head, width, n), values[i * width : (i + n) * width])
        i += n


class _Read:
    """A read to run on the writer's connection, in turn."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: concurrent.futures.Future[Any]) -> None:
        self.fn = fn
        self.future = future


_STOP: Final = object()
_RESOURCES_KEPT: Final = 1_000  # distinct resources kept before retention looks for unused ones
_CHUNK_ROWS: Final = 20_000  # rows per transaction when a backlog is written
_RETRY_FIRST_S: Final = 0.05
_RETRY_MAX_S: Final = 2.0
# Errors of the data, not of the database: retrying cannot help, so the offending rows are written one by
# one and those that still fail are dropped. Everything else (locked, full, read-only, I/O) is retried.
_DATA_ERRORS: Final = (
    OverflowError,
    ValueError,
    TypeError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
)


class SqliteWriter:
    """The thread that owns the connection (see the module docstring)."""

    def __init__(
        self,
        *,
        retention_days: float | None,
        max_runs: int | None,
        max_db_bytes: int | None = None,
        max_vars: int = 999,
    ) -> None:
        self.retention_days = retention_days
        self.max_runs = max_runs
        self.max_db_bytes = max_db_bytes
        self.max_vars = max_vars
        self.journal: Journal | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        # Queued (loop thread) and done (writer thread: committed, or dropped as unwritable) batches, rows and
        # bytes; each counter is written by one thread only. What is queued and not done is the backlog.
        self._queued_seq = 0
        self._queued_rows = 0
        self._queued_bytes = 0
        self._done_seq = 0
        self._done_rows = 0
        self._done_bytes = 0
        self.journal_pos = 0  # committed: the intake log is in the database up to here
        # ended runs at the last retention, and ended runs written since (an upper bound: a run written twice
        # counts twice): retention runs as soon as their sum passes max_runs, not only once a minute
        self._runs_known = 0
        self._ended_since = 0
        # epoch -> ordinal (event ids are stored as integers) and resource JSON -> id, as committed
        self._ordinals: dict[str, int] = {}
        self._resources: dict[str, int] = {}
        self._pending_ordinals: dict[str, int] = {}  # of the transaction under way
        self._pending_resources: dict[str, int] = {}
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

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._ordinals = dict(conn.execute("SELECT epoch, ordinal FROM epochs"))
        self._thread = threading.Thread(target=self._run, name="otelflow-history", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the thread and close the connection."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    # ------------------------------------------------------------------ the loop's side

    def put(self, rows: Rows) -> None:
        """Queue rows (numbered in order); never blocks."""
        self._queued_seq += 1
        rows.seq = self._queued_seq
        self._queued_rows += len(rows)
        self._queued_bytes += rows.nbytes
        self._queue.put(rows)

    def read(self, fn: Callable[[sqlite3.Connection], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn(connection)`` on the thread, after the writes queued before it were tried."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put(_Read(fn, future))
        return future

    def retention_now(self) -> None:
        """Apply retention on the next turn."""
        self._queue.put(_Read(self._retention, concurrent.futures.Future()))

    @property
    def backlog_rows(self) -> int:
        """Rows queued and not yet committed."""
        return self._queued_rows - self._done_rows

    @property
    def backlog_bytes(self) -> int:
        """About how many bytes of text the rows queued and not yet committed hold."""
        return self._queued_bytes - self._done_bytes

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        conn = self._conn
        assert conn is not None
        # Retention sweeps once when the store opens, then at most once a minute while writes succeed. (A first
        # sweep right after the first batch could remove what that batch just wrote, when it has old timestamps.)
        try:
            self._retention(conn)
        except sqlite3.Error:
            self.stats["errors"] += 1
            log.exception("retention failed")
        backlog: collections.deque[Rows] = collections.deque()  # taken from the queue, not yet committed
        state = {"last_retention": time.monotonic(), "retry_at": 0.0, "delay": 0.0}
        while True:
            try:
                if self._step(conn, backlog, state):
                    return
            except Exception:  # the writer must outlive any bug; its rows stay in the backlog
                self.stats["errors"] += 1
                log.exception("history writer failed")
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")

    def _step(self, conn: sqlite3.Connection, backlog: collections.deque[Rows], state: dict[str, float]) -> bool:
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
                if self._write_backlog(conn, backlog):
                    state["delay"] = 0.0
                else:
                    state["delay"] = min(_RETRY_MAX_S, max(_RETRY_FIRST_S, state["delay"] * 2))
                    state["retry_at"] = time.monotonic() + state["delay"]
        finally:
            for op in reads:  # after the writes queued before them were tried: read-your-writes while healthy
                self._read(conn, op)
        now = time.monotonic()
        if not backlog and now - state["last_retention"] > 60.0:
            state["last_retention"] = now
            try:
                self._retention(conn)
            except sqlite3.Error:
                self.stats["errors"] += 1
                log.exception("retention failed")
        if stop:
            if backlog:
                lost = sum(len(r) for r in backlog)
                log.error("history database unusable at shutdown (%s): %d rows not written", self.failure, lost)
            conn.close()
            return True
        return False

    def _write_backlog(self, conn: sqlite3.Connection, backlog: collections.deque[Rows]) -> bool:
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
                    self._write(conn, chunk)
                except _DATA_ERRORS:
                    self._write_one_by_one(conn, chunk)
            except Exception as exc:  # noqa: BLE001 - the database refused (locked, full, read-only, I/O): retry later
                backlog.appendleft(chunk)
                self._failed(conn, exc)
                return False
            self._done(chunk)
            if chunk.journal_end:
                self.journal_pos = chunk.journal_end
                if self.journal is not None:
                    self.journal.release(chunk.journal_end)
        if self.max_db_bytes is not None:
            try:
                self._hold_size(conn)
            except sqlite3.Error as exc:  # what was written stays written; the next write tries again
                self.stats["errors"] += 1
                _rate_limited(log.error, "history size limit not applied: %s", exc)
        if self.failure is not None:
            log.warning("history writes work again; the backlog is written")
        self.failure = None
        self.failing_since = None
        return True

    def _failed(self, conn: sqlite3.Connection, exc: BaseException) -> None:
        self._rollback(conn)
        self.stats["errors"] += 1
        self.stats["retries"] += 1
        if self.failure is None:
            self.failing_since = time.time()
            log.error("history writes fail (%s); keeping the rows and retrying", exc)
        self.failure = str(exc) or type(exc).__name__

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def _tables(self, conn: sqlite3.Connection, rows: Rows) -> tuple[tuple[str, list[Any], int, str], ...]:
        """Inside the transaction: ``(insert statement head, flat values, row width, stats key)`` of each table,
        in writing order, with event ids and types as integers and resources as references (new epochs and
        resources are inserted on the way; :meth:`_committed` keeps them once the transaction commits)."""
        return (
            ("INSERT OR REPLACE INTO spans", self._span_values(conn, rows.spans), SPAN_WIDTH, "spans"),
            ("INSERT OR REPLACE INTO runs", [v for row in rows.runs.values() for v in row], RUN_WIDTH, "runs"),
            ("INSERT OR REPLACE INTO events", self._event_values(conn, rows.events), EVENT_WIDTH, "events"),
            ("INSERT OR REPLACE INTO alerts", [v for row in rows.alerts.values() for v in row], ALERT_WIDTH, "alerts"),
        )

    def _event_values(self, conn: sqlite3.Connection, flat: list[Any]) -> list[Any]:
        """``(trace_id, event_id, type, span_id, data)`` rows as ``(trace_id, n, type code, span_id, data)``."""
        out = flat[:]
        ordinals, codes = self._ordinals, TYPE_CODES
        pending = self._pending_ordinals
        for i in range(0, len(out), EVENT_WIDTH):
            epoch, _, seq = out[i + 1].partition(".")
            ordinal = ordinals.get(epoch) or pending.get(epoch)
            if ordinal is None:
                ordinal = pending[epoch] = max([0, *ordinals.values(), *pending.values()]) + 1
                conn.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?)", (epoch, ordinal))
            out[i + 1] = ordinal << SEQ_BITS | (int(seq) if seq.isdigit() else 0)
            out[i + 2] = codes.get(out[i + 2], out[i + 2])
        return out

    def _span_values(self, conn: sqlite3.Connection, flat: list[Any]) -> list[Any]:
        """Span rows with their resource JSON as the id of its row in ``resources`` (``NULL`` for none)."""
        out = flat[:]
        resources, pending = self._resources, self._pending_resources
        last, last_id = None, None
        for i in range(SPAN_WIDTH - 1, len(out), SPAN_WIDTH):
            data = out[i]
            if data is not last:
                last = data
                last_id = resources.get(data) or pending.get(data) if data else None
                if last_id is None and data:
                    last_id = pending[data] = resource_id(conn, data)
            out[i] = last_id
        return out

    def _committed(self) -> None:
        self._ordinals.update(self._pending_ordinals)
        if len(self._resources) + len(self._pending_resources) > 10_000:
            self._resources.clear()  # a cache: ids are looked up again
        self._resources.update(self._pending_resources)
        self._pending_ordinals.clear()
        self._pending_resources.clear()

    def _transaction(self, conn: sqlite3.Connection, rows: Rows, insert: Callable[[], None]) -> None:
        """``insert()`` and the intake log's position in one transaction; nothing left open after any error."""
        self._pending_ordinals.clear()
        self._pending_resources.clear()
        conn.execute("BEGIN")
        try:
            insert()
            if rows.journal_end:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('journal', ?)", (str(rows.journal_end),))
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        self._committed()

    def _write(self, conn: sqlite3.Connection, rows: Rows) -> None:
        """One transaction with every row; raises what SQLite (or binding a value) raises."""
        if not (len(rows) or rows.journal_end):
            return
        tables: tuple[tuple[str, list[Any], int, str], ...] = ()

        ended = sum(1 for row in rows.runs.values() if row[4] != A.STATUS_RUNNING)
        # 5% of slack: a trim (a scan of the runs index) once every max_runs / 20 ended runs, not every write
        over = self.max_runs is not None and self._runs_known + self._ended_since + ended > self.max_runs * 1.05
        held: list[int] = []

        def insert() -> None:
            nonlocal tables
            tables = self._tables(conn, rows)
            for head, values, width, _ in tables:
                _insert_many(conn, head, values, width, self.max_vars)
            add_spans(conn, rows.spans)
            add_calls(conn, rows.llm)
            if over:  # in the same transaction: no commit holds more than 1.05 x max_runs ended runs
                held.append(self._trim_runs(conn))

        self._transaction(conn, rows, insert)
        for _, values, width, stat in tables:
            self.stats[stat] += len(values) // width
        self.stats["batches"] += 1
        if held:
            self._runs_known, self._ended_since = held[0], 0
        else:
            self._ended_since += ended

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        """Bytes of the database's pages in use (not on the free list): two reads of its header."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])

    def _hold_size(self, conn: sqlite3.Connection) -> None:
        """Past ``max_db_bytes`` in use, delete the oldest ended runs (with their spans and events) down to 90% of
        it, in one transaction; freed pages are reused by later writes, so the file stops growing about there."""
        assert self.max_db_bytes is not None
        used = self._used_bytes(conn)
        if used <= self.max_db_bytes:
            return
        goal = self.max_db_bytes * 0.9
        conn.execute("BEGIN")
        try:
            for _ in range(8):  # rows do not fill their pages evenly: estimate, delete, measure again
                runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                ended = conn.execute("SELECT COUNT(*) FROM runs WHERE status != ?", (A.STATUS_RUNNING,)).fetchone()[0]
                if not ended:
                    _rate_limited(
                        log.warning, "the history is past --max-db-mb and holds only running runs: nothing to delete"
                    )
                    break
                drop = max(1, math.ceil((used - goal) / (used / max(1, runs))))
                oldest = conn.execute(
                    "SELECT trace_id FROM runs WHERE status != ? ORDER BY start_ns LIMIT ?", (A.STATUS_RUNNING, drop)
                ).fetchall()
                _delete_runs(conn, oldest)
                self.stats["trimmed_for_size"] += len(oldest)
                used = self._used_bytes(conn)
                if used <= goal:
                    break
            self._runs_known = conn.execute(
                "SELECT COUNT(*) FROM runs WHERE status != ?", (A.STATUS_RUNNING,)
            ).fetchone()[0]
            self._ended_since = 0
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise

    def _write_one_by_one(self, conn: sqlite3.Connection, rows: Rows) -> None:
        """Write row by row in one transaction, dropping (and counting) the rows that cannot be written;
        raises ``sqlite3.Error`` when the database itself refuses."""
        dropped = 0

        def insert() -> None:
            nonlocal dropped
            for head, values, width, stat in self._tables(conn, rows):
                for i in range(0, len(values), width):
                    try:
                        conn.execute(_values_sql(head, width, 1), values[i : i + width])
                        self.stats[stat] += 1
                    except _DATA_ERRORS as exc:
                        dropped += 1
                        _rate_limited(log.error, "a history row cannot be written and is dropped: %s", exc)
            add_spans(conn, rows.spans)
            add_calls(conn, rows.llm)

        self._transaction(conn, rows, insert)
        self.stats["dropped_rows"] += dropped
        self.stats["errors"] += 1 if dropped else 0

    def _read(self, conn: sqlite3.Connection, op: _Read) -> None:
        if op.future.set_running_or_notify_cancel():
            try:
                op.future.set_result(op.fn(conn))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                op.future.set_exception(exc)

    def _retention(self, conn: sqlite3.Connection) -> None:
        self._alert_retention(conn)
        conn.execute("BEGIN")
        try:
            if self.retention_days is not None:
                cutoff = time.time_ns() - int(self.retention_days * 86400e9)
                old = conn.execute(
                    "SELECT trace_id FROM runs WHERE status != ? AND COALESCE(end_ns, start_ns) < ?",
                    (A.STATUS_RUNNING, cutoff),
                ).fetchall()
                _delete_runs(conn, old)
            if self.max_runs is not None:
                self._runs_known, self._ended_since = self._trim_runs(conn), 0
            dropped = self._drop_unused_resources(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        if dropped:
            self._resources.clear()  # ids of deleted rows may be given again: look them up anew

    @staticmethod
    def _drop_unused_resources(conn: sqlite3.Connection) -> int:
        """Inside a transaction: delete the resources no span refers to any more, once there are more than
        ``_RESOURCES_KEPT`` (a sender may put a value of its own in each request's resource); how many left."""
        if conn.execute("SELECT COUNT(*) FROM resources").fetchone()[0] <= _RESOURCES_KEPT:
            return 0
        return conn.execute(
            "DELETE FROM resources WHERE id NOT IN (SELECT resource FROM spans WHERE resource IS NOT NULL)"
        ).rowcount

    def _trim_runs(self, conn: sqlite3.Connection) -> int:
        """Inside a transaction: delete the oldest ended runs beyond ``max_runs`` (with their spans and events);
        how many ended runs remain."""
        assert self.max_runs is not None
        beyond = conn.execute(
            "SELECT trace_id FROM runs WHERE status != ? ORDER BY start_ns DESC LIMIT -1 OFFSET ?",
            (A.STATUS_RUNNING, self.max_runs),
        ).fetchall()
        _delete_runs(conn, beyond)
        return int(conn.execute("SELECT COUNT(*) FROM runs WHERE status != ?", (A.STATUS_RUNNING,)).fetchone()[0])

    def _alert_retention(self, conn: sqlite3.Connection) -> None:
        """Resolved alerts leave after ``retention_days``, and beyond the newest 10,000; open ones stay."""
        conn.execute("BEGIN")
        if self.retention_days is not None:
            cutoff = time.time_ns() - int(self.retention_days * 86400e9)
            conn.execute("DELETE FROM alerts WHERE status = 'resolved' AND resolved_ns < ?", (cutoff,))
            conn.execute("DELETE FROM name_stats WHERE hour >= 0 AND hour < ?", (cutoff // HOUR_NS,))
            conn.execute("DELETE FROM model_stats WHERE hour >= 0 AND hour < ?", (cutoff // HOUR_NS,))
        conn.execute(
            "DELETE FROM alerts WHERE status = 'resolved' AND alert_id NOT IN "
            "(SELECT alert_id FROM alerts WHERE status = 'resolved' ORDER BY fired_ns DESC LIMIT 10000)"
        )
        conn.execute("COMMIT")

    def _done(self, rows: Rows) -> None:
        """``rows`` (a whole number of queued batches, in order) are committed or given up."""
        self._done_seq = max(self._done_seq, rows.seq)
        self._done_rows += len(rows)
        self._done_bytes += rows.nbytes
