"""What ``otelflow tail`` shows: span data as safe one-line text, plain lines, raw JSON, and the rich live view.

Stalled spans (``span.stalled``) are marked amber in the live view, with how long they have been quiet (or
running, when slow) counting up; with ``--running`` the live view shows only running spans of running runs,
the stalled ones first.

Span data is never interpreted as rich markup (every piece becomes a :class:`rich.text.Text`), and control
characters are shown escaped, never emitted. rich is imported only by the live view, which needs it.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Final

from otelflow import attributes as A
from otelflow.wire import (
    ALERT_FIRED,
    ALERT_RESOLVED,
    RUN_ENDED,
    RUN_STARTED,
    RUN_UPDATED,
    SPAN_EVENT,
    SPAN_STALLED,
    SPAN_STARTED,
    SPAN_UNSTALLED,
    STALLED,
)

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.spinner import Spinner

    from otelflow.cli.tail import RunView, Tail

__all__ = [
    "ALERT_TYPES",
    "ENDED",
    "RUN_TYPES",
    "STALLED_STYLE",
    "STATUS_GLYPH",
    "Envelope",
    "JsonOutput",
    "LiveView",
    "Output",
    "OutputClosed",
    "PlainOutput",
    "RichOutput",
    "clean",
    "clock",
    "describe",
    "describe_event",
    "describe_stall",
    "flagged_at",
    "seconds_text",
    "stalled_for",
]

MAX_TREE_SPANS: Final = 80
KEEP_ENDED_RUNS: Final = 3
ENDED: Final = frozenset({A.STATUS_OK, A.STATUS_ERROR, A.STATUS_ABANDONED, A.STATUS_CANCELLED})
RUN_TYPES: Final = (RUN_STARTED, RUN_UPDATED, RUN_ENDED)
ALERT_TYPES: Final = (ALERT_FIRED, ALERT_RESOLVED)

STATUS_STYLE: Final = {
    A.STATUS_RUNNING: "yellow",
    A.STATUS_OK: "green",
    A.STATUS_ERROR: "bold red",
    A.STATUS_ABANDONED: "magenta",
    A.STATUS_CANCELLED: "bright_black",  # neutral: stopped on purpose, not failed
}
STATUS_GLYPH: Final = {
    A.STATUS_OK: "✓",
    A.STATUS_ERROR: "✗",
    A.STATUS_ABANDONED: "⚠",
    A.STATUS_CANCELLED: "⊘",
    A.STATUS_RUNNING: "•",
}
STALLED_STYLE: Final = "orange1"  # amber: running, but stuck
STALLED_GLYPH: Final = "‖"
SLOW: Final = "slow"  # the stalled object's ``reason`` when running far past its p95 (else ``quiet``)
SPINNER: Final = "dots"

Envelope = dict[str, Any]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value: Any, limit: int = 160) -> str:
    """``value`` as one printable line: whitespace controls become spaces, other controls ``\\xNN``."""
    text = value if isinstance(value, str) else str(value)

    def sub(m: re.Match[str]) -> str:
        ch = m.group()
        return " " if ch in "\n\r\t" else f"\\x{ord(ch):02x}"

    text = _CONTROL.sub(sub, text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _epoch(when: Any) -> float | None:
    """Seconds since the epoch of an ISO 8601 timestamp, ``None`` when it is not one."""
    if isinstance(when, str) and when:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    return None


def clock(when: Any) -> str:
    """``HH:MM:SS.mmm`` local time of an ISO 8601 timestamp (now when missing)."""
    at = when if isinstance(when, (int, float)) else _epoch(when)
    moment = datetime.fromtimestamp(at) if at is not None else datetime.now()
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return clean(value, 20)


def _percent(value: Any) -> str:
    """``33%`` for 33.333333333333336 (a whole percent; under 1, one decimal)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.1f}%" if 0 < abs(value) < 1 else f"{value:.0f}%"
    return f"{clean(value, 20)}%"


def describe_event(event: dict[str, Any]) -> str:
    """A lifecycle event in a few words: ``progress 50% Processing``, ``log warning: disk full``."""
    name = str(event.get("name") or "")
    a = event.get("attributes") or {}
    if not isinstance(a, dict):
        a = {}
    if name == A.EVENT_PROGRESS:
        if a.get(A.PROGRESS_PERCENT) is not None:
            amount = _percent(a[A.PROGRESS_PERCENT])
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


def seconds_text(seconds: float) -> str:
    """A span of time for people: ``0.5 s``, ``12 s``, ``1 m 12 s``, ``2 h 05 m``."""
    if seconds < 1:
        return f"{max(0.0, seconds):.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} m"


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def stalled_for(stalled: dict[str, Any], span: dict[str, Any], now: float | None = None) -> float:
    """How long a stalled span has been quiet (``reason`` quiet: since ``since``) or running (slow: since it
    started), at ``now`` (seconds since the epoch); without ``now``, at the moment it was flagged."""
    if now is None:
        return _float(stalled.get("seconds")) or 0.0
    start = _epoch(span.get("start_time")) if stalled.get("reason") == SLOW else None
    base = start if start is not None else _epoch(stalled.get("since"))
    return max(0.0, now - base) if base is not None else _float(stalled.get("seconds")) or 0.0


def flagged_at(stalled: dict[str, Any], span: dict[str, Any]) -> float | None:
    """When the viewer flagged the span stalled (seconds since the epoch), ``None`` when unknown."""
    base = _epoch(span.get("start_time")) if stalled.get("reason") == SLOW else _epoch(stalled.get("since"))
    seconds = _float(stalled.get("seconds"))
    return base + seconds if base is not None and seconds is not None else None


def describe_stall(stalled: dict[str, Any], seconds: float) -> str:
    """``stalled: quiet for 1 m 12 s`` or ``slow: running for 3 m 2 s, over 40 s (p95 13 s)``."""
    if stalled.get("reason") == SLOW:
        limit = _float(stalled.get("limit_s"))
        p95 = _float(stalled.get("p95_ms"))
        over = f", over {seconds_text(limit)}" if limit is not None else ""
        usual = f" (p95 {seconds_text(p95 / 1000)})" if p95 is not None else ""
        return f"slow: running for {seconds_text(seconds)}{over}{usual}"
    return f"stalled: quiet for {seconds_text(seconds)}"


def _describe_alert(type_: str, env: Envelope, mark: str) -> str | None:
    alert = env.get("alert")
    if not isinstance(alert, dict):
        return None
    fired = type_ == ALERT_FIRED
    when = alert.get("fired_at") if fired else alert.get("resolved_at")
    kind = clean(alert.get("kind") or "", 8)
    about = alert.get("otelflow_run_id") or alert.get("run_id") or env.get("run_id")
    run = f"  run {clean(about, 60)}" if about else ""
    why = f"  ({clean(alert['resolution'], 60)})" if not fired and alert.get("resolution") else ""
    text = f"{clean(alert.get('rule') or '', 60)}: {clean(alert.get('message') or '', 160)}"
    return f"{clock(when)}  {type_:<14} {kind:<8} {text}{run}{why}{mark}"


def _duration(span: dict[str, Any]) -> str:
    ms = span.get("duration_ms")
    if not isinstance(ms, (int, float)):
        return ""
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def _count(value: Any) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "?"


def cost_text(cost: Any) -> str:
    """``~$0.0002``: an estimated cost in USD (``~`` marks it an estimate), up to six decimals."""
    if not isinstance(cost, (int, float)) or isinstance(cost, bool) or not math.isfinite(cost):
        return ""
    return "~$" + (f"{cost:.6f}".rstrip("0").rstrip(".") or "0")


def describe_llm(span: dict[str, Any], partial: bool = False) -> str:
    """A model call in one line of plain text: ``gpt-4o-mini  812→95 tokens  ~$0.0002`` (what is known of it);
    ``partial``: with the end of the answer so far while it streams. Empty for other spans."""
    llm = span.get("llm")
    if not isinstance(llm, dict):
        return ""
    parts = [clean(llm.get("model") or llm.get("request_model") or "?", 60)]
    if llm.get("input_tokens") is not None or llm.get("output_tokens") is not None:
        parts.append(f"{_count(llm.get('input_tokens'))}→{_count(llm.get('output_tokens'))} tokens")
    cost = cost_text(llm.get("cost_usd"))
    if cost:
        parts.append(cost)
    ttft = llm.get("time_to_first_token_ms")
    if isinstance(ttft, (int, float)) and not isinstance(ttft, bool):
        parts.append(f"first token {ttft:.0f}ms")
    so_far = llm.get("partial_output")
    if partial and isinstance(so_far, str) and so_far:
        parts.append(f"“…{clean(so_far[-60:], 60)}”")
    return "  ".join(parts)


def describe(env: Envelope, run_label: str | None = None) -> str | None:
    """One plain line for a reported envelope, or ``None`` for envelopes plain output leaves out. ``run`` names
    the run of a span line with ``run_label`` (``run job-123``; by default ``trace <the envelope's trace id>``)."""
    type_ = str(env.get("type"))
    mark = "  (snapshot)" if env.get("snapshot") else ""
    of = f"  {run_label}" if run_label else f"  trace {clean(env.get('run_id') or '', 40)}"
    if type_ in RUN_TYPES:
        if type_ == RUN_UPDATED:
            return None
        run = env.get("run") or {}
        alias = f"  run {clean(run['otelflow_run_id'], 60)}" if run.get("otelflow_run_id") else ""
        ended = type_ == RUN_ENDED
        when = run.get("end_time") if ended else run.get("start_time")
        tail = f"  {clean(run.get('status', ''), 20)}" if ended else ""
        dur = f" {_duration(run)}" if ended and _duration(run) else ""
        name = clean(run.get("name", ""), 80)
        return f"{clock(when)}  {type_:<14} {'':<8} {name}{alias}  trace {env.get('run_id')}{tail}{dur}{mark}"
    if type_ == SPAN_EVENT:
        event = env.get("event") or {}
        kind = clean(env.get("span_kind") or "", 8)
        name = clean(env.get("span_name") or "", 80)
        return f"{clock(event.get('time'))}  {type_:<14} {kind:<8} {name}{of}  {describe_event(event)}{mark}"
    if type_ in ALERT_TYPES:
        return _describe_alert(type_, env, mark)
    span = env.get("span")
    if not isinstance(span, dict):
        return None
    kind = clean(span.get("kind") or "", 8)
    name = clean(span.get("name") or "", 80)
    llm = describe_llm(span)
    llm = f"  {llm}" if llm else ""
    if type_ == SPAN_STARTED:
        return f"{clock(span.get('start_time'))}  {type_:<14} {kind:<8} {name}{of}{llm}{mark}"
    if type_ == SPAN_STALLED:
        stalled = env.get(STALLED)
        if not isinstance(stalled, dict):
            return None
        why = describe_stall(stalled, stalled_for(stalled, span))
        rule = f"  rule {clean(stalled['rule'], 40)}" if stalled.get("rule") else ""
        return f"{clock(flagged_at(stalled, span))}  {type_:<14} {kind:<8} {name}{of}  {why}{rule}{mark}"
    if type_ == SPAN_UNSTALLED:
        status = span.get("status")
        ended = status in ENDED
        now = f"ended {clean(status, 12)}" if ended else "moving again"
        return f"{clock(span.get('end_time') if ended else None)}  {type_:<14} {kind:<8} {name}{of}  {now}{mark}"
    status = clean(span.get("status") or "", 12)
    detail = ""
    err = span.get("error")
    if isinstance(err, dict):
        detail = f"  {clean(err.get('type') or '', 40)}: {clean(err.get('message') or '', 100)}"
    dur = f" {_duration(span)}" if _duration(span) else ""
    when = span.get("end_time") or None
    return f"{clock(when)}  {type_:<14} {kind:<8} {name}{of}  {status}{dur}{llm}{detail}{mark}"


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
    """One line per report; ``run_label(trace_id)`` names a span line's run (``run job-123``)."""

    def __init__(self, stream: IO[str], run_label: Callable[[str], str | None] | None = None) -> None:
        self.stream = stream
        self.run_label = run_label

    def report(self, env: Envelope, raw: str | None) -> None:
        trace = env.get("run_id")
        label = self.run_label(trace) if self.run_label is not None and isinstance(trace, str) else None
        line = describe(env, label)
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
            spinner = self._spinners[key] = Spinner(SPINNER, style=STATUS_STYLE[A.STATUS_RUNNING])
        spinner.text = label
        return spinner

    def _mark(self, key: str, status: str, label: Any) -> Any:
        from rich.text import Text

        if status == A.STATUS_RUNNING:
            return self._spinner(key, label)
        self._spinners.pop(key, None)
        glyph = Text(STATUS_GLYPH.get(status, "?"), style=STATUS_STYLE.get(status, ""))
        return Text.assemble(glyph, " ", label)

    def _span_label(self, span: dict[str, Any], stalled: dict[str, Any] | None = None) -> Any:
        from rich.text import Text

        status = str(span.get("status") or A.STATUS_RUNNING)
        label = Text.assemble(
            (clean(span.get("name") or "", 80), f"bold {STALLED_STYLE}" if stalled is not None else "bold"),
            " ",
            (clean(span.get("kind") or "", 10), "dim"),
        )
        if status == A.STATUS_RUNNING:
            now = time.time()
            began = _epoch(span.get("start_time"))
            if began is not None:
                label.append(f" {max(0.0, now - began):.1f}s", "dim")
            llm = describe_llm(span, partial=True)
            if llm:
                label.append(f"  {llm}", "cyan")
            if stalled is not None:
                label.append(f"  {describe_stall(stalled, stalled_for(stalled, span, now))}", STALLED_STYLE)
                self._spinners.pop(str(span.get("span_id")), None)
                return Text.assemble((STALLED_GLYPH, f"bold {STALLED_STYLE}"), " ", label)
        else:
            label.append(f" {_duration(span)}" if _duration(span) else "", "dim")
            label.append(f" {status}", STATUS_STYLE.get(status, ""))
            llm = describe_llm(span)
            if llm:
                label.append(f"  {llm}", "cyan")
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
            percent = 100.0 if view.status == A.STATUS_OK else percent
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
        if view.stalled:
            label.append(f"  {len(view.stalled)} stalled", STALLED_STYLE)
        head = self._mark(f"run:{view.trace_id}", view.status, label)
        tree = Tree(Group(head, self._progress(view)), guide_style="dim")
        spans = sorted(view.spans.values(), key=lambda s: (str(s.get("start_time")), str(s.get("span_id"))))
        shown = 0
        if self.tail.running:
            # only what runs now, the stalled spans first (longest stalled first), then the rest as a tree
            spans = [s for s in spans if s.get("status") == A.STATUS_RUNNING]
            stuck = [s for s in spans if str(s.get("span_id")) in view.stalled]
            stuck.sort(key=lambda s: -stalled_for(view.stalled[str(s.get("span_id"))], s, time.time()))
            for s in stuck[:MAX_TREE_SPANS]:
                tree.add(self._span_label(s, view.stalled[str(s.get("span_id"))]))
            shown = min(len(stuck), MAX_TREE_SPANS)
            spans = [s for s in spans if str(s.get("span_id")) not in view.stalled]
            total = shown + len(spans)
        else:
            total = len(spans)
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

        def add(into: Tree, span: dict[str, Any]) -> None:
            nonlocal shown
            if shown >= MAX_TREE_SPANS:
                return
            shown += 1
            span_id = str(span.get("span_id"))
            node = nodes[span_id] = into.add(self._span_label(span, view.stalled.get(span_id)))
            for child in children.get(span_id, ()):
                add(node, child)

        for root in roots:
            add(tree, root)
        if total > shown:
            tree.add(Text(f"… {total - shown} more spans", style="dim"))
        return tree

    def renderables(self) -> list[Any]:
        from rich.text import Text

        with self.tail.lock:
            views = sorted(self.tail.runs.values(), key=lambda v: int(v.summary.get("start_time_ns") or 0))
            ended = [v for v in views if v.ended]
            keep = {id(v) for v in ended[-KEEP_ENDED_RUNS:]} if not self.tail.running else set()
            shown = [v for v in views if not v.ended or id(v) in keep]
            out: list[Any] = [self._run_tree(v) for v in shown]
            if not shown:
                nothing = "nothing runs now; " if self.tail.running else ""
                out.append(Text(f"{nothing}waiting for a run to start…", style="dim"))
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
