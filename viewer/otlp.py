"""OTLP/HTTP trace receiver: turns a ``POST /v1/traces`` body (protobuf or JSON, maybe gzip) into SpanRecords.

Contract (https://opentelemetry.io/docs/specs/otlp/#otlphttp):

- ``application/x-protobuf`` and ``application/json`` (any ``charset``); other content types get 415.
- ``Content-Encoding: gzip`` (one member or several concatenated) or none; other encodings get 415. The size
  limit applies to the decompressed body (413); decompression is streamed with a cap, so a gzip bomb costs at
  most ``max_bytes`` of memory.
- A body that cannot be read gets 400 with a message saying where and why; a span that cannot be read is
  rejected alone (OTLP partial success: ``rejectedSpans`` and ``errorMessage``), in the request's encoding.
- Pending conventions: otelflow snapshots (``otelflow.pending=true``, no end time) and Logfire pending spans
  (``logfire.span_type=pending_span``: a zero-length child of the real span, whose own parent is in
  ``logfire.pending_parent_id``) both become running snapshots of the real span.
- Every resource's ``otelflow.worker.id`` is reported, also for heartbeats (a resource with no spans).
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from itertools import islice
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from starlette.requests import Request
from starlette.responses import Response

from otelflow import attributes as A
from otelflow.records import (
    MAX_TIME_NS,
    PHASE_END,
    PHASE_UPDATE,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_RUNNING,
    EventRecord,
    OtlpDecodeError,
    SpanRecord,
    iter_otlp_json,
    kind_of,
)
from otelflow.scrub import DEFAULT_VALUE_LIMIT, NAME_LIMIT, clean_attributes, clean_text, fix_surrogates

__all__ = [
    "DEFAULT_MAX_BYTES",
    "JSON",
    "KIND_JSON",
    "KIND_PROTOBUF",
    "PROTOBUF",
    "BodyError",
    "Decoded",
    "Unavailable",
    "decode_body",
    "decode_json",
    "decode_protobuf",
    "encode_response",
    "handle_traces",
    "read_body",
]

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
KIND_PROTOBUF: Final = 1  # a request body's encoding, as the intake log records it
KIND_JSON: Final = 2
DEFAULT_MAX_BYTES: Final = 32 * 1024 * 1024
_MAX_ATTR_DEPTH: Final = 32
_PENDING_SUFFIX: Final = " (pending)"
_ZERO_SPAN: Final = "0" * 16


class BodyError(Exception):
    """A request body that cannot be accepted; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
# Body: size limit and gzip
# --------------------------------------------------------------------------------------------------


async def read_body(chunks: AsyncIterator[bytes], encoding: str, max_bytes: int) -> bytes:
    """The decompressed body, at most ``max_bytes`` long; raises :class:`BodyError` (413 or 415 or 400)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        parts: list[bytes] = []
        size = 0
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise BodyError(413, f"request body is larger than the limit of {max_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)
    if encoding not in ("gzip", "x-gzip"):
        raise BodyError(415, f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding")
    # A gzip body may be several members one after another (RFC 1952 §2.2), as `cat a.gz b.gz` makes; each
    # is inflated in turn, with NUL padding between them skipped as gzip(1) does.
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    member_ended = False
    out = bytearray()
    compressed = 0
    async for chunk in chunks:
        compressed += len(chunk)
        if compressed > max_bytes:
            raise BodyError(413, f"request body is larger than the limit of {max_bytes} bytes")
        data = chunk
        while data:
            if member_ended:
                data = data.lstrip(b"\0")
                if not data:
                    break
                inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                member_ended = False
            try:
                piece = inflater.decompress(data, max_bytes + 1 - len(out))
            except zlib.error as exc:
                raise BodyError(400, f"body is not valid gzip: {exc}") from None
            out += piece
            if len(out) > max_bytes:
                raise BodyError(413, f"decompressed body is larger than the limit of {max_bytes} bytes")
            if inflater.eof:
                member_ended = True
                data = inflater.unused_data
            else:
                data = inflater.unconsumed_tail
    if not member_ended:
        raise BodyError(400, "body is not valid gzip: the stream is truncated")
    return bytes(out)


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def decode_body(body: bytes, content_type: str, limit: int | None = DEFAULT_VALUE_LIMIT) -> Decoded:
    """Decode an export request by its content type; raises :class:`BodyError` (415 or 400).

    The body is parsed here (a body that cannot be read fails whole); its spans are turned into records as
    :meth:`Decoded.batches` takes them. Every text is cleaned (:func:`otelflow.scrub.clean_text`, attribute
    values cut at ``limit`` characters); a span with a time past :data:`MAX_TIME_NS` is rejected alone.
    """
    media = _media_type(content_type)
    if media == PROTOBUF:
        return decode_protobuf(body, limit)
    if media == JSON:
        return decode_json(body, limit)
    raise BodyError(415, f"Content-Type {content_type or '(none)'!r} is not supported; send {PROTOBUF} or {JSON}")


def decode_json(body: bytes, limit: int | None = DEFAULT_VALUE_LIMIT) -> Decoded:
    """Decode an OTLP/JSON export request; raises :class:`BodyError` (400) when its shape is wrong."""
    rejected: list[str] = []
    try:
        payload = json.loads(body)
        items = iter_otlp_json(payload, rejected, limit)
    except RecursionError:
        raise BodyError(400, "body is nested too deeply") from None
    except OtlpDecodeError as exc:
        raise BodyError(400, f"malformed OTLP/JSON: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise BodyError(400, f"body is not valid JSON: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a shape the decoder did not foresee is the client's problem
        raise BodyError(400, f"malformed OTLP/JSON: {type(exc).__name__}: {exc}") from None
    out = Decoded(_with_pending_conventions(items, rejected), rejected, body=body, kind=KIND_JSON)
    out.span_count = sum(len(spans) for spans in _json_span_lists(payload))
    for resource_spans in payload.get("resourceSpans") or []:
        resource = resource_spans.get("resource") or {}
        for item in resource.get("attributes") or []:
            if isinstance(item, dict) and item.get("key") == A.WORKER_ID:
                value = item.get("value")
                if isinstance(value, dict) and isinstance(value.get("stringValue"), str):
                    out.workers.add(fix_surrogates(value["stringValue"]))
    return out


def _json_span_lists(payload: Any) -> Iterator[list[Any]]:
    """The span lists of a payload whose shape was checked."""
    for resource_spans in payload.get("resourceSpans") or []:
        for scope_spans in resource_spans.get("scopeSpans") or []:
            yield scope_spans.get("spans") or []


def _with_pending_conventions(items: Iterable[SpanRecord], rejected: list[str]) -> Iterator[SpanRecord]:
    for record in items:
        converted = _pending_conventions(record, rejected)
        if converted is not None:
            yield converted


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


def _attrs(items: Any, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in items:
        value = kv.value
        if value.WhichOneof("value") == "string_value":  # the common case, without a call
            out[kv.key] = value.string_value
        else:
            out[kv.key] = _any(value, depth)
    return out


_Where = tuple[int, int, int]  # resource, scope and span index: formatted only for an error message


def _at(where: _Where, field: str) -> str:
    return f"resourceSpans[{where[0]}].scopeSpans[{where[1]}].spans[{where[2]}].{field}"


def _span_id(raw: bytes, where: _Where, field: str, *, required: bool) -> str | None:
    if not raw:
        if required:
            raise OtlpDecodeError(f"{_at(where, field)}: missing")
        return None
    if len(raw) != 8:
        raise OtlpDecodeError(f"{_at(where, field)}: {len(raw)} bytes, a span id has 8")
    text = raw.hex()
    if text == _ZERO_SPAN:
        if required:
            raise OtlpDecodeError(f"{_at(where, field)}: all-zero id is invalid")
        return None
    return text


def _time(value: int, where: _Where, field: str) -> int:
    if value > MAX_TIME_NS:
        raise OtlpDecodeError(f"{_at(where, field)}: {value} is out of range (after the year 2262)")
    return value


def _span_from_proto(
    span: Span, resource: dict[str, Any], service: str, scope: str, where: _Where, limit: int | None
) -> SpanRecord:
    if len(span.trace_id) != 16 or not any(span.trace_id):
        raise OtlpDecodeError(f"{_at(where, 'traceId')}: must be 16 bytes, not all zero")
    span_id = _span_id(span.span_id, where, "spanId", required=True)
    assert span_id is not None
    attrs = _attrs(span.attributes)
    cleaned = clean_attributes(attrs, limit)
    if cleaned is not attrs:
        attrs = dict(cleaned)
    pending = attrs.pop(A.PENDING, False) is True
    start = _time(span.start_time_unix_nano, where, "startTimeUnixNano")
    end: int | None = _time(span.end_time_unix_nano, where, "endTimeUnixNano") or None
    if pending:
        end = None
    status = STATUS_RUNNING
    if end is not None:
        status = STATUS_ERROR if span.status.code == 2 else STATUS_OK
    events: tuple[EventRecord, ...] = ()
    if span.events:
        events = tuple(
            [
                EventRecord(
                    clean_text(e.name, NAME_LIMIT),
                    _time(e.time_unix_nano, where, f"events[{i}].timeUnixNano"),
                    clean_attributes(_attrs(e.attributes), limit),
                )
                for i, e in enumerate(span.events)
            ]
        )
    return SpanRecord(
        trace_id=span.trace_id.hex(),
        span_id=span_id,
        parent_span_id=_span_id(span.parent_span_id, where, "parentSpanId", required=False),
        name=clean_text(span.name, NAME_LIMIT),
        kind=kind_of(attrs),
        span_kind=span.kind if 0 <= span.kind <= 5 else 1,
        start_time_ns=start,
        end_time_ns=end,
        status=status,
        status_message=clean_text(span.status.message, limit) if span.status.message else "",
        attributes=attrs,
        events=events,
        service=service,
        resource=resource,
        scope=scope,
        phase=PHASE_UPDATE if end is None else PHASE_END,
    )


def decode_protobuf(body: bytes, limit: int | None = DEFAULT_VALUE_LIMIT) -> Decoded:
    """Decode an OTLP protobuf export request; raises :class:`BodyError` (400) when it cannot be parsed."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError (untyped module), RecursionError
        raise BodyError(400, f"body is not a valid ExportTraceServiceRequest: {exc}") from None
    rejected: list[str] = []
    groups = []
    for r, resource_spans in enumerate(request.resource_spans):
        try:
            resource = dict(clean_attributes(_attrs(resource_spans.resource.attributes), limit))
        except (OtlpDecodeError, RecursionError) as exc:
            message = f"resourceSpans[{r}].resource: {exc}"
            rejected.extend(message for ss in resource_spans.scope_spans for _ in ss.spans)
            continue
        service = clean_text(str(resource.get("service.name", "")), NAME_LIMIT)
        if "service.name" in resource:
            resource["service.name"] = service
        groups.append((r, resource, service, resource_spans))
    items = _with_pending_conventions(_proto_spans(groups, rejected, limit), rejected)
    out = Decoded(items, rejected, body=body, kind=KIND_PROTOBUF)
    out.span_count = len(rejected) + sum(len(ss.spans) for _, _, _, rs in groups for ss in rs.scope_spans)
    for _, resource, _, _ in groups:
        worker = resource.get(A.WORKER_ID)
        if isinstance(worker, str):
            out.workers.add(worker)
    return out


def _proto_spans(
    groups: list[tuple[int, dict[str, Any], str, Any]], rejected: list[str], limit: int | None
) -> Iterator[SpanRecord]:
    for r, resource, service, resource_spans in groups:
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope = clean_text(scope_spans.scope.name, NAME_LIMIT)
            for i, span in enumerate(scope_spans.spans):
                try:
                    yield _span_from_proto(span, resource, service, scope, (r, s, i), limit)
                except OtlpDecodeError as exc:
                    rejected.append(str(exc))
                except RecursionError:
                    rejected.append(f"{_at((r, s, i), 'attributes')}: nested too deeply")


def _pending_conventions(record: SpanRecord, rejected: list[str]) -> SpanRecord | None:
    """A Logfire pending span as a running snapshot of the real span (``None``, and a message, if unusable)."""
    if record.attributes.get(A.LOGFIRE_SPAN_TYPE) != A.LOGFIRE_PENDING_SPAN:
        return record
    real_id = record.parent_span_id
    if real_id is None:
        rejected.append(f"span {record.span_id}: a Logfire pending span must have the real span as its parent")
        return None
    attrs = dict(record.attributes)
    del attrs[A.LOGFIRE_SPAN_TYPE]
    parent = attrs.pop(A.LOGFIRE_PENDING_PARENT_ID, None)
    parent_id = parent.lower() if isinstance(parent, str) else None
    if parent_id is not None and (
        len(parent_id) != 16 or parent_id == _ZERO_SPAN or any(c not in "0123456789abcdef" for c in parent_id)
    ):
        parent_id = None
    name = record.name.removesuffix(_PENDING_SUFFIX)
    return replace(
        record,
        span_id=real_id,
        parent_span_id=parent_id,
        name=name,
        kind=kind_of(attrs),
        end_time_ns=None,
        status=STATUS_RUNNING,
        status_message="",
        attributes=attrs,
        phase=PHASE_UPDATE,
    )


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def encode_response(content_type: str, rejected: list[str]) -> Response:
    """A 200 ExportTraceServiceResponse in the request's encoding, with partial success when spans were rejected."""
    message = "; ".join(rejected[:20])
    if len(rejected) > 20:
        message += f"; and {len(rejected) - 20} more"
    if _media_type(content_type) == PROTOBUF:
        response = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = len(rejected)
            response.partial_success.error_message = message
        return Response(response.SerializeToString(), media_type=PROTOBUF)
    body: dict[str, Any] = {}
    if rejected:
        body["partialSuccess"] = {"rejectedSpans": str(len(rejected)), "errorMessage": message}
    return Response(json.dumps(body).encode(), media_type=JSON)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _rpc_status(code: int, message: str) -> bytes:
    """A serialized ``google.rpc.Status`` (field 1 code, field 2 message), written by hand: two fields do not
    justify another dependency."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _error_response(content_type: str, status: int, message: str) -> Response:
    """A failed export: a ``google.rpc.Status`` in the request's encoding (plain text for unknown types)."""
    media = _media_type(content_type)
    code = {400: 3, 413: 8, 415: 3, 503: 14}.get(status, 2)  # INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE
    if media == PROTOBUF:
        return Response(_rpc_status(code, message), status, media_type=PROTOBUF)
    if media == JSON:
        return Response(json.dumps({"code": code, "message": message}).encode(), status, media_type=JSON)
    return Response(message + "\n", status, media_type="text/plain")


class Unavailable(Exception):
    """The viewer cannot take spans now (its history is failing or full): answer 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


def _unavailable(content_type: str, exc: Unavailable) -> Response:
    response = _error_response(content_type, 503, exc.message)
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def handle_traces(
    request: Request,
    ingest: Callable[[Decoded], Awaitable[None]],
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    limit: int | None = DEFAULT_VALUE_LIMIT,
    admit: Callable[[], None] | None = None,
) -> Response:
    """Serve ``POST /v1/traces``: read, decode, hand the result to ``ingest``, answer as OTLP says.

    ``admit`` (called first) and ``ingest`` raise :class:`Unavailable` for a 503 with ``Retry-After`` (the
    OTLP exporters retry on it); ``ingest`` returns once the spans are safe (the 2xx promises it).
    ``Decoded.body`` holds the decompressed body for ``ingest`` to keep.
    """
    content_type = request.headers.get("content-type", "")
    media = _media_type(content_type)
    if media not in (PROTOBUF, JSON):
        return _error_response(
            content_type, 415, f"Content-Type {content_type or '(none)'!r} is not supported; send {PROTOBUF} or {JSON}"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return _error_response(content_type, 413, f"request body is larger than the limit of {max_bytes} bytes")
    try:
        if admit is not None:
            admit()
        body = await read_body(request.stream(), request.headers.get("content-encoding", ""), max_bytes)
        decoded = decode_body(body, content_type, limit)
        del body
        await ingest(decoded)
    except BodyError as exc:
        return _error_response(content_type, exc.status, exc.message)
    except Unavailable as exc:
        return _unavailable(content_type, exc)
    return encode_response(content_type, decoded.rejected)
