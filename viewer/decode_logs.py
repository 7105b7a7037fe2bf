"""OTLP log requests (``POST /v1/logs``) into lifecycle events of the spans they name.

The rules, whatever the encoding:

- A record with a trace id and a span id becomes ``(trace id, span id, EventRecord)`` (:class:`LogEvent`), at the
  record's time, else its observed time, else when it was decoded.
- A record with an event name (the OTLP ``event_name`` field, else the ``event.name`` attribute of older SDKs)
  keeps that name and its attributes (``event.name`` taken out); its body, a text or a map or an array (GenAI
  message content, for instance), goes under ``otelflow.log.body``.
- Any other record is a log line: ``otelflow.log`` with ``otelflow.log.level`` from its severity number, else
  its severity text (``debug``, ``info``, ``warning``, ``error``, ``critical``; ``info`` when it has neither),
  ``otelflow.log.message`` from its body (a map or an array as JSON text), and its attributes.
- Every text is cleaned as span attributes are (:func:`otelflow.scrub.clean_attributes`: secrets redacted,
  values cut at ``limit`` characters), names at :data:`otelflow.scrub.NAME_LIMIT`.
- A record without a trace id or span id joins no span: it is counted (``without_span``) and dropped. A
  malformed id, a time past the year 2262 or a value nested too deeply rejects that record alone (OTLP
  partial success: one message per rejected record).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final, NamedTuple

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otelflow import attributes as A
from otelflow.records import MAX_TIME_NS, EventRecord
from otelflow.scrub import DEFAULT_VALUE_LIMIT, NAME_LIMIT, clean_attributes, clean_text

from .decode import OtlpDecodeError, _any, _attrs, _hex_id, _json_any, _json_attrs, _nanos, json_body

__all__ = [
    "KIND_LOGS_JSON",
    "KIND_LOGS_PROTOBUF",
    "DecodedLogs",
    "LogEvent",
    "decode_logs_json",
    "decode_logs_protobuf",
    "level_of",
]

KIND_LOGS_PROTOBUF: Final = 3  # a logs request body's encoding, as the intake log records it
KIND_LOGS_JSON: Final = 4
_EVENT_NAME_ATTRIBUTE: Final = "event.name"
_LEVEL_WORDS: Final = {
    "trace": "debug",
    "debug": "debug",
    "fine": "debug",
    "finer": "debug",
    "finest": "debug",
    "info": "info",
    "information": "info",
    "notice": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "err": "error",
    "fatal": "critical",
    "critical": "critical",
    "crit": "critical",
    "alert": "critical",
    "emerg": "critical",
    "emergency": "critical",
}
_SEVERITY_NAMES: Final = {  # the OTLP/JSON mapping allows enum names
    f"SEVERITY_NUMBER_{word}{n if n > 1 else ''}": base + n - 1
    for word, base in (("TRACE", 1), ("DEBUG", 5), ("INFO", 9), ("WARN", 13), ("ERROR", 17), ("FATAL", 21))
    for n in range(1, 5)
}


class LogEvent(NamedTuple):
    """A log record that names a span: the lifecycle event it becomes, for that span."""

    trace_id: str
    span_id: str
    event: EventRecord


class DecodedLogs:
    """What one logs export request carries: the events for spans, one message per rejected record, how many
    records named no span, and the (decompressed) body with its encoding for the intake log."""

    __slots__ = ("body", "events", "kind", "record_count", "rejected", "without_span")

    def __init__(self, kind: int, body: bytes) -> None:
        self.events: list[LogEvent] = []
        self.rejected: list[str] = []
        self.without_span = 0
        self.record_count = 0
        self.kind = kind
        self.body = body

    def batches(self, size: int) -> Iterator[list[LogEvent]]:
        events = self.events
        for i in range(0, len(events), size):
            yield events[i : i + size]


def level_of(number: int, text: str) -> str:
    """A record's level, one of :data:`otelflow.attributes.LOG_LEVELS`: from its severity number (1-24), else
    its severity text, else ``info``."""
    if 1 <= number <= 24:
        return A.LOG_LEVELS[min(4, max(0, (number - 1) // 4 - 1))]
    return _LEVEL_WORDS.get(text.strip().lower(), "info") if text else "info"


def _body_text(body: Any) -> str:
    if body is None:
        return ""
    if isinstance(body, str):
        return body
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return str(body)


def _event(
    name: str, body: Any, attrs: dict[str, Any], number: int, text: str, when: int, limit: int | None
) -> EventRecord:
    """The lifecycle event of one record (see the module docstring); times already checked."""
    if not name:
        named = attrs.pop(_EVENT_NAME_ATTRIBUTE, None)
        name = named if isinstance(named, str) else ""
    else:
        attrs.pop(_EVENT_NAME_ATTRIBUTE, None)
    if name:
        if body is not None and body != "":
            attrs[A.LOG_BODY] = body
        return EventRecord(clean_text(name, NAME_LIMIT), when, dict(clean_attributes(attrs, limit)))
    out = {A.LOG_LEVEL: level_of(number, text), A.LOG_MESSAGE: _body_text(body)}
    for key, value in attrs.items():
        out.setdefault(key, value)
    return EventRecord(A.EVENT_LOG, when, dict(clean_attributes(out, limit)))


def _when(time_ns: int, observed_ns: int, where: str) -> int:
    for value, field in ((time_ns, "timeUnixNano"), (observed_ns, "observedTimeUnixNano")):
        if value < 0 or value > MAX_TIME_NS:
            raise OtlpDecodeError(f"{where}.{field}: {value} is out of range (after the year 2262)")
    return time_ns or observed_ns or time.time_ns()


def _reject(out: DecodedLogs, where: str, exc: Exception) -> None:
    if isinstance(exc, OtlpDecodeError):
        out.rejected.append(str(exc))
    elif isinstance(exc, RecursionError):
        out.rejected.append(f"{where}: nested too deeply")
    else:
        out.rejected.append(f"{where}: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------------------
# Protobuf
# --------------------------------------------------------------------------------------------------


def _proto_ids(rec: LogRecord, where: str) -> tuple[str, str] | None:
    trace, span = rec.trace_id, rec.span_id
    if not trace and not span:
        return None
    if trace and len(trace) != 16:
        raise OtlpDecodeError(f"{where}.traceId: {len(trace)} bytes, a trace id has 16")
    if span and len(span) != 8:
        raise OtlpDecodeError(f"{where}.spanId: {len(span)} bytes, a span id has 8")
    if not any(trace) or not any(span):
        return None  # missing or all zero: no span
    return trace.hex(), span.hex()


def _proto_records(request: ExportLogsServiceRequest, out: DecodedLogs, limit: int | None) -> None:
    for r, resource_logs in enumerate(request.resource_logs):
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            for i, rec in enumerate(scope_logs.log_records):
                out.record_count += 1
                where = f"resourceLogs[{r}].scopeLogs[{s}].logRecords[{i}]"
                try:
                    ids = _proto_ids(rec, where)
                    if ids is None:
                        out.without_span += 1
                        continue
                    when = _when(rec.time_unix_nano, rec.observed_time_unix_nano, where)
                    body = _any(rec.body) if rec.HasField("body") else None
                    event = _event(
                        rec.event_name,
                        body,
                        _attrs(rec.attributes),
                        rec.severity_number,
                        rec.severity_text,
                        when,
                        limit,
                    )
                except Exception as exc:  # noqa: BLE001 - a shape the checks did not foresee rejects this record alone
                    _reject(out, where, exc)
                    continue
                out.events.append(LogEvent(ids[0], ids[1], event))


def decode_logs_protobuf(body: bytes, limit: int | None = DEFAULT_VALUE_LIMIT) -> DecodedLogs:
    """An OTLP protobuf logs export request; raises :class:`OtlpDecodeError` when it cannot be parsed at all."""
    request = ExportLogsServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError (untyped module), RecursionError
        raise OtlpDecodeError(f"body is not a valid ExportLogsServiceRequest: {exc}") from None
    out = DecodedLogs(KIND_LOGS_PROTOBUF, body)
    _proto_records(request, out, limit)
    return out


# --------------------------------------------------------------------------------------------------
# JSON (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding)
# --------------------------------------------------------------------------------------------------


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OtlpDecodeError(f"{where}: must be a list")
    return value


def _json_record(rec: Any, where: str, limit: int | None) -> LogEvent | None:
    if not isinstance(rec, Mapping):
        raise OtlpDecodeError(f"{where}: a log record must be an object")
    trace_id = _hex_id(rec.get("traceId"), 32, f"{where}.traceId", required=False)
    span_id = _hex_id(rec.get("spanId"), 16, f"{where}.spanId", required=False)
    if trace_id is None or span_id is None:
        return None
    when = _when(
        _nanos(rec.get("timeUnixNano"), f"{where}.timeUnixNano"),
        _nanos(rec.get("observedTimeUnixNano"), f"{where}.observedTimeUnixNano"),
        where,
    )
    body = _json_any(rec["body"], f"{where}.body") if rec.get("body") is not None else None
    number = rec.get("severityNumber", 0)
    if isinstance(number, str):
        number = _SEVERITY_NAMES.get(number, int(number) if number.isdigit() else 0)
    text = rec.get("severityText") or ""
    name = rec.get("eventName") or ""
    event = _event(
        name if isinstance(name, str) else str(name),
        body,
        _json_attrs(rec.get("attributes"), f"{where}.attributes"),
        number if isinstance(number, int) else 0,
        text if isinstance(text, str) else str(text),
        when,
        limit,
    )
    return LogEvent(trace_id, span_id, event)


def _json_scopes(payload: Any) -> Iterable[tuple[list[Any], str]]:
    if not isinstance(payload, Mapping):
        raise OtlpDecodeError("body: expected a JSON object with resourceLogs")
    groups = []
    for r, rl in enumerate(_list(payload.get("resourceLogs"), "resourceLogs")):
        where = f"resourceLogs[{r}]"
        if not isinstance(rl, Mapping):
            raise OtlpDecodeError(f"{where}: must be an object")
        for s, sl in enumerate(_list(rl.get("scopeLogs"), f"{where}.scopeLogs")):
            swhere = f"{where}.scopeLogs[{s}]"
            if not isinstance(sl, Mapping):
                raise OtlpDecodeError(f"{swhere}: must be an object")
            groups.append((_list(sl.get("logRecords"), f"{swhere}.logRecords"), swhere))
    return groups


def decode_logs_json(body: bytes, limit: int | None = DEFAULT_VALUE_LIMIT) -> DecodedLogs:
    """An OTLP/JSON logs export request; raises :class:`OtlpDecodeError` when its shape is wrong."""
    payload = json_body(body)
    out = DecodedLogs(KIND_LOGS_JSON, body)
    for records, swhere in _json_scopes(payload):
        for i, rec in enumerate(records):
            out.record_count += 1
            where = f"{swhere}.logRecords[{i}]"
            try:
                event = _json_record(rec, where, limit)
            except Exception as exc:  # noqa: BLE001 - a shape the checks did not foresee rejects this record alone
                _reject(out, where, exc)
                continue
            if event is None:
                out.without_span += 1
            else:
                out.events.append(event)
    return out
