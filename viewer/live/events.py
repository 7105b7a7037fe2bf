"""Events as the stream sends them: :class:`Event` (encoded once, the same bytes to every subscriber) and the
encoders of its envelopes, ``{"id", "type", "run_id", ...}``, written by hand where that is the hot path (the
tests hold them byte-equal to encoding the envelope's dict)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otelflow.records import EventRecord, SpanRecord
from otelflow.wire import SPAN_EVENT, dumps, event_json, quote

if TYPE_CHECKING:
    from .state import RunState

__all__ = ["Event", "bare_event", "envelope", "span_event_envelope", "sse_head", "wrapped"]


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
