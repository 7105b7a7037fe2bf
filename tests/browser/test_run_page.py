"""The run page's remaining behaviours in a real Chromium: data-flow particles, abandoned workers, keyboard, layout,
the run's progress in replay."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from otelflow import wire
from otelflow.records import EventRecord, SpanRecord
from otelflow.viewer.live import Hub
from tests.browser.test_pages import expect_statuses, graph_json, node, post, progress
from tests.viewer.conftest import Viewer, heartbeat, record, span_id, trace_id, wait_for

pytestmark = pytest.mark.browser

AMBER = "rgb(245, 158, 11)"  # --abandoned in style.css

# A particle of `from -> to` lies on the stroke of that edge (checked every animation frame: it lives 0.9 s).
PARTICLE_ON_EDGE = """([from, to]) => {
  const sel = (cls) => `#graph ${cls}[data-from="${CSS.escape(from)}"][data-to="${CSS.escape(to)}"]`;
  const edge = document.querySelector(sel(".gedge"));
  for (const dot of document.querySelectorAll(sel(".particle"))) {
    const p = new DOMPoint(Number(dot.getAttribute("cx")), Number(dot.getAttribute("cy")));
    if (edge && edge.isPointInStroke(p)) return true;
  }
  return false;
}"""


def data_flow(src: str, dst: str, at: int | None = None) -> EventRecord:
    return EventRecord(
        A.EVENT_DATA_FLOW,
        at if at is not None else time.time_ns(),
        {A.DATA_FLOW_FROM: src, A.DATA_FLOW_TO: dst, A.DATA_FLOW_BYTES: 2048, A.DATA_FLOW_KEYS: ("docs",)},
    )


def test_data_flow_event_sends_a_particle_along_its_edge(viewer: Viewer, page: Any) -> None:
    trace, root, fetch = trace_id(), span_id(), span_id()
    keys = ["fetch", "think", "answer"]
    graph = {A.WORKFLOW_GRAPH: graph_json(keys)}
    post(viewer, [record(trace, root, "invoke_workflow flows", kind=A.KIND_WORKFLOW, attributes=graph)])
    started = time.time_ns()
    post(viewer, [record(trace, fetch, "fetch", parent=root, attributes={A.NODE_ID: "fetch"}, start=started)])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(node(page, "fetch")).to_have_attribute("data-status", "running")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(page.locator("#graph .gedge")).to_have_count(2)
    assert page.locator("#graph .particle").count() == 0  # history does not animate

    # a data_flow event on a planned edge: one particle travels along fetch -> think, not along another edge
    flow = data_flow("fetch", "think")
    post(
        viewer,
        [record(trace, fetch, "fetch", parent=root, attributes={A.NODE_ID: "fetch"}, start=started, events=(flow,))],
    )
    page.wait_for_function(PARTICLE_ON_EDGE, arg=["fetch", "think"], polling="raf")
    assert page.locator('#graph .particle:not([data-from="fetch"][data-to="think"])').count() == 0
    expect(page.locator("#graph .particle")).to_have_count(0)  # and it is gone once it arrived

    # a data_flow event that creates its edge (fetch -> answer was not planned): the particle waits for the edge
    skip = data_flow("fetch", "answer", started + 1000)
    post(
        viewer,
        [
            record(
                trace, fetch, "fetch", parent=root, attributes={A.NODE_ID: "fetch"}, start=started, events=(flow, skip)
            )
        ],
    )
    page.wait_for_function(PARTICLE_ON_EDGE, arg=["fetch", "answer"], polling="raf")
    expect(page.locator("#graph .gedge")).to_have_count(3)
    page.probe.assert_clean()


@pytest.fixture
def heartbeats(viewer_fast: Viewer) -> Iterator[threading.Event]:
    """A worker called "doomed" sends heartbeats until the returned event is set (it dies)."""
    dead = threading.Event()

    def beat() -> None:
        with httpx.Client(base_url=viewer_fast.url, timeout=5) as client:
            while not dead.wait(0.1):
                client.post("/v1/traces", json=heartbeat("doomed"))

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    yield dead
    dead.set()
    thread.join(5)


@pytest.fixture
def viewer_fast(make_viewer: Callable[..., Viewer]) -> Viewer:
    """A viewer whose hub gives up on a silent worker after 1 s instead of 10 s."""
    return make_viewer(hub=Hub(abandon_after_s=1.0, check_interval_s=0.1))


def test_killed_worker_turns_its_running_node_amber(
    viewer_fast: Viewer, heartbeats: threading.Event, page: Any
) -> None:
    viewer = viewer_fast
    trace, root, fetch, think = trace_id(), span_id(), span_id(), span_id()
    keys = ["fetch", "think", "answer"]
    graph = {A.WORKFLOW_GRAPH: graph_json(keys)}
    post(
        viewer, [record(trace, root, "invoke_workflow doomed", kind=A.KIND_WORKFLOW, attributes=graph, worker="doomed")]
    )
    post(
        viewer,
        [record(trace, fetch, "fetch", parent=root, attributes={A.NODE_ID: "fetch"}, worker="doomed", ended=True)],
    )
    post(viewer, [record(trace, think, "think", parent=root, attributes={A.NODE_ID: "think"}, worker="doomed")])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(node(page, "think")).to_have_attribute("data-status", "running")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "running")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")

    heartbeats.set()  # the worker dies mid-run: no more heartbeats, no end of its spans
    expect(node(page, "think")).to_have_attribute("data-status", "abandoned")
    expect(node(page, "think").locator(".gnode-stripe")).to_have_css("fill", AMBER)
    expect(node(page, "think")).to_contain_text("abandoned")
    expect(node(page, "fetch")).to_have_attribute("data-status", "ok")
    expect(node(page, "answer")).to_have_attribute("data-status", "skipped")  # the run has ended without it
    run_status = page.locator("#run-status")
    expect(run_status).to_have_attribute("data-status", "abandoned")
    expect(run_status).to_have_text("abandoned")
    expect(page.locator(f'.tl-row[data-span-id="{think}"]')).to_have_attribute("data-status", "abandoned")
    expect(page.locator(f'.tl-row[data-span-id="{root}"]')).to_have_attribute("data-status", "abandoned")
    # nothing of the run is shown as live any more
    expect(page.locator("#tl-now")).to_be_hidden()
    expect(page.locator("#replay-toggle")).to_be_enabled()
    node(page, "think").click()
    expect(page.locator("#inspector .chip")).to_have_text("abandoned")
    page.goto(f"{viewer.url}/")
    expect(page.locator(f'tr[data-run-id="{trace}"]')).to_have_attribute("data-status", "abandoned")
    expect(page.locator(f'tr[data-run-id="{trace}"] .chip')).to_have_text("abandoned")
    page.probe.assert_clean()


# --------------------------------------------------------------------------------------------------
# A finished run as a person would look at it: fan-out graph, tools, retries, a failure, logs, progress.


def finished_run(viewer: Viewer, *, seconds: float = 12.0) -> tuple[str, dict[str, str]]:
    """Posts a finished multi-agent run; returns its trace id and span ids by node key."""
    trace, root = trace_id(), span_id()
    t0 = time.time_ns() - int((seconds + 5) * 1e9)
    total = int(seconds * 1e9)
    plan = [
        ("plan", "Plan the report", A.KIND_AGENT, 0.00, 0.12),
        ("search_web", "Search the web", A.KIND_TOOL, 0.13, 0.30),
        ("read_docs", "Read internal docs", A.KIND_AGENT, 0.13, 0.45),
        ("summarise", "Summarise sources", A.KIND_AGENT, 0.46, 0.62),
        ("write", "Write the draft", A.KIND_AGENT, 0.63, 0.86),
        ("fact_check", "Fact-check claims", A.KIND_TOOL, 0.66, 0.80),
        ("review", "Review and publish", A.KIND_NODE, 0.87, 0.99),
    ]
    edges = [
        ("plan", "search_web"),
        ("plan", "read_docs"),
        ("search_web", "summarise"),
        ("read_docs", "summarise"),
        ("summarise", "write"),
        ("write", "fact_check"),
        ("write", "review"),
    ]
    graph = {
        "id": "report",
        "name": "report",
        "nodes": [{"id": k, "name": label, "kind": kind, "type": "node"} for k, label, kind, _, _ in plan],
        "edges": [{"from": a, "to": b, "action": "default"} for a, b in edges],
    }
    ids = {key: span_id() for key, *_ in plan}
    spans: list[SpanRecord] = []
    for i, (key, label, kind, a, b) in enumerate(plan):
        start, end = t0 + int(a * total), t0 + int(b * total)
        events = [
            EventRecord(A.EVENT_LOG, start + 1000, {A.LOG_LEVEL: "info", A.LOG_MESSAGE: f"{label}: started"}),
            EventRecord(
                A.EVENT_PROGRESS,
                end - 1000,
                {A.PROGRESS_PERCENT: 100.0 * (i + 1) / len(plan), A.PROGRESS_MESSAGE: f"{i + 1}/{len(plan)} {key}"},
            ),
        ]
        events += [
            EventRecord(
                A.EVENT_DATA_FLOW, end - 500, {A.DATA_FLOW_FROM: key, A.DATA_FLOW_TO: dst, A.DATA_FLOW_BYTES: 4096}
            )
            for src, dst in edges
            if src == key
        ]
        if key == "write":
            events.append(
                EventRecord(
                    A.EVENT_RETRY,
                    start + int(0.3 * (end - start)),
                    {A.RETRY_ATTEMPT: 1, A.RETRY_ERROR: "RateLimitError: slow down", A.RETRY_WAIT_S: 1.5},
                )
            )
            events.append(
                EventRecord(
                    A.EVENT_LOG, start + 2000, {A.LOG_LEVEL: "warning", A.LOG_MESSAGE: "rate limited, retrying"}
                )
            )
        failed = key == "fact_check"
        if failed:
            events.append(
                EventRecord(
                    A.EVENT_EXCEPTION,
                    end - 100,
                    {"exception.type": "TimeoutError", "exception.message": "claim checker timed out after 30 s"},
                )
            )
        attributes = {
            A.NODE_ID: key,
            A.INPUT_VALUE: json.dumps({"topic": "observability for agent workflows", "step": key, "limit": 5}),
            A.INPUT_MIME_TYPE: A.MIME_JSON,
            A.OUTPUT_VALUE: json.dumps({"words": 120 * (i + 1), "sources": ["otel.io", "w3.org/TR/trace-context"]}),
            A.OUTPUT_MIME_TYPE: A.MIME_JSON,
        }
        if kind == A.KIND_AGENT:
            attributes[A.GEN_AI_AGENT_NAME] = label
        spans.append(
            record(
                trace,
                ids[key],
                f"invoke_agent {label}" if kind == A.KIND_AGENT else label,
                parent=ids["write"] if key == "fact_check" else root,
                kind=kind,
                start=start,
                duration_ns=end - start,
                ended=True,
                error=failed,
                events=tuple(sorted(events, key=lambda e: e.time_ns)),
                attributes=attributes,
            )
        )
    post(viewer, spans)
    post(
        viewer,
        [
            record(
                trace,
                root,
                "invoke_workflow research_report",
                kind=A.KIND_WORKFLOW,
                run_id="job-2041",
                start=t0,
                duration_ns=total,
                ended=True,
                attributes={A.WORKFLOW_GRAPH: json.dumps(graph)},
            )
        ],
    )
    return trace, ids


FOCUSED = """selector => {
  const el = document.activeElement;
  let description = "body";
  if (el && el !== document.body) {
    const cls = (el.getAttribute("class") || "").split(" ")[0];
    const data = el.dataset.nodeId || el.dataset.spanId || el.dataset.speed || el.getAttribute("name") || "";
    description = el.id ? `#${el.id}` : `${el.tagName.toLowerCase()}.${cls}[${data}]`;
  }
  return [description, Boolean(el && el.matches(selector))];
}"""


def tab_to(page: Any, selector: str, limit: int = 80, key: str = "Tab") -> list[str]:
    """Presses Tab until the focused element matches ``selector``; returns what was focused on the way
    (``#id``, or ``tag.class[data]``)."""
    seen: list[str] = []
    for _ in range(limit):
        page.keyboard.press(key)
        description, matched = page.evaluate(FOCUSED, selector)
        seen.append(description)
        if matched:
            return seen
    raise AssertionError(f"{selector} is not reachable with {key}; focus went through {seen}")


def test_keyboard_reaches_and_operates_the_main_controls(viewer: Viewer, page: Any) -> None:
    trace, ids = finished_run(viewer, seconds=30.0)
    # runs page: filters, then the run rows; Enter opens a run
    page.goto(f"{viewer.url}/")
    link = page.locator(f'tr[data-run-id="{trace}"] .run-link')
    expect(link).to_be_visible()
    seen = tab_to(page, f'tr[data-run-id="{trace}"] .run-link')
    assert {"select.[status]", "input.[name]", "input.[service]"} <= set(seen), seen
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{viewer.url}/runs/{trace}")
    expect(node(page, "review")).to_have_attribute("data-status", "ok")
    expect(page.locator("#replay-toggle")).to_be_enabled()

    # run page: every main control is on the Tab path, in reading order
    seen = tab_to(page, "#logs", limit=120)
    order = [
        "select.[kind]",
        "select.[status]",
        "input.[name]",
        "#replay-toggle",
        "#zoom-out",
        "#zoom-in",
        "#zoom-fit",
        "#graph-wrap",
        "g.gnode[plan]",
        "g.gnode[review]",
        f"div.tl-row[{ids['plan']}]",
        "#log-level",
        "#logs",
    ]
    positions = [seen.index(item) for item in order]
    assert positions == sorted(positions), seen

    # graph nodes: Enter and Space open them in the inspector
    page.locator("#span-filters select[name=kind]").focus()
    tab_to(page, 'g.gnode[data-node-id="summarise"]')
    page.keyboard.press("Enter")
    expect(page.locator(".insp-name")).to_have_text("Summarise sources")
    tab_to(page, 'g.gnode[data-node-id="fact_check"]')
    page.keyboard.press(" ")
    expect(page.locator(".insp-name")).to_have_text("Fact-check claims")
    expect(page.locator("#inspector .insp-error")).to_contain_text("TimeoutError")
    # the graph pans and zooms from the keyboard
    page.wait_for_function("() => document.getElementById('graph').dataset.layout === 'done'")  # bounds settled
    page.locator("#graph-wrap").focus()
    page.keyboard.press("0")  # fitted now (while a run grows, the view may be one fitted earlier, with room to grow)
    transform = page.locator("#graph-view").get_attribute("transform") or ""
    page.keyboard.press("+")
    expect(page.locator("#graph-view")).not_to_have_attribute("transform", transform)
    page.keyboard.press("0")
    expect(page.locator("#graph-view")).to_have_attribute("transform", transform)
    # timeline rows: Arrow keys move, Space selects
    page.locator(f'.tl-row[data-span-id="{ids["plan"]}"]').focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press(" ")
    expect(page.locator(".tl-row.selected")).to_have_count(1)
    expect(page.locator(".tl-row.selected")).to_be_focused()

    # filters: type a name, every view narrows
    page.locator("#span-filters select[name=kind]").focus()
    tab_to(page, "#span-filters input[name=name]")
    page.keyboard.type("review")
    expect(page.locator("#graph .gnode:not(.dim)")).to_have_count(1)
    expect(page.locator(".tl-row:visible")).to_have_count(1)
    page.keyboard.press("Control+A")
    page.keyboard.press("Backspace")
    expect(page.locator("#graph .gnode.dim")).to_have_count(0)

    # replay: toggle, play/pause, speed and scrubber, all with keys
    tab_to(page, "#replay-toggle")
    page.keyboard.press("Enter")
    expect(page.locator("body")).to_have_attribute("data-replay", "playing")
    tab_to(page, "#replay-play")
    page.keyboard.press(" ")
    expect(page.locator("body")).to_have_attribute("data-replay", "paused")
    tab_to(page, '#replay-speed [data-speed="16"]')
    page.keyboard.press("Enter")
    expect(page.locator('#replay-speed [data-speed="16"]')).to_have_attribute("aria-pressed", "true")
    tab_to(page, "#replay-scrub")
    page.keyboard.press("Home")  # the start of the run: only the first agent has begun
    expect_statuses(page, {"plan": "running", "search_web": "pending", "review": "pending"})
    page.keyboard.press("End")
    expect(page.locator("body")).to_have_attribute("data-replay", "end")
    expect(node(page, "fact_check")).to_have_attribute("data-status", "error")
    tab_to(page, "#replay-toggle", key="Shift+Tab")
    page.keyboard.press(" ")
    expect(page.locator("#replay-toggle")).to_have_text("Replay")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "ok")
    page.probe.assert_clean()


LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const doc = document.scrollingElement;
  const box = (el) => el.getBoundingClientRect();
  const text = (el) => el.textContent.trim();
  if (doc.scrollWidth > window.innerWidth + 1) problems.push(`page scrolls sideways: ${doc.scrollWidth}px`);
  const panels = [...document.querySelectorAll(".run-grid > .panel")].map((el) => [el.ariaLabel, box(el)]);
  for (const [name, r] of panels) {
    if (r.width < 200 || r.height < 120) problems.push(`${name} panel is ${r.width}x${r.height}`);
  }
  const within = (a, b) =>
    a.left >= b.left - 1 && a.right <= b.right + 1 && a.top >= b.top - 1 && a.bottom <= b.bottom + 1;
  const overlap = (a, b) =>
    a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
  for (let i = 0; i < panels.length; i++) {
    for (let j = i + 1; j < panels.length; j++) {
      if (overlap(panels[i][1], panels[j][1])) problems.push(`${panels[i][0]} overlaps ${panels[j][0]}`);
    }
  }
  const wrap = box(document.getElementById("graph-wrap"));
  for (const g of document.querySelectorAll("#graph .gnode")) {
    const r = box(g);
    if (!within(r, wrap)) problems.push(`node ${g.dataset.nodeId} is outside the graph`);
    if (r.height < 28) problems.push(`node ${g.dataset.nodeId} is tiny: ${Math.round(r.height)}px high`);
  }
  for (const el of document.querySelectorAll(".run-head *, .toolbar *, .panel-head *")) {
    if (el.children.length || !text(el) || el.offsetParent === null) continue;
    const clips = getComputedStyle(el).overflow !== "visible" && !el.closest(".run-title h1");
    if (clips && el.scrollWidth > el.clientWidth + 1) problems.push(`clipped text: ${text(el)}`);
    if (box(el).right > window.innerWidth + 1) problems.push(`off screen: ${text(el)}`);
  }
  for (const button of document.querySelectorAll(".run-grid button")) {
    if (button.offsetParent === null) continue;
    const r = box(button);
    const holder = box(button.closest("dd, header, li, .panel"));
    if (r.left < holder.left - 1 || r.right > holder.right + 1) problems.push(`button cut off: ${text(button)}`);
  }
  return problems;
}"""


@pytest.mark.parametrize(("width", "height"), [(2560, 1440), (1280, 800)], ids=["wide", "laptop"])
def test_finished_run_layout_on_wide_and_laptop_screens(
    viewer: Viewer, page: Any, artifacts: Path, width: int, height: int
) -> None:
    trace, _ = finished_run(viewer)
    page.set_viewport_size({"width": width, "height": height})
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "ok")
    expect(page.locator("#graph .gnode")).to_have_count(7)
    expect(page.locator(".log")).to_have_count(9)
    node(page, "write").click()
    expect(page.locator(".insp-name")).to_have_text("Write the draft")
    expect(node(page, "write")).to_have_attribute("data-retries", "1")
    assert page.evaluate(LAYOUT_PROBLEMS) == []
    if height >= 960:  # a big monitor shows graph, timeline, logs and inspector at once, without scrolling
        bottoms = page.locator(".run-grid > .panel").evaluate_all(
            "els => els.map(e => e.getBoundingClientRect().bottom)"
        )
        assert max(bottoms) <= height, bottoms
    page.screenshot(path=str(artifacts / f"run-finished-{width}x{height}.png"))
    page.probe.assert_clean()


def test_long_values_are_folded_in_the_inspector(viewer: Viewer, page: Any) -> None:
    trace, root, child = trace_id(), span_id(), span_id()
    long_text = "".join(f"line {i} of a long value. " for i in range(400))  # about 10,000 characters
    wf = record(
        trace, root, "invoke_workflow long", kind=A.KIND_WORKFLOW, attributes={A.WORKFLOW_GRAPH: graph_json(["big"])}
    )
    big = record(
        trace,
        child,
        "invoke_agent big",
        parent=root,
        kind=A.KIND_AGENT,
        ended=True,
        attributes={A.NODE_ID: "big", "app.report": long_text, A.OUTPUT_VALUE: long_text},
    )
    post(viewer, [wf, big])
    page.goto(f"{viewer.url}/runs/{trace}")
    node(page, "big").click()
    row = page.locator(".attr-table tr", has=page.locator("th", has_text="app.report"))
    value = row.locator(".j-str-plain")
    assert 500 < len(value.inner_text()) <= 601
    toggle = row.locator(".fold-toggle")
    expect(toggle).to_have_text(f"show all ({len(long_text):,} characters)")
    toggle.click()
    expect(value).to_have_text(long_text)
    expect(toggle).to_have_text("show less")
    toggle.click()
    assert len(value.inner_text()) <= 601
    output = page.locator(".insp-section", has=page.locator("h3", has_text="Output"))
    assert len(output.locator(".value-text").inner_text()) <= 601
    expect(output.locator(".fold-toggle")).to_be_visible()
    page.probe.assert_clean()


# --------------------------------------------------------------------------------------------------
# The run's progress is the server's: replay shows what live showed at the same instants.


def progress_at(at_ns: int, percent: float, message: str) -> EventRecord:
    return EventRecord(A.EVENT_PROGRESS, at_ns, {A.PROGRESS_PERCENT: percent, A.PROGRESS_MESSAGE: message})


def test_replay_shows_the_run_progress_live_showed(viewer: Viewer, page: Any) -> None:
    """Nodes report their own per-item progress (90 %, 95 %) while the workflow root reports the run's (40 %,
    then 80 %): the run's bar follows the root live, and replay at the same instants shows the same values."""
    trace, root, items, tail = trace_id(), span_id(), span_id(), span_id()
    second = 1_000_000_000
    t0 = time.time_ns() - 30 * second  # the run spans t0 .. t0 + 10 s
    root_40 = progress_at(t0 + 2 * second, 40.0, "step 2 of 5")
    items_90 = progress_at(t0 + 5 * second, 90.0, "item 9 of 10")
    root_80 = progress_at(t0 + 8 * second, 80.0, "step 4 of 5")
    tail_95 = progress_at(t0 + 9 * second, 95.0, "item 19 of 20")

    def root_span(*events: EventRecord, ended: bool = False) -> SpanRecord:
        return record(
            trace, root, "invoke_workflow batches", kind=A.KIND_WORKFLOW, start=t0, duration_ns=10 * second,
            ended=ended, events=events,
        )  # fmt: skip

    def node_span(span: str, key: str, start_s: float, event: EventRecord, *, ended: bool = False) -> SpanRecord:
        return record(
            trace, span, key, parent=root, start=t0 + int(start_s * second), duration_ns=int(1.5 * second),
            ended=ended, events=(event,), attributes={A.NODE_ID: key},
        )  # fmt: skip

    bar, text = page.locator("#run-progress"), page.locator("#run-progress-text")
    post(viewer, [root_span(root_40)])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(bar).to_have_attribute("aria-valuenow", "40")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    # live: the node's own 90 % is drawn on its node's row, but the run's bar stays at the root's 40 %
    post(viewer, [node_span(items, "items", 3.5, items_90)])
    expect(node(page, "items")).to_have_attribute("data-status", "running")
    expect(page.locator(f'.tl-row[data-span-id="{items}"]')).to_be_visible()
    assert progress(page) == 40
    expect(text).to_have_text("40% · step 2 of 5")
    post(viewer, [node_span(items, "items", 3.5, items_90, ended=True), root_span(root_40, root_80)])
    expect(bar).to_have_attribute("aria-valuenow", "80")
    post(viewer, [node_span(tail, "tail", 8.5, tail_95)])
    expect(node(page, "tail")).to_have_attribute("data-status", "running")
    assert progress(page) == 80
    post(viewer, [node_span(tail, "tail", 8.5, tail_95, ended=True), root_span(root_40, root_80, ended=True)])
    expect(page.locator("#run-status")).to_have_attribute("data-status", "ok")
    expect(bar).to_have_attribute("aria-valuenow", "80")
    expect(text).to_have_text("80% · step 4 of 5")

    # replay works from the recorded envelopes: wait until the history holds the whole run
    def recorded_end() -> bool:
        events = httpx.get(f"{viewer.url}/api/runs/{trace}/events", timeout=10).json()["events"]
        return any(e["type"] == wire.RUN_ENDED for e in events)

    wait_for(recorded_end, what="the run's events in the history")
    page.locator("#replay-toggle").click()
    page.locator('#replay-speed [data-speed="16"]').click()
    expect(page.locator("body")).to_have_attribute("data-replay", "end")
    expect(bar).to_have_attribute("aria-valuenow", "80")  # not the tail's 95 %, the newest event of any span
    expect(text).to_have_text("80% · step 4 of 5")
    page.locator("#replay-scrub").fill("650")  # t0 + 6.5 s: after the node's 90 %, before the root's 80 %
    expect(page.locator("#replay-time")).to_have_text(re.compile(r"^6\.50 s / "))
    expect(bar).to_have_attribute("aria-valuenow", "40")
    expect(text).to_have_text("40% · step 2 of 5")
    page.locator("#replay-scrub").fill("100")  # t0 + 1 s: nothing reported yet
    expect(bar).to_have_attribute("aria-valuenow", "0")
    page.locator("#replay-scrub").fill("1000")
    expect(bar).to_have_attribute("aria-valuenow", "80")
    page.locator("#replay-toggle").click()
    expect(bar).to_have_attribute("aria-valuenow", "80")
    page.probe.assert_clean()


# When each draw that changed the span count began: the start of its animation frame (the page paces the starts;
# when a draw ends depends on how long it took, so end-to-end gaps may be shorter by one draw's time).
WATCH_SPAN_COUNT = """() => {
  window.__drawn = [];
  let frameStart = NaN;
  const raf = window.requestAnimationFrame.bind(window);
  window.requestAnimationFrame = (cb) => raf((t) => { frameStart = performance.now(); return cb(t); });
  new MutationObserver(() => window.__drawn.push([frameStart, Number(document.body.dataset.spanCount)]))
    .observe(document.body, { attributes: true, attributeFilter: ["data-span-count"] });
}"""


def test_a_busy_stream_is_drawn_at_most_ten_times_a_second(viewer: Viewer, page: Any) -> None:
    """Events that pour in are drawn together, at most every 100 ms, and none is left out: drawing on every frame
    that brought an event kept the browser styling, laying out and painting the page instead of drawing frames."""
    trace, root = trace_id(), span_id()
    t0 = time.time_ns()
    post(viewer, [record(trace, root, "invoke_workflow stream", kind=A.KIND_WORKFLOW, start=t0)])
    page.goto(f"{viewer.url}/runs/{trace}")
    page.wait_for_function("() => document.body.dataset.spanCount === '1'")
    page.evaluate(WATCH_SPAN_COUNT)
    n = 150
    for i in range(n):  # one request per span: the events arrive one by one, for a second or more
        post(viewer, [record(trace, span_id(), f"step_{i}", parent=root, start=t0 + i, ended=True)])
    page.wait_for_function(f"() => document.body.dataset.spanCount === '{n + 1}'")
    drawn = page.evaluate("window.__drawn")
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(drawn)]
    assert len(drawn) >= 3, drawn  # drawn while the stream ran, not only at its end
    assert min(gaps) >= 99, f"drawn {len(drawn)} times, gaps {[round(g) for g in gaps]} ms"
    page.probe.assert_clean()
