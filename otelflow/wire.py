"""The stream contract: event types, statuses, kinds and lifecycle events, and the encoders that turn runs and
spans into the JSON of the envelope.

The viewer publishes what this module names; ``otelflow tail`` reads it; the browser takes the same names from
the module :func:`wire_js` renders (served as ``/static/wire.js``), so that no other file declares its own copy.

Envelope (SSE ``data:`` line, one WebSocket message): ``{"id", "type", "run_id", ...}`` with, by type, ``span``
(the object :meth:`otelflow.records.SpanRecord.to_dict` describes), ``run`` (a run summary), ``event`` with
``trace_id``/``span_id``/``span_name``/``span_kind`` (``span.event``), or ``reason``/``snapshot``/
``last_event_id`` (``reset``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Final

from otelflow import attributes as A
from otelflow.records import FAILED, PHASE_START, STATUS_RUNNING, EventRecord, SpanRecord, format_time

__all__ = [
    "ALERT_FIRED",
    "ALERT_RESOLVED",
    "CLOSE_ERROR",
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNSUPPORTED",
    "EVENT_TYPES",
    "RESET",
    "RUN_ENDED",
    "RUN_STARTED",
    "RUN_UPDATED",
    "SHUTDOWN",
    "SPAN_ABANDONED",
    "SPAN_ENDED",
    "SPAN_EVENT",
    "SPAN_STALLED",
    "SPAN_STARTED",
    "SPAN_UNSTALLED",
    "SPAN_UPDATED",
    "STALLED",
    "attributes_text",
    "derived_start",
    "dumps",
    "encode_exact",
    "encode_span",
    "encode_span_pair",
    "event_json",
    "finite",
    "quote",
    "to_json",
    "wire_js",
]

RUN_STARTED: Final = "run.started"
RUN_UPDATED: Final = "run.updated"  # status, progress, name
RUN_ENDED: Final = "run.ended"
SPAN_STARTED: Final = "span.started"  # every span, exactly once, before its span.ended
SPAN_UPDATED: Final = "span.updated"  # new attributes or name mid-span
SPAN_EVENT: Final = "span.event"  # one lifecycle event of a span
SPAN_ENDED: Final = "span.ended"
SPAN_ABANDONED: Final = "span.abandoned"  # its worker went silent
SPAN_STALLED: Final = "span.stalled"  # a running span went quiet (or runs far past its usual time): a live flag
SPAN_UNSTALLED: Final = "span.unstalled"  # it moved again, ended or was abandoned
ALERT_FIRED: Final = "alert.fired"  # an alert rule matched a subject (once until it resolves)
ALERT_RESOLVED: Final = "alert.resolved"
STALLED: Final = "stalled"  # not a status: the stream and /api/runs filter `status=stalled` means "flagged now"
RESET: Final = "reset"  # resume impossible: fetch the snapshot it names
SHUTDOWN: Final = "shutdown"  # the viewer is going away: reconnect later
# WebSocket close codes (RFC 6455 numbers, with what they mean here)
CLOSE_NORMAL: Final = 1000  # the run a stream followed ended
CLOSE_GOING_AWAY: Final = 1001  # the viewer is shutting down: reconnect later
CLOSE_UNSUPPORTED: Final = 1003  # binary messages
CLOSE_POLICY: Final = 1008  # refused (token, Host, Origin): do not retry as is
CLOSE_TOO_BIG: Final = 1009  # a client message over the size limit
CLOSE_ERROR: Final = 1011
CLOSE_TRY_AGAIN: Final = 1013  # too slow: reconnect at once with last_event_id
EVENT_TYPES: Final = (
    RUN_STARTED,
    RUN_UPDATED,
    RUN_ENDED,
    SPAN_STARTED,
    SPAN_UPDATED,
    SPAN_EVENT,
    SPAN_ENDED,
    SPAN_ABANDONED,
    SPAN_STALLED,
    SPAN_UNSTALLED,
    ALERT_FIRED,
    ALERT_RESOLVED,
    RESET,
    SHUTDOWN,
)


def finite(value: Any) -> Any:
    """``value`` with non-finite floats (NaN, infinities) as strings, in nested dicts and lists too: JSON-safe."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=str)
quote: Final = json.encoder.encode_basestring_ascii


def _make_json() -> Callable[[Any], str]:
    """``_ENCODER.encode``, without building a new C encoder on every call (that is most of the cost of
    encoding a small object). No circular-reference bookkeeping: a cycle raises ``RecursionError``."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    c_encode = make(None, str, quote, None, ":", ",", False, False, False)

    def encode(obj: Any) -> str:
        return "".join(c_encode(obj, 0))

    return encode


to_json: Final = _make_json()


def dumps(obj: Any) -> bytes:
    """Compact ASCII JSON: safe for SSE (no raw newlines) and for any span data (lone surrogates, NaN)."""
    try:
        text = to_json(obj)
    except ValueError:
        text = to_json(finite(obj))
    return text.encode("ascii")


def encode_exact(obj: Any) -> tuple[bytes, bool]:
    """``dumps(obj)``, and whether it is exact (no non-finite number had to become a string)."""
    try:
        return to_json(obj).encode("ascii"), True
    except ValueError:
        return to_json(finite(obj)).encode("ascii"), False


def _opt(value: str | None) -> str:
    return "null" if value is None else quote(value)


def attributes_text(attributes: Any) -> str:
    """``to_json(dict(attributes))``: an attribute dict as the stream writes it (the default ``attributes`` writer
    of :func:`event_json` and :func:`encode_span_pair`; a caller may pass one that writes the same text faster)."""
    return to_json(attributes if type(attributes) is dict else dict(attributes))


def event_json(event: EventRecord, attributes: Callable[[Any], str] = attributes_text) -> str:
    """``to_json(event.to_dict())``, a span event as the stream writes it; raises ``ValueError`` for a value JSON
    cannot hold (then encode the whole object with :func:`dumps`)."""
    return (
        f'{{"name":{quote(event.name)},"time":"{format_time(event.time_ns)}",'
        f'"attributes":{attributes(event.attributes)}}}'
    )


def encode_span(
    rec: SpanRecord, events: list[str] | None = None, attributes: Callable[[Any], str] = attributes_text
) -> tuple[bytes, bool]:
    """``dumps(rec.to_dict())`` (the envelope's ``span`` object), and whether it is exact (see
    :func:`encode_exact`), so that the store may keep these bytes instead of encoding the span again.
    ``events`` and ``attributes``: as for :func:`encode_span_pair`.

    The hot path of ingestion: the fixed fields are written here, the open-ended ones by the C encoder; any
    value this does not expect falls back to encoding ``to_dict()`` (the tests hold the two equal).
    """
    parts = _span_parts(rec, attributes)
    if parts is not None:
        try:
            return _ended_text(rec, *parts, events).encode("ascii"), True
        except (TypeError, ValueError):
            pass
    return encode_exact(rec.to_dict())


def encode_span_pair(
    rec: SpanRecord, events: list[str] | None = None, attributes: Callable[[Any], str] = attributes_text
) -> tuple[bytes, bytes, bool]:
    """For a span that arrived ended: ``encode_span(derived_start(rec))`` and ``encode_span(rec)`` (with
    whether the second is exact), sharing the work the two have in common. ``events``: the span's events
    already encoded (:func:`event_json`), when the caller has them; ``attributes``: as for :func:`event_json`."""
    parts = _span_parts(rec, attributes)
    if parts is not None:
        try:
            head, start_time, middle = parts
            started = (
                f'{head}"{STATUS_RUNNING}",{start_time}"end_time":null,"duration_ms":null,'
                f'{middle}"events":[],"error":null}}'
            )
            return started.encode("ascii"), _ended_text(rec, *parts, events).encode("ascii"), True
        except (TypeError, ValueError):
            pass
    ended, exact = encode_exact(rec.to_dict())
    return encode_exact(derived_start(rec).to_dict())[0], ended, exact


def _span_parts(rec: SpanRecord, attributes: Callable[[Any], str] = attributes_text) -> tuple[str, str, str] | None:
    """The pieces of a span's JSON that do not depend on whether it has ended: up to ``"status":``, the start
    time, the service and attributes; ``None`` when a value is not what the fast path expects."""
    start, end = rec.start_time_ns, rec.end_time_ns
    if type(start) is not int or (end is not None and type(end) is not int) or rec.kind == A.KIND_LLM:
        return None  # a model call's span carries its "llm" object: the general path writes it
    try:
        head = (
            f'{{"trace_id":{quote(rec.trace_id)},"span_id":{quote(rec.span_id)},'
            f'"parent_span_id":{_opt(rec.parent_span_id)},"name":{quote(rec.name)},"kind":{quote(rec.kind)},'
            '"status":'
        )
        return (
            head,
            f'"start_time":"{format_time(start)}",',
            f'"service":{quote(rec.service)},"attributes":{attributes(rec.attributes)},',
        )
    except (TypeError, ValueError):
        return None


def _ended_text(rec: SpanRecord, head: str, start_time: str, middle: str, events: list[str] | None = None) -> str:
    start, end = rec.start_time_ns, rec.end_time_ns
    if events is not None:
        events_text = f"[{','.join(events)}]"
    else:
        events_text = to_json([e.to_dict() for e in rec.events]) if rec.events else "[]"
    return (
        f"{head}{quote(rec.status)},{start_time}"
        f'"end_time":{"null" if end is None else chr(34) + format_time(end) + chr(34)},'
        f'"duration_ms":{"null" if end is None else float.__repr__((end - start) / 1e6)},'
        f'{middle}"events":{events_text},'
        f'"error":{"null" if rec.status not in FAILED else to_json(rec.error())}}}'
    )


def derived_start(rec: SpanRecord) -> SpanRecord:
    """The ``span.started`` snapshot of a span that arrived already ended: running, no end, no events yet.

    The stream publishes it (see :func:`encode_span_pair`); the history rebuilds it from the stored span rather
    than keeping it.
    """
    return SpanRecord(
        rec.trace_id,
        rec.span_id,
        rec.name,
        rec.parent_span_id,
        rec.kind,
        rec.span_kind,
        rec.start_time_ns,
        None,
        STATUS_RUNNING,
        "",
        rec.attributes,
        (),
        rec.service,
        rec.resource,
        rec.scope,
        PHASE_START,
    )


# --------------------------------------------------------------------------------------------------
# The same names for the browser
# --------------------------------------------------------------------------------------------------


def _js_names() -> dict[str, Any]:
    """Every name the browser uses, as JavaScript constants: event types, statuses, kinds, lifecycle events and
    the attribute keys the pages read."""
    names: dict[str, Any] = {key: value for key, value in globals().items() if key in __all__ and key.isupper()}
    for key, value in vars(A).items():
        if key.isupper() and isinstance(value, (str, float, int, tuple)):
            names[key] = list(value) if isinstance(value, tuple) else value
    return names


def wire_js() -> str:
    """The stream contract as an ES module: ``export const RUN_STARTED = "run.started";`` and so on."""
    lines = [
        "// The stream contract, rendered from otelflow/wire.py and otelflow/attributes.py: do not edit, do not copy.",
        "",
    ]
    for key, value in sorted(_js_names().items()):
        lines.append(f"export const {key} = {json.dumps(value)};")
    return "\n".join(lines) + "\n"
