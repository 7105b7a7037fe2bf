"""The run page's timeline and details in a real Chromium: rows in view only, time axis, zoom and pan, collapse,
search, name filter, a page waiting for its run, the cancelled status, attribute keys, phones."""

from __future__ import annotations

import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from otelflow import wire
from otelflow.records import EventRecord, SpanRecord
from tests.browser.test_pages import post
from tests.browser.test_run_page import finished_run
from tests.viewer.conftest import Viewer, record, span_id, trace_id, wait_for

pytestmark = pytest.mark.browser

GREY = "rgb(107, 114, 128)"  # cancelled bars in style.css
RED_TEXT = "rgb(255, 139, 139)"  # failed chips


def rows(page: Any) -> Any:
    return page.locator(".tl-row")


def ticks(page: Any) -> list[str]:
    texts: list[str] = page.locator("#tl-ticks .tl-tick").all_inner_texts()
    return texts


def test_a_5000_span_timeline_keeps_only_the_rows_in_view(viewer: Viewer, page: Any) -> None:
    trace, root = trace_id(), span_id()
    t0 = time.time_ns() - 60_000_000_000
    spans = [
        record(trace, root, "invoke_workflow wide", kind=A.KIND_WORKFLOW, start=t0, ended=True, duration_ns=10**10)
    ]
    agents = [span_id() for _ in range(50)]
    for a, agent in enumerate(agents):
        spans.append(
            record(trace, agent, f"agent_{a}", parent=root, kind=A.KIND_AGENT, start=t0 + a * 10**6, ended=True)
        )
    for i in range(5000 - len(spans)):
        spans.append(
            record(
                trace,
                span_id(),
                f"tool_{i}",
                parent=agents[i % 50],
                kind=A.KIND_TOOL,
                start=t0 + 10**8 + i * 10**6,
                ended=True,
            )
        )
    for i in range(0, len(spans), 1000):
        post(viewer, spans[i : i + 1000])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#timeline-scale")).to_contain_text("5,000 spans")
    count = rows(page).count()
    assert 10 < count < 200, count
    # scrolled to the end, the last row (the last tool of the last agent) is drawn, still without the others
    last_of_last_agent = max(
        (s for s in spans if s.parent_span_id == agents[-1]), key=lambda s: s.start_time_ns
    ).span_id
    page.locator("#timeline").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(page.locator(f'.tl-row[data-span-id="{last_of_last_agent}"]')).to_be_visible()
    assert rows(page).count() < 200
    page.probe.assert_clean()


def test_time_axis_zoom_pan_and_back_to_the_whole_run(viewer: Viewer, page: Any, artifacts: Path) -> None:
    trace, _ = finished_run(viewer, seconds=12.0)
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(rows(page)).to_have_count(8)
    labels = ticks(page)
    assert labels[0] == "0 s", labels
    assert all(re.fullmatch(r"\d+(\.\d+)? s", label) for label in labels), labels
    assert "10 s" in labels, labels
    step = float(page.locator("#tl-ticks").get_attribute("data-step") or 0)
    expect(page.locator("#tl-zoom-reset")).to_be_hidden()

    # wheel on the axis zooms in around the pointer: a finer step, and a way back
    axis = page.locator("#tl-ticks").bounding_box()
    page.mouse.move(axis["x"] + axis["width"] * 0.5, axis["y"] + axis["height"] / 2)
    page.mouse.wheel(0, -600)
    expect(page.locator("#tl-zoom-reset")).to_be_visible()
    page.wait_for_function(
        "step => Number(document.getElementById('tl-ticks').dataset.step) < step", arg=step, polling="raf"
    )
    assert ticks(page)[0] != "0 s"  # the window no longer starts at the run's start
    before = ticks(page)

    # dragging a track pans: the labels move on to later times
    track = page.locator(".tl-row .tl-track").first.bounding_box()
    y = track["y"] + track["height"] / 2
    page.mouse.move(track["x"] + track["width"] * 0.8, y)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] * 0.4, y, steps=5)
    page.mouse.up()
    page.wait_for_function(
        "first => document.querySelector('#tl-ticks .tl-tick').textContent !== first", arg=before[0], polling="raf"
    )
    page.screenshot(path=str(artifacts / "timeline-zoomed-1440.png"))

    page.locator("#tl-zoom-reset").click()
    expect(page.locator("#tl-zoom-reset")).to_be_hidden()
    assert ticks(page) == labels
    page.probe.assert_clean()


def test_subtrees_collapse_and_expand(viewer: Viewer, page: Any) -> None:
    trace, ids = finished_run(viewer)
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(rows(page)).to_have_count(8)
    write = page.locator(f'.tl-row[data-span-id="{ids["write"]}"]')
    expect(write).to_have_attribute("aria-expanded", "true")
    write.locator(".tl-toggle").click()
    expect(write).to_have_attribute("aria-expanded", "false")
    expect(page.locator(f'.tl-row[data-span-id="{ids["fact_check"]}"]')).to_have_count(0)
    expect(rows(page)).to_have_count(7)
    root_row = rows(page).first
    root_row.locator(".tl-toggle").click()
    expect(rows(page)).to_have_count(1)
    expect(page.locator("#timeline-scale")).to_contain_text("8 spans")  # the filters show them all
    # the keyboard opens it again (ArrowRight on the row); the write subtree stays as it was left
    root_row.focus()
    page.keyboard.press("ArrowRight")
    expect(rows(page)).to_have_count(7)
    page.probe.assert_clean()


def test_search_finds_spans_by_their_shown_name(viewer: Viewer, page: Any) -> None:
    trace, ids = finished_run(viewer)
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(rows(page)).to_have_count(8)
    page.locator(f'.tl-row[data-span-id="{ids["write"]}"] .tl-toggle').click()
    expect(rows(page)).to_have_count(7)
    search = page.locator("#tl-search")
    search.fill("fact-check")  # the agent's shown name; its span name is "Fact-check claims" too
    expect(page.locator("#timeline-scale")).to_contain_text("1 found")
    search.press("Enter")  # to the match: its collapsed parent opens
    match = page.locator(f'.tl-row[data-span-id="{ids["fact_check"]}"]')
    expect(match).to_have_class(re.compile(r"\btl-match\b"))
    expect(rows(page)).to_have_count(8)
    search.fill("Write the")
    expect(page.locator("#timeline-scale")).to_contain_text("1 found")
    expect(page.locator(".tl-row.tl-match")).to_have_count(1)
    page.probe.assert_clean()


def test_name_filter_matches_the_name_the_page_shows(viewer: Viewer, page: Any) -> None:
    trace, root, tool, agent = trace_id(), span_id(), span_id(), span_id()
    post(
        viewer,
        [
            record(trace, root, "invoke_workflow names", kind=A.KIND_WORKFLOW, ended=True),
            record(trace, agent, "invoke_agent a17", parent=root, kind=A.KIND_AGENT, ended=True,
                   attributes={A.GEN_AI_AGENT_NAME: "Researcher"}),
            record(trace, tool, "execute_tool search", parent=agent, kind=A.KIND_TOOL, ended=True,
                   attributes={A.GEN_AI_TOOL_NAME: "web_search"}),
        ],
    )  # fmt: skip
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(rows(page)).to_have_count(3)
    name = page.locator("#span-filters input[name=name]")
    name.fill("web_search")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_have_attribute("data-span-id", tool)
    name.fill("researcher")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first.locator(".tl-name")).to_have_text("Researcher")
    name.fill("execute_tool")  # the full span name still matches
    expect(rows(page)).to_have_count(1)
    page.probe.assert_clean()


def test_a_page_opened_before_its_run_waits_and_fills_in(viewer: Viewer, page: Any) -> None:
    alias = f"job-{span_id()[:6]}"
    page.goto(f"{viewer.url}/runs/{alias}")
    chip = page.locator("#run-status")
    expect(chip).to_have_attribute("data-status", "waiting")
    expect(chip).to_have_text(f"waiting for run {alias}…")
    assert chip.evaluate("el => getComputedStyle(el).color") != RED_TEXT
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")

    trace, root, child = trace_id(), span_id(), span_id()
    post(viewer, [record(trace, root, "invoke_workflow late", kind=A.KIND_WORKFLOW, run_id=alias)])
    expect(chip).to_have_attribute("data-status", "running")
    expect(page.locator("#run-name")).to_have_text("late")
    expect(page.locator("#run-trace")).to_have_text(trace)
    post(viewer, [record(trace, child, "fetch", parent=root, attributes={A.NODE_ID: "fetch"})])
    expect(rows(page)).to_have_count(2)
    page.probe.assert_clean()


def cancelled_run(viewer: Viewer) -> tuple[str, str, str, str]:
    """A run whose root and one node were cancelled and another node failed, as the embedded viewer records it."""
    trace, root, stopped, failed = trace_id(), span_id(), span_id(), span_id()
    now = time.time_ns()

    def ended(span: str, name: str, status: str, **kw: Any) -> SpanRecord:
        return replace(record(trace, span, name, ended=True, start=now, duration_ns=2_000_000_000, **kw), status=status)

    records = [
        ended(root, "invoke_workflow stoppable", A.STATUS_CANCELLED, kind=A.KIND_WORKFLOW),
        ended(stopped, "slow", A.STATUS_CANCELLED, parent=root, attributes={A.NODE_ID: "slow"}),
        ended(failed, "broken", A.STATUS_ERROR, parent=root, attributes={A.NODE_ID: "broken"}),
    ]
    viewer.call(lambda: viewer.hub.ingest(records))
    return trace, root, stopped, failed


def test_cancelled_is_shown_neutral_and_counted_apart_from_failures(viewer: Viewer, page: Any) -> None:
    trace, _root, stopped, failed = cancelled_run(viewer)
    page.goto(f"{viewer.url}/runs/{trace}")
    row = page.locator(f'.tl-row[data-span-id="{stopped}"]')
    expect(row).to_have_attribute("data-status", A.STATUS_CANCELLED)
    expect(row.locator(".tl-bar")).to_have_css("background-color", GREY)
    expect(page.locator(f'.tl-row[data-span-id="{failed}"]')).to_have_attribute("data-status", A.STATUS_ERROR)
    expect(page.locator("#timeline-scale")).to_contain_text("1 failed · 2 cancelled")
    run_chip = page.locator("#run-status")
    expect(run_chip).to_have_attribute("data-status", A.STATUS_CANCELLED)
    expect(run_chip).to_have_text("cancelled")
    assert run_chip.evaluate("el => getComputedStyle(el).color") != RED_TEXT
    row.click()
    chip = page.locator("#inspector .chip")
    expect(chip).to_have_text("cancelled")
    assert chip.evaluate("el => getComputedStyle(el).color") != RED_TEXT
    page.locator("#span-filters select[name=status]").select_option(label="Cancelled")
    expect(rows(page)).to_have_count(2)
    page.probe.assert_clean()


# Every text piece of an attribute key stays on one line: keys wrap only where a <wbr> lets them (dots, underscores).
KEY_PIECES_UNBROKEN = """th => [...th.childNodes].filter((n) => n.nodeType === Node.TEXT_NODE).every((n) => {
  const range = document.createRange();
  range.selectNodeContents(n);
  const tops = new Set([...range.getClientRects()].map((r) => Math.round(r.top)));
  return tops.size === 1;
})"""


def test_attribute_keys_wrap_only_between_words(viewer: Viewer, page: Any) -> None:
    trace, root, child = trace_id(), span_id(), span_id()
    key = "app.request_settings.model_fallback_order.second_choice"
    post(
        viewer,
        [
            record(trace, root, "invoke_workflow keys", kind=A.KIND_WORKFLOW),
            record(trace, child, "invoke_agent keys", parent=root, kind=A.KIND_AGENT, ended=True,
                   attributes={A.NODE_ID: "keys", key: "gpt-4o-mini", "gen_ai.request.model": "gpt-4o"}),
        ],
    )  # fmt: skip
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{viewer.url}/runs/{trace}")
    page.locator(f'.tl-row[data-span-id="{child}"]').click()
    th = page.locator(".attr-table th", has_text="second_choice")
    expect(th).to_have_text(key)
    assert th.evaluate("th => th.getBoundingClientRect().height > 20")  # too long for one line: it wraps ...
    assert th.evaluate(KEY_PIECES_UNBROKEN)  # ... but never inside a word
    page.probe.assert_clean()


OVERFLOW_IN_MAIN = """() => {
  const width = window.innerWidth;
  const out = [];
  for (const el of document.querySelectorAll("main *")) {
    if (el.offsetParent === null || el.closest(".panel-graph svg, .tl-rows, .logs")) continue;
    const r = el.getBoundingClientRect();
    const what = `${el.tagName.toLowerCase()}#${el.id}.${el.className}`;
    if (r.width && r.right > width + 1) out.push(`${what}: ${Math.round(r.right)}`);
  }
  const main = document.querySelector("main");
  if (main.scrollWidth > main.clientWidth + 1) out.push(`main scrolls sideways: ${main.scrollWidth}`);
  return out;
}"""


def test_phone_layout_stacks_the_panels_without_sideways_overflow(viewer: Viewer, page: Any, artifacts: Path) -> None:
    trace, _ = finished_run(viewer)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#run-status")).to_have_attribute("data-status", "ok")
    expect(rows(page)).to_have_count(8)
    assert page.evaluate(OVERFLOW_IN_MAIN) == []
    lefts = page.locator(".run-grid > .panel").evaluate_all(
        "els => els.map(e => Math.round(e.getBoundingClientRect().left))"
    )
    assert len(set(lefts)) == 1, lefts  # one column
    export = page.locator("#export")
    export.scroll_into_view_if_needed()
    expect(export).to_be_in_viewport()
    box = export.bounding_box()
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 390
    page.screenshot(path=str(artifacts / "run-phone-390.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})
    page.screenshot(path=str(artifacts / "run-desktop-1440.png"), full_page=True)
    page.probe.assert_clean()


def test_empty_logs_give_their_room_to_the_timeline_which_resizes(viewer: Viewer, page: Any) -> None:
    trace, root = trace_id(), span_id()
    children = [
        record(trace, span_id(), f"step_{i}", parent=root, attributes={A.NODE_ID: f"step_{i}"}, ended=True)
        for i in range(30)
    ]
    post(viewer, [record(trace, root, "invoke_workflow quiet", kind=A.KIND_WORKFLOW, ended=True), *children])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#timeline-scale")).to_contain_text("31 spans")
    logs = page.locator(".panel-logs")
    expect(logs).to_have_attribute("data-empty", "true")
    height = lambda sel: page.locator(sel).evaluate("el => el.getBoundingClientRect().height")  # noqa: E731
    assert height(".panel-logs") < 70
    timeline = height(".panel-timeline")
    assert timeline > 0.34 * 900 + 150, timeline  # its own 34 vh and most of the logs' 230 px
    # the splitter under the timeline: drag it down, the timeline grows by as much
    page.locator("#tl-splitter").scroll_into_view_if_needed()
    handle = page.locator("#tl-splitter").bounding_box()
    x, y = handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x, y + 120, steps=4)
    page.mouse.up()
    assert abs(height(".panel-timeline") - (timeline + 120)) < 3
    page.probe.assert_clean()


def test_live_header_ticks_and_replay_keeps_the_whole_run_on_the_axis(viewer: Viewer, page: Any) -> None:
    trace, root = trace_id(), span_id()
    post(viewer, [record(trace, root, "invoke_workflow ticking", kind=A.KIND_WORKFLOW, start=time.time_ns() - 10**9)])
    page.goto(f"{viewer.url}/runs/{trace}")
    scale = page.locator("#timeline-scale")
    expect(scale).to_contain_text("1 span · ")
    first = scale.inner_text()
    page.wait_for_function(
        "first => document.getElementById('timeline-scale').textContent !== first", arg=first, timeout=5000
    )  # no event arrived: the run's time goes on
    expect(page.locator("#tl-now")).to_be_visible()

    trace, _ = finished_run(viewer, seconds=12.0)
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(rows(page)).to_have_count(8)
    whole = ticks(page)

    def recorded() -> bool:
        events = httpx.get(f"{viewer.url}/api/runs/{trace}/events", timeout=10).json()["events"]
        return any(e["type"] == wire.RUN_ENDED for e in events)

    wait_for(recorded, what="the run's events in the history")
    page.locator("#replay-toggle").click()
    expect(page.locator("body")).to_have_attribute("data-replay", "playing")
    page.locator("#replay-play").click()
    page.locator("#replay-scrub").fill("100")  # early in the run: most spans have not started
    expect(page.locator("#replay-time")).to_have_text(re.compile(r"^1\.20 s / "))
    assert ticks(page) == whole  # the axis still spans the whole run
    page.locator("#replay-scrub").fill("1000")  # the end: the now line at the right edge, its label inside
    expect(page.locator("body")).to_have_attribute("data-replay", "end")
    label = page.locator("#tl-now-label")
    expect(label).to_have_text("replay")
    right = page.locator(".panel-timeline").evaluate("el => el.getBoundingClientRect().right")
    assert label.evaluate("el => el.getBoundingClientRect().right") <= right
    page.probe.assert_clean()


def test_log_lines_stay_few_in_the_dom(viewer: Viewer, page: Any) -> None:
    trace, root, worker = trace_id(), span_id(), span_id()
    now = time.time_ns()
    events = tuple(
        EventRecord(A.EVENT_LOG, now + i * 1000, {A.LOG_LEVEL: "info", A.LOG_MESSAGE: f"line {i}"}) for i in range(3000)
    )
    post(viewer, [record(trace, root, "invoke_workflow chatty", kind=A.KIND_WORKFLOW, start=now)])
    post(viewer, [record(trace, worker, "invoke_agent talker", parent=root, kind=A.KIND_AGENT, events=events)])
    page.goto(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#log-count")).to_have_text("3000 lines")
    expect(page.locator(".log", has_text="line 2999")).to_be_visible()  # following: the newest line in view
    assert page.locator(".log").count() < 100
    page.locator("#logs").evaluate("el => { el.scrollTop = 0; }")
    expect(page.locator(".log", has_text=re.compile(r"^.*line 0$"))).to_be_visible()
    assert page.locator(".log").count() < 100
    page.probe.assert_clean()
