"""The viewer's pages in a real Chromium: live updates from a real workflow process, fallbacks, restarts, replay."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from otelflow.records import EventRecord, SpanRecord
from otelflow.viewer.pages import CONTENT_SECURITY_POLICY
from tests.browser.conftest import Workflow, start_viewer_on
from tests.viewer.conftest import Viewer, record, span_id, trace_id, wait_for

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"
NODE_ORDER = ("Plan", "Research", "Write", "Review")


def node(page: Any, key: str) -> Any:
    return page.locator(f'.gnode[data-node-id="{key}"]')


def expect_statuses(page: Any, statuses: dict[str, str]) -> None:
    for key, status in statuses.items():
        expect(node(page, key)).to_have_attribute("data-status", status)


def progress(page: Any) -> int:
    return int(page.locator("#run-progress").get_attribute("aria-valuenow") or 0)


def span_rows(page: Any) -> list[str]:
    ids: list[str] = page.locator(".tl-row").evaluate_all("rows => rows.map(r => r.dataset.spanId)")
    return ids


def server_span_ids(viewer: Viewer, trace: str) -> list[str]:
    data = httpx.get(f"{viewer.url}/api/runs/{trace}", timeout=10).json()
    return sorted(s["span_id"] for s in data["spans"])


def assert_exactly_the_gated_run(page: Any, viewer: Viewer, trace: str) -> None:
    """The page shows the finished gated run with exactly the server's spans and no log line twice."""
    expected = server_span_ids(viewer, trace)
    assert len(expected) == 5
    expect(page.locator(".tl-row")).to_have_count(5)
    assert sorted(span_rows(page)) == expected
    expect_statuses(page, dict.fromkeys(NODE_ORDER, "ok"))
    keys = page.locator(".log").evaluate_all("els => els.map(e => e.dataset.key)")
    assert len(keys) == len(set(keys)) == 4


def post(viewer: Viewer, records: list[SpanRecord]) -> None:
    assert viewer.post_json(records).status_code == 200


def graph_json(keys: list[str]) -> str:
    nodes = [{"id": k, "name": k, "kind": "agent", "type": "node"} for k in keys]
    edges = [{"from": a, "to": b, "action": "default"} for a, b in itertools.pairwise(keys)]
    return json.dumps({"id": "wf", "name": "wf", "nodes": nodes, "edges": edges})


# --------------------------------------------------------------------------------------------------


def test_live_run_colours_progress_and_logs(
    viewer: Viewer, page: Any, workflow: Callable[[str], Workflow], artifacts: Path
) -> None:
    wf = workflow(viewer.url)
    assert wf.wait_node() == "Plan"
    page.goto(f"{viewer.url}/runs/{wf.trace_id}")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(page.locator("#conn")).to_have_attribute("data-transport", "SSE")
    # planned nodes that have not started are grey (pending) from the start
    expect_statuses(page, {"Plan": "running", "Research": "pending", "Write": "pending", "Review": "pending"})
    expect(page.locator("#run-status")).to_have_attribute("data-status", "running")
    seen_progress = [progress(page)]

    wf.send("go")
    assert wf.wait_node() == "Research"
    expect_statuses(page, {"Plan": "ok", "Research": "running", "Write": "pending"})
    expect(page.locator("#run-progress")).not_to_have_attribute("aria-valuenow", str(seen_progress[-1]))
    seen_progress.append(progress(page))

    wf.send("go")
    assert wf.wait_node() == "Write"
    expect_statuses(page, {"Research": "ok", "Write": "running", "Review": "pending"})
    wf.send("fail")  # first attempt fails: retried, the node gets a retry badge
    assert wf.wait_node() == "Write"
    expect(node(page, "Write")).to_have_attribute("data-retries", "1")
    expect(node(page, "Write")).to_have_attribute("data-status", "running")
    expect(page.locator('.log[data-level="warning"]')).to_have_count(1)
    seen_progress.append(progress(page))
    node(page, "Write").click()
    expect(page.locator(".insp-name")).to_have_text("Write")
    expect(page.locator("#inspector")).to_contain_text("otelflow.retry")
    page.screenshot(path=str(artifacts / "run-mid.png"))

    wf.send("go")
    assert wf.wait_node() == "Review"
    expect_statuses(page, {"Write": "ok", "Review": "running"})
    wf.send("go")
    wf.finish()
    expect(page.locator("#run-status")).to_have_attribute("data-status", "ok")
    expect_statuses(page, dict.fromkeys(NODE_ORDER, "ok"))
    expect(page.locator("#run-progress")).to_have_attribute("aria-valuenow", "100")
    seen_progress.append(progress(page))
    assert seen_progress == sorted(seen_progress)
    assert seen_progress[0] < seen_progress[-1] == 100

    # every span once in the timeline; every log line once
    expect(page.locator(".tl-row")).to_have_count(len(server_span_ids(viewer, wf.trace_id)))
    assert sorted(span_rows(page)) == server_span_ids(viewer, wf.trace_id)
    keys = page.locator(".log").evaluate_all("els => els.map(e => e.dataset.key)")
    assert len(keys) == len(set(keys)) == 5
    expect(page.locator("#replay-toggle")).to_be_enabled()
    page.screenshot(path=str(artifacts / "run-finished.png"), full_page=True)
    page.probe.assert_clean()


def test_sse_blocked_falls_back_to_websocket(viewer: Viewer, page: Any) -> None:
    trace, root = trace_id(), span_id()
    post(viewer, [record(trace, root, "invoke_workflow fallback", kind=A.KIND_WORKFLOW)])
    page.route("**/api/stream*", lambda route: route.abort())
    page.goto(f"{viewer.url}/runs/{trace}")
    badge = page.locator("#conn")
    expect(badge).to_have_attribute("data-transport", "WebSocket")
    expect(badge).to_have_attribute("data-state", "connected")
    expect(badge).to_contain_text("WebSocket (SSE failed)")
    # live events now arrive over the WebSocket
    child = span_id()
    post(viewer, [record(trace, child, "invoke_agent late", parent=root, kind=A.KIND_AGENT)])
    expect(page.locator(f'.tl-row[data-span-id="{child}"]')).to_have_count(1)
    expect(node(page, "late")).to_have_attribute("data-status", "running")
    post(viewer, [record(trace, child, "invoke_agent late", parent=root, kind=A.KIND_AGENT, ended=True)])
    expect(node(page, "late")).to_have_attribute("data-status", "ok")
    page.probe.assert_clean(allow=("net::ERR_FAILED", "EventSource"))


def test_viewer_restart_mid_run_ends_with_exactly_the_runs_spans(
    page: Any, workflow: Callable[[str], Workflow], tmp_path: Path
) -> None:
    db = tmp_path / "viewer.db"
    first = start_viewer_on(0, db)
    port = first.port
    wf = workflow(first.url)
    assert wf.wait_node() == "Plan"
    page.goto(f"{first.url}/runs/{wf.trace_id}")
    expect(node(page, "Plan")).to_have_attribute("data-status", "running")
    wf.send("go")
    assert wf.wait_node() == "Research"
    expect(node(page, "Research")).to_have_attribute("data-status", "running")

    first.stop()
    expect(page.locator("#conn")).not_to_have_attribute("data-state", "connected")
    wf.send("go")  # Research ends while the viewer is down: the worker's exporter keeps it until it is back
    assert wf.wait_node() == "Write"

    second = start_viewer_on(port, db)
    try:
        expect(page.locator("#conn")).to_have_attribute("data-state", "connected", timeout=20_000)
        expect(node(page, "Write")).to_have_attribute("data-status", "running", timeout=20_000)
        wf.send("go")
        assert wf.wait_node() == "Review"
        wf.send("go")
        wf.finish()
        expect(page.locator("#run-status")).to_have_attribute("data-status", "ok", timeout=20_000)
        assert_exactly_the_gated_run(page, second, wf.trace_id)
    finally:
        second.stop()


def test_span_data_is_rendered_as_text(viewer: Viewer, page: Any) -> None:
    trace, root, child = trace_id(), span_id(), span_id()
    attrs = {"note": XSS, A.INPUT_VALUE: json.dumps({"html": XSS}), A.INPUT_MIME_TYPE: A.MIME_JSON}
    log = EventRecord(A.EVENT_LOG, time.time_ns(), {A.LOG_LEVEL: "info", A.LOG_MESSAGE: XSS})
    post(
        viewer,
        [
            record(trace, root, f"invoke_workflow {XSS}", kind=A.KIND_WORKFLOW, run_id=XSS),
            record(trace, child, XSS, parent=root, attributes=attrs, events=(log,), ended=True, error=True),
        ],
    )
    response = page.goto(f"{viewer.url}/runs/{trace}")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    expect(page.locator("#run-name")).to_have_text(XSS)
    node(page, XSS).click()
    expect(page.locator(".insp-name")).to_have_text(XSS)
    expect(page.locator(".attr-table")).to_contain_text(XSS)
    expect(page.locator(".json-tree").first).to_contain_text(XSS)
    expect(page.locator(".log-msg")).to_have_text(XSS)
    assert page.locator("main img").count() == 0
    page.goto(f"{viewer.url}/")
    expect(page.locator(f'tr[data-run-id="{trace}"] .run-link')).to_have_text(XSS)
    assert page.locator("main img").count() == 0
    page.probe.assert_clean()


def test_replay_reaches_the_final_state(make_viewer: Callable[..., Viewer], page: Any) -> None:
    viewer = make_viewer(jaeger_url="http://jaeger.example:16686")
    keys = ["fetch", "think", "answer"]
    trace, root = trace_id(), span_id()
    t0 = time.time_ns() - 5_000_000_000
    spans = [
        record(
            trace,
            root,
            "invoke_workflow replayed",
            kind=A.KIND_WORKFLOW,
            start=t0,
            duration_ns=1_500_000_000,
            ended=True,
            attributes={A.WORKFLOW_GRAPH: graph_json(keys)},
        )
    ]
    for i, key in enumerate(keys):
        flow = EventRecord(
            A.EVENT_DATA_FLOW,
            t0 + (i + 1) * 450_000_000,
            {A.DATA_FLOW_FROM: key, A.DATA_FLOW_TO: "x", A.DATA_FLOW_BYTES: 9},
        )
        spans.append(
            record(
                trace,
                span_id(),
                f"invoke_agent {key}",
                parent=root,
                kind=A.KIND_AGENT,
                start=t0 + i * 450_000_000 + 10_000_000,
                duration_ns=400_000_000,
                ended=True,
                error=key == "answer",
                events=(flow,),
                attributes={A.NODE_ID: key},
            )
        )
    post(viewer, spans[1:])
    post(viewer, spans[:1])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#jaeger")).to_have_attribute("href", f"http://jaeger.example:16686/trace/{trace}")
    expect(page.locator("#export")).to_have_attribute("href", re.compile(rf"/api/runs/{trace}/export$"))
    expect(page.locator("#replay-toggle")).to_be_enabled()
    page.locator("#replay-toggle").click()
    page.locator('#replay-speed [data-speed="16"]').click()
    expect(page.locator("body")).to_have_attribute("data-replay", "end")
    expect_statuses(page, {"fetch": "ok", "think": "ok", "answer": "error"})
    # scrubbing back shows the state at that time: nothing had run at the start
    page.locator("#replay-scrub").fill("0")
    expect_statuses(page, {"fetch": "pending", "think": "pending", "answer": "pending"})
    page.locator("#replay-scrub").fill("500")
    expect_statuses(page, {"fetch": "ok", "think": "running", "answer": "pending"})
    page.locator("#replay-play").click()
    expect(page.locator("body")).to_have_attribute("data-replay", "end")
    expect_statuses(page, {"fetch": "ok", "think": "ok", "answer": "error"})
    page.locator("#replay-toggle").click()
    expect(page.locator("#run-status")).to_have_attribute("data-status", "ok")
    page.probe.assert_clean()


def test_runs_page_shows_concurrent_runs_live(viewer: Viewer, page: Any, artifacts: Path) -> None:
    runs = [(trace_id(), span_id(), name) for name in ("ingest", "summarise")]
    for trace, root, name in runs:
        post(viewer, [record(trace, root, f"invoke_workflow {name}", kind=A.KIND_WORKFLOW, run_id=f"job-{name}")])
    page.goto(f"{viewer.url}/")
    for trace, _, _ in runs:
        expect(page.locator(f'tr[data-run-id="{trace}"]')).to_have_attribute("data-status", "running")
    # a third run appears live, newest first
    third = (trace_id(), span_id(), "translate")
    post(viewer, [record(third[0], third[1], "invoke_workflow translate", kind=A.KIND_WORKFLOW)])
    expect(page.locator("tbody tr").first).to_have_attribute("data-run-id", third[0])
    # progress and failures move live
    trace, root, _ = runs[0]
    step = span_id()
    progress_event = EventRecord(
        A.EVENT_PROGRESS, time.time_ns(), {A.PROGRESS_PERCENT: 40.0, A.PROGRESS_MESSAGE: "4/10"}
    )
    post(
        viewer,
        [
            record(
                trace,
                step,
                "invoke_agent a",
                parent=root,
                kind=A.KIND_AGENT,
                ended=True,
                error=True,
                events=(progress_event,),
            )
        ],
    )
    row = page.locator(f'tr[data-run-id="{trace}"]')
    expect(row.locator(".progress")).to_have_attribute("aria-valuenow", "40")
    expect(row.locator(".col-failures")).to_have_text("1")
    post(viewer, [record(trace, root, "invoke_workflow ingest", kind=A.KIND_WORKFLOW, ended=True, run_id="job-ingest")])
    expect(row).to_have_attribute("data-status", "ok")
    expect(page.locator('tbody tr[data-status="running"]')).to_have_count(2)
    # a running row's duration ticks
    running = page.locator(f'tr[data-run-id="{runs[1][0]}"] .col-duration')
    before = running.text_content()
    expect(running).not_to_have_text(before or "")
    page.screenshot(path=str(artifacts / "runs.png"))
    page.locator("#run-filters select[name=status]").select_option("running")
    expect(page.locator("tbody tr:visible")).to_have_count(2)
    page.locator("#run-filters select[name=status]").select_option("")
    page.locator("#run-filters input[name=name]").fill("job-summarise")
    expect(page.locator("tbody tr:visible")).to_have_count(1)
    page.locator(f'tr[data-run-id="{runs[1][0]}"] .run-link').click()
    expect(page).to_have_url(f"{viewer.url}/runs/{runs[1][0]}")
    page.probe.assert_clean()


def test_graph_with_200_nodes(viewer: Viewer, page: Any) -> None:
    trace, root = trace_id(), span_id()
    now = time.time_ns()
    children = []
    for i in range(200):
        events: tuple[EventRecord, ...] = ()
        if i % 10:
            events = (EventRecord(A.EVENT_DATA_FLOW, now, {A.DATA_FLOW_FROM: f"n{i - 1}", A.DATA_FLOW_TO: f"n{i}"}),)
        children.append(
            record(
                trace,
                span_id(),
                f"n{i}",
                parent=root,
                attributes={A.NODE_ID: f"n{i}"},
                ended=i % 3 == 0 or i % 17 == 0,
                error=i % 17 == 0,
                events=events,
                start=now + i * 1000,
            )
        )
    post(viewer, [record(trace, root, "invoke_workflow big", kind=A.KIND_WORKFLOW), *children])
    started = time.monotonic()
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#graph .gnode")).to_have_count(200)
    expect(page.locator("#timeline-scale")).to_contain_text("201 spans")  # only the rows in view are in the DOM
    assert time.monotonic() - started < 10
    scale = page.locator("#graph-view").get_attribute("transform") or ""
    assert "scale(" in scale
    page.locator("#zoom-in").click()
    expect(page.locator("#graph-view")).not_to_have_attribute("transform", scale)
    page.locator("#span-filters select[name=status]").select_option("error")
    expect(page.locator(".gnode.dim")).to_have_count(200 - 12)
    expect(page.locator(".tl-row:visible")).to_have_count(12)
    page.probe.assert_clean()


def test_stats_page(viewer: Viewer, page: Any, artifacts: Path) -> None:
    trace, root = trace_id(), span_id()
    spans = [record(trace, root, "invoke_workflow stats", kind=A.KIND_WORKFLOW, ended=True, duration_ns=900_000_000)]
    for i in range(6):
        name = ("invoke_agent planner", "execute_tool search", "summarise")[i % 3]
        kind = (A.KIND_AGENT, A.KIND_TOOL, A.KIND_NODE)[i % 3]
        spans.append(
            record(
                trace,
                span_id(),
                name,
                parent=root,
                kind=kind,
                ended=True,
                error=i == 4,
                duration_ns=(i + 1) * 50_000_000,
            )
        )
    # and a tool that last ran three hours ago: in "All time", not in "Last hour"
    old_start = time.time_ns() - 3 * 3_600 * 10**9
    spans.append(
        record(trace, span_id(), "execute_tool archive", parent=root, kind=A.KIND_TOOL, ended=True, start=old_start)
    )
    post(viewer, spans)
    wait_for(lambda: len(httpx.get(f"{viewer.url}/api/stats", timeout=10).json()["stats"]) == 5, what="stored spans")
    page.goto(f"{viewer.url}/stats")
    expect(page.locator("#stats tbody tr")).to_have_count(5)
    expect(page.locator('#stats tr[data-name="execute_tool search"] td').nth(5)).to_have_text("50%")
    expect(page.locator('#stats tr[data-name="execute_tool search"] td').first).to_have_text("search")
    page.screenshot(path=str(artifacts / "stats.png"))
    page.select_option("#stats-since", "1h")
    expect(page.locator("#stats tbody tr")).to_have_count(4)
    expect(page.locator('#stats tr[data-name="execute_tool archive"]')).to_have_count(0)
    page.probe.assert_clean()


def test_logs_follow_pause_and_keyboard_selection(viewer: Viewer, page: Any, artifacts: Path) -> None:
    trace, root, worker = trace_id(), span_id(), span_id()
    now = time.time_ns()

    def logs(first: int, count: int) -> tuple[EventRecord, ...]:
        return tuple(
            EventRecord(
                A.EVENT_LOG, now + i * 1000, {A.LOG_LEVEL: "debug" if i % 2 else "info", A.LOG_MESSAGE: f"line {i}"}
            )
            for i in range(first, first + count)
        )

    post(viewer, [record(trace, root, "invoke_workflow chatty", kind=A.KIND_WORKFLOW, start=now)])
    post(viewer, [record(trace, worker, "invoke_agent talker", parent=root, kind=A.KIND_AGENT, events=logs(0, 60))])
    page.set_viewport_size({"width": 1280, "height": 760})
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#log-count")).to_have_text("60 lines")  # the list draws the lines in view
    expect(page.locator(".log", has_text="line 59")).to_be_visible()
    at_bottom = "el => el.scrollTop + el.clientHeight >= el.scrollHeight - 24"
    assert page.locator("#logs").evaluate(at_bottom)
    # scrolled up: new lines do not move the view; "jump to latest" brings it back and following resumes
    page.locator("#logs").evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
    expect(page.locator("#log-jump")).to_be_visible()
    post(viewer, [record(trace, worker, "invoke_agent talker", parent=root, kind=A.KIND_AGENT, events=logs(0, 80))])
    expect(page.locator("#log-count")).to_have_text("80 lines")
    expect(page.locator(".log", has_text="line 0").first).to_be_visible()
    assert page.locator("#logs").evaluate("el => el.scrollTop") == 0
    page.locator("#log-jump").click()
    assert page.locator("#logs").evaluate(at_bottom)
    page.locator("#log-level").select_option("info")
    expect(page.locator("#log-count")).to_have_text("40 lines")
    # keyboard: a timeline row is focusable and Enter opens it in the inspector
    page.locator(f'.tl-row[data-span-id="{worker}"]').focus()
    page.keyboard.press("Enter")
    expect(page.locator(".insp-name")).to_have_text("talker")
    page.screenshot(path=str(artifacts / "run-laptop.png"))
    page.probe.assert_clean()
