"""The PostgreSQL history's writer (:class:`viewer.history.writer.BacklogWriter`): one connection of its own,
rows written in order, kept and retried while the server is away.

Contracts (besides the writer thread's):

- A chunk of the backlog is one transaction: each table's rows (the last of each key) go in with ``COPY`` into a
  temporary table and one ``INSERT ... ON CONFLICT DO UPDATE`` from it; the statistics of the ended spans and
  model calls are merged into their rows under an advisory lock (replicas writing one database add up, not
  overwrite); the input position (``Rows.journal_end``) is raised to the chunk's, never lowered (``GREATEST``).
- When the connection breaks (the server restarts, the network drops), it is closed and opened again on the
  next try; until then the rows wait in the backlog (``failure`` says why). Values PostgreSQL cannot hold
  (a NUL character in a name) are the ``data_errors``: their chunk is written row by row, NUL characters
  replaced (U+FFFD), and rows that still fail are dropped, counted and logged.
- Retention as the SQLite writer's: runs that ended more than ``retention_days`` ago and the oldest ended ones
  beyond ``max_runs`` leave with their spans and events (running runs never), trimmed inside a write that could
  pass 1.05 x ``max_runs``; resolved alerts after ``retention_days`` and beyond the newest 10,000; hourly
  statistics after ``retention_days``; resources no span refers to. Resource ids are looked up in each
  transaction (no cache across them): another viewer's retention may delete an unused resource, and an
  advisory lock keeps that from happening while a write is under way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import psycopg

from otelflow import attributes as A

from .model_stats import COLUMNS as MODEL_COLUMNS
from .model_stats import call_groups
from .model_stats import merged_row as model_row
from .name_stats import ended_groups, merged_row
from .rows import EVENT_WIDTH, SEQ_BITS, SPAN_WIDTH, TYPE_CODES, Rows
from .writer import BacklogWriter, rate_limited

__all__ = ["PostgresWriter"]

log = logging.getLogger("otelflow.viewer")

_STATS_LOCK: Final = 0x6F74656C01  # writers of one database merge statistics one at a time
_RESOURCES_LOCK: Final = 0x6F74656C02  # writers share it; deleting unused resources takes it alone
_RESOURCES_KEPT: Final = 1_000  # distinct resources kept before retention looks for unused ones


def _table(name: str, columns: str, key: str) -> tuple[str, str, str]:
    """``(COPY into the temporary table, upsert from it, upsert of one row)`` for a table."""
    cols = [c.strip() for c in columns.split(",")]
    keys = {c.strip() for c in key.split(",")}
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in keys)
    conflict = f"ON CONFLICT ({key}) DO UPDATE SET {sets}"
    marks = ", ".join(["%s"] * len(cols))
    return (
        f"COPY w_{name} ({columns}) FROM STDIN",
        f"INSERT INTO {name} ({columns}) SELECT {columns} FROM w_{name} {conflict}",  # noqa: S608 - names of ours
        f"INSERT INTO {name} ({columns}) VALUES ({marks}) {conflict}",  # noqa: S608
    )


_TABLES: Final = {
    "spans": _table(
        "spans",
        "trace_id, span_id, parent_span_id, name, kind, status, start_ns, end_ns, record, resource",
        "trace_id, span_id",
    ),
    "runs": _table("runs", "trace_id, run_id, name, service, status, start_ns, end_ns, updated, summary", "trace_id"),
    "events": _table("events", "trace_id, n, type, span_id, data", "trace_id, n"),
    "alerts": _table("alerts", "alert_id, rule, status, fired_ns, resolved_ns, data", "alert_id"),
}
_NAME_STATS: Final = _table("name_stats", "kind, name, hour, count, errors, buckets, cancelled", "kind, name, hour")[2]
_MODEL_STATS: Final = _table("model_stats", f"provider, model, hour, {MODEL_COLUMNS}", "provider, model, hour")[2]
_POSITION: Final = (
    "INSERT INTO meta VALUES ('position', %s) ON CONFLICT (key) "
    "DO UPDATE SET value = GREATEST(meta.value, EXCLUDED.value)"
)


def _clean(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row with NUL characters (which PostgreSQL's text cannot hold) replaced."""
    return tuple(v.replace("\x00", "\ufffd") if isinstance(v, str) else v for v in row)


class PostgresWriter(BacklogWriter):
    """The writer of a PostgreSQL history (see the module docstring)."""

    data_errors = (OverflowError, ValueError, TypeError, psycopg.DataError, psycopg.IntegrityError)
    thread_name = "otelflow-history-pg"

    def __init__(
        self, connect: Callable[[], psycopg.Connection[Any]], *, retention_days: float | None, max_runs: int | None
    ) -> None:
        super().__init__(retention_days=retention_days, max_runs=max_runs)
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self._ordinals: dict[str, int] = {}  # epoch -> ordinal, as committed (epochs are never deleted)
        self._pending_ordinals: dict[str, int] = {}

    def start_on(self, conn: psycopg.Connection[Any]) -> None:
        """Start the thread on this connection (it closes it when it stops)."""
        self._conn = conn
        self._prepare(conn)
        self.start()

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        for name in _TABLES:
            conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS w_{name} (LIKE {name}) ON COMMIT DELETE ROWS")
        self._ordinals = {epoch: ordinal for epoch, ordinal in conn.execute("SELECT epoch, ordinal FROM epochs")}
        conn.commit()

    def connection(self) -> psycopg.Connection[Any]:
        """The open connection, opened again first when it broke; raises ``psycopg.OperationalError``."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                with contextlib.suppress(psycopg.Error):
                    conn.close()
            self._conn = None
            conn = self._connect()
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return conn

    def abandon(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.rollback()
        except psycopg.Error:  # the connection is gone: the next write opens another
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ writing

    def write(self, rows: Rows) -> None:
        if not (len(rows) or rows.journal_end):
            return
        conn = self.connection()
        ended, over = self.trim_due(rows)
        self._pending_ordinals.clear()
        remaining = None
        with conn.cursor() as cur:
            tables = self._values(cur, rows)
            for name, values in tables.items():
                if values:
                    copy_sql, upsert, _ = _TABLES[name]
                    with cur.copy(copy_sql) as copy:
                        for row in values:
                            copy.write_row(row)
                    cur.execute(upsert)
            self._add_stats(cur, rows)
            if rows.journal_end:
                cur.execute(_POSITION, (rows.journal_end,))
            if over:  # in the same transaction: no commit holds more than 1.05 x max_runs ended runs
                remaining = self._trim_runs(cur)
        conn.commit()
        self._ordinals.update(self._pending_ordinals)
        for name, values in tables.items():
            self.stats[name] += len(values)
        self.stats["batches"] += 1
        self.counted(ended, remaining)

    def write_one_by_one(self, rows: Rows) -> None:
        conn = self.connection()
        dropped = 0
        self._pending_ordinals.clear()
        with conn.cursor() as cur:
            for name, values in self._values(cur, rows).items():
                for row in values:
                    try:
                        with conn.transaction():  # a savepoint: a row that fails leaves the others
                            cur.execute(_TABLES[name][2], _clean(row))
                        self.stats[name] += 1
                    except self.data_errors as exc:
                        dropped += 1
                        rate_limited(log.error, "a history row cannot be written and is dropped: %s", exc)
            self._add_stats(cur, rows)
            if rows.journal_end:
                cur.execute(_POSITION, (rows.journal_end,))
        conn.commit()
        self._ordinals.update(self._pending_ordinals)
        self.stats["dropped_rows"] += dropped
        self.stats["errors"] += 1 if dropped else 0

    def _values(self, cur: psycopg.Cursor[Any], rows: Rows) -> dict[str, list[tuple[Any, ...]]]:
        """Each table's rows, the last of each key, with resources as references and event ids and types as
        integers (new epochs and resources inserted on the way)."""
        cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_RESOURCES_LOCK,))
        return {
            "spans": self._span_values(cur, rows.spans),
            "runs": list(rows.runs.values()),
            "events": self._event_values(cur, rows.events),
            "alerts": list(rows.alerts.values()),
        }

    def _span_values(self, cur: psycopg.Cursor[Any], flat: list[Any]) -> list[tuple[Any, ...]]:
        ids = self._resource_ids(cur, {flat[i] for i in range(SPAN_WIDTH - 1, len(flat), SPAN_WIDTH) if flat[i]})
        out: dict[tuple[str, str], tuple[Any, ...]] = {}
        for i in range(0, len(flat), SPAN_WIDTH):
            row = flat[i : i + SPAN_WIDTH]
            row[-1] = ids.get(row[-1]) if row[-1] else None
            out[(row[0], row[1])] = tuple(row)
        return list(out.values())

    @staticmethod
    def _resource_ids(cur: psycopg.Cursor[Any], resources: Iterable[str]) -> dict[str, int]:
        """Resource JSON -> the id of its row (inserted if new), in this transaction."""
        wanted = sorted(resources)
        if not wanted:
            return {}
        cur.execute(
            "INSERT INTO resources (data) SELECT unnest(%s::text[]) ON CONFLICT (md5(data)) DO NOTHING", (wanted,)
        )
        cur.execute("SELECT data, id FROM resources WHERE md5(data) = ANY(SELECT md5(unnest(%s::text[])))", (wanted,))
        return {data: ident for data, ident in cur.fetchall()}

    def _event_values(self, cur: psycopg.Cursor[Any], flat: list[Any]) -> list[tuple[Any, ...]]:
        out: dict[tuple[str, int], tuple[Any, ...]] = {}
        ordinals, pending = self._ordinals, self._pending_ordinals
        for i in range(0, len(flat), EVENT_WIDTH):
            trace_id, event_id, type_, span_id, data = flat[i : i + EVENT_WIDTH]
            code = TYPE_CODES.get(type_)
            if code is None:  # every type the stream has is coded: this one is nobody's
                rate_limited(log.error, "an event of an unknown type is not stored: %s", type_)
                continue
            epoch, _, seq = event_id.partition(".")
            ordinal = ordinals.get(epoch) or pending.get(epoch)
            if ordinal is None:
                cur.execute("INSERT INTO epochs (epoch) VALUES (%s) ON CONFLICT (epoch) DO NOTHING", (epoch,))
                found = cur.execute("SELECT ordinal FROM epochs WHERE epoch = %s", (epoch,)).fetchone()
                assert found is not None
                ordinal = pending[epoch] = int(found[0])
            n = ordinal << SEQ_BITS | (int(seq) if seq.isdigit() else 0)
            out[(trace_id, n)] = (trace_id, n, code, span_id, data)
        return list(out.values())

    @staticmethod
    def _add_stats(cur: psycopg.Cursor[Any], rows: Rows) -> None:
        """Merge the chunk's ended spans and model calls into their statistics (under the statistics' lock)."""
        names = ended_groups(rows.spans)
        models = call_groups(rows.llm) if rows.llm else {}
        if not names and not models:
            return
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_STATS_LOCK,))
        if names:
            stored = _stored(cur, "name_stats", "kind, name, hour", "count, errors, buckets, cancelled", names)
            cur.executemany(_NAME_STATS, [merged_row(key, s, stored.get(key)) for key, s in names.items()])
        if models:
            stored = _stored(cur, "model_stats", "provider, model, hour", MODEL_COLUMNS, models)
            cur.executemany(_MODEL_STATS, [model_row(key, g, stored.get(key)) for key, g in models.items()])

    # ------------------------------------------------------------------ retention

    def retention(self) -> None:
        conn = self.connection()
        try:
            with conn.cursor() as cur:
                self._alert_retention(cur)
                if self.retention_days is not None:
                    cutoff = time.time_ns() - int(self.retention_days * 86400e9)
                    cur.execute(
                        "DELETE FROM runs WHERE status != %s AND COALESCE(end_ns, start_ns) < %s RETURNING trace_id",
                        (A.STATUS_RUNNING, cutoff),
                    )
                    _delete_runs(cur, [r[0] for r in cur.fetchall()])
                if self.max_runs is not None:
                    self.counted(0, self._trim_runs(cur))
                self._drop_unused_resources(cur)
            conn.commit()
        except BaseException:
            self.abandon()
            raise

    def _alert_retention(self, cur: psycopg.Cursor[Any]) -> None:
        """Resolved alerts and hourly statistics past retention leave (:meth:`BacklogWriter.alert_retention`)."""
        for sql, args in self.alert_retention():
            cur.execute(sql.replace("?", "%s"), args)

    def _trim_runs(self, cur: psycopg.Cursor[Any]) -> int:
        """Inside a transaction: delete the oldest ended runs beyond ``max_runs`` (with their spans and events);
        how many ended runs remain."""
        assert self.max_runs is not None
        cur.execute(
            "DELETE FROM runs WHERE trace_id IN (SELECT trace_id FROM runs WHERE status != %s "
            "ORDER BY start_ns DESC OFFSET %s) RETURNING trace_id",
            (A.STATUS_RUNNING, self.max_runs),
        )
        _delete_runs(cur, [r[0] for r in cur.fetchall()])
        found = cur.execute("SELECT COUNT(*) FROM runs WHERE status != %s", (A.STATUS_RUNNING,)).fetchone()
        return int(found[0]) if found else 0

    @staticmethod
    def _drop_unused_resources(cur: psycopg.Cursor[Any]) -> None:
        """Delete the resources no span refers to any more, once there are more than ``_RESOURCES_KEPT``, while
        no write is under way (their lock)."""
        found = cur.execute("SELECT COUNT(*) FROM resources").fetchone()
        if found is None or found[0] <= _RESOURCES_KEPT:
            return
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_RESOURCES_LOCK,))
        cur.execute("DELETE FROM resources r WHERE NOT EXISTS (SELECT 1 FROM spans s WHERE s.resource = r.id)")


def _delete_runs(cur: psycopg.Cursor[Any], traces: list[str]) -> None:
    """Delete the spans and events of these runs (their rows are gone), inside the caller's transaction."""
    if traces:
        for table in ("spans", "events"):
            cur.execute(f"DELETE FROM {table} WHERE trace_id = ANY(%s)", (traces,))  # noqa: S608


def _stored(
    cur: psycopg.Cursor[Any], table: str, key: str, columns: str, keys: Mapping[tuple[str, str, int], Any]
) -> dict[tuple[str, str, int], tuple[Any, ...]]:
    """The rows of a statistics table with these keys: key -> its ``columns``."""
    a, b, hours = zip(*keys, strict=True)
    cur.execute(
        f"SELECT {key}, {columns} FROM {table} "  # noqa: S608
        f"WHERE ({key}) IN (SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]))",
        (list(a), list(b), list(hours)),
    )
    return {(r[0], r[1], r[2]): tuple(r[3:]) for r in cur.fetchall()}
