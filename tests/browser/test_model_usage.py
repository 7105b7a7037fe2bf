"""Tokens and cost of model calls on the runs list and the stats page, in a real Chromium, from real calls.

A worker process makes ``openai`` calls against ``examples/local_llm_server.py`` (an OpenAI-compatible server on
loopback: real HTTP, usage counted in words), traced by ``opentelemetry-instrumentation-openai-v2`` or the
OpenInference instrumentation and streamed live to a real viewer by otelflow. The test says when each call is made,
so that it can watch the pages between calls without sleeping.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from tests.browser.test_list_pages import run_root
from tests.browser.test_pages import post
from tests.viewer.conftest import Viewer

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]

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


class LlmWorker:
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
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, run_id, instrumentation],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def _send(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        try:
            return self.lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"the worker did not answer {command!r}") from None

    def call(self, model: str, words: int, *, stream: bool = False, fails: bool = False) -> None:
        answer = self._send(f"{model} {words}{' stream' if stream else ''}")
        assert answer == f"{'failed' if fails else 'ok'} {model}", answer

    def end(self) -> None:
        assert self._send("end") == "done"
        assert self.proc.wait(30) == 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.reader.join(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


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
