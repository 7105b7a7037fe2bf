"""POST /v1/logs: log records from the OTel SDK (Logs API, the logging bridge) join their spans live and in the
history; held records, the mapping, limits and bad input."""

from __future__ import annotations

import gzip
import json
import logging
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import otelflow
from otelflow import attributes as A
from otelflow.otlp_json import to_otlp_json
from otelflow.records import format_time
from otelflow.viewer.decode import OtlpDecodeError
from otelflow.viewer.decode_logs import decode_logs_json, decode_logs_protobuf
from otelflow.viewer.live import Hub
from otelflow.wire import SPAN_ENDED, SPAN_EVENT, SPAN_STARTED, event_json
from tests.test_live_exporter import free_port
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id, wait_for
from tests.viewer.test_faults import locked, settled

JSON = {"content-type": "application/json"}
PB = {"content-type": "application/x-protobuf"}


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _log(
    trace: str | None,
    span: str | None,
    body: Any = "hello",
    *,
    event_name: str | None = None,
    severity_number: int | None = None,
    severity_text: str | None = None,
    attributes: dict[str, str] | None = None,
    time_ns: int | None = 1_700_000_000_000_000_000,
) -> dict[str, Any]:
    """One OTLP/JSON log record."""
    rec: dict[str, Any] = {}
    if trace is not None:
        rec["traceId"] = trace
    if span is not None:
        rec["spanId"] = span
    if time_ns is not None:
        rec["timeUnixNano"] = str(time_ns)
    if isinstance(body, str):
        rec["body"] = {"stringValue": body}
    elif isinstance(body, dict):
        rec["body"] = {"kvlistValue": {"values": [{"key": k, "value": {"stringValue": v}} for k, v in body.items()]}}
    if event_name is not None:
        rec["eventName"] = event_name
    if severity_number is not None:
        rec["severityNumber"] = severity_number
    if severity_text is not None:
        rec["severityText"] = severity_text
    if attributes:
        rec["attributes"] = [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()]
    return rec


def _logs_json(*records: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
                    "scopeLogs": [{"scope": {"name": "test"}, "logRecords": list(records)}],
                }
            ]
        }
    ).encode()


def _post_logs(viewer: Viewer, *records: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{viewer.url}/v1/logs", content=_logs_json(*records), headers={**JSON, **headers}, timeout=10)


def _span(viewer: Viewer, run: str, span: str) -> dict[str, Any]:
    detail = httpx.get(f"{viewer.url}/api/runs/{run}", timeout=5).json()
    found: dict[str, Any] = next(s for s in detail["spans"] if s["span_id"] == span)
    return found


def _events_named(span: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in span["events"] if e["name"] == name]


def _hub_stats(viewer: Viewer) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{viewer.url}/healthz", timeout=5).json()["hub"]
    return stats


def _bridge(provider: LoggerProvider) -> logging.Handler:
    """The SDK's logging bridge (deprecated in favour of opentelemetry-instrumentation-logging, which wraps the
    same handler; the SDK's still ships and is what existing programs use)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return LoggingHandler(level=logging.INFO, logger_provider=provider)


@pytest.fixture
def sdk_logs(viewer: Viewer) -> Iterator[tuple[LoggerProvider, logging.Logger]]:
    """The OTel SDK's logs pipeline to the viewer (OTLP protobuf over HTTP), and a ``logging`` logger bridged
    into it by the SDK's LoggingHandler."""
    provider = LoggerProvider(resource=Resource.create({"service.name": "logs-test"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{viewer.url}/v1/logs")))
    handler = _bridge(provider)
    logger = logging.getLogger("tests.viewer.logs.app")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    yield provider, logger
    logger.removeHandler(handler)
    provider.shutdown()


# ------------------------------------------------------------------------------------------------
# The OTel SDK, live and after a restart
# ------------------------------------------------------------------------------------------------


def test_sdk_log_records_join_their_span_live_and_after_a_restart(
    make_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    db = tmp_path / "viewer.db"
    viewer = make_viewer(db=db)
    provider = LoggerProvider(resource=Resource.create({"service.name": "logs-test"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{viewer.url}/v1/logs")))
    handler = _bridge(provider)
    app_log = logging.getLogger("tests.viewer.logs.restart")
    app_log.setLevel(logging.INFO)
    app_log.propagate = False
    app_log.addHandler(handler)
    events_api = provider.get_logger("genai-events")
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": "logs-test"}))
    telemetry = otelflow.configure(tracer_provider=tracer_provider, live=viewer.url, otlp=False)
    try:
        with SseClient(f"{viewer.url}/api/stream") as sse:
            with otelflow.workflow("with-logs") as run, otelflow.agent("writer") as agent:
                sse.read_until(lambda e: e["event"] == SPAN_STARTED and e["data"]["span"]["span_id"] == agent.span_id)
                # a logging line through the SDK's bridge, with a secret in it, while the agent runs
                app_log.warning("drafting with key %s", "sk-" + "a" * 40)
                line = sse.read_until(lambda e: e["event"] == SPAN_EVENT and e["data"]["span_id"] == agent.span_id)
                assert line["data"]["event"]["name"] == A.EVENT_LOG
                attrs = line["data"]["event"]["attributes"]
                assert attrs[A.LOG_LEVEL] == "warning"
                assert attrs[A.LOG_MESSAGE].startswith("drafting with key ")
                assert "a" * 40 not in attrs[A.LOG_MESSAGE]
                # a GenAI message event through the Logs API, its body a map
                events_api.emit(
                    event_name="gen_ai.user.message",
                    body={"content": "write a haiku", "role": "user"},
                    attributes={"gen_ai.system": "openai"},
                )
                message = sse.read_until(
                    lambda e: e["event"] == SPAN_EVENT and e["data"]["event"]["name"] == "gen_ai.user.message"
                )
                assert message["data"]["span_id"] == agent.span_id
                assert message["data"]["event"]["attributes"][A.LOG_BODY] == {
                    "content": "write a haiku",
                    "role": "user",
                }
                assert message["data"]["event"]["attributes"]["gen_ai.system"] == "openai"
                agent_context = trace.get_current_span().get_span_context()
            assert telemetry.force_flush(10_000)
            ended = sse.read_until(lambda e: e["event"] == SPAN_ENDED and e["data"]["span"]["span_id"] == agent.span_id)
            # the span's own final snapshot has no log events: the viewer keeps them
            ended_names = [e["name"] for e in ended["data"]["span"]["events"]]
            assert A.EVENT_LOG in ended_names
            assert "gen_ai.user.message" in ended_names
            # a line about the agent after it ended still joins it
            events_api.emit(
                body="late summary",
                severity_number=SeverityNumber.INFO,
                context=trace.set_span_in_context(trace.NonRecordingSpan(agent_context)),
            )
            late = sse.read_until(
                lambda e: (
                    e["event"] == SPAN_EVENT and e["data"]["event"]["attributes"].get(A.LOG_MESSAGE) == "late summary"
                )
            )
            assert late["data"]["span_id"] == agent.span_id
    finally:
        app_log.removeHandler(handler)
        provider.shutdown()
        telemetry.shutdown()

    live_span = _span(viewer, run.trace_id, agent.span_id)
    assert [e["attributes"][A.LOG_MESSAGE] for e in _events_named(live_span, A.EVENT_LOG)] == [
        attrs[A.LOG_MESSAGE],
        "late summary",
    ]
    wait_for(lambda: viewer.app.state.history.backlog_rows == 0, what="the history to catch up")
    viewer.stop()

    again = make_viewer(db=db)
    stored = _span(again, run.trace_id, agent.span_id)
    assert [e["name"] for e in stored["events"] if e["name"] != A.EVENT_PROGRESS] == [
        A.EVENT_LOG,
        "gen_ai.user.message",
        A.EVENT_LOG,
    ]
    assert _events_named(stored, "gen_ai.user.message")[0]["attributes"][A.LOG_BODY]["content"] == "write a haiku"
    replay = httpx.get(f"{again.url}/api/runs/{run.trace_id}/events", timeout=5).json()
    replayed = [
        e["event"]["name"] if e["event"]["name"] != A.EVENT_LOG else e["event"]["attributes"][A.LOG_MESSAGE]
        for e in replay["events"]
        if e["type"] == SPAN_EVENT and e["span_id"] == agent.span_id
    ]
    assert replayed == [attrs[A.LOG_MESSAGE], "gen_ai.user.message", "late summary"]
    types = [
        e["type"]
        for e in replay["events"]
        if e.get("span_id") == agent.span_id or e.get("span", {}).get("span_id") == agent.span_id
    ]
    assert types.index(SPAN_ENDED) < len(types) - 1  # the late line is replayed after the end, where it came


def test_lines_of_a_span_running_across_a_restart_stay_with_it(
    make_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    db = tmp_path / "viewer.db"
    trace, root, started = trace_id(), span_id(), time.time_ns()
    first = make_viewer(db=db)
    first.post_json([record(trace, root, "root", start=started)])
    assert _post_logs(first, _log(trace, root, "before the restart")).status_code == 200
    first.stop()
    again = make_viewer(db=db)
    # the worker's next snapshots know nothing of the line
    again.post_json([record(trace, root, "root", start=started)])
    again.post_json([record(trace, root, "root", start=started, ended=True)])
    (line,) = _span(again, trace, root)["events"]
    assert line["attributes"][A.LOG_MESSAGE] == "before the restart"
    again.stop()
    third = make_viewer(db=db)
    assert [e["attributes"][A.LOG_MESSAGE] for e in _span(third, trace, root)["events"]] == ["before the restart"]


def test_logging_line_inside_an_otelflow_agent_over_protobuf(
    viewer: Viewer, sdk_logs: tuple[LoggerProvider, logging.Logger]
) -> None:
    _, logger = sdk_logs
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": "logs-test"}))
    telemetry = otelflow.configure(tracer_provider=tracer_provider, live=viewer.url, otlp=False)
    try:
        with otelflow.workflow("bridge") as run, otelflow.agent("planner") as agent:
            try:
                raise ValueError("password=hunter2 rejected")
            except ValueError:
                logger.exception("planning failed")
    finally:
        assert telemetry.force_flush(10_000)
        telemetry.shutdown()

    def joined() -> list[dict[str, Any]]:
        span = _span(viewer, run.trace_id, agent.span_id)
        return _events_named(span, A.EVENT_LOG) if span["status"] != "running" else []

    (line,) = wait_for(joined, what="the logging line on the ended agent")
    assert line["attributes"][A.LOG_LEVEL] == "error"
    assert line["attributes"][A.LOG_MESSAGE] == "planning failed"
    assert line["attributes"]["exception.type"] == "ValueError"
    assert "hunter2" not in json.dumps(line)  # the exception's text is scrubbed like span text


# ------------------------------------------------------------------------------------------------
# Held until the span arrives; bounded; counted
# ------------------------------------------------------------------------------------------------


def test_a_record_before_its_span_is_held_then_merged(viewer: Viewer) -> None:
    trace, root = trace_id(), span_id()
    assert _post_logs(viewer, _log(trace, root, "early bird", severity_text="DEBUG")).json() == {}
    wait_for(lambda: _hub_stats(viewer)["logs_held"] == 1, what="the record to be held")
    with SseClient(f"{viewer.url}/api/runs/{trace}/stream") as sse:
        assert viewer.post_json([record(trace, root, "root", ended=True)]).status_code == 200
        types = []
        while True:
            ev = sse.read_until(lambda e: e["event"].startswith("span."))
            types.append(ev["event"])
            if ev["event"] == SPAN_EVENT:
                assert ev["data"]["event"]["attributes"] == {A.LOG_LEVEL: "debug", A.LOG_MESSAGE: "early bird"}
            if ev["event"] == SPAN_ENDED:
                break
    assert types == [SPAN_STARTED, SPAN_EVENT, SPAN_ENDED]
    stats = _hub_stats(viewer)
    assert (stats["logs_held"], stats["logs_joined"], stats["logs_held_bytes"]) == (0, 1, 0)
    assert _events_named(_span(viewer, trace, root), A.EVENT_LOG)[0]["attributes"][A.LOG_MESSAGE] == "early bird"


def test_a_record_sent_again_joins_once(viewer: Viewer) -> None:
    trace, known, later = trace_id(), span_id(), span_id()
    viewer.post_json([record(trace, known, "root")])
    for _ in range(2):  # an exporter's retry sends the same records again
        assert _post_logs(viewer, _log(trace, known, "once"), _log(trace, later, "held once")).status_code == 200
    viewer.post_json([record(trace, later, "child", parent=known)])
    assert [e["attributes"][A.LOG_MESSAGE] for e in _span(viewer, trace, known)["events"]] == ["once"]
    assert [e["attributes"][A.LOG_MESSAGE] for e in _span(viewer, trace, later)["events"]] == ["held once"]
    assert _hub_stats(viewer)["logs_joined"] == 2


def test_held_records_are_bounded_and_expire_counted(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(hub=Hub(check_interval_s=0.05))
    state = viewer.hub.state
    state.max_held_logs = 3
    state.hold_logs_s = 3600.0
    trace = trace_id()
    spans = [span_id() for _ in range(5)]
    assert _post_logs(viewer, *[_log(trace, s, f"line {i}") for i, s in enumerate(spans)]).status_code == 200
    stats = wait_for(lambda: (s := _hub_stats(viewer))["logs_dropped_full"] == 2 and s, what="the overflow count")
    assert stats["logs_held"] == 3
    # the oldest went first: the newest three still join when their spans come
    assert viewer.post_json([record(trace, s, ended=True) for s in spans]).status_code == 200
    wait_for(lambda: _hub_stats(viewer)["logs_joined"] == 3, what="the held records to join")
    assert not _events_named(_span(viewer, trace, spans[0]), A.EVENT_LOG)
    assert _events_named(_span(viewer, trace, spans[4]), A.EVENT_LOG)[0]["attributes"][A.LOG_MESSAGE] == "line 4"

    # a record whose span never comes leaves after hold_logs_s, counted
    viewer.call(lambda: setattr(state, "hold_logs_s", 0.2))
    assert _post_logs(viewer, _log(trace_id(), span_id(), "orphan")).status_code == 200
    wait_for(lambda: _hub_stats(viewer)["logs_expired"] == 1, what="the orphan to expire")
    assert _hub_stats(viewer)["logs_held"] == 0


def test_records_without_a_span_are_counted_not_an_error(viewer: Viewer) -> None:
    r = _post_logs(viewer, _log(None, None, "no context"), _log(trace_id(), None, "trace only"))
    assert r.status_code == 200
    assert r.json() == {}
    stats = _hub_stats(viewer)
    assert stats["logs_without_span"] == 2
    assert stats["logs_held"] == 0


# ------------------------------------------------------------------------------------------------
# The mapping
# ------------------------------------------------------------------------------------------------


def test_mapping_of_names_levels_and_bodies(viewer: Viewer) -> None:
    trace, root = trace_id(), span_id()
    viewer.post_json([record(trace, root, "root")])
    records = [
        _log(trace, root, "n1", severity_number=1),  # TRACE
        _log(trace, root, "n9", severity_number=9),
        _log(trace, root, "n13", severity_number=13),
        _log(trace, root, "n17", severity_text="ignored", severity_number=17),
        _log(trace, root, "n21", severity_number=21),
        _log(trace, root, "t-warn", severity_text="WARN"),
        _log(trace, root, "t-fatal", severity_text="Fatal"),
        _log(trace, root, "nothing"),
        _log(trace, root, {"role": "tool", "api_key": "abc123"}),  # a map body of a plain line: JSON text
        _log(trace, root, {"content": "hi", "password": "p4ss"}, event_name="gen_ai.assistant.message"),
        _log(trace, root, "older sdk", attributes={"event.name": "gen_ai.choice", "gen_ai.system": "openai"}),
        {**_log(trace, root, "observed only", time_ns=None), "observedTimeUnixNano": "1700000000000000999"},
    ]
    assert _post_logs(viewer, *records).json() == {}
    events = wait_for(lambda: len(e := _span(viewer, trace, root)["events"]) == len(records) and e)
    levels = [e["attributes"].get(A.LOG_LEVEL) for e in events[:8]]
    assert levels == ["debug", "info", "warning", "error", "critical", "warning", "critical", "info"]
    plain_map = events[8]["attributes"][A.LOG_MESSAGE]
    assert json.loads(plain_map) == {"role": "tool", "api_key": "[REDACTED]"}
    named = events[9]
    assert named["name"] == "gen_ai.assistant.message"
    assert named["attributes"] == {A.LOG_BODY: {"content": "hi", "password": "[REDACTED]"}}
    older = events[10]
    assert older["name"] == "gen_ai.choice"
    assert older["attributes"] == {"gen_ai.system": "openai", A.LOG_BODY: "older sdk"}
    assert events[11]["time"] == format_time(1_700_000_000_000_000_999)


# ------------------------------------------------------------------------------------------------
# The same checks, limits and errors as /v1/traces
# ------------------------------------------------------------------------------------------------


def test_bad_requests_get_the_same_errors_as_traces(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(max_body_bytes=64 * 1024)
    for path in ("/v1/traces", "/v1/logs"):
        url = f"{viewer.url}{path}"
        assert httpx.get(url, timeout=5).status_code == 405
        r = httpx.post(url, content=b"x", headers={"content-type": "text/plain"}, timeout=5)
        assert (r.status_code, "application/json" in r.text) == (415, True)
        r = httpx.post(url, content=b"{}", headers={**JSON, "content-encoding": "br"}, timeout=5)
        assert (r.status_code, "gzip" in r.json()["message"]) == (415, True)
        r = httpx.post(url, content=b"{not json", headers=JSON, timeout=5)
        assert (r.status_code, "JSON" in r.json()["message"]) == (400, True)
        r = httpx.post(url, content=b"\xff\x00garbage", headers=PB, timeout=5)
        assert (r.status_code, r.headers["content-type"]) == (400, "application/x-protobuf")
        r = httpx.post(url, content=b"{" + b" " * 70_000 + b"}", headers=JSON, timeout=5)
        assert r.status_code == 413
        bomb = gzip.compress(b" " * 200_000)
        r = httpx.post(url, content=bomb, headers={**JSON, "content-encoding": "gzip"}, timeout=5)
        assert (r.status_code, "decompressed" in r.json()["message"]) == (413, True)
    r = httpx.post(f"{viewer.url}/v1/logs", content=b'{"resourceLogs": 3}', headers=JSON, timeout=5)
    assert (r.status_code, "resourceLogs" in r.json()["message"]) == (400, True)
    r = httpx.post(f"{viewer.url}/v1/logs", content=b'{"resourceSpans": []}', headers=PB, timeout=5)
    assert "ExportLogsServiceRequest" in r.content.decode(errors="replace")


def test_a_token_guards_logs_too(make_viewer: Callable[..., Viewer]) -> None:
    viewer = make_viewer(token="s3cret-token")
    trace, root = trace_id(), span_id()
    assert _post_logs(viewer, _log(trace, root)).status_code == 401
    assert _post_logs(viewer, _log(trace, root), authorization="Bearer s3cret-token").status_code == 200


def test_gzip_json_partial_success_and_a_huge_body(viewer: Viewer) -> None:
    trace, root = trace_id(), span_id()
    viewer.post_json([record(trace, root, "root")])
    live_bytes = _hub_stats(viewer)["live_bytes"]  # the 200 above came once the span was in
    body = _logs_json(
        _log(trace, root, "kept before"),
        _log("not-a-trace-id", root, "bad trace id"),
        _log(trace, root, "x" * (5 * 1024 * 1024)),
        {**_log(trace, root, "far future"), "timeUnixNano": str(2**64 - 1)},
        _log(trace, root, "kept after"),
    )
    r = httpx.post(
        f"{viewer.url}/v1/logs", content=gzip.compress(body), headers={**JSON, "content-encoding": "gzip"}, timeout=30
    )
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert partial["rejectedLogRecords"] == "2"
    assert "logRecords[1].traceId" in partial["errorMessage"]
    assert "logRecords[3].timeUnixNano" in partial["errorMessage"]
    events = wait_for(lambda: len(e := _span(viewer, trace, root)["events"]) == 3 and e)
    messages = [e["attributes"][A.LOG_MESSAGE] for e in events]
    assert messages[0] == "kept before"
    assert messages[2] == "kept after"
    assert len(messages[1]) <= 65_536
    assert messages[1].endswith(f"…[truncated, {5 * 1024 * 1024} chars]")
    stats = _hub_stats(viewer)
    assert stats["logs_rejected"] == 2
    assert stats["live_bytes"] - live_bytes > 65_000  # the cut line counts in the live memory bound


def test_protobuf_partial_success(viewer: Viewer) -> None:
    trace, root = trace_id(), span_id()
    viewer.post_json([record(trace, root, "root")])
    body = KeyValueList(values=[])
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                scope_logs=[
                    ScopeLogs(
                        log_records=[
                            LogRecord(
                                trace_id=bytes.fromhex(trace),
                                span_id=bytes.fromhex(root),
                                time_unix_nano=1,
                                body=AnyValue(kvlist_value=body),
                                event_name="gen_ai.system.message",
                            ),
                            LogRecord(
                                trace_id=b"\x01" * 5, span_id=bytes.fromhex(root), body=AnyValue(string_value="x")
                            ),
                        ]
                    )
                ]
            )
        ]
    )
    r = httpx.post(f"{viewer.url}/v1/logs", content=request.SerializeToString(), headers=PB, timeout=5)
    assert r.status_code == 200
    response = ExportLogsServiceResponse.FromString(r.content)
    assert response.partial_success.rejected_log_records == 1
    assert "5 bytes" in response.partial_success.error_message
    (event,) = wait_for(lambda: _span(viewer, trace, root)["events"])
    assert event["name"] == "gen_ai.system.message"
    assert event["attributes"] == {A.LOG_BODY: {}}


# ------------------------------------------------------------------------------------------------
# Nothing acknowledged is lost
# ------------------------------------------------------------------------------------------------


def _serve(db: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "otelflow.cli", "serve", "--port", str(port), "--db", str(db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert "listening on" in proc.stdout.readline()
    return proc


def test_acknowledged_log_records_survive_a_kill_9(tmp_path: Path) -> None:
    db, port = tmp_path / "v.db", free_port()
    url = f"http://127.0.0.1:{port}"
    trace, root = trace_id(), span_id()
    proc = _serve(db, port)
    try:
        with locked(db):  # nothing reaches the database: what is acknowledged is only in the intake log
            span = httpx.post(
                f"{url}/v1/traces",
                content=json.dumps(to_otlp_json([record(trace, root, "root", ended=True)])),
                headers=JSON,
                timeout=10,
            )
            assert span.status_code == 200
            assert (
                httpx.post(f"{url}/v1/logs", content=_logs_json(_log(trace, root, "kept")), headers=JSON).json() == {}
            )
            proc.kill()
            proc.wait(10)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    again = _serve(db, port)
    try:
        wait_for(lambda: settled(url), what="the intake log to be taken in again")
        detail = httpx.get(f"{url}/api/runs/{trace}", timeout=5).json()
        (stored,) = detail["spans"]
        assert [e["attributes"][A.LOG_MESSAGE] for e in stored["events"]] == ["kept"]
    finally:
        again.send_signal(signal.SIGINT)
        again.wait(20)
        if again.stdout is not None:
            again.stdout.close()


# ------------------------------------------------------------------------------------------------
# Garbage: a clear refusal or partial success, never a crash
# ------------------------------------------------------------------------------------------------

_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_keys = st.sampled_from(
    [
        "resourceLogs",
        "scopeLogs",
        "logRecords",
        "traceId",
        "spanId",
        "timeUnixNano",
        "observedTimeUnixNano",
        "severityNumber",
        "severityText",
        "eventName",
        "body",
        "attributes",
        "key",
        "value",
        "stringValue",
        "intValue",
        "kvlistValue",
        "arrayValue",
        "values",
    ]
)
_logsish = st.recursive(
    _leaf | st.sampled_from([trace_id(), span_id(), "0" * 32, "SEVERITY_NUMBER_WARN", "9"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=1500, deadline=None)
@given(body=st.one_of(_logsish, _logsish.map(lambda v: {"resourceLogs": [{"scopeLogs": [{"logRecords": [v]}]}]})))
def test_fuzzed_json_is_decoded_or_refused_with_a_message(body: Any) -> None:
    try:
        decoded = decode_logs_json(json.dumps(body).encode())
    except OtlpDecodeError as exc:
        message = str(exc)
    else:
        message = ""
    if message:  # refused whole, saying why
        return
    assert len(decoded.events) + len(decoded.rejected) + decoded.without_span == decoded.record_count
    for event in decoded.events:
        json.loads(event_json(event.event))  # every event can be sent as it is


@settings(max_examples=800, deadline=None)
@given(data=st.binary(max_size=300), trace=st.binary(max_size=17), span=st.binary(max_size=9), text=st.text(max_size=9))
def test_fuzzed_protobuf_is_decoded_or_refused_with_a_message(
    data: bytes, trace: bytes, span: bytes, text: str
) -> None:
    made = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                scope_logs=[
                    ScopeLogs(log_records=[LogRecord(trace_id=trace, span_id=span, body=AnyValue(string_value=text))])
                ]
            )
        ]
    ).SerializeToString()
    for body in (data, made, made + data):
        try:
            decoded = decode_logs_protobuf(body)
        except OtlpDecodeError as exc:
            message = str(exc)
        else:
            message = ""
        if message:
            assert "ExportLogsServiceRequest" in message
            continue
        assert len(decoded.events) + len(decoded.rejected) + decoded.without_span == decoded.record_count
