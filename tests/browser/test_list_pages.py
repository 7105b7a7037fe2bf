"""The runs list, the stats page and the header in a real Chromium, as a user sees them: dates once runs span
two days, older runs paged in by scrolling, the cancelled state, running runs first under a filter, the live and
sortable stats, the duration charts, and the layout of a 390 px wide phone."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from otelflow.records import SpanRecord
from tests.browser.test_pages import post
from tests.viewer.conftest import Viewer, record, span_id, trace_id, wait_for

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}
HOUR_NS = 3_600 * 10**9
CANCELLED_GREY = "rgb(163, 171, 184)"  # .chip[data-status="cancelled"] in style.css
FAILED_RED = "rgb(255, 139, 139)"
TIME_ONLY = re.compile(r"^\d{2}:\d{2}:\d{2}$")

ROW_IDS = "rows => rows.map(r => r.dataset.runId)"
VISIBLE_ROW_IDS = "rows => rows.filter(r => !r.hidden).map(r => r.dataset.runId)"
# a tab whose animation frames do not run (yet): requestAnimationFrame keeps the callbacks, RUN_FRAMES runs them
HOLD_FRAMES = "() => { window.heldFrames = []; window.requestAnimationFrame = (cb) => window.heldFrames.push(cb); }"
RUN_FRAMES = "() => { const f = window.heldFrames.splice(0); f.forEach(cb => cb(performance.now())); return f.length; }"


def run_root(name: str, *, start: int | None = None, ended: bool = True, **kw: Any) -> SpanRecord:
    name = f"invoke_workflow {name}"
    return record(trace_id(), span_id(), name, kind=A.KIND_WORKFLOW, start=start, ended=ended, **kw)


def cancelled(rec: SpanRecord) -> SpanRecord:
    """``rec`` ended by cancellation (a cancelled task, Ctrl-C)."""
    end = rec.end_time_ns or rec.start_time_ns + 1_000_000
    return dataclasses.replace(rec, end_time_ns=end, status=A.STATUS_CANCELLED, status_message="cancelled")


def api_runs(viewer: Viewer, **params: Any) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{viewer.url}/api/runs", params=params, timeout=10).json()
    return data


def assert_on_screen(box: dict[str, float] | None, what: object = "") -> None:
    assert box is not None, what
    assert box["x"] >= 0, (what, box)
    assert box["x"] + box["width"] <= PHONE["width"], (what, box)


def scroll_width(page: Any) -> int:
    width: int = page.evaluate("document.documentElement.scrollWidth")
    return width


# -------------------------------------------------------------------------------------------------- runs list


def test_runs_list_shows_dates_once_the_runs_span_two_days(viewer: Viewer, page: Any, artifacts: Path) -> None:
    today = run_root("today", run_id="job-today")
    post(viewer, [today])
    page.goto(f"{viewer.url}/")
    started = page.locator(f'tr[data-run-id="{today.trace_id}"] .col-started')
    expect(started).to_have_text(TIME_ONLY)  # one day: the time of day is enough

    # a run of yesterday arrives: every start now says its day too
    yesterday = run_root("yesterday", start=time.time_ns() - 26 * HOUR_NS, run_id="job-yesterday")
    post(viewer, [yesterday])
    old = page.locator(f'tr[data-run-id="{yesterday.trace_id}"] .col-started')
    expect(old).to_be_visible()
    expect(page.locator("#runs tbody")).to_have_attribute("data-dates", "true")
    for run, row in ((today, started), (yesterday, old)):
        start_ms = run.start_time_ns / 1e6
        day = page.evaluate("ms => new Date(ms).toLocaleDateString([], {month: 'short', day: 'numeric'})", start_ms)
        expect(row).to_have_text(re.compile(rf"^{re.escape(day)} \d{{2}}:\d{{2}}:\d{{2}}$"))
    assert started.text_content() != old.text_content()
    page.screenshot(path=str(artifacts / "runs-dates.png"))
    page.probe.assert_clean()


def test_scrolling_down_pages_in_older_runs(viewer: Viewer, page: Any) -> None:
    now = time.time_ns()
    roots = [run_root(f"batch-{i:03d}", start=now - i * 10**9) for i in range(250)]  # batch-000 is the newest
    post(viewer, roots)
    wait_for(lambda: api_runs(viewer, limit=1)["total"] == 250, what="250 stored runs")
    newest_first = [r.trace_id for r in roots]

    page.goto(f"{viewer.url}/")
    rows = page.locator("#runs tbody tr")
    expect(rows).to_have_count(100)  # the first page only
    expect(page.locator("#runs-summary")).to_contain_text("100 runs of 250")
    expect(page.locator("#runs-more")).to_have_attribute("data-state", "more")
    assert rows.evaluate_all(ROW_IDS) == newest_first[:100]

    page.locator("#runs-more").scroll_into_view_if_needed()  # the end of the list comes into view
    expect(rows).to_have_count(200)
    expect(page.locator("#runs-more")).to_have_attribute("data-state", "more")  # one page per scroll
    assert rows.count() == 200
    page.locator("#runs-more").scroll_into_view_if_needed()
    expect(rows).to_have_count(250)
    expect(page.locator("#runs-more")).to_have_attribute("data-state", "end")
    expect(page.locator("#runs-older")).to_be_hidden()
    expect(page.locator("#runs-more-text")).to_have_text("No older runs.")
    assert rows.evaluate_all(ROW_IDS) == newest_first  # older pages go below, in order, nothing twice

    # a run that starts now still goes on top
    fresh = run_root("fresh", ended=False)
    post(viewer, [fresh])
    expect(rows.first).to_have_attribute("data-run-id", fresh.trace_id)
    expect(rows).to_have_count(251)
    page.probe.assert_clean()


def test_a_cancelled_run_is_grey_and_filtered_on_its_own(viewer: Viewer, page: Any, artifacts: Path) -> None:
    failed = run_root("broken", error=True, run_id="job-failed")
    stopped = cancelled(run_root("stopped", run_id="job-cancelled"))
    post(viewer, [failed, stopped])  # over OTLP: ERROR "cancelled" reads as cancelled
    wait_for(lambda: api_runs(viewer)["total"] == 2, what="two stored runs")
    page.goto(f"{viewer.url}/")
    row = page.locator(f'tr[data-run-id="{stopped.trace_id}"]')
    chip = row.locator(".chip")
    expect(row).to_have_attribute("data-status", A.STATUS_CANCELLED)
    expect(chip).to_have_text("cancelled")
    expect(chip).to_have_css("color", CANCELLED_GREY)
    failed_chip = page.locator(f'tr[data-run-id="{failed.trace_id}"] .chip')
    expect(failed_chip).to_have_text("failed")
    expect(failed_chip).to_have_css("color", FAILED_RED)
    # its mark at the row's edge is grey too, not the failed red
    edge = row.evaluate("r => getComputedStyle(r).boxShadow")
    assert "139, 147, 161" in edge, edge

    status = page.locator("#run-filters select[name=status]")
    status.select_option(A.STATUS_CANCELLED)
    visible = page.locator("#runs tbody tr:visible")
    expect(visible).to_have_count(1)
    expect(visible).to_have_attribute("data-run-id", stopped.trace_id)
    status.select_option(A.STATUS_ERROR)  # "Failed" does not list it: a cancelled run is not a failure
    expect(visible).to_have_count(1)
    expect(visible).to_have_attribute("data-run-id", failed.trace_id)
    status.select_option(A.STATUS_CANCELLED)
    page.screenshot(path=str(artifacts / "runs-cancelled.png"))
    page.probe.assert_clean()


def test_a_filtered_list_puts_the_runs_running_now_first(viewer: Viewer, page: Any) -> None:
    now = time.time_ns()
    slow = run_root("report", start=now - 60 * 10**9, ended=False, run_id="nightly-1")  # oldest, still running
    done = run_root("report", start=now - 30 * 10**9, run_id="nightly-2")
    newest = run_root("report", start=now - 10 * 10**9, run_id="nightly-3")
    other = run_root("other", start=now - 5 * 10**9, run_id="adhoc-1")
    post(viewer, [slow, done, newest, other])
    page.goto(f"{viewer.url}/")
    rows = page.locator("#runs tbody tr")
    expect(rows).to_have_count(4)
    assert rows.evaluate_all(ROW_IDS) == [other.trace_id, newest.trace_id, done.trace_id, slow.trace_id]

    page.locator("#run-filters input[name=name]").fill("nightly")
    expect(page.locator("#runs tbody tr:visible")).to_have_count(3)
    assert rows.evaluate_all(VISIBLE_ROW_IDS) == [slow.trace_id, newest.trace_id, done.trace_id]
    # the filter cleared: newest first again
    page.locator("#run-filters input[name=name]").fill("")
    expect(page.locator("#runs tbody tr:visible")).to_have_count(4)
    assert rows.evaluate_all(ROW_IDS) == [other.trace_id, newest.trace_id, done.trace_id, slow.trace_id]
    page.probe.assert_clean()


def test_a_run_that_arrives_between_frames_logs_no_error(viewer: Viewer, page: Any) -> None:
    """The duration ticker (every 500 ms) may run before the next animation frame builds a new run's row, and in a
    background tab frames do not run at all."""
    page.clock.install()
    page.goto(f"{viewer.url}/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(page.locator("#now-running")).to_have_text("0 running")
    page.evaluate(HOLD_FRAMES)

    run = run_root("between-frames", ended=False)
    post(viewer, [run])
    expect(page.locator("#now-running")).to_have_text("1 running")  # its run.started is in; no frame has run
    assert page.locator(f'tr[data-run-id="{run.trace_id}"]').count() == 0
    page.clock.run_for(2_000)  # the ticker runs four times meanwhile
    held = page.evaluate(RUN_FRAMES)
    assert held >= 1
    row = page.locator(f'tr[data-run-id="{run.trace_id}"]')
    expect(row).to_have_attribute("data-status", A.STATUS_RUNNING)
    page.clock.run_for(1_000)
    expect(row.locator(".col-duration")).not_to_have_text("–")
    page.probe.assert_clean()


# -------------------------------------------------------------------------------------------------- stats


def tool_spans(trace: str, parent: str, name: str, durations_ms: list[int], **kw: Any) -> list[SpanRecord]:
    return [
        record(trace, span_id(), name, parent=parent, kind=A.KIND_TOOL, ended=True, duration_ns=ms * 10**6, **kw)
        for ms in durations_ms
    ]


def stats_names(page: Any) -> list[str]:
    names: list[str] = page.locator("#stats tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    return names


def test_the_stats_page_follows_runs_as_they_end(viewer: Viewer, page: Any) -> None:
    trace, root = trace_id(), span_id()
    post(viewer, [record(trace, root, "invoke_workflow nightly", kind=A.KIND_WORKFLOW)])
    page.goto(f"{viewer.url}/stats")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(page.locator("#stats-empty")).to_be_visible()
    page.evaluate("() => { window.notReloaded = true; }")

    post(viewer, tool_spans(trace, root, "execute_tool fetch", [40, 60]))
    fetch_row = page.locator('#stats tr[data-name="execute_tool fetch"]')
    expect(fetch_row.locator(".col-count")).to_have_text("2")
    post(viewer, [record(trace, root, "invoke_workflow nightly", kind=A.KIND_WORKFLOW, ended=True)])
    expect(page.locator('#stats tr[data-name="invoke_workflow nightly"] .col-count')).to_have_text("1")
    post(viewer, tool_spans(trace_id(), span_id(), "execute_tool fetch", [50]))
    expect(fetch_row.locator(".col-count")).to_have_text("3")
    assert page.evaluate("() => window.notReloaded === true")
    expect(page.locator("#stats-status")).to_contain_text("Updated")
    page.probe.assert_clean()


def test_stats_columns_sort_on_click(viewer: Viewer, page: Any) -> None:
    trace, root = trace_id(), span_id()
    spans = [
        *tool_spans(trace, root, "execute_tool alpha", [300]),  # 1 span, slowest
        *tool_spans(trace, root, "execute_tool bravo", [10, 10, 10]),  # 3 spans, fastest
        *tool_spans(trace, root, "execute_tool charlie", [100, 100]),  # 2 spans, one failed
    ]
    spans[-1] = dataclasses.replace(spans[-1], status=A.STATUS_ERROR, status_message="boom")
    post(viewer, spans)
    wait_for(lambda: len(httpx.get(f"{viewer.url}/api/stats", timeout=10).json()["stats"]) == 3, what="stats")
    page.goto(f"{viewer.url}/stats")
    expect(page.locator("#stats tbody tr")).to_have_count(3)
    count_th = page.locator('#stats th[data-sort="count"]')
    p95_th = page.locator('#stats th[data-sort="p95"]')
    expect(count_th).to_have_attribute("aria-sort", "descending")  # most frequent first
    assert stats_names(page) == ["execute_tool bravo", "execute_tool charlie", "execute_tool alpha"]

    p95_th.get_by_role("button").click()
    expect(p95_th).to_have_attribute("aria-sort", "descending")
    expect(count_th).not_to_have_attribute("aria-sort", re.compile("."))
    assert stats_names(page) == ["execute_tool alpha", "execute_tool charlie", "execute_tool bravo"]
    p95_th.get_by_role("button").click()
    expect(p95_th).to_have_attribute("aria-sort", "ascending")
    assert stats_names(page) == ["execute_tool bravo", "execute_tool charlie", "execute_tool alpha"]

    errors_th = page.locator('#stats th[data-sort="errors"]')
    errors_th.get_by_role("button").click()
    expect(errors_th).to_have_attribute("aria-sort", "descending")
    assert stats_names(page)[0] == "execute_tool charlie"
    name_th = page.locator('#stats th[data-sort="name"]')
    name_th.get_by_role("button").click()
    expect(name_th).to_have_attribute("aria-sort", "ascending")
    assert stats_names(page) == ["execute_tool alpha", "execute_tool bravo", "execute_tool charlie"]
    # the order holds while the page refetches
    page.locator("#stats-refresh").click()
    expect(page.locator("#stats-status")).to_contain_text("Updated")
    assert stats_names(page) == ["execute_tool alpha", "execute_tool bravo", "execute_tool charlie"]
    page.probe.assert_clean()


def test_stats_draw_the_histogram_and_count_cancelled_spans(viewer: Viewer, page: Any, artifacts: Path) -> None:
    """With the server's ``histogram`` and ``cancelled`` fields, a sparkline of the durations and a count of
    cancelled spans; without them (an older viewer), the p50/p95 bars and a dash."""
    trace, root = trace_id(), span_id()
    durations = [5, 8, 12, 20, 35, 60, 100, 180, 300, 1_000]
    post(viewer, [*tool_spans(trace, root, "execute_tool search", durations)])
    stop = cancelled(record(trace, span_id(), "execute_tool search", parent=root, kind=A.KIND_TOOL, ended=True))
    post(viewer, [stop])
    wait_for(lambda: httpx.get(f"{viewer.url}/api/stats", timeout=10).json()["stats"], what="stats")

    def without_fields(route: Any) -> None:
        response = route.fetch()
        data = response.json()
        for row in data["stats"]:
            row.pop("cancelled", None)
            row.pop("histogram", None)
        route.fulfill(response=response, body=json.dumps(data))

    page.goto(f"{viewer.url}/stats")
    row = page.locator('#stats tr[data-name="execute_tool search"]')
    expect(row.locator(".hist .hist-bar")).to_have_count(12)
    counts = row.locator(".hist-bar").evaluate_all("bars => bars.map(b => Number(b.dataset.count))")
    assert sum(counts) == len(durations)
    heights = row.locator(".hist-bar").evaluate_all("bars => bars.map(b => b.getBBox().height)")
    tallest = counts.index(max(counts))
    assert heights[tallest] == max(heights) > min(heights)
    expect(row.locator(".col-cancelled")).to_have_text("1")
    expect(row.locator(".col-cancelled")).to_have_css("color", CANCELLED_GREY)
    expect(row.locator(".col-errors")).to_have_text("0%")  # a cancelled span is not an error
    page.screenshot(path=str(artifacts / "stats-histogram.png"))

    page.route("**/api/stats*", without_fields)  # an older viewer
    page.reload()
    expect(row.locator(".bars .bar")).to_have_count(2)
    expect(row.locator(".hist")).to_have_count(0)
    expect(row.locator(".col-cancelled")).to_have_text("–")
    page.probe.assert_clean()


# -------------------------------------------------------------------------------------------------- phone


def test_runs_and_stats_fit_a_phone(viewer: Viewer, page: Any, artifacts: Path) -> None:
    long_name = "summarise-the-quarterly-customer-feedback-into-themes"
    trace, root = trace_id(), span_id()
    post(
        viewer,
        [
            record(trace, root, f"invoke_workflow {long_name}", kind=A.KIND_WORKFLOW, run_id="job-" + "x" * 40),
            *tool_spans(trace, root, f"execute_tool {long_name}", [20, 40]),
        ],
    )
    nightly = run_root("nightly", error=True, start=time.time_ns() - 26 * HOUR_NS)
    failed = nightly.trace_id
    post(viewer, [nightly])
    post(viewer, [cancelled(run_root("stopped"))])
    wait_for(lambda: api_runs(viewer)["total"] == 3, what="three stored runs")
    names = len(httpx.get(f"{viewer.url}/api/stats", timeout=10).json()["stats"])

    for viewport, suffix in ((DESKTOP, "1440"), (PHONE, "390")):
        page.set_viewport_size(viewport)
        page.goto(f"{viewer.url}/")
        expect(page.locator("#runs tbody tr")).to_have_count(3)
        expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
        page.screenshot(path=str(artifacts / f"runs-{suffix}.png"), full_page=True)
        page.goto(f"{viewer.url}/stats")
        expect(page.locator("#stats tbody tr")).to_have_count(names)
        page.screenshot(path=str(artifacts / f"stats-{suffix}.png"), full_page=True)

    # on the phone (the last pass): nothing wider than the screen, rows as cards, minor columns left out
    page.goto(f"{viewer.url}/")
    row = page.locator(f'tr[data-run-id="{trace}"]')
    expect(row.locator(".chip")).to_be_visible()
    assert scroll_width(page) <= PHONE["width"]
    expect(page.locator("#runs thead")).to_be_hidden()
    expect(row.locator(".col-service")).to_be_hidden()
    failing = page.locator(f'tr[data-run-id="{failed}"] .col-failures')  # a failed span is still told
    expect(failing).to_be_visible()
    assert failing.evaluate("td => getComputedStyle(td, '::after').content") == '" failed"'
    for cell in (".run-link", ".chip", ".col-started", ".col-duration"):
        assert_on_screen(row.locator(cell).bounding_box(), cell)
    page.locator("#bell").click()  # the alerts panel stays on the screen
    panel = page.locator("#alerts-panel")
    expect(panel).to_be_visible()
    assert_on_screen(panel.bounding_box(), "alerts panel")
    assert scroll_width(page) <= PHONE["width"]
    page.screenshot(path=str(artifacts / "header-alerts-390.png"))
    page.keyboard.press("Escape")

    page.goto(f"{viewer.url}/stats")
    expect(page.locator("#stats tbody tr")).to_have_count(names)
    assert scroll_width(page) <= PHONE["width"]
    ranges = page.locator("#stats .hist-range")  # a chart's range is not cut off at the card's edge
    expect(ranges.first).to_be_visible()
    for i in range(ranges.count()):
        assert_on_screen(ranges.nth(i).bounding_box(), "the durations' range")
    # the sort buttons are still there, above the rows
    name_th = page.locator('#stats th[data-sort="name"]')
    expect(name_th.get_by_role("button")).to_be_visible()
    name_th.get_by_role("button").click()
    expect(name_th).to_have_attribute("aria-sort", "ascending")
    assert scroll_width(page) <= PHONE["width"]
    page.probe.assert_clean()
