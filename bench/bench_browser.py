"""The run page in a real browser: render time, smoothness under a live stream, a very large run.

Each measurement is one worker process (``--worker``) started from the checkout under test: it imports that
checkout's ``_common`` (which pins otelflow and the viewer to it), starts ``otelflow serve`` as a subprocess,
sends real spans over OTLP/HTTP (OTLP/JSON, as otelflow's live exporter sends them) and drives headless
Chromium (Playwright, ``/usr/bin/chromium``). The driver alternates checkouts round by round, so that two
commits are measured in the same run, interleaved: ``--checkouts /path/old /path/new``.

Scenarios (traces nested as users run them: a workflow root, agents under it, tools and nodes under the
agents; spans carry progress, log and data_flow events):

- render: a finished run of 2,000 spans / 200 agents, opened after it ended. Render time = from the arrival of
  the run's snapshot (``GET /api/runs/<id>``, Resource Timing ``responseEnd``) to the first animation frame
  after the page shows every span (the page's own work; navigation → drawn is printed too, it includes the
  viewer's answer); longest task until then.
- stream: a run page open while ~500 stream events/s (span starts, ends, log events) arrive for ``--seconds``:
  frames/s (``requestAnimationFrame`` callbacks), main-thread busy share (CDP ``Performance.getMetrics``
  TaskDuration over wall time, and the share covered by ``longtask`` entries), p99 lateness of a chain of
  50 ms ``setTimeout`` calls.
- big: a finished run of 20,000 spans, opened, then its timeline scrolled top to bottom; longest task.

Targets: render ≤ 300 ms; stream ≥ 30 frames/s, busy ≤ 50 %, timer p99 late ≤ 100 ms; big: no task > 200 ms.
Run: ``python bench/bench_browser.py [--checkouts A B] [--rounds 3] [--seconds 10] [--only render,stream,big]``.
Prints figures (ranges over the rounds) next to their targets, not a verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("OTELFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
SCENARIOS = ("render", "stream", "big")

# Installed before the page's scripts: long tasks, frames, a 50 ms timer chain, stream frames received.
PROBE = """(() => {
  const b = (window.__bench = { long: [], frames: 0, late: [], frames_on: false, received: 0 });
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) b.long.push([e.startTime, e.duration]);
  }).observe({ type: "longtask", buffered: true });
  const frame = () => { if (b.frames_on) b.frames++; requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  b.startTimer = () => {
    let due = performance.now() + 50;
    const step = () => {
      if (!b.frames_on) return;
      const now = performance.now();
      b.late.push(now - due);
      due = now + 50;
      setTimeout(step, 50);
    };
    setTimeout(step, 50);
  };
  // when the page says it shows N spans (body[data-span-count], set at the end of its render): a message posted
  // then runs after the task that rendered, i.e. after that frame's style, layout and paint (the page renders in
  // animation-frame callbacks). Not the next rAF: headless Chromium draws no frame while nothing changes.
  b.painted = [];
  const channel = new MessageChannel();
  channel.port1.onmessage = (e) => b.painted.push([e.data, performance.now()]);
  new MutationObserver(() => channel.port2.postMessage(Number(document.body.dataset.spanCount)))
    .observe(document, { attributes: true, subtree: true, attributeFilter: ["data-span-count"] });
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    addEventListener(type, fn, opts) {
      super.addEventListener(type, (e) => { b.received++; fn(e); }, opts);
    }
  };
})();"""
WINDOW_START = """() => {
  const b = window.__bench;
  Object.assign(b, { long: [], frames: 0, late: [], received0: b.received, t0: performance.now(), frames_on: true });
  b.startTimer();
}"""
WINDOW_END = """() => {
  const b = window.__bench;
  b.frames_on = false;
  const wall = performance.now() - b.t0;
  return { frames: b.frames, late: b.late, long: b.long, received: b.received - b.received0, wall };
}"""


# --------------------------------------------------------------------------------------------------
# spans
# --------------------------------------------------------------------------------------------------


def make_run(
    n_spans: int, n_agents: int, *, t0: int, total_ns: int, run_id: str, ended: bool = True
) -> tuple[list[Any], Any]:
    """A nested run: workflow root, ``n_agents`` agents, tools/nodes under them; returns (children, root)."""
    from otelflow import attributes as A
    from otelflow.records import EventRecord, SpanRecord

    trace = os.urandom(16).hex()
    root_id = os.urandom(8).hex()
    resource = {"service.name": "bench-browser", A.WORKER_ID: "bench"}
    per_agent = max(1, -(-(n_spans - 1) // n_agents) - 1)
    spans: list[Any] = []
    slot = total_ns // n_agents

    def span(
        sid: str,
        name: str,
        kind: str,
        parent: str | None,
        start: int,
        dur: int,
        events: tuple[Any, ...],
        attrs: dict[str, Any],
    ) -> Any:
        return SpanRecord(
            trace_id=trace,
            span_id=sid,
            parent_span_id=parent,
            name=name,
            kind=kind,
            start_time_ns=start,
            end_time_ns=start + dur if ended else None,
            status="ok" if ended else "running",
            attributes={A.KIND: kind, **attrs},
            events=events,
            service="bench-browser",
            resource=resource,
            scope="bench",
        )

    for a in range(n_agents):
        if len(spans) >= n_spans - 1:
            break
        aid = os.urandom(8).hex()
        start = t0 + a * slot // 2
        name = f"agent_{a}"
        events = (
            EventRecord(A.EVENT_LOG, start + 1000, {A.LOG_LEVEL: "info", A.LOG_MESSAGE: f"{name} started"}),
            EventRecord(A.EVENT_PROGRESS, start + slot // 2, {A.PROGRESS_PERCENT: 50.0, A.PROGRESS_MESSAGE: "half"}),
            EventRecord(
                A.EVENT_DATA_FLOW, start + slot - 10, {A.DATA_FLOW_FROM: name, A.DATA_FLOW_TO: f"agent_{a + 1}"}
            ),
        )
        spans.append(
            span(
                aid,
                f"invoke_agent {name}",
                A.KIND_AGENT,
                root_id,
                start,
                slot,
                events,
                {A.GEN_AI_AGENT_NAME: name, A.NODE_ID: name},
            )
        )
        for t in range(per_agent):
            if len(spans) >= n_spans - 1:
                break
            ts = start + (t * slot) // (per_agent + 1)
            tool = f"tool_{t % 7}"
            ev = (
                EventRecord(
                    A.EVENT_LOG,
                    ts + 500,
                    {A.LOG_LEVEL: "debug" if t % 3 else "warning", A.LOG_MESSAGE: f"{tool} call {t}"},
                ),
            )
            spans.append(
                span(
                    os.urandom(8).hex(),
                    f"execute_tool {tool}",
                    A.KIND_TOOL,
                    aid,
                    ts,
                    slot // (per_agent + 1),
                    ev,
                    {A.GEN_AI_TOOL_NAME: tool},
                )
            )
    root = span(root_id, "invoke_workflow bench", A.KIND_WORKFLOW, None, t0, total_ns + slot, (), {A.RUN_ID: run_id})
    return spans, root


def post(port: int, records: list[Any]) -> None:
    import http.client

    from _common import HOST

    from otelflow.otlp_json import to_otlp_json

    body = json.dumps(to_otlp_json(records)).encode()
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST /v1/traces: HTTP {resp.status}")
    finally:
        conn.close()


def post_chunked(port: int, records: list[Any], size: int = 2000) -> None:
    for i in range(0, len(records), size):
        post(port, records[i : i + size])


def wait_spans(port: int, run: str, n: int, timeout: float = 60.0) -> None:
    from _common import get

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(get(port, f"/api/runs/{run}"))
            if len(data.get("spans", [])) >= n and data["run"]["status"] != "running":
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"run {run} did not reach {n} spans")


# --------------------------------------------------------------------------------------------------
# the worker: one checkout, one viewer, one browser
# --------------------------------------------------------------------------------------------------


def new_page(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.add_init_script(PROBE)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.bench_errors = errors
    return page


def shown_spans(page: Any, n: int, timeout_ms: float = 120_000) -> float:
    """Waits for the page to show ``n`` spans; the performance.now() of the frame after that."""
    shown: float = page.wait_for_function(
        "(n) => (window.__bench.painted.find(([count]) => count >= n) || [])[1]", arg=n, polling=50, timeout=timeout_ms
    ).json_value()
    return shown


SNAPSHOT_AT = """(trace) => {
  const hit = performance.getEntriesByType("resource").find((e) => e.name.includes(`/api/runs/${trace}`));
  return hit ? hit.responseEnd : 0;
}"""


def snapshot_at(page: Any, trace: str) -> float:
    """When the run's snapshot (``GET /api/runs/<id>``) had arrived, in the page's performance.now() time."""
    at: float = page.evaluate(SNAPSHOT_AT, trace)
    return at


def longest(page: Any, until: float | None = None) -> float:
    tasks = page.evaluate("window.__bench.long")
    return max([d for s, d in tasks if until is None or s <= until], default=0.0)


def scenario_render(browser: Any, port: int) -> dict[str, float]:
    spans, root = make_run(
        2000, 200, t0=time.time_ns() - 60_000_000_000, total_ns=40_000_000_000, run_id="bench-render"
    )
    post_chunked(port, spans)
    post(port, [root])
    wait_spans(port, root.trace_id, 2000)
    page = new_page(browser)
    page.goto(f"http://127.0.0.1:{port}/runs/{root.trace_id}", wait_until="commit")
    shown = shown_spans(page, 2000)
    page.wait_for_timeout(300)  # long tasks are reported after they end
    out = {
        "render_ms": shown - snapshot_at(page, root.trace_id),
        "render_open_ms": shown,
        "render_longest_ms": longest(page, shown),
    }
    errors = page.bench_errors
    page.context.close()
    if errors:
        print(f"  page errors: {errors[:3]}", file=sys.stderr)
    return out


def scenario_stream(browser: Any, port: int, seconds: float) -> dict[str, float]:
    from otelflow import attributes as A
    from otelflow.records import EventRecord, SpanRecord

    trace, root_id = os.urandom(16).hex(), os.urandom(8).hex()
    resource = {"service.name": "bench-browser", A.WORKER_ID: "bench"}
    t0 = time.time_ns()

    def rec(
        sid: str,
        name: str,
        kind: str,
        parent: str | None,
        start: int,
        end: int | None,
        events: tuple[Any, ...] = (),
        attrs: dict[str, Any] | None = None,
    ) -> Any:
        return SpanRecord(
            trace_id=trace,
            span_id=sid,
            parent_span_id=parent,
            name=name,
            kind=kind,
            start_time_ns=start,
            end_time_ns=end,
            status="ok" if end else "running",
            attributes={A.KIND: kind, **(attrs or {})},
            events=events,
            service="bench-browser",
            resource=resource,
            scope="bench",
        )

    root = rec(root_id, "invoke_workflow stream", A.KIND_WORKFLOW, None, t0, None, attrs={A.RUN_ID: "bench-stream"})
    post(port, [root])
    page = new_page(browser)
    page.goto(f"http://127.0.0.1:{port}/runs/{trace}")
    page.wait_for_function("() => document.querySelector('#conn')?.dataset.state === 'connected'", timeout=30_000)
    page.wait_for_function("() => Number(document.body.dataset.spanCount) >= 1", timeout=30_000)

    stop = threading.Event()
    sent = {"batches": 0}

    def sender() -> None:
        # every 100 ms: 2 agents start, 16 tools start under the open agents, 16 earlier tools end with a log
        # event and the agents of 1 s ago end (~ 50 stream events a tick = 500/s)
        agents: list[tuple[str, str, int]] = []
        open_tools: list[tuple[str, str, str, int]] = []
        k = 0
        next_at = time.monotonic()
        while not stop.is_set():
            now = time.time_ns()
            batch = []
            for _ in range(2):
                aid, name = os.urandom(8).hex(), f"agent_{len(agents)}"
                agents.append((aid, name, now))
                batch.append(
                    rec(
                        aid, f"invoke_agent {name}", A.KIND_AGENT, root_id, now, None, attrs={A.GEN_AI_AGENT_NAME: name}
                    )
                )
            for _ in range(16):
                aid = agents[-1 - (k % min(len(agents), 6))][0]
                tid, tool = os.urandom(8).hex(), f"tool_{k % 9}"
                open_tools.append((tid, tool, aid, now))
                batch.append(
                    rec(tid, f"execute_tool {tool}", A.KIND_TOOL, aid, now, None, attrs={A.GEN_AI_TOOL_NAME: tool})
                )
                k += 1
            for tid, tool, aid, start in open_tools[:16] if len(open_tools) > 32 else []:
                log = EventRecord(A.EVENT_LOG, now - 1000, {A.LOG_LEVEL: "info", A.LOG_MESSAGE: f"{tool} done"})
                batch.append(
                    rec(tid, f"execute_tool {tool}", A.KIND_TOOL, aid, start, now, (log,), {A.GEN_AI_TOOL_NAME: tool})
                )
            if len(open_tools) > 32:
                del open_tools[:16]
            if len(agents) > 20:
                aid, name, start = agents[-21]
                batch.append(
                    rec(
                        aid,
                        f"invoke_agent {name}",
                        A.KIND_AGENT,
                        root_id,
                        start,
                        now,
                        attrs={A.GEN_AI_AGENT_NAME: name},
                    )
                )
            post(port, batch)
            sent["batches"] += 1
            next_at += 0.1
            stop.wait(max(0.0, next_at - time.monotonic()))

    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    page.wait_for_timeout(1500)  # the stream is flowing

    def task_s() -> float:
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        return float(metrics["TaskDuration"])

    task0, wall0 = task_s(), time.monotonic()
    profile = os.environ.get("BENCH_PROFILE")  # print the page's hottest functions over the window
    if profile:
        cdp.send("Profiler.enable")
        cdp.send("Profiler.start")
        page.context.browser.start_tracing(
            page=page, categories=["devtools.timeline", "disabled-by-default-devtools.timeline", "cc"]
        )
    page.evaluate(WINDOW_START)
    page.wait_for_timeout(seconds * 1000)
    result = page.evaluate(WINDOW_END)
    if profile:
        print_profile(cdp.send("Profiler.stop")["profile"])
        print_trace(page.context.browser.stop_tracing())
    task1, wall1 = task_s(), time.monotonic()
    stop.set()
    thread.join(10)
    wall_s = result["wall"] / 1000
    late = sorted(result["late"]) or [0.0]
    p99 = late[min(len(late) - 1, int(0.99 * len(late)))]
    out = {
        "fps": result["frames"] / wall_s,
        "busy_pct": 100 * (task1 - task0) / (wall1 - wall0),
        "longtask_pct": 100 * sum(d for _, d in result["long"]) / result["wall"],
        "timer_late_p99_ms": p99,
        "timer_late_p50_ms": late[len(late) // 2],
        "events_per_s": result["received"] / wall_s,
        "spans_at_end": float(page.evaluate("Number(document.body.dataset.spanCount)")),
    }
    errors = page.bench_errors
    page.context.close()
    if errors:
        print(f"  page errors: {errors[:3]}", file=sys.stderr)
    return out


def print_profile(profile: dict[str, Any], top: int = 25) -> None:
    """Self time by function of a CDP CPU profile, to stderr."""
    nodes = {node["id"]: node["callFrame"] for node in profile["nodes"]}
    self_ms: dict[str, float] = {}
    for sample, delta in zip(profile["samples"], profile["timeDeltas"], strict=False):
        frame = nodes[sample]
        name = f"{frame['functionName'] or '(anonymous)'} {frame['url'].rsplit('/', 1)[-1]}:{frame['lineNumber'] + 1}"
        self_ms[name] = self_ms.get(name, 0.0) + delta / 1000
    for name, ms in sorted(self_ms.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {ms:8.1f} ms  {name}", file=sys.stderr)


def print_trace(trace: bytes, top: int = 15) -> None:
    """Time by kind of work (style, layout, paint, script...) on the page's main thread, then the busiest work of
    the browser's other threads (raster workers, compositor, the layout Web Worker), to stderr: a page that draws
    few frames with an idle main thread is waiting for one of those."""
    events = json.loads(trace)["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"].get("name", "?") for e in events if e.get("name") == "thread_name"}
    totals: dict[tuple[str, str], float] = {}
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            key = (names.get((e["pid"], e["tid"]), "?"), e["name"])
            totals[key] = totals.get(key, 0.0) + e["dur"] / 1000
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    main = [(name, ms) for (thread, name), ms in ranked if thread == "CrRendererMain"]
    for name, ms in main[:top]:
        print(f"  {ms:8.1f} ms  [{name}]", file=sys.stderr)
    wanted = {"RasterTask", "HandlePostMessage", "Graphics.Pipeline", "ProxyImpl::ScheduledActionDraw"}
    for (thread, name), ms in ranked:
        if thread != "CrRendererMain" and name in wanted:
            print(f"  {ms:8.1f} ms  [{thread}: {name}]", file=sys.stderr)


SCROLL = """async () => {
  const el = document.getElementById("timeline");
  const scroller = [el, ...(function* up(e) { while ((e = e.parentElement)) yield e; })(el), document.scrollingElement]
    .find((e) => e && e.scrollHeight > e.clientHeight + 10 && getComputedStyle(e).overflowY !== "visible")
    || document.scrollingElement;
  const frame = () => new Promise((r) => requestAnimationFrame(r));
  const t0 = performance.now();
  let steps = 0;
  while (scroller.scrollTop + scroller.clientHeight < scroller.scrollHeight - 2 && steps < 400) {
    scroller.scrollTop += Math.max(300, (scroller.scrollHeight - scroller.clientHeight) / 120);
    await frame();
    steps++;
  }
  await frame();
  return { ms: performance.now() - t0, steps, rows: document.querySelectorAll(".tl-row").length };
}"""


def scenario_big(browser: Any, port: int) -> dict[str, float]:
    spans, root = make_run(
        20000, 400, t0=time.time_ns() - 600_000_000_000, total_ns=300_000_000_000, run_id="bench-big"
    )
    post_chunked(port, spans)
    post(port, [root])
    wait_spans(port, root.trace_id, 20000, timeout=120)
    page = new_page(browser)
    page.goto(f"http://127.0.0.1:{port}/runs/{root.trace_id}", wait_until="commit")
    shown = shown_spans(page, 20000)
    page.wait_for_timeout(300)
    open_longest = longest(page)
    scroll = page.evaluate(SCROLL)
    page.wait_for_timeout(300)
    out = {
        "big_open_ms": shown,
        "big_render_ms": shown - snapshot_at(page, root.trace_id),
        "big_open_longest_ms": open_longest,
        "big_longest_ms": longest(page),
        "big_scroll_frame_ms": scroll["ms"] / max(1, scroll["steps"]),
        "big_rows_in_dom": float(scroll["rows"]),
    }
    errors = page.bench_errors
    page.context.close()
    if errors:
        print(f"  page errors: {errors[:3]}", file=sys.stderr)
    return out


def worker(only: list[str], seconds: float) -> None:
    from _common import start_viewer, stop
    from playwright.sync_api import sync_playwright

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        proc, port = start_viewer(Path(tmp) / "viewer.db")
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            if "render" in only:
                out.update(scenario_render(browser, port))
            if "stream" in only:
                out.update(scenario_stream(browser, port, seconds))
            if "big" in only:
                out.update(scenario_big(browser, port))
        finally:
            browser.close()
            stop(proc)
    print(json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------------------------------

ROWS = [
    ("render_ms", "2,000-span run: render (snapshot in → drawn)", "ms", "≤ 300"),
    ("render_open_ms", "2,000-span run: navigation → drawn", "ms", ""),
    ("render_longest_ms", "2,000-span run: longest task", "ms", ""),
    ("fps", "500 events/s: frames/s", "", "≥ 30"),
    ("busy_pct", "500 events/s: main thread busy (TaskDuration)", "%", "≤ 50"),
    ("longtask_pct", "500 events/s: covered by long tasks", "%", ""),
    ("timer_late_p99_ms", "500 events/s: 50 ms timer late, p99", "ms", "≤ 100"),
    ("timer_late_p50_ms", "500 events/s: 50 ms timer late, p50", "ms", ""),
    ("events_per_s", "500 events/s: stream events received/s", "", "~500"),
    ("spans_at_end", "500 events/s: spans on the page at the end", "", ""),
    ("big_open_ms", "20,000-span run: navigation → drawn", "ms", ""),
    ("big_render_ms", "20,000-span run: snapshot in → drawn", "ms", ""),
    ("big_open_longest_ms", "20,000-span run: longest task while opening", "ms", "≤ 200"),
    ("big_longest_ms", "20,000-span run: longest task, open + scroll", "ms", "≤ 200"),
    ("big_scroll_frame_ms", "20,000-span run: time per scroll step", "ms", ""),
    ("big_rows_in_dom", "20,000-span run: timeline rows in the DOM", "", ""),
]


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    lo, hi, mid = min(values), max(values), statistics.median(values)
    digits = 0 if mid >= 100 else 1
    if len(values) == 1:
        return f"{mid:.{digits}f}"
    return f"{mid:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkouts", nargs="+", type=Path, default=[HERE.parent])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    if unknown := set(only) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.worker:
        worker(only, args.seconds)
        return
    results: dict[Path, list[dict[str, float]]] = {c.resolve(): [] for c in args.checkouts}
    for r in range(args.rounds):
        for checkout in results:
            script = checkout / "bench" / "bench_browser.py"
            if not script.exists():
                raise SystemExit(f"{script} does not exist: copy bench_browser.py into that checkout")
            cmd = [sys.executable, str(script), "--worker", "--only", ",".join(only), "--seconds", str(args.seconds)]
            started = time.monotonic()
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=checkout, timeout=600)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                raise SystemExit(f"worker failed for {checkout}")
            if done.stderr.strip():
                print(done.stderr.strip(), file=sys.stderr)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            results[checkout].append(figures)
            print(f"round {r + 1} {checkout}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    names = [str(c) for c in results]
    width = max(len(label) for _, label, _, _ in ROWS)
    print(f"{'figure':<{width}}  {'target':>8}  " + "  ".join(f"{n:>26}" for n in names))
    for key, label, unit, target in ROWS:
        cells = [fmt([f[key] for f in results[c] if key in f]) + (f" {unit}" if unit else "") for c in results]
        if all(cell.startswith("–") for cell in cells):
            continue
        print(f"{label:<{width}}  {target:>8}  " + "  ".join(f"{cell:>26}" for cell in cells))
    print(f"median (min–max) over {args.rounds} interleaved round(s)")


if __name__ == "__main__":
    main()
