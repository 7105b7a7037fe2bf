"""OTLP/HTTP receiver: a ``POST /v1/traces`` or ``POST /v1/logs`` body (protobuf or JSON, maybe gzip) checked,
decoded (:mod:`viewer.decode`, :mod:`viewer.decode_logs`) and answered as OTLP says; both signals share every
step but the decoder and the response message.

Contract (https://opentelemetry.io/docs/specs/otlp/#otlphttp):

- ``application/x-protobuf`` and ``application/json`` (any ``charset``); other content types get 415.
- ``Content-Encoding: gzip`` (one member or several concatenated) or none; other encodings get 415. The size
  limit applies to the decompressed body (413); decompression is streamed with a cap, so a gzip bomb costs at
  most ``max_bytes`` of memory.
- A body that cannot be read gets 400 with a message saying where and why; a span (log record) that cannot be
  read is rejected alone (OTLP partial success: ``rejectedSpans`` or ``rejectedLogRecords``, and
  ``errorMessage``), in the request's encoding.
- 503 with ``Retry-After`` when the receiver cannot take spans now (:class:`Unavailable`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.requests import Request
from starlette.responses import Response

from otelflow.scrub import DEFAULT_VALUE_LIMIT

from .decode import KIND_JSON, KIND_PROTOBUF, Decoded, OtlpDecodeError, decode_json, decode_protobuf
from .decode_logs import KIND_LOGS_JSON, KIND_LOGS_PROTOBUF, DecodedLogs, decode_logs_json, decode_logs_protobuf

__all__ = [
    "DEFAULT_MAX_BYTES",
    "JSON",
    "KIND_JSON",
    "KIND_LOGS_JSON",
    "KIND_LOGS_PROTOBUF",
    "KIND_PROTOBUF",
    "PROTOBUF",
    "BodyError",
    "Decoded",
    "DecodedLogs",
    "Unavailable",
    "decode_body",
    "decode_logs_body",
    "encode_logs_response",
    "encode_response",
    "handle_logs",
    "handle_traces",
    "read_body",
]

_T = TypeVar("_T")

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
DEFAULT_MAX_BYTES: Final = 32 * 1024 * 1024


class BodyError(Exception):
    """A request body that cannot be accepted; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


def _decode(
    body: bytes,
    content_type: str,
    limit: int | None,
    protobuf: Callable[[bytes, int | None], _T],
    json_: Callable[[bytes, int | None], _T],
) -> _T:
    media = _media_type(content_type)
    if media not in (PROTOBUF, JSON):
        raise BodyError(415, _unsupported(content_type))
    try:
        return protobuf(body, limit) if media == PROTOBUF else json_(body, limit)
    except OtlpDecodeError as exc:
        message = str(exc) if media == PROTOBUF else f"malformed OTLP/JSON: {exc}"
        raise BodyError(400, message) from None


def _unsupported(content_type: str) -> str:
    return f"Content-Type {content_type or '(none)'!r} is not supported; send {PROTOBUF} or {JSON}"


def decode_body(body: bytes, content_type: str, limit: int | None = DEFAULT_VALUE_LIMIT) -> Decoded:
    """Decode a trace export request by its content type (:mod:`viewer.decode`); raises :class:`BodyError` (415
    or 400). The body is parsed here (one that cannot be read fails whole); its spans become records as
    :meth:`Decoded.batches` takes them."""
    return _decode(body, content_type, limit, decode_protobuf, decode_json)


def decode_logs_body(body: bytes, content_type: str, limit: int | None = DEFAULT_VALUE_LIMIT) -> DecodedLogs:
    """Decode a logs export request by its content type (:mod:`viewer.decode_logs`); raises :class:`BodyError`
    (415 or 400) as :func:`decode_body` does."""
    return _decode(body, content_type, limit, decode_logs_protobuf, decode_logs_json)


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def _partial_message(rejected: list[str]) -> str:
    message = "; ".join(rejected[:20])
    if len(rejected) > 20:
        message += f"; and {len(rejected) - 20} more"
    return message


def encode_response(content_type: str, rejected: list[str]) -> Response:
    """A 200 ExportTraceServiceResponse in the request's encoding, with partial success when spans were rejected."""
    if _media_type(content_type) == PROTOBUF:
        response = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = len(rejected)
            response.partial_success.error_message = _partial_message(rejected)
        return Response(response.SerializeToString(), media_type=PROTOBUF)
    body: dict[str, Any] = {}
    if rejected:
        body["partialSuccess"] = {"rejectedSpans": str(len(rejected)), "errorMessage": _partial_message(rejected)}
    return Response(json.dumps(body).encode(), media_type=JSON)


def encode_logs_response(content_type: str, rejected: list[str]) -> Response:
    """A 200 ExportLogsServiceResponse in the request's encoding, with partial success when records were
    rejected."""
    if _media_type(content_type) == PROTOBUF:
        response = ExportLogsServiceResponse()
        if rejected:
            response.partial_success.rejected_log_records = len(rejected)
            response.partial_success.error_message = _partial_message(rejected)
        return Response(response.SerializeToString(), media_type=PROTOBUF)
    body: dict[str, Any] = {}
    if rejected:
        body["partialSuccess"] = {"rejectedLogRecords": str(len(rejected)), "errorMessage": _partial_message(rejected)}
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
    decoded = await _handle(request, decode_body, ingest, max_bytes, limit, admit)
    if isinstance(decoded, Response):
        return decoded
    return encode_response(request.headers.get("content-type", ""), decoded.rejected)


async def handle_logs(
    request: Request,
    ingest: Callable[[DecodedLogs], Awaitable[None]],
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    limit: int | None = DEFAULT_VALUE_LIMIT,
    admit: Callable[[], None] | None = None,
) -> Response:
    """Serve ``POST /v1/logs`` as :func:`handle_traces` serves traces (the same checks, limits and errors)."""
    decoded = await _handle(request, decode_logs_body, ingest, max_bytes, limit, admit)
    if isinstance(decoded, Response):
        return decoded
    return encode_logs_response(request.headers.get("content-type", ""), decoded.rejected)


async def _handle(
    request: Request,
    decode: Callable[[bytes, str, int | None], _T],
    ingest: Callable[[_T], Awaitable[None]],
    max_bytes: int,
    limit: int | None,
    admit: Callable[[], None] | None,
) -> _T | Response:
    """The steps both signals share: the decoded request once ``ingest`` took it, or the error response."""
    content_type = request.headers.get("content-type", "")
    media = _media_type(content_type)
    if media not in (PROTOBUF, JSON):
        return _error_response(content_type, 415, _unsupported(content_type))
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return _error_response(content_type, 413, f"request body is larger than the limit of {max_bytes} bytes")
    try:
        if admit is not None:
            admit()
        body = await read_body(request.stream(), request.headers.get("content-encoding", ""), max_bytes)
        decoded = decode(body, content_type, limit)
        del body
        await ingest(decoded)
    except BodyError as exc:
        return _error_response(content_type, exc.status, exc.message)
    except Unavailable as exc:
        return _unavailable(content_type, exc)
    return decoded
