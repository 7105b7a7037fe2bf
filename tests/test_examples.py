"""The examples: each one's span tree (names, kinds, statuses, events), and example 5 under opentelemetry-instrument."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from otelflow import attributes as A
from otelflow.cli.demo import run_id_for
from otelflow.engine.demo import SCENARIOS, UpstreamError
from otelflow.viewer.app import create_app
from tests._engine_helpers import engine_instrumented, memory_exporter, opentelemetry_instrument, run
from tests.viewer.conftest import Viewer, wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCENARIO_FLOWS = ("content_pipeline", "parallel_research", "flaky_agent")


def load(stem: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"otelflow_example_{stem}", EXAMPLES / f"{stem}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_import_only_public_modules_and_names() -> None:
    """What the examples show can be copied: no import of a private otelflow module or name."""
    private = []
    for path in sorted(EXAMPLES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            private += [f"{path.name}: {n}" for n in names if n.startswith("otelflow") and "._" in n]
    assert private == []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A real SDK provider and in-memory exporter through otelflow.configure, with the engine instrumented."""
    with memory_exporter() as memory, engine_instrumented():
        yield memory


class Tree:
    """The finished spans of one trace, addressed by name."""

    def __init__(self, spans: list[ReadableSpan]) -> None:
        self.spans = sorted(spans, key=lambda s: s.start_time or 0)
        self.by_id = {s.context.span_id: s for s in self.spans if s.context is not None}
        roots = [s for s in self.spans if s.parent is None]
        assert len(roots) == 1, [s.name for s in roots]
        self.root = roots[0]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r} in {[s.name for s in self.spans]}"
        return found[0]

    def children(self, span: ReadableSpan) -> list[str]:
        assert span.context is not None
        return sorted(s.name for s in self.spans if s.parent is not None and s.parent.span_id == span.context.span_id)

    def parent(self, span: ReadableSpan) -> str | None:
        return self.by_id[span.parent.span_id].name if span.parent is not None else None


def traces(exporter: InMemorySpanExporter) -> list[Tree]:
    """One Tree per trace, in the order the traces started."""
    grouped: dict[int, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        assert span.context is not None
        grouped.setdefault(span.context.trace_id, []).append(span)
    return sorted((Tree(s) for s in grouped.values()), key=lambda t: t.root.start_time or 0)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def status(span: ReadableSpan) -> StatusCode:
    return span.status.status_code


def test_01_content_pipeline(spans: InMemorySpanExporter) -> None:
    shared = load("01_content_pipeline").main(pace=0)
    assert shared["review"]["approved"] is True
    [tree] = traces(spans)
    root = tree.root
    assert root.name == "invoke_workflow content_pipeline"
    assert attrs(root)[A.KIND] == A.KIND_WORKFLOW
    graph = json.loads(attrs(root)[A.WORKFLOW_GRAPH])
    assert [n["id"] for n in graph["nodes"]] == ["topic_identification", "kb_ingestion", "section_writer", "reviewer"]
    assert tree.children(root) == [
        "execute_tool kb_ingestion",
        "invoke_agent reviewer",
        "invoke_agent section_writer",
        "invoke_agent topic_identification",
    ]
    assert [attrs(s)[A.KIND] for s in tree.spans[1:]] == ["agent", "tool", "agent", "agent"]
    assert all(status(s) == StatusCode.UNSET for s in tree.spans)
    flows = events(root, A.EVENT_DATA_FLOW)
    assert [(f[A.DATA_FLOW_FROM], f[A.DATA_FLOW_TO]) for f in flows] == [
        ("topic_identification", "kb_ingestion"),
        ("kb_ingestion", "section_writer"),
        ("section_writer", "reviewer"),
        ("reviewer", "content_pipeline"),
    ]
    assert [p[A.PROGRESS_COMPLETED] for p in events(root, A.EVENT_PROGRESS)] == [1, 2, 3, 4]
    sections = events(tree.one("invoke_agent section_writer"), A.EVENT_PROGRESS)
    assert [(p[A.PROGRESS_COMPLETED], p[A.PROGRESS_TOTAL]) for p in sections] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert sections[-1][A.PROGRESS_MESSAGE] == "wrote Conclusion"


def test_02_parallel_research_runs_the_agents_concurrently(spans: InMemorySpanExporter) -> None:
    shared = load("02_parallel_research").main(pace=0.002)
    assert shared["report"] == {"sources": ["code", "papers", "web"], "notes": 9}
    [tree] = traces(spans)
    assert tree.root.name == "invoke_workflow parallel_research"
    assert tree.children(tree.root) == ["fan_out", "invoke_agent research_planner", "invoke_agent synthesizer"]
    agents = ["invoke_agent code_researcher", "invoke_agent papers_researcher", "invoke_agent web_researcher"]
    assert tree.children(tree.one("fan_out")) == agents
    researchers = [tree.one(name) for name in agents]
    assert max(s.start_time or 0 for s in researchers) < min(s.end_time or 0 for s in researchers), "not concurrent"
    for researcher in researchers:
        assert attrs(researcher)[A.KIND] == A.KIND_AGENT
        assert tree.children(researcher) == ["execute_tool read_sources", "execute_tool search"]
    tools = tree.named("execute_tool search")
    assert sorted(attrs(s)[A.NODE_ID] for s in tools) == ["code.search", "papers.search", "web.search"]
    assert all(attrs(s)[A.KIND] == A.KIND_TOOL for s in tools)
    assert all(status(s) == StatusCode.UNSET for s in tree.spans)


def test_03_flaky_agent_recovers_fails_and_is_cancelled(spans: InMemorySpanExporter) -> None:
    outcomes = load("03_flaky_agent").main(pace=0)
    assert outcomes["recovers"].endswith("(rule-based fallback)")
    assert outcomes["fails"].startswith("UpstreamError")
    assert outcomes["cancelled"] == "cancelled"
    recovers, fails, cancelled = traces(spans)

    assert status(recovers.root) == StatusCode.UNSET
    fetch = recovers.one("execute_tool fetch_market_data")
    assert [e[A.RETRY_ATTEMPT] for e in events(fetch, A.EVENT_RETRY)] == [1, 2]
    assert "timed out" in events(fetch, A.EVENT_RETRY)[0][A.RETRY_ERROR]
    analyst = recovers.one("invoke_agent analyst")
    assert [e.name for e in analyst.events] == [A.EVENT_RETRY, A.EVENT_FALLBACK]
    assert status(analyst) == StatusCode.UNSET
    assert "fallback" in attrs(analyst)[A.OUTPUT_VALUE]

    assert [s.name for s in fails.spans] == ["invoke_workflow flaky_agent", "execute_tool fetch_market_data"]
    failed = fails.one("execute_tool fetch_market_data")
    assert status(failed) == status(fails.root) == StatusCode.ERROR
    assert attrs(failed)[A.ERROR_TYPE] == "otelflow.engine.demo.UpstreamError"
    assert [e.name for e in failed.events] == [A.EVENT_RETRY, A.EVENT_RETRY, "exception"]

    stopped = cancelled.one("invoke_agent analyst")
    assert status(stopped) == status(cancelled.root) == StatusCode.ERROR
    assert stopped.status.description == cancelled.root.status.description == "cancelled"
    assert "publish" not in [s.name for s in cancelled.spans]


def test_04_plain_decorators(spans: InMemorySpanExporter) -> None:
    reply = load("04_plain_decorators").main(pace=0)
    assert reply.startswith("Hello!")
    [tree] = traces(spans)
    root = tree.root
    assert root.name == "invoke_workflow support_ticket"
    assert attrs(root)[A.RUN_ID] == "ticket-1042"
    assert tree.children(root) == ["draft_reply", "invoke_agent support_agent"]
    agent = tree.one("invoke_agent support_agent")
    assert tree.children(agent) == ["execute_tool lookup_customer", "execute_tool search_orders"]
    assert [e[A.LOG_MESSAGE] for e in events(agent, A.EVENT_LOG)] == ["context gathered"]
    assert [e[A.RETRY_ATTEMPT] for e in events(tree.one("execute_tool search_orders"), A.EVENT_RETRY)] == [1]
    assert [p[A.PROGRESS_PERCENT] for p in events(root, A.EVENT_PROGRESS)] == [50.0, 100.0]
    assert [e[A.DATA_FLOW_TO] for e in events(root, A.EVENT_DATA_FLOW)] == ["draft_reply"]
    assert attrs(tree.one("draft_reply"))[A.KIND] == A.KIND_NODE
    assert all(status(s) == StatusCode.UNSET for s in tree.spans)


def test_05_engine_program(spans: InMemorySpanExporter) -> None:
    results = load("05_opentelemetry_instrument").main(pace=0)
    assert [bool(r.get("parcels")) for r in results] == [True, False]
    shipped, rejected = traces(spans)
    assert shipped.children(shipped.root) == ["execute_tool charge_payment", "ship_items", "validate_order"]
    charge = shipped.one("execute_tool charge_payment")
    assert [e[A.RETRY_ATTEMPT] for e in events(charge, A.EVENT_RETRY)] == [1]
    edges = json.loads(attrs(shipped.root)[A.WORKFLOW_GRAPH])["edges"]
    assert {"from": "validate_order", "to": "notify_rejection", "action": "reject"} in edges
    assert [attrs(t.root)[A.RUN_ID] for t in (shipped, rejected)] == ["order-A-100", "order-A-101"]
    assert rejected.children(rejected.root) == ["notify_rejection", "validate_order"]
    assert [f[A.DATA_FLOW_TO] for f in events(rejected.root, A.EVENT_DATA_FLOW)] == [
        "notify_rejection",
        "order_fulfilment",
    ]


def test_06_worker_jobs_are_runs_with_ids(spans: InMemorySpanExporter) -> None:
    assert load("06_worker_to_viewer_and_jaeger").main(jobs=2, pace=0) == ["job-1", "job-2"]
    jobs = traces(spans)
    assert [attrs(t.root)[A.RUN_ID] for t in jobs] == ["job-1", "job-2"]
    for tree in jobs:
        assert tree.root.name == "invoke_workflow document_job"
        assert (
            tree.children(tree.root)
            == ["execute_tool fetch_document"] * 3 + ["invoke_agent summarizer"] * 3 + ["store_summary"] * 3
        )
        assert [p[A.PROGRESS_COMPLETED] for p in events(tree.root, A.EVENT_PROGRESS)] == [1, 2, 3]


@pytest.mark.slow
def test_05_under_opentelemetry_instrument_streams_to_a_viewer(tmp_path: Path) -> None:
    """No otelflow code in the program: the entry points set up export and live streaming, and trace the engine."""
    viewer = Viewer(create_app()).start()
    try:
        env = {"OTEL_SERVICE_NAME": "order-flow", "OTELFLOW_VIEWER_URL": viewer.url}
        result = opentelemetry_instrument(EXAMPLES / "05_opentelemetry_instrument.py", env)
        # the program's lines, in order (the console exporter's batches may come before or between them)
        said = [line for line in result.stdout.splitlines() if line.startswith("A-1")]
        assert said == ["A-100 shipped", "A-101 rejected"]
        assert result.stdout.count('"name": "invoke_workflow order_fulfilment"') == 2  # the console exporter

        def ended_runs() -> list[Any]:
            return [r for r in viewer.call(viewer.hub.runs) if r.status != "running"]

        runs: list[Any] = wait_for(lambda: ended_runs() if len(ended_runs()) == 2 else [], 20, "both runs")
        assert {(r.name, r.service) for r in runs} == {("invoke_workflow order_fulfilment", "order-flow")}
        assert sorted(r.alias for r in runs) == ["order-A-100", "order-A-101"]
    finally:
        viewer.stop()


def test_the_demo_scenarios_name_their_runs(spans: InMemorySpanExporter) -> None:
    async def every_scenario() -> None:
        for index, scenario in enumerate(SCENARIOS):
            with contextlib.suppress(UpstreamError):
                await scenario.run(0.0, 0, run_id_for(index))

    run(every_scenario())
    runs = traces(spans)
    assert [attrs(t.root)[A.RUN_ID] for t in runs] == [f"demo-{i:04d}" for i in range(1, len(SCENARIOS) + 1)]
    assert [t.root.name for t in runs][:3] == [f"invoke_workflow {name}" for name in SCENARIO_FLOWS]
    assert all(A.RUN_ID not in attrs(span) for t in runs for span in t.spans if span is not t.root)
