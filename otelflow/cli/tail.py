"""``otelflow tail``: follow runs live in the terminal over the viewer's SSE stream.

Three outputs (:mod:`otelflow.cli.tail_view`) over one follower, which reads the stream through
:mod:`otelflow.cli.stream`: a rich live view on a terminal (span tree per run with status colours and
spinners, a progress bar per run, the latest lifecycle events below), plain lines when stdout is not a
terminal, and raw envelopes with ``--json``. What to follow: ``RUN`` (trace id or ``otelflow.run.id``; exits
when it ends), ``--all`` (every run), or by default the newest running run and every run that starts later.
``--running`` narrows any of these to what runs now: every running run (or RUN while it runs) and, in it,
only running spans, stalled ones first; nothing about ended spans or runs is reported, they drop out.

Stalled spans (``span.stalled``, and the run detail's ``stalled`` map in snapshots) are reported once per stall,
``span.unstalled`` once when it clears; ``alert.fired``/``alert.resolved`` once per alert, for followed runs
(alerts about no run in particular, such as an error rate, only when not following one run or ``--running``).

Contracts:

- Resume: on a dropped stream the follower reconnects with jittered exponential backoff and sends
  ``Last-Event-ID``; when the viewer answers ``reset`` (a restarted viewer, or an id out of its replay ring) it
  refetches the runs over REST and reports only what changed meanwhile. Nothing is reported twice: a span is
  started, ended, and each of its events shown at most once.
- Snapshot-derived envelopes (the state found at start or after a ``reset``) have ``"id": null`` and
  ``"snapshot": true``; every other ``--json`` line is the viewer's envelope as it was sent. Snapshots report
  stalls found in the run detail (``span.stalled``) and stalls that cleared meanwhile (``span.unstalled``).
- Span data is never interpreted as rich markup, and control characters are shown escaped, never emitted.
- Ctrl-C, and a reader that closes standard output (`| head`), exit with status 0. Only the standard library
  speaks HTTP; rich is needed for the terminal view.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

from otelflow import attributes as A
from otelflow.cli.client import ViewerError, ViewerRequestError, ViewerUnreachable, get_json, run_path, viewers
from otelflow.cli.stream import Backoff, SseEvent, SseStream
from otelflow.cli.tail_view import (
    ALERT_TYPES,
    ENDED,
    RUN_TYPES,
    Envelope,
    JsonOutput,
    Output,
    OutputClosed,
    PlainOutput,
    RichOutput,
    clean,
    clock,
    describe_event,
    describe_stall,
    flagged_at,
    stalled_for,
)
from otelflow.wire import (
    ALERT_FIRED,
    RESET,
    RUN_ENDED,
    RUN_STARTED,
    RUN_UPDATED,
    SHUTDOWN,
    SPAN_ABANDONED,
    SPAN_ENDED,
    SPAN_EVENT,
    SPAN_STALLED,
    SPAN_STARTED,
    SPAN_UNSTALLED,
    SPAN_UPDATED,
    STALLED,
)

__all__ = ["RunView", "Tail", "main"]

RECENT_EVENTS: Final = 8
_GONE: Final = (SPAN_ENDED, SPAN_ABANDONED, RUN_ENDED)  # what --running leaves out


@dataclass
class RunView:
    """A followed run as reported so far."""

    trace_id: str
    summary: dict[str, Any] = field(default_factory=dict)
    spans: dict[str, dict[str, Any]] = field(default_factory=dict)
    events_seen: set[tuple[str, str, str]] = field(default_factory=set)
    stalled: dict[str, dict[str, Any]] = field(default_factory=dict)  # span id -> the stalled object
    ended: bool = False

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or A.STATUS_RUNNING)

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.trace_id[:8])


class Tail:
    """Turns envelopes and REST snapshots into reports, each state change at most once (see the module doc).

    ``run`` is a trace id or ``otelflow.run.id`` (follow only it), ``all_runs`` follows every run, otherwise the
    newest running run and every run starting after ``started_ns`` are followed. ``kinds`` limits spans.
    ``running`` follows every running run (or ``run`` while it runs) and reports only running work: a run or
    span that ended is forgotten, and its ``span.ended``/``span.abandoned``/``run.ended`` is not reported.
    """

    def __init__(
        self,
        run: str | None = None,
        *,
        all_runs: bool = False,
        kinds: frozenset[str] | None = None,
        started_ns: int | None = None,
        running: bool = False,
    ) -> None:
        self.run = run
        self.all_runs = all_runs
        self.running = running
        self.kinds = kinds
        self.started_ns = started_ns if started_ns is not None else time.time_ns()
        self.runs: dict[str, RunView] = {}
        self.ignored: set[str] = set()
        self.alerts_seen: set[tuple[str, str]] = set()  # (alert id, event type)
        self.last_id: str | None = None
        self.recent: deque[tuple[str, str]] = deque(maxlen=RECENT_EVENTS)  # (time, line)
        self.done = False
        self.status_line = ""
        self.lock = threading.RLock()

    # ------------------------------------------------------------------ following

    def _follows(self, trace: str, summary: dict[str, Any] | None, *, new: bool) -> RunView | None:
        view = self.runs.get(trace)
        if view is not None:
            return view
        if trace in self.ignored and not new:
            return None
        if self.running and self.run is None:
            if summary is None:
                return None  # not known to be running (yet)
            if summary.get("status") != A.STATUS_RUNNING:
                self.ignored.add(trace)
                return None
            self.ignored.discard(trace)
            view = self.runs[trace] = RunView(trace)
            return view
        start_ns = int((summary or {}).get("start_time_ns") or 0)
        if self.run is not None or self.all_runs or new or (start_ns and start_ns >= self.started_ns):
            self.ignored.discard(trace)
            view = self.runs[trace] = RunView(trace)
            return view
        self.ignored.add(trace)
        return None

    def follow(self, trace: str) -> None:
        """Follow this run from now on (the newest running run at start)."""
        with self.lock:
            self.ignored.discard(trace)
            self.runs.setdefault(trace, RunView(trace))

    def run_label(self, trace: str) -> str | None:
        """``run <otelflow.run.id>`` of a known run that has one, else ``trace <trace id>``."""
        with self.lock:
            view = self.runs.get(trace)
            alias = view.summary.get("otelflow_run_id") if view is not None else None
        return f"run {clean(alias, 60)}" if alias else f"trace {clean(trace, 40)}"

    def _kind_ok(self, span: dict[str, Any]) -> bool:
        return self.kinds is None or span.get("kind") in self.kinds

    # ------------------------------------------------------------------ stream events

    def on_event(self, ev: SseEvent) -> list[Envelope]:
        """The envelopes to report for one stream event (empty when it repeats what was reported)."""
        with self.lock:
            if ev.id:
                self.last_id = ev.id
            data = ev.data
            type_ = str(data.get("type") or ev.type)
            if type_ in (RESET, SHUTDOWN):
                return [data]
            if type_ in ALERT_TYPES:
                return [data] if self._alert(type_, data) else []
            trace = data.get("run_id")
            if not isinstance(trace, str):
                return []
            summary = data.get("run") if isinstance(data.get("run"), dict) else None
            view = self._follows(trace, summary, new=type_ == RUN_STARTED)
            if view is None:
                return []
            return [data] if self._apply(view, type_, data) and self._shown(view, type_, data) else []

    def _shown(self, view: RunView, type_: str, data: Envelope) -> bool:
        """Whether a new report is about running work (always, without ``--running``)."""
        if not self.running:
            return True
        if type_ in _GONE or view.ended or view.status != A.STATUS_RUNNING:
            return False  # includes what a run that arrived already ended reports
        if type_ in (SPAN_STARTED, SPAN_UPDATED, SPAN_EVENT):
            span = view.spans.get(str(data.get("span_id") or "")) if type_ == SPAN_EVENT else data.get("span")
            return span is None or span.get("status") == A.STATUS_RUNNING
        return True

    def _alert(self, type_: str, data: Envelope) -> bool:
        """Whether an ``alert.*`` envelope is new and about something followed (see the module doc)."""
        alert = data.get("alert")
        if not isinstance(alert, dict):
            return False
        trace = data.get("run_id") or alert.get("run_id")
        if isinstance(trace, str) and trace:
            view = self.runs.get(trace)
            if view is None or (self.running and view.ended):
                return False
        elif self.running or self.run is not None:
            return False  # about no run: not about the run followed, nor about running work
        if self.kinds is not None and alert.get("kind") and alert.get("kind") not in self.kinds:
            return False
        key = (str(alert.get("id")), type_)
        if key in self.alerts_seen:
            return False
        self.alerts_seen.add(key)
        when = alert.get("fired_at") if type_ == ALERT_FIRED else alert.get("resolved_at")
        verb = "alert" if type_ == ALERT_FIRED else "alert resolved"
        self._remember(when, f"{verb} {clean(alert.get('rule') or '', 40)}: {clean(alert.get('message') or '', 80)}")
        return True

    def _apply(self, view: RunView, type_: str, data: Envelope) -> bool:
        """Fold one envelope into ``view``; ``True`` if it reports something new."""
        if type_ in RUN_TYPES:
            summary = data.get("run")
            if not isinstance(summary, dict):
                return False
            changed = summary != view.summary
            first = not view.summary
            view.summary = summary
            if type_ == RUN_ENDED:
                if view.ended:
                    return False
                view.ended = True
                view.stalled.clear()
                if self.running:
                    # it drops out: forget it (its late events are ignored, as are runs that ended unseen)
                    self.runs.pop(view.trace_id, None)
                    self.ignored.add(view.trace_id)
                else:
                    self._remember(summary.get("end_time"), f"{clean(view.name)}  run {clean(view.status)}")
                if self.run is not None:
                    self.done = True
                return True
            if type_ == RUN_STARTED:
                if not first:
                    return False
                self._remember(summary.get("start_time"), f"{clean(view.name)}  run started")
                return True
            return changed and not view.ended
        if type_ == SPAN_EVENT:
            event = data.get("event")
            span_id = str(data.get("span_id") or "")
            if not isinstance(event, dict) or (self.kinds is not None and data.get("span_kind") not in self.kinds):
                return False
            key = (span_id, str(event.get("name")), str(event.get("time")))
            if key in view.events_seen:
                return False
            view.events_seen.add(key)
            self._remember(event.get("time"), f"{clean(data.get('span_name', ''), 40)}  {describe_event(event)}")
            return True
        span = data.get("span")
        if not isinstance(span, dict) or not self._kind_ok(span):
            return False
        span_id = str(span.get("span_id"))
        prev = view.spans.get(span_id)
        if prev is not None and prev.get("status") in ENDED:
            return False  # ended spans are final
        if type_ in (SPAN_STALLED, SPAN_UNSTALLED):
            return self._stall(view, type_, span, data.get(STALLED))
        view.spans[span_id] = span
        if span.get("status") in ENDED:
            view.stalled.pop(span_id, None)  # the viewer says span.unstalled first; a snapshot may not
        if type_ == SPAN_STARTED:
            return prev is None
        if type_ == SPAN_UPDATED:
            return True
        if not self.running and (span.get("status") in (A.STATUS_ERROR, A.STATUS_CANCELLED) or type_ == SPAN_ABANDONED):
            err = span.get("error") or {}
            detail = f" {clean(err.get('type') or '')}: {clean(err.get('message') or '', 80)}" if err else ""
            self._remember(span.get("end_time"), f"{clean(span.get('name', ''), 40)}  {span.get('status')}{detail}")
        return True

    def _stall(self, view: RunView, type_: str, span: dict[str, Any], stalled: Any) -> bool:
        """Fold a ``span.stalled``/``span.unstalled`` into ``view``: a stall is reported once (by when the span
        went quiet), and its clearing once."""
        span_id = str(span.get("span_id"))
        name = clean(span.get("name", ""), 40)
        if type_ == SPAN_UNSTALLED:
            if view.stalled.pop(span_id, None) is None:
                return False
            self._remember(None, f"{name}  unstalled")
            return True
        if not isinstance(stalled, dict) or span.get("status") != A.STATUS_RUNNING:
            return False
        known = view.stalled.get(span_id)
        if known is not None and all(known.get(k) == stalled.get(k) for k in ("since", "reason")):
            return False
        view.stalled[span_id] = stalled
        view.spans[span_id] = span
        self._remember(flagged_at(stalled, span), f"{name}  {describe_stall(stalled, stalled_for(stalled, span))}")
        return True

    def _remember(self, when: Any, line: str) -> None:
        self.recent.append((clock(when), line))

    # ------------------------------------------------------------------ snapshots

    def on_snapshot(self, detail: dict[str, Any]) -> list[Envelope]:
        """Reports for what a REST run detail (``GET /api/runs/{run}``) shows that was not reported yet."""
        with self.lock:
            summary = detail.get("run")
            if not isinstance(summary, dict):
                return []
            trace = str(summary.get("trace_id") or summary.get("run_id"))
            view = self._follows(trace, summary, new=False)
            if view is None:
                return []
            out: list[Envelope] = []

            def emit(type_: str, body: dict[str, Any], show: bool = True) -> None:
                env: Envelope = {"id": None, "type": type_, "run_id": trace, **body, "snapshot": True}
                if self._apply(view, type_, env) and show and self._shown(view, type_, env):
                    out.append(env)

            found = detail.get(STALLED)
            stalls: dict[str, Any] = found if isinstance(found, dict) else {}
            if not view.summary:
                emit(RUN_STARTED, {"run": summary})
            spans = sorted(
                (s for s in detail.get("spans") or () if isinstance(s, dict)),
                key=lambda s: (str(s.get("start_time")), str(s.get("span_id"))),
            )
            for span in spans:
                if not self._kind_ok(span):
                    continue
                span_id = str(span.get("span_id"))
                prev = view.spans.get(span_id)
                status = span.get("status")
                running = status == A.STATUS_RUNNING
                if running and prev is None:
                    emit(SPAN_STARTED, {"span": span})
                for event in span.get("events") or ():
                    if isinstance(event, dict) and event.get("name") in A.LIFECYCLE_EVENTS:
                        key = (span_id, str(event.get("name")), str(event.get("time")))
                        if key not in view.events_seen:
                            emit(
                                SPAN_EVENT,
                                {
                                    "trace_id": trace,
                                    "span_id": span_id,
                                    "span_name": span.get("name"),
                                    "span_kind": span.get("kind"),
                                    "event": event,
                                },
                                show=running,
                            )
                stall = stalls.get(span_id) if running else None
                if isinstance(stall, dict):
                    emit(SPAN_STALLED, {"span": span, STALLED: stall})
                elif span_id in view.stalled:
                    emit(SPAN_UNSTALLED, {"span": span})
                if not running and (prev is None or prev.get("status") not in ENDED):
                    emit(SPAN_ABANDONED if status == A.STATUS_ABANDONED else SPAN_ENDED, {"span": span})
            if summary.get("status") in ENDED:
                emit(RUN_ENDED, {"run": summary})
            elif summary != view.summary and view.summary:
                emit(RUN_UPDATED, {"run": summary})
            if detail.get("last_event_id") and self.last_id is None:
                self.last_id = str(detail["last_event_id"])
            return sorted(out, key=_when)  # in the order things happened, as a stream would have told them


def _when(env: Envelope) -> str:
    """When what a snapshot report tells happened (ISO 8601 UTC, which sorts as text); unknown last."""
    type_ = env.get("type")
    thing = env.get("run") if type_ in (RUN_STARTED, RUN_ENDED, RUN_UPDATED) else env.get("span")
    if type_ == SPAN_EVENT:
        thing, key = env.get("event"), "time"
    elif type_ in (RUN_STARTED, SPAN_STARTED, SPAN_STALLED):
        key = "start_time"
    else:
        key = "end_time"
    when = thing.get(key) if isinstance(thing, dict) else None
    return when if isinstance(when, str) and when else "\uffff"


class Follower:
    """Connects, resumes and reconnects; hands every report to an :class:`Output`."""

    def __init__(self, args: argparse.Namespace, tail: Tail, output: Output) -> None:
        self.viewers = viewers(args.viewer)  # replicas: the next one is tried when this one cannot be reached
        self.viewer = self.viewers[0]
        self.token: str | None = args.token
        self.tail = tail
        self.output = output
        self.backoff = Backoff()
        self.initialized = False
        kinds = sorted(tail.kinds) if tail.kinds else []
        query = urlencode([("kind", k) for k in kinds])
        base = run_path(tail.run, "/stream") if tail.run else "/api/stream"
        self.path = f"{base}?{query}" if query else base

    def _fetch(self, path: str) -> Any:
        return get_json(self.viewer, path, self.token)

    def _report(self, envs: list[Envelope], raw: str | None = None) -> None:
        """Hand ``envs`` to the output; raises :class:`OutputClosed` when its reader went away (a broken pipe
        is an :class:`OSError`, and must not pass for a lost connection to the viewer)."""
        try:
            for env in envs:
                self.output.report(env, raw if env.get("id") is not None else None)
        except BrokenPipeError:
            raise OutputClosed from None

    def snapshot(self, initial: bool) -> None:
        """Fetch the followed runs over REST and report what was missed."""
        tail = self.tail
        if tail.run is not None:
            try:
                detail = self._fetch(run_path(tail.run))
            except ViewerRequestError as exc:
                if exc.status != 404:
                    raise
                if initial:
                    self.output.status(f"no run {tail.run!r} yet; waiting for it to start (Ctrl-C to stop)")
                return
            self._report(tail.on_snapshot(detail))
            return
        if initial:
            health = self._fetch("/healthz")
            tail.last_id = str(health.get("last_event_id")) if health.get("last_event_id") else None
        listing = self._fetch("/api/runs?status=running&limit=500")
        running = [r for r in listing.get("runs") or () if isinstance(r, dict)]
        if initial and not tail.all_runs and not tail.running and running:
            tail.follow(str(running[0]["trace_id"]))
        traces = [str(r["trace_id"]) for r in running]
        with tail.lock:
            known = [t for t, v in tail.runs.items() if not v.ended and t not in traces]
        for trace in [*traces, *known]:
            try:
                detail = self._fetch(run_path(trace))
            except ViewerRequestError as exc:
                if exc.status == 404:
                    continue
                raise
            self._report(tail.on_snapshot(detail))

    def _done(self) -> bool:
        return self.tail.done

    def _next_viewer(self) -> None:
        """With replicas, reconnect to the next one (it resumes from the same event id)."""
        self.viewer = self.viewers[(self.viewers.index(self.viewer) + 1) % len(self.viewers)]

    def run(self) -> None:
        while not self._done():
            stream: SseStream | None = None
            try:
                if not self.initialized:
                    self.snapshot(initial=True)
                    self.initialized = True
                    if self._done():
                        return
                stream = SseStream(self.viewer, self.path, self.token, self.tail.last_id)
                self.output.status(f"following {self.viewer}")
                reason = "the viewer closed the stream"
                for ev in stream.events():
                    self.backoff.reset()
                    envs = self.tail.on_event(ev)
                    self._report(envs, ev.raw)
                    if RESET in (ev.type, ev.data.get("type")):
                        self.output.status(f"resuming from a snapshot ({clean(ev.data.get('reason', RESET))})")
                        self.snapshot(initial=False)
                    elif ev.type == SHUTDOWN:
                        reason = "the viewer is shutting down"
                    if self._done():
                        return
            except ViewerRequestError as exc:
                if exc.status in (400, 401, 403):
                    raise
                reason = str(exc)
            except ViewerUnreachable as exc:
                reason = str(exc)
                self._next_viewer()
            except (OSError, http.client.HTTPException) as exc:
                reason = f"connection lost ({exc or type(exc).__name__})"
                self._next_viewer()
            finally:
                if stream is not None:
                    stream.close()
            delay = self.backoff.next()
            self.output.status(f"{reason}; reconnecting in {delay:.1f}s")
            time.sleep(delay)


def _output(args: argparse.Namespace, tail: Tail) -> Output:
    if args.json:
        return JsonOutput(sys.stdout)
    if sys.stdout.isatty() and os.environ.get("TERM") != "dumb":
        return RichOutput(tail)
    return PlainOutput(sys.stdout, tail.run_label)


def main(args: argparse.Namespace) -> int:
    """Run ``otelflow tail``; 0 on Ctrl-C, when RUN ended, or when standard output is closed by its reader
    (``| head``); 2 when the viewer refuses us."""
    kinds = frozenset(k.strip() for item in args.kind or () for k in item.split(",") if k.strip()) or None
    tail = Tail(args.run, all_runs=args.all, kinds=kinds, running=args.running)
    try:
        output = _output(args, tail)
    except ImportError as exc:
        print(f'otelflow tail: the terminal view needs rich ({exc}); pip install "otelflow[cli]"', file=sys.stderr)
        return 2
    follower = Follower(args, tail, output)
    try:
        with output.active():
            follower.run()
    except KeyboardInterrupt:
        return 0
    except ViewerError as exc:
        print(f"otelflow tail: {exc}", file=sys.stderr)
        return 2
    except (OutputClosed, BrokenPipeError):
        # the reader went away (| head): exit quietly, as cat does, and keep Python's flush of what is still
        # buffered at exit from failing on the closed pipe ("Exception ignored ... BrokenPipeError")
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 0
