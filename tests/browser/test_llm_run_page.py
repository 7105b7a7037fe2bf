"""Model calls on the run page, in a real Chromium, from real calls: the model in the graph and the timeline, the
answer growing in the inspector while the call streams, the conversation as plain text, a token count that is not a
number, tokens and cost in the header and in an agent's inspector.

A worker process makes ``otelflow.llm`` calls inside an agent, streamed live to a real viewer, one step per line
of stdin (each step answered "ok"): the test decides when the answer grows and when the call ends, without
sleeping.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from tests.browser.conftest import LineProcess
from tests.browser.test_list_pages import DESKTOP, PHONE, scroll_width
from tests.viewer.conftest import Viewer, wait_for

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 1000  # OTELFLOW_MAX_VALUE_BYTES of the worker: a longer answer so far is cut
HTML = "<b>x</b><script>window.injected = true</script>"

# "open <model>" starts a call (in agent "triage") with a system text, a user message, an assistant tool call and
# the tool's answer (HTML); "delta <json string>" adds to the answer; "usage <in> <out>"; "bad_tokens" sets the
# output token count as a string; "close" ends the call; "end" ends the workflow.
_WORKER = textwrap.dedent(
    """
    import json
    import os
    import sys

    import otelflow
    from otelflow import attributes as A

    run_id = sys.argv[1]
    telemetry = otelflow.configure(service_name="llm-page", live=os.environ["VIEWER_URL"], otlp=False)
    messages = [
        {"role": "user", "content": "My invoice 42 is wrong"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup_invoice", "arguments": '{"id": 42}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": os.environ["TOOL_ANSWER"]},
    ]
    step = None
    call = None
    with otelflow.workflow("support_desk", run_id=run_id), otelflow.agent("triage"):
        print("ok", flush=True)
        for line in sys.stdin:
            command, _, arg = line.rstrip("\\n").partition(" ")
            if command == "open":
                step = otelflow.llm(arg, provider="openai")
                call = step.__enter__()
                call.set_input(messages, system="You triage support tickets.")
            elif command == "delta":
                call.output_delta(json.loads(arg))
            elif command == "usage":
                tokens_in, tokens_out = arg.split()
                call.usage(input_tokens=int(tokens_in), output_tokens=int(tokens_out))
            elif command == "bad_tokens":
                call.set_attribute(A.GEN_AI_USAGE_OUTPUT_TOKENS, "ninety")
            elif command == "close":
                call.set_response(finish_reasons=["stop"])
                step.__exit__(None, None, None)
            elif command == "end":
                break
            print("ok", flush=True)
    telemetry.force_flush(10_000)
    telemetry.shutdown()
    print("done", flush=True)
    """
)


class CallWorker(LineProcess):
    def __init__(self, viewer: Viewer, run_id: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELFLOW_"))}
        env.update(
            VIEWER_URL=viewer.url, OTEL_TRACES_EXPORTER="none", OTELFLOW_MAX_VALUE_BYTES=str(LIMIT), TOOL_ANSWER=HTML
        )
        super().__init__([sys.executable, "-c", _WORKER, run_id], env)
        assert self.next_line(60) == "ok"  # the workflow and the agent are open

    def send(self, command: str, expected: str = "ok") -> None:
        self.write(command)
        assert self.next_line(60) == expected

    def delta(self, text: str) -> None:
        self.send(f"delta {json.dumps(text)}")

    def end(self) -> None:
        self.send("end", "done")
        assert self.proc.wait(30) == 0


@pytest.fixture
def call_worker() -> Iterator[Callable[[Viewer, str], CallWorker]]:
    started: list[CallWorker] = []

    def start(viewer: Viewer, run_id: str) -> CallWorker:
        worker = CallWorker(viewer, run_id)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def llm_span_ids(viewer: Viewer, run_id: str) -> list[str]:
    data = httpx.get(f"{viewer.url}/api/runs/{run_id}", timeout=10).json()
    spans = sorted((s for s in data["spans"] if s["kind"] == A.KIND_LLM), key=lambda s: s["start_time"])
    return [str(s["span_id"]) for s in spans]


def open_run(page: Any, viewer: Viewer, run_id: str) -> None:
    page.goto(f"{viewer.url}/runs/{run_id}")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(page.locator('g.gnode[data-node-id="triage"]')).to_be_visible()


def test_the_answer_grows_in_the_inspector_while_the_call_streams(
    viewer: Viewer, page: Any, call_worker: Callable[[Viewer, str], CallWorker], artifacts: Path
) -> None:
    page.set_viewport_size(DESKTOP)
    worker = call_worker(viewer, "job-stream")
    open_run(page, viewer, "job-stream")
    worker.send("open gpt-4o-mini")
    [span_id] = wait_for(lambda: llm_span_ids(viewer, "job-stream") or None)
    row = page.locator(f'.tl-row[data-span-id="{span_id}"]')
    row.click()
    inspector = page.locator("#inspector")
    answer = inspector.locator('.llm-answer[data-live="true"] .llm-answer-text')
    expect(answer).to_be_visible()

    worker.delta("Thanks for writing in. ")
    expect(answer).to_have_text("Thanks for writing in. ")
    expect(inspector.locator('.llm-facts [data-llm="cost"]')).to_have_text("–")  # no tokens yet: no cost to say
    page.evaluate("() => { window.sameAnswer = document.querySelector('.llm-answer-text'); }")
    worker.delta("Your invoice 42 shows a double charge; ")
    expect(answer).to_have_text("Thanks for writing in. Your invoice 42 shows a double charge; ")
    expect(row).to_have_attribute("data-status", A.STATUS_RUNNING)  # grown while the call runs
    # updated in place: the same element, not a new inspector per update
    assert page.evaluate("() => window.sameAnswer === document.querySelector('.llm-answer-text')")

    long_tail = "refund " * 300  # past the worker's limit: the answer so far is cut, and says how much
    worker.delta(long_tail)
    cut = inspector.locator(".llm-answer .llm-cut")
    expect(cut).to_be_visible()
    expect(cut).to_contain_text("characters cut")
    expect(row).to_have_attribute("data-status", A.STATUS_RUNNING)
    page.screenshot(path=str(artifacts / "run-llm-streaming-1440.png"))

    worker.send("usage 812 95")
    worker.send("close")
    expect(row).to_have_attribute("data-status", A.STATUS_OK)
    expect(inspector.locator('.llm-facts [data-llm="cost"]')).to_have_text("~$0.00018")
    final = inspector.locator('.llm-answer[data-live="false"]')
    expect(final).to_contain_text("Thanks for writing in. Your invoice 42 shows a double charge; refund")
    expect(inspector.locator('.llm-answer[data-live="true"]')).to_have_count(0)
    worker.end()
    page.probe.assert_clean()


def test_the_graph_and_the_timeline_show_the_model(
    viewer: Viewer, page: Any, call_worker: Callable[[Viewer, str], CallWorker], artifacts: Path
) -> None:
    page.set_viewport_size(DESKTOP)
    worker = call_worker(viewer, "job-graph")
    open_run(page, viewer, "job-graph")
    worker.send("open gpt-4o-mini")
    worker.send("usage 812 95")
    worker.send("close")
    [span_id] = wait_for(lambda: llm_span_ids(viewer, "job-graph") or None)

    # the graph: a node of kind llm named by its model, inside its agent, with its duration and tokens
    node = page.locator('g.gnode[data-node-id="triage › gpt-4o-mini"]')
    expect(node).to_have_attribute("data-kind", A.KIND_LLM)
    expect(node.locator(".gnode-label")).to_have_text("gpt-4o-mini")
    expect(node.locator(".gnode-meta")).to_have_text(re.compile(r"^llm · \d+(\.\d+)? (ms|s) · 812→95 tok$"))
    expect(node).to_have_attribute("aria-label", "gpt-4o-mini in triage: ok")
    expect(page.locator("#graph")).to_have_attribute("data-layout", "done")
    inside = page.evaluate(
        """([agent, call]) => {
          const rect = (key) =>
            document.querySelector(`g.gnode[data-node-id="${key}"] .gnode-box`).getBoundingClientRect();
          const box = rect(agent);
          const node = rect(call);
          return node.left >= box.left && node.right <= box.right && node.top >= box.top && node.bottom <= box.bottom;
        }""",
        ["triage", "triage › gpt-4o-mini"],
    )
    assert inside, "the model call is drawn inside its agent's box"
    # the timeline: its row says llm and the model
    row = page.locator(f'.tl-row[data-span-id="{span_id}"]')
    expect(row.locator(".tl-kind")).to_have_text(A.KIND_LLM)
    expect(row.locator(".tl-name")).to_have_text("gpt-4o-mini")
    page.screenshot(path=str(artifacts / "run-llm-graph-1440.png"))
    worker.end()
    page.probe.assert_clean()


def test_a_model_call_shows_its_conversation_model_tokens_and_cost(
    viewer: Viewer, page: Any, call_worker: Callable[[Viewer, str], CallWorker], artifacts: Path
) -> None:
    page.set_viewport_size(DESKTOP)
    worker = call_worker(viewer, "job-chat")
    open_run(page, viewer, "job-chat")
    worker.send("open gpt-4o-mini")
    worker.delta("Checking your invoice now.")
    worker.send("usage 812 95")
    worker.send("close")
    [span_id] = wait_for(lambda: llm_span_ids(viewer, "job-chat") or None)

    page.locator(f'.tl-row[data-span-id="{span_id}"]').click()
    inspector = page.locator("#inspector")
    facts = inspector.locator(".llm-facts")
    expect(facts).to_contain_text("gpt-4o-mini")
    expect(facts).to_contain_text("openai")
    expect(facts).to_contain_text("812 → 95")
    expect(facts.locator('[data-llm="cost"]')).to_have_text("~$0.00018")  # 812 × 0.15 + 95 × 0.6 per 1M
    expect(facts).to_contain_text("stop")
    messages = inspector.locator(".msg")
    expect(messages).to_have_count(5)  # system, user, assistant (a tool call), tool, the answer
    roles = messages.evaluate_all("items => items.map(m => m.dataset.role)")
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    expect(messages.nth(0)).to_contain_text("You triage support tickets.")
    expect(messages.nth(1)).to_contain_text("My invoice 42 is wrong")
    expect(messages.nth(2).locator(".msg-call")).to_contain_text('lookup_invoice({"id": 42})')
    expect(messages.nth(2).locator(".msg-call")).to_contain_text("call_1")
    expect(messages.nth(3)).to_contain_text("result of call_1")
    # HTML in a message is text: the tags show, nothing is parsed or run
    expect(messages.nth(3).locator(".msg-content")).to_have_text(HTML)
    assert inspector.locator(".msg b, .msg script").count() == 0
    assert page.evaluate("() => window.injected === undefined")
    expect(messages.nth(4)).to_contain_text("Checking your invoice now.")
    page.screenshot(path=str(artifacts / "run-llm-call-1440.png"))

    # a phone: nothing wider than the screen, the conversation included
    page.set_viewport_size(PHONE)
    messages.nth(3).scroll_into_view_if_needed()
    assert scroll_width(page) <= PHONE["width"]
    page.screenshot(path=str(artifacts / "run-llm-call-390.png"), full_page=True)
    worker.end()
    page.probe.assert_clean()


def test_the_run_header_and_an_agent_show_their_tokens_and_cost(
    viewer: Viewer, page: Any, call_worker: Callable[[Viewer, str], CallWorker], artifacts: Path
) -> None:
    page.set_viewport_size(DESKTOP)
    worker = call_worker(viewer, "job-totals")
    open_run(page, viewer, "job-totals")
    expect(page.locator("#run-llm")).to_be_hidden()  # no model call yet
    worker.send("open gpt-4o-mini")
    worker.send("usage 812 95")
    worker.send("close")
    # the header: the run's tokens and cost, live (the run is still running)
    expect(page.locator("#run-llm")).to_be_visible()
    expect(page.locator("#run-llm-tokens")).to_have_text("812 → 95")
    expect(page.locator("#run-llm-cost")).to_have_text("~$0.00018")
    expect(page.locator("#run-status")).to_have_attribute("data-status", A.STATUS_RUNNING)

    # the agent: the totals of its model calls (kept up live as calls end)
    agent = page.locator('g.gnode[data-node-id="triage"]')
    agent.click(position={"x": 40, "y": 8})  # its header, not the call drawn inside it
    totals = page.locator("#inspector .llm-totals")
    expect(totals).to_contain_text("1 call")
    expect(totals).to_contain_text("812 → 95")
    worker.send("open gpt-4o-mini")
    worker.send("usage 1000 5")
    worker.send("close")
    expect(totals).to_contain_text("2 calls")
    expect(totals).to_contain_text("1.8k → 100")
    expect(totals.locator('[data-llm="cost"]')).to_have_text("~$0.00033")
    expect(page.locator("#run-llm-tokens")).to_have_text("1.8k → 100")
    page.screenshot(path=str(artifacts / "run-llm-totals-1440.png"))
    # after a reload the same totals come from the snapshot's llm_by_span
    page.reload()
    expect(page.locator("#graph")).to_have_attribute("data-layout", "done")
    agent.click(position={"x": 40, "y": 8})
    expect(totals).to_contain_text("2 calls")
    expect(totals).to_contain_text("1.8k → 100")
    expect(page.locator("#run-llm-tokens")).to_have_text("1.8k → 100")

    page.set_viewport_size(PHONE)
    expect(page.locator("#run-llm")).to_be_visible()
    assert scroll_width(page) <= PHONE["width"]
    page.screenshot(path=str(artifacts / "run-llm-totals-390.png"), full_page=True)
    worker.end()
    page.probe.assert_clean()


def test_a_token_count_that_is_not_a_number_shows_as_a_problem(
    viewer: Viewer, page: Any, call_worker: Callable[[Viewer, str], CallWorker]
) -> None:
    worker = call_worker(viewer, "job-bad")
    open_run(page, viewer, "job-bad")
    worker.send("open gpt-4o-mini")
    worker.send("bad_tokens")
    worker.send("close")
    [span_id] = wait_for(lambda: llm_span_ids(viewer, "job-bad") or None)
    page.locator(f'.tl-row[data-span-id="{span_id}"]').click()
    problems = page.locator("#inspector .llm-problems")
    expect(problems).to_be_visible()
    expect(problems).to_contain_text(A.GEN_AI_USAGE_OUTPUT_TOKENS)
    expect(page.locator("#inspector .llm-facts")).to_contain_text("–")
    worker.end()
    page.probe.assert_clean()


def test_the_kind_filter_shows_model_calls_and_an_unknown_model_has_no_price(
    viewer: Viewer, page: Any, call_worker: Callable[[Viewer, str], CallWorker]
) -> None:
    worker = call_worker(viewer, "job-filter")
    open_run(page, viewer, "job-filter")
    worker.send("open local-model")
    worker.send("usage 10 10")
    worker.send("close")
    node = page.locator('g.gnode[data-node-id="triage › local-model"]')
    expect(node).to_be_visible()
    page.select_option('#span-filters select[name="kind"]', A.KIND_LLM)
    expect(node).not_to_have_class(re.compile(r"\bdim\b"))
    expect(page.locator('g.gnode[data-node-id="triage"]')).to_have_class(re.compile(r"\bdim\b"))
    expect(page.locator(".tl-row")).to_have_count(1)
    node.click()  # a model the price table does not know: its tokens, and no price
    expect(page.locator("#inspector .llm-facts")).to_contain_text("10 → 10")
    expect(page.locator('#inspector .llm-facts [data-llm="cost"]')).to_have_text("no price")
    worker.end()
    page.probe.assert_clean()
