"""OTLP/JSON written from records (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding): what the
live exporter posts, what ``GET /api/runs/{run}/export`` gives and what replicas pass between them; the viewer reads
it back (:mod:`otelflow.viewer.decode`).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar

from otelflow import attributes as A
from otelflow.records import FAILED, OTLP_STATUS_ERROR, OTLP_STATUS_UNSET, SpanRecord

__all__ = ["otlp_json_bytes", "otlp_resource", "to_otlp_json"]


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {"stringValue": str(value)}  # JSON has no NaN/Infinity
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode("ascii")}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": _key_values(value)}}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _key_values(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in attrs.items()]


def otlp_resource(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON ``Resource`` object."""
    return {"attributes": _key_values(attrs)}


_S = TypeVar("_S")
_ResourceKey = tuple[tuple[str, str], ...]


def _grouped(
    records: Iterable[SpanRecord], resource_extra: Mapping[str, Any] | None, span: Callable[[SpanRecord], _S]
) -> tuple[dict[_ResourceKey, dict[str, Any]], dict[_ResourceKey, list[tuple[str, list[_S]]]]]:
    """``span(record)`` of each record, grouped by resource (with ``resource_extra``) and scope, in order."""
    groups: dict[tuple[_ResourceKey, str], list[_S]] = {}
    resources: dict[_ResourceKey, dict[str, Any]] = {}
    key_of: dict[int, _ResourceKey] = {}  # records of one process share their resource dict
    for rec in records:
        res_key = key_of.get(id(rec.resource))
        if res_key is None:
            res_key = key_of[id(rec.resource)] = tuple(sorted((k, repr(v)) for k, v in rec.resource.items()))
        if res_key not in resources:
            resources[res_key] = {**(rec.resource or {"service.name": rec.service}), **(resource_extra or {})}
        groups.setdefault((res_key, rec.scope), []).append(span(rec))
    by_resource: dict[_ResourceKey, list[tuple[str, list[_S]]]] = {}
    for (res_key, scope), spans in groups.items():
        by_resource.setdefault(res_key, []).append((scope, spans))
    return resources, by_resource


def to_otlp_json(records: Iterable[SpanRecord], resource_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Encode records as an OTLP ``ExportTraceServiceRequest`` in JSON form.

    Running records are encoded with no end time and ``otelflow.pending=true``, the live-only marker.
    ``resource_extra`` is added to every resource (the live exporter's worker id).
    """
    resources, by_resource = _grouped(records, resource_extra, _otlp_span)
    return {
        "resourceSpans": [
            {
                "resource": otlp_resource(resources[key]),
                "scopeSpans": [{"scope": {"name": scope}, "spans": spans} for scope, spans in scope_spans],
            }
            for key, scope_spans in by_resource.items()
        ]
    }


def _otlp_span(rec: SpanRecord) -> dict[str, Any]:
    attrs = rec.attributes
    if rec.end_time_ns is None:
        attrs = {**attrs, A.PENDING: True}
    span: dict[str, Any] = {
        "traceId": rec.trace_id,
        "spanId": rec.span_id,
        "name": rec.name,
        "kind": rec.span_kind,
        "startTimeUnixNano": str(rec.start_time_ns),
        "attributes": _key_values(attrs),
        "events": [
            {"timeUnixNano": str(e.time_ns), "name": e.name, "attributes": _key_values(e.attributes)}
            for e in rec.events
        ],
    }
    if rec.parent_span_id:
        span["parentSpanId"] = rec.parent_span_id
    if rec.end_time_ns is not None:
        span["endTimeUnixNano"] = str(rec.end_time_ns)
        code = OTLP_STATUS_ERROR if rec.status in FAILED else OTLP_STATUS_UNSET
        span["status"] = {"code": code, "message": rec.status_message} if rec.status_message else {"code": code}
    return span


_dumps: Final = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators=(",", ":"))
_quote: Final = json.encoder.encode_basestring_ascii


def otlp_json_bytes(records: Iterable[SpanRecord], resource_extra: Mapping[str, Any] | None = None) -> bytes:
    """``json.dumps(to_otlp_json(records, resource_extra), separators=(",", ":")).encode()``, written directly,
    with no dict per span, attribute or value: the live exporter's request body. The tests hold the two equal."""
    resources, by_resource = _grouped(records, resource_extra, _otlp_span_text)
    out = []
    for key, scope_spans in by_resource.items():
        scopes = ",".join(
            f'{{"scope":{{"name":{_dumps(scope)}}},"spans":[{",".join(spans)}]}}' for scope, spans in scope_spans
        )
        out.append(f'{{"resource":{{"attributes":{_key_values_text(resources[key])}}},"scopeSpans":[{scopes}]}}')
    return f'{{"resourceSpans":[{",".join(out)}]}}'.encode("ascii")


def _otlp_span_text(rec: SpanRecord) -> str:
    start, end, kind = rec.start_time_ns, rec.end_time_ns, rec.span_kind
    if type(start) is not int or (end is not None and type(end) is not int) or type(kind) is not int:
        return _dumps(_otlp_span(rec))
    attrs = rec.attributes
    if end is None:
        attrs = {**attrs, A.PENDING: True}
    events = ",".join(
        [
            f'{{"timeUnixNano":{_dumps(str(e.time_ns))},"name":{_dumps(e.name)},'
            f'"attributes":{_key_values_text(e.attributes)}}}'
            for e in rec.events
        ]
    )
    text = (
        f'{{"traceId":{_dumps(rec.trace_id)},"spanId":{_dumps(rec.span_id)},"name":{_dumps(rec.name)},'
        f'"kind":{kind},"startTimeUnixNano":"{start}","attributes":{_key_values_text(attrs)},"events":[{events}]'
    )
    if rec.parent_span_id:
        text += f',"parentSpanId":{_dumps(rec.parent_span_id)}'
    if end is None:
        return text + "}"
    code = OTLP_STATUS_ERROR if rec.status in FAILED else OTLP_STATUS_UNSET
    message = f',"message":{_dumps(rec.status_message)}' if rec.status_message else ""
    return f'{text},"endTimeUnixNano":"{end}","status":{{"code":{code}{message}}}}}'


def _key_values_text(attrs: Mapping[str, Any]) -> str:
    """``_dumps(_key_values(attrs))``, with strings, booleans, integers and finite floats written here."""
    parts = []
    for key, value in attrs.items():
        kind = type(value)
        if type(key) is not str:
            parts.append(_dumps({"key": key, "value": _any_value(value)}))
        elif kind is str:
            parts.append(f'{{"key":{_quote(key)},"value":{{"stringValue":{_quote(value)}}}}}')
        elif kind is bool:
            parts.append(f'{{"key":{_quote(key)},"value":{{"boolValue":{"true" if value else "false"}}}}}')
        elif kind is int:
            parts.append(f'{{"key":{_quote(key)},"value":{{"intValue":"{value}"}}}}')
        elif kind is float and math.isfinite(value):
            parts.append(f'{{"key":{_quote(key)},"value":{{"doubleValue":{float.__repr__(value)}}}}}')
        else:
            parts.append(f'{{"key":{_quote(key)},"value":{_dumps(_any_value(value))}}}')
    return f"[{','.join(parts)}]"
