"""The SQLite history (the embedded default): runs, spans and events in one file, written by one thread.

Contracts:

- Writes (:meth:`SqliteHistory.batch`, ``put_*``) only queue and never block; the writer thread
  (:mod:`viewer.history.sqlite_writer`) commits them in order, keeps them through failures and retries, and
  answers queries in turn, so that while the database works a query sees everything published before it was
  asked. :meth:`SqliteHistory.health` says ``degraded`` and why while writes fail or the backlog is full.
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
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from otelflow import attributes as A
from otelflow.records import NAME_PREFIXES, SpanRecord

from . import model_stats, name_stats
from .journal import Journal, JournalError
from .protocols import RunQuery
from .rows import ResourceCache, Rows
from .sqlite_migrate import upgrade
from .sqlite_read import read_events, read_spans
from .sqlite_writer import SqliteWriter, _rate_limited

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


class HistoryError(RuntimeError):
    """The history cannot be used; the message says why and what to do."""


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/otelflow/otelflow.db``, else ``~/.local/share/otelflow/otelflow.db``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "otelflow" / "otelflow.db"


class SqliteHistory:
    """SQLite persistence and queries (see the module docstring)."""

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
        self.path = str(path)
        self.create_folder = create_folder
        self.max_backlog_bytes = max_backlog_bytes
        self.max_journal_bytes = max_journal_bytes
        self.journal: Journal | None = None
        self.journal_failure: str | None = None
        self._writer = SqliteWriter(retention_days=retention_days, max_runs=max_runs, max_db_bytes=max_db_bytes)
        self._resource_cache = ResourceCache()
        self._batch: Rows | None = None
        self._batch_droppable = False
        self.dropped_rows = 0

    @property
    def retention_days(self) -> float | None:
        return self._writer.retention_days

    @property
    def max_runs(self) -> int | None:
        return self._writer.max_runs

    @property
    def opened(self) -> bool:
        return self._writer.running

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
        self._writer.start(conn)

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

    # ------------------------------------------------------------------ writes (never block)

    @contextlib.contextmanager
    def batch(self, *, droppable: bool = False, journal_end: int = 0) -> Iterator[None]:
        """Writes inside go to the writer thread as one item at the end (one wake-up, not one per row).
        Call from one thread (the loop); nested batches join the outer one. A ``droppable`` batch (rows nobody
        can be asked to send again) is dropped and counted instead when the backlog is full. ``journal_end``:
        the intake log is consumed up to there once these rows commit."""
        if self._batch is not None:
            yield
            return
        self._batch = rows = Rows()
        rows.journal_end = journal_end
        self._batch_droppable = droppable
        try:
            yield
        finally:
            self._batch = None
            if len(rows) or rows.journal_end:
                self._enqueue(rows, droppable=self._batch_droppable)

    def _enqueue(self, rows: Rows, *, droppable: bool = False) -> None:
        if droppable and self.full:
            self.dropped_rows += len(rows)
            _rate_limited(log.error, "history backlog full: %d rows from this process dropped", len(rows))
            return
        self._writer.put(rows)

    def _rows(self) -> tuple[Rows, bool]:
        """Where to add rows, and whether to queue them at once (outside :meth:`batch`)."""
        if self._batch is not None:
            return self._batch, False
        return Rows(), True

    def put_span(self, rec: SpanRecord) -> None:
        """Queue a span's latest snapshot."""
        rows, alone = self._rows()
        rows.add_span(rec, self._resource_cache.get(rec.resource))
        if alone:
            self._enqueue(rows)

    def put_run(self, summary: Mapping[str, Any], summary_json: str | None = None) -> None:
        """Queue a run summary; ``summary_json`` is its JSON when the caller has it (the same text)."""
        rows, alone = self._rows()
        rows.add_run(summary, summary_json, time.time())
        if alone:
            self._enqueue(rows)

    def put_alert(self, alert: Mapping[str, Any]) -> None:
        """Queue an alert's latest state (see :mod:`viewer.alerts`)."""
        rows, alone = self._rows()
        rows.add_alert(alert)
        if alone:
            self._enqueue(rows)

    async def alerts(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Stored alerts, newest first; ``status`` ``open`` or ``resolved`` narrows them."""

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = ("WHERE status = ?", [status]) if status else ("", [])
            sql = f"SELECT data FROM alerts {where} ORDER BY fired_ns DESC LIMIT ?"  # noqa: S608
            return [json.loads(r[0]) for r in conn.execute(sql, [*args, limit])]

        return await self.query(fn)

    def put_event(self, event_id: str, trace_id: str, type_: str, data: str | None, span_id: str | None = None) -> None:
        """Queue an event of a run: its envelope JSON; or, with ``span_id``, span-referenced events (``data``:
        what the span's row does not tell, see :mod:`.rows`)."""
        rows, alone = self._rows()
        rows.add_event(event_id, trace_id, type_, data, span_id)
        if alone:
            self._enqueue(rows)

    # ------------------------------------------------------------------ backlog and health

    @property
    def backlog_rows(self) -> int:
        """Rows queued and not yet committed."""
        return self._writer.backlog_rows

    @property
    def backlog_bytes(self) -> int:
        """About how many bytes of text the rows queued and not yet committed hold."""
        return self._writer.backlog_bytes

    @property
    def full(self) -> bool:
        """The backlog has reached ``max_backlog_bytes`` (or the intake log ``max_journal_bytes``): new spans
        must wait (503) until it drains."""
        if self.backlog_bytes >= self.max_backlog_bytes:
            return True
        return self.journal is not None and self.journal.nbytes >= self.max_journal_bytes

    @property
    def failure(self) -> str | None:
        """Why history writes fail now (``None`` when they work)."""
        return self._writer.failure

    def health(self) -> tuple[str, str | None]:
        """``("ok", None)``, or ``("degraded", why)`` while writes fail, the intake log cannot be written, or the
        backlog is full."""
        failure = self._writer.failure
        if self.journal_failure is not None:
            return "degraded", f"{self.journal_failure}; new spans are refused with 503"
        if failure is None and not self.full:
            return "ok", None
        waiting = f"{self.backlog_rows} rows ({self.backlog_bytes / 1048576:.1f} MiB) waiting"
        if failure is None:
            return "degraded", f"history backlog full: {waiting}; new spans are refused with 503 until it drains"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._writer.failing_since or time.time()))
        full = "; the backlog is full, new spans are refused with 503" if self.full else ""
        return "degraded", f"history writes failing since {since}: {failure}; {waiting}{full}"

    @property
    def stats(self) -> dict[str, int]:
        return {**self._writer.stats, "dropped_rows": self._writer.stats["dropped_rows"] + self.dropped_rows}

    def retention_now(self) -> None:
        """Apply retention on the next turn (the writer also runs it each minute while writes succeed)."""
        self._writer.retention_now()

    # ------------------------------------------------------------------ queries

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store thread after every write queued so far."""
        if not self._writer.running:
            raise HistoryError("the history database is not open")
        result: T = await asyncio.wrap_future(self._writer.read(fn))
        return result

    async def flush(self) -> None:
        """Wait until everything queued so far was tried (written, unless the database refuses)."""
        await self.query(lambda conn: None)

    async def load_live(self) -> tuple[list[dict[str, Any]], list[SpanRecord]]:
        """Runs still running when the viewer last stopped, and their spans."""

        def fn(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[SpanRecord]]:
            runs = [
                json.loads(r[0]) for r in conn.execute("SELECT summary FROM runs WHERE status = ?", (A.STATUS_RUNNING,))
            ]
            spans: list[SpanRecord] = []
            for run in runs:
                spans.extend(read_spans(conn, run["trace_id"]))
            return runs, spans

        return await self.query(fn)

    async def resolve(self, key: str) -> str | None:
        """The trace id of a stored run named by trace id or ``otelflow.run.id`` (the newest such run)."""

        def fn(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT trace_id FROM runs WHERE trace_id = ? OR run_id = ? ORDER BY trace_id = ? DESC, "
                "start_ns DESC LIMIT 1",
                (key.lower(), key, key.lower()),
            ).fetchone()
            return str(row[0]) if row else None

        return await self.query(fn)

    async def list_runs(self, query: RunQuery) -> tuple[list[dict[str, Any]], int]:
        """Run summaries, newest first, and the total count matching the query."""
        where: list[str] = []
        args: list[Any] = []
        if query.status:
            where.append(f"status IN ({','.join('?' * len(query.status))})")
            args.extend(query.status)
        if query.name:
            # the run's span name, the name the pages show (without the operation), or the run id
            names = [query.name, *(prefix + query.name for prefix in NAME_PREFIXES)]
            where.append(f"(name IN ({','.join('?' * len(names))}) OR run_id = ?)")
            args.extend([*names, query.name])
        if query.service:
            where.append("service = ?")
            args.append(query.service)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        page, page_args = list(where), list(args)
        if query.after is not None:  # newest first, ties by trace id: the runs that come after the cursor
            page.append("(start_ns < ? OR (start_ns = ? AND trace_id > ?))")
            page_args.extend([query.after[0], query.after[0], query.after[1]])
        page_clause = f"WHERE {' AND '.join(page)}" if page else ""
        offset = 0 if query.after is not None else query.offset

        def fn(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM runs {clause}", args).fetchone()[0]  # noqa: S608
            rows = conn.execute(
                f"SELECT summary FROM runs {page_clause} ORDER BY start_ns DESC, trace_id LIMIT ? OFFSET ?",  # noqa: S608
                [*page_args, query.limit, offset],
            ).fetchall()
            return [json.loads(r[0]) for r in rows], int(total)

        return await self.query(fn)

    async def get_run(self, trace_id: str) -> tuple[dict[str, Any] | None, list[SpanRecord]]:
        """A run's summary and its spans (by start time)."""

        def fn(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, list[SpanRecord]]:
            row = conn.execute("SELECT summary FROM runs WHERE trace_id = ?", (trace_id,)).fetchone()
            spans = read_spans(conn, trace_id, by_start=True)
            return (json.loads(row[0]) if row else None), spans

        return await self.query(fn)

    async def events(self, trace_id: str, after: str | None, limit: int = 10_000) -> list[dict[str, Any]] | None:
        """A run's stored events after the event ``after`` (all when ``None``); ``None`` if ``after`` is unknown."""

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]] | None:
            return read_events(conn, trace_id, after, limit)

        return await self.query(fn)

    async def stats_by_model(self, since_ns: int | None = None) -> list[dict[str, Any]]:
        """Per (provider, model) of ended model calls, of all time or of the hours from ``since_ns``'s on (see
        :mod:`.model_stats`)."""

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return model_stats.read_model_stats(conn, since_ns)

        return await self.query(fn)

    async def stats_by_name(self, kinds: Iterable[str], since_ns: int | None = None) -> list[dict[str, Any]]:
        """Per (kind, name) of ended spans: count, p50/p95 duration in ms, error rate; of all time, or of the hours
        from ``since_ns``'s on. Read from the statistics kept as spans are written (:mod:`.name_stats`)."""
        kind_list = list(kinds)

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return name_stats.read_stats(conn, kind_list, since_ns)

        return await self.query(fn)
