"""Tokens and cost of model calls on the runs list and the stats page, in a real Chromium, from real calls.

A worker process makes ``openai`` calls against ``examples/local_llm_server.py`` (an OpenAI-compatible server on
loopback: real HTTP, usage counted in words), traced by ``opentelemetry-instrumentation-openai-v2`` or the
OpenInference instrumentation and streamed live to a real viewer by otelflow. The test says when each call is made,
so that it can watch the pages between calls without sleeping.
"""

from __future__ import annotations

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
from tests.browser.test_list_pages import DESKTOP, PHONE, assert_on_screen, run_root, scroll_width
from tests.browser.test_pages import post
from tests.viewer.conftest import Viewer, wait_for

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
DURATION = re.compile(r"^\d+(\.\d+)? (ms|s)$")
LAPTOP = {"width": 1024, "height": 768}
TABLE_OVERFLOW = "id => { const t = document.getElementById(id); return t.scrollWidth - t.parentElement.clientWidth; }"

# One workflow whose model calls come one at a time, when stdin says: "<model> <words> [stream]" makes a call with a
# user message of <words> words (the local server counts words as tokens, and answers "Echo: <the message>"),
# "end" ends the workflow. Each call is answered on stdout by "ok <model>" or "failed <model>".
_WORKER = textwrap.dedent(
    """
    import os
    import sys

    import openai

    import otelflow

    sys.path.insert(0, os.path.join(os.getcwd(), "examples"))
    from local_llm_server import serve

    run_id, instrumentation = sys.argv[1], sys.argv[2]
    telemetry = otelflow.configure(service_name="llm-worker", live=os.environ["VIEWER_URL"], otlp=False)
    if instrumentation == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    else:
        from openinference.instrumentation.openai import OpenAIInstrumentor
    OpenAIInstrumentor().instrument()
    with (
        serve(chunk_delay=0.01) as base_url,
        openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client,
        otelflow.workflow("ask_models", run_id=run_id),
    ):
        for line in sys.stdin:
            command = line.split()
            if command == ["end"]:
                break
            model, words, stream = command[0], int(command[1]), command[2:] == ["stream"]
            messages = [{"role": "user", "content": " ".join(["word"] * words)}]
            try:
                if stream:
                    chunks = client.chat.completions.create(
                        model=model, messages=messages, stream=True, stream_options={"include_usage": True}
                    )
                    for _ in chunks:
                        pass
                else:
                    client.chat.completions.create(model=model, messages=messages)
                print("ok", model, flush=True)
            except openai.APIError:
                print("failed", model, flush=True)
    telemetry.force_flush(10_000)
    telemetry.shutdown()
    print("done", flush=True)
    """
)


class LlmWorker(LineProcess):
    """The worker process: ``call(model, words)`` makes one model call and returns once it was answered."""

    def __init__(self, viewer: Viewer, run_id: str, instrumentation: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELFLOW_"))}
        env.update(
            VIEWER_URL=viewer.url,
            OTEL_TRACES_EXPORTER="none",
            # openai-v2 puts the messages on the span (the pages here need only the tokens, as without them)
            OTEL_SEMCONV_STABILITY_OPT_IN="gen_ai_latest_experimental",
            OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="span_only",
        )
        super().__init__([sys.executable, "-c", _WORKER, run_id, instrumentation], env)

    def _send(self, command: str) -> str:
        self.write(command)
        return self.next_line(60)

    def call(self, model: str, words: int, *, stream: bool = False, fails: bool = False) -> None:
        answer = self._send(f"{model} {words}{' stream' if stream else ''}")
        assert answer == f"{'failed' if fails else 'ok'} {model}", answer

    def end(self) -> None:
        assert self._send("end") == "done"
        assert self.proc.wait(30) == 0


@pytest.fixture
def llm_worker() -> Iterator[Callable[..., LlmWorker]]:
    started: list[LlmWorker] = []

    def start(viewer: Viewer, run_id: str, instrumentation: str = "openai-v2") -> LlmWorker:
        worker = LlmWorker(viewer, run_id, instrumentation)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


def listed_run(viewer: Viewer, run_id: str) -> dict[str, Any]:
    runs = httpx.get(f"{viewer.url}/api/runs", timeout=10).json()["runs"]
    [run] = [r for r in runs if r["otelflow_run_id"] == run_id]
    return dict(run)


def mini_cost(tokens_in: int, tokens_out: int) -> float:
    return (tokens_in * 0.15 + tokens_out * 0.6) / 1e6  # gpt-4o-mini's price in the shipped table, per 1M tokens


# -------------------------------------------------------------------------------------------------- runs list


def test_a_run_row_shows_its_tokens_and_cost_growing_as_calls_end(
    viewer: Viewer, page: Any, llm_worker: Callable[..., LlmWorker], artifacts: Path
) -> None:
    plain = run_root("no_models", run_id="job-plain")
    post(viewer, [plain])
    page.goto(f"{viewer.url}/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    plain_row = page.locator(f'tr[data-run-id="{plain.trace_id}"]')
    expect(plain_row.locator(".col-tokens")).to_have_text("–")
    expect(plain_row.locator(".col-cost")).to_have_text("–")
    page.evaluate("() => { window.notReloaded = true; }")

    worker = llm_worker(viewer, "job-llm")
    row = page.locator("#runs tbody tr", has_text="job-llm")
    tokens, cost = row.locator(".col-tokens"), row.locator(".col-cost")
    worker.call("gpt-4o-mini", 1200)  # 1,200 tokens in, 1,201 out ("Echo:" and the words)
    expect(tokens).to_have_text("1.2k → 1.2k")
    expect(cost).to_have_text("~$0.0009")  # 0.0009006
    expect(row).to_have_attribute("data-status", A.STATUS_RUNNING)
    expect(tokens).to_have_attribute("title", "1,200 input → 1,201 output tokens in 1 model call")
    expect(cost).to_have_attribute("title", "$0.0009006: an estimate from the viewer's price table")

    worker.call("gpt-4o-mini", 1200)  # the second call adds to the row, live
    expect(tokens).to_have_text("2.4k → 2.4k")
    expect(cost).to_have_text("~$0.0018")
    expect(tokens).to_have_attribute("title", "2,400 input → 2,402 output tokens in 2 model calls")

    worker.call("local-model", 10)  # a model the price table does not know: its tokens count, its cost cannot
    expect(tokens).to_have_attribute("title", "2,410 input → 2,413 output tokens in 3 model calls")
    expect(cost).to_have_text("~$0.0018")
    expect(cost).to_have_attribute(
        "title",
        "$0.001801: an estimate from the viewer's price table; "
        "1 call without a price (model not in the table, or no token counts), not counted",
    )
    worker.end()
    expect(row).to_have_attribute("data-status", A.STATUS_OK)
    expect(tokens).to_have_text("2.4k → 2.4k")
    assert page.evaluate("() => window.notReloaded === true")

    totals = listed_run(viewer, "job-llm")["llm"]  # what the server says, to the token
    assert (totals["calls"], totals["input_tokens"], totals["output_tokens"]) == (3, 2410, 2413)
    assert totals["cost_usd"] == pytest.approx(mini_cost(2400, 2402))
    expect(plain_row.locator(".col-tokens")).to_have_text("–")
    page.screenshot(path=str(artifacts / "runs-llm-1440.png"))
    page.probe.assert_clean()


# -------------------------------------------------------------------------------------------------- stats


def model_names(page: Any) -> list[str]:
    names: list[str] = page.locator("#models tbody tr").evaluate_all("rows => rows.map(r => r.dataset.model)")
    return names


def test_the_models_table_lists_each_model_live_and_sorts(
    viewer: Viewer, page: Any, llm_worker: Callable[..., LlmWorker], artifacts: Path
) -> None:
    page.goto(f"{viewer.url}/stats")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(page.locator("#models-empty")).to_be_visible()
    expect(page.locator("#models tbody tr")).to_have_count(0)
    page.evaluate("() => { window.notReloaded = true; }")

    worker = llm_worker(viewer, "job-models", "openinference")
    worker.call("gpt-4o-mini", 20, stream=True)  # 20 in, 21 out, with a time to first token
    mini = page.locator('#models tr[data-model="gpt-4o-mini-2024-07-18"]')
    expect(mini.locator(".col-calls")).to_have_text("1")  # refetched after the call ended, without a reload
    expect(page.locator("#models-empty")).to_be_hidden()
    worker.call("gpt-4o-mini", 2980)  # 2,980 in, 2,981 out
    worker.call("gpt-4o", 400)  # 400 in, 401 out, at gpt-4o's price
    worker.call("local-model", 4)  # no price
    worker.call("fail", 1, fails=True)  # the server answers 400: a failed call
    worker.end()

    expect(mini.locator(".col-calls")).to_have_text("2")
    expect(page.locator("#models tbody tr")).to_have_count(4)
    assert page.evaluate("() => window.notReloaded === true")
    expect(mini.locator(".col-name")).to_have_text("gpt-4o-mini-2024-07-18")
    expect(mini.locator(".col-provider")).to_have_text("openai")
    expect(mini.locator(".col-input")).to_have_text("3k")
    expect(mini.locator(".col-input")).to_have_attribute("title", "3,000 input tokens")
    expect(mini.locator(".col-output")).to_have_text("3k")
    expect(mini.locator(".col-cost")).to_have_text("~$0.0023")  # 0.0022506
    expect(mini.locator(".col-errors")).to_have_text("0%")
    expect(mini.locator(".col-cancelled")).to_have_text("0")
    for cell in (".col-p50", ".col-p95", ".col-ttft50", ".col-ttft95"):  # latencies, and the streamed call's TTFT
        expect(mini.locator(cell)).to_have_text(DURATION)
    gpt4o = page.locator('#models tr[data-model="gpt-4o-2024-08-06"]')
    expect(gpt4o.locator(".col-input")).to_have_text("400")
    expect(gpt4o.locator(".col-cost")).to_have_text("~$0.005")  # 400 x 2.5 + 401 x 10 per 1M: 0.00501
    expect(gpt4o.locator(".col-ttft50")).to_have_text("–")  # not streamed
    local = page.locator('#models tr[data-model="local-model"]')
    expect(local.locator(".col-cost")).to_have_text("–")
    expect(local.locator(".col-cost")).to_have_attribute("title", re.compile("^no estimate; 1 call without a price"))
    failing = page.locator("#models tbody tr").filter(has=page.locator(".col-errors.has-errors"))
    expect(failing).to_have_count(1)
    expect(failing.locator(".col-errors")).to_have_text("100%")
    expect(failing.locator(".col-calls")).to_have_text("1")

    calls_th = page.locator('#models th[data-sort="calls"]')
    expect(calls_th).to_have_attribute("aria-sort", "descending")  # the most used first
    assert model_names(page)[0] == "gpt-4o-mini-2024-07-18"
    cost_th = page.locator('#models th[data-sort="cost"]')
    cost_th.get_by_role("button").click()
    expect(cost_th).to_have_attribute("aria-sort", "descending")
    expect(calls_th).not_to_have_attribute("aria-sort", re.compile("."))
    assert model_names(page)[:2] == ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18"]  # the priced ones, dearest first
    cost_th.get_by_role("button").click()
    expect(cost_th).to_have_attribute("aria-sort", "ascending")
    assert model_names(page)[-2:] == ["gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06"]
    errors_th = page.locator('#models th[data-sort="errors"]')
    errors_th.get_by_role("button").click()
    assert failing.get_attribute("data-model") == model_names(page)[0]
    # the agents table keeps its own order, and neither table leaves its order on a refetch
    expect(page.locator('#stats th[data-sort="count"]')).to_have_attribute("aria-sort", "descending")
    page.locator("#stats-refresh").click()
    expect(page.locator("#stats-status")).to_contain_text("Updated")
    expect(errors_th).to_have_attribute("aria-sort", "descending")
    assert failing.get_attribute("data-model") == model_names(page)[0]

    # the period applies to the models too
    with page.expect_request(re.compile(r"/api/stats/models\?since=1h")):
        page.locator("#stats-since").select_option("1h")
    expect(page.locator("#models tbody tr")).to_have_count(4)  # the calls were made just now
    page.screenshot(path=str(artifacts / "stats-models-sorted-1440.png"), full_page=True)
    page.probe.assert_clean()


# -------------------------------------------------------------------------------------------------- phone


def test_tokens_and_cost_fit_a_phone(
    viewer: Viewer, page: Any, llm_worker: Callable[..., LlmWorker], artifacts: Path
) -> None:
    plain = run_root("no_models", run_id="job-plain")
    post(viewer, [plain])
    worker = llm_worker(viewer, "job-" + "long-run-id-" * 4)
    worker.call("gpt-4o-mini", 1200)
    worker.call("gpt-4o", 300)
    worker.end()
    wait_for(lambda: httpx.get(f"{viewer.url}/api/stats/models", timeout=10).json()["models"], what="model stats")
    models = len(httpx.get(f"{viewer.url}/api/stats/models", timeout=10).json()["models"])

    for viewport, suffix in ((DESKTOP, "1440"), (PHONE, "390")):
        page.set_viewport_size(viewport)
        page.goto(f"{viewer.url}/")
        row = page.locator("#runs tbody tr", has_text="long-run-id")
        expect(row.locator(".col-tokens")).to_have_text("1.5k → 1.5k")
        page.screenshot(path=str(artifacts / f"runs-llm-{suffix}.png"), full_page=True)
        page.goto(f"{viewer.url}/stats")
        expect(page.locator("#models tbody tr")).to_have_count(models)
        page.screenshot(path=str(artifacts / f"stats-models-{suffix}.png"), full_page=True)

    # a laptop's 1024 px: both tables, two columns wider, still fit their cards (nothing cut off at the right)
    page.set_viewport_size(LAPTOP)
    page.goto(f"{viewer.url}/")
    expect(page.locator("#runs tbody tr", has_text="long-run-id").locator(".col-cost")).to_have_text("~$0.0047")
    assert page.evaluate(TABLE_OVERFLOW, "runs") <= 0
    page.goto(f"{viewer.url}/stats")
    expect(page.locator("#models tbody tr")).to_have_count(models)
    assert page.evaluate(TABLE_OVERFLOW, "models") <= 0

    # on the phone: the run's card has a line of tokens and cost; a run without calls has none
    page.set_viewport_size(PHONE)
    page.goto(f"{viewer.url}/")
    row = page.locator("#runs tbody tr", has_text="long-run-id")
    expect(row.locator(".col-cost")).to_have_text("~$0.0047")  # gpt-4o-mini's 0.0009006 and gpt-4o's 0.00376
    assert scroll_width(page) <= PHONE["width"]
    for cell in (".run-link", ".chip", ".col-tokens", ".col-cost", ".col-duration"):
        expect(row.locator(cell)).to_be_visible()
        assert_on_screen(row.locator(cell).bounding_box(), cell)
    tokens_box, name_box = row.locator(".col-tokens").bounding_box(), row.locator(".run-link").bounding_box()
    assert tokens_box["y"] > name_box["y"]  # a line of its own, below the name
    assert row.locator(".col-tokens").evaluate("td => getComputedStyle(td, '::after').content") == '" tokens"'
    plain_row = page.locator(f'tr[data-run-id="{plain.trace_id}"]')
    expect(plain_row.locator(".chip")).to_be_visible()
    expect(plain_row.locator(".col-tokens")).to_be_hidden()
    expect(plain_row.locator(".col-cost")).to_be_hidden()

    page.goto(f"{viewer.url}/stats")
    expect(page.locator("#models tbody tr")).to_have_count(models)
    assert scroll_width(page) <= PHONE["width"]
    card = page.locator('#models tr[data-model="gpt-4o-2024-08-06"]')
    for cell in (".col-name", ".col-calls", ".col-cost", ".col-ttft95", ".col-cancelled"):
        expect(card.locator(cell)).to_be_visible()
        assert_on_screen(card.locator(cell).bounding_box(), cell)
    label = card.locator(".col-cost").evaluate("td => getComputedStyle(td, '::before').content")
    assert label == '"Cost"'
    cost_th = page.locator('#models th[data-sort="cost"]')
    cost_th.get_by_role("button").click()
    expect(cost_th).to_have_attribute("aria-sort", "descending")
    assert model_names(page)[0] == "gpt-4o-2024-08-06"
    assert scroll_width(page) <= PHONE["width"]
    page.probe.assert_clean()
