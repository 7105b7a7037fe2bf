"""Upgrades of older SQLite histories to the current schema, in place, in the caller's transaction.

Schema versions: 1, spans with whole records; 2, a span's envelope object kept once, in the event that
published it (``spans.event_id``); 3, per-name statistics (:mod:`.name_stats`); 4, each thing stored once
(:mod:`.rows`): span rows whole and compact with shared resources, span lifecycle events as references to their
span, event ids as integers; 5, cancelled spans counted apart in the statistics; 6, statistics of model calls per
model (:mod:`.model_stats`), built from the model calls already stored. Each upgrade reads the old tables once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any, Final

from otelflow.records import EventRecord, SpanRecord
from otelflow.wire import SPAN_STARTED

from . import model_stats, name_stats
from .rows import SEQ_BITS, TYPE_CODES, ResourceCache, record_to_row
from .sqlite_writer import resource_id

__all__ = ["upgrade"]

_LEGACY_EPOCH: Final = "legacy"  # events whose ids are not <epoch>.<seq> keep their order under this epoch


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def upgrade(conn: sqlite3.Connection, version: str, statements: Iterable[str]) -> None:
    """Bring a database of schema ``version`` (1 to 5) to 6, creating what is missing with ``statements``
    (the current schema, ``CREATE ... IF NOT EXISTS``), inside an open transaction."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version == "1" and "spans" in tables:
        conn.execute("ALTER TABLE spans ADD COLUMN event_id TEXT")
    old_spans = "spans" in tables and "resource" not in _columns(conn, "spans")
    old_events = "events" in tables and "event_id" in _columns(conn, "events")
    if old_spans:
        conn.execute("ALTER TABLE spans RENAME TO spans_v3")
    if old_events:
        conn.execute("ALTER TABLE events RENAME TO events_v3")
    for index in ("spans_name", "events_trace", "events_id"):
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    for statement in statements:
        conn.execute(statement)
    if old_events:
        _copy_events(conn)
    if old_spans:
        _copy_spans(conn, old_events)
    name_stats.upgrade(conn)  # 3 and 4 kept them without the cancelled count
    if version in ("1", "2"):
        name_stats.backfill(conn)  # statistics were computed from the spans on each read before
    model_stats.backfill(conn)  # model calls stored before schema 6 (their spans' kind becomes llm)
    for table, old in (("spans_v3", old_spans), ("events_v3", old_events)):
        if old:
            conn.execute(f"DROP TABLE {table}")


def _copy_events(conn: sqlite3.Connection) -> None:
    """Old events, in their order, with ids as integers; a derived start (its data was its span's id) becomes
    a reference to its span. Events of no run were never read back: they are left out."""
    ordinals: dict[str, int] = {}
    rows: list[tuple[Any, ...]] = []
    old = conn.execute("SELECT n, event_id, trace_id, type, data FROM events_v3 WHERE trace_id IS NOT NULL ORDER BY n")
    for n, event_id, trace_id, type_, data in old:
        epoch, _, seq = str(event_id).partition(".")
        if not seq.isdigit() or int(seq) >= 1 << SEQ_BITS:
            epoch, seq = _LEGACY_EPOCH, str(n)
        ordinal = ordinals.get(epoch)
        if ordinal is None:
            ordinal = ordinals[epoch] = len(ordinals) + 1
        span_id = None
        if type_ == SPAN_STARTED and isinstance(data, str) and data.startswith('"'):
            span_id, data = json.loads(data), None
        rows.append((trace_id, ordinal << SEQ_BITS | int(seq), TYPE_CODES.get(type_, type_), span_id, data))
        if len(rows) >= 10_000:
            conn.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)", rows)
            rows.clear()
    conn.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT OR REPLACE INTO epochs VALUES (?, ?)", list(ordinals.items()))


def _copy_spans(conn: sqlite3.Connection, with_events: bool) -> None:
    """Old span rows (whole records, or the part their event's envelope object left out) as compact rows."""
    columns = "s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.status, s.start_ns, s.end_ns, s.record"
    if with_events:
        sql = (
            f"SELECT {columns}, e.data FROM spans_v3 s "  # noqa: S608
            "LEFT JOIN events_v3 e ON e.event_id = s.event_id AND e.trace_id = s.trace_id"
        )
    else:
        sql = f"SELECT {columns}, NULL FROM spans_v3 s"  # noqa: S608
    resource_ids: dict[str, int] = {}
    cache = ResourceCache()
    rows: list[tuple[Any, ...]] = []
    for *head, record, event in conn.execute(sql).fetchall():
        rec = _v3_record(record, event)
        resource = cache.get(rec.resource)
        known = resource_ids.get(resource) if resource else None
        if resource and known is None:
            known = resource_ids[resource] = resource_id(conn, resource)
        rows.append((*head, record_to_row(rec), known))
        if len(rows) >= 10_000:
            conn.executemany("INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            rows.clear()
    conn.executemany("INSERT OR REPLACE INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _v3_record(text: str, event: str | None) -> SpanRecord:
    """A record from a schema 1-3 row: a whole record as a JSON object, or (``{"x": ...}``) the part that the
    ``span`` object of its stored ``event`` left out."""
    data = json.loads(text)
    if "x" not in data:
        data["events"] = tuple(EventRecord(n, t, a) for n, t, a in data["events"])
        return SpanRecord(**data)
    if event is None:
        raise sqlite3.DatabaseError("a span row refers to an event that is not in the database")
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
