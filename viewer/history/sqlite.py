"""The SQLite history (the embedded default): runs, spans and events in one file, written by one thread.

Contracts:

- Writes (:meth:`SqliteHistory.batch`, ``put_*``) only queue and never block (:mod:`viewer.history.store`); the
  writer thread (:mod:`viewer.history.sqlite_writer`) commits them in order, keeps them through failures and
  retries, and answers queries in turn, so that while the database works a query sees everything published
  before it was asked. :meth:`SqliteHistory.health` says ``degraded`` and why while writes fail or the backlog is
  full.
- What the OTLP receiver acknowledges is first appended to the intake log (:mod:`viewer.history.journal`, the
  folder ``<db>.intake`` beside the file; :meth:`SqliteHistory.append`); the log's position commits with the
  rows it produced. After a crash, :meth:`SqliteHistory.unconsumed` gives what never reached the database.
- The backlog is counted in rows and bytes; past ``max_backlog_bytes`` (or with more than
  ``max_journal_bytes`` in the intake log) :attr:`SqliteHistory.full` is true (the receiver answers 503) and
  batches that may be dropped (spans from this process, which cannot be asked to retry) are dropped and
  counted.
- ``":memory:"`` keeps everything in memory (tests, the demo) with no intake log; a file uses WAL journaling.
- A file that is not an otelflow database, one with damaged pages, one that another process holds locked, or
  one in a folder that does not exist raises :class:`HistoryError` at :meth:`SqliteHistory.open`, with a
  message saying what to do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, TypeVar

from . import model_stats, name_stats
from .journal import Journal, JournalError
from .reading import Sql
from .rows import Rows
from .sqlite_migrate import upgrade
from .sqlite_writer import SqliteWriter
from .store import HistoryError, HistoryStore

__all__ = ["HistoryError", "SqliteHistory", "default_db_path"]

log = logging.getLogger("otelflow.viewer")

T = TypeVar("T")

_SCHEMA: Final = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    trace_id TEXT PRIMARY KEY,
    run_id TEXT,
    name TEXT NOT NULL DEFAULT '',
    service TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    start_ns INTEGER NOT NULL DEFAULT 0,
    end_ns INTEGER,
    updated REAL NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_run_id ON runs (run_id);
CREATE INDEX IF NOT EXISTS runs_start ON runs (start_ns);
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER,
    record TEXT NOT NULL,
    resource INTEGER,
    PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE IF NOT EXISTS resources (id INTEGER PRIMARY KEY, data TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS epochs (epoch TEXT PRIMARY KEY, ordinal INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS events (
    trace_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    type NOT NULL,
    span_id TEXT,
    data,
    PRIMARY KEY (trace_id, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    status TEXT NOT NULL,
    fired_ns INTEGER NOT NULL,
    resolved_ns INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_status ON alerts (status, fired_ns);
"""
    + name_stats.SCHEMA
    + model_stats.SCHEMA
)
# 2: spans.event_id; 3: name_stats; 4: each thing stored once; 5: name_stats.cancelled; 6: model_stats (older
# databases are upgraded in place)
_SCHEMA_VERSION: Final = "6"


def _statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/otelflow/otelflow.db``, else ``~/.local/share/otelflow/otelflow.db``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "otelflow" / "otelflow.db"


class SqliteHistory(HistoryStore):
    """SQLite persistence and queries (see the module docstring)."""

    _writer: SqliteWriter

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        retention_days: float | None = 30.0,
        max_runs: int | None = 10_000,
        max_backlog_bytes: int = 128 * 1024 * 1024,
        max_journal_bytes: int = 1024 * 1024 * 1024,
        max_db_bytes: int | None = None,
        create_folder: bool = False,
    ) -> None:
        writer = SqliteWriter(retention_days=retention_days, max_runs=max_runs, max_db_bytes=max_db_bytes)
        super().__init__(writer, max_backlog_bytes=max_backlog_bytes)
        self.path = str(path)
        self.create_folder = create_folder
        self.max_journal_bytes = max_journal_bytes
        self.journal: Journal | None = None
        self.journal_failure: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open (creating the file if needed) and start the writer thread; raises :class:`HistoryError`.

        The file's folder must exist, unless the store was made with ``create_folder=True`` (the default
        location): a mistyped path is refused rather than silently becoming a new tree of folders. A file with
        damaged pages is refused here (``PRAGMA quick_check``, about 60 ms per 100 MB once cached), so that it
        does not fail later, on the first query or the retention sweep.
        """
        memory = self.path == ":memory:"
        if not memory:
            self._check_folder()
        conn = self._connect(memory)
        try:
            created = self._prepare(conn, memory)
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise HistoryError(
                    f"the history database {self.path} is locked by another process "
                    "(is another `otelflow serve` using it?); stop it or pass --db with another path"
                ) from None
            raise HistoryError(f"cannot use the history database {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise HistoryError(
                f"{self.path} is not a usable otelflow database ({exc}); move it away or pass --db with another path"
            ) from None
        if not memory:
            self._open_journal(conn, created)
        limit = getattr(conn, "getlimit", None)  # Python >= 3.11
        self._writer.max_vars = min(32766, int(limit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))) if limit else 999  # type: ignore[attr-defined]
        self._writer.start_on(conn)

    def _check_folder(self) -> None:
        folder = Path(self.path).expanduser().parent
        if self.create_folder:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise HistoryError(
                    f"cannot create the folder {folder} for the history database: {exc.strerror or exc}; "
                    "pass --db with another path"
                ) from None
        elif not folder.is_dir():
            raise HistoryError(
                f"the folder {folder} of the history database {self.path} does not exist; "
                "create it or pass --db with another path"
            )

    def _connect(self, memory: bool) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                self.path if memory else str(Path(self.path).expanduser()),
                timeout=0.5,  # a write that finds the database locked waits this long, then retries later
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise HistoryError(
                f"cannot open the history database {self.path}: {exc}; check that it can be written there, "
                "or pass --db with another path"
            ) from None

    def _prepare(self, conn: sqlite3.Connection, memory: bool) -> bool:
        """Settings, a check of the pages, the schema (created or upgraded); ``True`` for a new database."""
        if not memory:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash may lose the last commits, never corrupts
        # span and event keys are random (trace ids): a page cache larger than the default 2 MiB keeps the
        # index pages that inserts touch in memory as the history grows (it fills only as it is used)
        conn.execute("PRAGMA cache_size=-32768")
        if not memory:
            problem = conn.execute("PRAGMA quick_check(1)").fetchone()
            if problem is None or problem[0] != "ok":
                raise sqlite3.DatabaseError("its pages are damaged")  # the details span lines
        conn.execute("BEGIN IMMEDIATE")  # fails at once when another process holds the database
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
        elif row[0] in ("1", "2", "3", "4", "5"):
            upgrade(conn, row[0], _statements(_SCHEMA))
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (_SCHEMA_VERSION,))
        elif row[0] != _SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            raise HistoryError(
                f"{self.path} has otelflow schema {row[0]}, this viewer uses {_SCHEMA_VERSION}; "
                "pass --db with another path"
            )
        conn.execute("COMMIT")
        return row is None

    def _open_journal(self, conn: sqlite3.Connection, created: bool) -> None:
        journal = Journal(f"{Path(self.path).expanduser()}.intake")
        try:
            journal.open()
        except JournalError as exc:
            conn.close()
            raise HistoryError(f"{exc}; check that the folder beside the database can be written") from None
        row = conn.execute("SELECT value FROM meta WHERE key = 'journal'").fetchone()
        self._writer.journal_pos = int(row[0]) if row else 0
        if created:  # a new database: what an intake log beside it holds belongs to a history that is gone
            journal.release(journal.end)
        self.journal = self._writer.journal = journal

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the thread and close the database."""
        self._writer.stop(timeout)
        if self.journal is not None:
            self.journal.close()

    # ------------------------------------------------------------------ the intake log

    def append(self, kind: int, body: bytes) -> int:
        """Append a request body to the intake log (on the loop); returns its end position, 0 without a log
        (``:memory:``). Raises :class:`viewer.history.journal.JournalError` when it cannot be written."""
        if self.journal is None:
            return 0
        try:
            end = self.journal.append(kind, body)
        except JournalError as exc:
            if self.journal_failure is None:
                log.error("%s", exc)
            self.journal_failure = str(exc)
            raise
        self.journal_failure = None
        return end

    def mark_journal(self, end: int) -> None:
        """The intake log is consumed up to ``end`` once every row queued so far commits."""
        if end:
            rows = Rows()
            rows.journal_end = end
            self._writer.put(rows)

    def unconsumed(self) -> Iterator[tuple[int, int, bytes]]:
        """The intake log's records whose rows were never committed (a crash): ``(end, kind, body)``."""
        if self.journal is None:
            return iter(())
        return self.journal.records(self._writer.journal_pos)

    # ------------------------------------------------------------------ backlog and health

    @property
    def full(self) -> bool:
        """The backlog has reached ``max_backlog_bytes`` (or the intake log ``max_journal_bytes``): new spans
        must wait (503) until it drains."""
        if super().full:
            return True
        return self.journal is not None and self.journal.nbytes >= self.max_journal_bytes

    def health(self) -> tuple[str, str | None]:
        """``("ok", None)``, or ``("degraded", why)`` while writes fail, the intake log cannot be written, or the
        backlog is full."""
        if self.journal_failure is not None:
            return "degraded", f"{self.journal_failure}; new spans are refused with 503"
        return super().health()

    # ------------------------------------------------------------------ queries

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store thread after every write queued so far."""
        if not self._writer.running:
            raise HistoryError("the history database is not open")
        result: T = await asyncio.wrap_future(self._writer.read(fn))
        return result

    async def ask(self, fn: Callable[[Sql], T]) -> T:
        return await self.query(fn)
