"""EngineInstrumentor: the span tree of instrumented engine runs, and instrument/uninstrument being exact."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import otelflow
from otelflow import attributes as A
from otelflow import engine
from otelflow.engine import AsyncFlow, AsyncNode, Flow, Node, NodeTimeoutError, Parallel
from otelflow.engine.instrumentor import EngineInstrumentor
from tests._engine_helpers import (
    GUARD_S,
    Hang,
    Meet,
    cancel_once_started,
    engine_instrumented,
    memory_exporter,
    opentelemetry_instrument,
    run,
)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """A real SDK provider with an in-memory exporter, set up through otelflow.configure; not instrumented."""
    with memory_exporter() as memory:
        yield memory


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    """The exporter, with the engine instrumented for the test."""
    with engine_instrumented():
        yield exporter


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    named = {span.name: span for span in finished}
    assert len(named) == len(finished), "span names are unique in these tests"
    return named


def parent_of(span: ReadableSpan, named: dict[str, ReadableSpan]) -> str | None:
    if span.parent is None:
        return None
    for name, other in named.items():
        if other.context is not None and other.context.span_id == span.parent.span_id:
            return name
    raise AssertionError(f"parent of {span.name} not exported")


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(event.attributes or {}) for event in span.events if event.name == name]


# --- nodes used below ---------------------------------------------------------------------------------


class Plan(Node):
    kind = "agent"

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["topic"]

    def exec(self, prep_result: Any) -> Any:
        return f"plan for {prep_result}"

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["plan"] = exec_result
        return None


class Search(Node):
    kind = "tool"

    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["hits"] = [1, 2]
        return None


class Write(Node):
    def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str | None:
        shared["text"] = "done"
        return "publish"


# --- the span tree --------------------------------------------------------------------------------------


def test_flow_run_is_a_workflow_span_with_graph_and_node_spans_by_kind(spans: InMemorySpanExporter) -> None:
    plan = Plan()
    plan >> Search() >> Write()
    flow = Flow(start=plan, name="pipeline")
    flow.run({"topic": "otel"})

    named = by_name(spans)
    assert set(named) == {"invoke_workflow pipeline", "invoke_agent Plan", "execute_tool Search", "Write"}
    root = named["invoke_workflow pipeline"]
    assert root.parent is None
    assert all(parent_of(named[n], named) == root.name for n in named if n != root.name)
    attrs = dict(root.attributes or {})
    assert attrs[A.KIND] == A.KIND_WORKFLOW
    assert attrs[A.GEN_AI_WORKFLOW_NAME] == "pipeline"
    assert json.loads(str(attrs[A.WORKFLOW_GRAPH])) == flow.graph()
    assert json.loads(str(attrs[A.INPUT_VALUE])) == {"topic": "otel"}
    assert json.loads(str(attrs[A.OUTPUT_VALUE]))["text"] == "done"

    agent_attrs = dict(named["invoke_agent Plan"].attributes or {})
    assert agent_attrs[A.KIND] == A.KIND_AGENT
    assert agent_attrs[A.NODE_ID] == "Plan"
    assert agent_attrs[A.INPUT_VALUE] == "otel"
    assert agent_attrs[A.OUTPUT_VALUE] == "plan for otel"
    assert dict(named["execute_tool Search"].attributes or {})[A.KIND] == A.KIND_TOOL
    node_attrs = dict(named["Write"].attributes or {})
    assert (node_attrs[A.KIND], node_attrs[A.NODE_ID]) == (A.KIND_NODE, "Write")
    assert A.INPUT_VALUE not in node_attrs  # prep returned None
    assert all(span.status.status_code != StatusCode.ERROR for span in named.values())


def test_transitions_are_data_flow_events_and_progress_counts_finished_nodes(spans: InMemorySpanExporter) -> None:
    plan = Plan()
    plan >> Search() >> Write()
    Flow(start=plan, name="pipeline").run({"topic": "otel"})

    root = by_name(spans)["invoke_workflow pipeline"]
    flows = events(root, A.EVENT_DATA_FLOW)
    assert [(e[A.DATA_FLOW_FROM], e[A.DATA_FLOW_TO]) for e in flows] == [
        ("Plan", "Search"),
        ("Search", "Write"),
        ("Write", "pipeline"),  # the last node's writes flow out of the workflow
    ]
    assert flows[0][A.DATA_FLOW_KEYS] == ("plan",)
    assert flows[0][A.DATA_FLOW_BYTES] == len('"plan for otel"')
    assert flows[1][A.DATA_FLOW_KEYS] == ("hits",)
    progress = events(root, A.EVENT_PROGRESS)
    assert [(p[A.PROGRESS_COMPLETED], p[A.PROGRESS_TOTAL]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert progress[-1][A.PROGRESS_PERCENT] == 100.0


def test_a_flow_that_ends_early_reports_100_percent_when_it_finishes(spans: InMemorySpanExporter) -> None:
    router = Write()  # returns "publish", which is not connected
    router - "revise" >> Plan()
    Flow(start=router, name="short").run({})
    progress = events(by_name(spans)["invoke_workflow short"], A.EVENT_PROGRESS)
    assert [p[A.PROGRESS_PERCENT] for p in progress] == [50.0, 100.0]
    assert progress[-1][A.PROGRESS_MESSAGE] == "finished"


class Flaky(Node):
    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.calls = 0

    def exec(self, prep_result: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError(f"attempt {self.calls} failed")
        return "ok"


def test_retries_are_events_on_the_node_span(spans: InMemorySpanExporter) -> None:
    Flow(start=Flaky(2, name="flaky", max_retries=3, wait=0.001, backoff=2.0), name="f").run({})
    node_span = by_name(spans)["flaky"]
    assert events(node_span, A.EVENT_RETRY) == [
        {A.RETRY_ATTEMPT: 1, A.RETRY_WAIT_S: 0.001, A.RETRY_ERROR: "ConnectionError: attempt 1 failed"},
        {A.RETRY_ATTEMPT: 2, A.RETRY_WAIT_S: 0.002, A.RETRY_ERROR: "ConnectionError: attempt 2 failed"},
    ]
    assert node_span.status.status_code != StatusCode.ERROR


def test_fallback_is_an_event_and_the_span_succeeds(spans: InMemorySpanExporter) -> None:
    class WithFallback(Flaky):
        def exec_fallback(self, prep_result: Any, exc: Exception) -> Any:
            return "cached"

    Flow(start=WithFallback(9, name="fb", max_retries=2), name="f").run({})
    node_span = by_name(spans)["fb"]
    assert [e[A.RETRY_ATTEMPT] for e in events(node_span, A.EVENT_RETRY)] == [1]
    assert events(node_span, A.EVENT_FALLBACK) == [
        {A.FALLBACK_ERROR: "ConnectionError: attempt 2 failed", A.FALLBACK_TO: "exec_fallback"}
    ]
    assert dict(node_span.attributes or {})[A.OUTPUT_VALUE] == "cached"
    assert node_span.status.status_code != StatusCode.ERROR


def test_an_escaping_error_ends_node_and_workflow_spans_with_error(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ConnectionError, match="attempt 2 failed"):
        Flow(start=Flaky(9, name="down", max_retries=2), name="f").run({})
    named = by_name(spans)
    for name in ("down", "invoke_workflow f"):
        span = named[name]
        assert span.status.status_code == StatusCode.ERROR
        assert dict(span.attributes or {})[A.ERROR_TYPE] == "ConnectionError"
        assert [e.name for e in span.events if e.name == A.EVENT_EXCEPTION] == [A.EVENT_EXCEPTION]


def test_sync_timeouts_are_retries_and_spans_in_exec_are_children_of_the_node(
    spans: InMemorySpanExporter,
) -> None:
    release = threading.Event()
    looked_up = threading.Semaphore(0)

    @otelflow.tool("lookup")
    def lookup() -> str:
        return "found"

    class Slow(Node):
        def exec(self, prep_result: Any) -> Any:
            lookup()  # runs in the timeout worker thread
            looked_up.release()
            release.wait(GUARD_S)

    try:
        with pytest.raises(NodeTimeoutError):
            Slow(name="slow", timeout=0.05, max_retries=2).run({})
    finally:
        release.set()
    assert looked_up.acquire(timeout=GUARD_S)  # both abandoned attempts got as far as their tool call
    assert looked_up.acquire(timeout=GUARD_S)
    named = {span.name: span for span in spans.get_finished_spans()}
    node_span = named["slow"]
    assert [e[A.RETRY_ERROR] for e in events(node_span, A.EVENT_RETRY)] == [
        "NodeTimeoutError: node 'slow': exec did not finish within timeout=0.05 s; raise the node's "
        "timeout if the work legitimately takes longer"
    ]
    assert dict(node_span.attributes or {})[A.ERROR_TYPE] == "otelflow.engine.NodeTimeoutError"
    lookups = [span for span in spans.get_finished_spans() if span.name == "execute_tool lookup"]
    assert len(lookups) == 2
    assert all(span.parent is not None and span.parent.span_id == node_span.context.span_id for span in lookups)


def test_nested_flows_are_nested_workflow_spans(spans: InMemorySpanExporter) -> None:
    inner = Flow(start=Search(), name="inner")
    plan = Plan()
    plan >> inner >> Write()
    Flow(start=plan, name="outer").run({"topic": "x"})
    named = by_name(spans)
    assert parent_of(named["invoke_workflow inner"], named) == "invoke_workflow outer"
    assert parent_of(named["execute_tool Search"], named) == "invoke_workflow inner"
    assert parent_of(named["Write"], named) == "invoke_workflow outer"
    assert dict(named["invoke_workflow inner"].attributes or {})[A.NODE_ID] == "inner"
    outer_flows = events(named["invoke_workflow outer"], A.EVENT_DATA_FLOW)
    assert [(e[A.DATA_FLOW_FROM], e[A.DATA_FLOW_TO]) for e in outer_flows] == [
        ("Plan", "inner"),
        ("inner", "Write"),
        ("Write", "outer"),
    ]
    assert [e[A.DATA_FLOW_TO] for e in events(named["invoke_workflow inner"], A.EVENT_DATA_FLOW)] == ["inner"]


def test_the_outermost_workflow_span_carries_the_run_id_and_nested_flows_do_not(spans: InMemorySpanExporter) -> None:
    inner = Flow(start=Search(), name="inner")
    plan = Plan()
    plan >> inner >> Write()
    Flow(start=plan, name="outer").run({"topic": "x"}, run_id="job-123")
    named = by_name(spans)
    assert dict(named["invoke_workflow outer"].attributes or {})[A.RUN_ID] == "job-123"
    without = [name for name, span in named.items() if A.RUN_ID not in (span.attributes or {})]
    assert sorted(without) == ["Write", "execute_tool Search", "invoke_agent Plan", "invoke_workflow inner"]
    spans.clear()
    Flow(start=Write(), name="anonymous").run({})
    assert A.RUN_ID not in (by_name(spans)["invoke_workflow anonymous"].attributes or {})


def test_concurrent_async_runs_each_carry_their_own_run_id(spans: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        events = {"a": asyncio.Event(), "b": asyncio.Event()}
        flows = {
            side: AsyncFlow(start=Meet(side, events, partner), name=f"wf_{side}")
            for side, partner in (("a", "b"), ("b", "a"))
        }
        await asyncio.gather(*(flow.run_async({}, run_id=f"run-{side}") for side, flow in flows.items()))

    run(scenario())
    named = by_name(spans)
    assert dict(named["invoke_workflow wf_a"].attributes or {})[A.RUN_ID] == "run-a"
    assert dict(named["invoke_workflow wf_b"].attributes or {})[A.RUN_ID] == "run-b"


# --- async, parallel, cancellation ----------------------------------------------------------------------


def test_parallel_branches_are_concurrent_children_of_the_parallel_span(spans: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        sync_events = {"left": asyncio.Event(), "right": asyncio.Event()}
        fan = Parallel(Meet("left", sync_events, "right"), Meet("right", sync_events, "left"), name="fan")
        fan >> Write()
        await AsyncFlow(start=fan, name="research").run_async({})

    run(scenario())
    named = by_name(spans)
    assert parent_of(named["fan"], named) == "invoke_workflow research"
    assert parent_of(named["left"], named) == "fan"
    assert parent_of(named["right"], named) == "fan"
    assert parent_of(named["Write"], named) == "invoke_workflow research"
    assert dict(named["left"].attributes or {})[A.OUTPUT_VALUE] == "left"
    # both branches started before either ended: they really overlapped
    left, right = named["left"], named["right"]
    assert left.start_time is not None
    assert right.start_time is not None
    assert left.end_time is not None
    assert right.end_time is not None
    assert max(left.start_time, right.start_time) < min(left.end_time, right.end_time)


def test_a_failing_branch_cancels_the_others_and_every_span_ends(spans: InMemorySpanExporter) -> None:
    class Fail(AsyncNode):
        def __init__(self, started: asyncio.Event) -> None:
            super().__init__(name="fail")
            self.started = started

        async def exec_async(self, prep_result: Any) -> Any:
            await self.started.wait()
            raise ValueError("branch failed")

    async def scenario() -> None:
        started = asyncio.Event()
        await AsyncFlow(start=Parallel(Hang("hang", started), Fail(started), name="fan"), name="wf").run_async({})

    with pytest.raises(ValueError, match="branch failed"):
        run(scenario())
    named = by_name(spans)
    assert set(named) == {"invoke_workflow wf", "fan", "hang", "fail"}
    assert named["fail"].status.description == "ValueError: branch failed"
    assert named["hang"].status.status_code == StatusCode.ERROR
    assert named["hang"].status.description == "cancelled"
    assert named["fan"].status.status_code == StatusCode.ERROR
    assert named["invoke_workflow wf"].status.status_code == StatusCode.ERROR


def test_cancelling_the_flow_task_ends_every_span_as_cancelled(spans: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        started = [asyncio.Event(), asyncio.Event()]
        flow = AsyncFlow(start=Parallel(Hang("h1", started[0]), Hang("h2", started[1]), name="fan"), name="wf")
        await cancel_once_started(flow, started)

    run(scenario())
    named = by_name(spans)
    assert set(named) == {"invoke_workflow wf", "fan", "h1", "h2"}
    for span in named.values():
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description == "cancelled"


def test_flows_in_threads_make_separate_traces(spans: InMemorySpanExporter) -> None:
    barrier = threading.Barrier(2, timeout=GUARD_S)

    class Meet2(Node):
        def exec(self, prep_result: Any) -> Any:
            barrier.wait()

    def work(index: int) -> None:
        Flow(start=Meet2(name=f"step{index}"), name=f"wf{index}").run({})

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GUARD_S)
    named = by_name(spans)
    for i in range(2):
        assert parent_of(named[f"step{i}"], named) == f"invoke_workflow wf{i}"
    assert named["invoke_workflow wf0"].context.trace_id != named["invoke_workflow wf1"].context.trace_id


# --- instrument / uninstrument --------------------------------------------------------------------------

HOOKS = [
    (engine.Node, "_run_node"),
    (engine.AsyncNode, "_run_node_async"),
    (engine.Flow, "_run_flow"),
    (engine.AsyncFlow, "_run_flow_async"),
    (engine.Node, "_on_prepared"),
    (engine.Node, "_on_executed"),
    (engine.Node, "_on_attempt_failed"),
    (engine.Node, "_on_fallback"),
    (engine.Flow, "_on_transition"),
    (engine.Flow, "_on_progress"),
]


def test_instrumenting_twice_does_not_double_spans_and_uninstrument_restores_exactly(
    exporter: InMemorySpanExporter,
) -> None:
    found = [c for m in (engine, engine.nodes, engine.flows) for c in vars(m).values() if isinstance(c, type)]
    classes = list(dict.fromkeys(c for c in found if c.__module__.startswith(engine.__name__)))
    originals = {(owner, name): value for owner in classes for name, value in vars(owner).items()}
    instrumentor = EngineInstrumentor()
    instrumentor.instrument()
    instrumentor.instrument()
    instrumentor._instrument()  # even bypassing BaseInstrumentor's guard, nothing is wrapped twice
    try:
        for owner, name in HOOKS:
            assert vars(owner)[name] is not originals[(owner, name)]
            assert vars(owner)[name].__wrapped__ is originals[(owner, name)]  # one layer only
        Flow(start=Write(), name="once").run({})
        assert sorted(span.name for span in exporter.get_finished_spans()) == ["Write", "invoke_workflow once"]
    finally:
        instrumentor.uninstrument()
    for (owner, name), value in originals.items():
        assert vars(owner)[name] is value, f"{owner.__name__}.{name} not restored"
    exporter.clear()
    Flow(start=Write(), name="untraced").run({})
    assert exporter.get_finished_spans() == ()
    assert list(instrumentor.instrumentation_dependencies()) == []


def test_instrumented_engine_tests_still_hold(spans: InMemorySpanExporter) -> None:
    """The wrapped engine behaves as the plain one: actions, loops, results."""
    counter_calls: list[int] = []

    class Count(Node):
        def post(self, shared: dict[str, Any], prep_result: Any, exec_result: Any) -> str:
            shared["n"] = shared.get("n", 0) + 1
            counter_calls.append(shared["n"])
            return "again" if shared["n"] < 3 else "stop"

    counter = Count()
    counter - "again" >> counter
    shared: dict[str, Any] = {}
    assert Flow(start=counter, name="loop").run(shared) == engine.DEFAULT_ACTION
    assert counter_calls == [1, 2, 3]
    assert len([s for s in spans.get_finished_spans() if s.name == "Count"]) == 3


# --- opentelemetry-instrument ---------------------------------------------------------------------------

SCRIPT = """
from otelflow.engine import Flow, Node

class Hello(Node):
    kind = "agent"
    def post(self, shared, prep_result, exec_result):
        shared["greeting"] = "hi"

Flow(start=Hello(), name="hello").run({})
"""


def test_the_entry_points_are_registered() -> None:
    instrumentors = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor")}
    configurators = {ep.name: ep for ep in entry_points(group="opentelemetry_configurator")}
    assert instrumentors["otelflow_engine"].load() is EngineInstrumentor
    assert configurators["otelflow"].load() is otelflow.config.Configurator


def test_opentelemetry_instrument_traces_an_unchanged_engine_program(tmp_path: Path) -> None:
    """``opentelemetry-instrument python app.py`` finds the configurator and the instrumentor (real entry points)."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(SCRIPT))
    result = opentelemetry_instrument(script, {"OTEL_SERVICE_NAME": "engine-app"})
    assert '"name": "invoke_workflow hello"' in result.stdout, result.stderr
    assert '"name": "invoke_agent Hello"' in result.stdout
    assert '"name": "otelflow.data_flow"' in result.stdout
    assert '"service.name": "engine-app"' in result.stdout
    assert "already instrumented" not in result.stderr


def test_instrument_is_quiet_when_already_instrumented(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    EngineInstrumentor().instrument()  # as a script under `otelflow run` does
    assert "already instrumented" not in caplog.text
    Flow(start=Write(), name="once").run({})
    assert len(spans.get_finished_spans()) == 2


def test_a_flow_marked_as_agent_is_an_agent_span(spans: InMemorySpanExporter) -> None:
    crew = AsyncFlow(start=Meet("solo", {"solo": asyncio.Event()}, "solo"), name="crew", kind="agent")
    run(AsyncFlow(start=crew, name="outer").run_async({}))
    named = by_name(spans)
    assert parent_of(named["invoke_agent crew"], named) == "invoke_workflow outer"
    assert parent_of(named["solo"], named) == "invoke_agent crew"
    assert dict(named["invoke_agent crew"].attributes or {})[A.NODE_ID] == "crew"


def test_a_badly_built_flow_still_shows_a_failed_workflow_span(spans: InMemorySpanExporter) -> None:
    with pytest.raises(engine.FlowDefinitionError, match="no start node"):
        Flow(name="empty").run({})
    span = by_name(spans)["invoke_workflow empty"]
    assert span.status.status_code == StatusCode.ERROR
    assert A.WORKFLOW_GRAPH not in dict(span.attributes or {})
