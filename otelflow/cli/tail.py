"""``otelflow tail``: follow runs live in the terminal over the viewer's SSE stream.

Three outputs over one follower: a rich live view on a terminal (span tree per run with status colours and
spinners, a progress bar per run, the latest lifecycle events below), plain lines when stdout is not a
terminal, and raw envelopes with ``--json``. What to follow: ``RUN`` (trace id or ``otelflow.run.id``; exits
when it ends), ``--all`` (every run), or by default the newest running run and every run that starts later.

Contracts:

- Resume: on a dropped stream the follower reconnects with jittered exponential backoff and sends
  ``Last-Event-ID``; when the viewer answers ``reset`` (a restarted viewer, or an id out of its replay ring) it
  refetches the runs over REST and reports only what changed meanwhile. Nothing is reported twice: a span is
  started, ended, and each of its events shown at most once.
- Snapshot-derived envelopes (the state found at start or after a ``reset``) have ``"id": null`` and
  ``"snapshot": true``; every other ``--json`` line is the viewer's envelope as it was sent.
- Span data is never interpreted as rich markup, and control characters are shown escaped, never emitted.
- Ctrl-C, and a reader that closes standard output (`| head`), exit with status 0. Only the standard library
  speaks HTTP; rich is needed for the terminal view.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import urlencode

from otelflow import attributes as A
from otelflow.cli.client import (
    ViewerError,
    ViewerRequestError,
    ViewerUnreachable,
    connect,
    get_json,
    headers,
    problem,
    run_path,
)

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.spinner import Spinner

__all__ = ["Backoff", "LiveView", "SseEvent", "Tail", "describe", "main"]

BACKOFF_FIRST_S: Final = 0.25
BACKOFF_MAX_S: Final = 5.0
READ_TIMEOUT_S: Final = 45.0  # the viewer sends a heartbeat comment at least every 15 s
RECENT_EVENTS: Final = 8
MAX_TREE_SPANS: Final = 80
KEEP_ENDED_RUNS: Final = 3
ENDED: Final = frozenset({"ok", "error", "abandoned"})

STATUS_STYLE: Final = {"running": "yellow", "ok": "green", "error": "bold red", "abandoned": "magenta"}
STATUS_GLYPH: Final = {"ok": "✓", "error": "✗", "abandoned": "⚠", "running": "•"}
SPINNER: Final = "dots"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value: Any, limit: int = 160) -> str:
    """``value`` as one printable line: whitespace controls become spaces, other controls ``\\xNN``."""
    text = value if isinstance(value, str) else str(value)

    def sub(m: re.Match[str]) -> str:
        ch = m.group()
        return " " if ch in "\n\r\t" else f"\\x{ord(ch):02x}"

    text = _CONTROL.sub(sub, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------
# SSE over http.client
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SseEvent:
    """One SSE event: ``raw`` is the ``data`` text as sent, ``data`` its JSON."""

    id: str | None
    type: str
    raw: str
    data: dict[str, Any]


class SseStream:
    """A ``GET`` of an event stream; iterate :meth:`events` until the viewer closes it."""

    def __init__(self, viewer: str, path: str, token: str | None, last_event_id: str | None) -> None:
        self.conn, prefix = connect(viewer, READ_TIMEOUT_S)
        extra = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id:
            extra["Last-Event-ID"] = last_event_id
        try:
            self.conn.request("GET", prefix + path, headers=headers(token, extra))
            self.response = self.conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            raise ViewerUnreachable(f"cannot reach the viewer at {viewer}: {exc or type(exc).__name__}") from None
        if self.response.status != 200:
            status = self.response.status
            self.conn.close()
            raise ViewerRequestError(problem(viewer, status, b""), status)
        self.retry_ms: int | None = None

    def events(self) -> Iterator[SseEvent]:
        event_id: str | None = None
        event_type = "message"
        data: list[str] = []
        while True:
            raw = self.response.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data:
                    text = "\n".join(data)
                    with contextlib.suppress(ValueError):
                        decoded = json.loads(text)
                        if isinstance(decoded, dict):
                            yield SseEvent(event_id, event_type, text, decoded)
                elif event_id:
                    # an id without data (a stream's first frame): where to resume from, nothing to show
                    yield SseEvent(event_id, "", "", {})
                event_id, event_type, data = None, "message", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            elif name == "event":
                event_type = value
            elif name == "id":
                event_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class Backoff:
    """Exponential backoff with jitter: ``first``·2ⁿ capped at ``cap``, each delay scaled by 0.5–1.0."""

    def __init__(self, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        jittered: float = delay * random.uniform(0.5, 1.0)
        return jittered

    def reset(self) -> None:
        self.attempt = 0


# --------------------------------------------------------------------------------------------------
# The follower: what is followed, what has been reported
# --------------------------------------------------------------------------------------------------


@dataclass
class RunView:
    """A followed run as reported so far."""

    trace_id: str
    summary: dict[str, Any] = field(default_factory=dict)
    spans: dict[str, dict[str, Any]] = field(default_factory=dict)
    events_seen: set[tuple[str, str, str]] = field(default_factory=set)
    ended: bool = False

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or "running")

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.trace_id[:8])


Envelope = dict[str, Any]
Fetch = Callable[[str], Any]


class Tail:
    """Turns envelopes and REST snapshots into reports, each state change at most once (see the module doc).

    ``run`` is a trace id or ``otelflow.run.id`` (follow only it), ``all_runs`` follows every run, otherwise the
    newest running run and every run starting after ``started_ns`` are followed. ``kinds`` limits spans.
    """

    def __init__(
        self,
        run: str | None = None,
        *,
        all_runs: bool = False,
        kinds: frozenset[str] | None = None,
        started_ns: int | None = None,
    ) -> None:
        self.run = run
        self.all_runs = all_runs
        self.kinds = kinds
        self.started_ns = started_ns if started_ns is not None else time.time_ns()
        self.runs: dict[str, RunView] = {}
        self.ignored: set[str] = set()
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
            if type_ in ("reset", "shutdown"):
                return [data]
            trace = data.get("run_id")
            if not isinstance(trace, str):
                return []
            summary = data.get("run") if isinstance(data.get("run"), dict) else None
            view = self._follows(trace, summary, new=type_ == "run.started")
            if view is None:
                return []
            return [data] if self._apply(view, type_, data) else []

    def _apply(self, view: RunView, type_: str, data: Envelope) -> bool:
        """Fold one envelope into ``view``; ``True`` if it reports something new."""
        if type_.startswith("run."):
            summary = data.get("run")
            if not isinstance(summary, dict):
                return False
            changed = summary != view.summary
            first = not view.summary
            view.summary = summary
            if type_ == "run.ended":
                if view.ended:
                    return False
                view.ended = True
                self._remember(summary.get("end_time"), f"{clean(view.name)}  run {clean(view.status)}")
                if self.run is not None:
                    self.done = True
                return True
            if type_ == "run.started":
                if not first:
                    return False
                self._remember(summary.get("start_time"), f"{clean(view.name)}  run started")
                return True
            return changed and not view.ended
        if type_ == "span.event":
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
        view.spans[span_id] = span
        if type_ == "span.started":
            return prev is None
        if type_ == "span.updated":
            return True
        if span.get("status") == "error" or type_ == "span.abandoned":
            err = span.get("error") or {}
            detail = f" {clean(err.get('type') or '')}: {clean(err.get('message') or '', 80)}" if err else ""
            self._remember(span.get("end_time"), f"{clean(span.get('name', ''), 40)}  {span.get('status')}{detail}")
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

            def emit(type_: str, body: dict[str, Any]) -> None:
                env: Envelope = {"id": None, "type": type_, "run_id": trace, **body, "snapshot": True}
                if self._apply(view, type_, env):
                    out.append(env)

            if not view.summary:
                emit("run.started", {"run": summary})
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
                if status == "running" and prev is None:
                    emit("span.started", {"span": span})
                for event in span.get("events") or ():
                    if isinstance(event, dict) and event.get("name") in A.LIFECYCLE_EVENTS:
                        key = (span_id, str(event.get("name")), str(event.get("time")))
                        if key not in view.events_seen:
                            emit(
                                "span.event",
                                {
                                    "trace_id": trace,
                                    "span_id": span_id,
                                    "span_name": span.get("name"),
                                    "span_kind": span.get("kind"),
                                    "event": event,
                                },
                            )
                if status != "running" and (prev is None or prev.get("status") not in ENDED):
                    emit("span.abandoned" if status == "abandoned" else "span.ended", {"span": span})
            if summary.get("status") in ENDED:
                emit("run.ended", {"run": summary})
            elif summary != view.summary and view.summary:
                emit("run.updated", {"run": summary})
            if detail.get("last_event_id") and self.last_id is None:
                self.last_id = str(detail["last_event_id"])
            return out


def clock(when: Any) -> str:
    """``HH:MM:SS.mmm`` local time of an ISO 8601 timestamp (now when missing)."""
    if isinstance(when, str) and when:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(when.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S.%f")[:-3]
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return clean(value, 20)


def describe_event(event: dict[str, Any]) -> str:
    """A lifecycle event in a few words: ``progress 50% Processing``, ``log warning: disk full``."""
    name = str(event.get("name") or "")
    a = event.get("attributes") or {}
    if not isinstance(a, dict):
        a = {}
    if name == A.EVENT_PROGRESS:
        if a.get(A.PROGRESS_PERCENT) is not None:
            amount = f"{_number(a[A.PROGRESS_PERCENT])}%"
        elif a.get(A.PROGRESS_TOTAL) is not None:
            amount = f"{_number(a.get(A.PROGRESS_COMPLETED, 0))}/{_number(a[A.PROGRESS_TOTAL])}"
        else:
            amount = ""
        return " ".join(p for p in ("progress", amount, clean(a.get(A.PROGRESS_MESSAGE) or "", 80)) if p)
    if name == A.EVENT_LOG:
        return f"log {clean(a.get(A.LOG_LEVEL, 'info'), 10)}: {clean(a.get(A.LOG_MESSAGE, ''), 100)}"
    if name == A.EVENT_DATA_FLOW:
        size = f" ({_number(a[A.DATA_FLOW_BYTES])} B)" if a.get(A.DATA_FLOW_BYTES) is not None else ""
        return f"data_flow {clean(a.get(A.DATA_FLOW_FROM, '?'), 40)} → {clean(a.get(A.DATA_FLOW_TO, '?'), 40)}{size}"
    if name == A.EVENT_RETRY:
        err = f" after {clean(a[A.RETRY_ERROR], 60)}" if a.get(A.RETRY_ERROR) else ""
        return f"retry #{_number(a.get(A.RETRY_ATTEMPT, '?'))}{err}"
    if name == A.EVENT_FALLBACK:
        to = f" to {clean(a[A.FALLBACK_TO], 40)}" if a.get(A.FALLBACK_TO) else ""
        err = f" after {clean(a[A.FALLBACK_ERROR], 60)}" if a.get(A.FALLBACK_ERROR) else ""
        return f"fallback{to}{err}"
    if name == A.EVENT_EXCEPTION:
        return f"exception {clean(a.get(A.EXCEPTION_TYPE, ''), 40)}: {clean(a.get(A.EXCEPTION_MESSAGE, ''), 80)}"
    return f"event {clean(name, 60)}"


def _duration(span: dict[str, Any]) -> str:
    ms = span.get("duration_ms")
    if not isinstance(ms, (int, float)):
        return ""
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def describe(env: Envelope) -> str | None:
    """One plain line for a reported envelope, or ``None`` for envelopes plain output leaves out."""
    type_ = str(env.get("type"))
    mark = "  (snapshot)" if env.get("snapshot") else ""
    if type_.startswith("run."):
        if type_ == "run.updated":
            return None
        run = env.get("run") or {}
        alias = f"  run {clean(run['otelflow_run_id'], 60)}" if run.get("otelflow_run_id") else ""
        when = run.get("end_time") if type_ == "run.ended" else run.get("start_time")
        tail = f"  {clean(run.get('status', ''), 20)}" if type_ == "run.ended" else ""
        dur = f" {_duration(run)}" if type_ == "run.ended" and _duration(run) else ""
        name = clean(run.get("name", ""), 80)
        return f"{clock(when)}  {type_:<14} {'':<8} {name}{alias}  trace {env.get('run_id')}{tail}{dur}{mark}"
    if type_ == "span.event":
        event = env.get("event") or {}
        kind = clean(env.get("span_kind") or "", 8)
        name = clean(env.get("span_name") or "", 80)
        return f"{clock(event.get('time'))}  {type_:<14} {kind:<8} {name}  {describe_event(event)}{mark}"
    span = env.get("span")
    if not isinstance(span, dict):
        return None
    kind = clean(span.get("kind") or "", 8)
    name = clean(span.get("name") or "", 80)
    if type_ == "span.started":
        return f"{clock(span.get('start_time'))}  {type_:<14} {kind:<8} {name}{mark}"
    status = clean(span.get("status") or "", 12)
    detail = ""
    err = span.get("error")
    if isinstance(err, dict):
        detail = f"  {clean(err.get('type') or '', 40)}: {clean(err.get('message') or '', 100)}"
    dur = f" {_duration(span)}" if _duration(span) else ""
    when = span.get("end_time") or None
    return f"{clock(when)}  {type_:<14} {kind:<8} {name}  {status}{dur}{detail}{mark}"


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


class OutputClosed(Exception):
    """Standard output was closed by its reader (``otelflow tail | head -1``): time to stop, quietly."""


class Output:
    """Where reports go; :meth:`status` says what the connection is doing."""

    def report(self, env: Envelope, raw: str | None) -> None:
        raise NotImplementedError

    def status(self, text: str) -> None:
        print(f"otelflow tail: {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield


class JsonOutput(Output):
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def report(self, env: Envelope, raw: str | None) -> None:
        line = raw if raw is not None else json.dumps(env, ensure_ascii=False, separators=(",", ":"))
        self.stream.write(line + "\n")
        self.stream.flush()


class PlainOutput(Output):
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def report(self, env: Envelope, raw: str | None) -> None:
        line = describe(env)
        if line is not None:
            self.stream.write(line + "\n")
            self.stream.flush()

    def status(self, text: str) -> None:
        super().status(text)


class LiveView:
    """The rich renderable of a :class:`Tail`: one block per shown run, then the latest events.

    Every piece of span data becomes a :class:`rich.text.Text`, never markup. Spinners are kept per span so that
    they animate across refreshes.
    """

    def __init__(self, tail: Tail) -> None:
        self.tail = tail
        self._spinners: dict[str, Spinner] = {}

    def _spinner(self, key: str, label: Any) -> Spinner:
        from rich.spinner import Spinner

        spinner = self._spinners.get(key)
        if spinner is None:
            spinner = self._spinners[key] = Spinner(SPINNER, style=STATUS_STYLE["running"])
        spinner.text = label
        return spinner

    def _mark(self, key: str, status: str, label: Any) -> Any:
        from rich.text import Text

        if status == "running":
            return self._spinner(key, label)
        self._spinners.pop(key, None)
        glyph = Text(STATUS_GLYPH.get(status, "?"), style=STATUS_STYLE.get(status, ""))
        return Text.assemble(glyph, " ", label)

    def _span_label(self, span: dict[str, Any]) -> Any:
        from rich.text import Text

        status = str(span.get("status") or "running")
        label = Text.assemble(
            (clean(span.get("name") or "", 80), "bold"),
            " ",
            (clean(span.get("kind") or "", 10), "dim"),
        )
        if status == "running":
            started = span.get("start_time")
            if isinstance(started, str):
                with contextlib.suppress(ValueError):
                    began = datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp()
                    label.append(f" {max(0.0, time.time() - began):.1f}s", "dim")
        else:
            label.append(f" {_duration(span)}" if _duration(span) else "", "dim")
            label.append(f" {status}", STATUS_STYLE.get(status, ""))
            err = span.get("error")
            if isinstance(err, dict) and (err.get("type") or err.get("message")):
                label.append(f"  {clean(err.get('type') or '', 40)}: {clean(err.get('message') or '', 80)}", "red")
        return self._mark(str(span.get("span_id")), status, label)

    def _progress(self, view: RunView) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        progress = view.summary.get("progress") if isinstance(view.summary.get("progress"), dict) else None
        spans = list(view.spans.values())
        done = sum(1 for s in spans if s.get("status") in ENDED)
        message = ""
        if progress is not None and isinstance(progress.get("percent"), (int, float)):
            percent = float(progress["percent"])
            message = clean(progress.get("message") or "", 80)
        elif progress is not None and isinstance(progress.get("total"), (int, float)) and progress["total"]:
            percent = 100.0 * float(progress.get("completed") or 0) / float(progress["total"])
            message = clean(progress.get("message") or "", 80)
        else:
            percent = 100.0 * done / len(spans) if spans else 0.0
            message = f"{done}/{len(spans)} spans done"
        if view.ended:
            percent = 100.0 if view.status == "ok" else percent
        style = STATUS_STYLE.get(view.status, "")
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            ProgressBar(total=100, completed=max(0.0, min(100.0, percent)), width=30, complete_style=style),
            Text(f"{percent:3.0f}%"),
            Text(message, style="dim"),
        )
        return grid

    def _run_tree(self, view: RunView) -> Any:
        from rich.console import Group
        from rich.text import Text
        from rich.tree import Tree

        label = Text.assemble((clean(view.name, 80), "bold"))
        alias = view.summary.get("otelflow_run_id")
        if alias:
            label.append(f"  {clean(alias, 60)}", "cyan")
        label.append(f"  {view.trace_id}", "dim")
        label.append(f"  {view.status}", STATUS_STYLE.get(view.status, ""))
        errors = view.summary.get("error_count")
        if errors:
            label.append(f"  {errors} error{'s' if errors != 1 else ''}", "red")
        head = self._mark(f"run:{view.trace_id}", view.status, label)
        tree = Tree(Group(head, self._progress(view)), guide_style="dim")
        spans = sorted(view.spans.values(), key=lambda s: (str(s.get("start_time")), str(s.get("span_id"))))
        nodes: dict[str, Tree] = {}
        children: dict[str, list[dict[str, Any]]] = {}
        ids = {str(s.get("span_id")) for s in spans}
        roots: list[dict[str, Any]] = []
        for s in spans:
            parent = s.get("parent_span_id")
            if isinstance(parent, str) and parent in ids and parent != s.get("span_id"):
                children.setdefault(parent, []).append(s)
            else:
                roots.append(s)
        shown = 0

        def add(into: Tree, span: dict[str, Any]) -> None:
            nonlocal shown
            if shown >= MAX_TREE_SPANS:
                return
            shown += 1
            node = nodes[str(span.get("span_id"))] = into.add(self._span_label(span))
            for child in children.get(str(span.get("span_id")), ()):
                add(node, child)

        for root in roots:
            add(tree, root)
        if len(spans) > shown:
            tree.add(Text(f"… {len(spans) - shown} more spans", style="dim"))
        return tree

    def renderables(self) -> list[Any]:
        from rich.text import Text

        with self.tail.lock:
            views = sorted(self.tail.runs.values(), key=lambda v: int(v.summary.get("start_time_ns") or 0))
            ended = [v for v in views if v.ended]
            keep = {id(v) for v in ended[-KEEP_ENDED_RUNS:]}
            shown = [v for v in views if not v.ended or id(v) in keep]
            out: list[Any] = [self._run_tree(v) for v in shown]
            if not shown:
                out.append(Text("waiting for a run to start…", style="dim"))
            if self.tail.recent:
                out.append(Text("latest events", style="bold dim"))
                for when, line in self.tail.recent:
                    out.append(Text.assemble((when, "dim"), "  ", line))
            if self.tail.status_line:
                out.append(Text(self.tail.status_line, style="dim italic"))
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.renderables()


class RichOutput(Output):
    """The in-place terminal view (rich ``Live``)."""

    def __init__(self, tail: Tail, console: Console | None = None) -> None:
        from rich.console import Console

        self.tail = tail
        self.console = console or Console()
        self.view = LiveView(tail)

    def report(self, env: Envelope, raw: str | None) -> None:
        pass  # the view renders the tail's state on each refresh

    def status(self, text: str) -> None:
        with self.tail.lock:
            self.tail.status_line = text

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from rich.live import Live

        with Live(self.view, console=self.console, refresh_per_second=8, redirect_stderr=False):
            yield


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


class Follower:
    """Connects, resumes and reconnects; hands every report to an :class:`Output`."""

    def __init__(self, args: argparse.Namespace, tail: Tail, output: Output) -> None:
        self.viewer: str = args.viewer
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
        if initial and not tail.all_runs and running:
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
                    if ev.type == "reset" or ev.data.get("type") == "reset":
                        self.output.status(f"resuming from a snapshot ({clean(ev.data.get('reason', 'reset'))})")
                        self.snapshot(initial=False)
                    elif ev.type == "shutdown":
                        reason = "the viewer is shutting down"
                    if self._done():
                        return
            except ViewerRequestError as exc:
                if exc.status in (400, 401, 403):
                    raise
                reason = str(exc)
            except ViewerUnreachable as exc:
                reason = str(exc)
            except (OSError, http.client.HTTPException) as exc:
                reason = f"connection lost ({exc or type(exc).__name__})"
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
    return PlainOutput(sys.stdout)


def main(args: argparse.Namespace) -> int:
    """Run ``otelflow tail``; 0 on Ctrl-C, when RUN ended, or when standard output is closed by its reader
    (``| head``); 2 when the viewer refuses us."""
    kinds = frozenset(k.strip() for item in args.kind or () for k in item.split(",") if k.strip()) or None
    tail = Tail(args.run, all_runs=args.all, kinds=kinds)
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
