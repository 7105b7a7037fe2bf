"""Stalled work and alerts in a real Chromium: the amber stall mark on the run page, the header's bell and its
panel, the header's count of running runs."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from otelflow.records import EventRecord, SpanRecord
from otelflow.viewer.alerts import parse_rules
from tests.browser.conftest import Workflow
from tests.browser.test_pages import NODE_ORDER, graph_json, node, post
from tests.viewer.conftest import Viewer, record, span_id, trace_id

pytestmark = pytest.mark.browser

STALLED_AMBER = "rgb(251, 191, 36)"  # --stalled in style.css
STALLED_CLASS = re.compile(r"(^|\s)stalled(\s|$)")

# Every stall mark of the span is gone at once: graph node, timeline row and its label, inspector section.
STALL_CLEARED = """([spanId, key]) => {
  const row = document.querySelector(`.tl-row[data-span-id="${spanId}"]`);
  const g = document.querySelector(`.gnode[data-node-id="${key}"]`);
  return Boolean(row && g) && !row.classList.contains("stalled") && row.querySelector(".tl-stall").hidden
    && !g.classList.contains("stalled") && !document.querySelector("#inspector .insp-stall");
}"""


def closed_port() -> int:
    """A loopback port nothing listens on (a webhook there fails at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def log_line(message: str) -> EventRecord:
    return EventRecord(A.EVENT_LOG, time.time_ns(), {A.LOG_LEVEL: "info", A.LOG_MESSAGE: message})


class Run:
    """A running workflow with one agent, ``think``, posted span by span as a worker would."""

    def __init__(self, viewer: Viewer, name: str) -> None:
        self.viewer = viewer
        self.trace, self.root, self.agent = trace_id(), span_id(), span_id()
        self.name = name
        self.started = time.time_ns()
        self.events: tuple[EventRecord, ...] = ()
        graph = {A.WORKFLOW_GRAPH: graph_json(["think"])}
        root = record(self.trace, self.root, f"invoke_workflow {name}", kind=A.KIND_WORKFLOW, attributes=graph)
        post(viewer, [root, self.think()])

    def think(self, *, ended: bool = False) -> SpanRecord:
        return record(
            self.trace, self.agent, "invoke_agent think", parent=self.root, kind=A.KIND_AGENT, start=self.started,
            duration_ns=time.time_ns() - self.started, ended=ended, events=self.events,
            attributes={A.NODE_ID: "think", A.GEN_AI_AGENT_NAME: "think"},
        )  # fmt: skip

    def log(self, message: str) -> None:
        self.events += (log_line(message),)
        post(self.viewer, [self.think()])

    def end_agent(self) -> None:
        post(self.viewer, [self.think(ended=True)])


def test_a_quiet_span_is_marked_stalled_until_it_moves_or_ends(
    make_viewer: Callable[..., Viewer], page: Any, artifacts: Path
) -> None:
    viewer = make_viewer(stall_after_s=1.0)  # any span quiet for 1 s is stalled
    run = Run(viewer, "quiet")
    page.goto(f"{viewer.url}/runs/{run.trace}")
    think, row = node(page, "think"), page.locator(f'.tl-row[data-span-id="{run.agent}"]')
    expect(think).to_have_attribute("data-status", "running")

    # nothing of it moves: amber in the graph and the timeline, with a label that ticks, and in the inspector
    expect(think).to_have_class(STALLED_CLASS)
    expect(think).to_have_attribute("data-status", "running")  # a flag on a running span, not a status
    expect(think.locator(".gnode-stripe")).to_have_css("fill", STALLED_AMBER)
    expect(row).to_have_class(STALLED_CLASS)
    expect(row.locator(".tl-stall")).to_have_css("color", STALLED_AMBER)
    expect(row.locator(".tl-stall")).to_have_text(re.compile(r"^quiet for [1-9] s$"))
    page.reload()  # a page opened on a stalled span shows it from the run's snapshot, still ticking from `since`
    expect(row).to_have_class(STALLED_CLASS)
    expect(row.locator(".tl-stall")).to_have_text(re.compile(r"^quiet for [2-9] s$"))
    expect(think.locator(".gnode-meta")).to_have_text(re.compile(r"^quiet for [2-9] s$"))
    think.click()
    stall = page.locator("#inspector .insp-stall")
    expect(stall).to_contain_text(re.compile(r"quiet for \d+ s"))
    expect(stall).to_contain_text("rule “default”")
    page.screenshot(path=str(artifacts / "run-stalled.png"))

    # it moves (a log line): every mark clears at once; quiet again, it is flagged anew, counting from its move
    run.log("still thinking")
    page.wait_for_function(STALL_CLEARED, arg=[run.agent, "think"], polling="raf")
    expect(row.locator(".tl-stall")).to_have_text(re.compile(r"^quiet for [12] s$"))
    expect(think).to_have_class(STALLED_CLASS)

    # it ends: cleared for good
    run.end_agent()
    expect(think).to_have_attribute("data-status", "ok")
    page.wait_for_function(STALL_CLEARED, arg=[run.agent, "think"])
    page.probe.assert_clean()


RULES = """
[[rule]]
name = "agent stuck"
when = "stalled"
quiet_s = 1
kind = ["agent"]

[[action]]
webhook = "http://127.0.0.1:{port}/hook"
retries = 0
timeout_s = 2
"""


def test_a_stalled_rule_rings_the_bell_until_the_span_ends(
    make_viewer: Callable[..., Viewer], page: Any, artifacts: Path
) -> None:
    viewer = make_viewer(alerts=parse_rules(RULES.format(port=closed_port())))
    page.goto(f"{viewer.url}/")  # the runs page keeps its header live from its stream (run.*, alert.*)
    bell, panel = page.locator("#bell"), page.locator("#alerts-panel")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(bell).to_have_attribute("data-count", "0")
    run = Run(viewer, "stuck")
    row = page.locator(f'tr[data-run-id="{run.trace}"]')
    expect(row).to_have_attribute("data-status", "running")

    # the agent goes quiet for 1 s: one open alert, the run's "1 stalled" badge, the header's stalled count
    expect(bell).to_have_attribute("data-count", "1")
    expect(page.locator("#bell-count")).to_have_text("1")
    expect(row.locator(".stall-badge")).to_have_text("1 stalled")
    expect(row.locator(".stall-badge")).to_have_css("color", STALLED_AMBER)
    expect(page.locator("#now-stalled")).to_have_text("· 1 stalled")
    bell.click()
    expect(panel).to_be_visible()
    alert = panel.locator(".alert")
    expect(alert).to_have_count(1)
    expect(alert.locator(".alert-rule")).to_have_text("agent stuck")
    expect(alert.locator(".alert-message")).to_contain_text("invoke_agent think has been quiet for")
    expect(alert.locator(".alert-run")).to_have_attribute("href", f"/runs/{run.trace}")
    # the webhook is down: the panel says delivery fails
    delivery = page.locator("#alerts-delivery")
    expect(delivery).to_contain_text("Webhook delivery: 1 failed attempt, 1 given up · last error: ConnectError")
    page.screenshot(path=str(artifacts / "alerts-panel.png"))
    # the stalled filter lists the run
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    page.locator("#run-filters select[name=status]").select_option("stalled")
    expect(page.locator("tbody tr:visible")).to_have_count(1)
    expect(page.locator("tbody tr:visible")).to_have_attribute("data-run-id", run.trace)

    # the agent ends: the alert resolves, the bell is back to 0, the badge and the filter's row go
    run.end_agent()
    expect(bell).to_have_attribute("data-count", "0")
    expect(row.locator(".stall-badge")).to_be_hidden()
    expect(page.locator("#now-stalled")).to_be_hidden()
    expect(page.locator("tbody tr:visible")).to_have_count(0)
    bell.click()
    expect(panel.locator(".alert")).to_have_count(0)
    expect(page.locator("#alerts-empty")).to_be_visible()
    page.probe.assert_clean()


def test_the_header_counts_running_runs(viewer: Viewer, page: Any, workflow: Callable[[str], Workflow]) -> None:
    page.goto(f"{viewer.url}/stats")  # no stream on this page: the header polls /api/now
    running = page.locator("#now-running")
    expect(running).to_have_text("0 running")
    wf = workflow(viewer.url)
    assert wf.wait_node() == "Plan"
    expect(running).to_have_text("1 running")
    expect(page.locator("#now-stalled")).to_be_hidden()
    for name in NODE_ORDER[1:]:
        wf.send("go")
        assert wf.wait_node() == name
    wf.send("go")
    wf.finish()
    expect(running).to_have_text("0 running")
    page.probe.assert_clean()
