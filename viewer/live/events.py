"""Events as the stream sends them: :class:`Event` (encoded once, the same bytes to every subscriber) and the
encoders of its envelopes, ``{"id", "type", "run_id", ...}``, written by hand where that is the hot path (the
tests hold them byte-equal to encoding the envelope's dict, and :func:`attributes_json` to
:func:`otelflow.wire.attributes_text`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson

from otelflow.records import EventRecord, SpanRecord
from otelflow.wire import SPAN_EVENT, attributes_text, dumps, event_json, quote

if TYPE_CHECKING:
    from .state import RunState

__all__ = [
    "Event",
    "attributes_json",
    "bare_event",
    "envelope",
    "orjson_text",
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
    float text is ``float.__repr__``'s. Its strings are checked by :func:`orjson_text`."""
    if type(attributes) is not dict:
        return False
    for value in attributes.values():
        kind = type(value)
        if kind not in _SCALARS and not (kind is float and (1e-4 <= abs(value) < 1e16 or value == 0.0)):
            return False
    return True


def orjson_text(value: Any) -> str | None:
    """``value`` by orjson, when its bytes are the standard library's: ASCII without DEL (which orjson writes raw,
    the standard library as ``\u007f``); ``None`` otherwise, and when orjson cannot write it (an integer past 64
    bits, a lone surrogate, a key that is not a str). The caller makes sure of the kinds of values (:func:`plain`)."""
    try:
        data = orjson.dumps(value)
    except TypeError:
        return None
    return data.decode("ascii") if data.isascii() and b"\x7f" not in data else None


def attributes_json(attributes: Any) -> str:
    """:func:`otelflow.wire.attributes_text`, by orjson when :func:`plain` lets it; raises as that does."""
    if type(attributes) is not dict:
        attributes = dict(attributes)  # the SDK's attributes of an event (a read-only mapping)
    if plain(attributes):
        text = orjson_text(attributes)
        if text is not None:
            return text
    return attributes_text(attributes)
