"""The SQLite history's writer (:class:`viewer.history.writer.BacklogWriter`): one connection, rows written in
order with multi-row statements, failures retried, reads in turn.

Contracts (besides the writer thread's):

- Errors of SQLite that retrying cannot help (a value it cannot hold) are the ``data_errors``: those rows are
  written one by one and the ones that still fail are dropped. Everything else (locked, full, read-only, I/O)
  is retried. No transaction is left open after any error.
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

import contextlib
import functools
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Final

from otelflow import attributes as A

from .journal import Journal
from .model_stats import add_calls
from .name_stats import add_spans
from .rows import ALERT_WIDTH, EVENT_WIDTH, RUN_WIDTH, SEQ_BITS, SPAN_WIDTH, TYPE_CODES, Rows
from .writer import BacklogWriter, rate_limited

__all__ = ["SqliteWriter", "resource_id"]

log = logging.getLogger("otelflow.viewer")


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


_RESOURCES_KEPT: Final = 1_000  # distinct resources kept before retention looks for unused ones
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


class SqliteWriter(BacklogWriter):
    """The writer of a SQLite history (see the module docstring)."""

    data_errors = _DATA_ERRORS

    def __init__(
        self,
        *,
        retention_days: float | None,
        max_runs: int | None,
        max_db_bytes: int | None = None,
        max_vars: int = 999,
    ) -> None:
        super().__init__(retention_days=retention_days, max_runs=max_runs)
        self.max_db_bytes = max_db_bytes
        self.max_vars = max_vars
        self.journal: Journal | None = None
        self._conn: sqlite3.Connection | None = None
        # epoch -> ordinal (event ids are stored as integers) and resource JSON -> id, as committed
        self._ordinals: dict[str, int] = {}
        self._resources: dict[str, int] = {}
        self._pending_ordinals: dict[str, int] = {}  # of the transaction under way
        self._pending_resources: dict[str, int] = {}

    def start_on(self, conn: sqlite3.Connection) -> None:
        """Start the thread on this connection (it closes it when it stops)."""
        self._conn = conn
        self._ordinals = dict(conn.execute("SELECT epoch, ordinal FROM epochs"))
        self.start()

    # ------------------------------------------------------------------ the writer thread's hooks

    def connection(self) -> sqlite3.Connection:
        assert self._conn is not None
        return self._conn

    def write(self, rows: Rows) -> None:
        self._write(self.connection(), rows)

    def write_one_by_one(self, rows: Rows) -> None:
        self._write_one_by_one(self.connection(), rows)

    def retention(self) -> None:
        self._retention(self.connection())

    def abandon(self) -> None:
        if self._conn is not None:
            self._rollback(self._conn)

    def after_backlog(self) -> None:
        if self.max_db_bytes is not None:
            try:
                self._hold_size(self.connection())
            except sqlite3.Error as exc:  # what was written stays written; the next write tries again
                self.stats["errors"] += 1
                rate_limited(log.error, "history size limit not applied: %s", exc)

    def position_committed(self, end: int) -> None:
        if self.journal is not None:
            self.journal.release(end)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

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

        ended, over = self.trim_due(rows)
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
        self.counted(ended, held[0] if held else None)

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
                    rate_limited(
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
            self.counted(
                0, conn.execute("SELECT COUNT(*) FROM runs WHERE status != ?", (A.STATUS_RUNNING,)).fetchone()[0]
            )
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
                        rate_limited(log.error, "a history row cannot be written and is dropped: %s", exc)
            add_spans(conn, rows.spans)
            add_calls(conn, rows.llm)

        self._transaction(conn, rows, insert)
        self.stats["dropped_rows"] += dropped
        self.stats["errors"] += 1 if dropped else 0

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
                self.counted(0, self._trim_runs(conn))
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
        """Resolved alerts and hourly statistics past retention leave (:meth:`BacklogWriter.alert_retention`)."""
        conn.execute("BEGIN")
        for sql, args in self.alert_retention():
            conn.execute(sql, args)
        conn.execute("COMMIT")
