"""History rows: how runs, spans and events are written down, shared by every history store.

Each thing is stored once:

- a span is one row: its indexed fields in columns and the rest in one compact JSON array (:func:`record_to_row`,
  read back by :func:`record_from_row`); its resource is a reference to a row of the resources table, which
  holds each distinct resource once;
- the events of the stream that only tell a span's life (``span.started``, ``span.event``, ``span.ended``) are
  references to the span: consecutive ones of one span share one row (:data:`LIFE`, e.g. ``s,0,1,e`` for the
  start, the events 0 and 1 and the end of a span that arrived ended), and reading rebuilds their envelopes from
  the span's row (:func:`span_envelope`). A live start also keeps what its snapshot had of its own
  (:func:`start_data`), and an event of a span still running is kept whole (:func:`event_data`): a later
  snapshot may have dropped it. A ``run.ended`` is rebuilt from the run's row, a ``run.updated`` is what changed in the
  run's summary (:data:`RUN_DELTA`); other events keep their envelope JSON;
- an event's id ``<epoch>.<seq>`` is stored as one integer, ``n`` = the epoch's ordinal << 40 | seq, which
  orders a run's events and finds the one a client resumes after (:func:`event_position`).

:class:`Rows` collects rows flat, per table, for a writer to bind in multi-row statements.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

from otelflow.attributes import KIND_LLM, STATUS_CANCELLED, STATUS_ERROR, STATUS_OK
from otelflow.records import EventRecord, SpanRecord
from otelflow.wire import (
    ALERT_FIRED,
    ALERT_RESOLVED,
    RUN_ENDED,
    RUN_STARTED,
    RUN_UPDATED,
    SPAN_ABANDONED,
    SPAN_ENDED,
    SPAN_EVENT,
    SPAN_STALLED,
    SPAN_STARTED,
    SPAN_UNSTALLED,
    SPAN_UPDATED,
    derived_start,
    to_json,
)

from ..live.events import orjson_text, plain

__all__ = [
    "ALERT_WIDTH",
    "EVENT_WIDTH",
    "LIFE",
    "MAX_LIFE",
    "RUN_DELTA",
    "RUN_DELTA_EVERY",
    "RUN_WIDTH",
    "SEQ_BITS",
    "SPAN_REFERENCED",
    "SPAN_WIDTH",
    "TYPE_CODES",
    "TYPE_NAMES",
    "LlmCall",
    "ResourceCache",
    "Rows",
    "call_of",
    "event_data",
    "event_position",
    "life_envelopes",
    "life_item",
    "record_from_row",
    "record_to_row",
    "span_envelope",
    "start_data",
    "text",
]

SPAN_WIDTH: Final = 10  # trace_id, span_id, parent_span_id, name, kind, status, start_ns, end_ns, record, resource
EVENT_WIDTH: Final = 5  # trace_id, event_id, type, span_id, data (the writer turns event_id and type into integers)
RUN_WIDTH: Final = 9  # trace_id, run_id, name, service, status, start_ns, end_ns, updated, summary
ALERT_WIDTH: Final = 6  # alert_id, rule, status, fired_ns, resolved_ns, data

_SERVICE_NAME: Final = "service.name"
SEQ_BITS: Final = 40  # n = epoch ordinal << SEQ_BITS | seq
# Event types as stored (one byte instead of a name). Codes are part of the file format: add, never renumber.
TYPE_CODES: Final[Mapping[str, int]] = {
    "span.life": 0,  # LIFE, below
    RUN_STARTED: 1,
    RUN_UPDATED: 2,
    RUN_ENDED: 3,
    SPAN_STARTED: 4,
    SPAN_UPDATED: 5,
    SPAN_EVENT: 6,
    SPAN_ENDED: 7,
    SPAN_ABANDONED: 8,
    SPAN_STALLED: 9,
    SPAN_UNSTALLED: 10,
    ALERT_FIRED: 11,
    ALERT_RESOLVED: 12,
    "run.updated.delta": 13,  # RUN_DELTA, below
}
TYPE_NAMES: Final[Mapping[int, str]] = {code: name for name, code in TYPE_CODES.items()}
# Events stored as a reference to their span: the span's row rebuilds them exactly (ended spans are final; a
# start is the span with its ending taken away, as the stream tells the start of a span that arrived ended).
SPAN_REFERENCED: Final = frozenset({SPAN_STARTED, SPAN_EVENT, SPAN_ENDED})
# Storage only: consecutive span-referenced events of one span, in one row whose data lists them: ``s`` a start
# (of a span that arrived ended), ``e`` the end, a number the index of a span.event's event in the span.
LIFE: Final = "span.life"
# Storage only: a run.updated kept as the fields of the run's summary that changed since its last stored one;
# reading applies it to the summary before it. Every RUN_DELTA_EVERY-th update is kept whole.
RUN_DELTA: Final = "run.updated.delta"
RUN_DELTA_EVERY: Final = 64
MAX_LIFE: Final = 256  # events in one LIFE row (a read that resumes in one goes back this far)


def life_item(type_: str, index: int) -> str:
    """The item of a LIFE row for an event of ``type_`` (``index``: a span.event's)."""
    return "s" if type_ == SPAN_STARTED else "e" if type_ == SPAN_ENDED else str(index)


def life_envelopes(epoch: str, seq: int, rec: SpanRecord, items: str, after: int) -> list[dict[str, Any]]:
    """The envelopes of a LIFE row whose first event is ``<epoch>.<seq>``, those of seq above ``after``."""
    out = []
    for i, item in enumerate(items.split(",")):
        if seq + i <= after:
            continue
        event_id = f"{epoch}.{seq + i}"
        if item == "s":
            envelope = span_envelope(event_id, SPAN_STARTED, rec, None)
        elif item == "e":
            envelope = span_envelope(event_id, SPAN_ENDED, rec, None)
        else:
            envelope = span_envelope(event_id, SPAN_EVENT, rec, int(item))
        if envelope is not None:
            out.append(envelope)
    return out


def event_position(event_id: str, ordinals: Mapping[str, int]) -> int | None:
    """``n`` of an event id ``<epoch>.<seq>`` whose epoch has an ordinal, else ``None``."""
    epoch, _, seq = event_id.partition(".")
    ordinal = ordinals.get(epoch)
    if ordinal is None or not seq.isdigit() or int(seq) >= 1 << SEQ_BITS:
        return None
    return ordinal << SEQ_BITS | int(seq)


def record_to_row(rec: SpanRecord) -> str:
    """What a span's columns leave out, as one JSON array: ``[span kind, status message, scope, phase, service
    (null: its resource's service.name), attributes, [[event name, time - span start, attributes], ...]]``;
    :func:`record_from_row` reads it back."""
    start = rec.start_time_ns
    row = _plain_row(rec)
    if row is not None:
        return row
    return _dumps(
        [
            rec.span_kind,
            rec.status_message,
            rec.scope,
            rec.phase,
            None if rec.service == rec.resource.get(_SERVICE_NAME) else rec.service,
            rec.attributes,
            [[e.name, e.time_ns - start, e.attributes] for e in rec.events],
        ]
    )


def _plain_row(rec: SpanRecord) -> str | None:
    """:func:`record_to_row`'s text by orjson, when every value is one it writes as this module's encoder does
    (:func:`viewer.live.events.plain` and :func:`viewer.live.events.orjson_text`); else ``None``."""
    start, events = rec.start_time_ns, rec.events
    if (
        type(rec.span_kind) is not int
        or type(start) is not int
        or type(rec.status_message) is not str
        or type(rec.scope) is not str
        or type(rec.phase) is not str
        or type(rec.service) is not str
        or not plain(rec.attributes)
    ):
        return None
    items = []
    for e in events:
        if type(e.name) is not str or type(e.time_ns) is not int or not plain(e.attributes):
            return None
        items.append([e.name, e.time_ns - start, e.attributes])
    service = None if rec.service == rec.resource.get(_SERVICE_NAME) else rec.service
    return orjson_text([rec.span_kind, rec.status_message, rec.scope, rec.phase, service, rec.attributes, items])


def _plain(value: object) -> object:
    """Mappings (a record's attributes may be read-only views) as dicts; anything else as its text."""
    return dict(value) if isinstance(value, Mapping) else str(value)


def _make_dumps() -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"), default=_plain)`` with one C encoder made once: ``json.dumps``
    with a ``default`` builds a new encoder on every call, which costs more than encoding a span's row."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(separators=(",", ":"), default=_plain).encode
    encode = make(None, _plain, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)

    def dumps(obj: Any) -> str:
        return "".join(encode(obj, 0))

    return dumps


_dumps: Final = _make_dumps()


def record_from_row(row: tuple[Any, ...], resources: dict[str, Any] | None = None) -> SpanRecord:
    """A record from its columns ``(trace_id, span_id, parent_span_id, name, kind, status, start_ns, end_ns,
    record, resource JSON)``; ``resources`` caches parsed resources across the rows of one read."""
    trace_id, span_id, parent, name, kind, status, start, end, record, resource_json = row
    span_kind, status_message, scope, phase, service, attributes, events = json.loads(record)
    resource = _resource(resource_json, resources)
    if service is None:
        service = resource.get(_SERVICE_NAME, "")
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        name=name,
        parent_span_id=parent,
        kind=kind,
        span_kind=span_kind,
        start_time_ns=start,
        end_time_ns=end,
        status=status,
        status_message=status_message,
        attributes=attributes,
        events=tuple(EventRecord(n, start + t, a) for n, t, a in events),
        service=service,
        resource=resource,
        scope=scope,
        phase=phase,
    )


def _resource(text: str | None, cache: dict[str, Any] | None) -> dict[str, Any]:
    if not text:
        return {}
    if cache is None:
        return dict(json.loads(text))
    found: dict[str, Any] | None = cache.get(text)
    if found is None:
        found = cache[text] = json.loads(text)
    return found  # shared by the spans of the read, as by those of one export request


def start_data(rec: SpanRecord) -> str:
    """What the first snapshot of a span that started live has of its own: ``[name, attributes, [[event name,
    time, attributes], ...], phase]`` (its events kept whole: an SDK that bounds a span's events drops the
    oldest, so a later snapshot may not have them). The rest of it is the span's later snapshot with its ending
    taken away."""
    return _dumps([rec.name, rec.attributes, [[e.name, e.time_ns, e.attributes] for e in rec.events], rec.phase])


def event_data(event: EventRecord) -> str:
    """A lifecycle event of a running span, kept whole (``[name, time, attributes]``): a later snapshot of the
    span may have dropped it (SDKs bound a span's events and drop the oldest), so it cannot refer to one."""
    return _dumps([event.name, event.time_ns, event.attributes])


def span_envelope(event_id: str, type_: str, rec: SpanRecord, data: int | str | None) -> dict[str, Any] | None:
    """The envelope of a span-referenced event (:data:`SPAN_REFERENCED`) rebuilt from its span and the row's
    ``data``: the index of a ``span.event``'s lifecycle event in the span, or a live start's :func:`start_data`
    (none for the start of a span that arrived ended). ``None`` when the span no longer has the event."""
    head: dict[str, Any] = {"id": event_id, "type": type_, "run_id": rec.trace_id}
    if type_ == SPAN_EVENT:
        if isinstance(data, str):  # a running span's event, kept whole (event_data)
            event = EventRecord(*json.loads(data))
        elif isinstance(data, int) and 0 <= data < len(rec.events):  # an event of the ended span
            event = rec.events[data]
        else:
            return None
        head.update(
            trace_id=rec.trace_id,
            span_id=rec.span_id,
            span_name=rec.name,
            span_kind=rec.kind,
            event=event.to_dict(),
        )
    elif type_ == SPAN_STARTED:
        start = derived_start(rec)
        if isinstance(data, str):
            start.name, start.attributes, events, start.phase = json.loads(data)
            start.events = tuple(EventRecord(n, t, a) for n, t, a in events)
        head["span"] = start.to_dict()
    else:
        head["span"] = rec.to_dict()
    return head


class ResourceCache:
    """The JSON of the last resource seen: the spans of one export request share one resource dict."""

    __slots__ = ("json", "resource")

    def __init__(self) -> None:
        self.resource: object = None
        self.json = ""

    def get(self, resource: Mapping[str, Any]) -> str:
        if resource is not self.resource:
            try:
                self.json = to_json(resource) if resource else ""
            except (ValueError, TypeError):
                self.json = _dumps(resource)
            self.resource = resource
        return self.json


def text(value: str) -> str:
    """SQLite wants valid UTF-8: lone surrogates (legal in JSON escapes) become U+FFFD."""
    return value if value.isascii() else value.encode("utf-8", "replace").decode("utf-8")


_LLM_COUNTED: Final = (STATUS_OK, STATUS_ERROR, STATUS_CANCELLED)

# provider, model, status, start_ns, end_ns, input tokens, output tokens, cost (None: unknown), ttft ms (None)
LlmCall = tuple[str, str, str, int, int, int | None, int | None, float | None, float | None]


def call_of(rec: SpanRecord) -> LlmCall | None:
    """What the statistics keep of an ended model call (a :class:`otelflow.records.SpanRecord` of kind llm), or
    ``None`` for anything else (running, abandoned, not a model call)."""
    if rec.kind != KIND_LLM or rec.end_time_ns is None or rec.status not in _LLM_COUNTED:
        return None
    llm = rec.llm()
    if llm is None:
        return None
    return (
        llm.get("provider") or "",
        llm.get("model") or "",
        rec.status,
        rec.start_time_ns,
        rec.end_time_ns,
        llm.get("input_tokens"),
        llm.get("output_tokens"),
        llm.get("cost_usd"),
        llm.get("time_to_first_token_ms"),
    )


class Rows:
    """Rows for a writer, kept flat (one list of values per table, not a tuple per row), a batch's worth at a
    time, to be bound in multi-row statements. ``seq`` numbers queued batches (1, 2, ...); ``nbytes`` is about
    what their text takes; ``journal_end`` is the intake log's position once they commit (0: no change).
    ``len()`` counts rows as queued: a run or alert written twice (merged into one row) counts twice, so that
    what the writer took and what it committed add up to the same."""

    __slots__ = ("alerts", "events", "journal_end", "llm", "merged", "nbytes", "runs", "seq", "spans")

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.llm: list[LlmCall] = []  # ended model calls among the spans, for their statistics
        self.events: list[Any] = []
        self.runs: dict[str, tuple[Any, ...]] = {}
        self.alerts: dict[str, tuple[Any, ...]] = {}
        self.seq = 0
        self.nbytes = 0
        self.journal_end = 0
        self.merged = 0  # rows of merged batches that replaced a row of this one (same run or alert)

    def __len__(self) -> int:
        spans, events = len(self.spans) // SPAN_WIDTH, len(self.events) // EVENT_WIDTH
        return spans + events + len(self.runs) + len(self.alerts) + self.merged

    def merge(self, other: Rows) -> None:
        before = len(self.runs) + len(self.alerts)
        self.spans += other.spans
        self.llm += other.llm
        self.events += other.events
        self.runs.update(other.runs)
        self.alerts.update(other.alerts)
        self.merged += other.merged + before + len(other.runs) + len(other.alerts) - len(self.runs) - len(self.alerts)
        self.seq = max(self.seq, other.seq)
        self.nbytes += other.nbytes
        self.journal_end = max(self.journal_end, other.journal_end)

    def add_span(self, rec: SpanRecord, resource_json: str) -> None:
        """A span's row (``resource_json``: its resource as JSON, the writer keeps each distinct one once)."""
        row = record_to_row(rec)
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
            resource_json,
        )
        self.nbytes += len(row) + len(rec.name) + 100
        if rec.kind == KIND_LLM:
            call = call_of(rec)
            if call is not None:
                self.llm.append(call)

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

    def add_event(self, event_id: str, trace_id: str, type_: str, data: str | None, span_id: str | None) -> None:
        """An event's row: its envelope JSON (``data``), or for span-referenced events, their span and what the
        span's row does not tell (a live start's :func:`start_data`, a :data:`LIFE` row's items)."""
        self.events += (trace_id, event_id, type_, span_id, data)
        self.nbytes += (len(data) if data is not None else 0) + 60
