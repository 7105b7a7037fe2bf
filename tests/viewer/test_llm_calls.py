"""Model calls through a real viewer, traced by the real instrumentations of the ``openai`` client.

The remote API is stood in for by ``examples/local_llm_server.py``, an OpenAI-compatible server on a free loopback
port (deterministic replies, real HTTP, real SSE streaming). Everything else is real: the ``openai`` client,
``opentelemetry-instrumentation-openai-v2`` (in span-attribute content mode) and
``openinference-instrumentation-openai``, the OTel SDK, the stock OTLP exporter or otelflow's live exporter, and
the viewer on uvicorn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otelflow
from otelflow import attributes as A
from otelflow.genai import CONTENT_LIMIT, Prices
from tests.test_examples import EXAMPLES, load
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for

local_llm = load("local_llm_server")
MINI = (0.15, 0.6)  # the shipped price of gpt-4o-mini, USD per 1M tokens in and out


def ended_run(viewer: Viewer, run: str, spans: int, timeout: float = 30) -> dict[str, Any]:
    """``GET /api/runs/{run}`` once the run ended with ``spans`` spans, all of them ended."""

    def fetch() -> dict[str, Any] | None:
        response = httpx.get(f"{viewer.url}/api/runs/{run}", timeout=5)
        if response.status_code != 200:
            return None
        detail: dict[str, Any] = response.json()
        done = detail["run"]["status"] != "running" and len(detail["spans"]) == spans
        return detail if done and all(s["end_time"] for s in detail["spans"]) else None

    found: dict[str, Any] = wait_for(fetch, timeout, f"run {run} with {spans} ended spans")
    return found


def llm_spans(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((s for s in detail["spans"] if s["kind"] == A.KIND_LLM), key=lambda s: s["start_time"])


def cost(input_tokens: int, output_tokens: int, price: tuple[float, float] = MINI) -> float:
    return (input_tokens * price[0] + output_tokens * price[1]) / 1e6


def stored_span_objects(viewer: Viewer, run: str, type_: str) -> dict[str, dict[str, Any]]:
    """The ``span`` objects of a run's stored events of ``type_`` (what a replay sends), by span id."""

    def read() -> dict[str, dict[str, Any]] | None:
        events = httpx.get(f"{viewer.url}/api/runs/{run}/events", timeout=5).json().get("events", [])
        found = {e["span"]["span_id"]: e["span"] for e in events if e["type"] == type_}
        return found or None

    found: dict[str, dict[str, Any]] = wait_for(read, 10, f"stored {type_} events")
    return found


# ------------------------------------------------------------------------------------------------
# openai-v2, through otelflow's live exporter (the example, as a worker process)
# ------------------------------------------------------------------------------------------------


def openai_live(viewer: Viewer, run_id: str) -> str:
    """Run examples/openai_live.py as a worker streaming to ``viewer`` under ``run_id``; returns its output."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELFLOW_"))},
        "OTELFLOW_VIEWER_URL": viewer.url,
        "OTEL_SERVICE_NAME": "llm-worker",
    }
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_live.py"), run_id],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_openai_v2_calls_show_model_tokens_messages_and_cost(
    viewer: Viewer, make_viewer: Callable[..., Viewer]
) -> None:
    """examples/openai_live.py as a worker: otelflow.configure streams to the viewer, openai-v2 traces a plain and a
    streaming chat call; the viewer shows both as kind llm, with their totals on the run and on each agent."""
    said = openai_live(viewer, "llm-v2")
    assert said.startswith("Echo: Write one paragraph")

    detail = ended_run(viewer, "llm-v2", spans=5)
    plain, streamed = llm_spans(detail)
    for span in (plain, streamed):
        llm = span["llm"]
        assert span["name"] == "chat gpt-4o-mini"
        assert (llm["operation"], llm["provider"]) == ("chat", "openai")
        assert (llm["model"], llm["request_model"]) == ("gpt-4o-mini-2024-07-18", "gpt-4o-mini")
        assert llm["finish_reasons"] == ["stop"]
        assert llm["cost_estimate"] is True
        assert llm["cost_usd"] == pytest.approx(cost(llm["input_tokens"], llm["output_tokens"]))
        assert llm["problems"] == []
    assert (plain["llm"]["input_tokens"], plain["llm"]["output_tokens"]) == (8, 5)
    assert [(m["role"], m["content"]) for m in plain["llm"]["input_messages"]] == [
        ("system", "You list facts, briefly."),
        ("user", "Three facts about OpenTelemetry"),
    ]
    assert plain["llm"]["output_messages"][0]["content"] == "Echo: Three facts about OpenTelemetry"
    assert (streamed["llm"]["input_tokens"], streamed["llm"]["output_tokens"]) == (11, 12)  # the usage chunk
    assert streamed["llm"]["output_messages"][0]["content"] == said.strip()
    assert all("llm" not in s for s in detail["spans"] if s["kind"] != A.KIND_LLM)

    totals = detail["run"]["llm"]
    assert (totals["calls"], totals["input_tokens"], totals["output_tokens"]) == (2, 19, 17)
    assert totals["cost_usd"] == pytest.approx(cost(19, 17))
    assert totals["cost_estimate"] is True
    by_name = {s["name"]: s["span_id"] for s in detail["spans"]}
    assert detail["llm_by_span"][by_name["invoke_agent research"]]["input_tokens"] == 8
    assert detail["llm_by_span"][by_name["invoke_agent writer"]]["output_tokens"] == 12
    assert detail["llm_by_span"][by_name["invoke_workflow llm_pipeline"]] == totals
    listed = httpx.get(f"{viewer.url}/api/runs", timeout=5).json()["runs"]
    assert [r["llm"] for r in listed if r["otelflow_run_id"] == "llm-v2"] == [totals]

    ended = stored_span_objects(viewer, "llm-v2", "span.ended")
    assert ended[plain["span_id"]]["llm"] == plain["llm"]  # the replay agrees with the REST detail
    assert ended[streamed["span_id"]]["llm"] == streamed["llm"]

    exported = httpx.get(f"{viewer.url}/api/runs/llm-v2/export", timeout=5).content
    other = make_viewer()
    posted = httpx.post(f"{other.url}/v1/traces", content=exported, headers={"content-type": "application/json"})
    assert posted.is_success
    again = ended_run(other, "llm-v2", spans=5)
    assert [s["llm"] for s in llm_spans(again)] == [plain["llm"], streamed["llm"]]  # the export keeps it all
    assert again["run"]["llm"] == totals


# ------------------------------------------------------------------------------------------------
# OpenInference, in this process, through the stock OTLP exporter
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def traced(viewer: Viewer) -> Iterator[tuple[TracerProvider, Callable[[], None]]]:
    """A provider exporting every ended span at once through the stock OTLP/HTTP exporter to ``viewer``."""
    provider = TracerProvider(resource=Resource.create({"service.name": "llm-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{viewer.url}/v1/traces")))
    yield provider, provider.shutdown
    provider.shutdown()


def _workflow(provider: TracerProvider, run_id: str) -> Any:
    tracer = provider.get_tracer("test")
    return tracer.start_as_current_span(
        "invoke_workflow llm_test",
        attributes={A.GEN_AI_OPERATION_NAME: A.OP_INVOKE_WORKFLOW, A.KIND: A.KIND_WORKFLOW, A.RUN_ID: run_id},
    )


def test_openinference_calls_streaming_and_not(viewer: Viewer, traced: tuple[TracerProvider, Any]) -> None:
    from openinference.instrumentation.openai import OpenAIInstrumentor

    provider, _ = traced
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with (
            local_llm.serve(chunk_delay=0.05) as base_url,
            openai.OpenAI(base_url=base_url, api_key="k") as client,
            _workflow(provider, "llm-oi"),
        ):
            tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "find otelflow"}], tools=tools
            )
            stream = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "tell me more"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            streamed_text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            client.embeddings.create(model="text-embedding-3-small", input="a b c")
    finally:
        instrumentor.uninstrument()

    detail = ended_run(viewer, "llm-oi", spans=4)
    tool_call, streamed, embedding = llm_spans(detail)
    assert tool_call["llm"]["model"] == "gpt-4o-2024-08-06"
    assert tool_call["llm"]["provider"] == "openai"
    assert tool_call["llm"]["output_messages"][0]["tool_calls"] == [
        {"id": "call_0001", "name": "lookup", "arguments": '{"query": "find otelflow"}'}
    ]
    assert tool_call["llm"]["finish_reasons"] == ["tool_calls"]
    assert (tool_call["llm"]["input_tokens"], tool_call["llm"]["output_tokens"]) == (2, 3)
    assert tool_call["llm"]["cost_usd"] == pytest.approx(cost(2, 3, (2.5, 10.0)))  # gpt-4o's price

    assert streamed["llm"]["output_messages"][0]["content"] == streamed_text == "Echo: tell me more"
    assert (streamed["llm"]["input_tokens"], streamed["llm"]["output_tokens"]) == (3, 4)
    ttft = streamed["llm"]["time_to_first_token_ms"]
    assert ttft is not None
    assert 0 < ttft < streamed["duration_ms"]  # the first chunk came before the others (0.05 s apart)

    assert (embedding["llm"]["operation"], embedding["llm"]["model"]) == ("embeddings", "text-embedding-3-small")
    assert embedding["llm"]["input_tokens"] == 3
    assert embedding["llm"]["cost_usd"] == pytest.approx(cost(3, 0, (0.02, 0.0)))
    assert detail["run"]["llm"]["calls"] == 3


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_bad_model_call_attributes_render_clearly_and_lose_nothing(
    viewer: Viewer, traced: tuple[TracerProvider, Any]
) -> None:
    """Token counts that are text or negative, messages that are not JSON and a 5 MB message: each call shows what
    could be read and why the rest could not; the run keeps every span."""
    provider, _ = traced
    tracer = provider.get_tracer("test")
    huge = "word " * 1_000_000  # 5 MB
    calls: list[dict[str, Any]] = [
        {A.GEN_AI_USAGE_INPUT_TOKENS: "812", A.GEN_AI_USAGE_OUTPUT_TOKENS: -4},
        {A.GEN_AI_INPUT_MESSAGES: "hello, {not json", A.GEN_AI_OUTPUT_MESSAGES: "[{]"},
        {A.GEN_AI_INPUT_MESSAGES: json.dumps([{"role": "user", "content": huge}])},
        {A.GEN_AI_USAGE_INPUT_TOKENS: 10, A.GEN_AI_USAGE_OUTPUT_TOKENS: 2},
    ]
    with _workflow(provider, "llm-bad"):
        for extra in calls:
            attrs = {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini", **extra}
            with tracer.start_as_current_span("chat gpt-4o-mini", attributes=attrs):
                pass
        with tracer.start_as_current_span("after the calls", attributes={A.KIND: A.KIND_NODE}):
            pass

    detail = ended_run(viewer, "llm-bad", spans=6)
    strings, not_json, big, fine = llm_spans(detail)
    assert (strings["llm"]["input_tokens"], strings["llm"]["output_tokens"]) == (None, None)
    assert strings["llm"]["problems"] == [
        "gen_ai.usage.input_tokens is not a token count: '812'",
        "gen_ai.usage.output_tokens is not a token count: -4",
    ]
    assert strings["attributes"][A.GEN_AI_USAGE_INPUT_TOKENS] == "812"  # the raw value stays visible
    assert strings["llm"]["cost_usd"] is None

    assert not_json["llm"]["input_messages"][0]["content"] == "hello, {not json"
    assert not_json["llm"]["output_messages"][0]["content"] == "[{]"
    assert "gen_ai.input.messages is not JSON: shown as text" in not_json["llm"]["problems"]

    [message] = big["llm"]["input_messages"]  # cut by the viewer's value limit, then by the view's own bound
    assert len(message["content"]) == CONTENT_LIMIT
    assert message["cut"] > 0
    assert message["content"].startswith('[{"role": "user", "content": "word word')

    assert fine["llm"]["cost_usd"] == pytest.approx(cost(10, 2))
    assert detail["run"]["llm"] == {
        "calls": 4,
        "input_tokens": 10,
        "output_tokens": 2,
        "cost_usd": pytest.approx(cost(10, 2)),
        "cost_estimate": True,
        "unpriced_calls": 3,
    }
    assert {s["name"] for s in detail["spans"]} >= {"after the calls", "invoke_workflow llm_test"}


def test_a_user_price_table_overrides_the_shipped_one(
    make_viewer: Callable[..., Viewer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"date": "2030-01-01", "models": {"gpt-4o-mini": {"input": 1.0, "output": 2.0}}}))
    monkeypatch.setenv("OTELFLOW_PRICES", str(prices))
    viewer = make_viewer()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{viewer.url}/v1/traces")))
    attrs = {
        A.GEN_AI_OPERATION_NAME: "chat",
        A.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
        A.GEN_AI_USAGE_INPUT_TOKENS: 1000,
        A.GEN_AI_USAGE_OUTPUT_TOKENS: 500,
        A.RUN_ID: "priced",
    }
    with provider.get_tracer("t").start_as_current_span("chat gpt-4o-mini", attributes=attrs):
        pass
    provider.shutdown()
    [span] = llm_spans(ended_run(viewer, "priced", spans=1))
    assert span["llm"]["cost_usd"] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert Prices.from_json(json.loads(prices.read_text()), "x").lookup("gpt-4o-mini") == (1.0, 2.0)


def test_a_bad_price_file_stops_serve_with_one_line(tmp_path: Path) -> None:
    from tests.test_cli_serve import one_line, run_cli

    bad = tmp_path / "prices.json"
    bad.write_text('{"models": {"gpt-4o": {"input": "cheap", "output": 1}}}')
    done = run_cli("serve", "--port", "0", "--db", ":memory:", "--prices", str(bad))
    assert done.returncode == 2
    assert one_line(done) == (
        f"otelflow serve: prices: {bad}: models.gpt-4o.input: expected a number of USD per 1M tokens, >= 0"
    )
    missing = run_cli("serve", "--port", "0", "--db", ":memory:", env={"OTELFLOW_PRICES": str(tmp_path / "none")})
    assert one_line(missing) == f"otelflow serve: prices: {tmp_path / 'none'}: No such file or directory"


def test_run_totals_survive_a_viewer_restart(make_viewer: Callable[..., Viewer], tmp_path: Path) -> None:
    """A run still running when the viewer stops keeps the totals of its ended calls once restored."""
    db = tmp_path / "h.db"
    first = make_viewer(db=db)
    trace, root = trace_id(), span_id()
    attrs = {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini", A.GEN_AI_USAGE_INPUT_TOKENS: 7}
    workflow = record(trace, root, "invoke_workflow w", kind=A.KIND_WORKFLOW, run_id="restored")
    llm_call = record(trace, span_id(), "chat gpt-4o-mini", parent=root, kind=A.KIND_LLM, ended=True, attributes=attrs)
    assert first.post_json([workflow, llm_call]).is_success
    summary = lambda v: httpx.get(f"{v.url}/api/runs/restored", timeout=5).json().get("run") or {}  # noqa: E731
    wait_for(lambda: summary(first).get("llm"), 10, "the totals")
    first.stop()
    second = make_viewer(db=db)
    assert summary(second)["status"] == "running"
    assert (summary(second)["llm"]["calls"], summary(second)["llm"]["input_tokens"]) == (1, 7)


# ------------------------------------------------------------------------------------------------
# Live: the answer so far, and totals that grow as calls end
# ------------------------------------------------------------------------------------------------


def test_the_stream_tells_the_answer_so_far_and_run_totals_as_calls_end(viewer: Viewer) -> None:
    """Snapshots of a streaming call (otelflow's ``otelflow.llm.output.partial``, as ``otelflow.llm`` sets it) reach
    the stream as span.updated with the answer so far; each call that ends adds to the run's totals."""
    trace, root, first, second = trace_id(), span_id(), span_id(), span_id()
    chat = {A.GEN_AI_OPERATION_NAME: "chat", A.GEN_AI_REQUEST_MODEL: "gpt-4o-mini"}
    used = {A.GEN_AI_USAGE_INPUT_TOKENS: 100, A.GEN_AI_USAGE_OUTPUT_TOKENS: 20}

    def call(span: str, ended: bool, **attrs: Any) -> Any:
        rec = record(trace, span, "chat gpt-4o-mini", parent=root, ended=ended, attributes={**chat, **attrs})
        rec.attributes.pop(A.KIND)
        rec.kind = A.KIND_SPAN  # as an instrumentation sends it: recognised by the viewer
        return rec

    with SseClient(f"{viewer.url}/api/stream?run={trace}") as sse:
        workflow = record(trace, root, "invoke_workflow w", kind=A.KIND_WORKFLOW)
        assert viewer.post_json([workflow, call(first, False, **{A.LLM_OUTPUT_PARTIAL: "Hel"})]).is_success
        started = sse.read_until(lambda e: e["event"] == "span.started" and e["data"]["span"]["span_id"] == first)
        assert started["data"]["span"]["llm"]["partial_output"] == "Hel"
        partial = {A.LLM_OUTPUT_PARTIAL: "Hello wor", A.LLM_OUTPUT_CUT: 0, A.LLM_TIME_TO_FIRST_TOKEN_MS: 80.0}
        assert viewer.post_json([call(first, False, **partial)]).is_success
        updated = sse.read_until(lambda e: e["event"] == "span.updated")
        assert updated["data"]["span"]["llm"]["partial_output"] == "Hello wor"
        assert updated["data"]["span"]["llm"]["time_to_first_token_ms"] == 80.0

        assert viewer.post_json([call(first, True, **used)]).is_success
        run = sse.read_until(lambda e: e["event"] == "run.updated" and "llm" in e["data"]["run"])["data"]["run"]
        assert (run["llm"]["calls"], run["llm"]["input_tokens"]) == (1, 100)
        assert viewer.post_json([call(second, True, **used)]).is_success
        run = sse.read_until(lambda e: e["event"] == "run.updated" and e["data"]["run"]["llm"]["calls"] == 2)
        assert run["data"]["run"]["llm"]["output_tokens"] == 40
        assert run["data"]["run"]["llm"]["cost_usd"] == pytest.approx(2 * cost(100, 20))


def test_messages_sent_as_log_events_fill_the_llm_object(viewer: Viewer) -> None:
    """openai-v2 in event mode: the messages leave as a ``gen_ai.client.inference.operation.details`` log record,
    join the chat span as an event (``POST /v1/logs``), and the span's llm object reads them from it."""
    from tests.viewer.test_logs_genai import _PROGRAM

    env = {
        **os.environ,
        "VIEWER_URL": viewer.url,
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "event_only",
    }
    with local_llm.serve() as llm_url:
        done = subprocess.run(
            [sys.executable, "-c", _PROGRAM], env={**env, "LLM_URL": llm_url}, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr

    def chat() -> dict[str, Any] | None:
        detail = httpx.get(f"{viewer.url}/api/runs/genai-events-run", timeout=5).json()
        found = [s for s in detail.get("spans", []) if s["kind"] == A.KIND_LLM and s["events"]]
        return found[0] if found else None

    span = wait_for(chat, 15, "the chat span with its message event")
    assert A.GEN_AI_INPUT_MESSAGES not in span["attributes"]  # the content came only as an event
    llm = span["llm"]
    assert [(m["role"], m["content"]) for m in llm["input_messages"]] == [
        ("system", "be brief"),
        ("user", "hello there"),
    ]
    assert [m["content"] for m in llm["output_messages"]] == ["Echo: hello there"]
    assert (llm["model"], llm["input_tokens"], llm["output_tokens"]) == ("gpt-4o-mini-2024-07-18", 4, 3)


def _partials_before_end(events: list[dict[str, Any]], name: str) -> list[str]:
    """The answers so far that the stream told for the span named ``name`` before its span.ended."""
    partials: list[str] = []
    for e in events:
        span = e["data"].get("span") or {}
        if span.get("name") != name:
            continue
        if e["event"] == "span.ended":
            return partials
        partial = (span.get("llm") or {}).get("partial_output")
        if partial and (not partials or partials[-1] != partial):
            partials.append(partial)
    raise AssertionError(f"no span.ended for {name}")


def test_a_streamed_openinference_call_shows_its_answer_growing_before_it_ends(viewer: Viewer) -> None:
    """OpenInference keeps a streamed call's chunks in its stream wrapper until the stream ends; otelflow taps it,
    so the answer so far reaches the stream while the call runs, and the ended span carries it only as output."""
    from openinference.instrumentation.openai import OpenAIInstrumentor

    provider = TracerProvider(resource=Resource.create({"service.name": "llm-live"}))
    telemetry = otelflow.configure(tracer_provider=provider, live=viewer.url, otlp=False)
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        with SseClient(f"{viewer.url}/api/stream?type=span") as sse:
            wait_for(lambda: viewer.hub.broadcast.subscriber_count == 1)
            with (
                local_llm.serve(chunk_delay=0.15) as base_url,
                openai.OpenAI(base_url=base_url, api_key="k") as client,
                otelflow.workflow("live_answer", run_id="llm-live-oi"),
            ):
                stream = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": "one two three four five six"}],
                    stream=True,
                )
                answer = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert telemetry.force_flush(10_000)
            sse.read_until(lambda e: e["event"] == "span.ended" and e["data"]["span"]["name"] == "ChatCompletion")
    finally:
        instrumentor.uninstrument()
        telemetry.shutdown()
    partials = _partials_before_end(sse.events, "ChatCompletion")
    assert len(partials) >= 2, partials  # it grew while the call ran
    assert all(answer.startswith(p) for p in partials), (partials, answer)
    ended = next(e for e in sse.events if e["event"] == "span.ended" and e["data"]["span"]["name"] == "ChatCompletion")
    llm = ended["data"]["span"]["llm"]
    assert llm["partial_output"] is None
    assert llm["time_to_first_token_ms"] > 0
    assert A.LLM_OUTPUT_PARTIAL not in ended["data"]["span"]["attributes"]


def test_a_streamed_openai_v2_call_shows_its_answer_growing_before_it_ends(viewer: Viewer) -> None:
    """examples/openai_live.py (openai-v2, message content on spans) as a worker, watched over SSE: the streaming
    call's answer so far is in the stream before its span ends."""
    with SseClient(f"{viewer.url}/api/stream?type=span") as sse:
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 1)
        openai_live(viewer, "llm-v2-live")
        ended_run(viewer, "llm-v2-live", spans=5)
        sse.read_until(lambda e: e["event"] == "span.ended" and e["data"]["span"]["name"].startswith("invoke_workflow"))
    streamed = [
        e["data"]["span"]["span_id"]
        for e in sse.events
        if e["event"] == "span.ended" and (e["data"]["span"].get("llm") or {}).get("time_to_first_token_ms")
    ]
    assert len(streamed) == 1, "the streaming call has a time to its first token"
    partials = [
        (e["data"]["span"].get("llm") or {}).get("partial_output")
        for e in sse.events
        if e["event"] in ("span.started", "span.updated") and e["data"]["span"]["span_id"] == streamed[0]
    ]
    assert [p for p in partials if p], "the answer so far was in the stream before the span ended"
