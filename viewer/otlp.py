"""OTLP/HTTP trace receiver: a ``POST /v1/traces`` body (protobuf or JSON, maybe gzip) checked, decoded
(:mod:`viewer.decode`) and answered as OTLP says.

Contract (https://opentelemetry.io/docs/specs/otlp/#otlphttp):

- ``application/x-protobuf`` and ``application/json`` (any ``charset``); other content types get 415.
- ``Content-Encoding: gzip`` (one member or several concatenated) or none; other encodings get 415. The size
  limit applies to the decompressed body (413); decompression is streamed with a cap, so a gzip bomb costs at
  most ``max_bytes`` of memory.
- A body that cannot be read gets 400 with a message saying where and why; a span that cannot be read is
  rejected alone (OTLP partial success: ``rejectedSpans`` and ``errorMessage``), in the request's encoding.
- 503 with ``Retry-After`` when the receiver cannot take spans now (:class:`Unavailable`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.requests import Request
from starlette.responses import Response

from otelflow.scrub import DEFAULT_VALUE_LIMIT

from .decode import KIND_JSON, KIND_PROTOBUF, Decoded, OtlpDecodeError, decode_json, decode_protobuf

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
    "encode_response",
    "handle_traces",
    "read_body",
]

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


def decode_body(body: bytes, content_type: str, limit: int | None = DEFAULT_VALUE_LIMIT) -> Decoded:
    """Decode an export request by its content type (:mod:`viewer.decode`); raises :class:`BodyError` (415 or
    400). The body is parsed here (one that cannot be read fails whole); its spans become records as
    :meth:`Decoded.batches` takes them."""
    media = _media_type(content_type)
    if media not in (PROTOBUF, JSON):
        raise BodyError(415, f"Content-Type {content_type or '(none)'!r} is not supported; send {PROTOBUF} or {JSON}")
    try:
        return decode_protobuf(body, limit) if media == PROTOBUF else decode_json(body, limit)
    except OtlpDecodeError as exc:
        message = str(exc) if media == PROTOBUF else f"malformed OTLP/JSON: {exc}"
        raise BodyError(400, message) from None


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
