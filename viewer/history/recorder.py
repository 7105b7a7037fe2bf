"""The history's subscriber of the broadcast: the events of each publish become rows, written as one batch."""

from __future__ import annotations

from otelflow.wire import quote

from ..live import Batch, Event
from .protocols import HistoryWriter

__all__ = ["Recorder"]


class Recorder:
    """A broadcast tap (:meth:`viewer.live.Hub.tap`) that keeps what the stream tells: every event, the latest
    snapshot of every span it names, every run summary. Rows of this process's own spans may be dropped
    (counted) while the history's backlog is full; nothing else is."""

    def __init__(self, history: HistoryWriter) -> None:
        self.history = history

    def __call__(self, events: list[Event], batch: Batch) -> None:
        history = self.history
        spans: dict[tuple[str, str], tuple[Event, bool]] = {}
        with history.batch(droppable=batch.local):
            for ev in events:
                if ev.derived:
                    # the start of a span that arrived ended is its end minus the ending: the row keeps only
                    # the span id, and reading rebuilds the envelope from the span (HistoryReader.events)
                    assert ev.record is not None
                    history.put_event(ev.id, ev.run_id, ev.type, quote(ev.record.span_id).encode("ascii"))
                    continue
                if not ev.quiet:
                    history.put_event(ev.id, ev.run_id, ev.type, ev.data)
                if ev.summary is not None:
                    history.put_run(ev.summary, ev.summary_json)
                record = ev.record
                if record is not None:
                    spans[(record.trace_id, record.span_id)] = (ev, ev.exact)
            for ev, exact in spans.values():
                assert ev.record is not None
                # an exact event holds the span's envelope object: the row keeps only the rest
                history.put_span(ev.record, ev.id if exact else None)
