"""A cancelled run is a state of its own (not a failure) on the stream, the REST API and the statistics, and an
OTel status ERROR on export; name filters match the names the pages show; pages answer HEAD."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

import otelflow
from otelflow import attributes as A
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for


def _get(viewer: Viewer, path: str, **params: Any) -> Any:
    response = httpx.get(f"{viewer.url}{path}", params=params, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_cancelled_task_is_cancelled_not_failed_and_exports_as_an_error(viewer: Viewer) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "cancel-test"}))
    telemetry = otelflow.configure(tracer_provider=provider, live=viewer.url, otlp=False)

    async def job(started: asyncio.Event) -> None:
        with otelflow.workflow("cancel_me", run_id="job-cancel"), otelflow.agent("thinker"):
            started.set()
            await asyncio.Event().wait()  # until cancelled

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.ensure_future(job(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert telemetry.force_flush(10_000)
    telemetry.shutdown()

    run = wait_for(lambda: _get(viewer, "/api/runs/job-cancel")["run"], what="the run")
    wait_for(lambda: _get(viewer, "/api/runs/job-cancel")["run"]["status"] != A.STATUS_RUNNING, what="its end")
    detail = _get(viewer, "/api/runs/job-cancel")
    run = detail["run"]
    assert run["status"] == A.STATUS_CANCELLED
    assert run["error_count"] == 0, "a cancellation is not a failure"
    statuses = {s["name"]: s["status"] for s in detail["spans"]}
    assert statuses == {"invoke_workflow cancel_me": A.STATUS_CANCELLED, "invoke_agent thinker": A.STATUS_CANCELLED}
    thinker = next(s for s in detail["spans"] if s["name"] == "invoke_agent thinker")
    assert thinker["error"]["type"].endswith("CancelledError"), "what stopped it stays visible"

    listed = _get(viewer, "/api/runs", status=A.STATUS_CANCELLED)["runs"]
    assert [r["otelflow_run_id"] for r in listed] == ["job-cancel"]
    assert _get(viewer, "/api/runs", status=A.STATUS_ERROR)["runs"] == []

    stats = {s["name"]: s for s in _get(viewer, "/api/stats")["stats"]}
    agent = stats["invoke_agent thinker"]
    assert (agent["cancelled"], agent["count"], agent["error_rate"]) == (1, 0, 0.0)
    assert agent["p50_ms"] is None, "no duration of finished work to tell"

    exported = _get(viewer, f"/api/runs/{run['trace_id']}/export")
    spans = [s for rs in exported["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert {s["status"]["code"] for s in spans} == {2}, "OTel's status is kept as it was: ERROR"
    assert {s["status"].get("message") for s in spans} == {A.STATUS_CANCELLED}


def test_cancellations_recorded_by_other_code_are_cancelled(viewer: Viewer) -> None:
    """Spans of the plain OTel SDK over OTLP: a status ERROR ``CancelledError: `` (how SDKs before 1.31 ended a
    span an asyncio cancellation went through) or an ``error.type`` naming ``KeyboardInterrupt`` is a
    cancellation; any other error stays a failure."""
    provider = TracerProvider(resource=Resource.create({"service.name": "plain-sdk"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{viewer.url}/v1/traces")))
    tracer = provider.get_tracer("test")
    ends = {
        "job-async": ({}, "CancelledError: "),
        "job-ctrl-c": ({A.ERROR_TYPE: "KeyboardInterrupt"}, "interrupted"),
        "job-fails": ({A.ERROR_TYPE: "ValueError"}, "ValueError: bad"),
    }
    for run_id, (attributes, description) in ends.items():
        with tracer.start_as_current_span("invoke_workflow batch", attributes={A.RUN_ID: run_id, **attributes}) as span:
            span.set_status(Status(StatusCode.ERROR, description))
    provider.shutdown()
    statuses = {run_id: wait_for(lambda r=run_id: _get(viewer, f"/api/runs/{r}")["run"]["status"]) for run_id in ends}
    assert statuses == {"job-async": A.STATUS_CANCELLED, "job-ctrl-c": A.STATUS_CANCELLED, "job-fails": A.STATUS_ERROR}


def test_a_name_filter_matches_the_name_the_pages_show(viewer: Viewer) -> None:
    wanted, other = trace_id(), trace_id()
    root, tool = span_id(), span_id()
    with SseClient(f"{viewer.url}/api/stream?name=search") as sse:
        wait_for(lambda: viewer.hub.broadcast.subscriber_count == 1)
        viewer.post_json([record(other, span_id(), "invoke_workflow unrelated", kind="workflow", ended=True)])
        viewer.post_json(
            [
                record(wanted, root, "invoke_workflow research", kind="workflow", run_id="job-n"),
                record(wanted, tool, "execute_tool search", parent=root, kind="tool", ended=True),
                record(wanted, span_id(), "execute_tool fetch", parent=root, kind="tool", ended=True),
                record(wanted, root, "invoke_workflow research", kind="workflow", run_id="job-n", ended=True),
            ]
        )
        sse.read_until(lambda e: e["event"] == "span.ended")
        viewer.post_json([record(trace_id(), span_id(), "invoke_workflow search", kind="workflow", ended=True)])
        last = sse.read_until(lambda e: e["event"] == "run.ended")
    told = [(e["event"], (e["data"].get("span") or e["data"].get("run") or {}).get("name")) for e in sse.events]
    assert told == [
        ("span.started", "execute_tool search"),
        ("span.ended", "execute_tool search"),
        ("run.started", "invoke_workflow search"),  # a run whose shown name is "search"
        ("span.started", "invoke_workflow search"),
        ("span.ended", "invoke_workflow search"),
        ("run.ended", "invoke_workflow search"),
    ], "no run.* event of another name passes"
    assert last["data"]["run"]["name"] == "invoke_workflow search"

    # the runs list: by the workflow's shown name, its span name, or its run id
    for name in ("research", "invoke_workflow research", "job-n"):
        runs = _get(viewer, "/api/runs", name=name)["runs"]
        assert [r["trace_id"] for r in runs] == [wanted], name


def test_pages_answer_head_like_get(viewer: Viewer) -> None:
    for path in ("/", "/stats", "/runs/job-1"):
        got = httpx.get(f"{viewer.url}{path}", timeout=5)
        head = httpx.head(f"{viewer.url}{path}", timeout=5)
        assert (head.status_code, head.headers["content-type"]) == (200, got.headers["content-type"]), path
        assert head.headers["content-length"] == str(len(got.content))
        assert head.content == b""
    assert httpx.head(f"{viewer.url}/healthz", timeout=5).status_code == 200
