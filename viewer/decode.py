"""OTLP trace requests into SpanRecords: protobuf and JSON read differently, then built by one set of rules.

The rules (:func:`_record`), whatever the encoding:

- Every text is cleaned (:func:`otelflow.scrub.clean_text`: valid UTF-8, secrets redacted, attribute values
  cut at ``limit`` characters), names at :data:`otelflow.scrub.NAME_LIMIT`.
- ``otelflow.pending=true``, or no end time, makes a running snapshot; otherwise status ``error`` for status
  code 2, else ``ok``. The kind comes from :func:`otelflow.naming.kind_of`; an unknown span kind is internal.
- A time past :data:`otelflow.records.MAX_TIME_NS` (the year 2262), a malformed id, or a value nested too
  deeply rejects that span alone (OTLP partial success: one message per rejected span).
- A Logfire pending span (``logfire.span_type=pending_span``: a zero-length child of the real span, whose own
  parent is in ``logfire.pending_parent_id``) becomes a running snapshot of the real span.
- Decoding is lazy: a request is parsed (or refused whole) at once, its records are built as they are taken.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from itertools import islice
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelflow import attributes as A
from otelflow.naming import kind_of
from otelflow.records import MAX_TIME_NS, PHASE_END, PHASE_UPDATE, EventRecord, SpanRecord, ended_status
from otelflow.scrub import (
    DEFAULT_VALUE_LIMIT,
    NAME_LIMIT,
    REDACTED,
    clean_attributes,
    clean_text,
    fix_surrogates,
    is_secret_key,
)

__all__ = [
    "KIND_JSON",
    "KIND_PROTOBUF",
    "Decoded",
    "OtlpDecodeError",
    "decode_json",
    "decode_protobuf",
    "from_otlp_json",
    "json_body",
]

KIND_PROTOBUF: Final = 1  # a request body's encoding, as the intake log records it
KIND_JSON: Final = 2
_MAX_ATTR_DEPTH: Final = 32
_PENDING_SUFFIX: Final = " (pending)"
_ZERO_SPAN: Final = "0" * 16
_SECRET_KEYS: dict[str, bool] = {}  # attribute key -> is_secret_key(key), remembered (ASCII keys only)
_SECRET_KEYS_SIZE: Final = 8192
_STATUS_ERROR_CODE: Final = 2
_STATUS_CODES: Final = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_SPAN_KINDS: Final = {
    "SPAN_KIND_INTERNAL": 1,
    "SPAN_KIND_SERVER": 2,
    "SPAN_KIND_CLIENT": 3,
    "SPAN_KIND_PRODUCER": 4,
    "SPAN_KIND_CONSUMER": 5,
}


class OtlpDecodeError(ValueError):
    """An OTLP payload (or one span of it) that cannot be read; the message says where and why."""


class Decoded:
    """What one export request carries: its records, decoded lazily (:meth:`batches`) so that a large request
    can be ingested a slice at a time; one message per rejected span (complete once every record was taken);
    the worker ids of its resources (known at once, heartbeats included)."""

    def __init__(
        self, items: Iterable[SpanRecord] = (), rejected: list[str] | None = None, *, body: bytes = b"", kind: int = 0
    ) -> None:
        self.rejected: list[str] = rejected if rejected is not None else []
        self.workers: set[str] = set()
        self.body = body  # the (decompressed) request body, and its encoding (KIND_PROTOBUF or KIND_JSON)
        self.kind = kind
        self.span_count = 0  # spans in the request, readable or not (0: a heartbeat)
        self._items: Iterator[SpanRecord] = iter(items)
        self._records: list[SpanRecord] | None = None

    def batches(self, size: int) -> Iterator[list[SpanRecord]]:
        """The records, ``size`` at a time, decoded as they are taken."""
        items = self._items
        while batch := list(islice(items, size)):
            yield batch

    @property
    def records(self) -> list[SpanRecord]:
        """Every record (decodes what is left)."""
        if self._records is None:
            self._records = list(self._items)
            self._items = iter(())
        return self._records


# --------------------------------------------------------------------------------------------------
# The rules, once
# --------------------------------------------------------------------------------------------------


def _time(value: int, where: str) -> int:
    if value < 0:
        raise OtlpDecodeError(f"{where}: negative time")
    if value > MAX_TIME_NS:
        raise OtlpDecodeError(f"{where}: {value} is out of range (after the year 2262)")
    return value


def _record(
    *,
    trace_id: str,
    span_id: str,
    parent_id: str | None,
    name: str,
    span_kind: int,
    start: int,
    end: int,
    status_code: int,
    status_message: str,
    attrs: dict[str, Any],
    events: Iterable[tuple[str, int, dict[str, Any]]],
    resource: dict[str, Any],
    scope: str,
    limit: int | None,
) -> SpanRecord:
    """A record from a span's raw fields, by the rules of the module docstring (times already checked)."""
    cleaned = clean_attributes(attrs, limit)
    if cleaned is not attrs:
        attrs = dict(cleaned)
    pending = attrs.pop(A.PENDING, False) is True
    end_ns = None if pending or not end else end
    message = clean_text(status_message, limit) if status_message else ""
    status = A.STATUS_RUNNING if end_ns is None else ended_status(status_code == _STATUS_ERROR_CODE, message, attrs)
    return SpanRecord(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_id,
        name=clean_text(name, NAME_LIMIT),
        kind=kind_of(attrs),
        span_kind=span_kind if 0 <= span_kind <= 5 else 1,
        start_time_ns=start,
        end_time_ns=end_ns,
        status=status,
        status_message=message,
        attributes=attrs,
        events=tuple([EventRecord(clean_text(n, NAME_LIMIT), t, clean_attributes(a, limit)) for n, t, a in events]),
        service=str(resource.get("service.name", "")),
        resource=resource,
        scope=scope,
        phase=PHASE_UPDATE if end_ns is None else PHASE_END,
    )


def _resource(attrs: Mapping[str, Any], limit: int | None) -> dict[str, Any]:
    resource = dict(clean_attributes(attrs, limit))
    if "service.name" in resource:
        resource["service.name"] = clean_text(str(resource["service.name"]), NAME_LIMIT)
    return resource


def _pending_conventions(records: Iterable[SpanRecord], rejected: list[str]) -> Iterator[SpanRecord]:
    """Logfire pending spans as running snapshots of their real spans; the others as they are."""
    for record in records:
        if record.attributes.get(A.LOGFIRE_SPAN_TYPE) != A.LOGFIRE_PENDING_SPAN:
            yield record
            continue
        real_id = record.parent_span_id
        if real_id is None:
            rejected.append(f"span {record.span_id}: a Logfire pending span must have the real span as its parent")
            continue
        attrs = dict(record.attributes)
        del attrs[A.LOGFIRE_SPAN_TYPE]
        parent = attrs.pop(A.LOGFIRE_PENDING_PARENT_ID, None)
        parent_id = parent.lower() if isinstance(parent, str) else None
        if parent_id is not None and (
            len(parent_id) != 16 or parent_id == _ZERO_SPAN or any(c not in "0123456789abcdef" for c in parent_id)
        ):
            parent_id = None
        yield replace(
            record,
            span_id=real_id,
            parent_span_id=parent_id,
            name=record.name.removesuffix(_PENDING_SUFFIX),
            kind=kind_of(attrs),
            end_time_ns=None,
            status=A.STATUS_RUNNING,
            status_message="",
            attributes=attrs,
            phase=PHASE_UPDATE,
        )


def _attempt(
    build: Callable[[Any, dict[str, Any], str, str, int | None], SpanRecord],
    span: Any,
    resource: dict[str, Any],
    scope: str,
    where: str,
    limit: int | None,
) -> SpanRecord | str:
    """The record ``build`` makes of one span, or the message that rejects this span alone."""
    try:
        return build(span, resource, scope, where, limit)
    except OtlpDecodeError as exc:
        return str(exc)
    except RecursionError:
        return f"{where}.attributes: nested too deeply"
    except Exception as exc:  # noqa: BLE001 - a shape the checks did not foresee rejects this span alone
        return f"{where}: {type(exc).__name__}: {exc}"


def _guarded(spans: Iterator[SpanRecord | str], rejected: list[str]) -> Iterator[SpanRecord]:
    """Records from a decoder that yields a record, or a message for a span it could not read."""
    for item in spans:
        if isinstance(item, str):
            rejected.append(item)
        else:
            yield item


# --------------------------------------------------------------------------------------------------
# Protobuf
# --------------------------------------------------------------------------------------------------


def _any(value: AnyValue, depth: int = 0) -> Any:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        number = value.double_value
        return number if math.isfinite(number) else str(number)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if depth >= _MAX_ATTR_DEPTH:
        raise OtlpDecodeError("attribute value nested too deeply")
    if which == "array_value":
        return [_any(v, depth + 1) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attrs(value.kvlist_value.values, depth + 1)
    return None


def _attrs(items: Iterable[KeyValue], depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in items:
        value = kv.value
        which = value.WhichOneof("value")
        # the common cases without a call (each as _any reads it)
        if which == "string_value":
            out[kv.key] = value.string_value
        elif which == "int_value":
            out[kv.key] = value.int_value
        elif which == "bool_value":
            out[kv.key] = value.bool_value
        else:
            out[kv.key] = _any(value, depth)
    return out


def _span_id(raw: bytes, where: str, *, required: bool) -> str | None:
    if not raw:
        if required:
            raise OtlpDecodeError(f"{where}: missing")
        return None
    if len(raw) != 8:
        raise OtlpDecodeError(f"{where}: {len(raw)} bytes, a span id has 8")
    text = raw.hex()
    if text == _ZERO_SPAN:
        if required:
            raise OtlpDecodeError(f"{where}: all-zero id is invalid")
        return None
    return text


def _clean_attrs(items: Iterable[KeyValue], limit: int | None) -> dict[str, Any]:
    """``dict(clean_attributes(_attrs(items), limit))`` in one pass: strings, integers and booleans under ASCII
    keys are cleaned as they are read (as :func:`otelflow.scrub.clean_attributes` cleans each), any other value
    or key by ``clean_attributes`` itself."""
    out: dict[str, Any] = {}
    secret_keys = _SECRET_KEYS
    for kv in items:
        key = kv.key
        value = kv.value
        which = value.WhichOneof("value")
        secret = secret_keys.get(key)
        if secret is None and key.isascii():  # an ASCII key is its own cleaned form
            if len(secret_keys) >= _SECRET_KEYS_SIZE:
                secret_keys.clear()
            secret = secret_keys[key] = is_secret_key(key)
        if secret is None or not (which == "string_value" or which == "int_value" or which == "bool_value"):
            out.update(clean_attributes({key: _any(value)}, limit))
        elif which == "string_value":
            text = value.string_value
            out[key] = REDACTED if secret and text else clean_text(text, limit)
        elif which == "int_value":
            out[key] = REDACTED if secret else value.int_value
        else:
            out[key] = value.bool_value
    return out


def _from_proto(span: Span, resource: dict[str, Any], scope: str, where: str, limit: int | None) -> SpanRecord:
    """:func:`_record` of a protobuf span: the same record, built here in one pass for the common case (a span
    with no ``otelflow.pending`` attribute; :func:`_from_proto_by_rules` takes the others). The tests hold the two
    equal (protobuf and JSON requests of the same spans decode to equal records)."""
    trace, raw_id = span.trace_id, span.span_id
    if len(trace) != 16 or not any(trace):
        raise OtlpDecodeError(f"{where}.traceId: must be 16 bytes, not all zero")
    span_id = raw_id.hex() if len(raw_id) == 8 and any(raw_id) else _span_id(raw_id, f"{where}.spanId", required=True)
    assert span_id is not None
    # times are checked inline; the message (and its text) is made only for a time that fails
    events: list[EventRecord] = []
    for e in span.events:
        t = e.time_unix_nano
        if not 0 <= t <= MAX_TIME_NS:
            _time(t, f"{where}.events[{len(events)}].timeUnixNano")
        events.append(EventRecord(clean_text(e.name, NAME_LIMIT), t, _clean_attrs(e.attributes, limit)))
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not 0 <= start <= MAX_TIME_NS:
        _time(start, f"{where}.startTimeUnixNano")
    if not 0 <= end <= MAX_TIME_NS:
        _time(end, f"{where}.endTimeUnixNano")
    raw_parent = span.parent_span_id
    parent_id = (
        raw_parent.hex()
        if len(raw_parent) == 8 and any(raw_parent)
        else _span_id(raw_parent, f"{where}.parentSpanId", required=False)
    )
    attrs = _clean_attrs(span.attributes, limit)
    if A.PENDING in attrs:  # a running snapshot: by the rules, from the raw values
        return _from_proto_by_rules(span, resource, scope, where, limit)
    status = span.status
    message = status.message
    if message:
        message = clean_text(message, limit)
    if end:
        end_ns: int | None = end
        state = ended_status(status.code == _STATUS_ERROR_CODE, message, attrs)
        phase = PHASE_END
    else:
        end_ns, state, phase = None, A.STATUS_RUNNING, PHASE_UPDATE
    span_kind = span.kind
    return SpanRecord(
        trace.hex(),
        span_id,
        clean_text(span.name, NAME_LIMIT),
        parent_id,
        kind_of(attrs),
        span_kind if 0 <= span_kind <= 5 else 1,
        start,
        end_ns,
        state,
        message,
        attrs,
        tuple(events),
        str(resource.get("service.name", "")),
        resource,
        scope,
        phase,
    )


def _from_proto_by_rules(span: Span, resource: dict[str, Any], scope: str, where: str, limit: int | None) -> SpanRecord:
    """A protobuf span's raw fields through :func:`_record` (checked already by :func:`_from_proto`)."""
    raw_parent = span.parent_span_id
    return _record(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=raw_parent.hex() if len(raw_parent) == 8 and any(raw_parent) else None,
        name=span.name,
        span_kind=span.kind,
        start=span.start_time_unix_nano,
        end=span.end_time_unix_nano,
        status_code=span.status.code,
        status_message=span.status.message,
        attrs=_attrs(span.attributes),
        events=[(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in span.events],
        resource=resource,
        scope=scope,
        limit=limit,
    )


def _proto_spans(request: ExportTraceServiceRequest, limit: int | None, rejected: list[str]) -> Iterator[SpanRecord]:
    """The records of a request's spans, by the rules (Logfire pending spans included); a message in ``rejected``
    for each span that cannot be read. One generator for what :func:`_attempt`, :func:`_guarded` and
    :func:`_pending_conventions` do, without their layers per span; a span's place (``where``) is written only
    into the message of one that fails."""
    for r, resource_spans in enumerate(request.resource_spans):
        try:
            resource = _resource(_attrs(resource_spans.resource.attributes), limit)
        except (OtlpDecodeError, RecursionError) as exc:
            message = f"resourceSpans[{r}].resource: {exc}"
            rejected.extend(message for ss in resource_spans.scope_spans for _ in ss.spans)
            continue
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope = clean_text(scope_spans.scope.name, NAME_LIMIT)
            for i, span in enumerate(scope_spans.spans):
                try:
                    item: SpanRecord | str = _from_proto(span, resource, scope, "", limit)
                except Exception:  # noqa: BLE001 - again with its place, for the message (decoding is deterministic)
                    item = _attempt(
                        _from_proto, span, resource, scope, f"resourceSpans[{r}].scopeSpans[{s}].spans[{i}]", limit
                    )
                if isinstance(item, str):
                    rejected.append(item)
                elif item.attributes.get(A.LOGFIRE_SPAN_TYPE) != A.LOGFIRE_PENDING_SPAN:
                    yield item
                else:
                    yield from _pending_conventions((item,), rejected)


def decode_protobuf(body: bytes, limit: int | None = DEFAULT_VALUE_LIMIT) -> Decoded:
    """An OTLP protobuf export request; raises :class:`OtlpDecodeError` when it cannot be parsed at all."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError (untyped module), RecursionError
        raise OtlpDecodeError(f"body is not a valid ExportTraceServiceRequest: {exc}") from None
    rejected: list[str] = []
    out = Decoded(_proto_spans(request, limit, rejected), rejected)
    out.body, out.kind = body, KIND_PROTOBUF
    out.span_count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    for resource_spans in request.resource_spans:
        for kv in resource_spans.resource.attributes:
            if kv.key == A.WORKER_ID and kv.value.WhichOneof("value") == "string_value":
                out.workers.add(kv.value.string_value)
    return out


# --------------------------------------------------------------------------------------------------
# JSON (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding)
# --------------------------------------------------------------------------------------------------


def _json_any(value: Any, where: str) -> Any:
    if type(value) is not dict and not isinstance(value, Mapping):
        raise OtlpDecodeError(f"{where}: expected an AnyValue object, got {type(value).__name__}")
    if not value:
        return None
    ((tag, inner),) = list(value.items())[:1]
    if tag == "stringValue":
        return inner if type(inner) is str else str(inner)
    if tag == "boolValue":
        return bool(inner)
    if tag in ("intValue", "doubleValue"):
        try:
            number = int(inner) if tag == "intValue" else float(inner)
        except (TypeError, ValueError):
            raise OtlpDecodeError(f"{where}: {tag} {inner!r} is not a number") from None
        return number if not isinstance(number, float) or math.isfinite(number) else str(number)
    if tag == "bytesValue":
        return str(inner)
    if tag in ("arrayValue", "kvlistValue"):
        values = inner.get("values", []) if isinstance(inner, Mapping) else None
        if not isinstance(values, list):
            raise OtlpDecodeError(f"{where}: {tag}.values must be a list")
        return [_json_any(v, where) for v in values] if tag == "arrayValue" else _json_attrs(values, where)
    raise OtlpDecodeError(f"{where}: unknown AnyValue field {tag!r}")


def _json_attrs(items: Any, where: str) -> dict[str, Any]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise OtlpDecodeError(f"{where}: attributes must be a list of key/value objects")
    out: dict[str, Any] = {}
    for item in items:
        if (type(item) is not dict and not isinstance(item, Mapping)) or type(key := item.get("key")) is not str:
            raise OtlpDecodeError(f"{where}: attribute without a string key")
        try:
            out[key] = _json_any(item.get("value", {}), "")
        except OtlpDecodeError as exc:  # where it was, written only when it is told
            raise OtlpDecodeError(f"{where}.{key}{exc}") from None
    return out


_HEX: Final = re.compile("[0-9a-f]*")


def _hex_id(value: Any, digits: int, where: str, *, required: bool) -> str | None:
    if value in (None, ""):
        if required:
            raise OtlpDecodeError(f"{where}: missing")
        return None
    if not isinstance(value, str):
        raise OtlpDecodeError(f"{where}: must be a hex string")
    text = value.lower()
    if len(text) != digits or _HEX.fullmatch(text) is None:
        raise OtlpDecodeError(f"{where}: {value!r} is not {digits} hex digits")
    if text == "0" * digits:
        if required:
            raise OtlpDecodeError(f"{where}: all-zero id is invalid")
        return None
    return text


def _nanos(value: Any, where: str) -> int:
    if value in (None, "", 0, "0"):
        return 0
    try:
        nanos = int(value)
    except (TypeError, ValueError):
        raise OtlpDecodeError(f"{where}: {value!r} is not a time in nanoseconds") from None
    return _time(nanos, where)


def _from_json(span: Any, resource: dict[str, Any], scope: str, where: str, limit: int | None) -> SpanRecord:
    if not isinstance(span, Mapping):
        raise OtlpDecodeError(f"{where}: a span must be an object")
    name = span.get("name", "")
    if not isinstance(name, str):
        raise OtlpDecodeError(f"{where}.name: must be a string")
    events_in = span.get("events") or []
    if not isinstance(events_in, list) or not all(isinstance(e, Mapping) for e in events_in):
        raise OtlpDecodeError(f"{where}.events: must be a list of objects")
    events = [
        (
            str(ev.get("name", "")),
            _nanos(ev.get("timeUnixNano"), f"{where}.events[{i}].timeUnixNano"),
            _json_attrs(ev.get("attributes"), f"{where}.events[{i}].attributes"),
        )
        for i, ev in enumerate(events_in)
    ]
    status = span.get("status") or {}
    if not isinstance(status, Mapping):
        raise OtlpDecodeError(f"{where}.status: must be an object")
    code = status.get("code", 0)
    kind = span.get("kind", 1)
    trace_id = _hex_id(span.get("traceId"), 32, f"{where}.traceId", required=True)
    span_id = _hex_id(span.get("spanId"), 16, f"{where}.spanId", required=True)
    assert trace_id is not None
    assert span_id is not None
    return _record(
        trace_id=trace_id,
        span_id=span_id,
        parent_id=_hex_id(span.get("parentSpanId"), 16, f"{where}.parentSpanId", required=False),
        name=name,
        span_kind=_SPAN_KINDS.get(kind, 1) if isinstance(kind, str) else kind if isinstance(kind, int) else 1,
        start=_nanos(span.get("startTimeUnixNano"), f"{where}.startTimeUnixNano"),
        end=_nanos(span.get("endTimeUnixNano"), f"{where}.endTimeUnixNano"),
        status_code=_STATUS_CODES.get(code, 0) if isinstance(code, str) else code,  # the JSON mapping allows enum names
        status_message=str(status.get("message", "") or ""),
        attrs=_json_attrs(span.get("attributes"), f"{where}.attributes"),
        events=events,
        resource=resource,
        scope=scope,
        limit=limit,
    )


def _json_groups(
    payload: Any, limit: int | None, workers: set[str] | None = None
) -> list[tuple[dict[str, Any], str, list[Any], str]]:
    """``(resource, scope, spans, where)`` of every scopeSpans, resources and scopes cleaned once, and the
    worker ids of every resource (with spans or not: a heartbeat has none) added to ``workers``; raises
    :class:`OtlpDecodeError` when the payload's shape itself is wrong."""
    if not isinstance(payload, Mapping):
        raise OtlpDecodeError("body: expected a JSON object with resourceSpans")
    resource_spans = payload.get("resourceSpans", [])
    if not isinstance(resource_spans, list):
        raise OtlpDecodeError("resourceSpans: must be a list")
    groups = []
    for r, rs in enumerate(resource_spans):
        where = f"resourceSpans[{r}]"
        if not isinstance(rs, Mapping):
            raise OtlpDecodeError(f"{where}: must be an object")
        res = rs.get("resource") or {}
        if not isinstance(res, Mapping):
            raise OtlpDecodeError(f"{where}.resource: must be an object")
        resource = _resource(_json_attrs(res.get("attributes"), f"{where}.resource.attributes"), limit)
        worker = resource.get(A.WORKER_ID)
        if workers is not None and isinstance(worker, str):
            workers.add(fix_surrogates(worker))
        scope_spans = rs.get("scopeSpans", [])
        if not isinstance(scope_spans, list):
            raise OtlpDecodeError(f"{where}.scopeSpans: must be a list")
        for s, ss in enumerate(scope_spans):
            swhere = f"{where}.scopeSpans[{s}]"
            if not isinstance(ss, Mapping):
                raise OtlpDecodeError(f"{swhere}: must be an object")
            scope_obj = ss.get("scope") or {}
            scope = clean_text(str(scope_obj.get("name", "")), NAME_LIMIT) if isinstance(scope_obj, Mapping) else ""
            spans = ss.get("spans", [])
            if not isinstance(spans, list):
                raise OtlpDecodeError(f"{swhere}.spans: must be a list")
            groups.append((resource, scope, spans, swhere))
    return groups


def _json_spans(
    groups: list[tuple[dict[str, Any], str, list[Any], str]], limit: int | None
) -> Iterator[SpanRecord | str]:
    for resource, scope, spans, swhere in groups:
        for i, span in enumerate(spans):
            yield _attempt(_from_json, span, resource, scope, f"{swhere}.spans[{i}]", limit)


def json_body(body: bytes) -> Any:
    """The JSON of an OTLP/JSON request body; raises :class:`OtlpDecodeError` when it is not JSON."""
    try:
        return json.loads(body)
    except RecursionError:
        raise OtlpDecodeError("body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise OtlpDecodeError(f"body is not valid JSON: {exc}") from None


def decode_json(body: bytes, limit: int | None = DEFAULT_VALUE_LIMIT) -> Decoded:
    """An OTLP/JSON export request; raises :class:`OtlpDecodeError` when its shape is wrong."""
    payload = json_body(body)
    workers: set[str] = set()
    try:
        groups = _json_groups(payload, limit, workers)
    except RecursionError:
        raise OtlpDecodeError("body is nested too deeply") from None
    rejected: list[str] = []
    out = Decoded(_pending_conventions(_guarded(_json_spans(groups, limit), rejected), rejected), rejected)
    out.body, out.kind, out.workers = body, KIND_JSON, workers
    out.span_count = sum(len(spans) for _, _, spans, _ in groups)
    return out


def from_otlp_json(payload: Any, limit: int | None = DEFAULT_VALUE_LIMIT) -> tuple[list[SpanRecord], list[str]]:
    """The records of an OTLP/JSON payload (already parsed) that could be read, and one message per span that
    could not; raises :class:`OtlpDecodeError` when the payload's shape itself is wrong."""
    rejected: list[str] = []
    records = list(_pending_conventions(_guarded(_json_spans(_json_groups(payload, limit), limit), rejected), rejected))
    return records, rejected
