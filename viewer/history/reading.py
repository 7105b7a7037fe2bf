"""Reading a history back, whatever the store: spans from their rows, and a run's events as the stream told them
(the rows keep each thing once, see :mod:`.rows`; reading puts the envelopes back together).

The queries are written once, with ``?`` marks, against :class:`Sql`: a ``sqlite3.Connection`` is one, and the
PostgreSQL store hands in a connection that reads ``?`` as its own ``%s`` (no query here has a ``?`` or a ``%``
of its own)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any, Final, Protocol

from otelflow.records import SpanRecord
from otelflow.wire import RUN_STARTED, RUN_UPDATED

from .rows import (
    LIFE,
    MAX_LIFE,
    RUN_DELTA,
    SEQ_BITS,
    TYPE_CODES,
    TYPE_NAMES,
    event_position,
    life_envelopes,
    record_from_row,
    span_envelope,
)

__all__ = ["Cursor", "Sql", "read_events", "read_spans"]


class Cursor(Protocol):
    """What a query gives back."""

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Sql(Protocol):
    """A connection that runs a query with ``?`` marks."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...


_SPANS_OF_TRACE: Final = (
    "SELECT s.trace_id, s.span_id, s.parent_span_id, s.name, s.kind, s.status, s.start_ns, s.end_ns, s.record, "
    "r.data FROM spans s LEFT JOIN resources r ON r.id = s.resource WHERE s.trace_id = ?"
)
_LIFE: Final = TYPE_CODES[LIFE]
_RUN_DELTA: Final = TYPE_CODES[RUN_DELTA]
_RUN_WHOLE: Final = (TYPE_CODES[RUN_STARTED], TYPE_CODES[RUN_UPDATED])


def read_spans(conn: Sql, trace_id: str, *, by_start: bool = False) -> list[SpanRecord]:
    """A run's spans (``by_start``: by start time, then span id)."""
    sql = _SPANS_OF_TRACE + " ORDER BY s.start_ns, s.span_id" if by_start else _SPANS_OF_TRACE
    resources: dict[str, dict[str, Any]] = {}  # parsed once for the spans that share them
    return [record_from_row(row, resources) for row in conn.execute(sql, (trace_id,))]


def read_events(conn: Sql, trace_id: str, after: str | None, limit: int) -> list[dict[str, Any]] | None:
    """A run's events after the event ``after`` (all when ``None``), at most ``limit``; ``None`` if ``after`` is
    unknown."""
    start = -1
    if after:
        found = event_position(after, dict(conn.execute("SELECT epoch, ordinal FROM epochs")))
        if found is None:
            return None
        start = found
    # a LIFE row that begins up to MAX_LIFE - 1 events before the start may hold events after it
    lower = start - MAX_LIFE
    rows = conn.execute(
        "SELECT n, type, span_id, data FROM events WHERE trace_id = ? AND n > ? ORDER BY n LIMIT ?",
        (trace_id, lower, limit + MAX_LIFE),
    ).fetchall()
    if lower >= 0:  # the run's summary at the start: its last whole one, and the deltas since
        base = conn.execute(
            "SELECT n FROM events WHERE trace_id = ? AND n <= ? AND type IN (?, ?) AND data IS NOT NULL "
            "ORDER BY n DESC LIMIT 1",
            (trace_id, lower, *_RUN_WHOLE),
        ).fetchone()
        if base is not None:
            rows[:0] = conn.execute(
                "SELECT n, type, span_id, data FROM events WHERE trace_id = ? AND n >= ? AND n <= ? "
                "AND type IN (?, ?, ?) ORDER BY n",
                (trace_id, base[0], lower, *_RUN_WHOLE, _RUN_DELTA),
            ).fetchall()
    return _envelopes(conn, trace_id, rows, start)[:limit]


def _type_name(code: Any) -> str:
    return TYPE_NAMES.get(code, str(code)) if isinstance(code, int) else str(code)


def _envelopes(
    conn: Sql, trace_id: str, rows: list[tuple[int, Any, str | None, Any]], after: int
) -> list[dict[str, Any]]:
    """Event rows ``(n, type, span_id, data)`` as the envelopes of the events after ``n`` = ``after``;
    span-referenced ones are rebuilt from their span, a ``run.ended`` from its run, a ``run.updated`` kept as a
    delta from the run's summary before it (so ``rows`` start with the run's last whole summary)."""
    spans: dict[str, SpanRecord] | None = None
    epochs = {ordinal: epoch for epoch, ordinal in conn.execute("SELECT epoch, ordinal FROM epochs")}
    mask = (1 << SEQ_BITS) - 1
    out: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for n, code, span_id, data in rows:
        epoch, seq = epochs.get(n >> SEQ_BITS, ""), n & mask
        if span_id is None:
            if code == _RUN_DELTA:
                summary = {**summary, **json.loads(data)}
                if n > after:
                    out.append({"id": f"{epoch}.{seq}", "type": RUN_UPDATED, "run_id": trace_id, "run": summary})
            elif code in _RUN_WHOLE and data is not None:
                envelope = json.loads(data)
                summary = envelope.get("run") or {}
                if n > after:
                    out.append(envelope)
            elif n <= after:
                continue
            elif data is not None:
                out.append(json.loads(data))
            else:  # a run.ended: the run's row holds its summary (the latest one, should spans have come after it)
                row = conn.execute("SELECT summary FROM runs WHERE trace_id = ?", (trace_id,)).fetchone()
                if row is not None:
                    run = json.loads(row[0])
                    out.append({"id": f"{epoch}.{seq}", "type": _type_name(code), "run_id": trace_id, "run": run})
            continue
        if spans is None:
            spans = {rec.span_id: rec for rec in read_spans(conn, trace_id)}
        rec = spans.get(span_id)
        if rec is None:
            continue
        if code == _LIFE:
            out.extend(life_envelopes(epoch, seq, rec, data, after - (n - seq)))
        elif n > after:
            rebuilt = span_envelope(f"{epoch}.{seq}", _type_name(code), rec, data)
            if rebuilt is not None:
                out.append(rebuilt)
    return out
