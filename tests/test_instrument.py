"""workflow/agent/node/tool: every decorator form, context managers, nesting, errors, lifecycle events."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

import otelflow
from otelflow import attributes as A
from tests.conftest import Traced

# --- span shape --------------------------------------------------------------------------------------


def test_each_kind_has_the_designed_name_and_attributes(traced: Traced) -> None:
    graph = {"nodes": [{"id": "a"}, {"id": "b"}], "edges": [{"from": "a", "to": "b"}]}
    with otelflow.workflow("content_pipeline", run_id="job-123", graph=graph):
        with otelflow.agent("topic_identification"):
            pass
        with otelflow.node("kb_ingestion"):
            pass
        with otelflow.tool("web_search"):
            pass

    wf = traced.span("invoke_workflow content_pipeline")
    assert dict(wf.attributes or {}) == {
        A.GEN_AI_OPERATION_NAME: "invoke_workflow",
        A.GEN_AI_WORKFLOW_NAME: "content_pipeline",
        A.KIND: "workflow",
        A.OPENINFERENCE_SPAN_KIND: "CHAIN",
        A.RUN_ID: "job-123",
        A.WORKFLOW_GRAPH: json.dumps(graph, separators=(",", ":")),
    }
    ag = traced.span("invoke_agent topic_identification")
    assert ag.attributes is not None
    assert ag.attributes[A.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert ag.attributes[A.GEN_AI_AGENT_NAME] == "topic_identification"
    assert ag.attributes[A.GEN_AI_AGENT_ID] == "topic_identification"
    assert ag.attributes[A.KIND] == "agent"
    assert ag.attributes[A.OPENINFERENCE_SPAN_KIND] == "AGENT"
    nd = traced.span("kb_ingestion")
    assert nd.attributes is not None
    assert nd.attributes[A.KIND] == "node"
    assert nd.attributes[A.NODE_ID] == "kb_ingestion"
    assert nd.attributes[A.OPENINFERENCE_SPAN_KIND] == "CHAIN"
    tl = traced.span("execute_tool web_search")
    assert tl.attributes is not None
    assert tl.attributes[A.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert tl.attributes[A.GEN_AI_TOOL_NAME] == "web_search"
    assert tl.attributes[A.OPENINFERENCE_SPAN_KIND] == "TOOL"
    for child in (ag, nd, tl):
        assert child.parent is not None
        assert child.parent.span_id == wf.context.span_id
        assert child.context.trace_id == wf.context.trace_id


def test_attributes_are_set_at_span_start(traced: Traced) -> None:
    with otelflow.agent("planner", agent_id="planner-1"):
        pass
    starts = [r for r in traced.live() if r.phase == "start"]
    assert len(starts) == 1
    assert starts[0].attributes[A.GEN_AI_AGENT_ID] == "planner-1"
    assert starts[0].kind == "agent"
    assert starts[0].status == "running"


def test_bad_names_and_graphs_are_clear_errors(traced: Traced) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        otelflow.agent("")
    with pytest.raises(ValueError, match="Expecting property name"):
        otelflow.workflow("w", graph="{not json")
    with pytest.raises(TypeError, match="needs a name"), otelflow.node():
        pass
    with pytest.raises(TypeError, match="decorates a function"):
        otelflow.tool("t")(42)  # type: ignore[type-var]


# --- decorator forms ------------------------------------------------------------------------------------


def test_sync_function_captures_arguments_and_return_value(traced: Traced) -> None:
    @otelflow.tool("web_search")
    def search(q: str, limit: int = 3) -> list[str]:
        return [f"{q}-{i}" for i in range(limit)]

    assert search("otel", limit=2) == ["otel-0", "otel-1"]
    span = traced.span("execute_tool web_search")
    assert span.attributes is not None
    assert json.loads(str(span.attributes[A.INPUT_VALUE])) == {"q": "otel", "limit": 2}
    assert span.attributes[A.INPUT_MIME_TYPE] == "application/json"
    assert json.loads(str(span.attributes[A.OUTPUT_VALUE])) == ["otel-0", "otel-1"]
    assert span.status.status_code is StatusCode.UNSET


def test_bare_decorator_takes_the_function_name(traced: Traced) -> None:
    @otelflow.agent
    def summarise(text: str) -> str:
        return text.upper()

    assert summarise("hi") == "HI"
    span = traced.span("invoke_agent summarise")
    assert span.attributes is not None
    assert span.attributes[A.OUTPUT_VALUE] == "HI"
    assert span.attributes[A.OUTPUT_MIME_TYPE] == "text/plain"
    assert summarise.__name__ == "summarise"


def test_methods_do_not_capture_self(traced: Traced) -> None:
    class Writer:
        secret = object()

        @otelflow.node("write")
        def write(self, topic: str) -> str:
            return topic

    Writer().write("x")
    span = traced.span("write")
    assert span.attributes is not None
    assert json.loads(str(span.attributes[A.INPUT_VALUE])) == {"topic": "x"}


def test_async_function(traced: Traced) -> None:
    @otelflow.agent("topic_identification")
    async def identify(brief: str) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"topic": brief}

    assert asyncio.run(identify("python testing")) == {"topic": "python testing"}
    span = traced.span("invoke_agent topic_identification")
    assert span.attributes is not None
    assert json.loads(str(span.attributes[A.OUTPUT_VALUE])) == {"topic": "python testing"}
    assert span.end_time is not None


def test_generator_span_covers_the_iteration_and_is_not_current_between_items(traced: Traced) -> None:
    @otelflow.tool("paginate")
    def pages(n: int) -> Iterator[int]:
        for i in range(n):
            with otelflow.node("page"):
                pass
            yield i

    seen_between = []
    with otelflow.workflow("wf"):
        for item in pages(3):
            current = otelflow.current()
            assert current is not None
            seen_between.append(current.name)
            assert item >= 0
    assert seen_between == ["wf", "wf", "wf"]  # the consumer never runs inside the generator's span
    gen_span = traced.span("execute_tool paginate")
    assert gen_span.attributes is not None
    assert gen_span.attributes[A.GENERATOR_ITEMS] == 3
    assert json.loads(str(gen_span.attributes[A.OUTPUT_VALUE])) == [0, 1, 2]
    pages_spans = [s for s in traced.spans() if s.name == "page"]
    assert len(pages_spans) == 3
    assert all(p.parent is not None and p.parent.span_id == gen_span.context.span_id for p in pages_spans)
    assert gen_span.parent is not None
    assert gen_span.parent.span_id == traced.span("invoke_workflow wf").context.span_id


def test_generator_closed_early_ends_ok_and_send_and_throw_reach_it(traced: Traced) -> None:
    @otelflow.node("echo")
    def echo() -> Iterator[Any]:
        received = None
        while True:
            try:
                received = yield received
            except KeyError:
                received = "caught"

    gen = echo()
    assert next(gen) is None
    assert gen.send("a") == "a"
    assert gen.throw(KeyError("k")) == "caught"
    gen.close()
    span = traced.span("echo")
    assert span.status.status_code is StatusCode.UNSET
    assert span.end_time is not None


def test_generator_error_marks_the_span(traced: Traced) -> None:
    @otelflow.node("broken")
    def broken() -> Iterator[int]:
        yield 1
        raise RuntimeError("page 2 failed")

    with pytest.raises(RuntimeError, match="page 2 failed"):
        list(broken())
    span = traced.span("broken")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes[A.ERROR_TYPE] == "RuntimeError"
    assert span.attributes[A.GENERATOR_ITEMS] == 1


def test_async_generator(traced: Traced) -> None:
    @otelflow.agent("streamer")
    async def stream(n: int) -> AsyncIterator[str]:
        for i in range(n):
            await asyncio.sleep(0)
            with otelflow.tool("token"):
                pass
            yield f"t{i}"

    async def main() -> list[str]:
        with otelflow.workflow("wf"):
            out = []
            async for tok in stream(2):
                current = otelflow.current()
                assert current is not None
                assert current.name == "wf"
                out.append(tok)
            return out

    assert asyncio.run(main()) == ["t0", "t1"]
    span = traced.span("invoke_agent streamer")
    assert span.attributes is not None
    assert json.loads(str(span.attributes[A.OUTPUT_VALUE])) == ["t0", "t1"]
    tokens = [s for s in traced.spans() if s.name == "execute_tool token"]
    assert len(tokens) == 2
    assert all(t.parent is not None and t.parent.span_id == span.context.span_id for t in tokens)


def test_async_context_manager_and_handle(traced: Traced) -> None:
    async def main() -> None:
        async with otelflow.workflow("wf", run_id="job-9") as run:
            run.set_attribute("app.tenant", "acme")
            run.set_attribute("app.config", {"depth": 2, "api_key": "k"})
            run.set_input({"brief": "b"})
            run.set_output("done")
            assert len(run.trace_id) == 32

    asyncio.run(main())
    span = traced.span("invoke_workflow wf")
    assert span.attributes is not None
    assert span.attributes["app.tenant"] == "acme"
    assert json.loads(str(span.attributes["app.config"])) == {"depth": 2, "api_key": "[REDACTED]"}
    assert span.attributes[A.OUTPUT_VALUE] == "done"
    assert json.loads(str(span.attributes[A.INPUT_VALUE])) == {"brief": "b"}


def test_explicit_output_is_not_overwritten_by_the_return_value(traced: Traced) -> None:
    @otelflow.node("n")
    def work() -> str:
        handle = otelflow.current()
        assert handle is not None
        handle.set_output({"summary": "short"})
        return "a very long return value"

    work()
    attrs = traced.span("n").attributes
    assert attrs is not None
    assert json.loads(str(attrs[A.OUTPUT_VALUE])) == {"summary": "short"}


# --- nesting ------------------------------------------------------------------------------------------


def test_nesting_across_gather(traced: Traced) -> None:
    @otelflow.agent("researcher")
    async def research(topic: str) -> str:
        await asyncio.sleep(0)
        with otelflow.tool("web_search"):
            await asyncio.sleep(0)
        return topic

    async def main() -> None:
        with otelflow.workflow("parallel"):
            await asyncio.gather(*(research(t) for t in ("a", "b", "c")))

    asyncio.run(main())
    wf = traced.span("invoke_workflow parallel")
    agents = [s for s in traced.spans() if s.name == "invoke_agent researcher"]
    tools = [s for s in traced.spans() if s.name == "execute_tool web_search"]
    assert len(agents) == 3
    assert len(tools) == 3
    assert {a.parent.span_id for a in agents if a.parent} == {wf.context.span_id}
    assert {t.parent.span_id for t in tools if t.parent} == {a.context.span_id for a in agents}


def test_nesting_across_threads(traced: Traced) -> None:
    @otelflow.tool("fetch")
    def fetch(i: int) -> int:
        return i

    async def with_to_thread() -> None:
        with otelflow.workflow("to_thread"):
            await asyncio.gather(*(asyncio.to_thread(fetch, i) for i in range(3)))

    asyncio.run(with_to_thread())
    with otelflow.workflow("pool"), ThreadPoolExecutor(4) as pool:
        list(pool.map(otelflow.propagate(fetch), range(3)))
        ctx = contextvars.copy_context()
        pool.submit(ctx.run, fetch, 99).result()

    for wf_name, count in (("invoke_workflow to_thread", 3), ("invoke_workflow pool", 4)):
        wf = traced.span(wf_name)
        kids = [s for s in traced.spans() if s.parent is not None and s.parent.span_id == wf.context.span_id]
        assert len(kids) == count, wf_name


def test_same_step_object_entered_concurrently(traced: Traced) -> None:
    step = otelflow.node("shared")
    barrier = threading.Barrier(4)

    def work() -> None:
        with step:
            barrier.wait(5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = [s for s in traced.spans() if s.name == "shared"]
    assert len(spans) == 4
    assert all(s.end_time is not None for s in spans)


# --- errors -------------------------------------------------------------------------------------------


class PipelineError(Exception):
    pass


def test_error_is_recorded_and_reraised_unchanged(traced: Traced) -> None:
    original = PipelineError("section 2 failed: password=hunter2")

    @otelflow.agent("writer")
    def write() -> None:
        raise original

    with pytest.raises(PipelineError) as caught:
        write()
    assert caught.value is original
    span = traced.span("invoke_agent writer")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "PipelineError: section 2 failed: password=[REDACTED]"
    assert span.attributes is not None
    assert span.attributes[A.ERROR_TYPE] == "tests.test_instrument.PipelineError"
    (exc_event,) = [e for e in span.events if e.name == "exception"]
    assert exc_event.attributes is not None
    assert exc_event.attributes["exception.type"] == "tests.test_instrument.PipelineError"
    assert "Traceback" in str(exc_event.attributes["exception.stacktrace"])


def test_error_in_async_with_propagates(traced: Traced) -> None:
    async def main() -> None:
        async with otelflow.tool("t"):
            raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):
        asyncio.run(main())
    assert traced.span("execute_tool t").status.status_code is StatusCode.ERROR


def test_cancellation_ends_the_span_as_cancelled(traced: Traced) -> None:
    started = asyncio.Event()

    @otelflow.agent("slow")
    async def slow() -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(slow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    span = traced.span("invoke_agent slow")
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "cancelled"
    assert span.attributes is not None
    assert span.attributes[A.ERROR_TYPE] == "asyncio.exceptions.CancelledError"


# --- lifecycle events -----------------------------------------------------------------------------------


def test_lifecycle_helpers_add_events_and_stream_updates(traced: Traced) -> None:
    with otelflow.workflow("content_pipeline", run_id="job-123") as run:
        otelflow.data_flow("topic_identification", "kb_ingestion", {"topic": "x", "token": "t"})
        otelflow.progress(50, "Processing sections")
        otelflow.progress(completed=3, total=6)
        otelflow.log("warning", "retrying section 2", section=2)
        run.retry(2, TimeoutError("slow"), wait_s=0.5)
        run.fallback(RuntimeError("model down"), to="small-model")
        otelflow.event("custom.checkpoint", {"step": 1})
    span = traced.span("invoke_workflow content_pipeline")
    events = {e.name: dict(e.attributes or {}) for e in span.events}
    assert events[A.EVENT_DATA_FLOW] == {
        A.DATA_FLOW_FROM: "topic_identification",
        A.DATA_FLOW_TO: "kb_ingestion",
        A.DATA_FLOW_BYTES: len(b'{"topic": "x", "token": "[REDACTED]"}'),
        A.DATA_FLOW_KEYS: ("topic", "token"),
    }
    progress = [dict(e.attributes or {}) for e in span.events if e.name == A.EVENT_PROGRESS]
    assert progress == [
        {A.PROGRESS_PERCENT: 50.0, A.PROGRESS_MESSAGE: "Processing sections"},
        {A.PROGRESS_PERCENT: 50.0, A.PROGRESS_COMPLETED: 3, A.PROGRESS_TOTAL: 6},
    ]
    assert events[A.EVENT_LOG] == {A.LOG_LEVEL: "warning", A.LOG_MESSAGE: "retrying section 2", "section": 2}
    assert events[A.EVENT_RETRY] == {A.RETRY_ATTEMPT: 2, A.RETRY_WAIT_S: 0.5, A.RETRY_ERROR: "TimeoutError: slow"}
    assert events[A.EVENT_FALLBACK] == {A.FALLBACK_ERROR: "RuntimeError: model down", A.FALLBACK_TO: "small-model"}
    assert events["custom.checkpoint"] == {"step": 1}

    live = [r for r in traced.live() if r.name == "invoke_workflow content_pipeline"]
    phases = [r.phase for r in live]
    assert phases[0] == "start"
    assert phases[-1] == "end"
    assert phases.count("update") == 7  # one per helper call, each streamed while the span runs
    assert all(r.status == "running" for r in live[:-1])
    assert live[-1].status == "ok"


def test_helpers_reject_nonsense_with_clear_messages(traced: Traced) -> None:
    with otelflow.workflow("wf"):
        with pytest.raises(ValueError, match="between 0 and 100"):
            otelflow.progress(150)
        with pytest.raises(ValueError, match="completed and total together"):
            otelflow.progress(completed=3)
        with pytest.raises(ValueError, match="completed <= total"):
            otelflow.progress(completed=7, total=6)
        with pytest.raises(ValueError, match="level must be one of"):
            otelflow.log("loud", "x")
    assert [e.name for e in traced.span("invoke_workflow wf").events] == []


def test_helpers_outside_any_span_do_nothing(traced: Traced) -> None:
    otelflow.progress(10)
    otelflow.log("info", "nobody listens")
    otelflow.data_flow("a", "b")
    assert traced.spans() == []


def test_log_handler_attaches_python_logging_to_the_current_span(traced: Traced) -> None:
    import logging

    logger = logging.getLogger("app.pipeline")
    handler = otelflow.LogHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.info("outside any span")
        with otelflow.agent("writer"):
            logger.warning("section %d is thin, api_key=%s", 2, "abc123")
    finally:
        logger.removeHandler(handler)
    span = traced.span("invoke_agent writer")
    (event,) = span.events
    assert event.name == A.EVENT_LOG
    assert event.attributes is not None
    assert event.attributes[A.LOG_LEVEL] == "warning"
    assert event.attributes[A.LOG_MESSAGE] == "section 2 is thin, api_key=[REDACTED]"
    assert event.attributes["log.logger"] == "app.pipeline"


def test_many_with_blocks_leave_nothing_behind_in_the_context(traced: Traced) -> None:
    before = len(contextvars.copy_context())
    for i in range(500):
        with otelflow.node(f"n{i}"):
            pass
    assert len(contextvars.copy_context()) <= before + 1
