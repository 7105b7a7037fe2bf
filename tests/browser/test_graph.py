"""The run page's graph in a real Chromium: ELK's layout of the demo workflows, boxes around an agent's tools, labels
that fit, "then" edges between undeclared steps, stable places while a run grows, skipped and cancelled nodes, and
the cost of laying out a large run."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from otelflow.records import SpanRecord
from tests.browser.conftest import ROOT
from tests.browser.test_pages import graph_json, node, post
from tests.viewer.conftest import Viewer, record, span_id, trace_id

pytestmark = pytest.mark.browser

# Runs one demo scenario of otelflow.engine.demo, streamed live to the viewer: argv = viewer url, coroutine, run id.
DEMO = """
import asyncio, sys
import otelflow
from otelflow.engine import demo
from otelflow.engine.instrumentor import EngineInstrumentor

telemetry = otelflow.configure(service_name="graph-test", live=sys.argv[1], otlp=False)
EngineInstrumentor().instrument()
asyncio.run(getattr(demo, sys.argv[2])(pace=0.0, run_id=sys.argv[3]))
telemetry.force_flush(10_000)
telemetry.shutdown()
"""

# Runs examples/04_plain_decorators.py (decorated functions, no declared graph) live: argv = viewer url, run id.
DECORATED = """
import runpy, sys
import otelflow

telemetry = otelflow.configure(service_name="graph-test", live=sys.argv[1], otlp=False)
runpy.run_path("examples/04_plain_decorators.py", run_name="example")["main"](pace=0.05, run_id=sys.argv[2])
telemetry.force_flush(10_000)
telemetry.shutdown()
"""

LAID_OUT = "() => document.getElementById('graph').dataset.layout === 'done'"

# Node boxes and edge polylines in the graph's own coordinates.
GEOMETRY = """() => {
  const nodes = {};
  for (const g of document.querySelectorAll("#graph .gnode")) {
    const m = /translate\\(([-\\d.]+) ([-\\d.]+)\\)/.exec(g.getAttribute("transform"));
    const box = g.querySelector(".gnode-box");
    const label = g.querySelector(".gnode-label");
    nodes[g.dataset.nodeId] = {
      x: Number(m[1]), y: Number(m[2]), w: Number(box.getAttribute("width")), h: Number(box.getAttribute("height")),
      box: g.dataset.box === "1", status: g.dataset.status, label: label.textContent,
      labelX: Number(label.getAttribute("x")), labelW: label.getComputedTextLength(),
      spinnerX: Number(g.querySelector(".gnode-spinner").getAttribute("cx")) - 7,
      title: g.querySelector("title").textContent, stripe: getComputedStyle(g.querySelector(".gnode-stripe")).fill,
    };
  }
  const edges = [];
  for (const e of document.querySelectorAll("#graph .gedge")) {
    const length = e.getTotalLength();
    const points = [];
    for (let d = 0; d <= length; d += 2) { const p = e.getPointAtLength(d); points.push([p.x, p.y]); }
    edges.push({ from: e.dataset.from, to: e.dataset.to, kind: e.getAttribute("class"), points });
  }
  return { nodes, edges };
}"""


def run_script(script: str, *args: str) -> None:
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "none", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, cwd=ROOT, timeout=60, check=False, stdout=subprocess.DEVNULL
    )
    assert done.returncode == 0


def run_demo(viewer: Viewer, scenario: str, run_id: str) -> None:
    run_script(DEMO, viewer.url, scenario, run_id)


def geometry(page: Any) -> dict[str, Any]:
    page.wait_for_function(LAID_OUT)
    result: dict[str, Any] = page.evaluate(GEOMETRY)
    return result


def inside(p: tuple[float, float], n: dict[str, Any], margin: float = 1.0) -> bool:
    return bool(n["x"] + margin < p[0] < n["x"] + n["w"] - margin and n["y"] + margin < p[1] < n["y"] + n["h"] - margin)


def contains(outer: dict[str, Any], inner: dict[str, Any]) -> bool:
    return bool(
        outer["x"] < inner["x"]
        and outer["y"] < inner["y"]
        and inner["x"] + inner["w"] < outer["x"] + outer["w"]
        and inner["y"] + inner["h"] < outer["y"] + outer["h"]
    )


def assert_edges_avoid_nodes(geo: dict[str, Any]) -> None:
    """No edge crosses a node box other than its ends and the boxes drawn around them."""
    nodes = geo["nodes"]
    for edge in geo["edges"]:
        ends = [nodes[edge["from"]], nodes[edge["to"]]]
        for key, n in nodes.items():
            if key in (edge["from"], edge["to"]) or any(contains(n, end) for end in ends):
                continue
            crossing = [p for p in edge["points"] if inside(p, n)]
            assert not crossing, f"edge {edge['from']} -> {edge['to']} crosses {key} at {crossing[0]}"


def assert_labels_fit(geo: dict[str, Any], names: dict[str, str]) -> None:
    """Every label ends inside its box, before the spinner of a running node; the full name is in the node's title."""
    for key, n in geo["nodes"].items():
        end = n["labelX"] + n["labelW"]
        assert end <= n["w"] - 8, f"label of {key} ({n['label']!r}) runs out of its box"
        if n["status"] == A.STATUS_RUNNING:
            assert end <= n["spinnerX"] - 2, f"label of {key} ({n['label']!r}) runs under the spinner"
        assert n["spinnerX"] + 14 < n["w"]
        assert names.get(key, key) in n["title"], (key, n["title"])


def screenshots(page: Any, artifacts: Path, name: str) -> None:
    page.screenshot(path=str(artifacts / f"{name}-1440.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.locator("#zoom-fit").click()
    page.screenshot(path=str(artifacts / f"{name}-390.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})


# --------------------------------------------------------------------------------------------------


def test_parallel_research_is_laid_out_left_to_right_with_each_researchers_tools_inside_it(
    viewer: Viewer, page: Any, artifacts: Path
) -> None:
    run_demo(viewer, "run_parallel_research", "research-1")
    page.goto(f"{viewer.url}/runs/research-1")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "ok")
    expect(page.locator("#graph .gnode")).to_have_count(12)
    geo = geometry(page)
    nodes = geo["nodes"]

    # each search / read_sources pair sits inside the box of its own researcher, which sits inside fan_out
    for source in ("web", "papers", "code"):
        researcher = nodes[f"{source}_researcher"]
        assert researcher["box"]
        for tool in ("search", "read"):
            assert contains(researcher, nodes[f"{source}.{tool}"]), (source, tool)
            assert f"in {source}_researcher" in nodes[f"{source}.{tool}"]["title"]
        assert contains(nodes["fan_out"], researcher)
        assert not contains(researcher, nodes[f"{'code' if source != 'code' else 'web'}.search"])
        expect(node(page, f"{source}.search")).to_have_attribute(
            "aria-label", f"search in {source}_researcher: {A.STATUS_OK}"
        )

    # the data flows read_sources -> researcher run left to right, and no edge crosses a box it does not belong to
    flows = [e for e in geo["edges"] if e["to"].endswith("_researcher")]
    assert len(flows) == 3
    for edge in geo["edges"]:
        xs = [p[0] for p in edge["points"]]
        assert xs[-1] >= xs[0], f"{edge['from']} -> {edge['to']} runs right to left"
    assert_edges_avoid_nodes(geo)
    assert_labels_fit(geo, {})
    assert nodes["research_planner"]["x"] + nodes["research_planner"]["w"] <= nodes["fan_out"]["x"]
    assert nodes["fan_out"]["x"] + nodes["fan_out"]["w"] <= nodes["synthesizer"]["x"]
    screenshots(page, artifacts, "graph-parallel-research")
    page.probe.assert_clean()


def test_a_cancelled_node_is_grey_and_what_never_ran_is_skipped(viewer: Viewer, page: Any) -> None:
    """A run stopped while its analyst thinks (the in-process sink path, which carries the cancelled status)."""
    trace, root, fetch, analyst = trace_id(), span_id(), span_id(), span_id()
    workflow = {"kind": A.KIND_WORKFLOW, "attributes": {A.WORKFLOW_GRAPH: graph_json(["fetch", "analyst", "publish"])}}
    started = time.time_ns()
    viewer.hub.ingest_threadsafe(
        [
            record(trace, root, "invoke_workflow stopped", start=started, **workflow),
            record(trace, fetch, "fetch", parent=root, attributes={A.NODE_ID: "fetch"}, ended=True),
            record(trace, analyst, "analyst", parent=root, attributes={A.NODE_ID: "analyst"}),
        ]
    )
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(node(page, "analyst")).to_have_attribute("data-status", A.STATUS_RUNNING)
    expect(node(page, "publish")).to_have_attribute("data-status", "pending")
    cancelled = [
        replace(
            record(trace, analyst, "analyst", parent=root, attributes={A.NODE_ID: "analyst"}, ended=True),
            status=A.STATUS_CANCELLED,
        ),
        replace(
            record(trace, root, "invoke_workflow stopped", start=started, ended=True, **workflow),
            status=A.STATUS_CANCELLED,
        ),
    ]
    viewer.hub.ingest_threadsafe(cancelled)
    expect(node(page, "analyst")).to_have_attribute("data-status", A.STATUS_CANCELLED)
    expect(node(page, "publish")).to_have_attribute("data-status", "skipped")
    expect(node(page, "publish").locator(".gnode-meta")).to_have_text("agent · skipped")
    geo = geometry(page)
    assert geo["nodes"]["analyst"]["stripe"] == "rgb(156, 163, 175)"  # grey, not the failed red
    assert geo["nodes"]["fetch"]["status"] == A.STATUS_OK
    assert geo["nodes"]["publish"]["stripe"] not in (geo["nodes"]["analyst"]["stripe"], "rgb(107, 114, 128)")
    for entry in ("cancelled", "skipped"):
        expect(page.locator(f".panel-graph .legend .lg-{entry}")).to_have_text(entry)
    page.probe.assert_clean()


def test_a_planned_node_is_pending_while_the_run_runs_and_skipped_once_it_ended(viewer: Viewer, page: Any) -> None:
    trace, root, fetch = trace_id(), span_id(), span_id()
    plan = '{"id":"wf","name":"wf","nodes":[{"id":"fetch","name":"fetch"},{"id":"answer","name":"answer"}],"edges":[]}'
    workflow = {"kind": A.KIND_WORKFLOW, "attributes": {A.WORKFLOW_GRAPH: plan}}
    started = time.time_ns()
    post(viewer, [record(trace, root, "invoke_workflow wf", start=started, **workflow)])
    post(viewer, [record(trace, fetch, "fetch", parent=root, attributes={A.NODE_ID: "fetch"}, ended=True)])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(node(page, "fetch")).to_have_attribute("data-status", A.STATUS_OK)
    expect(node(page, "answer")).to_have_attribute("data-status", "pending")
    post(viewer, [record(trace, root, "invoke_workflow wf", start=started, ended=True, **workflow)])
    expect(node(page, "answer")).to_have_attribute("data-status", "skipped")
    expect(node(page, "answer")).to_have_class("gnode st-skipped kind-node")
    page.probe.assert_clean()


def test_undeclared_steps_are_joined_by_then_edges_and_keep_their_places_as_the_run_grows(
    viewer: Viewer, page: Any, artifacts: Path
) -> None:
    """A workflow without a declared graph: three steps one after another, the second with two tool calls."""
    trace, root = trace_id(), span_id()
    long_name = "summarise_every_retrieved_document_for_the_quarterly_report"
    publish = "publish_to_every_subscriber_list"  # running at the end: its label stops before the spinner
    t0 = time.time_ns() - 60 * 10**9
    second = 10**9
    wf = record(trace, root, "invoke_workflow undeclared", kind=A.KIND_WORKFLOW, start=t0)
    ids = {key: span_id() for key in ("collect", long_name, publish, "lookup", "fetch")}

    def step(key: str, at: int, *, ended: bool, parent: str = root, kind: str = A.KIND_AGENT) -> SpanRecord:
        return record(
            trace, ids[key], key, parent=parent, kind=kind, start=t0 + at * second, ended=ended, duration_ns=second
        )

    post(viewer, [wf, step("collect", 1, ended=False)])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(node(page, "collect")).to_have_attribute("data-status", A.STATUS_RUNNING)
    places = {"collect": geometry(page)["nodes"]["collect"]}
    stages = [  # what is posted, then a node and the status it shows once that arrived
        ([step("collect", 1, ended=True), step(long_name, 3, ended=False)], long_name, A.STATUS_RUNNING),
        ([step("lookup", 4, ended=True, parent=ids[long_name], kind=A.KIND_TOOL)], "lookup", A.STATUS_OK),
        ([step("fetch", 6, ended=False, parent=ids[long_name], kind=A.KIND_TOOL)], "fetch", A.STATUS_RUNNING),
        (
            [step("fetch", 6, ended=True, parent=ids[long_name], kind=A.KIND_TOOL), step(long_name, 3, ended=True)],
            long_name,
            A.STATUS_OK,
        ),
        ([step(publish, 9, ended=False)], publish, A.STATUS_RUNNING),
    ]
    for records, key, status in stages:
        layouts = page.locator("#graph").get_attribute("data-layout-count")
        post(viewer, records)
        expect(node(page, key)).to_have_attribute("data-status", status)
        geo = geometry(page)
        if key == long_name and status == A.STATUS_OK:  # only statuses changed: drawn again, not laid out again
            assert page.locator("#graph").get_attribute("data-layout-count") == layouts
        for drawn, before in places.items():
            now = geo["nodes"][drawn]
            if not now["box"] and not before["box"]:  # a node that became a box grows, it does not travel
                assert abs(now["x"] - before["x"]) < 0.5, (drawn, before, now)
                assert abs(now["y"] - before["y"]) < 0.5, (drawn, before, now)
        places = geo["nodes"]

    expect(node(page, publish)).to_have_attribute("data-status", A.STATUS_RUNNING)
    geo = geometry(page)
    then = {(e["from"], e["to"]) for e in geo["edges"] if "gedge-then" in e["kind"]}
    assert then == {("collect", long_name), (long_name, publish), ("lookup", "fetch")}
    nodes = geo["nodes"]
    assert contains(nodes[long_name], nodes["lookup"])
    assert contains(nodes[long_name], nodes["fetch"])
    assert nodes[long_name]["label"].endswith("…")
    assert len(nodes[long_name]["label"]) < len(long_name)
    assert nodes[publish]["label"].endswith("…")
    assert_labels_fit(geo, {})
    assert_edges_avoid_nodes(geo)
    expect(page.locator("#graph .gedge-then").first).to_have_css("stroke-dasharray", "3px, 5px")
    # the pointer goes through edges and labels to what is under them: only the boxes take clicks (hit testing
    # hundreds of routed strokes after every change kept a browser under a busy stream from drawing frames)
    hit = page.evaluate("""() => {
      const path = document.querySelector("#graph .gedge-then");
      const p = path.getPointAtLength(path.getTotalLength() / 2).matrixTransform(path.getScreenCTM());
      const label = document.querySelector("#graph .gnode-label").getBoundingClientRect();
      const at = (x, y) => document.elementFromPoint(x, y);
      return [at(p.x, p.y).closest(".gedge") !== null, at(label.x + 2, label.y + label.height / 2).tagName];
    }""")
    assert hit == [False, "rect"]
    screenshots(page, artifacts, "graph-undeclared")
    page.probe.assert_clean()


def test_without_its_layout_worker_the_graph_still_shows_every_node(viewer: Viewer, page: Any) -> None:
    """The worker script cannot be loaded (a proxy that blocks it): the simple column layout is used instead."""
    trace, root = trace_id(), span_id()
    workflow = {"kind": A.KIND_WORKFLOW, "attributes": {A.WORKFLOW_GRAPH: graph_json(["plan", "act", "report"])}}
    post(viewer, [record(trace, root, "invoke_workflow blocked", ended=True, **workflow)])
    page.route("**/vendor/elk-worker.min.js", lambda route: route.abort())
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#graph")).to_have_attribute("data-layout", "fallback")
    expect(page.locator("#graph .gnode")).to_have_count(3)
    xs = [
        float(page.locator(f'.gnode[data-node-id="{key}"]').get_attribute("transform").split("(")[1].split()[0])
        for key in ("plan", "act", "report")
    ]
    assert xs[0] < xs[1] < xs[2]  # one column each, left to right
    expect(page.locator("#graph .gnode.st-skipped")).to_have_count(3)
    page.probe.assert_clean()


def test_decorated_functions_show_their_tools_inside_the_agent_and_what_ran_after_it(
    viewer: Viewer, page: Any, artifacts: Path
) -> None:
    """examples/04: an agent calls two tools at once, then a generator node drafts the reply."""
    run_script(DECORATED, viewer.url, "ticket-7")
    page.goto(f"{viewer.url}/runs/ticket-7")
    expect(page.locator("#run-status")).to_have_attribute("data-status", A.STATUS_OK)
    expect(page.locator("#graph .gnode")).to_have_count(4)
    geo = geometry(page)
    nodes = geo["nodes"]
    assert nodes["support_agent"]["box"]
    for tool in ("lookup_customer", "search_orders"):
        assert contains(nodes["support_agent"], nodes[tool])
        assert "in support_agent" in nodes[tool]["title"]
    assert not contains(nodes["support_agent"], nodes["draft_reply"])
    kinds = {(e["from"], e["to"]): e["kind"] for e in geo["edges"]}
    assert ("support_agent", "draft_reply") in kinds  # the data flow, which also says what ran next
    assert ("lookup_customer", "search_orders") not in kinds  # they ran at the same time
    assert ("search_orders", "lookup_customer") not in kinds
    assert_edges_avoid_nodes(geo)
    assert_labels_fit(geo, {})
    screenshots(page, artifacts, "graph-decorated")
    page.probe.assert_clean()


# --------------------------------------------------------------------------------------------------
# A large run: 200 agents of 9 tool calls each (2,000 spans, every one its own node).

LONG_TASKS = """() => {
  window.__longTasks = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__longTasks.push(e.duration); })
    .observe({ type: "longtask", buffered: true });
}"""


def large_run(trace: str, agents: int = 200, tools: int = 9) -> list[SpanRecord]:
    root = span_id()
    t0 = time.time_ns() - 3600 * 10**9
    ms = 10**6
    out = [
        record(trace, root, "invoke_workflow large", kind=A.KIND_WORKFLOW, start=t0, ended=True, duration_ns=3000 * ms)
    ]
    for a in range(agents):
        agent = span_id()
        start = t0 + (a // 10) * 100 * ms  # ten agents at a time
        out.append(
            record(
                trace,
                agent,
                f"invoke_agent agent_{a:03d}",
                parent=root,
                kind=A.KIND_AGENT,
                start=start,
                ended=True,
                duration_ns=95 * ms,
                attributes={A.NODE_ID: f"agent_{a:03d}"},
            )
        )
        for t in range(tools):
            out.append(
                record(
                    trace,
                    span_id(),
                    f"execute_tool tool_{t}",
                    parent=agent,
                    kind=A.KIND_TOOL,
                    start=start + t * 10 * ms,
                    ended=True,
                    duration_ns=9 * ms,
                    attributes={A.NODE_ID: f"agent_{a:03d}.tool_{t}"},
                )
            )
    return out


def test_a_large_run_is_laid_out_in_a_worker(viewer: Viewer, page: Any, artifacts: Path) -> None:
    trace = trace_id()
    spans = large_run(trace)
    assert len(spans) == 2001
    for i in range(0, len(spans), 500):
        post(viewer, spans[i : i + 500])
    page.add_init_script(script=f"({LONG_TASKS})()")
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#graph .gnode")).to_have_count(2000)
    page.wait_for_function(LAID_OUT, timeout=60_000)
    drawn = page.evaluate(
        """() => ({
          tasks: window.__longTasks,
          layoutMs: Number(document.getElementById('graph').dataset.layoutMs),
          applyMs: Number(document.getElementById('graph').dataset.applyMs),
        })"""
    )
    measures = page.evaluate(
        """() => performance.getEntriesByType('measure').filter((m) => m.name.startsWith('graph-'))
          .map((m) => [m.name, Math.round(m.duration)])"""
    )
    longest = max(drawn["tasks"], default=0)
    print(
        f"\nlarge run: ELK round trip {drawn['layoutMs']} ms (in the worker), applying it {drawn['applyMs']} ms, "
        f"graph steps {measures}, longest main-thread task {longest:.0f} ms ({len(drawn['tasks'])} over 50 ms)"
    )
    # ELK's seconds are spent in the worker: the main thread only builds its input and applies its answer
    input_ms = max(ms for name, ms in measures if name == "graph-layout-input")
    assert input_ms < 50
    assert drawn["applyMs"] < 1000  # moving 2,000 drawn nodes; ELK itself takes seconds at this size
    assert drawn["layoutMs"] > drawn["applyMs"]
    geo = geometry(page)
    assert contains(geo["nodes"]["agent_007"], geo["nodes"]["agent_007.tool_8"])
    # ten agents at a time: each of the next ten follows the last of them to end, not all ten
    then = [e for e in geo["edges"] if "gedge-then" in e["kind"] and "." not in e["to"]]
    assert sorted(e["to"] for e in then) == [f"agent_{a:03d}" for a in range(10, 200)]
    page.screenshot(path=str(artifacts / "graph-large-1440.png"))
    page.probe.assert_clean()


def steps(trace: str, root: str, t0: int, first: int, count: int) -> list[SpanRecord]:
    """Agents ``step_<first>`` … under ``root``, one after another (2 s apart, 1 s each): a chain of "then" edges."""
    second = 10**9
    return [
        record(
            trace,
            span_id(),
            f"step_{i:02d}",
            parent=root,
            kind=A.KIND_AGENT,
            start=t0 + 2 * i * second,
            ended=True,
            duration_ns=second,
        )
        for i in range(first, first + count)
    ]


def laid_out_after(page: Any, count: str | None) -> str:
    """Waits for a layout after the ``count``-th (``data-layout-count``) to be done; returns its count."""
    page.wait_for_function(
        "(c) => { const g = document.getElementById('graph'); return g.dataset.layoutCount !== c"
        " && g.dataset.layout === 'done'; }",
        arg=count,
    )
    return str(page.locator("#graph").get_attribute("data-layout-count"))


ALL_SHOWN = """() => {
  const wrap = document.getElementById("graph-wrap").getBoundingClientRect();
  return [...document.querySelectorAll("#graph .gnode")].every((g) => {
    const r = g.getBoundingClientRect();
    return r.left >= wrap.left - 1 && r.top >= wrap.top - 1 && r.right <= wrap.right + 1 && r.bottom <= wrap.bottom + 1;
  });
}"""


def test_a_growing_run_keeps_its_view_while_it_fits_and_is_fitted_again_once_it_does_not(
    viewer: Viewer, page: Any
) -> None:
    """Each change of the view's transform makes the browser raster the whole graph again: while a run grows, the
    view moves only when the graph no longer fits it."""
    trace, root = trace_id(), span_id()
    t0 = time.time_ns() - 600 * 10**9
    wf = record(trace, root, "invoke_workflow growing", kind=A.KIND_WORKFLOW, start=t0)

    def agents(first: int, count: int) -> list[SpanRecord]:
        return steps(trace, root, t0, first, count)

    post(viewer, [wf, *agents(0, 20)])
    page.goto(f"{viewer.url}/runs/{trace}")
    count = laid_out_after(page, None)
    page.wait_for_function("() => document.getElementById('graph-view').hasAttribute('transform')")
    first = page.locator("#graph-view").get_attribute("transform")

    post(viewer, agents(20, 20))  # twice as many steps: the graph no longer fits, so it is fitted again
    expect(node(page, "step_39")).to_have_attribute("data-status", A.STATUS_OK)
    count = laid_out_after(page, count)
    page.wait_for_function(ALL_SHOWN)
    view = page.locator("#graph-view").get_attribute("transform")
    assert view != first

    post(viewer, agents(40, 1))  # one more: it fits in the room left for growth, and the view stays
    expect(node(page, "step_40")).to_have_attribute("data-status", A.STATUS_OK)
    laid_out_after(page, count)
    assert page.evaluate(ALL_SHOWN)
    assert page.locator("#graph-view").get_attribute("transform") == view
    page.probe.assert_clean()


FADING = """() => [...document.querySelectorAll("#graph .gnode-box")].map(
  (el) => getComputedStyle(el).transitionDuration)"""
SPINNING = """() => [...document.querySelectorAll("#graph .gnode.st-running .gnode-spinner")].map(
  (el) => getComputedStyle(el).animationName)"""


def test_spinners_stand_still_when_many_nodes_run(viewer: Viewer, page: Any) -> None:
    """Each turning spinner costs the browser work on every frame: past 24 running nodes they stand still, and the
    boxes still say running; their colours then change without fading (a fading box repaints on every frame)."""
    trace, root = trace_id(), span_id()
    t0 = time.time_ns() - 60 * 10**9
    wf = record(trace, root, "invoke_workflow busy", kind=A.KIND_WORKFLOW, start=t0)
    ids = [span_id() for _ in range(30)]

    def agent(i: int, *, ended: bool) -> SpanRecord:
        return record(trace, ids[i], f"worker_{i:02d}", parent=root, kind=A.KIND_AGENT, start=t0, ended=ended)

    post(viewer, [wf, *(agent(i, ended=False) for i in range(3))])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(node(page, "worker_02")).to_have_attribute("data-status", A.STATUS_RUNNING)
    assert page.evaluate(SPINNING) == ["spin"] * 3

    post(viewer, [agent(i, ended=False) for i in range(3, 30)])
    expect(node(page, "worker_29")).to_have_attribute("data-status", A.STATUS_RUNNING)
    page.wait_for_function(
        f"() => {{ const s = ({SPINNING})(); return s.length === 30 && s.every((n) => n === 'none'); }}"
    )
    assert set(page.evaluate(FADING)) == {"0s"}

    post(viewer, [agent(i, ended=True) for i in range(25)])  # five left running: they turn again
    expect(node(page, "worker_24")).to_have_attribute("data-status", A.STATUS_OK)
    page.wait_for_function(
        f"() => {{ const s = ({SPINNING})(); return s.length === 5 && s.every((n) => n === 'spin'); }}"
    )
    assert "0s" not in set(page.evaluate(FADING))
    page.probe.assert_clean()


INFINITE_ANIMATIONS = """() => document.getAnimations()
  .filter((a) => a.effect && a.effect.getComputedTiming().iterations === Infinity)
  .filter((a) => !(a.effect.target instanceof SVGElement))
  .map((a) => ({
    on: `${a.effect.target.id || a.effect.target.className}${a.effect.pseudoElement || ""}`,
    props: [...new Set(a.effect.getKeyframes().flatMap((k) => Object.keys(k)))]
      .filter((p) => !["offset", "computedOffset", "easing", "composite"].includes(p)),
  }))"""


def test_a_busy_run_page_keeps_the_browser_painting_little(viewer: Viewer, page: Any) -> None:
    """Under a busy run the browser's paint and raster, not the page's script, kept it from drawing frames: the page's
    endless animations (the running progress bar, the status chip) move only what the compositor moves on its own
    (transform, opacity), and a parent's edges to children drawn elsewhere are solid lines (their dashes took most of
    the raster time)."""
    trace, root = trace_id(), span_id()
    t0 = time.time_ns() - 10 * 10**9
    wf = record(trace, root, "invoke_workflow busy", kind=A.KIND_WORKFLOW, start=t0)
    agents = [span_id() for _ in range(2)]
    spans = [wf]
    for i, aid in enumerate(agents):
        spans.append(record(trace, aid, f"invoke_agent a{i}", parent=root, kind=A.KIND_AGENT, start=t0, ended=False))
        spans.append(
            record(trace, span_id(), "execute_tool search", parent=aid, kind=A.KIND_TOOL, start=t0 + 1000, ended=True)
        )
    post(viewer, spans)
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(node(page, "search")).to_have_attribute("data-status", A.STATUS_OK)
    expect(page.locator("#run-progress")).to_have_attribute("data-status", A.STATUS_RUNNING)
    animations = page.evaluate(INFINITE_ANIMATIONS)
    assert any("progress" in a["on"] for a in animations), animations  # the bar does move
    assert all(set(a["props"]) <= {"transform", "opacity"} for a in animations), animations
    dashes = page.evaluate(
        "() => [...document.querySelectorAll('#graph .gedge-contains')].map((e) => getComputedStyle(e).strokeDasharray)"
    )
    assert dashes, "no contains edge drawn"
    assert set(dashes) == {"none"}, dashes
    page.probe.assert_clean()


WATCH_META = """(key) => {
  window.__ticks = [];
  if (window.__watch) window.__watch.disconnect();
  window.__watch = new MutationObserver(() => window.__ticks.push(performance.now()));
  const meta = document.querySelector(`.gnode[data-node-id="${key}"] .gnode-meta`);
  window.__watch.observe(meta, { childList: true, characterData: true, subtree: true });
}"""


def test_many_running_nodes_tick_their_durations_once_a_second(viewer: Viewer, page: Any) -> None:
    """Past 24 running nodes their durations change once a second, not four times: each change repaints the graph."""
    trace, root = trace_id(), span_id()
    t0 = time.time_ns() - 2 * 10**9  # durations under 10 s show hundredths, so each tick changes the text
    wf = record(trace, root, "invoke_workflow busy", kind=A.KIND_WORKFLOW, start=t0)

    def agents(count: int) -> list[SpanRecord]:
        return [
            record(trace, span_id(), f"worker_{i:02d}", parent=root, kind=A.KIND_AGENT, start=t0) for i in range(count)
        ]

    post(viewer, [wf, *agents(3)])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(node(page, "worker_02")).to_have_attribute("data-status", A.STATUS_RUNNING)
    page.evaluate(WATCH_META, "worker_00")
    page.wait_for_function("() => window.__ticks.length >= 4")
    few = page.evaluate("window.__ticks")
    assert min(b - a for a, b in itertools.pairwise(few)) < 500, few  # a few running nodes: several times a second

    post(viewer, agents(30)[3:])
    expect(node(page, "worker_29")).to_have_attribute("data-status", A.STATUS_RUNNING)
    page.wait_for_function("() => document.getElementById('graph').classList.contains('calm')")
    page.evaluate(WATCH_META, "worker_00")
    page.wait_for_function("() => window.__ticks.length >= 4")
    many = page.evaluate("window.__ticks")
    gaps = [b - a for a, b in itertools.pairwise(many)]
    assert min(gaps) >= 900, [round(g) for g in gaps]
    page.probe.assert_clean()


def test_a_run_too_big_to_show_whole_keeps_its_view_as_it_grows(viewer: Viewer, page: Any) -> None:
    """At the smallest scale a graph that does not fit is not fitted again on each new node (which would only move
    it about and make the browser raster all of it again): the view stays where it is."""
    trace, root = trace_id(), span_id()
    t0 = time.time_ns() - 600 * 10**9
    wf = record(trace, root, "invoke_workflow long", kind=A.KIND_WORKFLOW, start=t0)

    def more(first: int, count: int) -> list[SpanRecord]:
        return steps(trace, root, t0, first, count)

    post(viewer, [wf, *more(0, 80)])
    page.goto(f"{viewer.url}/runs/{trace}")
    page.wait_for_function(LAID_OUT)
    page.wait_for_function(
        "() => / scale\\(0\\.0800\\)/.test(document.getElementById('graph-view').getAttribute('transform'))"
    )
    view = page.locator("#graph-view").get_attribute("transform")
    count = page.locator("#graph").get_attribute("data-layout-count")

    post(viewer, more(80, 3))
    expect(node(page, "step_82")).to_have_attribute("data-status", A.STATUS_OK)
    laid_out_after(page, count)
    assert page.locator("#graph-view").get_attribute("transform") == view
    page.probe.assert_clean()
