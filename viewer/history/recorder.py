"""The history's subscriber of the broadcast: the events of each publish become rows, written as one batch."""

from __future__ import annotations

from otelflow.records import SpanRecord
from otelflow.wire import RUN_ENDED, SPAN_STARTED

from ..live import Batch, Event
from .protocols import HistoryWriter
from .rows import LIFE, MAX_LIFE, SPAN_REFERENCED, life_item, start_data

__all__ = ["Recorder"]


class Recorder:
    """A broadcast tap (:meth:`viewer.live.Hub.tap`) that keeps what the stream tells: every event of a run, the
    latest snapshot of every span it names, every run summary. Each is kept once: the events that only tell a
    span's life (``span.started``, ``span.event``, ``span.ended``) are kept as references to the span, whose row
    rebuilds them, consecutive ones of a span in one row (see :mod:`viewer.history.rows`); ``run.ended`` is
    rebuilt from the run's row. Rows of this
    process's own spans may be dropped (counted) while the history's backlog is full; nothing else is."""

    def __init__(self, history: HistoryWriter) -> None:
        self.history = history

    def __call__(self, events: list[Event], batch: Batch) -> None:
        history = self.history
        spans: dict[tuple[str, str], SpanRecord] = {}
        life: Event | None = None  # the first event of the LIFE row being gathered
        items: list[str] = []
        with history.batch(droppable=batch.local):
            for ev in events:
                record, run_id = ev.record, ev.run_id
                if record is not None:
                    spans[(record.trace_id, record.span_id)] = record
                if ev.summary is not None:
                    history.put_run(ev.summary, ev.summary_json)
                if run_id is None or ev.quiet:
                    continue
                if record is not None and ev.type in SPAN_REFERENCED and (ev.derived or ev.type != SPAN_STARTED):
                    if (
                        life is not None
                        and life.record is record
                        and life.seq + len(items) == ev.seq
                        and len(items) < MAX_LIFE
                    ):
                        items.append(life_item(ev.type, ev.event_index))
                        continue
                    if life is not None:
                        self._put_life(life, items)
                    life, items = ev, [life_item(ev.type, ev.event_index)]
                    continue
                if life is not None:
                    self._put_life(life, items)
                    life = None
                if record is not None and ev.type == SPAN_STARTED:  # a live start: what its snapshot has of its own
                    history.put_event(ev.id, run_id, ev.type, start_data(record), record.span_id)
                elif ev.type == RUN_ENDED and ev.summary is not None:  # the run's row holds its summary
                    history.put_event(ev.id, run_id, ev.type, None)
                else:
                    history.put_event(ev.id, run_id, ev.type, ev.text)
            if life is not None:
                self._put_life(life, items)
            for record in spans.values():
                history.put_span(record)

    def _put_life(self, first: Event, items: list[str]) -> None:
        assert first.record is not None
        assert first.run_id is not None
        self.history.put_event(first.id, first.run_id, LIFE, ",".join(items), first.record.span_id)
