"""History rows: how runs, spans and events are written down, shared by every history store.

A span row keeps what the envelope's ``span`` object leaves out (:func:`span_row`) when that object is stored
once, in the event that published it; otherwise the whole record (:func:`record_to_row`). :func:`record_from_row`
reads either back. :class:`Rows` collects rows flat, per table, for a writer to bind in multi-row statements.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from otelflow.records import EventRecord, SpanRecord
from otelflow.wire import quote, to_json

__all__ = [
    "ALERT_WIDTH",
    "EVENT_WIDTH",
    "RUN_WIDTH",
    "SPAN_WIDTH",
    "ResourceCache",
    "Rows",
    "record_from_row",
    "record_to_row",
    "span_row",
    "text",
]

SPAN_WIDTH: Final = 10  # trace_id, span_id, parent_span_id, name, kind, status, start_ns, end_ns, record, event_id
EVENT_WIDTH: Final = 4  # event_id, trace_id, type, data
RUN_WIDTH: Final = 9  # trace_id, run_id, name, service, status, start_ns, end_ns, updated, summary
ALERT_WIDTH: Final = 6  # alert_id, rule, status, fired_ns, resolved_ns, data


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


class ResourceCache:
    """The JSON of the last resource seen: the spans of one export request share one resource dict."""

    __slots__ = ("json", "resource")

    def __init__(self) -> None:
        self.resource: object = None
        self.json = ""


def span_row(rec: SpanRecord, cache: ResourceCache | None = None) -> str | None:
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
            f'{{"x":[{start},{"null" if end is None else end},{rec.span_kind},{quote(rec.status_message)},'
            f'{quote(rec.scope)},{quote(rec.phase)},[{text}]],"resource":{resource}}}'
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


def text(value: str) -> str:
    """SQLite wants valid UTF-8: lone surrogates (legal in JSON escapes) become U+FFFD."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


class Rows:
    """Rows for a writer, kept flat (one list of values per table, not a tuple per row), a batch's worth at a
    time, to be bound in multi-row statements. ``seq`` numbers queued batches (1, 2, ...); ``nbytes`` is about
    what their text takes; ``journal_end`` is the intake log's position once they commit (0: no change)."""

    __slots__ = ("alerts", "events", "journal_end", "nbytes", "runs", "seq", "spans")

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.events: list[Any] = []
        self.runs: dict[str, tuple[Any, ...]] = {}
        self.alerts: dict[str, tuple[Any, ...]] = {}
        self.seq = 0
        self.nbytes = 0
        self.journal_end = 0

    def __len__(self) -> int:
        return (len(self.spans) // SPAN_WIDTH) + (len(self.events) // EVENT_WIDTH) + len(self.runs) + len(self.alerts)

    def merge(self, other: Rows) -> None:
        self.spans += other.spans
        self.events += other.events
        self.runs.update(other.runs)
        self.alerts.update(other.alerts)
        self.seq = max(self.seq, other.seq)
        self.nbytes += other.nbytes
        self.journal_end = max(self.journal_end, other.journal_end)

    def add_span(self, rec: SpanRecord, event_id: str | None, cache: ResourceCache | None = None) -> None:
        """A span's row. ``event_id``: a stored event whose ``span`` object is exactly this record's envelope
        object; the row then keeps only the rest (no second copy)."""
        row = span_row(rec, cache) if event_id is not None else None
        if row is None:
            row, event_id = record_to_row(rec), None
        self.spans += (
            rec.trace_id,
            rec.span_id,
            rec.parent_span_id,
            text(rec.name),
            text(rec.kind),
            rec.status,
            rec.start_time_ns,
            rec.end_time_ns,
            row,
            event_id,
        )
        self.nbytes += len(row) + len(rec.name) + 100

    def add_run(self, summary: Mapping[str, Any], summary_json: str | None, updated: float) -> None:
        """A run summary's row; ``summary_json`` is its JSON when the caller has it (the same text)."""
        row = self.runs[summary["trace_id"]] = (
            summary["trace_id"],
            text(str(summary.get("otelflow_run_id"))) if summary.get("otelflow_run_id") else None,
            text(str(summary.get("name") or "")),
            text(str(summary.get("service") or "")),
            summary["status"],
            summary.get("start_time_ns") or 0,
            summary.get("end_time_ns"),
            updated,
            summary_json if summary_json is not None else json.dumps(summary, separators=(",", ":"), default=str),
        )
        self.nbytes += len(row[-1]) + 100

    def add_alert(self, alert: Mapping[str, Any]) -> None:
        """An alert's row (the latest state of it wins)."""
        data = json.dumps(alert, separators=(",", ":"), default=str, ensure_ascii=True)
        self.alerts[alert["id"]] = (
            alert["id"],
            text(str(alert.get("rule") or "")),
            alert["status"],
            alert["fired_ns"],
            alert.get("resolved_ns"),
            data,
        )
        self.nbytes += len(data) + 100

    def add_event(self, event_id: str, trace_id: str | None, type_: str, data: bytes) -> None:
        """An event's row (its envelope JSON)."""
        self.events += (event_id, trace_id, type_, data.decode("ascii"))
        self.nbytes += len(data) + 60
