"""SQLite history of runs, spans and events: written in batches by one thread, queried without blocking the loop.

Contracts:

- One connection, owned by one writer thread. Writes (:meth:`Store.put_span`, :meth:`Store.put_run`,
  :meth:`Store.put_event`) only enqueue and never block; the thread commits whatever is queued in one
  transaction. Queries run on the same thread after the writes queued before them were tried, so while the
  database works a query sees everything published before it was asked (read-your-writes).
- What the OTLP receiver acknowledges is first appended to the intake log (:mod:`viewer.journal`, the folder
  ``<db>.intake`` beside a file database; :meth:`Store.append`), and the log's position is committed with the
  rows it produced (:meth:`Store.mark_journal`, in the same transaction). After a crash, :meth:`Store.unconsumed`
  gives the records whose rows were not committed, to be ingested again; committed segments are deleted.
- Nothing is dropped when a write fails (a lock held elsewhere, a full disk, a read-only file): the rows stay
  in a backlog, in order, retried with backoff (50 ms doubling to 2 s) until they commit; :meth:`Store.health`
  then says ``degraded`` and why. The backlog is counted in rows and bytes; past ``max_backlog_bytes`` (or
  with more than ``max_journal_bytes`` in the intake log) :attr:`Store.full` is true (the receiver answers
  503) and batches that may be dropped (spans from this process, which cannot be asked to retry) are
  dropped and counted.
- A row that can never be written (a value SQLite cannot hold) is dropped alone, counted and logged; it
  never holds up the others, and no transaction is left open after any error.
- ``path`` ``":memory:"`` keeps everything in memory (tests); any other path uses WAL journaling.
- A restart keeps every run and its spans and events (until retention removes them).
- Retention: runs that ended more than ``retention_days`` ago, and the oldest ended runs beyond ``max_runs``,
  are deleted with their spans and events (running runs are never deleted).
- A file that is not an otelflow database, one with damaged pages, one that another process holds locked, or
  one in a folder that does not exist raises :class:`StoreError` at :meth:`Store.open`, with a message saying
  what to do.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from otelflow.records import STATUS_ERROR, STATUS_RUNNING, EventRecord, SpanRecord
from otelflow.wire import to_json

from .journal import Journal, JournalError

if TYPE_CHECKING:
    from .hub import Event

__all__ = ["Store", "StoreError", "default_db_path", "record_from_row", "record_to_row", "span_row"]

log = logging.getLogger("otelflow.viewer")

T = TypeVar("T")

_SCHEMA: Final = """
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
    event_id TEXT,
    PRIMARY KEY (trace_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_name ON spans (name, kind);
CREATE TABLE IF NOT EXISTS events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    trace_id TEXT,
    type TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_trace ON events (trace_id, n);
CREATE INDEX IF NOT EXISTS events_id ON events (event_id);
"""
_SPANS_OF_TRACE: Final = (
    "SELECT s.record, e.data FROM spans s LEFT JOIN events e ON e.event_id = s.event_id AND e.trace_id = s.trace_id "
    "WHERE s.trace_id = ?"
)
_SCHEMA_VERSION: Final = "2"  # 2: spans.event_id (schema 1 databases are upgraded in place)


class StoreError(RuntimeError):
    """The database cannot be used; the message says why and what to do."""


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/otelflow/otelflow.db``, else ``~/.local/share/otelflow/otelflow.db``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "otelflow" / "otelflow.db"


def record_to_row(rec: SpanRecord) -> str:
    """A record as JSON holding every field (``record_from_row`` gives it back)."""
    return json.dumps(
        {
            "trace_id": rec.trace_id,
            "span_id": rec.span_id,
            "parent_span_id": rec.parent_span_id,
            "name": rec.name,
            "kind": rec.kind,
            "span_kind": rec.span_kind,
            "start_time_ns": rec.start_time_ns,
            "end_time_ns": rec.end_time_ns,
            "status": rec.status,
            "status_message": rec.status_message,
            "attributes": rec.attributes,
            "events": [[e.name, e.time_ns, dict(e.attributes)] for e in rec.events],
            "service": rec.service,
            "resource": rec.resource,
            "scope": rec.scope,
            "phase": rec.phase,
        },
        separators=(",", ":"),
        default=str,
    )


_quote: Final = json.encoder.encode_basestring_ascii


class _ResourceCache:
    """The JSON of the last resource seen: the spans of one export request share one resource dict."""

    __slots__ = ("json", "resource")

    def __init__(self) -> None:
        self.resource: object = None
        self.json = ""


def span_row(rec: SpanRecord, cache: _ResourceCache | None = None) -> str | None:
    """What a record's envelope ``span`` object leaves out, as JSON: the row of a span whose ``span`` object
    is stored once, in the event that published it (``spans.event_id``); :func:`record_from_row` joins the
    two. ``None`` when it cannot be exact (then store :func:`record_to_row`)."""
    start, end, times = rec.start_time_ns, rec.end_time_ns, [e.time_ns for e in rec.events]
    if (
        type(start) is not int
        or not (end is None or type(end) is int)
        or type(rec.span_kind) is not int
        or not all(type(t) is int for t in times)
    ):
        return None
    try:
        if cache is not None and cache.resource is rec.resource:
            resource = cache.json
        else:
            resource = to_json(rec.resource)
            if cache is not None:
                cache.resource, cache.json = rec.resource, resource
        # [start, end, span kind, status message, scope, phase, [event times]], written as json.dumps would
        text = ",".join([str(t) for t in times])
        return (
            f'{{"x":[{start},{"null" if end is None else end},{rec.span_kind},{_quote(rec.status_message)},'
            f'{_quote(rec.scope)},{_quote(rec.phase)},[{text}]],"resource":{resource}}}'
        )
    except (ValueError, TypeError):
        return None


def record_from_row(text: str, event: str | None = None) -> SpanRecord:
    """A record from a row written by :func:`record_to_row`, or by :func:`span_row` with the stored ``event``
    whose ``span`` object it is."""
    data = json.loads(text)
    if "x" in data:
        if event is None:
            raise ValueError("this span row needs the event that carries its span object")
        s = json.loads(event)["span"]
        start, end, span_kind, status_message, scope, phase, times = data["x"]
        return SpanRecord(
            trace_id=s["trace_id"],
            span_id=s["span_id"],
            name=s["name"],
            parent_span_id=s["parent_span_id"],
            kind=s["kind"],
            span_kind=span_kind,
            start_time_ns=start,
            end_time_ns=end,
            status=s["status"],
            status_message=status_message,
            attributes=s["attributes"],
            events=tuple(EventRecord(e["name"], t, e["attributes"]) for e, t in zip(s["events"], times, strict=True)),
            service=s["service"],
            resource=data["resource"],
            scope=scope,
            phase=phase,
        )
    data["events"] = tuple(EventRecord(n, t, a) for n, t, a in data["events"])
    return SpanRecord(**data)


_last_logged: dict[str, float] = {}


def _rate_limited(emit: Callable[..., None], message: str, *args: Any) -> None:
    """Log ``message`` at most once every 10 s."""
    now = time.monotonic()
    if now - _last_logged.get(message, -1e9) >= 10.0:
        _last_logged[message] = now
        emit(message, *args)


def _text(value: str) -> str:
    """SQLite wants valid UTF-8: lone surrogates (legal in JSON escapes) become U+FFFD."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, width: int, rows: int) -> str:
    """``head VALUES (?, ...), (?, ...)``: ``rows`` rows of ``width`` parameters in one statement."""
    one = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([one] * rows)}"


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


class _Rows:
    """Rows for the writer, kept flat (one list of values per table, not a tuple per row): the hub queues a
    request's worth at once (:meth:`Store.batch`) and the writer binds them in multi-row statements.
    ``seq`` numbers queued batches (1, 2, ...); ``nbytes`` is about what their text takes."""

    __slots__ = ("events", "journal_end", "nbytes", "runs", "seq", "spans")

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.events: list[Any] = []
        self.runs: dict[str, tuple[Any, ...]] = {}
        self.seq = 0
        self.nbytes = 0
        self.journal_end = 0  # the intake log's position once these rows commit (0: no change)

    def __len__(self) -> int:
        return (len(self.spans) // _SPAN_WIDTH) + (len(self.events) // _EVENT_WIDTH) + len(self.runs)

    def merge(self, other: _Rows) -> None:
        self.spans += other.spans
        self.events += other.events
        self.runs.update(other.runs)
        self.seq = max(self.seq, other.seq)
        self.nbytes += other.nbytes
        self.journal_end = max(self.journal_end, other.journal_end)


_SPAN_WIDTH: Final = 10
_EVENT_WIDTH: Final = 4
_RUN_WIDTH: Final = 9


class _Read:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: concurrent.futures.Future[Any]) -> None:
        self.fn = fn
        self.future = future


_STOP: Final = object()
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


class Store:
    """SQLite persistence and queries (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        retention_days: float | None = 30.0,
        max_runs: int | None = 10_000,
        max_backlog_bytes: int = 128 * 1024 * 1024,
        max_journal_bytes: int = 1024 * 1024 * 1024,
        create_folder: bool = False,
    ) -> None:
        self.path = str(path)
        self.max_journal_bytes = max_journal_bytes
        self.journal: Journal | None = None
        self._journal_pos = 0  # committed: the intake log's records up to here are in the database
        self.journal_failure: str | None = None
        self.create_folder = create_folder
        self.retention_days = retention_days
        self.max_runs = max_runs
        self.max_backlog_bytes = max_backlog_bytes
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._resource_cache = _ResourceCache()
        self._batch: _Rows | None = None
        self._batch_droppable = False
        self._max_vars = 999
        # Queued (loop thread) and done (writer thread: committed, or dropped as unwritable) batches, rows and
        # bytes; each counter is written by one thread only. What is queued and not done is the backlog.
        self._queued_seq = 0
        self._queued_rows = 0
        self._queued_bytes = 0
        self._done_seq = 0
        self._done_rows = 0
        self._done_bytes = 0
        self.failure: str | None = None  # why the last write failed, while the backlog waits; None when healthy
        self.failing_since: float | None = None  # time.time() of the first failure of the current outage
        self.stats: dict[str, int] = {
            "spans": 0,
            "events": 0,
            "runs": 0,
            "errors": 0,
            "batches": 0,
            "retries": 0,
            "dropped_rows": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Open (creating the file if needed) and start the writer thread; raises :class:`StoreError`.

        The file's folder must exist, unless the store was made with ``create_folder=True`` (the default
        location): a mistyped path is refused rather than silently becoming a new tree of folders. A file with
        damaged pages is refused here (``PRAGMA quick_check``, about 60 ms per 100 MB once cached), so that it
        does not fail later, on the first query or the retention sweep.
        """
        memory = self.path == ":memory:"
        if not memory:
            folder = Path(self.path).expanduser().parent
            if self.create_folder:
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"cannot create the folder {folder} for the history database: {exc.strerror or exc}; "
                        "pass --db with another path"
                    ) from None
            elif not folder.is_dir():
                raise StoreError(
                    f"the folder {folder} of the history database {self.path} does not exist; "
                    "create it or pass --db with another path"
                )
        try:
            conn = sqlite3.connect(
                self.path if memory else str(Path(self.path).expanduser()),
                timeout=0.5,  # a write that finds the database locked waits this long, then retries later
                check_same_thread=False,
                isolation_level=None,
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the history database {self.path}: {exc}; check that it can be written there, "
                "or pass --db with another path"
            ) from None
        try:
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
            conn.execute("BEGIN IMMEDIATE")
            conn.executescript(_SCHEMA)  # commits the probe transaction first
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            created = row is None
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] == "1":
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ALTER TABLE spans ADD COLUMN event_id TEXT")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (_SCHEMA_VERSION,))
                conn.execute("COMMIT")
            elif row[0] != _SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has otelflow schema {row[0]}, this viewer uses {_SCHEMA_VERSION}; "
                    "pass --db with another path"
                )
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(
                    f"the history database {self.path} is locked by another process "
                    "(is another `otelflow serve` using it?); stop it or pass --db with another path"
                ) from None
            raise StoreError(f"cannot use the history database {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(
                f"{self.path} is not a usable otelflow database ({exc}); move it away or pass --db with another path"
            ) from None
        if not memory:
            self._open_journal(conn, created)
        limit = getattr(conn, "getlimit", None)  # Python >= 3.11
        self._max_vars = min(32766, int(limit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))) if limit else 999  # type: ignore[attr-defined]
        self._conn = conn
        self._thread = threading.Thread(target=self._run, name="otelflow-store", daemon=True)
        self._thread.start()

    def _open_journal(self, conn: sqlite3.Connection, created: bool) -> None:
        journal = Journal(f"{Path(self.path).expanduser()}.intake")
        try:
            journal.open()
        except JournalError as exc:
            conn.close()
            raise StoreError(f"{exc}; check that the folder beside the database can be written") from None
        row = conn.execute("SELECT value FROM meta WHERE key = 'journal'").fetchone()
        self._journal_pos = int(row[0]) if row else 0
        if created:  # a new database: what an intake log beside it holds belongs to a history that is gone
            journal.release(journal.end)
        self.journal = journal

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the thread and close the database."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        if self.journal is not None:
            self.journal.close()

    # ------------------------------------------------------------------ the intake log

    def append(self, kind: int, body: bytes) -> int:
        """Append a request body to the intake log (on the loop); returns its end position, 0 without a log
        (``:memory:``). Raises :class:`viewer.journal.JournalError` when it cannot be written."""
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
            rows = _Rows()
            rows.journal_end = end
            self._enqueue(rows)

    def unconsumed(self) -> Iterator[tuple[int, int, bytes]]:
        """The intake log's records whose rows were never committed (a crash): ``(end, kind, body)``."""
        if self.journal is None:
            return iter(())
        return self.journal.records(self._journal_pos)

    # ------------------------------------------------------------------ writes (never block)

    @contextlib.contextmanager
    def batch(self, *, droppable: bool = False, journal_end: int = 0) -> Iterator[None]:
        """Writes inside go to the writer thread as one item at the end (one wake-up, not one per row).
        Call from one thread (the hub's loop); nested batches join the outer one. A ``droppable`` batch
        (rows nobody can be asked to send again) is dropped and counted instead when the backlog is full.
        ``journal_end``: the intake log is consumed up to there once these rows commit (see :meth:`mark_journal`)."""
        if self._batch is not None:
            yield
            return
        self._batch = rows = _Rows()
        rows.journal_end = journal_end
        self._batch_droppable = droppable
        try:
            yield
        finally:
            self._batch = None
            if len(rows) or rows.journal_end:
                self._enqueue(rows, droppable=self._batch_droppable)

    def _rows(self) -> tuple[_Rows, bool]:
        """Where to add rows, and whether to queue them at once (outside :meth:`batch`)."""
        if self._batch is not None:
            return self._batch, False
        return _Rows(), True

    def _enqueue(self, rows: _Rows, *, droppable: bool = False) -> None:
        if droppable and self.full:
            self.stats["dropped_rows"] += len(rows)
            _rate_limited(log.error, "history backlog full: %d rows from this process dropped", len(rows))
            return
        self._queued_seq += 1
        rows.seq = self._queued_seq
        self._queued_rows += len(rows)
        self._queued_bytes += rows.nbytes
        self._queue.put(rows)

    # ------------------------------------------------------------------ backlog and health

    @property
    def backlog_rows(self) -> int:
        """Rows queued and not yet committed."""
        return self._queued_rows - self._done_rows

    @property
    def backlog_bytes(self) -> int:
        """About how many bytes of text the rows queued and not yet committed hold."""
        return self._queued_bytes - self._done_bytes

    @property
    def full(self) -> bool:
        """The backlog has reached ``max_backlog_bytes`` (or the intake log ``max_journal_bytes``): new spans
        must wait (503) until it drains."""
        if self.backlog_bytes >= self.max_backlog_bytes:
            return True
        return self.journal is not None and self.journal.nbytes >= self.max_journal_bytes

    def health(self) -> tuple[str, str | None]:
        """``("ok", None)``, or ``("degraded", why)`` while writes fail or the backlog is full."""
        failure = self.failure
        if self.journal_failure is not None:
            return "degraded", f"{self.journal_failure}; new spans are refused with 503"
        if failure is None and not self.full:
            return "ok", None
        waiting = f"{self.backlog_rows} rows ({self.backlog_bytes / 1048576:.1f} MiB) waiting"
        if failure is None:
            return "degraded", f"history backlog full: {waiting}; new spans are refused with 503 until it drains"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.failing_since or time.time()))
        full = "; the backlog is full, new spans are refused with 503" if self.full else ""
        return "degraded", f"history writes failing since {since}: {failure}; {waiting}{full}"

    def _done(self, rows: _Rows) -> None:
        """``rows`` (a whole number of queued batches, in order) are committed or given up."""
        self._done_seq = max(self._done_seq, rows.seq)
        self._done_rows += len(rows)
        self._done_bytes += rows.nbytes

    def put_span(self, rec: SpanRecord, event_id: str | None = None) -> None:
        """Queue a span. ``event_id``: a stored event (:meth:`put_event`, queued before) whose ``span`` object
        is exactly this record's envelope object; the row then keeps only the rest (no second copy)."""
        row = span_row(rec, self._resource_cache) if event_id is not None else None
        if row is None:
            row, event_id = record_to_row(rec), None
        rows, alone = self._rows()
        rows.spans += (
            rec.trace_id,
            rec.span_id,
            rec.parent_span_id,
            _text(rec.name),
            _text(rec.kind),
            rec.status,
            rec.start_time_ns,
            rec.end_time_ns,
            row,
            event_id,
        )
        rows.nbytes += len(row) + len(rec.name) + 100
        if alone:
            self._enqueue(rows)

    def put_run(self, summary: Mapping[str, Any], summary_json: str | None = None) -> None:
        """Queue a run summary; ``summary_json`` is its JSON when the caller has it (the same text)."""
        rows, alone = self._rows()
        row = rows.runs[summary["trace_id"]] = (
            summary["trace_id"],
            _text(str(summary.get("otelflow_run_id"))) if summary.get("otelflow_run_id") else None,
            _text(str(summary.get("name") or "")),
            _text(str(summary.get("service") or "")),
            summary["status"],
            summary.get("start_time_ns") or 0,
            summary.get("end_time_ns"),
            time.time(),
            summary_json if summary_json is not None else json.dumps(summary, separators=(",", ":"), default=str),
        )
        rows.nbytes += len(row[-1]) + 100
        if alone:
            self._enqueue(rows)

    def put_event(self, ev: Event) -> None:
        rows, alone = self._rows()
        rows.events += (ev.id, ev.run_id, ev.type, ev.data.decode("ascii"))
        rows.nbytes += len(ev.data) + 60
        if alone:
            self._enqueue(rows)

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
        backlog: collections.deque[_Rows] = collections.deque()  # taken from the queue, not yet committed
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

    def _step(self, conn: sqlite3.Connection, backlog: collections.deque[_Rows], state: dict[str, float]) -> bool:
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
            if isinstance(item, _Rows):
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

    def _write_backlog(self, conn: sqlite3.Connection, backlog: collections.deque[_Rows]) -> bool:
        """Write the backlog in order, in transactions of about ``_CHUNK_ROWS`` rows; ``False`` (the rest kept)
        when the database refuses."""
        while backlog:
            chunk = _Rows()
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
            if chunk.journal_end and self.journal is not None:
                self._journal_pos = chunk.journal_end
                self.journal.release(chunk.journal_end)
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

    def _write(self, conn: sqlite3.Connection, rows: _Rows) -> None:
        """One transaction with every row; raises what SQLite (or binding a value) raises, nothing left open."""
        spans, runs, events = rows.spans, rows.runs, rows.events
        if not (spans or runs or events or rows.journal_end):
            return
        conn.execute("BEGIN")
        try:
            max_vars = self._max_vars
            _insert_many(conn, "INSERT OR REPLACE INTO spans", spans, _SPAN_WIDTH, max_vars)
            run_values = [v for row in runs.values() for v in row]
            _insert_many(conn, "INSERT OR REPLACE INTO runs", run_values, _RUN_WIDTH, max_vars)
            _insert_many(conn, "INSERT INTO events (event_id, trace_id, type, data)", events, _EVENT_WIDTH, max_vars)
            if rows.journal_end:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('journal', ?)", (str(rows.journal_end),))
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        self.stats["spans"] += len(spans) // _SPAN_WIDTH
        self.stats["runs"] += len(runs)
        self.stats["events"] += len(events) // _EVENT_WIDTH
        self.stats["batches"] += 1

    def _write_one_by_one(self, conn: sqlite3.Connection, rows: _Rows) -> None:
        """Write row by row in one transaction, dropping (and counting) the rows that cannot be written;
        raises ``sqlite3.Error`` when the database itself refuses."""
        tables = (
            ("INSERT OR REPLACE INTO spans", rows.spans, _SPAN_WIDTH, "spans"),
            ("INSERT OR REPLACE INTO runs", [v for row in rows.runs.values() for v in row], _RUN_WIDTH, "runs"),
            ("INSERT INTO events (event_id, trace_id, type, data)", rows.events, _EVENT_WIDTH, "events"),
        )
        conn.execute("BEGIN")
        dropped = 0
        try:
            for head, values, width, stat in tables:
                for i in range(0, len(values), width):
                    try:
                        conn.execute(_values_sql(head, width, 1), values[i : i + width])
                        self.stats[stat] += 1
                    except _DATA_ERRORS as exc:
                        dropped += 1
                        _rate_limited(log.error, "a history row cannot be written and is dropped: %s", exc)
            if rows.journal_end:
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('journal', ?)", (str(rows.journal_end),))
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        self.stats["dropped_rows"] += dropped
        self.stats["errors"] += 1 if dropped else 0

    def _read(self, conn: sqlite3.Connection, op: _Read) -> None:
        if op.future.set_running_or_notify_cancel():
            try:
                op.future.set_result(op.fn(conn))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                op.future.set_exception(exc)

    def _retention(self, conn: sqlite3.Connection) -> None:
        doomed: set[str] = set()
        if self.retention_days is not None:
            cutoff = time.time_ns() - int(self.retention_days * 86400e9)
            rows = conn.execute(
                "SELECT trace_id FROM runs WHERE status != ? AND COALESCE(end_ns, start_ns) < ?",
                (STATUS_RUNNING, cutoff),
            )
            doomed.update(r[0] for r in rows)
        if self.max_runs is not None:
            rows = conn.execute(
                "SELECT trace_id FROM runs WHERE status != ? ORDER BY start_ns DESC LIMIT -1 OFFSET ?",
                (STATUS_RUNNING, self.max_runs),
            )
            doomed.update(r[0] for r in rows)
        if not doomed:
            return
        conn.execute("BEGIN")
        for table in ("runs", "spans", "events"):
            conn.executemany(f"DELETE FROM {table} WHERE trace_id = ?", [(t,) for t in doomed])  # noqa: S608
        conn.execute("COMMIT")

    def retention_now(self) -> None:
        """Apply retention on the next batch (tests and the CLI call this; the thread also runs it each minute
        while writes succeed)."""
        self._queue.put(_Read(self._retention, concurrent.futures.Future()))

    # ------------------------------------------------------------------ queries

    async def query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the store thread after every write queued so far."""
        if self._thread is None:
            raise StoreError("the history database is not open")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Read(fn, future))
        return await asyncio.wrap_future(future)

    async def flush(self) -> None:
        """Wait until everything queued so far was tried (written, unless the database refuses)."""
        await self.query(lambda conn: None)

    async def load_live(self) -> tuple[list[dict[str, Any]], list[SpanRecord]]:
        """Runs still running when the viewer last stopped, and their spans."""

        def fn(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[SpanRecord]]:
            runs = [
                json.loads(r[0]) for r in conn.execute("SELECT summary FROM runs WHERE status = ?", (STATUS_RUNNING,))
            ]
            spans: list[SpanRecord] = []
            for run in runs:
                spans.extend(record_from_row(*r) for r in conn.execute(_SPANS_OF_TRACE, (run["trace_id"],)))
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

    async def list_runs(
        self,
        *,
        status: Iterable[str] = (),
        name: str | None = None,
        service: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """Run summaries, newest first, and the total count matching the filters."""
        where: list[str] = []
        args: list[Any] = []
        statuses = list(status)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if name:
            where.append("(name = ? OR run_id = ?)")
            args.extend([name, name])
        if service:
            where.append("service = ?")
            args.append(service)
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def fn(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM runs {clause}", args).fetchone()[0]  # noqa: S608
            rows = conn.execute(
                f"SELECT summary FROM runs {clause} ORDER BY start_ns DESC, trace_id LIMIT ? OFFSET ?",  # noqa: S608
                [*args, limit, offset],
            ).fetchall()
            return [json.loads(r[0]) for r in rows], int(total)

        return await self.query(fn)

    async def get_run(self, trace_id: str) -> tuple[dict[str, Any] | None, list[SpanRecord]]:
        """A run's summary and its spans (by start time)."""

        def fn(conn: sqlite3.Connection) -> tuple[dict[str, Any] | None, list[SpanRecord]]:
            row = conn.execute("SELECT summary FROM runs WHERE trace_id = ?", (trace_id,)).fetchone()
            spans = [
                record_from_row(*r)
                for r in conn.execute(_SPANS_OF_TRACE + " ORDER BY s.start_ns, s.span_id", (trace_id,))
            ]
            return (json.loads(row[0]) if row else None), spans

        return await self.query(fn)

    async def events(self, trace_id: str, after: str | None, limit: int = 10_000) -> list[dict[str, Any]] | None:
        """A run's stored events after the event ``after`` (all when ``None``); ``None`` if ``after`` is unknown."""

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]] | None:
            start = 0
            if after:
                row = conn.execute("SELECT n FROM events WHERE event_id = ?", (after,)).fetchone()
                if row is None:
                    return None
                start = int(row[0])
            rows = conn.execute(
                "SELECT data FROM events WHERE trace_id = ? AND n > ? ORDER BY n LIMIT ?", (trace_id, start, limit)
            )
            return [json.loads(r[0]) for r in rows]

        return await self.query(fn)

    async def stats_by_name(self, kinds: Iterable[str]) -> list[dict[str, Any]]:
        """Per (kind, name) of ended spans: count, p50/p95 duration in ms, error rate."""
        kind_list = list(kinds)

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            marks = ",".join("?" * len(kind_list))
            sql = f"SELECT kind, name, status, end_ns - start_ns FROM spans WHERE end_ns IS NOT NULL AND kind IN ({marks})"  # noqa: S608, E501
            args: list[Any] = list(kind_list)
            groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
            for kind, name, status, duration in conn.execute(sql, args):
                groups.setdefault((kind, name), []).append((status, duration))
            out = []
            for (kind, name), items in sorted(groups.items()):
                durations = sorted(d / 1e6 for _, d in items)
                errors = sum(1 for s, _ in items if s == STATUS_ERROR)
                out.append(
                    {
                        "kind": kind,
                        "name": name,
                        "count": len(items),
                        "p50_ms": _percentile(durations, 0.50),
                        "p95_ms": _percentile(durations, 0.95),
                        "error_rate": errors / len(items),
                    }
                )
            return out

        return await self.query(fn)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, -(-int(q * len(sorted_values) * 1000) // 1000))  # ceil(q * n), robust to float error
    return round(sorted_values[min(rank, len(sorted_values)) - 1], 3)
