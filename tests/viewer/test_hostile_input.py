"""Input that once broke the viewer: lone surrogates, times past 2^63 ns, secrets from other SDKs, huge values.

Each is sent the way a real sender would (OTLP JSON or protobuf over HTTP) to a real viewer; the tests check
what a user sees afterwards: every page of the API answers, nothing secret is shown or stored, nothing else is
lost, and memory follows the limits.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otelflow import attributes as A
from otelflow.scrub import DEFAULT_VALUE_LIMIT
from otelflow.viewer.live import Hub
from tests.viewer.conftest import SseClient, Viewer, record, span_id, trace_id

SUR = "\\ud800"  # a lone surrogate, as a JSON escape (legal JSON, not encodable as UTF-8)


def _post(viewer: Viewer, body: str | bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(f"{viewer.url}/v1/traces", content=body, headers={"content-type": content_type}, timeout=10)


NOW = time.time_ns()  # recent: retention keeps 30 days


def _json_span(trace: str, span: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "traceId": trace,
        "spanId": span,
        "name": name,
        "startTimeUnixNano": str(NOW),
        "endTimeUnixNano": str(NOW + 1_000_000_000),
        **extra,
    }


def _json_request(spans: list[dict[str, Any]], resource: dict[str, Any] | None = None) -> str:
    attrs = [{"key": k, "value": {"stringValue": v}} for k, v in (resource or {"service.name": "other-sdk"}).items()]
    return json.dumps({"resourceSpans": [{"resource": {"attributes": attrs}, "scopeSpans": [{"spans": spans}]}]})


def _every_page(viewer: Viewer, run: str) -> dict[str, Any]:
    """Every REST page that shows this run answers 200 with JSON; returns the run's detail."""
    for path in ("/api/runs", f"/api/runs/{run}", f"/api/runs/{run}/events", f"/api/runs/{run}/export", "/api/stats"):
        r = httpx.get(viewer.url + path, timeout=10)
        assert r.status_code == 200, (path, r.text[:200])
        r.json()
    detail: dict[str, Any] = httpx.get(f"{viewer.url}/api/runs/{run}", timeout=10).json()
    return detail


# --------------------------------------------------------------------------------------------------
# 1. Lone surrogates
# --------------------------------------------------------------------------------------------------


def test_lone_surrogates_anywhere_never_blank_a_page(make_viewer: Callable[..., Viewer], tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    viewer = make_viewer(db=db)
    t, root = trace_id(), span_id()
    attr = [{"key": f"k{SUR}", "value": {"stringValue": f"v{SUR}"}}]
    spans = [
        _json_span(t, root, f"report-{SUR}.csv", attributes=attr),
        _json_span(t, span_id(), f"child{SUR}", parentSpanId=root, events=[{"name": f"e{SUR}", "timeUnixNano": "5"}]),
    ]
    body = _json_request(spans, {"service.name": f"svc{SUR}"}).replace("\\\\ud800", "\\ud800")
    assert SUR in body
    assert _post(viewer, body).status_code == 200
    detail = _every_page(viewer, t)
    assert detail["run"]["name"] == "report-\ufffd.csv"
    assert detail["run"]["service"] == "svc\ufffd"
    assert {"k\ufffd": "v\ufffd"}.items() <= next(s for s in detail["spans"] if s["span_id"] == root)[
        "attributes"
    ].items()
    viewer.stop()
    again = make_viewer(db=db)  # after a restart, from the history alone
    assert _every_page(again, t)["run"]["name"] == "report-\ufffd.csv"


def test_history_written_before_cleaning_still_renders(make_viewer: Callable[..., Viewer], tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    first = make_viewer(db=db)
    t = trace_id()
    first.post_json([record(t, span_id(), "clean", kind="workflow", ended=True)])
    first.stop()
    # what an earlier version stored: the escape of a lone surrogate inside the JSON text
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT summary FROM runs WHERE trace_id = ?", (t,)).fetchone()
    conn.execute("UPDATE runs SET summary = ? WHERE trace_id = ?", (row[0].replace('"clean"', '"bad\\ud800"'), t))
    conn.commit()
    conn.close()
    viewer = make_viewer(db=db)
    r = httpx.get(f"{viewer.url}/api/runs", timeout=10)
    assert r.status_code == 200
    assert r.json()["runs"][0]["name"] == "bad\ufffd"


# --------------------------------------------------------------------------------------------------
# 2. Times past what can be stored
# --------------------------------------------------------------------------------------------------


def _pb_span_request(count: int, *, bad_time: int | None = None) -> tuple[bytes, list[str]]:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="pb")))
    ss = rs.scope_spans.add()
    trace = bytes.fromhex(trace_id())
    ids = []
    for i in range(count):
        span = ss.spans.add()
        span.trace_id = trace
        span.span_id = bytes.fromhex(span_id())
        span.name = f"s{i}"
        span.start_time_unix_nano = NOW
        span.end_time_unix_nano = NOW + 1000
        ids.append(span.span_id.hex())
    if bad_time is not None:
        ss.spans[0].end_time_unix_nano = bad_time
    return req.SerializeToString(), ids


def _stored(viewer: Viewer, trace: str) -> set[str]:
    detail = httpx.get(f"{viewer.url}/api/runs/{trace}", timeout=10).json()
    return {s["span_id"] for s in detail["spans"]}


def test_times_past_2_63_reject_that_span_alone(make_viewer: Callable[..., Viewer], tmp_path: Path) -> None:
    viewer = make_viewer(db=tmp_path / "v.db")
    body, ids = _pb_span_request(100, bad_time=2**64 - 1)
    r = _post(viewer, body, "application/x-protobuf")
    assert r.status_code == 200
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert answer.partial_success.rejected_spans == 1
    assert "out of range" in answer.partial_success.error_message
    later, later_ids = _pb_span_request(100)
    assert _post(viewer, later, "application/x-protobuf").status_code == 200
    viewer.stop()  # every acknowledged span is in the history, read back after a restart
    again = make_viewer(db=tmp_path / "v.db")
    trace_a = httpx.get(f"{again.url}/api/runs?limit=10", timeout=10).json()["runs"]
    stored = set().union(*(_stored(again, run["trace_id"]) for run in trace_a))
    assert set(ids[1:]) | set(later_ids) <= stored
    assert ids[0] not in stored


def test_json_time_of_10_to_the_21_does_not_break_its_run(viewer: Viewer) -> None:
    t, root = trace_id(), span_id()
    spans = [_json_span(t, root, "root"), _json_span(t, span_id(), "far", parentSpanId=root)]
    spans[1]["endTimeUnixNano"] = str(10**21)
    r = _post(viewer, _json_request(spans))
    assert r.status_code == 200
    assert r.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert [s["name"] for s in _every_page(viewer, t)["spans"]] == ["root"]


# --------------------------------------------------------------------------------------------------
# 6. Secrets from senders that do not scrub
# --------------------------------------------------------------------------------------------------

SECRETS = (
    "s3cretpw",
    "abc123key",
    "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "tok3nvalue",
    "dbpassw0rd",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2ln",
)


def test_secrets_from_another_sdk_reach_no_page_stream_or_file(
    make_viewer: Callable[..., Viewer], tmp_path: Path
) -> None:
    db = tmp_path / "v.db"
    viewer = make_viewer(db=db)
    t, root = trace_id(), span_id()
    message = (
        "connect postgres://app:s3cretpw@db:5432/x?api_key=abc123key failed with Bearer tok3nvalue "
        "(key sk-proj-ABCDEFGHIJKLMNOPQRSTUVWX, AKIAIOSFODNN7EXAMPLE, "
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY)"
    )
    stack = (
        'Traceback (most recent call last):\n  File "app.py", line 3, in main\n'
        f'    connect("{message}")\nError: {message}'
    )
    spans = [
        _json_span(
            t,
            root,
            "GET /login?token=tok3nvalue",
            status={"code": 2, "message": message},
            attributes=[
                {"key": "url.full", "value": {"stringValue": "https://api.example.com/v1?api_key=abc123key"}},
                {"key": "http.request.header.authorization", "value": {"stringValue": "Basic abcdefghijklmn"}},
                {"key": A.RUN_ID, "value": {"stringValue": "job password=s3cretpw"}},
                {
                    "key": "jwt.note",
                    "value": {"stringValue": "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2ln"},
                },
            ],
            events=[
                {
                    "name": "exception",
                    "timeUnixNano": str(NOW + 500),
                    "attributes": [
                        {"key": "exception.type", "value": {"stringValue": "ConnectionError"}},
                        {"key": "exception.message", "value": {"stringValue": message}},
                        {"key": "exception.stacktrace", "value": {"stringValue": stack}},
                    ],
                }
            ],
        )
    ]
    with SseClient(f"{viewer.url}/api/stream") as sse:
        assert (
            _post(viewer, _json_request(spans, {"service.name": "other", "db.password": "dbpassw0rd"})).status_code
            == 200
        )
        sse.read_until(lambda e: e["event"] == "run.ended")
        streamed = json.dumps([e["data"] for e in sse.events])
    detail = _every_page(viewer, t)
    error = detail["spans"][0]["error"]
    assert error["type"] == "ConnectionError"
    assert "[REDACTED]" in error["message"]
    assert "connect postgres://app:[REDACTED]@db" in error["stack"]
    shown = [streamed, json.dumps(detail)]
    for path in (f"/api/runs/{t}/events", f"/api/runs/{t}/export", "/api/runs"):
        shown.append(httpx.get(viewer.url + path, timeout=10).text)
    viewer.stop()
    shown.append(db.read_bytes().decode("latin-1"))
    for wal in tmp_path.glob("v.db-*"):
        shown.append(wal.read_bytes().decode("latin-1"))
    for text in shown:
        for secret in SECRETS:
            assert secret not in text


# --------------------------------------------------------------------------------------------------
# 9. Huge values
# --------------------------------------------------------------------------------------------------


def test_huge_attribute_values_are_cut_and_marked(viewer: Viewer) -> None:
    t = trace_id()
    viewer.post_json([record(t, span_id(), "big", kind="workflow", ended=True, attributes={"blob": "x" * 1_048_576})])
    value = _every_page(viewer, t)["spans"][0]["attributes"]["blob"]
    assert len(value) == DEFAULT_VALUE_LIMIT
    assert value.endswith("…[truncated, 1048576 chars]")


def test_replay_ring_and_live_state_are_bounded_in_bytes(make_viewer: Callable[..., Viewer]) -> None:
    hub = Hub(ring_bytes=2_000_000, max_live_bytes=1_000_000, max_ended_runs=500)
    viewer = make_viewer(hub=hub)
    first = viewer.call(lambda: hub.broadcast.last_id)
    runs = [trace_id() for _ in range(40)]
    for t in runs:  # 40 ended runs, each about 120 kB in the ring (span.ended frame and data) and 60 kB live
        viewer.post_json([record(t, span_id(), "big", kind="workflow", ended=True, attributes={"blob": "y" * 60_000})])
    assert viewer.call(lambda: hub.broadcast.ring_nbytes) <= 2_000_000
    assert viewer.call(lambda: hub.state.live_nbytes) <= 1_000_000
    assert viewer.call(lambda: len(hub.runs())) < 40  # older runs left memory ...
    assert all(httpx.get(f"{viewer.url}/api/runs/{t}", timeout=10).status_code == 200 for t in runs)  # ... not history
    with SseClient(f"{viewer.url}/api/stream?last_event_id={first}") as sse:
        assert sse.next_event()["event"] == "reset"  # the ring no longer reaches back that far: said, not skipped
