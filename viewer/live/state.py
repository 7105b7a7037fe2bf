"""Live state: ordered batches in, changes out. Runs and their spans, progress, workers and abandonment; no I/O.

Contracts:

- A run is a trace; it is also found by its ``otelflow.run.id``. It is ``running`` until its root span (the
  span with no parent) ends, then ``ok`` or ``error``; ``abandoned`` when every running span it had belonged
  to workers that went silent, or when nothing was heard of it for ``idle_run_s`` while no live worker runs
  a span of it (a trace whose root never arrives, from senders without heartbeats).
- Spans merge by (trace id, span id): a later snapshot replaces an earlier one; an ended span is final.
- Every span gets exactly one ``span.started`` before anything else of it, also when it arrives already
  ended (the start is then derived from the span); per span the order is started, updates and events, ended.
- A run's progress is the newest ``otelflow.progress`` event of its most run-like span that reports any:
  the root span, else a workflow span, else any span. This is the one place that rule lives.
- A running span with no running child is *stalled* (a live flag, not a status) when the checker finds it
  quiet or slow by the :class:`viewer.live.stall.StallPolicy` (``span.stalled``); it is cleared
  (``span.unstalled``) when the span moves again (a quiet stall), ends or is abandoned. A run counts its
  stalled spans (``stalled_count``).
- A log record that names a span (``Batch.logs``: trace id, span id, lifecycle event) becomes an event of that
  span: a ``span.event`` while it runs or after it ended, and part of every later snapshot of it. One whose
  span is not known yet is held until the span arrives (then it comes with the span's ``span.started``), at
  most :attr:`LiveState.hold_logs_s` and within a count and a byte budget; what leaves unjoined is counted.
- Time enters only through batches: ``Batch.at_ns`` (when it was received) and the decisions a checker
  took with :meth:`LiveState.due` and published as a batch. The same batches in the same order give the
  same changes, wherever they are applied.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from otelflow import attributes as A
from otelflow.records import EventRecord, SpanRecord, format_time
from otelflow.wire import (
    RUN_ENDED,
    RUN_STARTED,
    RUN_UPDATED,
    SPAN_ABANDONED,
    SPAN_ENDED,
    SPAN_EVENT,
    SPAN_STALLED,
    SPAN_STARTED,
    SPAN_UNSTALLED,
    SPAN_UPDATED,
)

from .llm_totals import LlmTotals
from .stall import STALL_ABANDONED, STALL_ENDED, STALL_MOVED, STALL_QUIET, Stall, StallPolicy, workflow_name

__all__ = ["RUN_STORED", "Batch", "Change", "Entry", "JoinedLogs", "LiveState", "RunState"]

_ENDED: Final = (A.STATUS_OK, A.STATUS_ERROR, A.STATUS_CANCELLED)
# counters of log records (in LiveState.stats): joined a span, held now (and their bytes), dropped unjoined
# after hold_logs_s, dropped because the held ones were over their budget
_LOG_STATS: Final = ("logs_joined", "logs_held", "logs_held_bytes", "logs_expired", "logs_dropped_full")
RUN_STORED: Final = "run.stored"  # a run's summary changed with nothing to tell the stream (an ended run's counts)


@dataclass(frozen=True, slots=True)
class Entry:
    """Where a batch sits in a shared ordered log (a broker's stream): the log's ``epoch`` (new when the log lost
    its data), the entry's number ``n`` (dense from 1 within an epoch), whether the batch is the entry's first
    and last, and whether entries were lost just before it (``gap``: a reader fell behind the log's length)."""

    epoch: str
    n: int
    first: bool = True
    last: bool = True
    gap: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    """One ordered input: spans from one request (or from this process), the workers it was heard from, when it
    arrived (wall clock, ns), and decisions a checker took (workers gone silent, runs gone quiet: each with the
    time it was last heard from)."""

    records: Sequence[SpanRecord] = ()
    workers: Iterable[str] = ()
    at_ns: int = 0
    local: bool = False  # from this process: its workers never go silent
    silent_workers: tuple[tuple[str, int], ...] = ()
    idle_runs: tuple[tuple[str, int], ...] = ()
    stalls: tuple[tuple[str, str, int, Stall], ...] = ()  # trace, span, quiet since, why
    logs: Sequence[tuple[str, str, EventRecord]] = ()  # events from log records: trace, span, event
    entry: Entry | None = None  # its place in a shared log (a broker's), which numbers its events


@dataclass(slots=True)
class Change:
    """What a batch changed, for the broadcast to tell: an event type of :mod:`otelflow.wire` (or
    :data:`RUN_STORED`), its run, and the span, lifecycle event or silent worker it concerns."""

    type: str
    run: RunState
    span: SpanRecord | None = None
    event: EventRecord | None = None
    event_index: int = -1  # span.event: the place of ``event`` in ``span.events``
    worker: str | None = None
    derived: bool = False  # a span.started made up for ``span``, which arrived already ended
    stall: Stall | None = None  # span.stalled: why
    cleared: tuple[str, int] | None = None  # span.unstalled: why (moved, ended, abandoned) and when (ns)


class JoinedLogs:
    """The events joined to one span from log records, and their (name, time) to know one sent again."""

    __slots__ = ("events", "keys")

    def __init__(self) -> None:
        self.events: list[EventRecord] = []
        self.keys: set[tuple[str, int]] = set()

    def add(self, event: EventRecord) -> bool:
        """Join ``event``; ``False`` when it is joined already (the same record sent again: an exporter's retry)."""
        key = (event.name, event.time_ns)
        if key in self.keys and event in self.events:
            return False
        self.keys.add(key)
        self.events.append(event)
        return True


@dataclass(slots=True)
class RunState:
    """A run (trace) as the live state knows it."""

    trace_id: str
    alias: str | None = None
    name: str = ""
    service: str = ""
    status: str = A.STATUS_RUNNING
    start_ns: int = 0
    end_ns: int | None = None
    root_span_id: str | None = None
    progress: dict[str, Any] | None = None
    progress_time_ns: int = -1
    progress_level: int = -1  # 2: the root span's, 1: a workflow span's, 0: any other span's
    spans: dict[str, SpanRecord] = field(default_factory=dict)
    error_count: int = 0
    agent_count: int = 0
    announced: bool = False
    heard_ns: int = 0  # when a record of it last arrived
    nbytes: int = 0  # about what its spans take in memory
    first_seq: int = 0  # the broadcast's number of its first event (0: none yet), where its streams replay from
    quiet: dict[str, int] = field(default_factory=dict)  # running span id -> when it last moved (wall clock, ns)
    stalled: dict[str, Stall] = field(default_factory=dict)
    had_stall: bool = False  # a span of it was stalled at some point (its run events pass `status=stalled`)
    llm: LlmTotals | None = None  # its model calls that ended, once there is one
    logs: dict[str, JoinedLogs] = field(default_factory=dict)  # span id -> events joined from log records

    def add_llm_call(self, rec: SpanRecord) -> None:
        """Count an ended model call (kind ``llm``) in the run's totals."""
        if self.llm is None:
            self.llm = LlmTotals()
        self.llm.add(rec)

    def to_dict(self) -> dict[str, Any]:
        """The ``run`` object of run events and of the REST API."""
        return {
            "run_id": self.trace_id,
            "trace_id": self.trace_id,
            "otelflow_run_id": self.alias,
            "name": self.name,
            "service": self.service,
            "status": self.status,
            "start_time": format_time(self.start_ns) if self.start_ns else None,
            "end_time": format_time(self.end_ns) if self.end_ns is not None else None,
            "start_time_ns": self.start_ns,
            "end_time_ns": self.end_ns,
            "duration_ms": (self.end_ns - self.start_ns) / 1e6 if self.end_ns is not None else None,
            "progress": self.progress,
            "span_count": len(self.spans),
            "agent_count": self.agent_count,
            "error_count": self.error_count,
            "stalled_count": len(self.stalled),
            **({"llm": self.llm.to_dict()} if self.llm is not None else {}),
        }

    @property
    def workflow(self) -> str:
        """The workflow this run is of (see :func:`viewer.live.stall.workflow_name`)."""
        return workflow_name(self.name, self.spans.get(self.root_span_id) if self.root_span_id else None)


def _progress_of(event: EventRecord, span: SpanRecord) -> dict[str, Any]:
    a = event.attributes
    return {
        "percent": a.get(A.PROGRESS_PERCENT),
        "message": a.get(A.PROGRESS_MESSAGE),
        "completed": a.get(A.PROGRESS_COMPLETED),
        "total": a.get(A.PROGRESS_TOTAL),
        "span_id": span.span_id,
        "time": format_time(event.time_ns),
    }


def _last_summaries(changes: list[Change]) -> list[Change]:
    """``changes`` with only the last ``run.updated`` (and ``run.stored``) of each run. The broadcast encodes a
    batch's changes once all of it is applied, so the earlier ones would carry the same summary again; a busy
    run (a progress event in each of its spans) would otherwise tell it once per span."""
    seen: set[tuple[str, str]] = set()
    earlier: set[int] = set()
    for index in range(len(changes) - 1, -1, -1):
        type_ = changes[index].type
        if type_ in (RUN_UPDATED, RUN_STORED):
            key = (type_, changes[index].run.trace_id)
            if key in seen:
                earlier.add(index)
            seen.add(key)
    return [change for index, change in enumerate(changes) if index not in earlier] if earlier else changes


_EVENT_COST: Final = 120  # what an event costs in :func:`_size`


def _event_size(event: EventRecord) -> int:
    """About the bytes an event keeps alive."""
    size = _EVENT_COST + len(event.name)
    for value in event.attributes.values():
        size += len(value) + 60 if type(value) is str else len(repr(value)) + 40
    return size


def _size(rec: SpanRecord) -> int:
    """About the bytes a record keeps alive: its texts, plus a fixed cost per span and per event."""
    size = 400 + len(rec.name) + _EVENT_COST * len(rec.events)
    for value in rec.attributes.values():
        if type(value) is str:
            size += len(value) + 60
        else:
            size += 40
    return size


class LiveState:
    """Runs, spans and workers, changed only by :meth:`apply` (see the module docstring)."""

    def __init__(
        self,
        *,
        abandon_after_s: float = A.ABANDON_AFTER_S,
        idle_run_s: float = 300.0,
        max_ended_runs: int = 500,
        max_live_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.abandon_after_s = abandon_after_s
        self.idle_run_s = idle_run_s
        self.max_ended_runs = max_ended_runs
        self.max_live_bytes = max_live_bytes
        self._runs: dict[str, RunState] = {}
        self._aliases: dict[str, str] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._workers: dict[str, int] = {}  # worker id -> wall-clock ns it was last heard from
        self._local_workers: set[str] = set()
        self._running_by_worker: dict[str, set[tuple[str, str]]] = {}
        self._activity: OrderedDict[str, None] = OrderedDict()  # running runs, least recently heard first
        self.live_nbytes = 0
        self.stats: dict[str, int] = {"spans": 0, "errors": 0, **dict.fromkeys(_LOG_STATS, 0)}
        self.stall = StallPolicy()
        self.hold_logs_s = 60.0
        self.max_held_logs = 10_000
        self.max_held_log_bytes = 16 * 1024 * 1024
        # log events whose span is not known yet: (trace, span) -> (held since, events, their size), oldest first
        self._held: OrderedDict[tuple[str, str], tuple[int, list[EventRecord], int]] = OrderedDict()

    # ------------------------------------------------------------------ queries

    def resolve(self, key: str) -> str | None:
        """The trace id of a run held here, named by trace id or ``otelflow.run.id``."""
        trace = key if key in self._runs else self._aliases.get(key)
        return trace if trace is not None and trace in self._runs else None

    def run(self, key: str) -> RunState | None:
        trace = self.resolve(key)
        return self._runs[trace] if trace else None

    def runs(self) -> list[RunState]:
        return list(self._runs.values())

    # ------------------------------------------------------------------ applying batches

    def apply(self, batch: Batch) -> list[Change]:
        """Fold a batch in; the changes it made, in order. A record that cannot be folded is counted and skipped."""
        out: list[Change] = []
        at = batch.at_ns
        for worker in batch.workers:
            self._workers[worker] = max(self._workers.get(worker, 0), at)
        for worker, heard in batch.silent_workers:
            self._silent_worker(worker, heard, out)
        for trace, heard in batch.idle_runs:
            self._idle_run(trace, heard, out)
        for trace, span_id, since, why in batch.stalls:
            self._stall(trace, span_id, since, why, out)
        ending: dict[str, RunState] = {}
        for rec in batch.records:
            try:
                self._apply_one(rec, batch.local, at, out, ending)
            except Exception:  # noqa: BLE001 - one bad record must not stop the others
                self.stats["errors"] += 1
        for trace, span_id, event in batch.logs:
            try:
                self._log_event(trace, span_id, event, at, out)
            except Exception:  # noqa: BLE001 - one bad record must not stop the others
                self.stats["errors"] += 1
        if self._held:
            self._expire_held(at)
        for run in ending.values():  # after every span of the batch: a run ends after the spans that came with it
            out.append(Change(RUN_ENDED, run))
            self._run_ended(run)
        return _last_summaries(out)

    def _apply_one(self, rec: SpanRecord, local: bool, at: int, out: list[Change], ending: dict[str, RunState]) -> None:
        self.stats["spans"] += 1
        run = self._runs.get(rec.trace_id)
        new_run = run is None
        if run is None:
            run = self._runs[rec.trace_id] = RunState(trace_id=rec.trace_id, start_ns=rec.start_time_ns)
        prev = run.spans.get(rec.span_id)
        if prev is not None and prev.status in _ENDED:
            return  # ended spans are final: duplicates and late running snapshots change nothing
        if run.logs or self._held:
            rec = self._with_logs(run, rec)
        run.heard_ns = at
        if run.status == A.STATUS_RUNNING:
            self._activity[rec.trace_id] = None
            self._activity.move_to_end(rec.trace_id)
        worker = rec.resource.get(A.WORKER_ID)
        worker = worker if isinstance(worker, str) else None
        if worker is not None:
            if local:
                self._local_workers.add(worker)
            self._workers.setdefault(worker, at)
            running = self._running_by_worker.setdefault(worker, set())
            if rec.ended:
                running.discard((rec.trace_id, rec.span_id))
            else:
                running.add((rec.trace_id, rec.span_id))
        run.spans[rec.span_id] = rec
        self._resize(run, prev, rec)
        if rec.status == A.STATUS_ERROR and (prev is None or prev.status != A.STATUS_ERROR):
            run.error_count += 1
        if prev is None and rec.kind == A.KIND_AGENT:
            run.agent_count += 1

        run_changed = self._update_run(run, rec, prev)
        if rec.kind == A.KIND_LLM and rec.status in _ENDED:
            run.add_llm_call(rec)  # totals grow as calls end (an ended span arrives once: see above)
            run_changed = True
        if new_run or not run.announced:
            run.announced = True
            run_changed = False
            out.append(Change(RUN_STARTED, run))
        told = len(out)
        if prev is None:
            if rec.ended:
                out.append(Change(SPAN_STARTED, run, rec, derived=True))  # the span is the ended one
            else:
                out.append(Change(SPAN_STARTED, run, rec))
        elif not rec.ended and (
            prev.attributes != rec.attributes or prev.name != rec.name or prev.status != rec.status
        ):
            out.append(Change(SPAN_UPDATED, run, rec))
        seen = {(e.name, e.time_ns) for e in prev.events} if rec.events and prev is not None else ()
        for index, event in enumerate(rec.events):
            if (event.name, event.time_ns) not in seen:
                out.append(Change(SPAN_EVENT, run, rec, event, index))
        if len(out) > told or rec.ended:
            run_changed = self._moved(run, rec, prev is None, at, out) or run_changed
        if rec.ended:
            out.append(Change(SPAN_ENDED, run, rec))
        # A root that ends after its run was declared abandoned (its worker was only cut off, e.g. while a
        # restarted viewer waited for it) settles the run with its real status.
        if rec.ended and rec.span_id == run.root_span_id and run.status in (A.STATUS_RUNNING, A.STATUS_ABANDONED):
            run.status = rec.status
            run.end_ns = rec.end_time_ns
            ending[run.trace_id] = run
        elif run_changed:
            out.append(Change(RUN_UPDATED if run.status == A.STATUS_RUNNING else RUN_STORED, run))

    def _moved(self, run: RunState, rec: SpanRecord, started: bool, at: int, out: list[Change]) -> bool:
        """A span started, changed or ended: it (and, when it starts or ends, its parent) is not quiet any more.
        True when that cleared a stall."""
        cleared = False
        if rec.ended:
            run.quiet.pop(rec.span_id, None)
            cleared = self._unstall(run, rec, out, STALL_ENDED, at)
        else:
            run.quiet[rec.span_id] = at
            cleared = self._unstall(run, rec, out, STALL_MOVED, at)
        parent = run.spans.get(rec.parent_span_id) if (started or rec.ended) and rec.parent_span_id else None
        if parent is not None and parent.span_id in run.quiet:
            run.quiet[parent.span_id] = at
            cleared = self._unstall(run, parent, out, STALL_MOVED, at) or cleared
        return cleared

    def _unstall(self, run: RunState, rec: SpanRecord, out: list[Change], why: str, at: int) -> bool:
        """Clear ``rec``'s stall: a quiet one when it moves (``why`` = moved), any when it ends or is abandoned."""
        stall = run.stalled.get(rec.span_id)
        if stall is None or (stall.reason != STALL_QUIET and why == STALL_MOVED):
            return False
        del run.stalled[rec.span_id]
        out.append(Change(SPAN_UNSTALLED, run, rec, cleared=(why, at)))
        return True

    def _stall(self, trace: str, span_id: str, since: int, why: Stall, out: list[Change]) -> None:
        run = self._runs.get(trace)
        if run is None or run.quiet.get(span_id) != since or span_id in run.stalled:
            return  # moved, ended or stalled since the decision was taken
        rec = run.spans[span_id]
        run.stalled[span_id] = why
        run.had_stall = True
        out.append(Change(SPAN_STALLED, run, rec, stall=why))
        out.append(Change(RUN_UPDATED, run))

    def _resize(self, run: RunState, prev: SpanRecord | None, rec: SpanRecord) -> None:
        delta = _size(rec) - (_size(prev) if prev is not None else 0)
        run.nbytes += delta
        self.live_nbytes += delta

    def _update_run(self, run: RunState, rec: SpanRecord, prev: SpanRecord | None) -> bool:
        """Fold one snapshot into its run's summary; ``True`` when status, name, alias or progress changed."""
        changed = False
        if rec.start_time_ns and (not run.start_ns or rec.start_time_ns < run.start_ns):
            run.start_ns = rec.start_time_ns
        alias = rec.run_id
        if alias and run.alias is None:
            run.alias = alias
            self._aliases[alias] = run.trace_id
            changed = True
        if rec.parent_span_id is None and run.root_span_id != rec.span_id:
            run.root_span_id = rec.span_id
            run.name = rec.name
            run.service = rec.service
            changed = True
        elif not run.name:
            run.name = rec.name
            run.service = rec.service
        if run.status == A.STATUS_ABANDONED and not rec.ended:
            run.status = A.STATUS_RUNNING  # its worker spoke again
            run.end_ns = None
            self._ended.pop(run.trace_id, None)
            self._activity[run.trace_id] = None
            changed = True
        level = 2 if rec.parent_span_id is None else 1 if rec.kind == A.KIND_WORKFLOW else 0
        if level >= run.progress_level:
            for event in rec.events:
                if event.name != A.EVENT_PROGRESS:
                    continue
                if level == run.progress_level and event.time_ns < run.progress_time_ns:
                    continue
                if prev is not None and event in prev.events and level == run.progress_level:
                    continue
                run.progress = _progress_of(event, rec)
                run.progress_time_ns = event.time_ns
                run.progress_level = level
                changed = True
        return changed

    # ------------------------------------------------------------------ log records

    def _with_logs(self, run: RunState, rec: SpanRecord) -> SpanRecord:
        """``rec`` with the events joined from log records: those held for it (now joined) and those joined to an
        earlier snapshot of it (a span's own snapshots do not have them)."""
        held = self._held.pop((rec.trace_id, rec.span_id), None) if self._held else None
        if held is not None:
            _, events, size = held
            self._count_held(-len(events), -size)
            joined = run.logs.get(rec.span_id) or run.logs.setdefault(rec.span_id, JoinedLogs())
            for event in events:
                if joined.add(event):
                    self.stats["logs_joined"] += 1
                    self._grow(run, _event_size(event) - _EVENT_COST)
        found = run.logs.get(rec.span_id)
        if found is None or not found.events:
            return rec
        own = {(e.name, e.time_ns) for e in rec.events}
        extra = tuple(e for e in found.events if (e.name, e.time_ns) not in own or e not in rec.events)
        return replace(rec, events=rec.events + extra) if extra else rec

    def _log_event(self, trace: str, span_id: str, event: EventRecord, at: int, out: list[Change]) -> None:
        run = self._runs.get(trace)
        rec = run.spans.get(span_id) if run is not None else None
        if run is None or rec is None:
            self._hold(trace, span_id, event, at)
            return
        joined = run.logs.get(span_id) or run.logs.setdefault(span_id, JoinedLogs())
        if not joined.add(event):
            return
        now = replace(rec, events=(*rec.events, event))
        run.spans[span_id] = now
        self._resize(run, rec, now)
        self._grow(run, _event_size(event) - _EVENT_COST)
        self.stats["logs_joined"] += 1
        out.append(Change(SPAN_EVENT, run, now, event, len(now.events) - 1))

    def _hold(self, trace: str, span_id: str, event: EventRecord, at: int) -> None:
        size = _event_size(event)
        if size > self.max_held_log_bytes or self.max_held_logs <= 0:
            self.stats["logs_dropped_full"] += 1
            return
        while self._held and (
            self.stats["logs_held"] >= self.max_held_logs
            or self.stats["logs_held_bytes"] + size > self.max_held_log_bytes
        ):
            _, (_, events, dropped) = self._held.popitem(last=False)  # the oldest go first
            self._count_held(-len(events), -dropped)
            self.stats["logs_dropped_full"] += len(events)
        key = (trace, span_id)
        since, events, held = self._held.get(key, (at, [], 0))
        events.append(event)
        self._held[key] = (since, events, held + size)
        self._count_held(1, size)

    def _expire_held(self, at: int) -> None:
        cutoff = at - self.hold_logs_s * 1e9
        while self._held:
            key, (since, events, size) = next(iter(self._held.items()))
            if since >= cutoff:
                break
            del self._held[key]
            self._count_held(-len(events), -size)
            self.stats["logs_expired"] += len(events)

    def _grow(self, run: RunState, size: int) -> None:
        """What joined events keep alive beyond what :func:`_size` counts for any event (it leaves with the run)."""
        run.nbytes += size
        self.live_nbytes += size

    def _count_held(self, count: int, size: int) -> None:
        self.stats["logs_held"] += count
        self.stats["logs_held_bytes"] += size

    # ------------------------------------------------------------------ time-based decisions

    def due(self, now_ns: int) -> Batch | None:
        """The decisions that are due at ``now_ns`` (a batch to publish), or ``None``; changes nothing."""
        abandon_ns = int(self.abandon_after_s * 1e9)
        silent = tuple(
            (w, heard)
            for w, heard in self._workers.items()
            if now_ns - heard > abandon_ns and w not in self._local_workers
        )
        idle: list[tuple[str, int]] = []
        if self.idle_run_s > 0:
            idle_ns = int(self.idle_run_s * 1e9)
            for trace in self._activity:
                run = self._runs.get(trace)
                if run is None or run.status != A.STATUS_RUNNING:
                    continue
                if now_ns - run.heard_ns <= idle_ns:
                    break  # the rest were heard from more recently
                if not any(self._worker_alive(r, now_ns) for r in run.spans.values() if r.status == A.STATUS_RUNNING):
                    idle.append((trace, run.heard_ns))
        stalls = self._stalls_due(now_ns)
        if not silent and not idle and not stalls:
            if self._held and next(iter(self._held.values()))[0] < now_ns - self.hold_logs_s * 1e9:
                return Batch(at_ns=now_ns)  # held log records to let go
            return None
        return Batch(at_ns=now_ns, silent_workers=silent, idle_runs=tuple(idle), stalls=stalls)

    def _stalls_due(self, now_ns: int) -> tuple[tuple[str, str, int, Stall], ...]:
        """Running spans that the stall policy finds stalled now and that are not flagged yet. A span waiting on
        a running child is not the stuck one: only the deepest running spans are checked."""
        due: list[tuple[str, str, int, Stall]] = []
        check = self.stall.check
        for trace in self._activity:
            run = self._runs.get(trace)
            if run is None or not run.quiet:
                continue
            workflow = run.workflow
            spans = run.spans
            waiting = {s.parent_span_id for i in run.quiet if (s := spans.get(i)) is not None}
            for span_id, since in run.quiet.items():
                if span_id in run.stalled or span_id in waiting:
                    continue
                rec = run.spans.get(span_id)
                if rec is None or rec.status != A.STATUS_RUNNING:
                    continue
                why = check(rec, workflow, since, now_ns)
                if why is not None:
                    due.append((trace, span_id, since, why))
        return tuple(due)

    def _worker_alive(self, rec: SpanRecord, now_ns: int) -> bool:
        worker = rec.resource.get(A.WORKER_ID)
        if not isinstance(worker, str):
            return False
        heard = self._workers.get(worker)
        return worker in self._local_workers or (heard is not None and now_ns - heard <= self.abandon_after_s * 1e9)

    def _silent_worker(self, worker: str, heard: int, out: list[Change]) -> None:
        if self._workers.get(worker, -1) != heard:
            return  # heard from again since the decision was taken
        del self._workers[worker]
        touched: dict[str, RunState] = {}
        for trace, span_id in sorted(self._running_by_worker.pop(worker, set())):
            run = self._runs.get(trace)
            rec = run.spans.get(span_id) if run is not None else None
            if run is None or rec is None or rec.status != A.STATUS_RUNNING:
                continue
            self._abandon_span(run, rec, heard, worker, out)
            touched[trace] = run
        for run in touched.values():
            if run.status == A.STATUS_RUNNING and not any(s.status == A.STATUS_RUNNING for s in run.spans.values()):
                self._abandon_run(run, out)

    def _idle_run(self, trace: str, heard: int, out: list[Change]) -> None:
        run = self._runs.get(trace)
        if run is None or run.status != A.STATUS_RUNNING or run.heard_ns != heard:
            return  # ended, or heard from again since the decision was taken
        for rec in [r for r in run.spans.values() if r.status == A.STATUS_RUNNING]:
            self._abandon_span(run, rec, heard, None, out)
        self._abandon_run(run, out)

    def _abandon_span(self, run: RunState, rec: SpanRecord, heard: int, worker: str | None, out: list[Change]) -> None:
        run.quiet.pop(rec.span_id, None)
        abandoned = replace(rec, status=A.STATUS_ABANDONED, end_time_ns=max(rec.start_time_ns, heard))
        self._unstall(run, abandoned, out, STALL_ABANDONED, abandoned.end_time_ns or heard)
        run.spans[rec.span_id] = abandoned
        out.append(Change(SPAN_ABANDONED, run, abandoned, worker=worker))

    def _abandon_run(self, run: RunState, out: list[Change]) -> None:
        run.status = A.STATUS_ABANDONED
        run.end_ns = max((s.end_time_ns or s.start_time_ns for s in run.spans.values()), default=run.start_ns)
        out.append(Change(RUN_ENDED, run))
        self._run_ended(run)

    # ------------------------------------------------------------------ memory

    def _run_ended(self, run: RunState) -> None:
        self._activity.pop(run.trace_id, None)
        self._ended[run.trace_id] = None
        self._ended.move_to_end(run.trace_id)
        while self._ended and (len(self._ended) > self.max_ended_runs or self.live_nbytes > self.max_live_bytes):
            trace, _ = self._ended.popitem(last=False)
            old = self._runs.pop(trace, None)
            if old is not None:
                self.live_nbytes -= old.nbytes
                if old.alias and self._aliases.get(old.alias) == trace:
                    del self._aliases[old.alias]

    # ------------------------------------------------------------------ restore

    def restore(self, runs: Iterable[Mapping[str, Any]], spans: Iterable[SpanRecord], now_ns: int) -> None:
        """Load runs that were live when the viewer stopped; their workers get ``abandon_after_s`` to speak. The
        events of a running span are kept through its later snapshots (some may have come from log records)."""
        for summary in runs:
            trace = str(summary["trace_id"])
            run = RunState(
                trace_id=trace,
                alias=summary.get("otelflow_run_id"),
                name=str(summary.get("name") or ""),
                service=str(summary.get("service") or ""),
                start_ns=int(summary.get("start_time_ns") or 0),
                progress=summary.get("progress"),
                announced=True,
                heard_ns=now_ns,
            )
            self._runs[trace] = run
            self._activity[trace] = None
            if run.alias:
                self._aliases[run.alias] = trace
        for rec in spans:
            owner = self._runs.get(rec.trace_id)
            if owner is None:
                continue
            owner.spans[rec.span_id] = rec
            self._resize(owner, None, rec)
            if rec.parent_span_id is None:
                owner.root_span_id = rec.span_id
            if rec.status == A.STATUS_ERROR:
                owner.error_count += 1
            if rec.kind == A.KIND_AGENT:
                owner.agent_count += 1
            if rec.kind == A.KIND_LLM and rec.status in _ENDED:
                owner.add_llm_call(rec)
            worker = rec.resource.get(A.WORKER_ID)
            if rec.status == A.STATUS_RUNNING:
                owner.quiet[rec.span_id] = now_ns  # quiet from the restart on: what came before is unknown
                if rec.events:  # which came from log records is not stored: every one is kept as if it had
                    kept = owner.logs[rec.span_id] = JoinedLogs()
                    for event in rec.events:
                        kept.add(event)
            if rec.status == A.STATUS_RUNNING and isinstance(worker, str):
                self._workers.setdefault(worker, now_ns)
                self._running_by_worker.setdefault(worker, set()).add((rec.trace_id, rec.span_id))
