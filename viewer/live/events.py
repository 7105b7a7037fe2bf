"""Events as the stream sends them: :class:`Event` (encoded once, the same bytes to every subscriber) and the
encoders of its envelopes, ``{"id", "type", "run_id", ...}``, written by hand where that is the hot path (the
tests hold them byte-equal to encoding the envelope's dict, and :func:`encode_arrived_ended` to
:func:`otelflow.wire.encode_span_pair`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from otelflow import attributes as A
from otelflow.records import FAILED, STATUS_RUNNING, EventRecord, SpanRecord, format_time
from otelflow.wire import SPAN_EVENT, dumps, event_json, quote, to_json

if TYPE_CHECKING:
    from .state import RunState

__all__ = [
    "Event",
    "attributes_json",
    "bare_event",
    "encode_arrived_ended",
    "envelope",
    "plain",
    "span_event_envelope",
    "sse_head",
    "wrapped",
]


@dataclass(slots=True, eq=False)
class Event:
    """One event, encoded once. ``data`` is the JSON object (WebSocket), ``head`` the SSE lines before it: the
    frame is ``head + data + b"\n\n"``, joined only into a stream's write (see :attr:`frame`).

    For taps: ``record`` is the span a ``span.*`` or ``span.event`` event is about (``derived`` for the
    ``span.started`` of a span that arrived already ended, whose ``record`` is then the ended span;
    ``event_index`` the place of a ``span.event``'s lifecycle event in it),
    ``summary`` the run of a ``run.*`` event (``summary_json`` its JSON); ``quiet`` events have no id and reach
    no subscriber.
    """

    seq: int
    id: str
    type: str
    run_id: str | None
    alias: str | None
    kind: str | None
    name: str | None
    status: str | None
    data: bytes
    head: bytes
    record: SpanRecord | None = None
    event_index: int = -1  # span.event: the place of its lifecycle event in ``record.events``
    derived: bool = False
    stalled: bool = False  # about stalled work: passes the `status=stalled` filter
    summary: dict[str, Any] | None = None
    summary_json: str | None = None
    quiet: bool = False

    @property
    def frame(self) -> bytes:
        """The SSE frame (``id:``, ``event:`` and ``data:`` lines)."""
        return b"".join((self.head, self.data, b"\n\n"))

    @property
    def text(self) -> str:
        return self.data.decode("ascii")

    def payload(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.data)
        return decoded


def envelope(event_id: str, type_: str, run: RunState | None, body: dict[str, Any] | None) -> bytes:
    envelope: dict[str, Any] = {"id": event_id, "type": type_, "run_id": run.trace_id if run else None}
    if body:
        envelope.update(body)
    return dumps(envelope)


def wrapped(event_id: str, type_: str, run: RunState | None, key: str, raw: bytes) -> bytes:
    """The envelope ``{"id", "type", "run_id", key: raw}`` around an already encoded object: the same bytes."""
    run_id = quote(run.trace_id) if run else "null"
    head = f'{{"id":{quote(event_id)},"type":{quote(type_)},"run_id":{run_id},"{key}":'
    return b"".join((head.encode("ascii"), raw, b"}"))


def span_event_envelope(
    event_id: str,
    run: RunState,
    record: SpanRecord,
    event: EventRecord,
    index: int,
    encoded: tuple[SpanRecord, list[str]] | None,
) -> bytes | None:
    """The envelope of a ``span.event`` (the same bytes as :func:`_envelope`'s), its ``event`` (``index`` in
    ``record.events``) taken from ``encoded`` when they are ``record``'s; ``None`` when a value needs the
    general path."""
    try:
        if encoded is not None and encoded[0] is record and 0 <= index < len(encoded[1]):
            text = encoded[1][index]
        else:
            text = event_json(event)
        return (
            f'{{"id":"{event_id}","type":"{SPAN_EVENT}","run_id":{quote(run.trace_id)},'
            f'"trace_id":{quote(record.trace_id)},"span_id":{quote(record.span_id)},'
            f'"span_name":{quote(record.name)},"span_kind":{quote(record.kind)},"event":{text}}}'
        ).encode("ascii")
    except (TypeError, ValueError):
        return None


def sse_head(event_id: str, type_: str) -> bytes:
    return f"id: {event_id}\nevent: {type_}\ndata: ".encode("ascii")


def bare_event(seq: int, event_id: str, type_: str, body: dict[str, Any]) -> Event:
    """An event of no run (``reset``, ``shutdown``)."""
    data = envelope(event_id, type_, None, body)
    return Event(seq, event_id, type_, None, None, None, None, None, data, sse_head(event_id, type_))


_SCALARS: Final = frozenset({str, int, bool, type(None)})


def plain(attributes: Any) -> bool:
    """Whether orjson writes ``attributes`` as the standard library's encoder does with the stream's settings: a
    dict whose values are strings, integers, booleans, ``None`` or floats from 1e-4 up to 1e16 (or zero), whose
    float text is ``float.__repr__``'s. Its strings must still be checked (:func:`_exact`)."""
    if type(attributes) is not dict:
        return False
    for value in attributes.values():
        kind = type(value)
        if kind not in _SCALARS and not (kind is float and (1e-4 <= abs(value) < 1e16 or value == 0.0)):
            return False
    return True


def _exact(data: bytes) -> bool:
    """orjson's bytes are the standard library's when they are ASCII without DEL (which it writes ``\\u007f``)."""
    return data.isascii() and b"\x7f" not in data


def attributes_json(attributes: Any) -> str:
    """``to_json(dict(attributes))`` (:func:`otelflow.wire.to_json`), by orjson when :func:`plain` lets it;
    raises as ``to_json`` does."""
    if plain(attributes):
        try:
            data = orjson.dumps(attributes)
        except TypeError:  # an integer past 64 bits, a lone surrogate, a key that is not a str
            pass
        else:
            if _exact(data):
                return data.decode("ascii")
    return to_json(attributes if type(attributes) is dict else dict(attributes))


def encode_arrived_ended(rec: SpanRecord) -> tuple[bytes, bytes, list[str]] | None:
    """For a span that arrived ended, :func:`otelflow.wire.encode_span_pair`'s made-up start and end, and its
    events as :func:`otelflow.wire.event_json` writes them, its attribute dicts written by
    :func:`attributes_json`; ``None`` when a value needs the general path."""
    start, end = rec.start_time_ns, rec.end_time_ns
    if type(start) is not int or type(end) is not int or rec.kind == A.KIND_LLM:
        return None  # a model call's span carries its "llm" object: the general path writes it
    try:
        events = [
            f'{{"name":{quote(e.name)},"time":"{format_time(e.time_ns)}","attributes":{attributes_json(e.attributes)}}}'
            for e in rec.events
        ]
        parent = rec.parent_span_id
        head = (
            f'{{"trace_id":{quote(rec.trace_id)},"span_id":{quote(rec.span_id)},'
            f'"parent_span_id":{"null" if parent is None else quote(parent)},"name":{quote(rec.name)},'
            f'"kind":{quote(rec.kind)},"status":'
        )
        start_time = f'"start_time":"{format_time(start)}",'
        middle = f'"service":{quote(rec.service)},"attributes":{attributes_json(rec.attributes)},'
        started = (
            f'{head}"{STATUS_RUNNING}",{start_time}"end_time":null,"duration_ms":null,'
            f'{middle}"events":[],"error":null}}'
        )
        ended = (
            f"{head}{quote(rec.status)},{start_time}"
            f'"end_time":"{format_time(end)}","duration_ms":{float.__repr__((end - start) / 1e6)},'
            f'{middle}"events":[{",".join(events)}],'
            f'"error":{"null" if rec.status not in FAILED else to_json(rec.error())}}}'
        )
        return started.encode("ascii"), ended.encode("ascii"), events
    except (TypeError, ValueError):
        return None
