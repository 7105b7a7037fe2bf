"""What every history store shares: rows queued for its writer thread without blocking, the backlog and health,
and the queries of the REST API, written once against :class:`viewer.history.reading.Sql`.

Contracts:

- Writes (:meth:`HistoryStore.batch`, ``put_*``) only queue and never block; the store's
  :class:`viewer.history.writer.BacklogWriter` commits them in order, keeps them through failures and retries.
  :meth:`HistoryStore.health` says ``degraded`` and why while writes fail or the backlog is full.
- The backlog is counted in rows and bytes; past ``max_backlog_bytes`` :attr:`HistoryStore.full` is true (the
  receiver answers 503) and batches that may be dropped (spans from this process, which cannot be asked to
  retry) are dropped and counted.
- A query (:meth:`HistoryStore.list_runs` and the rest) sees every write queued before it was asked, while the
  database works; a store runs it with :meth:`HistoryStore.ask`, off the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from otelflow import attributes as A
from otelflow.naming import NAME_PREFIXES
from otelflow.records import SpanRecord

from . import model_stats, name_stats
from .protocols import RunQuery
from .reading import Sql, read_events, read_spans
from .rows import ResourceCache, Rows
from .writer import BacklogWriter, rate_limited

__all__ = ["HistoryError", "HistoryStore"]

log = logging.getLogger("otelflow.viewer")

T = TypeVar("T")


class HistoryError(RuntimeError):
    """The history cannot be used; the message says why and what to do."""


class HistoryStore:
    """The shared part of a history store (see the module docstring); a store adds opening, closing and
    :meth:`ask`."""

    def __init__(self, writer: BacklogWriter, *, max_backlog_bytes: int) -> None:
        self.max_backlog_bytes = max_backlog_bytes
        self._writer = writer
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

    async def ask(self, fn: Callable[[Sql], T]) -> T:
        """Run ``fn`` on a connection that reads ``?`` marks, off the loop, after every write queued so far was
        tried."""
        raise NotImplementedError

    # ------------------------------------------------------------------ writes (never block)

    @contextlib.contextmanager
    def batch(self, *, droppable: bool = False, journal_end: int = 0) -> Iterator[None]:
        """Writes inside go to the writer thread as one item at the end (one wake-up, not one per row).
        Call from one thread (the loop); nested batches join the outer one. A ``droppable`` batch (rows nobody
        can be asked to send again) is dropped and counted instead when the backlog is full. ``journal_end``:
        the input is in the store up to there once these rows commit (it commits with them)."""
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
            rate_limited(log.error, "history backlog full: %d rows from this process dropped", len(rows))
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
        """The backlog has reached ``max_backlog_bytes``: new spans must wait (503) until it drains."""
        return self.backlog_bytes >= self.max_backlog_bytes

    @property
    def failure(self) -> str | None:
        """Why history writes fail now (``None`` when they work)."""
        return self._writer.failure

    def health(self) -> tuple[str, str | None]:
        """``("ok", None)``, or ``("degraded", why)`` while writes fail or the backlog is full."""
        failure = self._writer.failure
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

    async def flush(self) -> None:
        """Wait until everything queued so far was tried (written, unless the database refuses)."""
        await self.ask(lambda conn: None)

    async def alerts(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Stored alerts, newest first; ``status`` ``open`` or ``resolved`` narrows them."""

        def fn(conn: Sql) -> list[dict[str, Any]]:
            where, args = ("WHERE status = ?", [status]) if status else ("", [])
            sql = f"SELECT data FROM alerts {where} ORDER BY fired_ns DESC LIMIT ?"  # noqa: S608
            return [json.loads(r[0]) for r in conn.execute(sql, [*args, limit])]

        return await self.ask(fn)

    async def load_live(self) -> tuple[list[dict[str, Any]], list[SpanRecord]]:
        """Runs still running when the viewer last stopped, and their spans."""

        def fn(conn: Sql) -> tuple[list[dict[str, Any]], list[SpanRecord]]:
            runs = [
                json.loads(r[0]) for r in conn.execute("SELECT summary FROM runs WHERE status = ?", (A.STATUS_RUNNING,))
            ]
            spans: list[SpanRecord] = []
            for run in runs:
                spans.extend(read_spans(conn, run["trace_id"]))
            return runs, spans

        return await self.ask(fn)

    async def resolve(self, key: str) -> str | None:
        """The trace id of a stored run named by trace id or ``otelflow.run.id`` (the newest such run)."""

        def fn(conn: Sql) -> str | None:
            row = conn.execute(
                "SELECT trace_id FROM runs WHERE trace_id = ? OR run_id = ? ORDER BY trace_id = ? DESC, "
                "start_ns DESC LIMIT 1",
                (key.lower(), key, key.lower()),
            ).fetchone()
            return str(row[0]) if row else None

        return await self.ask(fn)

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

        def fn(conn: Sql) -> tuple[list[dict[str, Any]], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM runs {clause}", args).fetchone()[0]  # noqa: S608
            rows = conn.execute(
                f"SELECT summary FROM runs {page_clause} ORDER BY start_ns DESC, trace_id LIMIT ? OFFSET ?",  # noqa: S608
                [*page_args, query.limit, offset],
            ).fetchall()
            return [json.loads(r[0]) for r in rows], int(total)

        return await self.ask(fn)

    async def get_run(self, trace_id: str) -> tuple[dict[str, Any] | None, list[SpanRecord]]:
        """A run's summary and its spans (by start time)."""

        def fn(conn: Sql) -> tuple[dict[str, Any] | None, list[SpanRecord]]:
            row = conn.execute("SELECT summary FROM runs WHERE trace_id = ?", (trace_id,)).fetchone()
            spans = read_spans(conn, trace_id, by_start=True)
            return (json.loads(row[0]) if row else None), spans

        return await self.ask(fn)

    async def events(self, trace_id: str, after: str | None, limit: int = 10_000) -> list[dict[str, Any]] | None:
        """A run's stored events after the event ``after`` (all when ``None``); ``None`` if ``after`` is unknown."""

        def fn(conn: Sql) -> list[dict[str, Any]] | None:
            return read_events(conn, trace_id, after, limit)

        return await self.ask(fn)

    async def stats_by_model(self, since_ns: int | None = None) -> list[dict[str, Any]]:
        """Per (provider, model) of ended model calls, of all time or of the hours from ``since_ns``'s on (see
        :mod:`.model_stats`)."""

        def fn(conn: Sql) -> list[dict[str, Any]]:
            return model_stats.read_model_stats(conn, since_ns)

        return await self.ask(fn)

    async def stats_by_name(self, kinds: Iterable[str], since_ns: int | None = None) -> list[dict[str, Any]]:
        """Per (kind, name) of ended spans: count, p50/p95 duration in ms, error rate; of all time, or of the hours
        from ``since_ns``'s on. Read from the statistics kept as spans are written (:mod:`.name_stats`)."""
        kind_list = list(kinds)

        def fn(conn: Sql) -> list[dict[str, Any]]:
            return name_stats.read_stats(conn, kind_list, since_ns)

        return await self.ask(fn)
