"""Heartbeats and abandoned spans, in-process ingestion from another thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from otelflow.viewer.live import Hub
from tests.viewer.conftest import SseClient, Viewer, heartbeat, record, span_id, trace_id, wait_for


def _fast_hub() -> Hub:
    return Hub(abandon_after_s=1.0, check_interval_s=0.1)


def test_silent_worker_is_abandoned_healthy_worker_is_not(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(hub=_fast_hub())
    dead_trace, alive_trace = trace_id(), trace_id()
    dead_root, alive_root = span_id(), span_id()
    stop = threading.Event()

    def beat() -> None:
        with httpx.Client(base_url=viewer.url, timeout=5) as client:
            while not stop.wait(0.2):
                client.post("/v1/traces", json=heartbeat("alive"))

    with SseClient(f"{viewer.url}/api/stream?type=span.abandoned,run.ended") as sse:
        viewer.post_json([record(dead_trace, dead_root, "wf", kind="workflow", worker="dead")])
        viewer.post_json([record(dead_trace, span_id(), "node", parent=dead_root, worker="dead")])
        viewer.post_json([record(alive_trace, alive_root, "long node", kind="workflow", worker="alive")])
        beater = threading.Thread(target=beat)
        beater.start()
        try:
            started = time.monotonic()
            sse.read_until(lambda e: e["event"] == "run.ended")
            took = time.monotonic() - started
            checks = viewer.hub.stats["checks"]
            wait_for(lambda: viewer.hub.stats["checks"] > checks + 20, what="more heartbeat checks")  # 2 s more
        finally:
            stop.set()
            beater.join()
    assert took < 3.0
    abandoned = [e for e in sse.events if e["event"] == "span.abandoned"]
    assert len(abandoned) == 2
    assert all(e["data"]["run_id"] == dead_trace for e in abandoned)
    assert all(e["data"]["span"]["status"] == "abandoned" for e in abandoned)
    run_end = next(e for e in sse.events if e["event"] == "run.ended")["data"]["run"]
    assert run_end["trace_id"] == dead_trace
    assert run_end["status"] == "abandoned"
    alive = httpx.get(f"{viewer.url}/api/runs/{alive_trace}", timeout=5).json()
    assert alive["run"]["status"] == "running"
    assert alive["spans"][0]["status"] == "running"
    dead = httpx.get(f"{viewer.url}/api/runs/{dead_trace}", timeout=5).json()
    assert {s["status"] for s in dead["spans"]} == {"abandoned"}
    # an abandoned span that ends after all (the worker was only partitioned) tells the truth, and so
    # does its run when that span is the root
    with SseClient(f"{viewer.url}/api/stream?type=run.ended") as late:
        viewer.post_json([record(dead_trace, dead_root, "wf", kind="workflow", worker="dead", ended=True)])
        late.read_until(lambda e: e["event"] == "run.ended")
    assert late.events[-1]["data"]["run"]["status"] == "ok"
    again = httpx.get(f"{viewer.url}/api/runs/{dead_trace}", timeout=5).json()
    assert next(s for s in again["spans"] if s["span_id"] == dead_root)["status"] == "ok"
    assert again["run"]["status"] == "ok"


def test_in_process_ingestion_from_a_thread_is_never_abandoned(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(hub=_fast_hub())
    t, root = trace_id(), span_id()
    with SseClient(f"{viewer.url}/api/stream") as sse:
        thread = threading.Thread(
            target=viewer.hub.ingest_threadsafe, args=([record(t, root, "wf", kind="workflow", worker="me")],)
        )
        thread.start()
        thread.join()
        sse.read_until(lambda e: e["event"] == "span.started")
        checks = viewer.hub.stats["checks"]
        wait_for(lambda: viewer.hub.stats["checks"] > checks + 20, what="heartbeat checks past the abandon time")
        viewer.hub.ingest_threadsafe([record(t, root, "wf", kind="workflow", worker="me", ended=True)])
        sse.read_until(lambda e: e["event"] == "run.ended")
    assert not [e for e in sse.events if e["event"] == "span.abandoned"]
    assert sse.events[-1]["data"]["run"]["status"] == "ok"


def test_ingest_threadsafe_before_start_is_buffered() -> None:
    hub = Hub()
    hub.ingest_threadsafe([record(trace_id(), span_id(), "early", ended=True)])
    from otelflow.viewer.app import create_app
    from tests.viewer.conftest import Viewer as V

    viewer = V(create_app(hub=hub)).start()
    try:
        runs = httpx.get(f"{viewer.url}/api/runs", timeout=5).json()["runs"]
        assert [r["name"] for r in runs] == ["early"]
    finally:
        viewer.stop()


def test_records_waiting_for_the_in_process_hub_keep_no_sdk_span_alive() -> None:
    """A record waits for its slice while the hub yields to a busy script; holding the ended SDK span (about 15
    objects the garbage collector traverses again and again, in the script's thread) would make the script pay
    for the wait. What waits is plain values, and the run reads as the span was."""
    import gc
    import weakref

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Status, StatusCode

    from otelflow import InProcessSink, LiveSpanProcessor
    from otelflow.viewer.app import create_app
    from tests.viewer.conftest import Viewer as V

    hub = Hub()  # not started: what arrives waits
    sink = InProcessSink()
    sink.subscribe(hub.ingest_threadsafe)
    provider = TracerProvider()
    processor = LiveSpanProcessor(sink)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("invoke_workflow w", attributes={"otelflow.kind": "workflow"}) as span:
        span.add_event("otelflow.log", {"otelflow.log.level": "info", "otelflow.log.message": "hello"})
        span.set_status(Status(StatusCode.ERROR, "boom"))
        refs = [weakref.ref(span), weakref.ref(span.events[0])]
    del span
    processor.force_flush()
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    viewer = V(create_app(hub=hub)).start()
    try:
        [run] = httpx.get(f"{viewer.url}/api/runs", timeout=5).json()["runs"]
        assert (run["name"], run["status"]) == ("invoke_workflow w", "error")
        [got] = httpx.get(f"{viewer.url}/api/runs/{run['run_id']}", timeout=5).json()["spans"]
        assert (got["status"], got["attributes"]["otelflow.kind"]) == ("error", "workflow")
        assert "boom" in str(got["error"])
        assert [(e["name"], e["attributes"]["otelflow.log.message"]) for e in got["events"]] == [
            ("otelflow.log", "hello")
        ]
    finally:
        viewer.stop()
        provider.shutdown()


def test_records_waiting_for_their_slice_are_published_before_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """``otelflow run`` stops its viewer right after the script: the last records from the script (a Ctrl-C's
    cancelled ends) may still be waiting out the hub's pause for a busy script; they reach the stream (and the
    history) before ``shutdown``, not never."""
    import otelflow.viewer.live.hub as hub_module
    from otelflow.viewer.app import create_app
    from tests.viewer.conftest import Viewer as V

    monkeypatch.setattr(hub_module, "_YIELD_FACTOR", 1e6)  # after a slice, wait as long as MAX_LAG_S allows
    hub = Hub()
    viewer = V(create_app(hub=hub)).start()
    t, root, child = trace_id(), span_id(), span_id()
    try:
        with SseClient(f"{viewer.url}/api/stream") as sse:
            hub.ingest_threadsafe([record(t, root, "wf", kind="workflow")])
            sse.read_until(lambda e: e["event"] == "span.started")
            hub.ingest_threadsafe([record(t, child, "step", parent=root, ended=True)])
            hub.ingest_threadsafe([record(t, root, "wf", kind="workflow", ended=True)])
            viewer.stop()
            sse.read_until(lambda e: e["event"] == "shutdown")
        told = [(e["event"], e["data"].get("span", {}).get("name")) for e in sse.events]
        assert ("span.ended", "step") in told
        assert ("span.ended", "wf") in told
        assert told.index(("span.ended", "wf")) < told.index(("shutdown", None))
    finally:
        viewer.stop()


WORKER_SCRIPT = r"""
import json, sys, time, urllib.request
url, trace, span = sys.argv[1], sys.argv[2], sys.argv[3]
res = [{"key": "service.name", "value": {"stringValue": "worker"}},
       {"key": "otelflow.worker.id", "value": {"stringValue": "w-" + span}}]
def post(spans):
    body = json.dumps({"resourceSpans": [{"resource": {"attributes": res},
                                          "scopeSpans": [{"spans": spans}] if spans else []}]}).encode()
    req = urllib.request.Request(url + "/v1/traces", body, {"content-type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()
post([{"traceId": trace, "spanId": span, "name": "invoke_workflow w", "startTimeUnixNano": str(time.time_ns()),
       "attributes": [{"key": "otelflow.pending", "value": {"boolValue": True}}]}])
print("started", flush=True)
while True:
    time.sleep(2.0)
    post([])
"""


@pytest.mark.slow
def test_sigkilled_worker_is_abandoned_within_15s(viewer: Viewer) -> None:
    t, s = trace_id(), span_id()
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, viewer.url, t, s], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "started"
        with SseClient(f"{viewer.url}/api/runs/{t}/stream", read_timeout=30) as sse:
            os.kill(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
            events = sse.read_all()
        took = time.monotonic() - killed
    finally:
        worker.kill()
        worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
    assert [e["event"] for e in events][-2:] == ["span.abandoned", "run.ended"]
    assert events[-1]["data"]["run"]["status"] == "abandoned"
    assert took <= 15.0, took


def test_run_progress_comes_from_the_workflow_and_agents_are_counted(viewer: Viewer) -> None:
    from otelflow import attributes as A
    from otelflow.records import EventRecord

    def progress(pct: float, at: int) -> EventRecord:
        return EventRecord(A.EVENT_PROGRESS, at, {A.PROGRESS_PERCENT: pct})

    t, root = trace_id(), span_id()
    now = time.time_ns()
    # a node reports its own per-item progress first: the run shows it until the workflow reports
    viewer.post_json([record(t, root, "wf", kind="workflow")])
    viewer.post_json([record(t, span_id(), "writer", parent=root, kind="agent", events=(progress(25.0, now),))])
    run = httpx.get(f"{viewer.url}/api/runs/{t}", timeout=5).json()["run"]
    assert run["progress"]["percent"] == 25.0
    viewer.post_json([record(t, root, "wf", kind="workflow", events=(progress(50.0, now + 1),))])
    # later per-item progress of an agent no longer moves the run's bar
    viewer.post_json([record(t, span_id(), "reviewer", parent=root, kind="agent", events=(progress(100.0, now + 2),))])
    viewer.post_json([record(t, span_id(), "search", parent=root, kind="tool")])
    run = httpx.get(f"{viewer.url}/api/runs/{t}", timeout=5).json()["run"]
    assert run["progress"]["percent"] == 50.0
    assert run["agent_count"] == 2
    assert run["span_count"] == 4


def test_a_batch_tells_each_run_summary_once(viewer: Viewer) -> None:
    """Five agents that each report progress, arriving in one request: the stream says run.updated once, with
    the last progress (the summary is encoded after the whole batch, so earlier ones would repeat it)."""
    from otelflow import attributes as A
    from otelflow.records import EventRecord

    t, root = trace_id(), span_id()
    now = time.time_ns()
    agents = [
        record(
            t,
            span_id(),
            f"agent {i}",
            parent=root,
            kind="agent",
            ended=True,
            events=(EventRecord(A.EVENT_PROGRESS, now + i, {A.PROGRESS_PERCENT: 20.0 * (i + 1)}),),
        )
        for i in range(5)
    ]
    with SseClient(f"{viewer.url}/api/runs/{t}/stream") as sse:
        viewer.post_json([record(t, root, "wf", kind="workflow")])
        sse.read_until(lambda e: e["event"] == "span.started")
        viewer.post_json(agents)
        sse.read_until(lambda e: e["event"] == "span.ended" and e["data"]["span"]["name"] == "agent 4")
        viewer.post_json([record(t, root, "wf", kind="workflow", ended=True)])
        sse.read_until(lambda e: e["event"] == "run.ended")
    updated = [e["data"]["run"] for e in sse.events if e["event"] == "run.updated"]
    assert len(updated) == 1, [u["progress"] for u in updated]
    assert updated[0]["progress"]["percent"] == 100.0
    assert sum(e["event"] == "span.ended" for e in sse.events) == 6


def test_the_in_process_hub_yields_to_a_busy_script_but_never_for_long() -> None:
    """While a script keeps producing spans, the hub waits out the pause after each slice; it stops waiting once
    a record has waited MAX_LAG_S (the page trails a burst by that much at most) or YIELD_BELOW records wait."""
    from otelflow.viewer.live.hub import MAX_LAG_S, YIELD_BELOW, drain_wait

    assert drain_wait(0.05, 1_000, 0.1) == 0.05  # a busy producer: the pause is kept
    assert drain_wait(-0.01, 1_000, 0.1) == 0.0  # the pause is over
    # the pause is cut so that the oldest record is taken when it has waited MAX_LAG_S
    assert drain_wait(0.05, 1_000, MAX_LAG_S - 0.02) == pytest.approx(0.02)
    assert drain_wait(0.05, 1_000, MAX_LAG_S + 0.5) == 0.0
    assert drain_wait(0.05, YIELD_BELOW, 0.1) == 0.0  # too many waiting: full speed
    assert drain_wait(0.05, YIELD_BELOW - 1, 0.1) == 0.05
