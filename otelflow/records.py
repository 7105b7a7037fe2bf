"""SpanRecord, the one record type that travels from the processor to the browser, and its encodings.

A record is a full snapshot of a span at one moment: built from an SDK span by the live processor, or
decoded from OTLP by the viewer (:mod:`otelflow.viewer.decode`). Encodings: the stream envelope's ``span``
object (:meth:`SpanRecord.to_dict`) here, OTLP/JSON (which ``POST /v1/traces`` accepts) in :mod:`otelflow.otlp_json`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from operator import attrgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from opentelemetry.attributes import BoundedAttributes

from otelflow import attributes as A
from otelflow.genai import llm_view, with_cost
from otelflow.naming import kind_of
from otelflow.scrub import DEFAULT_VALUE_LIMIT, NAME_LIMIT, clean_attributes, clean_text

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = [
    "FAILED",
    "PHASE_END",
    "PHASE_START",
    "PHASE_UPDATE",
    "STATUS_ABANDONED",
    "STATUS_CANCELLED",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_RUNNING",
    "EventRecord",
    "SpanRecord",
    "capture",
    "clean_record",
    "deferred_pair",
    "deferred_record",
    "ended_status",
    "format_time",
    "lean_capture",
    "lighten",
    "record_from_span",
    "set_value_limit",
]

STATUS_RUNNING: Final = A.STATUS_RUNNING
STATUS_OK: Final = A.STATUS_OK
STATUS_ERROR: Final = A.STATUS_ERROR
STATUS_ABANDONED: Final = A.STATUS_ABANDONED
STATUS_CANCELLED: Final = A.STATUS_CANCELLED
FAILED: Final = (STATUS_ERROR, STATUS_CANCELLED)  # the statuses of an OTel status ERROR: they carry an error
# Exceptions that stop work rather than report a failure in it (last part of the qualified name)
_CANCELLATIONS: Final = frozenset({"CancelledError", "KeyboardInterrupt"})

PHASE_START: Final = "start"
PHASE_UPDATE: Final = "update"
PHASE_END: Final = "end"

# OTLP StatusCode values
OTLP_STATUS_UNSET: Final = 0
OTLP_STATUS_OK: Final = 1
OTLP_STATUS_ERROR: Final = 2
MAX_TIME_NS: Final = 2**63 - 1  # OTLP times are fixed64, but past this (the year 2262) nothing can store them

AttributeValue = Any  # str | bool | int | float | list of those (OTel AnyValue, decoded)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class EventRecord(NamedTuple):
    """One span event: a lifecycle event (``otelflow.progress`` …) or any other."""

    name: str
    time_ns: int
    attributes: Mapping[str, AttributeValue] = _EMPTY

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "time": format_time(self.time_ns), "attributes": dict(self.attributes)}


@dataclass(slots=True)
class SpanRecord:
    """A snapshot of one span. Records are shared between consumers: treat them as read-only.

    ``phase`` says which moment the snapshot was taken at (``start``, ``update`` or ``end``); ``status`` is
    ``running`` until the span ends, then ``ok`` or ``error`` (the viewer may set ``abandoned``).
    Ids are lower-case hex (32 digits for traces, 16 for spans), as Jaeger shows them.
    """

    trace_id: str
    span_id: str
    name: str
    parent_span_id: str | None = None
    kind: str = A.KIND_SPAN
    span_kind: int = 1  # OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    start_time_ns: int = 0
    end_time_ns: int | None = None
    status: str = STATUS_RUNNING
    status_message: str = ""
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    events: tuple[EventRecord, ...] = ()
    service: str = ""
    resource: dict[str, AttributeValue] = field(default_factory=dict)
    scope: str = ""
    phase: str = PHASE_END
    # What a deferred record (see deferred_record) fills its fields from on first read; None once filled.
    _source: Any = field(default=None, init=False, repr=False, compare=False)
    # The normalized view of a model call (kind llm), computed on first use (see llm_view)
    _llm: Any = field(default=None, init=False, repr=False, compare=False)

    if not TYPE_CHECKING:  # hidden from type checkers, which would otherwise accept any attribute name

        def __getattr__(self, name: str) -> Any:
            # Only called for an unset slot: a deferred record's field read for the first time.
            if name in _DEFERRED_FIELDS:
                source = object.__getattribute__(self, "_source")
                if source is not None:
                    _fill(self, source)
                return object.__getattribute__(self, name)
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def ended(self) -> bool:
        return self.end_time_ns is not None

    @property
    def duration_ms(self) -> float | None:
        if self.end_time_ns is None:
            return None
        return (self.end_time_ns - self.start_time_ns) / 1e6

    @property
    def run_id(self) -> str | None:
        """The user's run id (``otelflow.run.id``), when this span carries one."""
        value = self.attributes.get(A.RUN_ID)
        return str(value) if value is not None else None

    def error(self) -> dict[str, str] | None:
        """Error type, message and stack of a failed span (from ``error.type`` and its exception event)."""
        if self.status not in FAILED:
            return None
        err = {
            "type": str(self.attributes.get(A.ERROR_TYPE, "")),
            "message": self.status_message,
            "stack": "",
        }
        for event in reversed(self.events):
            if event.name == A.EVENT_EXCEPTION:
                err["type"] = err["type"] or str(event.attributes.get(A.EXCEPTION_TYPE, ""))
                err["message"] = str(event.attributes.get(A.EXCEPTION_MESSAGE, "")) or err["message"]
                err["stack"] = str(event.attributes.get(A.EXCEPTION_STACKTRACE, ""))
                break
        return err

    def llm_view(self) -> dict[str, Any] | None:
        """The normalized view of a model call (:func:`otelflow.genai.llm_view`) for a span of kind ``llm``,
        without its cost; ``None`` for any other span. Computed once per record (records are read-only)."""
        if self.kind != A.KIND_LLM:
            return None
        view = getattr(self, "_llm", None)  # unset on a record made with object.__new__ (deferred)
        if view is None:
            view = self._llm = llm_view(self.name, self.attributes, self.events, self.start_time_ns)
        return view

    def llm(self) -> dict[str, Any] | None:
        """The envelope's ``llm`` object: :meth:`llm_view` with ``cost_usd`` and ``cost_estimate``."""
        view = self.llm_view()
        return with_cost(view) if view is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The ``span`` object of the viewer's stream envelope (``llm`` only for a span of kind ``llm``)."""
        span = {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "start_time": format_time(self.start_time_ns),
            "end_time": format_time(self.end_time_ns) if self.end_time_ns is not None else None,
            "duration_ms": self.duration_ms,
            "service": self.service,
            "attributes": dict(self.attributes),
            "events": [e.to_dict() for e in self.events],
            "error": self.error(),
        }
        if self.kind == A.KIND_LLM:
            span["llm"] = self.llm()
        return span


def ended_status(error: bool, message: str, attributes: Mapping[str, Any]) -> str:
    """The status of an ended span: ``ok``, ``error``, or ``cancelled`` for an OTel status ERROR caused by a
    cancellation: otelflow's own description ``cancelled``, an ``error.type`` naming a ``CancelledError`` or
    ``KeyboardInterrupt`` (Ctrl-C), or the SDK's description for those (``CancelledError: ...``)."""
    if not error:
        return STATUS_OK
    if message == STATUS_CANCELLED or message.partition(":")[0] in _CANCELLATIONS:
        return STATUS_CANCELLED
    error_type = attributes.get(A.ERROR_TYPE)
    if isinstance(error_type, str) and error_type.rpartition(".")[2] in _CANCELLATIONS:
        return STATUS_CANCELLED
    return STATUS_ERROR


_SECOND_PREFIXES: dict[int, str] = {}


def format_time(time_ns: int) -> str:
    """ISO 8601 UTC with microseconds, e.g. ``2026-11-21T22:05:57.123456Z``.

    Spans of one moment share their second, so the ``YYYY-MM-DDTHH:MM:SS`` prefix is cached per second
    (a bounded dict; safe across threads: a lost race only formats a prefix twice).
    """
    seconds, ns = divmod(time_ns, 1_000_000_000)
    stamp = _SECOND_PREFIXES.get(seconds)
    if stamp is None:
        # decoders reject times past MAX_TIME_NS; a record built by hand is clamped rather than failing here
        seconds = min(max(seconds, 0), MAX_TIME_NS // 1_000_000_000)
        stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_SECOND_PREFIXES) >= 4096:
            _SECOND_PREFIXES.clear()
        _SECOND_PREFIXES[seconds] = stamp
    return f"{stamp}.{ns // 1000:06d}Z"


# --------------------------------------------------------------------------------------------------
# From the SDK
# --------------------------------------------------------------------------------------------------


_resource_cache: dict[int, tuple[object, dict[str, Any], str]] = {}
_value_limit: list[int | None] = [DEFAULT_VALUE_LIMIT]


def set_value_limit(limit: int | None) -> None:
    """The longest attribute value (in characters) that records built from SDK spans keep (``None``: no
    limit); longer ones are cut with a marker. ``configure()`` sets it from OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT."""
    _value_limit[0] = limit
    _resource_cache.clear()


def _resource_of(resource: Resource) -> tuple[dict[str, Any], str]:
    """The resource's attributes and service name, computed once per Resource object (they are immutable)."""
    hit = _resource_cache.get(id(resource))
    if hit is not None and hit[0] is resource:
        return hit[1], hit[2]
    attrs = dict(clean_attributes(resource.attributes, _value_limit[0]))
    service = clean_text(str(attrs.get("service.name", "")), NAME_LIMIT)
    if len(_resource_cache) > 64:
        _resource_cache.clear()
    _resource_cache[id(resource)] = (resource, attrs, service)
    return attrs, service


def _copy_attrs(attrs: Any) -> dict[str, Any]:
    # span.attributes is a MappingProxy over the SDK's BoundedAttributes; its copy() is a plain dict copy,
    # several times cheaper than iterating the mapping (which takes a lock per read).
    if attrs is None:
        return {}
    try:
        copied = attrs.copy()
        if type(copied) is dict:
            return copied
    except (AttributeError, TypeError):
        pass
    return dict(attrs)


_LEAN_FIELDS: Final = 13  # the length of a lean_capture (a capture has 11)
_trace_hex: dict[int, str] = {}  # a run's spans share their trace id: format it once
_new_event = tuple.__new__  # EventRecord without the NamedTuple constructor's Python frame


def _hex(value: int, cache: dict[int, str], digits: str) -> str:
    text = cache.get(value)
    if text is None:
        if len(cache) >= 8192:
            cache.clear()
        text = cache[value] = format(value, digits)
    return text


# The SDK's ReadableSpan keeps its state in these fields (since 1.0); reading them in one C call costs a
# fraction of going through its properties, which matters in on_end. The properties are the fallback.
_read_fields = attrgetter(
    "_context",
    "_parent",
    "_name",
    "_kind",
    "_start_time",
    "_end_time",
    "_status",
    "_resource",
    "_instrumentation_scope",
    "_attributes",
    "_events",
)
_read_properties = attrgetter(
    "context",
    "parent",
    "name",
    "kind",
    "start_time",
    "end_time",
    "status",
    "resource",
    "instrumentation_scope",
    "attributes",
    "events",
)


def capture(span: ReadableSpan, phase: str) -> tuple[Any, ...]:
    """What a record of ``span`` at ``phase`` is made from: the span's context, parent, name, kind, start,
    end, status, resource, scope, attributes and events, in one tuple.

    For ``end`` these are references, taken in one C call: an ended span can no longer change (the SDK
    ignores changes to it), so the formatting can wait. A live processor keeps captures, not spans, while
    records wait for its worker thread. That matters: a span kept alive across threads holds about 20
    objects that the garbage collector traverses again and again until the worker lets go of them, and
    the producer pays for it. For ``start`` and ``update`` (a running span) attributes and events are
    copied, and there is no end or status yet.
    """
    try:
        fields = _read_fields(span)
    except AttributeError:  # not laid out like the SDK's own ReadableSpan: go through its properties
        fields = _read_properties(span)
    if phase == PHASE_END:
        return fields
    ctx, parent, name, kind, start, _, _, resource, scope, attrs, events = fields
    return (
        ctx,
        parent,
        name,
        kind,
        start,
        None,
        None,
        resource,
        scope,
        _copy_attrs(attrs),
        tuple(events) if phase == PHASE_UPDATE and events else (),
    )


def lean_capture(span: ReadableSpan) -> tuple[Any, ...]:
    """What :func:`capture` takes of an ended span, in plain values: ids as integers, the status as a flag and
    its text, attributes and each event's attributes as the SDK's own dicts (an ended span's can no longer
    change), each event as a tuple.

    For a record that may wait long for its reader (the embedded viewer's hub yields to a busy script): a
    capture keeps about 15 of the SDK's objects alive, which every collection of the garbage collector
    traverses again until the reader lets go of them, and the script pays for it. Tuples and dicts of plain
    values leave the collector's lists at their first collection. Formatting one gives the record a capture
    gives. Anything not laid out like the SDK's own spans gets a :func:`capture`.
    """
    try:
        return _lean(_read_fields(span))
    except AttributeError:
        return capture(span, PHASE_END)


def _lean(fields: tuple[Any, ...]) -> tuple[Any, ...]:
    """A :func:`capture`'s fields in the :func:`lean_capture` layout (the error flag ``None`` while it runs). An
    ended span's attributes are the SDK's own dict, shared; a running one's are copied."""
    ctx, parent, name, kind, start, end, status, resource, scope, attrs, events = fields
    ended = end is not None and status is not None
    if type(attrs) is not dict:
        attrs = attrs._dict if ended and type(attrs) is BoundedAttributes else _copy_attrs(attrs)
    return (
        0 if ctx is None else ctx.trace_id,
        0 if ctx is None else ctx.span_id,
        None if parent is None else parent.span_id,
        name,
        kind.value,
        start,
        end,
        status.status_code.value == OTLP_STATUS_ERROR if ended else None,
        status.description if ended else None,
        resource,
        scope,
        attrs,
        _plain_events(events) if events else (),
    )


_read_event = attrgetter("_name", "_timestamp", "_attributes")


def lighten(records: Iterable[SpanRecord]) -> None:
    """Let each deferred record of an ended SDK span (:func:`deferred_pair`, :func:`deferred_record`) hold a
    :func:`lean_capture` of it instead of the span, for a reader that keeps records waiting; the records read
    the same (so one read meanwhile on another thread gets what it would have)."""
    for record in records:
        source = record._source
        if source is not None and type(source) is not tuple and type(source) is not SpanRecord:
            try:
                record._source = lean_capture(source)
            except Exception:  # noqa: BLE001, S112 - laid out like no ReadableSpan: left as it is (it reads the same)
                continue


def _plain_events(events: Iterable[Any]) -> tuple[tuple[str, int, Mapping[str, Any] | None], ...]:
    """Events as (name, time, attributes): for the SDK's own, read from their fields, the attributes their
    dict (immutable: shared, and read without the mapping's lock); for others, through their properties, the
    attributes copied."""
    try:
        read = map(_read_event, events)
        return tuple([(n, t, a._dict if type(a) is BoundedAttributes else _dict_of(a)) for n, t, a in read])
    except AttributeError:
        return tuple([(e.name, e.timestamp, _dict_of(e.attributes)) for e in events])


def _dict_of(attrs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if attrs is None else dict(attrs)


def _values_from_capture(cap: tuple[Any, ...], phase: str) -> tuple[Any, ...]:
    """The field values of a SpanRecord (in field order, ``phase`` last) from a :func:`capture` or a
    :func:`lean_capture`."""
    if len(cap) != _LEAN_FIELDS:
        cap = _lean(cap)
    trace, span_id, parent_id, name, kind_value, start, end, error, description, resource, scope, attrs, raw = cap
    limit = _value_limit[0]
    cleaned = clean_attributes(attrs, limit)
    if cleaned is not attrs:
        attrs = dict(cleaned)
    resource_attrs, service = _resource_of(resource)
    status = STATUS_RUNNING
    message = ""
    if error is not None:
        message = clean_text(description or "", limit)
        status = ended_status(error, message, attrs)
    events: tuple[EventRecord, ...] = ()
    if raw:
        # Event attributes are immutable in the SDK: shared, not copied (unless cleaning changes them).
        make = _new_event
        events = tuple(
            [
                make(EventRecord, (clean_text(n, NAME_LIMIT), t, _EMPTY if a is None else clean_attributes(a, limit)))
                for n, t, a in raw
            ]
        )
    return (
        _hex(trace, _trace_hex, "032x"),
        format(span_id, "016x"),
        clean_text(name, NAME_LIMIT),
        None if parent_id is None else format(parent_id, "016x"),
        kind_of(attrs),
        kind_value + 1,
        start or 0,
        end,
        status,
        message,
        attrs,
        events,
        service,
        resource_attrs,
        clean_text(scope.name, NAME_LIMIT) if scope is not None else "",
        phase,
    )


def _started_values(end: SpanRecord) -> tuple[Any, ...]:
    return (
        end.trace_id,
        end.span_id,
        end.name,
        end.parent_span_id,
        end.kind,
        end.span_kind,
        end.start_time_ns,
        None,
        STATUS_RUNNING,
        "",
        end.attributes,
        (),
        end.service,
        end.resource,
        end.scope,
        PHASE_START,
    )


def clean_record(rec: SpanRecord, limit: int | None = DEFAULT_VALUE_LIMIT) -> SpanRecord:
    """``rec`` with every text cleaned as at the edges (:func:`otelflow.scrub.clean_text`): names, attributes,
    events, status message, resource. ``rec`` itself when nothing had to change."""
    name = clean_text(rec.name, NAME_LIMIT)
    attrs = clean_attributes(rec.attributes, limit)
    message = clean_text(rec.status_message, limit)
    resource = clean_attributes(rec.resource, limit)
    service = clean_text(rec.service, NAME_LIMIT)
    events = tuple(
        [
            EventRecord(clean_text(e.name, NAME_LIMIT), e.time_ns, clean_attributes(e.attributes, limit))
            for e in rec.events
        ]
    )
    same = all(a.name is b.name and a.attributes is b.attributes for a, b in zip(events, rec.events, strict=True))
    if (
        same
        and name is rec.name
        and attrs is rec.attributes
        and message is rec.status_message
        and resource is rec.resource
        and service is rec.service
    ):
        return rec
    return replace(
        rec,
        name=name,
        attributes=dict(attrs),
        status_message=message,
        resource=dict(resource),
        service=service,
        events=rec.events if same else events,
    )


def record_from_span(span: ReadableSpan, phase: str) -> SpanRecord:
    """Snapshot an SDK span. For ``start`` and ``update`` the record is running whatever happened since."""
    return SpanRecord(*_values_from_capture(capture(span, phase), phase))


_DEFERRED_FIELDS: Final = frozenset(f for f in SpanRecord.__dataclass_fields__ if f not in ("phase", "_source", "_llm"))
_new_record = object.__new__


def _fill(record: SpanRecord, source: Any) -> None:
    # The source is a capture, an ended span, or the end record a start record is derived from. Re-running
    # __init__ sets every field, _source (None) last; two threads filling one record at once compute the same
    # values.
    if isinstance(source, SpanRecord):
        SpanRecord.__init__(record, *_started_values(source))
    elif type(source) is tuple:
        SpanRecord.__init__(record, *_values_from_capture(source, record.phase))
    else:
        SpanRecord.__init__(record, *_values_from_capture(capture(source, PHASE_END), record.phase))


def deferred_record(cap: tuple[Any, ...] | ReadableSpan, phase: str) -> SpanRecord:
    """A record of a :func:`capture`, or of an ended span (which can no longer change), whose fields are
    computed when one is first read, on the reader's thread.

    ``phase`` can be read without that. Until then the record costs one small object, so records that
    nobody reads cost next to nothing; reading one costs what :func:`record_from_span` does.
    """
    record: SpanRecord = _new_record(SpanRecord)
    record.phase = phase
    record._source = cap
    return record


def deferred_pair(cap: tuple[Any, ...] | ReadableSpan) -> list[SpanRecord]:
    """``[start, end]`` records of an ended span (or its capture), both deferred, the start derived from the
    end."""
    end: SpanRecord = _new_record(SpanRecord)
    end.phase = PHASE_END
    end._source = cap
    start: SpanRecord = _new_record(SpanRecord)
    start.phase = PHASE_START
    start._source = end
    return [start, end]
