"""The PostgreSQL history: what :class:`viewer.history.SqliteHistory` keeps, in a server that viewer replicas share.

Contracts:

- The same surface and the same answers as the SQLite history for the same input (the rows, the queries and the
  statistics are shared: :mod:`viewer.history.rows`, :mod:`viewer.history.store`, :mod:`viewer.history.reading`).
- Writes only queue and never block; a writer thread with a connection of its own commits them in order, in
  batches, and keeps them while the server is away, retrying (:mod:`viewer.history.postgres_writer`);
  :meth:`PostgresHistory.health` says ``degraded`` and why meanwhile, and past ``max_backlog_bytes``
  :attr:`PostgresHistory.full` is true, as for SQLite.
- Queries run on a small pool of connections in threads, after the writer has tried every write queued before
  them (so they see everything published before them while the server works), each in one snapshot
  (``REPEATABLE READ``).
- There is no intake log: :meth:`PostgresHistory.append` returns 0, :meth:`PostgresHistory.mark_journal` does
  nothing and :meth:`PostgresHistory.unconsumed` yields nothing. A nonzero ``journal_end`` given to
  :meth:`PostgresHistory.batch` is an input position (of a shared stream, say): it commits in the same
  transaction as the batch's rows, as the bigint ``value`` of the ``meta`` row ``position``, which only rises;
  :meth:`PostgresHistory.position` reads it back.
- A wrong or unreachable URL, refused credentials, or a database that is not an otelflow one (or of a newer
  schema) raise :class:`HistoryError` at :meth:`PostgresHistory.open`, in one line and within about
  ``connect_timeout_s``. The schema is created or migrated there (:mod:`viewer.history.postgres_schema`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from .postgres_schema import NotOtelflow, prepare
from .postgres_writer import PostgresWriter
from .reading import Cursor, Sql
from .store import HistoryError, HistoryStore

__all__ = ["PostgresHistory", "is_postgres_url"]

T = TypeVar("T")

_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: object) -> bool:
    """Whether ``db`` is a ``postgresql://`` or ``postgres://`` URL."""
    return isinstance(db, str) and db.startswith(_SCHEMES)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Marks:
    """A psycopg connection that runs the shared queries: their ``?`` marks become ``%s``."""

    __slots__ = ("conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        return self.conn.execute(sql.replace("?", "%s"), parameters)


class PostgresHistory(HistoryStore):
    """PostgreSQL persistence and queries (see the module docstring)."""

    _writer: PostgresWriter

    def __init__(
        self,
        url: str,
        *,
        retention_days: float | None = 30.0,
        max_runs: int | None = 10_000,
        max_backlog_bytes: int = 128 * 1024 * 1024,
        connect_timeout_s: float = 5.0,
        readers: int = 4,
    ) -> None:
        writer = PostgresWriter(self._connect, retention_days=retention_days, max_runs=max_runs)
        super().__init__(writer, max_backlog_bytes=max_backlog_bytes)
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.readers = readers
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def shown_url(self) -> str:
        """The URL without its password."""
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", self.url)

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.url, connect_timeout=max(1, round(self.connect_timeout_s)), application_name="otelflow-viewer"
        )

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Connect, create or migrate the schema, start the writer and the readers; raises :class:`HistoryError`."""
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            raise HistoryError(f"cannot connect to the history database {self.shown_url}: {_one_line(exc)}") from None
        try:
            prepare(conn)
            found = conn.execute("SELECT value FROM meta WHERE key = 'position'").fetchone()
            self._writer.journal_pos = int(found[0]) if found else 0
            conn.commit()
        except NotOtelflow as exc:
            conn.close()
            raise HistoryError(f"the database {self.shown_url} {exc}") from None
        except psycopg.Error as exc:
            conn.close()
            raise HistoryError(f"cannot use the history database {self.shown_url}: {_one_line(exc)}") from None
        self._pool = psycopg_pool.ConnectionPool(
            self.url,
            min_size=1,
            max_size=self.readers,
            open=False,
            kwargs={"connect_timeout": max(1, round(self.connect_timeout_s)), "application_name": "otelflow-viewer"},
            configure=_reader,
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=self.connect_timeout_s,
            name="otelflow-history",
        )
        self._pool.open(wait=False)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.readers, thread_name_prefix="otelflow-history-read")
        self._writer.start_on(conn)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued (while the server takes it, within ``timeout``), then stop the threads and
        close the connections."""
        self._writer.stop(timeout)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    # ------------------------------------------------------------------ no intake log

    def append(self, kind: int, body: bytes) -> int:
        """No intake log here: 0 (what is acknowledged is in the shared stream, or nowhere)."""
        return 0

    def mark_journal(self, end: int) -> None:
        """No intake log here: nothing to mark."""

    def unconsumed(self) -> Iterator[tuple[int, int, bytes]]:
        """No intake log here: nothing."""
        return iter(())

    async def position(self) -> int:
        """The input position the history holds everything up to: the highest nonzero ``journal_end`` of a
        batch committed (by any viewer sharing the database), 0 if none. Sees the batches queued before it
        while the server works."""
        found = await self.ask(lambda conn: conn.execute("SELECT value FROM meta WHERE key = 'position'").fetchone())
        return int(found[0]) if found else 0

    # ------------------------------------------------------------------ queries

    async def query(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``fn(connection)`` on a reader's connection (``%s`` marks) after every write queued so far was
        tried."""
        if not self._writer.running or self._executor is None:
            raise HistoryError("the history database is not open")
        if self._writer.pending:
            await asyncio.wrap_future(self._writer.barrier())
        executor = self._executor
        return await asyncio.get_running_loop().run_in_executor(executor, self._read, fn)

    def _read(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        assert self._pool is not None
        try:
            with self._pool.connection() as conn:
                return fn(conn)
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            raise HistoryError(f"the history database {self.shown_url} cannot be read: {_one_line(exc)}") from None

    async def ask(self, fn: Callable[[Sql], T]) -> T:
        return await self.query(lambda conn: fn(_Marks(conn)))


def _reader(conn: psycopg.Connection[Any]) -> None:
    """A reader's connection: each read sees one snapshot."""
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
