"""The history's subscriber of the broadcast: the events of each publish become rows, written as one batch."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

from otelflow.records import SpanRecord
from otelflow.wire import RUN_ENDED, RUN_STARTED, RUN_UPDATED, SPAN_ENDED, SPAN_EVENT, SPAN_STARTED, dumps

from ..live import Batch, Event
from .protocols import HistoryWriter
from .rows import LIFE, MAX_LIFE, RUN_DELTA, RUN_DELTA_EVERY, SPAN_REFERENCED, event_data, life_item, start_data

__all__ = ["Recorder"]

_REMEMBERED_RUNS: Final = 10_000  # running runs whose last stored summary is kept, for run.updated deltas
_MISSING: Final = object()


class Recorder:
    """A broadcast tap (:meth:`viewer.live.Hub.tap`) that keeps what the stream tells: every event of a run, the
    latest snapshot of every span it names, every run summary. Each is kept once: the events that only tell a
    span's life (``span.started``, ``span.event``, ``span.ended``) are kept as references to the span, whose row
    rebuilds them, consecutive ones of a span in one row (see :mod:`viewer.history.rows`); ``run.ended`` is
    rebuilt from the run's row, and a ``run.updated`` keeps only what changed in the run's summary. Rows of this
    process's own spans may be dropped (counted) while the history's backlog is full; nothing else is."""

    def __init__(self, history: HistoryWriter) -> None:
        self.history = history
        # a shared history keeps the number of the broker's last entry it holds (with the rows of that entry)
        self.positions = False
        # every batch may be dropped while the backlog is full (a shared history: the broker holds the requests)
        self.droppable = False
        # trace id -> (the run's summary as last stored, run.updated deltas since it was stored whole)
        self._summaries: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()

    def __call__(self, events: list[Event], batch: Batch) -> None:
        history = self.history
        spans: dict[tuple[str, str], SpanRecord] = {}
        life: Event | None = None  # the first event of the LIFE row being gathered
        items: list[str] = []
        entry = batch.entry
        position = entry.n if entry is not None and entry.last and self.positions else 0
        last: SpanRecord | None = None  # the record of the last event that had one (its span is in spans)
        with history.batch(droppable=batch.local or self.droppable, journal_end=position):
            for ev in events:
                record, run_id = ev.record, ev.run_id
                if record is not None and record is not last:
                    spans[(record.trace_id, record.span_id)] = record
                    last = record
                if ev.summary is not None:
                    history.put_run(ev.summary, ev.summary_json)
                if run_id is None or ev.quiet:
                    continue
                # the ended span's row rebuilds its start (made up), its events and its end; a live start and the
                # events of a running span keep what a later snapshot may not have
                if (
                    record is not None
                    and ev.type in SPAN_REFERENCED
                    and (ev.derived if ev.type == SPAN_STARTED else ev.type != SPAN_EVENT or record.ended)
                ):
                    if (
                        life is not None
                        and life.record is record
                        and life.seq + len(items) == ev.seq
                        and len(items) < MAX_LIFE
                    ):
                        kind = ev.type  # life_item, inline: most events of a request take this way
                        items.append(
                            "s" if kind == SPAN_STARTED else "e" if kind == SPAN_ENDED else str(ev.event_index)
                        )
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
                elif record is not None and ev.type == SPAN_EVENT and 0 <= ev.event_index < len(record.events):
                    history.put_event(ev.id, run_id, ev.type, event_data(record.events[ev.event_index]), record.span_id)
                elif ev.type == RUN_ENDED and ev.summary is not None:  # the run's row holds its summary
                    self._summaries.pop(run_id, None)
                    history.put_event(ev.id, run_id, ev.type, None)
                elif ev.type == RUN_UPDATED and ev.summary is not None:
                    self._put_update(ev, run_id, ev.summary)
                else:
                    if ev.type == RUN_STARTED and ev.summary is not None:
                        self._remember(run_id, ev.summary, 0)
                    history.put_event(ev.id, run_id, ev.type, ev.text)
            if life is not None:
                self._put_life(life, items)
            for record in spans.values():
                history.put_span(record)

    def _remember(self, trace_id: str, summary: dict[str, Any], deltas: int) -> None:
        self._summaries[trace_id] = (summary, deltas)
        self._summaries.move_to_end(trace_id)
        if len(self._summaries) > _REMEMBERED_RUNS:
            self._summaries.popitem(last=False)

    def _put_update(self, ev: Event, trace_id: str, summary: dict[str, Any]) -> None:
        last = self._summaries.get(trace_id)
        if last is None or last[1] + 1 >= RUN_DELTA_EVERY:
            self.history.put_event(ev.id, trace_id, ev.type, ev.text)
            self._remember(trace_id, summary, 0)
            return
        before = last[0]
        delta = {k: v for k, v in summary.items() if before.get(k, _MISSING) != v}
        self.history.put_event(ev.id, trace_id, RUN_DELTA, dumps(delta).decode("ascii"))
        self._remember(trace_id, summary, last[1] + 1)

    def _put_life(self, first: Event, items: list[str]) -> None:
        assert first.record is not None
        assert first.run_id is not None
        self.history.put_event(first.id, first.run_id, LIFE, ",".join(items), first.record.span_id)
